//! Job control for `omnode thaw --wait` on a terminal (issue 8 part 6), done the way a shell
//! does it: the thawed process's own group gets the terminal's foreground before it runs, so
//! its reads from the terminal work and Ctrl-C / Ctrl-\ / Ctrl-Z reach the program; thaw
//! ignores those signals while it waits and takes the foreground back when the program ends
//! or stops. When the program stops (Ctrl-Z), thaw reports it and stops itself, so the user's
//! shell gets control back; `fg` then continues thaw, which hands the terminal back to the
//! program and continues it. The terminal's settings go with it, as a shell does for its
//! jobs: thaw keeps its own and sets them again whenever it takes the terminal back; the
//! program's (set by the engine from the image before it runs) are kept while it is stopped.
//! A frozen session leader that had the terminal as its controlling terminal gets it when
//! thaw itself leads the terminal's session (`exec omnode thaw --wait`, or thaw as a new
//! window's command): thaw gives the terminal up first ([`release_for_session_leader`]).
//!
//! Owns: the terminal's foreground group and thaw's own terminal-signal dispositions.
//! Must not know: anything about images or how the process was thawed.

/// The terminal on thaw's stdin, when thaw runs in its foreground group (an interactive
/// shell's foreground job). `None` when stdin is no terminal or thaw runs in the background:
/// then thaw does no job control at all.
pub struct Terminal {
    fd: i32,
    own_pgrp: i32,
    /// thaw's own terminal settings, set again when it takes the terminal back.
    own_termios: Option<libc::termios>,
}

fn get_termios(fd: i32) -> Option<libc::termios> {
    // SAFETY: tcgetattr writes one termios into the zeroed struct.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        (libc::tcgetattr(fd, &mut t) == 0).then_some(t)
    }
}

fn set_termios(fd: i32, t: &libc::termios) {
    // SAFETY: tcsetattr reads the termios; SIGTTOU is ignored while thaw does job control.
    unsafe { libc::tcsetattr(fd, libc::TCSADRAIN, t) };
}

/// When thaw leads the session of the terminal on its stdin (it is the session leader and
/// the terminal is its controlling terminal), gives the terminal up (TIOCNOTTY), so that a
/// thawed session leader can take it as its own controlling terminal. Returns whether it did.
pub fn release_for_session_leader() -> bool {
    // SAFETY: isatty/getpid/getsid/tcgetsid only read state; SIGHUP (sent to thaw's own
    // group by TIOCNOTTY) is ignored first, which installs no handler code.
    unsafe {
        if libc::isatty(0) != 1 {
            return false;
        }
        let me = libc::getpid();
        if libc::getsid(0) != me || libc::tcgetsid(0) != me {
            return false;
        }
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::ioctl(0, libc::TIOCNOTTY) == 0
    }
}

impl Terminal {
    pub fn of_stdin() -> Option<Terminal> {
        // SAFETY: isatty/tcgetpgrp/getpgrp only read the state of fd 0 and of this process.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let own_pgrp = libc::getpgrp();
            (libc::tcgetpgrp(0) == own_pgrp).then(|| Terminal {
                fd: 0,
                own_pgrp,
                own_termios: get_termios(0),
            })
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

    /// Takes the foreground back for thaw's own group, with thaw's own terminal settings.
    pub fn take_back(&self) {
        let _ = self.give(self.own_pgrp);
        if let Some(t) = &self.own_termios {
            set_termios(self.fd, t);
        }
    }

    /// The program `pgrp` stopped: take the terminal back, stop thaw so the shell regains
    /// control, and once thaw is continued (`fg`), hand the terminal to the program again and
    /// continue it.
    pub fn stop_with(&self, pgrp: i32) {
        let theirs = get_termios(self.fd);
        self.take_back();
        // SAFETY: raising SIGSTOP on ourselves; kill with our child's group id.
        unsafe {
            libc::raise(libc::SIGSTOP);
            if let Some(t) = &theirs {
                set_termios(self.fd, t);
            }
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
