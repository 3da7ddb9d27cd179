//! The deputy: the home end of a moved process's forwarded calls.
//!
//! Owns: the worker thread that runs forwarded calls on the real fds (its `pidfd_getfd` copies
//! of the parked home process's fds) in the moved process's identity, and the carrying-out of
//! `migration::forward::DeputyFwd`'s actions.
//! Must not know: the migration protocol (`crate::migrator` drives it) or how calls are
//! classified on the remote (`migration::remote`).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use bytes::Bytes;
use migration::forward::{Call, Reply};
use migration::homecall::{self, Arg};
use migration::jobctl::{self, Gate, TtyOp, TtyState};

/// A forwarded call for the deputy's worker thread.
pub(crate) struct Job {
    pub(crate) tid: migration::forward::Tid,
    pub(crate) seq: migration::forward::Seq,
    pub(crate) call: migration::forward::Call,
}

/// What the deputy's protocol thread shares with its worker.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// SIGTTIN / SIGTTOU ignored or blocked by the moved process (from `FwdMsg::TtySigs`).
    pub ttin_off: AtomicBool,
    pub ttou_off: AtomicBool,
    /// The last request the remote gave up on (`FwdMsg::Cancel`): a call held by job control
    /// stops waiting.
    pub cancelled: AtomicU64,
    /// The deputy is ending: held calls stop waiting.
    pub closed: AtomicBool,
    /// The moved process is stopped by job control: reads for it wait (a stopped process
    /// reads nothing; its shell reads the terminal meanwhile).
    pub stopped: AtomicBool,
    /// The moved process's new cwd after a forwarded chdir/fchdir (absolute), for the parked
    /// home shell to take too (so the process has it when it comes home).
    pub cwd: std::sync::Mutex<Option<Vec<u8>>>,
    /// SIGTTIN/SIGTTOU the worker sent to the process's group for a background terminal
    /// access: each stops the home shell directly, so the copy's stop it causes needs no
    /// mirroring.
    pub tty_stops: AtomicU64,
    /// Calls handed to the worker and not yet reported done: while any is, later calls go to
    /// the worker too (in order), none runs on the inbox ([`crate::fwdpath`]).
    pub busy: AtomicU64,
}

/// The moved process's identity at home, as the worker thread took it.
struct Identity {
    ruid: u32,
    rgid: u32,
    fsuid: u32,
    fsgid: u32,
}

/// The deputy's worker: runs forwarded calls on the real fds, one at a time, so a call that
/// blocks at home (a read of an empty pipe) never stops the migration thread's heartbeats,
/// signal forwarding or exit handling.
///
/// Path calls run as the moved process would run them at home: this thread unshares its
/// filesystem context (`unshare(CLONE_FS)`) and takes the process's root, cwd and umask, and
/// its filesystem uid, gid and groups (per thread: raw setfsuid/setfsgid/setgroups). A
/// forwarded `chdir`/`fchdir` moves this thread's cwd, which later relative paths use: the
/// deputy keeps the moved process's cwd (the parked home shell keeps the cwd it had when it
/// moved). The worker starts before the process leaves home ([`prepare`]): if that identity
/// cannot be taken, the move is refused and the process runs on at home, unchanged.
///
/// Calls on the controlling terminal first pass the job-control check the kernel would make
/// for the process ([`migration::jobctl::tty_gate`]): from a background group a read sends
/// SIGTTIN to the group at home (and is held until the group is in the foreground), and so on.
pub(crate) fn worker(
    pid: i32,
    fds: crate::gohome::DeputyFds,
    jobs: mpsc::Receiver<Job>,
    way: Arc<OnceLock<Arc<crate::fwdpath::DeputyWay>>>,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    // /mfs magic folders read by this thread answer for the moved process.
    let _mfs = crate::mfsmagic::acting_for(pid);
    let ident = match take_identity(pid) {
        Ok(i) => {
            let _ = ready.send(Ok(()));
            Some(i)
        }
        Err(e) => {
            // the move is refused before the process leaves (see `prepare`)
            let _ = ready.send(Err(e));
            return;
        }
    };
    drop(ready);
    while let Ok(Job { tid, seq, call }) = jobs.recv() {
        let reply = match (&call, &ident) {
            (Call::Openat { .. }, None) => Reply::errno(libc::EACCES),
            (Call::Sys { nr, .. }, None) if *nr != libc::SYS_ioctl && *nr != libc::SYS_fcntl => {
                Reply::errno(libc::EACCES)
            }
            _ => {
                // The waits below may last (input, the foreground): they get a copy of the
                // one fd they need, so the shared table is not held meanwhile (the way home
                // reads it).
                let one = waited_fd(&fds, &call);
                match tty_check(pid, &one, &call, seq, &shared)
                    .or_else(|| wait_readable(&one, &call, seq, &shared))
                {
                    Some(r) => r,
                    None => {
                        let mut table = fds.lock().unwrap_or_else(|p| p.into_inner());
                        run(pid, &mut table, ident.as_ref(), &call)
                    }
                }
            }
        };
        if let Call::Sys { nr, .. } = &call
            && (*nr == libc::SYS_chdir || *nr == libc::SYS_fchdir)
            && reply.ret == 0
            && let Ok(cwd) = std::env::current_dir()
        {
            // This thread's cwd (unshared): where the process now is.
            *shared.cwd.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(cwd.into_os_string().into_encoded_bytes());
        }
        crate::metrics::bump(&crate::metrics::COUNTERS.forwarded_calls);
        // the reply goes from here straight to the link (crate::fwdpath)
        match way.get() {
            Some(w) => w.done(tid, seq, reply),
            None => tracing::error!(pid, "deputy: a call ran before its way was open"),
        }
        // after its reply is with the machine: a later call may run on the inbox now
        let _ = shared
            .busy
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1));
    }
}

