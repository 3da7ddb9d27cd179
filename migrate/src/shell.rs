//! The home shell: the original process kept at home, trimmed and parked, after its image left.
//!
//! After [`crate::Seized::finish`] with [`crate::Ending::ParkAsHomeShell`], the process P keeps
//! its PID, parent, process group, fd table, cwd and credentials, but no user memory: its
//! signals are all SIG_DFL and unblocked, RLIMIT_CORE is 0, rseq / clear_child_tid / the robust
//! list are unregistered, every mapping but [vvar], [vvar_vclock], [vdso] and the argv/env
//! page is gone, and it sleeps in `pause()` run from the `syscall` instruction of its vDSO
//! (a shell *held* in a ptrace stop would only queue signals; see deputy-facts.md).
//!
//! Its tracer thread ([`HomeShell`] drives it) reports what happens to P (signals sent to it,
//! group stops, its end), lets a signal through or suppresses it, mirrors job control with
//! PTRACE_LISTEN, reproduces the end of the moved process (`exit(code)`, death by a signal
//! without a core), and runs system calls in P's own context (forwarded path calls).
//!
//! P is traced with PTRACE_O_EXITKILL: when the [`HomeShell`] is dropped without an ending,
//! the tracer thread ends and the kernel kills P (its image lives on elsewhere).

use crate::error::{Error, Result, errno, from_neg};
use crate::freeze::Held;
use crate::image::PAGE;
use crate::procfs::*;
use crate::sys::*;
use crate::tracer::{NotSend, Slot, Tracer};
use libc::pid_t;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Scratch area mapped into the shell for injected calls with memory arguments.
const SCRATCH: u64 = 64 << 10;
/// Calls per batch of the trim: the code (84 bytes a call) fits between 16 KiB and the end of
/// the scratch area, the results (8 bytes a call) between 8 and 16 KiB.
const BATCH: usize = 500;
/// How long one injected call or one ending may take.
const WORK_TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of a siginfo a deputy decides on, and the raw 128 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigInfo {
    pub signo: i32,
    pub code: i32,
    /// Sender for SI_USER / SI_QUEUE / SI_TKILL (0 otherwise).
    pub pid: i32,
    pub uid: u32,
    pub raw: Vec<u8>,
}

impl SigInfo {
    fn parse(raw: Vec<u8>) -> SigInfo {
        let i = |o: usize| i32::from_ne_bytes(raw[o..o + 4].try_into().unwrap());
        let code = i(8);
        let from_user = code == libc::SI_USER || code == libc::SI_QUEUE || code == libc::SI_TKILL;
        SigInfo {
            signo: i(0),
            code,
            pid: if from_user { i(16) } else { 0 },
            uid: if from_user { i(20) as u32 } else { 0 },
            raw,
        }
    }
    /// Sent by this process (the deputy's own signals, e.g. for job-control mirroring).
    pub fn from_us(&self) -> bool {
        // SAFETY: getpid has no preconditions.
        self.code == libc::SI_USER && self.pid == unsafe { libc::getpid() }
    }
}

/// What happened to the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellEvent {
    /// A signal was sent to P. With `held`, P waits in a signal-delivery-stop until
    /// [`HomeShell::suppress`] or [`HomeShell::deliver`]; without, it arrived while the shell
    /// was worked on and was already suppressed.
    Signal { info: SigInfo, held: bool },
    /// P entered a group stop (SIGSTOP/TSTP/TTIN/TTOU let through); answer with
    /// [`HomeShell::listen`] (stay stopped, as job control expects) or [`HomeShell::resume`].
    GroupStop { signo: i32 },
    /// P is gone: the raw wait status (as from PTRACE_EVENT_EXIT or waitpid).
    Ended { status: i32 },
}

/// One argument of an injected system call.
#[derive(Debug, Clone)]
pub enum ShellArg {
    Val(u64),
    /// Bytes copied into the shell's scratch area; the call gets their address.
    In(Vec<u8>),
    /// A buffer of this many bytes in the scratch area; read back after the call.
    Out(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Parked in pause(), running.
    Running,
    /// In a signal-delivery-stop for this signal.
    HeldSignal(i32),
    /// In a group stop, not yet answered.
    GroupStop,
    /// Group-stopped under PTRACE_LISTEN.
    Listening,
    /// In an interrupt (or syscall) stop we brought about.
    Stopped,
    Ended,
}

/// Thread-side state of a home shell.
pub(crate) struct Shell {
    pid: pid_t,
    gadget: u64,
    /// Registers that park P: rip at the vDSO `syscall`, rax = pause.
    parked: libc::user_regs_struct,
    scratch: Option<u64>,
    state: State,
    pending: VecDeque<ShellEvent>,
    /// We (this process) are P's parent: its end must be left for the parent's own wait.
    parent_is_us: bool,
    /// How long one injected call may block before it is interrupted.
    call_timeout: Duration,
    _not_send: NotSend,
}

/// The home side of a migrated process, driven by its tracer thread. `Send`.
#[derive(Debug)]
pub struct HomeShell {
    tracer: Tracer,
    pid: i32,
}

fn serr(pid: pid_t, what: impl Into<String>) -> Error {
    Error::Shell {
        pid,
        what: what.into(),
    }
}
fn tio(pid: pid_t, what: String) -> impl FnOnce(io::Error) -> Error {
    move |e| serr(pid, format!("{what}: {e}"))
}

fn sio(pid: pid_t, what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |e| serr(pid, format!("{what}: {e}"))
}

impl HomeShell {
    /// Neutralises, trims and parks the seized process held by `tracer` (its image must have
    /// been streamed). A failure before anything of P is taken apart puts it back as it was
    /// (it runs on); a failure once its memory is being unmapped kills it (a half-trimmed
    /// process must not run; its image is with the caller).
    pub(crate) fn park(tracer: Tracer, pid: pid_t) -> Result<HomeShell> {
        tracer.call(move |slot| park(slot, pid))??;
        Ok(HomeShell { tracer, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The tracer, for a thaw into this shell ([`crate::Thawing::into_shell`]).
    pub(crate) fn into_parts(self) -> (Tracer, pid_t) {
        (self.tracer, self.pid)
    }

    /// The shell again, its tracer thread holding a parked [`Shell`].
    pub(crate) fn from_parts(tracer: Tracer, pid: pid_t) -> HomeShell {
        HomeShell { tracer, pid }
    }

    fn on<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Shell) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let pid = self.pid;
        self.tracer
            .call(move |slot: &mut Slot| match slot.get::<Shell>() {
                Some(s) => f(s),
                None => Err(serr(pid, "the shell is gone")),
            })?
    }

    /// The next event, or `None` when nothing happened within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<ShellEvent>> {
        self.on(move |s| s.next_event(Instant::now() + timeout))
    }

