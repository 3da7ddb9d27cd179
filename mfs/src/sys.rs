//! Thin safe wrappers over the system calls the server needs that std does not offer.
//! Every name handed to them is a checked single component (no '/', no NUL).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// openat2(dirfd, name, O_PATH|O_NOFOLLOW) beneath `dir`: never leaves it, follows no
/// symlink and no magic link (a trailing symlink is opened as itself).
pub fn lookup_beneath(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    // struct open_how { u64 flags; u64 mode; u64 resolve; } (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS,
    };
    // SAFETY: `name` is a valid C string, `how` a valid open_how of the size passed.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    })?;
    // SAFETY: the kernel just gave us this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// openat(dirfd, name, flags, mode) for a checked single component.
pub fn openat(dir: BorrowedFd<'_>, name: &[u8], flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    // SAFETY: valid C string; the returned fd is owned by us.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// fstatat(fd, "", AT_EMPTY_PATH): works on O_PATH descriptors.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, b"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

pub fn fstatat(dir: BorrowedFd<'_>, name: &[u8], flags: i32) -> io::Result<libc::stat> {
    let name = cstr(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a valid out-pointer for one stat.
    let r = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatat filled it.
    Ok(unsafe { st.assume_init() })
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<libc::statfs> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: valid out-pointer.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled by fstatfs.
    Ok(unsafe { st.assume_init() })
}

fn unit(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: valid C string.
    unit(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &[u8], flags: i32) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: valid C string.
    unit(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
}

pub fn renameat2(
    d1: BorrowedFd<'_>,
    n1: &[u8],
    d2: BorrowedFd<'_>,
    n2: &[u8],
    flags: u32,
) -> io::Result<()> {
    let (n1, n2) = (cstr(n1)?, cstr(n2)?);
    // SAFETY: valid C strings and fds.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            d1.as_raw_fd(),
            n1.as_ptr(),
            d2.as_raw_fd(),
            n2.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// linkat(dir, name, newdir, newname, flags).
pub fn linkat(
    d1: BorrowedFd<'_>,
    n1: &[u8],
    d2: BorrowedFd<'_>,
    n2: &[u8],
    flags: i32,
) -> io::Result<()> {
    let (n1, n2) = (cstr(n1)?, cstr(n2)?);
    // SAFETY: valid C strings.
    unit(unsafe {
        libc::linkat(
            d1.as_raw_fd(),
            n1.as_ptr(),
            d2.as_raw_fd(),
            n2.as_ptr(),
            flags,
        )
    })
}

pub fn symlinkat(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let (t, n) = (cstr(target)?, cstr(name)?);
    // SAFETY: valid C strings.
    unit(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), n.as_ptr()) })
}

/// readlinkat(fd, ""): the target of the symlink `fd` (an O_PATH descriptor) stands for.
pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn fchmodat(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: valid C string.
    unit(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
}

/// fchownat(fd, "", uid, gid, AT_EMPTY_PATH): -1 leaves an id unchanged.
pub fn fchown(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: empty C string with AT_EMPTY_PATH acts on fd itself.
    unit(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            u,
            g,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

pub fn utimensat(dir: BorrowedFd<'_>, name: &[u8], times: &[libc::timespec; 2]) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: valid C string and a two-element timespec array.
    unit(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), 0) })
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    unit(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })
}

