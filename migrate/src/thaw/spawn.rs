//! Process creation: clone3 (with set_tid for the old PID) of a traced, stopped child.

use crate::error::errno;
use crate::sys::*;
use libc::pid_t;
use std::io;

/// Kills the half-built process unless disarmed.
pub(super) struct ChildGuard {
    pub(super) pid: pid_t,
    pub(super) armed: bool,
}
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.armed {
            // SAFETY: our own child.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            // its other threads (traced by us) must be reaped before the main thread reports
            if let Ok(rd) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) {
                for tid in rd
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                {
                    if tid != self.pid {
                        let _ = wait(tid);
                    }
                }
            }
            let _ = wait(self.pid);
            let mut st = 0;
            // SAFETY: reap our child.
            unsafe { libc::waitpid(self.pid, &mut st, libc::__WALL | libc::WNOHANG) };
        }
    }
}

#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn child_main(fds: &[i32; 3]) -> ! {
    // Only raw system calls here: we may be the fork of a multi-threaded process.
    // SAFETY: raw syscalls with valid arguments.
    unsafe {
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            0usize,
            8usize,
        );
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL,
            0,
            0,
            0,
        );
        for (i, &fd) in fds.iter().enumerate() {
            if fd >= 0 && fd != i as i32 {
                libc::syscall(libc::SYS_dup3, fd, i as i32, 0);
            }
        }
        libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
        let me = libc::syscall(libc::SYS_getpid);
        libc::syscall(libc::SYS_kill, me, libc::SIGSTOP);
        libc::syscall(libc::SYS_exit_group, 127);
    }
    #[allow(clippy::empty_loop)]
    loop {}
}

pub(super) fn spawn(fds: &[i32; 3], set_tid: Option<pid_t>) -> io::Result<pid_t> {
    let tid: pid_t = set_tid.unwrap_or(0);
    let args = CloneArgs {
        flags: 0,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: if set_tid.is_some() {
            &tid as *const pid_t as u64
        } else {
            0
        },
        set_tid_size: set_tid.is_some() as u64,
        cgroup: 0,
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork; the child only makes raw syscalls.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        child_main(fds);
    }
    if r < 0 {
        return Err(errno());
    }
    Ok(r as pid_t)
}
