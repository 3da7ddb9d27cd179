//! Real sockets on loopback: links, ordering, large payloads, refusals, simultaneous dials,
//! peer death and return, garbage on the listener.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rand::{Rng, RngCore, SeedableRng};
use runtime::transport::{Error as TError, Event, Frame, PeerInfo, Transport as _};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use transport_tcp::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_keep_order_over_100k_frames() {
    init_logs();
    let mut nodes = mesh(0, &[1, 2, 3]).await;
    let n = 100_000u32;
    let (a, b, c) = (nodes[0].t.clone(), nodes[1].t.clone(), nodes[2].t.clone());
    let sa = tokio::spawn(async move {
        for i in 0..n {
            a.send(
                2,
                Frame::new(Bytes::copy_from_slice(&i.to_be_bytes()), Bytes::new()),
            )
            .await
            .unwrap();
        }
    });
    let sc = tokio::spawn(async move {
        for i in 0..n {
            // Vary the sizes so frames straddle chunk boundaries.
            let payload = Bytes::from(vec![(i % 251) as u8; (i % 300) as usize]);
            c.send(
                2,
                Frame::new(Bytes::copy_from_slice(&i.to_be_bytes()), payload),
            )
            .await
            .unwrap();
        }
    });
    let sb = tokio::spawn(async move {
        for i in 0..1000u32 {
            b.send(
                1,
                Frame::new(Bytes::copy_from_slice(&i.to_be_bytes()), Bytes::new()),
            )
            .await
            .unwrap();
        }
    });
    let (mut next_a, mut next_c) = (0u32, 0u32);
    while next_a < n || next_c < n {
        match nodes[1].next("frames from 1 and 3").await {
            Event::Frame { peer: 1, frame } => {
                assert_eq!(frame.head[..], next_a.to_be_bytes(), "order from node 1");
                next_a += 1;
            }
            Event::Frame { peer: 3, frame } => {
                assert_eq!(frame.head[..], next_c.to_be_bytes(), "order from node 3");
                assert_eq!(frame.payload.len(), (next_c % 300) as usize);
                assert!(frame.payload.iter().all(|&x| x == (next_c % 251) as u8));
                next_c += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for i in 0..1000u32 {
        assert_eq!(nodes[0].expect_frame(2).await.head[..], i.to_be_bytes());
    }
    sa.await.unwrap();
    sb.await.unwrap();
    sc.await.unwrap();
    assert_eq!(nodes[1].t.connected(), vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mib_payload_arrives_intact() {
    init_logs();
    let mut nodes = mesh(1, &[1, 2]).await;
    let mut big = vec![0u8; 8 << 20];
    rand::thread_rng().fill_bytes(&mut big);
    let big = Bytes::from(big);
    let head = Bytes::from_static(b"pages of process 4711");
    nodes[0]
        .t
        .send(2, Frame::new(head.clone(), big.clone()))
        .await
        .unwrap();
    // A small frame after it must still come after it.
    nodes[0].t.send(2, frame(b"after", b"")).await.unwrap();
    let f = nodes[1].expect_frame(1).await;
    assert_eq!(f.head, head);
    assert!(f.payload == big, "payload differs");
    assert_eq!(nodes[1].expect_frame(1).await.head[..], b"after"[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_the_limit_is_rejected_by_the_sender() {
    init_logs();
    let mut cfg = config(1, addr(2, 1, 0));
    cfg.max_frame = 1000;
    let a = start_with(cfg).await;
    let err = a.t.send(2, frame(b"", &[0; 1000])).await.unwrap_err().error;
    assert!(
        matches!(
            err,
            TError::TooLarge {
                size: 1004,
                limit: 1000
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        a.t.send(9, frame(b"x", b"")).await.map_err(|e| e.error),
        Err(TError::UnknownPeer(9))
    );
}

/// Start two nodes that list each other but whose configs differ; nothing must come up.
async fn expect_refused(net: u8, a_cfg: Config, b_cfg: Config) {
    let mut a = start_with(a_cfg).await;
    let mut b = start_with(b_cfg).await;
    a.t.set_peers(vec![b.info()]);
    b.t.set_peers(vec![a.info()]);
    // Both sides dial and retry within this window; neither may ever see the other.
    a.expect_silence(Duration::from_secs(2)).await;
    b.expect_silence(Duration::from_millis(10)).await;
    assert!(a.t.connected().is_empty() && b.t.connected().is_empty());
    assert_eq!(
        a.t.send(b.id, frame(b"hi", b"")).await.map_err(|e| e.error),
        Err(TError::Unreachable(b.id))
    );
    assert_eq!(
        b.t.send(a.id, frame(b"hi", b"")).await.map_err(|e| e.error),
        Err(TError::Unreachable(a.id))
    );
    // The refused peer does not disturb a good one.
    let mut c = start(3, addr(net, 3, 0)).await;
    a.t.set_peers(vec![b.info(), c.info()]);
    c.t.set_peers(vec![a.info()]);
    a.expect_up(3).await;
    c.expect_up(a.id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused() {
    init_logs();
    let a = config(1, addr(3, 1, 0));
    let mut b = config(2, addr(3, 2, 0));
    b.key[0] ^= 1;
    expect_refused(3, a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_cluster_map_is_refused() {
    init_logs();
    let a = config(1, addr(4, 1, 0));
    let mut b = config(2, addr(4, 2, 0));
    b.cluster = "fedcba9876543210-other-map".into();
    expect_refused(4, a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_node_is_refused() {
    init_logs();
    let mut a = start(1, addr(5, 1, 0)).await;
    let mut b = start(2, addr(5, 2, 0)).await;
    // b knows a, a does not list b: a refuses b's hello.
    b.t.set_peers(vec![a.info()]);
    a.t.set_peers(vec![]);
    b.expect_silence(Duration::from_millis(1500)).await;
    a.expect_silence(Duration::from_millis(10)).await;
    assert!(a.t.connected().is_empty() && b.t.connected().is_empty());
    // Once a lists b, the link comes up.
    a.t.set_peers(vec![b.info()]);
    a.expect_up(2).await;
    b.expect_up(1).await;
    // Removing a peer drops its link.
    a.t.set_peers(vec![]);
    a.expect_down(2, Duration::from_secs(5)).await;
    b.expect_down(1, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_leave_exactly_one_link() {
    init_logs();
    for round in 0..5u8 {
        let mut a = start(1, addr(6, 1 + 2 * round % 8, 0)).await;
        let mut b = start(2, addr(6, 2 + 2 * round % 8, 0)).await;
        let (ai, bi) = (a.info(), b.info());
        let (ta, tb) = (a.t.clone(), b.t.clone());
        // Both start dialling at the same moment.
        let (x, y) = tokio::join!(async move { ta.set_peers(vec![bi]) }, async move {
            tb.set_peers(vec![ai])
        });
        let _ = (x, y);
        a.expect_up(2).await;
        b.expect_up(1).await;
        // No second Up, no Down: the duplicate was closed silently.
        a.expect_silence(Duration::from_millis(700)).await;
        b.expect_silence(Duration::from_millis(10)).await;
        assert_eq!(a.t.connected(), vec![2]);
        assert_eq!(b.t.connected(), vec![1]);
        a.t.send(2, frame(b"ping", b"")).await.unwrap();
        assert_eq!(b.expect_frame(1).await.head[..], b"ping"[..]);
        b.t.send(1, frame(b"pong", b"")).await.unwrap();
        assert_eq!(a.expect_frame(2).await.head[..], b"pong"[..]);
        a.t.shutdown().await;
        b.t.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_peer_goes_down_and_comes_back() {
    init_logs();
    let mut nodes = mesh(7, &[1, 2]).await;
    let b = nodes.pop().unwrap();
    let a = &mut nodes[0];
    let b_addr = b.addr();

    // Drop without shutdown, as a dying process would.
    drop(b);
    let reason = a.expect_down(2, Duration::from_secs(5)).await;
    assert!(!reason.is_empty());
    assert_eq!(
        a.t.send(2, frame(b"x", b"")).await.map_err(|e| e.error),
        Err(TError::Unreachable(2))
    );

    // Same id, same address.
    let mut b = restart(2, b_addr).await;
    b.t.set_peers(vec![a.info()]);
    a.expect_up(2).await;
    b.expect_up(1).await;
    a.t.send(2, frame(b"again", b"")).await.unwrap();
    assert_eq!(b.expect_frame(1).await.head[..], b"again"[..]);

    // A graceful shutdown also yields Down, and flushes what was queued.
    b.t.send(1, frame(b"last words", b"")).await.unwrap();
    b.t.shutdown().await;
    assert_eq!(a.expect_frame(2).await.head[..], b"last words"[..]);
    a.expect_down(2, Duration::from_secs(5)).await;

    // And it comes back once more after a graceful shutdown, which freed the address.
    let mut b = start(2, b_addr).await;
    b.t.set_peers(vec![a.info()]);
    a.expect_up(2).await;
    b.expect_up(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_listener_is_dropped_and_links_survive() {
    init_logs();
    let mut nodes = mesh(8, &[1, 2]).await;
    let target = nodes[0].addr();
    let mut rng = rand::thread_rng();
    let mut junk: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0, 0],
        vec![0xff, 0xff],
        vec![0, 48],
        vec![],
    ];
    for _ in 0..20 {
        let len = rng.gen_range(1..2000);
        let mut v = vec![0u8; len];
        rng.fill_bytes(&mut v);
        junk.push(v);
        // A plausible length prefix followed by random bytes of that length.
        let n = rng.gen_range(0..200u16);
        let mut v = n.to_be_bytes().to_vec();
        v.extend((0..n).map(|_| rng.r#gen::<u8>()));
        junk.push(v);
    }
    for j in &junk {
        let mut s = TcpStream::connect(target).await.unwrap();
        let _ = s.write_all(j).await;
        let _ = s.shutdown().await;
    }
    // Some that connect and stay silent (time out in the handshake).
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(TcpStream::connect(target).await.unwrap());
    }
    // The existing link still works both ways, and nothing else happened.
    for i in 0..100u32 {
        nodes[1]
            .t
            .send(1, frame(&i.to_be_bytes(), b""))
            .await
            .unwrap();
    }
    for i in 0..100u32 {
        assert_eq!(nodes[0].expect_frame(2).await.head[..], i.to_be_bytes());
    }
    nodes[0].t.send(2, frame(b"ok", b"")).await.unwrap();
    assert_eq!(nodes[1].expect_frame(1).await.head[..], b"ok"[..]);
    nodes[0].expect_silence(Duration::from_millis(300)).await;
    assert_eq!(nodes[0].t.connected(), vec![2]);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_hold_an_idle_link_and_silence_times_out() {
    init_logs();
    let mut ca = config(1, addr(9, 1, 0));
    ca.keepalive = Duration::from_millis(100);
    ca.idle_timeout = Duration::from_millis(500);
    let mut cb = config(2, addr(9, 2, 0));
    cb.keepalive = Duration::from_millis(100);
    cb.idle_timeout = Duration::from_millis(500);
    let mut a = start_with(ca).await;
    let mut b = start_with(cb).await;
    a.t.set_peers(vec![b.info()]);
    b.t.set_peers(vec![a.info()]);
    a.expect_up(2).await;
    b.expect_up(1).await;
    // Three idle time-outs pass without traffic: keepalives keep the link up.
    a.expect_silence(Duration::from_millis(1500)).await;
    b.expect_silence(Duration::from_millis(10)).await;

    // A peer that accepts TCP but never answers: the handshake times out, nothing is emitted.
    let silent = tokio::net::TcpListener::bind(addr(9, 3, 0)).await.unwrap();
    let mut cc = config(1, addr(9, 4, 0));
    cc.handshake_timeout = Duration::from_millis(300);
    let mut c = start_with(cc).await;
    c.t.set_peers(vec![PeerInfo {
        id: 3,
        addrs: vec![silent.local_addr().unwrap()],
    }]);
    let (_conn, _) = tokio::time::timeout(WAIT, silent.accept())
        .await
        .unwrap()
        .unwrap();
    c.expect_silence(Duration::from_millis(800)).await;
    assert!(c.t.connected().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_blocks_the_sender_and_loses_nothing() {
    init_logs();
    let mut ca = config(1, addr(10, 1, 0));
    ca.control_window = 8 * 1024;
    ca.bulk_window = 8 * 64 * 1024;
    let mut a = start_with(ca).await;
    // b's runtime takes events slowly: its channel holds 4.
    let mut b = common::start_with_events(config(2, addr(10, 2, 0)), 4).await;
    a.t.set_peers(vec![b.info()]);
    b.t.set_peers(vec![a.info()]);
    a.expect_up(2).await;
    b.expect_up(1).await;

    // Nobody drains b: once b's channel, both socket buffers and a's queue are full,
    // `send` waits instead of failing or dropping.
    let payload = Bytes::from(vec![9u8; 64 * 1024]);
    let mut sent = 0u32;
    let mut blocked = false;
    while sent < 5000 {
        let f = Frame::new(Bytes::copy_from_slice(&sent.to_be_bytes()), payload.clone());
        match tokio::time::timeout(Duration::from_millis(500), a.t.send(2, f)).await {
            Ok(r) => {
                r.unwrap();
                sent += 1;
            }
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "send never waited after {sent} frames of 64 KiB");
    // Now drain: everything sent arrives, in order, and sending works again.
    let more = sent + 100;
    let a2 = a.t.clone();
    let sender = tokio::spawn(async move {
        for i in sent..more {
            let f = Frame::new(Bytes::copy_from_slice(&i.to_be_bytes()), Bytes::new());
            a2.send(2, f).await.unwrap();
        }
    });
    for i in 0..more {
        let f = b.expect_frame(1).await;
        assert_eq!(f.head[..], i.to_be_bytes());
        assert_eq!(f.payload.len(), if i < sent { 64 * 1024 } else { 0 });
    }
    sender.await.unwrap();
    assert_eq!(a.t.connected(), vec![2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_holds_across_bursts_pauses_and_sizes() {
    init_logs();
    let mut nodes = mesh(11, &[1, 2]).await;
    let n = 20_000u32;
    let a = nodes[0].t.clone();
    let sender = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..n {
            let len = match rng.gen_range(0..100) {
                0 => rng.gen_range(64 * 1024..300 * 1024),
                1..10 => rng.gen_range(1000..20_000),
                _ => rng.gen_range(0..200),
            };
            let payload = Bytes::from(vec![(i % 255) as u8; len]);
            a.send(
                2,
                Frame::new(Bytes::copy_from_slice(&i.to_be_bytes()), payload),
            )
            .await
            .unwrap();
            // Pauses let some frames take the inline path, bursts the queued one.
            if rng.gen_range(0..50) == 0 {
                let spin = std::time::Instant::now();
                while spin.elapsed() < Duration::from_micros(rng.gen_range(5..60)) {
                    std::hint::spin_loop();
                }
                tokio::task::yield_now().await;
            }
        }
    });
    for i in 0..n {
        let f = nodes[1].expect_frame(1).await;
        assert_eq!(f.head[..], i.to_be_bytes(), "frame {i} out of order");
        assert!(f.payload.iter().all(|&x| x == (i % 255) as u8));
    }
    sender.await.unwrap();
}
