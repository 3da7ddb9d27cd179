//! A non-root user freezes and thaws their own processes through the daemon (issue 8 part 7):
//! a real unprivileged uid (nobody) runs the CLI against a real one-node daemon (root). The
//! image is the user's file (0600); the thawed process runs as the user; the daemon refuses
//! to freeze what the user could not thaw (the process runs on untouched) and to thaw an image
//! of another uid. Needs root (to run the daemon and switch to nobody).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use omnode_tests::moving::{can_run, cluster, logs};
use omnode_tests::{omnode_bin, wait_for};

const NOBODY: u32 = 65534;

/// Kills and reaps the program on drop (also on failure).
struct Prog(Child);
impl Drop for Prog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A python loop as `uid` writing `n` numbered lines into `out` (its own file), then
/// exiting with status 3. Its stdio is /dev/null.
fn counter(uid: u32, out: &Path, n: u32) -> Prog {
    counter_with(uid, out, n, "")
}

/// [`counter`] running `pre` (python) first.
fn counter_with(uid: u32, out: &Path, n: u32, pre: &str) -> Prog {
    let script = format!(
        "{pre}\nimport time\nf = open({:?}, 'a')\nfor i in range({n}):\n    f.write(f'{{i}}\\n'); f.flush(); time.sleep(0.01)\nf.write('done\\n'); f.close()\nraise SystemExit(3)\n",
        out.to_str().unwrap()
    );
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-c", &script])
        .current_dir(out.parent().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if uid != 0 {
        c.uid(uid).gid(uid);
    }
    // SAFETY: close_range is async-signal-safe; fds a test harness leaked are not the program's
    unsafe {
        c.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            Ok(())
        });
    }
    let p = Prog(c.spawn().expect("python3"));
    wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(out)
            .ok()
            .filter(|s| s.lines().count() >= 3)
    })
    .expect("the counter never started");
    p
}

fn as_user(uid: u32, sock: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(omnode_bin());
    c.args(args).args(["--socket", sock.to_str().unwrap()]);
    if uid != 0 {
        c.uid(uid).gid(uid);
    }
    c.stdin(Stdio::null()).output().expect("run omnode")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
}

#[test]
fn a_user_freezes_and_thaws_their_own_process_through_the_daemon() {
    if !can_run("a_user_freezes_and_thaws_their_own_process_through_the_daemon") {
        return;
    }
    let c = cluster("1 127.0.17.1 1\n", &[1]);
    // nobody reaches the socket (the cluster's directory is root's)
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = c.socket(1);
    let dir = tempfile::Builder::new()
        .prefix("h8-users")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();

    // nobody's own process: frozen through the daemon into nobody's own 0600 file
    let out = dir.path().join("count");
    let mut p = counter(NOBODY, &out, 1000);
    let pid = p.0.id();
    let img = dir.path().join("img");
    let o = as_user(
        NOBODY,
        &sock,
        &["freeze", &pid.to_string(), "--image", img.to_str().unwrap()],
    );
    assert!(
        o.status.success(),
        "freeze: {}\n{}",
        text(&o),
        logs(&c, &[1])
    );
    assert!(text(&o).contains("through the daemon"), "{}", text(&o));
    let _ = p.0.wait(); // ended by the freeze
    let md = std::fs::metadata(&img).unwrap();
    assert_eq!((md.mode() & 0o777, md.uid()), (0o600, NOBODY));
    let before = std::fs::read_to_string(&out).unwrap();
    assert!(!before.contains("done"), "it finished before the freeze");

    // and thawed through the daemon: it runs as nobody and finishes its count, with --wait
    // reporting its exit status
    let o = as_user(NOBODY, &sock, &["thaw", img.to_str().unwrap(), "--wait"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "thaw --wait: {}\n{}",
        text(&o),
        logs(&c, &[1])
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("thawed process") && o.stdout.is_empty(),
        "{}",
        text(&o)
    );
    let after = std::fs::read_to_string(&out).unwrap();
    let want: String = (0..1000)
        .map(|i| format!("{i}\n"))
        .chain(["done\n".into()])
        .collect();
    assert_eq!(
        after, want,
        "the count did not continue where it was frozen"
    );

    // --print-pid: the PID alone on stdout; the thawed process runs as nobody
    std::fs::write(&out, "").unwrap();
    let mut p = counter(NOBODY, &out, 300);
    let o = as_user(
        NOBODY,
        &sock,
        &[
            "freeze",
            &p.0.id().to_string(),
            "--image",
            img.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "freeze: {}", text(&o));
    let _ = p.0.wait();
    let o = as_user(
        NOBODY,
        &sock,
        &["thaw", img.to_str().unwrap(), "--print-pid"],
    );
    assert!(o.status.success(), "thaw: {}\n{}", text(&o), logs(&c, &[1]));
    let q: u32 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("a PID");
    let st = std::fs::read_to_string(format!("/proc/{q}/status")).unwrap_or_default();
    assert!(st.contains("Uid:\t65534\t65534\t65534\t65534"), "{st}");
    wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|s| s.ends_with("done\n"))
    })
    .expect("the thawed process never finished");
}

#[test]
fn the_daemon_never_freezes_or_thaws_across_users() {
    if !can_run("the_daemon_never_freezes_or_thaws_across_users") {
        return;
    }
    let c = cluster("1 127.0.17.2 1\n", &[1]);
    std::fs::set_permissions(c.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let sock = c.socket(1);
    let dir = tempfile::Builder::new()
        .prefix("h8-users")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();

    // root's process: nobody's freeze through the daemon is refused and it runs on untouched
    let out = dir.path().join("root-count");
    let mut p = counter(0, &out, 1000);
    let pid = p.0.id();
    let img = dir.path().join("img");
    let o = as_user(
        NOBODY,
        &sock,
        &["freeze", &pid.to_string(), "--image", img.to_str().unwrap()],
    );
    assert!(!o.status.success(), "nobody froze root's process");
    assert!(text(&o).contains("you could not thaw it"), "{}", text(&o));
    assert!(alive(pid), "the refused freeze ended the process");
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(st.contains("TracerPid:\t0"), "{st}");
    assert!(!img.exists(), "a refused freeze left an image behind");

    // root's image, even readable: nobody's thaw through the daemon is refused
    let o = as_user(
        0,
        &sock,
        &["freeze", &pid.to_string(), "--image", img.to_str().unwrap()],
    );
    assert!(o.status.success(), "root's freeze: {}", text(&o));
    let _ = p.0.wait();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = as_user(
        NOBODY,
        &sock,
        &["thaw", img.to_str().unwrap(), "--print-pid"],
    );
    assert!(
        !o.status.success(),
        "nobody thawed root's image: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("not yours to thaw") && text(&o).contains("uid 0"),
        "{}",
        text(&o)
    );
    assert!(o.stdout.is_empty());

    // nobody's own process that hides its memory from its own user (not dumpable, as
    // ssh-agent does): refused, and it runs on untouched
    let out = dir.path().join("hidden-count");
    let p = counter_with(
        NOBODY,
        &out,
        1000,
        "import ctypes; ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)",
    );
    let pid = p.0.id();
    let img2 = dir.path().join("img2");
    let o = as_user(
        NOBODY,
        &sock,
        &[
            "freeze",
            &pid.to_string(),
            "--image",
            img2.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success(), "nobody froze a non-dumpable process");
    assert!(text(&o).contains("not dumpable"), "{}", text(&o));
    assert!(alive(pid), "the refused freeze ended the process");
}
