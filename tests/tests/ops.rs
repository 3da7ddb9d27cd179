//! Operations, as an administrator meets them: the README's local-cluster script, key
//! checks, `setpe` and SIGHUP on a running cluster, the install step (files, links, man
//! pages), the init script, systemd readiness, and the metrics endpoint. Real `omnode`
//! processes, real scripts; each test uses its own 127.0.0.N range and port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use omnode_tests::{Cluster, free_port, omnode_bin, run_cli, wait_for};

const FORM: Duration = Duration::from_secs(30);

fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Run `cmd` to completion, killing it after `limit` (the test then fails, never hangs).
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_for(limit, || child.try_wait().ok().flatten());
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {limit:?}");
    });
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Send `sig` (e.g. "HUP") to `pid`.
fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{sig} {pid}");
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A script process that is stopped (TERM, then KILL) when dropped, also on failure.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        if wait_for(Duration::from_secs(10), || self.0.try_wait().ok().flatten()).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn local_cluster_script_with_port_7431_taken_says_why() {
    // Hold 7431 on 127.0.0.1 (if something else holds it already, it is taken all the same).
    let _hold = TcpListener::bind((Ipv4Addr::LOCALHOST, 7431)).ok();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(top().join("scripts/local-cluster.sh"));
    cmd.arg("2")
        .env("OMNODE_BIN", omnode_bin())
        .env("OMNODE_CLUSTER_DIR", dir.path());
    let out = run_bounded(cmd, Duration::from_secs(60));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "the script succeeded: {err}");
    assert!(
        err.contains("port 7431 on 127.0.0.1 is already in use") && err.contains("--port"),
        "the script did not say why: {err:?}"
    );
}

#[test]
fn local_cluster_script_bad_arguments_say_why() {
    for (args, want) in [
        (&["x"][..], "N must be a number"),
        (&["0"][..], "N must be 1-254"),
        (&["2", "--port", "0"][..], "--port must be 1-65535"),
        (&["--bogus"][..], "unknown option '--bogus'"),
    ] {
        let mut cmd = Command::new(top().join("scripts/local-cluster.sh"));
        cmd.args(args).env("OMNODE_BIN", omnode_bin());
        let out = run_bounded(cmd, Duration::from_secs(30));
        let err = text(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err:?}"
        );
    }
}

#[test]
fn local_cluster_script_starts_a_cluster_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(top().join("scripts/local-cluster.sh"))
        .args(["2", "--port", &port.to_string()])
        .env("OMNODE_BIN", omnode_bin())
        .env("OMNODE_CLUSTER_DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let script = Script(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("2 nodes running")) {
        match rx.recv_timeout(Duration::from_secs(60).saturating_sub(t0.elapsed())) {
            Ok(l) => seen.push(l),
            Err(_) => {
                drop(script);
                let mut e = String::new();
                let _ = stderr.read_to_string(&mut e);
                panic!("no `2 nodes running` within 60 s; stdout {seen:?}, stderr {e}");
            }
        }
    }
    // The table it printed shows both nodes up; node 2 answers on its socket.
    assert!(
        seen.iter().any(|l| l.contains("2 of 2 nodes up")),
        "{seen:?}"
    );
    let sock = dir.path().join("node2.sock");
    let s = run_cli(&["status", "--json", "--socket", sock.to_str().unwrap()]);
    assert!(s.status.success(), "{}", text(&s.stderr));
    // SIGTERM stops the script and its nodes (their sockets go away).
    drop(script);
    assert!(
        wait_for(Duration::from_secs(10), || (!sock.exists()
            && !dir.path().join("node1.sock").exists())
        .then_some(()))
        .is_some(),
        "the nodes' sockets are still there after the script stopped"
    );
}

