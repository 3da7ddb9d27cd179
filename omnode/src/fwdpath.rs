//! The direct ways of forwarded-call messages between the transport's inbox and the threads
//! that act on them, with no migration thread in between.
//!
//! A forwarded call used to cross about eight threads (BENCHMARKS.md, "Migration"): the
//! supervisor, the runtime, the inbox actor, home's migration thread, the deputy's worker, the
//! migration thread again, the runtime, the target's migration thread and the supervisor. Once a
//! deputy or a supervisor runs, its messages take the short way: the inbox hands a request
//! straight to the deputy's [`DeputyWay`] (which decides and queues it for the worker), the
//! worker sends the reply itself, and the remote's inbox hands the reply straight to the
//! supervisor's channel and eventfd ([`RemoteWay`]). Each way counts what it carried, so the
//! migration threads still see the peer's signs of life.
//!
//! Owns: the table of open ways and what each does with a message.
//! Must not know: the forwarding protocol's rules (`migration::forward`), the migration
//! protocol (`crate::migrator`), how calls are run (`crate::deputy`).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use discovery::NodeId;
use migration::forward::{DeputyAction, DeputyFwd, FwdMsg, Reply, Seq, Tid};
use migration::protocol::MigId;
use runtime::transport::Lane;

use crate::deputy::{Job, Shared};
use crate::migrator::{Migrator, NAME, Wire};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The open ways, by migration.
#[derive(Default)]
pub(crate) struct Paths {
    /// Deputies of this node's moved processes, by migration id.
    deputies: Mutex<HashMap<MigId, Arc<DeputyWay>>>,
    /// Supervisors of guests here, by (home node, migration id).
    remotes: Mutex<HashMap<(NodeId, MigId), RemoteWay>>,
}

impl Paths {
    /// Takes `msg` the short way if one is open; otherwise gives it back for the migration
    /// thread. Never blocks (it runs on the runtime).
    pub(crate) fn deliver(
        &self,
        from: NodeId,
        mig: MigId,
        to_home: bool,
        msg: FwdMsg,
    ) -> Option<FwdMsg> {
        if to_home {
            let way = lock(&self.deputies).get(&mig).cloned();
            match way {
                Some(w) if w.to == from => {
                    w.on_msg(msg, false);
                    None
                }
                _ => Some(msg),
            }
        } else {
            let ways = lock(&self.remotes);
            match ways.get(&(from, mig)) {
                Some(w) => {
                    w.give(msg);
                    None
                }
                None => Some(msg),
            }
        }
    }

    /// Opens the deputy's way; it closes when the returned guard is dropped.
    pub(crate) fn open_deputy(&self, way: Arc<DeputyWay>) -> Opened<'_> {
        let mig = way.mig;
        lock(&self.deputies).insert(mig, way);
        Opened {
            paths: self,
            key: Key::Deputy(mig),
        }
    }

    /// Opens a supervisor's way; it closes when the returned guard is dropped.
    pub(crate) fn open_remote(&self, home: NodeId, mig: MigId, way: RemoteWay) -> Opened<'_> {
        lock(&self.remotes).insert((home, mig), way);
        Opened {
            paths: self,
            key: Key::Remote(home, mig),
        }
    }
}

enum Key {
    Deputy(MigId),
    Remote(NodeId, MigId),
}

/// An open way: closed (messages go to the migration thread again) when dropped.
pub(crate) struct Opened<'a> {
    paths: &'a Paths,
    key: Key,
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        match self.key {
            Key::Deputy(mig) => {
                if let Some(w) = lock(&self.paths.deputies).remove(&mig) {
                    w.close();
                }
            }
            Key::Remote(home, mig) => {
                lock(&self.paths.remotes).remove(&(home, mig));
            }
        }
    }
}

/// The remote's end: replies go into the supervisor's channel and its eventfd is written.
pub(crate) struct RemoteWay {
    pub(crate) tx: mpsc::Sender<FwdMsg>,
    pub(crate) wake: Arc<OwnedFd>,
    /// Messages carried (the target thread's sign of life from home).
    pub(crate) seen: Arc<AtomicU64>,
}

