//! The remote supervisor: receives the moved process's trapped calls and answers, forwards or
//! reports each one.
//!
//! [`classify`] (pure) sorts a trapped call:
//! - a call on a local fd (any fd not in the [`FdTable`]'s home-backed set) → `CONTINUE`;
//! - the getpid family → answered from the home [`Identity`]; a signal the process sends to
//!   itself (by its home PID) is sent locally; gettid is the home PID in the main thread and
//!   the local TID in the others (what glibc cached for them when they were rebuilt here), and
//!   tgkill(home PID, tid) reaches that thread here;
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

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::forward::{Answered, Call, CallKey, FwdMsg, RemoteAction, RemoteFwd, Reply};
use crate::homecall::{self, Arg, IoArg, Slot};
use crate::seccomp::{self, Listener, Notif, Response};

/// The moved process's identity at home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Its PID on this node (for signals it sends itself).
    pub local_pid: i32,
}

/// Which fd numbers of the process are home-backed (placeholders here, real at home).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdTable {
    home: BTreeSet<i32>,
    /// Home-backed fds that are terminals (job control applies to calls on them).
    ttys: BTreeSet<i32>,
}

impl FdTable {
    pub fn new(home_fds: impl IntoIterator<Item = i32>) -> FdTable {
        FdTable {
            home: home_fds.into_iter().collect(),
            ttys: BTreeSet::new(),
        }
    }
    /// Marks these home-backed fds as terminals.
    pub fn with_ttys(mut self, ttys: impl IntoIterator<Item = i32>) -> FdTable {
        self.ttys = ttys.into_iter().filter(|f| self.home.contains(f)).collect();
        self
    }
    pub fn is_tty(&self, fd: i32) -> bool {
        self.ttys.contains(&fd)
    }
    pub fn is_home(&self, fd: i64) -> bool {
        i32::try_from(fd).is_ok_and(|fd| self.home.contains(&fd))
    }
    pub fn home_fds(&self) -> impl Iterator<Item = i32> + '_ {
        self.home.iter().copied()
    }
    fn remove(&mut self, fd: i32) {
        self.ttys.remove(&fd);
        self.home.remove(&fd);
    }
    fn insert(&mut self, fd: i32) {
        self.home.insert(fd);
    }
}

/// Why the process must go home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoHome {
    /// fork, vfork, clone, clone3: children are born at home.
    Fork,
    /// execve, execveat.
    Exec,
    Ptrace,
    /// mmap of a home-backed fd.
    MmapHomeFd,
    /// A call that changes the home identity (setpgid, setsid) or signals another process.
    Identity,
    /// A trapped call this version does not serve remotely.
    Unsupported,
}

/// A forwarded call, with where its data lives in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Req {
    Read {
        fd: i32,
        buf: u64,
        len: u64,
    },
    Write {
        fd: i32,
        buf: u64,
        len: u64,
    },
    Pread {
        fd: i32,
        buf: u64,
        len: u64,
        offset: i64,
    },
    Pwrite {
        fd: i32,
        buf: u64,
        len: u64,
        offset: i64,
    },
    Lseek {
        fd: i32,
        offset: i64,
        whence: i32,
    },
    Fstat {
        fd: i32,
        buf: u64,
    },
    Close {
        fd: i32,
    },
    /// An `mmap` of home-backed `fd`, opened read-only by absolute path: home says what the
    /// file is ([`crate::mapfile::FileId`]); when the same path here is the same file, the
    /// placeholder becomes the local file and the mmap runs here, else the process goes home.
    FileId {
        fd: i32,
    },
    /// openat(dirfd, path, …) / open(path, …) / creat(path, mode): opened at home (relative
    /// to home's cwd or to the home-backed `dirfd`), placed here. A local `dirfd` with a
    /// relative path runs here.
    Openat {
        dirfd: i32,
        path: u64,
        flags: i32,
        mode: u32,
    },
    /// A call of the [`crate::homecall`] table, run at home; its arguments are marshalled
    /// from the trapped registers by the table.
    Sys {
        nr: i64,
    },
}

