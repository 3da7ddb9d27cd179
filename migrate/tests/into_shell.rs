//! Thawing INTO the parked home shell (a moved process coming home), with real processes: a
//! child of this test is frozen and parked, then its own image is rebuilt into it; it runs on
//! as the same process (same PID, parent, fds) and its output equals an uninterrupted run's.
//! A failed thaw leaves a working parked shell. Needs root (skipped with a message otherwise,
//! a failure under CI=true).

mod common;
use common::*;
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
    let mut t = migrate::Thawing::into_shell(&mut reader, sh, &[])
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
    let mut t = migrate::Thawing::into_shell(&mut reader, sh, &[])
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
