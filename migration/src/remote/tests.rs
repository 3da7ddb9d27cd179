use super::*;

fn id() -> Identity {
    Identity {
        pid: 4711,
        ppid: 1,
        pgid: 4700,
        sid: 4000,
        local_pid: 99,
    }
}

#[test]
fn classification() {
    let fds = FdTable::new([0, 1, 5]);
    let c = |nr, a| classify(nr, a, &fds, &id());
    assert_eq!(c(libc::SYS_getpid, [0; 6]), Class::Answer(4711));
    assert_eq!(c(libc::SYS_getppid, [0; 6]), Class::Answer(1));
    assert_eq!(c(libc::SYS_getsid, [0; 6]), Class::Answer(4000));
    assert_eq!(
        c(libc::SYS_getsid, [12, 0, 0, 0, 0, 0]),
        Class::GoHome(GoHome::Identity)
    );
    assert_eq!(
        c(libc::SYS_kill, [4711, 10, 0, 0, 0, 0]),
        Class::SignalSelf { sig: 10 }
    );
    assert_eq!(
        c(libc::SYS_kill, [4712, 10, 0, 0, 0, 0]),
        Class::GoHome(GoHome::Identity)
    );
    // the main thread's TID is the home PID; other threads keep their TIDs here
    assert_eq!(
        c(libc::SYS_tgkill, [4711, 4711, 10, 0, 0, 0]),
        Class::SignalThread { tid: 99, sig: 10 }
    );
    assert_eq!(
        c(libc::SYS_tgkill, [4711, 123, 12, 0, 0, 0]),
        Class::SignalThread { tid: 123, sig: 12 }
    );
    assert_eq!(
        c(libc::SYS_tgkill, [4712, 123, 12, 0, 0, 0]),
        Class::GoHome(GoHome::Identity)
    );
    assert_eq!(c(libc::SYS_gettid, [0; 6]), Class::Gettid);
    assert_eq!(
        c(libc::SYS_set_tid_address, [0x7f00_0000_12d0, 0, 0, 0, 0, 0]),
        Class::SetTidAddress
    );
    assert_eq!(
        c(libc::SYS_write, [1, 0x1000, 64, 0, 0, 0]),
        Class::Forward(Req::Write {
            fd: 1,
            buf: 0x1000,
            len: 64
        })
    );
    assert_eq!(
        c(libc::SYS_write, [3, 0x1000, 64, 0, 0, 0]),
        Class::Continue
    );
    assert_eq!(
        c(libc::SYS_read, [5, 0x1000, u64::MAX, 0, 0, 0]),
        Class::Forward(Req::Read {
            fd: 5,
            buf: 0x1000,
            len: MAX_IO
        })
    );
    assert_eq!(
        c(libc::SYS_ioctl, [1, 0x5401, 0, 0, 0, 0]),
        Class::Forward(Req::Sys {
            nr: libc::SYS_ioctl
        })
    );
    assert_eq!(
        c(libc::SYS_ioctl, [1, 0x1234, 0, 0, 0, 0]),
        Class::GoHome(GoHome::Unsupported)
    );
    assert_eq!(c(libc::SYS_ioctl, [4, 0x5401, 0, 0, 0, 0]), Class::Continue);
    assert_eq!(
        c(libc::SYS_mmap, [0, 4096, 1, 2, 5, 0]),
        Class::GoHome(GoHome::MmapHomeFd)
    );
    assert_eq!(c(libc::SYS_mmap, [0, 4096, 1, 2, 4, 0]), Class::Continue);
    assert_eq!(
        c(libc::SYS_dup2, [4, 1, 0, 0, 0, 0]),
        Class::GoHome(GoHome::Unsupported)
    );
    assert_eq!(
        c(libc::SYS_close_range, [3, u32::MAX as u64, 0, 0, 0, 0]),
        Class::GoHome(GoHome::Unsupported)
    );
    assert_eq!(
        c(libc::SYS_close_range, [6, u32::MAX as u64, 0, 0, 0, 0]),
        Class::Continue
    );
    // relative to a local dirfd: decided once the path is read
    assert_eq!(
        c(libc::SYS_openat, [3, 0, 0, 0, 0, 0]),
        Class::Forward(Req::Openat {
            dirfd: 3,
            path: 0,
            flags: 0,
            mode: 0
        })
    );
    assert_eq!(
        c(
            libc::SYS_openat,
            [libc::AT_FDCWD as u64, 0x10, 2, 0o644, 0, 0]
        ),
        Class::Forward(Req::Openat {
            dirfd: libc::AT_FDCWD,
            path: 0x10,
            flags: 2,
            mode: 0o644
        })
    );
    assert_eq!(
        c(libc::SYS_stat, [0; 6]),
        Class::Forward(Req::Sys { nr: libc::SYS_stat })
    );
    // terminal ioctls on a home fd run at home; unknown ones go home; local fds stay
    assert_eq!(
        c(libc::SYS_ioctl, [1, libc::TIOCGWINSZ, 0, 0, 0, 0]),
        Class::Forward(Req::Sys {
            nr: libc::SYS_ioctl
        })
    );
    assert_eq!(
        c(libc::SYS_ioctl, [1, libc::TIOCSPGRP, 0, 0, 0, 0]),
        Class::GoHome(GoHome::Identity)
    );
    assert_eq!(
        c(libc::SYS_ioctl, [1, libc::FIOCLEX, 0, 0, 0, 0]),
        Class::Continue
    );
    assert_eq!(
        c(libc::SYS_fcntl, [1, libc::F_GETFL as u64, 0, 0, 0, 0]),
        Class::Forward(Req::Sys {
            nr: libc::SYS_fcntl
        })
    );
    assert_eq!(
        c(libc::SYS_fcntl, [1, libc::F_DUPFD as u64, 0, 0, 0, 0]),
        Class::GoHome(GoHome::Unsupported)
    );
    assert_eq!(c(libc::SYS_fchdir, [4, 0, 0, 0, 0, 0]), Class::Continue);
    assert_eq!(
        c(libc::SYS_fchdir, [5, 0, 0, 0, 0, 0]),
        Class::Forward(Req::Sys {
            nr: libc::SYS_fchdir
        })
    );
    // not served remotely (yet): home
    assert_eq!(
        c(libc::SYS_openat2, [0; 6]),
        Class::GoHome(GoHome::Unsupported)
    );
    // every table call is forwarded or run locally, never sent home blindly
    for nr in seccomp::PATH_CALLS {
        if homecall::template(*nr).is_some() {
            assert!(
                matches!(c(*nr, [5, 0, 0, 0, 0, 0]), Class::Forward(_)),
                "{nr}"
            );
        }
    }
    for nr in seccomp::HOME_CALLS {
        assert!(matches!(c(*nr, [0; 6]), Class::GoHome(_)), "{nr}");
    }
    // Negative fd numbers are never home-backed.
    assert_eq!(
        c(libc::SYS_write, [u64::MAX, 0, 0, 0, 0, 0]),
        Class::Continue
    );
    assert_eq!(c(libc::SYS_poll, [0; 6]), Class::CheckFdSet);
    let none = FdTable::default();
    assert_eq!(
        classify(libc::SYS_poll, [0; 6], &none, &id()),
        Class::Continue
    );
}
