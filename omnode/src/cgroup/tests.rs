use super::*;
use std::fs;

const MOUNTINFO_V1: &str = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
34 30 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:36 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn parses_mountinfo_and_proc_cgroup() {
    let m = parse_mountinfo(MOUNTINFO_V1);
    assert_eq!(m.len(), 4, "{m:?}");
    assert_eq!(m[0].point, PathBuf::from("/sys/fs/cgroup/cpu"));
    assert_eq!(m[0].controllers, vec!["rw", "cpu"]);
    assert!(m[3].v2 && m[3].controllers.is_empty());
    let m = parse_mountinfo("1 2 0:1 /a\\040b /mnt/x\\040y rw - cgroup2 none rw\n");
    assert_eq!(
        (m[0].root.as_str(), m[0].point.to_str()),
        ("/a b", Some("/mnt/x y"))
    );
    let c = parse_proc_cgroup("4:memory:/x/y\n3:cpu,cpuacct:/\n0::/z\n");
    assert_eq!(c[0], (vec!["memory".to_string()], "/x/y".to_string()));
    assert_eq!(c[1].0, vec!["cpu", "cpuacct"]);
    assert_eq!(c[2], (vec![], "/z".to_string()));
}

#[test]
fn parses_cpu_lists_quotas_and_proc_fields() {
    assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(7));
    assert_eq!(parse_cpu_list("1"), Some(1));
    assert_eq!(parse_cpu_list(""), Some(0));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("a"), None);
    assert_eq!(
        field("cpu  1 2 3\nprocs_running 3\n", "procs_running"),
        Some(3.0)
    );
    assert_eq!(
        cpu_speed("processor\t: 0\ncpu MHz\t\t: 2445.406\n"),
        Some(2445)
    );
    assert_eq!(cpu_speed("bogomips\t: 4890.81\n"), Some(4891));
    assert_eq!(
        cpu_speed("processor : 0\n"),
        None,
        "no speed is an error, not 0"
    );
    assert_eq!(thread_state("12 (a) b) R 1 2"), Some('R'));
    assert_eq!(thread_state("12 (sleepy) S 1"), Some('S'));
    assert_eq!(thread_state("garbage"), None);
}

/// A fake /proc and cgroup tree in a temporary directory.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let f = Fake {
            dir: tempfile::tempdir().unwrap(),
        };
        f.put("proc/stat", "cpu 1 2\nprocs_running 5\n");
        f.put("proc/cpuinfo", "processor : 0\ncpu MHz : 2000.0\n");
        f.put(
            "proc/meminfo",
            "MemTotal: 8000000 kB\nMemAvailable: 6000000 kB\n",
        );
        f.put("proc/self/status", "Name: x\nCpus_allowed_list:\t0-3\n");
        // threads 101 (R), 102 (S), 103 (R), 104 gone
        f.put("proc/101/stat", "101 (busy) R 1 1");
        f.put("proc/102/stat", "102 (idle) S 1 1");
        f.put("proc/103/stat", "103 (busy 2) R 1 1");
        f
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn put(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    fn mountinfo(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "31 30 0:27 / {d}/cg/cpu rw - cgroup cgroup rw,cpu,cpuacct\n\
             33 30 0:29 / {d}/cg/cpuset rw - cgroup cgroup rw,cpuset\n\
             34 30 0:30 / {d}/cg/memory rw - cgroup cgroup rw,memory\n\
             40 30 0:36 / {d}/cg/unified rw - cgroup2 cgroup2 rw\n"
        )
    }
    fn scope(&self, cgroup: &str) -> Scope {
        Scope::from_texts(&self.mountinfo(), cgroup, &self.path("proc"))
    }
}

#[test]
fn root_cgroup_measures_the_machine() {
    let f = Fake::new();
    let s = f.scope("4:memory:/\n3:cpuset:/\n1:cpu,cpuacct:/\n0::/\n");
    assert!(!s.in_cgroup(), "{s:?}");
    let l = s.sample().unwrap();
    assert_eq!(l.load, 4.0, "procs_running minus the sampler");
    assert_eq!((l.cpus, l.capacity, l.speed), (4, 4.0, 2000));
    assert_eq!(
        (l.total_mem, l.free_mem),
        (8_000_000 * 1024, 6_000_000 * 1024)
    );
}

