//! Thin wrappers over ptrace, process_vm_*, and injected system calls.

use crate::error::{errno, from_neg};
use libc::{c_long, pid_t, user_regs_struct};
use std::io;

pub(crate) const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
pub(crate) const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
pub(crate) const NT_X86_XSTATE: usize = 0x202;
pub(crate) const REGS_N: usize = 27;

pub(crate) fn regs_to_vec(r: &user_regs_struct) -> Vec<u64> {
    // SAFETY: user_regs_struct is 27 plain u64 fields.
    let a: [u64; REGS_N] = unsafe { std::mem::transmute_copy(r) };
    a.to_vec()
}
pub(crate) fn regs_from_slice(v: &[u64]) -> user_regs_struct {
    let mut a = [0u64; REGS_N];
    a.copy_from_slice(&v[..REGS_N]);
    // SAFETY: same layout, every bit pattern valid.
    unsafe { std::mem::transmute(a) }
}

/// Raw ptrace.
///
/// # Safety
/// `addr` and `data` must be what `req` expects: for requests that read or write through them,
/// valid pointers to buffers of the size the request uses, live for the call.
pub(crate) unsafe fn ptrace(
    req: libc::c_uint,
    pid: pid_t,
    addr: usize,
    data: usize,
) -> io::Result<c_long> {
    // SAFETY: the caller vouches for addr/data (see above).
    let r = unsafe {
        libc::ptrace(
            req,
            pid,
            addr as *mut libc::c_void,
            data as *mut libc::c_void,
        )
    };
    if r == -1 { Err(errno()) } else { Ok(r) }
}

/// The ptrace requests whose `addr`/`data` are plain integers (options, a signal), never pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Req {
    /// data: options
    Seize,
    Interrupt,
    /// data: signal to deliver
    Cont,
    /// data: signal to deliver
    Syscall,
    /// data: signal to deliver
    Detach,
    Listen,
    /// data: options
    SetOptions,
}

/// A ptrace request that passes no pointer: safe.
pub(crate) fn ptrace_req(req: Req, pid: pid_t, data: usize) -> io::Result<()> {
    let r = match req {
        Req::Seize => libc::PTRACE_SEIZE,
        Req::Interrupt => libc::PTRACE_INTERRUPT,
        Req::Cont => libc::PTRACE_CONT,
        Req::Syscall => libc::PTRACE_SYSCALL,
        Req::Detach => libc::PTRACE_DETACH,
        Req::Listen => libc::PTRACE_LISTEN,
        Req::SetOptions => libc::PTRACE_SETOPTIONS,
    };
    // SAFETY: none of these requests dereferences addr or data.
    unsafe { ptrace(r, pid, 0, data) }.map(|_| ())
}

/// The siginfo of the signal this signal-delivery-stop holds (128 raw bytes).
pub(crate) fn getsiginfo(pid: pid_t) -> io::Result<Vec<u8>> {
    let mut info = vec![0u8; 128];
    // SAFETY: siginfo_t is 128 bytes; the buffer is that long.
    unsafe { ptrace(libc::PTRACE_GETSIGINFO, pid, 0, info.as_mut_ptr() as usize) }?;
    Ok(info)
}

/// PTRACE_GETEVENTMSG.
pub(crate) fn geteventmsg(pid: pid_t) -> io::Result<u64> {
    let mut m: libc::c_ulong = 0;
    // SAFETY: the kernel writes one unsigned long.
    unsafe { ptrace(libc::PTRACE_GETEVENTMSG, pid, 0, &mut m as *mut _ as usize) }?;
    Ok(m as u64)
}