/// What to do with a trapped call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Run it here, as if untrapped.
    Continue,
    /// Answer with this value (negative: -errno).
    Answer(i64),
    /// Send `sig` to the process itself here (it signalled its home PID).
    SignalSelf { sig: i32 },
    /// Send `sig` to thread `tid` of the process here (tgkill of its home PID; the main
    /// thread's TID is the home PID, the others' their TIDs here).
    SignalThread { tid: i32, sig: i32 },
    /// gettid: the main thread's TID is the home PID (as getpid says); another thread's is
    /// its TID here (what glibc cached in its thread descriptor when the thread was made).
    Gettid,
    /// Forward it home.
    Forward(Req),
    /// The process must go home first.
    GoHome(GoHome),
    /// poll/ppoll/select/pselect6: continue unless one of the fds in memory is home-backed.
    CheckFdSet,
}

/// Largest write forwarded in one request (a longer one becomes a short write) and largest
/// read asked for.
pub const MAX_IO: u64 = 1 << 20;

/// Sorts a trapped call. Pure: see the module documentation.
pub fn classify(nr: i64, a: [u64; 6], fds: &FdTable, id: &Identity) -> Class {
    let fd0 = a[0] as i32 as i64;
    let home0 = fds.is_home(fd0);
    match nr {
        libc::SYS_getpid => Class::Answer(id.pid.into()),
        libc::SYS_getppid => Class::Answer(id.ppid.into()),
        libc::SYS_getpgrp => Class::Answer(id.pgid.into()),
        libc::SYS_getpgid if a[0] == 0 || a[0] as i32 == id.pid => Class::Answer(id.pgid.into()),
        libc::SYS_getsid if a[0] == 0 || a[0] as i32 == id.pid => Class::Answer(id.sid.into()),
        libc::SYS_kill if a[0] as i32 == id.pid => Class::SignalSelf { sig: a[1] as i32 },
        libc::SYS_tgkill if a[0] as i32 == id.pid => Class::SignalThread {
            tid: if a[1] as i32 == id.pid {
                id.local_pid
            } else {
                a[1] as i32
            },
            sig: a[2] as i32,
        },
        libc::SYS_gettid => Class::Gettid,
        // Children are born at home, so it has none here: waiting is local (ECHILD).
        libc::SYS_wait4 | libc::SYS_waitid => Class::Continue,
        libc::SYS_getpgid
        | libc::SYS_getsid
        | libc::SYS_kill
        | libc::SYS_tgkill
        | libc::SYS_tkill
        | libc::SYS_rt_sigqueueinfo
        | libc::SYS_rt_tgsigqueueinfo
        | libc::SYS_setpgid
        | libc::SYS_setsid
        | libc::SYS_pidfd_open => Class::GoHome(GoHome::Identity),
        libc::SYS_fork | libc::SYS_vfork | libc::SYS_clone | libc::SYS_clone3 => {
            Class::GoHome(GoHome::Fork)
        }
        libc::SYS_execve | libc::SYS_execveat => Class::GoHome(GoHome::Exec),
        libc::SYS_ptrace => Class::GoHome(GoHome::Ptrace),
        libc::SYS_mmap => {
            if fds.is_home(a[4] as i32 as i64) {
                Class::GoHome(GoHome::MmapHomeFd)
            } else {
                Class::Continue
            }
        }
        libc::SYS_read if home0 => Class::Forward(Req::Read {
            fd: fd0 as i32,
            buf: a[1],
            len: a[2].min(MAX_IO),
        }),
        libc::SYS_write if home0 => Class::Forward(Req::Write {
            fd: fd0 as i32,
            buf: a[1],
            len: a[2].min(MAX_IO),
        }),
        libc::SYS_pread64 if home0 => Class::Forward(Req::Pread {
            fd: fd0 as i32,
            buf: a[1],
            len: a[2].min(MAX_IO),
            offset: a[3] as i64,
        }),
        libc::SYS_pwrite64 if home0 => Class::Forward(Req::Pwrite {
            fd: fd0 as i32,
            buf: a[1],
            len: a[2].min(MAX_IO),
            offset: a[3] as i64,
        }),
        libc::SYS_lseek if home0 => Class::Forward(Req::Lseek {
            fd: fd0 as i32,
            offset: a[1] as i64,
            whence: a[2] as i32,
        }),
        libc::SYS_fstat if home0 => Class::Forward(Req::Fstat {
            fd: fd0 as i32,
            buf: a[1],
        }),
        libc::SYS_close if home0 => Class::Forward(Req::Close { fd: fd0 as i32 }),
        libc::SYS_openat => Class::Forward(Req::Openat {
            dirfd: a[0] as i32,
            path: a[1],
            flags: a[2] as i32,
            mode: a[3] as u32,
        }),
        libc::SYS_open => Class::Forward(Req::Openat {
            dirfd: libc::AT_FDCWD,
            path: a[0],
            flags: a[1] as i32,
            mode: a[2] as u32,
        }),
        libc::SYS_creat => Class::Forward(Req::Openat {
            dirfd: libc::AT_FDCWD,
            path: a[0],
            flags: libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            mode: a[1] as u32,
        }),
        libc::SYS_ioctl if home0 => match homecall::ioctl_arg(a[1]) {
            Some(homecall::IoArg::Local) => Class::Continue,
            Some(homecall::IoArg::Home) => Class::GoHome(GoHome::Identity),
            Some(_) => Class::Forward(Req::Sys { nr }),
            None => Class::GoHome(GoHome::Unsupported),
        },
        libc::SYS_fcntl if home0 => {
            let cmd = a[1] as i32;
            if homecall::fcntl_served(a[1]) {
                Class::Forward(Req::Sys { nr })
            } else if cmd == libc::F_GETFD || cmd == libc::F_SETFD {
                Class::Continue // close-on-exec is per fd: the placeholder holds it
            } else {
                Class::GoHome(GoHome::Unsupported)
            }
        }
        nr if homecall::template(nr).is_some_and(|t| t.first() == Some(&homecall::Slot::Fd)) => {
            if home0 {
                Class::Forward(Req::Sys { nr })
            } else {
                Class::Continue
            }
        }
        nr if homecall::template(nr).is_some() => Class::Forward(Req::Sys { nr }),
        libc::SYS_poll | libc::SYS_ppoll | libc::SYS_select | libc::SYS_pselect6 => {
            if fds.home.is_empty() {
                Class::Continue
            } else {
                Class::CheckFdSet
            }
        }
        // Two-fd calls: either fd may be home-backed.
        libc::SYS_sendfile | libc::SYS_tee => {
            if home0 || fds.is_home(a[1] as i32 as i64) {
                Class::GoHome(GoHome::Unsupported)
            } else {
                Class::Continue
            }
        }
        libc::SYS_splice | libc::SYS_copy_file_range => {
            if home0 || fds.is_home(a[2] as i32 as i64) {
                Class::GoHome(GoHome::Unsupported)
            } else {
                Class::Continue
            }
        }
        libc::SYS_dup2 | libc::SYS_dup3 => {
            if home0 || fds.is_home(a[1] as i32 as i64) {
                Class::GoHome(GoHome::Unsupported)
            } else {
                Class::Continue
            }
        }
        libc::SYS_epoll_ctl => {
            if fds.is_home(a[2] as i32 as i64) {
                Class::GoHome(GoHome::Unsupported)
            } else {
                Class::Continue
            }
        }
        libc::SYS_close_range => {
            let (lo, hi) = (a[0] as u32 as i64, a[1] as u32 as i64);
            if fds.home.iter().any(|&f| (lo..=hi).contains(&i64::from(f))) {
                Class::GoHome(GoHome::Unsupported)
            } else {
                Class::Continue
            }
        }
        nr if seccomp::PATH_CALLS.contains(&nr) => Class::GoHome(GoHome::Unsupported),
        // Any other fd call: local fd → run here; home-backed → not served remotely yet.
        _ if home0 => Class::GoHome(GoHome::Unsupported),
        _ => Class::Continue,
    }
}

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

