//! Parking: from a held seized process to a parked shell (drain its signals, SIG_DFL
//! everywhere, no core, no rseq / clear_child_tid / robust list, every mapping gone but the
//! vDSO areas and argv/env), taking the parked shell out for a thaw into it, and parking it
//! again after such a thaw failed half-way.

use crate::error::{Error, Result, from_neg};
use crate::freeze::Held;
use crate::image::PAGE;
use crate::procfs::*;
use crate::sys::*;
use crate::tracer::Slot;
use libc::pid_t;
use std::collections::VecDeque;
use std::time::Instant;

use super::{BATCH, SCRATCH, Shell, ShellEvent, State, WORK_TIMEOUT, serr, sio, tio};

/// On the tracer thread: from a held seized process to a parked shell.
pub(super) fn park(slot: &mut Slot, pid: pid_t) -> Result<()> {
    let Some(mut held) = slot.take::<Held>() else {
        return Err(serr(pid, "the process is not held"));
    };
    // --- steps that change nothing: on failure P is put back (Held's drop)
    let maps = read_to_string(&format!("/proc/{pid}/maps"))
        .map_err(sio(pid, "reading maps"))
        .and_then(|m| parse_maps(&m).map_err(sio(pid, "parsing maps")))?;
    let vdso = maps
        .iter()
        .find(|m| m.name == "[vdso]")
        .ok_or_else(|| serr(pid, "it has no vDSO to park in"))?;
    let mut code = vec![0u8; (vdso.end - vdso.start) as usize];
    let n = code.len() as u64;
    read_mem(pid, &mut code, &[(vdso.start, n)]).map_err(sio(pid, "reading its vDSO"))?;
    let gadget = vdso.start
        + code
            .windows(2)
            .position(|w| w == [0x0f, 0x05])
            .ok_or_else(|| serr(pid, "no syscall instruction in its vDSO"))? as u64;
    let stat = read_to_string(&format!("/proc/{pid}/stat")).map_err(sio(pid, "reading stat"))?;
    let stat = stat_fields(&stat).map_err(sio(pid, "parsing stat"))?;
    let (arg_start, env_end) = (field_u64(&stat, 48), field_u64(&stat, 51));
    let keep_args = (arg_start & !(PAGE - 1), (env_end + PAGE - 1) & !(PAGE - 1));
    let rseq = get_rseq(pid).map_err(sio(pid, "PTRACE_GET_RSEQ_CONFIGURATION"))?;
    let regs = getregs(pid).map_err(sio(pid, "PTRACE_GETREGS"))?;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let parent_is_us = read_to_string(&format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| status_field(&st, "PPid").and_then(|v| v.parse::<i32>().ok()))
        == Some(me);
    ptrace_req(
        Req::SetOptions,
        pid,
        (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL) as usize,
    )
    .map_err(sio(pid, "PTRACE_SETOPTIONS"))?;

    // The other threads' rseq areas go with the trim: unregistered first (the kernel would
    // fault on them when a thread runs to its exit), registered again if the trim is undone.
    let tids: Vec<pid_t> = held.threads.iter().map(|t| t.tid).collect();
    let unregistered = match thread_rseq(pid, gadget, &tids, None) {
        Ok(v) => v,
        Err((done, e)) => {
            let _ = thread_rseq(pid, gadget, &tids, Some(&done));
            let _ = ptrace_req(Req::SetOptions, pid, libc::PTRACE_O_TRACESYSGOOD as usize);
            slot.set(held);
            return Err(e);
        }
    };
    let queued = std::mem::take(&mut held.queued);
    let trimmed = trim(pid, gadget, regs, &maps, keep_args, rseq, &queued);
    if let Err(Trim::Undone(_)) = &trimmed {
        let _ = thread_rseq(pid, gadget, &tids, Some(&unregistered));
    }
    match trimmed {
        Ok(()) => {
            // P now belongs to the shell: nothing to put back
            held.active = false;
            let threads: Vec<pid_t> = held.threads.drain(..).map(|t| t.tid).collect();
            drop(held);
            // its other threads have nothing left to run (their image left with P's): each
            // one is made to exit; the shell is the main thread alone
            if let Err(e) = end_threads(pid, gadget, &threads) {
                // SAFETY: plain kill of our tracee, already taken apart.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return Err(e);
            }
        }
        Err(Trim::Undone(e)) => {
            // nothing of P was taken apart: put it back (the held process is released when
            // the tracer thread ends) and let it run on
            let _ = ptrace_req(Req::SetOptions, pid, libc::PTRACE_O_TRACESYSGOOD as usize);
            slot.set(held);
            return Err(e);
        }
        Err(Trim::Broken(e)) => {
            // half taken apart: it must not run (its image is with the caller)
            held.active = false;
            drop(held);
            // SAFETY: plain kill of our tracee.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(e);
        }
    }
    let mut parked = regs;
    parked.rip = gadget;
    parked.rax = libc::SYS_pause as u64;
    parked.orig_rax = u64::MAX;
    let mut sh = Shell {
        pid,
        gadget,
        parked,
        scratch: None,
        state: State::Stopped,
        pending: VecDeque::new(),
        parent_is_us,
        call_timeout: WORK_TIMEOUT,
        _not_send: std::marker::PhantomData,
    };
    if let Err(e) = sh.repark() {
        // SAFETY: plain kill of our tracee.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return Err(e);
    }
    slot.set(sh);
    Ok(())
}

