//! Daemons in cgroups of their own behave like separate machines: each measures the runnable
//! threads, CPU capacity (CFS quota, cpuset) of its own cgroup, so busy loops in one node's
//! cgroup raise that node's load only, and each reports the capacity its cgroup allows.
//!
//! Needs root and cgroup v1 `cpu` and `cpuset` hierarchies (mounted under /sys/fs/cgroup);
//! skips with the reason otherwise, and fails instead under `CI=true`. Every cgroup, daemon
//! and busy loop it creates is removed by Drop guards, also when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use omnode_tests::{Cluster, omnode_bin, wait_for};

const CPU: &str = "/sys/fs/cgroup/cpu";
const CPUSET: &str = "/sys/fs/cgroup/cpuset";

/// Why this test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        return Some("needs root to create cgroups".into());
    }
    for (dir, file) in [(CPU, "cpu.cfs_quota_us"), (CPUSET, "cpuset.cpus")] {
        if !Path::new(dir).join(file).exists() {
            return Some(format!("needs the cgroup v1 hierarchy {dir} (no {file})"));
        }
    }
    None
}

fn skip_or_fail(reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cgroup_load cannot run under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text)
        .unwrap_or_else(|e| panic!("write {text:?} to {}: {e}", path.display()));
}

/// Test cgroups in the v1 `cpu` and `cpuset` hierarchies; removed on drop, after moving any
/// task still inside back to the root cgroup.
struct Cgroups {
    dirs: Vec<PathBuf>,
}

