//! transport-p2p over real sockets on loopback (127.0.0.N), map mode (mDNS off).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runtime::NodeId;
use runtime::transport::{Error as RtError, Event, Frame, PeerInfo, Transport as _};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use transport_p2p::{Config, Transport};

const KEY: [u8; 32] = [7; 32];
const CLUSTER: &str = "digest-0123456789abcdef";

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "transport_p2p=info".into()),
        )
        .with_test_writer()
        .try_init();
}

struct Node {
    t: Arc<Transport>,
    rx: mpsc::Receiver<Event>,
}

impl Node {
    async fn start(id: NodeId, ip: &str, port: u16, key: [u8; 32], cluster: &str) -> Node {
        let listen: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let (tx, rx) = mpsc::channel(1024);
        let mut cfg = Config::new(id, listen, key, cluster);
        cfg.idle_timeout = Duration::from_secs(3);
        cfg.backoff_max = Duration::from_secs(1);
        let t = Transport::start(cfg, tx).await.expect("transport starts");
        Node { t, rx }
    }

    fn info(&self) -> PeerInfo {
        PeerInfo {
            id: self.t.local_id(),
            addrs: vec![self.t.local_addr()],
        }
    }

    /// Wait for an event matching `pred`, skipping others; panics after `limit`.
    async fn wait(&mut self, limit: Duration, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.rx.recv()).await {
                Ok(Some(ev)) if pred(&ev) => return ev,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("event channel closed waiting for {what}"),
                Err(_) => panic!("node {}: no {what} within {limit:?}", self.t.local_id()),
            }
        }
    }

    async fn wait_up(&mut self, peer: NodeId) {
        self.wait(
            Duration::from_secs(10),
            &format!("Up {peer}"),
            |e| matches!(e, Event::Up { peer: p } if *p == peer),
        )
        .await;
    }

    /// Wait until `Up` arrived for every one of `peers` (in any order).
    async fn wait_ups(&mut self, peers: &[NodeId]) {
        let mut left: Vec<NodeId> = peers.to_vec();
        while !left.is_empty() {
            if let Event::Up { peer } = self
                .wait(Duration::from_secs(10), &format!("Up of {left:?}"), |e| {
                    matches!(e, Event::Up { .. })
                })
                .await
            {
                left.retain(|p| *p != peer);
            }
        }
    }

    /// Collect every event for `d`.
    async fn drain(&mut self, d: Duration) -> Vec<Event> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(Some(ev)) = timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.rx.recv(),
        )
        .await
        {
            out.push(ev);
        }
        out
    }
}

fn frame(i: u32, payload: Bytes) -> Frame {
    Frame::new(Bytes::from(i.to_be_bytes().to_vec()), payload)
}

fn index(f: &Frame) -> u32 {
    u32::from_be_bytes(f.head[..4].try_into().unwrap())
}

async fn recv_frames(n: &mut Node, from: NodeId, count: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    while out.len() < count {
        match n
            .wait(Duration::from_secs(20), "frame", |e| {
                matches!(e, Event::Frame { .. })
            })
            .await
        {
            Event::Frame { peer, frame } => {
                assert_eq!(peer, from);
                out.push(frame);
            }
            _ => unreachable!(),
        }
    }
    out
}

