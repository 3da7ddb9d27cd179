//! DFSA through real mounts and real daemons: a process moved from node 1 to node 2 runs its
//! file calls on `/mfs` paths on node 2, against node 2's own mount, and the files and its
//! output are those of an unmoved run.
//!
//! Every node of a real cluster mounts MFS at the same path (`/mfs`). Here the nodes share one
//! machine, so each daemon runs in a mount namespace of its own (`unshare --mount`) and mounts
//! at the same path `<dir>/mfs`: the path names node 1's mount for node 1's processes and node
//! 2's mount for the processes node 2 runs. The test program is started in node 1's namespace
//! (`nsenter`), and the moved copy is created by node 2's daemon, in node 2's.
//!
//! Needs root (mounts, namespaces, ptrace) and omnode built with `--features mfs`.
#![cfg(feature = "mfs")]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use omnode_tests::moving::{can_run, compile};
use omnode_tests::{free_port, omnode_bin, run_cli, wait_for};

/// A child killed (and reaped) when dropped, also when the test fails; with it go the
/// daemon's mount namespace and its mount.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two nodes on 127.0.16.1-2, each in its own mount namespace, both mounting at `<dir>/mfs`.
struct Nodes {
    dir: tempfile::TempDir,
    port: u16,
    nodes: Vec<(u32, Kid)>,
}

impl Nodes {
    fn new() -> Nodes {
        let dir = tempfile::Builder::new()
            .prefix("h11-dfsa-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("map"), "1 127.0.16.1 2\n").unwrap();
        let key = dir.path().join("key");
        assert!(
            run_cli(&["keygen", "--out", key.to_str().unwrap()])
                .status
                .success()
        );
        for d in ["export1", "export2", "mfs"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Nodes {
            dir,
            port: free_port(),
            nodes: Vec::new(),
        }
    }

    fn export(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("export{n}"))
    }

    /// The mount point: the same path on both nodes, a different mount on each.
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mfs")
    }

    fn socket(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("node{n}.sock"))
    }

    fn log(&self, n: u32) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{n}.log"))).unwrap_or_default()
    }

    fn start(&mut self, n: u32, extra: &[&str]) {
        let d = self.dir.path();
        let log = File::create(d.join(format!("node{n}.log"))).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private"])
            .arg(omnode_bin())
            .args(["--map", d.join("map").to_str().unwrap()])
            .args(["--node", &n.to_string()])
            .args(["--key-file", d.join("key").to_str().unwrap()])
            .args(["--port", &self.port.to_string()])
            .args(["--socket", self.socket(n).to_str().unwrap()])
            .args(["--mfs", self.mnt().to_str().unwrap()])
            .args(["--mfs-export", self.export(n).to_str().unwrap()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux) is needed for this test");
        self.nodes.push((n, Kid(child)));
    }

    fn pid(&self, n: u32) -> u32 {
        self.nodes.iter().find(|(m, _)| *m == n).unwrap().1.0.id()
    }

    /// A command run in node `n`'s mount namespace (it sees node `n`'s mount).
    fn in_ns(&self, n: u32, prog: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid(n).to_string(), "-m", "--"])
            .arg(prog);
        c
    }

    /// Wait until each node's mount shows both nodes' `hello` (seen from inside its namespace).
    fn ready(&self) {
        for n in [1, 2] {
            let script = format!("cat {m}/1/hello {m}/2/hello", m = self.mnt().display());
            let ok = wait_for(Duration::from_secs(30), || {
                let out = self
                    .in_ns(n, Path::new("sh"))
                    .args(["-c", &script])
                    .output()
                    .ok()?;
                out.status.success().then_some(())
            });
            assert!(
                ok.is_some(),
                "node {n}'s mount did not show both nodes within 30 s\n{}\n{}",
                self.log(1),
                self.log(2)
            );
        }
    }
}

/// The counts node 2 logged when the moved process ended: (forwarded home, run here by DFSA).
fn guest_counts(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains("guest ended"))?;
    let num_before = |what: &str| -> Option<u64> {
        let i = line.find(what)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    Some((
        num_before(" calls forwarded home")?,
        num_before(" file calls on /mfs run here by DFSA")?,
    ))
}

struct Run {
    stdout: String,
    out_file: String,
    /// (forwarded home, run here by DFSA) when it was moved.
    counts: Option<(u64, u64)>,
}