/// How a trim failed: before anything of P was changed for good (undone), or after.
/// On the tracer thread, P trimmed: makes each of `tids` (seized and stopped threads of P,
/// not the main one) run `exit(0)` at the `syscall` instruction `gadget` (in the vDSO, which the
/// trim keeps), and reaps it, within [`WORK_TIMEOUT`]. Signals it gets meanwhile are dropped.
fn end_threads(pid: pid_t, gadget: u64, tids: &[pid_t]) -> Result<()> {
    let deadline = Instant::now() + WORK_TIMEOUT;
    for &tid in tids {
        let mut r = match getregs(tid) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue, // gone already
            Err(e) => return Err(tio(pid, format!("PTRACE_GETREGS of thread {tid}"))(e)),
        };
        r.rip = gadget;
        r.rax = libc::SYS_exit as u64;
        r.orig_rax = u64::MAX;
        r.rdi = 0;
        setregs(tid, &r).map_err(tio(pid, format!("PTRACE_SETREGS of thread {tid}")))?;
        ptrace_req(Req::Cont, tid, 0).map_err(tio(pid, format!("PTRACE_CONT of thread {tid}")))?;
        loop {
            let st = wait_until(tid, deadline)
                .map_err(tio(pid, format!("waiting for thread {tid} to exit")))?
                .ok_or_else(|| serr(pid, format!("thread {tid} did not exit in time")))?;
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                break;
            }
            // a signal-delivery stop or an event: dropped, on to the exit
            ptrace_req(Req::Cont, tid, 0)
                .map_err(tio(pid, format!("PTRACE_CONT of thread {tid}")))?;
        }
    }
    Ok(())
}

/// rseq of each thread in `tids` (stopped threads of P, not the main one) by a call injected
/// at `gadget`, its registers put back after: `again: None` unregisters each registered one
/// and returns them; `Some(list)` registers those of `list` again. On error: what was done.
#[allow(clippy::type_complexity)]
fn thread_rseq(
    pid: pid_t,
    gadget: u64,
    tids: &[pid_t],
    again: Option<&[(pid_t, (u64, u32, u32))]>,
) -> std::result::Result<Vec<(pid_t, (u64, u32, u32))>, (Vec<(pid_t, (u64, u32, u32))>, Error)> {
    let mut done = Vec::new();
    let todo: Vec<(pid_t, Option<(u64, u32, u32)>)> = match again {
        Some(list) => list.iter().map(|&(t, r)| (t, Some(r))).collect(),
        None => tids.iter().map(|&t| (t, None)).collect(),
    };
    for (tid, known) in todo {
        let conf = match known {
            Some(c) => Some(c),
            None => match get_rseq(tid) {
                Ok(c) => c,
                Err(e) => return Err((done, tio(pid, format!("rseq of thread {tid}"))(e))),
            },
        };
        let Some((p, l, sig)) = conf.filter(|c| c.0 != 0) else {
            continue;
        };
        let regs = match getregs(tid) {
            Ok(r) => r,
            Err(e) => return Err((done, tio(pid, format!("PTRACE_GETREGS of thread {tid}"))(e))),
        };
        let mut t = Tracee::new(tid, gadget, regs);
        t.call_timeout = Some(WORK_TIMEOUT);
        let flags = if again.is_some() { 0 } else { 1 }; // RSEQ_FLAG_UNREGISTER
        let r = t.syscall(libc::SYS_rseq, &[p, l as u64, flags, sig as u64]);
        let put_back = setregs(tid, &regs);
        if let Err(e) = r.and(put_back) {
            return Err((done, tio(pid, format!("rseq in thread {tid}"))(e)));
        }
        done.push((tid, (p, l, sig)));
    }
    Ok(done)
}

