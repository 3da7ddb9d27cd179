//! Real freeze/thaw of real processes (needs root; skipped with a message otherwise).
//! Every program holds state, checks it itself after thaw, and its output is compared with an
//! uninterrupted run of the same program. Refusals are in `refusals.rs`; stdio, terminals,
//! sessions and job control in `stdio_session.rs`.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Runs `mk(dir, tag)` uninterrupted and again with `cycles` freeze/thaw cycles `delay` apart;
/// returns (reference output, migrated output) of the file `mk` names.
fn compare(
    mk: &dyn Fn(&Path, &str) -> (Command, PathBuf),
    delay: Duration,
    cycles: usize,
) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, out) = mk(dir.path(), "ref");
    let mut p = spawn(&mut c, &dir.path().join("ref.stdout"), None);
    let st = p.wait(T);
    assert!(
        exited_ok(st),
        "reference run failed: {st:#x}: {}",
        read(&out)
    );
    let reference = read(&out);

    let (mut c, out) = mk(dir.path(), "mig");
    let mut p = spawn(&mut c, &dir.path().join("mig.stdout"), None);
    for i in 0..cycles {
        std::thread::sleep(delay);
        let img = freeze(p.pid, false).unwrap_or_else(|e| panic!("freeze #{i}: {e}"));
        p.wait(T); // the frozen original is gone
        p = thaw(&img);
    }
    let st = p.wait(T);
    let migrated = read(&out);
    assert!(exited_ok(st), "migrated run failed: {st:#x}: {migrated}");
    (reference, migrated)
}

fn assert_same(r: &str, m: &str) {
    assert!(
        r.ends_with("DONE ok\n"),
        "reference did not finish well:\n{r}"
    );
    assert!(!m.contains("BAD"), "migrated run reported:\n{m}");
    assert_eq!(r, m, "migrated output differs from the uninterrupted run");
}

fn stdout_of(
    prog_name: &'static str,
    args: &'static [&'static str],
) -> impl Fn(&Path, &str) -> (Command, PathBuf) {
    move |dir: &Path, tag: &str| {
        let mut c = Command::new(prog(prog_name));
        c.args(args);
        (c, dir.join(format!("{tag}.stdout")))
    }
}

#[test]
fn gpr_and_ymm_registers_held_across_freeze_in_nanosleep() {
    if !root() {
        return;
    }
    let (r, m) = compare(
        &stdout_of("counter", &["60", "4", "10"]),
        Duration::from_millis(200),
        1,
    );
    assert_same(&r, &m);
}

#[test]
fn large_checksummed_heap_128mib() {
    if !root() {
        return;
    }
    let (r, m) = compare(
        &stdout_of("counter", &["150", "128", "10"]),
        Duration::from_millis(500),
        1,
    );
    assert_same(&r, &m);
}

#[test]
fn five_freeze_thaw_cycles_in_a_row() {
    if !root() {
        return;
    }
    let (r, m) = compare(
        &stdout_of("counter", &["200", "8", "10"]),
        Duration::from_millis(120),
        5,
    );
    assert_same(&r, &m);
}

#[test]
fn o_append_counter_clock_nanosleep_and_vdso_monotonic() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |tag: &str, interrupt: bool| -> String {
        let f = dir.path().join(format!("{tag}.count"));
        let mut c = Command::new(prog("append"));
        c.arg(&f).arg("60");
        let mut p = spawn(&mut c, &dir.path().join(format!("{tag}.stdout")), None);
        if interrupt {
            std::thread::sleep(Duration::from_millis(200));
            let img = freeze(p.pid, false).expect("freeze");
            p.wait(T);
            // someone else appends while the process is frozen: O_APPEND must not overwrite it
            std::fs::OpenOptions::new()
                .append(true)
                .open(&f)
                .and_then(|mut h| std::io::Write::write_all(&mut h, b"external\n"))
                .unwrap();
            p = thaw(&img);
        }
        assert!(exited_ok(p.wait(T)), "{}", read(&f));
        read(&f)
    };
    let r = run("ref", false);
    let m = run("mig", true);
    assert!(
        m.contains("external\n"),
        "line appended during the freeze was overwritten:\n{m}"
    );
    assert_same(&r, &m.replace("external\n", ""));
}

