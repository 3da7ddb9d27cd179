//! What happens to the parked shell (signals, group stops, its end) and how it is answered,
//! and stopping it for work (an injected call, an ending, a thaw) and parking it again.

use crate::error::{Result, errno};
use crate::sys::*;
use libc::pid_t;
use std::io;
use std::time::{Duration, Instant};

use super::{Shell, ShellEvent, SigInfo, State, WORK_TIMEOUT, serr, sio};

/// waitid(WEXITED) for P's end, leaving the zombie for its parent when that is us (WNOWAIT).
pub(super) fn wait_end(pid: pid_t, nowait: bool, deadline: Instant) -> io::Result<Option<i32>> {
    let mut flags = libc::WEXITED | libc::__WALL | libc::WNOHANG;
    if nowait {
        flags |= libc::WNOWAIT;
    }
    loop {
        // SAFETY: zeroed out-parameter.
        let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with a valid siginfo out-parameter.
        if unsafe { libc::waitid(libc::P_PID, pid as u32, &mut si, flags) } == -1 {
            let e = errno();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: filled in by waitid (zero when nothing was ready).
        let (spid, code, status) = unsafe { (si.si_pid(), si.si_code, si.si_status()) };
        if spid == pid {
            return Ok(Some(match code {
                libc::CLD_EXITED => (status & 0xff) << 8,
                libc::CLD_KILLED => status & 0x7f,
                libc::CLD_DUMPED => (status & 0x7f) | 0x80,
                _ => 0,
            }));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Shell {
    pub(super) fn repark(&mut self) -> Result<()> {
        setregs(self.pid, &self.parked).map_err(sio(self.pid, "PTRACE_SETREGS"))?;
        ptrace_req(Req::Cont, self.pid, 0).map_err(sio(self.pid, "PTRACE_CONT"))?;
        self.state = State::Running;
        Ok(())
    }

    pub(super) fn next_event(&mut self, deadline: Instant) -> Result<Option<ShellEvent>> {
        if let Some(e) = self.pending.pop_front() {
            return Ok(Some(e));
        }
        match self.state {
            State::Running | State::Listening => {}
            State::Ended => return Err(serr(self.pid, "the shell has ended")),
            _ => return Err(serr(self.pid, "the previous event awaits a decision")),
        }
        loop {
            let Some(st) = wait_until(self.pid, deadline).map_err(sio(self.pid, "waitpid"))? else {
                return Ok(None);
            };
            if let Some(e) = self.classify(st, deadline)? {
                return Ok(Some(e));
            }
        }
    }

    /// Turns a wait status into an event (None: handled internally, keep waiting).
    fn classify(&mut self, st: i32, deadline: Instant) -> Result<Option<ShellEvent>> {
        let pid = self.pid;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            self.state = State::Ended;
            return Ok(Some(ShellEvent::Ended { status: st }));
        }
        if !libc::WIFSTOPPED(st) {
            return Ok(None);
        }
        let sig = libc::WSTOPSIG(st);
        match st >> 16 {
            0 if sig != (libc::SIGTRAP | 0x80) => {
                let info = SigInfo::parse(getsiginfo(pid).map_err(sio(pid, "GETSIGINFO"))?);
                self.state = State::HeldSignal(sig);
                Ok(Some(ShellEvent::Signal { info, held: true }))
            }
            libc::PTRACE_EVENT_STOP
                if matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) =>
            {
                self.state = State::GroupStop;
                Ok(Some(ShellEvent::GroupStop { signo: sig }))
            }
            libc::PTRACE_EVENT_EXIT => {
                let status = geteventmsg(pid).map_err(sio(pid, "GETEVENTMSG"))? as i32;
                ptrace_req(Req::Cont, pid, 0).map_err(sio(pid, "PTRACE_CONT"))?;
                let dl = deadline.max(Instant::now() + WORK_TIMEOUT);
                wait_end(pid, self.parent_is_us, dl).map_err(sio(pid, "waitid"))?;
                self.state = State::Ended;
                Ok(Some(ShellEvent::Ended { status }))
            }
            _ => {
                // a re-trap after LISTEN (fg/bg), a stray interrupt or syscall stop: run on
                if self.state == State::Stopped {
                    return Ok(None);
                }
                ptrace_req(Req::Cont, pid, 0).map_err(sio(pid, "PTRACE_CONT"))?;
                self.state = State::Running;
                Ok(None)
            }
        }
    }

    pub(super) fn decide(&mut self, deliver: bool) -> Result<()> {
        let State::HeldSignal(sig) = self.state else {
            return Err(serr(self.pid, "no signal is held"));
        };
        let s = if deliver { sig as usize } else { 0 };
        ptrace_req(Req::Cont, self.pid, s).map_err(sio(self.pid, "PTRACE_CONT"))?;
        self.state = State::Running;
        Ok(())
    }

    /// Brings P into a stop we can work in (from pause() or a group stop).
    pub(crate) fn stop_for_work(&mut self) -> Result<()> {
        let pid = self.pid;
        match self.state {
            State::Stopped | State::GroupStop => return Ok(()),
            State::Running | State::Listening => {}
            State::HeldSignal(_) => {
                return Err(serr(pid, "decide about the held signal first"));
            }
            State::Ended => return Err(serr(pid, "the shell has ended")),
        }
        ptrace_req(Req::Interrupt, pid, 0).map_err(sio(pid, "PTRACE_INTERRUPT"))?;
        let deadline = Instant::now() + WORK_TIMEOUT;
        loop {
            let st = wait_until(pid, deadline)
                .map_err(sio(pid, "waitpid"))?
                .ok_or_else(|| serr(pid, "the shell did not stop within 5 s"))?;
            if libc::WIFSTOPPED(st) && st >> 16 == libc::PTRACE_EVENT_STOP {
                self.state = State::Stopped;
                return Ok(());
            }
            if libc::WIFSTOPPED(st) && st >> 16 == 0 && libc::WSTOPSIG(st) != (libc::SIGTRAP | 0x80)
            {
                // a signal on the way: report it later, already suppressed
                let info = SigInfo::parse(getsiginfo(pid).map_err(sio(pid, "GETSIGINFO"))?);
                self.pending
                    .push_back(ShellEvent::Signal { info, held: false });
                ptrace_req(Req::Cont, pid, 0).map_err(sio(pid, "PTRACE_CONT"))?;
                continue;
            }
            if let Some(e) = self.classify(st, deadline)? {
                // it ended meanwhile
                self.pending.push_back(e);
                return Err(serr(pid, "the shell ended"));
            }
        }
    }
}
