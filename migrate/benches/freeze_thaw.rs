//! Freeze and thaw of 1 MiB .. 4 GiB of touched heap, beside raw copies of the same amount and
//! beside CRIU, all measured in the same run. Needs root and gcc; CRIU is used when `criu` is
//! installed (and said why not when it cannot run here).
//!
//! `cargo bench -p migrate --bench freeze_thaw` (sizes in MiB:
//! `MIGRATE_BENCH_SIZES=1,64,256,1024,1024r`, where `r` is a heap only read, never written: its
//! pages all map the shared zero page; repetitions `MIGRATE_BENCH_REPS=3`, image directory
//! `MIGRATE_BENCH_DIR=/dev/shm`)
//!
//! - freeze→pipe: `migrate::freeze(--leave-running)` into a pipe drained by another thread (the
//!   image is kept in memory for the thaw); frozen = how long the process was stopped.
//! - freeze→file: the same into a new file in `MIGRATE_BENCH_DIR` (what `omnode freeze` does,
//!   without its final fsync; CRIU does not fsync either).
//! - thaw: `migrate::thaw` from the in-memory image into a new process.
//! - criu: `criu dump -t PID --shell-job --leave-running -D DIR/...` into the same directory
//!   (frozen time from its stats-dump), `criu restore --shell-job -d` of that image.
//! - baselines: process_vm_readv of the heap into a 2 MiB buffer (readv), the same plus write()
//!   of each chunk to a drained pipe (readv+pipe, the least a streaming freeze must do) or to a
//!   file in `MIGRATE_BENCH_DIR` (readv+file), and process_vm_writev of the same amount into
//!   untouched memory of a fresh process (writev, the least a thaw must do, page faults
//!   included).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
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
    unsigned long sum = 0;
    if (atoi(argv[2]) == 1) for (size_t i = 0; i < n; i += 64) p[i] = (char)(i >> 6);
    if (atoi(argv[2]) == 2) for (size_t i = 0; i < n; i += 4096) sum += ((volatile char *)p)[i];
    printf("%lx\n", (unsigned long)p + sum); fflush(stdout);
    for (;;) pause();
}
"#;

struct Victim {
    child: std::process::Child,
    addr: u64,
    /// Its stdout (kept while it runs: a deleted file would not be frozen).
    out_path: PathBuf,
}
impl Victim {
    /// Starts the heap program with stdin /dev/null and stdout a file (CRIU dumps files, not
    /// pipes to processes outside the dump) and waits for it to print its heap address.
    /// `touch`: 0 untouched, 1 written (every page present), 2 only read (every page maps the
    /// shared zero page).
    fn new(bin: &Path, dir: &Path, mib: usize, touch: u8) -> Victim {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path = dir.join(format!("victim-{k}.out"));
        let out = std::fs::File::create(&out_path).unwrap();
        let mut cmd = Command::new(bin);
        // SAFETY: close_range is async-signal-safe; drop fds inherited from whoever runs us.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
        let child = cmd
            .arg(mib.to_string())
            .arg(touch.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .spawn()
            .unwrap();
        let t = Instant::now();
        let line = loop {
            let s = std::fs::read_to_string(&out_path).unwrap_or_default();
            if s.ends_with('\n') {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "heap program silent");
            std::thread::sleep(Duration::from_millis(2));
        };
        let addr = u64::from_str_radix(line.trim(), 16).unwrap();
        Victim {
            child,
            addr,
            out_path,
        }
    }
}
impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out_path);
    }
}

