//! "Take it back": how a node sends its guests away (`mosctl expel`). The node a guest runs on
//! cannot move it by itself (the process's identity, parked shell and deputy live at its
//! home), so it asks the home to take it back; the home runs its own way home
//! (`migrate PID home`, [`crate::gohome`]) and answers with the outcome. A process that came
//! home stays there for the home's balancer to place again (the expelling node is blocked,
//! so it refuses to take it back).
//!
//! Owns: the request between the two nodes and the home's check that the process is one of
//! its own running on the node that asks. Must not know: how a process moves (the migrator).

use std::time::Duration;

use discovery::NodeId;
use runtime::{Actor, Context, Inbound, System};
use serde::{Deserialize, Serialize};

/// The name a home node answers "take it back" at.
pub const NAME: &str = "takeback";

/// How long the node that expels waits for the home's answer (the way home is bounded by
/// 40 s in the migrator).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(50);

/// Guest node → home: take process `pid` (its PID at home) back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeBack {
    pub pid: i32,
}

/// The home's answer: a line saying what happened, or why not.
pub type Answer = Result<String, String>;

pub struct Msg(Inbound<TakeBack>);

impl From<Inbound<TakeBack>> for Msg {
    fn from(i: Inbound<TakeBack>) -> Self {
        Msg(i)
    }
}

struct Home;

impl Actor for Home {
    type Msg = Msg;

    async fn handle(&mut self, Msg(inbound): Msg, ctx: &mut Context<Self>) {
        let Some(reply) = inbound.reply else {
            tracing::debug!(peer = inbound.from, "take-back without ask ignored");
            return;
        };
        let (from, pid) = (inbound.from, inbound.msg.pid);
        // The way home takes seconds: never hold the actor for it.
        ctx.system().tasks().spawn(async move {
            let answer = take_back(from, pid).await;
            match &answer {
                Ok(s) => tracing::info!(pid, from, "taken back: {s}"),
                Err(e) => tracing::info!(pid, from, "not taken back: {e}"),
            }
            let _ = reply.send(&answer).await;
        });
    }
}

/// The home's side: `pid` must be a process of this node running on `from`.
async fn take_back(from: NodeId, pid: i32) -> Answer {
    let m = crate::migrator::global().ok_or("this daemon has no migrator")?;
    let local = m.local();
    let runs_there = m
        .rows()
        .iter()
        .any(|r| r.pid == pid && r.home == local && r.node == from);
    if !runs_there {
        return Err(format!(
            "process {pid} of node {local} does not run on node {from} (as node {local} knows it)"
        ));
    }
    // The node expels (it is blocked now): the balancer here does not send the process
    // straight back to it.
    crate::balancer::sent_back_by(from);
    // The daemon acts on its own authority here: the node running the process asked, over
    // an authenticated link, and the owner was checked when the process first moved.
    m.come_home(pid, Some(0))
        .await
        .map(|s| format!("node {local} took process {pid} back: {s}"))
}

/// Makes this node answer take-back requests.
pub fn start(system: &System) {
    let addr = system.spawn(NAME, || Home);
    system.serve::<TakeBack, _>(NAME, addr);
}

/// The guest node's side: asks `home` to take `pid` back; Ok once it left this node.
pub async fn ask(system: &System, home: NodeId, pid: i32) -> Answer {
    match system
        .ask::<TakeBack, Answer>(home, NAME, &TakeBack { pid }, ASK_TIMEOUT)
        .await
    {
        Ok(a) => a,
        Err(e) => Err(format!(
            "asking node {home} to take process {pid} back: {e}"
        )),
    }
}