impl Cgroups {
    fn mkdir(&mut self, dir: PathBuf) -> PathBuf {
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        self.dirs.push(dir.clone());
        dir
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        // children first
        for dir in self.dirs.iter().rev() {
            for attempt in 0..50 {
                if let Ok(tasks) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    let root = dir
                        .ancestors()
                        .find(|a| a.as_os_str() == CPU || a.as_os_str() == CPUSET);
                    for pid in tasks.lines() {
                        if let Some(root) = root {
                            let _ = std::fs::write(root.join("cgroup.procs"), pid);
                        }
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

/// `sh -c` that first puts itself into `cgroups` (their `cgroup.procs`), then execs `cmd`.
fn in_cgroups(cgroups: &[&Path], cmd: &str) -> Command {
    let joins: Vec<String> = cgroups
        .iter()
        .map(|d| format!("echo $$ > '{}' &&", d.join("cgroup.procs").display()))
        .collect();
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("{} exec {cmd}", joins.join(" ")));
    c
}

#[test]
fn each_daemon_measures_its_own_cgroup() {
    if let Some(reason) = unsupported() {
        return skip_or_fail(&reason);
    }
    let cpus_online = std::fs::read_to_string(Path::new(CPUSET).join("cpuset.effective_cpus"))
        .expect("root cpuset");
    let mems = std::fs::read_to_string(Path::new(CPUSET).join("cpuset.mems")).expect("root mems");
    let first_cpu: u32 = cpus_online
        .trim()
        .split([',', '-'])
        .next()
        .and_then(|c| c.parse().ok())
        .expect("a CPU");

    let tag = format!("omnode-test-cgload-{}", std::process::id());
    let mut cg = Cgroups { dirs: Vec::new() };
    let cpu_top = cg.mkdir(Path::new(CPU).join(&tag));
    let set_top = cg.mkdir(Path::new(CPUSET).join(&tag));
    write(&set_top.join("cpuset.cpus"), cpus_online.trim());
    write(&set_top.join("cpuset.mems"), mems.trim());

    // node 1: half a CPU by quota on every CPU; node 2: 3/4 of a CPU by quota on one CPU;
    // node 3: one CPU by cpuset, no quota; node 4: the root cgroup, the machine.
    let quotas = [(1u32, 50_000i64), (2, 75_000), (3, -1)];
    let mut dirs = Vec::new();
    for (n, quota) in quotas {
        let c = cg.mkdir(cpu_top.join(format!("n{n}")));
        write(&c.join("cpu.cfs_period_us"), "100000");
        write(&c.join("cpu.cfs_quota_us"), &quota.to_string());
        let s = cg.mkdir(set_top.join(format!("n{n}")));
        let cpus = if n == 1 {
            cpus_online.trim().to_string()
        } else {
            first_cpu.to_string()
        };
        write(&s.join("cpuset.cpus"), &cpus);
        write(&s.join("cpuset.mems"), mems.trim());
        dirs.push((c, s));
    }
    let machine_cpus = cpus_online
        .trim()
        .split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<u64>().unwrap() - a.parse::<u64>().unwrap() + 1,
            None => 1,
        })
        .sum::<u64>() as f64;
    let n1_cpus = machine_cpus;
    let expect_capacity = [
        (1u64, 0.5f64.min(n1_cpus)),
        (2, 0.75),
        (3, 1.0),
        (4, machine_cpus),
    ];

    let c = Cluster::new("1 127.0.0.101 4\n");
    let mut children = Children::default();
    for n in 1..=4u32 {
        let args = [
            "--map".to_string(),
            c.map.display().to_string(),
            "--node".into(),
            n.to_string(),
            "--key-file".into(),
            c.key.display().to_string(),
            "--port".into(),
            c.port.to_string(),
            "--socket".into(),
            c.socket(n).display().to_string(),
            "--load-tick-ms".into(),
            "250".into(),
        ];
        let cmd = format!(
            "'{}' {}",
            omnode_bin().display(),
            args.iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let log = std::fs::File::create(c.log(n)).unwrap();
        let mut command = if n == 4 {
            let mut k = Command::new("sh");
            k.arg("-c").arg(format!("exec {cmd}"));
            k
        } else {
            let (cd, sd) = &dirs[n as usize - 1];
            in_cgroups(&[cd, sd], &cmd)
        };
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        children.0.push(command.spawn().expect("start omnode"));
    }

    // Everyone sees everyone with a load; node 1's view of every node's capacity.
    let row = |from: u32, id: u64| -> Option<serde_json::Value> {
        let s = c.status(from)?;
        s["nodes"]
            .as_array()?
            .iter()
            .find(|r| r["id"] == id && r["load"].is_number())
            .cloned()
    };
    let formed = wait_for(Duration::from_secs(30), || {
        (1..=4)
            .all(|from| (1..=4).all(|id| row(from, id).is_some()))
            .then_some(())
    });
    if formed.is_none() {
        for n in 1..=4 {
            eprintln!("==== node {n} ====\n{}", c.log_text(n));
        }
        panic!("the four cgroup nodes did not all see each other with a load");
    }
    for (id, want) in expect_capacity {
        let r = row(1, id).unwrap();
        let cap = r["capacity"].as_f64().unwrap();
        assert!(
            (cap - want).abs() < 1e-9,
            "node {id} capacity {cap}, want {want}: {r}"
        );
    }
    assert_eq!(row(1, 1).unwrap()["cpus"].as_u64().unwrap() as f64, n1_cpus);
    assert_eq!(row(1, 2).unwrap()["cpus"], 1);
    assert_eq!(row(1, 3).unwrap()["cpus"], 1);
    for n in 1..=3 {
        assert!(
            c.log_text(n).contains("in_cgroup=true"),
            "node {n} did not measure its cgroup:\n{}",
            c.log_text(n)
        );
    }
    assert!(
        c.log_text(4).contains("in_cgroup=false"),
        "{}",
        c.log_text(4)
    );

    // Idle cgroups: nodes 1-3 report (almost) nothing running, whatever the machine does.
    let idle = |id: u64| row(id as u32, id).and_then(|r| r["load"].as_f64());
    for id in 1..=3 {
        let l = wait_for(Duration::from_secs(10), || idle(id).filter(|l| *l < 0.5));
        assert!(l.is_some(), "node {id} not idle: {:?}", idle(id));
    }

    // Two busy loops in node 3's cgroup: its load rises towards 2, nodes 1 and 2 stay idle.
    let (cd, sd) = &dirs[2];
    let mut busy = Children::default();
    for _ in 0..2 {
        busy.0.push(
            in_cgroups(&[cd, sd], "sh -c 'while :; do :; done'")
                .stdin(Stdio::null())
                .spawn()
                .expect("busy loop"),
        );
    }
    let risen = wait_for(Duration::from_secs(30), || {
        row(1, 3)
            .and_then(|r| r["load"].as_f64())
            .filter(|l| *l > 1.5)
    });
    let seen_by_1 = row(1, 3);
    assert!(
        risen.is_some(),
        "node 3's load did not rise as seen by node 1: {seen_by_1:?}"
    );
    // its normalised load says 2 processes on 1 CPU of this speed
    let r3 = row(3, 3).unwrap();
    let speed = r3["speed"].as_f64().unwrap();
    let norm = r3["norm_load"].as_f64().unwrap();
    let raw = r3["load"].as_f64().unwrap();
    assert!((norm - raw * 1000.0 / speed).abs() < 1e-6, "{r3}");
    for id in [1u64, 2] {
        let l = idle(id).unwrap();
        assert!(l < 0.5, "node {id} load {l} rose with node 3's busy loops");
    }
    drop(busy);
    // and it falls at once when they end
    let fallen = wait_for(Duration::from_secs(10), || idle(3).filter(|l| *l < 0.5));
    assert!(
        fallen.is_some(),
        "node 3's load did not fall: {:?}",
        idle(3)
    );
    drop(children);
    drop(cg);
}
