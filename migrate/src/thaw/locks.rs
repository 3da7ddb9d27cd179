//! File locks of the image taken again in the new process (see `freeze::locks`), injected
//! once every fd is there and before the process runs: flock, fcntl(F_SETLK) and
//! fcntl(F_OFD_SETLK), none of them waiting. A lock someone else holds now fails the thaw
//! (the image stays; nothing has run).

use super::inject::{Call, call};
use crate::error::Result;
use crate::image::*;

/// F_OFD_SETLK (linux/fcntl.h).
const F_OFD_SETLK: u64 = 37;

/// Appends the calls that take every lock of `img` again.
pub(super) fn calls(
    b: &mut super::inject::Builder,
    img: &ProcessImage,
    calls: &mut Vec<Call>,
) -> Result<()> {
    for l in &img.file_locks {
        let what = |how: &str| {
            format!(
                "{how} {} lock on fd {} (bytes {}..{}; held by another process now?)",
                if l.write { "write" } else { "read" },
                l.fd,
                l.start,
                l.end.map_or("EOF".to_string(), |e| e.to_string())
            )
        };
        if l.kind == LockKind::Flock {
            let op = if l.write {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            } | libc::LOCK_NB;
            calls.push(call(
                what("flock"),
                libc::SYS_flock,
                &[l.fd as u64, op as u64],
            ));
            continue;
        }
        // struct flock: l_type, l_whence (shorts), l_start, l_len, l_pid
        let mut fl = [0u8; 32];
        let ty = if l.write {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as i16;
        fl[0..2].copy_from_slice(&ty.to_ne_bytes());
        fl[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
        fl[8..16].copy_from_slice(&(l.start as i64).to_ne_bytes());
        let len = l.end.map_or(0, |e| e - l.start + 1) as i64;
        fl[16..24].copy_from_slice(&len.to_ne_bytes());
        let p = b.data(&fl)?;
        let (cmd, how) = match l.kind {
            LockKind::Ofd => (F_OFD_SETLK, "fcntl(F_OFD_SETLK)"),
            _ => (libc::F_SETLK as u64, "fcntl(F_SETLK)"),
        };
        calls.push(call(what(how), libc::SYS_fcntl, &[l.fd as u64, cmd, p]));
    }
    Ok(())
}
