//! Path calls and terminal ioctls of a moved process run at home: the same program runs once
//! unmoved (a plain child) and once under the remote's filter with its stdout and a terminal
//! home-backed (an in-process home stand-in executes the forwarded calls on the real pipe and
//! pty); both runs start from identical directory trees and must print the same report, and
//! the moved run must really have forwarded its calls.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use migration::remote::{FdTable, Identity, Stop, Supervisor};
use migration::seccomp::{Program, Response, TrapSet};
use migration::standin;

/// The directory each run works in (set before the fork).
static BASE: OnceLock<std::ffi::CString> = OnceLock::new();

/// The report, built without allocating (the program runs in a forked child).
struct Report {
    buf: [u8; 8192],
    len: usize,
}

impl Report {
    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        let mut cur = std::io::Cursor::new(&mut self.buf[self.len..]);
        let _ = cur.write_fmt(args);
        let _ = cur.write_all(b"\n");
        self.len += cur.position() as usize;
    }
}

fn errno() -> i32 {
    // SAFETY: reading this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// ret and errno of a raw call.
macro_rules! sys {
    ($($a:expr),+ $(,)?) => {{
        // SAFETY: raw system calls on the program's own buffers and literal paths.
        let r = unsafe { libc::syscall($($a as i64),+) };
        (r, if r < 0 { errno() } else { 0 })
    }};
}

fn stat_line(r: &mut Report, what: &str, ret: (i64, i32), st: &libc::stat) {
    if ret.0 == 0 {
        r.line(format_args!(
            "{what} ok mode={:o} size={} nlink={} uid={}",
            st.st_mode, st.st_size, st.st_nlink, st.st_uid
        ));
        // Only times the program set itself are the same in both runs.
        if st.st_mtime < 10_000_000 {
            r.line(format_args!(
                "{what} mtime={} atime={}",
                st.st_mtime, st.st_atime
            ));
        }
    } else {
        r.line(format_args!("{what} err {}", ret.1));
    }
}

/// The moved program: path calls relative to a cwd changed by chdir, errno cases, calls on a
/// directory fd, and ioctls on the terminal at fd 3. Writes its report to fd 1.
fn program() -> i32 {
    use libc::*;
    let mut r = Report {
        buf: [0; 8192],
        len: 0,
    };
    let base = BASE.get().expect("set before fork");
    // SAFETY (whole body): zeroed plain-old-data structs for the kernel to fill.
    let mut st: stat = unsafe { std::mem::zeroed() };
    let x = sys!(SYS_chdir, base.as_ptr());
    r.line(format_args!("chdir {x:?}"));
    let x = sys!(SYS_stat, c"f".as_ptr(), &mut st as *mut stat);
    stat_line(&mut r, "stat f", x, &st);
    let x = sys!(SYS_lstat, c"missing".as_ptr(), &mut st as *mut stat);
    stat_line(&mut r, "lstat missing", x, &st);
    r.line(format_args!(
        "mkdir n {:?}",
        sys!(SYS_mkdir, c"n".as_ptr(), 0o750)
    ));
    r.line(format_args!(
        "mkdir n again {:?}",
        sys!(SYS_mkdir, c"n".as_ptr(), 0o750)
    ));
    let x = sys!(SYS_stat, c"n".as_ptr(), &mut st as *mut stat);
    stat_line(&mut r, "stat n", x, &st);
    r.line(format_args!(
        "rename {:?}",
        sys!(SYS_rename, c"f".as_ptr(), c"n/g".as_ptr())
    ));
    r.line(format_args!(
        "unlink f {:?}",
        sys!(SYS_unlink, c"f".as_ptr())
    ));
    r.line(format_args!("rmdir n {:?}", sys!(SYS_rmdir, c"n".as_ptr())));
    r.line(format_args!(
        "symlink {:?}",
        sys!(SYS_symlink, c"n/g".as_ptr(), c"l".as_ptr())
    ));
    let mut link = [0u8; 64];
    let x = sys!(SYS_readlink, c"l".as_ptr(), link.as_mut_ptr(), 64);
    r.line(format_args!(
        "readlink {x:?} {:?}",
        std::str::from_utf8(&link[..x.0.max(0) as usize]).unwrap_or("?")
    ));
    let x = sys!(SYS_readlink, c"d".as_ptr(), link.as_mut_ptr(), 64);
    r.line(format_args!("readlink dir {x:?}"));
    r.line(format_args!(
        "access {:?}",
        sys!(SYS_access, c"l".as_ptr(), F_OK)
    ));
    r.line(format_args!(
        "chmod {:?}",
        sys!(SYS_chmod, c"n/g".as_ptr(), 0o600)
    ));
    r.line(format_args!(
        "truncate {:?}",
        sys!(SYS_truncate, c"n/g".as_ptr(), 3)
    ));
    let times = [
        timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        },
        timespec {
            tv_sec: 2_000_000,
            tv_nsec: 0,
        },
    ];
    let x = sys!(SYS_utimensat, AT_FDCWD, c"n/g".as_ptr(), times.as_ptr(), 0);
    r.line(format_args!("utimensat {x:?}"));
    let x = sys!(SYS_stat, c"l".as_ptr(), &mut st as *mut stat);
    stat_line(&mut r, "stat l", x, &st);
    // chdir then a relative open: the new cwd is home's
    r.line(format_args!("chdir n {:?}", sys!(SYS_chdir, c"n".as_ptr())));
    let mut cwd = [0u8; 4096];
    let x = sys!(SYS_getcwd, cwd.as_mut_ptr(), 4096);
    let cwd_s = &cwd[..(x.0.max(1) - 1) as usize];
    let tail = cwd_s
        .strip_prefix(base.as_bytes())
        .unwrap_or(b"(elsewhere)");
    r.line(format_args!(
        "getcwd {} {:?}",
        x.0 - base.as_bytes().len() as i64,
        std::str::from_utf8(tail).unwrap_or("?")
    ));
    let fd = sys!(SYS_openat, AT_FDCWD, c"g".as_ptr(), O_RDONLY, 0);
    let mut buf = [0u8; 16];
    let n = sys!(SYS_read, fd.0, buf.as_mut_ptr(), 16);
    r.line(format_args!(
        "open g {} read {n:?} {:?}",
        fd.0 >= 0,
        std::str::from_utf8(&buf[..n.0.max(0) as usize]).unwrap_or("?")
    ));
    r.line(format_args!(
        "chdir .. {:?}",
        sys!(SYS_chdir, c"..".as_ptr())
    ));
    // a directory fd: openat, fstatat, getdents64 and unlinkat relative to it
    let d = sys!(
        SYS_openat,
        AT_FDCWD,
        c"d".as_ptr(),
        O_RDONLY | O_DIRECTORY,
        0
    );
    let x = sys!(SYS_newfstatat, d.0, c"x".as_ptr(), &mut st as *mut stat, 0);
    stat_line(&mut r, "fstatat d/x", x, &st);
    let x = sys!(
        SYS_newfstatat,
        d.0,
        c"".as_ptr(),
        &mut st as *mut stat,
        AT_EMPTY_PATH
    );
    stat_line(&mut r, "fstat d", x, &st);
    let f = sys!(SYS_openat, d.0, c"x".as_ptr(), O_RDONLY, 0);
    let n = sys!(SYS_read, f.0, buf.as_mut_ptr(), 16);
    r.line(format_args!(
        "openat d/x read {n:?} {:?}",
        std::str::from_utf8(&buf[..n.0.max(0) as usize]).unwrap_or("?")
    ));
    let mut dents = [0u8; 1024];
    let n = sys!(SYS_getdents64, d.0, dents.as_mut_ptr(), 1024);
    let mut names = 0;
    let mut at = 0usize;
    while (at as i64) < n.0 {
        let reclen = u16::from_ne_bytes([dents[at + 16], dents[at + 17]]) as usize;
        names += 1;
        at += reclen.max(1);
    }
    r.line(format_args!("getdents {} names {names}", n.0 > 0));
    let x = sys!(SYS_unlinkat, d.0, c"x".as_ptr(), 0);
    r.line(format_args!("unlinkat d/x {x:?}"));
    let x = sys!(SYS_faccessat, d.0, c"x".as_ptr(), F_OK);
    r.line(format_args!("faccessat d/x {x:?}"));
    let x = sys!(SYS_fcntl, 1, F_GETFL);
    r.line(format_args!(
        "fcntl stdout getfl {:o}",
        x.0 & i64::from(O_ACCMODE)
    ));
    // the terminal at fd 3
    let mut tio = [0u8; 36];
    let x = sys!(SYS_ioctl, 3, TCGETS, tio.as_mut_ptr());
    r.line(format_args!("isatty {}", x.0 == 0));
    let mut ws: winsize = winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let x = sys!(SYS_ioctl, 3, TIOCGWINSZ, &mut ws as *mut winsize);
    r.line(format_args!("winsize {x:?} {} {}", ws.ws_row, ws.ws_col));
    ws.ws_row += 1;
    let x = sys!(SYS_ioctl, 3, TIOCSWINSZ, &ws as *const winsize);
    let y = sys!(SYS_ioctl, 3, TIOCGWINSZ, &mut ws as *mut winsize);
    r.line(format_args!("set winsize {x:?} {y:?} {}", ws.ws_row));
    let mut avail = 0i32;
    let x = sys!(SYS_ioctl, 3, FIONREAD, &mut avail as *mut i32);
    r.line(format_args!("fionread {x:?} {avail}"));
    let n = sys!(SYS_read, 3, buf.as_mut_ptr(), 16);
    r.line(format_args!(
        "tty read {n:?} {:?}",
        std::str::from_utf8(&buf[..n.0.max(0) as usize]).unwrap_or("?")
    ));
    let x = sys!(SYS_ioctl, 1, TCGETS, tio.as_mut_ptr());
    r.line(format_args!("stdout isatty {x:?}"));
    let w = sys!(SYS_write, 1, r.buf.as_ptr(), r.len);
    i32::from(w.0 != r.len as i64)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0 as RawFd; 2];
    // SAFETY: pipe2 into a 2-int array; both fds are fresh and owned here.
    unsafe {
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1]))
    }
}

