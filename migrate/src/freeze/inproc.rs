//! File descriptors that live entirely inside the process, carried with their state: a pipe
//! whose both ends it holds (with the bytes waiting in it), an eventfd (its counter), an
//! epoll instance (its registrations). Everything fails closed: an fdinfo line that is missing
//! or does not parse, a pipe another process also holds, a registration whose file cannot be
//! matched to one of the process's fds, all refuse the freeze.

use super::{ferr, unsup};
use crate::error::Result;
use crate::image::*;
use crate::procfs::status_field;
use crate::sys::*;
use libc::pid_t;
use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The inode of `pipe:[N]`.
pub(super) fn pipe_ino(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// Does the process hold both a read end and a write end of the pipe `link` among its fds
/// above 2 (looked up in `dir`, /proc/PID/fd)? Read-write ends (a pipe reopened through /proc)
/// are not carried.
pub(super) fn holds_both_ends(pid: pid_t, dir: &str, link: &str) -> Result<bool> {
    let (mut r, mut w) = (false, false);
    for e in std::fs::read_dir(dir).map_err(ferr(pid, format!("listing {dir}")))? {
        let e = e.map_err(ferr(pid, format!("listing {dir}")))?;
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if n <= 2 || !std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == link) {
            continue;
        }
        let info = read_to_string(&format!("/proc/{pid}/fdinfo/{n}"))
            .map_err(ferr(pid, format!("reading /proc/{pid}/fdinfo/{n}")))?;
        match crate::procfs::fdinfo(&info).map(|(_, f)| f & libc::O_ACCMODE as u32) {
            Some(0) => r = true,
            Some(1) => w = true,
            _ => return Ok(false),
        }
    }
    Ok(r && w)
}

/// An eventfd's counter and mode from its fdinfo (`eventfd-count` is hex).
pub(super) fn eventfd(pid: pid_t, fd: i32, info: &str, flags: u32) -> Result<FdKind> {
    let bad = || {
        unsup(
            pid,
            format!("cannot parse the eventfd state in /proc/{pid}/fdinfo/{fd}"),
        )
    };
    let count = status_field(info, "eventfd-count")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(bad)?;
    let semaphore = match status_field(info, "eventfd-semaphore").map(str::trim) {
        Some("0") => false,
        Some("1") => true,
        _ => return Err(bad()),
    };
    Ok(FdKind::EventFd {
        count,
        semaphore,
        flags,
    })
}

/// An epoll instance's registrations from its fdinfo (`tfd: N events: X data: Y ...`, hex).
pub(super) fn epoll(pid: pid_t, fd: i32, info: &str, flags: u32) -> Result<FdKind> {
    let mut watches = Vec::new();
    for l in info.lines().filter(|l| l.starts_with("tfd:")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        let get = |k: &str| {
            w.iter()
                .position(|x| *x == k)
                .and_then(|i| w.get(i + 1).copied())
        };
        let parsed = (|| {
            Some(EpollWatch {
                fd: get("tfd:")?.parse().ok()?,
                events: u32::from_str_radix(get("events:")?, 16).ok()?,
                data: u64::from_str_radix(get("data:")?, 16).ok()?,
            })
        })();
        watches.push(parsed.ok_or_else(|| {
            unsup(
                pid,
                format!("cannot parse an epoll registration in /proc/{pid}/fdinfo/{fd}: {l}"),
            )
        })?);
    }
    Ok(FdKind::Epoll { flags, watches })
}

