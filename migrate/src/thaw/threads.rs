//! Thaw of the threads other than the main one. In the rebuilt process, its main thread held at
//! the trampoline, each thread of the image is made by an injected `clone3` (the flags of a
//! pthread; its clear_child_tid by CLONE_CHILD_CLEARTID; its old TID by `set_tid` whenever
//! that is free and thaw may ask for it (root), also when the process got a new PID: glibc
//! keeps TIDs of its own beyond struct pthread (the SIGEV_THREAD timer thread's, which a
//! timer_create after the thaw aims at). A thread made so stops before it runs any user code (it is
//! auto-attached, PTRACE_O_TRACECLONE); what only the thread itself can set is injected into
//! it (robust list, sigaltstack, name, its pending signals, no_new_privs, groups and ids, rseq); its registers, FPU
//! state and signal mask are set through ptrace just before it is let go.

use super::inject::{Builder, CODE_AT, GADGET_AT, OUT_AT};
use super::terr;
use crate::error::{Error, Result};
use crate::image::*;
use crate::sys::*;
use libc::pid_t;
use std::time::{Duration, Instant};

/// How long a new thread may take to report its first stop.
const NEW_THREAD_STOP: Duration = Duration::from_secs(5);

/// A thread made in the new process: its new TID and its FPU state fitted to this CPU.
pub(super) struct Made {
    pub(super) tid: pid_t,
    xstate: Vec<u8>,
}

/// Makes every thread of `img` in the new process `pid` and sets what only the thread can set.
/// The main thread must still have the caller's credentials (they are dropped per thread
/// here). On error the caller kills the whole process.
pub(super) fn create(b: &mut Builder, img: &ProcessImage, pid: pid_t) -> Result<Vec<Made>> {
    if img.threads.is_empty() {
        return Ok(Vec::new());
    }
    // With a seccomp filter installed (a guest), each thread made here inherits it (clone
    // copies the filter); the injected clone3 that the filter traps is answered "continue".
    // before anything is made: every thread's FPU state must fit this CPU
    let fitted = img
        .threads
        .iter()
        .map(|t| super::checks::fit_xstate(&t.xstate))
        .collect::<Result<Vec<_>>>()?;
    ptrace_req(
        Req::SetOptions,
        pid,
        (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACECLONE)
            as usize,
    )
    .map_err(terr("PTRACE_SETOPTIONS"))?;
    let mut made = Vec::with_capacity(img.threads.len());
    for (t, xstate) in img.threads.iter().zip(fitted) {
        let tid = clone_thread(b, t, true)?;
        made.push(Made { tid, xstate });
        let st = wait_until(tid, Instant::now() + NEW_THREAD_STOP)
            .map_err(terr(format!("waiting for new thread {tid}")))?
            .ok_or_else(|| Error::Thaw(format!("new thread {tid} did not stop")))?;
        if !libc::WIFSTOPPED(st) {
            return Err(Error::Thaw(format!(
                "new thread {tid} did not stop as expected ({st:#x})"
            )));
        }
        set_own_state(b, t, tid, img)?;
        if tid != t.tid && t.clear_child_tid != 0 {
            // glibc caches the TID in struct pthread, where clear_child_tid points
            let mut v = [0u8; 4];
            if read_mem(pid, &mut v, &[(t.clear_child_tid, 4)]).is_ok()
                && i32::from_ne_bytes(v) == t.tid
            {
                write_mem(pid, &tid.to_ne_bytes(), &[(t.clear_child_tid, 4)])
                    .map_err(terr(format!("patching the cached TID of thread {tid}")))?;
            }
        }
    }
    Ok(made)
}

/// clone3 of one thread from the main thread; its new TID. With `old_tid`, the old TID is
/// asked for (set_tid) and a new one taken when that is not free or not allowed.
fn clone_thread(b: &mut Builder, t: &ThreadImage, old_tid: bool) -> Result<pid_t> {
    let mut flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    if t.clear_child_tid != 0 {
        flags |= libc::CLONE_CHILD_CLEARTID as u64;
    }
    for want_tid in [old_tid, false] {
        b.data_off = 0;
        let set_tid = if want_tid {
            b.data(&(t.tid as u64).to_ne_bytes())?
        } else {
            0
        };
        // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack,
        // stack_size, tls, set_tid, set_tid_size, cgroup. No stack: the thread never runs
        // before its registers are set.
        let args: [u64; 11] = [
            flags,
            0,
            t.clear_child_tid,
            0,
            0,
            0,
            0,
            0,
            set_tid,
            want_tid as u64,
            0,
        ];
        let mut bytes = Vec::with_capacity(88);
        for w in args {
            bytes.extend_from_slice(&w.to_ne_bytes());
        }
        let p = b.data(&bytes)?;
        let r =
            b.t.syscall_raw(libc::SYS_clone3, &[p, 88])
                .map_err(terr("clone3 of a thread"))?;
        b.data_off = 0;
        match r {
            r if r > 0 => return Ok(r as pid_t),
            r if want_tid && (r == -(libc::EEXIST as i64) || r == -(libc::EPERM as i64)) => {
                continue;
            }
            r => {
                return Err(terr(format!("clone3 of thread {}", t.tid))(
                    crate::error::from_neg(r.min(-1)),
                ));
            }
        }
    }
    unreachable!("the second pass never asks for a TID")
}

