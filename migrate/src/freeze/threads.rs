//! The threads of a process being frozen, other than its main thread: every one seized and
//! stopped (new ones that appear meanwhile too), each one's own state read (registers with
//! fs/gs base, xsave area, signal mask and private pending signals, rseq, robust list,
//! sigaltstack and clear_child_tid by injected calls, name), and each put back on release.
//!
//! Refused (before anything is written): a thread whose credentials, capabilities,
//! no_new_privs or seccomp mode differ from the main thread's (thaw gives every thread the
//! main thread's), and a thread with child processes of its own.

use super::{Held, ferr, restart_fixup, unsup};
use crate::error::{Error, Result};
use crate::image::ThreadImage;
use crate::procfs::status_field;
use crate::sys::*;
use libc::pid_t;
use std::io;
use std::time::Instant;

/// One seized thread (not the main one), as its tracer thread holds it.
pub(crate) struct HeldThread {
    pub(crate) tid: pid_t,
    /// Set while injected calls run in it: what to put back.
    pub(crate) orig_regs: Option<libc::user_regs_struct>,
    pub(crate) orig_mask: Option<u64>,
    /// Signals that arrived for it while it was held (re-sent on release, in the image else).
    pub(crate) stashed: Vec<Vec<u8>>,
}

impl HeldThread {
    /// Puts the thread back as it was and detaches it (also when it was never stopped).
    pub(crate) fn release(&mut self, pid: pid_t) {
        if let Some(mut r) = self.orig_regs.take() {
            restart_fixup(&mut r, false);
            let _ = setregs(self.tid, &r);
        }
        if let Some(m) = self.orig_mask.take() {
            let _ = set_sigmask(self.tid, m);
        }
        let _ = ptrace_req(Req::Detach, self.tid, 0);
        for info in self.stashed.drain(..) {
            let sig = i32::from_ne_bytes(info[..4].try_into().unwrap());
            // SAFETY: plain tgkill to a thread of the process we hold.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, self.tid, sig) };
        }
    }
}

/// The TIDs of `pid`'s threads, ascending.
pub(crate) fn task_ids(pid: pid_t) -> io::Result<Vec<pid_t>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let name = e?.file_name();
        let tid = name
            .to_str()
            .and_then(|s| s.parse::<pid_t>().ok())
            .ok_or_else(|| io::Error::other(format!("odd entry {name:?} in /proc/{pid}/task")))?;
        v.push(tid);
    }
    v.sort_unstable();
    Ok(v)
}

/// On the tracer thread, the main thread already stopped: seizes and stops every other
/// thread, again and again until no thread is left running (a running thread may create
/// threads meanwhile; those are auto-attached by PTRACE_O_TRACECLONE or found on the next
/// pass). A thread that does not stop by `deadline` gives [`Error::Stuck`]; one that exits
/// meanwhile is dropped.
pub(super) fn stop_threads(g: &mut Held, pid: pid_t, deadline: Instant) -> Result<()> {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() }.to_string();
    loop {
        let tids = task_ids(pid).map_err(ferr(pid, "listing its threads"))?;
        let new: Vec<pid_t> = tids
            .into_iter()
            .filter(|&t| t != pid && !g.threads.iter().any(|h| h.tid == t))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        for tid in new {
            let opts = (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACECLONE) as usize;
            match ptrace_req(Req::Seize, tid, opts) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue, // it exited
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    // auto-attached already when the thread that created it was ours
                    let st = read_to_string(&format!("/proc/{pid}/task/{tid}/status"))
                        .unwrap_or_default();
                    if status_field(&st, "TracerPid") != Some(me.as_str()) {
                        return Err(unsup(
                            pid,
                            format!("not permitted to trace its thread {tid}"),
                        ));
                    }
                }
                Err(e) => return Err(ferr(pid, format!("PTRACE_SEIZE of thread {tid}"))(e)),
            }
            g.threads.push(HeldThread {
                tid,
                orig_regs: None,
                orig_mask: None,
                stashed: Vec::new(),
            });
            let _ = ptrace_req(Req::Interrupt, tid, 0);
            loop {
                let Some(st) = wait_until(tid, deadline)
                    .map_err(ferr(pid, format!("waiting for thread {tid} to stop")))?
                else {
                    return Err(Error::Stuck {
                        pid,
                        waited: super::DEFAULT_STOP_TIMEOUT,
                    });
                };
                if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                    g.threads.retain(|h| h.tid != tid);
                    break;
                }
                if !libc::WIFSTOPPED(st) {
                    continue;
                }
                let event = st >> 16;
                if event == libc::PTRACE_EVENT_STOP {
                    break;
                }
                if event == 0 {
                    // a signal on its way to the thread: kept, delivered later
                    let info = getsiginfo(tid).map_err(ferr(pid, "PTRACE_GETSIGINFO"))?;
                    if let Some(h) = g.threads.iter_mut().find(|h| h.tid == tid) {
                        h.stashed.push(info);
                    }
                }
                // an event (a clone in progress) or a kept signal: on to the interrupt stop
                ptrace_req(Req::Cont, tid, 0).map_err(ferr(pid, "PTRACE_CONT"))?;
            }
        }
    }
}

/// Lines of /proc/PID/task/TID/status that must be the same in every thread: thaw gives each
/// thread the main thread's.
const SAME_IN_EVERY_THREAD: &[&str] = &[
    "Uid",
    "Gid",
    "Groups",
    "NoNewPrivs",
    "Seccomp",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
];