/// The deputy made ready while the process is still frozen at home, before the offer: what
/// it needs was taken, or the move is refused and the process runs on unchanged.
pub(crate) struct Prepared {
    /// Its fds (pidfd_getfd copies), by number.
    pub(crate) fds: crate::gohome::DeputyFds,
    /// To the worker, which runs as the process's identity; dropping it ends the worker.
    pub(crate) jobs: mpsc::Sender<Job>,
    /// Set when the deputy's way opens (after the commit).
    pub(crate) way: Arc<OnceLock<Arc<crate::fwdpath::DeputyWay>>>,
}

/// Takes copies of the process's fds `numbers` and starts the worker, which takes the process's
/// identity (root, cwd, umask, filesystem ids, groups). Everything the deputy will need is
/// checked here, before the process leaves: an error names what failed.
pub(crate) fn prepare(pid: i32, numbers: &[i32], shared: Arc<Shared>) -> Result<Prepared, String> {
    let pidfd = migration::seccomp::pidfd_open(pid)
        .map_err(|e| format!("the deputy cannot open process {pid}: {e}"))?;
    let mut taken = HashMap::new();
    for &fd in numbers {
        let f = migration::seccomp::pidfd_getfd(&pidfd, fd)
            .map_err(|e| format!("the deputy cannot take its fd {fd}: {e}"))?;
        taken.insert(fd, f);
    }
    let fds: crate::gohome::DeputyFds = Arc::new(std::sync::Mutex::new(taken));
    let (jobs, jrx) = mpsc::channel();
    let (rtx, rrx) = mpsc::channel();
    let way: Arc<OnceLock<Arc<crate::fwdpath::DeputyWay>>> = Arc::default();
    let (f2, w2) = (fds.clone(), way.clone());
    std::thread::Builder::new()
        .name(format!("deputy-{pid}"))
        .spawn(move || worker(pid, f2, jrx, w2, shared, rtx))
        .map_err(|e| format!("cannot start the deputy's worker: {e}"))?;
    match rrx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(Prepared { fds, jobs, way }),
        Ok(Err(e)) => Err(format!("the deputy cannot act as it at home: {e}")),
        Err(_) => Err("the deputy's worker did not start within 10 s".into()),
    }
}

/// A copy (dup) of the fd a terminal check or a read's wait looks at, as a one-entry table.
fn waited_fd(fds: &crate::gohome::DeputyFds, call: &Call) -> HashMap<i32, OwnedFd> {
    let fd = match call {
        Call::Read { fd, .. } | Call::Write { fd, .. } => *fd,
        Call::Sys { nr, args } if *nr == libc::SYS_ioctl => match args.first() {
            Some(Arg::Fd(fd)) => *fd,
            _ => return HashMap::new(),
        },
        _ => return HashMap::new(),
    };
    let table = fds.lock().unwrap_or_else(|p| p.into_inner());
    table
        .get(&fd)
        .and_then(|f| f.try_clone().ok())
        .map(|f| (fd, f))
        .into_iter()
        .collect()
}

