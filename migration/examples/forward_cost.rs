//! Per-call cost of a forwarded 64-byte write (remote supervisor + in-process home stand-in)
//! against a plain write, a trapped write answered CONTINUE, with and without SYNC_WAKE_UP.
//!
//! `cargo run --release -p migration --example forward_cost [calls]`

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use migration::remote::{FdTable, Identity, Stop, Supervisor};
use migration::seccomp::{self, Listener, Program, TrapSet};
use migration::standin;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local timespec (vDSO: never trapped).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn devnull() -> OwnedFd {
    // SAFETY: open of a literal path; fresh fd owned here.
    unsafe {
        OwnedFd::from_raw_fd(libc::open(
            c"/dev/null".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        ))
    }
}

/// Forks a child that installs the filter and writes `calls` × 64 bytes to `fd`; it stores
/// the elapsed ns in `shared`. Returns its pid and listener.
fn spawn(prog: &Program, fd: RawFd, calls: u64, shared: *mut u64) -> (libc::pid_t, Listener) {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 into an array; the child makes raw calls only until _exit.
    unsafe { assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0) };
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: raw system calls in the forked child; `shared` is a MAP_SHARED page.
        unsafe {
            libc::close(p[0]);
            let probe = libc::fcntl(p[1], libc::F_DUPFD, 0);
            libc::close(probe);
            libc::write(p[1], (&probe as *const i32).cast(), 4);
            libc::close(p[1]);
            if seccomp::install(prog, true).is_err() {
                libc::_exit(100);
            }
            let buf = [7u8; 64];
            let t0 = now_ns();
            for _ in 0..calls {
                if libc::write(fd, buf.as_ptr().cast(), 64) != 64 {
                    libc::_exit(101);
                }
            }
            *shared = now_ns() - t0;
            libc::_exit(0);
        }
    }
    let mut n = 0i32;
    // SAFETY: our pipe ends.
    unsafe {
        libc::close(p[1]);
        libc::read(p[0], (&mut n as *mut i32).cast(), 4);
        libc::close(p[0]);
    }
    let pidfd = seccomp::pidfd_open(pid).unwrap();
    let listener = loop {
        if let Ok(l) = seccomp::pidfd_getfd(&pidfd, n)
            && seccomp::is_listener(l.as_raw_fd())
        {
            break Listener::new(l).unwrap();
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    (pid, listener)
}

#[derive(Clone, Copy, PartialEq)]
enum Home {
    /// The child writes a local fd: answered CONTINUE.
    Local,
    /// Forwarded to the stand-in thread (channels + eventfd).
    Thread,
    /// Forwarded and executed on the supervisor's thread.
    Direct,
}

fn run(calls: u64, home: Home, sync: bool) -> f64 {
    let prog = Program::build(&TrapSet::remote()).unwrap();
    // SAFETY: one anonymous shared page for the child's result.
    let shared = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as *mut u64;
    // The child writes to fd 1 (home-backed) or to a local /dev/null it inherits.
    let local = devnull();
    let fd = if home == Home::Local {
        local.as_raw_fd()
    } else {
        1
    };
    let (pid, listener) = spawn(&prog, fd, calls, shared);
    if sync {
        listener.set_sync_wake_up().unwrap();
    }
    let id = Identity {
        pid: 1,
        ppid: 1,
        pgid: 1,
        sid: 1,
        local_pid: pid,
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    if home == Home::Direct {
        let port = standin::DirectPort::new(HashMap::from([(1, devnull())])).unwrap();
        let mut sup = Supervisor::new(listener, id, FdTable::new([1]), port);
        assert_eq!(sup.run(deadline).unwrap(), Stop::Exited);
    } else {
        let (port, stand) = standin::spawn(HashMap::from([(1, devnull())])).unwrap();
        let mut sup = Supervisor::new(listener, id, FdTable::new([1]), port);
        assert_eq!(sup.run(deadline).unwrap(), Stop::Exited);
        drop(sup);
        stand.join();
    }
    let mut status = 0;
    // SAFETY: reaping our child; reading its result from the shared page.
    let ns = unsafe {
        libc::waitpid(pid, &mut status, 0);
        *shared
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child {status:#x}"
    );
    ns as f64 / calls as f64 / 1000.0
}

fn plain(calls: u64) -> f64 {
    let fd = devnull();
    let buf = [7u8; 64];
    let t0 = now_ns();
    for _ in 0..calls {
        // SAFETY: a 64-byte write from our buffer.
        assert_eq!(
            unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), 64) },
            64
        );
    }
    (now_ns() - t0) as f64 / calls as f64 / 1000.0
}

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    println!("64-byte write to /dev/null, {calls} calls, µs/call");
    println!(
        "plain write, no filter:               {:6.2}",
        plain(calls * 10)
    );
    for sync in [true, false] {
        let s = if sync { "SYNC_WAKE_UP" } else { "no sync" };
        println!(
            "trapped, local fd, CONTINUE, {s:12}:        {:6.2}",
            run(calls, Home::Local, sync)
        );
        println!(
            "forwarded, home on supervisor thread, {s:12}: {:6.2}",
            run(calls, Home::Direct, sync)
        );
        println!(
            "forwarded, home stand-in thread, {s:12}:     {:6.2}",
            run(calls, Home::Thread, sync)
        );
    }
}
