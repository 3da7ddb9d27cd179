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
use std::process::Command;
use std::time::{Duration, Instant};

use omnode_tests::cgcluster::{CgCluster, Children, skip_or_fail, unsupported};
use omnode_tests::moving::compile;

/// Eight CPU-bound jobs `mosrun` at node 1 with node 3 blocked: `mps` shows them on at least
/// three nodes over time, never on node 3; each prints what a local run prints. An explicit
/// `migrate PID 3` is refused with one line naming node 3 and the block.
#[test]
fn eight_jobs_spread_but_never_to_a_blocked_node() {
    const TEST: &str = "eight_jobs_spread_but_never_to_a_blocked_node";
    if let Some(r) = unsupported() {
        return skip_or_fail(TEST, &r);
    }
    let cc = CgCluster::start("1 127.0.0.161 4\n", 4, "omnode-test-bal8");
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
    let cc = CgCluster::start("1 127.0.0.171 2\n", 2, "omnode-test-balpp");
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
