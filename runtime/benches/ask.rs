//! The runtime's own costs, with no network: each beside a baseline in the same run.
//! - local typed `ask` (`Addr::ask`) vs a raw tokio oneshot round trip through an mpsc task;
//! - named `ask` to an actor on this node (envelope encoded, dispatched, answer decoded:
//!   the path a remote ask takes minus the transport) and over the in-process fabric.
//!
//! `cargo bench -p runtime --bench ask` (results in BENCHMARKS.md).

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use runtime::mem::Fabric;
use runtime::{Actor, Context, Inbound, ReplyTo, System};
use tokio::sync::{mpsc, oneshot};

struct Echo;

enum Msg {
    Named(Inbound<u64>),
    Local(u64, ReplyTo<u64>),
}

impl From<Inbound<u64>> for Msg {
    fn from(i: Inbound<u64>) -> Self {
        Msg::Named(i)
    }
}

impl Actor for Echo {
    type Msg = Msg;
    async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) {
        match msg {
            Msg::Named(i) => {
                if let Some(r) = i.reply {
                    let _ = r.send(&(i.msg + 1)).await;
                }
            }
            Msg::Local(n, reply) => {
                let _ = reply.send(n + 1);
            }
        }
    }
}

const T: Duration = Duration::from_secs(5);

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let fabric = Fabric::new();
    let (a, addr) = rt.block_on(async {
        let a = System::new(1);
        a.attach(fabric.join(1, a.events()));
        let b = System::new(2);
        b.attach(fabric.join(2, b.events()));
        for s in [&a, &b] {
            let addr = s.spawn("echo", || Echo);
            s.serve::<u64, _>("echo", addr);
        }
        let addr = a.spawn("local", || Echo);
        // Let the fabric's Up events settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
        std::mem::forget(b);
        (a, addr)
    });

    let mut g = c.benchmark_group("local_round_trip");
    g.bench_function("typed ask", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t0 = std::time::Instant::now();
                for _ in 0..iters {
                    let r = addr.ask(|reply| Msg::Local(1, reply), T).await.unwrap();
                    assert_eq!(r, 2);
                }
                t0.elapsed()
            })
        })
    });
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
    rt.spawn(async move {
        while let Some((n, reply)) = rx.recv().await {
            let _ = reply.send(n + 1);
        }
    });
    g.bench_function("raw oneshot via mpsc task", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t0 = std::time::Instant::now();
                for _ in 0..iters {
                    let (otx, orx) = oneshot::channel();
                    tx.send((1, otx)).await.unwrap();
                    assert_eq!(orx.await.unwrap(), 2);
                }
                t0.elapsed()
            })
        })
    });
    g.bench_function("named ask, same node", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t0 = std::time::Instant::now();
                for _ in 0..iters {
                    let r: u64 = a.ask(1, "echo", &1u64, T).await.unwrap();
                    assert_eq!(r, 2);
                }
                t0.elapsed()
            })
        })
    });
    g.bench_function("named ask over the in-process fabric", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let t0 = std::time::Instant::now();
                for _ in 0..iters {
                    let r: u64 = a.ask(2, "echo", &1u64, T).await.unwrap();
                    assert_eq!(r, 2);
                }
                t0.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
