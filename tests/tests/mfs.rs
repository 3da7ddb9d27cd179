//! MFS through real mounts: three real `omnode` daemons on 127.0.0.111-113, each serving a
//! temp dir and mounting `/mfs` at another; files are checked against the exported dirs.
//! Needs root (mount) and omnode built with `--features mfs` (the README's test command does).
#![cfg(feature = "mfs")]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use omnode_tests::{free_port, omnode_bin, run_cli, wait_for};

const BASE: u8 = 111;

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Mounting needs root; under CI the test must run, so it fails there instead of skipping.
fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root (it mounts FUSE file systems); CI must run it as root"
    );
    eprintln!("skipping {test}: needs root to mount /mfs");
    false
}

/// Real daemons with their exports and mounts; all killed and unmounted on drop.
struct Mfs {
    dir: tempfile::TempDir,
    port: u16,
    base: u8,
    nodes: Vec<(u32, Child)>,
}

impl Mfs {
    fn new() -> Mfs {
        Mfs::at(BASE)
    }
    fn at(base: u8) -> Mfs {
        Mfs::on("127.0.0", base)
    }
    /// Nodes at `net.base`, `net.base+1`, ... (`net`: the first three bytes of the address).
    fn on(net: &'static str, base: u8) -> Mfs {
        let dir = tempfile::tempdir().unwrap();
        // Traversable by every uid: permission tests act as nobody.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("map"), format!("1 {net}.{base} 3\n")).unwrap();
        let key = dir.path().join("key");
        assert!(
            run_cli(&["keygen", "--out", key.to_str().unwrap()])
                .status
                .success()
        );
        for n in 1..=3 {
            for d in ["export", "mnt"] {
                let p = dir.path().join(format!("{d}{n}"));
                std::fs::create_dir(&p).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        Mfs {
            dir,
            port: free_port(),
            base,
            nodes: Vec::new(),
        }
    }
    fn export(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("export{n}"))
    }
    fn mnt(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("mnt{n}"))
    }
    fn start(&mut self, n: u32) {
        let (export, key) = (self.export(n), self.dir.path().join("key"));
        self.start_with(n, export.to_str().unwrap(), &key);
    }
    fn start_with(&mut self, n: u32, export: &str, key: &Path) {
        let d = self.dir.path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(d.join(format!("node{n}.log")))
            .unwrap();
        let child = Command::new(omnode_bin())
            .args([
                "--map",
                d.join("map").to_str().unwrap(),
                "--node",
                &n.to_string(),
            ])
            .args([
                "--key-file",
                key.to_str().unwrap(),
                "--port",
                &self.port.to_string(),
            ])
            .args([
                "--socket",
                d.join(format!("node{n}.sock")).to_str().unwrap(),
            ])
            .args(["--mfs", self.mnt(n).to_str().unwrap()])
            .args(["--mfs-export", export])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start omnode");
        self.nodes.push((n, child));
    }
    fn socket(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("node{n}.sock"))
    }
    /// Wait until every started node's mount shows the `hello` of nodes `of`.
    fn ready(&self, on: &[u32], of: &[u32]) {
        let ok = wait_for(Duration::from_secs(30), || {
            on.iter()
                .all(|&n| {
                    of.iter()
                        .all(|&m| std::fs::read(self.mnt(n).join(format!("{m}/hello"))).is_ok())
                })
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "the mounts did not show {of:?} on {on:?} within 30 s"
        );
    }
    fn pid(&self, n: u32) -> u32 {
        self.nodes
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, c)| c.id())
            .expect("node running")
    }
    /// SIGKILL, like a crash: its mount is left dead and its peers see it gone.
    fn kill(&mut self, n: u32) {
        for (_, c) in self.nodes.iter_mut().filter(|(m, _)| *m == n) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.nodes.retain(|(m, _)| *m != n);
        umount(&self.mnt(n));
    }
}

fn umount(p: &Path) {
    let _ = Command::new("umount")
        .args(["-l", p.to_str().unwrap()])
        .stderr(Stdio::null())
        .status();
}

impl Drop for Mfs {
    fn drop(&mut self) {
        for n in 1..=3 {
            self.kill(n);
        }
        if std::thread::panicking() {
            for n in 1..=3 {
                let log = std::fs::read_to_string(self.dir.path().join(format!("node{n}.log")));
                eprintln!("==== node {n} ====\n{}", log.unwrap_or_default());
            }
        }
    }
}

