//! Whether a file a moved process maps from home is the same as a file here, so the remote
//! maps the local one instead of bringing the process home ([`crate::remote`]).
//!
//! Owns: the identity of a regular file behind an fd (its size and a SHA-256 of its whole
//! content, read with `pread` so no shared offset moves), cached per file version. Sizes and
//! contents are compared, never dev/ino/mtime (they differ between machines for identical
//! files), as the executable is checked in [`crate::protocol`]. Must not know: migration,
//! sockets, the process.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;

use sha2::Digest;

/// What a regular file is: its size and a SHA-256 of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub size: u64,
    pub hash: [u8; 32],
}

/// Larger files are not compared (they go the slow way: the process goes home).
pub const MAX_SIZE: u64 = 256 << 20;

/// Bytes of [`FileId::to_bytes`].
pub const WIRE_LEN: usize = 40;

impl FileId {
    pub fn to_bytes(&self) -> [u8; WIRE_LEN] {
        let mut b = [0u8; WIRE_LEN];
        b[..8].copy_from_slice(&self.size.to_le_bytes());
        b[8..].copy_from_slice(&self.hash);
        b
    }
    /// `None` unless exactly [`WIRE_LEN`] bytes.
    pub fn from_bytes(b: &[u8]) -> Option<FileId> {
        if b.len() != WIRE_LEN {
            return None;
        }
        Some(FileId {
            size: u64::from_le_bytes(b[..8].try_into().ok()?),
            hash: b[8..].try_into().ok()?,
        })
    }
}

/// One version of one file: it changes when the file is replaced or written.
type Version = (u64, u64, u64, i64, i64, i64, i64);

static CACHE: Mutex<Option<HashMap<Version, [u8; 32]>>> = Mutex::new(None);
/// Entries kept before the cache starts afresh.
const CACHE_MAX: usize = 4096;

/// The identity of the regular file behind `fd`, hashed once per version (dev, inode, size,
/// mtime, ctime). Not a regular file: `ENODEV`; larger than [`MAX_SIZE`]: `EFBIG`; a file that
/// changes while it is read: `EAGAIN`. Read errors are returned as they are.
pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let before = version(fd)?;
    let size = before.2;
    if let Some(h) = lock().as_ref().and_then(|c| c.get(&before)) {
        return Ok(FileId { size, hash: *h });
    }
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let want = buf.len().min((size - at) as usize);
        // SAFETY: reading at most buf.len() bytes into `buf`.
        let r = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), want, at as i64) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        h.update(&buf[..r as usize]);
        at += r as u64;
    }
    if at != size || version(fd)? != before {
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    let hash: [u8; 32] = h.finalize().into();
    let mut c = lock();
    let c = c.get_or_insert_with(HashMap::new);
    if c.len() >= CACHE_MAX {
        c.clear();
    }
    c.insert(before, hash);
    Ok(FileId { size, hash })
}

fn lock() -> std::sync::MutexGuard<'static, Option<HashMap<Version, [u8; 32]>>> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

fn version(fd: BorrowedFd<'_>) -> io::Result<Version> {
    // SAFETY: fstat into a zeroed struct stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::ENODEV));
    }
    let size = st.st_size as u64;
    if size > MAX_SIZE {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    Ok((
        st.st_dev,
        st.st_ino,
        size,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsFd;

    #[test]
    fn equal_contents_are_equal_and_a_change_is_seen() {
        let dir = std::env::temp_dir().join(format!("h13dyn-mapfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _clean = Clean(dir.clone());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, &data).unwrap();
        std::fs::write(&b, &data).unwrap();
        let fa = std::fs::File::open(&a).unwrap();
        let fb = std::fs::File::open(&b).unwrap();
        let ia = of_fd(fa.as_fd()).unwrap();
        assert_eq!(ia.size, data.len() as u64);
        assert_eq!(ia, of_fd(fb.as_fd()).unwrap());
        let expect: [u8; 32] = sha2::Sha256::digest(&data).into();
        assert_eq!(ia.hash, expect);
        assert_eq!(FileId::from_bytes(&ia.to_bytes()), Some(ia));
        assert_eq!(FileId::from_bytes(&ia.to_bytes()[1..]), None);
        // same size, one byte changed: a new version, another hash (the cache is not stale)
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut w = std::fs::OpenOptions::new().write(true).open(&b).unwrap();
        w.write_all(&[data[0] ^ 1]).unwrap();
        drop(w);
        let ib = of_fd(fb.as_fd()).unwrap();
        assert_eq!(ib.size, ia.size);
        assert_ne!(ib.hash, ia.hash);
        // not a regular file
        let d = std::fs::File::open(&dir).unwrap();
        assert_eq!(
            of_fd(d.as_fd()).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
    }

    struct Clean(std::path::PathBuf);
    impl Drop for Clean {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
