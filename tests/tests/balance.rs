//! Automatic load balancing on a cluster of daemons each in its own cgroup capped at half a
//! CPU (so one machine behaves like four small ones): jobs `mosrun` at node 1 spread over
//! the nodes and print what an uninterrupted run prints; a blocked node gets nothing and an
//! explicit move there is refused with a one-line reason; equally loaded nodes do not pass
//! processes back and forth.
//!
//! Needs root (cgroups, ptrace) and the cgroup v1 `cpu` hierarchy; skips with the reason
//! otherwise, and fails instead under `CI=true`. Every cgroup, daemon and job it creates is
//! removed by Drop guards, also when an assertion fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omnode_tests::{Cluster, omnode_bin, run_cli, wait_for};

const CPU: &str = "/sys/fs/cgroup/cpu";

fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (cgroups, ptrace)".into());
    }
    if !Path::new(CPU).join("cpu.cfs_quota_us").exists() {
        return Some(format!("needs the cgroup v1 hierarchy {CPU}"));
    }
    None
}

fn skip_or_fail(test: &str, reason: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} cannot run under CI=true: {reason}"
    );
    eprintln!("SKIPPED {test}: {reason}");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text)
        .unwrap_or_else(|e| panic!("write {text:?} to {}: {e}", path.display()));
}

/// Test cgroups, removed on drop after killing every process left inside (daemons, jobs,
/// guests the daemons restored: all were started by this test).
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            for attempt in 0..50 {
                if let Ok(tasks) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in tasks.lines().filter_map(|p| p.parse::<i32>().ok()) {
                        // SAFETY: kill has no memory preconditions; pid is in our cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 49 => eprintln!("cannot remove {}: {e}", dir.display()),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
}

/// Child processes killed and reaped on drop.
#[derive(Default)]
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `sh -c` that puts itself into `cgroup`, then execs `cmd` (same PID).
fn in_cgroup(cgroup: &Path, cmd: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "echo $$ > '{}' && exec {cmd}",
        cgroup.join("cgroup.procs").display()
    ));
    c
}

