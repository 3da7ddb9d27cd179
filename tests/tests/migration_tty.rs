//! A moved process's terminal, job control and path calls, end to end: real daemons on
//! 127.0.0.N, a real terminal (script(1) running an interactive bash), real processes moved
//! with `omnode migrate`; each scenario is compared with the same scenario unmoved.
//!
//! Needs root (ptrace and seccomp filters of other processes); without root the tests say why
//! and skip, under `CI=true` they fail instead.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use omnode_tests::moving::{self, can_run, cli, cluster, compile, logs, moved, no_stray_fds};
use omnode_tests::{Cluster, wait_for};

const STEP: Duration = Duration::from_secs(20);

/// A child killed (with its process group) when dropped, also when the test fails.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill with integer arguments: the group our child leads (see `term`).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An interactive bash on a real terminal: script(1) gives it a pty; we type into script's
/// stdin and read the terminal's output from script's stdout.
struct Term {
    kid: Group,
    input: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Term {
    fn new(dir: &Path) -> Term {
        let mut cmd = Command::new("script");
        cmd.args(["-qfec", "bash --norc --noprofile -i", "/dev/null"])
            .current_dir(dir)
            .env("PS1", "$ ")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: setpgid is async-signal-safe; it acts on the child only.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        no_stray_fds(&mut cmd);
        let mut child = cmd.spawn().expect("script(1) is needed for this test");
        let input = child.stdin.take().unwrap();
        let mut so = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let o2 = out.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = so.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                o2.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let mut t = Term {
            kid: Group(child),
            input,
            out,
        };
        t.typed("set -b; stty rows 33 cols 91; echo ready\n");
        t.wait_for("\nready");
        t
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).replace('\r', "")
    }

