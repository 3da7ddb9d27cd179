//! The seccomp user-notification machinery of the remote: the classic-BPF filter, the listener,
//! and checked access to the trapped process's memory.
//!
//! - [`Program`] builds the filter: the architecture must be `AUDIT_ARCH_X86_64` (anything else
//!   kills the process: its numbers would mean other calls), x32 calls (bit 30 set) fail with
//!   ENOSYS, the calls of a [`TrapSet`] return `SECCOMP_RET_USER_NOTIF`, and everything else is
//!   allowed. `mmap` is trapped only when it maps a file (`MAP_ANONYMOUS` clear).
//! - [`install`] installs it in the calling process with `SECCOMP_FILTER_FLAG_NEW_LISTENER`
//!   (async-signal-safe: usable between fork and exec, or injected during thaw).
//! - [`Listener`] wraps the listener fd: `NOTIF_RECV` with a time-out, `ID_VALID`, `SEND` (value,
//!   errno or `FLAG_CONTINUE`), `ADDFD`, `SET_FLAGS(SYNC_WAKE_UP)`; its buffers are sized with
//!   `SECCOMP_GET_NOTIF_SIZES`, so a kernel with larger structures cannot overrun them.
//! - [`Listener::read_mem`] / [`Listener::write_mem`] use `process_vm_readv`/`writev` (never
//!   `/proc/pid/mem`, which writes through read-only pages) and check `ID_VALID` — after the read
//!   (the data is only trusted if the notification was still live), before the write (a write
//!   into a process whose call was cancelled, or whose PID was reused, must not happen). PIDs
//!   are only safe while the supervisor is the trapped process's parent and has not reaped it.
//!
//! Everything here is x86_64 only (the numbers and the architecture check).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `AUDIT_ARCH_X86_64` (EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE).
pub const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Set in the syscall number of x32 calls.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_GET_NOTIF_SIZES: libc::c_uint = 3;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_uint = 1 << 3;

const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

const SECCOMP_USER_NOTIF_FLAG_CONTINUE: u32 = 1;
const SECCOMP_ADDFD_FLAG_SETFD: u32 = 1;
const SECCOMP_ADDFD_FLAG_SEND: u32 = 2;
/// Not in the Debian headers; supported by this kernel (deputy-facts §4).
pub const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

// ioctl numbers: _IOC(dir, '!', nr, size), dir 1 = write, 3 = read|write.
const fn ioc(dir: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | ((b'!' as u64) << 8) | nr
}
const IOCTL_NOTIF_RECV: u64 = ioc(3, 0, size_of::<Notif>() as u64);
const IOCTL_NOTIF_SEND: u64 = ioc(3, 1, size_of::<RawResp>() as u64);
const IOCTL_NOTIF_ID_VALID: u64 = ioc(1, 2, 8);
const IOCTL_NOTIF_ADDFD: u64 = ioc(1, 3, size_of::<RawAddFd>() as u64);
const IOCTL_NOTIF_SET_FLAGS: u64 = ioc(1, 4, 8);

// BPF opcodes.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}

