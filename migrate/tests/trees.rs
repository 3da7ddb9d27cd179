//! Process trees (`freeze_tree`/`thaw_tree`; needs root, skipped with a message otherwise):
//! a shell pipeline, a parent with a zombie child and a pipe from a live child, and gcc with
//! its cc1, each frozen mid-run, thawed, and compared byte for byte with an uninterrupted run;
//! a refused tree left running untouched. Run a second time with an unused inherited pipe fd
//! open (OMNODE_TEST_INHERITED_PIPE=1), as the rest of the suite.

mod common;
use common::check::View;
use common::runs::assert_same;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Every descendant of `pid`, parents first.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        i += 1;
        let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in rd.flatten() {
            let k = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(k.split_whitespace().filter_map(|s| s.parse::<i32>().ok()));
        }
    }
    out.remove(0);
    out
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Kills every process it names on drop (the thawed descendants, should a test fail).
struct KillAll(Vec<i32>);
impl Drop for KillAll {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill with integer arguments (processes this test made).
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

fn freeze_tree(pid: i32, leave_running: bool) -> migrate::Result<Vec<u8>> {
    let mut img = Vec::new();
    migrate::freeze_tree(pid, &mut img, &migrate::FreezeOptions { leave_running })?;
    Ok(img)
}

/// `migrate::thaw_tree`; under the inherited-pipe run the root's leaked pipe gets /dev/null
/// (its descendants, which share it, get the same).
fn thaw_tree(img: &[u8]) -> migrate::Result<migrate::ThawedTree> {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut opts = migrate::ThawOptions {
        same_pid: true,
        ..Default::default()
    };
    if std::env::var_os(INHERITED_PIPE_ENV).is_some() {
        use std::os::fd::AsRawFd;
        opts.fd_placeholders.push((LEAKED_FD, null.as_raw_fd()));
    }
    migrate::thaw_tree(img, &opts)
}

/// Runs `mk(dir)` (a command and the file it writes) uninterrupted, then again frozen as a
/// tree once `ready(root)` holds and thawed; returns both outputs.
fn compare_tree(
    mk: &dyn Fn(&Path) -> (Command, PathBuf),
    ready: &dyn Fn(i32) -> bool,
    check: &dyn Fn(&[u8]),
) -> (Vec<u8>, Vec<u8>) {
    let top = tempfile::Builder::new()
        .prefix("h8tree-")
        .tempdir()
        .unwrap();
    let (rd, md) = (top.path().join("ref"), top.path().join("mig"));
    std::fs::create_dir_all(&rd).unwrap();
    std::fs::create_dir_all(&md).unwrap();
    let (mut c, out) = mk(&rd);
    let mut p = spawn(&mut c, &rd.join("stdout"), None);
    let st = p.wait(T);
    let reference = std::fs::read(&out).unwrap_or_default();
    assert!(
        exited_ok(st),
        "reference run failed: {st:#x}: {}",
        read(&rd.join("stdout"))
    );

    let (mut c, out) = mk(&md);
    let mut p = spawn(&mut c, &md.join("stdout"), None);
    let end = Instant::now() + T;
    while !ready(p.pid) {
        assert!(p.alive(), "finished before it was ready to freeze");
        assert!(Instant::now() < end, "never ready to freeze");
        std::thread::sleep(Duration::from_millis(2));
    }
    let before = descendants(p.pid);
    let _old = KillAll(before.clone());
    let img = freeze_tree(p.pid, false).unwrap_or_else(|e| panic!("freeze_tree: {e}"));
    check(&img);
    let st = p.wait(T);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL,
        "the frozen root was not ended: {st:#x}"
    );
    let t = thaw_tree(&img).unwrap_or_else(|e| panic!("thaw_tree: {e}"));
    let _new = KillAll(t.pids.iter().map(|p| p.1).collect());
    assert_eq!(
        t.pids.iter().skip(1).filter(|(o, n)| o != n).count(),
        0,
        "every descendant keeps its PID: {:?}",
        t.pids
    );
    let mut q = Proc::new(t.root.pid);
    let st = q.wait(T);
    let migrated = std::fs::read(&out).unwrap_or_default();
    assert!(
        exited_ok(st),
        "thawed run failed: {st:#x}: {}",
        read(&md.join("stdout"))
    );
    (reference, migrated)
}

fn tree_image(img: &[u8]) -> migrate::image::TreeImage {
    migrate::image::TreeImage::read_from(img).expect("a tree image")
}

