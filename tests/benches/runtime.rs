//! Runtime benchmarks, each beside a baseline measured in the same run:
//! - remote `ask` round trip between two nodes over transport-tcp vs a raw tokio TCP
//!   ping-pong of the same size;
//! - one-way throughput of 64-byte `tell`s between two nodes vs raw TCP frames;
//! - local `ask` (typed address) vs a raw tokio oneshot round trip.
//!
//! `cargo bench -p omnode-tests --bench runtime [--features p2p]` (results in BENCHMARKS.md);
//! with `p2p`, the remote ask also runs over transport-p2p.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use runtime::transport::{PeerInfo, Transport};
use runtime::{Actor, Context, Inbound, ReplyTo, System};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

const SIZE: usize = 64;
const BURST: u64 = 200_000;

/// A message of SIZE bytes (MessagePack bin, through bytes' serde support).
#[derive(Serialize, Deserialize)]
struct Blob(bytes::Bytes);

struct Echo {
    received: Arc<AtomicU64>,
}

enum Msg {
    In(Inbound<Blob>),
    Local(u64, ReplyTo<u64>),
}

impl From<Inbound<Blob>> for Msg {
    fn from(i: Inbound<Blob>) -> Self {
        Msg::In(i)
    }
}

impl Actor for Echo {
    type Msg = Msg;
    async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) {
        match msg {
            Msg::In(i) => {
                self.received.fetch_add(1, Ordering::Relaxed);
                if let Some(r) = i.reply {
                    let _ = r.send(&i.msg).await;
                }
            }
            Msg::Local(n, reply) => {
                let _ = reply.send(n + 1);
            }
        }
    }
}

struct Pair {
    a: System,
    received: Arc<AtomicU64>,
}

/// Which transport joins the two nodes.
#[derive(Clone, Copy)]
enum Via {
    Tcp,
    #[cfg(feature = "p2p")]
    P2p,
}

async fn node(via: Via, id: u32, port: u16, key: [u8; 32]) -> (System, Arc<AtomicU64>) {
    let ip = |n: u32| IpAddr::V4(Ipv4Addr::new(127, 0, 36, 70 + n as u8));
    let sys = System::new(id);
    let listen = SocketAddr::new(ip(id), port);
    let t: Arc<dyn Transport> = match via {
        Via::Tcp => {
            let cfg = transport_tcp::Config::new(id, listen, key, "bench");
            transport_tcp::Transport::start(cfg, sys.events())
                .await
                .expect("transport")
        }
        #[cfg(feature = "p2p")]
        Via::P2p => {
            let cfg = transport_p2p::Config::new(id, listen, key, "bench");
            transport_p2p::Transport::start(cfg, sys.events())
                .await
                .expect("transport")
        }
    };
    let other = 3 - id;
    t.set_peers(vec![PeerInfo {
        id: other,
        addrs: vec![SocketAddr::new(ip(other), port)],
    }]);
    sys.attach(t);
    let received = Arc::new(AtomicU64::new(0));
    let r2 = received.clone();
    let addr = sys.spawn("echo", move || Echo {
        received: r2.clone(),
    });
    sys.serve::<Blob, _>("echo", addr);
    (sys, received)
}