/// Once the fd table is complete (shared descriptions found): every epoll registration must
/// name an fd of the process that is still the very file registered (kcmp KCMP_EPOLL_TFD) and
/// that thaw makes again (not another epoll); every in-process pipe must be held by no other
/// process; each pipe's waiting bytes are copied (tee: the pipe keeps them) into the image.
pub(super) fn complete(pid: pid_t, fds: &mut [Fd]) -> Result<()> {
    check_epolls(pid, fds)?;
    // socketpairs: both ends held, by no one else; what waits in each
    let socks: Vec<(i32, u64)> = fds
        .iter()
        .filter_map(|f| match f.kind {
            FdKind::SocketPair { pair, .. } => Some((f.fd, pair)),
            _ => None,
        })
        .collect();
    if !socks.is_empty() {
        let links: Vec<String> = socks
            .iter()
            .map(|(fd, _)| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .map(|l| l.to_string_lossy().into_owned())
                    .map_err(ferr(pid, format!("reading fd {fd}")))
            })
            .collect::<Result<_>>()?;
        no_other_holder(pid, &links)?;
        for (fd, pair) in &socks {
            for first in [false, true] {
                let n = fds
                    .iter()
                    .filter(|f| matches!(f.kind, FdKind::SocketPair { pair: p, first: q, .. } if p == *pair && q == first))
                    .count();
                if n != 1 {
                    return Err(unsup(
                        pid,
                        format!(
                            "socketpair of fd {fd}: {n} separately held ends of one side (not supported yet)"
                        ),
                    ));
                }
            }
            let data = socket_waiting(pid, *fd)?;
            if let Some(FdKind::SocketPair { data: d, .. }) =
                fds.iter_mut().find(|f| f.fd == *fd).map(|f| &mut f.kind)
            {
                *d = data;
            }
        }
    }
    let pipes: BTreeSet<u64> = fds
        .iter()
        .filter_map(|f| match f.kind {
            FdKind::Pipe { pipe, .. } => Some(pipe),
            _ => None,
        })
        .collect();
    if pipes.is_empty() {
        return Ok(());
    }
    no_other_holder(
        pid,
        &pipes
            .iter()
            .map(|p| format!("pipe:[{p}]"))
            .collect::<Vec<_>>(),
    )?;
    for ino in pipes {
        for write in [false, true] {
            let n = fds
                .iter()
                .filter(|f| matches!(f.kind, FdKind::Pipe { pipe, write: w, .. } if pipe == ino && w == write))
                .count();
            if n > 1 {
                // reopened through /proc: thaw makes one description per end
                return Err(unsup(
                    pid,
                    format!(
                        "pipe:[{ino}] has {n} separately opened {} ends (not supported yet)",
                        if write { "write" } else { "read" }
                    ),
                ));
            }
        }

        let rd = fds
            .iter()
            .position(|f| matches!(f.kind, FdKind::Pipe { pipe, write: false, .. } if pipe == ino));
        let Some(i) = rd else {
            return Err(unsup(
                pid,
                format!("pipe:[{ino}] has no read end among its fds"),
            ));
        };
        let (size, data) = pipe_contents(fds[i].fd, pid)
            .map_err(ferr(pid, format!("reading what waits in pipe:[{ino}]")))?;
        for f in fds.iter_mut() {
            if let FdKind::Pipe { pipe, size: s, .. } = &mut f.kind {
                if *pipe == ino {
                    *s = size;
                }
            }
        }
        if let FdKind::Pipe { data: d, .. } = &mut fds[i].kind {
            *d = data;
        }
    }
    Ok(())
}

fn check_epolls(pid: pid_t, fds: &[Fd]) -> Result<()> {
    for e in fds {
        let FdKind::Epoll { watches, .. } = &e.kind else {
            continue;
        };
        for w in watches {
            let target = fds.iter().find(|f| f.fd == w.fd);
            let refuse = |why: &str| {
                unsup(
                    pid,
                    format!(
                        "epoll fd {} watches fd {}, which {why} (not supported yet)",
                        e.fd, w.fd
                    ),
                )
            };
            let Some(t) = target else {
                return Err(refuse("the process no longer holds"));
            };
            let base = match &t.kind {
                FdKind::SharedWith { fd, .. } => fds.iter().find(|f| f.fd == *fd).map(|f| &f.kind),
                k => Some(k),
            };
            if matches!(base, Some(FdKind::Epoll { .. }) | None) {
                return Err(refuse("is an epoll instance itself"));
            }
            #[repr(C)]
            struct Slot {
                efd: u32,
                tfd: u32,
                toff: u32,
            }
            let slot = Slot {
                efd: e.fd as u32,
                tfd: w.fd as u32,
                toff: 0,
            };
            // SAFETY: kcmp with KCMP_EPOLL_TFD reads one kcmp_epoll_slot, which lives for the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_kcmp,
                    pid,
                    pid,
                    7, /* KCMP_EPOLL_TFD */
                    w.fd,
                    &slot as *const Slot,
                )
            };
            if r != 0 {
                return Err(refuse(
                    "is no longer the file registered (closed or replaced since)",
                ));
            }
        }
    }
    Ok(())
}