/// `sh -c 'tree produce N | sort -n | md5sum'` frozen while the producer writes: the two pipes
/// between the processes come back with what waited in them, the output file (shared by sh
/// and md5sum at one offset) too; the checksum equals an uninterrupted run's.
#[test]
fn a_shell_pipeline_frozen_mid_run_gives_the_same_output() {
    if !root() {
        return;
    }
    let exe = prog("tree");
    let mk = |d: &Path| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "{} produce 4000 | sort -n | md5sum; echo done",
                exe.display()
            ))
            .current_dir(d);
        (c, d.join("stdout"))
    };
    let ready = |pid: i32| {
        let d = descendants(pid);
        let names: Vec<String> = d.iter().map(|&p| comm(p)).collect();
        if names.len() == 3
            && names.iter().any(|n| n == "sort")
            && names.iter().any(|n| n == "md5sum")
        {
            std::thread::sleep(Duration::from_millis(150));
            true
        } else {
            false
        }
    };
    let check = |img: &[u8]| {
        let t = tree_image(img);
        assert_eq!(t.procs.len(), 4, "sh and three children: {:?}", t.procs);
        // (an unused inherited pipe whose reader is gone is one more, with writers only)
        let pipes = t
            .shared
            .iter()
            .filter(|s| {
                matches!(s.kind, migrate::image::SharedKind::Pipe { .. })
                    && s.ends.iter().any(|e| e.write)
                    && s.ends.iter().any(|e| !e.write)
            })
            .count();
        assert_eq!(pipes, 2, "two pipes between processes: {:?}", t.shared);
        assert!(
            t.shared
                .iter()
                .any(|s| matches!(s.kind, migrate::image::SharedKind::File { .. })),
            "the output file, shared by sh and md5sum"
        );
    };
    let (r, m) = compare_tree(&mk, &ready, &check);
    assert!(String::from_utf8_lossy(&r).ends_with("-\ndone\n"), "{r:?}");
    assert_same(&r, &m);
}

