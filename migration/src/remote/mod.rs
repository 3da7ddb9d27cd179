//! The remote supervisor: receives the moved process's trapped calls and answers, forwards or
//! reports each one.
//!
//! [`classify`] (pure) sorts a trapped call:
//! - a call on a local fd (any fd not in the [`FdTable`]'s home-backed set) → `CONTINUE`;
//! - the getpid family → answered from the home [`Identity`]; a signal the process sends to
//!   itself (by its home PID) is sent locally; gettid is the home PID in the main thread and
//!   the local TID in the others (what glibc cached for them when they were rebuilt here), and
//!   tgkill(home PID, tid) reaches that thread here; set_tid_address in the main thread is
//!   answered with the home PID too (not run: its address is kept for the image that leaves),
//!   so glibc's cached TID, the owner of the locks it holds, is the home PID on every node and
//!   a lock taken here is still the process's own when it comes home;
//! - read/write/pread64/pwrite64/lseek/fstat/close on a home-backed fd → forwarded home through
//!   [`crate::forward::RemoteFwd`] and a [`HomePort`]; a home close is answered `CONTINUE` so
//!   the local placeholder closes too;
//! - `open`, `creat` and `openat` (relative to home's cwd or to a home-backed dirfd) → opened
//!   at home with the number the process would get here (the lowest free one), then a
//!   placeholder is put at that number with `ADDFD` (with `SEND`: it appears only if the answer
//!   is delivered) and the fd becomes home-backed;
//! - the other path calls (stat, lstat, newfstatat, statx, access, faccessat(2), readlink(at),
//!   mkdir(at), unlink(at), rmdir, rename(at2), link(at), symlink(at), chmod, fchmodat, chown,
//!   lchown, fchownat, truncate, utimensat, chdir, getcwd, statfs), and on a home-backed fd
//!   fchdir, fstatfs, fchmod, fchown, ftruncate, fsync, fdatasync, getdents64, fcntl
//!   F_GETFL/F_SETFL and the terminal ioctls of the table → run at home by number, their memory
//!   arguments marshalled by [`crate::homecall`] and the results copied back exactly (struct
//!   layouts, `ret`-sized buffers, errno). A call relative to a *local* dirfd with a relative
//!   path runs here. Before a call on a home terminal, home is told whether the thread ignores
//!   or blocks SIGTTIN/SIGTTOU ([`crate::forward::FwdMsg::TtySigs`]) for its job-control check;
//! - fork/vfork/clone/clone3/execve/execveat/ptrace, `mmap` of a home-backed fd, ioctls not in
//!   the table (never answered ENOTTY) or needing the session (TIOCSPGRP, TIOCSCTTY, …), and
//!   every trapped call this version does not implement (dup of a home-backed fd, openat2,
//!   other fcntl commands, …) → [`Stop::GoHome`]: the notification is left unanswered, so the
//!   process stays blocked at that call until it is brought home, where the call runs for real.
//!   Never a wrong answer.
//!
//! Known gap: a home open whose answer is cancelled and never restarted (EINTR) leaves the file
//! open at home (the process never learns its number).
//!
//! [`Supervisor::run`] is the loop: one OS thread per supervised process, waiting with `poll`
//! on the listener and on the home port's wake-up fd, up to a deadline (no wait is unbounded).

mod classify;
mod maphere;
mod marshal;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::forward::{Answered, Call, CallKey, FwdMsg, RemoteAction, RemoteFwd, Reply};
use crate::homecall::{self, Arg, IoArg, Slot};
use crate::seccomp::{self, Listener, Notif, Response};

pub use classify::{Class, FdTable, GoHome, Identity, MAX_IO, Req, classify};
use maphere::RoFile;

/// The link to the deputy as the supervisor sees it.
pub trait HomePort {
    /// Queues a message to home. An error means home is unreachable.
    fn send(&mut self, msg: FwdMsg) -> Result<(), String>;
    /// A message from home, if one is waiting.
    fn try_recv(&mut self) -> Option<FwdMsg>;
    /// An fd that becomes readable when a message from home is waiting.
    fn wake_fd(&self) -> RawFd;
    /// Resets the wake-up fd (called before draining with `try_recv`).
    fn clear_wake(&mut self);
}

