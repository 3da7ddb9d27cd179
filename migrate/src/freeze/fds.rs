//! Capture of the fd table: what each descriptor is, refusals, and shared open files (kcmp).

use super::{ferr, unsup};
use crate::error::Result;
use crate::image::*;
use crate::procfs::*;
use crate::sys::*;
use libc::pid_t;

const SAFE_CHARDEVS: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// `with_data`: read the contents of files without a name (only once the process is stopped).
pub(super) fn collect_fds(pid: pid_t, with_data: bool) -> Result<Vec<Fd>> {
    collect_fds_in(pid, with_data, false)
}

/// [`collect_fds`]; `tree`: frozen with its descendants, so a pipe to another process may
/// hold unread data (the tree carries what is waiting in pipes between its processes and
/// refuses the rest, see [`super::tree`]).
pub(super) fn collect_fds_in(pid: pid_t, with_data: bool, tree: bool) -> Result<Vec<Fd>> {
    use std::os::unix::fs::FileTypeExt;
    let dir = format!("/proc/{pid}/fd");
    let rd = std::fs::read_dir(&dir).map_err(ferr(pid, format!("listing {dir}")))?;
    let mut fds = Vec::new();
    // terminals above fd 2: (fd, link, flags, device), matched with stdio once all are read
    let mut ttys: Vec<(i32, String, u32, u64)> = Vec::new();
    for e in rd {
        let e = e.map_err(ferr(pid, format!("listing {dir}")))?;
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let link = match std::fs::read_link(e.path()) {
            Ok(l) => l,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // closed meanwhile
            Err(e) => return Err(ferr(pid, format!("reading {dir}/{fd}"))(e)),
        };
        let link = link.to_string_lossy().into_owned();
        let info = match read_to_string(&format!("/proc/{pid}/fdinfo/{fd}")) {
            Ok(i) => i,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue, // closed meanwhile
            Err(e) => return Err(ferr(pid, format!("reading /proc/{pid}/fdinfo/{fd}"))(e)),
        };
        // fails closed: without its flags and offset an fd cannot be made again
        let (pos, flags) = fdinfo(&info).ok_or_else(|| {
            unsup(
                pid,
                format!("cannot parse /proc/{pid}/fdinfo/{fd}, so fd {fd} cannot be carried"),
            )
        })?;
        let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
        let stdio_ok = fd <= 2;
        let refuse = |what: &str| unsup(pid, format!("fd {fd} is {what} (not supported yet)"));
        if flags & libc::O_PATH as u32 != 0 {
            // O_PATH: a location only, opened again by path (no device or pipe is opened)
            if !link.starts_with('/') || link.ends_with(" (deleted)") {
                return Err(refuse(&format!("an O_PATH fd of {link}")));
            }
            let md = std::fs::metadata(e.path()).map_err(ferr(pid, format!("stat of fd {fd}")))?;
            fds.push(Fd {
                fd,
                kind: FdKind::Path {
                    path: link,
                    flags,
                    pos: 0,
                    is_dir: md.is_dir(),
                },
            });
            continue;
        }
        if let Some(k) = link.strip_prefix("anon_inode:") {
            let k = k.trim_matches(|c| c == '[' || c == ']');
            if k == "eventfd" {
                let kind = super::inproc::eventfd(pid, fd, &info, flags)?;
                fds.push(Fd { fd, kind });
                continue;
            }
            if k == "eventpoll" {
                let kind = super::inproc::epoll(pid, fd, &info, flags)?;
                fds.push(Fd { fd, kind });
                continue;
            }
            if k == "timerfd" {
                let kind = super::inproc::timerfd(pid, fd, &info, flags)?;
                fds.push(Fd { fd, kind });
                continue;
            }
            if k == "signalfd" {
                let kind = super::inproc::signalfd(pid, fd, &info, flags)?;
                fds.push(Fd { fd, kind });
                continue;
            }
            if k == "inotify" {
                let kind = super::inproc::inotify(pid, fd, &info, flags)?;
                fds.push(Fd { fd, kind });
                continue;
            }
            let what = match k {
                "timerfd" => "a timerfd".to_string(),
                "signalfd" => "a signalfd".to_string(),
                "pidfd" => "a pidfd".to_string(),
                o => format!("an anonymous-inode file ({o})"),
            };
            return Err(refuse(&what));
        }
        if let Some(ino) = super::inproc::socket_ino(&link) {
            if let Some(kind) = super::inproc::socketpair_end(pid, &dir, ino, flags)? {
                fds.push(Fd { fd, kind });
                continue;
            }
            return Err(refuse("a socket"));
        }
        if link.starts_with("socket:") {
            return Err(refuse("a socket"));
        }
        if link.starts_with("pipe:") {
            if stdio_ok {
                fds.push(Fd {
                    fd,
                    kind: FdKind::Stdio {
                        what: "pipe".into(),
                        cloexec,
                    },
                });
                continue;
            }
            if let Some(ino) = super::inproc::pipe_ino(&link) {
                if super::inproc::holds_both_ends(pid, &dir, &link)? {
                    // a pipe inside the process: its data is read once the fd table is
                    // complete (inproc::complete)
                    fds.push(Fd {
                        fd,
                        kind: FdKind::Pipe {
                            pipe: ino,
                            write: flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32,
                            flags,
                            size: 0,
                            data: Vec::new(),
                        },
                    });
                    continue;
                }
            }
            external_pipe(pid, fd, &link, flags, &dir, tree)?;
            fds.push(Fd {
                fd,
                kind: FdKind::External {
                    what: format!("{} end of {link}", end_name(flags)),
                    flags,
                },
            });
            continue;
        }
        if !link.starts_with('/') {
            return Err(refuse(&link));
        }
        if let Some(kind) = super::inproc::contents(pid, fd, &link, flags, pos, with_data)? {
            fds.push(Fd { fd, kind });
            continue;
        }
        if link.ends_with(" (deleted)") {
            return Err(refuse(&format!("a deleted file ({link})")));
        }
        let md = std::fs::metadata(e.path()).map_err(ferr(pid, format!("stat of fd {fd}")))?;
        let ft = md.file_type();
        let is_tty = ft.is_char_device()
            && (link.starts_with("/dev/pts/")
                || link.starts_with("/dev/tty")
                || link == "/dev/console");
        if is_tty || ft.is_fifo() {
            if stdio_ok {
                fds.push(Fd {
                    fd,
                    kind: FdKind::Stdio {
                        what: if is_tty {
                            format!("terminal {link}")
                        } else {
                            format!("fifo {link}")
                        },
                        cloexec,
                    },
                });
                continue;
            }
            if is_tty {
                use std::os::unix::fs::MetadataExt;
                ttys.push((fd, link, flags, md.rdev()));
                continue;
            }
            external_pipe(pid, fd, &link, flags, &dir, tree)?;
            fds.push(Fd {
                fd,
                kind: FdKind::External {
                    what: format!("{} end of fifo {link}", end_name(flags)),
                    flags,
                },
            });
            continue;
        }
        if ft.is_char_device() && !SAFE_CHARDEVS.contains(&link.as_str()) {
            return Err(refuse(&format!("device {link}")));
        }
        if !(ft.is_file() || ft.is_dir() || ft.is_char_device()) {
            return Err(refuse(&format!("special file {link}")));
        }
        fds.push(Fd {
            fd,
            kind: FdKind::Path {
                path: link,
                flags,
                pos,
                is_dir: ft.is_dir(),
            },
        });
    }
    fds.sort_by_key(|f| f.fd);
    if !ttys.is_empty() {
        terminals_above_stdio(pid, &mut fds, ttys)?;
    }
    Ok(fds)
}

