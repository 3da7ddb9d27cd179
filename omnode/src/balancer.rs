//! The balancer: this node's automatic load balancing, openMosix style, and the node flags
//! `mosctl` sets.
//!
//! Owns: the node's administrative state (stay, lstay, block, quiet, a speed set by
//! `mosctl setspeed`), the table of processes it may move (its candidates), the tick that
//! feeds the load table and the candidates to `balance::policy` and asks the migrator for the
//! moves it decides, the placement of `mosrun` (no node flag: the best node now; `-h` home;
//! `-b` best; `-jLIST` the best of the list), and the `mosctl` requests of the control socket.
//!
//! Remote start: when `mosrun` is placed on another node, the daemon seizes the caller before
//! answering ([`migrate::watch_exec`]); its exec then stops it before the program's first
//! instruction, and a statically linked program moves from there (a tiny image). A dynamically
//! linked one is let go and moved once its loader is done (its loader's mmaps of libraries
//! opened at home would bring it straight back). Placed at home, it is not traced at all. Any
//! refusal lets it run at home.
//! Must not know: how a process moves (the migrator does that) or how the decisions are made
//! (`balance::policy`); it only measures processes (/proc) and passes plain figures.
//!
//! Candidates, decided as openMosix did (every process may move unless it is locked): every
//! process started with `mosrun` at this node that still runs here is a candidate, unless it
//! was started with `mosrun -L` (locked); `mosrun -l` says the default explicitly. Processes
//! not started by mosrun are never moved automatically (the daemon does not trace what it
//! did not start for). A process that moved away is no longer a candidate here: guests are
//! not moved on (a guest moving on to a third node is not implemented).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use balance::load::Load;
use balance::policy::{self, Flags, Local, Peer, Process};
use discovery::NodeId;
use runtime::{Actor, Addr, Context};
use serde::{Deserialize, Serialize};

use crate::control::{Request, Response};
use crate::loadmon::{self, LoadMonitor};
use crate::members::{self, Members};

/// How long an internal actor may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);
/// A placement at `mosrun` on another node waits this long at most for the program's exec
/// (the program is seized before it execs; without an exec in time it is let go, at home).
const EXEC_WAIT: Duration = Duration::from_secs(5);
/// A placement tries at most this many targets (each refusal puts that target aside).
const PLACE_TRIES: usize = 3;

/// The administrative flags of `mosctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// No automatic migration away from this node.
    Stay,
    /// Processes started here stay here.
    Lstay,
    /// No guests arrive.
    Block,
    /// No automatic decisions and no load sent to other nodes.
    Quiet,
}

/// Where `mosrun` starts a program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// `-h`: at home.
    Home,
    /// no flag or `-b`: the best node now.
    Best,
    /// `-jLIST`: the best of these nodes.
    Among(Vec<NodeId>),
}

/// A `mosctl` request that changes or reads this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeOp {
    Set {
        flag: Flag,
        on: bool,
    },
    SetSpeed {
        speed: u32,
    },
    /// Send every guest away (also sets block).
    Expel,
    /// Bring every process of ours home (also sets lstay).
    Bring,
    /// The flags in force.
    Flags,
}

/// The node's flags as `mosctl status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FlagsReport {
    pub node: NodeId,
    pub stay: bool,
    pub lstay: bool,
    pub block: bool,
    pub quiet: bool,
    /// The speed set by `mosctl setspeed`, if any (else the measured one is used).
    pub speed: Option<u32>,
    /// Processes this node may move now.
    pub candidates: usize,
}

/// What `expel` / `bring` did, process by process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveReport {
    pub moved: Vec<i32>,
    /// PID and why it did not move.
    pub failed: Vec<(i32, String)>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    lock: bool,
}

#[derive(Default)]
struct State {
    flags: Flags,
    quiet: bool,
    speed: Option<u32>,
    candidates: HashMap<i32, Candidate>,
}

/// Shared by the actor, the control socket and the load monitor.
struct Shared {
    local: NodeId,
    state: Mutex<State>,
    load: Addr<LoadMonitor>,
    members: Addr<Members>,
    /// Placement uses the same policy object as the tick (its pending moves count).
    policy: Mutex<policy::Balancer>,
    /// When `mosrun` last started processes here: they count in this node's load for the
    /// policy's `pending_for` (the measured load rises slowly), so that jobs started together
    /// do not all stay.
    placed_here: Mutex<Vec<Instant>>,
}

