//! The remote supervisor loop against the real kernel: a forked child runs under the remote's
//! filter with fds 0, 1 and 5 home-backed; an in-process home stand-in executes the forwarded
//! calls on real fds (two pipes and a memfd); the child checks every answer it gets.

mod common;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use common::{spawn_filtered, spawn_filtered_prep};
use migration::remote::{FdTable, GoHome, Identity, Stop, Supervisor};
use migration::seccomp::{Program, Response, TrapSet};
use migration::standin;

const HOME_PID: i64 = 31_337;
const HOME_PPID: i64 = 31_000;

/// A file the moved program opens after the move (set before the fork).
static HOME_PATH: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

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
        // Opened at home, placed here, read through home.
        if let Some(path) = HOME_PATH.get() {
            let fd = syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY,
                0,
            );
            if fd < 3
                || syscall(SYS_read, fd, buf.as_mut_ptr(), 64) != 10
                || &buf[..10] != b"home file\n"
            {
                fails |= 1024;
            }
        } else {
            fails |= 1024;
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
    let file = std::env::temp_dir().join(format!("migration-home-file-{}", std::process::id()));
    std::fs::write(&file, b"home file\n").unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _rm = Rm(file.clone());
    HOME_PATH
        .set(std::ffi::CString::new(file.to_str().unwrap()).unwrap())
        .unwrap();

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
    // write, read, fstat, lseek, pread, openat, read of the opened file, close.
    assert_eq!(stats.forwarded, 8, "{stats:?}");
    drop(sup);
    let left = standin.join();
    assert!(left.contains_key(&0) && left.contains_key(&5) && !left.contains_key(&1));
    assert_eq!(
        left.len(),
        3,
        "the file opened after the move is held at home"
    );
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

static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

extern "C" fn on_usr1(_: libc::c_int) {
    HANDLED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

fn handler(flags: libc::c_int) {
    // SAFETY: installing a signal handler in the forked child (sigaction is a system call).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        sa.sa_flags = flags;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
}

/// Runs `program` under a supervisor whose home takes 300 ms per call; the child gets SIGUSR1
/// as home starts its first call (so the call is in flight). Returns the child's exit code and
/// the stats.
fn run_interrupted(
    prep: fn(),
    program: fn() -> i32,
    home_fds: HashMap<i32, OwnedFd>,
) -> (i32, migration::remote::Stats) {
    let prog = Program::build(&TrapSet::remote()).unwrap();
    let child_pid = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p2, s2) = (child_pid.clone(), signalled.clone());
    let (port, standin) =
        standin::spawn_with_delay(home_fds, Duration::from_millis(300), move |_| {
            let pid = p2.load(std::sync::atomic::Ordering::SeqCst);
            if pid > 0 && !s2.swap(true, std::sync::atomic::Ordering::SeqCst) {
                // SAFETY: signalling our child, which is reaped only after the stand-in ends.
                unsafe { libc::kill(pid, libc::SIGUSR1) };
            }
        })
        .unwrap();
    let (mut child, listener) = spawn_filtered_prep(&prog, prep, program);
    child_pid.store(child.pid, std::sync::atomic::Ordering::SeqCst);
    let id = Identity {
        pid: HOME_PID as i32,
        ppid: HOME_PPID as i32,
        pgid: HOME_PID as i32,
        sid: HOME_PPID as i32,
        local_pid: child.pid,
    };
    let mut sup = Supervisor::new(listener, id, FdTable::new([0, 1]), port);
    let stop = sup.run(Instant::now() + Duration::from_secs(20)).unwrap();
    assert_eq!(stop, Stop::Exited);
    let stats = sup.stats().clone();
    drop(sup);
    standin.join();
    assert!(signalled.load(std::sync::atomic::Ordering::SeqCst));
    let status = child.wait();
    assert!(libc::WIFEXITED(status), "{status:#x}");
    (libc::WEXITSTATUS(status), stats)
}

/// A forwarded write interrupted by a signal (SA_RESTART) while home runs it: the restarted
/// call is attached to the write in flight; the bytes reach home once and the write returns
/// their count.
#[test]
fn interrupted_forwarded_write_is_done_once() {
    fn prep() {
        handler(libc::SA_RESTART);
    }
    fn program() -> i32 {
        let msg = b"exactly once\n";
        // SAFETY: raw write from our buffer.
        let n = unsafe { libc::syscall(libc::SYS_write, 1, msg.as_ptr(), msg.len()) };
        let mut fails = 0;
        if n != msg.len() as i64 {
            fails |= 1;
        }
        if HANDLED.load(std::sync::atomic::Ordering::SeqCst) != 1 {
            fails |= 2;
        }
        fails
    }
    let (out_r, out_w) = pipe();
    let (code, stats) = run_interrupted(prep, program, HashMap::from([(1, out_w)]));
    assert_eq!(code, 0, "{stats:?}");
    // The restart came back as a second notification of the same call.
    assert_eq!(stats.forwarded, 2, "{stats:?}");
    let mut buf = [0u8; 64];
    // SAFETY: reading from our pipe (its write end is closed: the stand-in has ended).
    let n = unsafe { libc::read(out_r.as_raw_fd(), buf.as_mut_ptr().cast(), 64) };
    assert_eq!(&buf[..n as usize], b"exactly once\n");
}

/// A forwarded read interrupted by a signal without SA_RESTART while home runs it: the thread
/// gets EINTR; the bytes home had already read come back and the next read returns them.
#[test]
fn interrupted_forwarded_read_loses_nothing() {
    fn prep() {
        handler(0);
    }
    fn program() -> i32 {
        let mut fails = 0;
        let mut a = [0u8; 64];
        let mut b = [0u8; 32];
        // SAFETY: raw reads into our buffers.
        unsafe {
            let n = libc::syscall(libc::SYS_read, 0, a.as_mut_ptr(), 64);
            if n != -1 || *libc::__errno_location() != libc::EINTR {
                fails |= 1;
            }
            let n = libc::syscall(libc::SYS_read, 0, b.as_mut_ptr(), 32);
            if n != 11 || &b[..11] != b"data first\n" {
                fails |= 2;
            }
        }
        if HANDLED.load(std::sync::atomic::Ordering::SeqCst) != 1 {
            fails |= 4;
        }
        fails
    }
    let (in_r, in_w) = pipe();
    // SAFETY: writing 11 bytes into our pipe.
    unsafe { libc::write(in_w.as_raw_fd(), b"data first\n".as_ptr().cast(), 11) };
    let (code, stats) = run_interrupted(prep, program, HashMap::from([(0, in_r)]));
    assert_eq!(code, 0, "{stats:?}");
}

/// Reads 16 bytes from (home-backed) fd 0; exits 0 when it got "x\n".
fn reads_one_line() -> i32 {
    let mut b = [0u8; 16];
    // SAFETY: raw read into our own buffer.
    let n = unsafe { libc::syscall(libc::SYS_read, 0, b.as_mut_ptr(), 16) };
    if n == 2 && &b[..2] == b"x\n" { 0 } else { 1 }
}

/// `run_until_idle` (the moment a moved process may be frozen for its way home) does not
/// return while a forwarded read waits at home for input, and returns as soon as that read is
/// answered: then no call is half-done at home and no input can be lost.
#[test]
fn run_until_idle_waits_for_a_forwarded_read_to_be_answered() {
    let prog = Program::build(&TrapSet::remote()).unwrap();
    let (in_r, in_w) = pipe();
    let (port, standin) = standin::spawn(HashMap::from([(0, in_r)])).unwrap();
    let (mut child, listener) = spawn_filtered(&prog, reads_one_line);
    let id = Identity {
        pid: HOME_PID as i32,
        ppid: HOME_PPID as i32,
        pgid: HOME_PID as i32,
        sid: HOME_PPID as i32,
        local_pid: child.pid,
    };
    let mut sup = Supervisor::new(listener, id, FdTable::new([0]), port);
    assert_eq!(sup.in_flight(), 0);
    assert_eq!(sup.run_until_idle(Instant::now()).unwrap(), Stop::Deadline);
    // the read goes home and waits there for input
    let until = Instant::now() + Duration::from_secs(10);
    while sup.in_flight() == 0 {
        assert!(Instant::now() < until, "the read was never forwarded");
        assert_eq!(
            sup.run(Instant::now() + Duration::from_millis(20)).unwrap(),
            Stop::Deadline
        );
    }
    let t0 = Instant::now();
    assert_eq!(
        sup.run_until_idle(t0 + Duration::from_millis(300)).unwrap(),
        Stop::Deadline
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "returned while the read waited"
    );
    assert_eq!(sup.in_flight(), 1);
    // input arrives: the read is answered and run_until_idle returns at once
    // SAFETY: writing 2 bytes into our pipe.
    unsafe { libc::write(in_w.as_raw_fd(), b"x\n".as_ptr().cast(), 2) };
    let t0 = Instant::now();
    assert_eq!(
        sup.run_until_idle(t0 + Duration::from_secs(10)).unwrap(),
        Stop::Deadline
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "did not return when the read was answered"
    );
    assert_eq!(sup.in_flight(), 0);
    match sup.run(Instant::now() + Duration::from_secs(10)).unwrap() {
        Stop::Exited => {}
        other => panic!("unexpected stop: {other:?}"),
    }
    let status = child.wait();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child did not get its line: {status:#x}"
    );
    drop(sup);
    standin.join();
}
