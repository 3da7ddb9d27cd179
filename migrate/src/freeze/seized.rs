//! The seized process as its tracer thread holds it: put back and detached on drop, or ended;
//! syscall-restart fix-up.

use crate::procfs::*;
use crate::sys::*;
use libc::pid_t;

/// Holds a seized process on its tracer thread; puts everything back and detaches on drop
/// unless it was ended (or handed over to a home shell).
pub(crate) struct Held {
    pub(crate) pid: pid_t,
    pub(crate) orig_regs: Option<libc::user_regs_struct>,
    pub(crate) orig_mask: Option<u64>,
    pub(crate) stashed: Vec<Vec<u8>>,
    pub(crate) active: bool,
    /// Signals that were queued in the process when its image was taken (they are in the image).
    pub(crate) queued: Vec<i32>,
    /// May it have more than one thread (`freeze`), or not (`seize`: migration, home shell)?
    pub(crate) multi: bool,
    /// Its other threads, seized and stopped (see [`super::threads`]).
    pub(crate) threads: Vec<super::threads::HeldThread>,
    pub(crate) _not_send: crate::tracer::NotSend,
}

impl Held {
    pub(crate) fn release(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        for t in self.threads.iter_mut() {
            t.release(self.pid);
        }
        if let Some(mut r) = self.orig_regs.take() {
            restart_fixup(&mut r, false);
            let _ = setregs(self.pid, &r);
        }
        if let Some(m) = self.orig_mask.take() {
            let _ = set_sigmask(self.pid, m);
        }
        // Not stopped (a seize that timed out): the kernel detaches when the tracer thread ends,
        // clearing the pending interrupt.
        let _ = ptrace_req(Req::Detach, self.pid, 0);
        for info in self.stashed.drain(..) {
            let sig = i32::from_ne_bytes(info[..4].try_into().unwrap());
            // SAFETY: plain kill.
            unsafe { libc::kill(self.pid, sig) };
        }
    }
    pub(crate) fn kill(&mut self) {
        self.active = false;
        // When we are also its parent, a plain wait would reap it and take the exit status away
        // from our caller: only wait for death then (WNOWAIT).
        let st = read_to_string(&format!("/proc/{}/status", self.pid)).unwrap_or_default();
        // SAFETY: getpid has no preconditions.
        let parent = status_field(&st, "PPid").and_then(|v| v.parse::<i32>().ok())
            == Some(unsafe { libc::getpid() });
        // SAFETY: plain kill; we are the tracer, so collect the exit notification.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        // every traced thread reports its death to us and stays until reaped; the main
        // thread reports only once the others are gone
        for t in &self.threads {
            loop {
                match wait(t.tid) {
                    Ok(st) if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) => break,
                    Ok(_) => {
                        let _ = ptrace_req(Req::Cont, t.tid, 0);
                    }
                    Err(_) => break,
                }
            }
        }
        if parent {
            // SAFETY: waitid with a zeroed siginfo out-parameter.
            unsafe {
                let mut si: libc::siginfo_t = std::mem::zeroed();
                while libc::waitid(
                    libc::P_PID,
                    self.pid as u32,
                    &mut si,
                    libc::WEXITED | libc::WNOWAIT | libc::__WALL,
                ) == -1
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
            return;
        }
        loop {
            match wait(self.pid) {
                Ok(st) if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) => break,
                Ok(_) => {
                    let _ = ptrace_req(Req::Cont, self.pid, 0);
                }
                Err(_) => break,
            }
        }
    }
}
impl Drop for Held {
    fn drop(&mut self) {
        self.release()
    }
}

/// Turns "interrupted in syscall X" into "about to execute syscall X".
/// `for_image`: -ERESTART_RESTARTBLOCK re-executes the original call (the restart block does not
/// survive the move); otherwise it becomes restart_syscall like the kernel would do.
pub(crate) fn restart_fixup(r: &mut libc::user_regs_struct, for_image: bool) {
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            -514..=-512 => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            -516 => {
                r.rax = if for_image {
                    r.orig_rax
                } else {
                    libc::SYS_restart_syscall as u64
                };
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_fixup_reexecutes_interrupted_calls() {
        // SAFETY: plain struct.
        let mut r: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        r.orig_rax = 35;
        r.rax = (-516i64) as u64;
        r.rip = 0x1002;
        restart_fixup(&mut r, true);
        assert_eq!((r.rax, r.rip, r.orig_rax), (35, 0x1000, u64::MAX));
        r.orig_rax = 230;
        r.rax = (-516i64) as u64;
        r.rip = 0x1002;
        restart_fixup(&mut r, false);
        assert_eq!(r.rax, libc::SYS_restart_syscall as u64);
        r.orig_rax = 0;
        r.rax = (-4i64) as u64; // EINTR stays
        r.rip = 0x1002;
        restart_fixup(&mut r, true);
        assert_eq!((r.rax, r.rip), ((-4i64) as u64, 0x1002));
    }
}
