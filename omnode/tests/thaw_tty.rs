//! `omnode thaw --wait` on a terminal (issue 8 part 6), driven through tmux as a user would:
//! a python REPL started from an interactive shell is frozen in one pane and thawed with
//! `--wait` in another; typed lines reach the REPL, Ctrl-C interrupts the REPL (not thaw), and
//! thaw's exit status is the program's. Needs root (ptrace of a process it did not start,
//! thaw's PR_SET_MM_MAP) and tmux. Each test runs its own tmux server (own -L socket) and
//! kills it on drop, also on failure.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn ready() -> bool {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            !ci,
            "terminal thaw tests need root (ptrace, PR_SET_MM_MAP) and CI=true is set"
        );
        eprintln!("SKIPPED: terminal thaw tests need root (ptrace, PR_SET_MM_MAP)");
        return false;
    }
    let have = |p: &str| {
        Command::new(p)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("tmux") || Command::new("python3").arg("-V").output().is_err() {
        assert!(
            !ci,
            "terminal thaw tests need tmux and python3 and CI=true is set"
        );
        eprintln!("SKIPPED: terminal thaw tests need tmux and python3");
        return false;
    }
    true
}

/// A tmux server of this test alone; killed (with everything in its panes) on drop.
struct Tmux {
    sock: String,
    dir: PathBuf,
}