/// The device number of the controlling terminal (/proc/PID/stat field 7, decoded), 0: none.
fn ctty_dev(pid: pid_t) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let st = read_to_string(&path).map_err(ferr(pid, format!("reading {path}")))?;
    let nr: u64 = st
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(4)?.parse::<i64>().ok())
        .map(|v| v as u32 as u64)
        .ok_or_else(|| unsup(pid, format!("cannot parse the terminal field of {path}")))?;
    if nr == 0 {
        return Ok(0);
    }
    let (major, minor) = ((nr >> 8) & 0xfff, (nr & 0xff) | ((nr >> 12) & 0xfff00));
    Ok(libc::makedev(major as u32, minor as u32))
}

/// The device of a stdio fd that is a terminal (`Stdio { what: "terminal ..." }`).
fn stdio_tty_devs(pid: pid_t, fds: &[Fd]) -> Result<Vec<(i32, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let mut v = Vec::new();
    for f in fds {
        if let FdKind::Stdio { what, .. } = &f.kind {
            if what.starts_with("terminal ") {
                let md = std::fs::metadata(format!("/proc/{pid}/fd/{}", f.fd))
                    .map_err(ferr(pid, format!("stat of fd {}", f.fd)))?;
                v.push((f.fd, md.rdev()));
            }
        }
    }
    Ok(v)
}

