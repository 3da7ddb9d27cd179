//! The tracer thread: one dedicated OS thread per traced process owns every ptrace call for it.
//!
//! Linux ties a tracee to the *thread* that attached it: only that thread may issue ptrace
//! requests, and when that thread exits the kernel detaches (or, with `PTRACE_O_EXITKILL`, kills)
//! the tracee. So each traced process gets its own thread, started by [`Tracer`], which takes
//! work over a channel and runs it against the thread-side state (a [`Slot`]). That state holds
//! the tracee handles; they are `!Send` (see [`NotSend`]), so they can never leave the thread. The
//! public handles ([`crate::Seized`], [`crate::Thawing`], [`crate::HomeShell`]) are `Send` and
//! only send closures.
//!
//! When the handle is dropped the channel closes, the thread drops its state (whose `Drop` puts
//! the process back, kills a half-built one, ...) and ends.

use crate::error::{Error, Result};
use libc::pid_t;
use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Marker that makes a type `!Send` and `!Sync`: tracee handles must stay on their thread.
pub(crate) type NotSend = PhantomData<*const ()>;

type Job = Box<dyn FnOnce(&mut Slot) + Send>;

/// What a handle sends its thread.
enum Msg {
    /// Run this job against the handle's own slot.
    Job(pid_t, Job),
    /// The handle of this key was dropped: drop its state (on a shared thread, also let its
    /// process go as the thread's end would; see [`Tracer::sibling`]).
    Gone(pid_t),
}

/// Work a thread does between jobs (the tree watch of [`crate::watch_tree`]), from its first
/// job on: it gets every slot (by key) and says how long the thread may wait for the next job
/// before calling it again; `None`: it is done and is not called again.
pub(crate) type Idle = Box<dyn FnMut(&mut Slots) -> Option<Duration> + Send>;

/// Thread-side state of a tracer thread: whatever the phase running on it keeps there.
#[derive(Default)]
pub(crate) struct Slot {
    state: Option<Box<dyn Any>>,
}

impl Slot {
    pub(crate) fn set<T: 'static>(&mut self, v: T) {
        self.state = Some(Box::new(v));
    }
    pub(crate) fn get<T: 'static>(&mut self) -> Option<&mut T> {
        self.state.as_mut()?.downcast_mut::<T>()
    }
    pub(crate) fn take<T: 'static>(&mut self) -> Option<T> {
        match self.state.take()?.downcast::<T>() {
            Ok(b) => Some(*b),
            Err(other) => {
                self.state = Some(other);
                None
            }
        }
    }
}

/// The slots of one thread, one per handle key (the PID its handle stands for).
#[derive(Default)]
pub(crate) struct Slots {
    by_key: HashMap<pid_t, Slot>,
}

impl Slots {
    pub(crate) fn slot(&mut self, key: pid_t) -> &mut Slot {
        self.by_key.entry(key).or_default()
    }
}

/// The thread and whether it carries several tracees (then a dropped handle's process is let
/// go by the thread at once, as the end of a thread of its own would).
struct Shared {
    thread: Mutex<Option<JoinHandle<()>>>,
    name: String,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // the last handle is gone (its sender was dropped before): the thread ends
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// Handle of one tracer thread, for one key (one traced process). `Send`; dropping the last
/// handle of a thread ends the thread (after its state's cleanup).
pub struct Tracer {
    tx: Option<mpsc::Sender<Msg>>,
    key: pid_t,
    shared: Option<Arc<Shared>>,
    name: String,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("name", &self.name)
            .field("key", &self.key)
            .finish()
    }
}

impl Tracer {
    /// Starts a tracer thread named `name` (shown in `ps -L` and panics).
    pub(crate) fn spawn(name: String) -> Result<Tracer> {
        Tracer::spawn_with(name, 0, None)
    }

