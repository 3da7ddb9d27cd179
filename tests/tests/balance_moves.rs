//! Balancing that moves real processes (issue 10): `mosctl expel` sends the guests of a node
//! back to their homes, `mosctl bring` brings a node's processes home, a target refuses a
//! process it has no memory (its own cgroup's limit) or CPU (its load) for and the sender
//! tries another node, and a node whose memory runs low moves a process to a node with room
//! (memory ushering). Every moved program's output is compared with an unmoved run.
//!
//! Needs root (ptrace, seccomp filters of other processes, cgroups); skips with the reason
//! otherwise, and fails instead under `CI=true`. Addresses 127.0.15.N only; cgroups named
//! `h10-*`; everything is removed by Drop guards, also when an assertion fails.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omnode_tests::cgcluster::{CgCluster, Children, skip_or_fail, unsupported_memory};
use omnode_tests::moving::{can_run, cli, cluster, compile, logs, moved};
use omnode_tests::{Cluster, wait_for};

/// bigheap MIB LINES MS 0: a heap of MIB MiB, a line every MS ms; its output depends only
/// on the arguments.
fn bigheap_args(mib: u64, lines: u32, ms: u32) -> Vec<String> {
    vec![
        mib.to_string(),
        lines.to_string(),
        ms.to_string(),
        "0".into(),
    ]
}

/// What `prog args` prints run here, unmoved.
fn unmoved(prog: &Path, args: &[String]) -> Vec<u8> {
    let out = Command::new(prog).args(args).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

/// Waits for `child` (bounded) and returns its stdout; asserts it exited 0.
fn output_of(child: &mut Child, what: &str, logs: impl Fn() -> String) -> Vec<u8> {
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "{what} not done in 180 s\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err).unwrap();
    }
    assert!(st.success(), "{what}: {st:?} {err}\n{}", logs());
    out
}

