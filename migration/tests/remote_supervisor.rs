//! The remote supervisor loop against the real kernel: a forked child runs under the remote's
//! filter with fds 0, 1 and 5 home-backed; an in-process home stand-in executes the forwarded
//! calls on real fds (two pipes and a memfd); the child checks every answer it gets.

mod common;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use common::spawn_filtered_prep;
use migration::remote::{FdTable, GoHome, Identity, Stop, Supervisor};
use migration::seccomp::{Program, Response, TrapSet};
use migration::standin;

const HOME_PID: i64 = 31_337;
const HOME_PPID: i64 = 31_000;

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 into a 2-int array; both fds are fresh and owned here.
    unsafe {
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
    }
}

fn memfd_with(data: &[u8]) -> OwnedFd {
    // SAFETY: memfd_create with a literal name, then a write of `data` into the fresh fd.
    unsafe {
        let fd = libc::memfd_create(c"homefile".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(
            libc::write(fd, data.as_ptr().cast(), data.len()),
            data.len() as isize
        );
        OwnedFd::from_raw_fd(fd)
    }
}

/// Before the filter: a placeholder at fd 5 (the home file's number).
fn prep() {
    // SAFETY: raw calls in the forked child.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        libc::dup2(fd, 5);
        libc::close(fd);
    }
}

/// The moved program: each failed check sets a bit of the exit code.
fn program() -> i32 {
    let mut fails = 0;
    // SAFETY (whole body): raw system calls on our own buffers.
    unsafe {
        use libc::{
            SYS_close, SYS_fstat, SYS_getpid, SYS_getppid, SYS_kill, SYS_lseek, SYS_pread64,
            SYS_read, SYS_write, syscall,
        };
        if syscall(SYS_getpid) != HOME_PID {
            fails |= 1;
        }
        if syscall(SYS_getppid) != HOME_PPID {
            fails |= 2;
        }
        let out = b"out: hello\n";
        if syscall(SYS_write, 1, out.as_ptr(), out.len()) != out.len() as i64 {
            fails |= 4;
        }
        let mut buf = [0u8; 64];
        let n = syscall(SYS_read, 0, buf.as_mut_ptr(), 64);
        if n != 11 || &buf[..11] != b"input line\n" {
            fails |= 8;
        }
        let mut p = [0; 2];
        libc::pipe2(p.as_mut_ptr(), 0);
        if syscall(SYS_write, p[1], b"loc".as_ptr(), 3) != 3
            || syscall(SYS_read, p[0], buf.as_mut_ptr(), 64) != 3
            || &buf[..3] != b"loc"
        {
            fails |= 16;
        }
        let mut st: libc::stat = std::mem::zeroed();
        if syscall(SYS_fstat, 1, &mut st as *mut libc::stat) != 0
            || st.st_mode & libc::S_IFMT != libc::S_IFIFO
        {
            fails |= 32;
        }
        if syscall(SYS_lseek, 5, 0, libc::SEEK_END) != 10
            || syscall(SYS_pread64, 5, buf.as_mut_ptr(), 4, 2) != 4
            || &buf[..4] != b"2345"
        {
            fails |= 64;
        }
        // Closed at home and here: fd 1 is then an ordinary closed fd.
        if syscall(SYS_close, 1) != 0
            || syscall(SYS_write, 1, out.as_ptr(), out.len()) != -1
            || *libc::__errno_location() != libc::EBADF
        {
            fails |= 128;
        }
        if syscall(SYS_kill, HOME_PID, 0) != 0 {
            fails |= 256;
        }
        let r = syscall(libc::SYS_fork);
        if r == 0 {
            libc::_exit(0);
        }
        if r != -1 || *libc::__errno_location() != libc::ENOSYS {
            fails |= 512;
        }
    }
    fails
}

#[test]
fn supervised_child_gets_home_identity_and_home_fds() {
    let prog = Program::build(&TrapSet::remote()).unwrap();
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    // SAFETY: writing 11 bytes into our pipe.
    unsafe { libc::write(in_w.as_raw_fd(), b"input line\n".as_ptr().cast(), 11) };
    let home_fds: HashMap<i32, OwnedFd> =
        HashMap::from([(0, in_r), (1, out_w), (5, memfd_with(b"0123456789"))]);
    let (port, standin) = standin::spawn(home_fds).unwrap();

    let (mut child, listener) = spawn_filtered_prep(&prog, prep, program);
    listener.set_sync_wake_up().unwrap();
    let id = Identity {
        pid: HOME_PID as i32,
        ppid: HOME_PPID as i32,
        pgid: HOME_PID as i32,
        sid: HOME_PPID as i32,
        local_pid: child.pid,
    };
    let mut sup = Supervisor::new(listener, id, FdTable::new([0, 1, 5]), port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut went_home = Vec::new();
    loop {
        match sup.run(deadline).unwrap() {
            Stop::Exited => break,
            Stop::Deadline => panic!("the child did not finish: {:?}", sup.stats()),
            Stop::GoHome { notif, reason } => {
                went_home.push((i64::from(notif.data.nr), reason));
                // This test has no home to go to: refuse the call and carry on.
                sup.listener()
                    .respond(notif.id, Response::Errno(libc::ENOSYS))
                    .unwrap();
            }
        }
    }
    let status = child.wait();
    assert!(libc::WIFEXITED(status), "{status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "failed checks (bits); stats {:?}",
        sup.stats()
    );
    assert_eq!(went_home, vec![(libc::SYS_fork, GoHome::Fork)]);
    assert!(
        !sup.fds().is_home(1),
        "closed fd 1 is no longer home-backed"
    );
    let stats = sup.stats().clone();
    // write, read, fstat, lseek, pread and close on home fds.
    assert_eq!(stats.forwarded, 6, "{stats:?}");
    drop(sup);
    let left = standin.join();
    assert!(left.contains_key(&0) && left.contains_key(&5) && !left.contains_key(&1));
    // What the child wrote to "home stdout" arrived there, once; the pipe is closed after.
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into our buffer from our pipe.
        let n = unsafe { libc::read(out_r.as_raw_fd(), buf.as_mut_ptr().cast(), 64) };
        assert!(n >= 0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    assert_eq!(got, b"out: hello\n");
}
