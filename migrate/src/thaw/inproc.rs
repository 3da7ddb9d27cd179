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
const SETFL: u32 = (libc::O_NONBLOCK | libc::O_ASYNC) as u32;

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
            _ => {}
        }
    }
    Ok(())
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
