//! Calls run at home by number, with their memory arguments marshalled: the path calls (stat,
//! mkdir, rename, chdir, …), the calls on home-backed fds beyond read/write (fchdir, fstatfs,
//! getdents64, fcntl F_GETFL/F_SETFL, …) and the terminal ioctls.
//!
//! One table ([`template`], [`ioctl_arg`]) says, per system call, which argument is a plain
//! value, a directory fd, a home fd, a path, a struct passed in, or a buffer filled by the
//! kernel. The remote reads the memory arguments out of the trapped process
//! ([`crate::remote`]), sends [`Arg`]s in a [`crate::forward::Call::Sys`]; the deputy checks
//! the arguments against the same table ([`check`]: a peer can never make the deputy pass one
//! of its own addresses or an unlisted call to the kernel) and runs the call
//! ([`execute`]); the reply's data is the concatenation of the filled buffers, copied back
//! into the process in argument order.
//!
//! Ioctl sizes come from the request's `_IOC` encoding where it has one and from the table for
//! the classic `0x54xx` terminal requests. An ioctl that is not in the table is never forwarded:
//! on a home-backed fd it sends the process home ([`crate::remote::GoHome::Unsupported`]), so
//! it is never answered wrongly (ENOTTY would be a lie).
//!
//! Requests that need the caller's session (TIOCSPGRP, TIOCSCTTY, TIOCNOTTY, TIOCSTI) go home
//! too; TIOCGPGRP and TIOCGSID on the controlling terminal are answered by the deputy from the
//! home process's `/proc` entry (the daemon is not in the session, the kernel would refuse it),
//! see [`Special`].

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::forward::Reply;

/// Longest path passed (PATH_MAX, with its NUL).
pub const PATH_MAX: usize = 4096;
/// Largest buffer or struct passed either way.
pub const MAX_BUF: u32 = 64 << 10;

/// One argument of a [`crate::forward::Call::Sys`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arg {
    Val(u64),
    /// A home fd number: the deputy passes its copy of it.
    Fd(i32),
    /// Bytes passed in: a path (without its NUL) or a struct.
    In(Bytes),
    /// A NULL pointer.
    Null,
    /// A buffer of this many bytes for the kernel to fill.
    Out(u32),
}

/// What an argument position of a call holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Val,
    /// A directory fd: AT_FDCWD, a home fd, or a local fd (then the call is run locally unless
    /// its path is absolute).
    Dir,
    /// An fd that must be home-backed for the call to be forwarded.
    Fd,
    /// A NUL-terminated path (may be empty where the call allows AT_EMPTY_PATH).
    Path,
    /// A path or NULL.
    PathOrNull,
    /// A struct of this size read by the kernel.
    In(u32),
    /// A struct of this size, or NULL.
    InOrNull(u32),
    /// A struct of this size written by the kernel.
    Out(u32),
    /// A buffer whose size is the argument at the given index; `ret` bytes of it are written.
    OutLen(usize),
    /// A length (of an [`Slot::OutLen`] buffer), clamped to [`MAX_BUF`].
    Len,
    /// An ioctl's third argument, shaped by its request.
    IoctlArg,
}

const STAT: u32 = size_of::<libc::stat>() as u32;
const STATX: u32 = 256;
const STATFS: u32 = size_of::<libc::statfs>() as u32;
const TIMESPEC2: u32 = 2 * size_of::<libc::timespec>() as u32;