static GLOBAL: OnceLock<Arc<Shared>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether this node takes no guests (`mosctl block`); read by the remote side of an offer.
pub fn blocked() -> bool {
    GLOBAL.get().is_some_and(|s| lock(&s.state).flags.block)
}

/// Why this node takes no guest needing `size` bytes now, if it does not: its balancing
/// policy ([`policy::admit`]) on its own fresh figures (its cgroup's free memory and load).
/// Figures that cannot be measured refuse (fail closed). Read by the remote side of an offer.
pub fn guest_refusal(size: u64) -> Option<String> {
    let load = match loadmon::own(Duration::from_secs(2)) {
        Ok(l) => l,
        Err(e) => {
            return Some(format!(
                "this node cannot measure its own load and memory: {e}"
            ));
        }
    };
    let (id, flags, cfg) = match GLOBAL.get() {
        Some(s) => (
            s.local,
            lock(&s.state).flags,
            lock(&s.policy).config().clone(),
        ),
        None => (0, Flags::default(), policy::Config::default()),
    };
    let me = Local { id, load, flags };
    policy::admit(&cfg, &me, size).err().map(|r| r.to_string())
}

/// `node` sends our processes back (`mosctl expel` there): it is not chosen as a target
/// for a while, as after a refusal.
pub fn sent_back_by(node: NodeId) {
    if let Some(s) = GLOBAL.get() {
        lock(&s.policy).on_refused(node, Instant::now());
    }
}

/// Whether this node sends no load to others (`mosctl quiet`).
pub fn quiet() -> bool {
    GLOBAL.get().is_some_and(|s| lock(&s.state).quiet)
}

/// The speed set by `mosctl setspeed`, if any.
pub fn speed() -> Option<u32> {
    GLOBAL.get().and_then(|s| lock(&s.state).speed)
}

pub enum Msg {
    Tick,
    Refused(NodeId),
}

/// The tick: decides and asks the migrator for moves.
pub struct Balancer {
    shared: Arc<Shared>,
    tick: Duration,
    /// A move decided by the tick still running (one at a time).
    busy: Arc<std::sync::atomic::AtomicBool>,
}

/// Starts the balancer (after the migrator): ticks every `tick`.
pub fn start(
    system: &runtime::System,
    local: NodeId,
    load: Addr<LoadMonitor>,
    members: Addr<Members>,
    tick: Duration,
) -> Addr<Balancer> {
    let shared = Arc::new(Shared {
        local,
        state: Mutex::new(State::default()),
        load,
        members,
        policy: Mutex::new(policy::Balancer::new(policy::Config::default())),
        placed_here: Mutex::new(Vec::new()),
    });
    let _ = GLOBAL.set(shared.clone());
    crate::takeback::start(system);
    system.spawn("balancer", move || Balancer {
        shared: shared.clone(),
        tick,
        busy: Arc::default(),
    })
}

impl Shared {
    /// This node and its peers as the policy sees them; None when this node's own load is
    /// unknown (nothing is decided on a made-up figure).
    async fn view(&self) -> Option<(Local, Vec<Peer>)> {
        let loads: BTreeMap<NodeId, Load> = self
            .load
            .ask(loadmon::Msg::Snapshot, ASK_TIMEOUT)
            .await
            .ok()?
            .into_iter()
            .map(|(id, l, _)| (id, l))
            .collect();
        let states = self
            .members
            .ask(members::Msg::Snapshot, ASK_TIMEOUT)
            .await
            .ok()?;
        let own = *loads.get(&self.local)?;
        let flags = lock(&self.state).flags;
        let local = Local {
            id: self.local,
            load: own,
            flags,
        };
        let peers = states
            .into_iter()
            .filter(|(s, _)| s.id != self.local)
            .filter_map(|(s, _)| {
                Some(Peer {
                    id: s.id,
                    load: *loads.get(&s.id)?,
                    up: s.up,
                    blocked: false,
                    bandwidth: None,
                })
            })
            .collect();
        Some((local, peers))
    }

