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
use std::any::Any;
use std::marker::PhantomData;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Marker that makes a type `!Send` and `!Sync`: tracee handles must stay on their thread.
pub(crate) type NotSend = PhantomData<*const ()>;

type Job = Box<dyn FnOnce(&mut Slot) + Send>;

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

/// Handle of one tracer thread. `Send`; dropping it ends the thread (after its state's cleanup).
pub struct Tracer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    name: String,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").field("name", &self.name).finish()
    }
}

impl Tracer {
    /// Starts a tracer thread named `name` (shown in `ps -L` and panics).
    pub(crate) fn spawn(name: String) -> Result<Tracer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut slot = Slot::default();
                while let Ok(job) = rx.recv() {
                    job(&mut slot);
                }
                // the state's Drop runs here, on the tracer thread
                drop(slot);
            })
            .map_err(|source| Error::ThawSys {
                what: "starting a tracer thread".into(),
                source,
            })?;
        Ok(Tracer {
            tx: Some(tx),
            thread: Some(thread),
            name,
        })
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
            .send(Box::new(move |s: &mut Slot| {
                let _ = rtx.send(f(s));
            }))
            .map_err(|_| gone())?;
        rrx.recv().map_err(|_| gone())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
