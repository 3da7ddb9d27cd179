//! Local actors: the [`Actor`] trait, typed addresses ([`Addr`]), and the supervised task
//! that runs an actor (restarting it when it panics).

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot};

use crate::Error;
use crate::system::{Charge, System};

/// Messages an actor may queue before senders wait.
pub const MAILBOX: usize = 1024;

/// Messages an actor takes out of its mailbox per wake-up (one `recv_many`): their
/// credit goes back to their senders at once, in one release per sender.
const BATCH: usize = 64;

/// An actor: state plus a handler run for one message at a time.
pub trait Actor: Send + Sized + 'static {
    type Msg: Send + 'static;

    /// Handle one message. A panic here is caught: the actor is built anew from its factory
    /// and goes on with the next message (see [`System::spawn`]).
    fn handle(
        &mut self,
        msg: Self::Msg,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = ()> + Send;

    /// Runs once after the actor is (re)built, before its first message.
    fn started(&mut self, _ctx: &mut Context<Self>) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Where to send the answer to an `ask`.
pub type ReplyTo<R> = oneshot::Sender<R>;

/// A typed local address. Cheap to clone.
pub struct Addr<A: Actor> {
    /// Each message with the credit it holds for its remote sender (released when the
    /// actor takes the message, see [`crate::system::Charge`]).
    tx: mpsc::Sender<(A::Msg, Option<Charge>)>,
}

impl<A: Actor> Clone for Addr<A> {
    fn clone(&self) -> Self {
        Addr {
            tx: self.tx.clone(),
        }
    }
}

impl<A: Actor> std::fmt::Debug for Addr<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addr")
            .field("actor", &std::any::type_name::<A>())
            .finish()
    }
}

impl<A: Actor> Addr<A> {
    /// Queue `msg`, waiting while the mailbox is full.
    pub async fn tell(&self, msg: A::Msg) -> Result<(), Error> {
        self.tx.send((msg, None)).await.map_err(|_| Error::Stopped)
    }

    /// Wait for room for `n` messages at once (`n` at most a quarter of the mailbox): the
    /// backlog pump moves a batch per wake-up instead of waking once per message.
    pub(crate) async fn reserve_many(
        &self,
        n: usize,
    ) -> Result<mpsc::PermitIterator<'_, (A::Msg, Option<Charge>)>, Error> {
        let n = n.clamp(1, (self.tx.max_capacity() / 4).max(1));
        self.tx.reserve_many(n).await.map_err(|_| Error::Stopped)
    }

    /// Queue `msg` without waiting.
    pub fn try_tell(&self, msg: A::Msg) -> Result<(), Error> {
        self.tx.try_send((msg, None)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::MailboxFull,
            mpsc::error::TrySendError::Closed(_) => Error::Stopped,
        })
    }

    /// Queue `msg` without waiting, handing it back when the mailbox is full or closed.
    pub(crate) fn try_tell_back(
        &self,
        msg: (A::Msg, Option<Charge>),
    ) -> Result<(), mpsc::error::TrySendError<(A::Msg, Option<Charge>)>> {
        self.tx.try_send(msg)
    }

    /// Messages the mailbox can take now without waiting.
    pub(crate) fn room(&self) -> usize {
        self.tx.capacity()
    }

    /// Send a request built around a reply channel and wait for the answer, at most `timeout`.
    pub async fn ask<R>(
        &self,
        make: impl FnOnce(ReplyTo<R>) -> A::Msg,
        timeout: Duration,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        self.tell(make(tx)).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(Error::NoReply),
            Err(_) => Err(Error::LocalTimeout(timeout)),
        }
    }

    /// True once the actor has stopped for good.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What a running actor can reach: its own address, its name, the system.
pub struct Context<A: Actor> {
    addr: Addr<A>,
    name: String,
    system: System,
}

