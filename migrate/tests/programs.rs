//! Everyday programs and what they need (issue 8 parts 2 and 3) through freeze and thaw
//! (needs root; skipped with a message otherwise, FAILS under CI=true): POSIX timers of every
//! notification kind (vim's timer thread is a SIGEV_THREAD timer), a Go program (its runtime:
//! many threads, futexes, signal-based preemption, epoll), each compared byte for byte with an
//! uninterrupted run, and the round-trip checker on the timers.

mod common;
use common::check::{View, round_trip};
use common::runs::{assert_same, compare_when};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn timer_ids(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ID: ")?.trim().parse().ok())
        .collect()
}

fn assert_timers(img: &[u8]) {
    let r = migrate::ImageReader::new(img).expect("image");
    let p = r.process();
    let ids: Vec<i32> = p.posix_timers.iter().map(|t| t.id).collect();
    // the first timer (id 0) was deleted: the four others keep their ids
    assert_eq!(ids, [1, 2, 3, 4], "{:?}", p.posix_timers);
    let none = &p.posix_timers[3];
    assert_eq!(none.notify, libc::SIGEV_NONE);
    assert!(none.left.0 > 3000 && none.left.0 < 3600, "{none:?}");
    let sig = &p.posix_timers[0];
    assert_eq!((sig.interval, sig.value as i32), ((0, 15_000_000), 4242));
}

/// Four POSIX timers (signal with a value, SIGEV_THREAD through glibc's helper thread,
/// SIGEV_THREAD_ID to a worker in sigwaitinfo, SIGEV_NONE far away) and a gap in the ids:
/// after two freeze/thaw cycles each still fires with its own value, the ids still name their
/// timers, and the output equals an uninterrupted run's.
#[test]
fn posix_timers_of_every_kind_output_identical() {
    if !root() {
        return;
    }
    let mk = |dir: &Path, tag: &str| {
        let mut c = Command::new(prog("ptimers"));
        c.arg("300");
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare_when(
        &mk,
        &|pid| timer_ids(pid).len() == 4,
        &assert_timers,
        Duration::from_millis(500),
        2,
    );
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}

/// The round-trip checker sees every timer come back: same id, signal and value, clock, and
/// notification aimed at the same thread (by place).
#[test]
fn round_trip_checker_sees_the_posix_timers() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("ptimers")).arg("1000"), &out, None);
    let end = Instant::now() + T;
    while timer_ids(p.pid).len() != 4 {
        assert!(Instant::now() < end && p.alive(), "no timers in {}", p.pid);
        std::thread::sleep(Duration::from_millis(2));
    }
    wait_lines(&out, 5, T);
    // stopped by job control, so that nothing moves between the two views; its timers keep
    // firing, but each one's signal is queued once only, within 25 ms
    // SAFETY: signal to our own child.
    unsafe { libc::kill(p.pid, libc::SIGSTOP) };
    while !View::of(p.pid).stopped {
        assert!(Instant::now() < end, "never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = View::of(p.pid);
    assert_eq!(before.get("timers").len(), 4, "{:?}", before.get("timers"));
    let (mut q, mut diff) = round_trip(&mut p, false);
    // SAFETY: signal to our own child.
    unsafe { libc::kill(q.pid, libc::SIGCONT) };
    if std::env::var_os(INHERITED_PIPE_ENV).is_some() {
        // the leaked pipe is given /dev/null at thaw (see thaw_with)
        diff.retain(|l| !l.contains(&format!("fd {LEAKED_FD} ->")));
    }
    assert!(
        diff.is_empty(),
        "differences after thaw:\n{}",
        diff.join("\n")
    );
    let after = View::of(q.pid);
    assert!(
        after.get("timers").iter().any(|l| l.contains("thread #")),
        "{:?}",
        after.get("timers")
    );
    let st = q.wait(T);
    assert!(exited_ok(st), "{st:#x}: {}", read(&out));
    assert!(read(&out).ends_with("DONE ok\n"), "{}", read(&out));
}

/// A timer on a CPU-time clock (its clock would start again at zero) is refused before the
/// process is touched: typed, naming the clock, and the process runs on to the end.
#[test]
fn a_timer_on_a_cpu_clock_is_refused_and_the_process_runs_on() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("ptimers")).args(["150", "cpu"]),
        &out,
        None,
    );
    let end = Instant::now() + T;
    while timer_ids(p.pid).len() != 5 {
        assert!(Instant::now() < end && p.alive(), "no timers in {}", p.pid);
        std::thread::sleep(Duration::from_millis(2));
    }
    let e = freeze(p.pid, false).expect_err("a CPU-clock timer must be refused");
    assert!(matches!(e, migrate::Error::Unsupported { .. }), "{e}");
    assert_eq!(e.kind(), migrate::ErrorKind::CannotMove);
    assert!(e.to_string().contains("CPU-time"), "{e}");
    let st = p.wait(T);
    assert!(exited_ok(st), "{st:#x}: {}", read(&out));
    assert!(read(&out).ends_with("DONE ok\n"), "{}", read(&out));
}