enum Trim {
    Undone(Error),
    Broken(Error),
}

/// Offsets in the scratch area of a zeroed `rlimit64` (RLIMIT_CORE 0) and of the old core limit.
const NO_CORE: u64 = 256;
const OLD_CORE: u64 = 384;

/// Neutralise and trim: drain the signals the image took, SIG_DFL everywhere, no core, no
/// rseq / clear_child_tid / robust list, every mapping gone but the vDSO areas and argv/env.
/// Everything before the one batch that does the real work is undone on failure.
fn trim(
    pid: pid_t,
    gadget: u64,
    regs: libc::user_regs_struct,
    maps: &[MapsLine],
    keep_args: (u64, u64),
    rseq: Option<(u64, u32, u32)>,
    queued: &[i32],
) -> Result<(), Trim> {
    let mask = get_sigmask(pid).map_err(|e| Trim::Undone(sio(pid, "PTRACE_GETSIGMASK")(e)))?;
    let mut t = Tracee::new(pid, gadget, regs);
    t.call_timeout = Some(WORK_TIMEOUT);
    let mut scratch = None;
    let mut core_lowered = false;
    let prep = prepare(
        &mut t,
        maps,
        keep_args,
        rseq,
        queued,
        &mut scratch,
        &mut core_lowered,
    );
    let (scratch, calls, checked_from) = match prep {
        Ok(v) => v,
        Err(e) => {
            // put back what prepare changed: the limit, the scratch mapping, mask, registers
            if let Some(s) = scratch {
                if core_lowered {
                    // the old limit is still at OLD_CORE in the scratch area
                    let _ = t.syscall(
                        libc::SYS_prlimit64,
                        &[0, libc::RLIMIT_CORE as u64, s + OLD_CORE, 0],
                    );
                }
                let _ = t.syscall_exit_stop(libc::SYS_munmap, &[s, SCRATCH]);
            }
            let _ = set_sigmask(pid, mask);
            let _ = setregs(pid, &regs);
            return Err(Trim::Undone(e));
        }
    };
    // --- from here on P is taken apart
    let broken = Trim::Broken;
    let mut out = Vec::with_capacity(calls.len());
    for chunk in calls.chunks(BATCH) {
        out.extend(
            t.batch(scratch + 16384, scratch + 8192, chunk)
                .map_err(|e| broken(sio(pid, "injected calls")(e)))?,
        );
    }
    // every rt_sigaction, rseq/tid/robust-list call and munmap must have succeeded
    for (i, r) in out.iter().enumerate().skip(checked_from) {
        if (-4095..0).contains(r) {
            return Err(broken(serr(
                pid,
                format!(
                    "injected call {} (nr {}) failed: {}",
                    i,
                    calls[i].0,
                    from_neg(*r)
                ),
            )));
        }
    }
    let r = t
        .syscall_exit_stop(libc::SYS_munmap, &[scratch, SCRATCH])
        .map_err(|e| broken(sio(pid, "munmap of the scratch area")(e)))?;
    if r != 0 {
        return Err(broken(sio(pid, "munmap of the scratch area")(from_neg(r))));
    }
    // signals stashed meanwhile arrived after the image was taken: queue them again
    for info in t.stashed.drain(..) {
        let sig = i32::from_ne_bytes(info[..4].try_into().unwrap());
        // SAFETY: plain kill of our tracee.
        unsafe { libc::kill(pid, sig) };
    }
    set_sigmask(pid, 0).map_err(|e| broken(sio(pid, "PTRACE_SETSIGMASK")(e)))?;
    tracing::debug!(pid, calls = calls.len(), "home shell trimmed");
    Ok(())
}