/// Run a command with a time limit; None if it had to be killed (it hung).
fn run_within(limit: Duration, cmd: &mut Command) -> Option<std::process::Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.extend_from_slice(&seed.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `steps` random pwrite/pread/truncate/reopen operations on `path`, each checked against an
/// in-memory model; the file's final content must equal the model.
fn fsx(path: &Path, seed: u64, steps: usize) {
    use std::os::unix::fs::FileExt;
    let open = || {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // a re-open keeps the content
            .open(path)
            .unwrap()
    };
    let mut f = open();
    f.set_len(0).unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rnd = move |n: u64| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s % n.max(1)
    };
    const MAX: u64 = 256 << 10;
    for step in 0..steps {
        match rnd(10) {
            0..=3 => {
                let off = rnd(MAX);
                let len = 1 + rnd(70_000) as usize;
                let byte = (step % 251) as u8 + 1;
                let buf: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                f.write_all_at(&buf, off).unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&buf);
            }
            4..=7 => {
                let off = rnd(MAX + 1000);
                let len = rnd(70_000) as usize;
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    let n = f.read_at(&mut buf[got..], off + got as u64).unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                let s = (off as usize).min(model.len());
                let e = (off as usize + len).min(model.len());
                if buf[..got] != model[s..e] {
                    let at = buf[..got]
                        .iter()
                        .zip(&model[s..e])
                        .position(|(a, b)| a != b);
                    panic!(
                        "{}: step {step}: read {len} at {off}: {got} bytes, want {}, first difference at {at:?}",
                        path.display(),
                        e - s
                    );
                }
            }
            8 => {
                let size = rnd(MAX);
                f.set_len(size).unwrap();
                model.resize(size as usize, 0);
            }
            _ => {
                drop(f);
                f = open();
                assert_eq!(
                    f.metadata().unwrap().len(),
                    model.len() as u64,
                    "{}: step {step}: size",
                    path.display()
                );
            }
        }
    }
    drop(f);
    assert!(
        std::fs::read(path).unwrap() == model,
        "{}: final content differs",
        path.display()
    );
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(-1)
}