/// Builds tests/progs/go/busy.go with the Go toolchain (Debian's golang-go); `None` (after
/// saying why) when there is none, which fails under CI=true.
fn go_program() -> Option<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("busy.{}", std::process::id()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs/go/busy.go");
    let r = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("cache"))
        .env("HOME", &dir)
        .output();
    match r {
        Ok(o) if o.status.success() => Some(out),
        r => {
            let why = match r {
                Ok(o) => format!("go build failed: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => format!("no Go toolchain (`go`: {e}); apt-get install golang-go"),
            };
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: not skipping: {why}"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// A Go program: its runtime's threads (each blocked in a futex, epoll_pwait or running),
/// SIGURG preemption signals pending for a thread (queued again by that thread itself, as
/// only it may), its netpoller's epoll with a pipe and the self-pipe it wakes itself with;
/// three freeze/thaw cycles, output identical to an uninterrupted run.
#[test]
fn go_program_output_identical() {
    if !root() {
        return;
    }
    let Some(exe) = go_program() else {
        return;
    };
    let _rm = RemoveOnDrop(exe.clone());
    let mk = |dir: &Path, tag: &str| {
        let mut c = Command::new(&exe);
        c.arg("300");
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare_when(
        &mk,
        &|pid| std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count()) > 2,
        &|img| {
            let r = migrate::ImageReader::new(img).expect("image");
            assert!(r.process().threads.len() >= 2, "Go runs on several threads");
        },
        Duration::from_millis(300),
        3,
    );
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}

struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Freezes `pid`, trying again while the only refusal is inotify events not read yet (a
/// legitimate "try later": the program reads them a moment later).
fn freeze_when_read(pid: i32) -> Vec<u8> {
    let end = Instant::now() + T;
    loop {
        match freeze(pid, false) {
            Ok(img) => return img,
            Err(e) if e.to_string().contains("not read yet") && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(3));
            }
            Err(e) => panic!("freeze of {pid}: {e}"),
        }
    }
}

/// An inotify instance watching a directory and a file in it: after two freeze/thaw cycles
/// the watches have their descriptors and masks (the events the program causes name them),
/// and the output equals an uninterrupted run's; the image names the watched paths.
#[test]
fn inotify_watches_come_back_output_identical() {
    if !root() {
        return;
    }
    let run = |cycles: usize| -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("watched");
        std::fs::create_dir(&w).unwrap();
        let out = dir.path().join("out");
        let mut p = spawn(Command::new(prog("inotify")).arg(&w).arg("150"), &out, None);
        for i in 0..cycles {
            std::thread::sleep(Duration::from_millis(400));
            assert!(p.alive(), "finished before freeze #{i}");
            let img = freeze_when_read(p.pid);
            let r = migrate::ImageReader::new(&img[..]).expect("image");
            let watches: Vec<(i32, String)> = r
                .process()
                .fds
                .iter()
                .find_map(|f| match &f.kind {
                    migrate::FdKind::Inotify { watches, .. } => {
                        Some(watches.iter().map(|w| (w.wd, w.path.clone())).collect())
                    }
                    _ => None,
                })
                .expect("an inotify fd in the image");
            let log = w.join("log").display().to_string();
            assert_eq!(watches, [(1, w.display().to_string()), (2, log)]);
            p.wait(T);
            p = thaw(&img);
        }
        let st = p.wait(T);
        let o = std::fs::read(&out).unwrap();
        assert!(exited_ok(st), "{st:#x}: {}", String::from_utf8_lossy(&o));
        o
    };
    let r = run(0);
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &run(2));
}