/// Injects into the new thread `tid` (stopped before its first instruction) the calls that set
/// its own state, with the credentials of the main thread last.
fn set_own_state(b: &mut Builder, t: &ThreadImage, tid: pid_t, img: &ProcessImage) -> Result<()> {
    b.data_off = 0;
    let mut calls: Vec<(i64, [u64; 6], &str)> = Vec::new();
    let mut c = |nr: i64, a: &[u64], what: &'static str| {
        let mut w = [0u64; 6];
        w[..a.len()].copy_from_slice(a);
        calls.push((nr, w, what));
    };
    if t.robust_list.0 != 0 {
        c(
            libc::SYS_set_robust_list,
            &[t.robust_list.0, t.robust_list.1],
            "set_robust_list",
        );
    }
    let mut s = Vec::with_capacity(24);
    s.extend_from_slice(&t.altstack.0.to_ne_bytes());
    s.extend_from_slice(&(t.altstack.1 & !(libc::SS_ONSTACK as u32)).to_ne_bytes());
    s.extend_from_slice(&[0u8; 4]);
    s.extend_from_slice(&t.altstack.2.to_ne_bytes());
    let p = b.data(&s)?;
    c(libc::SYS_sigaltstack, &[p, 0], "sigaltstack");
    let mut name = t.comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let p = b.data(&name)?;
    c(
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, p],
        "prctl(PR_SET_NAME)",
    );
    if img.no_new_privs {
        c(
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
            "prctl(PR_SET_NO_NEW_PRIVS)",
        );
    }
    // its own pending signals, queued by itself: the kernel lets only the thread itself queue
    // one that tgkill or kill sent (si_code SI_TKILL or >= 0; Go preempts with tgkill)
    for info in &t.pending {
        let sig = i32::from_ne_bytes(info[..4].try_into().unwrap()) as u64;
        let p = b.data(info)?;
        c(
            libc::SYS_rt_tgsigqueueinfo,
            &[b.t.pid as u64, tid as u64, sig, p],
            "rt_tgsigqueueinfo of its pending signal",
        );
    }
    let cr = &img.creds;
    let mut gs = Vec::new();
    for g in &cr.groups {
        gs.extend_from_slice(&g.to_ne_bytes());
    }
    let p = b.data(&gs)?;
    c(
        libc::SYS_setgroups,
        &[cr.groups.len() as u64, p],
        "setgroups",
    );
    c(
        libc::SYS_setresgid,
        &[cr.gid[0] as u64, cr.gid[1] as u64, cr.gid[2] as u64],
        "setresgid",
    );
    c(
        libc::SYS_setresuid,
        &[cr.uid[0] as u64, cr.uid[1] as u64, cr.uid[2] as u64],
        "setresuid",
    );
    if let Some((p, l, s)) = t.rseq {
        c(libc::SYS_rseq, &[p, l as u64, 0, s as u64], "rseq");
    }
    let base = getregs(tid).map_err(terr(format!("PTRACE_GETREGS of new thread {tid}")))?;
    let mut tr = Tracee::new(tid, b.tramp + GADGET_AT, base);
    tr.int3 = true;
    tr.call_timeout = b.t.call_timeout;
    let list: Vec<(i64, [u64; 6])> = calls.iter().map(|c| (c.0, c.1)).collect();
    let r = tr
        .batch(b.tramp + CODE_AT, b.tramp + OUT_AT, &list)
        .map_err(terr(format!("injected system calls in new thread {tid}")))?;
    b.data_off = 0;
    for (c, v) in calls.iter().zip(r) {
        if (-4095..0).contains(&v) {
            return Err(terr(format!("{} in new thread {tid}", c.2))(
                crate::error::from_neg(v),
            ));
        }
    }
    if !tr.stashed.is_empty() {
        return Err(Error::Thaw(format!(
            "new thread {tid} got a signal while it was being built"
        )));
    }
    Ok(())
}

/// Sets each thread's registers, FPU state and signal mask, and lets it go.
pub(super) fn let_go(img: &ProcessImage, made: &[Made]) -> Result<()> {
    for (t, m) in img.threads.iter().zip(made) {
        let what = |w: &str| format!("{w} of thread {}", m.tid);
        setregs(m.tid, &regs_from_slice(&t.regs)).map_err(terr(what("PTRACE_SETREGS")))?;
        set_xstate(m.tid, &m.xstate).map_err(|e| Error::TargetUnfit {
            reason: format!(
                "this CPU cannot take the frozen FPU/vector state of a thread ({e}); nodes need the same CPU features"
            ),
        })?;
        set_sigmask(m.tid, t.sigmask).map_err(terr(what("PTRACE_SETSIGMASK")))?;
    }
    for m in made {
        ptrace_req(Req::Detach, m.tid, 0)
            .map_err(terr(format!("PTRACE_DETACH of thread {}", m.tid)))?;
    }
    Ok(())
}