    /// Starts a tracer thread whose first handle has key `key`, running `idle` between jobs.
    pub(crate) fn spawn_with(name: String, key: pid_t, mut idle: Option<Idle>) -> Result<Tracer> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut slots = Slots::default();
                // the idle work starts after the first job (which sets up its state) and
                // stops for good when it says so
                let mut wait: Option<Duration> = None;
                let mut started = false;
                loop {
                    let msg = match (&mut idle, wait) {
                        (Some(_), Some(w)) => match rx.recv_timeout(w) {
                            Ok(m) => Some(m),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        },
                        _ => match rx.recv() {
                            Ok(m) => Some(m),
                            Err(_) => break,
                        },
                    };
                    match msg {
                        Some(Msg::Job(key, job)) => {
                            job(slots.slot(key));
                            if !started {
                                started = true;
                                wait = Some(Duration::ZERO);
                            }
                        }
                        Some(Msg::Gone(key)) => {
                            if let Some(slot) = slots.by_key.remove(&key) {
                                let_go(key, slot, idle.is_some());
                            }
                        }
                        None => {}
                    }
                    if let (Some(f), Some(_)) = (&mut idle, wait) {
                        wait = f(&mut slots);
                    }
                }
                // the states' Drop runs here, on the tracer thread
                drop(slots);
                drop(idle);
            })
            .map_err(|source| Error::ThawSys {
                what: "starting a tracer thread".into(),
                source,
            })?;
        Ok(Tracer {
            tx: Some(tx),
            key,
            shared: Some(Arc::new(Shared {
                thread: Mutex::new(Some(thread)),
                name: name.clone(),
            })),
            name,
        })
    }

    /// Another handle on the same thread, for the tracee `key` (a process this thread already
    /// traces: a child auto-attached by a tree watch). The thread lives until every handle is
    /// gone; dropping this one drops its state and lets its process go.
    pub(crate) fn sibling(&self, key: pid_t) -> Tracer {
        Tracer {
            tx: self.tx.clone(),
            key,
            shared: self.shared.clone(),
            name: format!(
                "{} ({key})",
                self.shared.as_ref().map(|s| s.name.as_str()).unwrap_or("")
            ),
        }
    }

    /// Runs `f` on the tracer thread and returns its result. Fails only when the thread is gone
    /// (it panicked).
    pub(crate) fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Slot) -> R + Send + 'static,
    ) -> Result<R> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let gone = || Error::TracerGone {
            name: self.name.clone(),
        };
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(Msg::Job(
                self.key,
                Box::new(move |s: &mut Slot| {
                    let _ = rtx.send(f(s));
                }),
            ))
            .map_err(|_| gone())?;
        rrx.recv().map_err(|_| gone())
    }
}

/// On a shared thread, what the end of a thread of its own would do to a dropped handle's
/// process: a home shell (traced with PTRACE_O_EXITKILL) is killed, anything else is
/// detached (stopped first if it runs, so that the detach takes). Not traced by us any more
/// (detached, ended): nothing to do. On a thread of its own the thread's end does it.
fn let_go(pid: pid_t, slot: Slot, shared: bool) {
    let shell = slot
        .state
        .as_ref()
        .is_some_and(|s| s.is::<crate::shell::Shell>());
    drop(slot);
    if !shared || pid <= 0 {
        return;
    }
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let traced_by_us = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse::<pid_t>().ok())
        == Some(me);
    let ended = status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .is_some_and(|v| v.trim_start().starts_with(['Z', 'X']));
    if !traced_by_us || ended {
        // an ended one is left for its parent's wait
        return;
    }
    if shell {
        // SAFETY: plain kill of our tracee (its image lives on elsewhere).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = crate::sys::wait_until(pid, std::time::Instant::now() + Duration::from_secs(5));
        return;
    }
    use crate::sys::{Req, ptrace_req};
    if ptrace_req(Req::Detach, pid, 0).is_ok() {
        return;
    }
    // running: stop it, then detach (a signal that comes first is passed on)
    let _ = ptrace_req(Req::Interrupt, pid, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(st)) = crate::sys::wait_until(pid, deadline) {
        if !libc::WIFSTOPPED(st) {
            return;
        }
        let sig = if st >> 16 == 0 { libc::WSTOPSIG(st) } else { 0 };
        if ptrace_req(Req::Detach, pid, sig as usize).is_ok() {
            return;
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Msg::Gone(self.key));
            drop(tx);
        }
        // the last handle joins the thread (Shared's Drop)
        drop(self.shared.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_on_one_thread_and_state_is_dropped_there() {
        struct Probe(std::sync::mpsc::Sender<std::thread::ThreadId>, NotSend);
        impl Drop for Probe {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().id());
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let t = Tracer::spawn("omnode-test-tracer".into()).unwrap();
        let id1 = t
            .call(move |s| {
                s.set(Probe(tx, PhantomData));
                std::thread::current().id()
            })
            .unwrap();
        let id2 = t.call(|_| std::thread::current().id()).unwrap();
        assert_eq!(id1, id2);
        assert_ne!(id1, std::thread::current().id());
        let got = t.call(|s| s.get::<Probe>().is_some()).unwrap();
        assert!(got);
        drop(t);
        assert_eq!(
            rx.recv().unwrap(),
            id1,
            "state dropped on the tracer thread"
        );
    }

    /// The public handles cross threads; the tracee state stays on its own (it is `!Send`,
    /// which the compiler enforces for `Slot::set` callers through `Tracer::call`'s bounds).
    #[test]
    fn public_handles_are_send() {
        fn send<T: Send>() {}
        send::<Tracer>();
        send::<crate::Seized>();
        send::<crate::Thawing>();
        send::<crate::HomeShell>();
    }

    #[test]
    fn a_panicking_job_is_reported_not_propagated() {
        let t = Tracer::spawn("omnode-test-tracer".into()).unwrap();
        let r: Result<()> = t.call(|_| panic!("boom"));
        assert!(matches!(r, Err(Error::TracerGone { .. })), "{r:?}");
        assert!(t.call(|_| ()).is_err());
    }
}
