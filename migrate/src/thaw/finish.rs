//! Final state: pending signals, credentials, timers, rseq, registers; then let it go (with a
//! SIGWINCH when it had a terminal, whose size may have changed).

use super::inject::{Builder, call};
use super::{TRAMP, terr};
use crate::error::{Error, Result};
use crate::image::*;
use crate::sys::*;
use libc::pid_t;

/// Pending signals, credentials, timers, rseq; then registers, FPU state, mask, and detach.
pub(super) fn finish(
    b: &mut Builder,
    img: &ProcessImage,
    pid: pid_t,
    tramp: u64,
    xstate: Vec<u8>,
    listener_in_child: Option<u64>,
    keep_creds: bool,
) -> Result<()> {
    // the other threads first: made while the main thread still has the privileges
    let threads = super::threads::create(b, img, pid)?;
    // pending signals (all signals are blocked in the child until the final mask is set),
    // then credentials last: they drop the privileges needed above
    let mut calls = Vec::new();
    // POSIX timers, now that the threads they signal exist (before credentials: alarm clocks)
    super::timers::calls(b, img, pid, &threads, &mut calls)?;
    // file locks, every fd being there
    super::locks::calls(b, img, &mut calls)?;
    for ps in &img.pending {
        let sig = i32::from_ne_bytes(ps.info[..4].try_into().unwrap()) as u64;
        let p = b.data(&ps.info)?;
        calls.push(if ps.shared {
            call(
                "rt_sigqueueinfo",
                libc::SYS_rt_sigqueueinfo,
                &[pid as u64, sig, p],
            )
        } else {
            call(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                &[pid as u64, pid as u64, sig, p],
            )
        });
    }
    if img.no_new_privs {
        calls.push(call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        ));
    }
    let c = &img.creds;
    let mut gs = Vec::new();
    for g in &c.groups {
        gs.extend_from_slice(&g.to_ne_bytes());
    }
    let p = b.data(&gs)?;
    // A periodic timer that has just expired shows value 0 with its signal still pending (the
    // kernel re-arms it when that signal is dequeued): arm it for one interval from now, which
    // is what that re-arming would have done.
    for (which, t) in img.itimers.iter().enumerate() {
        let mut t = *t;
        if t[2] == 0 && t[3] == 0 {
            t[2] = t[0];
            t[3] = t[1];
        }
        if t[2] != 0 || t[3] != 0 {
            let mut v = Vec::with_capacity(32);
            for w in t {
                v.extend_from_slice(&w.to_ne_bytes());
            }
            let p = b.data(&v)?;
            calls.push(call(
                "setitimer",
                libc::SYS_setitimer,
                &[which as u64, p, 0],
            ));
        }
    }
    if !keep_creds {
        calls.push(call(
            "setgroups",
            libc::SYS_setgroups,
            &[c.groups.len() as u64, p],
        ));
        calls.push(call(
            "setresgid",
            libc::SYS_setresgid,
            &[c.gid[0] as u64, c.gid[1] as u64, c.gid[2] as u64],
        ));
        calls.push(call(
            "setresuid",
            libc::SYS_setresuid,
            &[c.uid[0] as u64, c.uid[1] as u64, c.uid[2] as u64],
        ));
    }
    calls.push(call(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0],
    ));
    calls.push(call(
        "prctl(PR_SET_DUMPABLE)",
        libc::SYS_prctl,
        &[libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0],
    ));
    if let Some(fd) = listener_in_child {
        // the caller holds its own copy of the listener
        calls.push(call(
            "close of the seccomp listener",
            libc::SYS_close,
            &[fd],
        ));
    }
    if let Some((p, l, s)) = img.rseq {
        calls.push(call("rseq", libc::SYS_rseq, &[p, l as u64, 0, s as u64]));
    }
    b.run(&calls)?;
    // last call: remove the trampoline (we stop at syscall exit, so rip needn't be valid)
    let r =
        b.t.syscall_exit_stop(libc::SYS_munmap, &[tramp, TRAMP])
            .map_err(terr("munmap of the trampoline"))?;
    if r != 0 {
        return Err(terr("munmap of the trampoline")(crate::error::from_neg(r)));
    }

    let regs = regs_from_slice(&img.regs);
    setregs(pid, &regs).map_err(terr("PTRACE_SETREGS"))?;
    set_xstate(pid, &xstate).map_err(|e| Error::TargetUnfit {
        reason: format!(
            "this CPU cannot take the frozen FPU/vector state ({e}); nodes need the same CPU features"
        ),
    })?;
    set_sigmask(pid, img.sigmask).map_err(terr("PTRACE_SETSIGMASK"))?;
    super::threads::let_go(img, &threads)?;
    if img.stopped {
        // it was stopped by job control: it stops again as soon as it is let go
        // SAFETY: signal to our own child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
    }
    b.t.listener = None;
    ptrace_req(Req::Detach, pid, 0).map_err(terr("PTRACE_DETACH"))?;
    if img.terminal.is_some() {
        // Its terminal is another one now, of another size perhaps: tell it, as a terminal
        // does when its window is resized, so that a full-screen program (less, vim, top)
        // asks for the size and redraws (SIGWINCH is ignored by default, so harmless else).
        // SAFETY: signal to our own child.
        unsafe { libc::kill(pid, libc::SIGWINCH) };
    }
    Ok(())
}
