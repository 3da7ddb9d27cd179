//! Process migration along a path and home, end to end: real daemons on 127.0.0.N, a real
//! process moved with `omnode migrate` to node 2, on to node 3, then home, or brought home by
//! a call that must run there (fork, exec), or refused its way home; each compared with an
//! uninterrupted run of the same program.
//!
//! Needs root (as tests/migration.rs); without root the tests say why and skip; under
//! `CI=true` they fail instead.

use std::time::Duration;

use omnode_tests::moving::{
    can_run, cli, cluster, compile, counting_script, ends_as, gzip_fed, logs, ps_row, python3,
    said, spawn, unmoved, walk,
};
use omnode_tests::wait_for;

/// The C counter with a heap goes to node 2, on to node 3 (via home), then home, mid-run:
/// its output is byte-identical to an uninterrupted run (getpid() the home PID throughout),
/// the parent's wait sees its exit code, and `ps` on home counts the moves and shows where it
/// runs at each step.
#[test]
fn counter_moved_to_2_then_3_then_home() {
    if !can_run("counter_moved_to_2_then_3_then_home") {
        return;
    }
    let nodes = [1, 2, 3];
    let c = cluster("1 127.0.0.210 3\n", &nodes);
    let prog = compile(c.dir.path(), "pipecount");
    let args = ["70", "30", "9"];
    let (plain_out, plain_pid) = unmoved(&prog, &args, 9);

    let kid = spawn(&prog, &args);
    let pid = kid.0.id();
    // Where home's `ps` shows it after each hop, and how many moves it counts.
    let want = [(2, 1), (3, 3), (1, 4)];
    walk(
        &c,
        &nodes,
        pid,
        &[(300, "2"), (300, "3"), (300, "home")],
        |i, _| {
            let row = ps_row(&c, 1, pid).expect("home lists it");
            assert_eq!(
                (row["node"].as_u64(), row["moves"].as_u64()),
                (Some(want[i].0), Some(want[i].1)),
                "{row}"
            );
        },
    );
    let row = ps_row(&c, 1, pid).expect("home lists it after it came home");
    assert_eq!(row["state"], "home", "{row}");
    // it runs here as a normal process again: not traced, not under a filter
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("TracerPid:\t0\n"), "{status}");
    assert!(status.contains("Seccomp:\t0\n"), "{status}");

    let want = plain_out.replace(&format!("pid {plain_pid}\n"), &format!("pid {pid}\n"));
    ends_as(&c, &nodes, kid, &want, 9);
}

/// A moved process that forks and then execs: fork (a call the remote cannot serve) brings it
/// home first, where the fork is made once (the child's parent is the home process); the exec
/// then runs at home too. Output and exit code are those of an uninterrupted run, and `ps` on
/// home shows it at home afterwards.
#[test]
fn fork_and_exec_in_a_moved_process_bring_it_home() {
    if !can_run("fork_and_exec_in_a_moved_process_bring_it_home") {
        return;
    }
    let nodes = [1, 2];
    let c = cluster("1 127.0.0.214 2\n", &nodes);
    let prog = compile(c.dir.path(), "forkexec");
    let args = ["30", "40"];
    let (plain_out, plain_pid) = unmoved(&prog, &args, 11);
    assert!(plain_out.contains("child exited 5\n"), "{plain_out}");

    let kid = spawn(&prog, &args);
    let pid = kid.0.id();
    walk(&c, &nodes, pid, &[(300, "2")], |_, _| {});
    // the fork brings it home; while the exec'd shell runs, home shows it there
    let row = wait_for(Duration::from_secs(20), || {
        ps_row(&c, 1, pid).filter(|r| r["state"] == "home")
    })
    .unwrap_or_else(|| {
        panic!(
            "ps on home never showed {pid} at home\n{}",
            logs(&c, &nodes)
        )
    });
    assert_eq!(row["node"].as_u64(), Some(1), "{row}");
    assert_eq!(row["moves"].as_u64(), Some(2), "{row}");

    let want = plain_out.replace(&plain_pid.to_string(), &pid.to_string());
    ends_as(&c, &nodes, kid, &want, 11);
    let log = c.log_text(1);
    assert!(
        log.contains("the process came home (it made a call that must run at home (Fork))"),
        "home did not log the way home for the fork\n{}",
        logs(&c, &nodes)
    );
}

