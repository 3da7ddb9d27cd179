//! mDNS discovery between hosts made of network namespaces.
//!
//! libp2p-mdns ignores loopback interfaces, so mDNS cannot be tested on `lo`. This test
//! builds a small LAN instead (the workspace's `testbed`): one "switch" namespace holding a
//! bridge, and one namespace per host joined to it by a veth pair (address 10.231.X.i/24,
//! default route via the veth, without which joining the mDNS group fails with ENODEV).
//! Each host runs this test binary again (`child_node`, selected by environment
//! variables) under `ip netns exec`; the child starts a transport with `mdns: true` and
//! prints its events as `EVENT ...` lines. Everything is removed when the bed is dropped,
//! also when the test fails.
//!
//! Checked: 3 hosts with one key link up (`Discovered` before `Up`), a 4th host with
//! another key never takes part; a host cut off the bridge is down after the idle
//! time-out and up again when reconnected; a hung host (SIGSTOP) restarted as a new
//! process takes its node id over; a killed host is down at once.
//! Needs root (`ip netns add`); skips with a message otherwise.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_ID: &str = "OMP2P_CHILD_ID";
const CHILD_KEY: &str = "OMP2P_CHILD_KEY";
const CHILD_PORT: &str = "OMP2P_CHILD_PORT";

/// This test's hosts (a [`testbed::Bed`]: namespaces on one bridge, 10.231.X.i/24) and the
/// child nodes started in them, in start order.
struct Lan {
    bed: testbed::Bed,
    children: Vec<u32>,
}

impl Lan {
    fn new(n: usize) -> Result<Lan, String> {
        let subnet = (std::process::id() % 250) as u8;
        Ok(Lan {
            bed: testbed::Bed::new(n, [10, 231, subnet])?,
            children: Vec::new(),
        })
    }

    /// Start node `id` (host `id`) with cluster key byte `key`; its `EVENT` lines go to `tx`.
    fn spawn(&mut self, id: u32, key: u8, tx: mpsc::Sender<(u32, String)>) {
        self.spawn_on(id, key, 4100, tx)
    }

    /// Like `spawn`, listening on `port`.
    fn spawn_on(&mut self, id: u32, key: u8, port: u16, tx: mpsc::Sender<(u32, String)>) {
        let exe = std::env::current_exe().expect("test binary path");
        let mut cmd = self.bed.command(id as usize, exe);
        cmd.args([
            "--exact",
            "child_node",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ID, id.to_string())
        .env(CHILD_KEY, key.to_string())
        .env(CHILD_PORT, port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let child = self.bed.spawn(cmd).expect("spawn child node");
        let out = child.stdout.take().expect("stdout");
        self.children.push(child.id());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // libtest may print "test child_node ... " on the same line first.
                if let Some(ev) = line.find("EVENT ").map(|i| &line[i + 6..]) {
                    if tx.send((id, ev.to_string())).is_err() {
                        return;
                    }
                }
            }
        });
    }

    fn signal(&self, index: usize, sig: &str) {
        let pid = self.children[index].to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    fn kill(&mut self, index: usize) {
        self.bed.kill(self.children[index]);
    }
}

/// Wait until `pred` holds for the events seen so far.
fn wait_until(
    rx: &mpsc::Receiver<(u32, String)>,
    seen: &mut Vec<(u32, String)>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&[(u32, String)]) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !pred(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) => {
                eprintln!("node {}: {}", ev.0, ev.1);
                seen.push(ev);
            }
            Err(_) => panic!("no {what} within {limit:?}; events: {seen:?}"),
        }
    }
}

fn has(seen: &[(u32, String)], node: u32, ev: &str) -> bool {
    seen.iter().any(|(n, e)| *n == node && e == ev)
}