    fn typed(&mut self, s: &str) {
        self.input.write_all(s.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    /// Waits until the output has `pat` (after what was already matched is irrelevant: each
    /// pattern of a scenario is distinct).
    fn wait_for(&self, pat: &str) -> String {
        wait_for(STEP, || {
            let t = self.text();
            t.contains(pat).then_some(t)
        })
        .unwrap_or_else(|| panic!("the terminal never showed {pat:?}:\n{}", self.text()))
    }

    /// The pid the program printed ("pid N").
    fn pid(&self) -> u32 {
        let t = self.wait_for("pid ");
        let at = t.find("\npid ").or_else(|| t.find("pid ")).unwrap();
        let rest = &t[at..].trim_start_matches('\n')[4..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if end == 0 {
            std::thread::sleep(Duration::from_millis(100));
            return self.pid();
        }
        rest[..end].parse().unwrap()
    }

    fn finish(mut self) -> String {
        self.typed("exit\n");
        let _ = wait_for(STEP, || self.kid.0.try_wait().ok().flatten());
        self.text()
    }
}

/// The lines a scenario is judged by: what the program printed and what bash said of it.
fn judged(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        // the program's output may follow bash's prompt on the same line
        .map(|l| match l.find("# ") {
            Some(i) if l.starts_with("bash-") => &l[i + 2..],
            _ => l,
        })
        .filter(|l| {
            ["got: ", "isatty", "winsize", "done ", "Stopped", "rc="]
                .iter()
                .any(|k| l.starts_with(k) || (l.contains(k) && l.starts_with('[')))
        })
        .map(String::from)
        .collect()
}

/// A new terminal where `line` is typed at bash's prompt; with `move_to`, the program (the
/// pid it prints) is moved there at once. The terminal and the program's pid.
fn started(c: &Cluster, line: &str, move_to: Option<u32>) -> (Term, u32) {
    let mut t = Term::new(c.dir.path());
    t.typed(line);
    let pid = t.pid();
    if let Some(to) = move_to {
        moved(c, pid, to);
    }
    (t, pid)
}

/// Bash said the job stopped; with `move_to`, home's `ps` shows it still on that node.
fn stopped(c: &Cluster, t: &Term, pid: u32, move_to: Option<u32>) {
    t.wait_for("Stopped");
    if let Some(to) = move_to {
        assert_runs_on(c, pid, to);
    }
}

/// `fg`, then the program reads `line`, is told to quit and ends with 0 (bash's `$?`); the
/// terminal's whole text.
fn fg_reads_then_quits(mut t: Term, line: &str) -> String {
    t.typed("fg\n");
    std::thread::sleep(Duration::from_millis(300));
    t.typed(&format!("{line}\n"));
    t.wait_for(&format!("got: {line}"));
    t.typed("quit\n");
    t.wait_for("done ");
    t.typed("echo rc=$?\n");
    t.wait_for("rc=0");
    t.finish()
}

/// `scenario(None)` (unmoved) must show what `set_up` checks; `scenario(Some(2))` (moved to
/// node 2) must then show the same [`judged`] lines.
fn same_moved_as_unmoved(
    c: &Cluster,
    scenario: impl Fn(Option<u32>) -> String,
    set_up: impl Fn(&[String]) -> bool,
) {
    let plain = scenario(None);
    let want = judged(&plain);
    assert!(
        set_up(&want),
        "the unmoved run did not show what the test set up:\n{plain}"
    );
    let got = scenario(Some(2));
    assert_eq!(
        judged(&got),
        want,
        "moved run differs:\n{got}\n{}",
        logs(c, &[1, 2])
    );
}

/// A foreground program reading lines from the terminal: echoes, isatty, the real window
/// size, Ctrl-Z (bash reports it stopped) and `fg`; with `move_to`, moved mid-run first.
fn foreground(c: &Cluster, prog: &Path, move_to: Option<u32>) -> String {
    let (mut t, pid) = started(c, &format!("{} 1500\n", prog.display()), move_to);
    t.wait_for("winsize ");
    t.typed("one\n");
    t.wait_for("got: one");
    t.typed("\x1a");
    stopped(c, &t, pid, move_to);
    fg_reads_then_quits(t, "two")
}

#[test]
fn a_moved_program_on_a_terminal_reads_lines_stops_and_continues_as_unmoved() {
    if !can_run("a_moved_program_on_a_terminal_reads_lines_stops_and_continues_as_unmoved") {
        return;
    }
    let c = cluster("1 127.0.0.200 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "ttyecho");
    same_moved_as_unmoved(
        &c,
        |to| foreground(&c, &prog, to),
        |want| {
            want.iter().any(|l| l == "isatty 1 tcgetattr 0")
                && want.iter().any(|l| l == "winsize 33 91")
                && want.iter().any(|l| l.contains("Stopped"))
                && want.iter().any(|l| l == "done pgrp-is-fg 1")
        },
    );
}

/// A background program that reads the terminal is stopped by SIGTTIN (bash: "Stopped (tty
/// input)"); `fg` lets it read. Moved before it reads, it is stopped the same way.
fn background(c: &Cluster, prog: &Path, move_to: Option<u32>) -> String {
    let (t, pid) = started(c, &format!("{} 1500 &\n", prog.display()), move_to);
    stopped(c, &t, pid, move_to);
    fg_reads_then_quits(t, "bgline")
}

#[test]
fn a_moved_background_reader_is_stopped_by_sigttin_as_unmoved() {
    if !can_run("a_moved_background_reader_is_stopped_by_sigttin_as_unmoved") {
        return;
    }
    let c = cluster("1 127.0.0.203 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "ttyecho");
    same_moved_as_unmoved(
        &c,
        |to| background(&c, &prog, to),
        |want| {
            want.iter().any(|l| l.contains("Stopped")) && want.iter().any(|l| l == "got: bgline")
        },
    );

    // With SIGTTIN ignored (told home by the remote), the background read fails with EIO
    // instead, moved as unmoved.
    same_moved_as_unmoved(
        &c,
        |to| background_ignoring(&c, &prog, to),
        |want| {
            want.iter()
                .any(|l| *l == format!("got: read error errno {}", libc::EIO))
                && !want.iter().any(|l| l.contains("Stopped"))
        },
    );
}

/// The background reader with SIGTTIN ignored: its read fails (EIO) and it ends by itself.
fn background_ignoring(c: &Cluster, prog: &Path, move_to: Option<u32>) -> String {
    let (mut t, _) = started(c, &format!("{} 1500 ign &\n", prog.display()), move_to);
    t.wait_for("done ");
    t.typed("wait; echo rc=$?\n");
    t.wait_for("rc=0");
    t.finish()
}

/// Runs pathcalls as nobody in a fresh work directory; with `move_to`, moved while it waits.
fn pathcalls(c: &Cluster, prog: &Path, secret: &Path, move_to: Option<u32>) -> String {
    use std::os::unix::fs::PermissionsExt;
    let work = c.dir.path().join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("f"), "hello\n").unwrap();
    std::os::unix::fs::chown(&work, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(work.join("f"), Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&work, PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(prog);
    cmd.args(["800", secret.to_str().unwrap()])
        .current_dir(&work)
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: umask is async-signal-safe; it acts on the child only.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o027);
            Ok(())
        });
    }
    no_stray_fds(&mut cmd);
    let mut kid = moving::Kid(cmd.spawn().unwrap());
    let mut so = kid.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = so.read_to_string(&mut v);
        v
    });
    if let Some(to) = move_to {
        std::thread::sleep(Duration::from_millis(200));
        moved(c, kid.0.id(), to);
    }
    // Its cwd at home follows its chdir (the parked shell takes it too when moved).
    let stay = work.join("stay");
    let pid = kid.0.id();
    let followed = wait_for(STEP, || {
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
        if cwd.as_deref() == Some(stay.as_path()) {
            return Some(true);
        }
        kid.0.try_wait().ok().flatten().map(|_| false)
    });
    assert_eq!(
        followed,
        Some(true),
        "the cwd at home never became {}",
        stay.display()
    );
    let st = wait_for(STEP, || kid.0.try_wait().ok().flatten()).expect("pathcalls ended");
    assert!(st.success(), "{st:?}");
    reader.join().unwrap()
}

