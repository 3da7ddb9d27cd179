//! File locks the process holds (flock, fcntl and OFD locks), from the `lock:` lines of
//! /proc/PID/fdinfo (each lock is shown on the fds of the open file description it was taken
//! through). Thaw takes each one again on the same fd (see `thaw::locks`) before the process
//! runs; a lock it cannot get fails the thaw.
//!
//! Refused (fails closed): a lease, a lock of a kind or type it does not know, a lock on an
//! fd that is not a file thaw opens again (a path or a deleted file), an unparsable line, and
//! any lock of a process that moves to another node.

use super::{proc_read, unsup};
use crate::error::Result;
use crate::image::*;
use libc::pid_t;

/// Parses the `lock:` lines of one fd's fdinfo.
pub(super) fn parse(pid: pid_t, fd: i32, info: &str) -> Result<Vec<FileLock>> {
    let mut v = Vec::new();
    for l in info.lines().filter_map(|l| l.strip_prefix("lock:")) {
        let bad = || {
            unsup(
                pid,
                format!(
                    "cannot parse the lock {:?} in /proc/{pid}/fdinfo/{fd}",
                    l.trim()
                ),
            )
        };
        let w: Vec<&str> = l.split_whitespace().collect();
        // N: KIND ADVISORY TYPE PID DEV:INO START END|EOF
        if w.len() != 8 || !w[0].ends_with(':') {
            return Err(bad());
        }
        let kind = match w[1] {
            "FLOCK" => LockKind::Flock,
            "POSIX" => LockKind::Posix,
            "OFDLCK" => LockKind::Ofd,
            other => {
                return Err(unsup(
                    pid,
                    format!(
                        "fd {fd} holds a {other} lock (only flock, fcntl and OFD locks are carried)"
                    ),
                ));
            }
        };
        if w[2] != "ADVISORY" {
            return Err(unsup(
                pid,
                format!("fd {fd} holds a {} lock (not supported)", w[2]),
            ));
        }
        let write = match w[3] {
            "WRITE" => true,
            "READ" => false,
            _ => return Err(bad()),
        };
        let start: u64 = w[6].parse().map_err(|_| bad())?;
        let end = match w[7] {
            "EOF" => None,
            e => Some(e.parse::<u64>().map_err(|_| bad())?),
        };
        if end.is_some_and(|e| e < start) || (kind == LockKind::Flock && (start, end) != (0, None))
        {
            return Err(bad());
        }
        v.push(FileLock {
            fd,
            kind,
            write,
            start,
            end,
        });
    }
    Ok(v)
}

/// Every lock held through the fds of `fds` (read while the process is stopped). An fd that
/// shares its open file description with an earlier one shows the same locks: taken once.
/// `moving` (to another node): any lock is refused (its files stay at home, the home shell
/// keeps holding it).
pub(super) fn collect(pid: pid_t, fds: &[Fd], moving: bool) -> Result<Vec<FileLock>> {
    let mut v = Vec::new();
    for f in fds {
        if matches!(f.kind, FdKind::SharedWith { .. }) {
            continue;
        }
        let info = proc_read(pid, &format!("fdinfo/{}", f.fd))?;
        let locks = parse(pid, f.fd, &info)?;
        if !locks.is_empty() && !matches!(f.kind, FdKind::Path { .. } | FdKind::Contents { .. }) {
            return Err(unsup(
                pid,
                format!(
                    "fd {} holds a file lock on something other than a file (not supported)",
                    f.fd
                ),
            ));
        }
        if moving && !locks.is_empty() {
            return Err(unsup(
                pid,
                format!(
                    "fd {} holds a file lock (carried by `omnode freeze`, not yet by migration)",
                    f.fd
                ),
            ));
        }
        v.extend(locks);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lock_lines_of_fdinfo_and_refuses_the_rest() {
        let info = "pos:\t0\nflags:\t02\nlock:\t1: FLOCK  ADVISORY  WRITE 3511 fe:00:10011299 0 EOF\nlock:\t2: POSIX  ADVISORY  READ 3511 fe:00:10011299 5 14\nlock:\t3: OFDLCK ADVISORY  WRITE -1 fe:00:10011299 100 EOF\n";
        let l = parse(7, 4, info).unwrap();
        assert_eq!(
            l,
            [
                FileLock {
                    fd: 4,
                    kind: LockKind::Flock,
                    write: true,
                    start: 0,
                    end: None
                },
                FileLock {
                    fd: 4,
                    kind: LockKind::Posix,
                    write: false,
                    start: 5,
                    end: Some(14)
                },
                FileLock {
                    fd: 4,
                    kind: LockKind::Ofd,
                    write: true,
                    start: 100,
                    end: None
                },
            ]
        );
        assert!(parse(7, 4, "pos:\t0\n").unwrap().is_empty());
        let lease = "lock:\t1: LEASE  ACTIVE    READ 3511 fe:00:1 0 EOF\n";
        assert!(
            parse(7, 4, lease)
                .unwrap_err()
                .to_string()
                .contains("LEASE")
        );
        for bad in [
            "lock:\t1: POSIX  ADVISORY  WRITE 3511 fe:00:1 9 3\n",
            "lock:\t1: POSIX  ADVISORY  WRITE 3511 fe:00:1 x EOF\n",
            "lock:\t1: POSIX  ADVISORY  UNLCK 3511 fe:00:1 0 EOF\n",
            "lock:\t1: POSIX\n",
        ] {
            let e = parse(7, 4, bad).unwrap_err().to_string();
            assert!(e.contains("cannot parse the lock"), "{bad:?}: {e}");
        }
    }
}