/// Why the supervisor loop returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The process is gone (the listener has no more users).
    Exited,
    /// The process made a call it must make at home; `notif` is still unanswered.
    GoHome { notif: Notif, reason: GoHome },
    /// The deadline passed.
    Deadline,
}

/// What can go wrong in the loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    #[error("the home deputy is unreachable: {0}")]
    HomeGone(String),
    #[error("poll failed: {0}")]
    Poll(io::Error),
}

/// Counters, for tests and `mps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub continued: u64,
    pub identity: u64,
    pub forwarded: u64,
    pub replayed_or_cancelled: u64,
    /// Path calls on `/mfs` run here by DFSA instead of going home ([`crate::dfsa`]).
    pub dfsa: u64,
    /// Home files mapped here from an identical local file ([`Req::FileId`]).
    pub mapped_here: u64,
}

/// The remote supervisor of one process. See the module documentation.
pub struct Supervisor<P: HomePort> {
    /// Declared before the listener, so dropped before it: the guest dies before the listener
    /// closes (see [`crate::guard`]).
    guard: Option<crate::guard::KillOnDrop>,
    listener: Listener,
    id: Identity,
    fds: FdTable,
    fwd: RemoteFwd,
    port: P,
    /// Notifications waiting for a forwarded result, by id.
    waiting: HashMap<u64, (Notif, Req)>,
    stats: Stats,
    /// [`Supervisor::run_until_idle`] is running.
    stop_when_idle: bool,
    /// The SIGTTIN/SIGTTOU disposition last told home.
    tty_sigs: Option<(bool, bool)>,
    /// The `/mfs` mounts whose path calls run here ([`crate::dfsa`]); none: all go home.
    dfsa: Option<crate::dfsa::Dfsa>,
    /// Home-backed fds opened read-only by absolute path (candidates for a local mmap).
    ro_files: HashMap<i32, RoFile>,
    /// The absolute paths of forwarded opens in flight, by notification id.
    open_paths: HashMap<u64, Vec<u8>>,
    /// A stop decided while a reply was delivered (a mapped file differs here): returned by
    /// the loop next.
    pending_stop: Option<Stop>,
    /// Notifications whose forwarded call home gave up ([`Supervisor::interrupt_in_flight`]):
    /// left unanswered, their callers waiting.
    given_up: Vec<Notif>,
    /// The address the main thread last gave set_tid_address (answered here, not run: see
    /// [`Class::SetTidAddress`]); the image that leaves carries it as its clear_child_tid.
    tid_address: Option<u64>,
}

impl<P: HomePort> Supervisor<P> {
    pub fn new(listener: Listener, id: Identity, fds: FdTable, port: P) -> Self {
        Supervisor {
            guard: None,
            listener,
            id,
            fds,
            fwd: RemoteFwd::new(),
            port,
            waiting: HashMap::new(),
            stats: Stats::default(),
            stop_when_idle: false,
            tty_sigs: None,
            dfsa: None,
            given_up: Vec::new(),
            tid_address: None,
            ro_files: HashMap::new(),
            open_paths: HashMap::new(),
            pending_stop: None,
        }
    }

    /// Path calls on these `/mfs` mounts run here (DFSA) from now on.
    pub fn set_dfsa(&mut self, dfsa: Option<crate::dfsa::Dfsa>) {
        self.dfsa = dfsa;
    }

    /// Before freezing the process for its way home while calls forwarded home are in flight
    /// (a read waiting there for input that may never come): asks home to give them up, then
    /// [`Supervisor::run_until_idle`] serves until none is. A call home gave up stays
    /// unanswered (its caller never sees a made-up EINTR): the freeze cancels it and the
    /// kernel makes it again at home. If the freeze does not happen,
    /// [`Supervisor::resume_given_up`] forwards them anew.
    pub fn interrupt_in_flight(&mut self) -> Result<(), Error> {
        let acts = self.fwd.interrupt_all();
        self.perform(acts)
    }

    /// The process stays here after all: the calls given up at home are forwarded again
    /// (those the process has since restarted come back as new notifications by themselves).
    pub fn resume_given_up(&mut self) -> Result<Option<Stop>, Error> {
        for n in std::mem::take(&mut self.given_up) {
            if !self.listener.id_valid(n.id)? {
                continue;
            }
            if let Some(stop) = self.on_notif(n)? {
                return Ok(Some(stop));
            }
        }
        Ok(None)
    }

