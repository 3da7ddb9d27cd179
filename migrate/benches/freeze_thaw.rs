//! Freeze and thaw throughput for 1 MiB, 64 MiB and 1 GiB of touched heap, beside raw copies of
//! the same amount measured in the same run. Needs root and gcc.
//!
//! `cargo bench -p migrate --bench freeze_thaw` (sizes in MiB: `MIGRATE_BENCH_SIZES=1,64,1024`)
//!
//! - freeze: `migrate::freeze(--leave-running)` into a pipe drained by another thread (the image
//!   is kept in memory for the thaw); frozen = how long the process was stopped.
//! - thaw: `migrate::thaw` from that in-memory image into a new process.
//! - baselines: process_vm_readv of the heap into a 2 MiB buffer (readv), the same plus write()
//!   of each chunk to a drained pipe (readv+pipe, the least a streaming freeze must do), and
//!   process_vm_writev of the same amount into untouched memory of a fresh process (writev,
//!   the least a thaw must do, page faults included).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
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
    if (atoi(argv[2])) for (size_t i = 0; i < n; i += 64) p[i] = (char)(i >> 6);
    printf("%lx\n", (unsigned long)p); fflush(stdout);
    for (;;) pause();
}
"#;

struct Victim {
    child: std::process::Child,
    addr: u64,
}
impl Victim {
    fn new(bin: &std::path::Path, mib: usize, touch: bool) -> Victim {
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
            .arg(if touch { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = u64::from_str_radix(line.trim(), 16).unwrap();
        Victim { child, addr }
    }
}
impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    v.sort();
    v[v.len() / 2]
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
    let sizes: Vec<usize> = std::env::var("MIGRATE_BENCH_SIZES")
        .unwrap_or_else(|_| "1,64,1024".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let reps: usize = std::env::var("MIGRATE_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    println!(
        "| heap | readv | readv+pipe | freeze (GB/s, wall) | frozen | writev | thaw (GB/s, wall) | image |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &mib in &sizes {
        let len = mib << 20;
        let v = Victim::new(&bin, mib, true);
        let pid = v.child.id() as i32;
        let mut buf = vec![1u8; 2 << 20];
        let (mut t_rv, mut t_rvp, mut t_fr, mut t_frozen, mut t_wv, mut t_th) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut image_len = 0;
        for _ in 0..reps {
            // raw: process_vm_readv into a buffer
            let t = Instant::now();
            readv(pid, v.addr, len, &mut buf);
            t_rv.push(t.elapsed());
            // raw: readv + write to a pipe
            let (mut w, h) = pipe(len + (1 << 20));
            let t = Instant::now();
            let mut off = 0;
            while off < len {
                let n = buf.len().min(len - off);
                readv(pid, v.addr + off as u64, n, &mut buf[..n]);
                w.write_all(&buf[..n]).unwrap();
                off += n;
            }
            drop(w);
            let got = h.join().unwrap();
            t_rvp.push(t.elapsed());
            assert_eq!(got.len(), len);
            drop(got);
            // freeze into a pipe
            let (w, h) = pipe(len + (16 << 20));
            let t = Instant::now();
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
            t_fr.push(t.elapsed());
            t_frozen.push(r.frozen);
            image_len = img.len();
            // raw: process_vm_writev into untouched memory of a fresh process
            let fresh = Victim::new(&bin, mib, false);
            let t = Instant::now();
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
            t_wv.push(t.elapsed());
            drop(fresh);
            // thaw from the in-memory image
            let t = Instant::now();
            let th = migrate::thaw(&img[..], &migrate::ThawOptions::default()).expect("thaw");
            t_th.push(t.elapsed());
            // SAFETY: our thawed child.
            unsafe {
                libc::kill(th.pid, libc::SIGKILL);
                let mut st = 0;
                libc::waitpid(th.pid, &mut st, 0);
            }
        }
        let (rv, rvp, fr, fz, wv, th) = (
            median(t_rv),
            median(t_rvp),
            median(t_fr),
            median(t_frozen),
            median(t_wv),
            median(t_th),
        );
        println!(
            "| {mib} MiB | {:.2} GB/s | {:.2} GB/s | {:.2} GB/s, {:.1} ms | {:.1} ms | {:.2} GB/s | {:.2} GB/s, {:.1} ms | {:.1} MiB |",
            gbs(len, rv),
            gbs(len, rvp),
            gbs(len, fr),
            fr.as_secs_f64() * 1e3,
            fz.as_secs_f64() * 1e3,
            gbs(len, wv),
            gbs(len, th),
            th.as_secs_f64() * 1e3,
            image_len as f64 / 1048576.0
        );
    }
    println!("(median of {reps}; GB/s = touched heap bytes / wall time; 1 GB = 1e9 bytes)");
}
