//! Standard streams (pipe and terminal) reattached at thaw, sessions, process groups and job
//! control state across freeze/thaw of real processes (needs root; skipped with a message
//! otherwise).

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn session_leader_comes_back_as_one() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut c = Command::new(prog("counter"));
    c.args(["40", "1", "10"]);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut p = spawn(&mut c, &out, None);
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let mut q = thaw(&img);
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", q.pid)).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(f[2], q.pid.to_string(), "not its own process group: {stat}");
    assert_eq!(f[3], q.pid.to_string(), "not a session leader: {stat}");
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn pipe_stdout_attaches_to_a_file_named_at_thaw() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(prog("counter"));
    c.args(["40", "1", "10"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    #[allow(clippy::zombie_processes)] // reaped by Proc
    let mut child = c.spawn().unwrap();
    let mut p = Proc::new(child.id() as i32);
    let pipe = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    drop(pipe);
    let out = dir.path().join("after");
    let f = std::fs::File::create(&out).unwrap();
    let t = migrate::thaw(
        &img[..],
        &migrate::ThawOptions {
            stdout: Some(std::os::fd::AsRawFd::as_raw_fd(&f)),
            ..Default::default()
        },
    )
    .expect("thaw");
    let mut q = Proc::new(t.pid);
    assert!(exited_ok(q.wait(T)));
    // stdout was a pipe, so everything was still in the stdio buffer at freeze
    let s = read(&out);
    assert!(s.starts_with("iter 0\n") && s.ends_with("DONE ok\n"), "{s}");
}

#[test]
fn terminal_stdio_attaches_to_files_named_at_thaw() {
    if !root() {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no script(1) to make a terminal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let counter = prog("counter");
    let typescript = dir.path().join("typescript");
    let mut s = spawn(
        Command::new("script")
            .env("SHELL", "/bin/sh")
            .arg("-qfc")
            // `exec`: some shells fork for `-c CMD`, and a freeze refuses child processes
            .arg(format!("exec {} 60 1 10", counter.display()))
            .arg(&typescript),
        &dir.path().join("script.out"),
        None,
    );
    // the counter runs on the pty as script's child (once the shell has exec'ed it)
    let end = std::time::Instant::now() + T;
    let exe = std::fs::canonicalize(&counter).unwrap();
    let pid: i32 = loop {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", s.pid))
            .unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            let k: i32 = k.parse().unwrap();
            if std::fs::read_link(format!("/proc/{k}/exe")).ok().as_deref() == Some(&*exe) {
                break k;
            }
        }
        assert!(
            std::time::Instant::now() < end,
            "script did not start the counter"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::fs::read_link(format!("/proc/{pid}/fd/1"))
            .unwrap()
            .starts_with("/dev/pts")
    );
    let img = freeze(pid, false).expect("freeze");
    let s_img = migrate::inspect(&img[..]).unwrap();
    assert!(s_img.process.fds.iter().any(
        |f| matches!(&f.kind, migrate::FdKind::Stdio { what, .. } if what.starts_with("terminal"))
    ));
    s.wait(T); // script ends with its child
    let out = dir.path().join("after");
    let f = std::fs::File::create(&out).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    let t = migrate::thaw(
        &img[..],
        &migrate::ThawOptions {
            stdin: Some(null.as_raw_fd()),
            stdout: Some(f.as_raw_fd()),
            stderr: Some(f.as_raw_fd()),
            ..Default::default()
        },
    )
    .expect("thaw");
    let mut q = Proc::new(t.pid);
    assert!(exited_ok(q.wait(T)));
    // stdout on a terminal is line-buffered: the lines before the freeze went to the pty,
    // the rest (and nothing twice) to the file
    let before = read(&typescript).replace('\r', "");
    let after = read(&out);
    let all: String = before
        .lines()
        .filter(|l| l.starts_with("iter"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &after;
    let want: String = (0..60).map(|i| format!("iter {i}\n")).collect::<String>() + "DONE ok\n";
    assert_eq!(all, want);
}

#[test]
fn job_control_stopped_process_comes_back_stopped() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, out) = spawn_counter(dir.path());
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: our own child.
    unsafe { libc::kill(p.pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(50));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let mut q = thaw(&img);
    std::thread::sleep(Duration::from_millis(100));
    let st = std::fs::read_to_string(format!("/proc/{}/status", q.pid)).unwrap();
    assert!(
        st.contains("State:\tT (stopped)"),
        "not stopped after thaw: {st}"
    );
    // SAFETY: our own child.
    unsafe { libc::kill(q.pid, libc::SIGCONT) };
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

/// A pty pair of this test, closed on drop (the master only keeps the slave usable).
struct Pty {
    _master: std::os::fd::OwnedFd,
    slave: std::os::fd::OwnedFd,
}

fn pty() -> Pty {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two fds; the name/termios/winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty gave us two new fds.
    unsafe {
        Pty {
            _master: std::os::fd::OwnedFd::from_raw_fd(m),
            slave: std::os::fd::OwnedFd::from_raw_fd(s),
        }
    }
}

fn termios(fd: i32) -> libc::termios {
    // SAFETY: tcgetattr fills the zeroed struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(fd, &mut t), 0);
        t
    }
}

fn same(a: &libc::termios, b: &libc::termios) -> bool {
    (a.c_iflag, a.c_oflag, a.c_cflag, a.c_lflag, a.c_cc)
        == (b.c_iflag, b.c_oflag, b.c_cflag, b.c_lflag, b.c_cc)
}

/// The terminal's settings travel in the image: a process on a pty in raw mode comes back on
/// another pty, whose settings were the default, in raw mode; an fd above 2 opened on its
/// terminal (as /dev/tty) comes back as the new terminal.
#[test]
fn terminal_settings_and_a_second_terminal_fd_come_back_on_another_pty() {
    if !root() {
        return;
    }
    use std::os::fd::AsRawFd;
    let (a, b) = (pty(), pty());
    let sa = a.slave.as_raw_fd();
    let mut raw = termios(sa);
    // SAFETY: cfmakeraw edits the struct; tcsetattr on our own pty.
    unsafe {
        libc::cfmakeraw(&mut raw);
        raw.c_cc[libc::VMIN] = 3;
        assert_eq!(libc::tcsetattr(sa, libc::TCSANOW, &raw), 0);
    }
    let frozen = termios(sa);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut c = Command::new(prog("counter"));
    c.args(["60", "1", "10"]);
    // fd 5: another open file of its terminal (as /dev/tty gives one)
    let path = std::fs::read_link(format!("/proc/self/fd/{sa}")).unwrap();
    let other = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut p = spawn_with(&mut c, &out, None, &[(sa, 0), (other.as_raw_fd(), 5)]);
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let r = migrate::ImageReader::new(&img[..]).unwrap();
    let t = r
        .process()
        .terminal
        .clone()
        .expect("no terminal in the image");
    assert_eq!(t.fd, 0);
    assert!(
        r.process()
            .fds
            .iter()
            .any(|f| f.fd == 5 && matches!(f.kind, migrate::FdKind::Terminal { like: 0, .. })),
        "{:?}",
        r.process().fds
    );
    let sb = b.slave.as_raw_fd();
    assert!(!same(&termios(sb), &frozen), "the test proves nothing");
    let t = thaw_with(
        &img,
        migrate::ThawOptions {
            stdin: Some(sb),
            ..Default::default()
        },
    )
    .expect("thaw");
    let mut q = Proc::new(t.pid);
    assert!(
        same(&termios(sb), &frozen),
        "the settings did not come back"
    );
    // its fd 5 is the new terminal, opened again
    let l = std::fs::read_link(format!("/proc/{}/fd/5", t.pid)).unwrap();
    let l0 = std::fs::read_link(format!("/proc/{}/fd/0", t.pid)).unwrap();
    assert_eq!(l, l0);
    assert_ne!(
        l,
        std::fs::read_link(format!("/proc/self/fd/{sa}")).unwrap()
    );
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

/// A terminal above fd 2 needs a terminal at its stdio fd at thaw: with a file named for
/// stdin instead, the thaw is refused before anything is made.
#[test]
fn a_second_terminal_fd_without_a_terminal_at_thaw_is_refused() {
    if !root() {
        return;
    }
    use std::os::fd::AsRawFd;
    let a = pty();
    let slave = a.slave.as_raw_fd();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(prog("counter"));
    c.args(["60", "1", "10"]);
    let mut p = spawn_with(
        &mut c,
        &dir.path().join("out"),
        None,
        &[(slave, 0), (slave, 7)],
    );
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let null = std::fs::File::open("/dev/null").unwrap();
    let e = thaw_with(
        &img,
        migrate::ThawOptions {
            stdin: Some(null.as_raw_fd()),
            ..Default::default()
        },
    )
    .expect_err("a terminal fd was thawed without a terminal");
    assert!(e.to_string().contains("no terminal"), "{e}");
}