/// The argument shapes of call `nr` when it is run at home, or `None` when it is not a call
/// this table serves.
pub fn template(nr: i64) -> Option<&'static [Slot]> {
    use Slot::*;
    Some(match nr {
        libc::SYS_stat | libc::SYS_lstat => &[Path, Out(STAT)],
        libc::SYS_newfstatat => &[Dir, Path, Out(STAT), Val],
        libc::SYS_statx => &[Dir, Path, Val, Val, Out(STATX)],
        libc::SYS_statfs => &[Path, Out(STATFS)],
        libc::SYS_fstatfs => &[Fd, Out(STATFS)],
        libc::SYS_access => &[Path, Val],
        libc::SYS_faccessat => &[Dir, Path, Val],
        libc::SYS_faccessat2 => &[Dir, Path, Val, Val],
        libc::SYS_readlink => &[Path, OutLen(2), Len],
        libc::SYS_readlinkat => &[Dir, Path, OutLen(3), Len],
        libc::SYS_mkdir => &[Path, Val],
        libc::SYS_mkdirat => &[Dir, Path, Val],
        libc::SYS_rmdir | libc::SYS_unlink | libc::SYS_chdir => &[Path],
        libc::SYS_unlinkat => &[Dir, Path, Val],
        libc::SYS_rename | libc::SYS_link | libc::SYS_symlink => &[Path, Path],
        libc::SYS_renameat => &[Dir, Path, Dir, Path],
        libc::SYS_renameat2 => &[Dir, Path, Dir, Path, Val],
        libc::SYS_linkat => &[Dir, Path, Dir, Path, Val],
        libc::SYS_symlinkat => &[Path, Dir, Path],
        libc::SYS_chmod => &[Path, Val],
        libc::SYS_fchmodat => &[Dir, Path, Val],
        libc::SYS_chown | libc::SYS_lchown => &[Path, Val, Val],
        libc::SYS_fchownat => &[Dir, Path, Val, Val, Val],
        libc::SYS_truncate => &[Path, Val],
        libc::SYS_utimensat => &[Dir, PathOrNull, InOrNull(TIMESPEC2), Val],
        libc::SYS_getcwd => &[OutLen(1), Len],
        libc::SYS_fchdir | libc::SYS_fsync | libc::SYS_fdatasync => &[Fd],
        libc::SYS_fchmod | libc::SYS_ftruncate => &[Fd, Val],
        libc::SYS_fchown => &[Fd, Val, Val],
        libc::SYS_getdents64 => &[Fd, OutLen(2), Len],
        libc::SYS_fcntl => &[Fd, Val, Val],
        libc::SYS_ioctl => &[Fd, Val, IoctlArg],
        _ => return None,
    })
}

/// fcntl commands run at home (the others on a home fd go home): the file status flags live
/// in the open file description, which is at home.
pub fn fcntl_served(cmd: u64) -> bool {
    cmd == libc::F_GETFL as u64 || cmd == libc::F_SETFL as u64
}

/// How an ioctl request's third argument is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoArg {
    /// A plain value.
    Val,
    /// A struct of this size read by the kernel.
    In(u32),
    /// A struct of this size written by the kernel.
    Out(u32),
    /// Both.
    InOut(u32),
    /// A per-fd flag (FIOCLEX/FIONCLEX): the local placeholder holds it; run it here.
    Local,
    /// Needs the caller's session or process (TIOCSPGRP, TIOCSCTTY, TIOCNOTTY, TIOCSTI,
    /// FIOASYNC, …): the process must go home.
    Home,
}

/// The size field of an `_IOC`-encoded request.
pub const fn ioc_size(req: u32) -> u32 {
    (req >> 16) & 0x3fff
}

const TERMIOS: u32 = 36; // the kernel's struct termios (not glibc's 60-byte one)
const TERMIO: u32 = 18;

