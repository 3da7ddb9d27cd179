//! An in-process stand-in for the home deputy, for tests and measurements: a thread that runs
//! [`DeputyFwd`] and executes the forwarded calls on real fds of this process, connected to a
//! [`crate::remote::Supervisor`] by channels and an eventfd ([`ChannelPort`]).
//!
//! The real deputy executes the calls on its `pidfd_getfd` copies of the parked home process's
//! fds (and path calls inside that process); this stand-in only owns plain fds.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;

use crate::forward::{Call, DeputyAction, DeputyFwd, FwdMsg, Reply};
use crate::remote::HomePort;

/// The supervisor's end: messages to the stand-in, replies back, an eventfd that wakes it.
pub struct ChannelPort {
    tx: mpsc::Sender<FwdMsg>,
    rx: mpsc::Receiver<FwdMsg>,
    wake: std::sync::Arc<OwnedFd>,
}

impl HomePort for ChannelPort {
    fn send(&mut self, msg: FwdMsg) -> Result<(), String> {
        self.tx
            .send(msg)
            .map_err(|_| "the home stand-in has stopped".to_string())
    }
    fn try_recv(&mut self) -> Option<FwdMsg> {
        self.rx.try_recv().ok()
    }
    fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
    fn clear_wake(&mut self) {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from our non-blocking eventfd into `v`.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

/// The stand-in thread; joining returns the fds it still holds.
pub struct StandIn {
    thread: Option<JoinHandle<HashMap<i32, OwnedFd>>>,
}

impl StandIn {
    /// Waits for the thread (it ends when the [`ChannelPort`] is dropped).
    pub fn join(mut self) -> HashMap<i32, OwnedFd> {
        self.thread
            .take()
            .expect("joined once")
            .join()
            .expect("stand-in thread panicked")
    }
}

/// Starts a stand-in owning `fds` (home fd number → real fd).
pub fn spawn(fds: HashMap<i32, OwnedFd>) -> io::Result<(ChannelPort, StandIn)> {
    spawn_with_delay(fds, Duration::ZERO, |_| {})
}

/// [`spawn`], with every call taking at least `delay` at home (a slow home or network), and
/// `on_execute` called as each call starts there: lets tests interrupt the remote's calls
/// while they are in flight.
pub fn spawn_with_delay(
    fds: HashMap<i32, OwnedFd>,
    delay: Duration,
    on_execute: impl Fn(&Call) + Send + 'static,
) -> io::Result<(ChannelPort, StandIn)> {
    // SAFETY: eventfd with integer flags; on success a new fd we own.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    let wake = std::sync::Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
    let (to_home, home_rx) = mpsc::channel::<FwdMsg>();
    let (home_tx, from_home) = mpsc::channel::<FwdMsg>();
    let wake2 = wake.clone();
    let thread = std::thread::Builder::new()
        .name("home-stand-in".into())
        .spawn(move || {
            // Its own cwd (and umask): a forwarded chdir moves this thread only, as the
            // deputy's worker does.
            // SAFETY: unshare with a flag; it affects this thread's fs_struct only.
            unsafe { libc::unshare(libc::CLONE_FS) };
            let mut fds = fds;
            let mut dep = DeputyFwd::new();
            loop {
                let msg = match home_rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return fds,
                };
                let mut pending: VecDeque<DeputyAction> = dep.on_msg(msg).into();
                while let Some(a) = pending.pop_front() {
                    match a {
                        DeputyAction::Send(m) => {
                            if home_tx.send(m).is_err() {
                                return fds;
                            }
                            let one = 1u64;
                            // SAFETY: writing 8 bytes to our eventfd.
                            unsafe {
                                libc::write(wake2.as_raw_fd(), (&one as *const u64).cast(), 8)
                            };
                        }
                        DeputyAction::Execute { tid, seq, call } => {
                            on_execute(&call);
                            if !delay.is_zero() {
                                std::thread::sleep(delay);
                            }
                            let r = execute(&mut fds, &call);
                            pending.extend(dep.on_done(tid, seq, r));
                        }
                        DeputyAction::Interrupt { .. } => {}
                    }
                }
            }
        })?;
    Ok((
        ChannelPort {
            tx: to_home,
            rx: from_home,
            wake,
        },
        StandIn {
            thread: Some(thread),
        },
    ))
}

fn ret_or_errno(r: isize) -> i64 {
    if r < 0 {
        -i64::from(
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    } else {
        r as i64
    }
}

/// Runs one call on the real fds; relative paths resolve against this process's cwd.
pub fn execute(fds: &mut HashMap<i32, OwnedFd>, call: &Call) -> Reply {
    execute_at(fds, None, call)
}

/// Runs one call on the real fds; relative paths of path calls resolve against `cwd` (the
/// moved process's working directory at home) when given.
pub fn execute_at(
    fds: &mut HashMap<i32, OwnedFd>,
    cwd: Option<std::os::fd::BorrowedFd<'_>>,
    call: &Call,
) -> Reply {
    if let Call::Openat {
        dirfd,
        path,
        flags,
        mode,
        at,
    } = call
    {
        return openat(fds, cwd, *dirfd, path, *flags, *mode, *at);
    }
    if let Call::Sys { nr, args } = call {
        let table = &*fds;
        return crate::homecall::execute(*nr, args, |f| table.get(&f).map(AsRawFd::as_raw_fd));
    }
    let Some(fd) = call.fd() else {
        return Reply::errno(libc::ENOSYS);
    };
    let Some(real) = fds.get(&fd).map(AsRawFd::as_raw_fd) else {
        return Reply::errno(libc::EBADF);
    };
    match call {
        Call::Read { len, .. } | Call::Pread { len, .. } => {
            let mut buf = vec![0u8; *len as usize];
            // SAFETY: reading at most buf.len() bytes into `buf`.
            let r = unsafe {
                match call {
                    Call::Pread { offset, .. } => {
                        libc::pread(real, buf.as_mut_ptr().cast(), buf.len(), *offset)
                    }
                    _ => libc::read(real, buf.as_mut_ptr().cast(), buf.len()),
                }
            };
            let ret = ret_or_errno(r);
            if ret > 0 {
                buf.truncate(ret as usize);
                Reply::data(Bytes::from(buf))
            } else {
                Reply::ok(ret)
            }
        }
        Call::Write { data, .. } | Call::Pwrite { data, .. } => {
            // SAFETY: writing data.len() bytes from `data`.
            let r = unsafe {
                match call {
                    Call::Pwrite { offset, .. } => {
                        libc::pwrite(real, data.as_ptr().cast(), data.len(), *offset)
                    }
                    _ => libc::write(real, data.as_ptr().cast(), data.len()),
                }
            };
            Reply::ok(ret_or_errno(r))
        }
        Call::Lseek { offset, whence, .. } => {
            // SAFETY: lseek with integer arguments.
            Reply::ok(ret_or_errno(
                unsafe { libc::lseek(real, *offset, *whence) } as isize
            ))
        }
        Call::Fstat { .. } => {
            // SAFETY: fstat into a zeroed struct stat.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let r = unsafe { libc::fstat(real, &mut st) };
            if r < 0 {
                return Reply::ok(ret_or_errno(-1));
            }
            // SAFETY: struct stat is plain old data; we view its bytes.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (&st as *const libc::stat).cast::<u8>(),
                    size_of::<libc::stat>(),
                )
            };
            Reply {
                ret: 0,
                data: Bytes::copy_from_slice(bytes),
            }
        }
        Call::FileId { .. } => {
            // SAFETY: `real` is open in `fds` for the duration of this call.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(real) };
            match crate::mapfile::of_fd(b) {
                Ok(id) => Reply::data(Bytes::copy_from_slice(&id.to_bytes())),
                Err(e) => Reply::errno(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        Call::Close { .. } => {
            fds.remove(&fd);
            Reply::ok(0)
        }
        Call::Openat { .. } | Call::Sys { .. } => Reply::errno(libc::ENOSYS),
    }
}

/// openat in this process; the result is kept as home fd `at`.
fn openat(
    fds: &mut HashMap<i32, OwnedFd>,
    cwd: Option<std::os::fd::BorrowedFd<'_>>,
    dirfd: i32,
    path: &[u8],
    flags: i32,
    mode: u32,
    at: i32,
) -> Reply {
    let base = if dirfd == libc::AT_FDCWD {
        cwd.map_or(libc::AT_FDCWD, |d| d.as_raw_fd())
    } else {
        match fds.get(&dirfd) {
            Some(d) => d.as_raw_fd(),
            None => return Reply::errno(libc::EBADF),
        }
    };
    let Ok(c) = std::ffi::CString::new(path.to_vec()) else {
        return Reply::errno(libc::EINVAL);
    };
    // SAFETY: openat of a NUL-terminated path; on success a fresh fd owned here.
    let r = unsafe { libc::openat(base, c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if r < 0 {
        return Reply::ok(ret_or_errno(-1));
    }
    // SAFETY: fresh fd.
    fds.insert(at, unsafe { OwnedFd::from_raw_fd(r) });
    Reply::ok(i64::from(at))
}

/// A home stand-in that runs each call inside [`HomePort::send`], on the supervisor's own
/// thread (its replies are picked up by the supervisor's drain after each notification; the
/// wake-up fd never fires): no thread hop, so a measurement with it shows the cost of the seccomp round trip
/// and the supervisor alone.
pub struct DirectPort {
    fds: HashMap<i32, OwnedFd>,
    dep: DeputyFwd,
    replies: VecDeque<FwdMsg>,
    wake: OwnedFd,
}

impl DirectPort {
    pub fn new(fds: HashMap<i32, OwnedFd>) -> io::Result<DirectPort> {
        // SAFETY: eventfd with integer flags; on success a new fd we own.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DirectPort {
            fds,
            dep: DeputyFwd::new(),
            replies: VecDeque::new(),
            // SAFETY: fresh fd.
            wake: unsafe { OwnedFd::from_raw_fd(efd) },
        })
    }

    /// The fds still held.
    pub fn into_fds(self) -> HashMap<i32, OwnedFd> {
        self.fds
    }
}

impl HomePort for DirectPort {
    fn send(&mut self, msg: FwdMsg) -> Result<(), String> {
        let mut pending: VecDeque<DeputyAction> = self.dep.on_msg(msg).into();
        while let Some(a) = pending.pop_front() {
            match a {
                DeputyAction::Send(m) => self.replies.push_back(m),
                DeputyAction::Execute { tid, seq, call } => {
                    let r = execute(&mut self.fds, &call);
                    pending.extend(self.dep.on_done(tid, seq, r));
                }
                DeputyAction::Interrupt { .. } => {}
            }
        }
        // No wake-up: the supervisor drains `try_recv` right after handling a notification.
        Ok(())
    }
    fn try_recv(&mut self) -> Option<FwdMsg> {
        self.replies.pop_front()
    }
    fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
    fn clear_wake(&mut self) {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from our non-blocking eventfd into `v`.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}