#[test]
fn mdns_hosts_find_each_other_and_keyless_host_stays_out() {
    let mut bed = match Lan::new(4) {
        Ok(b) => b,
        Err(e) => {
            // Under CI the test must run: failing says so instead of passing silently.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the namespaces cannot be built (needs root and iproute2): {e}"
            );
            eprintln!("SKIPPED mdns_hosts_find_each_other...: cannot build the namespaces: {e}");
            return;
        }
    };
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    for id in 1..=3 {
        bed.spawn(id, 7, tx.clone());
    }
    bed.spawn(4, 9, tx.clone()); // another cluster key
    let mut seen = Vec::new();
    let all_up = |s: &[(u32, String)]| {
        (1..=3u32).all(|n| {
            (1..=3u32)
                .filter(|p| *p != n)
                .all(|p| has(s, n, &format!("up {p}")))
        })
    };
    wait_until(&rx, &mut seen, Duration::from_secs(15), "mesh of 3", all_up);
    eprintln!("3 hosts linked after {:?}", t0.elapsed());
    // Discovered came before Up, for every pair.
    for n in 1..=3u32 {
        for p in (1..=3u32).filter(|p| *p != n) {
            let d = seen
                .iter()
                .position(|(x, e)| *x == n && e.starts_with(&format!("discovered {p} [10.231.")));
            let u = seen
                .iter()
                .position(|(x, e)| *x == n && e == &format!("up {p}"));
            assert!(
                d.is_some() && d < u,
                "node {n}: Discovered {p} must precede Up: {seen:?}"
            );
        }
    }
    // The host with another key is never linked, in either direction.
    std::thread::sleep(Duration::from_secs(2));
    while let Ok(ev) = rx.try_recv() {
        seen.push(ev);
    }
    assert!(
        !seen
            .iter()
            .any(|(n, e)| *n == 4 || e.ends_with(" 4") || e.contains(" 4 ")),
        "keyless host took part: {seen:?}"
    );
    // A host that drops off the network (no FIN, no RST) is down at the others after the
    // idle time-out, and up again once it is back.
    let t1 = Instant::now();
    bed.bed.cut(3).unwrap();
    wait_until(
        &rx,
        &mut seen,
        Duration::from_secs(12),
        "down 3 (cut off)",
        |s| count(s, 1, "down 3") == 1 && count(s, 2, "down 3") == 1,
    );
    eprintln!("cut-off host down after {:?}", t1.elapsed());
    bed.bed.plug(3).unwrap();
    let t2 = Instant::now();
    wait_until(
        &rx,
        &mut seen,
        Duration::from_secs(20),
        "up 3 (back)",
        |s| count(s, 1, "up 3") == 2 && count(s, 2, "up 3") == 2,
    );
    eprintln!("host back up after {:?}", t2.elapsed());
    // A node that hangs (SIGSTOP: its connections stay open but say nothing) and comes
    // back as a new process with a new libp2p identity takes its id over once the old link
    // has missed two keepalives, before the idle time-out would have ended it.
    bed.signal(2, "-STOP"); // node 3
    std::thread::sleep(Duration::from_millis(2500));
    let t3 = Instant::now();
    bed.spawn_on(3, 7, 4101, tx.clone());
    wait_until(
        &rx,
        &mut seen,
        Duration::from_secs(15),
        "up 3 (new process)",
        |s| count(s, 1, "up 3") == 3 && count(s, 2, "up 3") == 3,
    );
    eprintln!("restarted node up after {:?}", t3.elapsed());
    for n in [1, 2] {
        let downs: Vec<&String> = seen
            .iter()
            .filter(|(x, e)| *x == n && e.starts_with("down 3"))
            .map(|(_, e)| e)
            .collect();
        assert_eq!(downs.len(), 2, "node {n}: {downs:?}");
        assert!(
            downs[1].contains("reconnected with a new identity"),
            "node {n}: {downs:?}"
        );
    }
    // A host whose process ends is down at once (its connections are closed).
    let t4 = Instant::now();
    bed.kill(4); // the new node 3
    wait_until(
        &rx,
        &mut seen,
        Duration::from_secs(8),
        "down 3 (killed)",
        |s| count(s, 1, "down 3") == 3 && count(s, 2, "down 3") == 3,
    );
    eprintln!("killed host down after {:?}", t4.elapsed());
}

/// Events of `node` that are `ev` or start with `ev (` (a `down` with its reason).
fn count(seen: &[(u32, String)], node: u32, ev: &str) -> usize {
    seen.iter()
        .filter(|(n, e)| *n == node && (e == ev || e.starts_with(&format!("{ev} ("))))
        .count()
}

/// One host of the test above; does nothing unless started by it.
#[test]
fn child_node() {
    let Ok(id) = std::env::var(CHILD_ID) else {
        return;
    };
    let id: u32 = id.parse().unwrap();
    let key: u8 = std::env::var(CHILD_KEY).unwrap().parse().unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "transport_p2p=info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use runtime::transport::Event;
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        let port: u16 = std::env::var(CHILD_PORT).map_or(4100, |p| p.parse().unwrap());
        let listen = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let mut cfg = transport_p2p::Config::new(id, listen, [key; 32], "cluster");
        cfg.mdns = true;
        // Leaves the SIGSTOP step a wide window between takeover (2 s) and time-out.
        cfg.idle_timeout = Duration::from_secs(6);
        let _t = transport_p2p::Transport::start(cfg, tx)
            .await
            .expect("start");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            let line = match ev {
                Event::Discovered { peer, addrs } => format!("discovered {peer} {addrs:?}"),
                Event::Up { peer } => format!("up {peer}"),
                Event::Down { peer, reason } => format!("down {peer} ({reason})"),
                Event::Frame { peer, .. } => format!("frame {peer}"),
            };
            println!("EVENT {line}");
        }
    });
}
