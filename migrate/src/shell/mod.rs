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
//!
//! Its parts: [`park`] trims and parks P (and parks it again after a failed thaw into it),
//! [`events`] watches what happens to the parked P and stops it for work, [`calls`] runs
//! system calls in P's context and reproduces the moved process's end.

mod calls;
mod events;
mod park;

pub(crate) use park::{restore_parked, take_stopped};

use crate::error::{Error, Result};
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
        tracer.call(move |slot| park::park(slot, pid))??;
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
