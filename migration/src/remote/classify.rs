//! Sorting a trapped call (pure): what the supervisor does with it (see the parent module).

use std::collections::BTreeSet;

use crate::homecall;
use crate::seccomp;

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
    pub(super) fn remove(&mut self, fd: i32) {
        self.ttys.remove(&fd);
        self.home.remove(&fd);
    }
    pub(super) fn insert(&mut self, fd: i32) {
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
    /// set_tid_address: its answer is the TID glibc caches in its thread descriptor (and
    /// writes as the owner of its locks); in the main thread that is the home PID, as gettid
    /// says, never the PID here: the process's locks then stay its own when it comes home.
    SetTidAddress,
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
        libc::SYS_set_tid_address => Class::SetTidAddress,
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
