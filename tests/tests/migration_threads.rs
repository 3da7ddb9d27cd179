//! Moving multi-threaded processes and processes whose fds live inside them (issue 13):
//! real daemons on 127.0.12.N, real processes moved with `omnode migrate`, each compared with
//! an uninterrupted run of the same program.
//!
//! Needs root (ptrace, the remote's seccomp filter). Without root the tests say why and skip;
//! under `CI=true` they fail instead.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use omnode_tests::moving::{
    Kid, can_run, cli, cluster, compile, finish, guest_pid, logs, no_stray_fds, said,
};
use omnode_tests::{Cluster, wait_for};

/// Starts `prog args` with stdout on a pipe owned by this test, stdin on a pipe the test keeps
/// open inside the child handle (never written), stderr on /dev/null, no fds inherited beyond
/// those three.
fn spawn(prog: &Path, args: &[&str]) -> Kid {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    no_stray_fds(&mut cmd);
    Kid(cmd.spawn().expect("spawn the test program"))
}

/// `omnode migrate PID TO` on home (node 1): (success, what it said).
fn migrate(c: &Cluster, pid: u32, to: &str) -> (bool, String) {
    let out = cli(c, 1, &["migrate", &pid.to_string(), to]);
    (out.status.success(), said(&out))
}

/// A line of /proc/PID/status.
fn status_field(pid: u32, name: &str) -> Option<String> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    st.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:\t")).map(str::to_owned))
}

/// Moves `prog args` to node 2 and back home mid-run (on the cluster `c` of nodes 1 and 2) and
/// checks its output and exit code against an uninterrupted run; `on_remote` sees the guest's
/// PID on node 2 while it runs there.
fn there_and_back(c: &Cluster, prog: &Path, args: &[&str], code: i32, on_remote: impl Fn(u32)) {
    let nodes = [1, 2];
    let plain = spawn(prog, args);
    let plain_pid = plain.0.id();
    let (plain_out, plain_st) = finish(plain, Duration::from_secs(60));
    assert_eq!(
        plain_st.code(),
        Some(code),
        "uninterrupted run: {plain_st:?}"
    );

    let kid = spawn(prog, args);
    let pid = kid.0.id();
    std::thread::sleep(Duration::from_millis(400));
    let (ok, said) = migrate(c, pid, "2");
    assert!(ok, "migrate {pid} 2 failed: {said}\n{}", logs(c, &nodes));
    assert!(said.contains("moved to node 2"), "{said}");
    on_remote(guest_pid(c, 2, pid) as u32);

    std::thread::sleep(Duration::from_millis(400));
    let (ok, said) = migrate(c, pid, "home");
    assert!(ok, "migrate {pid} home failed: {said}\n{}", logs(c, &nodes));
    assert!(said.contains("came home from node 2"), "{said}");
    // it runs here as a normal process again: not traced, not under a filter
    assert_eq!(status_field(pid, "TracerPid").as_deref(), Some("0"));
    assert_eq!(status_field(pid, "Seccomp").as_deref(), Some("0"));

    let (out, st) = finish(kid, Duration::from_secs(60));
    let want = plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n"));
    assert_eq!(out, want, "output differs\n{}", logs(c, &nodes));
    assert_eq!(st.code(), Some(code), "{st:?}\n{}", logs(c, &nodes));
}

