//! Real freeze/thaw of real processes (needs root; skipped with a message otherwise).
//! Every program holds state, checks it itself after thaw, and its output is compared with an
//! uninterrupted run of the same program.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

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
    if Command::new("python3").arg("-c").arg("1").status().is_err() {
        eprintln!("SKIPPED: no python3");
        return;
    }
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
        let mut c = Command::new("python3");
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
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("counter")).args(["40", "1", "10"]),
        &out,
        None,
    );
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
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("counter")).args(["40", "1", "10"]),
        &out,
        None,
    );
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

fn refused(prog_name: &'static str, what: &str) {
    refused_with(prog_name, &["40"], what)
}

fn refused_with(prog_name: &'static str, args: &[&str], what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let r_out = dir.path().join("ref");
    let mut r = spawn(Command::new(prog(prog_name)).args(args), &r_out, None);
    let m_out = dir.path().join("mig");
    let mut p = spawn(Command::new(prog(prog_name)).args(args), &m_out, None);
    std::thread::sleep(Duration::from_millis(150));
    let e = freeze(p.pid, false).expect_err("freeze must be refused");
    let msg = e.to_string();
    assert!(msg.contains(what), "error does not name {what}: {msg}");
    assert!(matches!(e, migrate::Error::Unsupported { .. }), "{e:?}");
    let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    assert!(st.contains("TracerPid:\t0"), "left traced");
    assert!(exited_ok(p.wait(T)), "refused process did not run on");
    assert!(exited_ok(r.wait(T)));
    assert_eq!(read(&r_out), read(&m_out));
    assert!(read(&m_out).ends_with("DONE ok\n"));
}

#[test]
fn threaded_program_is_refused_and_runs_on() {
    if !root() {
        return;
    }
    refused("thread", "2 threads");
}

#[test]
fn socket_is_refused_and_runs_on() {
    if !root() {
        return;
    }
    refused("sock", "socket");
}

#[test]
fn thaw_against_a_changed_mapped_file_is_refused() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    std::fs::write(&d, vec![7u8; 16 * 4096]).unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("mapping")).arg(&d).arg("60"), &out, None);
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    std::fs::write(&d, vec![8u8; 17 * 4096]).unwrap();
    let e = migrate::thaw(&img[..], &migrate::ThawOptions::default()).expect_err("must refuse");
    assert!(matches!(e, migrate::Error::FileChanged { .. }), "{e}");
    assert!(e.to_string().contains("data"), "{e}");
}

#[test]
fn already_traced_process_is_refused_and_left_alone() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("counter")).args(["30", "1", "10"]),
        &out,
        None,
    );
    // SAFETY: seize our own child without stopping it.
    assert_eq!(unsafe { libc::ptrace(libc::PTRACE_SEIZE, p.pid, 0, 0) }, 0);
    let e = freeze(p.pid, false).expect_err("traced process must be refused");
    assert!(e.to_string().contains("already traced"), "{e}");
    // SAFETY: detach needs a stop: interrupt, wait, detach.
    unsafe {
        libc::ptrace(libc::PTRACE_INTERRUPT, p.pid, 0, 0);
        let mut st = 0;
        libc::waitpid(p.pid, &mut st, libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, p.pid, 0, 0);
    }
    assert!(exited_ok(p.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn child_processes_are_refused() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(
        Command::new("sh").args(["-c", "sleep 3 & wait"]),
        &dir.path().join("out"),
        None,
    );
    std::thread::sleep(Duration::from_millis(150));
    let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid)).unwrap();
    let e = freeze(p.pid, false).expect_err("process with children must be refused");
    assert!(e.to_string().contains("child processes"), "{e}");
    assert!(p.alive());
    for k in kids.split_whitespace() {
        // SAFETY: the sleep we started through sh.
        unsafe { libc::kill(k.parse().unwrap(), libc::SIGKILL) };
    }
    assert!(exited_ok(p.wait(T)));
}

