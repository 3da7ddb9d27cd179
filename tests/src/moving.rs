//! Helpers shared by the migration test files (tests/migration*.rs): root check, test
//! programs from tests/progs, a formed cluster, the CLI against one node, logs, a move, test
//! programs started without stray fds and their output, the uninterrupted run to compare
//! with, and a walk of one process along a path of nodes.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Cluster, run_cli, wait_for};

/// How long a test cluster may take to form.
pub const FORM: Duration = Duration::from_secs(30);

/// Whether the test can run; panics under CI when it cannot.
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {test} needs root (ptrace and seccomp filters of other processes)"
    );
    eprintln!("skipping {test}: needs root (ptrace and seccomp filters of other processes)");
    false
}

/// Compiles tests/progs/NAME.c into the cluster's directory.
pub fn compile(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("progs/{name}.c"));
    let out = dir.join(name);
    let st = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc is needed for these tests");
    assert!(st.success(), "gcc failed on {}", src.display());
    out
}

/// Starts `nodes` of `map` and waits until each sees all of them up.
pub fn cluster(map: &str, nodes: &[u32]) -> Cluster {
    let mut c = Cluster::new(map);
    for &n in nodes {
        c.start(n);
    }
    for &n in nodes {
        let want: Vec<u64> = nodes.iter().map(|&x| u64::from(x)).collect();
        wait_for(FORM, || c.up(n).filter(|up| *up == want))
            .unwrap_or_else(|| panic!("node {n} never saw {want:?} up:\n{}", c.log_text(n)));
    }
    c
}

/// `omnode ARGS --socket <node's socket>`.
pub fn cli(c: &Cluster, node: u32, args: &[&str]) -> std::process::Output {
    let sock = c.socket(node);
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--socket", sock.to_str().unwrap()]);
    run_cli(&a)
}

/// Every listed node's log, for failure messages.
pub fn logs(c: &Cluster, nodes: &[u32]) -> String {
    nodes
        .iter()
        .map(|&n| format!("--- node {n} ---\n{}", c.log_text(n)))
        .collect()
}

/// `migrate PID TO` at node 1, asserted to succeed.
pub fn moved(c: &Cluster, pid: u32, to: u32) {
    migrate_ok(c, &[1, to], pid, &to.to_string());
}