fn start(prog: &Path, args: &[String]) -> Child {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (home PID, home node, node it runs on) rows of `ps --json` at `node`.
fn ps_rows(c: &Cluster, node: u32) -> Vec<(u64, u64, u64)> {
    let out = cli(c, node, &["ps", "--json"]);
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

fn status_flag(c: &Cluster, node: u32, flag: &str) -> bool {
    let out = cli(c, node, &["mosctl", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[flag] == true
}

/// Two guests of node 1 run on node 2; `mosctl expel` on node 2 asks node 1 to take them
/// back: both end up at home, node 2 is blocked (a new move there is refused), and each
/// prints what an unmoved run prints.
#[test]
fn expel_sends_both_guests_home_and_blocks() {
    if !can_run("expel_sends_both_guests_home_and_blocks") {
        return;
    }
    let c = cluster("1 127.0.15.1 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "bigheap");
    let args = bigheap_args(4, 60, 100);
    let want = unmoved(&prog, &args);
    let mut jobs = Children::default();
    jobs.0.push(start(&prog, &args));
    jobs.0.push(start(&prog, &args));
    let pids: Vec<u32> = jobs.0.iter().map(Child::id).collect();
    std::thread::sleep(Duration::from_millis(300));
    for &p in &pids {
        moved(&c, p, 2);
    }
    let guests = |c: &Cluster| {
        ps_rows(c, 2)
            .into_iter()
            .filter(|(_, home, at)| *home == 1 && *at == 2)
            .count()
    };
    assert_eq!(guests(&c), 2, "{:?}", ps_rows(&c, 2));

    let out = cli(&c, 2, &["mosctl", "expel"]);
    assert!(
        out.status.success(),
        "expel: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs(&c, &[1, 2])
    );
    // it prints the PIDs that left
    let mut said: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    said.sort();
    let mut want_pids = pids.clone();
    want_pids.sort();
    assert_eq!(said, want_pids);
    assert_eq!(guests(&c), 0, "{:?}", ps_rows(&c, 2));
    let at_home = ps_rows(&c, 1);
    for &p in &pids {
        assert!(
            !at_home
                .iter()
                .any(|(pid, _, at)| *pid == u64::from(p) && *at != 1),
            "{p} still away: {at_home:?}"
        );
    }
    assert!(status_flag(&c, 2, "block"), "expel did not set block");
    let again = cli(&c, 1, &["migrate", &pids[0].to_string(), "2"]);
    assert!(!again.status.success(), "moved to an expelling node");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("node 2") && err.contains("blocked"), "{err}");

    for (i, j) in jobs.0.iter_mut().enumerate() {
        let got = output_of(j, &format!("job {i}"), || logs(&c, &[1, 2]));
        assert_eq!(got, want, "job {i} printed something else");
    }
}

/// Node 1's processes run on nodes 2 and 3; `mosctl bring` on node 1 brings both home and
/// sets lstay; each prints what an unmoved run prints.
#[test]
fn bring_brings_every_process_home_and_sets_lstay() {
    if !can_run("bring_brings_every_process_home_and_sets_lstay") {
        return;
    }
    let c = cluster("1 127.0.15.11 3\n", &[1, 2, 3]);
    let prog = compile(c.dir.path(), "bigheap");
    let args = bigheap_args(4, 60, 100);
    let want = unmoved(&prog, &args);
    let mut jobs = Children::default();
    jobs.0.push(start(&prog, &args));
    jobs.0.push(start(&prog, &args));
    let pids: Vec<u32> = jobs.0.iter().map(Child::id).collect();
    std::thread::sleep(Duration::from_millis(300));
    moved(&c, pids[0], 2);
    moved(&c, pids[1], 3);
    let away = |c: &Cluster| {
        ps_rows(c, 1)
            .into_iter()
            .filter(|(_, home, at)| *home == 1 && *at != 1)
            .count()
    };
    assert_eq!(away(&c), 2, "{:?}", ps_rows(&c, 1));

    let out = cli(&c, 1, &["mosctl", "bring"]);
    assert!(
        out.status.success(),
        "bring: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs(&c, &[1, 2, 3])
    );
    assert_eq!(away(&c), 0, "{:?}", ps_rows(&c, 1));
    for n in [2, 3] {
        assert!(
            !ps_rows(&c, n)
                .iter()
                .any(|(_, home, at)| *home == 1 && *at == u64::from(n)),
            "node {n} still runs a process of node 1"
        );
    }
    assert!(status_flag(&c, 1, "lstay"), "bring did not set lstay");
    for (i, j) in jobs.0.iter_mut().enumerate() {
        let got = output_of(j, &format!("job {i}"), || logs(&c, &[1, 2, 3]));
        assert_eq!(got, want, "job {i} printed something else");
    }
}

/// The memory (bytes) a node's memory cgroup uses now.
fn usage(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("memory.usage_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Four nodes at half a CPU each: node 2 capped at 64 MiB of memory, node 3 running ten
/// spinning processes of its own. A 96 MiB process of node 1 is refused by node 2 (memory)
/// and by node 3 (load), each in one line naming the node and the reason, stays at home
/// untouched, then goes to node 4 and prints what an unmoved run prints.
#[test]
fn targets_refuse_without_memory_or_when_loaded_and_another_takes_it() {
    const TEST: &str = "targets_refuse_without_memory_or_when_loaded_and_another_takes_it";
    if let Some(r) = unsupported_memory() {
        return skip_or_fail(TEST, &r);
    }
    let cc = CgCluster::start_with(
        "1 127.0.15.21 4\n",
        4,
        "h10-refuse",
        &[None, Some(64 << 20), None, None],
    );
    let prog = compile(cc.c.dir.path(), "bigheap");
    let args = bigheap_args(96, 100, 100);
    let want = unmoved(&prog, &args);
    let spin = compile(cc.c.dir.path(), "spin");
    let mut load = Children::default();
    for _ in 0..10 {
        load.0.push(
            cc.command_in(3, &format!("'{}' 600", spin.display()))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let getload = |n: u32| -> f64 {
        String::from_utf8_lossy(&cc.cli(n, &["mosctl", "getload"]).stdout)
            .trim()
            .parse()
            .unwrap_or(0.0)
    };
    // 16 runnable per CPU is the limit: 10 spinners + the guest on half a CPU is 22
    assert!(
        wait_for(Duration::from_secs(60), || (getload(3) > 8.0).then_some(())).is_some(),
        "node 3's load did not rise: {}",
        getload(3)
    );
    let mut job = Children::default();
    job.0.push(
        cc.command_in(1, &quote_prog(&prog, &args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = job.0[0].id().to_string();
    // the heap is filled (96 MiB resident) before the first line
    std::thread::sleep(Duration::from_secs(2));
    for (node, why) in [(2, "memory"), (3, "loaded")] {
        let out = cc.cli(1, &["migrate", &pid, &node.to_string()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "node {node} took it: {out:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("node {node}")) && err.contains(why),
            "node {node}: {err}"
        );
        assert!(
            !cc.ps(1).iter().any(|(p, _)| p.to_string() == pid),
            "the refused process is listed as moved"
        );
    }
    let out = cc.cli(1, &["migrate", &pid, "4"]);
    assert!(out.status.success(), "{out:?}\n{}", cc.logs(4));
    assert!(
        cc.ps(1)
            .iter()
            .any(|(p, n)| p.to_string() == pid && *n == 4)
    );
    let got = output_of(&mut job.0[0], "the moved process", || cc.logs(4));
    assert_eq!(got, want);
    drop(load);
}

fn quote_prog(prog: &Path, args: &[String]) -> String {
    std::iter::once(prog.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Node 1 capped at 160 MiB of memory; a process `mosrun -h` there fills it to below the
/// low-water mark (10% free): the balancer moves it to node 2 (which has room) for memory,
/// and it prints what an unmoved run prints.
#[test]
fn low_memory_moves_a_process_to_a_node_with_room() {
    const TEST: &str = "low_memory_moves_a_process_to_a_node_with_room";
    if let Some(r) = unsupported_memory() {
        return skip_or_fail(TEST, &r);
    }
    const LIMIT: u64 = 160 << 20;
    let cc = CgCluster::start_with("1 127.0.15.31 2\n", 2, "h10-usher", &[Some(LIMIT), None]);
    let prog = compile(cc.c.dir.path(), "bigheap");
    // leave about 10 MiB of the 16 MiB low-water mark free, whatever the daemon uses
    let used = usage(cc.mem[0].as_ref().unwrap());
    let mib = (LIMIT.saturating_sub(used) >> 20).saturating_sub(10);
    assert!(mib >= 32, "the daemon uses {used} bytes of {LIMIT}");
    let args = bigheap_args(mib, 150, 100);
    let want = unmoved(&prog, &args);
    let mut job = Children::default();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    job.0.push(cc.mosrun(1, &["-h"], &prog, &a));
    let pid = u64::from(job.0[0].id());
    let away = wait_for(Duration::from_secs(60), || {
        cc.ps(1)
            .into_iter()
            .find(|(p, n)| *p == pid && *n == 2)
            .map(|_| ())
    });
    assert!(
        away.is_some(),
        "not moved for memory within 60 s\n{}",
        cc.logs(2)
    );
    let log = cc.c.log_text(1);
    assert!(
        log.lines()
            .any(|l| l.contains("balancer: moving") && l.contains("Memory")),
        "{log}"
    );
    let got = output_of(&mut job.0[0], "the ushered process", || cc.logs(2));
    assert_eq!(got, want);
}
