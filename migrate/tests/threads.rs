//! Multi-threaded processes through freeze and thaw (needs root; skipped with a message
//! otherwise): real programs whose output must equal an uninterrupted run's, the round-trip
//! checker on every thread, and migration's refusal of threads (the remote supervisor and the
//! home shell know one thread only).

mod common;
use common::check::View;
use common::runs::{assert_same, compare_when};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The image holds more than the main thread.
fn assert_threaded(img: &[u8]) {
    let r = migrate::ImageReader::new(img).expect("image");
    let p = r.process();
    assert!(!p.threads.is_empty(), "frozen with one thread only");
    let tids: Vec<i32> = p.threads.iter().map(|t| t.tid).collect();
    assert!(!tids.contains(&p.pid), "{tids:?}");
}

fn threads_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Four pthreads computing, printing through the main thread, blocked in futex waits and
/// nanosleep at the freeze; their names, masks, TLS, FP registers, cached TIDs
/// (pthread_kill) and clear_child_tid (pthread_join) checked by the program itself.
#[test]
fn c_program_with_four_pthreads_output_identical() {
    if !root() {
        return;
    }
    let mk = |dir: &Path, tag: &str| {
        let mut c = Command::new(prog("threads4"));
        c.arg("150");
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare_when(
        &mk,
        &|pid| threads_of(pid) > 1,
        &assert_threaded,
        Duration::from_millis(200),
        3,
    );
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}

fn python() -> Option<String> {
    // the interpreter itself, not a wrapper (a pyenv shim runs helper processes first)
    Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// python3 with `threading`: three threads hashing under the GIL, sleeping, and handing
/// results to the main thread through a queue (futex waits on locks and conditions).
#[test]
fn python3_threading_output_identical() {
    if !root() {
        return;
    }
    let Some(python) = python() else {
        eprintln!("SKIPPED: no python3");
        return;
    };
    let script = concat!(
        "import hashlib, queue, threading, time\n",
        "q = queue.Queue(); lock = threading.Lock(); total = [0]\n",
        "def work(n):\n",
        "    threading.current_thread().name = f'w{n}'\n",
        "    h = hashlib.sha256(str(n).encode())\n",
        "    for i in range(300):\n",
        "        for _ in range(200): h.update(h.digest())\n",
        "        with lock: total[0] += i\n",
        "        time.sleep(0.005)\n",
        "        q.put((n, i, h.hexdigest()[:12]))\n",
        "ts = [threading.Thread(target=work, args=(n,)) for n in range(3)]\n",
        "for t in ts: t.start()\n",
        "got = {}\n",
        "for _ in range(900):\n",
        "    n, i, d = q.get(timeout=30); got[(n, i)] = d\n",
        "    if len(got) % 60 == 0: print(len(got), flush=True)\n",
        "for t in ts: t.join()\n",
        "for k in sorted(got): print(k, got[k])\n",
        "print('total', total[0], threading.active_count())\n",
        "print('DONE ok')\n",
    );
    let mk = move |dir: &Path, tag: &str| {
        let s = dir.join("threads.py");
        std::fs::write(&s, script).unwrap();
        let mut c = Command::new(&python);
        c.arg(&s);
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare_when(
        &mk,
        &|pid| threads_of(pid) > 1,
        &assert_threaded,
        Duration::from_millis(150),
        2,
    );
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}

/// GNU sort with --parallel=4 on a 40 MiB file: its threads sort in parallel at the freeze;
/// the output file must equal an uninterrupted run's byte for byte.
#[test]
fn parallel_sort_of_a_large_file_byte_identical() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let mut x: u64 = 99;
    let mut s = Vec::with_capacity(41 << 20);
    while s.len() < 40 << 20 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.extend_from_slice(format!("{:016x} {}\n", x >> 8, x % 977).as_bytes());
    }
    std::fs::write(&input, &s).unwrap();
    drop(s);
    // sort's output (its stdout) with and without a freeze/thaw while its threads sort
    let mk = |d: &Path, tag: &str| {
        let mut c = Command::new("sort");
        c.args(["--parallel=4", "-S", "200M", "-T"])
            .arg(d)
            .arg(&input)
            .env("LC_ALL", "C");
        (c, d.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare_when(
        &mk,
        &|pid| threads_of(pid) >= 2,
        &assert_threaded,
        Duration::ZERO,
        1,
    );
    assert!(r.len() > 1000);
    assert!(
        r == m,
        "sort output differs ({} vs {} bytes)",
        r.len(),
        m.len()
    );
}

/// The round-trip checker on a four-thread process: every thread comes back with its name,
/// mask, credentials and the rest of what /proc shows, and the program then finishes well.
#[test]
fn round_trip_checker_sees_every_thread_come_back() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("threads4")).arg("150"), &out, None);
    wait_lines(&out, 5, T);
    // stopped by job control, so that nothing moves between the two views (it comes back
    // stopped, every thread blocked where it was)
    // SAFETY: signal to our own child.
    unsafe { libc::kill(p.pid, libc::SIGSTOP) };
    let end = std::time::Instant::now() + T;
    while !std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
        .unwrap()
        .rsplit_once(')')
        .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
    {
        assert!(std::time::Instant::now() < end, "never stopped");
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = View::of(p.pid);
    assert_eq!(
        before.get("threads").len(),
        5,
        "{:?}",
        before.get("threads")
    );
    assert!(before.get("threads").iter().any(|l| l.contains("worker-3")));
    let (mut q, diff) = common::check::round_trip(&mut p, false);
    assert!(
        diff.is_empty(),
        "differences after the round trip:\n{}",
        diff.join("\n")
    );
    assert_eq!(threads_of(q.pid), 5);
    // SAFETY: signal to our own child.
    unsafe { libc::kill(q.pid, libc::SIGCONT) };
    assert!(exited_ok(q.wait(T)), "{}", read(&out));
    assert!(read(&out).ends_with("DONE ok\n"), "{}", read(&out));
}

/// Migration's seize takes a multi-threaded process with all its threads (each one's state in
/// the image), and a seize given up puts every thread back: the process runs on to its end.
#[test]
fn migration_seizes_every_thread_and_puts_them_back_when_given_up() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("threads4")).arg("150"), &out, None);
    wait_lines(&out, 3, T);
    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    let img = s.collect().expect("collect");
    assert_eq!(img.threads.len(), 4, "the 4 other threads are in the image");
    drop(s);
    let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    assert!(st.contains("TracerPid:\t0"), "left traced");
    assert!(exited_ok(p.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"), "{}", read(&out));
}

/// A checkpoint (--leave-running) of a threaded process: the original runs on to the same
/// end, and the thawed copy too.
#[test]
fn leave_running_checkpoint_of_threads_then_thaw_a_copy() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("threads4")).arg("150"), &out, None);
    wait_lines(&out, 5, T);
    let img = freeze(p.pid, true).expect("checkpoint");
    assert_threaded(&img);
    assert!(
        exited_ok(p.wait(T)),
        "the original after a checkpoint: {}",
        read(&out)
    );
    let reference = read(&out);
    assert!(reference.ends_with("DONE ok\n"));
    std::fs::write(&out, "").unwrap();
    let mut q = thaw(&img);
    assert!(exited_ok(q.wait(T)), "{}", read(&out));
    // the copy goes on from where the checkpoint was taken: the tail of the original's output
    let copy = read(&out);
    assert!(
        copy.ends_with("DONE ok\n") && !copy.contains("BAD"),
        "{copy}"
    );
}

/// A thread blocked in pause() (restarted after the thaw, never woken) beside a main thread
/// that prints and exits: the exit takes the thread along, as in an uninterrupted run.
#[test]
fn thread_blocked_in_pause_and_a_printing_main_thread() {
    if !root() {
        return;
    }
    let mk = |dir: &Path, tag: &str| {
        let mut c = Command::new(prog("thread"));
        c.arg("60");
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare_when(
        &mk,
        &|pid| threads_of(pid) > 1,
        &assert_threaded,
        Duration::from_millis(150),
        2,
    );
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}
