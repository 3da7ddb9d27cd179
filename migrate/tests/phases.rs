//! The engine's phases used one by one, and the thaw options of the remote side of a migration:
//! fd placeholders and a seccomp user-notification filter (needs root; skipped with a message
//! otherwise, a failure under CI=true).

mod common;
use common::*;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

/// Runs the counter uninterrupted; returns its output.
fn reference(dir: &std::path::Path, args: &[&str]) -> String {
    let out = dir.join("ref");
    let mut r = spawn(Command::new(prog("counter")).args(args), &out, None);
    assert!(exited_ok(r.wait(T)));
    let s = read(&out);
    assert!(s.ends_with("DONE ok\n"), "{s}");
    s
}

#[test]
fn phases_one_by_one_checkpoint_and_restore() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = ["40", "4", "10"];
    let want = reference(dir.path(), &args);
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("counter")).args(args), &out, None);
    std::thread::sleep(Duration::from_millis(150));

    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    // a kill before the image is streamed is refused and changes nothing
    let img = s.collect().expect("collect");
    assert_eq!(img.pid, p.pid);
    let mut bytes = Vec::new();
    let st = s.stream(&img, &mut bytes).expect("stream");
    assert_eq!(st.image_bytes as usize, bytes.len());
    assert!(st.page_bytes >= 4 << 20, "the 4 MiB heap was not shipped");
    assert!(matches!(
        s.finish(migrate::Ending::Release).expect("release"),
        migrate::Finished::Released
    ));
    // the original runs on, untraced, to the same end
    let status = read_file(&format!("/proc/{}/status", p.pid));
    assert!(status.contains("TracerPid:\t0"), "left traced");
    assert!(exited_ok(p.wait(T)));
    assert_eq!(read(&out), want);

    // the image, thawed phase by phase, runs to the same end too (after the original wrote
    // its output, the counter's output file is reopened at the frozen offset: start afresh)
    std::fs::write(&out, "").unwrap();
    let mut r = migrate::ImageReader::new(&bytes[..]).expect("header");
    assert_eq!(r.process().pid, p.pid);
    let mut t = migrate::Thawing::skeleton(&r, &Default::default()).expect("skeleton");
    assert!(t.pages(&mut r).expect("pages") >= 4 << 20);
    t.attributes().expect("attributes");
    t.fds().expect("fds");
    let th = t.run().expect("run");
    assert!(th.listener.is_none());
    let mut q = Proc::new(th.pid);
    assert!(exited_ok(q.wait(T)));
    // nothing had been flushed when it was frozen (stdout to a file is fully buffered)
    assert_eq!(read(&out), want);
}

#[test]
fn kill_before_the_image_is_streamed_is_refused_and_the_process_runs_on() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = ["40", "1", "10"];
    let want = reference(dir.path(), &args);
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("counter")).args(args), &out, None);
    std::thread::sleep(Duration::from_millis(100));
    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    s.collect().expect("collect");
    let e = s
        .finish(migrate::Ending::Kill)
        .expect_err("kill without a complete image");
    assert!(e.to_string().contains("not completely streamed"), "{e}");
    assert!(exited_ok(p.wait(T)), "the process was lost");
    assert_eq!(read(&out), want);
}

#[test]
fn dropping_a_seized_process_puts_it_back() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = ["40", "1", "10"];
    let want = reference(dir.path(), &args);
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("counter")).args(args), &out, None);
    std::thread::sleep(Duration::from_millis(100));
    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    let img = s.collect().expect("collect");
    let mut sink = Vec::new();
    s.stream(&img, &mut sink).expect("stream");
    drop(s);
    let status = read_file(&format!("/proc/{}/status", p.pid));
    assert!(status.contains("TracerPid:\t0"), "left traced");
    assert!(exited_ok(p.wait(T)));
    assert_eq!(read(&out), want);
}

#[test]
fn a_vanished_process_is_process_gone() {
    let e = migrate::seize(0x3fff_fff0, Duration::from_secs(1)).expect_err("no such pid");
    assert_eq!(e.kind(), migrate::ErrorKind::ProcessGone, "{e}");
    assert_eq!(e.refusal(), None);
}

fn read_file(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn a_placeholder_takes_the_place_of_a_reopened_file() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = ["40", "1", "10"];
    let want = reference(dir.path(), &args);
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("counter")).args(args), &out, None);
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let before = read(&out);

    // a placeholder for an fd the image does not have is refused
    let (rd, wr) = pipe();
    let bad = migrate::ThawOptions {
        fd_placeholders: vec![(77, wr.as_raw_fd())],
        ..Default::default()
    };
    let e = migrate::thaw(&img[..], &bad).expect_err("fd 77 is not in the image");
    assert!(e.to_string().contains("fd 77"), "{e}");

    // fd 1 (the output file) becomes our pipe: everything it writes after the thaw comes here
    let opts = migrate::ThawOptions {
        fd_placeholders: vec![(1, wr.as_raw_fd())],
        ..Default::default()
    };
    let t = migrate::thaw(&img[..], &opts).expect("thaw");
    let mut q = Proc::new(t.pid);
    drop(wr);
    let mut got = String::new();
    std::fs::File::from(rd).read_to_string(&mut got).unwrap();
    assert!(exited_ok(q.wait(T)));
    assert_eq!(read(&out), before, "the file was written after the thaw");
    assert_eq!(format!("{before}{got}"), want);
}