#[test]
fn session_leader_comes_back_as_one() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut c = Command::new(prog("counter"));
    c.args(["40", "1", "10"]);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut p = spawn(&mut c, &out, None);
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let mut q = thaw(&img);
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", q.pid)).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(f[2], q.pid.to_string(), "not its own process group: {stat}");
    assert_eq!(f[3], q.pid.to_string(), "not a session leader: {stat}");
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn pipe_stdout_attaches_to_a_file_named_at_thaw() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(prog("counter"));
    c.args(["40", "1", "10"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    #[allow(clippy::zombie_processes)] // reaped by Proc
    let mut child = c.spawn().unwrap();
    let mut p = Proc::new(child.id() as i32);
    let pipe = child.stdout.take().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    drop(pipe);
    let out = dir.path().join("after");
    let f = std::fs::File::create(&out).unwrap();
    let t = migrate::thaw(
        &img[..],
        &migrate::ThawOptions {
            stdout: Some(std::os::fd::AsRawFd::as_raw_fd(&f)),
            ..Default::default()
        },
    )
    .expect("thaw");
    let mut q = Proc::new(t.pid);
    assert!(exited_ok(q.wait(T)));
    // stdout was a pipe, so everything was still in the stdio buffer at freeze
    let s = read(&out);
    assert!(s.starts_with("iter 0\n") && s.ends_with("DONE ok\n"), "{s}");
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

/// A sink that fails after `left` bytes, like a full disk or a dropped connection.
struct FailingSink {
    left: usize,
}
impl std::io::Write for FailingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("connection lost"));
        }
        let n = b.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn failed_image_write_leaves_the_process_running_unchanged() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r_out = dir.path().join("ref");
    let mut r = spawn(
        Command::new(prog("counter")).args(["60", "4", "10"]),
        &r_out,
        None,
    );
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("counter")).args(["60", "4", "10"]),
        &out,
        None,
    );
    for (i, cut) in [100usize, 3 << 20].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(100));
        let e = migrate::freeze(
            p.pid,
            FailingSink { left: cut },
            &migrate::FreezeOptions::default(),
        )
        .expect_err("freeze into a failing sink must fail");
        assert!(e.to_string().contains("connection lost"), "#{i}: {e}");
        let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
        assert!(st.contains("TracerPid:\t0"), "left traced");
        assert!(!st.contains("State:\tt"), "left stopped");
    }
    assert!(exited_ok(p.wait(T)), "process did not run on");
    assert!(exited_ok(r.wait(T)));
    assert_eq!(read(&r_out), read(&out));
    assert!(read(&out).ends_with("DONE ok\n"));
}

#[test]
fn epoll_eventfd_timerfd_signalfd_inotify_and_shared_memory_are_refused() {
    if !root() {
        return;
    }
    for (kind, what) in [
        ("epoll", "epoll"),
        ("eventfd", "eventfd"),
        ("timerfd", "timerfd"),
        ("signalfd", "signalfd"),
        ("inotify", "inotify"),
        ("sysv", "SysV shared memory"),
        ("posixshm", "POSIX shared memory"),
        ("sharedanon", "also mapped by process"),
    ] {
        refused_with("fdkinds", &[kind, "25"], what);
    }
}