impl RemoteWay {
    /// Hands a message to the supervisor (also from the target's migration thread).
    pub(crate) fn give(&self, msg: FwdMsg) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(msg);
        let one = 1u64;
        // SAFETY: writing 8 bytes from `one` to our own eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// The deputy's front: the forwarding machine of one moved process, shared by the inbox (which
/// hands it requests), the worker (which reports results) and the migration thread.
pub(crate) struct DeputyWay {
    /// The node the process runs on.
    pub(crate) to: NodeId,
    pub(crate) mig: MigId,
    pub(crate) dep: Mutex<DeputyFwd>,
    /// To the worker; `None` once the deputy ends (the worker then ends).
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    pub(crate) shared: Arc<Shared>,
    /// Messages carried (home's sign of life from the remote).
    pub(crate) seen: AtomicU64,
    system: runtime::System,
    rt: tokio::runtime::Handle,
}

impl DeputyWay {
    pub(crate) fn new(
        m: &Migrator,
        to: NodeId,
        mig: MigId,
        jobs: mpsc::Sender<Job>,
        shared: Arc<Shared>,
    ) -> DeputyWay {
        DeputyWay {
            to,
            mig,
            dep: Mutex::new(DeputyFwd::new()),
            jobs: Mutex::new(Some(jobs)),
            shared,
            seen: AtomicU64::new(0),
            system: m.system.clone(),
            rt: m.rt.clone(),
        }
    }

    /// The worker ends after its current call.
    pub(crate) fn close(&self) {
        lock(&self.jobs).take();
    }

    /// Bytes read at home for the process and not yet delivered, on any of `fds`.
    pub(crate) fn pushed_back(&self, fds: &[i32]) -> usize {
        let dep = lock(&self.dep);
        fds.iter().map(|&fd| dep.pushed_back(fd)).sum()
    }

    /// A message from the remote. `may_block`: the caller is not on the runtime.
    pub(crate) fn on_msg(&self, msg: FwdMsg, may_block: bool) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        crate::deputy::note(&self.shared, &msg);
        let acts = lock(&self.dep).on_msg(msg);
        self.act(acts, may_block);
    }

    /// The worker finished a call (it may block: it is not on the runtime).
    pub(crate) fn done(&self, tid: Tid, seq: Seq, reply: Reply) {
        let acts = lock(&self.dep).on_done(tid, seq, reply);
        self.act(acts, true);
    }

    fn act(&self, acts: Vec<DeputyAction>, may_block: bool) {
        for a in acts {
            match a {
                DeputyAction::Send(msg) => self.send(msg, may_block),
                DeputyAction::Execute { tid, seq, call } => {
                    let sent = lock(&self.jobs)
                        .as_ref()
                        .is_some_and(|j| j.send(Job { tid, seq, call }).is_ok());
                    if !sent {
                        let acts = lock(&self.dep).on_done(tid, seq, Reply::errno(libc::EIO));
                        self.act(acts, may_block);
                    }
                }
                // A call held by the worker's waits (input, the foreground) stops waiting.
                DeputyAction::Interrupt { seq, .. } => {
                    self.shared.cancelled.store(seq, Ordering::SeqCst);
                }
            }
        }
    }

    /// Sends to the remote on the control lane: at once when the lane has room, else bounded
    /// by the send time-out (from a thread), or from a task of the runtime (on the runtime).
    fn send(&self, msg: FwdMsg, may_block: bool) {
        let wire = Wire::Fwd { mig: self.mig, msg };
        if self.system.try_tell(self.to, NAME, &wire).is_ok() {
            return;
        }
        let (sys, to) = (self.system.clone(), self.to);
        let fut = async move {
            if let Err(e) = sys
                .tell_on(Lane::Control, to, NAME, &wire, Bytes::new())
                .await
            {
                tracing::debug!(node = to, "forwarded-call reply not sent: {e}");
            }
        };
        if may_block {
            self.rt.block_on(fut);
        } else {
            self.rt.spawn(fut);
        }
    }
}
