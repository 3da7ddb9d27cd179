//! `omnode freeze --tree` / `omnode thaw` of a shell pipeline, as a user runs them: the
//! thawed tree writes exactly what an uninterrupted run writes, and `omnode image` describes
//! the tree. Needs root (ptrace, clone3 with chosen PIDs).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tree freeze/thaw CLI tests need root (ptrace, clone3 set_tid) and CI=true is set"
        );
        eprintln!("SKIPPED: tree freeze/thaw CLI tests need root (ptrace, clone3 set_tid)");
        return false;
    }
    true
}

fn no_inherited_fds(c: &mut Command) -> &mut Command {
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    }
}

fn omnode() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_omnode"));
    c.stdin(Stdio::null());
    no_inherited_fds(&mut c);
    c
}

const SCRIPT: &str = "seq 3000000 | sort -rn | md5sum";

fn pipeline(out: &Path) -> Child {
    let f = std::fs::File::create(out).unwrap();
    let e = std::fs::File::create(out.with_extension("err")).unwrap();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(e);
    no_inherited_fds(&mut c);
    c.spawn().unwrap()
}

fn children(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|k| {
            std::fs::read_to_string(format!("/proc/{k}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

/// Kills on drop (the thawed tree's root, should the test fail).
struct Kill(Vec<i32>);
impl Drop for Kill {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill with integer arguments (processes this test made).
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_pipeline_frozen_as_a_tree_and_thawed_writes_the_same_checksum() {
    if !root() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("h8tree-cli-")
        .tempdir()
        .unwrap();
    let reference = dir.path().join("ref");
    let st = pipeline(&reference).wait().unwrap();
    assert!(st.success());
    let reference = std::fs::read_to_string(&reference).unwrap();
    assert!(reference.ends_with("  -\n"), "{reference:?}");

    let out = dir.path().join("out");
    let mut sh = pipeline(&out);
    let end = Instant::now() + Duration::from_secs(60);
    while children(sh.id()).len() < 3 {
        assert!(Instant::now() < end, "the pipeline never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(300));
    let img = dir.path().join("tree.img");
    let o = omnode()
        .args(["freeze", "--tree", &sh.id().to_string(), "--image"])
        .arg(&img)
        .output()
        .unwrap();
    let _k = Kill(vec![sh.id() as i32]);
    assert!(
        o.status.success(),
        "freeze --tree failed: {} (the pipeline's stderr: {})",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(out.with_extension("err")).unwrap_or_default()
    );
    let st = sh.wait().unwrap();
    assert!(!st.success(), "the frozen shell was ended");

    let o = omnode().arg("image").arg(&img).output().unwrap();
    let desc = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(desc.starts_with("tree image: 4 processes"), "{desc}");
    // seq may have ended already (a zombie then, its pipe gone with it)
    assert!(desc.matches("  pipe (").count() >= 1, "{desc}");

    let o = omnode()
        .args(["thaw", "--wait", "--same-pid"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "thawed tree failed: {:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), reference);
}