/// A pthread program (4 workers computing under a mutex and condition variables, the main
/// thread combining their shares into a checksum, pthread_kill to one worker whose own handler
/// must run, gettid() == getpid() in the main thread) is moved to node 2 with all its threads,
/// runs there under the filter with all 5 threads, and comes home with them: output and exit
/// code equal to an uninterrupted run.
#[test]
fn pthreads_moved_to_node_2_and_home() {
    if !can_run("pthreads_moved_to_node_2_and_home") {
        return;
    }
    let c = cluster("1 127.0.12.10 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "threads4");
    there_and_back(&c, &prog, &["60", "25", "7"], 7, |guest| {
        assert_eq!(
            status_field(guest, "Threads").as_deref(),
            Some("5"),
            "the guest on node 2 should have all 5 threads"
        );
        // every thread is under the filter (seccomp mode 2)
        let tasks = std::fs::read_dir(format!("/proc/{guest}/task")).unwrap();
        for t in tasks {
            let tid = t.unwrap().file_name().to_string_lossy().into_owned();
            let st = std::fs::read_to_string(format!("/proc/{guest}/task/{tid}/status")).unwrap();
            assert!(
                st.contains("Seccomp:\t2\n"),
                "thread {tid} is not filtered: {st}"
            );
        }
    });
}

/// An event loop on a pipe inside the process (with unread bytes piling up in it), an eventfd
/// and a socketpair, all under one epoll, moves to node 2 and home: those fds move with it
/// (rebuilt there with their contents, not forwarded), its output and exit code equal an
/// uninterrupted run.
#[test]
fn event_loop_on_inner_fds_moved_to_node_2_and_home() {
    if !can_run("event_loop_on_inner_fds_moved_to_node_2_and_home") {
        return;
    }
    let c = cluster("1 127.0.12.20 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "inproc");
    there_and_back(&c, &prog, &["60", "25", "3"], 3, |guest| {
        // the epoll and eventfd are real ones on node 2
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{guest}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert!(fds.iter().any(|f| f.contains("eventpoll")), "{fds:?}");
        assert!(fds.iter().any(|f| f.contains("eventfd")), "{fds:?}");
    });
}

/// What still cannot move is refused before the process is touched: an epoll instance that
/// watches stdin (an fd that stays at home). `migrate` fails with one line naming the node and
/// the reason; the process runs on at home, its output and exit code those of an uninterrupted
/// run.
#[test]
fn epoll_watching_a_home_fd_is_refused_and_the_process_runs_on() {
    if !can_run("epoll_watching_a_home_fd_is_refused_and_the_process_runs_on") {
        return;
    }
    let c = cluster("1 127.0.12.30 2\n", &[1, 2]);
    let prog = compile(c.dir.path(), "inproc");
    let args = ["40", "25", "4", "stdin"];
    let plain = spawn(&prog, &args);
    let plain_pid = plain.0.id();
    let (plain_out, plain_st) = finish(plain, Duration::from_secs(60));
    assert_eq!(plain_st.code(), Some(4), "uninterrupted run: {plain_st:?}");

    let kid = spawn(&prog, &args);
    let pid = kid.0.id();
    std::thread::sleep(Duration::from_millis(300));
    let (ok, said) = migrate(&c, pid, "2");
    assert!(!ok, "the move should be refused: {said}");
    let said = said.trim();
    assert_eq!(said.lines().count(), 1, "one line: {said}");
    assert!(said.contains("node 2"), "names the node: {said}");
    assert!(
        said.contains("epoll") && said.contains("fd 0"),
        "names the reason: {said}"
    );
    assert_eq!(status_field(pid, "TracerPid").as_deref(), Some("0"));
    let (out, st) = finish(kid, Duration::from_secs(60));
    let want = plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n"));
    assert_eq!(out, want, "output differs\n{}", logs(&c, &[1, 2]));
    assert_eq!(st.code(), Some(4), "{st:?}");
}

/// A moved multi-threaded process that makes a new thread (pthread_create, a clone the remote
/// does not serve) comes home with all its threads first, and the clone runs at home: `ps` on
/// home then shows it at home, and its output and exit code equal an uninterrupted run.
#[test]
fn a_new_thread_on_the_remote_brings_the_process_home() {
    if !can_run("a_new_thread_on_the_remote_brings_the_process_home") {
        return;
    }
    let nodes = [1, 2];
    let c = cluster("1 127.0.12.40 2\n", &nodes);
    let prog = compile(c.dir.path(), "threads4");
    let args = ["60", "25", "8", "spawn"];
    let plain = spawn(&prog, &args);
    let plain_pid = plain.0.id();
    let (plain_out, plain_st) = finish(plain, Duration::from_secs(60));
    assert_eq!(plain_st.code(), Some(8), "uninterrupted run: {plain_st:?}");
    assert!(plain_out.contains("extra thread computed"), "{plain_out}");

    let kid = spawn(&prog, &args);
    let pid = kid.0.id();
    std::thread::sleep(Duration::from_millis(200));
    let (ok, said) = migrate(&c, pid, "2");
    assert!(ok, "migrate {pid} 2 failed: {said}\n{}", logs(&c, &nodes));
    guest_pid(&c, 2, pid);
    // the clone brings it home
    wait_for(Duration::from_secs(20), || {
        let ps = cli(&c, 1, &["ps", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&ps.stdout).ok()?;
        v["processes"]
            .as_array()?
            .iter()
            .find(|r| r["pid"] == u64::from(pid) && r["state"] == "home")
            .cloned()
    })
    .unwrap_or_else(|| panic!("{pid} never came home\n{}", logs(&c, &nodes)));

    let (out, st) = finish(kid, Duration::from_secs(60));
    let want = plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n"));
    assert_eq!(out, want, "output differs\n{}", logs(&c, &nodes));
    assert_eq!(st.code(), Some(8), "{st:?}\n{}", logs(&c, &nodes));
    assert!(
        c.log_text(1)
            .contains("the process came home (it made a call that must run at home (Fork))"),
        "home did not log the way home for the clone\n{}",
        logs(&c, &nodes)
    );
}
