//! The home shell with real processes: a child of this test is frozen, parked and trimmed;
//! signals to it are reported and suppressed; its end is reproduced (exit code, death by a
//! signal without a core) as its parent (this test) sees it; system calls run in its context
//! (needs root; skipped with a message otherwise, a failure under CI=true).

mod common;
use common::*;
use migrate::{ShellArg, ShellEvent};
use std::io::Read;
use std::process::Command;
use std::time::Duration;

/// Spawns the counter (`iters` × 10 ms, `heap_mib` heap) in `dir` and parks it; returns the
/// process, its image and the shell.
fn parked(
    dir: &std::path::Path,
    iters: &str,
    heap_mib: &str,
) -> (Proc, Vec<u8>, migrate::HomeShell) {
    let out = dir.join("out");
    let mut c = Command::new(prog("counter"));
    c.args([iters, heap_mib, "10"]).current_dir(dir);
    // Its own process group under this test process (same session): never an orphaned group,
    // whose members the kernel does not stop on SIGTSTP, however the tests were started (a
    // script without job control, CI, a terminal).
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let p = spawn(&mut c, &out, None);
    // the heap is filled before the first iteration's sleep
    std::thread::sleep(Duration::from_millis(300));
    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    let img = s.collect().expect("collect");
    let mut bytes = Vec::new();
    s.stream(&img, &mut bytes).expect("stream");
    let shell = match s.finish(migrate::Ending::ParkAsHomeShell).expect("park") {
        migrate::Finished::Parked(sh) => sh,
        other => panic!("not parked: {other:?}"),
    };
    assert_eq!(shell.pid(), p.pid);
    (p, bytes, shell)
}

fn status(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn field_kb(st: &str, key: &str) -> u64 {
    st.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {st}"))
}

/// The system call P sleeps in (first field of /proc/PID/syscall).
fn sleeping_in(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Waits (bounded) until P sleeps in pause() again.
fn wait_paused(pid: i32) {
    let end = std::time::Instant::now() + T;
    while sleeping_in(pid) != libc::SYS_pause.to_string() {
        assert!(
            std::time::Instant::now() < end,
            "shell {pid} not back in pause(): {}",
            sleeping_in(pid)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_parked_shell_is_trimmed_reports_signals_and_exits_with_the_code_given() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, img, mut sh) = parked(dir.path(), "100000", "32");
    let summary = migrate::inspect(&img[..]).expect("image");
    assert!(
        summary.page_bytes >= 32 << 20,
        "the heap was not in the image"
    );

    let st = status(p.pid);
    let rss = field_kb(&st, "VmRSS:");
    eprintln!(
        "parked shell: VmRSS {rss} kB, VmSize {} kB",
        field_kb(&st, "VmSize:")
    );
    assert!(rss < 100, "VmRSS {rss} kB after the trim:\n{st}");
    assert!(st.contains("SigBlk:\t0000000000000000"), "{st}");
    assert!(
        st.contains("SigCgt:\t0000000000000000"),
        "handlers left:\n{st}"
    );
    wait_paused(p.pid);
    // argv stays readable (ps shows the command, not [counter])
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap();
    assert!(cmdline.starts_with(prog("counter").to_str().unwrap().as_bytes()));

    // a signal is reported with its sender, and suppressed: P stays parked
    // SAFETY: signal to our own child.
    assert_eq!(unsafe { libc::kill(p.pid, libc::SIGUSR1) }, 0);
    let ev = sh.next_event(T).expect("event").expect("no event within T");
    let ShellEvent::Signal { info, held } = ev else {
        panic!("not a signal: {ev:?}")
    };
    assert!(held);
    assert_eq!(info.signo, libc::SIGUSR1);
    // SAFETY: getpid has no preconditions.
    assert_eq!(info.pid, unsafe { libc::getpid() });
    assert!(info.from_us());
    sh.suppress().expect("suppress");
    assert_eq!(
        sh.next_event(Duration::from_millis(200)).expect("wait"),
        None
    );
    wait_paused(p.pid);
    assert!(p.alive(), "SIGUSR1 (default: terminate) reached the shell");

    let raw = sh.exit(42).expect("exit");
    assert!(
        libc::WIFEXITED(raw) && libc::WEXITSTATUS(raw) == 42,
        "{raw:#x}"
    );
    let st = p.wait(T);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 42,
        "parent saw {st:#x}"
    );
}

#[test]
fn die_by_sigterm_is_seen_by_the_parent_without_a_core() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _img, mut sh) = parked(dir.path(), "100000", "1");
    wait_paused(p.pid);
    // signals that do not end a process are refused, and change nothing
    for sig in [libc::SIGSTOP, libc::SIGCONT, libc::SIGCHLD, 0, 65] {
        sh.die_by(sig).expect_err("not a terminating signal");
    }
    assert!(p.alive());
    wait_paused(p.pid);
    sh.die_by(libc::SIGTERM).expect("die_by");
    assert!(
        sh.next_event(Duration::from_millis(10)).is_err(),
        "the shell has ended"
    );
    let st = p.wait(T);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGTERM,
        "parent saw {st:#x}"
    );
    assert!(!libc::WCOREDUMP(st));
    let cores: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("core"))
        .collect();
    assert!(cores.is_empty(), "a core was written: {cores:?}");
}