async fn pair(via: Via) -> Pair {
    let port = {
        let l = std::net::TcpListener::bind("127.0.36.71:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let key = [7u8; 32];
    let (a, _) = node(via, 1, port, key).await;
    let (_b, received) = node(via, 2, port, key).await;
    // Wait for the link.
    let t0 = Instant::now();
    while a.transport().unwrap().connected().is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nodes did not connect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::mem::forget(_b);
    Pair { a, received }
}

async fn raw_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.36.73:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    let (c, s) = (c.unwrap(), s.unwrap().0);
    c.set_nodelay(true).unwrap();
    s.set_nodelay(true).unwrap();
    (c, s)
}

/// Run `fut` as a task on a worker thread (where actors run), not on the bench's own thread.
fn on_worker<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(fut)).expect("bench task")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = rt.block_on(pair(Via::Tcp));
    let msg = Blob(bytes::Bytes::from(vec![0xab; SIZE]));
    let t = Duration::from_secs(5);

    let mut g = c.benchmark_group("round_trip_64B");
    // `iters` asks from node 1 to node 2's echo actor, timed on a worker.
    let asks = |a: &System, iters: u64| {
        let (a, msg) = (a.clone(), msg.0.clone());
        on_worker(&rt, async move {
            let t0 = Instant::now();
            for _ in 0..iters {
                let r: Blob = a.ask(2, "echo", &Blob(msg.clone()), t).await.unwrap();
                assert_eq!(r.0.len(), SIZE);
            }
            t0.elapsed()
        })
    };
    g.bench_function("ask over transport-tcp", |b| {
        b.iter_custom(|iters| asks(&p.a, iters))
    });
    #[cfg(feature = "p2p")]
    {
        let q = rt.block_on(pair(Via::P2p));
        g.bench_function("ask over transport-p2p", |b| {
            b.iter_custom(|iters| asks(&q.a, iters))
        });
    }
    g.bench_function("raw tokio TCP ping-pong", |b| {
        let (c, mut s) = rt.block_on(raw_pair());
        rt.spawn(async move {
            let mut buf = [0u8; SIZE];
            while s.read_exact(&mut buf).await.is_ok() {
                if s.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let mut c = Some(c);
        b.iter_custom(|iters| {
            let mut conn = c.take().unwrap();
            let (conn, took) = on_worker(&rt, async move {
                let mut buf = [0xabu8; SIZE];
                let t0 = Instant::now();
                for _ in 0..iters {
                    conn.write_all(&buf).await.unwrap();
                    conn.read_exact(&mut buf).await.unwrap();
                }
                (conn, t0.elapsed())
            });
            c = Some(conn);
            took
        })
    });
    g.finish();

    let mut g = c.benchmark_group("one_way_64B");
    g.throughput(Throughput::Elements(BURST));
    g.sample_size(10);
    g.bench_function("tell over transport-tcp", |b| {
        b.iter_custom(|iters| {
            let (a, received, msg) = (p.a.clone(), p.received.clone(), Blob(msg.0.clone()));
            on_worker(&rt, async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = received.load(Ordering::Relaxed);
                    let t0 = Instant::now();
                    for _ in 0..BURST {
                        a.tell(2, "echo", &msg).await.unwrap();
                    }
                    while received.load(Ordering::Relaxed) < start + BURST {
                        tokio::task::yield_now().await;
                    }
                    total += t0.elapsed();
                }
                total
            })
        })
    });
    g.bench_function("raw tokio TCP frames", |b| {
        let (c, mut s) = rt.block_on(raw_pair());
        let count = Arc::new(AtomicU64::new(0));
        let c2 = count.clone();
        rt.spawn(async move {
            let mut r = tokio::io::BufReader::with_capacity(256 * 1024, &mut s);
            let mut buf = [0u8; SIZE + 4];
            while r.read_exact(&mut buf).await.is_ok() {
                c2.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut w = Some(BufWriter::with_capacity(256 * 1024, c));
        b.iter_custom(|iters| {
            let (mut writer, count) = (w.take().unwrap(), count.clone());
            let (writer, took) = on_worker(&rt, async move {
                let mut total = Duration::ZERO;
                let frame = [0xabu8; SIZE + 4];
                for _ in 0..iters {
                    let start = count.load(Ordering::Relaxed);
                    let t0 = Instant::now();
                    for _ in 0..BURST {
                        writer.write_all(&frame).await.unwrap();
                    }
                    writer.flush().await.unwrap();
                    while count.load(Ordering::Relaxed) < start + BURST {
                        tokio::task::yield_now().await;
                    }
                    total += t0.elapsed();
                }
                (writer, total)
            });
            w = Some(writer);
            took
        })
    });
    g.finish();

    // Local asks on a single-threaded runtime: the runtime's own overhead, without the
    // cross-thread wake-ups that dominate on a loaded 2-core machine.
    let local_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("local_round_trip");
    let local = local_rt.block_on(async { System::new(9) });
    let received = Arc::new(AtomicU64::new(0));
    let addr = local_rt.block_on(async {
        local.spawn("echo", move || Echo {
            received: received.clone(),
        })
    });
    g.bench_function("typed ask", |b| {
        b.iter_custom(|iters| {
            local_rt.block_on(async {
                let t0 = Instant::now();
                for i in 0..iters {
                    assert_eq!(addr.ask(|r| Msg::Local(i, r), t).await.unwrap(), i + 1);
                }
                t0.elapsed()
            })
        })
    });
    g.bench_function("raw oneshot via mpsc task", |b| {
        let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
        local_rt.spawn(async move {
            while let Some((n, r)) = rx.recv().await {
                let _ = r.send(n + 1);
            }
        });
        b.iter_custom(|iters| {
            local_rt.block_on(async {
                let t0 = Instant::now();
                for i in 0..iters {
                    let (otx, orx) = oneshot::channel();
                    tx.send((i, otx)).await.unwrap();
                    assert_eq!(orx.await.unwrap(), i + 1);
                }
                t0.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
