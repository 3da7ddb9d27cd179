//! File descriptors that live inside the process (see `freeze::inproc`): pipes with both ends
//! in the process, with their waiting bytes; eventfds with their counters (both made before
//! the other fds, [`before`]); epoll instances with their registrations (made once every
//! other fd is there, [`after`]).

use super::inject::Builder;
use super::terr;
use crate::error::{Error, Result};
use crate::image::*;
use crate::sys::read_mem;

const CLOEXEC: u64 = libc::O_CLOEXEC as u64;
/// File status flags fcntl(F_SETFL) sets on the made files.
const SETFL: u32 = (libc::O_NONBLOCK | libc::O_ASYNC | libc::O_APPEND) as u32;

fn skip(placeholders: &[(i32, std::os::fd::RawFd)], fd: i32) -> bool {
    placeholders.iter().any(|p| p.0 == fd)
}

/// Moves the file at `tmp` to `fd` (O_CLOEXEC as the image says) and closes `tmp`.
fn place(b: &mut Builder, tmp: u64, fd: i32, cloexec: bool) -> Result<()> {
    if tmp != fd as u64 {
        b.sys(
            &format!("dup3 to fd {fd}"),
            libc::SYS_dup3,
            &[tmp, fd as u64, if cloexec { CLOEXEC } else { 0 }],
        )?;
        b.sys("close", libc::SYS_close, &[tmp])?;
    } else if !cloexec {
        b.sys(
            "fcntl(F_SETFD)",
            libc::SYS_fcntl,
            &[tmp, libc::F_SETFD as u64, 0],
        )?;
    }
    Ok(())
}

/// `tmp` moved above every fd of the image (so that placing one file never closes another).
fn lift(b: &mut Builder, tmp: u64, above: u64) -> Result<u64> {
    let hi = b.sys(
        "fcntl(F_DUPFD_CLOEXEC)",
        libc::SYS_fcntl,
        &[tmp, libc::F_DUPFD_CLOEXEC as u64, above],
    )?;
    b.sys("close", libc::SYS_close, &[tmp])?;
    Ok(hi)
}

fn set_fl(b: &mut Builder, fd: u64, flags: u32) -> Result<()> {
    if flags & SETFL != 0 {
        b.sys(
            "fcntl(F_SETFL)",
            libc::SYS_fcntl,
            &[fd, libc::F_SETFL as u64, (flags & SETFL) as u64],
        )?;
    }
    Ok(())
}

