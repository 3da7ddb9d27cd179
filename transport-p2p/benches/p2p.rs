//! transport-p2p against transport-tcp and raw tokio TCP on loopback, in the same run.
//!
//! `cargo bench -p transport-p2p --bench p2p`
//!
//! - `rtt_64B/*`: round trip of a 64-byte frame head: node 1 sends, node 2's event
//!   consumer sends it back; raw TCP: the same 64 bytes (plus a 5-byte header) echoed by a
//!   server task, `TCP_NODELAY`.
//! - `bulk_1MiB/*`: one-way throughput of frames with 1 MiB payloads; the last frame of
//!   a batch is acknowledged, and the clock stops at the acknowledgement.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runtime::transport::{Event, Frame, Lane, PeerInfo, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{Mutex, mpsc};

const SMALL: usize = 64;
const BULK: usize = 1 << 20;
const PING: u8 = 0;
const DATA: u8 = 1;
const LAST: u8 = 2;

const KEY: [u8; 32] = [3; 32];
const CLUSTER: &str = "bench";

fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 200 + host], 0))
}

/// Two linked nodes; node 2 echoes `PING` frames and acknowledges `LAST` ones.
struct Pair {
    a: Arc<dyn Transport>,
    a_rx: Mutex<mpsc::Receiver<Event>>,
    _b: Arc<dyn Transport>,
}

impl Pair {
    async fn link(
        a: Arc<dyn Transport>,
        mut a_rx: mpsc::Receiver<Event>,
        a_addr: SocketAddr,
        b: Arc<dyn Transport>,
        mut b_rx: mpsc::Receiver<Event>,
        b_addr: SocketAddr,
    ) -> Pair {
        let peers = vec![
            PeerInfo {
                id: 1,
                addrs: vec![a_addr],
            },
            PeerInfo {
                id: 2,
                addrs: vec![b_addr],
            },
        ];
        a.set_peers(peers.clone());
        b.set_peers(peers);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), a_rx.recv()).await {
                Ok(Some(Event::Up { peer: 2 })) => break,
                Ok(Some(_)) => {}
                _ => panic!("no link within 10 s"),
            }
        }
        let echo = b.clone();
        tokio::spawn(async move {
            while let Some(ev) = b_rx.recv().await {
                if let Event::Frame { peer, frame } = ev {
                    match frame.head.first() {
                        Some(&PING) => {
                            let _ = echo.send(peer, frame).await;
                        }
                        Some(&LAST) => {
                            let ack = Frame::new(Bytes::from_static(&[LAST]), Bytes::new());
                            let _ = echo.send(peer, ack).await;
                        }
                        _ => {}
                    }
                }
            }
        });
        Pair {
            a,
            a_rx: Mutex::new(a_rx),
            _b: b,
        }
    }

    async fn p2p() -> Pair {
        let start = |id, host| async move {
            let (tx, rx) = mpsc::channel(4096);
            let t = transport_p2p::Transport::start(
                transport_p2p::Config::new(id, addr(host), KEY, CLUSTER),
                tx,
            )
            .await
            .unwrap();
            let at = t.local_addr();
            (t as Arc<dyn Transport>, rx, at)
        };
        let (a, a_rx, aa) = start(1, 1).await;
        let (b, b_rx, ba) = start(2, 2).await;
        Pair::link(a, a_rx, aa, b, b_rx, ba).await
    }

    async fn tcp() -> Pair {
        let start = |id, host| async move {
            let (tx, rx) = mpsc::channel(4096);
            let t = transport_tcp::Transport::start(
                transport_tcp::Config::new(id, addr(host), KEY, CLUSTER),
                tx,
            )
            .await
            .unwrap();
            let at = t.local_addr();
            (t as Arc<dyn Transport>, rx, at)
        };
        let (a, a_rx, aa) = start(1, 3).await;
        let (b, b_rx, ba) = start(2, 4).await;
        Pair::link(a, a_rx, aa, b, b_rx, ba).await
    }

    async fn next_frame(&self) -> Frame {
        let mut rx = self.a_rx.lock().await;
        loop {
            match rx.recv().await {
                Some(Event::Frame { frame, .. }) => return frame,
                Some(_) => {}
                None => panic!("events closed"),
            }
        }
    }

    async fn rtt(&self, iters: u64) -> Duration {
        let head = Bytes::from({
            let mut v = vec![0u8; SMALL];
            v[0] = PING;
            v
        });
        let t0 = Instant::now();
        for _ in 0..iters {
            self.a
                .send(2, Frame::new(head.clone(), Bytes::new()))
                .await
                .unwrap();
            self.next_frame().await;
        }
        t0.elapsed()
    }

    async fn bulk(&self, iters: u64, payload: &Bytes) -> Duration {
        let t0 = Instant::now();
        for i in 0..iters {
            let kind = if i + 1 == iters { LAST } else { DATA };
            let f = Frame::on(Lane::Bulk, Bytes::copy_from_slice(&[kind]), payload.clone());
            self.a.send(2, f).await.unwrap();
        }
        self.next_frame().await;
        t0.elapsed()
    }
}