#[test]
fn die_by_sigsegv_is_reproduced_without_a_core() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _img, mut sh) = parked(dir.path(), "100000", "1");
    sh.die_by(libc::SIGSEGV).expect("die_by");
    let st = p.wait(T);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSEGV && !libc::WCOREDUMP(st),
        "parent saw {st:#x}"
    );
}

#[test]
fn an_injected_openat_resolves_against_the_shells_cwd() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), b"from the home node\n").unwrap();
    let (mut p, _img, mut sh) = parked(dir.path(), "100000", "1");
    // our own cwd is elsewhere: the relative path only resolves in P's context
    assert!(!std::path::Path::new("hello.txt").exists());
    let open = |sh: &mut migrate::HomeShell, path: &str| {
        let mut c = path.as_bytes().to_vec();
        c.push(0);
        sh.syscall(
            libc::SYS_openat,
            vec![
                ShellArg::Val(libc::AT_FDCWD as u64),
                ShellArg::In(c),
                ShellArg::Val((libc::O_RDONLY | libc::O_CLOEXEC) as u64),
            ],
        )
        .expect("injected openat")
        .0
    };
    let fd = open(&mut sh, "hello.txt");
    assert!(fd >= 0, "openat failed: {fd}");
    let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", p.pid)).unwrap();
    assert_eq!(link, dir.path().join("hello.txt").canonicalize().unwrap());
    let mut got = String::new();
    std::fs::File::from(sh.take_fd(fd as i32).expect("pidfd_getfd"))
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "from the home node\n");
    assert_eq!(open(&mut sh, "missing.txt"), -(libc::ENOENT as i64));
    // an Out argument comes back: fstat of the opened file gives its size
    let (r, out) = sh
        .syscall(
            libc::SYS_fstat,
            vec![
                ShellArg::Val(fd as u64),
                ShellArg::Out(std::mem::size_of::<libc::stat>()),
            ],
        )
        .expect("fstat");
    assert_eq!(r, 0);
    // SAFETY: the kernel filled a struct stat of exactly this size.
    let st: libc::stat = unsafe { std::ptr::read_unaligned(out[0].as_ptr().cast()) };
    assert_eq!(st.st_size, 19);
    let (r, _) = sh
        .syscall(libc::SYS_close, vec![ShellArg::Val(fd as u64)])
        .expect("close");
    assert_eq!(r, 0);
    assert!(std::fs::read_link(format!("/proc/{}/fd/{fd}", p.pid)).is_err());
    wait_paused(p.pid);
    sh.exit(0).expect("exit");
    assert!(exited_ok(p.wait(T)));
}

#[test]
fn job_control_stop_is_held_with_listen_and_continue_is_reported() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _img, mut sh) = parked(dir.path(), "100000", "1");
    // SAFETY: signal to our own child.
    unsafe { libc::kill(p.pid, libc::SIGTSTP) };
    let ev = sh.next_event(T).unwrap().expect("TSTP");
    assert!(
        matches!(&ev, ShellEvent::Signal { info, held: true } if info.signo == libc::SIGTSTP),
        "{ev:?}"
    );
    // let it through: P group-stops, and stays stopped under LISTEN
    sh.deliver().unwrap();
    let ev = sh.next_event(T).unwrap().expect("group stop");
    assert_eq!(
        ev,
        ShellEvent::GroupStop {
            signo: libc::SIGTSTP
        }
    );
    sh.listen().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let state = status(p.pid);
    assert!(state.contains("State:\tt"), "{state}");
    // SAFETY: signal to our own child.
    unsafe { libc::kill(p.pid, libc::SIGCONT) };
    let ev = sh.next_event(T).unwrap().expect("CONT");
    assert!(
        matches!(&ev, ShellEvent::Signal { info, held: true } if info.signo == libc::SIGCONT),
        "{ev:?}"
    );
    sh.suppress().unwrap();
    wait_paused(p.pid);
    let raw = sh.exit(3).expect("exit");
    assert!(
        libc::WIFEXITED(raw) && libc::WEXITSTATUS(raw) == 3,
        "{raw:#x}"
    );
    let st = p.wait(T);
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 3, "{st:#x}");
}

#[test]
fn a_dropped_shell_takes_the_process_with_it() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _img, sh) = parked(dir.path(), "100000", "1");
    drop(sh);
    let st = p.wait(T);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
        "{st:#x}"
    );
}

