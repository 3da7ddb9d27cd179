//! Remote start (issue 13 part 3): `mosrun -jN prog` (`omnode run -jN`) starts the program
//! stopped at its first instruction after the exec and moves it from there; a refused move
//! lets it run at home. Real daemons on 127.0.11.N, real processes, each compared with an
//! unmoved run of the same program.
//!
//! Needs root (ptrace of the program at its exec, the remote's seccomp filter). Without root
//! the tests say why and skip; under `CI=true` they fail instead.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use omnode_tests::moving::{can_run, cli, cluster, compile, logs};

/// Compiles tests/progs/NAME.c statically (no dynamic loader), into the cluster's directory.
fn compile_static(dir: &Path, name: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("progs/{name}.c"));
    let out = dir.join(format!("{name}-static"));
    let st = Command::new("gcc")
        .args(["-O1", "-static", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("gcc is needed for these tests");
    assert!(
        st.success(),
        "gcc -static failed on {} (libc.a missing?)",
        src.display()
    );
    out
}

/// Whether node `node`'s log says process `pid` came (or was coming) home.
fn came_home(c: &Cluster, node: u32, pid: u32) -> bool {
    let tag = format!("pid={pid}");
    c.log_text(node)
        .lines()
        .any(|l| l.contains("coming home") && l.split_whitespace().any(|w| w == tag))
}
use omnode_tests::{Cluster, wait_for};

/// A child that is killed when dropped, also when the test fails.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `prog args` with stdin and stdout on pipes owned by the test, stderr on /dev/null, no
/// other fds.
fn spawn(prog: &Path, args: &[&str]) -> Kid {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    start(cmd)
}

/// Starts `cmd` with stdin and stdout on pipes owned by the test, stderr on /dev/null, no
/// other fds.
fn start(mut cmd: Command) -> Kid {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: close_range is async-signal-safe; it only closes fds of the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    Kid(cmd.spawn().expect("spawn"))
}

/// Feeds `input` and closes stdin, then reads the whole output and waits (at most 60 s).
fn finish(mut kid: Kid, input: &[u8]) -> (String, std::process::ExitStatus) {
    let mut i = kid.0.stdin.take().unwrap();
    i.write_all(input).unwrap();
    drop(i);
    let mut out = kid.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let limit = Duration::from_secs(60);
    let status = wait_for(limit, || kid.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("the program did not end within {limit:?}"));
    let out = reader.join().unwrap();
    (String::from_utf8_lossy(&out).into_owned(), status)
}

/// `omnode run OPTS -- prog` against node 1 (`mosrun OPTS prog`).
fn mosrun(c: &Cluster, opts: &[&str], prog: &Path) -> Kid {
    let sock = c.socket(1);
    let mut a = vec!["run"];
    a.extend(opts);
    a.extend([
        "--socket",
        sock.to_str().unwrap(),
        "--",
        prog.to_str().unwrap(),
    ]);
    spawn(&omnode_tests::omnode_bin(), &a)
}

/// The row of `ps --json` at node 1 for `pid`.
fn ps_row(c: &Cluster, pid: u32) -> Option<serde_json::Value> {
    let ps = cli(c, 1, &["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ps.stdout).ok()?;
    v["processes"]
        .as_array()?
        .iter()
        .find(|r| r["pid"] == u64::from(pid))
        .cloned()
}

/// Home's `ps` row of `pid` once it runs on node 2 (not while it is moving); fails the test
/// after 20 s with both nodes' logs.
fn running_on_2(c: &Cluster, pid: u32) -> serde_json::Value {
    wait_for(Duration::from_secs(20), || {
        ps_row(c, pid).filter(|r| r["node"] == 2u64 && r["state"] != "migrating")
    })
    .unwrap_or_else(|| {
        panic!(
            "{pid} never listed on node 2 at home: {:?}\n{}",
            ps_row(c, pid),
            logs(c, &[1, 2])
        )
    })
}

const INPUT: &[u8] = b"one\ntwo\nthree\n";

/// `mosrun -j2 prog`: the program is moved before it runs a single instruction (the image
/// that moves is the one of a program at its entry point: a fresh stack and its data, well
/// under 1 MiB), it runs on node 2 from there to its end (home's `mps` shows it there while
/// it waits for its input, which it reads from home, and it never comes home), and its output
/// and exit code are those of an unmoved run.
#[test]
fn mosrun_j2_moves_the_program_before_its_first_instruction() {
    if !can_run("mosrun_j2_moves_the_program_before_its_first_instruction") {
        return;
    }
    let c = cluster("1 127.0.11.1 2\n", &[1, 2]);
    let prog = compile_static(c.dir.path(), "startecho");
    let plain = spawn(&prog, &[]);
    let plain_pid = plain.0.id();
    let (plain_out, plain_st) = finish(plain, INPUT);
    assert_eq!(plain_st.code(), Some(5), "unmoved run: {plain_st:?}");

    let kid = mosrun(&c, &["-j2"], &prog);
    let pid = kid.0.id();
    // It waits for its input (at home) on node 2: home lists it there.
    let row = running_on_2(&c, pid);
    assert_eq!(row["home"], 1u64, "{row}");
    assert_eq!(row["moves"], 1u64, "{row}");
    // The move's image: the program at its entry point.
    let log = c.log_text(1);
    let needle = format!("mosrun: process {pid} moved to node 2 (image ");
    let line = log
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no move of {pid} in node 1's log\n{}", logs(&c, &[1, 2])));
    let mib: f64 = line
        .split(&needle)
        .nth(1)
        .and_then(|r| r.split(" MiB").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the image size in: {line}"));
    assert!(
        mib < 1.0,
        "a {mib} MiB image is not a program at its entry: {line}"
    );

    let (out, st) = finish(kid, INPUT);
    assert_eq!(
        out,
        plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        "{}",
        logs(&c, &[1, 2])
    );
    assert_eq!(st.code(), Some(5), "{}", logs(&c, &[1, 2]));
    assert!(
        !came_home(&c, 1, pid),
        "it came home instead of running on node 2\n{}",
        logs(&c, &[1, 2])
    );
}

/// `mosrun -j3` where node 3 is not in the cluster: the move is refused after the program
/// was stopped at its exec, and it runs at home, from that instruction on, as if never
/// stopped: same output and exit code as an unmoved run, never listed elsewhere.
#[test]
fn a_refused_remote_start_runs_the_program_at_home() {
    if !can_run("a_refused_remote_start_runs_the_program_at_home") {
        return;
    }
    let c = cluster("1 127.0.11.5 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "startecho");
    let plain = spawn(&prog, &[]);
    let plain_pid = plain.0.id();
    let (plain_out, _) = finish(plain, INPUT);

    let kid = mosrun(&c, &["-j3"], &prog);
    let pid = kid.0.id();
    let refused = format!("pid={pid}");
    wait_for(Duration::from_secs(20), || {
        c.log_text(1)
            .lines()
            .any(|l| l.contains(&refused) && l.contains("mosrun: it runs here"))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no refusal for {pid} in node 1's log\n{}",
            logs(&c, &[1, 2])
        )
    });
    assert_eq!(
        ps_row(&c, pid),
        None,
        "a refused start is not listed as moved"
    );
    let (out, st) = finish(kid, INPUT);
    assert_eq!(
        out,
        plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        "{}",
        logs(&c, &[1, 2])
    );
    assert_eq!(st.code(), Some(5), "{}", logs(&c, &[1, 2]));
}

/// `mosrun -j2` of a dynamically linked program: it moves before its first instruction (its
/// loader has not run yet), and the loader, running on node 2, opens /etc/ld.so.cache and libc
/// at home but maps the identical local files instead of coming home (node 2's log counts
/// them). It runs on node 2 to its end, never comes home, and its output and exit code are
/// those of an unmoved run.
#[test]
fn mosrun_j2_runs_a_dynamic_program_remotely_from_its_first_instruction() {
    if !can_run("mosrun_j2_runs_a_dynamic_program_remotely_from_its_first_instruction") {
        return;
    }
    let c = cluster("1 127.0.22.1 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "startecho");
    let plain = spawn(&prog, &[]);
    let plain_pid = plain.0.id();
    let (plain_out, plain_st) = finish(plain, INPUT);
    assert_eq!(plain_st.code(), Some(5), "unmoved run: {plain_st:?}");

    let kid = mosrun(&c, &["-j2"], &prog);
    let pid = kid.0.id();
    // the loader has run (on node 2) when the program waits for its input there
    let row = running_on_2(&c, pid);
    assert_eq!(row["home"], 1u64, "{row}");
    assert_eq!(row["moves"], 1u64, "{row}");
    // moved from its exec stop (not after running at home): the move was of a seized process
    let needle = format!("mosrun: process {pid} moved to node 2");
    assert!(
        c.log_text(1).lines().any(|l| l.contains(&needle)),
        "no remote start of {pid} in node 1's log\n{}",
        logs(&c, &[1, 2])
    );

    let (out, st) = finish(kid, INPUT);
    assert_eq!(
        out,
        plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        "{}",
        logs(&c, &[1, 2])
    );
    assert_eq!(st.code(), Some(5), "{}", logs(&c, &[1, 2]));
    assert!(
        !came_home(&c, 1, pid),
        "it came home instead of running on node 2\n{}",
        logs(&c, &[1, 2])
    );
    // node 2 mapped its libraries from local files (at least libc)
    let tag = format!("pid={pid}");
    let mapped = wait_for(Duration::from_secs(10), || {
        c.log_text(2).lines().find_map(|l| {
            if !l.contains(&tag) || !l.contains("guest ended") {
                return None;
            }
            let n: u64 = l
                .split(" home files mapped here")
                .next()?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()?;
            Some(n)
        })
    })
    .unwrap_or_else(|| panic!("no end of {pid} in node 2's log\n{}", logs(&c, &[1, 2])));
    assert!(
        mapped >= 1,
        "no library mapped on node 2 ({mapped})\n{}",
        logs(&c, &[1, 2])
    );
}

/// `omnode run -j2 prog` with the working directory `dir` (a relative path in `prog` is a
/// home file the remote cannot map from a local one: an mmap of it brings the process home).
fn mosrun_in(c: &Cluster, dir: &Path, prog: &Path, args: &[&str]) -> Kid {
    let sock = c.socket(1);
    let mut cmd = Command::new(omnode_tests::omnode_bin());
    cmd.args(["run", "-j2", "--socket", sock.to_str().unwrap(), "--"])
        .arg(prog)
        .args(args)
        .current_dir(dir);
    start(cmd)
}

/// A dynamically linked program started on node 2 (`mosrun -j2`: moved before its loader
/// ran, its libraries mapped there from identical local files) changes libc's data (random
/// state, stdout's lock) and comes home at an mmap of a home file made inside a glibc lock:
/// every page it changed comes home with it, so it ends (no wait on a stale lock word) with
/// the output and exit code of an unmoved run.
#[test]
fn a_remotely_started_program_comes_home_inside_a_glibc_lock_and_ends() {
    if !can_run("a_remotely_started_program_comes_home_inside_a_glibc_lock_and_ends") {
        return;
    }
    let c = cluster("1 127.0.41.1 2\n", &[1, 2]);
    let dir = c.dir.path();
    let prog = compile(dir, "homelock");
    std::fs::write(dir.join("homelock.data"), "hello from home\n").unwrap();
    let mut plain = Command::new(&prog);
    plain.current_dir(dir).stdin(Stdio::null());
    let plain = plain.output().expect("unmoved run");
    assert_eq!(plain.status.code(), Some(3), "unmoved run: {plain:?}");

    let kid = mosrun_in(&c, dir, &prog, &[]);
    let pid = kid.0.id();
    let (out, st) = finish(kid, b"");
    assert_eq!(
        out,
        String::from_utf8_lossy(&plain.stdout),
        "{}",
        logs(&c, &[1, 2])
    );
    assert_eq!(st.code(), Some(3), "{}", logs(&c, &[1, 2]));
    assert!(
        came_home(&c, 1, pid),
        "it never came home (the test proves nothing)\n{}",
        logs(&c, &[1, 2])
    );
}

/// `mosrun -j2 as --64 -o x.o x.s`: the assembler starts on node 2 and comes home at its mmap
/// of the home file (a relative path); it ends, and its object file is byte for byte the one
/// of an unmoved run.
#[test]
fn a_remotely_started_assembler_makes_the_same_object() {
    if !can_run("a_remotely_started_assembler_makes_the_same_object") {
        return;
    }
    let c = cluster("1 127.0.41.5 2\n", &[1, 2]);
    let dir = c.dir.path();
    let src = "\t.text\n\t.globl f\nf:\n\tmovl $42, %eax\n\tret\n\t.data\nv:\t.quad 7, 8, 9\n\t.section .rodata\ns:\t.string \"hello\"\n";
    std::fs::write(dir.join("x.s"), src).unwrap();
    let st = Command::new("as")
        .args(["--64", "-o", "plain.o", "x.s"])
        .current_dir(dir)
        .status()
        .expect("as (binutils) is needed for this test");
    assert!(st.success(), "unmoved as: {st:?}");

    let kid = mosrun_in(
        &c,
        dir,
        Path::new("/usr/bin/as"),
        &["--64", "-o", "moved.o", "x.s"],
    );
    let pid = kid.0.id();
    let (_, st) = finish(kid, b"");
    assert_eq!(st.code(), Some(0), "{}", logs(&c, &[1, 2]));
    let plain = std::fs::read(dir.join("plain.o")).unwrap();
    let moved = std::fs::read(dir.join("moved.o")).unwrap();
    assert!(plain == moved, "the objects differ\n{}", logs(&c, &[1, 2]));
    assert!(
        c.log_text(1)
            .contains(&format!("mosrun: process {pid} moved to node 2")),
        "it never started on node 2 (the test proves nothing)\n{}",
        logs(&c, &[1, 2])
    );
}

/// A dynamically linked program started at home holds an error-checking mutex and a rwlock
/// (their owner is glibc's cached TID) while it waits for its input; it is moved to node 2
/// there, releases and takes them again on node 2, then comes home at an mmap of a home file
/// made while holding them and does it once more: the cached TID stays the process's own TID
/// across both moves (never the PID the remote gave it), so every unlock works, nothing
/// blocks, and its output and exit code are those of an unmoved run.
#[test]
fn locks_held_across_a_move_and_the_way_home_stay_the_process_own() {
    if !can_run("locks_held_across_a_move_and_the_way_home_stay_the_process_own") {
        return;
    }
    let c = cluster("1 127.0.41.9 2\n", &[1, 2]);
    let dir = c.dir.path();
    let prog = compile(dir, "lockmove");
    std::fs::write(dir.join("homelock.data"), "hello from home\n").unwrap();
    let spawn_in = || {
        let mut cmd = Command::new(&prog);
        cmd.current_dir(dir);
        start(cmd)
    };
    let (plain_out, plain_st) = finish(spawn_in(), b"go\n");
    assert_eq!(plain_st.code(), Some(3), "unmoved run: {plain_out}");

    let kid = spawn_in();
    let pid = kid.0.id();
    // waiting for its input (read, call 0), the locks held
    wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(format!("/proc/{pid}/syscall"))
            .ok()
            .filter(|s| s.starts_with("0 "))
    })
    .unwrap_or_else(|| panic!("{pid} never waited for its input"));
    omnode_tests::moving::moved(&c, pid, 2);
    let (out, st) = finish(kid, b"go\n");
    assert_eq!(out, plain_out, "{}", logs(&c, &[1, 2]));
    assert_eq!(st.code(), Some(3), "{}", logs(&c, &[1, 2]));
    assert!(
        came_home(&c, 1, pid),
        "it never came home (the test proves less than it says)\n{}",
        logs(&c, &[1, 2])
    );
}
