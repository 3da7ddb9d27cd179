//! fds whose other end lies outside the process (an inherited pipe): recorded as external,
//! attached at thaw to what the caller names; refused when data would be lost or the process
//! holds both ends. Needs root.

mod common;
use common::*;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

/// counter (300 iterations) with `fds[i]` of ours at fd 100 + i, nothing else above 2.
fn counter_with(fds: &[i32], out: &std::path::Path) -> Proc {
    let f = std::fs::File::create(out).unwrap();
    let mut c = Command::new(prog("counter"));
    c.args(["300", "1", "10"])
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    let fds = fds.to_vec();
    // SAFETY: dup2 and close_range are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            for (i, &fd) in fds.iter().enumerate() {
                libc::dup2(fd, 100 + i as i32);
            }
            libc::syscall(libc::SYS_close_range, 3u32, 99u32, 0u32);
            libc::syscall(
                libc::SYS_close_range,
                100 + fds.len() as u32,
                u32::MAX,
                0u32,
            );
            Ok(())
        });
    }
    Proc::new(c.spawn().unwrap().id() as i32)
}

fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds, which we then own.
    unsafe {
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(p[0]),
            std::os::fd::OwnedFd::from_raw_fd(p[1]),
        )
    }
}

#[test]
fn an_inherited_pipe_is_carried_as_external_and_attached_to_the_named_file() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (r, w) = pipe();
    let mut p = counter_with(&[w.as_raw_fd()], &dir.path().join("out"));
    drop(r); // its other end is nowhere now: still no reason to refuse
    std::thread::sleep(Duration::from_millis(100));
    let img = freeze(p.pid, false).expect("an inherited pipe must not block a freeze");
    p.wait(T);
    let ri = migrate::ImageReader::new(&img[..]).unwrap();
    let f = ri.process().fds.iter().find(|f| f.fd == 100).cloned();
    assert!(
        matches!(&f, Some(migrate::Fd { kind: migrate::FdKind::External { what, .. }, .. }) if what.starts_with("write end of pipe:[")),
        "{f:?}"
    );
    // without a name for it: refused before anything is made, saying which fd needs one
    match migrate::thaw(&img[..], &migrate::ThawOptions::default()) {
        Err(migrate::Error::FdsNeedNames { fds }) => {
            assert_eq!(fds.len(), 1);
            assert_eq!(fds[0].0, 100);
        }
        o => panic!("thaw without a name for fd 100: {o:?}"),
    }
    // named: the thawed process has the file there
    let named = dir.path().join("named");
    let nf = std::fs::File::create(&named).unwrap();
    let t = migrate::thaw(
        &img[..],
        &migrate::ThawOptions {
            fd_placeholders: vec![(100, nf.as_raw_fd())],
            ..Default::default()
        },
    )
    .expect("thaw with fd 100 named");
    let mut q = Proc::new(t.pid);
    let l = std::fs::read_link(format!("/proc/{}/fd/100", q.pid)).unwrap();
    assert_eq!(l, named);
    assert!(exited_ok(q.wait(T)));
    assert!(read(&dir.path().join("out")).ends_with("DONE ok\n"));
}

#[test]
fn a_pipe_with_unread_data_or_both_ends_also_held_elsewhere_is_refused_untouched() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // the read end, with 5 bytes the process has not read
    let (r, w) = pipe();
    let mut p = counter_with(&[r.as_raw_fd()], &dir.path().join("a"));
    // SAFETY: writing 5 bytes from a valid buffer.
    assert_eq!(
        unsafe { libc::write(w.as_raw_fd(), b"hello".as_ptr().cast(), 5) },
        5
    );
    std::thread::sleep(Duration::from_millis(100));
    let e = freeze(p.pid, false).expect_err("unread data must be refused");
    assert!(e.to_string().contains("5 bytes"), "{e}");
    assert!(p.alive());
    // both ends in the process, but this test process holds them too: moving the pipe would
    // cut it off from us (a pipe only the process holds is carried: see inproc_fds.rs)
    let (r2, w2) = pipe();
    let mut q = counter_with(&[r2.as_raw_fd(), w2.as_raw_fd()], &dir.path().join("b"));
    std::thread::sleep(Duration::from_millis(100));
    let e = freeze(q.pid, false).expect_err("a pipe shared with another process must be refused");
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    assert!(
        e.to_string()
            .contains(&format!("also held by process {me}")),
        "{e}"
    );
    assert!(q.alive());
    for x in [&mut p, &mut q] {
        // SAFETY: our children.
        unsafe { libc::kill(x.pid, libc::SIGKILL) };
        x.wait(T);
    }
}

#[test]
fn an_inherited_fifo_is_external_too() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // a non-blocking read end (no writer needed to open it)
    // SAFETY: a valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    assert!(fd >= 0);
    let mut p = counter_with(&[fd], &dir.path().join("out"));
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    std::thread::sleep(Duration::from_millis(100));
    let img = freeze(p.pid, false).expect("an inherited fifo must not block a freeze");
    p.wait(T);
    let ri = migrate::ImageReader::new(&img[..]).unwrap();
    let f = ri.process().fds.iter().find(|f| f.fd == 100).cloned();
    assert!(
        matches!(&f, Some(migrate::Fd { kind: migrate::FdKind::External { what, .. }, .. })
            if what.starts_with("read end of fifo ") && what.ends_with("/fifo")),
        "{f:?}"
    );
    let null = std::fs::File::open("/dev/null").unwrap();
    let t = migrate::thaw(
        &img[..],
        &migrate::ThawOptions {
            fd_placeholders: vec![(100, null.as_raw_fd())],
            ..Default::default()
        },
    )
    .expect("thaw with fd 100 named");
    let mut q = Proc::new(t.pid);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/fd/100", q.pid)).unwrap(),
        std::path::Path::new("/dev/null")
    );
    assert!(exited_ok(q.wait(T)));
    assert!(read(&dir.path().join("out")).ends_with("DONE ok\n"));
}