/// The ioctl requests served at home and how their argument travels; `None`: unknown, never
/// forwarded.
pub fn ioctl_arg(req: u64) -> Option<IoArg> {
    // Requests are 32-bit; glibc passes them sign-extended or not.
    let r = req as u32;
    Some(match r {
        0x5401 => IoArg::Out(TERMIOS),                             // TCGETS
        0x5402..=0x5404 => IoArg::In(TERMIOS),                     // TCSETS, TCSETSW, TCSETSF
        0x5405 => IoArg::Out(TERMIO),                              // TCGETA
        0x5406..=0x5408 => IoArg::In(TERMIO),                      // TCSETA, TCSETAW, TCSETAF
        0x5409..=0x540B | 0x5425 => IoArg::Val, // TCSBRK, TCXONC, TCFLSH, TCSBRKP
        0x540F | 0x5429 => IoArg::Out(4),       // TIOCGPGRP, TIOCGSID (see Special)
        0x5411 | 0x541B | 0x5424 => IoArg::Out(4), // TIOCOUTQ, FIONREAD, TIOCGETD
        0x5413 => IoArg::Out(8),                // TIOCGWINSZ
        0x5414 => IoArg::In(8),                 // TIOCSWINSZ
        0x5421 => IoArg::In(4),                 // FIONBIO
        0x5450 | 0x5451 => IoArg::Local,        // FIONCLEX, FIOCLEX
        0x540E | 0x5410 | 0x5412 | 0x5422 | 0x5452 => IoArg::Home, // SCTTY SPGRP STI NOTTY FIOASYNC
        // _IOC-encoded: the size is in the request.
        0x802C_542A => IoArg::Out(ioc_size(r)), // TCGETS2
        0x402C_542B..=0x402C_542D => IoArg::In(ioc_size(r)), // TCSETS2, TCSETSW2, TCSETSF2
        0x8004_5430 | 0x8004_5439 => IoArg::Out(ioc_size(r)), // TIOCGPTN, TIOCGPTLCK
        0x4004_5431 => IoArg::In(ioc_size(r)),  // TIOCSPTLCK
        _ => return None,
    })
}

/// Ioctls the deputy answers itself for the controlling terminal (the kernel would refuse the
/// daemon, which is not in the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    GetPgrp,
    GetSid,
}

/// Whether `call` is one of the [`Special`] ioctls.
pub fn special(nr: i64, args: &[Arg]) -> Option<Special> {
    if nr != libc::SYS_ioctl {
        return None;
    }
    match args.get(1) {
        Some(Arg::Val(r)) if *r as u32 == 0x540F => Some(Special::GetPgrp),
        Some(Arg::Val(r)) if *r as u32 == 0x5429 => Some(Special::GetSid),
        _ => None,
    }
}

/// Why the deputy refuses a call (a confused or hostile peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("system call {0} is not run at home")]
    NotServed(i64),
    #[error("system call {nr}: argument {at} does not match the table ({why})")]
    BadArg {
        nr: i64,
        at: usize,
        why: &'static str,
    },
}

fn val(args: &[Arg], i: usize) -> Option<u64> {
    match args.get(i) {
        Some(Arg::Val(v)) => Some(*v),
        _ => None,
    }
}

/// Checks `args` against the table for `nr` (see the module documentation).
pub fn check(nr: i64, args: &[Arg]) -> Result<(), Refused> {
    let t = template(nr).ok_or(Refused::NotServed(nr))?;
    let bad = |at: usize, why: &'static str| Err(Refused::BadArg { nr, at, why });
    if args.len() != t.len() {
        return bad(args.len(), "wrong number of arguments");
    }
    if nr == libc::SYS_fcntl && !val(args, 1).is_some_and(fcntl_served) {
        return bad(1, "fcntl command not served");
    }
    for (at, (slot, arg)) in t.iter().zip(args).enumerate() {
        let ok = match (slot, arg) {
            (Slot::Val, Arg::Val(_)) => true,
            (Slot::Dir, Arg::Val(v)) => *v as i32 == libc::AT_FDCWD,
            (Slot::Dir | Slot::Fd, Arg::Fd(fd)) => *fd >= 0,
            (Slot::Path | Slot::PathOrNull, Arg::In(p)) => p.len() < PATH_MAX && !p.contains(&0),
            (Slot::PathOrNull | Slot::InOrNull(_), Arg::Null) => true,
            (Slot::In(n) | Slot::InOrNull(n), Arg::In(b)) => b.len() == *n as usize,
            (Slot::Out(n), Arg::Out(m)) => n == m,
            (Slot::OutLen(li), Arg::Out(m)) => {
                *m <= MAX_BUF && val(args, *li) == Some(u64::from(*m))
            }
            (Slot::Len, Arg::Val(v)) => *v <= u64::from(MAX_BUF),
            (Slot::IoctlArg, a) => match (val(args, 1).and_then(ioctl_arg), a) {
                (Some(IoArg::Val), Arg::Val(_)) => true,
                (Some(IoArg::In(n)), Arg::In(b)) => b.len() == n as usize,
                (Some(IoArg::Out(n)), Arg::Out(m)) => n == *m,
                (Some(IoArg::InOut(n)), Arg::In(b)) => b.len() == n as usize,
                _ => false,
            },
            _ => false,
        };
        if !ok {
            return bad(at, "kind or size");
        }
    }
    Ok(())
}