/// A pty (master, slave) of 24×80 with "typed\n" waiting to be read.
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty into two ints, with a winsize; then a write into the master.
    unsafe {
        assert_eq!(
            libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws),
            0
        );
        libc::fcntl(m, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(s, libc::F_SETFD, libc::FD_CLOEXEC);
        assert_eq!(libc::write(m, b"typed\n".as_ptr().cast(), 6), 6);
        // The line discipline takes the bytes asynchronously: wait until they are readable.
        let t0 = Instant::now();
        let mut avail = 0i32;
        while libc::ioctl(s, libc::FIONREAD, &mut avail) == 0 && avail < 6 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "pty input never arrived"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s))
    }
}

fn read_all(fd: &OwnedFd) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into our buffer from our pipe.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8(got).unwrap()
}

/// A fresh tree: base/f ("hello\n"), base/d/x ("inner\n").
fn tree(base: &std::path::Path) {
    let _ = std::fs::remove_dir_all(base);
    std::fs::create_dir_all(base.join("d")).unwrap();
    std::fs::write(base.join("f"), b"hello\n").unwrap();
    std::fs::write(base.join("d/x"), b"inner\n").unwrap();
}

struct RmTree(std::path::PathBuf);
impl Drop for RmTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn unmoved_run() -> String {
    let (out_r, out_w) = pipe();
    let (_m, s) = pty();
    // SAFETY: the child makes raw calls only (the program allocates nothing) until _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: raw calls in the forked child.
        unsafe {
            libc::dup2(out_w.as_raw_fd(), 1);
            libc::dup2(s.as_raw_fd(), 3);
            libc::_exit(program());
        }
    }
    drop(out_w);
    let text = read_all(&out_r);
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
    text
}

