//! Terminal job control for a moved process, decided at home (pure).
//!
//! The deputy reads and writes the terminal for the moved process, but it is not in the
//! process's session or group, so the kernel's job-control checks (`tty_check_change`,
//! `job_control` in `n_tty_read`) would judge the daemon, not the process. The deputy makes the
//! same decision itself with [`tty_gate`] before it touches the controlling terminal, from the
//! home process's group and the terminal's foreground group (`/proc/PID/stat`), the terminal's
//! TOSTOP flag, and the moved process's SIGTTIN/SIGTTOU disposition (sent by the remote in
//! [`crate::forward::FwdMsg::TtySigs`]).

/// What the call does to the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtyOp {
    /// read(2).
    Read,
    /// write(2): stopped only with TOSTOP.
    Write,
    /// tcsetattr, tcflush, tcflow, …: the kernel's `tty_check_change`.
    Change,
}

/// The facts the decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtyState {
    /// The process's (home) process group.
    pub pgrp: i32,
    /// The terminal's foreground process group.
    pub fg: i32,
    /// The terminal's TOSTOP flag.
    pub tostop: bool,
    /// SIGTTIN is ignored or blocked by the moved process.
    pub ttin_off: bool,
    /// SIGTTOU is ignored or blocked by the moved process.
    pub ttou_off: bool,
    /// The process group is orphaned (no parent in another group of the session).
    pub orphaned: bool,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Do the call.
    Proceed,
    /// Send this signal to the process group and hold the call until the group is in the
    /// foreground (the kernel answers -ERESTARTSYS: the call restarts after the stop).
    Signal(i32),
    /// Fail with EIO.
    Eio,
}

/// Decides as the kernel does for a process in group `s.pgrp` (see the module documentation).
pub fn tty_gate(op: TtyOp, s: TtyState) -> Gate {
    if s.pgrp == s.fg || s.fg <= 0 {
        return Gate::Proceed;
    }
    match op {
        TtyOp::Read => {
            if s.ttin_off || s.orphaned {
                Gate::Eio
            } else {
                Gate::Signal(libc::SIGTTIN)
            }
        }
        TtyOp::Write if !s.tostop => Gate::Proceed,
        TtyOp::Write | TtyOp::Change => {
            if s.ttou_off {
                Gate::Proceed
            } else if s.orphaned {
                Gate::Eio
            } else {
                Gate::Signal(libc::SIGTTOU)
            }
        }
    }
}

/// Whether ioctl request `req` changes the terminal (the kernel runs `tty_check_change`).
pub fn ioctl_changes_tty(req: u64) -> bool {
    matches!(
        req as u32,
        0x5402..=0x5404 | 0x5406..=0x540B | 0x402C_542B..=0x402C_542D
    )
}

/// Bits of a `/proc/PID/status` signal mask line (`SigIgn:`, `SigBlk:`) for signal `sig`.
pub fn mask_has(hex: &str, sig: i32) -> Option<bool> {
    let m = u64::from_str_radix(hex.trim(), 16).ok()?;
    Some(m & (1u64 << (sig - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st() -> TtyState {
        TtyState {
            pgrp: 10,
            fg: 20,
            tostop: false,
            ttin_off: false,
            ttou_off: false,
            orphaned: false,
        }
    }

    #[test]
    fn foreground_always_proceeds() {
        let s = TtyState { fg: 10, ..st() };
        for op in [TtyOp::Read, TtyOp::Write, TtyOp::Change] {
            assert_eq!(tty_gate(op, s), Gate::Proceed);
        }
    }

    #[test]
    fn background_read_stops_or_fails_as_the_kernel_decides() {
        assert_eq!(tty_gate(TtyOp::Read, st()), Gate::Signal(libc::SIGTTIN));
        let ign = TtyState {
            ttin_off: true,
            ..st()
        };
        assert_eq!(tty_gate(TtyOp::Read, ign), Gate::Eio);
        let orph = TtyState {
            orphaned: true,
            ..st()
        };
        assert_eq!(tty_gate(TtyOp::Read, orph), Gate::Eio);
    }

    #[test]
    fn background_write_stops_only_with_tostop_and_a_live_sigttou() {
        assert_eq!(tty_gate(TtyOp::Write, st()), Gate::Proceed);
        let tostop = TtyState {
            tostop: true,
            ..st()
        };
        assert_eq!(tty_gate(TtyOp::Write, tostop), Gate::Signal(libc::SIGTTOU));
        let ign = TtyState {
            ttou_off: true,
            ..tostop
        };
        assert_eq!(tty_gate(TtyOp::Write, ign), Gate::Proceed);
        let orph = TtyState {
            orphaned: true,
            ..tostop
        };
        assert_eq!(tty_gate(TtyOp::Write, orph), Gate::Eio);
        // tcsetattr needs no TOSTOP
        assert_eq!(tty_gate(TtyOp::Change, st()), Gate::Signal(libc::SIGTTOU));
        let ign = TtyState {
            ttou_off: true,
            ..st()
        };
        assert_eq!(tty_gate(TtyOp::Change, ign), Gate::Proceed);
    }

    #[test]
    fn masks_and_requests() {
        // SIGTTIN is 21: bit 20
        assert_eq!(mask_has("0000000000100000", libc::SIGTTIN), Some(true));
        assert_eq!(mask_has("0000000000100000", libc::SIGTTOU), Some(false));
        assert_eq!(mask_has("zz", libc::SIGTTOU), None);
        assert!(ioctl_changes_tty(libc::TCSETS) && ioctl_changes_tty(libc::TCFLSH));
        assert!(!ioctl_changes_tty(libc::TCGETS) && !ioctl_changes_tty(libc::TIOCSWINSZ));
    }
}