fn statfs_numbers(p: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%b %S %c", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "stat -f {}", p.display());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn three_nodes_share_their_files_through_real_mounts() {
    if !need_root("three_nodes_share_their_files_through_real_mounts") {
        return;
    }
    let mut c = Mfs::new();
    for n in 1..=3 {
        std::fs::write(c.export(n).join("hello"), format!("hello from node {n}\n")).unwrap();
    }
    for n in 1..=3 {
        c.start(n);
    }
    let m1 = c.mnt(1);
    let ready = wait_for(Duration::from_secs(30), || {
        (1..=3)
            .all(|n| (1..=3).all(|m| std::fs::read(c.mnt(n).join(format!("{m}/hello"))).is_ok()))
            .then_some(())
    });
    assert!(
        ready.is_some(),
        "the mounts did not show every node's files within 30 s"
    );

    // ls and cat
    let mut top: Vec<String> = std::fs::read_dir(&m1)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(
        top,
        [
            "1", "2", "3", "here", "home", "lastexec", "magic", "selected"
        ]
    );
    assert_eq!(std::fs::read_link(m1.join("here")).unwrap(), Path::new("1"));
    assert_eq!(
        std::fs::read_link(c.mnt(2).join("home")).unwrap(),
        Path::new("2")
    );
    assert_eq!(
        std::fs::read_to_string(c.mnt(2).join("here/hello")).unwrap(),
        "hello from node 2\n"
    );
    for (n, m) in [(1, 3), (2, 1), (3, 2)] {
        let got = std::fs::read_to_string(c.mnt(n).join(format!("{m}/hello"))).unwrap();
        assert_eq!(got, format!("hello from node {m}\n"));
    }
    let ls = Command::new("ls").arg(m1.join("3")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ls.stdout), "hello\n");

    // cp of 50 MiB both ways, byte-identical
    let big = pseudo_random(50 << 20, 0x9e37_79b9_7f4a_7c15);
    std::fs::write(c.export(3).join("big"), &big).unwrap();
    let local = c.dir.path().join("big.local");
    let st = Command::new("cp")
        .arg(m1.join("3/big"))
        .arg(&local)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        std::fs::read(&local).unwrap() == big,
        "50 MiB read through /mfs/3 differs"
    );
    let st = Command::new("cp")
        .arg(&local)
        .arg(c.mnt(2).join("1/big.copy"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        std::fs::read(c.export(1).join("big.copy")).unwrap() == big,
        "50 MiB written through /mfs/1 differs"
    );

    // mkdir / write / rename / link / symlink / unlink / rmdir, checked on the serving disk
    let d = m1.join("2/work");
    std::fs::create_dir(&d).unwrap();
    assert!(c.export(2).join("work").is_dir());
    File::create(d.join("a"))
        .unwrap()
        .write_all(b"abc")
        .unwrap();
    std::fs::rename(d.join("a"), d.join("b")).unwrap();
    assert_eq!(std::fs::read(c.export(2).join("work/b")).unwrap(), b"abc");
    std::fs::hard_link(d.join("b"), d.join("c")).unwrap();
    std::os::unix::fs::symlink("b", d.join("s")).unwrap();
    assert_eq!(std::fs::read(d.join("s")).unwrap(), b"abc");
    assert_eq!(
        std::fs::read_link(c.export(2).join("work/s")).unwrap(),
        Path::new("b")
    );
    std::fs::set_permissions(d.join("b"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let mode = std::fs::metadata(c.export(2).join("work/c"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    // errors as on a local file system
    assert_eq!(errno_of(std::fs::create_dir(&d)), 17); // EEXIST
    assert_eq!(errno_of(std::fs::remove_dir(&d)), 39); // ENOTEMPTY
    assert_eq!(errno_of(File::open(d.join("missing"))), 2); // ENOENT
    assert_eq!(errno_of(std::fs::rename(d.join("b"), m1.join("3/b"))), 18); // EXDEV
    assert_eq!(errno_of(std::fs::create_dir(m1.join("4"))), 13); // EACCES: /mfs itself
    for f in ["b", "c", "s"] {
        std::fs::remove_file(d.join(f)).unwrap();
    }
    std::fs::remove_dir(&d).unwrap();
    assert!(!c.export(2).join("work").exists());

    // chown and truncate land on the serving disk
    std::fs::write(m1.join("2/owned"), b"0123456789").unwrap();
    std::os::unix::fs::chown(m1.join("2/owned"), Some(65534), Some(65534)).unwrap();
    File::options()
        .write(true)
        .open(m1.join("2/owned"))
        .unwrap()
        .set_len(4)
        .unwrap();
    let md = std::fs::metadata(c.export(2).join("owned")).unwrap();
    assert_eq!(
        (std::os::unix::fs::MetadataExt::uid(&md), md.len()),
        (65534, 4)
    );
    assert_eq!(std::fs::read(m1.join("2/owned")).unwrap(), b"0123");

    // fsx-style: random writes, reads and truncates through the mounts, checked against a
    // model after every step, on two nodes at once (each writing a file of another node).
    let runs: Vec<_> = [(m1.join("2/fsx"), 1u64), (c.mnt(2).join("3/fsx"), 2u64)]
        .into_iter()
        .map(|(p, seed)| std::thread::spawn(move || fsx(&p, seed, 2000)))
        .collect();
    for r in runs {
        r.join().unwrap();
    }
    assert_eq!(
        std::fs::read(c.export(2).join("fsx")).unwrap(),
        std::fs::read(m1.join("2/fsx")).unwrap()
    );

    // df /mfs/3 gives node 3's real numbers
    assert_eq!(statfs_numbers(&m1.join("3")), statfs_numbers(&c.export(3)));

    // Permissions are the caller's: nobody cannot read root's 0600 file.
    std::fs::write(c.export(2).join("private"), b"secret").unwrap();
    std::fs::set_permissions(
        c.export(2).join("private"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(m1.join("2/private"))
        .output()
        .unwrap();
    assert!(!as_nobody.status.success());
    assert!(String::from_utf8_lossy(&as_nobody.stderr).contains("Permission denied"));
    let as_nobody = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(m1.join("2/hello"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&as_nobody.stdout),
        "hello from node 2\n"
    );

    // A node killed: calls on its folder fail within seconds, never hang.
    let mut held = File::options()
        .append(true)
        .open(m1.join("3/hello"))
        .unwrap();
    c.kill(3);
    let t0 = Instant::now();
    let ls = run_within(
        Duration::from_secs(10),
        Command::new("ls").arg(m1.join("3/")),
    );
    let ls = ls.expect("ls /mfs/3 of a dead node hung for 10 s");
    assert!(!ls.status.success(), "ls of a dead node's folder succeeded");
    let cat = run_within(
        Duration::from_secs(10),
        Command::new("cat").arg(m1.join("3/hello")),
    )
    .expect("cat of a dead node's file hung");
    assert!(!cat.status.success());
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(10), "failing took {took:?}");
    eprintln!(
        "calls on the dead node failed after {took:?}: {}",
        String::from_utf8_lossy(&cat.stderr).trim()
    );
    // Written data cannot reach a dead node: the write or, with write-behind, fsync says so.
    let wrote = held.write_all(b"lost").and_then(|()| held.sync_all());
    assert!(
        wrote.is_err(),
        "a write to a file open on a dead node succeeded"
    );
    drop(held);
    // The other nodes go on.
    assert_eq!(
        std::fs::read_to_string(m1.join("2/hello")).unwrap(),
        "hello from node 2\n"
    );
    // It comes back: its folder works again, on the same mounts.
    c.start(3);
    let back = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(m1.join("3/hello")).ok()
    });
    assert_eq!(
        back.as_deref(),
        Some("hello from node 3\n"),
        "node 3's folder did not work again"
    );
    assert_eq!(
        std::fs::read_to_string(c.mnt(3).join("1/hello")).unwrap(),
        "hello from node 1\n"
    );
}

#[test]
fn read_only_exports_refuse_changes_and_a_foreign_key_sees_nothing() {
    if !need_root("read_only_exports_refuse_changes_and_a_foreign_key_sees_nothing") {
        return;
    }
    let mut c = Mfs::at(BASE + 4);
    assert_eq!(c.base, BASE + 4);
    for n in 1..=3 {
        std::fs::write(c.export(n).join("hello"), format!("hello from node {n}\n")).unwrap();
    }
    let other_key = c.dir.path().join("other.key");
    assert!(
        run_cli(&["keygen", "--out", other_key.to_str().unwrap()])
            .status
            .success()
    );
    c.start(1);
    let ro = format!("{}:ro", c.export(2).display());
    c.start_with(2, &ro, &c.dir.path().join("key"));
    let e3 = c.export(3).display().to_string();
    c.start_with(3, &e3, &other_key);
    let m1 = c.mnt(1);
    let ready = wait_for(Duration::from_secs(30), || {
        std::fs::read(m1.join("2/hello")).ok()
    });
    assert!(
        ready.is_some(),
        "node 2's read-only export did not appear on node 1"
    );

    // Read-only: reading works, every change is refused with EROFS and nothing changes.
    assert_eq!(
        std::fs::read_to_string(m1.join("2/hello")).unwrap(),
        "hello from node 2\n"
    );
    assert_eq!(errno_of(File::create(m1.join("2/new"))), 30);
    assert_eq!(
        errno_of(File::options().append(true).open(m1.join("2/hello"))),
        30
    );
    assert_eq!(errno_of(std::fs::remove_file(m1.join("2/hello"))), 30);
    assert_eq!(errno_of(std::fs::create_dir(m1.join("2/d"))), 30);
    assert_eq!(
        errno_of(std::fs::rename(m1.join("2/hello"), m1.join("2/moved"))),
        30
    );
    let chmod =
        std::fs::set_permissions(m1.join("2/hello"), std::fs::Permissions::from_mode(0o600));
    assert_eq!(errno_of(chmod), 30);
    assert_eq!(
        std::fs::read_to_string(c.export(2).join("hello")).unwrap(),
        "hello from node 2\n"
    );
    let names: Vec<_> = std::fs::read_dir(c.export(2))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["hello"]);
    // Node 1's own export is writable through node 2's mount.
    std::fs::write(c.mnt(2).join("1/from2"), b"x").unwrap();
    assert_eq!(std::fs::read(c.export(1).join("from2")).unwrap(), b"x");

    // Node 3 has another key: no link, so nothing of it is served, and it sees nothing.
    std::thread::sleep(Duration::from_secs(2));
    let ls = run_within(
        Duration::from_secs(10),
        Command::new("cat").arg(m1.join("3/hello")),
    )
    .expect("cat of a node with another key hung");
    assert!(
        !ls.status.success(),
        "node 1 read a file of a node with another key"
    );
    let ls = run_within(
        Duration::from_secs(10),
        Command::new("cat").arg(c.mnt(3).join("1/hello")),
    )
    .expect("cat from a node with another key hung");
    assert!(
        !ls.status.success(),
        "a node with another key read node 1's file"
    );
    // Its own files it still sees.
    assert_eq!(
        std::fs::read_to_string(c.mnt(3).join("3/hello")).unwrap(),
        "hello from node 3\n"
    );

    // A node that stops answering (SIGSTOP: its links stay up): calls fail within the
    // time-out, and work again when it goes on.
    let pid = c.pid(2).to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    let cat = run_within(
        Duration::from_secs(15),
        Command::new("cat").arg(m1.join("2/not-cached")),
    );
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let cat = cat.expect("a call on a stopped node hung for 15 s");
    assert!(!cat.status.success());
    let err = String::from_utf8_lossy(&cat.stderr);
    // EIO when the ask times out, ENOTCONN when the link is declared dead first.
    let clear =
        err.contains("Input/output error") || err.contains("Transport endpoint is not connected");
    assert!(clear, "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    eprintln!(
        "a call on a stopped node failed after {:?}: {}",
        t0.elapsed(),
        err.trim()
    );
    let back = wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(m1.join("2/hello")).ok()
    });
    assert_eq!(back.as_deref(), Some("hello from node 2\n"));
}

