//! The RDMA transport on a host without RDMA (this one, and CI's): real sockets on
//! loopback, real transport-tcp links. Proves the fall-back and its reasons; the RDMA path
//! itself is proven with real verbs in the soft-RoCE guests (scripts/rdma-guest).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runtime::transport::{Event, Frame, Lane, PeerInfo, Transport as _};
use tokio::sync::mpsc;
use transport_rdma::{Config, Error, LinkKind, Transport};

const KEY: [u8; 32] = [9; 32];

/// A loopback port whose port + 1 is free too (the side channel's).
fn free_pair() -> u16 {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = a.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

fn tcp_config(id: u32, port: u16) -> transport_tcp::Config {
    let mut c = transport_tcp::Config::new(
        id,
        SocketAddr::from(([127, 0, 0, 1], port)),
        KEY,
        "cluster-a",
    );
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

fn rdma_config(id: u32, port: u16) -> Config {
    let mut c = Config::new(tcp_config(id, port));
    c.decide_timeout = Duration::from_millis(800);
    c
}

fn peers(list: &[(u32, u16)]) -> Vec<PeerInfo> {
    list.iter()
        .map(|&(id, port)| PeerInfo {
            id,
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        })
        .collect()
}

async fn next_up(rx: &mut mpsc::Receiver<Event>) -> u32 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Event::Up { peer })) => return peer,
            Ok(Some(_)) => continue,
            other => panic!("no Up within 10 s: {other:?}"),
        }
    }
}

async fn next_frame(rx: &mut mpsc::Receiver<Event>) -> Frame {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Event::Frame { frame, .. })) => return frame,
            Ok(Some(Event::Down { peer, reason })) => panic!("node {peer} down: {reason}"),
            Ok(Some(_)) => continue,
            other => panic!("no frame within 10 s: {other:?}"),
        }
    }
}

fn why(t: &Transport, peer: u32) -> String {
    match t.link_kind(peer) {
        Some(LinkKind::Tcp(why)) => why,
        other => panic!("node {peer}: expected a TCP link, got {other:?}"),
    }
}

#[tokio::test]
async fn without_a_device_both_nodes_link_over_tcp_and_say_why() {
    let (p1, p2) = (free_pair(), free_pair());
    let (tx1, mut rx1) = mpsc::channel(64);
    let (tx2, mut rx2) = mpsc::channel(64);
    let a = Transport::start(rdma_config(1, p1), tx1).await.unwrap();
    let b = Transport::start(rdma_config(2, p2), tx2).await.unwrap();
    let here = a.rdma_here().unwrap_err().to_string();
    assert!(here.contains("no RDMA device"), "{here}");
    a.set_peers(peers(&[(2, p2)]));
    b.set_peers(peers(&[(1, p1)]));
    assert_eq!(next_up(&mut rx1).await, 2);
    assert_eq!(next_up(&mut rx2).await, 1);
    assert_eq!(a.connected(), vec![2]);
    // Both ends give this node's reason (each offer says "no RDMA device").
    let (wa, wb) = (why(&a, 2), why(&b, 1));
    assert!(
        wa.contains("no RDMA on this node") && wa.contains("no RDMA device"),
        "{wa}"
    );
    assert!(
        wb.contains("no RDMA on this node") && wb.contains("no RDMA device"),
        "{wb}"
    );
    assert_eq!(a.link_kind(2).unwrap().name(), "tcp");

    // Frames flow both ways, in order per lane, over the fall-back.
    for i in 0..20u32 {
        let lane = if i % 2 == 0 {
            Lane::Control
        } else {
            Lane::Bulk
        };
        let payload = Bytes::from(vec![i as u8; 1000 * i as usize]);
        a.send(2, Frame::on(lane, Bytes::from(i.to_string()), payload))
            .await
            .unwrap();
    }
    let mut next = [0u32, 1];
    for _ in 0..20 {
        let f = next_frame(&mut rx2).await;
        let i: u32 = std::str::from_utf8(&f.head).unwrap().parse().unwrap();
        // The lane is the sender's queue, not part of the frame: it follows from i here.
        let l = (i % 2) as usize;
        assert_eq!(i, next[l], "lane {l} out of order");
        assert_eq!(f.payload.len(), 1000 * i as usize);
        assert!(f.payload.iter().all(|&b| b == i as u8));
        next[l] += 2;
    }
    b.send(1, Frame::new(Bytes::from_static(b"back"), Bytes::new()))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut rx1).await.head.as_ref(), b"back");

    // A node that is not a peer is refused with the typed error, the frame handed back.
    let e = a
        .send(7, Frame::new(Bytes::from_static(b"x"), Bytes::new()))
        .await
        .unwrap_err();
    assert_eq!(e.error, runtime::transport::Error::UnknownPeer(7));
    assert_eq!(e.frame.head.as_ref(), b"x");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn no_fallback_refuses_to_start_without_a_device_and_says_what_to_check() {
    let mut c = rdma_config(1, free_pair());
    c.fallback = false;
    let (tx, _rx) = mpsc::channel(8);
    let e = match Transport::start(c, tx).await {
        Err(e) => e,
        Ok(_) => panic!("started without an RDMA device although fallback is off"),
    };
    assert!(matches!(e, Error::NoDevice { .. }), "{e:?}");
    assert!(e.is_unavailable());
    let m = e.to_string();
    assert!(
        m.contains("no RDMA device") && m.contains("/dev/infiniband"),
        "{m}"
    );

    // A device asked for by name is named in the message.
    let mut c = rdma_config(1, free_pair());
    c.fallback = false;
    c.link.device = Some("mlx5_7".into());
    let (tx, _rx) = mpsc::channel(8);
    let m = match Transport::start(c, tx).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("started without mlx5_7"),
    };
    assert!(m.contains("named mlx5_7"), "{m}");
}