impl Tmux {
    fn new(name: &str) -> Tmux {
        let sock = format!("omnode-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&sock);
        std::fs::create_dir_all(&dir).unwrap();
        Tmux { sock, dir }
    }
    fn tmux(&self, args: &[&str]) -> String {
        let o = Command::new("tmux")
            .args(["-L", &self.sock, "-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    /// A pane running an interactive bash (the user's shell, with job control).
    fn shell(&self, name: &str) {
        self.tmux(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "40",
            "env PS1='$ ' bash --norc --noprofile -i",
        ]);
        self.wait_for(name, "$ ");
    }
    fn keys(&self, pane: &str, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", pane];
        a.extend_from_slice(keys);
        self.tmux(&a);
    }
    fn screen(&self, pane: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-200", "-t", pane])
    }
    /// Polls the pane until a line satisfies `ok` (30 s, generous for a loaded machine).
    fn wait_line(&self, pane: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.screen(pane);
            if s.lines().any(|l| ok(l.trim_end())) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "pane {pane} never showed {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn wait_for(&self, pane: &str, text: &str) -> String {
        self.wait_line(pane, text, |l| l.contains(text.trim_end()))
    }
    /// Polls until the pane's shell is back in its own foreground (the job ended).
    fn wait_idle(&self, pane: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while self
            .tmux(&["list-panes", "-t", pane, "-F", "#{pane_current_command}"])
            .trim()
            != "bash"
        {
            assert!(
                Instant::now() < end,
                "pane {pane}: the job never ended:\n{}",
                self.screen(pane)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    fn pane_pid(&self, pane: &str) -> i32 {
        self.tmux(&["list-panes", "-t", pane, "-F", "#{pane_pid}"])
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.sock, "kill-server"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The child of `pid` running `comm` (the program the shell started).
fn child_named(pid: i32, comm: &str) -> i32 {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        for k in kids.split_whitespace() {
            let c = std::fs::read_to_string(format!("/proc/{k}/comm")).unwrap_or_default();
            if c.trim() == comm {
                return k.parse().unwrap();
            }
        }
        assert!(Instant::now() < end, "no {comm} under shell {pid}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn omnode() -> &'static str {
    env!("CARGO_BIN_EXE_omnode")
}

#[test]
fn python_repl_thawed_on_a_terminal_reads_lines_takes_ctrl_c_and_ctrl_z() {
    if !ready() {
        return;
    }
    let t = Tmux::new("py");
    let img = t.dir.join("py.img");
    t.shell("a");
    t.keys("a", &["python3 -q", "Enter"]);
    t.wait_for("a", ">>>");
    let py = child_named(t.pane_pid("a"), "python3");
    let o = Command::new(omnode())
        .args(["freeze", &py.to_string(), "--image"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "freeze: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    t.shell("b");
    let cmd = format!("{} thaw --wait {}", omnode(), img.display());
    t.keys("b", &[&cmd, "Enter"]);
    t.wait_for("b", "omnode: thawed process");
    // a line typed on the new terminal reaches the REPL: the product is computed, not echoed
    t.keys("b", &["print(6*7)", "Enter"]);
    t.wait_line("b", "42", |l| l.trim() == "42");
    // Ctrl-C reaches the program (its own group has the foreground), not thaw: the REPL
    // still computes (were thaw gone, bash would get the line and print no 48)
    t.keys("b", &["C-c"]);
    t.wait_for("b", "KeyboardInterrupt");
    t.keys("b", &["print(6*8)", "Enter"]);
    t.wait_line("b", "48", |l| l.trim() == "48");
    // Ctrl-Z stops the program; thaw says so and stops too, so the shell has a stopped job;
    // `fg` continues thaw, which gives the terminal back to the REPL and continues it
    t.keys("b", &["C-z"]);
    t.wait_for("b", "stopped by signal 20; `fg` continues it");
    t.wait_line("b", "bash's Stopped job", |l| {
        l.contains("Stopped") && l.contains("thaw")
    });
    t.keys("b", &["fg", "Enter"]);
    t.keys("b", &["print(6*6)", "Enter"]);
    t.wait_line("b", "36", |l| l.trim() == "36");
    // the REPL's exit status becomes thaw's
    t.keys("b", &["exit(3)", "Enter"]);
    t.wait_idle("b");
    t.keys("b", &["echo THAWRC=$?", "Enter"]);
    t.wait_line("b", "THAWRC=3", |l| l.trim_end() == "THAWRC=3");
    // and the shell has its terminal back: a command runs and prints
    t.keys("b", &["echo $((6*9))", "Enter"]);
    t.wait_line("b", "54", |l| l.trim() == "54");
}

impl Tmux {
    fn pane_tty(&self, pane: &str) -> String {
        self.tmux(&["list-panes", "-t", pane, "-F", "#{pane_tty}"])
            .trim()
            .to_string()
    }
}

/// The settings of terminal `tty` as `stty -g` prints them (read from outside, as root).
fn stty(tty: &str) -> String {
    let o = Command::new("stty")
        .args(["-F", tty, "-g"])
        .output()
        .unwrap();
    assert!(o.status.success(), "stty -F {tty}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn freeze_cli(pid: i32, img: &std::path::Path) {
    let o = Command::new(omnode())
        .args(["freeze", &pid.to_string(), "--image"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "freeze: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn less_thawed_on_another_terminal_keeps_its_settings_and_reads_keys_from_dev_tty() {
    if !ready() {
        return;
    }
    let t = Tmux::new("less");
    let img = t.dir.join("less.img");
    let text = t.dir.join("text");
    let lines: String = (1..=300).map(|i| format!("line number {i}\n")).collect();
    std::fs::write(&text, lines).unwrap();
    t.shell("a");
    t.keys("a", &[&format!("less {}", text.display()), "Enter"]);
    t.wait_line("a", "less's first page", |l| l == "line number 1");
    let less = child_named(t.pane_pid("a"), "less");
    // less reads keys from the terminal it opened itself (/dev/tty), an fd above 2
    let fd3 = std::fs::read_link(format!("/proc/{less}/fd/3")).unwrap();
    let fd3 = fd3.to_str().unwrap();
    assert!(
        fd3 == "/dev/tty" || fd3 == t.pane_tty("a"),
        "fd 3 of less is {fd3}"
    );
    let frozen_settings = stty(&t.pane_tty("a"));
    freeze_cli(less, &img);
    let o = Command::new(omnode())
        .arg("image")
        .arg(&img)
        .output()
        .unwrap();
    let desc = String::from_utf8_lossy(&o.stdout);
    assert!(desc.contains("terminal: at fd"), "{desc}");

    t.shell("b");
    let shell_settings = stty(&t.pane_tty("b"));
    assert_ne!(shell_settings, frozen_settings, "the test proves nothing");
    let cmd = format!("{} thaw --wait {}", omnode(), img.display());
    t.keys("b", &[&cmd, "Enter"]);
    t.wait_for("b", "omnode: thawed process");
    let thawed = child_named(t.pane_pid("b"), "omnode");
    let thawed = child_named(thawed, "less");
    // the new terminal has less's settings (no echo, no line editing)...
    assert_eq!(stty(&t.pane_tty("b")), frozen_settings);
    // ...so a single key, without Enter, reaches it through its /dev/tty: G goes to the end
    t.keys("b", &["G"]);
    t.wait_line("b", "the last line", |l| l == "line number 300");
    t.keys("b", &["g"]);
    t.wait_line("b", "the first line", |l| l == "line number 1");
    assert_eq!(
        std::fs::read_link(format!("/proc/{thawed}/fd/3"))
            .unwrap()
            .to_str(),
        Some(t.pane_tty("b").as_str())
    );
    t.keys("b", &["q"]);
    t.wait_idle("b");
    t.keys("b", &["echo THAWRC=$?", "Enter"]);
    t.wait_line("b", "THAWRC=0", |l| l.trim_end() == "THAWRC=0");
    // the shell's terminal settings are its own again
    assert_eq!(stty(&t.pane_tty("b")), shell_settings);
}

#[test]
fn a_session_leader_gets_its_controlling_terminal_back() {
    if !ready() {
        return;
    }
    let t = Tmux::new("lead");
    let img = t.dir.join("lead.img");
    // python as the pane's own command: it leads the pane's session, the pane its terminal
    t.tmux(&[
        "new-session",
        "-d",
        "-s",
        "a",
        "-x",
        "120",
        "-y",
        "40",
        "python3 -q",
    ]);
    t.wait_for("a", ">>>");
    let py = t.pane_pid("a");
    let stat = |pid: i32| -> Vec<String> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let r = s.rsplit_once(')').unwrap().1.to_string();
        r.split_whitespace().map(str::to_string).collect()
    };
    // after the comm: state ppid pgrp session tty_nr tpgid
    let f = stat(py);
    assert_eq!(f[3], py.to_string(), "python does not lead its session");
    assert_ne!(f[4], "0");
    freeze_cli(py, &img);
    // thaw as the command of a new pane: it leads that terminal's session and hands it over
    let cmd = format!("{} thaw --wait {}", omnode(), img.display());
    t.tmux(&[
        "new-session",
        "-d",
        "-s",
        "b",
        "-x",
        "120",
        "-y",
        "40",
        &cmd,
    ]);
    t.wait_for("b", "omnode: thawed process");
    let thaw_pid = t.pane_pid("b");
    let q = child_named(thaw_pid, "python3");
    let f = stat(q);
    assert_eq!(f[3], q.to_string(), "the thawed python leads no session");
    // its controlling terminal is the new pane's, and its group has the foreground
    let tty_b = t.pane_tty("b");
    let md = std::fs::metadata(&tty_b).unwrap();
    use std::os::unix::fs::MetadataExt;
    let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
    let nr = (min & 0xff) | (maj << 8) | ((min & !0xff) << 12);
    assert_eq!(f[4], nr.to_string(), "controlling terminal");
    assert_eq!(f[5], q.to_string(), "foreground group");
    t.keys("b", &["print(6*7)", "Enter"]);
    t.wait_line("b", "42", |l| l.trim() == "42");
    // Ctrl-C goes to python (its terminal's foreground), which survives it
    t.keys("b", &["C-c"]);
    t.wait_for("b", "KeyboardInterrupt");
    t.keys(
        "b",
        &[
            "import os; print(os.ttyname(0) == os.ctermid() or os.ctermid())",
            "Enter",
        ],
    );
    t.wait_line("b", "True or /dev/tty", |l| {
        l.trim() == "True" || l.trim() == "/dev/tty"
    });
    t.keys(
        "b",
        &["open('/dev/tty','w').write('via dev tty\\n')", "Enter"],
    );
    t.wait_line("b", "a write to /dev/tty", |l| l.trim() == "via dev tty");
}

#[test]
fn top_comes_back_usable() {
    if !ready() {
        return;
    }
    let t = Tmux::new("top");
    // top: it redraws on the new terminal every 0.2 s and quits on a single key
    t.shell("c");
    t.keys("c", &["top -d 0.2", "Enter"]);
    t.wait_line("c", "top's header", |l| l.starts_with("Tasks:"));
    let top = child_named(t.pane_pid("c"), "top");
    let img = t.dir.join("top.img");
    freeze_cli(top, &img);
    t.shell("d");
    t.keys(
        "d",
        &[
            &format!("{} thaw --wait {}", omnode(), img.display()),
            "Enter",
        ],
    );
    t.wait_line("d", "top's header on the new terminal", |l| {
        l.starts_with("Tasks:")
    });
    t.keys("d", &["q"]);
    t.wait_idle("d");
    t.keys("d", &["echo THAWRC=$?", "Enter"]);
    t.wait_line("d", "THAWRC=0", |l| l.trim_end() == "THAWRC=0");
}

/// vim editing a file (issue 8 parts 2, 3 and 6): its POSIX timer (and the glibc timer thread
/// behind it) comes back, the thawed vim redraws the file on the new terminal by itself (thaw
/// sends SIGWINCH), and an edit typed there is written to the file.
#[test]
fn vim_editing_a_file_comes_back_usable() {
    if !ready() {
        return;
    }
    if Command::new("vim").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "the vim test needs vim and CI=true is set"
        );
        eprintln!("SKIPPED: no vim");
        return;
    }
    let t = Tmux::new("vim");
    let file = t.dir.join("notes.txt");
    let lines: Vec<String> = (1..=30).map(|i| format!("note line {i}")).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    t.shell("a");
    t.keys(
        "a",
        &[&format!("vim -u NONE -i NONE {}", file.display()), "Enter"],
    );
    t.wait_line("a", "the file in vim", |l| l == "note line 1");
    let vim = child_named(t.pane_pid("a"), "vim");
    let timers = std::fs::read_to_string(format!("/proc/{vim}/timers")).unwrap();
    assert!(
        timers.contains("ID:"),
        "vim has no POSIX timer to carry:\n{timers}"
    );
    let img = t.dir.join("vim.img");
    freeze_cli(vim, &img);
    t.shell("b");
    t.keys(
        "b",
        &[
            &format!("{} thaw --wait {}", omnode(), img.display()),
            "Enter",
        ],
    );
    // no key pressed: vim redraws on its own once told the terminal changed
    t.wait_line("b", "the file redrawn on the new terminal", |l| {
        l == "note line 1"
    });
    let thawed = child_named(t.pane_pid("b"), "omnode");
    let thawed = child_named(thawed, "vim");
    let after = std::fs::read_to_string(format!("/proc/{thawed}/timers")).unwrap();
    let ids = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with("ID:") || l.starts_with("ClockID:"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        ids(&after),
        ids(&timers),
        "vim's POSIX timers:\n{timers}\n{after}"
    );
    t.keys("b", &["g", "g", "d", "d"]);
    t.keys("b", &[":wq", "Enter"]);
    t.wait_idle("b");
    t.keys("b", &["echo THAWRC=$?", "Enter"]);
    t.wait_line("b", "THAWRC=0", |l| l.trim_end() == "THAWRC=0");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        lines[1..].join("\n") + "\n"
    );
}