/// A terminal above fd 2 (`less`, `vi` and `top` open /dev/tty) is carried when it is the
/// terminal of the process's stdio (by device, or /dev/tty naming its controlling terminal):
/// thaw opens the terminal it attaches there again. Any other terminal is refused.
fn terminals_above_stdio(
    pid: pid_t,
    fds: &mut Vec<Fd>,
    ttys: Vec<(i32, String, u32, u64)>,
) -> Result<()> {
    let stdio = stdio_tty_devs(pid, fds)?;
    let first = stdio.first().copied();
    let dev_tty = libc::makedev(5, 0);
    let ctty = ctty_dev(pid)?;
    for (fd, link, flags, dev) in ttys {
        let dev = if dev == dev_tty { ctty } else { dev };
        match first {
            Some((like, d)) if dev != 0 && d == dev => fds.push(Fd {
                fd,
                kind: FdKind::Terminal { like, flags },
            }),
            _ => {
                return Err(unsup(
                    pid,
                    format!(
                        "fd {fd} is a terminal {link} that is not the terminal of its stdin/stdout/stderr (not supported yet)"
                    ),
                ));
            }
        }
    }
    fds.sort_by_key(|f| f.fd);
    Ok(())
}

/// The terminal of the process's stdio, read while it is stopped: its settings (TCGETS) and
/// whether it is the controlling terminal. Fails closed: a terminal whose settings cannot be
/// read refuses the freeze (thaw could not set them again).
pub(super) fn terminal_state(pid: pid_t, fds: &[Fd]) -> Result<Option<TerminalImage>> {
    let Some((fd, dev)) = stdio_tty_devs(pid, fds)?.first().copied() else {
        return Ok(None);
    };
    let why = |e: std::io::Error| {
        unsup(
            pid,
            format!("the settings of its terminal at fd {fd} cannot be read ({e})"),
        )
    };
    let copy = crate::seccomp::pidfd_getfd(pid, fd).map_err(why)?;
    // the kernel's struct termios (TCGETS): 4 flag words, c_line, 19 control characters
    let mut t = [0u8; 36];
    // SAFETY: TCGETS writes a kernel struct termios (36 bytes on x86_64) into `t`.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&copy),
            libc::TCGETS,
            t.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(why(std::io::Error::last_os_error()));
    }
    Ok(Some(TerminalImage {
        termios: t.to_vec(),
        ctty: ctty_dev(pid)? == dev,
        fd,
    }))
}

fn end_name(flags: u32) -> &'static str {
    match flags & libc::O_ACCMODE as u32 {
        0 => "read",
        1 => "write",
        _ => "read-write",
    }
}