/// A watch that was removed leaves a gap in the descriptors, which thaw could not give back:
/// refused before the process is touched, and it runs on.
#[test]
fn inotify_with_a_removed_watch_is_refused_and_runs_on() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // tail -F of a file that is replaced: its first watch goes, the second one stays
    let f = dir.path().join("f");
    std::fs::write(&f, "a\n").unwrap();
    let p = spawn(
        Command::new("tail").args(["-F", "-s", "0.05"]).arg(&f),
        &out,
        None,
    );
    wait_lines(&out, 1, T);
    let wds = |pid: i32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .unwrap()
            .flat_map(|e| {
                std::fs::read_to_string(e.unwrap().path())
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| {
                        Some(
                            l.strip_prefix("inotify wd:")?
                                .split(' ')
                                .next()?
                                .to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    // replace the file until tail watches it under a descriptor above 2 (its directory's is 1)
    let end = Instant::now() + T;
    let mut n = 0;
    let high = |pid: i32| {
        wds(pid)
            .iter()
            .any(|w| u32::from_str_radix(w, 16).is_ok_and(|w| w > 2))
    };
    while !high(p.pid) {
        assert!(
            Instant::now() < end,
            "tail never watched again: {:?}",
            wds(p.pid)
        );
        let tmp = dir.path().join("f.new");
        std::fs::write(&tmp, format!("b{n}\n")).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let e = freeze(p.pid, false).expect_err("a gap in the watch descriptors must be refused");
    assert!(matches!(e, migrate::Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("watch descriptors"), "{e}");
    // it runs on: a line appended now is printed
    use std::io::Write;
    writeln!(
        std::fs::OpenOptions::new().append(true).open(&f).unwrap(),
        "after"
    )
    .unwrap();
    let end = Instant::now() + T;
    while !read(&out).contains("after\n") {
        assert!(
            Instant::now() < end && p.alive(),
            "tail stopped: {}",
            read(&out)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A pseudo-terminal pair of `rows` x `cols`: (master, slave), both close-on-exec from the
/// start (tests run in parallel threads that spawn processes), closed on drop.
fn pty(rows: u16, cols: u16) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: plain open of the pty multiplexer; the fd is ours from here on.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let m = unsafe { std::os::fd::OwnedFd::from_raw_fd(m) };
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: grantpt/unlockpt on our master; ptsname_r writes at most name.len() bytes.
    unsafe {
        assert_eq!(libc::grantpt(m.as_raw_fd()), 0);
        assert_eq!(libc::unlockpt(m.as_raw_fd()), 0);
        assert_eq!(
            libc::ptsname_r(m.as_raw_fd(), name.as_mut_ptr(), name.len()),
            0
        );
    }
    // SAFETY: ptsname_r wrote a NUL-terminated path.
    let s = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    assert!(
        s >= 0,
        "open of the pty: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above.
    let s = unsafe { std::os::fd::OwnedFd::from_raw_fd(s) };
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    assert_eq!(
        unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    (m, s)
}

/// A program on a terminal is thawed on another terminal of another size: thaw tells it
/// (SIGWINCH), and the size it then reads is the new terminal's.
#[test]
fn thawed_on_another_terminal_the_program_gets_sigwinch_and_the_new_size() {
    if !root() {
        return;
    }
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let (_m1, s1) = pty(24, 80);
    let s = s1.as_raw_fd();
    let mut p = spawn_with(
        Command::new(prog("winch")).arg(&report),
        &dir.path().join("unused"),
        None,
        &[(s, 0), (s, 1), (s, 2)],
    );
    let end = Instant::now() + T;
    while !read(&report).contains("started") {
        assert!(Instant::now() < end && p.alive(), "never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read(&report), "started 24 80\n");
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    assert!(
        migrate::ImageReader::new(&img[..])
            .unwrap()
            .process()
            .terminal
            .is_some(),
        "its terminal is in the image"
    );
    let (_m2, s2) = pty(40, 100);
    let t = thaw_with(
        &img,
        migrate::ThawOptions {
            stdin: Some(s2.as_raw_fd()),
            stdout: Some(s2.as_raw_fd()),
            stderr: Some(s2.as_raw_fd()),
            ..Default::default()
        },
    )
    .expect("thaw");
    let mut q = Proc::new(t.pid);
    let st = q.wait(T);
    assert!(exited_ok(st), "{st:#x}: {}", read(&report));
    assert_eq!(read(&report), "started 24 80\nwinch 40 100\n");
}

/// What a root daemon does for an unprivileged caller (`freeze_for`, a thaw with an owner):
/// programs of the user nobody with POSIX timers and with inotify watches come back as
/// nobody, their output identical to an uninterrupted run's.
#[test]
fn as_an_unprivileged_user_timers_and_inotify_come_back() {
    if !root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let me = migrate::ThawOwner::of_process(std::process::id() as i32).expect("own /proc");
    let owner = migrate::ThawOwner {
        uid: NOBODY,
        groups: vec![NOBODY],
        ..me
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let watched = dir.path().join("watched");
    let run = |args: &[&std::ffi::OsStr], tag: &str, freeze_at: Option<Duration>| -> Vec<u8> {
        let out = dir.path().join(tag);
        let mut c = Command::new(prog(&args[0].to_string_lossy()));
        c.args(&args[1..]).uid(NOBODY).gid(NOBODY);
        let mut p = spawn(&mut c, &out, None);
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
        if let Some(at) = freeze_at {
            std::thread::sleep(at);
            let mut img = Vec::new();
            let end = Instant::now() + T;
            loop {
                img.clear();
                match migrate::freeze_for(p.pid, &mut img, false, &owner, || true) {
                    Ok((_, ended)) => {
                        assert!(ended, "frozen but not ended");
                        break;
                    }
                    Err(e) if e.to_string().contains("not read yet") && Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(3))
                    }
                    Err(e) => panic!("freeze_for nobody: {e}"),
                }
            }
            p.wait(T);
            let t = thaw_with(
                &img,
                migrate::ThawOptions {
                    owner: Some(owner.clone()),
                    ..Default::default()
                },
            )
            .expect("thaw for nobody");
            p = Proc::new(t.pid);
            let st = std::fs::read_to_string(format!("/proc/{}/status", t.pid)).unwrap();
            assert!(st.contains(&format!("Uid:\t{NOBODY}\t")), "{st}");
        }
        let st = p.wait(T);
        let o = std::fs::read(&out).unwrap();
        assert!(
            exited_ok(st),
            "{tag}: {st:#x}: {}",
            String::from_utf8_lossy(&o)
        );
        o
    };
    let timers = ["ptimers".as_ref(), "300".as_ref()];
    assert_same(
        &run(&timers, "t.ref", None),
        &run(&timers, "t.mig", Some(Duration::from_millis(600))),
    );
    for tag in ["i.ref", "i.mig"] {
        let _ = std::fs::remove_dir_all(&watched);
        std::fs::create_dir(&watched).unwrap();
        std::fs::set_permissions(&watched, std::fs::Permissions::from_mode(0o777)).unwrap();
        let args = ["inotify".as_ref(), watched.as_os_str(), "150".as_ref()];
        let at = (tag == "i.mig").then_some(Duration::from_millis(500));
        let o = run(&args, tag, at);
        if tag == "i.ref" {
            std::fs::write(dir.path().join("i.expected"), &o).unwrap();
        } else {
            assert_same(&std::fs::read(dir.path().join("i.expected")).unwrap(), &o);
        }
    }
}

/// Who holds a conflicting fcntl lock on `len` bytes from `start` of `path` (F_GETLK from
/// this process): its PID, or None.
fn posix_holder(path: &Path, write: bool, start: i64, len: i64) -> Option<i32> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: zeroed plain struct, filled below.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
    l.l_whence = libc::SEEK_SET as i16;
    l.l_start = start;
    l.l_len = len;
    // SAFETY: F_GETLK reads and writes one struct flock.
    assert_eq!(
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut l) },
        0
    );
    (l.l_type != libc::F_UNLCK as i16).then_some(l.l_pid)
}

/// flock of `path` through a new open file, without waiting: did it get the lock?
fn flock_free(path: &Path, exclusive: bool) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on our own fd (released when it closes).
    unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// File locks of every kind (flock exclusive and shared, fcntl write and read ranges, an OFD
/// lock) are held again by the thawed process: other processes find them taken by it (and
/// free where they were free), the round-trip checker sees the same lock lines on the same
/// fds, and the program ends as an uninterrupted run does.
#[test]
fn file_locks_are_held_again_after_thaw() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let mut p = spawn(Command::new(prog("locks")).arg(d).arg("300"), &out, None);
    wait_lines(&out, 2, T);
    let check = |pid: i32| {
        assert!(
            !flock_free(&d.join("a"), false),
            "flock LOCK_EX of a not held"
        );
        assert!(
            flock_free(&d.join("s"), false),
            "s is shared-locked: another reader may"
        );
        assert!(
            !flock_free(&d.join("s"), true),
            "flock LOCK_SH of s not held"
        );
        assert_eq!(posix_holder(&d.join("b"), false, 7, 1), Some(pid));
        assert_eq!(posix_holder(&d.join("b"), false, 20, 10), None);
        assert_eq!(
            posix_holder(&d.join("b"), false, 1000, 1),
            None,
            "a read lock"
        );
        assert_eq!(posix_holder(&d.join("b"), true, 1000, 1), Some(pid));
        assert_eq!(
            posix_holder(&d.join("c"), true, 9, 1),
            Some(-1),
            "the OFD lock"
        );
        assert_eq!(posix_holder(&d.join("c"), true, 10, 1), None);
    };
    check(p.pid);
    let before = View::of(p.pid);
    assert_eq!(
        before
            .get("fds")
            .iter()
            .map(|l| l.matches(" lock ").count())
            .sum::<usize>(),
        5,
        "{:?}",
        before.get("fds")
    );
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    {
        let r = migrate::ImageReader::new(&img[..]).unwrap();
        assert_eq!(
            r.process().file_locks.len(),
            5,
            "{:?}",
            r.process().file_locks
        );
    }
    let mut q = thaw(&img);
    check(q.pid);
    let mut diff = View::of(q.pid).diff_from(&before);
    if std::env::var_os(INHERITED_PIPE_ENV).is_some() {
        diff.retain(|l| !l.contains(&format!("fd {LEAKED_FD} ->")));
    }
    assert!(
        diff.is_empty(),
        "differences after thaw:\n{}",
        diff.join("\n")
    );
    let st = q.wait(T);
    assert!(exited_ok(st), "{st:#x}: {}", read(&out));
    assert!(read(&out).ends_with("DONE ok\n"));
    // and once it has ended, every lock is free
    assert!(flock_free(&d.join("a"), true));
    assert_eq!(posix_holder(&d.join("b"), true, 0, 0), None);
}

/// A thaw that cannot take a lock back (another process holds it now) fails before the
/// process runs, naming the lock; the image still thaws once the lock is free.
#[test]
fn a_lock_held_elsewhere_fails_the_thaw_and_the_image_thaws_later() {
    if !root() {
        return;
    }
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out");
    let mut p = spawn(Command::new(prog("locks")).arg(d).arg("60"), &out, None);
    wait_lines(&out, 2, T);
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let other = std::fs::File::open(d.join("a")).unwrap();
    // SAFETY: flock on our own fd.
    assert_eq!(
        unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let e = thaw_with(&img, migrate::ThawOptions::default()).expect_err("the lock is taken");
    assert!(e.to_string().contains("flock"), "{e}");
    drop(other);
    let mut q = thaw(&img);
    let st = q.wait(T);
    assert!(exited_ok(st), "{st:#x}: {}", read(&out));
    assert!(read(&out).ends_with("DONE ok\n"));
}
