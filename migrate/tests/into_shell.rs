//! Thawing INTO the parked home shell (a moved process coming home), with real processes: a
//! child of this test is frozen and parked, then its own image is rebuilt into it; it runs on
//! as the same process (same PID, parent, fds) and its output equals an uninterrupted run's.
//! A failed thaw leaves a working parked shell. Needs root (skipped with a message otherwise,
//! a failure under CI=true).

mod common;
use common::*;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

/// The counter (`iters` × 10 ms, 1 MiB heap) writing to `dir/NAME`, frozen and parked after
/// 150 ms: the process, its output file, its image and the shell.
fn parked(
    dir: &std::path::Path,
    name: &str,
    iters: &str,
) -> (Proc, std::path::PathBuf, Vec<u8>, migrate::HomeShell) {
    let out = dir.join(name);
    let mut c = Command::new(prog("counter"));
    c.args([iters, "1", "10"]).current_dir(dir);
    let p = spawn(&mut c, &out, None);
    std::thread::sleep(Duration::from_millis(150));
    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    let img = s.collect().expect("collect");
    let mut bytes = Vec::new();
    s.stream(&img, &mut bytes).expect("stream");
    let shell = match s.finish(migrate::Ending::ParkAsHomeShell).expect("park") {
        migrate::Finished::Parked(sh) => sh,
        other => panic!("not parked: {other:?}"),
    };
    (p, out, bytes, shell)
}

/// What the deputy holds while the process is away: pidfd_getfd copies of its fds that stay
/// at home, by number.
fn deputy_copies(pid: i32, img: &migrate::ProcessImage) -> Vec<(i32, OwnedFd)> {
    // SAFETY: pidfd_open with integer arguments; on success a new fd we own.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        pidfd >= 0,
        "pidfd_open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh fd.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    migrate::home_backed(&img.fds)
        .into_iter()
        .map(|n| {
            // SAFETY: pidfd_getfd with integer arguments; on success a new fd we own.
            let f = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), n, 0) };
            assert!(
                f >= 0,
                "pidfd_getfd {n}: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fresh fd.
            (n, unsafe { OwnedFd::from_raw_fd(f as i32) })
        })
        .collect()
}

fn raw(fds: &[(i32, OwnedFd)]) -> Vec<(i32, std::os::fd::RawFd)> {
    fds.iter().map(|(n, f)| (*n, f.as_raw_fd())).collect()
}

fn status(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// The VmRSS of a process, in kB.
fn rss_kb(pid: i32) -> u64 {
    status(pid)
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for {pid}"))
}

#[test]
fn a_parked_process_takes_its_image_back_and_runs_on_as_itself() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut r = spawn(
        Command::new(prog("counter")).args(["40", "1", "10"]),
        &dir.path().join("ref"),
        None,
    );
    assert!(exited_ok(r.wait(T)));
    let reference = read(&dir.path().join("ref"));
    assert!(reference.ends_with("DONE ok\n"), "{reference}");

    let (mut p, out, img, sh) = parked(dir.path(), "mig", "40");
    assert!(rss_kb(p.pid) < 100, "not trimmed: {}", status(p.pid));
    std::thread::sleep(Duration::from_millis(100));
    let mut reader = migrate::ImageReader::new(&img[..]).expect("image");
    let copies = deputy_copies(p.pid, reader.process());
    assert!(!copies.is_empty(), "the counter has fds that stay home");
    // fail closed: without the deputy's copy of a home fd, P's own fd at that number (which
    // the process may have closed while away) is not taken instead; the shell stays parked
    let (sh, e) = match migrate::Thawing::into_shell(&mut reader, sh, &raw(&copies[1..])) {
        Ok(_) => panic!("a home fd without a deputy copy was accepted"),
        Err(x) => x,
    };
    let missing = copies[0].0;
    assert!(
        e.to_string().contains(&format!(
            "fd {missing} of the image stays at home but the deputy holds no copy"
        )),
        "{e}"
    );
    assert!(rss_kb(p.pid) < 100, "not parked: {}", status(p.pid));
    let mut t = migrate::Thawing::into_shell(&mut reader, sh, &raw(&copies))
        .unwrap_or_else(|(_, e)| panic!("into_shell: {e}"));
    assert_eq!(t.pid(), p.pid, "the same process, not a new one");
    t.pages(&mut reader).expect("pages");
    t.attributes().expect("attributes");
    t.fds().expect("fds");
    let done = t.run_home().unwrap_or_else(|(_, e)| panic!("run: {e}"));
    assert_eq!(done.pid, p.pid);
    // a normal process again: no tracer
    assert!(
        status(p.pid).contains("TracerPid:\t0\n"),
        "{}",
        status(p.pid)
    );
    let st = p.wait(T);
    assert!(exited_ok(st), "{st:#x}: {}", read(&out));
    assert_eq!(
        read(&out),
        reference,
        "output differs from the uninterrupted run"
    );
}

#[test]
fn a_failed_thaw_into_the_shell_leaves_it_parked_and_usable() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _out, img, sh) = parked(dir.path(), "out", "100000");
    // a stream cut in the middle of the memory contents: the skeleton is built (P emptied and
    // mapped), then the pages fail
    let cut = &img[..img.len() / 2];
    let mut reader = migrate::ImageReader::new(cut).expect("the process section is whole");
    let copies = deputy_copies(p.pid, reader.process());
    let mut t = migrate::Thawing::into_shell(&mut reader, sh, &raw(&copies))
        .unwrap_or_else(|(_, e)| panic!("into_shell: {e}"));
    let e = t
        .pages(&mut reader)
        .expect_err("a cut stream cannot give all pages");
    eprintln!("pages failed as expected: {e}");
    let mut sh = t.back_to_shell().expect("parked again");
    assert!(rss_kb(p.pid) < 100, "not emptied again: {}", status(p.pid));
    assert!(p.alive(), "the process was lost");
    // the shell still reports signals and ends the process as asked
    // SAFETY: signal to our own child.
    assert_eq!(unsafe { libc::kill(p.pid, libc::SIGUSR1) }, 0);
    let ev = sh.next_event(T).expect("event").expect("no event within T");
    assert!(
        matches!(&ev, migrate::ShellEvent::Signal { info, held: true } if info.signo == libc::SIGUSR1),
        "{ev:?}"
    );
    sh.suppress().unwrap();
    sh.exit(7).expect("exit");
    let st = p.wait(T);
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7, "{st:#x}");
}