/// A pipe or FIFO above fd 2 is carried as external (thaw attaches it to what the user names)
/// when its other end lies outside the process and no data waiting in it would be lost;
/// otherwise refused. Fails closed: what cannot be checked is refused.
fn external_pipe(pid: pid_t, fd: i32, link: &str, flags: u32, dir: &str, tree: bool) -> Result<()> {
    let refuse = |why: String| unsup(pid, format!("fd {fd} is {link}, {why}"));
    // the process holds it at another fd as well (both ends: a self-pipe)
    let rd = std::fs::read_dir(dir).map_err(ferr(pid, format!("listing {dir}")))?;
    for e in rd {
        let e = e.map_err(ferr(pid, format!("listing {dir}")))?;
        let other = e.file_name().to_string_lossy().into_owned();
        if other == fd.to_string() {
            continue;
        }
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == link) {
            return Err(refuse(format!(
                "which the process also holds at fd {other} (a pipe inside the process; not supported yet)"
            )));
        }
    }
    if !tree && flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32 {
        // data the process has not read yet would stay behind in the old pipe
        let copy = crate::seccomp::pidfd_getfd(pid, fd).map_err(|e| {
            refuse(format!(
                "and whether it holds unread data cannot be checked (pidfd_getfd: {e})"
            ))
        })?;
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        if unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&copy),
                libc::FIONREAD,
                &mut n,
            )
        } != 0
        {
            return Err(refuse(format!(
                "and whether it holds unread data cannot be checked (FIONREAD: {})",
                std::io::Error::last_os_error()
            )));
        }
        if n > 0 {
            return Err(refuse(format!(
                "with {n} bytes the process has not read yet, which thaw could not give back (not supported yet)"
            )));
        }
    }
    Ok(())
}

/// Marks fds that share an open file description with an earlier one (kcmp). Fails closed:
/// an fd that cannot be compared refuses the freeze (two offsets where there was one).
pub(super) fn find_shared(pid: pid_t, fds: &mut [Fd]) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let ids: Vec<Option<(u64, u64)>> = fds
        .iter()
        .map(|f| match f.kind {
            FdKind::Path { .. }
            | FdKind::Pipe { .. }
            | FdKind::EventFd { .. }
            | FdKind::Epoll { .. }
            | FdKind::TimerFd { .. }
            | FdKind::SignalFd { .. }
            | FdKind::Contents { .. }
            | FdKind::Inotify { .. }
            | FdKind::SocketPair { .. } => std::fs::metadata(format!("/proc/{pid}/fd/{}", f.fd))
                .map(|m| Some((m.dev(), m.ino())))
                .map_err(ferr(pid, format!("stat of fd {}", f.fd))),
            _ => Ok(None),
        })
        .collect::<Result<_>>()?;
    for j in 0..fds.len() {
        let Some(idj) = ids[j] else { continue };
        for i in 0..j {
            if ids[i] != Some(idj) || matches!(fds[i].kind, FdKind::SharedWith { .. }) {
                continue;
            }
            // SAFETY: kcmp syscall with integer args.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_kcmp,
                    pid,
                    pid,
                    0, /* KCMP_FILE */
                    fds[i].fd,
                    fds[j].fd,
                )
            };
            if r < 0 {
                return Err(ferr(
                    pid,
                    format!("kcmp of fds {} and {}", fds[i].fd, fds[j].fd),
                )(std::io::Error::last_os_error()));
            }
            if r == 0 {
                let cloexec = fds[j].kind.cloexec();
                fds[j].kind = FdKind::SharedWith {
                    fd: fds[i].fd,
                    cloexec,
                };
                break;
            }
        }
    }
    Ok(())
}

/// Does fd `f` live inside the process (made again wherever the image is thawed), rather than
/// stay at home when the process moves (files, terminals, pipes and sockets to other processes)?
pub fn lives_inside(fds: &[Fd], f: &Fd) -> bool {
    match &f.kind {
        FdKind::Pipe { .. }
        | FdKind::EventFd { .. }
        | FdKind::Epoll { .. }
        | FdKind::TimerFd { .. }
        | FdKind::SignalFd { .. }
        | FdKind::Contents { .. }
        | FdKind::SocketPair { .. } => true,
        FdKind::SharedWith { fd, .. } => fds
            .iter()
            .find(|o| o.fd == *fd && !matches!(o.kind, FdKind::SharedWith { .. }))
            .is_some_and(|o| lives_inside(fds, o)),
        FdKind::Path { .. }
        | FdKind::Stdio { .. }
        | FdKind::External { .. }
        | FdKind::Terminal { .. }
        | FdKind::Inotify { .. } => false,
    }
}

