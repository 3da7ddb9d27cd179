//! Multi-threaded processes through freeze and thaw (needs root; skipped with a message
//! otherwise): real programs whose output must equal an uninterrupted run's, the round-trip
//! checker on every thread, and migration's refusal of threads (the remote supervisor and the
//! home shell know one thread only).

mod common;
use common::check::View;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `mk(dir, tag)` uninterrupted and again with `cycles` freeze/thaw cycles `delay` apart;
/// returns (reference output, migrated output) of the file `mk` names.
fn compare(
    mk: &dyn Fn(&Path, &str) -> (Command, PathBuf),
    delay: Duration,
    cycles: usize,
) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, out) = mk(dir.path(), "ref");
    let mut p = spawn(&mut c, &dir.path().join("ref.stdout"), None);
    let st = p.wait(T);
    let reference = std::fs::read(&out).unwrap_or_default();
    assert!(
        exited_ok(st),
        "reference run failed: {st:#x}: {}",
        String::from_utf8_lossy(&reference)
    );
    let (mut c, out) = mk(dir.path(), "mig");
    let mut p = spawn(&mut c, &dir.path().join("mig.stdout"), None);
    for i in 0..cycles {
        std::thread::sleep(delay);
        assert!(p.alive(), "finished before freeze #{i}; make it run longer");
        let img = freeze(p.pid, false).unwrap_or_else(|e| panic!("freeze #{i}: {e}"));
        p.wait(T); // the frozen original is gone
        p = thaw(&img);
    }
    let st = p.wait(T);
    let migrated = std::fs::read(&out).unwrap_or_default();
    assert!(
        exited_ok(st),
        "migrated run failed: {st:#x}: {}",
        String::from_utf8_lossy(&migrated)
    );
    (reference, migrated)
}

fn assert_same(r: &[u8], m: &[u8]) {
    let (rs, ms) = (String::from_utf8_lossy(r), String::from_utf8_lossy(m));
    assert!(!ms.contains("BAD"), "migrated run reported:\n{ms}");
    assert!(r == m, "migrated output differs from the uninterrupted run:\n--- ref\n{rs}\n--- migrated\n{ms}");
}

fn threads_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count()
}

/// Four pthreads computing, printing through the main thread, blocked in futex waits and
/// nanosleep at the freeze; their names, masks, TLS, FP registers, cached TIDs
/// (pthread_kill) and clear_child_tid (pthread_join) checked by the program itself.
#[test]
fn c_program_with_four_pthreads_output_identical() {
    if !root() {
        return;
    }
    let mk = |dir: &Path, tag: &str| {
        let mut c = Command::new(prog("threads4"));
        c.arg("150");
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare(&mk, Duration::from_millis(200), 3);
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}
