//! Helpers shared by the migration test files (tests/migration*.rs): root check, test
//! programs from tests/progs, a formed cluster, the CLI against one node, logs, a move.

use std::path::{Path, PathBuf};
use std::process::Command;
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
    let out = cli(c, 1, &["migrate", &pid.to_string(), &to.to_string()]);
    assert!(
        out.status.success(),
        "migrate failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs(c, &[1, to])
    );
}