/// Before a read: waits until the fd has data (poll, 20 ms at a time), so the wait can be
/// given up (the remote cancelled the call, the deputy ends) and pauses while the moved
/// process is stopped. `Some(EINTR)` when given up; `None`: go ahead and read.
fn wait_readable(
    fds: &HashMap<i32, OwnedFd>,
    call: &Call,
    seq: migration::forward::Seq,
    shared: &Shared,
) -> Option<Reply> {
    let Call::Read { fd, .. } = call else {
        return None;
    };
    let real = fds.get(fd)?.as_raw_fd();
    loop {
        if shared.cancelled.load(Ordering::SeqCst) == seq || shared.closed.load(Ordering::SeqCst) {
            return Some(Reply::errno(libc::EINTR));
        }
        if !shared.stopped.load(Ordering::SeqCst) {
            let mut p = libc::pollfd {
                fd: real,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, 20) };
            // Readable, at its end, in error, or not pollable: the read itself tells.
            if r != 0 {
                return None;
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs one call (after the job-control check).
fn run(pid: i32, fds: &mut HashMap<i32, OwnedFd>, ident: Option<&Identity>, call: &Call) -> Reply {
    if let Call::Sys { nr, args } = call {
        // TIOCGPGRP / TIOCGSID on the controlling terminal: the kernel answers only members of
        // the session, so answer from the home process's /proc entry.
        if let Some(sp) = homecall::special(*nr, args)
            && let Some(Arg::Fd(fd)) = args.first()
            && let Some(real) = fds.get(fd)
            && let Some(st) = ProcStat::read(pid)
            && is_ctty(real, &st)
        {
            let v = match sp {
                homecall::Special::GetPgrp => st.tpgid,
                homecall::Special::GetSid => st.sid,
            };
            return Reply {
                ret: 0,
                data: Bytes::copy_from_slice(&v.to_ne_bytes()),
            };
        }
        // access/faccessat(2) without AT_EACCESS check with the real uid and gid: the kernel
        // would take the daemon's (root); check with the process's, as the effective ones.
        let real_ids = match (*nr, args.as_slice()) {
            (libc::SYS_access, [p, m]) => Some(vec![
                Arg::Val(libc::AT_FDCWD as u64),
                p.clone(),
                m.clone(),
                Arg::Val(0),
            ]),
            (libc::SYS_faccessat, [d, p, m]) => {
                Some(vec![d.clone(), p.clone(), m.clone(), Arg::Val(0)])
            }
            (libc::SYS_faccessat2, [d, p, m, Arg::Val(f)]) if *f & libc::AT_EACCESS as u64 == 0 => {
                Some(args.clone())
            }
            _ => None,
        };
        if let (Some(mut a), Some(id)) = (real_ids, ident) {
            if let Some(Arg::Val(f)) = a.get_mut(3) {
                *f |= libc::AT_EACCESS as u64;
            }
            let table = &*fds;
            return as_fs_ids(id.ruid, id.rgid, id, || {
                homecall::execute(libc::SYS_faccessat2, &a, |f| {
                    table.get(&f).map(AsRawFd::as_raw_fd)
                })
            });
        }
    }
    migration::standin::execute_at(fds, None, call)
}

/// Runs `f` with the filesystem ids `uid`/`gid`, then goes back to the process's.
fn as_fs_ids<R>(uid: u32, gid: u32, id: &Identity, f: impl FnOnce() -> R) -> R {
    // SAFETY: raw per-thread credential calls with integer arguments.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid);
        libc::syscall(libc::SYS_setfsuid, uid);
    }
    let r = f();
    // SAFETY: as above.
    unsafe {
        libc::syscall(libc::SYS_setfsuid, id.fsuid);
        libc::syscall(libc::SYS_setfsgid, id.fsgid);
    }
    r
}

/// The fields of `/proc/PID/stat` job control needs.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    state: u8,
    ppid: i32,
    pgrp: i32,
    sid: i32,
    tty_nr: u64,
    tpgid: i32,
}

impl ProcStat {
    fn read(pid: i32) -> Option<ProcStat> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(ProcStat {
            state: *f.first()?.as_bytes().first()?,
            ppid: f.get(1)?.parse().ok()?,
            pgrp: f.get(2)?.parse().ok()?,
            sid: f.get(3)?.parse().ok()?,
            tty_nr: f.get(4)?.parse::<i64>().ok()? as u64,
            tpgid: f.get(5)?.parse().ok()?,
        })
    }
}

/// Whether `fd` is the controlling terminal of the process whose stat is `st`.
fn is_ctty(fd: &OwnedFd, st: &ProcStat) -> bool {
    // SAFETY: fstat into a zeroed struct.
    let mut sb: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat of our own fd.
    let r = unsafe { libc::fstat(fd.as_raw_fd(), &mut sb) };
    r == 0
        && sb.st_mode & libc::S_IFMT == libc::S_IFCHR
        && st.tty_nr != 0
        && sb.st_rdev == st.tty_nr
}