#[test]
fn a_key_readable_by_others_is_refused_with_the_fix() {
    let c = Cluster::new("1 127.0.0.91 1\n");
    std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(omnode_bin());
    cmd.args(["--map", c.map.to_str().unwrap(), "--node", "1"])
        .args(["--key-file", c.key.to_str().unwrap()])
        .args(["--port", &c.port.to_string()])
        .args(["--socket", c.socket(1).to_str().unwrap()]);
    let out = run_bounded(cmd, Duration::from_secs(20));
    let err = text(&out.stderr);
    assert!(!out.status.success(), "started with a 0644 key: {err}");
    assert!(
        err.contains("mode 0644") && err.contains(&format!("chmod 600 {}", c.key.display())),
        "{err}"
    );
    assert!(!c.socket(1).exists(), "refused before serving anything");

    // A key file of random bytes: the same message as any malformed key.
    std::fs::write(&c.key, [0xffu8, 0x00, 0x13, 0x37]).unwrap();
    std::fs::set_permissions(&c.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cmd = Command::new(omnode_bin());
    cmd.args(["--map", c.map.to_str().unwrap(), "--node", "1"])
        .args(["--key-file", c.key.to_str().unwrap()])
        .args(["--socket", c.socket(1).to_str().unwrap()]);
    let err = text(&run_bounded(cmd, Duration::from_secs(20)).stderr);
    assert!(
        err.contains("not a cluster key (expected 64 hex digits on one line)"),
        "{err}"
    );
}

/// Node ids `id` reports up with a load, sorted.
fn up_sorted(c: &Cluster, id: u32) -> Vec<u64> {
    let mut v = c.up_with_load(id).unwrap_or_default();
    v.sort();
    v
}

fn all_up(c: &Cluster, nodes: &[u32]) -> bool {
    let want: Vec<u64> = nodes.iter().map(|&n| n as u64).collect();
    nodes.iter().all(|&n| up_sorted(c, n) == want)
}

fn setpe(bin: &Path, c: &Cluster, id: u32, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .args(["--socket", c.socket(id).to_str().unwrap()]);
    run_bounded(cmd, Duration::from_secs(30))
}

#[test]
fn setpe_w_adds_a_fifth_node_to_a_running_four_node_cluster() {
    let mut c = Cluster::new("1 127.0.0.61 4\n");
    for n in 1..=4 {
        c.start(n);
    }
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2, 3, 4]).then_some(())).is_some(),
        "4 nodes did not form"
    );
    let pids: Vec<u32> = (1..=4).map(|n| c.pid(n).unwrap()).collect();

    // The classic name, dispatched on argv[0].
    let links = tempfile::tempdir().unwrap();
    let classic = links.path().join("setpe");
    std::os::unix::fs::symlink(omnode_bin(), &classic).unwrap();

    let map5 = c.dir.path().join("five.map");
    std::fs::write(&map5, "1 127.0.0.61 5\n").unwrap();
    let check = setpe(&classic, &c, 1, &["-c", "-f", map5.to_str().unwrap()]);
    assert!(
        check.status.success() && text(&check.stdout).contains("a valid map of 5 nodes"),
        "{check:?}"
    );
    // A map with an error: file and line, nothing changed.
    let bad = c.dir.path().join("bad.map");
    std::fs::write(&bad, "1 127.0.0.61 4\n5 127.0.0.65 0\n").unwrap();
    let refused = setpe(&classic, &c, 1, &["-w", "-f", bad.to_str().unwrap()]);
    let e = text(&refused.stderr);
    assert!(
        !refused.status.success() && e.contains(&format!("{}:2: range 0", bad.display())),
        "{e}"
    );

    for n in 1..=4 {
        let out = setpe(&classic, &c, n, &["-w", "-f", map5.to_str().unwrap()]);
        let said = text(&out.stdout);
        assert!(
            out.status.success() && said.contains("added: 5;") && said.contains("removed: none"),
            "node {n}: {said} {}",
            text(&out.stderr)
        );
    }
    let (map5p, key) = (map5.clone(), c.key.clone());
    c.start_with(5, &map5p, &key);
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2, 3, 4, 5]).then_some(())).is_some(),
        "5 nodes did not form: {:?}",
        (1..=5).map(|n| up_sorted(&c, n)).collect::<Vec<_>>()
    );
    let now: Vec<u32> = (1..=4).map(|n| c.pid(n).unwrap()).collect();
    assert_eq!(pids, now, "a node was restarted");

    // `setpe -r` prints the map in use.
    let r = setpe(&omnode_bin(), &c, 3, &["setpe", "-r"]);
    let shown = text(&r.stdout);
    assert!(
        r.status.success()
            && shown.contains(&map5.display().to_string())
            && shown.contains("5 127.0.0.65"),
        "{shown}"
    );

    // `setpe -off`: node 5 leaves (its daemon stops); the others mark it down.
    let off = setpe(&classic, &c, 5, &["-off"]);
    assert!(off.status.success(), "{off:?}");
    assert!(
        c.wait_exit(5, Duration::from_secs(10)).is_some(),
        "node 5 still runs after setpe -off"
    );
    assert!(
        wait_for(FORM, || (up_sorted(&c, 1) == [1, 2, 3, 4]).then_some(())).is_some(),
        "node 1 still sees node 5 up"
    );
    // The DOWN row says when it was last seen, not its stale figures.
    let s = c.status(1).unwrap();
    let n5 = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 5)
        .unwrap()
        .clone();
    assert!(
        n5["up"] == false && n5["load"].is_null() && n5["last_seen_s"].as_f64().is_some(),
        "{n5}"
    );
    let table = run_cli(&["status", "--socket", c.socket(1).to_str().unwrap()]);
    let row = text(&table.stdout)
        .lines()
        .find(|l| l.starts_with("5 "))
        .unwrap_or_default()
        .to_string();
    assert!(row.contains("DOWN (last seen "), "{row}");
}

