//! transport-tcp against raw tokio TCP on loopback, measured in the same run.
//!
//! `cargo bench -p transport-tcp --bench transport`
//!
//! - `rtt/*`: round trip of a 64-byte frame (transport: node 1 -> node 2, echoed back by
//!   node 2's event consumer) vs a raw TCP ping-pong of 64 bytes (`TCP_NODELAY`).
//! - `oneway_64B/*`: one-way throughput of 64-byte frames (transport: `send` in a loop,
//!   counted by node 2's event consumer) vs raw TCP with tokio-util's
//!   `LengthDelimitedCodec` (`feed` per message, counted by a `FramedRead`).
//! - `bulk_1MiB/*`: one-way throughput of 1 MiB payloads, same pairs.
//! - `noise_1MiB/*`: the encryption alone: seal + open of 1 MiB as 64 KiB Noise messages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{SinkExt, StreamExt};
use runtime::transport::{Event, Frame, Lane, PeerInfo, Transport as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use transport_tcp::{Config, Transport};

const SMALL: usize = 64;
const BULK: usize = 1 << 20;
const ECHO: u8 = 0;
const SINK: u8 = 1;

fn addr(host: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 36, 240 + host], 0))
}

/// Counts what a receiver got and wakes the bench when a target is reached.
#[derive(Default)]
struct Counter {
    count: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Counter {
    fn add(&self, n: u64) {
        let c = self.count.fetch_add(n, Ordering::AcqRel) + n;
        if c >= self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }
    /// Expect `n` more; returns a future resolving once they arrived.
    fn expect(&self, n: u64) -> impl std::future::Future<Output = ()> + '_ {
        let target = self.count.load(Ordering::Acquire) + n;
        self.target.store(target, Ordering::Release);
        async move {
            while self.count.load(Ordering::Acquire) < target {
                self.done.notified().await;
            }
        }
    }
}

struct Pair {
    a: Arc<Transport>,
    a_rx: mpsc::Receiver<Event>,
    counter: Arc<Counter>,
    _b: Arc<Transport>,
}

async fn transport_pair() -> Pair {
    let key = [42u8; 32];
    let (atx, mut a_rx) = mpsc::channel(8192);
    let (btx, mut b_rx) = mpsc::channel(8192);
    let a = Transport::start(Config::new(1, addr(1), key, "bench"), atx)
        .await
        .unwrap();
    let b = Transport::start(Config::new(2, addr(2), key, "bench"), btx)
        .await
        .unwrap();
    a.set_peers(vec![PeerInfo {
        id: 2,
        addrs: vec![b.local_addr()],
    }]);
    b.set_peers(vec![PeerInfo {
        id: 1,
        addrs: vec![a.local_addr()],
    }]);
    for rx in [&mut a_rx, &mut b_rx] {
        match rx.recv().await {
            Some(Event::Up { .. }) => {}
            other => panic!("expected Up, got {other:?}"),
        }
    }
    let counter = Arc::new(Counter::default());
    let (b2, c2) = (b.clone(), counter.clone());
    tokio::spawn(async move {
        while let Some(ev) = b_rx.recv().await {
            if let Event::Frame { peer, frame } = ev {
                if frame.head[0] == ECHO {
                    let _ = b2.send(peer, frame).await;
                } else {
                    c2.add(1);
                }
            }
        }
    });
    Pair {
        a,
        a_rx,
        counter,
        _b: b,
    }
}

struct RawPair {
    /// Ping-pong client.
    ping: TcpStream,
    /// Length-delimited sink for the throughput runs.
    sink: FramedWrite<TcpStream, LengthDelimitedCodec>,
    counter: Arc<Counter>,
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(4 << 20)
        .new_codec()
}

