// The body of the stall test shared by transport-tcp and transport-p2p (`include!`d by
// their tests/stall.rs, which first bring `Config` and `Transport` of their transport into
// scope and define `CLUSTER` and `NET`, the first three bytes of its loopback addresses).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use runtime::transport::{Error as TError, Event, Frame, Lane, PeerInfo, Transport as _};
use tokio::sync::mpsc;

const KEY: [u8; 32] = [7; 32];
const IDLE: Duration = Duration::from_secs(2);

fn config(id: u32, listen: SocketAddr) -> Config {
    let mut c = Config::new(id, listen, KEY, CLUSTER);
    c.keepalive = Duration::from_millis(400);
    c.idle_timeout = IDLE;
    c.control_window = 64 * 1024;
    c.bulk_window = 1 << 20;
    c
}

/// The child: node 2, listening on its first argument, peer node 1 at its second. Drains
/// every event; prints `ready` once its link is up.
async fn child(listen: SocketAddr, parent: SocketAddr) {
    let (tx, mut rx) = mpsc::channel(1024);
    let t = Transport::start(config(2, listen), tx)
        .await
        .expect("start");
    t.set_peers(vec![PeerInfo {
        id: 1,
        addrs: vec![parent],
    }]);
    while let Some(ev) = rx.recv().await {
        if let Event::Up { .. } = ev {
            println!("ready");
        }
    }
}

/// Kills the child however the test ends.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        signal(self.0.id(), "CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Start node 1 and the child node 2, wait for the link, stop the child, fill node 1's
/// queues to it from several senders on both lanes, then (with `kill`) kill it. Returns
/// how long after the stop the last blocked sender returned.
async fn blocked_senders_return(net: u8, kill: bool) -> Result<(), String> {
    let a_addr: SocketAddr = format!("{NET}.{}:0", 10 * net + 1).parse().unwrap();
    let (tx, mut events) = mpsc::channel(1024);
    let a = Transport::start(config(1, a_addr), tx)
        .await
        .map_err(|e| e.to_string())?;
    let b_addr: SocketAddr = format!("{NET}.{}:0", 10 * net + 2).parse().unwrap();
    // The child binds port 0 too: learn its port from a probe listener is racy, so give it
    // a fixed free port found now.
    let probe = std::net::TcpListener::bind(b_addr).unwrap();
    let b_addr = probe.local_addr().unwrap();
    drop(probe);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("STALL_CHILD", format!("{b_addr} {}", a.local_addr()))
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let out = child.stdout.take().unwrap();
    let child = Reap(child);
    a.set_peers(vec![PeerInfo {
        id: 2,
        addrs: vec![b_addr],
    }]);
    // Wait for Up on our side and "ready" on the child's.
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).map(|_| line)
    });
    let up = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(Event::Up { peer: 2 }) => return,
                Some(_) => {}
                None => panic!("events closed"),
            }
        }
    });
    up.await.map_err(|_| "link to the child never came up")?;
    let line = tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .map_err(|_| "child not ready")?
        .unwrap()
        .map_err(|e| e.to_string())?;
    if line.trim() != "ready" {
        return Err(format!("child said {line:?}"));
    }

    signal(child.0.id(), "STOP");
    let stopped = Instant::now();
    // Senders on both lanes send until they fail; each reports its last error and frame.
    let a: Arc<Transport> = a;
    let mut senders = vec![];
    for s in 0..6u32 {
        let a = a.clone();
        let lane = if s % 2 == 0 {
            Lane::Bulk
        } else {
            Lane::Control
        };
        let size = if lane == Lane::Bulk { 256 * 1024 } else { 512 };
        senders.push(tokio::spawn(async move {
            let mut i = 0u32;
            loop {
                let f = Frame::on(
                    lane,
                    Bytes::copy_from_slice(&[s as u8]),
                    Bytes::from(vec![s as u8; size]),
                );
                match a.send(2, f).await {
                    Ok(()) => i += 1,
                    Err(e) => return (i, e, Instant::now()),
                }
            }
        }));
    }
    // Let the queues fill: the senders block.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &senders {
        if s.is_finished() {
            return Err("a sender finished before the peer's queue filled".into());
        }
    }
    let cut = if kill {
        signal(child.0.id(), "KILL");
        Instant::now()
    } else {
        stopped
    };
    // Every sender returns within the idle time-out (plus scheduling slack).
    let limit = IDLE + Duration::from_secs(2);
    for (s, h) in senders.into_iter().enumerate() {
        let (n, e, at) = tokio::time::timeout(limit + Duration::from_secs(5), h)
            .await
            .map_err(|_| format!("sender {s} still blocked {:?} after the cut", cut.elapsed()))?
            .unwrap();
        if e.error != TError::Unreachable(2) {
            return Err(format!("sender {s}: {e:?}"));
        }
        if e.frame.head[..] != [s as u8] {
            return Err(format!("sender {s} got another frame back"));
        }
        let took = at.duration_since(cut);
        if took > limit {
            return Err(format!(
                "sender {s} (after {n} frames) returned only {took:?} after the cut"
            ));
        }
        println!("  sender {s}: {n} frames sent, returned {took:?} after the cut");
    }
    // And the link is reported down; a new send fails at once.
    let down = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Some(Event::Down { peer: 2, reason }) => return reason,
                Some(_) => {}
                None => panic!("events closed"),
            }
        }
    })
    .await
    .map_err(|_| "no Down for the child")?;
    println!("  down: {down}");
    let r = a.send(2, Frame::new(Bytes::new(), Bytes::new())).await;
    if r.map_err(|e| e.error) != Err(TError::Unreachable(2)) {
        return Err("send after Down did not fail with Unreachable".into());
    }
    a.shutdown().await;
    drop(child);
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(args) = std::env::var("STALL_CHILD") {
        let mut it = args.split(' ').map(|a| a.parse::<SocketAddr>().unwrap());
        let (listen, parent) = (it.next().unwrap(), it.next().unwrap());
        rt.block_on(child(listen, parent));
        return;
    }
    // `cargo test -- --list` and filters: this file has two tests.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("blocked_senders_return_when_the_peer_is_stopped: test");
        println!("blocked_senders_return_when_the_peer_is_killed: test");
        return;
    }
    let filter: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut failed = 0;
    for (name, net, kill) in [
        ("blocked_senders_return_when_the_peer_is_stopped", 1, false),
        ("blocked_senders_return_when_the_peer_is_killed", 2, true),
    ] {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match rt.block_on(blocked_senders_return(net, kill)) {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        println!("test result: FAILED. {failed} failed");
        std::process::exit(1);
    }
    println!("test result: ok.");
}