/// Whether process group `pgrp` of session `sid` is orphaned: no member has a parent in
/// another group of the same session (POSIX; the kernel's `will_become_orphaned_pgrp`).
fn orphaned(pgrp: i32, sid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false; // unreadable: not orphaned (the signal is sent, as for a normal job)
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Some(st) = ProcStat::read(pid) else {
            continue;
        };
        if st.pgrp != pgrp {
            continue;
        }
        if let Some(parent) = ProcStat::read(st.ppid)
            && parent.pgrp != pgrp
            && parent.sid == sid
        {
            return false;
        }
    }
    true
}

/// The kernel's job-control check for a call on the process's controlling terminal. `None`:
/// go ahead; `Some(reply)`: answer this instead (EIO, or EINTR when the held call was given
/// up). While the process's group is in the background the call is held, the stop signal
/// sent to the group (again after each continue, as the restarted call would).
fn tty_check(
    pid: i32,
    fds: &HashMap<i32, OwnedFd>,
    call: &Call,
    seq: migration::forward::Seq,
    shared: &Shared,
) -> Option<Reply> {
    let (fd, op) = match call {
        Call::Read { fd, .. } => (*fd, TtyOp::Read),
        Call::Write { fd, .. } => (*fd, TtyOp::Write),
        Call::Sys { nr, args } if *nr == libc::SYS_ioctl => match (args.first(), args.get(1)) {
            (Some(Arg::Fd(fd)), Some(Arg::Val(req))) if jobctl::ioctl_changes_tty(*req) => {
                (*fd, TtyOp::Change)
            }
            _ => return None,
        },
        _ => return None,
    };
    let real = fds.get(&fd)?;
    let mut sent = false;
    let mut seen_stopped = false;
    loop {
        let st = ProcStat::read(pid)?;
        if !is_ctty(real, &st) || st.pgrp == st.tpgid {
            return None;
        }
        let tostop = op == TtyOp::Write && {
            let mut tio = [0u8; 60];
            // SAFETY: TCGETS into a buffer larger than the kernel's struct termios (36 bytes).
            let r = unsafe { libc::ioctl(real.as_raw_fd(), libc::TCGETS, tio.as_mut_ptr()) };
            let lflag = u32::from_ne_bytes([tio[12], tio[13], tio[14], tio[15]]);
            r == 0 && lflag & libc::TOSTOP != 0
        };
        let state = TtyState {
            pgrp: st.pgrp,
            fg: st.tpgid,
            tostop,
            ttin_off: shared.ttin_off.load(Ordering::SeqCst),
            ttou_off: shared.ttou_off.load(Ordering::SeqCst),
            orphaned: false,
        };
        let gate = match jobctl::tty_gate(op, state) {
            Gate::Signal(_) if orphaned(st.pgrp, st.sid) => jobctl::tty_gate(
                op,
                TtyState {
                    orphaned: true,
                    ..state
                },
            ),
            g => g,
        };
        match gate {
            Gate::Proceed => return None,
            Gate::Eio => return Some(Reply::errno(libc::EIO)),
            Gate::Signal(sig) => {
                let stopped = matches!(st.state, b't' | b'T');
                seen_stopped |= stopped;
                if !sent || (seen_stopped && !stopped) {
                    tracing::debug!(
                        pid,
                        pgrp = st.pgrp,
                        sig,
                        "deputy: background terminal access"
                    );
                    // SAFETY: kill with integer arguments: the process's own group at home.
                    unsafe { libc::kill(-st.pgrp, sig) };
                    shared.tty_stops.fetch_add(1, Ordering::SeqCst);
                    sent = true;
                    seen_stopped = false;
                }
            }
        }
        if shared.cancelled.load(Ordering::SeqCst) == seq || shared.closed.load(Ordering::SeqCst) {
            return Some(Reply::errno(libc::EINTR));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes the calling thread act on files as process `pid` does: its own filesystem context
/// (root, cwd, umask) taken from the process, then its filesystem uid and gid and its
/// supplementary groups.
fn take_identity(pid: i32) -> Result<Identity, String> {
    // Debug builds only: the tests make this fail for a program of a given name (there is no
    // way to make a root daemon fail it for real on loopback), to check that the move is then
    // refused and the process runs on at home.
    #[cfg(debug_assertions)]
    if let Ok(name) = std::env::var("OMNODE_TEST_DEPUTY_FAULT")
        && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
    {
        return Err(format!(
            "cannot take the identity of {pid} (OMNODE_TEST_DEPUTY_FAULT={name})"
        ));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let field = |key: &str| -> Result<Vec<u32>, String> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| format!("/proc/{pid}/status has no {key}"))?;
        line.split_whitespace()
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("/proc/{pid}/status: bad {key} {line}"))
            })
            .collect()
    };
    let (uids, gids, groups) = (field("Uid:")?, field("Gid:")?, field("Groups:")?);
    let (Some(&ruid), Some(&rgid), Some(&fsuid), Some(&fsgid)) =
        (uids.first(), gids.first(), uids.get(3), gids.get(3))
    else {
        return Err(format!(
            "/proc/{pid}/status: no real or filesystem uid or gid"
        ));
    };
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        .ok_or_else(|| format!("/proc/{pid}/status has no readable Umask"))?;
    let open_dir = |what: &str| -> Result<OwnedFd, String> {
        let path = std::ffi::CString::new(format!("/proc/{pid}/{what}")).expect("no NUL");
        // SAFETY: open of a NUL-terminated path; on success a fresh fd we own.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "cannot open the {what} of {pid}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fresh fd.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let root = open_dir("root")?;
    let cwd = open_dir("cwd")?;
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: unshare/fchdir/chroot/umask act on this thread's own filesystem context once
    // unshared (CLONE_FS); the fds are ours.
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(os("unshare(CLONE_FS)"));
        }
        if std::fs::read_link(format!("/proc/{pid}/root"))
            .ok()
            .as_deref()
            != Some(std::path::Path::new("/"))
            && (libc::fchdir(root.as_raw_fd()) != 0 || libc::chroot(c".".as_ptr()) != 0)
        {
            return Err(os("taking the process's root"));
        }
        if libc::fchdir(cwd.as_raw_fd()) != 0 {
            return Err(os("taking the process's cwd"));
        }
        libc::umask(umask as libc::mode_t);
    }
    let groups: Vec<libc::gid_t> = groups;
    // SAFETY: raw syscalls act on this thread only (glibc's wrappers would change every
    // thread of the daemon); the groups pointer and length describe a live Vec.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        libc::syscall(libc::SYS_setfsgid, fsgid);
        libc::syscall(libc::SYS_setfsuid, fsuid);
        // setfsuid/setfsgid report the previous value, never an error: ask again to check
        let now_gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let now_uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if now_uid != fsuid || now_gid != fsgid {
            return Err(format!(
                "cannot act as uid {fsuid} gid {fsgid} (still {now_uid}/{now_gid})"
            ));
        }
    }
    Ok(Identity {
        ruid,
        rgid,
        fsuid,
        fsgid,
    })
}