#[test]
fn signal_handler_fires_on_altstack_and_blocked_signal_stays_pending() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |tag: &str, interrupt: bool| -> String {
        let out = dir.path().join(format!("{tag}.stdout"));
        let mut p = spawn(Command::new(prog("sig")).arg("60"), &out, None);
        std::thread::sleep(Duration::from_millis(150));
        // SAFETY: signal to our own child.
        unsafe { libc::kill(p.pid, libc::SIGUSR2) };
        std::thread::sleep(Duration::from_millis(50));
        if interrupt {
            let img = freeze(p.pid, false).expect("freeze");
            p.wait(T);
            p = thaw(&img);
        }
        assert!(exited_ok(p.wait(T)), "{}", read(&out));
        read(&out)
    };
    let r = run("ref", false);
    let m = run("mig", true);
    assert!(m.contains("usr2 pending 1\nusr2 delivered 1\n"), "{m}");
    assert_same(&r, &m);
}

#[test]
fn file_offset_continues_and_stdout_stderr_share_one_file() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = |tag: &str, interrupt: bool| -> (String, String) {
        let f = dir.path().join(format!("{tag}.records"));
        let out = dir.path().join(format!("{tag}.stdout"));
        let mut p = spawn(Command::new(prog("offset")).arg(&f).arg("60"), &out, None);
        if interrupt {
            std::thread::sleep(Duration::from_millis(200));
            let img = freeze(p.pid, false).expect("freeze");
            p.wait(T);
            p = thaw(&img);
        }
        assert!(exited_ok(p.wait(T)), "{}", read(&out));
        (read(&f), read(&out))
    };
    let (rf, ro) = run("ref", false);
    let (mf, mo) = run("mig", true);
    assert_eq!(rf.len(), 60 * 64);
    assert_eq!(rf, mf, "records file differs");
    assert_same(&ro, &mo);
}

#[test]
fn private_file_mapping_shared_anon_page_and_growing_brk() {
    if !root() {
        return;
    }
    let data: Vec<u8> = (0..16 * 4096)
        .map(|i| ((i / 4096) * 31 + i % 4096) as u8)
        .collect();
    let mk = move |dir: &Path, tag: &str| {
        let d = dir.join("data");
        if !d.exists() {
            std::fs::write(&d, &data).unwrap();
        }
        let mut c = Command::new(prog("mapping"));
        c.arg(&d).arg("60");
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare(&mk, Duration::from_millis(200), 1);
    assert_same(&r, &m);
}

#[test]
fn python3_loop_output_identical() {
    if !root() {
        return;
    }
    // the interpreter itself, not a wrapper (a pyenv shim is a bash script that runs helper
    // processes before it execs python: frozen in that window, it is refused for its children)
    let Some(python) = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    else {
        eprintln!("SKIPPED: no python3");
        return;
    };
    let script = concat!(
        "import hashlib, time, os\n",
        "h = hashlib.sha256(); t0 = time.monotonic(); d = {}\n",
        "for i in range(100):\n",
        "    h.update(str(i).encode()); d[i] = 'x' * i; time.sleep(0.01)\n",
        "    t = time.monotonic(); assert t >= t0; t0 = t\n",
        "    print(i, h.hexdigest()[:16], len(d), flush=True)\n",
        "print('DONE ok')\n",
    );
    let mk = move |dir: &Path, tag: &str| {
        let s = dir.join("loop.py");
        std::fs::write(&s, script).unwrap();
        let mut c = Command::new(&python);
        c.arg(&s);
        (c, dir.join(format!("{tag}.stdout")))
    };
    let (r, m) = compare(&mk, Duration::from_millis(300), 1);
    assert_same(&r, &m);
}

#[test]
fn gzip_of_large_input_byte_identical() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    let mut x: u64 = 12345;
    let words = [
        "alpha ", "beta ", "gamma ", "delta\n", "omnode ", "mosix ", "42 ", "freeze ",
    ];
    let mut s = Vec::with_capacity(40 << 20);
    while s.len() < 40 << 20 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.extend_from_slice(words[(x >> 61) as usize].as_bytes());
        if x >> 58 & 7 == 0 {
            s.extend_from_slice(format!("{} ", x >> 40).as_bytes());
        }
    }
    std::fs::write(&input, &s).unwrap();
    let run = |tag: &str, interrupt: bool| -> Vec<u8> {
        let out = dir.path().join(format!("{tag}.gz"));
        let mut p = spawn(
            Command::new("gzip").args(["-6", "-n", "-c"]).arg(&input),
            &out,
            Some(&dir.path().join("err")),
        );
        if interrupt {
            std::thread::sleep(Duration::from_millis(250));
            assert!(
                p.alive(),
                "gzip finished before the freeze; make the input larger"
            );
            let img = freeze(p.pid, false).expect("freeze");
            p.wait(T);
            p = thaw(&img);
        }
        assert!(exited_ok(p.wait(T)));
        std::fs::read(&out).unwrap()
    };
    let r = run("ref", false);
    let m = run("mig", true);
    assert!(r.len() > 1000);
    assert!(
        r == m,
        "gzip output differs ({} vs {} bytes)",
        r.len(),
        m.len()
    );
}

