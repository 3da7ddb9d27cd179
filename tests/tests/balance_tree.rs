//! Process trees spread (issue 10 part 3): `mosrun -t make -j4` at node 1 of a cluster of
//! daemons each in its own cgroup capped at half a CPU places every program its tree starts
//! at its exec, before its first instruction; an interrupt of make's process group at home
//! ends the whole tree on every node.
//!
//! Not here yet: the build of a C project by `mosrun -t make` compared with a local make. Its
//! test (in this file's history: commit 81e15db, removed in 0f71bf7) hangs: the
//! compilers are placed and moved, come home at their first mmap of a home file, and then
//! wait forever in a futex at home (see the branch's report).
//!
//! Needs root (cgroups, ptrace), the cgroup v1 `cpu` hierarchy, make and cc; skips with the
//! reason otherwise, and fails instead under `CI=true`. Every cgroup, daemon and process it
//! creates is removed by Drop guards, also when an assertion fails. Addresses 127.0.31.N.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use omnode_tests::cgcluster::{CgCluster, Children, quote, skip_or_fail, unsupported};
use omnode_tests::omnode_bin;

/// Why these tests cannot run here, if they cannot.
fn cannot() -> Option<String> {
    unsupported().or_else(|| {
        ["make", "cc"]
            .iter()
            .find(|t| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {t}")])
                    .output()
                    .map_or(true, |o| !o.status.success())
            })
            .map(|t| format!("needs {t}"))
    })
}

/// Every process whose command line mentions `marker` (all nodes run on this machine, so
/// one `/proc` shows them all).
fn running(marker: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(marker) {
            out.push((pid, cmd));
        }
    }
    out
}

/// An interrupt (SIGINT to make's process group at home, as Ctrl-C sends it) ends the whole
/// tree: make ends, and no process of it is left on any node (no mps row, nothing in /proc).
#[test]
fn interrupt_of_the_group_ends_the_tree_on_every_node() {
    const TEST: &str = "interrupt_of_the_group_ends_the_tree_on_every_node";
    if let Some(r) = cannot() {
        return skip_or_fail(TEST, &r);
    }
    let cc = CgCluster::start("1 127.0.31.11 4\n", 4, "h10tree-int");
    let dir = cc.c.dir.path().join("spin");
    std::fs::create_dir_all(&dir).unwrap();
    let prog = omnode_tests::moving::compile(cc.c.dir.path(), "lcg");
    // four jobs that each spin far longer than the test waits
    let spin = dir.join("h10tree-spin");
    std::fs::copy(&prog, &spin).unwrap();
    let jobs: Vec<String> = (0..4).map(|i| format!("j{i}")).collect();
    let mut mk = format!("all: {}\n", jobs.join(" "));
    for j in &jobs {
        mk.push_str(&format!("{j}:\n\t{} 100000000\n", spin.display()));
    }
    std::fs::write(dir.join("Makefile"), mk).unwrap();
    let args = vec![
        omnode_bin().display().to_string(),
        "run".into(),
        "--socket".into(),
        cc.c.socket(1).display().to_string(),
        "-t".into(),
        "--".into(),
        "make".into(),
        "-j4".into(),
    ];
    // its own process group (setsid: sh is no group leader, so setsid execs in place)
    let child = cc
        .command_in(1, &format!("setsid {}", quote(&args)))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let make = child.id() as i32;
    let mut kids = Children(vec![child]);
    let marker = spin.display().to_string();
    // the four jobs run, and at least one was moved
    let seen = omnode_tests::wait_for(Duration::from_secs(60), || {
        let elsewhere = cc.ps(1).len();
        (running(&marker).len() >= 4 && elsewhere >= 1).then_some(elsewhere)
    });
    assert!(
        seen.is_some(),
        "the jobs did not start or none moved: {:?}, mps {:?}\n{}",
        running(&marker),
        cc.ps(1),
        cc.logs(4)
    );
    // SAFETY: kill of our own process group (make's, created by setsid above).
    assert_eq!(unsafe { libc::kill(-make, libc::SIGINT) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = kids.0[0].try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "make did not end after SIGINT; left: {:?}\n{}",
            running(&marker),
            cc.logs(4)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "make ended with {status:?}");
    let gone = omnode_tests::wait_for(Duration::from_secs(15), || {
        let left = running(&marker);
        let rows: Vec<_> = (1..=4).flat_map(|n| cc.ps_all(n)).collect();
        (left.is_empty() && rows.is_empty()).then_some(())
    });
    assert!(
        gone.is_some(),
        "left after SIGINT: {:?}, mps rows {:?}\n{}",
        running(&marker),
        (1..=4).flat_map(|n| cc.ps_all(n)).collect::<Vec<_>>(),
        cc.logs(4)
    );
}