/// Refuses when any other process holds one of `pipes` (moving the pipe would cut it off).
/// Fails closed: a process whose fds cannot be listed might hold it.
fn no_other_holder(pid: pid_t, links: &[String]) -> Result<()> {
    if links.is_empty() {
        return Ok(());
    }
    let rd = std::fs::read_dir("/proc").map_err(ferr(pid, "listing /proc"))?;
    for e in rd {
        let e = e.map_err(ferr(pid, "listing /proc"))?;
        let Some(other) = e.file_name().to_str().and_then(|s| s.parse::<pid_t>().ok()) else {
            continue;
        };
        if other == pid {
            continue;
        }
        let fd_dir = match std::fs::read_dir(format!("/proc/{other}/fd")) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // gone
            Err(e) => {
                return Err(unsup(
                    pid,
                    format!("whether process {other} also holds its pipe cannot be checked ({e})"),
                ));
            }
        };
        // a thread of `pid` shows its fds here too: same fd table
        let tgid = read_to_string(&format!("/proc/{other}/status"))
            .ok()
            .and_then(|s| status_field(&s, "Tgid").and_then(|v| v.parse::<pid_t>().ok()));
        if tgid == Some(pid) {
            continue;
        }
        for f in fd_dir.flatten() {
            if let Ok(l) = std::fs::read_link(f.path()) {
                let l = l.to_string_lossy();
                if links.iter().any(|x| *x == l) {
                    return Err(unsup(
                        pid,
                        format!(
                            "its {l} is also held by process {other} (shared between processes; not supported yet)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// (F_GETPIPE_SZ, the bytes waiting) of the pipe whose read end `pid` holds at `fd`, without
/// taking them out: tee into a pipe of our own, then read that.
pub(super) fn pipe_contents(fd: i32, pid: pid_t) -> io::Result<(u32, Vec<u8>)> {
    // a new open file description of the same pipe: the process's flags stay untouched
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")).unwrap();
    // SAFETY: open of a NUL-terminated path.
    let src = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if src < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: src was just opened and is ours alone.
    let src = unsafe { OwnedFd::from_raw_fd(src) };
    // SAFETY: fcntl with integer arguments.
    let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size <= 0 {
        return Err(io::Error::last_os_error());
    }
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(src.as_raw_fd(), libc::FIONREAD, &mut waiting) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if waiting == 0 {
        return Ok((size as u32, Vec::new()));
    }
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two fds.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just made and are ours alone.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: fcntl with integer arguments.
    if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) } < size {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: tee between two pipes we hold.
    let n = unsafe {
        libc::tee(
            src.as_raw_fd(),
            w.as_raw_fd(),
            size as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as i64 != waiting as i64 {
        return Err(io::Error::other(format!(
            "copied {n} of the {waiting} bytes waiting"
        )));
    }
    let mut data = vec![0u8; n as usize];
    let mut got = 0usize;
    while got < data.len() {
        // SAFETY: reads into the rest of `data`.
        let m = unsafe {
            libc::read(
                r.as_raw_fd(),
                data[got..].as_mut_ptr().cast(),
                data.len() - got,
            )
        };
        if m <= 0 {
            return Err(io::Error::other("short read of the copied pipe data"));
        }
        got += m as usize;
    }
    Ok((size as u32, data))
}

/// Largest unnamed file (memfd, deleted file) carried in the image.
pub(super) const MAX_CONTENTS: u64 = 64 << 20;

/// A timerfd from its fdinfo: `clockid: 1`, `ticks: 0`, `settime flags: 00` (octal),
/// `it_value: (s, ns)`, `it_interval: (s, ns)`. A timer set to be cancelled when the clock
/// is set (TFD_TIMER_CANCEL_ON_SET) is refused.
pub(super) fn timerfd(pid: pid_t, fd: i32, info: &str, flags: u32) -> Result<FdKind> {
    let bad = || {
        unsup(
            pid,
            format!("cannot parse the timerfd state in /proc/{pid}/fdinfo/{fd}"),
        )
    };
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    };
    let pair = |k: &str| -> Option<(u64, u64)> {
        let v = field(k)?;
        let (a, b) = v.strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
    };
    let clockid: i32 = field("clockid:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    let ticks: u64 = field("ticks:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    let settime = field("settime flags:")
        .and_then(|v| u32::from_str_radix(&v, 8).ok())
        .ok_or_else(bad)?;
    if settime & 2 != 0 {
        return Err(unsup(
            pid,
            format!(
                "fd {fd} is a timerfd cancelled when the clock is set (TFD_TIMER_CANCEL_ON_SET; not supported yet)"
            ),
        ));
    }
    let value = pair("it_value:").ok_or_else(bad)?;
    let interval = pair("it_interval:").ok_or_else(bad)?;
    Ok(FdKind::TimerFd {
        clockid,
        flags,
        ticks,
        value,
        interval,
    })
}

/// A signalfd from its fdinfo (`sigmask:` hex).
pub(super) fn signalfd(pid: pid_t, fd: i32, info: &str, flags: u32) -> Result<FdKind> {
    let mask = status_field(info, "sigmask")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| {
            unsup(
                pid,
                format!("cannot parse the signalfd mask in /proc/{pid}/fdinfo/{fd}"),
            )
        })?;
    Ok(FdKind::SignalFd { mask, flags })
}

/// A memfd (`/memfd:NAME (deleted)`) or a deleted regular file (`PATH (deleted)`) at `fd`:
/// its contents, mode and seals. `None` when `link` is neither. Refused: one larger than
/// [`MAX_CONTENTS`], one not open for reading and writing (memfd), one that is not a regular
/// file, one the process also maps (checked with the memory map).
pub(super) fn contents(
    pid: pid_t,
    fd: i32,
    link: &str,
    flags: u32,
    pos: u64,
    with_data: bool,
) -> Result<Option<FdKind>> {
    use std::os::unix::fs::MetadataExt;
    let Some(path) = link.strip_suffix(" (deleted)") else {
        return Ok(None);
    };
    let memfd = path.starts_with("/memfd:");
    let refuse = |why: String| unsup(pid, format!("fd {fd} is {link}, {why}"));
    let proc_path = format!("/proc/{pid}/fd/{fd}");
    let md = std::fs::metadata(&proc_path).map_err(ferr(pid, format!("stat of fd {fd}")))?;
    if !md.file_type().is_file() {
        return Ok(None);
    }
    if md.size() > MAX_CONTENTS {
        return Err(refuse(format!(
            "{} bytes; larger than the {} MiB carried for a file without a name",
            md.size(),
            MAX_CONTENTS >> 20
        )));
    }
    if md.nlink() != 0 {
        // "(deleted)" but still linked elsewhere: a hard link holds it, reopening it by the
        // old name would give another file
        return Err(refuse(
            "deleted but still linked under another name (not supported yet)".into(),
        ));
    }
    if flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32 {
        return Err(refuse("open for writing only (not supported yet)".into()));
    }
    let mut seals = 0u32;
    let mut data = Vec::new();
    if with_data {
        let f = std::fs::File::open(&proc_path).map_err(ferr(pid, format!("opening fd {fd}")))?;
        if memfd {
            // SAFETY: fcntl with integer arguments on our own fd.
            let s = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) };
            if s < 0 {
                return Err(ferr(pid, format!("F_GET_SEALS of fd {fd}"))(
                    io::Error::last_os_error(),
                ));
            }
            seals = s as u32;
        }
        use std::io::Read;
        (&f).take(MAX_CONTENTS + 1)
            .read_to_end(&mut data)
            .map_err(ferr(pid, format!("reading the contents of fd {fd}")))?;
        if data.len() as u64 != md.size() {
            return Err(refuse(format!(
                "and reading it gave {} of its {} bytes",
                data.len(),
                md.size()
            )));
        }
    }
    Ok(Some(FdKind::Contents {
        name: if memfd {
            path.trim_start_matches("/memfd:").to_string()
        } else {
            path.to_string()
        },
        memfd,
        flags,
        pos,
        mode: md.mode() & 0o7777,
        seals,
        data,
    }))
}

/// Two fds opened separately on one unnamed file would come back as two files: refused.
pub(super) fn check_contents_unique(pid: pid_t, fds: &[Fd]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut seen: Vec<((u64, u64), i32)> = Vec::new();
    for f in fds {
        if !matches!(f.kind, FdKind::Contents { .. }) {
            continue;
        }
        let md = std::fs::metadata(format!("/proc/{pid}/fd/{}", f.fd))
            .map_err(ferr(pid, format!("stat of fd {}", f.fd)))?;
        let id = (md.dev(), md.ino());
        if let Some((_, other)) = seen.iter().find(|s| s.0 == id) {
            return Err(unsup(
                pid,
                format!(
                    "fds {other} and {} are separately opened on one file without a name (not supported yet)",
                    f.fd
                ),
            ));
        }
        seen.push((id, f.fd));
    }
    Ok(())
}

/// Largest amount of data waiting in one socket of an in-process socketpair that is carried.
pub(super) const MAX_SOCKET_DATA: usize = 64 << 10;

/// The inode of `socket:[N]`.
pub(super) fn socket_ino(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// What sock_diag says of one AF_UNIX socket.
#[derive(Debug, Clone, Copy)]
pub(super) struct UnixSock {
    pub(super) peer: u64,
    pub(super) stype: u8,
    pub(super) state: u8,
    pub(super) named: bool,
    pub(super) shutdown: u8,
}

/// Asks sock_diag (NETLINK_SOCK_DIAG, UNIX_DIAG) about the AF_UNIX socket `ino`. `None`: no
/// such AF_UNIX socket (another family).
pub(super) fn unix_diag(ino: u64) -> io::Result<Option<UnixSock>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UNIX_DIAG_NAME: u16 = 0;
    const UNIX_DIAG_PEER: u16 = 2;
    const UNIX_DIAG_SHUTDOWN: u16 = 6;
    let ino32 = u32::try_from(ino).map_err(|_| io::Error::other("socket inode too large"))?;
    // SAFETY: socket with integer arguments.
    let s = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just made, ours alone.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // nlmsghdr (16) + unix_diag_req (24)
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
    req[16] = libc::AF_UNIX as u8; // sdiag_family
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // udiag_states
    req[24..28].copy_from_slice(&ino32.to_ne_bytes()); // udiag_ino
    req[28..32]
        .copy_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | 0x40/* SHUTDOWN */).to_ne_bytes());
    req[32..40].copy_from_slice(&[0xff; 8]); // no cookie
    // SAFETY: zeroed plain struct.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: sendto from a valid buffer to a valid sockaddr_nl.
    let n = unsafe {
        libc::sendto(
            s.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if n != req.len() as isize {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 8192];
    // a bounded wait: sock_diag answers at once
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, 2000) } != 1 {
        return Err(io::Error::other("sock_diag did not answer"));
    }
    // SAFETY: receives into `buf`.
    let n = unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 16 {
        return Err(io::Error::last_os_error());
    }
    let b = &buf[..n as usize];
    let u16_at = |o: usize| u16::from_ne_bytes(b[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    let ty = u16_at(4);
    if ty == libc::NLMSG_ERROR as u16 {
        let err = u32_at(16) as i32;
        if err == -libc::ENOENT {
            return Ok(None);
        }
        return Err(io::Error::from_raw_os_error(-err));
    }
    if ty != SOCK_DIAG_BY_FAMILY || b.len() < 32 {
        return Err(io::Error::other("unexpected sock_diag answer"));
    }
    let len = (u32_at(0) as usize).min(b.len());
    // unix_diag_msg: family, type, state, pad, ino, cookie[2]
    let mut u = UnixSock {
        peer: 0,
        stype: b[17],
        state: b[18],
        named: false,
        shutdown: 0,
    };
    if u32_at(20) != ino32 {
        return Err(io::Error::other("sock_diag answered for another socket"));
    }
    let mut o = 32;
    while o + 4 <= len {
        let alen = u16_at(o) as usize;
        let aty = u16_at(o + 2);
        if alen < 4 || o + alen > len {
            break;
        }
        match aty {
            UNIX_DIAG_NAME => u.named = true,
            UNIX_DIAG_PEER if alen >= 8 => u.peer = u32_at(o + 4) as u64,
            UNIX_DIAG_SHUTDOWN if alen >= 5 => u.shutdown = b[o + 4],
            _ => {}
        }
        o += (alen + 3) & !3;
    }
    Ok(Some(u))
}

/// The kind of fd `fd` (`socket:[ino]`) when it is one end of a connected AF_UNIX stream
/// socketpair whose other end the process also holds; `None` otherwise (refused by the
/// caller). Its waiting data is read by [`complete`].
pub(super) fn socketpair_end(
    pid: pid_t,
    dir: &str,
    ino: u64,
    flags: u32,
) -> Result<Option<FdKind>> {
    let Some(u) = unix_diag(ino).map_err(ferr(pid, format!("sock_diag of socket:[{ino}]")))? else {
        return Ok(None);
    };
    if u.named || u.peer == 0 || u.stype != libc::SOCK_STREAM as u8 || u.state != 1 {
        return Ok(None);
    }
    if u.shutdown != 0 {
        return Ok(None);
    }
    let peer_link = format!("socket:[{}]", u.peer);
    let mut held = false;
    for e in std::fs::read_dir(dir).map_err(ferr(pid, format!("listing {dir}")))? {
        let e = e.map_err(ferr(pid, format!("listing {dir}")))?;
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == peer_link) {
            held = true;
            break;
        }
    }
    if !held {
        return Ok(None);
    }
    Ok(Some(FdKind::SocketPair {
        pair: ino.min(u.peer),
        first: ino < u.peer,
        flags,
        data: Vec::new(),
    }))
}

/// The bytes waiting to be read in the socket at `fd` (MSG_PEEK: they stay). Refused: more
/// than [`MAX_SOCKET_DATA`], or ancillary data (passed fds, credentials) in the queue.
fn socket_waiting(pid: pid_t, fd: i32) -> Result<Vec<u8>> {
    let copy = crate::seccomp::pidfd_getfd(pid, fd)
        .map_err(ferr(pid, format!("pidfd_getfd of socket fd {fd}")))?;
    let mut data = vec![0u8; MAX_SOCKET_DATA + 1];
    let mut ctl = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: zeroed plain struct, filled below with pointers to live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctl.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&ctl);
    // SAFETY: recvmsg into the buffers `msg` describes.
    let n = unsafe {
        libc::recvmsg(
            copy.as_raw_fd(),
            &mut msg,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(Vec::new());
        }
        return Err(ferr(pid, format!("peeking into socket fd {fd}"))(e));
    }
    if msg.msg_controllen > 0 || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(unsup(
            pid,
            format!(
                "socket fd {fd} holds passed fds or credentials not read yet (not supported yet)"
            ),
        ));
    }
    if n as usize > MAX_SOCKET_DATA {
        return Err(unsup(
            pid,
            format!(
                "socket fd {fd} holds more than {} KiB not read yet (not supported yet)",
                MAX_SOCKET_DATA >> 10
            ),
        ));
    }
    data.truncate(n as usize);
    Ok(data)
}

// --- inotify (issue 8 part 3)

/// An inotify instance from its fdinfo (one `inotify wd:HEX ino:HEX sdev:HEX mask:HEX
/// ignored_mask:HEX fhandle-bytes:HEX fhandle-type:HEX f_handle:HEX` line per watch): each
/// watch's path found again from its file handle (open_by_handle_at, which needs
/// CAP_DAC_READ_SEARCH). Refused (fails closed): events not read yet (they cannot be queued
/// again), watch descriptors that are not 1..=n (thaw numbers them by adding in order), a
/// watched file whose path cannot be found or no longer names it, an unparsable line.
pub(super) fn inotify(pid: pid_t, fd: i32, info: &str, flags: u32) -> Result<FdKind> {
    let refuse = |why: String| unsup(pid, format!("fd {fd} is an inotify instance {why}"));
    let bad = |l: &str| {
        unsup(
            pid,
            format!("cannot parse the inotify watch {l:?} in /proc/{pid}/fdinfo/{fd}"),
        )
    };
    let copy = crate::seccomp::pidfd_getfd(pid, fd)
        .map_err(ferr(pid, format!("pidfd_getfd of inotify fd {fd}")))?;
    let mut waiting: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(copy.as_raw_fd(), libc::FIONREAD, &mut waiting) } != 0 {
        return Err(ferr(pid, format!("FIONREAD of inotify fd {fd}"))(
            io::Error::last_os_error(),
        ));
    }
    if waiting != 0 {
        return Err(refuse(format!(
            "with {waiting} bytes of events not read yet (they cannot be queued again; try again once it has read them)"
        )));
    }
    let mut watches = Vec::new();
    for l in info.lines().filter_map(|l| l.strip_prefix("inotify ")) {
        let field = |k: &str| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(k)?.strip_prefix(':'))
        };
        let hex = |k: &str| field(k).and_then(|v| u64::from_str_radix(v, 16).ok());
        // every number of the line is hexadecimal, the descriptor too
        let wd = hex("wd")
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| bad(l))?;
        let (Some(ino), Some(sdev), Some(mask), Some(hbytes), Some(htype), Some(handle)) = (
            hex("ino"),
            hex("sdev"),
            hex("mask"),
            hex("fhandle-bytes"),
            hex("fhandle-type"),
            field("f_handle"),
        ) else {
            return Err(bad(l));
        };
        let handle: Option<Vec<u8>> = (0..handle.len() / 2)
            .map(|i| u8::from_str_radix(handle.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        let handle = handle.filter(|h| h.len() as u64 == hbytes && h.len() <= 128);
        let handle = handle.ok_or_else(|| bad(l))?;
        // the kernel's dev_t (20-bit minor) as stat's st_dev
        let dev = libc::makedev((sdev >> 20) as u32, (sdev & 0xf_ffff) as u32);
        let path = watched_path(pid, dev, ino, htype as i32, &handle)
            .map_err(|why| refuse(format!("watching inode {ino} on device {:x}: {why}", dev)))?;
        watches.push(InotifyWatch {
            wd,
            mask: mask as u32,
            path,
            dev,
            ino,
        });
    }
    watches.sort_by_key(|w| w.wd);
    if watches
        .iter()
        .enumerate()
        .any(|(i, w)| w.wd != i as i32 + 1)
    {
        let wds: Vec<String> = watches.iter().map(|w| w.wd.to_string()).collect();
        return Err(refuse(format!(
            "whose watch descriptors ({}) are not 1 to {} (a watch was removed; thaw could not give each its number again)",
            wds.join(", "),
            watches.len()
        )));
    }
    Ok(FdKind::Inotify { flags, watches })
}