fn mesh(nodes: &[&Node]) {
    let infos: Vec<PeerInfo> = nodes.iter().map(|n| n.info()).collect();
    for n in nodes {
        n.t.set_peers(infos.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_frames_in_order() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.11", 0, KEY, CLUSTER).await;
    let mut b = Node::start(2, "127.0.0.12", 0, KEY, CLUSTER).await;
    mesh(&[&a, &b]);
    a.wait_up(2).await;
    b.wait_up(1).await;
    assert_eq!(a.t.connected(), vec![2]);
    assert_eq!(b.t.connected(), vec![1]);
    assert!(a.t.peer_id_of(2).is_some());

    const N: u32 = 2000;
    let (ta, tb) = (a.t.clone(), b.t.clone());
    let sa = tokio::spawn(async move {
        for i in 0..N {
            ta.send(2, frame(i, Bytes::from(vec![i as u8; (i % 300) as usize])))
                .await
                .unwrap();
        }
    });
    let sb = tokio::spawn(async move {
        for i in 0..N {
            tb.send(1, frame(i, Bytes::new())).await.unwrap();
        }
    });
    let at_b = recv_frames(&mut b, 1, N as usize).await;
    let at_a = recv_frames(&mut a, 2, N as usize).await;
    sa.await.unwrap();
    sb.await.unwrap();
    for (i, f) in at_b.iter().enumerate() {
        assert_eq!(index(f), i as u32);
        assert_eq!(f.payload.len(), i % 300);
        assert!(f.payload.iter().all(|&x| x == i as u8));
    }
    for (i, f) in at_a.iter().enumerate() {
        assert_eq!(index(f), i as u32);
        assert!(f.payload.is_empty());
    }
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_all_pairs() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.21", 0, KEY, CLUSTER).await;
    let mut b = Node::start(2, "127.0.0.22", 0, KEY, CLUSTER).await;
    let mut c = Node::start(3, "127.0.0.23", 0, KEY, CLUSTER).await;
    mesh(&[&a, &b, &c]);
    for n in [&mut a, &mut b, &mut c] {
        let me = n.t.local_id();
        let others: Vec<NodeId> = (1..=3).filter(|p| *p != me).collect();
        n.wait_ups(&others).await;
    }
    for n in [&a, &b, &c] {
        let me = n.t.local_id();
        for p in 1..=3u32 {
            if p != me {
                for i in 0..100 {
                    n.t.send(p, frame(me * 1000 + i, Bytes::from_static(b"x")))
                        .await
                        .unwrap();
                }
            }
        }
    }
    for n in [&mut a, &mut b, &mut c] {
        let me = n.t.local_id();
        let mut next = std::collections::HashMap::new();
        let mut got = 0;
        while got < 200 {
            if let Event::Frame { peer, frame } = n
                .wait(Duration::from_secs(10), "frame", |e| {
                    matches!(e, Event::Frame { .. })
                })
                .await
            {
                let want = next.entry(peer).or_insert(peer * 1000);
                assert_eq!(index(&frame), *want, "node {me}: out of order from {peer}");
                *want += 1;
                got += 1;
            }
        }
        assert_eq!(next.len(), 2);
    }
    for n in [&a, &b, &c] {
        n.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_mib_payload_arrives_intact() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.31", 0, KEY, CLUSTER).await;
    let mut b = Node::start(2, "127.0.0.32", 0, KEY, CLUSTER).await;
    mesh(&[&a, &b]);
    a.wait_up(2).await;
    b.wait_up(1).await;
    let big: Vec<u8> = (0..12 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let big = Bytes::from(big);
    a.t.send(2, frame(0, Bytes::from_static(b"before")))
        .await
        .unwrap();
    a.t.send(2, frame(1, big.clone())).await.unwrap();
    a.t.send(2, frame(2, Bytes::from_static(b"after")))
        .await
        .unwrap();
    let got = recv_frames(&mut b, 1, 3).await;
    assert_eq!(got.iter().map(index).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(got[0].payload, Bytes::from_static(b"before"));
    assert!(got[1].payload == big, "12 MiB payload differs");
    assert_eq!(got[2].payload, Bytes::from_static(b"after"));
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_by_sender() {
    init_logs();
    let listen: SocketAddr = "127.0.0.33:0".parse().unwrap();
    let (tx, _rx) = mpsc::channel(16);
    let mut cfg = Config::new(1, listen, KEY, CLUSTER);
    cfg.max_frame = 1024;
    let t = Transport::start(cfg, tx).await.unwrap();
    let r = t.send(2, frame(0, Bytes::from(vec![0; 2000]))).await;
    assert!(matches!(
        r.map_err(|e| e.error),
        Err(RtError::TooLarge { .. })
    ));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_gets_nothing() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.41", 0, KEY, CLUSTER).await;
    let mut c = Node::start(2, "127.0.0.42", 0, [9; 32], CLUSTER).await;
    mesh(&[&a, &c]);
    let (ea, ec) = tokio::join!(
        a.drain(Duration::from_secs(3)),
        c.drain(Duration::from_secs(3))
    );
    assert!(ea.is_empty(), "node with the key got events: {ea:?}");
    assert!(ec.is_empty(), "node without the key got events: {ec:?}");
    assert!(a.t.connected().is_empty());
    assert_eq!(
        a.t.send(2, frame(0, Bytes::new()))
            .await
            .map_err(|e| e.error),
        Err(RtError::Unreachable(2))
    );
    assert_eq!(
        c.t.send(1, frame(0, Bytes::new()))
            .await
            .map_err(|e| e.error),
        Err(RtError::Unreachable(1))
    );
    a.t.shutdown().await;
    c.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_cluster_digest_is_refused() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.51", 0, KEY, CLUSTER).await;
    let mut b = Node::start(2, "127.0.0.52", 0, KEY, "another-map-digest").await;
    mesh(&[&a, &b]);
    let (ea, eb) = tokio::join!(
        a.drain(Duration::from_secs(3)),
        b.drain(Duration::from_secs(3))
    );
    assert!(ea.is_empty(), "{ea:?}");
    assert!(eb.is_empty(), "{eb:?}");
    assert_eq!(
        a.t.send(2, frame(0, Bytes::new()))
            .await
            .map_err(|e| e.error),
        Err(RtError::Unreachable(2))
    );
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_node_is_refused_and_unknown() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.56", 0, KEY, CLUSTER).await;
    let mut b = Node::start(2, "127.0.0.57", 0, KEY, CLUSTER).await;
    // b dials a, but a does not list b.
    a.t.set_peers(vec![a.info()]);
    b.t.set_peers(vec![a.info(), b.info()]);
    let (ea, eb) = tokio::join!(
        a.drain(Duration::from_secs(2)),
        b.drain(Duration::from_secs(2))
    );
    assert!(ea.is_empty(), "{ea:?}");
    assert!(eb.is_empty(), "{eb:?}");
    assert_eq!(
        a.t.send(2, frame(0, Bytes::new()))
            .await
            .map_err(|e| e.error),
        Err(RtError::UnknownPeer(2))
    );
    a.t.shutdown().await;
    b.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_shutdown_is_down_and_restart_is_up() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.61", 0, KEY, CLUSTER).await;
    let mut b = Node::start(2, "127.0.0.62", 0, KEY, CLUSTER).await;
    let port = b.t.local_addr().port();
    mesh(&[&a, &b]);
    a.wait_up(2).await;
    b.wait_up(1).await;

    let t0 = Instant::now();
    b.t.shutdown().await;
    drop(b);
    a.wait(Duration::from_secs(5), "Down 2", |e| {
        matches!(e, Event::Down { peer: 2, .. })
    })
    .await;
    eprintln!("down after {:?}", t0.elapsed());
    assert!(a.t.connected().is_empty());
    assert_eq!(
        a.t.send(2, frame(0, Bytes::new()))
            .await
            .map_err(|e| e.error),
        Err(RtError::Unreachable(2))
    );

    // Same address, new process (new libp2p identity).
    let mut b = Node::start(2, "127.0.0.62", port, KEY, CLUSTER).await;
    mesh(&[&a, &b]);
    a.wait_up(2).await;
    b.wait_up(1).await;
    a.t.send(2, frame(7, Bytes::from_static(b"again")))
        .await
        .unwrap();
    let got = recv_frames(&mut b, 1, 1).await;
    assert_eq!(index(&got[0]), 7);

    // Dropping the transport without shutdown also ends the link.
    drop(b);
    a.wait(Duration::from_secs(6), "Down 2 after drop", |e| {
        matches!(e, Event::Down { peer: 2, .. })
    })
    .await;
    a.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_id_collision_keeps_the_first() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.71", 0, KEY, CLUSTER).await;
    let mut b = Node::start(2, "127.0.0.72", 0, KEY, CLUSTER).await;
    let b2 = Node::start(2, "127.0.0.73", 0, KEY, CLUSTER).await;
    a.t.set_peers(vec![a.info(), b.info()]);
    b.t.set_peers(vec![a.info(), b.info()]);
    a.wait_up(2).await;
    b.wait_up(1).await;
    let first = a.t.peer_id_of(2).unwrap();
    assert_eq!(first, b.t.peer_id());
    // An impostor with the same node id dials a.
    b2.t.set_peers(vec![a.info(), b2.info()]);
    let mut b2 = b2;
    let ev = b2.drain(Duration::from_secs(3)).await;
    assert!(ev.is_empty(), "second claimant got {ev:?}");
    assert_eq!(a.t.peer_id_of(2), Some(first));
    let ea = a.drain(Duration::from_millis(200)).await;
    assert!(
        !ea.iter()
            .any(|e| matches!(e, Event::Down { .. } | Event::Up { .. })),
        "{ea:?}"
    );
    for n in [&a, &b, &b2] {
        n.t.shutdown().await;
    }
}

/// mDNS needs a multicast-capable, non-loopback interface (libp2p-mdns skips loopback),
/// so it cannot run on `lo`: run it by hand on a host with a LAN, or see the network
/// namespace test in `tests/netns.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a non-loopback multicast interface (libp2p-mdns skips loopback)"]
async fn mdns_discovery_on_a_lan() {
    init_logs();
    let start = |id| async move {
        let (tx, rx) = mpsc::channel(1024);
        let mut cfg = Config::new(id, "0.0.0.0:0".parse().unwrap(), KEY, CLUSTER);
        cfg.mdns = true;
        Node {
            t: Transport::start(cfg, tx).await.unwrap(),
            rx,
        }
    };
    let mut a = start(1).await;
    let mut b = start(2).await;
    a.wait(Duration::from_secs(10), "Discovered 2", |e| {
        matches!(e, Event::Discovered { peer: 2, .. })
    })
    .await;
    a.wait_up(2).await;
    b.wait_up(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_address_in_map_links_the_node_that_answers() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.81", 0, KEY, CLUSTER).await;
    let mut c = Node::start(3, "127.0.0.83", 0, KEY, CLUSTER).await;
    // a's map says node 2 is at c's address (a warning names it); c really is node 3.
    let wrong = PeerInfo {
        id: 2,
        addrs: vec![c.t.local_addr()],
    };
    a.t.set_peers(vec![a.info(), wrong, c.info()]);
    c.t.set_peers(vec![a.info(), c.info()]);
    a.wait_up(3).await;
    c.wait_up(1).await;
    let ev = a.drain(Duration::from_secs(1)).await;
    assert!(
        !ev.iter().any(|e| matches!(e, Event::Up { peer: 2 })),
        "{ev:?}"
    );
    assert_eq!(a.t.connected(), vec![3]);
    a.t.shutdown().await;
    c.t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_link_stays_up_past_the_idle_connection_timeout() {
    init_logs();
    let mut a = Node::start(1, "127.0.0.91", 0, KEY, CLUSTER).await;
    let mut b = Node::start(2, "127.0.0.92", 0, KEY, CLUSTER).await;
    mesh(&[&a, &b]);
    a.wait_up(2).await;
    b.wait_up(1).await;
    // libp2p closes connections without streams after 5 s; keepalives keep ours busy.
    let (ea, eb) = tokio::join!(
        a.drain(Duration::from_secs(8)),
        b.drain(Duration::from_secs(8))
    );
    assert!(ea.is_empty(), "{ea:?}");
    assert!(eb.is_empty(), "{eb:?}");
    a.t.send(2, frame(1, Bytes::from_static(b"still here")))
        .await
        .unwrap();
    assert_eq!(index(&recv_frames(&mut b, 1, 1).await[0]), 1);
    a.t.shutdown().await;
    b.t.shutdown().await;
}
