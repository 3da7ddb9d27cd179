//! Freeze and thaw of a process with 8 threads beside the same process with 1 thread (same
//! 64 MiB heap, same run): what the threads cost. Needs root and gcc.
//!
//! `cargo bench -p migrate --bench threads` (`MIGRATE_BENCH_THREADS=8`, `MIGRATE_BENCH_MIB=64`)
//!
//! - freeze: `migrate::freeze(--leave-running)` into memory; frozen = how long it was stopped.
//! - thaw: `migrate::thaw` of that image into a new process (killed after).
//!
//! Median of 7 runs each, the two processes alternating.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SRC: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void *idle(void *a) { (void)a; for (;;) usleep(1000); return 0; }
int main(int argc, char **argv) {
    size_t n = (size_t)atol(argv[1]) << 20;
    int t = atoi(argv[2]);
    char *p = malloc(n);
    memset(p, 7, n);
    for (int i = 1; i < t; i++) { pthread_t x; pthread_create(&x, 0, idle, 0); }
    printf("ready\n"); fflush(stdout);
    for (;;) pause();
}
"#;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (ptrace)");
        return;
    }
    let threads: usize = std::env::var("MIGRATE_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mib: usize = std::env::var("MIGRATE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("t.c");
    std::fs::write(&src, SRC).unwrap();
    let bin = dir.path().join("t");
    assert!(
        Command::new("gcc")
            .args(["-O2", "-pthread", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let mut res = Vec::new();
    for t in [1, threads] {
        res.push((t, Vec::new(), Vec::new(), Vec::new(), 0usize));
    }
    for _ in 0..7 {
        for r in res.iter_mut() {
            let mut cmd = Command::new(&bin);
            // SAFETY: close_range is async-signal-safe; drop fds inherited from whoever runs us.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    Ok(())
                });
            }
            let mut child = cmd
                .arg(mib.to_string())
                .arg(r.0.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.as_mut().unwrap())
                .read_line(&mut line)
                .unwrap();
            let mut img = Vec::new();
            let t0 = Instant::now();
            let rep = migrate::freeze(
                child.id() as i32,
                &mut img,
                &migrate::FreezeOptions {
                    leave_running: true,
                },
            )
            .unwrap();
            let wall = t0.elapsed();
            r.1.push(rep.frozen);
            r.2.push(wall);
            r.4 = img.len();
            let t1 = Instant::now();
            let th = migrate::thaw(&img[..], &migrate::ThawOptions::default()).unwrap();
            r.3.push(t1.elapsed());
            // SAFETY: our own children.
            unsafe {
                libc::kill(th.pid, libc::SIGKILL);
                let mut st = 0;
                libc::waitpid(th.pid, &mut st, libc::__WALL);
            }
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
    println!("| threads | heap | frozen | freeze wall | thaw wall | image |");
    println!("|---|---|---|---|---|---|");
    for (t, f, w, th, n) in res {
        println!(
            "| {t} | {mib} MiB | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} MiB |",
            median(f).as_secs_f64() * 1e3,
            median(w).as_secs_f64() * 1e3,
            median(th).as_secs_f64() * 1e3,
            n as f64 / 1048576.0
        );
    }
}
