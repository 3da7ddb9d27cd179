//! Comparing a run interrupted by freeze/thaw cycles with an uninterrupted run, byte for byte.

use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `mk(dir, tag)` uninterrupted and again with `cycles` freeze/thaw cycles `delay` apart;
/// returns (reference output, migrated output) of the file `mk` names. `check_image` looks at
/// every image taken.
pub fn compare(
    mk: &dyn Fn(&Path, &str) -> (Command, PathBuf),
    check_image: &dyn Fn(&[u8]),
    delay: Duration,
    cycles: usize,
) -> (Vec<u8>, Vec<u8>) {
    compare_when(mk, &|_| true, check_image, delay, cycles)
}

/// [`compare`], each freeze also waiting (up to [`T`]) until `ready(pid)` holds.
pub fn compare_when(
    mk: &dyn Fn(&Path, &str) -> (Command, PathBuf),
    ready: &dyn Fn(i32) -> bool,
    check_image: &dyn Fn(&[u8]),
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
        let end = std::time::Instant::now() + T;
        while !ready(p.pid) && p.alive() {
            assert!(
                std::time::Instant::now() < end,
                "never ready for freeze #{i}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(p.alive(), "finished before freeze #{i}; make it run longer");
        let img = freeze(p.pid, false).unwrap_or_else(|e| panic!("freeze #{i}: {e}"));
        check_image(&img);
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

pub fn assert_same(r: &[u8], m: &[u8]) {
    let (rs, ms) = (String::from_utf8_lossy(r), String::from_utf8_lossy(m));
    assert!(!ms.contains("BAD"), "migrated run reported:\n{ms}");
    assert!(
        r == m,
        "migrated output differs from the uninterrupted run:\n--- ref\n{rs}\n--- migrated\n{ms}"
    );
}
