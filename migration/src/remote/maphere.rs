//! Mapping a home file here: a home-backed fd opened read-only by absolute path is mapped
//! from the identical local file ([`Req::FileId`], [`crate::mapfile`]) instead of going home.

use super::*;

/// A home-backed fd opened read-only by absolute path.
#[derive(Debug, Clone)]
pub(super) struct RoFile {
    pub(super) path: Vec<u8>,
    pub(super) cloexec: bool,
    /// The placeholder is the local file, proven the same as home's.
    pub(super) local: bool,
}

/// The mapping type bits of mmap's flags (`MAP_TYPE` in the kernel).
pub(super) const MAP_TYPE: i32 = 0x0f;

/// The local file at absolute `path`, opened read-only, if it is a regular file everyone may
/// read with the size and content of `home`; anything else (missing, different, unreadable,
/// not world-readable): `None`.
pub(super) fn open_same(path: &[u8], home: crate::mapfile::FileId) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsFd, FromRawFd};
    let c = std::ffi::CString::new(path).ok()?;
    // O_NONBLOCK: a FIFO at that path here must not block the supervisor.
    // SAFETY: open of a NUL-terminated path; the fd is owned right after.
    let raw = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: fresh fd.
    let f = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // This daemon opened it as root: only a file everyone may read is compared (else the
    // answer would tell the user whether a file they may not read equals one they may).
    // SAFETY: fstat into a zeroed struct stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(raw, &mut st) } < 0 || st.st_mode & libc::S_IROTH == 0 {
        return None;
    }
    let here = crate::mapfile::of_fd(f.as_fd()).ok()?;
    if here != home {
        return None;
    }
    // A regular file (of_fd checked): back to the blocking mode the process opened it with.
    // SAFETY: fcntl with integer arguments on our fd.
    unsafe { libc::fcntl(raw, libc::F_SETFL, 0) };
    Some(f)
}

impl<P: HomePort> Supervisor<P> {
    /// An `mmap` of home-backed `fd`: runs here on the local file when it is the file home
    /// has (see [`Req::FileId`]); `None`: it goes home.
    pub(super) fn map_here(&self, a: [u64; 6]) -> Option<Class> {
        let fd = a[4] as i32;
        let rf = self.ro_files.get(&fd)?;
        // A shared mapping would have to see writes made at home: only private ones.
        if a[3] as i32 & MAP_TYPE != libc::MAP_PRIVATE {
            return None;
        }
        Some(if rf.local {
            Class::Continue
        } else {
            Class::Forward(Req::FileId { fd })
        })
    }

    /// Home said what the file behind `fd` is: if the same path here holds the same file,
    /// the placeholder at `fd` becomes that local file and the mmap runs here (the fd stays
    /// home-backed: reads, seeks and close still go home). Otherwise the process goes home
    /// ([`Stop::GoHome`], the mmap unanswered).
    pub(super) fn map_local(
        &mut self,
        n: Notif,
        fd: i32,
        reply: &Reply,
    ) -> Result<Answered, Error> {
        let home = (reply.ret >= 0)
            .then(|| crate::mapfile::FileId::from_bytes(&reply.data))
            .flatten();
        let local = match (home, self.ro_files.get(&fd)) {
            (Some(h), Some(rf)) => open_same(&rf.path, h).map(|f| (f, rf.cloexec)),
            _ => None,
        };
        let Some((file, cloexec)) = local else {
            tracing::info!(
                tid = n.pid,
                fd,
                ret = reply.ret,
                "a mapped home file is not the same here: the process goes home"
            );
            self.pending_stop = Some(Stop::GoHome {
                notif: n,
                reason: GoHome::MmapHomeFd,
            });
            return Ok(Answered::Delivered);
        };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
        match self.listener.add_fd(n.id, raw, Some(fd), cloexec, false) {
            Ok(_) => {}
            Err(seccomp::Error::Cancelled) => return Ok(Answered::Cancelled),
            Err(e) => return Err(e.into()),
        }
        if let Some(rf) = self.ro_files.get_mut(&fd) {
            rf.local = true;
        }
        self.stats.mapped_here += 1;
        match self.listener.respond(n.id, Response::Continue) {
            Ok(()) => Ok(Answered::Delivered),
            Err(seccomp::Error::Cancelled) => Ok(Answered::Cancelled),
            Err(e) => Err(e.into()),
        }
    }
}
