//! File descriptors: reopened paths at their positions, shared descriptions, stdio flags.

use super::inject::Builder;
use super::terr;
use crate::error::Result;
use crate::image::*;

/// Reopens the fd table and attaches stdio.
pub(super) fn restore_fds(b: &mut Builder, img: &ProcessImage) -> Result<()> {
    // file descriptors (one by one: each depends on the fd number the last open returned)
    for f in &img.fds {
        let fd = f.fd as u64;
        match &f.kind {
            FdKind::Stdio { cloexec, .. } => {
                if *cloexec {
                    b.sys(
                        "fcntl",
                        libc::SYS_fcntl,
                        &[fd, libc::F_SETFD as u64, libc::FD_CLOEXEC as u64],
                    )?;
                }
            }
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
    Ok(())
}
