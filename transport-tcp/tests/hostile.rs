//! 1000 hostile peers: raw garbage, garbage sealed with the right key in place of a
//! `Hello`, `Hello`s with non-ASCII strings, and connections that say nothing. The node
//! neither panics nor loses its handshake slots: a good peer connects afterwards.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use rand::{Rng, SeedableRng};
use runtime::transport::{Event, Transport as _};
use runtime::wire::Hello;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PROLOGUE: &[u8] = b"omnode transport-tcp 1";

async fn send_raw(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    let mut b = BytesMut::with_capacity(2 + msg.len());
    b.put_u16(msg.len() as u16);
    b.put_slice(msg);
    s.write_all(&b).await
}

async fn recv_raw(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let n = s.read_u16().await? as usize;
    let mut b = vec![0; n];
    s.read_exact(&mut b).await?;
    Ok(b)
}

/// Complete the Noise handshake with the cluster key and send `hello` (sealed) as ours.
async fn sealed_hello(to: SocketAddr, hello: &[u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect(to).await?;
    let mut hs = snow::Builder::new(PARAMS.parse().unwrap())
        .psk(0, &KEY)
        .prologue(PROLOGUE)
        .build_initiator()
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = hs.write_message(&[], &mut buf).unwrap();
    send_raw(&mut s, &buf[..n]).await?;
    let m = recv_raw(&mut s).await?;
    hs.read_message(&m, &mut buf)
        .map_err(std::io::Error::other)?;
    let noise = hs.into_stateless_transport_mode().unwrap();
    let mut out = vec![0u8; hello.len() + 16];
    let n = noise.write_message(0, hello, &mut out).unwrap();
    send_raw(&mut s, &out[..n]).await?;
    // Read whatever comes back (their hello, a refusal) until they close.
    let mut sink = [0u8; 4096];
    while tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink))
        .await
        .is_ok_and(|r| r.is_ok_and(|n| n > 0))
    {}
    Ok(())
}

fn odd_string(rng: &mut impl Rng) -> String {
    let pool = ["é", "€", "🦀", "ß", "\u{0}", "a", "漢", "\u{10FFFF}"];
    (0..rng.gen_range(0..40))
        .map(|_| pool[rng.gen_range(0..pool.len())])
        .collect()
}

/// Panics anywhere in this test binary (a panicking task does not end the process, so
/// they are counted).
static PANICS: AtomicUsize = AtomicUsize::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_hostile_peers_neither_panic_the_node_nor_use_up_its_slots() {
    init_logs();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let mut cfg = config(1, addr(12, 1, 0));
    cfg.handshake_timeout = Duration::from_secs(1);
    let mut a = start_with(cfg).await;
    let target = a.addr();
    a.t.set_peers(vec![runtime::transport::PeerInfo {
        id: 2,
        addrs: vec![addr(12, 2, 9)],
    }]);

    let mut rng = rand::rngs::StdRng::seed_from_u64(1000);
    let mut silent = Vec::new();
    let mut jobs = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let kind = i % 4;
        let seed: u64 = rng.r#gen();
        match kind {
            // Raw garbage before any Noise.
            0 => {
                jobs.spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    if let Ok(mut s) = TcpStream::connect(target).await {
                        let n = rng.gen_range(0..300);
                        let junk: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
                        let _ = s.write_all(&junk).await;
                    }
                });
            }
            // The right key, then arbitrary bytes as the Hello.
            1 => {
                jobs.spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let n = rng.gen_range(0..200);
                    let junk: Vec<u8> = (0..n).map(|_| rng.r#gen()).collect();
                    let _ = sealed_hello(target, &junk).await;
                });
            }
            // The right key and a well-formed Hello with non-ASCII strings (this used to
            // panic the handshake task and leak its slot).
            2 => {
                jobs.spawn(async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let mut h = Hello::new(2, odd_string(&mut rng));
                    if rng.gen_bool(0.3) {
                        h.magic = odd_string(&mut rng);
                    }
                    let _ = sealed_hello(target, &h.encode()).await;
                });
            }
            // Connect and say nothing (held open until the end).
            _ => {
                if let Ok(s) = TcpStream::connect(target).await {
                    silent.push(s);
                }
            }
        }
        // Bounded concurrency: at most 200 hostile peers at once.
        while jobs.len() >= 200 {
            jobs.join_next().await;
        }
    }
    while jobs.join_next().await.is_some() {}
    drop(silent);

    // Nothing came up, and a good peer still gets in.
    let mut b = start(2, addr(12, 2, 0)).await;
    a.t.set_peers(vec![b.info()]);
    b.t.set_peers(vec![runtime::transport::PeerInfo {
        id: 1,
        addrs: vec![target],
    }]);
    loop {
        match a.next("Up from the good peer").await {
            Event::Up { peer: 2 } => break,
            Event::Up { peer } => panic!("a hostile peer came up as node {peer}"),
            _ => {}
        }
    }
    b.expect_up(1).await;
    a.t.send(2, frame(b"hello", b"")).await.unwrap();
    assert_eq!(&b.expect_frame(1).await.head[..], b"hello");
    assert_eq!(
        PANICS.load(Ordering::SeqCst),
        0,
        "a hostile peer made a task panic"
    );
}