/// Raw tokio TCP: `u32 length | kind | body` messages, echoed / acknowledged by a server.
struct Raw {
    conn: Mutex<TcpStream>,
}

impl Raw {
    async fn start() -> Raw {
        let l = TcpListener::bind(addr(5)).await.unwrap();
        let at = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut buf = BytesMut::new();
            loop {
                let mut hdr = [0u8; 5];
                if s.read_exact(&mut hdr).await.is_err() {
                    return;
                }
                let n = u32::from_be_bytes(hdr[..4].try_into().unwrap()) as usize - 1;
                buf.resize(n, 0);
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                match hdr[4] {
                    PING => {
                        let mut out = hdr.to_vec();
                        out.extend_from_slice(&buf);
                        s.write_all(&out).await.unwrap();
                    }
                    LAST => s.write_all(&[0, 0, 0, 1, LAST]).await.unwrap(),
                    _ => {}
                }
            }
        });
        let c = TcpStream::connect(at).await.unwrap();
        c.set_nodelay(true).unwrap();
        Raw {
            conn: Mutex::new(c),
        }
    }

    async fn rtt(&self, iters: u64) -> Duration {
        let mut c = self.conn.lock().await;
        let mut msg = vec![0u8; 5 + SMALL];
        msg[..4].copy_from_slice(&(SMALL as u32 + 1).to_be_bytes());
        msg[4] = PING;
        let mut back = vec![0u8; msg.len()];
        let t0 = Instant::now();
        for _ in 0..iters {
            c.write_all(&msg).await.unwrap();
            c.read_exact(&mut back).await.unwrap();
        }
        t0.elapsed()
    }

    async fn bulk(&self, iters: u64, payload: &Bytes) -> Duration {
        let mut c = self.conn.lock().await;
        let t0 = Instant::now();
        for i in 0..iters {
            let kind = if i + 1 == iters { LAST } else { DATA };
            let mut hdr = [0u8; 5];
            hdr[..4].copy_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
            hdr[4] = kind;
            c.write_all(&hdr).await.unwrap();
            c.write_all(payload).await.unwrap();
        }
        let mut ack = [0u8; 5];
        c.read_exact(&mut ack).await.unwrap();
        t0.elapsed()
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt: &Runtime = &rt;
    let p2p = rt.block_on(Pair::p2p());
    let tcp = rt.block_on(Pair::tcp());
    let raw = rt.block_on(Raw::start());
    let payload = Bytes::from(vec![0x5au8; BULK]);

    let mut g = c.benchmark_group("rtt_64B");
    g.sample_size(30).measurement_time(Duration::from_secs(5));
    g.bench_function("raw_tcp", |b| b.iter_custom(|n| rt.block_on(raw.rtt(n))));
    g.bench_function("transport_tcp", |b| {
        b.iter_custom(|n| rt.block_on(tcp.rtt(n)))
    });
    g.bench_function("transport_p2p", |b| {
        b.iter_custom(|n| rt.block_on(p2p.rtt(n)))
    });
    g.finish();

    let mut g = c.benchmark_group("bulk_1MiB");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(BULK as u64));
    g.bench_function("raw_tcp", |b| {
        b.iter_custom(|n| rt.block_on(raw.bulk(n, &payload)))
    });
    g.bench_function("transport_tcp", |b| {
        b.iter_custom(|n| rt.block_on(tcp.bulk(n, &payload)))
    });
    g.bench_function("transport_p2p", |b| {
        b.iter_custom(|n| rt.block_on(p2p.bulk(n, &payload)))
    });
    g.finish();
}

criterion_group!(p2p_benches, benches);
criterion_main!(p2p_benches);