/// Runs dfsaio on node 1 (moved to node 2 after 1 s when `mv`): ROUNDS rounds reading
/// `<mnt>/1/in`, appending to `<mnt>/1/<out>`, and reading two paths that leave the DFSA tree
/// (a `..` component, an absolute symlink), which must go home and still read the same file.
fn run(c: &Nodes, prog: &Path, out: &str, mv: bool) -> Run {
    const ROUNDS: &str = "30";
    let m = c.mnt();
    let m1 = m.join("1");
    let args = [
        m1.join("in"),
        m1.join(out),
        m1.join("sub/../in"),
        m1.join("abs"),
    ];
    let mut cmd = c.in_ns(1, prog);
    cmd.args([ROUNDS, "100"])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut kid = Kid(cmd.spawn().unwrap());
    if mv {
        std::thread::sleep(Duration::from_millis(1000));
        let pid = kid.0.id().to_string();
        let sock = c.socket(1);
        let r = run_cli(&["migrate", &pid, "2", "--socket", sock.to_str().unwrap()]);
        assert!(
            r.status.success(),
            "migrate: {}{}\n{}\n{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr),
            c.log(1),
            c.log(2)
        );
    }
    let st = wait_for(Duration::from_secs(60), || kid.0.try_wait().ok().flatten())
        .expect("dfsaio did not end within 60 s");
    let mut stdout = String::new();
    std::io::Read::read_to_string(kid.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert!(st.success(), "{st:?}: {stdout}\n{}\n{}", c.log(1), c.log(2));
    let counts = if mv {
        wait_for(Duration::from_secs(10), || guest_counts(&c.log(2)))
    } else {
        None
    };
    Run {
        stdout,
        out_file: std::fs::read_to_string(c.export(1).join(out)).unwrap(),
        counts,
    }
}

fn setup(node2_extra: &[&str]) -> (Nodes, PathBuf) {
    let mut c = Nodes::new();
    for n in [1, 2] {
        std::fs::write(c.export(n).join("hello"), format!("hello from node {n}\n")).unwrap();
    }
    std::fs::write(c.export(1).join("in"), "the input of node 1\n").unwrap();
    std::fs::create_dir(c.export(1).join("sub")).unwrap();
    // An absolute symlink: it names node 1's file through /mfs, but leaves the DFSA tree.
    std::os::unix::fs::symlink(c.mnt().join("1/in"), c.export(1).join("abs")).unwrap();
    c.start(1, &[]);
    c.start(2, node2_extra);
    c.ready();
    let prog = compile(c.dir.path(), "dfsaio");
    (c, prog)
}

/// dfsa=1 on both nodes: after the move, the opens, stats, reads and writes of
/// `<mnt>/1/in` and `<mnt>/1/out` run on node 2 (node 2's log counts them as DFSA and the
/// forwarded calls are few), the files and output equal an unmoved run's, and the paths that
/// leave the tree (`..`, an absolute symlink) still read the right file by going home.
#[test]
fn dfsa_runs_a_moved_process_file_calls_where_it_runs() {
    if !can_run("dfsa_runs_a_moved_process_file_calls_where_it_runs") {
        return;
    }
    let (c, prog) = setup(&[]);
    let plain = run(&c, &prog, "out-plain", false);
    assert!(
        plain.stdout.lines().all(|l| l
            .ends_with("the input of node 1 size 20 | the input of node 1 | the input of node 1")),
        "the unmoved run: {}",
        plain.stdout
    );
    let moved = run(&c, &prog, "out-moved", true);
    assert_eq!(moved.stdout, plain.stdout, "the moved run's output");
    assert_eq!(
        moved.out_file, plain.out_file,
        "the file the moved run wrote"
    );
    let (forwarded, dfsa) = moved.counts.expect("node 2 logged no guest counts");
    eprintln!("dfsa=1: {forwarded} calls forwarded home, {dfsa} run on node 2 by DFSA");
    // Some 20 rounds ran on node 2, each with 3 DFSA calls (open in, open out, stat in).
    assert!(
        dfsa >= 30,
        "only {dfsa} calls ran here by DFSA\n{}",
        c.log(2)
    );
    // Forwarded per round: the two escaping paths (open, read, close each) and the stdout
    // write = 7; without DFSA the in/out files' open, read/write, close and the stat add 7.
    let rounds = dfsa / 3;
    assert!(
        forwarded <= rounds * 7 + 10,
        "{forwarded} calls forwarded home for {rounds} rounds run by DFSA\n{}",
        c.log(2)
    );
}

/// A different dfsa setting between the nodes (node 2 mounts with dfsa=0): every file call
/// goes home, none runs by DFSA, and the results are still those of an unmoved run.
#[test]
fn a_different_dfsa_setting_sends_every_call_home() {
    if !can_run("a_different_dfsa_setting_sends_every_call_home") {
        return;
    }
    let (c, prog) = setup(&["--mfs-dfsa", "0"]);
    let plain = run(&c, &prog, "out-plain", false);
    let moved = run(&c, &prog, "out-moved", true);
    assert_eq!(moved.stdout, plain.stdout, "the moved run's output");
    assert_eq!(
        moved.out_file, plain.out_file,
        "the file the moved run wrote"
    );
    let (forwarded, dfsa) = moved.counts.expect("node 2 logged no guest counts");
    eprintln!("dfsa=0 on node 2: {forwarded} calls forwarded home, {dfsa} by DFSA");
    assert_eq!(dfsa, 0, "dfsa=0 on node 2, yet calls ran there by DFSA");
    assert!(
        forwarded >= 14 * 10,
        "{forwarded} calls forwarded: the file calls did not go home"
    );
}

/// An fd opened by DFSA on node 2 and still open when the process comes home (`migrate PID
/// home`) is opened again at home by its /mfs path, at the same place: the file is that of an
/// unmoved run.
#[test]
fn a_dfsa_fd_comes_home_with_the_process() {
    if !can_run("a_dfsa_fd_comes_home_with_the_process") {
        return;
    }
    let (c, _) = setup(&[]);
    let prog = compile(c.dir.path(), "dfsahold");
    let sock = c.socket(1);
    let go = |out: &str, moves: &[(u64, &str)]| -> String {
        let path = c.mnt().join("1").join(out);
        let mut cmd = c.in_ns(1, &prog);
        cmd.args(["30", "100", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut kid = Kid(cmd.spawn().unwrap());
        let pid = kid.0.id().to_string();
        let mut waited = 0;
        for &(at, to) in moves {
            std::thread::sleep(Duration::from_millis(at - waited));
            waited = at;
            let r = run_cli(&["migrate", &pid, to, "--socket", sock.to_str().unwrap()]);
            assert!(
                r.status.success(),
                "migrate {to}: {}{}\n{}\n{}",
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr),
                c.log(1),
                c.log(2)
            );
        }
        let st = wait_for(Duration::from_secs(60), || kid.0.try_wait().ok().flatten())
            .expect("dfsahold did not end within 60 s");
        let mut stdout = String::new();
        std::io::Read::read_to_string(kid.0.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        assert!(st.success(), "{st:?}: {stdout}\n{}\n{}", c.log(1), c.log(2));
        assert_eq!(stdout, "done\n");
        (0..3)
            .map(|k| {
                let f = c.export(1).join(format!("{out}.{k}"));
                format!("{k}:\n{}", std::fs::read_to_string(f).unwrap_or_default())
            })
            .collect::<String>()
    };
    let plain = go("plain", &[]);
    let want: String = (0..30)
        .map(|i| {
            format!(
                "{}{i}\n",
                if i % 10 == 0 {
                    format!("{}:\n", i / 10)
                } else {
                    String::new()
                }
            )
        })
        .collect();
    assert_eq!(plain, want, "the unmoved run");
    // Moved at ~0.5 s (round 5): round 10 opens file .1 by DFSA on node 2 (the fd number that
    // file .0 had at home); home at ~1.5 s (round 15) with that fd open; round 20 opens .2 at
    // home.
    let moved = go("moved", &[(500, "2"), (1500, "home")]);
    assert_eq!(moved, plain, "the moved run's file");
    let (_, dfsa) = wait_for(Duration::from_secs(10), || guest_counts(&c.log(2)))
        .expect("node 2 logged no guest counts");
    assert!(
        dfsa >= 1,
        "the open at round 10 did not run on node 2\n{}",
        c.log(2)
    );
}

/// `omnode run -j2` (a remote start) makes node 2 the process's `/mfs/lastexec` while home
/// stays node 1: read on node 2 by DFSA (node 2 answers for its guest) and, with dfsa=0 on node
/// 2, at home (node 1 answers for it), the same.
#[test]
fn lastexec_after_a_remote_start_is_the_node_it_started_on() {
    if !can_run("lastexec_after_a_remote_start_is_the_node_it_started_on") {
        return;
    }
    for node2 in [&[][..], &["--mfs-dfsa", "0"][..]] {
        let (c, _) = setup(node2);
        for n in [1, 2] {
            std::fs::write(c.export(n).join("who"), format!("node {n}\n")).unwrap();
        }
        let prog = compile(c.dir.path(), "mfswho");
        let m = c.mnt();
        let mut cmd = c.in_ns(1, &omnode_bin());
        cmd.args([
            "run",
            "-j2",
            "--socket",
            c.socket(1).to_str().unwrap(),
            "--",
        ])
        .arg(&prog)
        .args(["20", "100"])
        .arg(m.join("lastexec/who"))
        .arg(m.join("home/who"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{node2:?}: {stdout}{}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.log(1),
            c.log(2)
        );
        // The first round may read before the daemon saw the exec (it polls for it): the
        // answer it settles on is node 2, and home is node 1 throughout.
        let last = |k: &str| {
            stdout
                .lines()
                .rfind(|l| l.starts_with(k))
                .map(str::to_owned)
        };
        assert_eq!(
            last("0: ").as_deref(),
            Some("0: node 2"),
            "{node2:?}: {stdout}"
        );
        assert!(
            stdout
                .lines()
                .filter(|l| l.starts_with("1: "))
                .eq(["1: node 1"]),
            "{node2:?}: {stdout}"
        );
        let moved = wait_for(Duration::from_secs(10), || guest_counts(&c.log(2)));
        assert!(
            moved.is_some(),
            "{node2:?}: it never ran on node 2\n{}",
            c.log(2)
        );
    }
}

/// fcntl locks between processes on two nodes, on files of node 1: P (node 1) holds a and
/// waits for b; Q (node 2) holds b and asks for a: Q gets EDEADLK at once instead of both
/// waiting forever, and when Q exits (its lock on b goes) P is woken and gets b.
#[test]
fn a_lock_cycle_across_nodes_is_edeadlk_and_a_release_wakes_the_waiter() {
    if !can_run("a_lock_cycle_across_nodes_is_edeadlk_and_a_release_wakes_the_waiter") {
        return;
    }
    use std::io::BufRead;
    let (c, _) = setup(&[]);
    for f in ["a", "b"] {
        std::fs::write(c.export(1).join(f), "x").unwrap();
    }
    let prog = compile(c.dir.path(), "lockpair");
    let m = c.mnt().join("1");
    let go = |k: &str| c.dir.path().join(format!("go-{k}"));
    let start = |node: u32, first: &str, second: &str, k: &str| {
        let mut cmd = c.in_ns(node, &prog);
        cmd.arg(m.join(first))
            .arg(m.join(second))
            .arg(go(k))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut kid = Kid(cmd.spawn().unwrap());
        let mut out = std::io::BufReader::new(kid.0.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(
            line,
            "locked\n",
            "{k} on node {node}\n{}\n{}",
            c.log(1),
            c.log(2)
        );
        (kid, out)
    };
    let (mut p, mut p_out) = start(1, "a", "b", "p");
    let (mut q, mut q_out) = start(2, "b", "a", "q");
    std::fs::write(go("p"), "").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        p.0.try_wait().unwrap().is_none(),
        "P got b while Q holds it"
    );
    std::fs::write(go("q"), "").unwrap();
    let q_end = wait_for(Duration::from_secs(20), || q.0.try_wait().ok().flatten())
        .expect("Q did not end: the cycle was not found");
    let mut q_line = String::new();
    q_out.read_line(&mut q_line).unwrap();
    assert!(q_end.success());
    assert_eq!(q_line, format!("second: errno {}\n", libc::EDEADLK));
    let p_end = wait_for(Duration::from_secs(20), || p.0.try_wait().ok().flatten())
        .expect("P was not woken when Q's lock went");
    let mut p_line = String::new();
    p_out.read_line(&mut p_line).unwrap();
    assert!(p_end.success());
    assert_eq!(p_line, "second: ok\n");
}