/// A child killed (and reaped) when dropped, also when the test fails.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Compiles tests/progs/NAME.c into `dir`.
fn compile(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("progs/{name}.c"));
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc is needed for this test");
    assert!(st.success(), "gcc failed on {}", src.display());
    out
}

fn sh(script: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_within(Duration::from_secs(20), &mut cmd).expect("the shell hung");
    assert!(
        out.status.success(),
        "sh -c {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The magic folders answer per process: a process that never moved sees here = home =
/// lastexec = its node; `magic` follows its own last O_CREAT; `selected` is what `omnode mfs
/// select` set for its parent before it started, or its own OMNODE_MFS_SELECTED. And a process
/// moved from node 1 to node 2 (`omnode migrate`) opening `/mfs/here/who` after the move
/// reads node 2's file, while `/mfs/home/who` stays node 1's; the output equals an
/// uninterrupted run's plus the one line the move changes.
#[test]
fn magic_folders_answer_per_process_and_follow_a_moved_process() {
    if !need_root("magic_folders_answer_per_process_and_follow_a_moved_process") {
        return;
    }
    let mut c = Mfs::at(BASE + 8);
    for n in 1..=3 {
        std::fs::write(c.export(n).join("hello"), format!("hello from node {n}\n")).unwrap();
        std::fs::write(c.export(n).join("who"), format!("node {n}\n")).unwrap();
    }
    for n in 1..=3 {
        c.start(n);
    }
    c.ready(&[1, 2, 3], &[1, 2, 3]);
    let m1 = c.mnt(1);
    let m = m1.to_str().unwrap();
    let sock = c.socket(1);
    let omnode = omnode_bin();

    let all = format!(
        "for f in here home magic lastexec selected; do printf '%s=%s ' $f $(readlink {m}/$f); done"
    );
    assert_eq!(
        sh(&all, &[]),
        "here=1 home=1 magic=1 lastexec=1 selected=1 "
    );
    assert_eq!(
        sh(
            &format!("readlink {m}/selected"),
            &[("OMNODE_MFS_SELECTED", "3")]
        ),
        "3\n"
    );
    // The same link read through node 2's mount by a process of node 2.
    assert_eq!(
        sh(&format!("readlink {}/here", c.mnt(2).display()), &[]),
        "2\n"
    );

    // omnode mfs select: for the calling shell and the children it starts afterwards.
    let sel = format!(
        "{} mfs select 2 --socket {} >/dev/null && readlink {m}/selected",
        omnode.display(),
        sock.display()
    );
    assert_eq!(sh(&sel, &[]), "2\n");
    assert_eq!(
        sh(&format!("readlink {m}/selected"), &[]),
        "1\n",
        "another shell"
    );
    let bad = run_cli(&["mfs", "select", "9", "--socket", sock.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("node 9 is not in this cluster"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // magic: one process creates on node 3, then reads the link; another process does not
    // see its record.
    let py = format!(
        "import os; print(os.readlink('{m}/magic')); open('{m}/3/tmpfile', 'w').close(); \
         print(os.readlink('{m}/magic')); print(open('{m}/magic/tmpfile').read() == '')"
    );
    let out = run_within(
        Duration::from_secs(20),
        Command::new("python3").args(["-c", &py]),
    )
    .expect("python hung");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n3\nTrue\n");
    assert!(c.export(3).join("tmpfile").exists());
    assert_eq!(sh(&format!("readlink {m}/magic"), &[]), "1\n");

    // A moved process: its opens run at home (node 1) by a deputy thread, which answers
    // for it: here is node 2 now, home still node 1.
    let prog = compile(c.dir.path(), "mfswho");
    let here = m1.join("here/who");
    let home = m1.join("home/who");
    let run = || {
        let mut cmd = Command::new(&prog);
        cmd.args(["40", "100", here.to_str().unwrap(), home.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Kid(cmd.spawn().unwrap())
    };
    let finish = |mut k: Kid| {
        let st = wait_for(Duration::from_secs(60), || k.0.try_wait().ok().flatten())
            .expect("mfswho did not end within 60 s");
        let mut out = String::new();
        std::io::Read::read_to_string(k.0.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(st.success(), "{st:?}: {out}");
        out
    };
    let plain = finish(run());
    assert_eq!(plain, "0: node 1\n1: node 1\n", "the uninterrupted run");
    let kid = run();
    std::thread::sleep(Duration::from_millis(800));
    let pid = kid.0.id().to_string();
    let mv = run_cli(&["migrate", &pid, "2", "--socket", sock.to_str().unwrap()]);
    assert!(
        mv.status.success(),
        "migrate: {}{}",
        String::from_utf8_lossy(&mv.stdout),
        String::from_utf8_lossy(&mv.stderr)
    );
    let moved = finish(kid);
    let node2_who = std::fs::read_to_string(c.export(2).join("who")).unwrap();
    assert_eq!(moved, format!("{plain}0: {node2_who}"), "the moved run");
}

/// flock and POSIX locks through /mfs, between processes on different nodes: a lock taken
/// on node 1 on a file of node 2 refuses node 3's non-blocking try, makes its blocking one
/// wait until the holder ends, conflicts with a local process's POSIX lock on node 2's own
/// file, and goes when the holder's node dies.
#[test]
fn locks_through_mfs_are_held_on_the_serving_node() {
    if !need_root("locks_through_mfs_are_held_on_the_serving_node") {
        return;
    }
    let mut c = Mfs::at(BASE + 12);
    for n in 1..=3 {
        std::fs::write(c.export(n).join("hello"), format!("hello from node {n}\n")).unwrap();
    }
    std::fs::write(c.export(2).join("lockf"), b"").unwrap();
    std::fs::write(c.export(2).join("posix"), b"0123456789").unwrap();
    for n in 1..=3 {
        c.start(n);
    }
    c.ready(&[1, 3], &[2]);
    let (on1, on3) = (c.mnt(1).join("2/lockf"), c.mnt(3).join("2/lockf"));
    let flock = |args: &[&str], f: &Path| {
        let mut cmd = Command::new("flock");
        cmd.args(args).arg(f);
        cmd
    };

    // flock: node 1 holds it for 2 s.
    let holder = Kid(flock(&["-x"], &on1)
        .args(["-c", "echo held; sleep 2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let mut holder = holder;
    let mut line = String::new();
    {
        use std::io::BufRead;
        std::io::BufReader::new(holder.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
    }
    assert_eq!(line, "held\n");
    let t0 = Instant::now();
    let busy = run_within(
        Duration::from_secs(10),
        flock(&["-n", "-x"], &on3).arg("true"),
    )
    .unwrap();
    assert_eq!(
        busy.status.code(),
        Some(1),
        "node 3 took a lock node 1 holds"
    );
    let waited = run_within(Duration::from_secs(20), flock(&["-x"], &on3).arg("true"))
        .expect("the blocking flock hung after the holder ended");
    assert!(waited.status.success());
    assert!(
        t0.elapsed() > Duration::from_millis(1000),
        "the blocking flock did not wait for the holder ({:?})",
        t0.elapsed()
    );
    assert!(holder.0.wait().unwrap().success());

    // POSIX: node 1 holds a write lock on bytes 0..=4 of node 2's file; a local process
    // of node 2 is refused bytes 2..=3 but gets 5..=9; it gets 0..=4 once node 1 dies.
    let hold = format!(
        "import fcntl,sys,time; f=open('{}','r+'); fcntl.lockf(f, fcntl.LOCK_EX, 5, 0); \
         print('held', flush=True); time.sleep(60)",
        c.mnt(1).join("2/posix").display()
    );
    let mut holder = Kid(Command::new("python3")
        .args(["-c", &hold])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap());
    let mut line = String::new();
    {
        use std::io::BufRead;
        std::io::BufReader::new(holder.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
    }
    assert_eq!(line, "held\n");
    let local = c.export(2).join("posix");
    let try_lock = |start: u32, len: u32| -> String {
        let py = format!(
            "import fcntl\nf=open('{}','r+')\ntry:\n  fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB, {len}, {start}); print('got')\nexcept OSError as e: print('busy', e.errno)",
            local.display()
        );
        let out = run_within(
            Duration::from_secs(10),
            Command::new("python3").args(["-c", &py]),
        )
        .expect("python hung");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(try_lock(2, 2), format!("busy {}", libc::EAGAIN));
    assert_eq!(try_lock(5, 5), "got");
    let t0 = Instant::now();
    c.kill(1);
    let freed = wait_for(Duration::from_secs(10), || {
        (try_lock(0, 5) == "got").then_some(())
    });
    assert!(
        freed.is_some(),
        "node 1 died but its lock on node 2's file stayed ({:?})",
        t0.elapsed()
    );
    drop(holder);
}

/// mount(8) runs /sbin/mount.mfs (a link to omnode) for `mount -t mfs` and for the seed's
/// fstab line; the running daemon mounts, and the files are there.
#[test]
fn mount_t_mfs_asks_the_running_daemon() {
    if !need_root("mount_t_mfs_asks_the_running_daemon") {
        return;
    }
    struct Helper(Option<PathBuf>);
    impl Drop for Helper {
        fn drop(&mut self) {
            if let Some(p) = &self.0 {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let link = Path::new("/sbin/mount.mfs");
    let _helper = match std::fs::read_link(link) {
        Ok(t) if t == omnode_bin() => Helper(None),
        Ok(_) | Err(_) if link.symlink_metadata().is_ok() => {
            eprintln!("skipping: /sbin/mount.mfs exists and is not this omnode");
            return;
        }
        _ => {
            std::os::unix::fs::symlink(omnode_bin(), link).unwrap();
            Helper(Some(link.to_path_buf()))
        }
    };
    let mut c = Mfs::at(BASE + 16);
    for n in 1..=3 {
        std::fs::write(c.export(n).join("hello"), format!("hello from node {n}\n")).unwrap();
    }
    c.start(1);
    c.start(2);
    c.ready(&[1], &[2]);
    let dir = c.dir.path().join("viamount");
    std::fs::create_dir(&dir).unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            umount(&self.0);
        }
    }
    let _u = Unmount(dir.clone());
    let sock = c.socket(1);
    let mount = |args: &[&str]| {
        let mut cmd = Command::new("mount");
        cmd.args(args).env("OMNODE_SOCKET", &sock);
        run_within(Duration::from_secs(20), &mut cmd).expect("mount hung")
    };
    let out = mount(&[
        "-t",
        "mfs",
        "-o",
        "dfsa=1",
        "mfs_mnt",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "mount -t mfs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let hello = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("2/hello")).ok()
    });
    assert_eq!(hello.as_deref(), Some("hello from node 2\n"));
    assert_eq!(
        std::fs::read_link(dir.join("here")).unwrap(),
        Path::new("1")
    );
    let bad = mount(&[
        "-t",
        "mfs",
        "-o",
        "cache=loose",
        "mfs_mnt",
        dir.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("cache=loose"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    umount(&dir);
    // The seed's fstab line, from a temp fstab.
    let fstab = c.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("mfs_mnt {} mfs dfsa=1 0 0\n", dir.display()),
    )
    .unwrap();
    let out = mount(&["-T", fstab.to_str().unwrap(), dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "mount from the fstab line: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let hello = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("1/hello")).ok()
    });
    assert_eq!(hello.as_deref(), Some("hello from node 1\n"));
}

/// What `ls -l` shows of a file: type and mode, links, owner, size, mtime (seconds).
fn shown_attrs(p: &Path) -> (u32, u64, u32, u32, u64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode(), m.nlink(), m.uid(), m.gid(), m.size(), m.mtime())
}

/// READDIRPLUS: a listing carries each entry's attributes (one round trip for `ls -l`), and
/// they are the served files' own; more entries than fit in one kernel buffer are all
/// listed once; a directory the caller may read but not search still lists every name
/// (no attributes: each name's own lookup then says EACCES); a file made on the serving node
/// shows in the next listing, one removed there goes.
#[test]
fn listings_carry_the_attributes_of_what_they_list() {
    if !need_root("listings_carry_the_attributes_of_what_they_list") {
        return;
    }
    let mut c = Mfs::on("127.0.38", 1);
    let many = c.export(2).join("many");
    std::fs::create_dir(&many).unwrap();
    std::fs::set_permissions(&many, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut expected = Vec::new();
    for i in 0..600u32 {
        // Long names: fewer entries per kernel buffer, so a listing takes several calls.
        let name = format!("file-with-a-rather-long-name-to-fill-buffers-{i:04}");
        let p = many.join(&name);
        std::fs::write(&p, vec![b'x'; (i * 7) as usize]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600 + i % 0o100)).unwrap();
        std::os::unix::fs::chown(&p, Some(i % 3), Some(i % 5)).unwrap();
        expected.push(name);
    }
    std::fs::create_dir(many.join("sub")).unwrap();
    std::os::unix::fs::symlink("sub", many.join("link")).unwrap();
    std::fs::hard_link(many.join(&expected[0]), many.join("hard")).unwrap();
    expected.extend(["sub", "link", "hard"].map(String::from));
    expected.sort();
    let locked = c.export(2).join("locked");
    std::fs::create_dir(&locked).unwrap();
    for n in ["a", "b", "c"] {
        std::fs::write(locked.join(n), n).unwrap();
    }
    // Readable by others, not searchable.
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o744)).unwrap();
    std::fs::write(c.export(2).join("hello"), "hello").unwrap();
    std::fs::write(c.export(1).join("hello"), "hello").unwrap();
    c.start(1);
    c.start(2);
    c.ready(&[1], &[1, 2]);

    let through = c.mnt(1).join("2/many");
    for round in 0..2 {
        let mut names: Vec<String> = std::fs::read_dir(&through)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, expected, "listing {round} of /mfs/2/many");
        for n in &names {
            assert_eq!(
                shown_attrs(&through.join(n)),
                shown_attrs(&many.join(n)),
                "attributes of {n} through /mfs/2 (round {round})"
            );
        }
    }
    // `ls -l` as a whole, against the same on the export (owners by number, same order).
    let ls = |d: &Path| {
        let o = Command::new("ls")
            .args(["-ln", "--time-style=+%s"])
            .arg(d)
            .output()
            .unwrap();
        assert!(o.status.success(), "ls -l {}: {o:?}", d.display());
        String::from_utf8(o.stdout).unwrap()
    };
    let (local, remote) = (ls(&many), ls(&through));
    // The directory's own total of blocks may differ in the first line only if the
    // counts differ: they must not.
    assert_eq!(remote, local, "ls -l through /mfs/2 and on the export");

    // Changes on the serving node show in the next listing.
    std::fs::write(many.join("new"), "new").unwrap();
    std::fs::remove_file(many.join(&expected[1])).unwrap();
    let names: Vec<String> = std::fs::read_dir(&through)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"new".to_string()), "the new file is listed");
    assert!(
        !names.contains(&expected[1]),
        "the removed file is not listed"
    );
    assert_eq!(std::fs::read_to_string(through.join("new")).unwrap(), "new");

    // Readable, not searchable: the names, and EACCES for each one's attributes.
    let as_nobody = |script: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(script)
            .output()
            .unwrap()
    };
    let dir = c.mnt(1).join("2/locked");
    let o = as_nobody(&format!("ls -1 {}", dir.display()));
    let mut listed: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    listed.sort();
    assert_eq!(listed, ["a", "b", "c"], "names as nobody: {o:?}");
    let o = as_nobody(&format!("stat {}/a", dir.display()));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "stat as nobody: {o:?}"
    );
    // Root may: the same names with their attributes.
    for n in ["a", "b", "c"] {
        assert_eq!(shown_attrs(&dir.join(n)), shown_attrs(&locked.join(n)));
    }
}
