//! Shared by the kernel tests: a forked child running under the remote's filter.
#![allow(dead_code)]

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use migration::seccomp::{self, Listener, Program};

/// Kills and reaps the child on every exit path.
pub struct Child {
    pub pid: libc::pid_t,
    reaped: bool,
}

impl Child {
    pub fn wait(&mut self) -> i32 {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        assert_eq!(r, self.pid);
        self.reaped = true;
        status
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: our own child, not yet reaped, so the PID is still ours.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Forks a child that installs `prog` and then runs `body` (async-signal-safe code only) and
/// exits with its return value. Returns the child and its listener.
pub fn spawn_filtered(prog: &Program, body: fn() -> i32) -> (Child, Listener) {
    spawn_filtered_prep(prog, || {}, body)
}

/// [`spawn_filtered`], running `prep` (async-signal-safe) in the child before the filter.
pub fn spawn_filtered_prep(prog: &Program, prep: fn(), body: fn() -> i32) -> (Child, Listener) {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 into a 2-int array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only makes raw system calls (no allocation, no locks) until _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY (whole block): raw system calls in the forked child.
        unsafe {
            libc::close(p[0]);
            prep();
            // The listener will take the lowest free fd: find it and tell the parent.
            let probe = libc::fcntl(p[1], libc::F_DUPFD, 0);
            libc::close(probe);
            let n = probe as u32;
            libc::write(p[1], (&n as *const u32).cast(), 4);
            libc::close(p[1]);
            match seccomp::install(prog, true) {
                Ok(fd) if fd == probe => {}
                _ => libc::_exit(100),
            }
            libc::_exit(body());
        }
    }
    let child = Child { pid, reaped: false };
    let mut n = 0u32;
    // SAFETY: closing our write end; reading 4 bytes into `n`.
    unsafe {
        libc::close(p[1]);
        assert_eq!(libc::read(p[0], (&mut n as *mut u32).cast(), 4), 4);
        libc::close(p[0]);
    }
    let pidfd = seccomp::pidfd_open(pid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        if let Ok(fd) = seccomp::pidfd_getfd(&pidfd, n as RawFd)
            && seccomp::is_listener(std::os::fd::AsRawFd::as_raw_fd(&fd))
        {
            break Listener::new(fd).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the child never installed its filter"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    (child, listener)
}