#[test]
fn sighup_reloads_the_map_and_the_daemon_keeps_running() {
    let mut c = Cluster::new("1 127.0.0.51 2\n");
    c.start(1);
    c.start(2);
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2]).then_some(())).is_some(),
        "2 nodes did not form"
    );
    // A map with an error: the daemon says so and keeps the map in use.
    std::fs::write(&c.map, "1 127.0.0.51 2\n3 127.0.0.53 0\n").unwrap();
    let pid1 = c.pid(1).unwrap();
    signal(pid1, "HUP");
    let map = c.map.display().to_string();
    assert!(
        wait_for(Duration::from_secs(10), || c
            .log_text(1)
            .contains(&format!("{map}:2: range 0"))
            .then_some(()))
        .is_some(),
        "no error logged: {}",
        c.log_text(1)
    );
    assert!(alive(pid1), "SIGHUP killed the daemon");
    assert_eq!(c.status(1).unwrap()["nodes"].as_array().unwrap().len(), 2);

    // The same file, now with a third node: both nodes reload on SIGHUP, the third joins.
    std::fs::write(&c.map, "1 127.0.0.51 3\n").unwrap();
    signal(pid1, "HUP");
    signal(c.pid(2).unwrap(), "HUP");
    c.start(3);
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2, 3]).then_some(())).is_some(),
        "3 nodes did not form after SIGHUP: {:?}\n{}",
        (1..=3).map(|n| up_sorted(&c, n)).collect::<Vec<_>>(),
        c.log_text(1)
    );
    assert_eq!(c.pid(1), Some(pid1), "node 1 was restarted");
    assert!(c.socket(1).exists());
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_once_it_answers() {
    let c = Cluster::new("1 127.0.0.95 1\n");
    let notify_path = c.dir.path().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let child = Command::new(omnode_bin())
        .args(["--map", c.map.to_str().unwrap(), "--node", "1"])
        .args(["--key-file", c.key.to_str().unwrap()])
        .args(["--port", &c.port.to_string()])
        .args(["--socket", c.socket(1).to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Script(child);
    let mut buf = [0u8; 512];
    let n = manager.recv(&mut buf).expect("no READY=1 within 20 s");
    let msg = text(&buf[..n]);
    assert!(msg.starts_with("READY=1"), "{msg}");
    // Ready means the control socket answers now.
    assert!(c.status(1).is_some(), "READY=1 before the socket answers");
    signal(daemon.0.id(), "TERM");
    let n = manager.recv(&mut buf).expect("no STOPPING=1");
    assert!(text(&buf[..n]).contains("STOPPING=1"));
    let st: Option<ExitStatus> = wait_for(Duration::from_secs(10), || {
        daemon.0.try_wait().ok().flatten()
    });
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}

/// `scripts/install.sh` into `root` with PREFIX=/usr; the installed files' paths.
fn install_into(root: &Path) -> Output {
    let mut cmd = Command::new(top().join("scripts/install.sh"));
    cmd.env("DESTDIR", root)
        .env("PREFIX", "/usr")
        .env("OMNODE_BIN", omnode_bin());
    run_bounded(cmd, Duration::from_secs(60))
}

#[test]
fn install_puts_binary_links_unit_init_script_man_pages_and_completions_in_place() {
    let root = tempfile::tempdir().unwrap();
    let out = install_into(root.path());
    assert!(
        out.status.success(),
        "install failed: {}",
        text(&out.stderr)
    );
    let r = |p: &str| root.path().join(p.trim_start_matches('/'));
    let bin = r("/usr/bin/omnode");
    assert!(bin.metadata().unwrap().permissions().mode() & 0o111 != 0);
    let names = text(&run_cli(&["generate", "--names"]).stdout);
    let names: Vec<&str> = names.lines().collect();
    assert!(names.contains(&"setpe"), "{names:?}");
    for name in &names {
        let link = r(&format!("/usr/bin/{name}"));
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("omnode"));
        assert!(
            r(&format!("/usr/share/man/man1/{name}.1")).exists(),
            "{name}.1"
        );
        assert!(r(&format!("/usr/share/bash-completion/completions/{name}")).exists());
        assert!(r(&format!("/usr/share/zsh/site-functions/_{name}")).exists());
        assert!(r(&format!("/usr/share/fish/vendor_completions.d/{name}.fish")).exists());
    }
    // The installed link runs its command (argv[0] dispatch).
    let map = root.path().join("check.map");
    std::fs::write(&map, "1 10.1.1.1 3\n").unwrap();
    let check = Command::new(r("/usr/bin/setpe"))
        .args(["-c", "-f", map.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        text(&check.stdout).contains("a valid map of 3 nodes"),
        "{check:?}"
    );

    let unit = std::fs::read_to_string(r("/usr/lib/systemd/system/omnode.service")).unwrap();
    for want in [
        "Type=notify",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/default/omnode",
        "ExecStart=/usr/bin/omnode $OMNODE_OPTS",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(want), "unit lacks {want}:\n{unit}");
    }
    // systemd accepts the unit (when systemd-analyze is there; the binary path is the
    // staged one, since verify checks that ExecStart exists).
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let staged = root.path().join("omnode.service");
        std::fs::write(
            &staged,
            unit.replace(
                "ExecStart=/usr/bin/",
                &format!("ExecStart={}/", r("/usr/bin").display()),
            ),
        )
        .unwrap();
        let v = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&staged)
            .output()
            .unwrap();
        assert!(
            v.status.success() && v.stderr.is_empty(),
            "systemd-analyze verify: {}",
            text(&v.stderr)
        );
    } else {
        eprintln!("unit not verified: systemd-analyze is not installed");
    }
    let init = r("/etc/init.d/openmosix");
    assert!(init.metadata().unwrap().permissions().mode() & 0o111 != 0);
    assert!(
        std::fs::read_to_string(&init)
            .unwrap()
            .contains("DAEMON=${OMNODE_DAEMON:-/usr/bin/omnode}")
    );
    assert!(r("/etc/default/omnode").exists());

    // Every man page renders.
    let pages: Vec<PathBuf> = std::fs::read_dir(r("/usr/share/man/man1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(pages.len() >= 2 + names.len(), "{pages:?}");
    if Command::new("man").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`man` is missing: .ci/run installs man-db"
        );
        eprintln!("skipped rendering: `man` is not installed (apt-get install man-db groff-base)");
        return;
    }
    for page in &pages {
        let out = Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        let shown = text(&out.stdout);
        let name = page.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            out.status.success() && shown.contains("NAME") && shown.contains(&name),
            "{}: {}{}",
            page.display(),
            shown,
            text(&out.stderr)
        );
    }

    // Installing again keeps an edited options file.
    std::fs::write(r("/etc/default/omnode"), "OMNODE_OPTS=\"--port 9999\"\n").unwrap();
    assert!(install_into(root.path()).status.success());
    assert_eq!(
        std::fs::read_to_string(r("/etc/default/omnode")).unwrap(),
        "OMNODE_OPTS=\"--port 9999\"\n"
    );
}