/// The reversible part of the trim: RLIMIT_CORE 0, all signals blocked, a scratch area with the
/// drain sets; returns the scratch address, the calls of the batch, and from which call on
/// every result must be a success.
#[allow(clippy::type_complexity)]
fn prepare(
    t: &mut Tracee,
    maps: &[MapsLine],
    keep_args: (u64, u64),
    rseq: Option<(u64, u32, u32)>,
    queued: &[i32],
    scratch_out: &mut Option<u64>,
    core_lowered: &mut bool,
) -> Result<(u64, Vec<(i64, [u64; 6])>, usize)> {
    let pid = t.pid;
    // nothing is delivered while we work
    set_sigmask(pid, !0).map_err(sio(pid, "PTRACE_SETSIGMASK"))?;
    let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let scratch = t
        .syscall(
            libc::SYS_mmap,
            &[
                0,
                SCRATCH,
                rwx,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .map_err(sio(pid, "mmap of a scratch area"))?;
    *scratch_out = Some(scratch);
    // RLIMIT_CORE 0, set by P itself: lowering its own limit needs no privilege, while
    // prlimit(2) on another user's process needs CAP_SYS_RESOURCE, which root may lack (as on
    // the VMs this was built on). NO_CORE is still zero (fresh mapping); OLD_CORE gets the old
    // limit, for the undo. Only the soft limit goes to 0: the hard one stays, so the process
    // can have its old limit back when it comes home (raising a hard limit needs
    // CAP_SYS_RESOURCE).
    t.syscall(
        libc::SYS_prlimit64,
        &[0, libc::RLIMIT_CORE as u64, 0, scratch + OLD_CORE],
    )
    .map_err(sio(pid, "prlimit(RLIMIT_CORE) in the process"))?;
    let mut old = [0u8; 16];
    read_mem(pid, &mut old, &[(scratch + OLD_CORE, 16)])
        .map_err(sio(pid, "reading the core limit"))?;
    let mut soft0 = [0u8; 16];
    soft0[8..].copy_from_slice(&old[8..]);
    write_mem(pid, &soft0, &[(scratch + NO_CORE, 16)])
        .map_err(sio(pid, "writing the core limit"))?;
    t.syscall(
        libc::SYS_prlimit64,
        &[0, libc::RLIMIT_CORE as u64, scratch + NO_CORE, 0],
    )
    .map_err(sio(pid, "prlimit(RLIMIT_CORE, 0) in the process"))?;
    *core_lowered = true;
    // scratch: 0 a zeroed sigaction (SIG_DFL), 256 a zero rlimit, 384 the old core limit, 512 a
    // zero timespec, 1024.. one sigset per
    // drained signal, 8192 results, 16384 code
    let mut calls: Vec<(i64, [u64; 6])> = Vec::new();
    let mut sets = Vec::new();
    // one sigset (8 bytes) per drained signal between 1 and 8 KiB
    for &sig in queued.iter().take(800) {
        if !(1..=64).contains(&sig) {
            continue;
        }
        let set = scratch + 1024 + sets.len() as u64;
        sets.extend_from_slice(&(1u64 << (sig - 1)).to_ne_bytes());
        calls.push((libc::SYS_rt_sigtimedwait, [set, 0, scratch + 512, 8, 0, 0]));
    }
    if !sets.is_empty() {
        let n = sets.len() as u64;
        write_mem(pid, &sets, &[(scratch + 1024, n)]).map_err(sio(pid, "writing sigsets"))?;
    }
    let checked_from = calls.len();
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        calls.push((libc::SYS_rt_sigaction, [sig, scratch, 0, 8, 0, 0]));
    }
    if let Some((p, l, s)) = rseq {
        calls.push((libc::SYS_rseq, [p, l as u64, 1, s as u64, 0, 0]));
    }
    calls.push((libc::SYS_set_tid_address, [0; 6]));
    calls.push((libc::SYS_set_robust_list, [0, 24, 0, 0, 0, 0]));
    let keep_names = ["[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"];
    for m in maps {
        if keep_names.contains(&m.name.as_str()) {
            continue;
        }
        for (s, e) in minus((m.start, m.end), &[keep_args, (scratch, scratch + SCRATCH)]) {
            calls.push((libc::SYS_munmap, [s, e - s, 0, 0, 0, 0]));
        }
    }
    Ok((scratch, calls, checked_from))
}

/// `range` minus the `holes`, as sorted non-empty ranges.
fn minus(range: (u64, u64), holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![range];
    for &(hs, he) in holes {
        let mut next = Vec::new();
        for (s, e) in out {
            if he <= s || hs >= e {
                next.push((s, e));
                continue;
            }
            if hs > s {
                next.push((s, hs));
            }
            if he < e {
                next.push((he, e));
            }
        }
        out = next;
    }
    out
}

/// On the tracer thread: the parked shell taken out of the slot, stopped for work, for a thaw
/// into it. On failure it stays in the slot as it was.
pub(crate) fn take_stopped(slot: &mut Slot, pid: pid_t) -> Result<Shell> {
    let Some(sh) = slot.get::<Shell>() else {
        return Err(serr(pid, "the shell is gone"));
    };
    sh.stop_for_work()?;
    if sh.state != State::Stopped {
        return Err(serr(
            pid,
            "it is stopped by job control at home; continue it (fg/bg) first",
        ));
    }
    Ok(slot.take::<Shell>().expect("just seen"))
}

impl Shell {
    /// The `syscall` instruction of its vDSO and the registers that park it.
    pub(crate) fn parking(&self) -> (u64, libc::user_regs_struct) {
        (self.gadget, self.parked)
    }

    /// Signals that reached P while it was worked on (already suppressed).
    pub(crate) fn take_signals(&mut self) -> Vec<i32> {
        self.pending
            .drain(..)
            .filter_map(|e| match e {
                ShellEvent::Signal { info, .. } => Some(info.signo),
                _ => None,
            })
            .collect()
    }
}

/// On the tracer thread, after a thaw into the shell failed half-way: every mapping but the
/// vDSO areas is unmapped again (the argv/env page too: `ps` then shows `[comm]`) and P is
/// parked as before, back in the slot. If even that fails, P is killed (a half-built process
/// must never run; the process lives on where the image came from) and the error says so.
pub(crate) fn restore_parked(slot: &mut Slot, mut sh: Shell) -> Result<()> {
    let pid = sh.pid;
    let r = (|| {
        let maps = read_to_string(&format!("/proc/{pid}/maps"))
            .map_err(sio(pid, "reading maps"))
            .and_then(|m| parse_maps(&m).map_err(sio(pid, "parsing maps")))?;
        let keep_names = ["[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]"];
        let mut keep: Vec<(u64, u64)> = maps
            .iter()
            .filter(|m| keep_names.contains(&m.name.as_str()))
            .map(|m| (m.start, m.end))
            .collect();
        keep.sort();
        if !keep.iter().any(|&(s, e)| s <= sh.gadget && sh.gadget < e) {
            return Err(serr(pid, "its vDSO is gone"));
        }
        let mut t = Tracee::new(pid, sh.gadget, sh.parked);
        t.call_timeout = Some(WORK_TIMEOUT);
        let mut cur = 0u64;
        const TASK_SIZE: u64 = 0x7fff_ffff_f000;
        for &(s, e) in keep.iter().chain(std::iter::once(&(TASK_SIZE, TASK_SIZE))) {
            if s > cur && cur < TASK_SIZE {
                let r = t
                    .syscall_raw(libc::SYS_munmap, &[cur, s.min(TASK_SIZE) - cur])
                    .map_err(sio(pid, "munmap"))?;
                if r < 0 {
                    return Err(sio(pid, "munmap")(from_neg(r)));
                }
            }
            cur = cur.max(e);
        }
        sh.scratch = None;
        sh.repark()
    })();
    match r {
        Ok(()) => {
            slot.set(sh);
            Ok(())
        }
        Err(e) => {
            // SAFETY: plain kill of our tracee.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(serr(
                pid,
                format!("it could not be parked again after a failed thaw ({e}); it was killed"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_cuts_holes() {
        assert_eq!(minus((0, 100), &[(10, 20)]), vec![(0, 10), (20, 100)]);
        assert_eq!(minus((0, 100), &[(0, 100)]), vec![]);
        assert_eq!(minus((0, 100), &[(200, 300), (90, 120)]), vec![(0, 90)]);
        assert_eq!(minus((10, 20), &[(0, 15), (18, 30)]), vec![(15, 18)]);
    }
}
