//! System calls injected into the parked shell (run in P's own context, with memory
//! arguments in its scratch area) and the end of P reproduced for the moved process.

use crate::error::{Result, errno};
use crate::sys::*;
use std::io;
use std::time::Instant;

use super::events::wait_end;
use super::{End, SCRATCH, Shell, ShellArg, ShellEvent, SigInfo, State, WORK_TIMEOUT, serr, sio};

impl Shell {
    pub(super) fn syscall(&mut self, nr: i64, args: &[ShellArg]) -> Result<(i64, Vec<Vec<u8>>)> {
        let pid = self.pid;
        if args.len() > 6 {
            return Err(serr(pid, "a system call has at most 6 arguments"));
        }
        if self.state == State::Listening || self.state == State::GroupStop {
            return Err(serr(pid, "the shell is stopped by job control"));
        }
        let need: usize = args
            .iter()
            .map(|a| match a {
                ShellArg::Val(_) => 0,
                ShellArg::In(b) => (b.len() + 15) & !15,
                ShellArg::Out(n) => (n + 15) & !15,
            })
            .sum();
        if need as u64 > SCRATCH {
            return Err(serr(
                pid,
                format!("arguments of {need} bytes exceed the {SCRATCH}-byte scratch area"),
            ));
        }
        self.stop_for_work()?;
        let r = self.syscall_stopped(nr, args);
        // back to pause() whatever happened (a timed-out call was interrupted)
        let back = self.repark();
        let r = r?;
        back?;
        Ok(r)
    }

    fn syscall_stopped(&mut self, nr: i64, args: &[ShellArg]) -> Result<(i64, Vec<Vec<u8>>)> {
        let pid = self.pid;
        let mut t = Tracee::new(pid, self.gadget, self.parked);
        t.call_timeout = Some(self.call_timeout);
        let scratch = match self.scratch {
            Some(s) => s,
            None => {
                let prw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
                let s = t
                    .syscall(
                        libc::SYS_mmap,
                        &[
                            0,
                            SCRATCH,
                            prw,
                            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                            u64::MAX,
                            0,
                        ],
                    )
                    .map_err(sio(pid, "mmap of a scratch area"))?;
                self.scratch = Some(s);
                s
            }
        };
        let mut off = 0u64;
        let mut regs = Vec::with_capacity(args.len());
        let mut outs = Vec::new();
        for a in args {
            match a {
                ShellArg::Val(v) => regs.push(*v),
                ShellArg::In(b) => {
                    let at = scratch + off;
                    let n = b.len() as u64;
                    write_mem(pid, b, &[(at, n)]).map_err(sio(pid, "writing an argument"))?;
                    regs.push(at);
                    off += (n + 15) & !15;
                }
                ShellArg::Out(n) => {
                    let at = scratch + off;
                    regs.push(at);
                    outs.push((at, *n));
                    off += (*n as u64 + 15) & !15;
                }
            }
        }
        let r = t.syscall_raw(nr, &regs).map_err(|e| {
            if e.kind() == io::ErrorKind::TimedOut {
                // interrupt the blocked call so P can be parked again
                let _ = ptrace_req(Req::Interrupt, pid, 0);
                let _ = wait_until(pid, Instant::now() + WORK_TIMEOUT);
            }
            sio(pid, "injected system call")(e)
        })?;
        for info in t.stashed.drain(..) {
            self.pending.push_back(ShellEvent::Signal {
                info: SigInfo::parse(info),
                held: false,
            });
        }
        let mut res = Vec::with_capacity(outs.len());
        for (at, n) in outs {
            let mut b = vec![0u8; n];
            read_mem(pid, &mut b, &[(at, n as u64)]).map_err(sio(pid, "reading a result"))?;
            res.push(b);
        }
        Ok((r, res))
    }

    pub(super) fn end(&mut self, how: End) -> Result<i32> {
        let pid = self.pid;
        self.stop_for_work()?;
        let mut want_sig = None;
        match how {
            End::Exit(code) => {
                let mut r = self.parked;
                r.rax = libc::SYS_exit_group as u64;
                r.rdi = code as u64;
                setregs(pid, &r).map_err(sio(pid, "PTRACE_SETREGS"))?;
            }
            End::Signal(sig) => {
                // SAFETY: plain kill of our tracee.
                if unsafe { libc::kill(pid, sig) } != 0 {
                    return Err(sio(pid, "kill")(errno()));
                }
                want_sig = Some(sig);
            }
        }
        ptrace_req(Req::Cont, pid, 0).map_err(sio(pid, "PTRACE_CONT"))?;
        let deadline = Instant::now() + WORK_TIMEOUT;
        loop {
            let st = wait_until(pid, deadline)
                .map_err(sio(pid, "waitpid"))?
                .ok_or_else(|| serr(pid, "the shell did not end within 5 s"))?;
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                self.state = State::Ended;
                return Ok(st);
            }
            if !libc::WIFSTOPPED(st) {
                continue;
            }
            let sig = libc::WSTOPSIG(st);
            match st >> 16 {
                libc::PTRACE_EVENT_EXIT => {
                    let status = geteventmsg(pid).map_err(sio(pid, "GETEVENTMSG"))? as i32;
                    ptrace_req(Req::Cont, pid, 0).map_err(sio(pid, "PTRACE_CONT"))?;
                    wait_end(pid, self.parent_is_us, deadline).map_err(sio(pid, "waitid"))?;
                    self.state = State::Ended;
                    return Ok(status);
                }
                0 if sig != (libc::SIGTRAP | 0x80) => {
                    let info = SigInfo::parse(getsiginfo(pid).map_err(sio(pid, "GETSIGINFO"))?);
                    let ours = Some(sig) == want_sig && info.from_us();
                    let s = if ours { sig as usize } else { 0 };
                    ptrace_req(Req::Cont, pid, s).map_err(sio(pid, "PTRACE_CONT"))?;
                }
                _ => {
                    ptrace_req(Req::Cont, pid, 0).map_err(sio(pid, "PTRACE_CONT"))?;
                }
            }
        }
    }
}
