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

pub(crate) fn ptrace(
    req: libc::c_uint,
    pid: pid_t,
    addr: usize,
    data: usize,
) -> io::Result<c_long> {
    // SAFETY: raw ptrace; callers pass valid pointers for the request.
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

pub(crate) fn getregs(pid: pid_t) -> io::Result<user_regs_struct> {
    // SAFETY: zeroed plain struct.
    let mut r: user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, pid, 0, &mut r as *mut _ as usize)?;
    Ok(r)
}
pub(crate) fn setregs(pid: pid_t, r: &user_regs_struct) -> io::Result<()> {
    ptrace(libc::PTRACE_SETREGS, pid, 0, r as *const _ as usize).map(|_| ())
}
pub(crate) fn get_xstate(pid: pid_t) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 16384];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_GETREGSET,
        pid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}
pub(crate) fn set_xstate(pid: pid_t, x: &[u8]) -> io::Result<()> {
    let mut buf = x.to_vec();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_SETREGSET,
        pid,
        NT_X86_XSTATE,
        &mut iov as *mut _ as usize,
    )
    .map(|_| ())
}
pub(crate) fn get_sigmask(pid: pid_t) -> io::Result<u64> {
    let mut m = 0u64;
    ptrace(libc::PTRACE_GETSIGMASK, pid, 8, &mut m as *mut u64 as usize)?;
    Ok(m)
}
pub(crate) fn set_sigmask(pid: pid_t, m: u64) -> io::Result<()> {
    ptrace(libc::PTRACE_SETSIGMASK, pid, 8, &m as *const u64 as usize).map(|_| ())
}
pub(crate) fn get_rseq(pid: pid_t) -> io::Result<Option<(u64, u32, u32)>> {
    let mut c = [0u64; 3];
    ptrace(
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        24,
        c.as_mut_ptr() as usize,
    )?;
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
        let n = ptrace(
            PTRACE_PEEKSIGINFO,
            pid,
            &a as *const _ as usize,
            buf.as_mut_ptr() as usize,
        )?;
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

pub(crate) fn read_mem(pid: pid_t, local: &mut [u8], runs: &[(u64, u64)]) -> io::Result<()> {
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
pub(crate) struct Tracee {
    pub pid: pid_t,
    pub gadget: u64,
    pub base: user_regs_struct,
    /// Signals that arrived (signal-delivery-stops) while we held the process: (signo, siginfo).
    pub stashed: Vec<Vec<u8>>,
    /// The gadget is followed by `int3`.
    pub int3: bool,
}

impl Tracee {
    /// Keeps the siginfo of the signal this signal-delivery-stop holds, to be re-queued
    /// when the process is let go (the signal is not delivered while we work on it).
    fn stash_signal(&mut self) {
        let mut info = vec![0u8; 128];
        if ptrace(
            libc::PTRACE_GETSIGINFO,
            self.pid,
            0,
            info.as_mut_ptr() as usize,
        )
        .is_ok()
        {
            self.stashed.push(info);
        }
    }

    /// Resumes with PTRACE_SYSCALL until a syscall stop (SIGTRAP|0x80).
    fn run_to_syscall_stop(&mut self) -> io::Result<()> {
        self.resume_until(libc::PTRACE_SYSCALL, |sig, _| sig == libc::SIGTRAP | 0x80)
    }

    /// Resumes with PTRACE_CONT until the `int3` after the gadget's `syscall` traps.
    fn run_to_int3(&mut self) -> io::Result<()> {
        self.resume_until(libc::PTRACE_CONT, |sig, plain| {
            sig == libc::SIGTRAP && plain
        })
    }

    /// Resumes with `request` (PTRACE_SYSCALL or PTRACE_CONT) until a stop for which
    /// `reached(signal, plain signal-delivery-stop)` holds. Signals that arrive meanwhile
    /// are stashed, not delivered.
    fn resume_until(
        &mut self,
        request: libc::c_uint,
        reached: impl Fn(i32, bool) -> bool,
    ) -> io::Result<()> {
        ptrace(request, self.pid, 0, 0)?;
        loop {
            let st = wait(self.pid)?;
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
            ptrace(request, self.pid, 0, 0)?;
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