impl<A: Actor> Context<A> {
    pub fn addr(&self) -> &Addr<A> {
        &self.addr
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn system(&self) -> &System {
        &self.system
    }

    /// Send `make()` to this actor every `period` until the system shuts down or the actor
    /// stops. A tick is skipped (not queued up) while the mailbox is full.
    pub fn every(&self, period: Duration, make: impl Fn() -> A::Msg + Send + 'static) {
        let addr = self.addr.clone();
        let token = self.system.shutdown_token();
        self.system.tasks().spawn(async move {
            let mut iv = tokio::time::interval(period);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = iv.tick() => {
                        if let Err(Error::Stopped) = addr.try_tell(make()) {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// How often an actor may panic before its supervisor gives up on it.
#[derive(Clone, Copy, Debug)]
pub struct Restarts {
    pub max: usize,
    pub within: Duration,
}

impl Default for Restarts {
    fn default() -> Self {
        Restarts {
            max: 5,
            within: Duration::from_secs(10),
        }
    }
}

pub(crate) fn spawn<A: Actor>(
    system: &System,
    name: &str,
    restarts: Restarts,
    mut factory: impl FnMut() -> A + Send + 'static,
) -> Addr<A> {
    let (tx, mut rx) = mpsc::channel(MAILBOX);
    let addr = Addr { tx };
    let mut ctx = Context {
        addr: addr.clone(),
        name: name.to_string(),
        system: system.clone(),
    };
    let token = system.shutdown_token();
    system.tasks().spawn(async move {
        let mut panics: VecDeque<Instant> = VecDeque::new();
        let mut actor = factory();
        let mut fresh = true;
        // Messages taken out of the mailbox and not yet handled, the next one last.
        let mut batch: Vec<A::Msg> = Vec::with_capacity(BATCH);
        let mut taken: Vec<(A::Msg, Option<Charge>)> = Vec::with_capacity(BATCH);
        loop {
            let survived = if fresh {
                fresh = false;
                survives(actor.started(&mut ctx)).await
            } else {
                if batch.is_empty() {
                    // A batch per wake-up (messages already queued come at once; the
                    // mailbox is preferred over the shutdown token, as before).
                    let n = tokio::select! {
                        biased;
                        n = rx.recv_many(&mut taken, BATCH) => n,
                        _ = token.cancelled() => break,
                    };
                    if n == 0 {
                        break;
                    }
                    // The messages left the mailbox: their bytes no longer count against
                    // their senders' credit (one release per run of one sender's tells).
                    let mut owed: Option<Charge> = None;
                    for (msg, charge) in taken.drain(..).rev() {
                        batch.push(msg);
                        if let Some(c) = charge {
                            owed = Some(match owed.take() {
                                None => c,
                                Some(mut o) => match o.absorb(c) {
                                    Ok(()) => o,
                                    Err(c) => {
                                        drop(o);
                                        c
                                    }
                                },
                            });
                        }
                    }
                    drop(owed);
                }
                let msg = batch.pop().expect("a batch of at least one message");
                survives(actor.handle(msg, &mut ctx)).await
            };
            if !survived {
                if !note_panic(&ctx.name, &mut panics, restarts) {
                    break;
                }
                actor = factory();
                fresh = true;
            }
        }
        tracing::debug!(actor = %ctx.name, "stopped");
    });
    addr
}

/// Run `f`; false if it panicked.
async fn survives(f: impl Future<Output = ()>) -> bool {
    AssertUnwindSafe(f).catch_unwind().await.is_ok()
}

/// Record a panic; false when the actor has panicked too often and must stay down.
fn note_panic(name: &str, panics: &mut VecDeque<Instant>, restarts: Restarts) -> bool {
    let now = Instant::now();
    panics.push_back(now);
    while panics
        .front()
        .is_some_and(|t| now.duration_since(*t) > restarts.within)
    {
        panics.pop_front();
    }
    if panics.len() > restarts.max {
        tracing::error!(actor = %name, "panicked {} times within {:?}; giving up on it", panics.len(), restarts.within);
        false
    } else {
        tracing::error!(actor = %name, "panicked; restarting it");
        true
    }
}