/// A pipe whose reader thread stores everything in a buffer faulted in beforehand (so the
/// reader's page faults are not what is measured).
fn pipe(cap: usize) -> (std::fs::File, std::thread::JoinHandle<Vec<u8>>) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a valid array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds we own.
    let (r, w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: bigger pipe buffer, as a transport would use.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let mut v = vec![1u8; cap];
    let h = std::thread::spawn(move || {
        let mut r = r;
        let mut n = 0;
        loop {
            let k = r.read(&mut v[n..]).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        v.truncate(n);
        v
    });
    (w, h)
}

fn readv(pid: i32, addr: u64, len: usize, buf: &mut [u8]) {
    let mut off = 0;
    while off < len {
        let n = buf.len().min(len - off);
        let l = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: n,
        };
        let r = libc::iovec {
            iov_base: (addr as usize + off) as *mut libc::c_void,
            iov_len: n,
        };
        // SAFETY: valid local buffer; remote checked by the kernel.
        let got = unsafe { libc::process_vm_readv(pid, &l, 1, &r, 1, 0) };
        assert_eq!(got, n as isize);
        off += n;
    }
}

fn gbs(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn median(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// CRIU in this run: its version, or why it cannot be used.
fn criu_version() -> Result<String, String> {
    let o = Command::new("criu")
        .arg("--version")
        .output()
        .map_err(|e| format!("criu not runnable: {e}"))?;
    let s = String::from_utf8_lossy(&o.stdout);
    Ok(s.lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap_or("?")
        .to_string())
}

/// Why CRIU failed: the last `Error` lines of its log (the first ones are often probes).
fn criu_error(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let errs: Vec<&str> = s
        .lines()
        .filter(|l| l.contains("Error (") && !l.contains("exited, status="))
        .map(|l| l.trim())
        .collect();
    if errs.is_empty() {
        return s.lines().last().unwrap_or("no log").trim().to_string();
    }
    errs[errs.len().saturating_sub(4)..].join("; ")
}

/// `criu dump --leave-running` of `pid` into `dir`: (wall, frozen from stats-dump).
fn criu_dump(pid: i32, dir: &Path) -> Result<(Duration, Duration), String> {
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    let st = Command::new("criu")
        .args([
            "dump",
            "--shell-job",
            "--leave-running",
            "-o",
            "dump.log",
            "-t",
        ])
        .arg(pid.to_string())
        .arg("-D")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let wall = t.elapsed();
    if !st.success() {
        return Err(format!(
            "criu dump failed ({st}): {}",
            criu_error(&dir.join("dump.log"))
        ));
    }
    // stats-dump: `crit decode` prints JSON with "frozen_time": microseconds
    let o = Command::new("crit")
        .args(["decode", "-i"])
        .arg(dir.join("stats-dump"))
        .output()
        .map_err(|e| format!("crit: {e}"))?;
    let s = String::from_utf8_lossy(&o.stdout);
    let us = s
        .split("\"frozen_time\"")
        .nth(1)
        .and_then(|r| {
            r.trim_start_matches([':', ' '])
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .ok_or_else(|| format!("no frozen_time in crit output: {s}"))?;
    Ok((wall, Duration::from_micros(us)))
}

/// `criu restore -d` from `dir` (the dumped process must be gone); kills what it restored.
fn criu_restore(pid: i32, dir: &Path) -> Result<Duration, String> {
    let t = Instant::now();
    let st = Command::new("criu")
        .args(["restore", "--shell-job", "-d", "-o", "restore.log", "-D"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| e.to_string())?;
    let wall = t.elapsed();
    // SAFETY: the restored process has the dumped PID; it is ours to end. It is not our child
    // (criu -d detaches it), so it is reaped by init.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    if !st.success() {
        return Err(format!(
            "criu restore failed ({st}): {}",
            criu_error(&dir.join("restore.log"))
        ));
    }
    Ok(wall)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: the freeze/thaw benchmark needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("heap.c");
    std::fs::write(&src, SRC).unwrap();
    let bin = dir.path().join("heap");
    assert!(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .status()
            .unwrap()
            .success()
    );
    // "1024r": a heap only read, not written (zero pages)
    let sizes: Vec<(usize, bool)> = std::env::var("MIGRATE_BENCH_SIZES")
        .unwrap_or_else(|_| "1,64,256,1024,1024r".into())
        .split(',')
        .map(|s| {
            let s = s.trim();
            match s.strip_suffix('r') {
                Some(n) => (n.parse().unwrap(), true),
                None => (s.parse().unwrap(), false),
            }
        })
        .collect();
    let reps: usize = std::env::var("MIGRATE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let img_root = PathBuf::from(std::env::var("MIGRATE_BENCH_DIR").unwrap_or("/dev/shm".into()));
    let imgdir = tempfile::Builder::new()
        .prefix("freeze-thaw-bench-")
        .tempdir_in(&img_root)
        .unwrap();
    let mut criu = criu_version();
    match &criu {
        Ok(v) => println!("CRIU {v}; images in {}", img_root.display()),
        Err(e) => println!("no CRIU: {e}; images in {}", img_root.display()),
    }
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "| heap | readv | readv+pipe | readv+file | freeze→pipe wall | frozen (memory) | freeze→file wall | frozen | criu dump wall | criu frozen | writev | thaw wall | criu restore | image |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut phase_lines = Vec::new();
    for &(mib, read_only) in &sizes {
        let len = mib << 20;
        let touch = if read_only { 2 } else { 1 };
        let label = if read_only {
            format!("{mib} MiB read-only")
        } else {
            format!("{mib} MiB")
        };
        let v = Victim::new(&bin, dir.path(), mib, touch);
        let pid = v.child.id() as i32;
        let mut buf = vec![1u8; 2 << 20];
        let mut t: [Vec<Duration>; 13] = Default::default();
        let mut image_len = 0;
        let mut phases: [Vec<Duration>; 4] = Default::default();
        for rep in 0..reps {
            // raw: process_vm_readv into a buffer
            let t0 = Instant::now();
            readv(pid, v.addr, len, &mut buf);
            t[0].push(t0.elapsed());
            // raw: readv + write to a pipe
            let (mut w, h) = pipe(len + (1 << 20));
            let t0 = Instant::now();
            let mut off = 0;
            while off < len {
                let n = buf.len().min(len - off);
                readv(pid, v.addr + off as u64, n, &mut buf[..n]);
                w.write_all(&buf[..n]).unwrap();
                off += n;
            }
            drop(w);
            let got = h.join().unwrap();
            t[1].push(t0.elapsed());
            assert_eq!(got.len(), len);
            drop(got);
            // raw: readv + write to a new file in the image directory
            let raw_path = imgdir.path().join("raw");
            let t0 = Instant::now();
            let mut f = std::fs::File::create(&raw_path).unwrap();
            let mut off = 0;
            while off < len {
                let n = buf.len().min(len - off);
                readv(pid, v.addr + off as u64, n, &mut buf[..n]);
                f.write_all(&buf[..n]).unwrap();
                off += n;
            }
            drop(f);
            t[2].push(t0.elapsed());
            std::fs::remove_file(&raw_path).unwrap();
            // freeze into a pipe
            let (w, h) = pipe(len + (16 << 20));
            let t0 = Instant::now();
            let r = migrate::freeze(
                pid,
                &w,
                &migrate::FreezeOptions {
                    leave_running: true,
                },
            )
            .expect("freeze");
            drop(w);
            let img = h.join().unwrap();
            t[3].push(t0.elapsed());
            t[4].push(r.frozen);
            t[11].push(r.memory_time);
            image_len = img.len();
            // freeze into a file, phase by phase (what migrate::freeze(--leave-running) does)
            let img_path = imgdir.path().join("image");
            let t0 = Instant::now();
            let f = std::fs::File::create(&img_path).unwrap();
            let mut s = migrate::seize(pid, Duration::from_secs(10)).expect("seize");
            let t_seized = t0.elapsed();
            let pimg = s.collect().expect("collect");
            let t_collected = t0.elapsed();
            let plan = s.plan(&pimg).expect("plan");
            let t_planned = t0.elapsed();
            s.stream_plan(&plan, &f).expect("stream");
            let t_streamed = t0.elapsed();
            let frozen = s.frozen_for();
            s.finish(migrate::Ending::Release).expect("release");
            drop(f);
            t[5].push(t0.elapsed());
            t[6].push(frozen);
            phases[0].push(t_seized);
            phases[1].push(t_collected - t_seized);
            phases[2].push(t_planned - t_collected);
            phases[3].push(t_streamed - t_planned);
            std::fs::remove_file(&img_path).unwrap();
            // raw: process_vm_writev into untouched memory of a fresh process
            let fresh = Victim::new(&bin, dir.path(), mib, 0);
            let t0 = Instant::now();
            let mut off = 0;
            while off < len {
                let n = buf.len().min(len - off);
                let l = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: n,
                };
                let r = libc::iovec {
                    iov_base: (fresh.addr as usize + off) as *mut libc::c_void,
                    iov_len: n,
                };
                // SAFETY: as above.
                let put =
                    unsafe { libc::process_vm_writev(fresh.child.id() as i32, &l, 1, &r, 1, 0) };
                assert_eq!(put, n as isize);
                off += n;
            }
            t[9].push(t0.elapsed());
            drop(fresh);
            // thaw from the in-memory image
            let t0 = Instant::now();
            let th = migrate::thaw(&img[..], &migrate::ThawOptions::default()).expect("thaw");
            t[10].push(t0.elapsed());
            drop(img);
            // SAFETY: our thawed child.
            unsafe {
                libc::kill(th.pid, libc::SIGKILL);
                let mut st = 0;
                libc::waitpid(th.pid, &mut st, 0);
            }
            // CRIU: dump a victim of its own (restore needs the dumped PID free), then restore
            if criu.is_ok() {
                let cv = Victim::new(&bin, dir.path(), mib, touch);
                let cpid = cv.child.id() as i32;
                let cdir = imgdir.path().join(format!("criu-{mib}-{rep}"));
                match criu_dump(cpid, &cdir) {
                    Ok((wall, frozen)) => {
                        t[7].push(wall);
                        t[8].push(frozen);
                        let mut cv = cv;
                        let _ = cv.child.kill();
                        let _ = cv.child.wait();
                        match criu_restore(cpid, &cdir) {
                            Ok(w) => t[12].push(w),
                            Err(e) => println!("{e}"),
                        }
                    }
                    Err(e) => criu = Err(e),
                }
                let _ = std::fs::remove_dir_all(&cdir);
            }
        }
        let p: Vec<Duration> = phases.iter().map(|x| median(x.clone())).collect();
        phase_lines.push(format!(
            "{label} freeze→file phases: seize {:.2} ms, collect {:.2} ms, plan (pagemap) {:.2} ms, stream {:.2} ms",
            ms(p[0]), ms(p[1]), ms(p[2]), ms(p[3])
        ));
        let m: Vec<Duration> = t.iter().map(|x| median(x.clone())).collect();
        let opt = |d: Duration, s: String| if d.is_zero() { "—".to_string() } else { s };
        println!(
            "| {label} | {:.2} GB/s | {:.2} GB/s | {:.2} GB/s | {:.1} ms | {:.1} ms ({:.1}) | {:.1} ms | {:.1} ms | {} | {} | {:.2} GB/s | {:.1} ms | {} | {:.1} MiB |",
            gbs(len, m[0]),
            gbs(len, m[1]),
            gbs(len, m[2]),
            ms(m[3]),
            ms(m[4]),
            ms(m[11]),
            ms(m[5]),
            ms(m[6]),
            opt(m[7], format!("{:.1} ms", ms(m[7]))),
            opt(m[8], format!("{:.1} ms", ms(m[8]))),
            gbs(len, m[9]),
            ms(m[10]),
            opt(m[12], format!("{:.1} ms", ms(m[12]))),
            image_len as f64 / 1048576.0
        );
    }
    println!();
    println!("{}", phase_lines.join("\n"));
    if let Err(e) = &criu {
        println!("CRIU not measured: {e}");
    }
    println!("(median of {reps}; GB/s = touched heap bytes / wall time; 1 GB = 1e9 bytes)");
}