#[test]
fn same_pid_thaw_keeps_the_pid() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, out) = spawn_counter(dir.path());
    std::thread::sleep(Duration::from_millis(150));
    let old = p.pid;
    let img = freeze(old, false).expect("freeze");
    p.wait(T);
    let t = migrate::thaw(
        &img[..],
        &migrate::ThawOptions {
            same_pid: true,
            ..Default::default()
        },
    )
    .expect("thaw");
    let mut q = Proc::new(t.pid);
    assert_eq!(t.pid, old, "{:?}", t.pid_note);
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn leave_running_checkpoint_then_thaw_a_copy() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, out) = spawn_counter(dir.path());
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, true).expect("freeze --leave-running");
    assert!(p.alive());
    assert!(
        exited_ok(p.wait(T)),
        "original did not survive the checkpoint"
    );
    assert!(read(&out).ends_with("DONE ok\n"));
    // the image is still good for a copy
    let mut q = thaw(&img);
    assert!(exited_ok(q.wait(T)));
}

#[test]
fn credentials_umask_rlimits_cwd_comm_personality_come_back() {
    if !root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = dir.path().join("out");
    let mut c = Command::new(prog("counter"));
    c.args(["40", "1", "10"]).current_dir(dir.path());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::umask(0o027);
            let l = libc::rlimit {
                rlim_cur: 512,
                rlim_max: 1024,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            libc::personality(0x0040000); // ADDR_NO_RANDOMIZE
            let g = [65534 as libc::gid_t, 100];
            libc::setgroups(2, g.as_ptr());
            libc::setresgid(65534, 65534, 65534);
            libc::setresuid(65534, 65534, 65534);
            Ok(())
        });
    }
    let mut p = spawn(&mut c, &out, None);
    std::thread::sleep(Duration::from_millis(150));
    let facts = |pid: i32| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let pick = |k: &str| {
            st.lines()
                .find(|l| l.starts_with(k))
                .unwrap_or("")
                .to_string()
        };
        let lim = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        (
            [pick("Uid:"), pick("Gid:"), pick("Groups:"), pick("Umask:")],
            std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
            std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap(),
            std::fs::read_to_string(format!("/proc/{pid}/personality")).unwrap(),
            lim.lines()
                .find(|l| l.starts_with("Max open files"))
                .unwrap()
                .to_string(),
            std::fs::read(format!("/proc/{pid}/cmdline")).unwrap(),
        )
    };
    let before = facts(p.pid);
    assert!(before.0[0].contains("65534"), "{:?}", before.0);
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let mut q = thaw(&img);
    let after = facts(q.pid);
    assert_eq!(before, after);
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn rseq_robust_list_and_exe_come_back() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut p, out) = spawn_counter(dir.path());
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let want = migrate::inspect(&img[..]).unwrap().process;
    assert!(
        want.rseq.is_some(),
        "glibc registers rseq; the image should carry it"
    );
    assert_ne!(want.robust_list.0, 0);
    let mut q = thaw(&img);
    // look at the new process from outside: stop it briefly
    // SAFETY: ptrace of our own child; detached again below.
    let (rseq, head, len) = unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, q.pid, 0, 0), 0);
        libc::ptrace(libc::PTRACE_INTERRUPT, q.pid, 0, 0);
        let mut st = 0;
        libc::waitpid(q.pid, &mut st, libc::__WALL);
        let mut c = [0u64; 3];
        assert!(libc::ptrace(0x420f, q.pid, 24usize, c.as_mut_ptr()) > 0);
        let (mut head, mut len) = (0u64, 0u64);
        libc::syscall(libc::SYS_get_robust_list, q.pid, &mut head, &mut len);
        libc::ptrace(libc::PTRACE_DETACH, q.pid, 0, 0);
        (c, head, len)
    };
    let (ptr, size, sig) = want.rseq.unwrap();
    assert_eq!(
        (rseq[0], rseq[1] as u32, (rseq[1] >> 32) as u32),
        (ptr, size, sig)
    );
    assert_eq!((head, len), want.robust_list);
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/exe", q.pid)).unwrap(),
        prog("counter")
    );
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn interval_timer_keeps_firing_after_thaw() {
    if !root() {
        return;
    }
    let (r, m) = compare(&stdout_of("timer", &["80"]), Duration::from_millis(200), 1);
    assert_same(&r, &m);
}