/// waitpid(__WALL | WNOHANG) until `pid` reports or `deadline` passes (`Ok(None)`): a tracee that
/// never stops (uninterruptible sleep) cannot hang the caller. Polls in sleeps growing from 5 µs
/// to 1 ms, with this thread's timer slack cut to 1 µs so short sleeps stay short (the tracer
/// thread is dedicated, so that setting affects nothing else).
pub(crate) fn wait_until(pid: pid_t, deadline: std::time::Instant) -> io::Result<Option<i32>> {
    thread_local! {
        static SLACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    SLACK.with(|s| {
        if !s.get() {
            // SAFETY: prctl with integer arguments; affects only this thread.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64, 0u64, 0u64, 0u64) };
            s.set(true);
        }
    });
    let mut nap = std::time::Duration::from_micros(5);
    loop {
        let mut st = 0;
        // SAFETY: plain waitpid.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL | libc::WNOHANG) };
        if r == pid {
            return Ok(Some(st));
        }
        if r == -1 {
            let e = errno();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(std::time::Duration::from_millis(1));
    }
}

pub(crate) fn getregs(pid: pid_t) -> io::Result<user_regs_struct> {
    // SAFETY: zeroed plain struct.
    let mut r: user_regs_struct = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes one user_regs_struct.
    unsafe { ptrace(libc::PTRACE_GETREGS, pid, 0, &mut r as *mut _ as usize) }?;
    Ok(r)
}
pub(crate) fn setregs(pid: pid_t, r: &user_regs_struct) -> io::Result<()> {
    // SAFETY: the kernel reads one user_regs_struct.
    unsafe { ptrace(libc::PTRACE_SETREGS, pid, 0, r as *const _ as usize) }.map(|_| ())
}
pub(crate) fn get_xstate(pid: pid_t) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes buf, which lives for the call.
    unsafe {
        ptrace(
            libc::PTRACE_GETREGSET,
            pid,
            NT_X86_XSTATE,
            &mut iov as *mut _ as usize,
        )
    }?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}
pub(crate) fn set_xstate(pid: pid_t, x: &[u8]) -> io::Result<()> {
    let mut buf = x.to_vec();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: iov describes buf, which lives for the call.
    unsafe {
        ptrace(
            libc::PTRACE_SETREGSET,
            pid,
            NT_X86_XSTATE,
            &mut iov as *mut _ as usize,
        )
    }
    .map(|_| ())
}
pub(crate) fn get_sigmask(pid: pid_t) -> io::Result<u64> {
    let mut m = 0u64;
    // SAFETY: the kernel writes 8 bytes (addr = 8).
    unsafe { ptrace(libc::PTRACE_GETSIGMASK, pid, 8, &mut m as *mut u64 as usize) }?;
    Ok(m)
}
pub(crate) fn set_sigmask(pid: pid_t, m: u64) -> io::Result<()> {
    // SAFETY: the kernel reads 8 bytes (addr = 8).
    unsafe { ptrace(libc::PTRACE_SETSIGMASK, pid, 8, &m as *const u64 as usize) }.map(|_| ())
}
pub(crate) fn get_rseq(pid: pid_t) -> io::Result<Option<(u64, u32, u32)>> {
    let mut c = [0u64; 3];
    // SAFETY: the kernel writes at most 24 bytes (addr = 24), c holds 24.
    unsafe {
        ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            pid,
            24,
            c.as_mut_ptr() as usize,
        )
    }?;
    let ptr = c[0];
    let size = c[1] as u32;
    let sig = (c[1] >> 32) as u32;
    Ok(if ptr == 0 {
        None
    } else {
        Some((ptr, size, sig))
    })
}

/// Reads the signal queue (private or shared) with PTRACE_PEEKSIGINFO.
pub(crate) fn peek_siginfo(pid: pid_t, shared: bool) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 128 * 32];
    loop {
        #[repr(C)]
        struct Args {
            off: u64,
            flags: u32,
            nr: i32,
        }
        let a = Args {
            off: out.len() as u64,
            flags: shared as u32,
            nr: 32,
        };
        // SAFETY: a is the peeksiginfo_args struct; buf holds nr (32) siginfos of 128 bytes.
        let n = unsafe {
            ptrace(
                PTRACE_PEEKSIGINFO,
                pid,
                &a as *const _ as usize,
                buf.as_mut_ptr() as usize,
            )
        }?;
        if n <= 0 {
            break;
        }
        for i in 0..n as usize {
            out.push(buf[i * 128..(i + 1) * 128].to_vec());
        }
        if out.len() > 100_000 {
            break;
        }
    }
    Ok(out)
}

