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

fn nobody_owner() -> migrate::ThawOwner {
    // this test's own limits and oom_score_adj (the programs inherit them), nobody's ids
    let me = migrate::ThawOwner::of_process(std::process::id() as i32).expect("own /proc");
    migrate::ThawOwner {
        uid: NOBODY,
        groups: vec![NOBODY],
        ..me
    }
}

fn no_child_left() {
    let mut st = 0;
    // SAFETY: non-blocking check for any remaining child.
    let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) };
    assert!(r <= 0, "a half-built process was left behind ({r})");
}

/// A thaw for an unprivileged user (what a root daemon does for a caller): the user's own
/// image comes back running as that user; the image is refused for anyone else, and for a
/// user with fewer groups or lower limits than it asks for, before anything is made.
#[test]
fn a_thaw_for_a_user_runs_as_that_user_and_refuses_images_that_are_not_theirs() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = dir.path().join("out");
    let mut c = Command::new(prog("counter"));
    c.args(["40", "1", "10"]).uid(NOBODY).gid(NOBODY);
    let mut p = spawn(&mut c, &out, None);
    // its stdout file is one nobody may write (the thaw for nobody opens it again as nobody)
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);

    let refused = |owner: migrate::ThawOwner, why: &str| {
        let e = thaw_with(
            &img,
            migrate::ThawOptions {
                owner: Some(owner),
                ..Default::default()
            },
        )
        .expect_err("an image that is not the owner's was thawed");
        assert!(
            matches!(e, migrate::Error::NotOwner { .. }) && e.to_string().contains(why),
            "{e}"
        );
        no_child_left();
    };
    refused(
        migrate::ThawOwner {
            uid: 1000,
            ..nobody_owner()
        },
        "runs as uid 65534, you are uid 1000",
    );
    refused(
        migrate::ThawOwner {
            groups: vec![1000],
            ..nobody_owner()
        },
        "group 65534",
    );
    let mut low = nobody_owner();
    low.hard_limits[7].1 = 3; // RLIMIT_NOFILE
    refused(low, "hard limit 7");
    refused(
        migrate::ThawOwner {
            oom_score_adj: 500,
            ..nobody_owner()
        },
        "oom_score_adj",
    );

    let t = thaw_with(
        &img,
        migrate::ThawOptions {
            owner: Some(nobody_owner()),
            ..Default::default()
        },
    )
    .expect("thaw for its owner");
    let mut q = Proc::new(t.pid);
    let st = std::fs::read_to_string(format!("/proc/{}/status", t.pid)).unwrap();
    assert!(st.contains("Uid:\t65534\t65534\t65534\t65534"), "{st}");
    assert!(st.contains("Gid:\t65534\t65534\t65534\t65534"), "{st}");
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"), "{}", read(&out));
}

/// The files of an image thawed for a user are opened as that user, never as root: a
/// process that opened a root-only file and then dropped to nobody is thawed by root as
/// before, but a thaw for nobody cannot open that file and is refused, leaving nothing.
#[test]
fn a_thaw_for_a_user_opens_files_as_that_user() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = dir.path().join("out");
    let script = format!(
        "import os, time\n\
         f = open({secret:?})\n\
         os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n\
         print('dropped', flush=True)\n\
         for i in range(400):\n    time.sleep(0.01)\n\
         print(f.read(), end='', flush=True)\n",
        secret = secret.to_str().unwrap()
    );
    let mut p = spawn(
        Command::new("/usr/bin/python3").args(["-c", &script]),
        &out,
        None,
    );
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
    let end = std::time::Instant::now() + T;
    while !read(&out).contains("dropped") {
        assert!(
            p.alive() && std::time::Instant::now() < end,
            "{}",
            read(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let e = thaw_with(
        &img,
        migrate::ThawOptions {
            owner: Some(nobody_owner()),
            ..Default::default()
        },
    )
    .expect_err("a thaw for nobody opened a root-only file");
    assert!(
        e.to_string().contains("secret") && e.to_string().contains("denied"),
        "{e}"
    );
    no_child_left();
    // root's own thaw restores it as before: the fd reads the file
    let mut q = thaw(&img);
    assert!(exited_ok(q.wait(T)));
    assert!(
        read(&out).ends_with("dropped\nroot only\n"),
        "{}",
        read(&out)
    );
}
