//! Job control for `omnode thaw --wait` on a terminal (issue 8 part 6), done the way a shell
//! does it: the thawed process's own group gets the terminal's foreground before it runs, so
//! its reads from the terminal work and Ctrl-C / Ctrl-\ / Ctrl-Z reach the program; thaw
//! ignores those signals while it waits and takes the foreground back when the program ends
//! or stops. When the program stops (Ctrl-Z), thaw reports it and stops itself, so the user's
//! shell gets control back; `fg` then continues thaw, which hands the terminal back to the
//! program and continues it.
//!
//! Owns: the terminal's foreground group and thaw's own terminal-signal dispositions.
//! Must not know: anything about images or how the process was thawed.

/// The terminal on thaw's stdin, when thaw runs in its foreground group (an interactive
/// shell's foreground job). `None` when stdin is no terminal or thaw runs in the background:
/// then thaw does no job control at all.
pub struct Terminal {
    fd: i32,
    own_pgrp: i32,
}

impl Terminal {
    pub fn of_stdin() -> Option<Terminal> {
        // SAFETY: isatty/tcgetpgrp/getpgrp only read the state of fd 0 and of this process.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let own_pgrp = libc::getpgrp();
            (libc::tcgetpgrp(0) == own_pgrp).then_some(Terminal { fd: 0, own_pgrp })
        }
    }

    /// Ignore the terminal's job-control signals in thaw (a shell waiting on its job does the
    /// same), then give the foreground to `pid`'s group if `pid` leads its own group in thaw's
    /// session. Returns the group now in the foreground, or `None` if `pid` cannot take it
    /// (not its own group leader): then the program runs as thaw's background job would.
    pub fn hand_to(&self, pid: i32) -> Option<i32> {
        for s in [
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTSTP,
            libc::SIGTTOU,
            libc::SIGTTIN,
        ] {
            // SAFETY: setting a signal to SIG_IGN installs no handler code.
            unsafe { libc::signal(s, libc::SIG_IGN) };
        }
        // SAFETY: getpgid/getsid only read process state.
        let (pgid, sid, own_sid) =
            unsafe { (libc::getpgid(pid), libc::getsid(pid), libc::getsid(0)) };
        if pgid != pid || sid != own_sid {
            return None;
        }
        self.give(pid).then_some(pid)
    }

    fn give(&self, pgrp: i32) -> bool {
        // SAFETY: tcsetpgrp on our own terminal fd; SIGTTOU is ignored so it cannot stop us.
        unsafe { libc::tcsetpgrp(self.fd, pgrp) == 0 }
    }

    /// Takes the foreground back for thaw's own group.
    pub fn take_back(&self) {
        let _ = self.give(self.own_pgrp);
    }

    /// The program `pgrp` stopped: take the terminal back, stop thaw so the shell regains
    /// control, and once thaw is continued (`fg`), hand the terminal to the program again and
    /// continue it.
    pub fn stop_with(&self, pgrp: i32) {
        self.take_back();
        // SAFETY: raising SIGSTOP on ourselves; kill with our child's group id.
        unsafe {
            libc::raise(libc::SIGSTOP);
            self.give(pgrp);
            libc::kill(-pgrp, libc::SIGCONT);
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.take_back();
    }
}