/// A home-backed fd opened read-only by absolute path.
#[derive(Debug, Clone)]
struct RoFile {
    path: Vec<u8>,
    cloexec: bool,
    /// The placeholder is the local file, proven the same as home's.
    local: bool,
}

/// The mapping type bits of mmap's flags (`MAP_TYPE` in the kernel).
const MAP_TYPE: i32 = 0x0f;

/// The local file at absolute `path`, opened read-only, if it is a regular file everyone may
/// read with the size and content of `home`; anything else (missing, different, unreadable,
/// not world-readable): `None`.
fn open_same(path: &[u8], home: crate::mapfile::FileId) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsFd, FromRawFd};
    let c = std::ffi::CString::new(path).ok()?;
    // O_NONBLOCK: a FIFO at that path here must not block the supervisor.
    // SAFETY: open of a NUL-terminated path; the fd is owned right after.
    let raw = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: fresh fd.
    let f = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // This daemon opened it as root: only a file everyone may read is compared (else the
    // answer would tell the user whether a file they may not read equals one they may).
    // SAFETY: fstat into a zeroed struct stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(raw, &mut st) } < 0 || st.st_mode & libc::S_IROTH == 0 {
        return None;
    }
    let here = crate::mapfile::of_fd(f.as_fd()).ok()?;
    if here != home {
        return None;
    }
    // A regular file (of_fd checked): back to the blocking mode the process opened it with.
    // SAFETY: fcntl with integer arguments on our fd.
    unsafe { libc::fcntl(raw, libc::F_SETFL, 0) };
    Some(f)
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

    /// The call to send home, or `None` when it works relative to a local directory fd (it
    /// then runs here).
    fn build_call(&mut self, n: &Notif, req: Req) -> seccomp::Result<Option<Call>> {
        Ok(Some(match req {
            Req::Read { fd, len, .. } => Call::Read { fd, len },
            Req::Write { fd, buf, len } => Call::Write {
                fd,
                data: Bytes::from(self.listener.read_mem(n, buf, len as usize)?),
            },
            Req::Pread {
                fd, len, offset, ..
            } => Call::Pread { fd, len, offset },
            Req::Pwrite {
                fd,
                buf,
                len,
                offset,
            } => Call::Pwrite {
                fd,
                data: Bytes::from(self.listener.read_mem(n, buf, len as usize)?),
                offset,
            },
            Req::Lseek { fd, offset, whence } => Call::Lseek { fd, offset, whence },
            Req::Fstat { fd, .. } => Call::Fstat { fd },
            Req::FileId { fd } => Call::FileId { fd },
            Req::Close { fd } => Call::Close { fd },
            Req::Sys { nr } => match self.sys_args(n, nr)? {
                Some(args) => Call::Sys { nr, args },
                None => return Ok(None),
            },
            Req::Openat {
                dirfd,
                path,
                flags,
                mode,
            } => {
                let path = self.read_path(n, path)?;
                if path.first() == Some(&b'/') && flags & (libc::O_ACCMODE | libc::O_PATH) == 0 {
                    self.open_paths.insert(n.id, path.clone());
                }
                let dirfd = if dirfd == libc::AT_FDCWD || self.fds.is_home(dirfd.into()) {
                    dirfd
                } else if path.first() == Some(&b'/') {
                    libc::AT_FDCWD // absolute: the local dirfd plays no part
                } else {
                    return Ok(None);
                };
                Call::Openat {
                    dirfd,
                    path: Bytes::from(path),
                    flags,
                    mode,
                    at: lowest_free_fd(n.pid).map_err(|source| seccomp::Error::Mem {
                        op: "listing /proc/<pid>/fd",
                        pid: n.pid,
                        addr: 0,
                        len: 0,
                        source,
                    })?,
                }
            }
        }))
    }

    /// The arguments of a [`Req::Sys`] call, read out of the process by the table; `None` when
    /// a directory fd is local and its path relative (the call runs here).
    fn sys_args(&self, n: &Notif, nr: i64) -> seccomp::Result<Option<Vec<Arg>>> {
        let a = n.data.args;
        let Some(t) = homecall::template(nr) else {
            return Ok(Some(Vec::new())); // not reached: classify forwards only table calls
        };
        let clamp = |v: u64| v.min(u64::from(homecall::MAX_BUF));
        let mut out = Vec::with_capacity(t.len());
        let mut local_dir = false;
        for (i, slot) in t.iter().enumerate() {
            let arg = match slot {
                Slot::Val => Arg::Val(a[i]),
                Slot::Dir => {
                    let fd = a[i] as i32;
                    if fd == libc::AT_FDCWD {
                        Arg::Val(libc::AT_FDCWD as u64)
                    } else if self.fds.is_home(fd.into()) {
                        Arg::Fd(fd)
                    } else {
                        local_dir = true;
                        Arg::Val(libc::AT_FDCWD as u64)
                    }
                }
                Slot::Fd => Arg::Fd(a[i] as i32),
                Slot::Path | Slot::PathOrNull => {
                    if a[i] == 0 && *slot == Slot::PathOrNull {
                        if local_dir {
                            return Ok(None);
                        }
                        Arg::Null
                    } else {
                        let p = self.read_path(n, a[i])?;
                        if local_dir && p.first() != Some(&b'/') {
                            return Ok(None);
                        }
                        local_dir = false;
                        Arg::In(Bytes::from(p))
                    }
                }
                Slot::In(len) => Arg::In(Bytes::from(self.listener.read_mem(
                    n,
                    a[i],
                    *len as usize,
                )?)),
                Slot::InOrNull(len) => {
                    if a[i] == 0 {
                        Arg::Null
                    } else {
                        Arg::In(Bytes::from(self.listener.read_mem(
                            n,
                            a[i],
                            *len as usize,
                        )?))
                    }
                }
                Slot::Out(len) => Arg::Out(*len),
                Slot::OutLen(li) => Arg::Out(clamp(a[*li]) as u32),
                Slot::Len => Arg::Val(clamp(a[i])),
                Slot::IoctlArg => match homecall::ioctl_arg(a[1]) {
                    Some(IoArg::Val) | None | Some(IoArg::Local | IoArg::Home) => Arg::Val(a[i]),
                    Some(IoArg::In(len) | IoArg::InOut(len)) => Arg::In(Bytes::from(
                        self.listener.read_mem(n, a[i], len as usize)?,
                    )),
                    Some(IoArg::Out(len)) => Arg::Out(len),
                },
            };
            out.push(arg);
        }
        Ok(Some(out))
    }

    /// Where a [`Req::Sys`] call's result buffers go in the process: (address, bytes), in the
    /// order of the reply's data.
    fn sys_outs(nr: i64, a: [u64; 6], ret: i64) -> Vec<(u64, usize)> {
        let Some(t) = homecall::template(nr) else {
            return Vec::new();
        };
        let clamp = |v: u64| v.min(u64::from(homecall::MAX_BUF)) as usize;
        t.iter()
            .enumerate()
            .filter_map(|(i, slot)| match slot {
                Slot::Out(len) => Some((a[i], *len as usize)),
                Slot::OutLen(li) => Some((a[i], clamp(a[*li]).min(ret.max(0) as usize))),
                Slot::IoctlArg => match homecall::ioctl_arg(a[1]) {
                    Some(IoArg::Out(len) | IoArg::InOut(len)) => Some((a[i], len as usize)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// A NUL-terminated path (without the NUL) at `addr`, read page by page (a path may end
    /// right before an unmapped page). Longer than PATH_MAX: ENAMETOOLONG, as the kernel says.
    fn read_path(&self, n: &Notif, addr: u64) -> seccomp::Result<Vec<u8>> {
        const PATH_MAX: usize = 4096;
        let mut out = Vec::new();
        let mut at = addr;
        while out.len() < PATH_MAX {
            let in_page = 4096 - (at % 4096) as usize;
            let chunk = self
                .listener
                .read_mem(n, at, in_page.min(PATH_MAX - out.len()))?;
            if let Some(end) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
            at += chunk.len() as u64;
        }
        Err(seccomp::Error::Mem {
            op: "reading a path",
            pid: n.pid,
            addr,
            len: PATH_MAX,
            source: io::Error::from_raw_os_error(libc::ENAMETOOLONG),
        })
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

    /// An `mmap` of home-backed `fd`: runs here on the local file when it is the file home
    /// has (see [`Req::FileId`]); `None`: it goes home.
    fn map_here(&self, a: [u64; 6]) -> Option<Class> {
        let fd = a[4] as i32;
        let rf = self.ro_files.get(&fd)?;
        // A shared mapping would have to see writes made at home: only private ones.
        if a[3] as i32 & MAP_TYPE != libc::MAP_PRIVATE {
            return None;
        }
        Some(if rf.local {
            Class::Continue
        } else {
            Class::Forward(Req::FileId { fd })
        })
    }

    /// Home said what the file behind `fd` is: if the same path here holds the same file,
    /// the placeholder at `fd` becomes that local file and the mmap runs here (the fd stays
    /// home-backed: reads, seeks and close still go home). Otherwise the process goes home
    /// ([`Stop::GoHome`], the mmap unanswered).
    fn map_local(&mut self, n: Notif, fd: i32, reply: &Reply) -> Result<Answered, Error> {
        let home = (reply.ret >= 0)
            .then(|| crate::mapfile::FileId::from_bytes(&reply.data))
            .flatten();
        let local = match (home, self.ro_files.get(&fd)) {
            (Some(h), Some(rf)) => open_same(&rf.path, h).map(|f| (f, rf.cloexec)),
            _ => None,
        };
        let Some((file, cloexec)) = local else {
            tracing::info!(
                tid = n.pid,
                fd,
                ret = reply.ret,
                "a mapped home file is not the same here: the process goes home"
            );
            self.pending_stop = Some(Stop::GoHome {
                notif: n,
                reason: GoHome::MmapHomeFd,
            });
            return Ok(Answered::Delivered);
        };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
        match self.listener.add_fd(n.id, raw, Some(fd), cloexec, false) {
            Ok(_) => {}
            Err(seccomp::Error::Cancelled) => return Ok(Answered::Cancelled),
            Err(e) => return Err(e.into()),
        }
        if let Some(rf) = self.ro_files.get_mut(&fd) {
            rf.local = true;
        }
        self.stats.mapped_here += 1;
        match self.listener.respond(n.id, Response::Continue) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            pid: 4711,
            ppid: 1,
            pgid: 4700,
            sid: 4000,
            local_pid: 99,
        }
    }

    #[test]
    fn classification() {
        let fds = FdTable::new([0, 1, 5]);
        let c = |nr, a| classify(nr, a, &fds, &id());
        assert_eq!(c(libc::SYS_getpid, [0; 6]), Class::Answer(4711));
        assert_eq!(c(libc::SYS_getppid, [0; 6]), Class::Answer(1));
        assert_eq!(c(libc::SYS_getsid, [0; 6]), Class::Answer(4000));
        assert_eq!(
            c(libc::SYS_getsid, [12, 0, 0, 0, 0, 0]),
            Class::GoHome(GoHome::Identity)
        );
        assert_eq!(
            c(libc::SYS_kill, [4711, 10, 0, 0, 0, 0]),
            Class::SignalSelf { sig: 10 }
        );
        assert_eq!(
            c(libc::SYS_kill, [4712, 10, 0, 0, 0, 0]),
            Class::GoHome(GoHome::Identity)
        );
        // the main thread's TID is the home PID; other threads keep their TIDs here
        assert_eq!(
            c(libc::SYS_tgkill, [4711, 4711, 10, 0, 0, 0]),
            Class::SignalThread { tid: 99, sig: 10 }
        );
        assert_eq!(
            c(libc::SYS_tgkill, [4711, 123, 12, 0, 0, 0]),
            Class::SignalThread { tid: 123, sig: 12 }
        );
        assert_eq!(
            c(libc::SYS_tgkill, [4712, 123, 12, 0, 0, 0]),
            Class::GoHome(GoHome::Identity)
        );
        assert_eq!(c(libc::SYS_gettid, [0; 6]), Class::Gettid);
        assert_eq!(
            c(libc::SYS_write, [1, 0x1000, 64, 0, 0, 0]),
            Class::Forward(Req::Write {
                fd: 1,
                buf: 0x1000,
                len: 64
            })
        );
        assert_eq!(
            c(libc::SYS_write, [3, 0x1000, 64, 0, 0, 0]),
            Class::Continue
        );
        assert_eq!(
            c(libc::SYS_read, [5, 0x1000, u64::MAX, 0, 0, 0]),
            Class::Forward(Req::Read {
                fd: 5,
                buf: 0x1000,
                len: MAX_IO
            })
        );
        assert_eq!(
            c(libc::SYS_ioctl, [1, 0x5401, 0, 0, 0, 0]),
            Class::Forward(Req::Sys {
                nr: libc::SYS_ioctl
            })
        );
        assert_eq!(
            c(libc::SYS_ioctl, [1, 0x1234, 0, 0, 0, 0]),
            Class::GoHome(GoHome::Unsupported)
        );
        assert_eq!(c(libc::SYS_ioctl, [4, 0x5401, 0, 0, 0, 0]), Class::Continue);
        assert_eq!(
            c(libc::SYS_mmap, [0, 4096, 1, 2, 5, 0]),
            Class::GoHome(GoHome::MmapHomeFd)
        );
        assert_eq!(c(libc::SYS_mmap, [0, 4096, 1, 2, 4, 0]), Class::Continue);
        assert_eq!(
            c(libc::SYS_dup2, [4, 1, 0, 0, 0, 0]),
            Class::GoHome(GoHome::Unsupported)
        );
        assert_eq!(
            c(libc::SYS_close_range, [3, u32::MAX as u64, 0, 0, 0, 0]),
            Class::GoHome(GoHome::Unsupported)
        );
        assert_eq!(
            c(libc::SYS_close_range, [6, u32::MAX as u64, 0, 0, 0, 0]),
            Class::Continue
        );
        // relative to a local dirfd: decided once the path is read
        assert_eq!(
            c(libc::SYS_openat, [3, 0, 0, 0, 0, 0]),
            Class::Forward(Req::Openat {
                dirfd: 3,
                path: 0,
                flags: 0,
                mode: 0
            })
        );
        assert_eq!(
            c(
                libc::SYS_openat,
                [libc::AT_FDCWD as u64, 0x10, 2, 0o644, 0, 0]
            ),
            Class::Forward(Req::Openat {
                dirfd: libc::AT_FDCWD,
                path: 0x10,
                flags: 2,
                mode: 0o644
            })
        );
        assert_eq!(
            c(libc::SYS_stat, [0; 6]),
            Class::Forward(Req::Sys { nr: libc::SYS_stat })
        );
        // terminal ioctls on a home fd run at home; unknown ones go home; local fds stay
        assert_eq!(
            c(libc::SYS_ioctl, [1, libc::TIOCGWINSZ, 0, 0, 0, 0]),
            Class::Forward(Req::Sys {
                nr: libc::SYS_ioctl
            })
        );
        assert_eq!(
            c(libc::SYS_ioctl, [1, libc::TIOCSPGRP, 0, 0, 0, 0]),
            Class::GoHome(GoHome::Identity)
        );
        assert_eq!(
            c(libc::SYS_ioctl, [1, libc::FIOCLEX, 0, 0, 0, 0]),
            Class::Continue
        );
        assert_eq!(
            c(libc::SYS_fcntl, [1, libc::F_GETFL as u64, 0, 0, 0, 0]),
            Class::Forward(Req::Sys {
                nr: libc::SYS_fcntl
            })
        );
        assert_eq!(
            c(libc::SYS_fcntl, [1, libc::F_DUPFD as u64, 0, 0, 0, 0]),
            Class::GoHome(GoHome::Unsupported)
        );
        assert_eq!(c(libc::SYS_fchdir, [4, 0, 0, 0, 0, 0]), Class::Continue);
        assert_eq!(
            c(libc::SYS_fchdir, [5, 0, 0, 0, 0, 0]),
            Class::Forward(Req::Sys {
                nr: libc::SYS_fchdir
            })
        );
        // not served remotely (yet): home
        assert_eq!(
            c(libc::SYS_openat2, [0; 6]),
            Class::GoHome(GoHome::Unsupported)
        );
        // every table call is forwarded or run locally, never sent home blindly
        for nr in seccomp::PATH_CALLS {
            if homecall::template(*nr).is_some() {
                assert!(
                    matches!(c(*nr, [5, 0, 0, 0, 0, 0]), Class::Forward(_)),
                    "{nr}"
                );
            }
        }
        for nr in seccomp::HOME_CALLS {
            assert!(matches!(c(*nr, [0; 6]), Class::GoHome(_)), "{nr}");
        }
        // Negative fd numbers are never home-backed.
        assert_eq!(
            c(libc::SYS_write, [u64::MAX, 0, 0, 0, 0, 0]),
            Class::Continue
        );
        assert_eq!(c(libc::SYS_poll, [0; 6]), Class::CheckFdSet);
        let none = FdTable::default();
        assert_eq!(
            classify(libc::SYS_poll, [0; 6], &none, &id()),
            Class::Continue
        );
    }
}
