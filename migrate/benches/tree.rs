//! Freeze and thaw of a tree of 8 processes (a parent and 7 children, each with its own touched
//! heap, a pipe from the parent to each child with bytes waiting in it), beside the same-run
//! baseline of 8 lone processes of the same size frozen and thawed one by one. Needs root
//! and gcc.
//!
//! `cargo bench -p migrate --bench tree` (heap per process in MiB: `MIGRATE_BENCH_TREE_MIB=1`,
//! rounds: `MIGRATE_BENCH_ROUNDS=5`)
//!
//! - tree freeze: `migrate::freeze_tree` (the processes are ended) into memory; frozen = how
//!   long the first process was stopped (every process is stopped at most that long), wall =
//!   the whole call.
//! - tree thaw: `migrate::thaw_tree` of that image (every child with its old PID).
//! - baseline: `migrate::freeze` + `migrate::thaw` of 8 lone processes with the same heap,
//!   one after the other (what the tree costs beyond its processes: finding them, the fds they
//!   share, forking children from their parents).
//!
//! This process makes itself a child subreaper, so that the ended children are reaped at once
//! (their PIDs are free again for the thaw) rather than whenever init gets to them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SRC: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
static void heap(size_t mib) {
    size_t n = mib << 20;
    char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < n; i += 64) p[i] = (char)(i >> 6);
}
int main(int argc, char **argv) {
    size_t mib = (size_t)atol(argv[1]);
    int kids = atoi(argv[2]);
    for (int k = 0; k < kids; k++) {
        int p[2];
        if (pipe(p)) return 1;
        if (fork() == 0) {
            close(p[1]);
            heap(mib);
            for (;;) pause();
        }
        close(p[0]);
        if (write(p[1], "waiting bytes\n", 14) != 14) return 1;
    }
    heap(mib);
    printf("ready\n"); fflush(stdout);
    for (;;) pause();
}
"#;

fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        i += 1;
        let k = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        out.extend(k.split_whitespace().filter_map(|s| s.parse::<i32>().ok()));
    }
    out
}

/// Starts the program with `kids` children; returns its PID once all are ready.
fn start(bin: &std::path::Path, mib: usize, kids: usize) -> i32 {
    let mut cmd = Command::new(bin);
    // SAFETY: close_range is async-signal-safe; drop fds inherited from whoever runs us.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut child = cmd
        .arg(mib.to_string())
        .arg(kids.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id() as i32;
    // children touch their heaps on their own: wait until each sleeps in pause
    let end = Instant::now() + Duration::from_secs(60);
    while descendants(pid).len() < kids + 1
        || descendants(pid).iter().any(|p| {
            !std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('S'))
            })
        })
    {
        assert!(Instant::now() < end, "the tree never settled");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::mem::forget(child); // reaped below with waitpid
    pid
}

/// Reaps every ended child (ours, or orphans we took as subreaper).
fn reap_all(pids: &[i32]) {
    for &p in pids {
        let mut st = 0;
        // SAFETY: waitpid on a PID that is our child or orphan.
        unsafe { libc::waitpid(p, &mut st, libc::__WALL) };
    }
}

fn kill_all(pids: &[i32]) {
    for &p in pids {
        // SAFETY: kill with integer arguments (processes this bench made).
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    reap_all(pids);
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the tree bench needs root (ptrace, clone3 set_tid)");
        return;
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mib: usize = std::env::var("MIGRATE_BENCH_TREE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let rounds: usize = std::env::var("MIGRATE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::Builder::new()
        .prefix("h8tree-bench-")
        .tempdir()
        .unwrap();
    let src = dir.path().join("tree.c");
    std::fs::write(&src, SRC).unwrap();
    let bin = dir.path().join("tree");
    assert!(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .expect("gcc")
            .success()
    );
    let (mut frozen, mut fwall, mut twall, mut base_f, mut base_t) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut bytes = 0;
    for _ in 0..rounds {
        // --- the tree
        let root = start(&bin, mib, 7);
        let old = descendants(root);
        assert_eq!(old.len(), 8);
        let mut img = Vec::new();
        let t0 = Instant::now();
        let r = migrate::freeze_tree(root, &mut img, &migrate::FreezeOptions::default())
            .expect("freeze_tree");
        fwall.push(t0.elapsed());
        frozen.push(r.frozen);
        bytes = img.len();
        reap_all(&old);
        let t0 = Instant::now();
        let t = migrate::thaw_tree(
            &img[..],
            &migrate::ThawOptions {
                same_pid: true,
                ..Default::default()
            },
        )
        .expect("thaw_tree");
        twall.push(t0.elapsed());
        let new: Vec<i32> = t.pids.iter().map(|p| p.1).collect();
        assert_eq!(descendants(t.root.pid).len(), 8, "the tree came back whole");
        kill_all(&new);

        // --- the baseline: 8 lone processes, one by one
        let lone: Vec<i32> = (0..8).map(|_| start(&bin, mib, 0)).collect();
        let (mut f, mut th) = (Duration::ZERO, Duration::ZERO);
        let mut again = Vec::new();
        for &p in &lone {
            let mut img = Vec::new();
            let t0 = Instant::now();
            migrate::freeze(p, &mut img, &migrate::FreezeOptions::default()).expect("freeze");
            f += t0.elapsed();
            reap_all(&[p]);
            let t0 = Instant::now();
            let t = migrate::thaw(&img[..], &migrate::ThawOptions::default()).expect("thaw");
            th += t0.elapsed();
            again.push(t.pid);
        }
        base_f.push(f);
        base_t.push(th);
        kill_all(&again);
    }
    println!(
        "tree of 8 processes, {mib} MiB heap each, image {:.1} MiB, median of {rounds}:",
        bytes as f64 / 1048576.0
    );
    println!(
        "  freeze_tree: frozen {:.1} ms, wall {:.1} ms | baseline 8 x freeze: {:.1} ms",
        median(frozen),
        median(fwall),
        median(base_f)
    );
    println!(
        "  thaw_tree:   wall {:.1} ms | baseline 8 x thaw: {:.1} ms",
        median(twall),
        median(base_t)
    );
}
