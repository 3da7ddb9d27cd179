//! The data types of an image: everything about a frozen process except memory contents.

/// Identity of a file, to refuse a thaw against a different file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmaKind {
    /// Private anonymous memory (incl. heap, stack); present pages shipped.
    Anon,
    /// Shared anonymous memory (owned by this process alone); contents shipped.
    SharedAnon,
    /// File mapping; private: only COW'd pages shipped; shared: nothing shipped.
    File,
    Vvar,
    VvarVclock,
    Vdso,
    Vsyscall,
}

#[derive(Debug, Clone)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    pub shared: bool,
    pub growsdown: bool,
    pub offset: u64,
    pub kind: VmaKind,
    /// As /proc/PID/maps shows it (`[heap]`, `/usr/lib/...`).
    pub name: String,
    pub file: Option<FileId>,
    /// [`vmflag`] bits: madvise state, mlock, and the maximum protection (from smaps' VmFlags).
    pub flags: u32,
}

/// Per-mapping state beyond protection and sharing, as smaps' VmFlags shows it; restored by
/// mmap flags, open modes, madvise and mlock2.
pub mod vmflag {
    /// "mw": may be made writable (a shared file mapping whose file was opened for writing).
    pub const MAY_WRITE: u32 = 1 << 0;
    /// "dd": MADV_DONTDUMP.
    pub const DONTDUMP: u32 = 1 << 1;
    /// "dc": MADV_DONTFORK.
    pub const DONTFORK: u32 = 1 << 2;
    /// "wf": MADV_WIPEONFORK.
    pub const WIPEONFORK: u32 = 1 << 3;
    /// "hg": MADV_HUGEPAGE.
    pub const HUGEPAGE: u32 = 1 << 4;
    /// "nh": MADV_NOHUGEPAGE.
    pub const NOHUGEPAGE: u32 = 1 << 5;
    /// "mg": MADV_MERGEABLE.
    pub const MERGEABLE: u32 = 1 << 6;
    /// "sr": MADV_SEQUENTIAL.
    pub const SEQUENTIAL: u32 = 1 << 7;
    /// "rr": MADV_RANDOM.
    pub const RANDOM: u32 = 1 << 8;
    /// "lo": mlock'ed.
    pub const LOCKED: u32 = 1 << 9;
    /// "lf": mlock'ed on fault (MLOCK_ONFAULT).
    pub const LOCKONFAULT: u32 = 1 << 10;
    /// "nr": MAP_NORESERVE.
    pub const NORESERVE: u32 = 1 << 11;
    /// "ac": charged to the commit limit (a private mapping that is or was writable).
    pub const ACCOUNT: u32 = 1 << 12;
    /// The VmFlags mnemonics carried, with their bit.
    pub const CARRIED: &[(&str, u32)] = &[
        ("mw", MAY_WRITE),
        ("dd", DONTDUMP),
        ("dc", DONTFORK),
        ("wf", WIPEONFORK),
        ("hg", HUGEPAGE),
        ("nh", NOHUGEPAGE),
        ("mg", MERGEABLE),
        ("sr", SEQUENTIAL),
        ("rr", RANDOM),
        ("lo", LOCKED),
        ("lf", LOCKONFAULT),
        ("nr", NORESERVE),
        ("ac", ACCOUNT),
    ];
    /// Mnemonics that follow from how a mapping is made again (protection, sharing, may-read/
    /// exec/share, soft-dirty, grows-down), so need no bit of their own.
    pub const IMPLIED: &[&str] = &["rd", "wr", "ex", "sh", "mr", "me", "ms", "sd", "gd"];
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// Regular file, directory or harmless character device, reopened by path.
    Path {
        path: String,
        flags: u32,
        pos: u64,
        is_dir: bool,
    },
    /// Shares its open file description with an earlier fd (kcmp).
    SharedWith { fd: i32, cloexec: bool },
    /// A terminal or pipe on 0..2: attached to thaw's stdio (or a file named at thaw).
    Stdio { what: String, cloexec: bool },
    /// A pipe or FIFO above fd 2 whose other end lies outside the process (e.g. one a shell
    /// leaked): thaw attaches it to what the user names (a placeholder fd).
    External {
        /// What it was (`write end of pipe:[1234]`).
        what: String,
        /// Its file status flags (O_ACCMODE, O_NONBLOCK, O_CLOEXEC ...).
        flags: u32,
    },
    /// One end of a pipe whose both ends the process holds and no other process does (the
    /// self-pipe of an event loop): made again with pipe2, its unread data written back.
    Pipe {
        /// The pipe's inode: the fds of one pipe share it.
        pipe: u64,
        write: bool,
        flags: u32,
        /// F_GETPIPE_SZ.
        size: u32,
        /// The bytes waiting in it (on the first read-end fd only).
        data: Vec<u8>,
    },
    /// An eventfd with its counter.
    EventFd {
        count: u64,
        semaphore: bool,
        flags: u32,
    },
    /// An epoll instance with its registrations (made again once every other fd is there).
    Epoll {
        flags: u32,
        watches: Vec<EpollWatch>,
    },
    /// A timerfd: its clock, the time left and the interval (as /proc shows them), and the
    /// expirations not read yet.
    TimerFd {
        clockid: i32,
        flags: u32,
        ticks: u64,
        /// (seconds, nanoseconds) left until it next expires; zero: disarmed.
        value: (u64, u64),
        interval: (u64, u64),
    },
    /// A signalfd with its signal mask.
    SignalFd { mask: u64, flags: u32 },
    /// A file that no longer has a name: a memfd, or a deleted file; its contents travel in
    /// the image, and thaw makes it again (a memfd of the same name and seals; a file of the
    /// same name in the same directory, deleted again at once).
    Contents {
        /// The memfd's name (after `memfd:`), or the deleted file's path.
        name: String,
        memfd: bool,
        flags: u32,
        pos: u64,
        /// The file mode (permission bits).
        mode: u32,
        /// F_GET_SEALS of a memfd.
        seals: u32,
        data: Vec<u8>,
    },
    /// One end of a connected AF_UNIX stream socketpair whose both ends the process holds and
    /// no other process does, with the bytes waiting to be read on this end.
    SocketPair {
        /// The lower of the two socket inodes: the ends of one pair share it.
        pair: u64,
        /// This end has the lower inode.
        first: bool,
        flags: u32,
        data: Vec<u8>,
    },
    /// A terminal above fd 2 (`less`, `vi`, `top` open /dev/tty): another open file of the
    /// terminal at stdio fd `like`. Thaw opens the terminal it attaches at `like` again
    /// (a terminal there is required) with these file status flags.
    Terminal {
        /// The stdio fd (0..2) holding the same terminal.
        like: i32,
        flags: u32,
    },
    /// An inotify instance with its watches (issue 8 part 3), added again in watch-descriptor
    /// order so that each gets its old number.
    Inotify {
        flags: u32,
        watches: Vec<InotifyWatch>,
    },
}