/// Pipes and eventfds, at their fd numbers (only fds 0-2 exist yet).
pub(super) fn before(
    b: &mut Builder,
    img: &ProcessImage,
    placeholders: &[(i32, std::os::fd::RawFd)],
    above: u64,
) -> Result<()> {
    let pid = b.t.pid;
    let mut done_pipes = Vec::new();
    let mut done_pairs = Vec::new();
    for f in &img.fds {
        if skip(placeholders, f.fd) {
            continue;
        }
        match &f.kind {
            FdKind::Pipe { pipe, .. } if !done_pipes.contains(pipe) => {
                done_pipes.push(*pipe);
                let ends: Vec<&Fd> = img
                    .fds
                    .iter()
                    .filter(|g| matches!(g.kind, FdKind::Pipe { pipe: q, .. } if q == *pipe))
                    .collect();
                let end = |w: bool| {
                    ends.iter()
                        .find(|g| matches!(g.kind, FdKind::Pipe { write, .. } if write == w))
                        .copied()
                };
                let (Some(r), Some(w)) = (end(false), end(true)) else {
                    return Err(Error::Thaw(format!(
                        "the image holds only one end of pipe:[{pipe}]"
                    )));
                };
                let (
                    FdKind::Pipe {
                        flags: rflags,
                        size,
                        data,
                        ..
                    },
                    FdKind::Pipe { flags: wflags, .. },
                ) = (&r.kind, &w.kind)
                else {
                    unreachable!("filtered on Pipe above")
                };
                if skip(placeholders, r.fd) || skip(placeholders, w.fd) {
                    return Err(Error::Thaw(format!(
                        "a placeholder was given for one end of pipe:[{pipe}] only"
                    )));
                }
                let p = b.data(&[0u8; 8])?;
                b.sys("pipe2", libc::SYS_pipe2, &[p, CLOEXEC])?;
                let mut two = [0u8; 8];
                read_mem(pid, &mut two, &[(p, 8)]).map_err(terr("reading pipe2's fds"))?;
                let rd = u32::from_ne_bytes(two[..4].try_into().unwrap()) as u64;
                let wr = u32::from_ne_bytes(two[4..].try_into().unwrap()) as u64;
                let (rd, wr) = (lift(b, rd, above)?, lift(b, wr, above)?);
                if *size > 0 && *size != 65536 {
                    b.sys(
                        "fcntl(F_SETPIPE_SZ)",
                        libc::SYS_fcntl,
                        &[wr, libc::F_SETPIPE_SZ as u64, *size as u64],
                    )?;
                }
                // the waiting bytes, in chunks that fit the argument area (the pipe is
                // still blocking and has room for all of them)
                for chunk in data.chunks(64 << 10) {
                    let p = b.data(chunk)?;
                    let n = b.sys(
                        &format!("write into pipe fd {}", w.fd),
                        libc::SYS_write,
                        &[wr, p, chunk.len() as u64],
                    )?;
                    if n != chunk.len() as u64 {
                        return Err(Error::Thaw(format!(
                            "short write into pipe fd {} ({n} of {})",
                            w.fd,
                            chunk.len()
                        )));
                    }
                }
                set_fl(b, rd, *rflags)?;
                set_fl(b, wr, *wflags)?;
                place(b, rd, r.fd, r.kind.cloexec())?;
                place(b, wr, w.fd, w.kind.cloexec())?;
            }
            FdKind::EventFd {
                count,
                semaphore,
                flags,
            } => {
                let fl = CLOEXEC
                    | if *semaphore {
                        libc::EFD_SEMAPHORE as u64
                    } else {
                        0
                    };
                let e = b.sys("eventfd2", libc::SYS_eventfd2, &[0, fl])?;
                let e = lift(b, e, above)?;
                if *count > 0 {
                    let p = b.data(&count.to_ne_bytes())?;
                    b.sys("write of the eventfd counter", libc::SYS_write, &[e, p, 8])?;
                }
                set_fl(b, e, *flags)?;
                place(b, e, f.fd, f.kind.cloexec())?;
            }
            FdKind::TimerFd {
                clockid,
                flags,
                ticks,
                value,
                interval,
            } => {
                let t = b.sys(
                    "timerfd_create",
                    libc::SYS_timerfd_create,
                    &[*clockid as u64, libc::TFD_CLOEXEC as u64],
                )?;
                let t = lift(b, t, above)?;
                let mut value = *value;
                if value == (0, 0) {
                    // a periodic timer that has expired shows no time left until its
                    // expiration is read (the kernel re-arms it then): one interval from now
                    value = *interval;
                }
                if value != (0, 0) {
                    // relative: the time left, as at the freeze
                    let mut its = Vec::with_capacity(32);
                    for w in [interval.0, interval.1, value.0, value.1] {
                        its.extend_from_slice(&w.to_ne_bytes());
                    }
                    let p = b.data(&its)?;
                    b.sys("timerfd_settime", libc::SYS_timerfd_settime, &[t, 0, p, 0])?;
                }
                if *ticks > 0 {
                    const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
                    let p = b.data(&ticks.to_ne_bytes())?;
                    b.sys(
                        "ioctl(TFD_IOC_SET_TICKS)",
                        libc::SYS_ioctl,
                        &[t, TFD_IOC_SET_TICKS, p],
                    )?;
                }
                set_fl(b, t, *flags)?;
                place(b, t, f.fd, f.kind.cloexec())?;
            }
            FdKind::SignalFd { mask, flags } => {
                let p = b.data(&mask.to_ne_bytes())?;
                let s = b.sys(
                    "signalfd4",
                    libc::SYS_signalfd4,
                    &[u64::MAX, p, 8, libc::SFD_CLOEXEC as u64],
                )?;
                let s = lift(b, s, above)?;
                set_fl(b, s, *flags)?;
                place(b, s, f.fd, f.kind.cloexec())?;
            }
            FdKind::Contents { .. } => contents(b, f, above)?,
            FdKind::SocketPair { pair, .. } if !done_pairs.contains(pair) => {
                done_pairs.push(*pair);
                socketpair(b, img, *pair, placeholders, above)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A socketpair made again, the bytes waiting on each end written by the other end.
fn socketpair(
    b: &mut Builder,
    img: &ProcessImage,
    pair: u64,
    placeholders: &[(i32, std::os::fd::RawFd)],
    above: u64,
) -> Result<()> {
    let end = |first: bool| {
        img.fds.iter().find(
            |g| matches!(g.kind, FdKind::SocketPair { pair: p, first: q, .. } if p == pair && q == first),
        )
    };
    let (Some(a), Some(z)) = (end(true), end(false)) else {
        return Err(Error::Thaw(format!(
            "the image holds only one end of socketpair {pair}"
        )));
    };
    if skip(placeholders, a.fd) || skip(placeholders, z.fd) {
        return Err(Error::Thaw(format!(
            "a placeholder was given for an end of socketpair {pair}"
        )));
    }
    let pid = b.t.pid;
    let p = b.data(&[0u8; 8])?;
    b.sys(
        "socketpair",
        libc::SYS_socketpair,
        &[
            libc::AF_UNIX as u64,
            (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64,
            0,
            p,
        ],
    )?;
    let mut two = [0u8; 8];
    read_mem(pid, &mut two, &[(p, 8)]).map_err(terr("reading socketpair's fds"))?;
    let s0 = u32::from_ne_bytes(two[..4].try_into().unwrap()) as u64;
    let s1 = u32::from_ne_bytes(two[4..].try_into().unwrap()) as u64;
    let (s0, s1) = (lift(b, s0, above)?, lift(b, s1, above)?);
    // what waits on an end was written by the other end
    for (other, f) in [(s1, a), (s0, z)] {
        let FdKind::SocketPair { data, .. } = &f.kind else {
            unreachable!("found as SocketPair")
        };
        if !data.is_empty() {
            let p = b.data(data)?;
            let n = b.sys(
                &format!("write of what waits on socket fd {}", f.fd),
                libc::SYS_write,
                &[other, p, data.len() as u64],
            )?;
            if n != data.len() as u64 {
                return Err(Error::Thaw(format!(
                    "short write into socket fd {} ({n} of {})",
                    f.fd,
                    data.len()
                )));
            }
        }
    }
    for (s, f) in [(s0, a), (s1, z)] {
        let FdKind::SocketPair { flags, .. } = &f.kind else {
            unreachable!("found as SocketPair")
        };
        set_fl(b, s, *flags)?;
        place(b, s, f.fd, f.kind.cloexec())?;
    }
    Ok(())
}

/// A memfd or deleted file made again with its contents; the contents are written through a
/// copy of the fd taken into this process (pidfd_getfd), not through the argument area.
fn contents(b: &mut Builder, f: &Fd, above: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    let FdKind::Contents {
        name,
        memfd,
        flags,
        pos,
        mode,
        seals,
        data,
    } = &f.kind
    else {
        return Ok(());
    };
    let pid = b.t.pid;
    let rw = (libc::O_RDWR | libc::O_CLOEXEC) as u64;
    // `reopen`: whether the file can be opened again through /proc (with its own flags)
    let (tmp, reopen) = if *memfd {
        // F_SEAL_SEAL alone is what a memfd made without MFD_ALLOW_SEALING has
        let sealable = *seals != libc::F_SEAL_SEAL as u32;
        let p = b.cstr(name)?;
        let fl = libc::MFD_CLOEXEC as u64
            | if sealable {
                libc::MFD_ALLOW_SEALING as u64
            } else {
                0
            };
        (
            b.sys(
                &format!("memfd_create {name}"),
                libc::SYS_memfd_create,
                &[p, fl],
            )?,
            true,
        )
    } else {
        // the same name in the same directory, deleted again at once; where that name is
        // taken, an unnamed file in that directory
        let p = b.cstr(name)?;
        let excl = (libc::O_CREAT | libc::O_EXCL) as u64 | rw;
        let r =
            b.t.syscall_raw(
                libc::SYS_openat,
                &[libc::AT_FDCWD as u64, p, excl, *mode as u64],
            )
            .map_err(terr(format!("creating {name}")))?;
        if r >= 0 {
            let p = b.cstr(name)?;
            b.sys(
                &format!("unlink {name}"),
                libc::SYS_unlinkat,
                &[libc::AT_FDCWD as u64, p, 0],
            )?;
            (r as u64, true)
        } else {
            let dir = std::path::Path::new(name)
                .parent()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into());
            let p = b.cstr(&dir)?;
            let t = b.sys(
                &format!("an unnamed file in {dir} for deleted {name}"),
                libc::SYS_openat,
                &[
                    libc::AT_FDCWD as u64,
                    p,
                    libc::O_TMPFILE as u64 | rw,
                    *mode as u64,
                ],
            )?;
            (t, true)
        }
    };
    let tmp = lift(b, tmp, above)?;
    {
        let copy = crate::seccomp::pidfd_getfd(pid, tmp as i32)
            .map_err(terr(format!("pidfd_getfd of the new file for fd {}", f.fd)))?;
        let mut off = 0usize;
        while off < data.len() {
            // SAFETY: writes from `data`, into our own copy of the fd.
            let n = unsafe {
                libc::pwrite(
                    copy.as_raw_fd(),
                    data[off..].as_ptr().cast(),
                    data.len() - off,
                    off as i64,
                )
            };
            if n <= 0 {
                return Err(terr(format!("writing the contents of fd {}", f.fd))(
                    std::io::Error::last_os_error(),
                ));
            }
            off += n as usize;
        }
        if *memfd && *seals != 0 && *seals != libc::F_SEAL_SEAL as u32 {
            // SAFETY: fcntl with integer arguments on our own copy.
            if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, *seals as libc::c_int) }
                != 0
            {
                return Err(terr(format!("sealing the memfd of fd {}", f.fd))(
                    std::io::Error::last_os_error(),
                ));
            }
        }
    }
    // its own open flags (read-only, append ...): a new open of the file through /proc
    let acc = flags & libc::O_ACCMODE as u32;
    let fd = if reopen && (acc != libc::O_RDWR as u32 || flags & libc::O_APPEND as u32 != 0) {
        let p = b.cstr(&format!("/proc/self/fd/{tmp}"))?;
        let keep =
            flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY) as u32);
        let r = b.sys(
            &format!("reopening the file of fd {}", f.fd),
            libc::SYS_openat,
            &[
                libc::AT_FDCWD as u64,
                p,
                (keep | libc::O_CLOEXEC as u32) as u64,
            ],
        )?;
        b.sys("close", libc::SYS_close, &[tmp])?;
        lift(b, r, above)?
    } else {
        set_fl(b, tmp, *flags)?;
        tmp
    };
    if *pos > 0 {
        b.sys("lseek", libc::SYS_lseek, &[fd, *pos, libc::SEEK_SET as u64])?;
    }
    place(b, fd, f.fd, f.kind.cloexec())
}