    /// The candidates still running here and not moved or moving, measured.
    fn processes(&self) -> Vec<Process> {
        let moved: Vec<i32> = crate::migrator::global()
            .map(|m| {
                m.rows()
                    .into_iter()
                    .filter(|r| r.home == self.local)
                    .map(|r| r.pid)
                    .collect()
            })
            .unwrap_or_default();
        let mut st = lock(&self.state);
        st.candidates.retain(|pid, _| alive(*pid));
        st.candidates
            .iter()
            .filter(|(pid, _)| !moved.contains(pid))
            .filter_map(|(&pid, c)| {
                let (age, cpu, size) = measure(pid)?;
                Some(Process {
                    pid: pid as u32,
                    home: self.local,
                    age,
                    cpu,
                    size,
                    lock: c.lock,
                    arrived: None,
                    came_from: None,
                })
            })
            .collect()
    }
}

impl Balancer {
    async fn on_tick(&mut self, ctx: &Context<Self>) {
        let sh = &self.shared;
        if self.busy.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let (stay, quiet) = {
            let st = lock(&sh.state);
            (st.flags.stay, st.quiet)
        };
        if stay || quiet {
            return;
        }
        let procs = sh.processes();
        if procs.iter().all(|p| p.lock) {
            return;
        }
        let Some((local, peers)) = sh.view().await else {
            return;
        };
        let decisions = lock(&sh.policy).on_tick(Instant::now(), &local, &peers, &procs);
        let Some(m) = crate::migrator::global() else {
            return;
        };
        // One move at a time: the next tick sees its effect.
        if let Some(d) = decisions.into_iter().next() {
            tracing::info!(pid = d.pid, to = d.to, reason = ?d.reason, "balancer: moving");
            self.busy.store(true, std::sync::atomic::Ordering::Release);
            let (m, busy, me) = (m.clone(), self.busy.clone(), ctx.addr().clone());
            tokio::spawn(async move {
                // The daemon acts on its own authority: the owner was checked when mosrun
                // registered the process.
                match m.migrate(d.pid as i32, d.to, Some(0)).await {
                    Ok(s) => tracing::info!(pid = d.pid, "balancer: {s}"),
                    Err(e) => {
                        tracing::info!(pid = d.pid, to = d.to, "balancer: not moved: {e}");
                        let _ = me.tell(Msg::Refused(d.to)).await;
                    }
                }
                busy.store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }
}

impl Actor for Balancer {
    type Msg = Msg;

    async fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.every(self.tick, || Msg::Tick);
    }

    async fn handle(&mut self, msg: Msg, ctx: &mut Context<Self>) {
        match msg {
            Msg::Tick => self.on_tick(ctx).await,
            Msg::Refused(to) => lock(&self.shared.policy).on_refused(to, Instant::now()),
        }
    }
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().next() != Some("Z"))
        })
        .unwrap_or(false)
}

/// Age, CPU time used and resident size of `pid`, from /proc; None when unreadable (the
/// process is then not moved: nothing is decided on made-up figures).
fn measure(pid: i32) -> Option<(Duration, Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // fields after the comm: state is 0, utime 11, stime 12, starttime 19
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)? as f64;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let cpu = (num(11)? + num(12)?) as f64 / ticks;
    let start = num(19)? as f64 / ticks;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some((
        Duration::from_secs_f64((uptime - start).max(0.0)),
        Duration::from_secs_f64(cpu),
        rss * page,
    ))
}

/// The owner of `pid`.
fn owner(pid: i32) -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .map(|m| m.uid())
        .map_err(|e| format!("process {pid}: no such process ({e})"))
}

/// Whether `uid` may change this node: root or the daemon's own user.
fn privileged(uid: Option<u32>, what: &str) -> Result<(), String> {
    let me = nix::unistd::geteuid().as_raw();
    match uid {
        Some(u) if u == 0 || u == me => Ok(()),
        Some(u) => Err(format!(
            "{what}: uid {u} may not change this node (only root or uid {me}, which runs omnode)"
        )),
        None => Err(format!(
            "{what}: the caller's uid is unknown (SO_PEERCRED failed); refused"
        )),
    }
}

