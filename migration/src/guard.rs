//! The guest must never run without its supervisor.
//!
//! Once the seccomp listener is closed, every call the filter traps fails with `ENOSYS` (the
//! kernel's answer when a `USER_NOTIF` filter has no listener, forwarding-facts): the guest would
//! run on with wrong answers to its home calls. [`KillOnDrop`] is held by whoever holds the
//! listener, ahead of it, and kills the guest (SIGKILL through a pidfd, so a reused PID is never
//! hit) before the listener closes: a supervisor that ends, panics or is dropped for any reason
//! takes its guest with it. A guest that already ended is not hurt (the signal goes nowhere).
//!
//! Owns: that guarantee. Must not know: why the supervisor ended.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Kills the process when dropped (see the module documentation).
#[derive(Debug)]
pub struct KillOnDrop {
    pidfd: OwnedFd,
    pid: i32,
}

impl KillOnDrop {
    /// Watches process `pid` (a child of the caller, or one it may signal).
    pub fn new(pid: i32) -> io::Result<KillOnDrop> {
        Ok(KillOnDrop {
            pidfd: crate::seccomp::pidfd_open(pid)?,
            pid,
        })
    }

    /// The watched PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: pidfd_send_signal with our own pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if r == 0 {
            tracing::debug!(pid = self.pid, "supervisor gone: guest killed");
        }
    }
}