/// What can go wrong with the filter or the listener.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("installing the seccomp filter failed: {0}")]
    Install(io::Error),
    #[error("the filter has {0} instructions, more than BPF_MAXINSNS (4096)")]
    TooLong(usize),
    #[error("SECCOMP_GET_NOTIF_SIZES failed: {0}")]
    Sizes(io::Error),
    #[error("the kernel's seccomp_data is {kernel} bytes, this build knows {ours}: refusing")]
    DataSize { kernel: u16, ours: u16 },
    #[error("the notification is no longer valid (cancelled by a signal, or the process died)")]
    Cancelled,
    #[error("the listener has no more users (the trapped process is gone)")]
    NoMoreUsers,
    #[error("{op} on the seccomp listener failed: {source}")]
    Ioctl {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op} of {len} bytes at {addr:#x} in process {pid} failed: {source}")]
    Mem {
        op: &'static str,
        pid: u32,
        addr: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("{op} of {len} bytes at {addr:#x} in process {pid} moved only {done} bytes")]
    ShortMem {
        op: &'static str,
        pid: u32,
        addr: u64,
        len: usize,
        done: usize,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The calls a filter traps, by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrapSet {
    /// Trapped always.
    pub calls: std::collections::BTreeSet<i64>,
    /// Trap `mmap` when it maps a file (MAP_ANONYMOUS clear).
    pub mmap_of_fd: bool,
}

/// Calls that take an fd (x86_64).
pub const FD_CALLS: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_ioctl,
    libc::SYS_fcntl,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fchmod,
    libc::SYS_fchown,
    libc::SYS_fchdir,
    libc::SYS_flock,
    libc::SYS_getdents64,
    libc::SYS_getdents,
    libc::SYS_sendfile,
    libc::SYS_splice,
    libc::SYS_tee,
    libc::SYS_copy_file_range,
    libc::SYS_fadvise64,
    libc::SYS_fallocate,
    libc::SYS_sync_file_range,
    libc::SYS_readahead,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_ctl,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_fstatfs,
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_syncfs,
    libc::SYS_vmsplice,
];

/// Calls that resolve a path (x86_64); they run at home.
pub const PATH_CALLS: &[i64] = &[
    libc::SYS_open,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_creat,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_link,
    libc::SYS_linkat,
    libc::SYS_symlink,
    libc::SYS_symlinkat,
    libc::SYS_chdir,
    libc::SYS_chroot,
    libc::SYS_getcwd,
    libc::SYS_chmod,
    libc::SYS_fchmodat,
    libc::SYS_chown,
    libc::SYS_lchown,
    libc::SYS_fchownat,
    libc::SYS_truncate,
    libc::SYS_utime,
    libc::SYS_utimes,
    libc::SYS_utimensat,
    libc::SYS_futimesat,
    libc::SYS_statfs,
    libc::SYS_mknod,
    libc::SYS_mknodat,
    libc::SYS_getxattr,
    libc::SYS_lgetxattr,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_listxattr,
    libc::SYS_llistxattr,
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_umask,
];

/// Calls whose answers are home's identity: the getpid family and signals by PID.
pub const IDENTITY_CALLS: &[i64] = &[
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_set_tid_address,
    libc::SYS_getppid,
    libc::SYS_getpgid,
    libc::SYS_getpgrp,
    libc::SYS_getsid,
    libc::SYS_setpgid,
    libc::SYS_setsid,
    libc::SYS_kill,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_rt_sigqueueinfo,
    libc::SYS_rt_tgsigqueueinfo,
    libc::SYS_pidfd_open,
    libc::SYS_wait4,
    libc::SYS_waitid,
];

/// Calls the remote cannot serve exactly: the process must go home first.
pub const HOME_CALLS: &[i64] = &[
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
];

impl TrapSet {
    /// The remote's set (see the crate documentation: "trap broadly, answer locally").
    pub fn remote() -> TrapSet {
        TrapSet {
            calls: FD_CALLS
                .iter()
                .chain(PATH_CALLS)
                .chain(IDENTITY_CALLS)
                .chain(HOME_CALLS)
                .copied()
                .collect(),
            mmap_of_fd: true,
        }
    }
}

/// One classic-BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const SockFilter,
}

/// A built filter, ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    insns: Vec<SockFilter>,
}

const fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}
const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