fn errno_reply() -> Reply {
    Reply::errno(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

/// Runs a checked call on this thread. `fd` maps a home fd number to the deputy's copy (None:
/// not held, EBADF). Paths resolve against this thread's cwd and root, with its credentials:
/// the deputy's worker takes the moved process's identity first.
pub fn execute(nr: i64, args: &[Arg], fd: impl Fn(i32) -> Option<i32>) -> Reply {
    if let Err(e) = check(nr, args) {
        tracing::warn!("deputy refuses a forwarded call: {e}");
        return Reply::errno(libc::ENOSYS);
    }
    // Owned storage for every pointer argument; the Vec<u8>s do not move once built.
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(6);
    let mut raw = [0u64; 6];
    // Which buffers are returned, and how: (index in bufs, returns only `ret` bytes).
    let mut outs: Vec<(usize, bool)> = Vec::new();
    let t = template(nr).expect("checked");
    let ioarg = if nr == libc::SYS_ioctl {
        val(args, 1).and_then(ioctl_arg)
    } else {
        None
    };
    for (i, (slot, arg)) in t.iter().zip(args).enumerate() {
        raw[i] = match arg {
            Arg::Val(v) => *v,
            Arg::Fd(f) => match fd(*f) {
                Some(real) => real as u64,
                None => return Reply::errno(libc::EBADF),
            },
            Arg::Null => 0,
            Arg::In(b) => {
                let mut v = b.to_vec();
                if matches!(slot, Slot::Path | Slot::PathOrNull) {
                    v.push(0);
                }
                bufs.push(v);
                if matches!(ioarg, Some(IoArg::InOut(_))) && *slot == Slot::IoctlArg {
                    outs.push((bufs.len() - 1, false));
                }
                bufs.last_mut().expect("pushed").as_mut_ptr() as u64
            }
            Arg::Out(n) => {
                bufs.push(vec![0u8; *n as usize]);
                outs.push((bufs.len() - 1, matches!(slot, Slot::OutLen(_))));
                bufs.last_mut().expect("pushed").as_mut_ptr() as u64
            }
        };
    }
    // SAFETY: `check` matched every argument against the call's table: each pointer argument
    // points into a live buffer of `bufs` of the size the table (or its length argument) says,
    // every fd argument is one of the deputy's own fds, every other argument is a value. The
    // call works on no memory of this process but those buffers.
    let r = unsafe { libc::syscall(nr, raw[0], raw[1], raw[2], raw[3], raw[4], raw[5]) };
    if r < 0 {
        return errno_reply();
    }
    let mut data = BytesMut::new();
    for (bi, ret_sized) in outs {
        let b = &bufs[bi];
        let n = if ret_sized {
            (r as usize).min(b.len())
        } else {
            b.len()
        };
        data.extend_from_slice(&b[..n]);
    }
    Reply {
        ret: r,
        data: data.freeze(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_sizes_match_the_kernel_structs() {
        assert_eq!(ioctl_arg(0x802C_542A), Some(IoArg::Out(44))); // struct termios2
        assert_eq!(ioctl_arg(0x8004_5430), Some(IoArg::Out(4)));
        assert_eq!(ioctl_arg(libc::TCGETS), Some(IoArg::Out(TERMIOS)));
        assert_eq!(ioctl_arg(libc::TIOCGWINSZ), Some(IoArg::Out(8)));
        assert_eq!(size_of::<libc::winsize>(), 8);
        assert_eq!(ioctl_arg(libc::TIOCSPGRP), Some(IoArg::Home));
        assert_eq!(ioctl_arg(0xdead), None);
        // sign-extended request numbers are the same request
        assert_eq!(ioctl_arg(0xFFFF_FFFF_802C_542A), Some(IoArg::Out(44)));
    }

    #[test]
    fn check_refuses_what_is_not_in_the_table() {
        let p = || Arg::In(Bytes::from_static(b"/tmp"));
        assert!(check(libc::SYS_stat, &[p(), Arg::Out(STAT)]).is_ok());
        // a value where a buffer belongs would make the deputy write at a peer's address
        assert!(check(libc::SYS_stat, &[p(), Arg::Val(0x7fff_0000)]).is_err());
        assert!(check(libc::SYS_stat, &[p(), Arg::Out(8)]).is_err());
        assert!(check(libc::SYS_execve, &[p(), Arg::Null, Arg::Null]).is_err());
        assert!(check(libc::SYS_readlink, &[p(), Arg::Out(100), Arg::Val(200)]).is_err());
        assert!(check(libc::SYS_readlink, &[p(), Arg::Out(100), Arg::Val(100)]).is_ok());
        assert!(check(libc::SYS_fcntl, &[Arg::Fd(1), Arg::Val(0), Arg::Val(5)]).is_err()); // F_DUPFD
        assert!(
            check(
                libc::SYS_ioctl,
                &[Arg::Fd(1), Arg::Val(0xdead), Arg::Val(0)]
            )
            .is_err()
        );
        assert!(
            check(libc::SYS_mkdirat, &[Arg::Val(3), p(), Arg::Val(0o755)]).is_err(),
            "a raw dirfd value other than AT_FDCWD is refused"
        );
        let nul = Arg::In(Bytes::from_static(b"/tmp\0/etc"));
        assert!(check(libc::SYS_chdir, &[nul]).is_err());
    }

    #[test]
    fn stat_and_readlink_run_as_the_kernel_answers_them() {
        let path = Bytes::from_static(b"/proc/self/exe");
        let r = execute(
            libc::SYS_stat,
            &[Arg::In(path.clone()), Arg::Out(STAT)],
            |_| None,
        );
        assert_eq!(r.ret, 0);
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: stat into a zeroed struct.
        assert_eq!(
            unsafe { libc::stat(c"/proc/self/exe".as_ptr(), &mut st) },
            0
        );
        // SAFETY: viewing the struct's bytes.
        let want = unsafe {
            std::slice::from_raw_parts((&st as *const libc::stat).cast::<u8>(), STAT as usize)
        };
        // st_atime may move between the two calls; compare dev and ino and mode.
        assert_eq!(&r.data[..24], &want[..24]);
        let r = execute(
            libc::SYS_readlink,
            &[Arg::In(path), Arg::Out(4096), Arg::Val(4096)],
            |_| None,
        );
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(r.ret as usize, exe.as_os_str().len());
        assert_eq!(&r.data[..], exe.as_os_str().as_encoded_bytes());
        let r = execute(
            libc::SYS_stat,
            &[
                Arg::In(Bytes::from_static(b"/nonexistent/x")),
                Arg::Out(STAT),
            ],
            |_| None,
        );
        assert_eq!(r, Reply::errno(libc::ENOENT));
    }
}