/// A way home that home refuses leaves the process running on the remote, unchanged: the
/// process becomes nobody while on node 2, so home cannot rebuild it into its original process
/// (whose credentials are still root's). `migrate PID home` fails with a line saying so and
/// where it keeps running; `ps` still shows it on node 2; its output and exit code are those of
/// an uninterrupted run.
#[test]
fn a_refused_way_home_leaves_it_running_on_the_remote() {
    if !can_run("a_refused_way_home_leaves_it_running_on_the_remote") {
        return;
    }
    let nodes = [1, 2];
    let c = cluster("1 127.0.0.218 2\n", &nodes);
    let prog = compile(c.dir.path(), "dropuid");
    let args = ["70", "30", "25", "6"];
    let (plain_out, plain_pid) = unmoved(&prog, &args, 6);
    assert!(plain_out.contains("line 25 pid"), "{plain_out}");

    let kid = spawn(&prog, &args);
    let pid = kid.0.id();
    walk(&c, &nodes, pid, &[(200, "2")], |_, _| {});
    // after line 25 it is nobody, on node 2
    std::thread::sleep(Duration::from_millis(1200));
    let out = cli(&c, 1, &["migrate", &pid.to_string(), "home"]);
    let said = said(&out);
    assert!(!out.status.success(), "came home unexpectedly: {said}");
    assert!(
        said.contains("keeps running on node 2") && said.contains("credentials"),
        "{said}\n{}",
        logs(&c, &nodes)
    );
    let row = ps_row(&c, 1, pid).expect("home still lists it");
    assert_eq!(row["node"].as_u64(), Some(2), "{row}");
    assert_eq!(row["state"], "running", "{row}");

    let want = plain_out.replace(&format!("pid {plain_pid} "), &format!("pid {pid} "));
    ends_as(&c, &nodes, kid, &want, 6);
}

/// gzip reading stdin from a pipe fed slowly by the test and writing stdout to a pipe, moved
/// to node 2, on to node 3, then home, mid-run: its reads wait at home for input, and each
/// way home waits for the moment no forwarded read is half-done (no input is lost or read
/// twice). Output byte-identical to gzip's on the same input; exit 0.
#[test]
fn gzip_between_two_pipes_moved_to_2_then_3_then_home() {
    if !can_run("gzip_between_two_pipes_moved_to_2_then_3_then_home") {
        return;
    }
    let nodes = [1, 2, 3];
    let c = cluster("1 127.0.0.222 3\n", &nodes);
    let gzip = gzip_fed(60, |_| 60);
    let path = [(300, "2"), (500, "3"), (500, "home")];
    walk(&c, &nodes, gzip.pid(), &path, |_, _| {});
    gzip.check(&c, &nodes);
}

/// A python3 script moved to node 2, on to node 3, then home, mid-run: output identical to an
/// uninterrupted run, exit code 4 at home.
#[test]
fn python_script_moved_to_2_then_3_then_home() {
    if !can_run("python_script_moved_to_2_then_3_then_home") {
        return;
    }
    let nodes = [1, 2, 3];
    let c = cluster("1 127.0.0.226 3\n", &nodes);
    let (py, script) = (python3(), counting_script(150));
    let (plain, _) = unmoved(&py, &["-S", "-c", &script], 4);
    let kid = spawn(&py, &["-S", "-c", &script]);
    let path = [(500, "2"), (300, "3"), (300, "home")];
    walk(&c, &nodes, kid.0.id(), &path, |_, _| {});
    ends_as(&c, &nodes, kid, &plain, 4);
}

/// A moved process that calls execve (no fork): the exec brings it home and runs there, once;
/// the exec'd shell has the home PID and its exit code reaches the parent.
#[test]
fn exec_in_a_moved_process_brings_it_home() {
    if !can_run("exec_in_a_moved_process_brings_it_home") {
        return;
    }
    let nodes = [1, 2];
    let c = cluster("1 127.0.0.230 2\n", &nodes);
    let prog = compile(c.dir.path(), "forkexec");
    let args = ["30", "40", "exec"];
    let (plain_out, plain_pid) = unmoved(&prog, &args, 11);
    assert!(
        plain_out.contains(&format!("exec pid {plain_pid}\n")),
        "{plain_out}"
    );

    let kid = spawn(&prog, &args);
    let pid = kid.0.id();
    walk(&c, &nodes, pid, &[(300, "2")], |_, _| {});
    let want = plain_out.replace(&plain_pid.to_string(), &pid.to_string());
    ends_as(&c, &nodes, kid, &want, 11);
    assert!(
        c.log_text(1)
            .contains("the process came home (it made a call that must run at home (Exec))"),
        "home did not log the way home for the exec\n{}",
        logs(&c, &nodes)
    );
}