/// waitpid with __WALL; returns the raw status.
pub(crate) fn wait(pid: pid_t) -> io::Result<i32> {
    let mut st = 0;
    loop {
        // SAFETY: plain waitpid.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
        if r == -1 {
            let e = errno();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok(st);
    }
}

/// Checks that `runs` add up to exactly `len` bytes (and that no sum overflows).
/// With `exact`, the runs must cover the buffer exactly; otherwise they may cover a prefix.
fn check_runs(len: usize, runs: &[(u64, u64)], exact: bool) -> io::Result<()> {
    let mut total = 0u64;
    for &(a, l) in runs {
        total = total
            .checked_add(l)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "memory runs overflow"))?;
        if a.checked_add(l).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("memory run at {a:#x} wraps the address space"),
            ));
        }
    }
    if total > len as u64 || (exact && total != len as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("memory runs total {total} bytes but the buffer holds {len}"),
        ));
    }
    Ok(())
}

pub(crate) fn read_mem(pid: pid_t, local: &mut [u8], runs: &[(u64, u64)]) -> io::Result<()> {
    check_runs(local.len(), runs, true)?;
    let liov = libc::iovec {
        iov_base: local.as_mut_ptr().cast(),
        iov_len: local.len(),
    };
    let riov: Vec<libc::iovec> = runs
        .iter()
        .map(|&(a, l)| libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: l as usize,
        })
        .collect();
    let mut done = 0usize;
    // process_vm_readv may return short reads at iovec boundaries; retry the remainder.
    let mut ri = 0usize;
    let mut roff = 0usize;
    while done < local.len() {
        let mut rv: Vec<libc::iovec> = Vec::with_capacity(riov.len() - ri);
        for (k, v) in riov[ri..].iter().enumerate() {
            let skip = if k == 0 { roff } else { 0 };
            rv.push(libc::iovec {
                iov_base: (v.iov_base as usize + skip) as *mut libc::c_void,
                iov_len: v.iov_len - skip,
            });
        }
        let l = libc::iovec {
            iov_base: (liov.iov_base as usize + done) as *mut libc::c_void,
            iov_len: local.len() - done,
        };
        // SAFETY: local buffer valid; remote addresses are checked by the kernel.
        let n = unsafe { libc::process_vm_readv(pid, &l, 1, rv.as_ptr(), rv.len() as u64, 0) };
        if n < 0 {
            return Err(errno());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short memory read",
            ));
        }
        let mut n = n as usize;
        done += n;
        while n > 0 {
            let left = riov[ri].iov_len - roff;
            if n >= left {
                n -= left;
                ri += 1;
                roff = 0;
            } else {
                roff += n;
                n = 0;
            }
        }
    }
    Ok(())
}