/// A `Place` or `Node` request from the control socket.
pub async fn serve(req: Request, uid: Option<u32>) -> Response {
    let Some(sh) = GLOBAL.get().cloned() else {
        return Response::Error("this daemon has no balancer".into());
    };
    match req {
        Request::Place {
            pid,
            place,
            lock,
            tree,
        } => match place_process(&sh, pid, place, lock, tree, uid).await {
            Ok(s) => Response::Done(s),
            Err(e) => Response::Error(e),
        },
        Request::Node(op) => node_op(&sh, op, uid).await,
        _ => Response::Error("not a balancing request".into()),
    }
}

async fn place_process(
    sh: &Arc<Shared>,
    pid: i32,
    place: Placement,
    locked: bool,
    tree: bool,
    uid: Option<u32>,
) -> Result<String, String> {
    let owner = owner(pid)?;
    match uid {
        Some(0) => {}
        Some(u) if u == owner => {}
        Some(u) => {
            return Err(format!(
                "uid {u} may not place process {pid} (it belongs to uid {owner})"
            ));
        }
        None => return Err("the caller's uid is unknown (SO_PEERCRED failed); refused".into()),
    }
    if tree {
        return place_tree(sh, pid, place, uid).await;
    }
    lock(&sh.state)
        .candidates
        .insert(pid, Candidate { lock: locked });
    let to = choose(sh, &place).await;
    if to == sh.local {
        return Ok(format!("process {pid} starts here, on node {to}"));
    }
    // Remote start: seized now, stopped by its exec before the program's first instruction
    // (its image is then the program's and the loader's mappings and a fresh stack), and moved
    // from there. Anything that fails lets it run here: it is never lost.
    let m = crate::migrator::global().ok_or("this daemon has no migrator")?;
    let watch = match tokio::task::spawn_blocking(move || migrate::watch_exec(pid)).await {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            tracing::warn!(pid, "mosrun: it runs here: {e}");
            return Ok(format!(
                "process {pid} starts here (not moved to node {to}: {e})"
            ));
        }
        Err(e) => return Err(format!("process {pid}: placement failed: {e}")),
    };
    let sh = sh.clone();
    tokio::spawn(async move {
        let seized = match tokio::task::spawn_blocking(move || watch.wait(EXEC_WAIT)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(pid, "mosrun: it runs here: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!(pid, "mosrun: it runs here: the exec watch failed: {e}");
                return;
            }
        };
        tracing::debug!(target: "omnode::phase", pid, "mosrun: stopped at its exec");
        start_there(&sh, &m, seized, to, &place, uid).await;
    });
    Ok(format!(
        "process {pid} moves to node {to} when it starts its program"
    ))
}

/// Where a program starting now goes: the placement decision of `mosrun`, also at each exec
/// of a tree (`mosrun --tree`).
async fn choose(sh: &Arc<Shared>, place: &Placement) -> NodeId {
    match place {
        Placement::Home => sh.local,
        Placement::Among(list) if list.len() == 1 => list[0],
        Placement::Best | Placement::Among(_) => match sh.view().await {
            // Own load unknown: start at home (a move needs figures).
            None => sh.local,
            Some((mut local, mut peers)) => {
                if let Placement::Among(list) = place {
                    peers.retain(|p| list.contains(&p.id));
                }
                let now = Instant::now();
                let mut policy = lock(&sh.policy);
                let recent = {
                    let mut placed = lock(&sh.placed_here);
                    let window = policy.config().pending_for;
                    placed.retain(|t| now.saturating_duration_since(*t) < window);
                    placed.len()
                };
                local.load.load += recent as f64;
                let best = policy.place(now, &local, &peers, 0);
                if best == sh.local {
                    lock(&sh.placed_here).push(now);
                }
                drop(policy);
                match place {
                    // -j2,3 without this node: one of the list, the best of it.
                    Placement::Among(list) if best == sh.local && !list.contains(&sh.local) => {
                        peers
                            .iter()
                            .filter(|p| p.up)
                            .max_by(|a, b| a.load.share(1.0).total_cmp(&b.load.share(1.0)))
                            .map(|p| p.id)
                            .unwrap_or(list[0])
                    }
                    _ => best,
                }
            }
        },
    }
}