/// One watch of an inotify instance: its descriptor, its mask (as inotify_add_watch takes it)
/// and the file or directory it watches (its path when frozen, and its device and inode: thaw
/// refuses a path that names another file now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    pub mask: u32,
    pub path: String,
    pub dev: u64,
    pub ino: u64,
}

/// The process's terminal (issue 8 part 6): its settings and whether it was the controlling
/// terminal. Present when some fd of the process was a terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerminalImage {
    /// `struct termios` as TCGETS returns it (raw bytes; 60 on x86_64): set on the terminal
    /// thaw attaches before the process runs.
    pub termios: Vec<u8>,
    /// It was the process's controlling terminal (a session leader gets it back as such).
    pub ctty: bool,
    /// The stdio fd (0..2) that holds it.
    pub fd: i32,
}

// --- file locks (issue 8 part 3)

/// Which call took a file lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// flock(2): on the open file description.
    Flock,
    /// fcntl(F_SETLK): the process's, over a byte range.
    Posix,
    /// fcntl(F_OFD_SETLK): the open file description's, over a byte range.
    Ofd,
}

/// One file lock the process holds, on the file open at `fd` (the open file description
/// it was taken through).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLock {
    pub fd: i32,
    pub kind: LockKind,
    /// A write (exclusive) lock; else a read (shared) one.
    pub write: bool,
    /// First byte, and last byte (None: to the end of the file, however long). A flock
    /// covers the whole file: (0, None).
    pub start: u64,
    pub end: Option<u64>,
}

// --- POSIX timers (issue 8 part 3)

/// One POSIX timer (timer_create): thaw makes it again under the same id, on the same clock,
/// with the same notification, aimed at the same thread (its new TID), armed for the time
/// that was left and the same interval.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    /// sigev_signo and sigev_value.
    pub signo: i32,
    pub value: u64,
    /// sigev_notify (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, with SIGEV_THREAD_ID).
    pub notify: i32,
    /// The thread it signals (SIGEV_THREAD_ID: an old TID or the old PID) or the process.
    pub target: i32,
    /// (seconds, nanoseconds) of `it_interval` and of the time left (`it_value`).
    pub interval: (u64, u64),
    pub left: (u64, u64),
}

/// One registration of an epoll instance, as /proc/PID/fdinfo shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollWatch {
    pub fd: i32,
    /// EPOLLIN ... with EPOLLET/EPOLLONESHOT/EPOLLWAKEUP/EPOLLEXCLUSIVE.
    pub events: u32,
    pub data: u64,
}

