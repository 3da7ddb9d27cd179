//! Memory and process attributes across freeze/thaw, checked three ways: the round-trip checker
//! compares what /proc shows before and after; the program checks each attribute from the
//! inside after thaw; and its report equals that of an uninterrupted run. Needs root.

mod common;
use common::check::{View, round_trip};
use common::*;
use std::path::Path;
use std::process::Command;

fn data_file(dir: &Path) -> std::path::PathBuf {
    let f = dir.join("data");
    std::fs::write(&f, vec![b'd'; 2 * 4096]).unwrap();
    f
}

/// Starts `attrs` on its own data file and waits until it has set everything up.
fn start(dir: &Path, tag: &str) -> (Proc, std::path::PathBuf) {
    let sub = dir.join(tag);
    std::fs::create_dir_all(&sub).unwrap();
    let out = sub.join("out");
    let p = spawn(Command::new(prog("attrs")).arg(data_file(&sub)), &out, None);
    wait_lines(&out, 1, T);
    assert_eq!(read(&out), "ready\n", "attrs did not start cleanly");
    (p, out)
}

/// Asks the program for its inside checks and returns its report (without "ready").
fn report(p: &mut Proc, out: &Path) -> String {
    // SAFETY: signal to a process of this test.
    unsafe { libc::kill(p.pid, libc::SIGUSR1) };
    let st = p.wait(T);
    let r = read(out);
    assert!(exited_ok(st), "attrs failed ({st:#x}):\n{r}");
    r.strip_prefix("ready\n").unwrap_or(&r).to_string()
}

fn has_flag(v: &View, flag: &str) -> bool {
    v.get("vmflags")
        .iter()
        .any(|l| l.rsplit(": ").next().unwrap().split(' ').any(|f| f == flag))
}

#[test]
fn madvise_mlock_growsdown_shared_maps_prctl_and_oom_come_back_exactly() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // the uninterrupted run
    let (mut p, out) = start(dir.path(), "ref");
    let reference = report(&mut p, &out);
    assert!(reference.ends_with("DONE ok\n"), "{reference}");

    let (mut p, out) = start(dir.path(), "mig");
    // the checker is not vacuous: the original shows every attribute this test is about
    let before = View::of(p.pid);
    for f in [
        "dd", "dc", "wf", "hg", "nh", "sr", "rr", "lo", "lf", "nr", "gd",
    ] {
        assert!(
            has_flag(&before, f),
            "the original has no mapping with VmFlags {f}"
        );
    }
    assert!(before.get("status").contains(&"THP_enabled: 0".to_string()));
    assert_eq!(before.get("oom_score_adj"), ["123"]);
    assert_eq!(
        before.get("personality"),
        [format!("{:08x}", 0x0040000 | 0x0020000)]
    );
    assert!(
        before
            .get("fds")
            .iter()
            .any(|l| l.contains("/data") && l.ends_with("flags 010000000")),
        "no O_PATH fd: {:?}",
        before.get("fds")
    );
    assert!(
        before
            .get("maps")
            .iter()
            .any(|l| l.contains(" r--s ") && l.contains("/dev/zero")),
        "no read-only shared /dev/zero mapping: {:?}",
        before.get("maps")
    );

    let (mut q, diffs) = round_trip(&mut p, false);
    assert!(
        diffs.is_empty(),
        "after thaw /proc differs:\n{}",
        diffs.join("\n")
    );
    let migrated = report(&mut q, &out);
    assert_eq!(
        migrated, reference,
        "the thawed program's own checks differ"
    );
}

#[test]
fn checker_reports_a_changed_attribute() {
    if !root() {
        return;
    }
    // the checker must see a difference when there is one: change an attribute of a live
    // process between two views
    let dir = tempfile::tempdir().unwrap();
    let (p, _out) = start(dir.path(), "c");
    let a = View::of(p.pid);
    std::fs::write(format!("/proc/{}/oom_score_adj", p.pid), "7").unwrap();
    let b = View::of(p.pid);
    assert_eq!(
        b.diff_from(&a),
        ["oom_score_adj: - 123", "oom_score_adj: + 7"],
        "the checker missed the change"
    );
}

fn wait_stopped(pid: i32) {
    let end = std::time::Instant::now() + T;
    loop {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if st
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
        {
            return;
        }
        assert!(std::time::Instant::now() < end, "{pid} did not stop: {st}");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn checker_finds_no_difference_for_the_test_programs() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pages: Vec<u8> = (0..16 * 4096usize)
        .map(|i| ((i / 4096) * 31 + i % 4096) as u8)
        .collect();
    std::fs::write(d.join("pages"), pages).unwrap();
    let runs: Vec<(&str, Command)> = vec![
        ("counter", {
            let mut c = Command::new(prog("counter"));
            c.args(["40", "1", "10"]);
            c
        }),
        ("mapping", {
            let mut c = Command::new(prog("mapping"));
            c.arg(d.join("pages")).arg("40");
            c
        }),
        ("offset", {
            let mut c = Command::new(prog("offset"));
            c.arg(d.join("records")).arg("40");
            c
        }),
    ];
    for (name, mut c) in runs {
        for leave_running in [false, true] {
            let out = d.join(format!("{name}.{leave_running}.out"));
            let mut p = spawn(&mut c, &out, None);
            std::thread::sleep(std::time::Duration::from_millis(150));
            // stopped, so that nothing changes between the two views
            // SAFETY: signal to a process of this test.
            unsafe { libc::kill(p.pid, libc::SIGSTOP) };
            wait_stopped(p.pid);
            let (mut q, diffs) = {
                let before = View::of(p.pid);
                let img = freeze(p.pid, leave_running).expect("freeze");
                if !leave_running {
                    p.wait(T);
                }
                let q = thaw(&img);
                wait_stopped(q.pid);
                let d = View::of(q.pid).diff_from(&before);
                (q, d)
            };
            assert!(
                diffs.is_empty(),
                "{name} (leave_running {leave_running}): /proc differs after thaw:\n{}",
                diffs.join("\n")
            );
            // SAFETY: signals to processes of this test.
            unsafe { libc::kill(q.pid, libc::SIGCONT) };
            assert!(
                exited_ok(q.wait(T)),
                "{name}: thawed copy failed: {}",
                read(&out)
            );
            if leave_running {
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
                p.wait(T);
            }
        }
    }
}