/// The path of the file (`dev`, `ino`) that an inotify watch names by file handle, as the
/// mount table of `pid` shows it; it must still name that file.
fn watched_path(
    pid: pid_t,
    dev: u64,
    ino: u64,
    htype: i32,
    handle: &[u8],
) -> std::result::Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let want = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let mi = read_to_string(&format!("/proc/{pid}/mountinfo"))
        .map_err(|e| format!("cannot read its mount table ({e})"))?;
    let mount = mi
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.get(2) == Some(&want.as_str())).then(|| w.get(4).map(|m| m.to_string()))?
        })
        .ok_or_else(|| format!("no mount of device {want}"))?;
    let mfd = std::fs::File::open(format!("/proc/{pid}/root{mount}"))
        .map_err(|e| format!("cannot open its mount point {mount} ({e})"))?;
    // struct file_handle: handle_bytes, handle_type, f_handle
    let mut fh = Vec::with_capacity(8 + handle.len());
    fh.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&htype.to_ne_bytes());
    fh.extend_from_slice(handle);
    let mut fh64 = vec![0u64; fh.len().div_ceil(8)];
    // SAFETY: fh64 holds at least fh.len() bytes; plain byte copy into it.
    unsafe { std::ptr::copy_nonoverlapping(fh.as_ptr(), fh64.as_mut_ptr().cast(), fh.len()) };
    // SAFETY: open_by_handle_at reads the handle we built; the fd returned is ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mfd.as_raw_fd(),
            fh64.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(format!(
            "cannot open it by its file handle ({}; needs CAP_DAC_READ_SEARCH)",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: r is an fd we own from here on.
    let f = unsafe { OwnedFd::from_raw_fd(r as i32) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| format!("cannot read its path ({e})"))?
        .to_string_lossy()
        .into_owned();
    let md = std::fs::metadata(format!("/proc/{pid}/root{path}"))
        .map_err(|e| format!("{path} cannot be found ({e}); deleted or not reachable by name"))?;
    if !path.starts_with('/') || md.dev() != dev || md.ino() != ino {
        return Err(format!("{path} names another file now"));
    }
    Ok(path)
}