async fn raw_pair() -> RawPair {
    let listener = TcpListener::bind(addr(3)).await.unwrap();
    let at = listener.local_addr().unwrap();
    let counter = Arc::new(Counter::default());
    let c2 = counter.clone();
    tokio::spawn(async move {
        // First connection: echo fixed-size messages.
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; SMALL];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        // Second: count length-delimited messages.
        let (s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut r = FramedRead::new(s, codec());
        while let Some(Ok(m)) = r.next().await {
            std::hint::black_box(&m);
            c2.add(1);
        }
    });
    let ping = TcpStream::connect(at).await.unwrap();
    ping.set_nodelay(true).unwrap();
    let s = TcpStream::connect(at).await.unwrap();
    s.set_nodelay(true).unwrap();
    RawPair {
        ping,
        sink: FramedWrite::new(s, codec()),
        counter,
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rt: &'static Runtime = Box::leak(Box::new(rt));
    let pair: &'static tokio::sync::Mutex<Pair> = Box::leak(Box::new(tokio::sync::Mutex::new(
        rt.block_on(transport_pair()),
    )));
    let raw: &'static tokio::sync::Mutex<RawPair> =
        Box::leak(Box::new(tokio::sync::Mutex::new(rt.block_on(raw_pair()))));

    let mut g = c.benchmark_group("rtt");
    g.throughput(Throughput::Elements(1));
    g.bench_function("transport_64B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut p = pair.lock().await;
                let mut head = vec![0u8; SMALL];
                head[0] = ECHO;
                let head = Bytes::from(head);
                let start = Instant::now();
                for _ in 0..iters {
                    p.a.send(2, Frame::new(head.clone(), Bytes::new()))
                        .await
                        .unwrap();
                    match p.a_rx.recv().await {
                        Some(Event::Frame { .. }) => {}
                        other => panic!("expected the echo, got {other:?}"),
                    }
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("raw_tcp_64B", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut r = raw.lock().await;
                let mut buf = [0u8; SMALL];
                let start = Instant::now();
                for _ in 0..iters {
                    r.ping.write_all(&buf).await.unwrap();
                    r.ping.read_exact(&mut buf).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    // What the encryption alone costs: seal and open 1 MiB as 64 KiB Noise messages
    // (AES-GCM is what the transport uses; ChaCha20-Poly1305 for comparison).
    let mut g = c.benchmark_group("noise_1MiB");
    g.throughput(Throughput::Bytes(BULK as u64));
    let data = vec![7u8; BULK];
    let mut sealed = vec![0u8; 65535];
    let mut opened = vec![0u8; 65535];
    let (init, resp) = noise_pair("Noise_NNpsk0_25519_AESGCM_BLAKE2s");
    g.bench_function("aesgcm_seal_open", |b| {
        let mut nonce = 1u64 << 40;
        b.iter(|| {
            for piece in data.chunks(65519) {
                let n = init.write_message(nonce, piece, &mut sealed).unwrap();
                resp.read_message(nonce, &sealed[..n], &mut opened).unwrap();
                nonce += 1;
            }
        })
    });
    let (init, resp) = noise_pair("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s");
    g.bench_function("chachapoly_seal_open", |b| {
        let mut nonce = 1u64 << 40;
        b.iter(|| {
            for piece in data.chunks(65519) {
                let n = init.write_message(nonce, piece, &mut sealed).unwrap();
                resp.read_message(nonce, &sealed[..n], &mut opened).unwrap();
                nonce += 1;
            }
        })
    });
    g.finish();

    for (name, size, batch) in [("oneway_64B", SMALL, 10_000u64), ("bulk_1MiB", BULK, 16u64)] {
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(batch));
        if size == BULK {
            g.sample_size(20);
        }
        let mut head = vec![0u8; if size == SMALL { SMALL } else { 16 }];
        head[0] = SINK;
        let head = Bytes::from(head);
        let payload = Bytes::from(vec![7u8; if size == SMALL { 0 } else { size }]);
        let (h2, p2) = (head.clone(), payload.clone());
        g.bench_function("transport", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let p = pair.lock().await;
                    let n = iters * batch;
                    let done = p.counter.expect(n);
                    let start = Instant::now();
                    for _ in 0..n {
                        // Large payloads on the bulk lane, small frames on control.
                        let lane = if size == SMALL {
                            Lane::Control
                        } else {
                            Lane::Bulk
                        };
                        p.a.send(2, Frame::on(lane, h2.clone(), p2.clone()))
                            .await
                            .unwrap();
                    }
                    done.await;
                    start.elapsed()
                })
            })
        });
        let msg = {
            let mut m = head.to_vec();
            m.extend_from_slice(&payload);
            Bytes::from(m)
        };
        g.bench_function("raw_tcp", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut r = raw.lock().await;
                    let n = iters * batch;
                    let counter = r.counter.clone();
                    let done = counter.expect(n);
                    let start = Instant::now();
                    for _ in 0..n {
                        r.sink.feed(msg.clone()).await.unwrap();
                    }
                    SinkExt::<Bytes>::flush(&mut r.sink).await.unwrap();
                    done.await;
                    start.elapsed()
                })
            })
        });
        g.finish();
    }
}

fn noise_pair(name: &str) -> (snow::StatelessTransportState, snow::StatelessTransportState) {
    let params: snow::params::NoiseParams = name.parse().unwrap();
    let key = [42u8; 32];
    let mut i = snow::Builder::new(params.clone())
        .psk(0, &key)
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params)
        .psk(0, &key)
        .build_responder()
        .unwrap();
    let (mut m1, mut m2, mut scratch) = (vec![0u8; 1024], vec![0u8; 1024], vec![0u8; 1024]);
    let n = i.write_message(&[], &mut m1).unwrap();
    r.read_message(&m1[..n], &mut scratch).unwrap();
    let n = r.write_message(&[], &mut m2).unwrap();
    i.read_message(&m2[..n], &mut scratch).unwrap();
    (
        i.into_stateless_transport_mode().unwrap(),
        r.into_stateless_transport_mode().unwrap(),
    )
}

criterion_group! {
    name = transport;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(transport);