#[test]
fn v1_cgroup_counts_its_own_threads_and_limits() {
    let f = Fake::new();
    f.put("cg/cpu/cpu.cfs_quota_us", "-1\n");
    f.put("cg/cpu/cpu.cfs_period_us", "100000\n");
    f.put("cg/cpu/a/cpu.cfs_quota_us", "150000\n");
    f.put("cg/cpu/a/cpu.cfs_period_us", "100000\n");
    f.put("cg/cpu/a/n1/cpu.cfs_quota_us", "-1\n");
    f.put("cg/cpu/a/n1/cpu.cfs_period_us", "100000\n");
    f.put("cg/cpu/a/n1/tasks", "101\n102\n103\n104\n");
    f.put("cg/cpuset/n1/cpuset.effective_cpus", "1\n");
    f.put("cg/memory/m/memory.limit_in_bytes", "9223372036854771712\n");
    f.put("cg/memory/m/memory.usage_in_bytes", "1\n");
    f.put("cg/memory/m/memory.stat", "total_inactive_file 0\n");
    f.put("cg/memory/memory.limit_in_bytes", "9223372036854771712\n");
    f.put("cg/memory/memory.usage_in_bytes", "1\n");
    f.put("cg/memory/memory.stat", "total_inactive_file 0\n");
    let s = f.scope("4:memory:/m\n3:cpuset:/n1\n1:cpu,cpuacct:/a/n1\n0::/\n");
    assert!(s.in_cgroup());
    let l = s.sample().unwrap();
    assert_eq!(
        l.load, 2.0,
        "R threads of the cgroup's tasks; a vanished one is skipped"
    );
    assert_eq!(l.cpus, 1, "the cpuset");
    assert_eq!(
        l.capacity, 1.0,
        "the parent's 1.5 CPU quota, capped by the 1-CPU cpuset"
    );
    // no memory limit below the machine's: the machine's figures
    assert_eq!(l.total_mem, 8_000_000 * 1024);

    // a memory limit: total is the limit, free is limit minus the working set
    f.put("cg/memory/m/memory.limit_in_bytes", "1073741824\n");
    f.put("cg/memory/m/memory.usage_in_bytes", "536870912\n");
    f.put(
        "cg/memory/m/memory.stat",
        "cache 1\ntotal_inactive_file 268435456\n",
    );
    f.put("cg/cpu/a/cpu.cfs_quota_us", "50000\n");
    let l = s.sample().unwrap();
    assert_eq!((l.total_mem, l.free_mem), (1 << 30, (1 << 30) - (1 << 28)));
    assert_eq!(l.capacity, 0.5, "the ancestor's half-CPU quota");
}

#[test]
fn v2_cgroup_reads_cpu_max_and_memory_max() {
    let f = Fake::new();
    f.put("cg/unified/c/cgroup.controllers", "cpuset cpu memory\n");
    f.put("cg/unified/c/cgroup.threads", "101\n102\n");
    f.put("cg/unified/c/cpu.max", "25000 100000\n");
    f.put("cg/unified/c/cpuset.cpus.effective", "0-1\n");
    f.put("cg/unified/c/memory.max", "max\n");
    f.put("cg/unified/c/memory.current", "5\n");
    f.put("cg/unified/c/memory.stat", "inactive_file 0\n");
    let s = f.scope("0::/c\n");
    let l = s.sample().unwrap();
    assert_eq!((l.load, l.cpus, l.capacity), (1.0, 2, 0.25));
    assert_eq!(l.total_mem, 8_000_000 * 1024);
    f.put("cg/unified/c/cpu.max", "max 100000\n");
    f.put("cg/unified/c/memory.max", "2097152\n");
    f.put("cg/unified/c/memory.current", "1048576\n");
    let l = s.sample().unwrap();
    assert_eq!(
        (l.capacity, l.total_mem, l.free_mem),
        (2.0, 2 << 20, 1 << 20)
    );
}

#[test]
fn unreadable_or_garbled_files_fail_closed_naming_the_file() {
    let f = Fake::new();
    f.put("cg/cpu/cpu.cfs_quota_us", "-1\n");
    f.put("cg/cpu/cpu.cfs_period_us", "100000\n");
    f.put("cg/cpu/n/tasks", "101\n");
    f.put("cg/cpu/n/cpu.cfs_quota_us", "-1\n");
    f.put("cg/cpu/n/cpu.cfs_period_us", "100000\n");
    let s = f.scope("1:cpu:/n\n");
    assert_eq!(s.sample().unwrap().load, 1.0);

    f.put("cg/cpu/n/cpu.cfs_quota_us", "lots\n");
    let e = s.sample().unwrap_err().to_string();
    assert!(
        e.contains("cpu.cfs_quota_us") && e.contains("CFS quota"),
        "{e}"
    );

    f.put("cg/cpu/n/cpu.cfs_quota_us", "-1\n");
    fs::remove_file(f.path("cg/cpu/n/tasks")).unwrap();
    let e = s.sample().unwrap_err().to_string();
    assert!(e.contains("cannot read") && e.contains("tasks"), "{e}");

    f.put("cg/cpu/n/tasks", "101\n");
    f.put("proc/cpuinfo", "processor : 0\n");
    let e = s.sample().unwrap_err().to_string();
    assert!(e.contains("cpuinfo"), "{e}");

    f.put("proc/cpuinfo", "cpu MHz : 1000\n");
    f.put("proc/self/status", "Cpus_allowed_list:\t\n");
    let e = s.sample().unwrap_err().to_string();
    assert!(e.contains("non-empty CPU list"), "{e}");
}

#[test]
fn this_process_is_measured_plausibly() {
    let s = Scope::detect().expect("detect");
    let l = s
        .sample()
        .unwrap_or_else(|e| panic!("{}: {e}", s.describe()));
    assert!(l.cpus >= 1 && l.capacity > 0.0 && l.capacity <= f64::from(l.cpus));
    assert!(l.speed > 0);
    assert!(l.total_mem >= l.free_mem && l.free_mem > 0, "{l:?}");
    assert!(l.load >= 0.0);
}
