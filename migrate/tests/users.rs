//! Images and users: a freeze never ends a process its caller could not thaw. Needs root (to
//! run the target and the freezing command as the unprivileged user nobody).

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

const NOBODY: u32 = 65534;

#[test]
fn a_user_who_cannot_thaw_cannot_end_the_process_but_can_checkpoint_it() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = dir.path().join("out");
    let mut c = Command::new(prog("counter"));
    c.args(["300", "1", "10"]).uid(NOBODY).gid(NOBODY);
    let p = spawn(&mut c, &out, None);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_migrate-cli"))
            .args(args)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let img = dir.path().join("img");
    let pid = p.pid.to_string();
    let o = cli(&["freeze", &pid, img.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "nobody's freeze succeeded: {err}");
    assert!(err.contains("could not thaw"), "unexpected refusal: {err}");
    assert!(p.alive(), "the refused freeze ended the process");
    // the process was not touched: it is not traced and runs on
    let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    assert!(st.contains("TracerPid:\t0"), "{st}");

    // a checkpoint, which leaves it running, is allowed
    let o = cli(&["freeze", &pid, img.to_str().unwrap(), "--leave-running"]);
    assert!(
        o.status.success(),
        "nobody's checkpoint failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(p.alive(), "the checkpoint ended the process");
    assert!(std::fs::metadata(&img).unwrap().len() > 0);
}