#[test]
fn signals_the_image_took_are_not_reported_again_and_sigkill_is_an_end() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut c = Command::new(prog("sig"));
    c.arg("1000").current_dir(dir.path());
    let mut p = spawn(&mut c, &out, None);
    wait_lines(&out, 3, T);
    // SIGUSR2 is blocked in `sig`: it stays pending and goes into the image
    // SAFETY: signal to our own child.
    unsafe { libc::kill(p.pid, libc::SIGUSR2) };
    std::thread::sleep(Duration::from_millis(30));
    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    let img = s.collect().expect("collect");
    let signos: Vec<i32> = img
        .pending
        .iter()
        .map(|ps| i32::from_ne_bytes(ps.info[..4].try_into().unwrap()))
        .collect();
    assert!(signos.contains(&libc::SIGUSR2), "{signos:?}");
    let mut bytes = Vec::new();
    s.stream(&img, &mut bytes).expect("stream");
    let migrate::Finished::Parked(mut sh) = s.finish(migrate::Ending::ParkAsHomeShell).unwrap()
    else {
        panic!("not parked")
    };
    // the shell unblocks everything: an undrained USR2 would show up here a second time
    assert_eq!(sh.next_event(Duration::from_millis(300)).unwrap(), None);
    let st = status(p.pid);
    assert!(st.contains("SigPnd:\t0000000000000000"), "{st}");
    assert!(st.contains("ShdPnd:\t0000000000000000"), "{st}");
    // the image still has it: thawed, the program finds USR2 pending and handles it
    let t = migrate::thaw(&bytes[..], &Default::default()).expect("thaw");
    let mut q = Proc::new(t.pid);
    // SIGKILL cannot be intercepted: the shell reports the end, the parent sees SIGKILL
    // SAFETY: signal to our own child.
    unsafe { libc::kill(p.pid, libc::SIGKILL) };
    let ev = sh.next_event(T).unwrap().expect("end");
    let ShellEvent::Ended { status } = ev else {
        panic!("{ev:?}")
    };
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL,
        "{status:#x}"
    );
    let st = p.wait(T);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
        "{st:#x}"
    );
    assert!(exited_ok(q.wait(T)));
    let o = read(&out);
    assert!(
        o.contains("usr2 pending 1\nusr2 delivered 1\nDONE ok\n"),
        "{o}"
    );
}

#[test]
fn a_process_with_thousands_of_mappings_is_trimmed_too() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("manymaps")).args(["3000", "100000"]),
        &out,
        None,
    );
    wait_lines(&out, 1, T);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", p.pid)).unwrap();
    assert!(
        maps.lines().count() > 3000,
        "{} mappings",
        maps.lines().count()
    );
    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    let img = s.collect().expect("collect");
    s.stream(&img, std::io::sink()).expect("stream");
    let migrate::Finished::Parked(mut sh) = s.finish(migrate::Ending::ParkAsHomeShell).unwrap()
    else {
        panic!("not parked")
    };
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", p.pid)).unwrap();
    assert!(maps.lines().count() <= 5, "left:\n{maps}");
    wait_paused(p.pid);
    let raw = sh.exit(9).expect("exit");
    assert!(libc::WIFEXITED(raw) && libc::WEXITSTATUS(raw) == 9);
    let st = p.wait(T);
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 9, "{st:#x}");
}

#[test]
fn an_injected_call_that_blocks_is_interrupted_and_the_shell_stays_usable() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let (mut p, _img, mut sh) = parked(dir.path(), "100000", "1");
    sh.set_call_timeout(Duration::from_millis(300)).unwrap();
    // opening a FIFO for reading blocks until a writer comes: none will
    let t0 = std::time::Instant::now();
    let e = sh
        .syscall(
            libc::SYS_openat,
            vec![
                ShellArg::Val(libc::AT_FDCWD as u64),
                ShellArg::In(b"fifo\0".to_vec()),
                ShellArg::Val(libc::O_RDONLY as u64),
            ],
        )
        .expect_err("a blocked call must time out");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // the open was abandoned: no reader holds the FIFO, and P has no new fd
    // SAFETY: valid C string.
    let w = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
    assert_eq!(w, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENXIO)
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", p.pid))
        .unwrap()
        .count();
    // the shell goes on working
    wait_paused(p.pid);
    let (r, _) = sh.syscall(libc::SYS_getppid, vec![]).expect("getppid");
    // SAFETY: getpid has no preconditions.
    assert_eq!(r, unsafe { libc::getpid() } as i64);
    assert_eq!(
        std::fs::read_dir(format!("/proc/{}/fd", p.pid))
            .unwrap()
            .count(),
        fds
    );
    wait_paused(p.pid);
    sh.exit(0).expect("exit");
    assert!(exited_ok(p.wait(T)));
}
