//! A cluster of daemons each in its own cgroup (v1 `cpu`, capped at half a CPU; optionally
//! v1 `memory` with a limit), so that one machine behaves like several small ones: the
//! balancing tests (tests/balance*.rs) and the makespan benchmark use it. Every cgroup,
//! daemon and job it creates is removed by Drop guards, also when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Cluster, omnode_bin, run_cli, wait_for};

pub const CPU: &str = "/sys/fs/cgroup/cpu";
pub const MEMORY: &str = "/sys/fs/cgroup/memory";

/// Why these tests cannot run here, if they cannot.
pub fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (cgroups, ptrace)".into());
    }
    if !Path::new(CPU).join("cpu.cfs_quota_us").exists() {
        return Some(format!("needs the cgroup v1 hierarchy {CPU}"));
    }
    None
}

/// Why the memory-limited variant cannot run here, if it cannot.
pub fn unsupported_memory() -> Option<String> {
    unsupported().or_else(|| {
        (!Path::new(MEMORY).join("memory.limit_in_bytes").exists())
            .then(|| format!("needs the cgroup v1 hierarchy {MEMORY}"))
    })
}

/// Skips with the reason, or fails under `CI=true`.
pub fn skip_or_fail(test: &str, reason: &str) {
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
pub struct Cgroups(pub Vec<PathBuf>);

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
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `sh -c` that puts itself into `cgroups`, then execs `cmd` (same PID).
pub fn in_cgroups(cgroups: &[&Path], cmd: &str) -> Command {
    let joins: String = cgroups
        .iter()
        .map(|g| format!("echo $$ > '{}' && ", g.join("cgroup.procs").display()))
        .collect();
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("{joins}exec {cmd}"));
    c
}

pub fn quote(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A cluster of `n` daemons, each in its own cgroup capped at half a CPU.
pub struct CgCluster {
    pub c: Cluster,
    /// Node i's cpu cgroup at `dirs[i - 1]`.
    pub dirs: Vec<PathBuf>,
    /// Node i's memory cgroup, when it has a memory limit.
    pub mem: Vec<Option<PathBuf>>,
    _daemons: Children,
    // dropped last: the cgroups outlive the processes inside them
    _cg: Cgroups,
}

impl CgCluster {
    /// Cgroups named `NAME-<test pid>/n<i>`.
    pub fn start(map: &str, n: u32, name: &str) -> CgCluster {
        CgCluster::start_with(map, n, name, &[])
    }

    /// As [`CgCluster::start`], node i with a memory limit of `mem_limits[i - 1]` bytes
    /// when given (a v1 `memory` cgroup of the same name).
    pub fn start_with(map: &str, n: u32, name: &str, mem_limits: &[Option<u64>]) -> CgCluster {
        let mut cg = Cgroups(Vec::new());
        let top = Path::new(CPU).join(format!("{name}-{}", std::process::id()));
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
        let mut mem = vec![None; n as usize];
        if mem_limits.iter().any(Option::is_some) {
            let mtop = Path::new(MEMORY).join(format!("{name}-{}", std::process::id()));
            std::fs::create_dir(&mtop).unwrap();
            cg.0.push(mtop.clone());
            for i in 1..=n {
                if let Some(limit) = mem_limits.get(i as usize - 1).copied().flatten() {
                    let d = mtop.join(format!("n{i}"));
                    std::fs::create_dir(&d).unwrap();
                    cg.0.push(d.clone());
                    write(&d.join("memory.limit_in_bytes"), &limit.to_string());
                    mem[i as usize - 1] = Some(d);
                }
            }
        }
        let c = Cluster::new(map);
        let mut daemons = Children::default();
        let mut cc = CgCluster {
            c,
            dirs,
            mem,
            _daemons: Children::default(),
            _cg: cg,
        };
        for i in 1..=n {
            let args = vec![
                omnode_bin().display().to_string(),
                "--map".into(),
                cc.c.map.display().to_string(),
                "--node".into(),
                i.to_string(),
                "--key-file".into(),
                cc.c.key.display().to_string(),
                "--port".into(),
                cc.c.port.to_string(),
                "--socket".into(),
                cc.c.socket(i).display().to_string(),
                "--load-tick-ms".into(),
                "250".into(),
            ];
            let log = std::fs::File::create(cc.c.log(i)).unwrap();
            let child = cc
                .command_in(i, &quote(&args))
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start omnode");
            daemons.0.push(child);
        }
        cc._daemons = daemons;
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

    /// `sh -c` that joins node `node`'s cgroups and execs `cmd`.
    pub fn command_in(&self, node: u32, cmd: &str) -> Command {
        let i = node as usize - 1;
        let mut g: Vec<&Path> = vec![&self.dirs[i]];
        if let Some(m) = &self.mem[i] {
            g.push(m);
        }
        in_cgroups(&g, cmd)
    }

    pub fn logs(&self, n: u32) -> String {
        (1..=n)
            .map(|i| format!("==== node {i} ====\n{}", self.c.log_text(i)))
            .collect()
    }

    pub fn cli(&self, node: u32, args: &[&str]) -> std::process::Output {
        let sock = self.c.socket(node);
        let mut full: Vec<&str> = args.to_vec();
        full.extend(["--socket", sock.to_str().unwrap()]);
        run_cli(&full)
    }

    /// `mps --json` at `node`: (home PID, node it runs on) of node `node`'s processes moved.
    pub fn ps(&self, node: u32) -> Vec<(u64, u64)> {
        self.ps_all(node)
            .into_iter()
            .filter(|(_, home, _)| *home == u64::from(node))
            .map(|(pid, _, at)| (pid, at))
            .collect()
    }

    /// `mps --json` at `node`: every row as (home PID, home node, node it runs on).
    pub fn ps_all(&self, node: u32) -> Vec<(u64, u64, u64)> {
        let out = self.cli(node, &["ps", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["processes"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| {
                        Some((r["pid"].as_u64()?, r["home"].as_u64()?, r["node"].as_u64()?))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `mosrun OPTS prog ARGS` started in node `node`'s cgroups, output piped.
    pub fn mosrun(&self, node: u32, opts: &[&str], prog: &Path, args: &[&str]) -> Child {
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
        self.command_in(node, &quote(&a))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosrun")
    }
}