impl Program {
    /// The filter for `set`. Each trapped number is one `jeq nr → ret NOTIF` pair, so no jump
    /// is ever longer than one instruction (classic BPF jumps are 8 bits).
    pub fn build(set: &TrapSet) -> Result<Program> {
        let mut p = vec![
            stmt(BPF_LD_W_ABS, OFF_ARCH),
            jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
            stmt(BPF_LD_W_ABS, OFF_NR),
            jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ];
        if set.mmap_of_fd {
            // nr == mmap: flags & MAP_ANONYMOUS → allow, else notify. A reloads nr after.
            p.extend([
                jump(BPF_JEQ_K, libc::SYS_mmap as u32, 0, 4),
                stmt(BPF_LD_W_ABS, off_arg_lo(3)),
                jump(BPF_JSET_K, libc::MAP_ANONYMOUS as u32, 0, 1),
                stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
                stmt(BPF_RET_K, SECCOMP_RET_USER_NOTIF),
            ]);
        }
        for &nr in &set.calls {
            if nr == libc::SYS_mmap && set.mmap_of_fd {
                continue;
            }
            p.push(jump(BPF_JEQ_K, nr as u32, 0, 1));
            p.push(stmt(BPF_RET_K, SECCOMP_RET_USER_NOTIF));
        }
        p.push(stmt(BPF_RET_K, SECCOMP_RET_ALLOW));
        if p.len() > 4096 {
            return Err(Error::TooLong(p.len()));
        }
        Ok(Program { insns: p })
    }

    pub fn instructions(&self) -> &[SockFilter] {
        &self.insns
    }

