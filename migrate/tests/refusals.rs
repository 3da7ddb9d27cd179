//! What freeze refuses, and failures during a freeze: the process must run on unchanged,
//! neither stopped nor traced, and its output must equal an uninterrupted run's (needs root;
//! skipped with a message otherwise).

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

fn refused(prog_name: &'static str, what: &str) {
    refused_with(prog_name, &["40"], what)
}

fn refused_with(prog_name: &'static str, args: &[&str], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let r_out = dir.path().join("ref");
    let mut r = spawn(Command::new(prog(prog_name)).args(args), &r_out, None);
    let m_out = dir.path().join("mig");
    let mut p = spawn(Command::new(prog(prog_name)).args(args), &m_out, None);
    std::thread::sleep(Duration::from_millis(150));
    let e = freeze(p.pid, false).expect_err("freeze must be refused");
    let msg = e.to_string();
    assert!(msg.contains(what), "error does not name {what}: {msg}");
    assert!(matches!(e, migrate::Error::Unsupported { .. }), "{e:?}");
    assert_eq!(e.kind(), migrate::ErrorKind::CannotMove, "{e}");
    assert_eq!(e.refusal(), Some(migrate::RefusalKind::CannotMove), "{e}");
    let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    assert!(st.contains("TracerPid:\t0"), "left traced");
    assert!(exited_ok(p.wait(T)), "refused process did not run on");
    assert!(exited_ok(r.wait(T)));
    assert_eq!(read(&r_out), read(&m_out));
    assert!(read(&m_out).ends_with("DONE ok\n"));
}

#[test]
fn socket_is_refused_and_runs_on() {
    if !root() {
        return;
    }
    refused("sock", "socket");
}

#[test]
fn thaw_against_a_changed_mapped_file_is_refused() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::write(&d, vec![7u8; 16 * 4096]).unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("mapping")).arg(&d).arg("60"), &out, None);
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    std::fs::write(&d, vec![8u8; 17 * 4096]).unwrap();
    let e = migrate::thaw(&img[..], &migrate::ThawOptions::default()).expect_err("must refuse");
    assert!(matches!(e, migrate::Error::FileChanged { .. }), "{e}");
    // another node may still have the very file
    assert_eq!(
        e.refusal(),
        Some(migrate::RefusalKind::RetryElsewhere),
        "{e}"
    );
    assert!(e.to_string().contains("data"), "{e}");
}

#[test]
fn already_traced_process_is_refused_and_left_alone() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("counter")).args(["30", "1", "10"]),
        &out,
        None,
    );
    // SAFETY: seize our own child without stopping it.
    assert_eq!(unsafe { libc::ptrace(libc::PTRACE_SEIZE, p.pid, 0, 0) }, 0);
    let e = freeze(p.pid, false).expect_err("traced process must be refused");
    assert!(e.to_string().contains("already traced"), "{e}");
    // SAFETY: detach needs a stop: interrupt, wait, detach.
    unsafe {
        libc::ptrace(libc::PTRACE_INTERRUPT, p.pid, 0, 0);
        let mut st = 0;
        libc::waitpid(p.pid, &mut st, libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, p.pid, 0, 0);
    }
    assert!(exited_ok(p.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn child_processes_are_refused() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(
        Command::new("sh").args(["-c", "sleep 3 & wait"]),
        &dir.path().join("out"),
        None,
    );
    std::thread::sleep(Duration::from_millis(150));
    let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid)).unwrap();
    let e = freeze(p.pid, false).expect_err("process with children must be refused");
    assert!(e.to_string().contains("child processes"), "{e}");
    assert!(p.alive());
    for k in kids.split_whitespace() {
        // SAFETY: the sleep we started through sh.
        unsafe { libc::kill(k.parse().unwrap(), libc::SIGKILL) };
    }
    assert!(exited_ok(p.wait(T)));
}