fn quote(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A cluster of `n` daemons on 127.0.0.X.., each in its own cgroup capped at half a CPU.
struct CgCluster {
    c: Cluster,
    dirs: Vec<PathBuf>,
    _daemons: Children,
    // dropped last: the cgroups outlive the processes inside them
    _cg: Cgroups,
}

impl CgCluster {
    fn start(map: &str, n: u32, tag: &str) -> CgCluster {
        let mut cg = Cgroups(Vec::new());
        let top = Path::new(CPU).join(format!("omnode-test-{tag}-{}", std::process::id()));
        std::fs::create_dir(&top).unwrap();
        cg.0.push(top.clone());
        let mut dirs = Vec::new();
        for i in 1..=n {
            let d = top.join(format!("n{i}"));
            std::fs::create_dir(&d).unwrap();
            cg.0.push(d.clone());
            write(&d.join("cpu.cfs_period_us"), "100000");
            write(&d.join("cpu.cfs_quota_us"), "50000");
            dirs.push(d);
        }
        let c = Cluster::new(map);
        let mut daemons = Children::default();
        for i in 1..=n {
            let args = vec![
                omnode_bin().display().to_string(),
                "--map".into(),
                c.map.display().to_string(),
                "--node".into(),
                i.to_string(),
                "--key-file".into(),
                c.key.display().to_string(),
                "--port".into(),
                c.port.to_string(),
                "--socket".into(),
                c.socket(i).display().to_string(),
                "--load-tick-ms".into(),
                "250".into(),
            ];
            let log = std::fs::File::create(c.log(i)).unwrap();
            let child = in_cgroup(&dirs[i as usize - 1], &quote(&args))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start omnode");
            daemons.0.push(child);
        }
        let cc = CgCluster {
            c,
            dirs,
            _daemons: daemons,
            _cg: cg,
        };
        let formed = wait_for(Duration::from_secs(30), || {
            (1..=n)
                .all(|from| {
                    cc.c.up_with_load(from)
                        .is_some_and(|ids| ids.len() == n as usize)
                })
                .then_some(())
        });
        assert!(formed.is_some(), "cluster did not form\n{}", cc.logs(n));
        cc
    }

    fn logs(&self, n: u32) -> String {
        (1..=n)
            .map(|i| format!("==== node {i} ====\n{}", self.c.log_text(i)))
            .collect()
    }

    fn cli(&self, node: u32, args: &[&str]) -> std::process::Output {
        let sock = self.c.socket(node);
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--socket", sock.to_str().unwrap()]);
        run_cli(&full)
    }

    /// `mps --json` at `node`: (home PID, node it runs on) of node `node`'s processes moved.
    fn ps(&self, node: u32) -> Vec<(u64, u64)> {
        let out = self.cli(node, &["ps", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["processes"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["home"] == u64::from(node))
                    .filter_map(|r| Some((r["pid"].as_u64()?, r["node"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `mosrun OPTS prog ARGS` started in node `node`'s cgroup, output piped.
    fn mosrun(&self, node: u32, opts: &[&str], prog: &Path, args: &[&str]) -> Child {
        let mut a = vec![
            omnode_bin().display().to_string(),
            "run".into(),
            "--socket".into(),
            self.c.socket(node).display().to_string(),
        ];
        a.extend(opts.iter().map(|s| s.to_string()));
        a.push("--".into());
        a.push(prog.display().to_string());
        a.extend(args.iter().map(|s| s.to_string()));
        in_cgroup(&self.dirs[node as usize - 1], &quote(&a))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosrun")
    }
}

fn compile(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("progs/{name}.c"));
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc is needed for these tests");
    assert!(st.success(), "gcc failed on {}", src.display());
    out
}

/// Eight CPU-bound jobs `mosrun` at node 1 with node 3 blocked: `mps` shows them on at least
/// three nodes over time, never on node 3; each prints what a local run prints. An explicit
/// `migrate PID 3` is refused with one line naming node 3 and the block.
#[test]
fn eight_jobs_spread_but_never_to_a_blocked_node() {
    const TEST: &str = "eight_jobs_spread_but_never_to_a_blocked_node";
    if let Some(r) = unsupported() {
        return skip_or_fail(TEST, &r);
    }
    let cc = CgCluster::start("1 127.0.0.161 4\n", 4, "bal8");
    let prog = compile(cc.c.dir.path(), "lcg");
    let work = "1000";
    let local = Command::new(&prog).arg(work).output().unwrap();
    assert!(local.status.success());

    let blk = cc.cli(3, &["mosctl", "block"]);
    assert!(blk.status.success(), "{blk:?}");
    let st = cc.cli(3, &["mosctl", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["block"], true, "{v}");

    let mut jobs = Children::default();
    for _ in 0..8 {
        jobs.0.push(cc.mosrun(1, &[], &prog, &[work]));
    }
    let pids: BTreeSet<u64> = jobs.0.iter().map(|c| u64::from(c.id())).collect();
    // Where each job was seen, polling mps at node 1 until all have ended.
    let mut seen: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let t0 = Instant::now();
    let mut outputs = Vec::new();
    let mut pending: Vec<usize> = (0..jobs.0.len()).collect();
    while !pending.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "jobs not done in 240 s; seen {seen:?}\n{}",
            cc.logs(4)
        );
        let rows = cc.ps(1);
        for pid in &pids {
            let node = rows.iter().find(|(p, _)| p == pid).map_or(1, |(_, n)| *n);
            seen.entry(*pid).or_default().insert(node);
        }
        pending.retain(|&i| match jobs.0[i].try_wait().unwrap() {
            None => true,
            Some(st) => {
                let mut out = String::new();
                jobs.0[i]
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                let mut err = String::new();
                jobs.0[i]
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                outputs.push((st, out, err));
                false
            }
        });
        std::thread::sleep(Duration::from_millis(300));
    }
    let elapsed = t0.elapsed();
    for (st, out, err) in &outputs {
        assert!(st.success(), "{st:?} {err}\n{}", cc.logs(4));
        assert_eq!(out.as_bytes(), local.stdout, "{err}");
    }
    let nodes: BTreeSet<u64> = seen.values().flatten().copied().collect();
    eprintln!("8 jobs done in {elapsed:?}; seen on nodes {nodes:?}: {seen:?}");
    assert!(
        !nodes.contains(&3),
        "a job arrived on blocked node 3: {seen:?}\n{}",
        cc.logs(4)
    );
    assert!(
        nodes.len() >= 3,
        "jobs seen on {nodes:?} only: {seen:?}\n{}",
        cc.logs(4)
    );
    assert!(
        cc.c.log_text(1).contains("balancer: moving"),
        "{}",
        cc.c.log_text(1)
    );

    // An explicit move to the blocked node is refused, in one line naming it.
    let mut held = Children::default();
    held.0.push(cc.mosrun(1, &["-h", "-L"], &prog, &["100000"]));
    let pid = held.0[0].id().to_string();
    std::thread::sleep(Duration::from_millis(300));
    let out = cc.cli(1, &["migrate", &pid, "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "moved to a blocked node: {out:?}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("node 3") && err.contains("blocked"), "{err}");
    assert!(
        !cc.ps(1).iter().any(|(p, _)| p.to_string() == pid),
        "the refused process is listed as moved"
    );
    drop(held);
    drop(jobs);
}

/// Two nodes equally loaded (one job each, started at home): over 30 s no process moves
/// more than once (the hysteresis keeps them where they are).
#[test]
fn equal_loads_do_not_ping_pong() {
    const TEST: &str = "equal_loads_do_not_ping_pong";
    if let Some(r) = unsupported() {
        return skip_or_fail(TEST, &r);
    }
    let cc = CgCluster::start("1 127.0.0.171 2\n", 2, "balpp");
    let prog = compile(cc.c.dir.path(), "lcg");
    let mut jobs = Children::default();
    jobs.0.push(cc.mosrun(1, &["-h"], &prog, &["1000000"]));
    jobs.0.push(cc.mosrun(2, &["-h"], &prog, &["1000000"]));
    let pids: Vec<(u32, u64)> = vec![
        (1, u64::from(jobs.0[0].id())),
        (2, u64::from(jobs.0[1].id())),
    ];
    // where each is, sampled; a change of node is a move
    let mut last: BTreeMap<u64, u64> = pids.iter().map(|(n, p)| (*p, u64::from(*n))).collect();
    let mut moves: BTreeMap<u64, u32> = BTreeMap::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        for (home, pid) in &pids {
            let node = cc
                .ps(*home)
                .iter()
                .find(|(p, _)| p == pid)
                .map_or(u64::from(*home), |(_, n)| *n);
            if last.insert(*pid, node) != Some(node) {
                *moves.entry(*pid).or_default() += 1;
            }
        }
        for j in &mut jobs.0 {
            assert!(j.try_wait().unwrap().is_none(), "a job ended early");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        moves.values().all(|&m| m <= 1),
        "moved more than once: {moves:?}\n{}",
        cc.logs(2)
    );
    // both nodes still loaded by their job: the loads stayed comparable
    let l = |n: u32| cc.cli(n, &["mosctl", "getload"]).stdout;
    for n in 1..=2 {
        let v: f64 = String::from_utf8_lossy(&l(n)).trim().parse().unwrap();
        assert!(v > 0.3, "node {n} load {v}");
    }
    drop(jobs);
}