/// A parent whose child already exited (a zombie) and whose other child writes through a pipe
/// to it: after the thaw, wait() gives the same PIDs and statuses (42 and 7), and the bytes
/// waiting in the pipe at the freeze are read.
#[test]
fn a_zombie_child_keeps_its_exit_status_and_a_pipe_its_bytes() {
    if !root() {
        return;
    }
    let exe = prog("tree");
    let mk = |d: &Path| {
        let mut c = Command::new(&exe);
        c.arg("zombie").current_dir(d);
        (c, d.join("stdout"))
    };
    let ready = |pid: i32| {
        let d = descendants(pid);
        let zombie = d.iter().any(|&k| {
            std::fs::read_to_string(format!("/proc/{k}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        });
        if d.len() == 2 && zombie {
            std::thread::sleep(Duration::from_millis(200));
            true
        } else {
            false
        }
    };
    let check = |img: &[u8]| {
        let t = tree_image(img);
        let z: Vec<_> = t.procs.iter().filter_map(|p| p.zombie).collect();
        assert_eq!(z.len(), 1, "{:?}", t.procs);
        assert!(
            libc::WIFEXITED(z[0]) && libc::WEXITSTATUS(z[0]) == 42,
            "{:#x}",
            z[0]
        );
        let waiting: usize = t
            .shared
            .iter()
            .map(|s| match &s.kind {
                migrate::image::SharedKind::Pipe { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert!(waiting > 0, "bytes wait in the pipe at the freeze");
    };
    let (r, m) = compare_tree(&mk, &ready, &check);
    let rs = String::from_utf8_lossy(&r);
    assert!(
        rs.contains("zombie: waitpid same pid, exited 1 status 42")
            && rs.contains("writer: waitpid same pid, exited 1 status 7"),
        "{rs}"
    );
    assert_same(&r, &m);
}

/// A root that leads its own session, a child leading its own process group and another
/// child in that group: after the thaw each is in the session, group and under the parent it
/// was (the root's setsid comes before its children are forked, the groups once all exist).
#[test]
fn sessions_process_groups_and_parents_are_rebuilt() {
    if !root() {
        return;
    }
    let exe = prog("tree");
    let mk = |d: &Path| {
        let mut c = Command::new(&exe);
        c.arg("groups").current_dir(d);
        (c, d.join("stdout"))
    };
    let ready = |pid: i32| {
        let d = descendants(pid);
        let grouped = d.len() == 2
            && d.iter().all(|&k| {
                std::fs::read_to_string(format!("/proc/{k}/stat")).is_ok_and(|s| {
                    s.rsplit_once(')').and_then(|(_, r)| {
                        r.split_whitespace().nth(2).map(|g| g == d[0].to_string())
                    }) == Some(true)
                })
            });
        if grouped {
            std::thread::sleep(Duration::from_millis(300));
        }
        grouped
    };
    let check = |img: &[u8]| {
        let t = tree_image(img);
        assert_eq!(t.procs.len(), 3, "{:?}", t.procs);
        let a = t.procs[1].pid;
        assert!(t.procs[1..].iter().all(|p| p.pgid == a), "{:?}", t.procs);
    };
    let (r, m) = compare_tree(&mk, &ready, &check);
    assert_eq!(
        String::from_utf8_lossy(&r),
        "A: same session 1, own group 1, parent 1\nB: same session 1, A's group 1, parent 1\nP: leads session 1 and group 1; reaped A 1 B 1\n"
    );
    assert_same(&r, &m);
}

/// A C file large enough to keep cc1 busy for a while.
fn big_c(n: usize) -> String {
    let mut s = String::from("/* generated */\n");
    for i in 0..n {
        s += &format!(
            "int f{i}(int *a, int n) {{ int s = {i}; for (int j = 0; j < n; j++) {{ s += a[j] * {m} ^ (s >> 3); if (s & 1) s = s * 3 + j; else s -= a[(j * {i}) % (n ? n : 1)]; }} return s; }}\n",
            m = i * 7 + 1
        );
        s += &format!(
            "static double g{i}(double x) {{ double y = 0; for (int k = 1; k < {k}; k++) y += x / k - y * {i}.5; return y; }}\ndouble h{i}(double x) {{ return g{i}(x) + g{i}(x * 2); }}\n",
            k = i % 17 + 3
        );
    }
    s
}

/// `gcc -O2 -c big.c` frozen while cc1 compiles (gcc waits for its child cc1: a tree):
/// the object file is byte-identical to an uninterrupted compile's.
#[test]
fn gcc_frozen_mid_compile_makes_the_identical_object() {
    if !root() {
        return;
    }
    let src = big_c(250);
    let mk = |d: &Path| {
        std::fs::write(d.join("big.c"), &src).unwrap();
        let mut c = Command::new("gcc");
        c.args(["-O2", "-c", "big.c", "-o", "big.o"]).current_dir(d);
        (c, d.join("big.o"))
    };
    let ready = |pid: i32| {
        let d = descendants(pid);
        if d.len() == 1 && comm(d[0]) == "cc1" {
            std::thread::sleep(Duration::from_millis(400));
            descendants(pid) == d
        } else {
            false
        }
    };
    let check = |img: &[u8]| {
        let t = tree_image(img);
        assert_eq!(t.procs.len(), 2, "gcc and cc1: {:?}", t.procs);
    };
    let (r, m) = compare_tree(&mk, &ready, &check);
    assert!(
        r.len() > 10_000 && r.starts_with(b"\x7fELF"),
        "{} bytes",
        r.len()
    );
    assert!(
        r == m,
        "the object files differ ({} and {} bytes)",
        r.len(),
        m.len()
    );
}

/// A tree that cannot be rebuilt is refused after every process was stopped and checked
/// (two processes share one open directory), and every process runs on as it was: same
/// /proc view, not traced, not stopped; the same for a tree spanning two sessions (refused
/// before anything is stopped).
#[test]
fn a_refused_tree_leaves_every_process_running_untouched() {
    if !root() {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("h8tree-")
        .tempdir()
        .unwrap();
    let shm = format!("{} shm", prog("tree").display());
    for (script, why, procs) in [
        ("exec 3<.; sleep 30 & sleep 30 & wait", "directory", 3),
        ("setsid sleep 30 & wait", "session", 2),
        (shm.as_str(), "shared anonymous memory", 2),
    ] {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script).current_dir(dir.path());
        let mut p = spawn(&mut c, &dir.path().join("out"), None);
        let end = Instant::now() + T;
        while descendants(p.pid)
            .iter()
            .filter(|&&k| comm(k) == "sleep")
            .count()
            < script.matches("sleep").count()
        {
            assert!(Instant::now() < end, "children never started");
            std::thread::sleep(Duration::from_millis(2));
        }
        // every process of the tree exists (the `shm` program forks its child after its loader ran)
        while 1 + descendants(p.pid).len() < procs {
            assert!(Instant::now() < end, "children never started");
            std::thread::sleep(Duration::from_millis(2));
        }
        let all: Vec<i32> = std::iter::once(p.pid).chain(descendants(p.pid)).collect();
        let _g = KillAll(all.clone());
        // settled: two views 100 ms apart agree (shells block signals around forks; a process
        // still in its loader opens and closes fds, so a view that cannot be read is not settled)
        let views_now = || {
            std::panic::catch_unwind(|| all.iter().map(|&k| View::of(k)).collect::<Vec<View>>())
                .ok()
        };
        let mut views: Option<Vec<View>> = views_now();
        let views = loop {
            std::thread::sleep(Duration::from_millis(100));
            let again = views_now();
            if let (Some(a), Some(b)) = (&again, &views) {
                if a.iter().zip(b).all(|(a, b)| a.diff_from(b).is_empty()) {
                    break again.unwrap();
                }
            }
            views = again;
            assert!(Instant::now() < end, "the processes never settled");
        };
        let e = freeze_tree(p.pid, false).expect_err("refused");
        assert!(
            matches!(e, migrate::Error::Unsupported { .. }) && e.to_string().contains(why),
            "{script}: {e}"
        );
        for (k, v) in all.iter().zip(&views) {
            let st = std::fs::read_to_string(format!("/proc/{k}/status")).unwrap();
            assert!(st.contains("TracerPid:\t0"), "{k} left traced:\n{st}");
            assert!(!v.stopped && !View::of(*k).stopped, "{k} left stopped");
            assert_eq!(
                View::of(*k).diff_from(v),
                Vec::<String>::new(),
                "{k} changed"
            );
        }
        assert!(p.alive());
        drop(_g);
        p.wait(T);
    }
}