/// Moves `seized` (stopped at its program's first instruction) to `to`; a target that
/// refuses is put aside for a while and the next best is tried (among the nodes the user
/// named, if any: an explicit single node, `-j3`, is not replaced by another); when none is
/// better than here, the process runs here. It is never lost.
async fn start_there(
    sh: &Arc<Shared>,
    m: &Arc<crate::migrator::Migrator>,
    seized: migrate::Seized,
    to: NodeId,
    place: &Placement,
    uid: Option<u32>,
) {
    let pid = seized.pid();
    let among = match place {
        Placement::Among(list) => Some(list.clone()),
        _ => None,
    };
    let retry = !matches!(place, Placement::Among(list) if list.len() == 1);
    // Moved now, before its first instruction, static or dynamic: a dynamic loader's
    // mmaps of the libraries it opened at home run on the identical local files
    // (`migration::remote`, `Req::FileId`); a library that differs here brings it home.
    // A remote start counts as an exec on `to` (/mfs/lastexec); undone if it stays here.
    crate::mfsmagic::started_on(pid as u32, to);
    let mut result = m.migrate_seized(seized, to, uid).await;
    let mut to = to;
    for attempt in 1..=PLACE_TRIES {
        match result {
            Ok(s) => {
                tracing::info!(pid, "mosrun: {s}");
                return;
            }
            Err(e) => {
                tracing::info!(pid, to, "mosrun: not moved to node {to}: {e}");
                lock(&sh.policy).on_refused(to, Instant::now());
            }
        }
        let next = match sh.view().await {
            Some((local, mut peers)) if retry && attempt < PLACE_TRIES => {
                if let Some(list) = &among {
                    peers.retain(|p| list.contains(&p.id));
                }
                lock(&sh.policy).place(Instant::now(), &local, &peers, 0)
            }
            _ => sh.local,
        };
        if next == sh.local || !alive(pid) {
            crate::mfsmagic::started_here(pid as u32);
            tracing::info!(pid, "mosrun: it runs here, on node {}", sh.local);
            return;
        }
        to = next;
        crate::mfsmagic::started_on(pid as u32, to);
        result = m.migrate(pid, to, uid).await;
    }
}

/// Programs that would come straight back if moved at their exec, so in a tree they run at
/// home: those that start others (shells, make, compiler drivers, the linker's driver; a
/// process that forks elsewhere comes home for it, children are born at home) and those that
/// map the files they work on (the assembler, the linkers, ar: an mmap of a file opened at
/// home brings a moved process home). The programs they start are the ones placed. Matched
/// against the file name of the executable, also under a target prefix and a version suffix
/// (`x86_64-linux-gnu-gcc-12`, `clang-16`, `x86_64-linux-gnu-ld.bfd`).
const STAY_HOME: &[&str] = &[
    "sh", "dash", "bash", "zsh", "ksh", "busybox", "make", "gmake", "env", "nice", "time", "xargs",
    "cc", "c++", "gcc", "g++", "clang", "clang++", "collect2", "ccache", "distcc", "as", "ld",
    "ld.bfd", "ld.gold", "ld.lld", "ar", "ranlib",
];

/// Whether `exe` is one of [`STAY_HOME`] (also under a target prefix and a version suffix:
/// `x86_64-linux-gnu-gcc-12`, `clang-16`).
fn stays_home(exe: &std::path::Path) -> bool {
    let Some(name) = exe.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let name = name.rsplit_once("-linux-gnu-").map_or(name, |(_, n)| n);
    STAY_HOME.iter().any(|s| {
        name == *s
            || name.strip_prefix(s).is_some_and(|rest| {
                rest.starts_with('-') && rest[1..].chars().all(|c| c.is_ascii_digit() || c == '.')
            })
    })
}