pub(crate) fn write_mem(pid: pid_t, local: &[u8], runs: &[(u64, u64)]) -> io::Result<()> {
    // every local slice below must lie inside `local`
    check_runs(local.len(), runs, false)?;
    let mut off = 0usize;
    // one run at a time keeps short-write handling simple; runs are large when it matters
    let mut liov = Vec::with_capacity(runs.len());
    let mut riov = Vec::with_capacity(runs.len());
    for &(a, l) in runs {
        liov.push(libc::iovec {
            iov_base: local[off..].as_ptr() as *mut libc::c_void,
            iov_len: l as usize,
        });
        riov.push(libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: l as usize,
        });
        off += l as usize;
    }
    // SAFETY: local slices valid, remote checked by kernel.
    let n = unsafe {
        libc::process_vm_writev(
            pid,
            liov.as_ptr(),
            liov.len() as u64,
            riov.as_ptr(),
            riov.len() as u64,
            0,
        )
    };
    if n < 0 {
        return Err(errno());
    }
    if n as usize != off {
        // fall back run by run for the remainder
        let mut done = n as usize;
        let mut pos = 0usize;
        for &(a, l) in runs {
            let l = l as usize;
            if pos + l <= done {
                pos += l;
                continue;
            }
            let skip = done - pos;
            let li = libc::iovec {
                iov_base: local[pos + skip..].as_ptr() as *mut libc::c_void,
                iov_len: l - skip,
            };
            let ri = libc::iovec {
                iov_base: (a as usize + skip) as *mut libc::c_void,
                iov_len: l - skip,
            };
            // SAFETY: as above.
            let m = unsafe { libc::process_vm_writev(pid, &li, 1, &ri, 1, 0) };
            if m < 0 || m as usize != l - skip {
                return Err(if m < 0 {
                    errno()
                } else {
                    io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("short memory write at {a:#x}"),
                    )
                });
            }
            pos += l;
            done = pos;
        }
    }
    Ok(())
}

/// A stopped tracee into which system calls are injected at `gadget` (a `syscall` instruction).
/// Lives only on its tracer thread (`!Send`).
pub(crate) struct Tracee {
    pub pid: pid_t,
    pub gadget: u64,
    pub base: user_regs_struct,
    /// Signals that arrived (signal-delivery-stops) while we held the process: (signo, siginfo).
    pub stashed: Vec<Vec<u8>>,
    /// The gadget is followed by `int3`.
    pub int3: bool,
    /// Our copy of the process's seccomp listener once a filter is installed: injected calls
    /// the filter traps are answered "continue" so they run as if allowed.
    pub listener: Option<std::os::fd::OwnedFd>,
    /// How long one injected call may take before it is abandoned (None: no limit).
    pub call_timeout: Option<std::time::Duration>,
    pub _not_send: crate::tracer::NotSend,
}