/// Epoll instances with their registrations, and the fds that share them; every other fd
/// is there by now.
pub(super) fn after(
    b: &mut Builder,
    img: &ProcessImage,
    placeholders: &[(i32, std::os::fd::RawFd)],
    above: u64,
) -> Result<()> {
    for f in &img.fds {
        let FdKind::Epoll { flags, watches } = &f.kind else {
            continue;
        };
        if skip(placeholders, f.fd) {
            continue;
        }
        let e = b.sys("epoll_create1", libc::SYS_epoll_create1, &[CLOEXEC])?;
        let e = lift(b, e, above)?;
        set_fl(b, e, *flags)?;
        place(b, e, f.fd, f.kind.cloexec())?;
        for w in watches {
            // struct epoll_event is packed on x86_64: u32 events, u64 data
            let mut ev = [0u8; 12];
            ev[..4].copy_from_slice(&w.events.to_ne_bytes());
            ev[4..].copy_from_slice(&w.data.to_ne_bytes());
            let p = b.data(&ev)?;
            b.sys(
                &format!("epoll_ctl of fd {} in epoll fd {}", w.fd, f.fd),
                libc::SYS_epoll_ctl,
                &[f.fd as u64, libc::EPOLL_CTL_ADD as u64, w.fd as u64, p],
            )?;
        }
        for g in &img.fds {
            if let FdKind::SharedWith { fd, cloexec } = g.kind {
                if fd == f.fd && !skip(placeholders, g.fd) {
                    b.sys(
                        &format!("dup3 to fd {}", g.fd),
                        libc::SYS_dup3,
                        &[f.fd as u64, g.fd as u64, if cloexec { CLOEXEC } else { 0 }],
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// Is `fd` (a SharedWith source) an epoll instance, made only in [`after`]?
pub(super) fn is_epoll(img: &ProcessImage, fd: i32) -> bool {
    img.fds
        .iter()
        .any(|f| f.fd == fd && matches!(f.kind, FdKind::Epoll { .. }))
}

// --- inotify (issue 8 part 3)

/// An inotify instance made again at `fd` (see `freeze::inproc::inotify`): its watches added
/// in descriptor order, each checked to get its old number; a path that names another file
/// than the frozen one (replaced, rotated) fails the thaw rather than watch the wrong file.
pub(super) fn inotify(
    b: &mut Builder,
    fd: i32,
    flags: u32,
    watches: &[InotifyWatch],
    above: u64,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for w in watches {
        let md = std::fs::metadata(&w.path).map_err(terr(format!(
            "stat of {} (watched by inotify fd {fd})",
            w.path
        )))?;
        if md.dev() != w.dev || md.ino() != w.ino {
            return Err(Error::Thaw(format!(
                "{} (watched by inotify fd {fd}) is another file now (device {:x} inode {}, was {:x} {})",
                w.path,
                md.dev(),
                md.ino(),
                w.dev,
                w.ino
            )));
        }
    }
    let i = b.sys(
        "inotify_init1",
        libc::SYS_inotify_init1,
        &[libc::IN_CLOEXEC as u64],
    )?;
    let i = lift(b, i, above)?;
    for w in watches {
        let p = b.cstr(&w.path)?;
        let wd = b.sys(
            &format!("inotify_add_watch of {} for fd {fd}", w.path),
            libc::SYS_inotify_add_watch,
            &[i, p, w.mask as u64],
        )?;
        if wd != w.wd as u64 {
            return Err(Error::Thaw(format!(
                "inotify fd {fd}: the watch of {} got descriptor {wd}, not {}",
                w.path, w.wd
            )));
        }
    }
    set_fl(b, i, flags)?;
    place(b, i, fd, flags & libc::O_CLOEXEC as u32 != 0)
}
