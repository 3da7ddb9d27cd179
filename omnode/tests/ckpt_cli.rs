//! `omnode freeze` / `omnode thaw` as a user runs them: the image is 0600, and the new PID is
//! reported on stderr (or alone on stdout with --print-pid), never into the thawed program's
//! stdout. Needs root (ptrace of a process it did not start itself, thaw's PR_SET_MM_MAP).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "freeze/thaw CLI tests need root (ptrace, PR_SET_MM_MAP) and CI=true is set"
        );
        eprintln!("SKIPPED: freeze/thaw CLI tests need root (ptrace, PR_SET_MM_MAP)");
        return false;
    }
    true
}

/// Kills and reaps on drop.
struct Reap(i32);
impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: signal and wait for a process this test made (or a child reparented to it).
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

fn omnode() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_omnode"));
    c.stdin(Stdio::null());
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    c
}

/// `sleep 30` with its stdout a pipe (so thaw attaches it to its own stdout).
fn sleeper() -> Child {
    let mut c = Command::new("sleep");
    c.arg("30")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: as above.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    c.spawn().unwrap()
}

fn freeze_into(pid: u32, img: &std::path::Path) {
    let o = omnode()
        .args(["freeze", &pid.to_string(), "--image"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "freeze failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn image_is_0600_and_the_pid_never_goes_into_the_programs_stdout() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    // an existing world-readable file is made 0600 too
    std::fs::write(&img, b"old").unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    // SAFETY: umask has no preconditions; 0 would let a careless create make it 0666
    let old = unsafe { libc::umask(0) };
    let mut s = sleeper();
    let _r = Reap(s.id() as i32);
    freeze_into(s.id(), &img);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    assert!(
        !s.wait().unwrap().success(),
        "the frozen original should be gone"
    );
    let mode = std::fs::metadata(&img).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "image mode {mode:o}");

    // --print-pid while the program's stdout is thaw's own: refused before anything is made
    let o = omnode()
        .arg("thaw")
        .arg(&img)
        .arg("--print-pid")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(o.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--stdout"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // plain thaw: the PID is reported on stderr; stdout (the program's) stays clean
    let mut t = omnode()
        .arg("thaw")
        .arg(&img)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    t.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(t.wait().unwrap().success(), "thaw failed: {err}");
    let pid: i32 = err
        .split("as PID ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no PID on stderr: {err}"));
    let _r2 = Reap(pid);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep", "PID {pid} is not the thawed sleep");
    // the thawed sleep holds thaw's stdout pipe: kill it so that the pipe ends, then read it
    // SAFETY: the thawed process of this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(30);
    let mut so = t.stdout.take().unwrap();
    so.read_to_end(&mut out).unwrap();
    assert!(Instant::now() < end);
    assert!(
        out.is_empty(),
        "thaw wrote into the program's stdout: {out:?}"
    );

    // --print-pid with the program's stdout sent to a file: the bare PID on stdout
    let mut s = sleeper();
    let _r3 = Reap(s.id() as i32);
    freeze_into(s.id(), &img);
    let _ = s.wait();
    let o = omnode()
        .arg("thaw")
        .arg(&img)
        .arg("--print-pid")
        .arg("--stdout")
        .arg(dir.path().join("prog.out"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let _r4 = Reap(pid);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");
}

#[test]
fn an_inherited_pipe_needs_a_name_at_thaw_and_gets_it_with_fd_n_null() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    let w = p[1];
    let mut c = Command::new("sleep");
    c.arg("30")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 and close_range are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            libc::dup2(w, 100);
            libc::syscall(libc::SYS_close_range, 3u32, 99u32, 0u32);
            libc::syscall(libc::SYS_close_range, 101u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut s = c.spawn().unwrap();
    // SAFETY: our own pipe fds.
    unsafe {
        libc::close(p[0]);
        libc::close(p[1]);
    }
    let _r = Reap(s.id() as i32);
    freeze_into(s.id(), &img);
    let _ = s.wait();
    let o = omnode().arg("thaw").arg(&img).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "thaw without --fd succeeded: {err}");
    assert!(err.contains("fd 100 (write end of pipe:["), "{err}");
    assert!(err.contains("--fd N=null"), "{err}");
    let o = omnode()
        .arg("thaw")
        .arg(&img)
        .args(["--fd", "100=null", "--print-pid"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let _r2 = Reap(pid);
    let l = std::fs::read_link(format!("/proc/{pid}/fd/100")).unwrap();
    assert_eq!(l, std::path::Path::new("/dev/null"));
}

/// `omnode freeze` of node.js (threads, epoll, eventfds, self-pipes), then `omnode image`
/// lists its threads and in-process fds, and `omnode thaw` brings it back running with as many
/// threads; `omnode freeze --help` says threads are carried.
#[test]
fn node_with_threads_and_its_event_loop_through_the_cli() {
    if !root() {
        return;
    }
    let help = omnode().args(["freeze", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Threads: every thread"), "{help}");
    assert!(help.contains("epoll"), "{help}");
    let mut c = Command::new("node");
    c.args(["-e", "setInterval(() => {}, 20)"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let Ok(child) = c.spawn() else {
        eprintln!("SKIPPED: no node");
        return;
    };
    let _orig = Reap(child.id() as i32);
    let tasks = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let end = Instant::now() + Duration::from_secs(30);
    while tasks(child.id() as i32) < 2 {
        assert!(Instant::now() < end, "node never started its threads");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let n = tasks(child.id() as i32);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("node.img");
    freeze_into(child.id(), &img);
    let o = omnode().arg("image").arg(&img).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains(&format!("threads:  {} besides the main thread", n - 1)),
        "{text}"
    );
    assert!(text.contains("epoll watching fds"), "{text}");
    assert!(text.contains("eventfd, count"), "{text}");
    let o = omnode()
        .args(["thaw", "--print-pid", "--stdout", "/dev/null"])
        .arg(&img)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pid: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    let _thawed = Reap(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tasks(pid), n, "threads after the thaw");
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = st.rsplit_once(')').unwrap().1.trim_start().chars().next();
    assert!(matches!(state, Some('S' | 'R')), "thawed node is {st}");
}