    /// Drops the held signal; P goes back to pause().
    pub fn suppress(&mut self) -> Result<()> {
        self.on(|s| s.decide(false))
    }

    /// Lets the held signal through to P (its SIG_DFL action: stop, terminate, ignore).
    pub fn deliver(&mut self) -> Result<()> {
        self.on(|s| s.decide(true))
    }

    /// Answers a group stop with PTRACE_LISTEN: P stays stopped as job control expects, and
    /// its parent sees the stop.
    pub fn listen(&mut self) -> Result<()> {
        self.on(|s| {
            if s.state != State::GroupStop {
                return Err(serr(s.pid, "listen needs a group stop"));
            }
            ptrace_req(Req::Listen, s.pid, 0).map_err(sio(s.pid, "PTRACE_LISTEN"))?;
            s.state = State::Listening;
            Ok(())
        })
    }

    /// Ends a group stop: P runs (parked) again.
    pub fn resume(&mut self) -> Result<()> {
        self.on(|s| {
            if s.state != State::GroupStop {
                return Err(serr(s.pid, "resume needs a group stop"));
            }
            ptrace_req(Req::Cont, s.pid, 0).map_err(sio(s.pid, "PTRACE_CONT"))?;
            s.state = State::Running;
            Ok(())
        })
    }

    /// Runs system call `nr` in P's own context (cwd, root, credentials, fd table). Returns
    /// the raw result (negative errno on failure) and the contents of the `Out` arguments.
    pub fn syscall(&mut self, nr: i64, args: Vec<ShellArg>) -> Result<(i64, Vec<Vec<u8>>)> {
        self.on(move |s| s.syscall(nr, &args))
    }

    /// How long an injected call may block (default 5 s); past it the call is interrupted
    /// (it fails with EINTR in P, so nothing was done) and `syscall` reports a time-out.
    pub fn set_call_timeout(&mut self, t: Duration) -> Result<()> {
        self.on(move |s| {
            s.call_timeout = t;
            Ok(())
        })
    }

    /// A copy of P's fd `fd` (pidfd_getfd).
    pub fn take_fd(&self, fd: RawFd) -> Result<OwnedFd> {
        crate::seccomp::pidfd_getfd(self.pid, fd).map_err(sio(self.pid, "pidfd_getfd"))
    }

    /// Makes P exit with `code` (the moved process exited so; only its low 8 bits count).
    /// Returns P's final wait status; the shell has ended then.
    pub fn exit(&mut self, code: i32) -> Result<i32> {
        self.on(move |s| s.end(End::Exit(code)))
    }

    /// Makes P die by `sig` under SIG_DFL, without a core (RLIMIT_CORE is 0). Returns P's final
    /// wait status; the shell has ended then. A signal whose default action does not end a
    /// process (stop, continue, ignore) is refused before anything is done.
    pub fn die_by(&mut self, sig: i32) -> Result<i32> {
        let ends = (1..=64).contains(&sig)
            && ![
                libc::SIGSTOP,
                libc::SIGTSTP,
                libc::SIGTTIN,
                libc::SIGTTOU,
                libc::SIGCONT,
                libc::SIGCHLD,
                libc::SIGURG,
                libc::SIGWINCH,
            ]
            .contains(&sig);
        if !ends {
            return Err(serr(
                self.pid,
                format!("signal {sig} does not end a process by default"),
            ));
        }
        self.on(move |s| s.end(End::Signal(sig)))
    }
}

enum End {
    Exit(i32),
    Signal(i32),
}

/// On the tracer thread: from a held seized process to a parked shell.
fn park(slot: &mut Slot, pid: pid_t) -> Result<()> {
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

/// waitid(WEXITED) for P's end, leaving the zombie for its parent when that is us (WNOWAIT).
fn wait_end(pid: pid_t, nowait: bool, deadline: Instant) -> io::Result<Option<i32>> {
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
    fn repark(&mut self) -> Result<()> {
        setregs(self.pid, &self.parked).map_err(sio(self.pid, "PTRACE_SETREGS"))?;
        ptrace_req(Req::Cont, self.pid, 0).map_err(sio(self.pid, "PTRACE_CONT"))?;
        self.state = State::Running;
        Ok(())
    }

    fn next_event(&mut self, deadline: Instant) -> Result<Option<ShellEvent>> {
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

    fn decide(&mut self, deliver: bool) -> Result<()> {
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

    fn syscall(&mut self, nr: i64, args: &[ShellArg]) -> Result<(i64, Vec<Vec<u8>>)> {
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

    fn end(&mut self, how: End) -> Result<i32> {
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