/// `mosrun --tree`: the caller (about to exec its program) stays here, and every exec in its
/// tree below it is a placement point: the program just exec'd, stopped before its first
/// instruction, goes where [`choose`] says (programs that would come straight back, [`STAY_HOME`],
/// stay here). Each child keeps its home PID and a deputy (the parked home shell), so its parent's
/// wait() and signals work as at home. A refusal or failure lets that child run here.
async fn place_tree(
    sh: &Arc<Shared>,
    pid: i32,
    place: Placement,
    uid: Option<u32>,
) -> Result<String, String> {
    if matches!(place, Placement::Home) {
        return Ok(format!("process {pid} and its children start here"));
    }
    let m = crate::migrator::global().ok_or("this daemon has no migrator")?;
    let (ctl, events) = match tokio::task::spawn_blocking(move || migrate::watch_tree(pid)).await {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            tracing::warn!(pid, "mosrun --tree: its children run here: {e}");
            return Ok(format!(
                "process {pid} and its children start here (not spread: {e})"
            ));
        }
        Err(e) => return Err(format!("process {pid}: placement failed: {e}")),
    };
    // the watch's events, from its blocking receiver to this runtime
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || {
        loop {
            match events.next(Duration::from_secs(1)) {
                Some(migrate::TreeEvent::Ended) => {
                    let _ = tx.send(migrate::TreeEvent::Ended);
                    break;
                }
                Some(e) => {
                    if tx.send(e).is_err() {
                        break;
                    }
                }
                None if tx.is_closed() => break,
                None => {}
            }
        }
    });
    let sh = sh.clone();
    tokio::spawn(async move {
        let mut placed = 0u32;
        while let Some(ev) = rx.recv().await {
            let migrate::TreeEvent::Exec { pid: child, exe } = ev else {
                break;
            };
            let to = if stays_home(&exe) {
                sh.local
            } else {
                choose(&sh, &place).await
            };
            let ctl = ctl.clone();
            if to == sh.local {
                tracing::debug!(root = pid, child, ?exe, "mosrun --tree: it runs here");
                let r = tokio::task::spawn_blocking(move || ctl.release(child)).await;
                if let Ok(Err(e)) = r {
                    tracing::warn!(child, "mosrun --tree: {e}");
                }
                continue;
            }
            placed += 1;
            tracing::info!(
                root = pid,
                child,
                ?exe,
                to,
                "mosrun --tree: placed on node {to}"
            );
            let (sh, m, place) = (sh.clone(), m.clone(), place.clone());
            tokio::spawn(async move {
                match tokio::task::spawn_blocking(move || ctl.take(child, EXEC_WAIT)).await {
                    Ok(Ok(seized)) => start_there(&sh, &m, seized, to, &place, uid).await,
                    Ok(Err(e)) => tracing::warn!(child, "mosrun --tree: it runs here: {e}"),
                    Err(e) => tracing::warn!(child, "mosrun --tree: it runs here: {e}"),
                }
            });
        }
        tracing::info!(root = pid, placed, "mosrun --tree: the tree has ended");
    });
    Ok(format!(
        "process {pid} starts here; the programs its tree starts are placed at their exec"
    ))
}