    /// Runs the filter on a call as the kernel would (for tests and for the supervisor's own
    /// checks): returns the `SECCOMP_RET_*` action.
    pub fn evaluate(&self, arch: u32, nr: i32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        while let Some(ins) = self.insns.get(pc) {
            pc += 1;
            match ins.code {
                BPF_LD_W_ABS => {
                    let o = ins.k as usize;
                    acc = u32::from_ne_bytes(data[o..o + 4].try_into().expect("4 bytes"));
                }
                BPF_RET_K => return ins.k,
                BPF_JEQ_K | BPF_JGE_K | BPF_JSET_K => {
                    let t = match ins.code {
                        BPF_JEQ_K => acc == ins.k,
                        BPF_JGE_K => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += usize::from(if t { ins.jt } else { ins.jf });
                }
                _ => return SECCOMP_RET_KILL_PROCESS,
            }
        }
        SECCOMP_RET_KILL_PROCESS
    }
}

/// What [`Program::evaluate`] returns for a trapped call.
pub const RET_USER_NOTIF: u32 = SECCOMP_RET_USER_NOTIF;
/// What [`Program::evaluate`] returns for an allowed call.
pub const RET_ALLOW: u32 = SECCOMP_RET_ALLOW;
/// What [`Program::evaluate`] returns for another architecture.
pub const RET_KILL_PROCESS: u32 = SECCOMP_RET_KILL_PROCESS;
/// What [`Program::evaluate`] returns for an x32 call.
pub const RET_ERRNO_ENOSYS: u32 = SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

/// Installs `prog` on the calling thread with a new listener and returns the listener's fd
/// number. With `no_new_privs`, sets it first (needed unless the caller has CAP_SYS_ADMIN).
///
/// Async-signal-safe (two raw system calls, no allocation): callable in a forked child.
/// Every call in `prog`'s trap set made afterwards blocks until someone answers on the
/// listener, so hand the listener over first (or let the supervisor take it with
/// `pidfd_getfd`).
pub fn install(prog: &Program, no_new_privs: bool) -> std::result::Result<RawFd, i32> {
    let fprog = SockFprog {
        len: prog.insns.len() as u16,
        filter: prog.insns.as_ptr(),
    };
    // SAFETY: prctl with integer arguments only.
    if no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(errno());
    }
    // SAFETY: `fprog` points at `prog.insns`, alive for the duration of the call; the kernel
    // copies the program.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const SockFprog,
        )
    };
    if r < 0 { Err(errno()) } else { Ok(r as RawFd) }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `struct seccomp_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeccompData {
    pub nr: i32,
    pub arch: u32,
    pub instruction_pointer: u64,
    pub args: [u64; 6],
}

/// `struct seccomp_notif`: one trapped call.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Notif {
    pub id: u64,
    /// The TID of the trapping thread.
    pub pid: u32,
    pub flags: u32,
    pub data: SeccompData,
}

#[repr(C)]
#[derive(Default)]
struct RawResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RawAddFd {
    id: u64,
    flags: u32,
    srcfd: u32,
    newfd: u32,
    newfd_flags: u32,
}

#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct NotifSizes {
    notif: u16,
    resp: u16,
    data: u16,
}

/// How to answer a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The call returns `val` (≥ 0).
    Value(i64),
    /// The call fails with this errno.
    Errno(i32),
    /// Let the kernel run the call as if it had not been trapped (only for calls that are
    /// safe to run locally: the process could have changed its arguments meanwhile).
    Continue,
}

/// A seccomp listener fd. See the module documentation.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    sizes: NotifSizes,
}

impl Listener {
    /// Wraps a listener fd; checks the kernel's structure sizes.
    pub fn new(fd: OwnedFd) -> Result<Listener> {
        let mut sizes = NotifSizes::default();
        // SAFETY: GET_NOTIF_SIZES writes a struct seccomp_notif_sizes (3 × u16) to the pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                SECCOMP_GET_NOTIF_SIZES,
                0,
                &mut sizes as *mut NotifSizes,
            )
        };
        if r != 0 {
            return Err(Error::Sizes(io::Error::last_os_error()));
        }
        let ours = size_of::<SeccompData>() as u16;
        if sizes.data != ours {
            return Err(Error::DataSize {
                kernel: sizes.data,
                ours,
            });
        }
        Ok(Listener { fd, sizes })
    }

    /// The listener fd (for polling).
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ioctl(&self, op: &'static str, req: u64, arg: *mut libc::c_void) -> io::Result<()> {
        loop {
            // SAFETY: every caller passes a pointer to a live, correctly sized structure for
            // `req`.
            let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg) };
            if r >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                let _ = op;
                return Err(e);
            }
        }
    }

    /// `SECCOMP_IOCTL_NOTIF_SET_FLAGS(SYNC_WAKE_UP)`: the trapped thread and the supervisor hand
    /// over on one CPU (halves the cost per call in this VM).
    pub fn set_sync_wake_up(&self) -> Result<()> {
        self.ioctl(
            "SET_FLAGS",
            IOCTL_NOTIF_SET_FLAGS,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP as usize as *mut libc::c_void,
        )
        .map_err(|source| Error::Ioctl {
            op: "SET_FLAGS(SYNC_WAKE_UP)",
            source,
        })
    }

    /// Waits up to `timeout` for a notification: `Ok(None)` on time-out,
    /// `Err(NoMoreUsers)` once the trapped process is gone.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Notif>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(None);
            }
            return Err(Error::Ioctl {
                op: "poll",
                source: e,
            });
        }
        if r == 0 {
            return Ok(None);
        }
        if pfd.revents & libc::POLLIN == 0 && pfd.revents & libc::POLLHUP != 0 {
            return Err(Error::NoMoreUsers);
        }
        self.recv_ready()
    }

    /// `NOTIF_RECV` without waiting first: for a caller whose own poll said the listener is
    /// readable (it would block otherwise). `Ok(None)` if the notification went away.
    pub fn recv_ready(&self) -> Result<Option<Notif>> {
        // The kernel writes `sizes.notif` bytes and wants them zeroed.
        let words = (usize::from(self.sizes.notif).max(size_of::<Notif>())).div_ceil(8);
        let mut buf = vec![0u64; words];
        match self.ioctl("NOTIF_RECV", IOCTL_NOTIF_RECV, buf.as_mut_ptr().cast()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // The notification went away between poll and recv (the thread got a signal).
                return Ok(None);
            }
            Err(source) => {
                return Err(Error::Ioctl {
                    op: "NOTIF_RECV",
                    source,
                });
            }
        }
        // SAFETY: `buf` holds at least size_of::<Notif>() initialised bytes, 8-aligned; Notif is
        // plain old data.
        Ok(Some(unsafe {
            std::ptr::read(buf.as_ptr().cast::<Notif>())
        }))
    }

    /// Whether notification `id` is still live (its thread still waits for this answer).
    pub fn id_valid(&self, id: u64) -> Result<bool> {
        let mut id = id;
        match self.ioctl(
            "NOTIF_ID_VALID",
            IOCTL_NOTIF_ID_VALID,
            (&mut id as *mut u64).cast(),
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(source) => Err(Error::Ioctl {
                op: "NOTIF_ID_VALID",
                source,
            }),
        }
    }

    /// Answers notification `id`. `Err(Cancelled)` if it is no longer live: the answer was not
    /// delivered.
    pub fn respond(&self, id: u64, response: Response) -> Result<()> {
        let mut resp = RawResp {
            id,
            ..RawResp::default()
        };
        match response {
            Response::Value(v) => resp.val = v,
            Response::Errno(e) => resp.error = -e.abs(),
            Response::Continue => resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE,
        }
        self.send_raw(&mut resp)
    }

    fn send_raw(&self, resp: &mut RawResp) -> Result<()> {
        match self.ioctl(
            "NOTIF_SEND",
            IOCTL_NOTIF_SEND,
            (resp as *mut RawResp).cast(),
        ) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(Error::Cancelled),
            Err(source) => Err(Error::Ioctl {
                op: "NOTIF_SEND",
                source,
            }),
        }
    }

    /// `SECCOMP_IOCTL_NOTIF_ADDFD`: installs a copy of our `src` in the trapped process, at
    /// `at` if given (replacing what is there) else at its lowest free number. With `answer`,
    /// the call is answered at the same time with the new fd number (`ADDFD_FLAG_SEND`: the
    /// fd is installed only if the answer is delivered). Returns the fd number in the process.
    pub fn add_fd(
        &self,
        id: u64,
        src: RawFd,
        at: Option<RawFd>,
        cloexec: bool,
        answer: bool,
    ) -> Result<RawFd> {
        let mut a = RawAddFd {
            id,
            flags: 0,
            srcfd: src as u32,
            newfd: 0,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        if let Some(n) = at {
            a.flags |= SECCOMP_ADDFD_FLAG_SETFD;
            a.newfd = n as u32;
        }
        if answer {
            a.flags |= SECCOMP_ADDFD_FLAG_SEND;
        }
        // SAFETY: `a` is a live struct seccomp_notif_addfd.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                IOCTL_NOTIF_ADDFD as _,
                &mut a as *mut RawAddFd,
            )
        };
        if r >= 0 {
            return Ok(r);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Err(Error::Cancelled);
        }
        Err(Error::Ioctl {
            op: "NOTIF_ADDFD",
            source: e,
        })
    }

    /// Reads `len` bytes at `addr` in the trapping thread's memory. The data is returned only
    /// if the notification is still live after the read (else `Err(Cancelled)`).
    pub fn read_mem(&self, n: &Notif, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        if len > 0 {
            let done = vm_rw(n.pid, addr, &mut buf, false).map_err(|source| Error::Mem {
                op: "process_vm_readv",
                pid: n.pid,
                addr,
                len,
                source,
            })?;
            if done != len {
                return Err(Error::ShortMem {
                    op: "process_vm_readv",
                    pid: n.pid,
                    addr,
                    len,
                    done,
                });
            }
        }
        if !self.id_valid(n.id)? {
            return Err(Error::Cancelled);
        }
        Ok(buf)
    }

    /// Writes `data` at `addr` in the trapping thread's memory, only if the notification is
    /// still live (else `Err(Cancelled)` and nothing is written). A read-only or unmapped
    /// destination gives `Err(Mem { EFAULT })`, as the real call would.
    pub fn write_mem(&self, n: &Notif, addr: u64, data: &[u8]) -> Result<()> {
        if !self.id_valid(n.id)? {
            return Err(Error::Cancelled);
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut copy = data.to_vec();
        let done = vm_rw(n.pid, addr, &mut copy, true).map_err(|source| Error::Mem {
            op: "process_vm_writev",
            pid: n.pid,
            addr,
            len: data.len(),
            source,
        })?;
        if done != data.len() {
            return Err(Error::ShortMem {
                op: "process_vm_writev",
                pid: n.pid,
                addr,
                len: data.len(),
                done,
            });
        }
        Ok(())
    }
}

/// One process_vm_readv/writev of `buf.len()` bytes at `addr` in `pid`.
fn vm_rw(pid: u32, addr: u64, buf: &mut [u8], write: bool) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as usize as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` covers exactly `buf`, which we own for the call; `remote` addresses the
    // other process and is checked by the kernel (EFAULT), never dereferenced here.
    let r = unsafe {
        if write {
            libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0)
        }
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `pidfd_open(pid)`.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; on success the kernel returns a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// `pidfd_getfd(pidfd, fd)`: a copy of another process's fd (needs ptrace access to it).
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; on success the kernel returns a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Whether `fd` (ours) is a seccomp listener.
pub fn is_listener(fd: RawFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().contains("seccomp notify"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(size_of::<Notif>(), 80);
        assert_eq!(size_of::<RawResp>(), 24);
        assert_eq!(size_of::<RawAddFd>(), 24);
        assert_eq!(IOCTL_NOTIF_RECV, 0xc050_2100);
        assert_eq!(IOCTL_NOTIF_SEND, 0xc018_2101);
        assert_eq!(IOCTL_NOTIF_ID_VALID, 0x4008_2102);
        assert_eq!(IOCTL_NOTIF_ADDFD, 0x4018_2103);
        assert_eq!(IOCTL_NOTIF_SET_FLAGS, 0x4008_2104);
    }

    #[test]
    fn filter_traps_the_set_allows_the_rest_and_refuses_other_arches() {
        let set = TrapSet::remote();
        let p = Program::build(&set).unwrap();
        let a = AUDIT_ARCH_X86_64;
        for nr in [
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_clone3,
        ] {
            assert_eq!(p.evaluate(a, nr as i32, [0; 6]), RET_USER_NOTIF, "{nr}");
        }
        for nr in [
            libc::SYS_futex,
            libc::SYS_clock_gettime,
            libc::SYS_brk,
            libc::SYS_exit_group,
        ] {
            assert_eq!(p.evaluate(a, nr as i32, [0; 6]), RET_ALLOW, "{nr}");
        }
        // Every number of the set is trapped, none outside it is.
        for nr in 0..500i64 {
            // mmap with flags 0 maps a file: trapped too.
            let want = if nr == libc::SYS_mmap || set.calls.contains(&nr) {
                RET_USER_NOTIF
            } else {
                RET_ALLOW
            };
            assert_eq!(p.evaluate(a, nr as i32, [0; 6]), want, "nr {nr}");
        }
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        assert_eq!(
            p.evaluate(a, libc::SYS_mmap as i32, [0, 4096, 3, anon, u64::MAX, 0]),
            RET_ALLOW
        );
        assert_eq!(
            p.evaluate(
                a,
                libc::SYS_mmap as i32,
                [0, 4096, 3, libc::MAP_PRIVATE as u64, 3, 0]
            ),
            RET_USER_NOTIF
        );
        assert_eq!(
            p.evaluate(a, (X32_SYSCALL_BIT | 1) as i32, [0; 6]),
            RET_ERRNO_ENOSYS
        );
        assert_eq!(
            p.evaluate(0x4000_0003 /* i386 */, libc::SYS_write as i32, [0; 6]),
            RET_KILL_PROCESS
        );
        assert!(p.instructions().len() < 4096);
    }
}
