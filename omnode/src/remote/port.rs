//! The supervisor's port home: forwarded calls on the control lane, replies through a channel
//! and an eventfd; and the seccomp filter the remote installs.

use super::*;

/// The home port: forwarded calls go home on the control lane; replies come back through the
/// protocol shell's channel and an eventfd.
pub(super) struct Port {
    pub(super) m: std::sync::Arc<Migrator>,
    pub(super) home: NodeId,
    pub(super) mig: MigId,
    pub(super) rx: mpsc::Receiver<FwdMsg>,
    pub(super) wake: std::sync::Arc<OwnedFd>,
}

impl HomePort for Port {
    fn send(&mut self, msg: FwdMsg) -> Result<(), String> {
        let w = Wire::Fwd { mig: self.mig, msg };
        if self.m.send(self.home, Lane::Control, &w, Bytes::new()) {
            Ok(())
        } else {
            Err(format!("node {} is unreachable", self.home))
        }
    }
    fn try_recv(&mut self) -> Option<FwdMsg> {
        self.rx.try_recv().ok()
    }
    fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
    fn clear_wake(&mut self) {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from our non-blocking eventfd into `v`.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

pub(super) fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd with integer flags; on success a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn filter() -> Result<migrate::SeccompFilter, String> {
    let p = migration::seccomp::Program::build(&migration::seccomp::TrapSet::remote())
        .map_err(|e| format!("seccomp filter: {e}"))?;
    Ok(migrate::SeccompFilter(
        p.instructions()
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect(),
    ))
}