impl Tracee {
    pub fn new(pid: pid_t, gadget: u64, base: user_regs_struct) -> Tracee {
        Tracee {
            pid,
            gadget,
            base,
            stashed: Vec::new(),
            int3: false,
            listener: None,
            call_timeout: None,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Keeps the siginfo of the signal this signal-delivery-stop holds, to be re-queued
    /// when the process is let go (the signal is not delivered while we work on it).
    fn stash_signal(&mut self) {
        if let Ok(info) = getsiginfo(self.pid) {
            self.stashed.push(info);
        }
    }

    /// Resumes with PTRACE_SYSCALL until a syscall stop (SIGTRAP|0x80).
    fn run_to_syscall_stop(&mut self) -> io::Result<()> {
        self.resume_until(Req::Syscall, |sig, _| sig == libc::SIGTRAP | 0x80)
    }

    /// Resumes with PTRACE_CONT until the `int3` after the gadget's `syscall` traps.
    fn run_to_int3(&mut self) -> io::Result<()> {
        self.resume_until(Req::Cont, |sig, plain| sig == libc::SIGTRAP && plain)
    }

    /// Waits for the next stop, answering seccomp notifications of our own tracee with
    /// "continue" meanwhile (when a listener is held), within `call_timeout`.
    fn wait_stop(&mut self) -> io::Result<i32> {
        let deadline = self.call_timeout.map(|t| std::time::Instant::now() + t);
        let Some(l) = self.listener.as_ref() else {
            return match deadline {
                None => wait(self.pid),
                Some(d) => wait_until(self.pid, d)?.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::TimedOut, "injected system call timed out")
                }),
            };
        };
        use std::os::fd::AsRawFd;
        let lfd = l.as_raw_fd();
        loop {
            let soon = std::time::Instant::now() + std::time::Duration::from_millis(1);
            if let Some(st) = wait_until(self.pid, soon)? {
                return Ok(st);
            }
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "injected system call timed out",
                ));
            }
            let mut pfd = libc::pollfd {
                fd: lfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 0) } == 1 && pfd.revents & libc::POLLIN != 0 {
                crate::seccomp::answer_continue(lfd, self.pid)?;
            }
        }
    }

    /// Resumes with `request` (PTRACE_SYSCALL or PTRACE_CONT) until a stop for which
    /// `reached(signal, plain signal-delivery-stop)` holds. Signals that arrive meanwhile
    /// are stashed, not delivered.
    fn resume_until(
        &mut self,
        request: Req,
        reached: impl Fn(i32, bool) -> bool,
    ) -> io::Result<()> {
        ptrace_req(request, self.pid, 0)?;
        loop {
            let st = self.wait_stop()?;
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                return Err(io::Error::other("the process died while being worked on"));
            }
            if !libc::WIFSTOPPED(st) {
                continue;
            }
            let sig = libc::WSTOPSIG(st);
            let plain = (st >> 16) == 0;
            if reached(sig, plain) {
                return Ok(());
            }
            if plain && sig != libc::SIGTRAP {
                self.stash_signal();
            }
            ptrace_req(request, self.pid, 0)?;
        }
    }

    /// Runs one system call in the tracee; returns rax (negative errno on failure).
    /// With `int3` set the gadget is `syscall; int3` and one stop per call is enough;
    /// otherwise (or with `exit_stop`) the tracee is held at syscall exit.
    pub fn syscall_raw(&mut self, nr: i64, args: &[u64]) -> io::Result<i64> {
        self.syscall_mode(nr, args, false)
    }

    /// Like `syscall_raw`, but always stops at syscall exit (for a call that unmaps the gadget).
    pub fn syscall_exit_stop(&mut self, nr: i64, args: &[u64]) -> io::Result<i64> {
        self.syscall_mode(nr, args, true)
    }

    fn syscall_mode(&mut self, nr: i64, args: &[u64], exit_stop: bool) -> io::Result<i64> {
        let mut r = self.base;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rip = self.gadget;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        r.rdi = a[0];
        r.rsi = a[1];
        r.rdx = a[2];
        r.r10 = a[3];
        r.r8 = a[4];
        r.r9 = a[5];
        setregs(self.pid, &r)?;
        if self.int3 && !exit_stop {
            self.run_to_int3()?;
        } else {
            self.run_to_syscall_stop()?; // entry
            self.run_to_syscall_stop()?; // exit
        }
        let r = getregs(self.pid)?;
        Ok(r.rax as i64)
    }

    /// Runs several system calls with a single ptrace stop: writes straight-line code
    /// (`mov` the number and six arguments, `syscall`, store rax to `out + 8*i`, ..., `int3`) to
    /// `code`, which must be writable and executable in the tracee, and runs it. Every call runs,
    /// whatever the earlier ones returned; returns each raw rax.
    pub fn batch(
        &mut self,
        code: u64,
        out: u64,
        calls: &[(i64, [u64; 6])],
    ) -> io::Result<Vec<i64>> {
        if calls.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = Vec::with_capacity(calls.len() * 84 + 1);
        let mov = |c: &mut Vec<u8>, op: [u8; 2], v: u64| {
            c.extend_from_slice(&op);
            c.extend_from_slice(&v.to_le_bytes());
        };
        for (i, (nr, a)) in calls.iter().enumerate() {
            mov(&mut c, [0x48, 0xb8], *nr as u64); // rax
            mov(&mut c, [0x48, 0xbf], a[0]); // rdi
            mov(&mut c, [0x48, 0xbe], a[1]); // rsi
            mov(&mut c, [0x48, 0xba], a[2]); // rdx
            mov(&mut c, [0x49, 0xba], a[3]); // r10
            mov(&mut c, [0x49, 0xb8], a[4]); // r8
            mov(&mut c, [0x49, 0xb9], a[5]); // r9
            c.extend_from_slice(&[0x0f, 0x05]); // syscall
            mov(&mut c, [0x48, 0xa3], out + 8 * i as u64); // mov [moffs64], rax
        }
        c.push(0xcc);
        write_mem(self.pid, &c, &[(code, c.len() as u64)])?;
        let mut r = self.base;
        r.orig_rax = u64::MAX;
        r.rip = code;
        setregs(self.pid, &r)?;
        self.run_to_int3()?;
        let mut res = vec![0u8; calls.len() * 8];
        let n = res.len() as u64;
        read_mem(self.pid, &mut res, &[(out, n)])?;
        Ok(res
            .chunks(8)
            .map(|b| i64::from_ne_bytes(b.try_into().unwrap()))
            .collect())
    }

    /// Like `syscall_raw` but turns -errno into an error.
    pub fn syscall(&mut self, nr: i64, args: &[u64]) -> io::Result<u64> {
        let r = self.syscall_raw(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(from_neg(r));
        }
        Ok(r as u64)
    }
}

