//! Process migration end to end: real daemons on 127.0.0.N, real processes moved with
//! `omnode migrate`, each compared with an uninterrupted run of the same program.
//!
//! Needs root (ptrace of another user's process is not the point here; the remote's seccomp
//! filter is installed while the rebuilt process still has root's credentials). Without root
//! the tests say why and skip; under `CI=true` they fail instead.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use omnode_tests::moving::{
    FORM, Kid, Stream, can_run, cli, cluster, compile, counting_script, ends_as, finish, guest_pid,
    gzip_fed, logs, moved, no_stray_fds, nobody, python3, said, spawn, spawn_cmd, unmoved,
};
use omnode_tests::{Cluster, wait_for};

/// The simplest real case: a C program writing to a pipe owned by the test is moved to node
/// 2 mid-run. Its output is byte-identical to an uninterrupted run (with getpid() still the
/// home PID after the move), and the parent's wait sees its exit code.
#[test]
fn counter_moved_to_node_2_keeps_its_output_pid_and_exit_code() {
    if !can_run("counter_moved_to_node_2") {
        return;
    }
    let c = cluster("1 127.0.0.101 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "pipecount");
    let args = ["60", "25", "7"];
    let (plain_out, plain_pid) = unmoved(&prog, &args, 7);

    let kid = spawn(&prog, &args);
    let pid = kid.0.id();
    std::thread::sleep(Duration::from_millis(400));
    let out = cli(&c, 1, &["migrate", &pid.to_string(), "2"]);
    let said = said(&out);
    assert!(
        out.status.success(),
        "migrate failed: {said}\n{}",
        logs(&c, &[1, 2])
    );
    assert!(said.contains("moved to node 2"), "{said}");

    // While it runs there, `ps --json` on home shows it on node 2.
    let ps = cli(&c, 1, &["ps", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&ps.stdout)
        .unwrap_or_else(|e| panic!("ps --json: {e}: {}", String::from_utf8_lossy(&ps.stdout)));
    let row = v["processes"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["pid"] == u64::from(pid)).cloned())
        .unwrap_or_else(|| panic!("ps --json on home does not list {pid}: {v}"));
    assert_eq!(row["node"], 2, "{v}");
    assert_eq!(row["home"], 1, "{v}");
    assert_eq!(row["state"], "running", "{v}");
    // And node 2 lists it as a guest from home 1 (once its copy started there).
    guest_pid(&c, 2, pid);

    ends_as(
        &c,
        &[1, 2],
        kid,
        &plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        7,
    );
    // Its writes after the move really ran at home: node 2 forwarded them.
    let line = wait_for(Duration::from_secs(10), || {
        c.log_text(2)
            .lines()
            .find(|l| l.contains("guest ended"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| panic!("node 2 never logged the guest's end\n{}", logs(&c, &[1, 2])));
    let forwarded: u64 = line
        .split("): ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable: {line}"));
    assert!(forwarded > 0, "no call was forwarded home: {line}");
}

/// A move to a node that is down is refused with one line naming the node, and the process
/// keeps running at home, its output and exit code unchanged.
#[test]
fn move_to_a_down_node_is_refused_and_the_process_runs_on() {
    if !can_run("move_to_a_down_node_is_refused") {
        return;
    }
    let c = cluster("1 127.0.0.104 2\n", &[1]);
    let prog = compile(c.dir.path(), "pipecount");
    let args = ["40", "25", "5"];
    let (plain_out, plain_pid) = unmoved(&prog, &args, 5);

    let kid = spawn(&prog, &args);
    let pid = kid.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let out = cli(&c, 1, &["migrate", &pid.to_string(), "2"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "a move to a down node succeeded");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(
        err.contains("node 2"),
        "the refusal does not name the node: {err}"
    );
    assert!(err.contains("keeps running"), "{err}");

    ends_as(
        &c,
        &[1],
        kid,
        &plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        5,
    );
}

/// A user may not move another user's process: refused before anything is touched.
#[test]
fn a_user_cannot_move_roots_process() {
    if !can_run("a_user_cannot_move_roots_process") {
        return;
    }
    let c = cluster("1 127.0.0.107 2\n", &[1, 2]);
    let mut kid = Kid(Command::new("sleep").arg("30").spawn().unwrap());
    let sock = c.socket(1);
    // The daemon's socket must be reachable for nobody.
    let _ = std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let _ = std::fs::set_permissions(
        c.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let out = Command::new(omnode_tests::omnode_bin())
        .args(["migrate", &kid.0.id().to_string(), "2", "--socket"])
        .arg(&sock)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("may not move"), "{err}");
    assert!(
        kid.0.try_wait().unwrap().is_none(),
        "the process was touched"
    );
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill with integer arguments.
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "kill {pid} {sig}"
    );
}

/// After the move, `kill -USR1 PID` at home runs the handler on the remote (its getpid() is
/// still the home PID), and `kill -TERM PID` at home ends it there: the parent sees it killed
/// by SIGTERM.
#[test]
fn signals_sent_at_home_reach_the_moved_process() {
    if !can_run("signals_sent_at_home_reach_the_moved_process") {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let c = cluster("1 127.0.0.110 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "sigcount");
    let mut kid = spawn(&prog, &["2000", "10"]);
    let pid = kid.0.id();
    let s = Stream::new(&mut kid);
    wait_for(FORM, || s.text().contains("tick 5").then_some(())).expect("the program runs");
    moved(&c, pid, 2);
    let before = s.text().len();
    kill(pid, libc::SIGUSR1);
    let want = format!("usr1 pid {pid}\n");
    wait_for(Duration::from_secs(10), || {
        s.text()[before..].contains(&want).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no '{want}' after SIGUSR1 at home; output tail: {:?}\n{}",
            &s.text()[before..],
            logs(&c, &[1, 2])
        )
    });
    kill(pid, libc::SIGTERM);
    let st = wait_for(Duration::from_secs(15), || kid.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("no end after SIGTERM at home\n{}", logs(&c, &[1, 2])));
    assert_eq!(
        st.signal(),
        Some(libc::SIGTERM),
        "{st:?}\n{}",
        logs(&c, &[1, 2])
    );
}

/// `omnode run -j2 prog` (`mosrun -j2`): the program runs under the caller's own PID (the
/// test is its parent), shows up as a guest on node 2, and its output and exit code are those
/// of an uninterrupted run.
#[test]
fn mosrun_j2_runs_the_program_on_node_2() {
    if !can_run("mosrun_j2_runs_the_program_on_node_2") {
        return;
    }
    let c = cluster("1 127.0.0.116 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "pipecount");
    let args = ["60", "25", "3"];
    let (plain_out, plain_pid) = unmoved(&prog, &args, 3);

    let sock = c.socket(1);
    let bin = omnode_tests::omnode_bin();
    let mut full = vec![
        "run",
        "-j2",
        "--socket",
        sock.to_str().unwrap(),
        "--",
        prog.to_str().unwrap(),
    ];
    full.extend(args);
    let kid = spawn(&bin, &full);
    let pid = kid.0.id();
    guest_pid(&c, 2, pid);
    ends_as(
        &c,
        &[1, 2],
        kid,
        &plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        3,
    );
}

/// gzip reading stdin from a pipe fed slowly by the test (so its forwarded reads wait at home
/// for data, longer than a heartbeat) and writing stdout to a pipe, moved to node 2 mid-run:
/// its output is byte-identical to gzip's on the same input, and it exits 0.
#[test]
fn gzip_between_two_pipes_moved_mid_run() {
    if !can_run("gzip_between_two_pipes_moved_mid_run") {
        return;
    }
    let c = cluster("1 127.0.0.119 2\n", &[1, 2]);
    const BLOCKS: usize = 40;
    // In the middle, a pause longer than the failure time-out (5 s): a forwarded read waiting
    // at home must not starve the heartbeats.
    let gzip = gzip_fed(BLOCKS, |i| if i == BLOCKS / 2 { 6000 } else { 60 });
    let pid = gzip.pid();
    std::thread::sleep(Duration::from_millis(300));
    moved(&c, pid, 2);
    guest_pid(&c, 2, pid);
    gzip.check(&c, &[1, 2]);
}

/// A moved process that dies by SIGSEGV on the remote: the parent at home sees it killed by
/// SIGSEGV, after all its output.
#[test]
fn a_crash_on_the_remote_is_the_parents_wifsignaled_sigsegv() {
    if !can_run("a_crash_on_the_remote") {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let c = cluster("1 127.0.0.122 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "sigcount");
    let mut kid = spawn(&prog, &["100", "20", "segv"]);
    let pid = kid.0.id();
    let s = Stream::new(&mut kid);
    std::thread::sleep(Duration::from_millis(300));
    moved(&c, pid, 2);
    let st = wait_for(Duration::from_secs(30), || kid.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("no end\n{}", logs(&c, &[1, 2])));
    assert_eq!(
        st.signal(),
        Some(libc::SIGSEGV),
        "{st:?}\n{}",
        logs(&c, &[1, 2])
    );
    wait_for(Duration::from_secs(5), || {
        s.text().ends_with("tick 99\n").then_some(())
    })
    .unwrap_or_else(|| panic!("output incomplete: {:?}", s.text()));
}

/// A python3 script writing to a pipe, moved mid-run: output and exit code as an
/// uninterrupted run. Runs the interpreter itself (a shim that execs python would be a
/// different process).
#[test]
fn python_script_moved_mid_run() {
    if !can_run("python_script_moved_mid_run") {
        return;
    }
    let c = cluster("1 127.0.0.125 2\n", &[1, 2]);
    let (py, script) = (python3(), counting_script(80));
    let (plain, _) = unmoved(&py, &["-S", "-c", &script], 4);
    let kid = spawn(&py, &["-S", "-c", &script]);
    let pid = kid.0.id();
    std::thread::sleep(Duration::from_millis(500));
    moved(&c, pid, 2);
    ends_as(&c, &[1, 2], kid, &plain, 4);
}

/// A regular file open before the move stays at home with its offset shared: the program's
/// stdout is a file whose open file description the test shares (as in
/// `(prog; echo after) > f`); after the moved program ends, the test's own write lands after
/// everything the program wrote, and the file equals the uninterrupted run's.
#[test]
fn a_file_open_before_the_move_keeps_its_shared_offset() {
    if !can_run("a_file_open_before_the_move_keeps_its_shared_offset") {
        return;
    }
    use std::io::Write;
    let c = cluster("1 127.0.0.128 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "pipecount");
    let args = ["50", "20", "0"];
    let run = |path: &Path, move_it: bool| -> (String, u32) {
        let mut f = std::fs::File::create(path).unwrap();
        let mut cmd = Command::new(&prog);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(Stdio::null());
        no_stray_fds(&mut cmd);
        let mut kid = Kid(cmd.spawn().unwrap());
        let pid = kid.0.id();
        if move_it {
            std::thread::sleep(Duration::from_millis(300));
            moved(&c, pid, 2);
        }
        let st = wait_for(Duration::from_secs(60), || kid.0.try_wait().ok().flatten()).unwrap();
        assert_eq!(st.code(), Some(0), "{st:?}\n{}", logs(&c, &[1, 2]));
        f.write_all(b"after\n").unwrap();
        drop(f);
        (std::fs::read_to_string(path).unwrap(), pid)
    };
    let (plain, plain_pid) = run(&c.dir.path().join("plain.txt"), false);
    let (moved_text, pid) = run(&c.dir.path().join("moved.txt"), true);
    assert!(
        plain.contains("line 49 ") && plain.ends_with("after\n"),
        "{plain}"
    );
    assert_eq!(
        moved_text,
        plain.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        "{}",
        logs(&c, &[1, 2])
    );
}

/// The target daemon killed after the move: home ends the process with the documented status
/// (killed by SIGKILL) within seconds, and its log says why.
#[test]
fn a_process_lost_with_its_target_ends_at_home_by_sigkill() {
    if !can_run("a_process_lost_with_its_target") {
        return;
    }
    use std::os::unix::process::ExitStatusExt;
    let mut c = cluster("1 127.0.0.131 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "sigcount");
    let mut kid = spawn(&prog, &["3000", "10"]);
    let pid = kid.0.id();
    let _s = Stream::new(&mut kid);
    std::thread::sleep(Duration::from_millis(300));
    moved(&c, pid, 2);
    let local = guest_pid(&c, 2, pid);
    c.kill(2);
    let st = wait_for(Duration::from_secs(20), || kid.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("the home process did not end\n{}", logs(&c, &[1])));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    assert!(
        c.log_text(1).contains("moved process lost"),
        "{}",
        logs(&c, &[1])
    );
    // The copy on node 2 does not run on (its watchdog kills it with its daemon; see
    // migration_faults.rs for a copy that makes no system call).
    wait_for(Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{local}")).exists()
            || std::fs::read_to_string(format!("/proc/{local}/stat"))
                .is_ok_and(|s| s.contains(") Z ")))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("the copy {local} on node 2 still runs"));
}

/// A user moves their own process: `omnode migrate` run as nobody moves nobody's program to
/// node 2, where it runs as nobody (uid and gid), and its output and exit code are those of an
/// uninterrupted run. (Parking the home shell must not need privileges over the user's
/// process: root here lacks CAP_SYS_RESOURCE, so prlimit(2) on it would fail.)
#[test]
fn a_user_moves_their_own_process_which_runs_as_them_on_the_target() {
    if !can_run("a_user_moves_their_own_process") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let c = cluster("1 127.0.0.134 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "pipecount");
    // nobody must reach the program and the daemon's socket
    std::fs::set_permissions(c.dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&prog, PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(c.socket(1), PermissionsExt::from_mode(0o666)).unwrap();
    let as_nobody = |args: &[&str]| spawn_cmd(nobody(&prog, args));
    let args = ["60", "25", "9"];
    let plain = as_nobody(&args);
    let plain_pid = plain.0.id();
    let (plain_out, plain_st) = finish(plain, Duration::from_secs(60));
    assert_eq!(plain_st.code(), Some(9), "uninterrupted run: {plain_st:?}");

    let kid = as_nobody(&args);
    let pid = kid.0.id();
    std::thread::sleep(Duration::from_millis(400));
    let out = Command::new(omnode_tests::omnode_bin())
        .args(["migrate", &pid.to_string(), "2", "--socket"])
        .arg(c.socket(1))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let said = said(&out);
    assert!(
        out.status.success(),
        "nobody could not move their own process: {said}\n{}",
        logs(&c, &[1, 2])
    );
    let local = guest_pid(&c, 2, pid);
    let status = std::fs::read_to_string(format!("/proc/{local}/status")).unwrap_or_default();
    let ids = |key: &str| -> Vec<String> {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    if !status.is_empty() {
        // (the guest may have ended already on a loaded machine; then only the output counts)
        assert_eq!(
            ids("Uid:"),
            vec!["65534"; 4],
            "guest {local} uids:\n{status}"
        );
        assert_eq!(
            ids("Gid:"),
            vec!["65534"; 4],
            "guest {local} gids:\n{status}"
        );
    }
    ends_as(
        &c,
        &[1, 2],
        kid,
        &plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        9,
    );
}

/// The metrics endpoint counts moves: after one move of a program that writes through its
/// deputy, home reports one migration out and the forwarded calls it ran, the target one
/// migration in.
#[test]
fn metrics_count_moves_and_forwarded_calls() {
    if !can_run("metrics_count_moves_and_forwarded_calls") {
        return;
    }
    let mut c = Cluster::new("1 127.0.0.137 2\n");
    let port = |ip: &str| {
        std::net::TcpListener::bind(format!("{ip}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let m1 = format!("127.0.0.137:{}", port("127.0.0.137"));
    let m2 = format!("127.0.0.138:{}", port("127.0.0.138"));
    let (map, key) = (c.map.clone(), c.key.clone());
    c.start_with_args(1, &map, &key, &["--metrics", &m1]);
    c.start_with_args(2, &map, &key, &["--metrics", &m2]);
    for n in [1, 2] {
        wait_for(FORM, || c.up(n).filter(|up| *up == vec![1u64, 2]))
            .unwrap_or_else(|| panic!("node {n} never saw both up:\n{}", c.log_text(n)));
    }
    let scrape = |addr: &str, name: &str| -> f64 {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    assert_eq!(scrape(&m1, "omnode_migrations_out_total"), 0.0);
    let prog = compile(c.dir.path(), "pipecount");
    let kid = spawn(&prog, &["40", "25", "0"]);
    std::thread::sleep(Duration::from_millis(300));
    moved(&c, kid.0.id(), 2);
    let (_, st) = finish(kid, Duration::from_secs(60));
    assert_eq!(st.code(), Some(0));
    assert_eq!(scrape(&m1, "omnode_migrations_out_total"), 1.0);
    assert!(scrape(&m1, "omnode_forwarded_calls_total") > 0.0);
    assert_eq!(scrape(&m2, "omnode_migrations_in_total"), 1.0);
    assert_eq!(scrape(&m2, "omnode_migrations_out_total"), 0.0);
}

/// Files a moved process opens after the move are opened at home as the process itself would
/// open them: relative paths against its own cwd (not the daemon's), and with its own rights
/// (nobody's process cannot read a root-only file through the root daemon). The output equals
/// an uninterrupted run's.
#[test]
fn paths_opened_after_the_move_use_the_process_cwd_and_rights() {
    if !can_run("paths_opened_after_the_move_use_the_process_cwd_and_rights") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let c = cluster("1 127.0.0.140 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "pathopen");
    let work = c.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("rel.txt"), "hello from home\n").unwrap();
    let secret = c.dir.path().join("secret");
    std::fs::write(&secret, "root only\n").unwrap();
    std::fs::set_permissions(&secret, PermissionsExt::from_mode(0o600)).unwrap();
    for p in [c.dir.path(), work.as_path()] {
        std::fs::set_permissions(p, PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&prog, PermissionsExt::from_mode(0o755)).unwrap();
    let run = || {
        let mut cmd = nobody(&prog, &["40", "50", secret.to_str().unwrap()]);
        cmd.current_dir(&work);
        spawn_cmd(cmd)
    };
    let (plain_out, plain_st) = finish(run(), Duration::from_secs(60));
    assert!(plain_st.success(), "{plain_st:?}");
    assert!(
        plain_out.contains("relative: read \"hello from home\"")
            && plain_out.contains(&format!("secret: errno {}", libc::EACCES)),
        "the uninterrupted run did not see what the test set up:\n{plain_out}"
    );
    let kid = run();
    std::thread::sleep(Duration::from_millis(300));
    moved(&c, kid.0.id(), 2);
    let (out, st) = finish(kid, Duration::from_secs(60));
    assert_eq!(out, plain_out, "moved run differs\n{}", logs(&c, &[1, 2]));
    assert!(st.success(), "{st:?}");
}

/// A moved program whose first output goes through stdio (glibc fstat()s stdout first: a call
/// on a home fd) prints everything an uninterrupted run prints and exits with its code: the
/// call is answered exactly (forwarded home, or the process comes home for it), never lost.
#[test]
fn stdio_output_after_the_move_is_not_lost() {
    if !can_run("stdio_output_after_the_move") {
        return;
    }
    let c = cluster("1 127.0.0.246 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "stdiocount");
    let (plain_out, plain_pid) = unmoved(&prog, &["15"], 5);
    assert_eq!(plain_out.lines().count(), 15, "{plain_out}");

    let kid = spawn(&prog, &["15"]);
    let pid = kid.0.id();
    std::thread::sleep(Duration::from_millis(200));
    moved(&c, pid, 2);
    ends_as(
        &c,
        &[1, 2],
        kid,
        &plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n")),
        5,
    );
}

/// Issue 13: a dynamically linked program moved the instant its exec is seen (`MoveAfterExec`,
/// the `mosrun -jN` request, with no wait for the dynamic loader) prints what an unmoved run
/// prints and exits with its code, whatever ld.so was doing at the move (opening, reading,
/// fstat-ing or mapping libc.so.6 through an fd that became home-backed): the move is exact,
/// or the process comes home for the call, or the move is refused before it is touched.
/// ld.so's work is widened by an LD_LIBRARY_PATH of directories that do not exist (each one
/// tried before the system's; the unmoved run has none: the output must not depend on it).
/// The fault of issue 13 (on the tree of 5d6c6bc^ this test fails at its first attempt): ld.so's
/// `fstat` of libc (`newfstatat(fd, "", AT_EMPTY_PATH)`, nr 262) on an fd that had become
/// home-backed was a call the remote could not serve, the way home did not exist yet, and the
/// supervisor gave up by dropping its seccomp listener while the process lived: the kernel
/// then answers every pending and later trapped call with ENOSYS, so ld.so failed and exited
/// 127 with its message on the (discarded) stderr. Since then the call is run at home
/// (`migration::homecall`), a call that cannot be served brings the process home, and the
/// listener is dropped only once the process has exited or been killed.
#[test]
fn a_program_moved_while_its_dynamic_loader_runs_is_exact() {
    use std::io::{BufRead, Write};
    if !can_run("a_program_moved_while_its_dynamic_loader_runs_is_exact") {
        return;
    }
    let nodes = [1, 2];
    let c = cluster("1 127.0.0.247 2\n", &nodes);
    let prog = compile(c.dir.path(), "ldhello");
    // Attempt n searches 25 * n directories that do not exist before the system's, so the
    // move lands at a different point of ld.so's work in each attempt.
    let lib_path = |n: usize| -> String {
        (0..25 * n)
            .map(|i| format!("{}/none{i}", c.dir.path().display()))
            .collect::<Vec<_>>()
            .join(":")
    };
    // `sh -c 'read go; exec prog N'`: the test learns the pid, asks for the move after the
    // exec, then lets the shell exec the program.
    let start = |n: usize| -> (Kid, std::process::ChildStdin) {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "read go; exec \"$0\" \"$1\""])
            .arg(&prog)
            .arg(n.to_string())
            .env("LD_LIBRARY_PATH", lib_path(n));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        no_stray_fds(&mut cmd);
        let mut child = cmd.spawn().expect("spawn sh");
        let stdin = child.stdin.take().unwrap();
        (Kid(child), stdin)
    };
    let (plain, mut go) = start(0);
    let plain_pid = plain.0.id();
    go.write_all(b"go\n").unwrap();
    drop(go);
    let (plain_out, plain_st) = finish(plain, Duration::from_secs(60));
    assert_eq!(plain_st.code(), Some(7), "unmoved run: {plain_st:?}");
    let (mut moved, mut during_ld_so) = (0, 0);
    let attempts = 8;
    for n in 1..=attempts {
        let (kid, mut go) = start(n);
        let pid = kid.0.id();
        let mut s = std::os::unix::net::UnixStream::connect(c.socket(1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        writeln!(s, r#"{{"cmd":"move_after_exec","pid":{pid},"to":2}}"#).unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(s).read_line(&mut answer).unwrap();
        assert!(answer.contains("once it runs"), "move_after_exec: {answer}");
        go.write_all(b"go\n").unwrap();
        drop(go);
        let (out, st) = finish(kid, Duration::from_secs(60));
        let want = plain_out
            .replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n"))
            .replace("hello 0 ", &format!("hello {n} "));
        assert_eq!(
            out,
            want,
            "attempt {n}: output differs\n{}",
            logs(&c, &nodes)
        );
        assert_eq!(
            st.code(),
            Some(7),
            "attempt {n}: {st:?}\n{}",
            logs(&c, &nodes)
        );
        let needle = format!("process {pid} ");
        if c.log_text(1)
            .lines()
            .any(|l| l.contains(&needle) && l.contains("moved"))
        {
            moved += 1;
        }
        // Moved before ld.so mapped libc: it came home for that mmap.
        let pid_field = format!("pid={pid} ");
        if c.log_text(1).lines().any(|l| {
            l.contains(&pid_field)
                && l.contains("the process came home")
                && l.contains("MmapHomeFd")
        }) {
            during_ld_so += 1;
        }
    }
    // How many moves landed inside the loader depends on timing: reported, not asserted.
    eprintln!(
        "moved in {moved} of {attempts} attempts, {during_ld_so} of them before ld.so mapped libc"
    );
}