/// Notes what the deputy itself needs from a message of the remote (before the forwarding
/// machine sees it).
pub(crate) fn note(shared: &Shared, msg: &migration::forward::FwdMsg) {
    if let migration::forward::FwdMsg::TtySigs { ttin_off, ttou_off } = msg {
        shared.ttin_off.store(*ttin_off, Ordering::SeqCst);
        shared.ttou_off.store(*ttou_off, Ordering::SeqCst);
    }
}

/// Whether `/proc/PID/fd/FD` is a terminal (a character device of the tty majors: 4 and 5,
/// the Unix98 pty slaves 136–143).
pub(crate) fn is_tty_fd(pid: i32, fd: i32) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|m| {
        let major = libc::major(m.rdev());
        m.file_type().is_char_device() && (major == 4 || major == 5 || (136..=143).contains(&major))
    })
}

/// Gives the parked home shell the cwd a forwarded chdir/fchdir gave the process (injected
/// `chdir` in the shell's own context: same rights). Kept for later while the shell cannot
/// take it (stopped by job control).
pub(crate) fn mirror_cwd(pid: i32, sh: &mut migrate::HomeShell, shared: &Shared) {
    let mut slot = shared.cwd.lock().unwrap_or_else(|p| p.into_inner());
    let Some(path) = slot.take() else { return };
    let mut arg = path.clone();
    arg.push(0);
    match sh.syscall(libc::SYS_chdir, vec![migrate::ShellArg::In(arg)]) {
        Ok((0, _)) => {}
        Ok((r, _)) => tracing::warn!(
            pid,
            errno = -r,
            "the home shell could not follow the process's chdir to {}",
            String::from_utf8_lossy(&path)
        ),
        Err(e) => {
            tracing::debug!(pid, "home shell cwd later: {e}");
            *slot = Some(path);
        }
    }
}

/// Whether process `pid` is stopped (group stop, also under ptrace).
pub(crate) fn is_stopped(pid: i32) -> bool {
    ProcStat::read(pid).is_some_and(|st| matches!(st.state, b't' | b'T'))
}