/// What a CLI call said: its stdout, then its stderr.
pub fn said(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// `omnode migrate PID TO` on home (node 1), asserted to succeed; returns what it said.
pub fn migrate_ok(c: &Cluster, nodes: &[u32], pid: u32, to: &str) -> String {
    let out = cli(c, 1, &["migrate", &pid.to_string(), to]);
    let said = said(&out);
    assert!(
        out.status.success(),
        "migrate {pid} {to} failed: {said}\n{}",
        logs(c, nodes)
    );
    said
}

/// The `ps --json` row of `pid` on `node`, if it lists it.
pub fn ps_row(c: &Cluster, node: u32, pid: u32) -> Option<serde_json::Value> {
    let ps = cli(c, node, &["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ps.stdout).ok()?;
    v["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["pid"] == u64::from(pid)).cloned())
}

/// The PID on `node` of the guest whose home PID is `pid` (from `ps --json` there), waiting
/// for it to appear.
pub fn guest_pid(c: &Cluster, node: u32, pid: u32) -> u64 {
    let mut last = serde_json::Value::Null;
    wait_for(Duration::from_secs(10), || {
        let ps = cli(c, node, &["ps", "--json"]);
        last = serde_json::from_slice(&ps.stdout).ok()?;
        last["processes"]
            .as_array()?
            .iter()
            .find(|r| r["pid"] == u64::from(pid) && r["home"] == 1 && r["node"] == node)
            .and_then(|r| r["local_pid"].as_u64())
    })
    .unwrap_or_else(|| {
        panic!(
            "node {node} does not list guest {pid}: {last}\n{}",
            logs(c, &[1, node])
        )
    })
}

/// Moves `pid` (at home on node 1) along `path`: each hop `(ms, to)` waits `ms` first, then
/// runs `migrate PID TO` (TO a node number or "home"), asserted to succeed and to say what it
/// did ("moved to node N"; "came home from node M" when it leaves a remote); after a hop to
/// a remote node, that node lists the guest. `each(i, said)` then runs with what hop `i` said,
/// for the scenario's own checks.
pub fn walk(
    c: &Cluster,
    nodes: &[u32],
    pid: u32,
    path: &[(u64, &str)],
    mut each: impl FnMut(usize, &str),
) {
    let mut at: Option<&str> = None;
    for (i, &(ms, to)) in path.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(ms));
        let said = migrate_ok(c, nodes, pid, to);
        if let Some(from) = at {
            let want = format!("came home from node {from}");
            assert!(said.contains(&want), "hop {i} to {to}: {said}");
        }
        if to == "home" {
            at = None;
        } else {
            let want = format!("moved to node {to}");
            assert!(said.contains(&want), "hop {i}: {said}");
            guest_pid(c, to.parse().expect("a node number or home"), pid);
            at = Some(to);
        }
        each(i, &said);
    }
}

/// A child that is killed when dropped, also when the test fails.
pub struct Kid(pub Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes `cmd`'s child close every fd above 2 before it execs: it inherits none of the
/// test's (stray fds such as a pipe at fd 251 included).
pub fn no_stray_fds(cmd: &mut Command) -> &mut Command {
    // SAFETY: close_range is async-signal-safe; it only closes fds of the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    }
}

/// Starts `prog args` with stdout on a pipe owned by this test, stdin and stderr on /dev/null,
/// and no fds inherited beyond those three.
pub fn spawn(prog: &Path, args: &[&str]) -> Kid {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    spawn_cmd(cmd)
}

/// Starts `cmd` as [`spawn`] does (stdout on a pipe owned by this test, stdin and stderr on
/// /dev/null, no fds beyond those three), with whatever else the caller set on it.
pub fn spawn_cmd(mut cmd: Command) -> Kid {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    no_stray_fds(&mut cmd);
    Kid(cmd.spawn().expect("spawn the test program"))
}

/// `prog args` as nobody (std drops root's supplementary groups with the uid).
pub fn nobody(prog: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(prog);
    cmd.args(args).uid(65534).gid(65534);
    cmd
}

/// Reads the child's whole output and waits for it, at most `limit`.
pub fn finish(mut kid: Kid, limit: Duration) -> (String, ExitStatus) {
    let mut out = kid.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let status = wait_for(limit, || kid.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("the program did not end within {limit:?}"));
    let out = reader.join().unwrap();
    (String::from_utf8_lossy(&out).into_owned(), status)
}

/// The uninterrupted run of `prog args` (as [`spawn`] starts it), asserted to exit with
/// `code`: its output and its PID (which the output may name).
pub fn unmoved(prog: &Path, args: &[&str], code: i32) -> (String, u32) {
    let kid = spawn(prog, args);
    let pid = kid.0.id();
    let (out, st) = finish(kid, Duration::from_secs(60));
    assert_eq!(st.code(), Some(code), "uninterrupted run: {st:?}: {out}");
    (out, pid)
}

/// The moved run `kid` ends within 60 s with exit code `code` and printed `want` (the
/// unmoved run's output, with its PID put right where the output names it); otherwise the
/// nodes' logs say why.
pub fn ends_as(c: &Cluster, nodes: &[u32], kid: Kid, want: &str, code: i32) {
    let (out, st) = finish(kid, Duration::from_secs(60));
    assert_eq!(
        out,
        want,
        "output differs from the uninterrupted run\n{}",
        logs(c, nodes)
    );
    assert_eq!(
        st.code(),
        Some(code),
        "moved run: {st:?}\n{}",
        logs(c, nodes)
    );
}

/// The child's output as it comes, read by a thread of its own.
pub struct Stream {
    pub buf: Arc<Mutex<Vec<u8>>>,
}

impl Stream {
    /// Takes `kid`'s stdout and reads it on a thread of its own.
    pub fn new(kid: &mut Kid) -> Stream {
        let mut out = kid.0.stdout.take().unwrap();
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b2 = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = out.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b2.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Stream { buf }
    }

    /// What came so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

/// Deterministic input for gzip: block `i` of 4 KiB.
pub fn block(i: usize) -> Vec<u8> {
    (0..4096)
        .map(|j| ((i * 31 + j * 7 + (j >> 5)) % 251) as u8)
        .collect()
}

/// `gzip -c -n` between two pipes owned by the test, its stdin fed block by block by a
/// thread of its own; see [`gzip_fed`].
pub struct GzipRun {
    kid: Kid,
    out: Stream,
    feeder: std::thread::JoinHandle<()>,
    reference: Vec<u8>,
}

/// Starts /usr/bin/gzip as [`GzipRun`] with `blocks` blocks as input, `pause_ms(i)` after
/// block `i`, and computes gzip's output on the same input unmoved for [`GzipRun::check`].
pub fn gzip_fed(blocks: usize, pause_ms: fn(usize) -> u64) -> GzipRun {
    use std::io::Write;
    let gzip = PathBuf::from("/usr/bin/gzip");
    assert!(
        gzip.exists(),
        "gzip is needed for this test (/usr/bin/gzip)"
    );
    let input: Vec<u8> = (0..blocks).flat_map(block).collect();
    let reference = {
        let mut k = Command::new(&gzip)
            .args(["-c", "-n"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut i = k.stdin.take().unwrap();
        let w = std::thread::spawn(move || i.write_all(&input));
        let o = k.wait_with_output().unwrap();
        w.join().unwrap().unwrap();
        o.stdout
    };
    let mut cmd = Command::new(&gzip);
    cmd.args(["-c", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    no_stray_fds(&mut cmd);
    let mut kid = Kid(cmd.spawn().unwrap());
    let mut stdin = kid.0.stdin.take().unwrap();
    let out = Stream::new(&mut kid);
    let feeder = std::thread::spawn(move || {
        for i in 0..blocks {
            stdin.write_all(&block(i)).unwrap();
            std::thread::sleep(Duration::from_millis(pause_ms(i)));
        }
    });
    GzipRun {
        kid,
        out,
        feeder,
        reference,
    }
}

impl GzipRun {
    /// gzip's PID.
    pub fn pid(&self) -> u32 {
        self.kid.0.id()
    }

    /// Once all input is fed, gzip ends with 0 within 30 s, its output byte-identical to the
    /// unmoved run's.
    pub fn check(mut self, c: &Cluster, nodes: &[u32]) {
        self.feeder.join().unwrap();
        let st = wait_for(Duration::from_secs(30), || {
            self.kid.0.try_wait().ok().flatten()
        })
        .unwrap_or_else(|| panic!("gzip did not end\n{}", logs(c, nodes)));
        std::thread::sleep(Duration::from_millis(100));
        let out = self.out.buf.lock().unwrap().clone();
        assert_eq!(st.code(), Some(0), "{st:?}\n{}", logs(c, nodes));
        assert!(
            out == self.reference,
            "gzip output differs ({} vs {} bytes)\n{}",
            out.len(),
            self.reference.len(),
            logs(c, nodes)
        );
    }
}

/// The python3 interpreter itself (not a shim that would exec it: a different process).
pub fn python3() -> PathBuf {
    let exe = Command::new("python3")
        .args([
            "-c",
            "import os,sys; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .expect("python3 is needed for this test");
    PathBuf::from(String::from_utf8_lossy(&exe.stdout).trim())
}

/// A python3 script printing `lines` numbered lines with a running sum, 20 ms apart, then
/// exiting with 4.
pub fn counting_script(lines: u32) -> String {
    format!(
        "import sys, time\n\
        acc = 0\n\
        for i in range({lines}):\n\
        \x20   acc = (acc * 31 + i * i) % 1000003\n\
        \x20   sys.stdout.write(f'{{i}} {{acc}}\\n'); sys.stdout.flush()\n\
        \x20   time.sleep(0.02)\n\
        sys.exit(4)\n"
    )
}
