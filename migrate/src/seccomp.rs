//! The little the engine needs of seccomp user notification and pidfds: taking an fd out of
//! another process, and answering "continue" to notifications raised by the engine's own
//! injected calls. The filter program itself is the caller's (see [`SeccompFilter`]).

use crate::error::errno;
use libc::pid_t;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A classic-BPF seccomp program, installed into a thawed process with
/// `SECCOMP_FILTER_FLAG_NEW_LISTENER` (see [`crate::ThawOptions::seccomp_filter`]).
#[derive(Clone, Default)]
pub struct SeccompFilter(pub Vec<libc::sock_filter>);

impl std::fmt::Debug for SeccompFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeccompFilter({} instructions)", self.0.len())
    }
}

/// `pidfd_open(pid)`.
pub fn pidfd_open(pid: pid_t) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(errno());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// A copy of fd `fd` of process `pid` (pidfd_getfd; needs ptrace access to it).
pub fn pidfd_getfd(pid: pid_t, fd: RawFd) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let p = pidfd_open(pid)?;
    // SAFETY: integer arguments only.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, p.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(errno());
    }
    // SAFETY: a new fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Receives one notification from `listener` and, if process `pid` raised it, answers it with
/// `SECCOMP_USER_NOTIF_FLAG_CONTINUE` (the call then runs as if allowed). Notifications of other
/// processes are answered ENOSYS: while the engine holds the listener only its tracee can raise
/// any. A notification cancelled meanwhile (ENOENT) is not an error.
pub(crate) fn answer_continue(listener: RawFd, pid: pid_t) -> io::Result<()> {
    // SAFETY: zeroed plain struct, filled by the kernel.
    let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
    // SAFETY: the ioctl writes one seccomp_notif.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) } != 0 {
        let e = errno();
        return match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::EINTR) => Ok(()),
            _ => Err(e),
        };
    }
    let mut resp = libc::seccomp_notif_resp {
        id: n.id,
        val: 0,
        error: 0,
        flags: 0,
    };
    // the process or one of its threads (a thread being made and set up by injected calls)
    if n.pid as pid_t == pid
        || std::path::Path::new(&format!("/proc/{pid}/task/{}", n.pid)).exists()
    {
        resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
    } else {
        resp.error = -libc::ENOSYS;
    }
    // SAFETY: the ioctl reads one seccomp_notif_resp.
    if unsafe { libc::ioctl(listener, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) } != 0 {
        let e = errno();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    Ok(())
}