/// On the tracer thread, with every thread stopped: checks the thread set and reads each
/// thread's state. `gadget` is a syscall instruction and `scratch` the injected scratch area of
/// [`super::collect`] (the layout of its first 16 KiB is shared: the code at 4096, results at
/// 12288, sigaltstack at 2048, tid address at 2080). Each thread's registers and mask are put
/// back as soon as its calls are done.
pub(super) fn collect_threads(
    g: &mut Held,
    pid: pid_t,
    main_status: &str,
    gadget: u64,
    scratch: u64,
) -> Result<Vec<ThreadImage>> {
    // fails closed: every thread must be one we hold, stopped
    let tids = task_ids(pid).map_err(ferr(pid, "listing its threads"))?;
    let mut held: Vec<pid_t> = g.threads.iter().map(|h| h.tid).collect();
    held.push(pid);
    held.sort_unstable();
    if tids != held {
        return Err(unsup(
            pid,
            format!("its threads changed while it was being stopped (now {tids:?}, held {held:?})"),
        ));
    }
    g.threads.sort_by_key(|h| h.tid);
    let mut out = Vec::with_capacity(g.threads.len());
    for h in g.threads.iter_mut() {
        let tid = h.tid;
        let status = read_to_string(&format!("/proc/{pid}/task/{tid}/status"))
            .map_err(ferr(pid, format!("reading the status of thread {tid}")))?;
        for k in SAME_IN_EVERY_THREAD {
            let (a, b) = (status_field(main_status, k), status_field(&status, k));
            if a.is_none() || a != b {
                return Err(unsup(
                    pid,
                    format!(
                        "its thread {tid} has {k} {} where the main thread has {} (threads with their own credentials are not supported)",
                        b.unwrap_or("(unreadable)"),
                        a.unwrap_or("(unreadable)")
                    ),
                ));
            }
        }
        let kids = read_to_string(&format!("/proc/{pid}/task/{tid}/children"))
            .map_err(ferr(pid, format!("reading the children of thread {tid}")))?;
        if !kids.trim().is_empty() {
            return Err(unsup(
                pid,
                format!(
                    "its thread {tid} has child processes ({}) (child processes are not supported yet)",
                    kids.trim()
                ),
            ));
        }
        let comm = read_to_string(&format!("/proc/{pid}/task/{tid}/comm"))
            .map_err(ferr(pid, format!("reading the name of thread {tid}")))?
            .trim_end_matches('\n')
            .to_string();
        let what = |w: &str| format!("{w} of thread {tid}");
        let regs = getregs(tid).map_err(ferr(pid, what("PTRACE_GETREGS")))?;
        let xstate = get_xstate(tid).map_err(ferr(pid, what("reading the xsave area")))?;
        let sigmask = get_sigmask(tid).map_err(ferr(pid, what("PTRACE_GETSIGMASK")))?;
        let rseq = get_rseq(tid).map_err(ferr(pid, what("PTRACE_GET_RSEQ_CONFIGURATION")))?;
        let mut pending =
            peek_siginfo(tid, false).map_err(ferr(pid, what("PTRACE_PEEKSIGINFO")))?;
        let mut robust = (0u64, 0u64);
        // SAFETY: get_robust_list writes two words.
        if unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut robust.0, &mut robust.1) }
            != 0
        {
            return Err(ferr(pid, what("get_robust_list"))(
                io::Error::last_os_error(),
            ));
        }

        // sigaltstack and clear_child_tid: only the thread itself can tell
        h.orig_regs = Some(regs);
        h.orig_mask = Some(sigmask);
        set_sigmask(tid, !0u64).map_err(ferr(pid, what("PTRACE_SETSIGMASK")))?;
        let mut t = Tracee::new(tid, gadget, regs);
        let calls = [
            (libc::SYS_sigaltstack, [0, scratch + 2048, 0, 0, 0, 0]),
            (
                libc::SYS_prctl,
                [libc::PR_GET_TID_ADDRESS as u64, scratch + 2080, 0, 0, 0, 0],
            ),
        ];
        let r = t
            .batch(scratch + 4096, scratch + 12288, &calls)
            .map_err(ferr(pid, what("injected system calls")))?;
        if let Some(e) = r.iter().find(|&&v| (-4095..0).contains(&v)) {
            return Err(ferr(pid, what("injected system call"))(
                crate::error::from_neg(*e),
            ));
        }
        let mut b = [0u8; 40];
        read_mem(pid, &mut b, &[(scratch + 2048, 40)])
            .map_err(ferr(pid, what("reading injected results")))?;
        let w = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        let altstack = (
            w(0),
            u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            w(16),
        );
        let ctid = w(32);
        // put it back now (see collect)
        h.stashed.append(&mut t.stashed);
        let mut back = regs;
        restart_fixup(&mut back, false);
        setregs(tid, &back).map_err(ferr(pid, what("PTRACE_SETREGS")))?;
        h.orig_regs = None;
        set_sigmask(tid, sigmask).map_err(ferr(pid, what("PTRACE_SETSIGMASK")))?;
        h.orig_mask = None;

        let mut img_regs = regs;
        restart_fixup(&mut img_regs, true);
        pending.extend(h.stashed.iter().cloned());
        out.push(ThreadImage {
            tid,
            comm,
            regs: regs_to_vec(&img_regs),
            xstate,
            sigmask,
            rseq,
            altstack,
            clear_child_tid: ctid,
            robust_list: robust,
            pending,
        });
    }
    Ok(out)
}