/// A sink that fails after `left` bytes, like a full disk or a dropped connection.
struct FailingSink {
    left: usize,
}
impl std::io::Write for FailingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("connection lost"));
        }
        let n = b.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn failed_image_write_leaves_the_process_running_unchanged() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r_out = dir.path().join("ref");
    let mut r = spawn(
        Command::new(prog("counter")).args(["60", "4", "10"]),
        &r_out,
        None,
    );
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("counter")).args(["60", "4", "10"]),
        &out,
        None,
    );
    for (i, cut) in [100usize, 3 << 20].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(100));
        let e = migrate::freeze(
            p.pid,
            FailingSink { left: cut },
            &migrate::FreezeOptions::default(),
        )
        .expect_err("freeze into a failing sink must fail");
        assert!(e.to_string().contains("connection lost"), "#{i}: {e}");
        let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
        assert!(st.contains("TracerPid:\t0"), "left traced");
        assert!(!st.contains("State:\tt"), "left stopped");
    }
    assert!(exited_ok(p.wait(T)), "process did not run on");
    assert!(exited_ok(r.wait(T)));
    assert_eq!(read(&r_out), read(&out));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn shared_memory_pdeathsig_and_seals_are_refused() {
    if !root() {
        return;
    }
    // (inotify is carried now: its refusals are in programs.rs)
    for (kind, what) in [
        ("sysv", "SysV shared memory"),
        ("posixshm", "POSIX shared memory"),
        ("sharedanon", "also mapped by process"),
        ("pdeathsig", "parent-death signal"),
        ("mseal", "sealed"),
    ] {
        refused_with("fdkinds", &[kind, "25"], what);
    }
}

#[test]
fn freezer_killed_mid_freeze_leaves_the_process_running_unchanged() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r_out = dir.path().join("ref");
    let args = ["80", "512", "10"];
    let mut r = spawn(Command::new(prog("counter")).args(args), &r_out, None);
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("counter")).args(args), &out, None);
    wait_lines(&out, 0, T);
    std::thread::sleep(Duration::from_millis(700)); // heap filled, loop running
    let mut f = Command::new(env!("CARGO_BIN_EXE_migrate-cli"));
    f.arg("freeze")
        .arg(p.pid.to_string())
        .arg(dir.path().join("img"));
    let mut freezer = spawn(&mut f, &dir.path().join("freezer.out"), None);
    // wait until it holds the process, give it time to get into the memory copy, kill it
    let end = std::time::Instant::now() + T;
    let traced = loop {
        let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap_or_default();
        // the tracer is a thread of the freezer (its tracer thread)
        let tracer = st
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:\t"))
            .and_then(|v| v.trim().parse::<i32>().ok())
            .unwrap_or(0);
        if tracer != 0
            && std::path::Path::new(&format!("/proc/{}/task/{tracer}", freezer.pid)).exists()
        {
            break true;
        }
        if !freezer.alive() || std::time::Instant::now() > end {
            break false;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    assert!(
        traced,
        "the freezer never attached: {}",
        read(&dir.path().join("freezer.out"))
    );
    // kill it once memory is streaming (the image file has grown past its process section)
    let img = dir.path().join("img");
    while std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0) < 1 << 20 {
        assert!(
            freezer.alive(),
            "freezer ended early: {}",
            read(&dir.path().join("freezer.out"))
        );
        assert!(std::time::Instant::now() < end, "freezer made no progress");
        std::thread::sleep(Duration::from_micros(200));
    }
    // SAFETY: our own child.
    unsafe { libc::kill(freezer.pid, libc::SIGKILL) };
    freezer.wait(T);
    assert!(
        exited_ok(p.wait(T)),
        "process did not survive its freezer's death: {}",
        read(&out)
    );
    assert!(exited_ok(r.wait(T)));
    assert_eq!(read(&r_out), read(&out));
    assert!(read(&out).ends_with("DONE ok\n"));
}
