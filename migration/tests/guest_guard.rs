//! Issue 13 part 2a against the real kernel: a guest must never run on without its supervisor.
//! A forked child writes to a home-backed fd in a loop under the remote's filter, served by a
//! supervisor with an in-process home; then the supervisor is dropped while the child lives.
//! With [`migration::guard::KillOnDrop`] the child dies by SIGKILL before its listener closes;
//! without it (the hazard, shown by the second test) its next trapped call gets ENOSYS and it
//! runs on.

mod common;

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use common::spawn_filtered;
use migration::guard::KillOnDrop;
use migration::remote::{FdTable, Identity, Stop, Supervisor};
use migration::seccomp::{Program, TrapSet};
use migration::standin::DirectPort;

/// Writes "x" to fd 1 every millisecond; exits 7 when a write fails with ENOSYS (the filter
/// has no listener any more), 8 on any other failure. After its first write (served, so the
/// supervisor holds the listener) it closes its own copy of the listener, as a thawed guest
/// has none: only the supervisor's copy keeps the listener open.
fn writer() -> i32 {
    // SAFETY (whole body): raw system calls on our own buffers, in the forked child.
    unsafe {
        if libc::syscall(libc::SYS_write, 1, b"x".as_ptr(), 1) != 1 {
            return 8;
        }
        for fd in 3..1024 {
            libc::syscall(libc::SYS_close, fd);
        }
        loop {
            let r = libc::syscall(libc::SYS_write, 1, b"x".as_ptr(), 1);
            if r != 1 {
                return if *libc::__errno_location() == libc::ENOSYS {
                    7
                } else {
                    8
                };
            }
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            libc::nanosleep(&ts, std::ptr::null_mut());
        }
    }
}

fn memfd() -> OwnedFd {
    // SAFETY: memfd_create with a literal name; a fresh fd owned here.
    unsafe {
        let fd = libc::memfd_create(c"guarded".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        OwnedFd::from_raw_fd(fd)
    }
}

/// Serves the child's writes for a while; returns the supervisor (still holding the listener).
fn served() -> (common::Child, Supervisor<DirectPort>) {
    let prog = Program::build(&TrapSet::remote()).unwrap();
    let (child, listener) = spawn_filtered(&prog, writer);
    let id = Identity {
        pid: 4242,
        ppid: 4000,
        pgid: 4242,
        sid: 4000,
        local_pid: child.pid,
    };
    let port = DirectPort::new(HashMap::from([(1, memfd())])).unwrap();
    let mut sup = Supervisor::new(listener, id, FdTable::new([1]), port);
    let until = Instant::now() + Duration::from_millis(150);
    match sup.run(until).unwrap() {
        Stop::Deadline => {}
        other => panic!("the child stopped early: {other:?}"),
    }
    assert!(sup.stats().forwarded > 0, "no write was forwarded");
    (child, sup)
}

#[test]
fn a_dropped_supervisor_kills_its_guest_before_the_listener_closes() {
    let (mut child, sup) = served();
    let sup = sup.kill_guest_on_drop(KillOnDrop::new(child.pid).unwrap());
    drop(sup);
    let status = child.wait();
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "the guest should die by SIGKILL, status {status:#x} (exit {})",
        libc::WEXITSTATUS(status)
    );
}

#[test]
fn without_the_guard_the_guest_runs_on_with_enosys() {
    let (mut child, sup) = served();
    drop(sup);
    let status = child.wait();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
        "expected exit 7 (ENOSYS from a trapped write), status {status:#x}"
    );
}