#[test]
fn path_calls_of_a_moved_process_run_at_home_with_its_rights_and_cwd() {
    if !can_run("path_calls_of_a_moved_process_run_at_home_with_its_rights_and_cwd") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let c = cluster("1 127.0.0.206 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "pathcalls");
    std::fs::set_permissions(c.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&prog, PermissionsExt::from_mode(0o755)).unwrap();
    let secret = c.dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o700)).unwrap();
    let plain = pathcalls(&c, &prog, &secret, None);
    for want in [
        format!("lstat missing: errno {}", libc::ENOENT),
        format!("mkdir in root's dir: errno {}", libc::EACCES),
        format!("stat in root's dir: errno {}", libc::EACCES),
        format!("access root's dir w: errno {}", libc::EACCES),
        "stat n: mode 40750".to_string(),
        "read g: 3 \"hel\"".to_string(),
        "getcwd ends in: /n".to_string(),
    ] {
        assert!(
            plain.contains(&want),
            "unmoved run lacks {want:?}:\n{plain}"
        );
    }
    let got = pathcalls(&c, &prog, &secret, Some(2));
    assert_eq!(got, plain, "moved run differs\n{}", logs(&c, &[1, 2]));
    // It really ran on node 2 and its calls went home.
    let log2 = wait_for(STEP, || {
        let l = c.log_text(2);
        l.contains("guest ended").then_some(l)
    })
    .expect("node 2 logs the guest's end");
    assert!(!log2.contains(" 0 calls forwarded home"), "{log2}");
}

/// `omnode ps --json` at home shows `pid` running on node `node`.
fn assert_runs_on(c: &Cluster, pid: u32, node: u32) {
    let out = cli(c, 1, &["ps", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ps --json");
    let row = v["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["pid"] == u64::from(pid)))
        .unwrap_or_else(|| panic!("ps does not list {pid}: {v}"));
    assert_eq!(row["node"], u64::from(node), "{v}");
}