#[test]
fn rseq_robust_list_and_exe_come_back() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("counter")).args(["40", "1", "10"]),
        &out,
        None,
    );
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
fn freezer_killed_mid_freeze_leaves_the_process_running_unchanged() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let r_out = dir.path().join("ref");
    let args = ["80", "512", "10"];
    let mut r = spawn(Command::new(prog("counter")).args(args), &r_out, None);
    let out = dir.path().join("out");
    let mut p = spawn(Command::new(prog("counter")).args(args), &out, None);
    wait_lines(&out, 0, T);
    std::thread::sleep(Duration::from_millis(700)); // heap filled, loop running
    let mut f = Command::new(env!("CARGO_BIN_EXE_migrate-cli"));
    f.arg("freeze")
        .arg(p.pid.to_string())
        .arg(dir.path().join("img"));
    let mut freezer = spawn(&mut f, &dir.path().join("freezer.out"), None);
    // wait until it holds the process, give it time to get into the memory copy, kill it
    let end = std::time::Instant::now() + T;
    let traced = loop {
        let st = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap_or_default();
        if st.contains(&format!("TracerPid:\t{}", freezer.pid)) {
            break true;
        }
        if !freezer.alive() || std::time::Instant::now() > end {
            break false;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    assert!(
        traced,
        "the freezer never attached: {}",
        read(&dir.path().join("freezer.out"))
    );
    // kill it once memory is streaming (the image file has grown past its process section)
    let img = dir.path().join("img");
    while std::fs::metadata(&img).map(|m| m.len()).unwrap_or(0) < 1 << 20 {
        assert!(
            freezer.alive(),
            "freezer ended early: {}",
            read(&dir.path().join("freezer.out"))
        );
        assert!(std::time::Instant::now() < end, "freezer made no progress");
        std::thread::sleep(Duration::from_micros(200));
    }
    // SAFETY: our own child.
    unsafe { libc::kill(freezer.pid, libc::SIGKILL) };
    freezer.wait(T);
    assert!(
        exited_ok(p.wait(T)),
        "process did not survive its freezer's death: {}",
        read(&out)
    );
    assert!(exited_ok(r.wait(T)));
    assert_eq!(read(&r_out), read(&out));
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

#[test]
fn terminal_stdio_attaches_to_files_named_at_thaw() {
    if !root() {
        return;
    }
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no script(1) to make a terminal");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let counter = prog("counter");
    let typescript = dir.path().join("typescript");
    let mut s = spawn(
        Command::new("script")
            .env("SHELL", "/bin/sh")
            .arg("-qfc")
            // `exec`: some shells fork for `-c CMD`, and a freeze refuses child processes
            .arg(format!("exec {} 60 1 10", counter.display()))
            .arg(&typescript),
        &dir.path().join("script.out"),
        None,
    );
    // the counter runs on the pty as script's child (once the shell has exec'ed it)
    let end = std::time::Instant::now() + T;
    let exe = std::fs::canonicalize(&counter).unwrap();
    let pid: i32 = loop {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", s.pid))
            .unwrap_or_default();
        if let Some(k) = kids.split_whitespace().next() {
            let k: i32 = k.parse().unwrap();
            if std::fs::read_link(format!("/proc/{k}/exe")).ok().as_deref() == Some(&*exe) {
                break k;
            }
        }
        assert!(
            std::time::Instant::now() < end,
            "script did not start the counter"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::fs::read_link(format!("/proc/{pid}/fd/1"))
            .unwrap()
            .starts_with("/dev/pts")
    );
    let img = freeze(pid, false).expect("freeze");
    let s_img = migrate::inspect(&img[..]).unwrap();
    assert!(s_img.process.fds.iter().any(
        |f| matches!(&f.kind, migrate::FdKind::Stdio { what, .. } if what.starts_with("terminal"))
    ));
    s.wait(T); // script ends with its child
    let out = dir.path().join("after");
    let f = std::fs::File::create(&out).unwrap();
    let null = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    let t = migrate::thaw(
        &img[..],
        &migrate::ThawOptions {
            stdin: Some(null.as_raw_fd()),
            stdout: Some(f.as_raw_fd()),
            stderr: Some(f.as_raw_fd()),
            ..Default::default()
        },
    )
    .expect("thaw");
    let mut q = Proc::new(t.pid);
    assert!(exited_ok(q.wait(T)));
    // stdout on a terminal is line-buffered: the lines before the freeze went to the pty,
    // the rest (and nothing twice) to the file
    let before = read(&typescript).replace('\r', "");
    let after = read(&out);
    let all: String = before
        .lines()
        .filter(|l| l.starts_with("iter"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &after;
    let want: String = (0..60).map(|i| format!("iter {i}\n")).collect::<String>() + "DONE ok\n";
    assert_eq!(all, want);
}

#[test]
fn job_control_stopped_process_comes_back_stopped() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut p = spawn(
        Command::new(prog("counter")).args(["40", "1", "10"]),
        &out,
        None,
    );
    std::thread::sleep(Duration::from_millis(150));
    // SAFETY: our own child.
    unsafe { libc::kill(p.pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(50));
    let img = freeze(p.pid, false).expect("freeze");
    p.wait(T);
    let mut q = thaw(&img);
    std::thread::sleep(Duration::from_millis(100));
    let st = std::fs::read_to_string(format!("/proc/{}/status", q.pid)).unwrap();
    assert!(
        st.contains("State:\tT (stopped)"),
        "not stopped after thaw: {st}"
    );
    // SAFETY: our own child.
    unsafe { libc::kill(q.pid, libc::SIGCONT) };
    assert!(exited_ok(q.wait(T)));
    assert!(read(&out).ends_with("DONE ok\n"));
}