    /// The guest is killed when this supervisor is dropped (before its listener closes), also
    /// on a panic: it never runs on with `ENOSYS` for its trapped calls.
    pub fn kill_guest_on_drop(mut self, guard: crate::guard::KillOnDrop) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn fds(&self) -> &FdTable {
        &self.fds
    }

    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    /// The clear_child_tid the main thread asked for here (its last set_tid_address, which
    /// was answered, not run): `None` when it made none. The image that leaves must carry it
    /// in place of what the kernel has.
    pub fn tid_address(&self) -> Option<u64> {
        self.tid_address
    }

    /// Calls forwarded home and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.waiting.len().max(self.fwd.in_flight())
    }

    /// Like [`Supervisor::run`], but returns [`Stop::Deadline`] as soon as no forwarded call
    /// is in flight (at once if none is): the moment to freeze the process for its way home
    /// without leaving a call half-done at home (a read whose data would be lost).
    pub fn run_until_idle(&mut self, deadline: Instant) -> Result<Stop, Error> {
        if self.in_flight() == 0 {
            return Ok(Stop::Deadline);
        }
        self.stop_when_idle = true;
        let r = self.run(deadline);
        self.stop_when_idle = false;
        r
    }

    /// Serves calls until the process exits, must go home, or `deadline` passes.
    pub fn run(&mut self, deadline: Instant) -> Result<Stop, Error> {
        loop {
            if let Some(stop) = self.pending_stop.take() {
                return Ok(stop);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Stop::Deadline);
            }
            let wait = (deadline - now).min(Duration::from_secs(1));
            let mut pfds = [
                libc::pollfd {
                    fd: self.listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.port.wake_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, wait.as_millis() as i32) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(Error::Poll(e));
            }
            if pfds[1].revents != 0 {
                self.port.clear_wake();
                while let Some(m) = self.port.try_recv() {
                    let acts = self.fwd.on_msg(m);
                    self.perform(acts)?;
                }
                if let Some(stop) = self.pending_stop.take() {
                    return Ok(stop);
                }
                if self.stop_when_idle && self.in_flight() == 0 {
                    return Ok(Stop::Deadline);
                }
            }
            if pfds[0].revents != 0 {
                if pfds[0].revents & libc::POLLIN == 0 {
                    if pfds[0].revents & libc::POLLHUP != 0 {
                        return Ok(Stop::Exited); // no more users
                    }
                    return Err(Error::Poll(io::Error::other(format!(
                        "listener poll revents {:#x}",
                        pfds[0].revents
                    ))));
                }
                match self.listener.recv_ready() {
                    Ok(Some(n)) => {
                        if let Some(stop) = self.on_notif(n)? {
                            return Ok(stop);
                        }
                        // A port that answers at once (in-process home) needs no second poll.
                        while let Some(m) = self.port.try_recv() {
                            let acts = self.fwd.on_msg(m);
                            self.perform(acts)?;
                        }
                        if let Some(stop) = self.pending_stop.take() {
                            return Ok(stop);
                        }
                    }
                    Ok(None) => {}
                    Err(seccomp::Error::NoMoreUsers) => return Ok(Stop::Exited),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    fn answer(&mut self, id: u64, r: Response) -> Result<(), Error> {
        match self.listener.respond(id, r) {
            Ok(()) | Err(seccomp::Error::Cancelled) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn on_notif(&mut self, n: Notif) -> Result<Option<Stop>, Error> {
        let nr = i64::from(n.data.nr);
        let mut class = classify(nr, n.data.args, &self.fds, &self.id);
        if class == Class::CheckFdSet {
            class = match self.fd_set_has_home(&n) {
                Ok(false) => Class::Continue,
                Ok(true) => Class::GoHome(GoHome::Unsupported),
                Err(seccomp::Error::Cancelled) => return Ok(None),
                Err(_) => Class::Answer(-i64::from(libc::EFAULT)),
            };
        }
        if class == Class::GoHome(GoHome::MmapHomeFd) {
            class = self.map_here(n.data.args).unwrap_or(class);
        }
        match class {
            Class::Continue => {
                self.stats.continued += 1;
                self.answer(n.id, Response::Continue)?;
            }
            Class::Answer(v) => {
                self.stats.identity += 1;
                let r = if v < 0 {
                    Response::Errno((-v) as i32)
                } else {
                    Response::Value(v)
                };
                self.answer(n.id, r)?;
            }
            Class::SignalSelf { sig } => {
                self.stats.identity += 1;
                // SAFETY: kill with integer arguments, to the process we supervise (our child
                // or traced process, so its PID cannot be reused under us).
                let r = unsafe { libc::kill(self.id.local_pid, sig) };
                let resp = if r == 0 {
                    Response::Value(0)
                } else {
                    Response::Errno(
                        io::Error::last_os_error()
                            .raw_os_error()
                            .unwrap_or(libc::EIO),
                    )
                };
                self.answer(n.id, resp)?;
            }
            Class::SignalThread { tid, sig } => {
                self.stats.identity += 1;
                // SAFETY: tgkill with integer arguments; the kernel checks that `tid` is a
                // thread of the process we supervise (else ESRCH, the answer it would get).
                let r = unsafe { libc::syscall(libc::SYS_tgkill, self.id.local_pid, tid, sig) };
                let resp = if r == 0 {
                    Response::Value(0)
                } else {
                    Response::Errno(
                        io::Error::last_os_error()
                            .raw_os_error()
                            .unwrap_or(libc::EIO),
                    )
                };
                self.answer(n.id, resp)?;
            }
            Class::Gettid => {
                self.stats.identity += 1;
                let tid = if n.pid as i32 == self.id.local_pid {
                    self.id.pid
                } else {
                    n.pid as i32
                };
                self.answer(n.id, Response::Value(tid.into()))?;
            }
            Class::SetTidAddress => {
                if n.pid as i32 == self.id.local_pid {
                    // Answered without running it here: glibc caches the answer as its TID
                    // and owner of its locks, and the home PID is the TID the process has
                    // everywhere. The kernel keeps the main thread's clear_child_tid as it
                    // was here (it matters at the main thread's own exit only); the address
                    // asked for is kept and goes home in the image (`tid_address`).
                    self.stats.identity += 1;
                    self.tid_address = Some(n.data.args[0]);
                    self.answer(n.id, Response::Value(self.id.pid.into()))?;
                } else {
                    // another thread's TID is its TID here (see Class::Gettid)
                    self.stats.continued += 1;
                    self.answer(n.id, Response::Continue)?;
                }
            }
            Class::GoHome(reason) => {
                tracing::info!(
                    tid = n.pid,
                    nr,
                    ?reason,
                    "the process must go home for this call"
                );
                return Ok(Some(Stop::GoHome { notif: n, reason }));
            }
            Class::CheckFdSet => unreachable!("resolved above"),
            Class::Forward(req) if self.dfsa_here(&n, req) => {
                self.stats.dfsa += 1;
                self.answer(n.id, Response::Continue)?;
            }
            Class::Forward(req) => {
                let call = match self.build_call(&n, req) {
                    Ok(Some(c)) => c,
                    Ok(None) => {
                        // Relative to a local directory fd: it runs here.
                        self.stats.continued += 1;
                        self.answer(n.id, Response::Continue)?;
                        return Ok(None);
                    }
                    Err(seccomp::Error::Mem { source, .. })
                        if source.raw_os_error() == Some(libc::ENAMETOOLONG) =>
                    {
                        self.answer(n.id, Response::Errno(libc::ENAMETOOLONG))?;
                        return Ok(None);
                    }
                    Err(seccomp::Error::Cancelled) => return Ok(None),
                    Err(seccomp::Error::Mem { .. } | seccomp::Error::ShortMem { .. }) => {
                        self.answer(n.id, Response::Errno(libc::EFAULT))?;
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                };
                self.stats.forwarded += 1;
                self.tell_tty_sigs(&n, req)?;
                // A thread has one live notification: older ones of this thread are dead.
                self.waiting.retain(|_, (w, _)| w.pid != n.pid);
                self.waiting.insert(n.id, (n, req));
                self.open_paths
                    .retain(|id, _| self.waiting.contains_key(id));
                let key = CallKey {
                    nr,
                    args: n.data.args,
                };
                let acts = self.fwd.on_call(n.pid, n.id, key, call);
                self.perform(acts)?;
                if let Some(stop) = self.pending_stop.take() {
                    return Ok(Some(stop));
                }
            }
        }
        Ok(None)
    }

    /// Before a call on a terminal: tells home whether the thread ignores or blocks SIGTTIN and
    /// SIGTTOU, when that changed. Unreadable: assumed default (the kernel's default stops).
    fn tell_tty_sigs(&mut self, n: &Notif, req: Req) -> Result<(), Error> {
        let fd = match req {
            Req::Read { fd, .. } | Req::Write { fd, .. } => fd,
            Req::Sys { nr } if nr == libc::SYS_ioctl => n.data.args[0] as i32,
            _ => return Ok(()),
        };
        if !self.fds.is_tty(fd) {
            return Ok(());
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", n.pid)).unwrap_or_default();
        let line = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("0")
        };
        let off = |sig| {
            crate::jobctl::mask_has(line("SigIgn:"), sig).unwrap_or(false)
                || crate::jobctl::mask_has(line("SigBlk:"), sig).unwrap_or(false)
        };
        let now = (off(libc::SIGTTIN), off(libc::SIGTTOU));
        if self.tty_sigs != Some(now) {
            self.tty_sigs = Some(now);
            self.port
                .send(FwdMsg::TtySigs {
                    ttin_off: now.0,
                    ttou_off: now.1,
                })
                .map_err(Error::HomeGone)?;
        }
        Ok(())
    }

    /// Whether path call `req` runs here by DFSA: every path it names is on an agreed `/mfs`
    /// mount and stays below it. A path that cannot be read: no (it goes the usual way).
    fn dfsa_here(&self, n: &Notif, req: Req) -> bool {
        let Some(d) = &self.dfsa else {
            return false;
        };
        let Some(addrs) = crate::dfsa::path_args(req, n.data.args) else {
            return false;
        };
        let paths: Option<Vec<Vec<u8>>> =
            addrs.iter().map(|&a| self.read_path(n, a).ok()).collect();
        paths.is_some_and(|p| d.allows(&p))
    }

    fn perform(&mut self, acts: Vec<RemoteAction>) -> Result<(), Error> {
        for a in acts {
            match a {
                RemoteAction::Send(m) => self.port.send(m).map_err(Error::HomeGone)?,
                RemoteAction::Answer { notif, reply, .. } => {
                    let how = self.deliver(notif, &reply)?;
                    if how != Answered::Delivered {
                        tracing::debug!(
                            notif,
                            ?how,
                            "forwarded result not delivered; kept for a restart"
                        );
                        self.stats.replayed_or_cancelled += 1;
                    }
                    let more = self.fwd.on_answered(notif, how);
                    self.perform(more)?;
                }
                RemoteAction::Unanswered { notif, .. } => {
                    if let Some((n, _)) = self.waiting.remove(&notif) {
                        self.given_up.push(n);
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies a result into the process and answers it.
    fn deliver(&mut self, id: u64, reply: &Reply) -> Result<Answered, Error> {
        let open_path = self.open_paths.remove(&id);
        let Some((n, req)) = self.waiting.remove(&id) else {
            return Ok(Answered::Cancelled);
        };
        if let Req::FileId { fd } = req {
            return self.map_local(n, fd, reply);
        }
        let buf = match req {
            Req::Read { buf, .. } | Req::Pread { buf, .. } | Req::Fstat { buf, .. } => Some(buf),
            _ => None,
        };
        if let Some(buf) = buf
            && reply.ret >= 0
            && !reply.data.is_empty()
        {
            match self.listener.write_mem(&n, buf, &reply.data) {
                Ok(()) => {}
                Err(seccomp::Error::Cancelled) => return Ok(Answered::Cancelled),
                Err(seccomp::Error::Mem { .. } | seccomp::Error::ShortMem { .. }) => {
                    self.answer(id, Response::Errno(libc::EFAULT))?;
                    return Ok(Answered::DataRefused);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if let Req::Sys { nr } = req
            && reply.ret >= 0
        {
            let mut at = 0usize;
            for (addr, len) in Self::sys_outs(nr, n.data.args, reply.ret) {
                let Some(piece) = reply.data.get(at..at + len) else {
                    break; // a short reply: copy what came (the peer's table is older)
                };
                at += len;
                if len == 0 {
                    continue;
                }
                match self.listener.write_mem(&n, addr, piece) {
                    Ok(()) => {}
                    Err(seccomp::Error::Cancelled) => return Ok(Answered::Cancelled),
                    Err(seccomp::Error::Mem { .. } | seccomp::Error::ShortMem { .. }) => {
                        self.answer(id, Response::Errno(libc::EFAULT))?;
                        return Ok(Answered::DataRefused);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if let Req::Openat { flags, .. } = req
            && reply.ret >= 0
        {
            let (at, cloexec) = (reply.ret as i32, flags & libc::O_CLOEXEC != 0);
            let how = self.place_home_fd(&n, at, cloexec)?;
            self.ro_files.remove(&at);
            if how == Answered::Delivered
                && self.fds.is_home(at.into())
                && let Some(path) = open_path
            {
                self.ro_files.insert(
                    at,
                    RoFile {
                        path,
                        cloexec,
                        local: false,
                    },
                );
            }
            return Ok(how);
        }
        let resp = if reply.ret < 0 {
            Response::Errno((-reply.ret) as i32)
        } else if let Req::Close { fd } = req {
            // Closed at home: let the kernel close the local placeholder too.
            self.fds.remove(fd);
            self.ro_files.remove(&fd);
            Response::Continue
        } else {
            Response::Value(if matches!(req, Req::Fstat { .. }) {
                0
            } else {
                reply.ret
            })
        };
        match self.listener.respond(id, resp) {
            Ok(()) => Ok(Answered::Delivered),
            Err(seccomp::Error::Cancelled) => Ok(Answered::Cancelled),
            Err(e) => Err(e.into()),
        }
    }

    /// Puts a placeholder at `at` in the process for a file opened at home, answering the call
    /// with it (ADDFD with SEND: the fd appears only if the answer is delivered).
    fn place_home_fd(&mut self, n: &Notif, at: i32, cloexec: bool) -> Result<Answered, Error> {
        // SAFETY: open of a literal path; the fd is ours and closed when `ph` drops.
        let raw = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if raw < 0 {
            self.answer(n.id, Response::Errno(libc::EMFILE))?;
            return Ok(Answered::Delivered);
        }
        // SAFETY: fresh fd.
        let ph = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        match self.listener.add_fd(
            n.id,
            std::os::fd::AsRawFd::as_raw_fd(&ph),
            Some(at),
            cloexec,
            true,
        ) {
            Ok(_) => {
                self.fds.insert(at);
                Ok(Answered::Delivered)
            }
            Err(seccomp::Error::Cancelled) => Ok(Answered::Cancelled),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a poll/ppoll/select/pselect6 call names a home-backed fd.
    fn fd_set_has_home(&self, n: &Notif) -> seccomp::Result<bool> {
        let a = n.data.args;
        match i64::from(n.data.nr) {
            libc::SYS_poll | libc::SYS_ppoll => {
                let count = (a[1] as usize).min(4096);
                let raw = self.listener.read_mem(n, a[0], count * 8)?;
                Ok(raw.chunks_exact(8).any(|p| {
                    let fd = i32::from_ne_bytes(p[0..4].try_into().expect("4 bytes"));
                    self.fds.is_home(fd.into())
                }))
            }
            _ => {
                let nfds = (a[0] as usize).min(1024);
                let bytes = nfds.div_ceil(64) * 8;
                for set in [a[1], a[2], a[3]] {
                    if set == 0 || bytes == 0 {
                        continue;
                    }
                    let raw = self.listener.read_mem(n, set, bytes)?;
                    for fd in self.fds.home_fds() {
                        let fd = fd as usize;
                        if fd < nfds && raw[fd / 8] & (1 << (fd % 8)) != 0 {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            }
        }
    }
}

/// The lowest fd number free in process (thread) `pid`: the number a new fd gets.
fn lowest_free_fd(pid: u32) -> io::Result<i32> {
    let mut used: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    used.sort_unstable();
    let mut want = 0;
    for fd in used {
        if fd == want {
            want += 1;
        } else if fd > want {
            break;
        }
    }
    Ok(want)
}