/// A peer started with plain `--transport tcp` has no side channel: linked over TCP with
/// the reason, whichever end dials the side channel.
#[tokio::test]
async fn a_peer_without_the_rdma_transport_is_linked_over_tcp() {
    for rdma_id in [1u32, 2] {
        let tcp_id = 3 - rdma_id;
        let (pr, pt) = (free_pair(), free_pair());
        let (tx1, mut rx1) = mpsc::channel(64);
        let (tx2, mut rx2) = mpsc::channel(64);
        let r = Transport::start(rdma_config(rdma_id, pr), tx1)
            .await
            .unwrap();
        let t = transport_tcp::Transport::start(tcp_config(tcp_id, pt), tx2)
            .await
            .unwrap();
        r.set_peers(peers(&[(tcp_id, pt)]));
        t.set_peers(peers(&[(rdma_id, pr)]));
        assert_eq!(next_up(&mut rx1).await, tcp_id);
        assert_eq!(next_up(&mut rx2).await, rdma_id);
        let w = why(&r, tcp_id);
        if rdma_id < tcp_id {
            // We dial its side channel: nothing listens there.
            assert!(w.contains("no RDMA side channel at"), "{w}");
        } else {
            // We wait for its dial, which never comes.
            assert!(w.contains("opened no RDMA side channel within"), "{w}");
        }
        t.send(rdma_id, Frame::new(Bytes::from_static(b"hi"), Bytes::new()))
            .await
            .unwrap();
        assert_eq!(next_frame(&mut rx1).await.head.as_ref(), b"hi");
        r.shutdown().await;
        t.shutdown().await;
    }
}

/// A node without the cluster key gets nothing from the side channel (the Noise handshake
/// fails before any offer, let alone a queue pair), and the transport goes on serving.
#[tokio::test]
async fn a_stranger_on_the_side_channel_is_refused() {
    let p = free_pair();
    let (tx, _rx) = mpsc::channel(8);
    let r: Arc<Transport> = Transport::start(rdma_config(2, p), tx).await.unwrap();
    r.set_peers(peers(&[(1, free_pair())]));
    for key in [[1u8; 32], KEY] {
        let s = tokio::net::TcpStream::connect(r.side_addr()).await.unwrap();
        let got =
            transport_rdma::exchange::authenticate(s, &key, true, Duration::from_secs(5)).await;
        if key == KEY {
            // The right key passes authentication; the offer then names who we are.
            let mut sess = got.unwrap();
            let theirs = sess
                .offer(
                    &transport_rdma::exchange::Offer {
                        node: 1,
                        rdma: Err("test".into()),
                    },
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert_eq!(theirs.node, 2);
            assert!(theirs.rdma.unwrap_err().contains("no RDMA device"));
        } else {
            assert!(matches!(got, Err(Error::Auth)), "{:?}", got.err());
        }
    }
    r.shutdown().await;
}