/// Read up to `len` bytes at `offset` into a fresh buffer, without zeroing it first (the
/// buffer holds only what the kernel wrote).
pub fn pread_new(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<bytes::BytesMut> {
    let mut buf = bytes::BytesMut::with_capacity(len);
    while buf.len() < len {
        let done = buf.len();
        let spare = buf.spare_capacity_mut();
        let want = spare.len().min(len - done);
        // SAFETY: the kernel writes at most `want` bytes into the spare capacity, which is
        // that long; only the bytes it reports written are then counted as initialised.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                want,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: `n` <= `want` bytes past the old length were just written by pread.
        unsafe { buf.set_len(done + n as usize) };
    }
    Ok(buf)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length stay inside `buf`.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(done)
}

/// write(2) at the file's own offset (for O_APPEND files).
pub fn write_all(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length stay inside `buf`.
        let n = unsafe {
            libc::write(
                fd.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(done)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    // SAFETY: plain syscalls on a valid fd.
    unit(unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
}

/// The names and d_types of a directory, without "." and "..".
/// An open-file-description lock (F_OFD_SETLK, never waits) on `fd`: `typ` F_RDLCK,
/// F_WRLCK or F_UNLCK over `start..=end` (`end` = i64::MAX: to the end of any file).
pub fn ofd_setlk(fd: BorrowedFd<'_>, typ: i32, start: u64, end: u64) -> io::Result<()> {
    let mut fl = flock_of(typ, start, end)?;
    // SAFETY: fcntl on a live fd with a pointer to a valid struct flock on our stack.
    unit(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) })
}

/// F_OFD_GETLK: the first lock conflicting with `typ` over `start..=end`, as
/// (type, start, end); type F_UNLCK when none.
pub fn ofd_getlk(
    fd: BorrowedFd<'_>,
    typ: i32,
    start: u64,
    end: u64,
) -> io::Result<(i32, u64, u64, i32)> {
    let mut fl = flock_of(typ, start, end)?;
    // SAFETY: as in ofd_setlk; the kernel fills `fl`.
    unit(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) })?;
    let s = fl.l_start.max(0) as u64;
    let e = if fl.l_len <= 0 {
        i64::MAX as u64
    } else {
        s.saturating_add(fl.l_len as u64 - 1)
    };
    Ok((i32::from(fl.l_type), s, e, fl.l_pid))
}

fn flock_of(typ: i32, start: u64, end: u64) -> io::Result<libc::flock> {
    let bad = || io::Error::from_raw_os_error(libc::EINVAL);
    if ![libc::F_RDLCK, libc::F_WRLCK, libc::F_UNLCK].contains(&typ) || end < start {
        return Err(bad());
    }
    let l_start = i64::try_from(start).map_err(|_| bad())?;
    let l_len = if end >= i64::MAX as u64 {
        0
    } else {
        i64::try_from(end - start + 1).map_err(|_| bad())?
    };
    // SAFETY: struct flock is plain integers; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = l_start;
    fl.l_len = l_len;
    Ok(fl)
}

pub fn read_dir(dir: OwnedFd) -> io::Result<Vec<(Vec<u8>, u8, u64)>> {
    // SAFETY: fdopendir takes ownership of the fd on success.
    let d = unsafe { libc::fdopendir(dir.as_raw_fd()) };
    if d.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dir);
    let mut out = Vec::new();
    loop {
        // SAFETY: clear errno to tell the end of the stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d` is a valid DIR*.
        let e = unsafe { libc::readdir64(d) };
        if e.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: `d` is valid and closed once.
            unsafe { libc::closedir(d) };
            if err.raw_os_error().unwrap_or(0) != 0 {
                return Err(err);
            }
            return Ok(out);
        }
        // SAFETY: readdir returned a valid entry that lives until the next call.
        let (name, ty, ino) = unsafe {
            let e = &*e;
            (
                CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(),
                e.d_type,
                e.d_ino,
            )
        };
        if name != b"." && name != b".." {
            out.push((name, ty, ino));
        }
    }
}

/// This thread's own filesystem context (umask, cwd), so umask 0 here touches no other thread.
pub fn unshare_fs() -> io::Result<()> {
    // SAFETY: unshare(CLONE_FS) affects the calling thread only.
    unit(unsafe { libc::unshare(libc::CLONE_FS) })?;
    // SAFETY: umask cannot fail; it now applies to this thread's fs_struct only.
    unsafe { libc::umask(0) };
    Ok(())
}

/// This thread's fs ids and supplementary groups. Raw system calls: glibc's setgroups would
/// change every thread of the process.
pub fn set_thread_creds(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: the pointer and length describe `groups`.
    cvt(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: setfsgid/setfsuid change this thread's fs ids; they report the old value.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
    // Asking with -1 changes nothing and tells what is in force now.
    // SAFETY: as above.
    let (now_u, now_g) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, -1i32) as u32,
            libc::syscall(libc::SYS_setfsgid, -1i32) as u32,
        )
    };
    if now_u != uid || now_g != gid {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

pub fn thread_groups() -> Vec<u32> {
    // SAFETY: a count query, then a fill of a buffer of that size.
    unsafe {
        let n = libc::syscall(libc::SYS_getgroups, 0, std::ptr::null_mut::<u32>());
        if n <= 0 {
            return Vec::new();
        }
        let mut v = vec![0u32; n as usize];
        let m = libc::syscall(libc::SYS_getgroups, n, v.as_mut_ptr());
        v.truncate(m.max(0) as usize);
        v
    }
}

/// Raise this process's soft limit of open files to its hard limit.
pub fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then the same struct back.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