pub(crate) fn read_to_string(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
}

/// stat(2) of a path, as FileId.
pub(crate) fn stat_id(path: &str) -> io::Result<crate::image::FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(crate::image::FileId {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_sec: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

/// PAGEMAP_SCAN (Linux 6.7+) page categories (uapi linux/fs.h).
pub(crate) const PAGE_IS_FILE: u64 = 1 << 2;
pub(crate) const PAGE_IS_PRESENT: u64 = 1 << 3;
pub(crate) const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub(crate) const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// _IOWR('f', 16, struct pm_scan_arg) (96 bytes).
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// One PAGEMAP_SCAN answer: pages [start, end) that all have `categories`.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// The pages of [start, end) that are present or swapped, as ranges with their categories
/// (PRESENT, SWAPPED, FILE, PFNZERO), through the PAGEMAP_SCAN ioctl on an open
/// /proc/PID/pagemap: one call returns whole ranges instead of 8 bytes per page. `buf` is
/// reused between calls. Errors of a kernel without the ioctl (ENOTTY, EINVAL) are returned
/// as they are, an answer outside the range asked for as `InvalidData`: the caller then falls
/// back to reading pagemap.
pub(crate) fn pagemap_scan(
    pagemap: &std::fs::File,
    start: u64,
    end: u64,
    buf: &mut Vec<PageRegion>,
    out: &mut Vec<PageRegion>,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if buf.is_empty() {
        buf.resize(4096, PageRegion::default());
    }
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO,
            ..Default::default()
        };
        // SAFETY: arg is a valid pm_scan_arg; vec points to vec_len writable PageRegions
        // (same layout as struct page_region); the kernel writes at most vec_len of them.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
        if n < 0 {
            return Err(errno());
        }
        let n = n as usize;
        if n > buf.len() || arg.walk_end <= at || arg.walk_end > end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "PAGEMAP_SCAN answered {n} regions, walked to {:#x} from {at:#x} (end {end:#x})",
                    arg.walk_end
                ),
            ));
        }
        // when the buffer fills, the scan stops at walk_end, and its last region may reach
        // past it (or start there): only what lies before walk_end counts, the next call
        // starts there
        for r in &buf[..n] {
            if r.start < at || r.start >= r.end || r.end > end {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "PAGEMAP_SCAN region {:#x}-{:#x} outside {at:#x}-{end:#x}",
                        r.start, r.end
                    ),
                ));
            }
            if r.start < arg.walk_end {
                out.push(PageRegion {
                    end: r.end.min(arg.walk_end),
                    ..*r
                });
            }
        }
        at = arg.walk_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_runs_must_fit_the_buffer() {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let src = [7u8; 64];
        let mut dst = [0u8; 64];
        let at = dst.as_mut_ptr() as u64;
        // runs longer than the buffer: refused before any copy
        let e = write_mem(me, &src[..16], &[(at, 32)]).expect_err("run past the buffer");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = write_mem(me, &src, &[(at, 40), (at + 40, 40)]).expect_err("sum past the buffer");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = write_mem(me, &src, &[(u64::MAX - 4, 8)]).expect_err("wrapping run");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(dst, [0u8; 64], "nothing may be written on a refused call");
        // runs within the buffer work
        write_mem(me, &src, &[(at, 8), (at + 32, 8)]).unwrap();
        assert_eq!(&dst[..8], &[7u8; 8]);
        assert_eq!(&dst[8..32], &[0u8; 24]);
        assert_eq!(&dst[32..40], &[7u8; 8]);
        let mut back = [0u8; 16];
        read_mem(me, &mut back, &[(at, 8), (at + 32, 8)]).unwrap();
        assert_eq!(back, [7u8; 16]);
        let e = read_mem(me, &mut back, &[(at, 8)]).expect_err("read runs must fill it");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    /// Pages alternately written and only read (zero page): PAGEMAP_SCAN with a buffer of 3
    /// regions (it stops and is called again, its last region may reach past where it
    /// stopped) gives the same regions as with a big buffer, and each page its category.
    #[test]
    fn pagemap_scan_resumes_where_a_full_buffer_stopped() {
        let pg = 4096usize;
        // SAFETY: a fresh private anonymous mapping of our own, unmapped at the end.
        let a = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                64 * pg,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(a, libc::MAP_FAILED);
        let a = a as *mut u8;
        let mut sum = 0u32;
        // pages 0,1 written, 2 read, 3,4 written, 5 read, ...; 60..64 untouched
        // SAFETY: offsets inside the mapping.
        unsafe {
            for p in 0..60 {
                if p % 3 == 2 {
                    sum += a.add(p * pg).read_volatile() as u32;
                } else {
                    a.add(p * pg).write_volatile(1);
                }
            }
        }
        assert_eq!(sum, 0);
        let (start, end) = (a as u64, a as u64 + 64 * pg as u64);
        let pm = std::fs::File::open("/proc/self/pagemap").unwrap();
        let mut whole = Vec::new();
        pagemap_scan(&pm, start, end, &mut Vec::new(), &mut whole).unwrap();
        let mut pieces = Vec::new();
        let mut small = vec![PageRegion::default(); 3];
        pagemap_scan(&pm, start, end, &mut small, &mut pieces).unwrap();
        let expect: Vec<(u64, u64, bool)> = (0..20u64)
            .flat_map(|k| {
                let at = start + 3 * k * pg as u64;
                [
                    (at, at + 2 * pg as u64, false),
                    (at + 2 * pg as u64, at + 3 * pg as u64, true),
                ]
            })
            .collect();
        let got = |v: &[PageRegion]| -> Vec<(u64, u64, bool)> {
            v.iter()
                .map(|r| {
                    assert_ne!(r.categories & PAGE_IS_PRESENT, 0);
                    (r.start, r.end, r.categories & PAGE_IS_PFNZERO != 0)
                })
                .collect()
        };
        assert_eq!(got(&whole), expect);
        // a region cut where a call stopped continues in the next answer: merge neighbours
        let mut merged: Vec<(u64, u64, bool)> = Vec::new();
        for r in got(&pieces) {
            match merged.last_mut() {
                Some(l) if l.1 == r.0 && l.2 == r.2 => l.1 = r.1,
                _ => merged.push(r),
            }
        }
        assert_eq!(merged, expect);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(a.cast(), 64 * pg) };
    }

    #[test]
    fn wait_until_returns_at_the_deadline() {
        #[allow(clippy::zombie_processes)] // reaped by wait_until below
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as pid_t;
        let t0 = std::time::Instant::now();
        let r = wait_until(pid, t0 + std::time::Duration::from_millis(50)).unwrap();
        assert_eq!(r, None);
        assert!(t0.elapsed() >= std::time::Duration::from_millis(50));
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        child.kill().unwrap();
        let st = wait_until(pid, t0 + std::time::Duration::from_secs(10))
            .unwrap()
            .expect("the killed child reports");
        assert!(libc::WIFSIGNALED(st));
    }
}