impl FdKind {
    /// O_CLOEXEC of the fd (kinds that keep their file status flags).
    pub fn cloexec(&self) -> bool {
        match self {
            FdKind::Stdio { cloexec, .. } | FdKind::SharedWith { cloexec, .. } => *cloexec,
            FdKind::Path { flags, .. }
            | FdKind::External { flags, .. }
            | FdKind::Pipe { flags, .. }
            | FdKind::EventFd { flags, .. }
            | FdKind::Epoll { flags, .. }
            | FdKind::TimerFd { flags, .. }
            | FdKind::SignalFd { flags, .. }
            | FdKind::Contents { flags, .. }
            | FdKind::SocketPair { flags, .. }
            | FdKind::Terminal { flags, .. }
            | FdKind::Inotify { flags, .. } => flags & libc::O_CLOEXEC as u32 != 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fd {
    pub fd: i32,
    pub kind: FdKind,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SigAction {
    pub sig: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone)]
pub struct PendingSignal {
    /// true: process-wide (shared) queue.
    pub shared: bool,
    pub info: Vec<u8>,
}

/// mm fields restored with PR_SET_MM_MAP.
#[derive(Debug, Clone, Copy, Default)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

impl MmFields {
    /// The fields in `prctl(PR_SET_MM_MAP)` order, which is also their order in an image.
    pub fn words(&self) -> [u64; 11] {
        [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ]
    }
}

#[derive(Debug, Clone, Default)]
pub struct Creds {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
}

/// Everything about a frozen process except memory contents (the PROCESS section).
#[derive(Debug, Clone, Default)]
pub struct ProcessImage {
    pub pid: i32,
    pub boot_id: String,
    pub comm: String,
    pub cmdline: Vec<u8>,
    pub exe: String,
    pub exe_id: FileId,
    /// `user_regs_struct` as 27 u64, syscall restart already applied.
    pub regs: Vec<u64>,
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    /// (pointer, length, signature)
    pub rseq: Option<(u64, u32, u32)>,
    pub mm: MmFields,
    pub auxv: Vec<u8>,
    pub personality: u32,
    pub rlimits: Vec<(u32, u64, u64)>,
    pub umask: u32,
    pub cwd: String,
    pub creds: Creds,
    pub no_new_privs: bool,
    pub session_leader: bool,
    pub pgrp_leader: bool,
    /// It was stopped by job control (SIGSTOP/SIGTSTP) when frozen; thaw stops it again.
    pub stopped: bool,
    pub sigactions: Vec<SigAction>,
    /// (ss_sp, ss_flags, ss_size)
    pub altstack: (u64, u32, u64),
    pub pending: Vec<PendingSignal>,
    pub clear_child_tid: u64,
    pub robust_list: (u64, u64),
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF as `struct itimerval` (4 words each).
    pub itimers: [[u64; 4]; 3],
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
    /// PR_GET_THP_DISABLE's value (bit 0: disabled; higher bits: its flags).
    pub thp_disable: u64,
    /// PR_SET_CHILD_SUBREAPER.
    pub child_subreaper: bool,
    /// /proc/PID/oom_score_adj.
    pub oom_score_adj: i32,
    /// Every thread but the main one (whose state is in the fields above), in TID order.
    pub threads: Vec<ThreadImage>,
    /// The terminal of its stdio, with its settings (None: no fd was a terminal).
    pub terminal: Option<TerminalImage>,
    /// Its POSIX timers (timer_create), in id order.
    pub posix_timers: Vec<PosixTimer>,
    /// The file locks it holds (flock, fcntl and OFD locks), taken again at thaw.
    pub file_locks: Vec<FileLock>,
}

/// One thread other than the main thread: what is per thread in Linux (registers incl. fs/gs
/// base, FPU/xsave state, signal mask and private pending signals, rseq, sigaltstack,
/// clear_child_tid, robust list, name). Credentials, no_new_privs and seccomp are per thread
/// too; freeze refuses threads whose ones differ from the main thread's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadImage {
    pub tid: i32,
    pub comm: String,
    /// `user_regs_struct` as 27 u64, syscall restart already applied.
    pub regs: Vec<u64>,
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    /// (pointer, length, signature)
    pub rseq: Option<(u64, u32, u32)>,
    /// (ss_sp, ss_flags, ss_size)
    pub altstack: (u64, u32, u64),
    pub clear_child_tid: u64,
    pub robust_list: (u64, u64),
    /// Signals queued for this thread alone (raw 128-byte siginfos).
    pub pending: Vec<Vec<u8>>,
}
