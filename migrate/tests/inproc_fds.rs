//! File descriptors that live inside the process, carried with their state (needs root;
//! skipped with a message otherwise): a self-pipe with bytes waiting, a large pipe, an
//! eventfd's counter, epoll registrations; and node.js, whose event loop holds all of them
//! beside its threads. Outputs must equal an uninterrupted run's.

mod common;
use common::runs::{assert_same, compare};
use common::*;
use migrate::FdKind;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn kinds(img: &[u8]) -> Vec<FdKind> {
    let r = migrate::ImageReader::new(img).expect("image");
    r.process().fds.iter().map(|f| f.kind.clone()).collect()
}

/// The inproc program's pipes, eventfd, socketpair and epoll come back with their state,
/// through three freeze/thaw cycles.
#[test]
fn self_pipe_socketpair_eventfd_and_epoll_come_back_with_their_state() {
    if !root() {
        return;
    }
    let check = |img: &[u8]| {
        let k = kinds(img);
        let waiting: usize = k
            .iter()
            .map(|k| match k {
                FdKind::Pipe { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert!(waiting >= 200_000, "pipe data not in the image: {waiting}");
        assert!(
            k.iter()
                .any(|k| matches!(k, FdKind::Pipe { size: 262144, .. }))
        );
        assert!(
            k.iter()
                .any(|k| matches!(k, FdKind::EventFd { semaphore: true, count, .. } if *count > 0))
        );
        assert!(
            k.iter()
                .any(|k| matches!(k, FdKind::Epoll { watches, .. } if watches.len() == 4))
        );
        assert!(
            k.iter()
                .any(|k| matches!(k, FdKind::SocketPair { data, .. } if data.starts_with(b"back"))),
            "{k:?}"
        );
        assert!(
            k.iter().any(|k| matches!(k, FdKind::SharedWith { .. })),
            "the dup'ed read end"
        );
    };
    let mk = |dir: &Path, tag: &str| {
        let mut c = Command::new(prog("inproc"));
        c.arg("60");
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare(&mk, &check, Duration::from_millis(150), 3);
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}

/// The round-trip checker on the same program: fds with flags and offsets (pipes by identity,
/// not inode number) and everything else /proc shows come back.
#[test]
fn round_trip_checker_on_in_process_fds() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("inproc")).arg("60"), &out, None);
    wait_lines(&out, 3, T);
    // SAFETY: signal to our own child.
    unsafe { libc::kill(p.pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(50));
    let (mut q, diff) = common::check::round_trip(&mut p, false);
    assert!(
        diff.is_empty(),
        "differences after the round trip:\n{}",
        diff.join("\n")
    );
    // SAFETY: signal to our own child.
    unsafe { libc::kill(q.pid, libc::SIGCONT) };
    assert!(exited_ok(q.wait(T)), "{}", read(&out));
    assert!(read(&out).ends_with("DONE ok\n"), "{}", read(&out));
}

/// node.js: its event loop (epoll, eventfds, self-pipes), its libuv thread pool (pbkdf2) and
/// V8's threads, frozen twice while it works.
#[test]
fn node_script_output_identical() {
    if !root() {
        return;
    }
    if Command::new("node").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no node");
        return;
    }
    let script = concat!(
        "const crypto = require('crypto');\n",
        "let i = 0, acc = 0;\n",
        "function step() {\n",
        "  crypto.pbkdf2('pw' + i, 'salt', 3000, 16, 'sha256', (err, key) => {\n",
        "    if (err) throw err;\n",
        "    acc = (acc * 31 + key[0]) % 1000003;\n",
        "    console.log(i, key.toString('hex'), acc);\n",
        "    i++;\n",
        "    if (i < 120) setTimeout(step, 8); else console.log('DONE ok');\n",
        "  });\n",
        "}\n",
        "step();\n",
    );
    let check = |img: &[u8]| {
        let r = migrate::ImageReader::new(img).expect("image");
        assert!(!r.process().threads.is_empty(), "node with one thread?");
        let k = kinds(img);
        assert!(k.iter().any(|k| matches!(k, FdKind::Epoll { .. })), "{k:?}");
    };
    let mk = move |dir: &Path, tag: &str| {
        let s = dir.join("loop.js");
        std::fs::write(&s, script).unwrap();
        let mut c = Command::new("node");
        c.arg(&s);
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare(&mk, &check, Duration::from_millis(400), 2);
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}

/// Timerfds (periodic, and one-shot with an unread expiration), a signalfd with its signal
/// pending, a sealed memfd at an offset and a deleted file opened for appending: through
/// three freeze/thaw cycles, the output equals an uninterrupted run's.
#[test]
fn timerfd_signalfd_memfd_and_deleted_file_come_back() {
    if !root() {
        return;
    }
    let check = |img: &[u8]| {
        let k = kinds(img);
        assert!(
            k.iter()
                .any(|k| matches!(k, FdKind::TimerFd { clockid: 1, .. })),
            "{k:?}"
        );
        assert!(k.iter().any(|k| matches!(
            k,
            FdKind::TimerFd {
                clockid: 0,
                ticks: 1,
                ..
            }
        )));
        assert!(
            k.iter()
                .any(|k| matches!(k, FdKind::SignalFd { mask, .. } if *mask == 1 << 9))
        );
        assert!(k.iter().any(|k| matches!(k, FdKind::Contents { memfd: true, seals: 6, data, .. } if data.len() == 300_000)));
        assert!(k.iter().any(|k| matches!(k, FdKind::Contents { memfd: false, name, .. } if name.ends_with("/scratch"))));
    };
    let mk = |dir: &Path, tag: &str| {
        let d = dir.join(tag);
        std::fs::create_dir_all(&d).unwrap();
        let mut c = Command::new(prog("fdmore"));
        c.arg(&d).arg("60");
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare(&mk, &check, Duration::from_millis(120), 3);
    assert!(String::from_utf8_lossy(&r).ends_with("DONE ok\n"));
    assert_same(&r, &m);
}

/// `xz -9 -T2`: a self-pipe (its signal handling) and a second thread, frozen mid-compression
/// twice; the compressed file must equal an uninterrupted run's byte for byte.
#[test]
fn xz_with_its_self_pipe_and_a_thread_byte_identical() {
    if !root() {
        return;
    }
    if Command::new("xz").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no xz");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let mut x: u64 = 7;
    let mut s = Vec::with_capacity(4 << 20);
    while s.len() < 3 << 20 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.extend_from_slice(format!("{} {:x}\n", x % 100_003, x >> 44).as_bytes());
    }
    std::fs::write(&input, &s).unwrap();
    // xz's output (its stdout) with and without two freeze/thaw cycles 300 ms apart
    let mk = |d: &Path, tag: &str| {
        let mut c = Command::new("xz");
        c.args(["-9", "-T2", "-c"]).arg(&input);
        (c, d.join(format!("{tag}.stdout")))
    };
    let self_pipe = |img: &[u8]| {
        assert!(
            kinds(img).iter().any(|k| matches!(k, FdKind::Pipe { .. })),
            "no self-pipe in the image"
        )
    };
    let (r, m) = compare(&mk, &self_pipe, Duration::from_millis(300), 2);
    assert!(r.len() > 1000);
    assert!(
        r == m,
        "xz output differs ({} vs {} bytes)",
        r.len(),
        m.len()
    );
}

/// Migration's seize takes a process whose fds live inside it (they move with it), and a seize
/// given up leaves the process running untouched.
#[test]
fn migration_seizes_in_process_fds_and_a_seize_given_up_leaves_it_running() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("inproc")).arg("40"), &out, None);
    wait_lines(&out, 2, T);
    let mut s = migrate::seize(p.pid, Duration::from_secs(5)).expect("seize");
    let img = s.collect().expect("collect");
    assert!(
        img.fds.iter().any(|f| migrate::lives_inside(&img.fds, f)),
        "no fd of the image moves with it: {:?}",
        img.fds
    );
    drop(s);
    let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    assert!(st.contains("TracerPid:\t0"), "left traced");
    assert!(exited_ok(p.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"), "{}", read(&out));
}
