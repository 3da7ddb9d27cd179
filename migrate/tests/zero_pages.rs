//! Issue 8 part 9: anonymous pages that only map the shared zero page (read, never written)
//! are left out of the image, and the thawed program still reads zeros there and its data
//! everywhere else: its output equals an uninterrupted run's.

mod common;
use common::*;
use std::process::Command;

const PAGE: usize = 4096;

#[test]
fn zero_pages_left_out_and_read_back_as_zeros() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // uninterrupted run
    let plain_out = dir.path().join("plain");
    let mut plain = spawn(Command::new(prog("zeropages")).arg("30"), &plain_out, None);
    assert!(exited_ok(plain.wait(T)), "{}", read(&plain_out));
    let plain_text = read(&plain_out);
    assert!(
        plain_text.lines().last().unwrap().starts_with("ok "),
        "{plain_text}"
    );

    // frozen while it sleeps, thawed into a new process
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("zeropages")).arg("30"), &out, None);
    wait_lines(&out, 1, T);
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    // 8 MiB written (every 4th page of 32 MiB), 16 MiB only read: the image holds the
    // written pages and the program's few others, not the 16 MiB of zero pages
    let written = 8192 / 4 * PAGE;
    assert!(img.len() >= written, "image of {} bytes", img.len());
    assert!(
        img.len() < written + (4 << 20),
        "image of {} bytes: the zero pages were copied",
        img.len()
    );
    let mut t = thaw(&img);
    assert!(exited_ok(t.wait(T)), "{}", read(&out));
    assert_eq!(read(&out), plain_text);
}
