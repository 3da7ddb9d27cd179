//! The home shell: time to park and trim a process whose image has been streamed, its memory
//! afterwards, and the cost of the operations a deputy performs on it, beside the same calls
//! made directly by this process (same run). Needs root and gcc.
//!
//! `cargo bench -p migrate --bench home_shell` (`MIGRATE_BENCH_REPS=5`, heap 64 MiB)
//!
//! - park: `Seized::finish(ParkAsHomeShell)` (SIG_DFL ×62, drains, rseq/tid/robust list, all
//!   munmaps, parking); RSS after it.
//! - getppid / openat+close injected into the shell (`HomeShell::syscall`), per call; the
//!   baseline is the same call made by this process.
//! - signal: `kill(P, USR1)` → `next_event` → `suppress`, round trip.
//! - exit: `HomeShell::exit(0)` until P is gone.

use migrate::{ShellArg, ShellEvent};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SRC: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t n = (size_t)atol(argv[1]) << 20;
    char *p = mmap(0, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < n; i += 64) p[i] = (char)(i >> 6);
    printf("%lx\n", (unsigned long)p); fflush(stdout);
    for (;;) pause();
}
"#;

/// The victim process: killed and reaped when dropped, even on a panic.
struct Victim(std::process::Child);
impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rss_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("home_shell bench needs root (ptrace); skipped");
        return;
    }
    let reps: usize = std::env::var("MIGRATE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("victim.c");
    std::fs::write(&src, SRC).unwrap();
    let bin = dir.path().join("victim");
    assert!(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    let calls = 200;
    let path = b"/etc/hostname\0".to_vec();
    let (mut park, mut rss_before, mut rss_after) = (Vec::new(), 0, 0);
    let (mut ppid, mut open, mut sig, mut exit) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let mut cmd = Command::new(&bin);
        // SAFETY: close_range is async-signal-safe; drop fds inherited from whoever runs us
        // (a pipe at fd 251 would be refused).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let mut child = Victim(
            cmd.arg("64")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        BufReader::new(child.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid = child.0.id() as i32;
        rss_before = rss_kb(pid);
        let mut s = migrate::seize(pid, Duration::from_secs(5)).unwrap();
        let img = s.collect().unwrap();
        s.stream(&img, std::io::sink()).unwrap();
        let t = Instant::now();
        let mut sh = match s.finish(migrate::Ending::ParkAsHomeShell).unwrap() {
            migrate::Finished::Parked(sh) => sh,
            _ => unreachable!(),
        };
        park.push(t.elapsed());
        rss_after = rss_kb(pid);
        let mut v = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            let (r, _) = sh.syscall(libc::SYS_getppid, vec![]).unwrap();
            v.push(t.elapsed());
            assert!(r > 0);
        }
        ppid.push(median(v));
        let mut v = Vec::with_capacity(calls);
        for _ in 0..calls {
            let t = Instant::now();
            let (fd, _) = sh
                .syscall(
                    libc::SYS_openat,
                    vec![
                        ShellArg::Val(libc::AT_FDCWD as u64),
                        ShellArg::In(path.clone()),
                        ShellArg::Val(libc::O_RDONLY as u64),
                    ],
                )
                .unwrap();
            assert!(fd >= 0);
            sh.syscall(libc::SYS_close, vec![ShellArg::Val(fd as u64)])
                .unwrap();
            v.push(t.elapsed());
        }
        open.push(median(v));
        let mut v = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            // SAFETY: signal to our own child.
            unsafe { libc::kill(pid, libc::SIGUSR1) };
            let ev = sh.next_event(Duration::from_secs(5)).unwrap();
            assert!(matches!(ev, Some(ShellEvent::Signal { held: true, .. })));
            sh.suppress().unwrap();
            v.push(t.elapsed());
        }
        sig.push(median(v));
        let t = Instant::now();
        sh.exit(0).unwrap();
        exit.push(t.elapsed());
        let st = child.0.wait().unwrap();
        assert_eq!(st.code(), Some(0));
    }
    // baselines: the same calls made directly by this process
    let mut v = Vec::new();
    for _ in 0..calls {
        let t = Instant::now();
        // SAFETY: getppid has no preconditions.
        unsafe { libc::getppid() };
        v.push(t.elapsed());
    }
    let base_ppid = median(v);
    let mut v = Vec::new();
    for _ in 0..calls {
        let t = Instant::now();
        // SAFETY: valid C string; the fd is closed at once.
        unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY);
            libc::close(fd);
        }
        v.push(t.elapsed());
    }
    let base_open = median(v);
    println!(
        "| heap | RSS before → after park | park | getppid injected (local) | openat+close injected (local) | signal report+suppress | exit |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| 64 MiB | {rss_before} kB → {rss_after} kB | {:.2?} | {:.1?} ({:.2?}) | {:.1?} ({:.2?}) | {:.1?} | {:.2?} |",
        median(park),
        median(ppid),
        base_ppid,
        median(open),
        base_open,
        median(sig),
        median(exit)
    );
    println!("(median of {reps} processes; per-call figures are medians of {calls} calls each)");
}