/// Runs the installed init script with a private options file, pid file and log.
struct Init {
    script: PathBuf,
    env: Vec<(String, PathBuf)>,
    pidfile: PathBuf,
}

impl Init {
    fn run(&self, action: &str) -> Output {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg(&self.script).arg(action);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_bounded(cmd, Duration::from_secs(60))
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Init {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[test]
fn the_init_script_starts_reports_restarts_and_stops_a_node() {
    let root = tempfile::tempdir().unwrap();
    assert!(install_into(root.path()).status.success());
    let c = Cluster::new("1 127.0.0.97 1\n");
    let sock = c.socket(1);
    let defaults = c.dir.path().join("omnode.default");
    std::fs::write(
        &defaults,
        format!(
            "OMNODE_OPTS=\"--map {} --node 1 --port {} --key-file {} --socket {}\"\n",
            c.map.display(),
            c.port,
            c.key.display(),
            sock.display()
        ),
    )
    .unwrap();
    let pidfile = c.dir.path().join("run/omnode.pid");
    let init = Init {
        script: root.path().join("etc/init.d/openmosix"),
        env: vec![
            ("OMNODE_DAEMON".into(), root.path().join("usr/bin/omnode")),
            ("OMNODE_DEFAULTS".into(), defaults),
            ("OMNODE_PIDFILE".into(), pidfile.clone()),
            ("OMNODE_LOGFILE".into(), c.dir.path().join("log/omnode.log")),
        ],
        pidfile,
    };
    let status = init.run("status");
    assert_eq!(status.status.code(), Some(3), "{status:?}");

    let start = init.run("start");
    assert!(start.status.success(), "{start:?}");
    let pid = init.pid().expect("pid file");
    assert!(alive(pid));
    let status = init.run("status");
    let said = text(&status.stdout);
    assert!(
        status.status.success() && said.contains("is running") && said.contains("1 of 1 nodes up"),
        "{said}"
    );
    assert!(
        init.run("start").status.success(),
        "a second start is no error"
    );
    assert_eq!(init.pid(), Some(pid));

    let restart = init.run("restart");
    assert!(restart.status.success(), "{restart:?}");
    let pid2 = init.pid().expect("pid file after restart");
    assert_ne!(pid, pid2);
    assert!(!alive(pid) && alive(pid2));

    let stop = init.run("stop");
    assert!(stop.status.success(), "{stop:?}");
    assert!(
        wait_for(Duration::from_secs(5), || (!alive(pid2)).then_some(())).is_some(),
        "the daemon still runs after stop"
    );
    assert!(!sock.exists(), "the control socket stayed behind");
    assert_eq!(init.run("status").status.code(), Some(3));
}

/// GET `path` from `addr`; the whole answer.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_metrics_endpoint_answers_with_the_nodes_figures() {
    let mut c = Cluster::new("1 127.0.0.81 2\n");
    let addr = format!("127.0.0.81:{}", free_port());
    let (map, key) = (c.map.clone(), c.key.clone());
    c.start_with_args(1, &map, &key, &["--metrics", &addr]);
    c.start(2);
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2]).then_some(())).is_some(),
        "2 nodes did not form"
    );
    // Wait until some gossip has arrived, then compare with what `status` says.
    let body = wait_for(FORM, || {
        let b = http_get(&addr, "/metrics");
        b.lines()
            .any(|l| l.starts_with("omnode_gossip_received_total ") && !l.ends_with(" 0"))
            .then_some(b)
    })
    .expect("no gossip counted");
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(
        body.contains("Content-Type: text/plain; version=0.0.4"),
        "{body}"
    );
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    let s = c.status(1).unwrap();
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(value("omnode_node_id"), 1.0);
    assert_eq!(value("omnode_nodes"), nodes.len() as f64);
    assert_eq!(value("omnode_nodes_up"), 2.0);
    assert_eq!(value("omnode_links_up"), 1.0);
    let cpus2 = nodes.iter().find(|n| n["id"] == 2).unwrap()["cpus"]
        .as_f64()
        .unwrap();
    assert_eq!(value("omnode_node_cpus{node=\"2\"}"), cpus2);
    assert!(value("omnode_node_load{node=\"2\"}") >= 0.0);
    assert!(value("omnode_heartbeats_received_total") > 0.0);
    assert!(http_get(&addr, "/nothing").starts_with("HTTP/1.1 404"));
}