/// Placeholders at the home-backed numbers 1 and 3.
fn prep() {
    // SAFETY: raw calls in the forked child.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        libc::dup2(fd, 1);
        libc::dup2(fd, 3);
        libc::close(fd);
    }
}

fn moved_run() -> (String, migration::remote::Stats) {
    let (out_r, out_w) = pipe();
    let (_m, s) = pty();
    let (port, standin) = standin::spawn(HashMap::from([(1, out_w), (3, s)])).unwrap();
    let prog = Program::build(&TrapSet::remote()).unwrap();
    let (mut child, listener) = common::spawn_filtered_prep(&prog, prep, program);
    let id = Identity {
        pid: 4242,
        ppid: 4241,
        pgid: 4242,
        sid: 4240,
        local_pid: child.pid,
    };
    let mut sup = Supervisor::new(listener, id, FdTable::new([1, 3]), port);
    let deadline = Instant::now() + Duration::from_secs(30);
    match sup.run(deadline).unwrap() {
        Stop::Exited => {}
        Stop::Deadline => panic!("the child did not finish: {:?}", sup.stats()),
        Stop::GoHome { notif, reason } => {
            sup.listener()
                .respond(notif.id, Response::Errno(libc::ENOSYS))
                .unwrap();
            panic!("call {} went home ({reason:?})", notif.data.nr);
        }
    }
    let status = child.wait();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
    let stats = sup.stats().clone();
    drop(sup);
    drop(standin.join()); // closes the home pipe's write end
    (read_all(&out_r), stats)
}

#[test]
fn path_calls_and_tty_ioctls_of_a_moved_process_match_an_unmoved_run() {
    let base = std::env::temp_dir().join(format!("migration-home-calls-{}", std::process::id()));
    let _rm = RmTree(base.clone());
    BASE.set(std::ffi::CString::new(base.to_str().unwrap()).unwrap())
        .unwrap();
    tree(&base);
    let want = unmoved_run();
    tree(&base);
    let (got, stats) = moved_run();
    assert_eq!(got, want, "moved run differs from the unmoved one");
    // The report is the real kernel's: spot checks that the comparison compared something.
    assert!(want.contains("stat f ok"), "{want}");
    assert!(
        want.contains(&format!("lstat missing err {}", libc::ENOENT)),
        "{want}"
    );
    assert!(
        want.contains(&format!("mkdir n again (-1, {})", libc::EEXIST)),
        "{want}"
    );
    assert!(want.contains("open g true read (3, 0) \"hel\""), "{want}");
    assert!(
        want.contains("isatty true") && want.contains("winsize (0, 0) 24 80"),
        "{want}"
    );
    assert!(want.contains("tty read (6, 0) \"typed\\n\""), "{want}");
    assert!(
        want.contains(&format!("stdout isatty (-1, {})", libc::ENOTTY)),
        "{want}"
    );
    // Every one of the program's 39 trapped calls (path calls, calls on fds 1 and 3 and on
    // the files and directory it opened at home) ran at home; none ran here.
    assert_eq!(stats.forwarded, 39, "{stats:?}");
    assert_eq!(stats.continued, 0, "{stats:?}");
}
