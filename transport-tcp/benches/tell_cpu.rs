//! CPU time per one-way `tell` of 64 bytes between two actor systems over transport-tcp,
//! beside raw framed TCP (68-byte frames through a `BufWriter`), in the same run.
//!
//! `cargo bench -p transport-tcp --bench tell_cpu`
//!
//! Wall-clock throughput on a 2-core machine shared with other builds mostly measures the
//! other builds; the process's own CPU time (user + system, `getrusage`) per message does
//! not, so this bench reports both: CPU ns per message (what the code costs) and messages
//! per second (what the machine gave it). Each run sends `N` messages and waits until the
//! receiving actor counted every one; 3 runs each, alternating.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use runtime::transport::{PeerInfo, Transport as _};
use runtime::{Actor, Context, Inbound, System};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};

const N: u64 = 400_000;
const SIZE: usize = 64;

struct Count(Arc<AtomicU64>);

impl Actor for Count {
    type Msg = Inbound<String>;
    async fn handle(&mut self, _msg: Inbound<String>, _ctx: &mut Context<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// User + system CPU time of this process.
fn cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn node(id: u32, port: u16) -> (System, Arc<AtomicU64>) {
    let ip = |n: u32| std::net::Ipv4Addr::new(127, 0, 36, 10 + n as u8);
    let sys = System::new(id);
    let listen = SocketAddr::from((ip(id), port));
    let cfg = transport_tcp::Config::new(id, listen, [3u8; 32], "tell-cpu");
    let t = transport_tcp::Transport::start(cfg, sys.events())
        .await
        .expect("transport");
    let other = 3 - id;
    t.set_peers(vec![PeerInfo {
        id: other,
        addrs: vec![SocketAddr::from((ip(other), port))],
    }]);
    sys.attach(t);
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let addr = sys.spawn("count", move || Count(n2.clone()));
    sys.serve::<String, _>("count", addr);
    (sys, n)
}

async fn wait_for(counter: &AtomicU64, target: u64) {
    while counter.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn report(what: &str, cpu: Duration, wall: Duration) {
    println!(
        "{what:32} {:8.0} ns CPU per message, {:6.2} M msg/s wall",
        cpu.as_nanos() as f64 / N as f64,
        N as f64 / wall.as_secs_f64() / 1e6
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let port = std::net::TcpListener::bind("127.0.36.11:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (a, _) = node(1, port).await;
        let (b, received) = node(2, port).await;
        let t0 = Instant::now();
        while a.transport().unwrap().connected().is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(10), "no link");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Raw framed TCP: the same bytes per message, no actors, no encryption.
        let l = TcpListener::bind("127.0.36.13:0").await.unwrap();
        let at = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(at), l.accept());
        let (c, s) = (c.unwrap(), s.unwrap().0);
        c.set_nodelay(true).unwrap();
        let raw_count = Arc::new(AtomicU64::new(0));
        let rc = raw_count.clone();
        tokio::spawn(async move {
            let mut r = BufReader::with_capacity(256 * 1024, s);
            let mut buf = [0u8; SIZE + 4];
            while r.read_exact(&mut buf).await.is_ok() {
                rc.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut w = BufWriter::with_capacity(256 * 1024, c);

        let msg = "x".repeat(SIZE);
        for _ in 0..3 {
            let a2 = a.clone();
            let m = msg.clone();
            let start = received.load(Ordering::Relaxed);
            let (c0, t0) = (cpu(), Instant::now());
            tokio::spawn(async move {
                for _ in 0..N {
                    a2.tell(2, "count", &m).await.unwrap();
                }
            })
            .await
            .unwrap();
            wait_for(&received, start + N).await;
            report("tell over transport-tcp", cpu() - c0, t0.elapsed());

            let start = raw_count.load(Ordering::Relaxed);
            let (c0, t0) = (cpu(), Instant::now());
            let frame = [0xabu8; SIZE + 4];
            for _ in 0..N {
                w.write_all(&frame).await.unwrap();
            }
            w.flush().await.unwrap();
            wait_for(&raw_count, start + N).await;
            report("raw framed TCP", cpu() - c0, t0.elapsed());
        }
        a.shutdown(Duration::from_secs(1)).await;
        b.shutdown(Duration::from_secs(1)).await;
    });
}
