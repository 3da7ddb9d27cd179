//! The seccomp machinery against the real kernel: a forked child installs the remote's filter
//! (with no_new_privs, so no root is needed), the test takes its listener with pidfd_getfd and
//! supervises it.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

mod common;

use common::spawn_filtered;
use migration::seccomp::{self, Error, Listener, Notif, Program, Response, TrapSet};

const FAKE_HOME_PID: i64 = 424_242;

/// The child's program: each failed check sets a bit of the exit code.
fn child_program() -> i32 {
    let mut fails = 0;
    // SAFETY (whole body): raw system calls on our own buffers.
    unsafe {
        if libc::syscall(libc::SYS_getpid) != FAKE_HOME_PID {
            fails |= 1;
        }
        let msg = b"hello home\n";
        if libc::write(1, msg.as_ptr().cast(), msg.len()) != msg.len() as isize {
            fails |= 2;
        }
        let mut p = [0; 2];
        if libc::pipe2(p.as_mut_ptr(), 0) != 0 {
            fails |= 4;
        }
        let mut buf = [0u8; 8];
        if libc::write(p[1], b"local".as_ptr().cast(), 5) != 5
            || libc::read(p[0], buf.as_mut_ptr().cast(), 8) != 5
            || &buf[..5] != b"local"
        {
            fails |= 8;
        }
        let mut input = [0u8; 32];
        let n = libc::read(0, input.as_mut_ptr().cast(), 32);
        if n != 9 || &input[..9] != b"from home" {
            fails |= 16;
        }
        let r = libc::syscall(libc::SYS_fork);
        if r != -1 || *libc::__errno_location() != libc::ENOSYS {
            if r == 0 {
                libc::_exit(0); // a child that must never exist
            }
            fails |= 32;
        }
        // A home-backed open: the supervisor places an fd and answers with its number.
        let fd = libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/home/file".as_ptr(),
            0,
            0,
        );
        let mut got = [0u8; 16];
        if fd < 3
            || libc::read(fd as i32, got.as_mut_ptr().cast(), 16) != 7
            || &got[..7] != b"content"
        {
            fails |= 64;
        }
    }
    fails
}

#[derive(Default, Debug)]
struct Seen {
    stdout: Vec<u8>,
    continued: usize,
    identity: usize,
    must_go_home: Vec<i64>,
    unexpected: Vec<i64>,
}

fn serve(l: &Listener, n: &Notif, seen: &mut Seen, placed: &mut Vec<RawFd>) -> seccomp::Result<()> {
    let nr = i64::from(n.data.nr);
    let a = n.data.args;
    let fd = a[0] as i32;
    match nr {
        libc::SYS_getpid => {
            seen.identity += 1;
            l.respond(n.id, Response::Value(FAKE_HOME_PID))
        }
        libc::SYS_write if fd == 1 => {
            let data = l.read_mem(n, a[1], a[2] as usize)?;
            seen.stdout.extend_from_slice(&data);
            l.respond(n.id, Response::Value(data.len() as i64))
        }
        libc::SYS_read if fd == 0 => {
            let data = b"from home";
            l.write_mem(n, a[1], data)?;
            l.respond(n.id, Response::Value(data.len() as i64))
        }
        libc::SYS_read | libc::SYS_write | libc::SYS_close => {
            seen.continued += 1;
            l.respond(n.id, Response::Continue)
        }
        libc::SYS_fork | libc::SYS_clone | libc::SYS_clone3 | libc::SYS_vfork => {
            seen.must_go_home.push(nr);
            l.respond(n.id, Response::Errno(libc::ENOSYS))
        }
        libc::SYS_openat => {
            let path = l.read_mem(n, a[1], 10)?;
            assert_eq!(&path, b"/home/file");
            // SAFETY: memfd_create with a C string literal.
            let memfd = unsafe { libc::memfd_create(c"home".as_ptr(), libc::MFD_CLOEXEC) };
            assert!(memfd >= 0);
            // SAFETY: writing 7 bytes to our memfd and rewinding it.
            unsafe {
                libc::write(memfd, b"content".as_ptr().cast(), 7);
                libc::lseek(memfd, 0, libc::SEEK_SET);
            }
            placed.push(memfd);
            l.add_fd(n.id, memfd, None, false, true).map(|_| ())
        }
        other => {
            seen.unexpected.push(other);
            l.respond(n.id, Response::Errno(libc::ENOSYS))
        }
    }
}

#[test]
fn supervisor_answers_identity_serves_home_fds_continues_local_and_flags_fork() {
    let prog = Program::build(&TrapSet::remote()).unwrap();
    let (mut child, listener) = spawn_filtered(&prog, child_program);
    listener.set_sync_wake_up().unwrap();
    let mut seen = Seen::default();
    let mut placed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "child did not finish: {seen:?}");
        match listener.recv(Duration::from_millis(500)) {
            Ok(Some(n)) => serve(&listener, &n, &mut seen, &mut placed).unwrap(),
            Ok(None) => {}
            Err(Error::NoMoreUsers) => break,
            Err(e) => panic!("{e}"),
        }
    }
    for fd in placed {
        // SAFETY: our memfd.
        unsafe { libc::close(fd) };
    }
    let status = child.wait();
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "child checks failed (bits): {seen:?}"
    );
    assert_eq!(seen.stdout, b"hello home\n");
    assert_eq!(seen.identity, 1);
    assert!(seen.continued >= 2, "{seen:?}");
    assert_eq!(seen.must_go_home, vec![libc::SYS_fork]);
    assert!(seen.unexpected.is_empty(), "{seen:?}");
}

/// A write whose notification dies (the process is killed while the supervisor holds it):
/// ID_VALID says so, nothing is written into the process, SEND reports it, and the next
/// receive says the process is gone.
#[test]
fn a_dead_notification_is_detected_before_acting() {
    fn blocked_writer() -> i32 {
        let mut buf = [0u8; 16];
        // SAFETY: a read into our own buffer (trapped; the test never answers it).
        unsafe { libc::read(0, buf.as_mut_ptr().cast(), 16) as i32 }
    }
    let prog = Program::build(&TrapSet::remote()).unwrap();
    let (mut child, listener) = spawn_filtered(&prog, blocked_writer);
    let deadline = Instant::now() + Duration::from_secs(10);
    let n = loop {
        assert!(Instant::now() < deadline);
        if let Some(n) = listener.recv(Duration::from_millis(500)).unwrap() {
            break n;
        }
    };
    assert_eq!(i64::from(n.data.nr), libc::SYS_read);
    assert!(listener.id_valid(n.id).unwrap());
    // SAFETY: our own child.
    unsafe { libc::kill(child.pid, libc::SIGKILL) };
    // Wait for its death without reaping it: its PID must not be reused while we use it.
    // SAFETY: waitid on our own child into a zeroed siginfo.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            child.pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        )
    };
    assert_eq!(r, 0);
    assert!(!listener.id_valid(n.id).unwrap());
    assert!(matches!(
        listener.write_mem(&n, n.data.args[1], b"late"),
        Err(Error::Cancelled)
    ));
    assert!(matches!(
        listener.read_mem(&n, n.data.args[1], 4),
        Err(Error::Mem { .. } | Error::Cancelled)
    ));
    assert!(matches!(
        listener.respond(n.id, Response::Value(4)),
        Err(Error::Cancelled)
    ));
    assert!(matches!(
        listener.recv(Duration::from_secs(2)),
        Err(Error::NoMoreUsers)
    ));
    let status = child.wait();
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}
