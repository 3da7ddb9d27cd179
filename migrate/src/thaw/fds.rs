//! File descriptors: reopened paths at their positions, shared descriptions, stdio flags.

use super::inject::Builder;
use super::terr;
use crate::error::Result;
use crate::image::*;
use std::os::fd::RawFd;

/// Reopens the fd table and attaches stdio; fds in `placeholders` (image fd, fd of process
/// `caller`) are copies of the caller's fds instead (pidfd_getfd injected into the new process).
pub(super) fn restore_fds(
    b: &mut Builder,
    img: &ProcessImage,
    placeholders: &[(i32, RawFd)],
    caller: libc::pid_t,
) -> Result<()> {
    let above = img.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) as u64 + 1;
    let mut pidfd = None;
    super::inproc::before(b, img, placeholders, above)?;
    // file descriptors (one by one: each depends on the fd number the last open returned)
    for f in &img.fds {
        let fd = f.fd as u64;
        if let Some(&(_, local)) = placeholders.iter().find(|p| p.0 == f.fd) {
            let pf = match pidfd {
                Some(p) => p,
                None => {
                    let p = b.sys(
                        "pidfd_open of the caller",
                        libc::SYS_pidfd_open,
                        &[caller as u64, 0],
                    )?;
                    // above every fd of the image, so no restored fd closes it
                    let q = b.sys(
                        "fcntl(F_DUPFD_CLOEXEC)",
                        libc::SYS_fcntl,
                        &[p, libc::F_DUPFD_CLOEXEC as u64, above],
                    )?;
                    b.sys("close", libc::SYS_close, &[p])?;
                    pidfd = Some(q);
                    q
                }
            };
            let cloexec = f.kind.cloexec();
            let r = b.sys(
                &format!("pidfd_getfd of placeholder {local} for fd {fd}"),
                libc::SYS_pidfd_getfd,
                &[pf, local as u64, 0],
            )?;
            let fl = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            if r != fd {
                b.sys(&format!("dup3 to fd {fd}"), libc::SYS_dup3, &[r, fd, fl])?;
                b.sys("close", libc::SYS_close, &[r])?;
            } else if cloexec {
                b.sys(
                    "fcntl",
                    libc::SYS_fcntl,
                    &[fd, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64],
                )?;
            }
            continue;
        }
        match &f.kind {
            FdKind::External { what, .. } => {
                // checked before the process was made; kept as a guard
                return Err(crate::error::Error::FdsNeedNames {
                    fds: vec![(f.fd, what.clone())],
                });
            }
            FdKind::Stdio { cloexec, .. } => {
                if *cloexec {
                    b.sys(
                        "fcntl",
                        libc::SYS_fcntl,
                        &[fd, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64],
                    )?;
                }
            }
            // made by inproc::before, or by inproc::after once every other fd is there
            FdKind::Pipe { .. }
            | FdKind::EventFd { .. }
            | FdKind::Epoll { .. }
            | FdKind::TimerFd { .. }
            | FdKind::SignalFd { .. }
            | FdKind::Contents { .. }
            | FdKind::SocketPair { .. } => {}
            FdKind::Inotify { flags, watches } => {
                super::inproc::inotify(b, f.fd, *flags, watches, above)?;
            }
            FdKind::Terminal { like, flags } => {
                // the terminal attached at `like` (checked before the process was made),
                // opened again: a new open file of it, as /dev/tty gave the program
                let fl = (*flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) as u32))
                    | libc::O_NOCTTY as u32;
                let p = b.cstr(&format!("/proc/self/fd/{like}"))?;
                let r = b.sys(
                    &format!("open of the terminal at fd {like} for fd {fd}"),
                    libc::SYS_openat,
                    &[libc::AT_FDCWD as u64, p, fl as u64],
                )?;
                if r != fd {
                    b.sys(
                        "dup3",
                        libc::SYS_dup3,
                        &[r, fd, (fl & libc::O_CLOEXEC as u32) as u64],
                    )?;
                    b.sys("close", libc::SYS_close, &[r])?;
                }
            }
            FdKind::SharedWith { fd: o, .. } if super::inproc::is_epoll(img, *o) => {}
            FdKind::SharedWith { fd: o, cloexec } => {
                let fl = if *cloexec { libc::O_CLOEXEC as u64 } else { 0 };
                b.sys(
                    &format!("dup3 to fd {fd}"),
                    libc::SYS_dup3,
                    &[*o as u64, fd, fl],
                )?;
            }
            FdKind::Path {
                path,
                flags,
                pos,
                is_dir,
            } => {
                let fl = *flags
                    & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY) as u32);
                let p = b.cstr(path)?;
                let r = b.sys(
                    &format!("open {path} for fd {fd}"),
                    libc::SYS_openat,
                    &[libc::AT_FDCWD as u64, p, fl as u64],
                )?;
                if r != fd {
                    b.sys(
                        "dup3",
                        libc::SYS_dup3,
                        &[r, fd, (fl & libc::O_CLOEXEC as u32) as u64],
                    )?;
                    b.sys("close", libc::SYS_close, &[r])?;
                }
                if flags & libc::O_PATH as u32 != 0 {
                    continue; // no offset: an O_PATH fd does no I/O
                }
                let r =
                    b.t.syscall_raw(libc::SYS_lseek, &[fd, *pos, libc::SEEK_SET as u64])
                        .map_err(terr("lseek"))?;
                if r < 0 && !*is_dir && !path.starts_with("/dev/") {
                    return Err(terr(format!("seeking {path} to {pos}"))(
                        crate::error::from_neg(r),
                    ));
                }
            }
        }
    }
    super::inproc::after(b, img, placeholders, above)?;
    if let Some(p) = pidfd {
        b.sys("close", libc::SYS_close, &[p])?;
    }
    if let Some(t) = &img.terminal {
        restore_terminal(b, img, t)?;
    }
    Ok(())
}

/// The terminal's settings set again on the terminal now at its fd (from inside the new
/// process, whose blocked SIGTTOU lets a background group set them), and a session leader
/// gets its controlling terminal back. Nothing to do when no terminal is attached there now
/// (stdio named files at thaw: ENOTTY).
fn restore_terminal(b: &mut Builder, img: &ProcessImage, t: &TerminalImage) -> Result<()> {
    let fd = t.fd as u64;
    let p = b.data(&t.termios)?;
    let r =
        b.t.syscall_raw(libc::SYS_ioctl, &[fd, libc::TCSETS, p])
            .map_err(terr("ioctl(TCSETS)"))?;
    if r == -(libc::ENOTTY as i64) {
        return Ok(());
    }
    if r < 0 {
        return Err(terr(format!("setting the terminal settings on fd {fd}"))(
            crate::error::from_neg(r),
        ));
    }
    if img.session_leader && t.ctty {
        let r =
            b.t.syscall_raw(libc::SYS_ioctl, &[fd, libc::TIOCSCTTY, 0])
                .map_err(terr("ioctl(TIOCSCTTY)"))?;
        if r < 0 {
            return Err(crate::error::Error::Thaw(format!(
                "the process led its session with its terminal as the controlling terminal, and the terminal at fd {fd} cannot become its controlling terminal ({}): it is another session's; thaw it in a terminal of its own (e.g. `exec omnode thaw --wait IMAGE`, or a new terminal window running `omnode thaw --wait IMAGE`)",
                crate::error::from_neg(r)
            )));
        }
    }
    Ok(())
}
