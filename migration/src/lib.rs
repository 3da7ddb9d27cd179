//! Process migration between nodes: the protocols and the remote's seccomp machinery.
//!
//! Owns:
//! - [`protocol`]: the migration protocol (offer → accept/refuse → stream → confirm → commit /
//!   abort) as two sans-IO state machines, one per end, driven by explicit time;
//! - [`forward`]: the forwarding protocol between the remote and the home deputy, sans-IO:
//!   request ids per thread, replay of completed-but-unanswered calls, the deputy's per-fd
//!   push-back buffers;
//! - [`seccomp`]: the seccomp user-notification machinery of the remote (the classic-BPF filter,
//!   the listener, checked access to the trapped process's memory);
//! - [`homecall`]: the table of calls run at home by number (path calls, terminal ioctls, other
//!   calls on home-backed fds) and their checked execution by the deputy;
//! - [`jobctl`]: the SIGTTIN/SIGTTOU decision the deputy makes for the moved process's
//!   terminal access (pure);
//! - [`guard`]: the guest is killed before its supervisor's listener closes;
//! - [`remote`]: the remote supervisor loop that classifies trapped calls and answers, forwards or
//!   reports them;
//! - [`dfsa`]: which path calls on `/mfs` of a moved process run where it runs (DFSA);
//! - [`standin`]: an in-process home stand-in (a deputy executing forwarded calls on real fds of
//!   this process), for tests and measurements.
//!
//! The protocol messages carry no node ids: the shells that drive the machines know which peer
//! a migration talks to (they route by [`protocol::MigId`]), so this crate needs no `runtime`.
//!
//! Must not know: sockets, transports or async runtimes (the state machines take `now` and
//! return actions; thin shells elsewhere carry them out), and ptrace of the home process (that
//! is the `migrate` engine's and the deputy's business).
//!
//! # Forwarding design: "trap broadly, answer locally when local"
//!
//! This crate implements option 1 of `shared/notes/forwarding-facts.md`. The filter installed
//! on the remote is final (one listener per process, no stacking), and classic BPF cannot follow
//! a table of fd numbers that changes with open/close/dup. So the remote's BPF traps
//! - every call that takes an fd (read, write, pread, lseek, fstat, ioctl, fcntl, close, dup*, …),
//! - the path calls (open, openat, stat, access, readlink, mkdir, unlink, rename, chdir, …),
//! - the getpid family (getpid, getppid, gettid is not: thread ids are local; getpgid, getsid),
//! - the calls that must bring the process home (fork, vfork, clone, clone3, execve, execveat,
//!   ptrace) and `mmap` when its fd argument is not -1 (anonymous mmap is tested in the BPF
//!   itself and runs untrapped),
//!
//! and lets everything else run at full speed. The remote supervisor keeps the fd table (which
//! fd numbers are home-backed) and answers `CONTINUE` for local fds; calls on home-backed fds are
//! forwarded to the home deputy, which runs them on the real fd, so an offset shared with other
//! processes at home stays exact; path calls run at home. A trapped call costs ~5–7 µs even when
//! answered CONTINUE; a later optimisation may give the stdio fds local proxy fds (option 3:
//! pipes/ptys relayed home) so the hot paths are not trapped at all.

pub mod dfsa;
pub mod forward;
pub mod guard;
pub mod homecall;
pub mod jobctl;
pub mod mapfile;
pub mod protocol;
pub mod remote;
pub mod seccomp;
pub mod standin;

/// Every error of the crate, for callers that do not need to tell the layers apart. The
/// protocol and forwarding machines return no errors: bad input becomes an abort or is ignored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    #[error(transparent)]
    Remote(#[from] remote::Error),
}