/// The fds a moved process keeps at home (its calls on them are forwarded there): every fd but
/// those that [`lives_inside`] it, which move with it.
pub fn home_backed(fds: &[Fd]) -> Vec<i32> {
    fds.iter()
        .filter(|f| !lives_inside(fds, f))
        .map(|f| f.fd)
        .collect()
}

/// Moving a process to another node (the [`super::seize`] path: migration, the home shell)
/// keeps its files, terminals and outside pipes at home and forwards calls on them; the fds
/// that live inside the process (pipes with both ends in it, socketpairs, eventfd, timerfd,
/// signalfd, memfd, epoll) move with it. Refused: an epoll instance watching an fd that stays
/// at home (the watch cannot follow it), and a deleted file (it is made again in its own
/// directory, which is home's).
pub(super) fn refuse_for_migration(pid: pid_t, fds: &[Fd]) -> Result<()> {
    for f in fds {
        let what = match &f.kind {
            FdKind::Epoll { watches, .. } => {
                let Some(w) = watches.iter().find(|w| {
                    fds.iter()
                        .find(|o| o.fd == w.fd)
                        .is_none_or(|o| !lives_inside(fds, o))
                }) else {
                    continue;
                };
                format!(
                    "an epoll instance watching fd {}, which stays at home (an epoll may watch only fds that move with the process: pipes inside it, eventfd, timerfd, signalfd, socketpairs)",
                    w.fd
                )
            }
            FdKind::Contents {
                memfd: false, name, ..
            } => format!(
                "a deleted file ({name}), which would be made again in a directory of home's"
            ),
            FdKind::Terminal { .. } => "a terminal above fd 2".into(),
            FdKind::Inotify { .. } => "an inotify instance".into(),
            _ => continue,
        };
        return Err(unsup(
            pid,
            format!(
                "fd {} is {what}; moving it to another node is not supported",
                f.fd
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd(fd: i32, kind: FdKind) -> Fd {
        Fd { fd, kind }
    }

    fn table(epoll_watches: &[i32]) -> Vec<Fd> {
        vec![
            fd(
                0,
                FdKind::Stdio {
                    what: "pipe".into(),
                    cloexec: false,
                },
            ),
            fd(
                3,
                FdKind::Pipe {
                    pipe: 7,
                    write: false,
                    flags: 0,
                    size: 65536,
                    data: Vec::new(),
                },
            ),
            fd(
                4,
                FdKind::EventFd {
                    count: 0,
                    semaphore: false,
                    flags: 0,
                },
            ),
            fd(
                5,
                FdKind::Path {
                    path: "/etc/hostname".into(),
                    flags: 0,
                    pos: 0,
                    is_dir: false,
                },
            ),
            fd(
                6,
                FdKind::SharedWith {
                    fd: 3,
                    cloexec: false,
                },
            ),
            fd(
                7,
                FdKind::SharedWith {
                    fd: 5,
                    cloexec: false,
                },
            ),
            fd(
                8,
                FdKind::Epoll {
                    flags: 0,
                    watches: epoll_watches
                        .iter()
                        .map(|&fd| EpollWatch {
                            fd,
                            events: 1,
                            data: 0,
                        })
                        .collect(),
                },
            ),
        ]
    }

    #[test]
    fn inner_fds_move_and_the_others_stay_home() {
        let t = table(&[3, 4]);
        // a dup of an inner pipe moves with it; a dup of a file stays home with it
        assert_eq!(home_backed(&t), vec![0, 5, 7]);
        assert!(refuse_for_migration(1, &t).is_ok());
    }

    #[test]
    fn an_epoll_watching_a_home_fd_is_refused_naming_both_fds() {
        for home in [0, 5, 7] {
            let e = refuse_for_migration(1, &table(&[3, home])).unwrap_err();
            let s = e.to_string();
            assert!(
                s.contains("fd 8") && s.contains(&format!("watching fd {home}")),
                "{s}"
            );
        }
    }
}