/// A filter that sends getppid to the listener and allows everything else (x86_64 only).
fn getppid_filter() -> migrate::SeccompFilter {
    filter_trapping(&[libc::SYS_getppid])
}

/// A filter that sends the calls `nrs` to the listener and allows everything else.
fn filter_trapping(nrs: &[i64]) -> migrate::SeccompFilter {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let mut p = vec![
        stmt(ld, 4), // arch
        jump(jeq, AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(ld, 0), // nr
    ];
    // tests at 4.., then ALLOW at 4+n, USER_NOTIF at 4+n+1: a match jumps n-i ahead
    let n = nrs.len();
    for (i, &nr) in nrs.iter().enumerate() {
        p.push(jump(jeq, nr as u32, (n - i) as u8, 0));
    }
    p.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    p.push(stmt(ret, libc::SECCOMP_RET_USER_NOTIF));
    migrate::SeccompFilter(p)
}

/// Answers getppid notifications on `l` with `val` and lets every other call run ("continue"),
/// until the listener reports no more users; returns the syscall numbers seen.
fn serve(l: OwnedFd, val: i64) -> Vec<i32> {
    let mut seen = Vec::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: l.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 30_000) };
        assert!(n == 1, "no notification and no end within 30 s");
        if pfd.revents & libc::POLLHUP != 0 && pfd.revents & libc::POLLIN == 0 {
            return seen;
        }
        // SAFETY: zeroed plain struct, filled by the kernel.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the ioctl writes one seccomp_notif.
        if unsafe { libc::ioctl(l.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                continue;
            }
            panic!("NOTIF_RECV: {e}");
        }
        seen.push(req.data.nr);
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val,
            error: 0,
            flags: 0,
        };
        if req.data.nr as i64 != libc::SYS_getppid {
            resp.val = 0;
            resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32;
        }
        // SAFETY: the ioctl reads one seccomp_notif_resp.
        unsafe { libc::ioctl(l.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
}

#[test]
fn a_thawed_process_gets_the_filter_and_the_caller_its_listener() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("ppid")).arg("30"), &out, None);
    wait_lines(&out, 1, T);
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    assert_eq!(read(&out), format!("start ppid {me}\n"));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let opts = migrate::ThawOptions {
        seccomp_filter: Some(getppid_filter()),
        ..Default::default()
    };
    let t = migrate::thaw(&img[..], &opts).expect("thaw with a filter");
    let mut q = Proc::new(t.pid);
    let status = read_file(&format!("/proc/{}/status", t.pid));
    assert!(status.contains("Seccomp:\t2"), "no filter: {status}");
    // the thawed process keeps no copy of its own listener
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", t.pid))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    assert!(
        !fds.iter().any(|l| l.contains("seccomp")),
        "listener left in the process: {fds:?}"
    );
    let l = t.listener.expect("listener");
    let server = std::thread::spawn(move || serve(l, 4242));
    assert!(exited_ok(q.wait(T)));
    let seen = server.join().unwrap();
    assert_eq!(
        seen,
        vec![libc::SYS_getppid as i32],
        "only getppid is trapped"
    );
    assert_eq!(
        read(&out),
        format!("start ppid {me}\nend ppid 4242\n"),
        "the answer from the listener was not what the program saw"
    );
}

#[test]
fn calls_the_thaw_injects_after_the_filter_run_even_when_the_filter_traps_them() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("ppid")).arg("30"), &out, None);
    wait_lines(&out, 1, T);
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    // everything the run phase injects (credentials, prctl, close of the listener, rseq,
    // munmap of the trampoline) is trapped: the engine must answer them itself
    let trapped = [
        libc::SYS_getppid,
        libc::SYS_setgroups,
        libc::SYS_setresgid,
        libc::SYS_setresuid,
        libc::SYS_prctl,
        libc::SYS_close,
        libc::SYS_rseq,
        libc::SYS_munmap,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
        libc::SYS_setitimer,
    ];
    let opts = migrate::ThawOptions {
        seccomp_filter: Some(filter_trapping(&trapped)),
        ..Default::default()
    };
    let t = migrate::thaw(&img[..], &opts).expect("thaw with a broad filter");
    let mut q = Proc::new(t.pid);
    let l = t.listener.expect("listener");
    let server = std::thread::spawn(move || serve(l, 4242));
    assert!(exited_ok(q.wait(T)));
    let seen = server.join().unwrap();
    assert!(seen.contains(&(libc::SYS_getppid as i32)), "{seen:?}");
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    assert_eq!(read(&out), format!("start ppid {me}\nend ppid 4242\n"));
}