#[test]
fn logs_are_plain_off_a_terminal_and_json_on_request() {
    let mut c = Cluster::new("1 127.0.0.93 2\n");
    let (map, key) = (c.map.clone(), c.key.clone());
    c.start(1);
    c.start_with_args(2, &map, &key, &["--log-format", "json"]);
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2]).then_some(())).is_some(),
        "2 nodes did not form"
    );
    let plain = c.log_text(1);
    assert!(plain.contains("listening on 127.0.0.93"), "{plain}");
    assert!(
        !plain.contains('\x1b'),
        "colour codes in a log file: {plain:?}"
    );
    let json = c.log_text(2);
    let lines: Vec<&str> = json.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{l}"
        );
    }
    assert!(json.contains("node 1 is up"), "{json}");
}

/// The `.deb` (scripts/deb.sh, cargo-deb) carries what `scripts/install.sh` installs with
/// PREFIX=/usr: the binary, the unit, the init script, the options file, man pages and
/// completions, and a postinst that makes the classic-name links from the binary's own table.
/// cargo-deb must be installed (`cargo install cargo-deb --locked`; `.ci/run` does it): without
/// it the test says so and skips, and under `CI=true` it fails.
#[test]
fn the_deb_package_carries_the_installed_files() {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but cargo-deb is not installed (cargo install cargo-deb --locked)"
        );
        eprintln!("skipping the .deb test: cargo-deb is not installed");
        return;
    }
    // dpkg-deb ships with dpkg, on every Debian machine.
    let out_dir = tempfile::tempdir().unwrap();
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin = omnode_bin();
    // pack the binary the tests run (no second build): its folder is the target folder's
    // debug/ (or release/) folder
    let profile_dir = bin.parent().unwrap();
    let target = profile_dir.parent().unwrap();
    let profile = if profile_dir.ends_with("release") {
        "release"
    } else {
        "dev"
    };
    let out = Command::new(top.join("scripts/deb.sh"))
        .args(["--no-strip", "-o"])
        .arg(out_dir.path())
        .env("CARGO_TARGET_DIR", target)
        .env("OMNODE_DEB_PROFILE", profile)
        .env("OMNODE_DEB_PREBUILT", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deb.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = std::fs::read_dir(out_dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .expect("no .deb written");
    let list = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    assert!(list.status.success());
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "./usr/bin/omnode",
        "./lib/systemd/system/omnode.service",
        "./etc/init.d/openmosix",
        "./etc/default/omnode",
        "./usr/share/man/man1/omnode.1",
        "./usr/share/man/man1/setpe.1",
        "./usr/share/man/man1/migrate.1",
        "./usr/share/bash-completion/completions/omnode",
    ] {
        assert!(list.contains(want), "{want} is not in the package:\n{list}");
    }
    let info = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("Package: omnode"), "{info}");
    assert!(info.contains("postinst"), "no postinst: {info}");
    // The unit in the package calls the packaged binary.
    let x = tempfile::tempdir().unwrap();
    assert!(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(x.path())
            .status()
            .unwrap()
            .success()
    );
    let unit = std::fs::read_to_string(x.path().join("lib/systemd/system/omnode.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/omnode"), "{unit}");
    // The packaged binary is the one the tests run, and it names the classic links itself.
    let names = Command::new(x.path().join("usr/bin/omnode"))
        .args(["generate", "--names"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    for n in ["setpe", "migrate", "mps", "mosrun"] {
        assert!(
            names.split_whitespace().any(|x| x == n),
            "{n} not in {names}"
        );
    }
}