async fn node_op(sh: &Arc<Shared>, op: NodeOp, uid: Option<u32>) -> Response {
    let report = |sh: &Shared| {
        let st = lock(&sh.state);
        FlagsReport {
            node: sh.local,
            stay: st.flags.stay,
            lstay: st.flags.lstay,
            block: st.flags.block,
            quiet: st.quiet,
            speed: st.speed,
            candidates: st.candidates.len(),
        }
    };
    let what = match &op {
        NodeOp::Flags => return Response::Flags(report(sh)),
        NodeOp::Set { flag, on } => {
            format!("{}{flag:?}", if *on { "" } else { "no" }).to_lowercase()
        }
        NodeOp::SetSpeed { .. } => "setspeed".into(),
        NodeOp::Expel => "expel".into(),
        NodeOp::Bring => "bring".into(),
    };
    if let Err(e) = privileged(uid, &what) {
        return Response::Error(e);
    }
    match op {
        NodeOp::Flags => unreachable!("answered above"),
        NodeOp::Set { flag, on } => {
            {
                let mut st = lock(&sh.state);
                match flag {
                    Flag::Stay => st.flags.stay = on,
                    Flag::Lstay => st.flags.lstay = on,
                    Flag::Block => st.flags.block = on,
                    Flag::Quiet => st.quiet = on,
                }
            }
            tracing::info!(node = sh.local, "mosctl {what}");
            Response::Flags(report(sh))
        }
        NodeOp::SetSpeed { speed } => {
            if speed == 0 {
                return Response::Error("setspeed: the speed must be at least 1".into());
            }
            lock(&sh.state).speed = Some(speed);
            tracing::info!(node = sh.local, speed, "mosctl setspeed");
            Response::Flags(report(sh))
        }
        NodeOp::Expel => {
            lock(&sh.state).flags.block = true;
            let Some(m) = crate::migrator::global() else {
                return Response::Error("expel: this daemon has no migrator".into());
            };
            // Every guest's home is asked to take it back, all at once (each way home is
            // bounded): the guest leaves through its home's own `migrate PID home`.
            let guests: Vec<(i32, NodeId)> = m
                .rows()
                .into_iter()
                .filter(|r| r.node == sh.local && r.home != sh.local)
                .map(|r| (r.pid, r.home))
                .collect();
            let asks: Vec<_> = guests
                .into_iter()
                .map(|(pid, home)| {
                    let system = m.system.clone();
                    (
                        pid,
                        home,
                        tokio::spawn(async move { crate::takeback::ask(&system, home, pid).await }),
                    )
                })
                .collect();
            let mut out = MoveReport {
                moved: Vec::new(),
                failed: Vec::new(),
            };
            for (pid, home, ask) in asks {
                match ask.await {
                    Ok(Ok(s)) => {
                        tracing::info!(node = sh.local, pid, home, "expel: {s}");
                        out.moved.push(pid);
                    }
                    Ok(Err(e)) => out.failed.push((pid, e)),
                    Err(e) => out
                        .failed
                        .push((pid, format!("guest of node {home}: the request ended: {e}"))),
                }
            }
            Response::Moves(out)
        }
        NodeOp::Bring => {
            lock(&sh.state).flags.lstay = true;
            let rows = crate::migrator::global()
                .map(|m| m.rows())
                .unwrap_or_default();
            let mut out = MoveReport {
                moved: Vec::new(),
                failed: Vec::new(),
            };
            for r in rows
                .into_iter()
                .filter(|r| r.home == sh.local && r.node != sh.local)
            {
                let req = Request::Migrate {
                    pid: r.pid,
                    to: "home".into(),
                };
                match crate::migrator::serve(req, uid).await {
                    Response::Done(_) => out.moved.push(r.pid),
                    Response::Error(e) => out.failed.push((r.pid, e)),
                    other => out
                        .failed
                        .push((r.pid, format!("unexpected answer {other:?}"))),
                }
            }
            Response::Moves(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drivers, shells and programs that map their files stay home in a tree, under their
    /// target prefixes and version suffixes; the compilers proper and other programs are placed.
    #[test]
    fn stay_home_matches_drivers_not_compilers() {
        use std::path::Path;
        for home in [
            "/usr/bin/x86_64-linux-gnu-gcc-12",
            "/usr/bin/dash",
            "/usr/bin/make",
            "/usr/bin/clang-16",
            "/usr/lib/gcc/x86_64-linux-gnu/12/collect2",
            "/usr/bin/x86_64-linux-gnu-as",
            "/usr/bin/x86_64-linux-gnu-ld.bfd",
        ] {
            assert!(stays_home(Path::new(home)), "{home}");
        }
        for placed in [
            "/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
            "/usr/lib/gcc/x86_64-linux-gnu/12/cc1plus",
            "/tmp/h10tree-spin",
            "/usr/bin/shasum",
            "/usr/bin/gcc-ar-x",
            "/usr/bin/cc1-12",
            "",
        ] {
            assert!(!stays_home(Path::new(placed)), "{placed}");
        }
    }

    /// A zombie or a missing process is no candidate; a live one is measured from /proc.
    #[test]
    fn candidates_are_live_processes_measured_from_proc() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        let (age, _cpu, size) = measure(me).expect("own process measurable");
        assert!(size > 0);
        assert!(age < Duration::from_secs(24 * 3600));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // an ended child not yet reaped is a zombie
        let zombie = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !alive(pid)
        });
        assert!(zombie, "an ended child still counted as alive");
        child.wait().unwrap();
        assert!(!alive(pid));
        assert_eq!(measure(pid), None);
    }

    #[test]
    fn only_root_or_the_daemon_user_changes_the_node() {
        let me = nix::unistd::geteuid().as_raw();
        assert!(privileged(Some(0), "block").is_ok());
        assert!(privileged(Some(me), "block").is_ok());
        let other = if me == 65534 { 65533 } else { 65534 };
        let e = privileged(Some(other), "block").unwrap_err();
        assert!(
            e.contains(&format!("uid {other} may not change this node")),
            "{e}"
        );
        assert!(
            privileged(None, "block")
                .unwrap_err()
                .contains("SO_PEERCRED")
        );
    }
}
