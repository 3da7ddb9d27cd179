//! Real-verbs test run by scripts/rdma-guest/run.sh inside two qemu guests (soft-RoCE).
//!
//! `server` accepts on the side channel, refuses peers without the cluster key, sets up an
//! RDMA link with the first authenticated peer, echoes every control-lane frame, and checks
//! every bulk byte against the pattern. `client` first proves a wrong key is refused, then
//! connects with the right key, measures control-lane ask round trips, streams
//! `--bulk-mib` MiB on the bulk lane (RDMA writes with credits), and waits for the server's
//! verdict. Results are printed as `### INFO` lines; the exit status says pass/fail.

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use std::sync::Arc;

use runtime::transport::{Event, Frame, Lane, PeerInfo, Transport as RtTransport};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use transport_rdma::Error;
use transport_rdma::exchange::authenticate;
use transport_rdma::link::{Config, Link};

#[derive(Parser)]
struct Args {
    /// The cluster key, 64 hex digits.
    #[arg(long)]
    key_hex: String,
    #[arg(long)]
    device: Option<String>,
    #[arg(long, default_value_t = 1)]
    gid_index: u8,
    /// Busy-poll completions for this many microseconds before sleeping (0: never spin).
    #[arg(long, default_value_t = 0)]
    busy_poll_us: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Server {
        #[arg(long)]
        listen: String,
        /// Fail unless at least this many unauthenticated peers were refused first.
        #[arg(long, default_value_t = 0)]
        expect_refused: u32,
    },
    Client {
        #[arg(long)]
        connect: String,
        #[arg(long, default_value_t = 60)]
        retry_secs: u64,
        #[arg(long, default_value_t = 500)]
        asks: u32,
        #[arg(long, default_value_t = 256)]
        bulk_mib: u64,
        /// Bytes of each bulk frame.
        #[arg(long, default_value_t = 4 << 20)]
        frame_bytes: usize,
    },
    /// Through the `Transport` (what omnode uses): node `node` at `listen` and node
    /// `peer_id` at `peer`. The lower id asks and streams; the higher echoes and checks.
    Transport {
        #[arg(long)]
        node: u32,
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        peer_id: u32,
        #[arg(long)]
        peer: std::net::SocketAddr,
        #[arg(long, default_value_t = 500)]
        asks: u32,
        #[arg(long, default_value_t = 256)]
        bulk_mib: u64,
        #[arg(long, default_value_t = 4 << 20)]
        frame_bytes: usize,
        /// transport-tcp alone (the baseline between the same guests), not RDMA.
        #[arg(long)]
        tcp: bool,
    },
}

fn pattern(off: u64) -> u8 {
    (off.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 ^ (off >> 16) as u8
}

fn key(hex: &str) -> Result<[u8; 32], String> {
    if hex.len() != 64 {
        return Err("--key-hex needs 64 hex digits".into());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(k)
}

fn info(s: impl AsRef<str>) {
    println!("### INFO {}", s.as_ref());
}

type Lanes = (mpsc::Sender<Frame>, mpsc::Receiver<Frame>);
type LinkTask = tokio::task::JoinHandle<(Result<(), Error>, Link)>;

/// Run `link` in its own task; returns the application's ends and the task.
fn spawn_link(mut link: Link) -> (Lanes, LinkTask) {
    let (out_tx, out_rx) = mpsc::channel(64);
    let (in_tx, in_rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let r = link.run(out_rx, in_tx).await;
        (r, link)
    });
    ((out_tx, in_rx), task)
}

async fn server(
    k: [u8; 32],
    cfg: Config,
    spin: Duration,
    listen: &str,
    expect_refused: u32,
) -> Result<(), String> {
    let l = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let mut refused = 0u32;
    let session = loop {
        let (s, from) = tokio::time::timeout(Duration::from_secs(600), l.accept())
            .await
            .map_err(|_| "no client within 600 s".to_string())?
            .map_err(|e| e.to_string())?;
        match authenticate(s, &k, false, Duration::from_secs(30)).await {
            Ok(sess) => break sess,
            Err(e) => {
                refused += 1;
                info(format!("refused {from}: {e}"));
            }
        }
    };
    if refused < expect_refused {
        return Err(format!(
            "expected {expect_refused} refused peers, saw {refused}"
        ));
    }
    info(format!("authenticated {}", session.peer()));
    let mut link = Link::establish(session, cfg)
        .await
        .map_err(|e| e.to_string())?;
    link.set_busy_poll(spin);
    info(format!(
        "link up on {} qpn {} peer qpn {} mtu code {}",
        link.device(),
        link.ours().qpn,
        link.peer().qpn,
        link.ours().mtu.min(link.peer().mtu)
    ));
    let ((tx, mut rx), task) = spawn_link(link);
    let mut expect_bulk: Option<u64> = None;
    let mut got = 0u64;
    let mut bad = 0u64;
    while let Some(f) = tokio::time::timeout(Duration::from_secs(300), rx.recv())
        .await
        .map_err(|_| "nothing from the client for 300 s".to_string())?
    {
        match f.lane {
            Lane::Control => {
                if let Some(n) = f.head.strip_prefix(b"BULK ") {
                    let n = std::str::from_utf8(n).ok().and_then(|s| s.parse().ok());
                    expect_bulk = Some(n.ok_or("bad BULK announcement")?);
                } else if f.head.as_ref() == b"BYE" {
                    break;
                } else {
                    tx.send(f).await.map_err(|_| "link ended")?;
                }
            }
            Lane::Bulk => {
                for (i, &b) in f.payload.iter().enumerate() {
                    if b != pattern(got + i as u64) {
                        bad += 1;
                    }
                }
                got += f.payload.len() as u64;
                if Some(got) == expect_bulk {
                    let verdict = format!("VERIFIED {got} {bad}");
                    tx.send(Frame::new(Bytes::from(verdict), Bytes::new()))
                        .await
                        .map_err(|_| "link ended")?;
                }
            }
        }
    }
    drop(tx);
    let (r, link) = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .map_err(|_| "link did not end".to_string())?
        .map_err(|e| e.to_string())?;
    info(format!("server stats {:?}", link.stats));
    // The client closes its side channel when done: that ends our link.
    if let Err(e) = r {
        info(format!("link ended: {e}"));
    }
    if bad != 0 || Some(got) != expect_bulk {
        return Err(format!(
            "bulk: {got} bytes, {bad} wrong, expected {expect_bulk:?}"
        ));
    }
    info(format!("server verified {got} bulk bytes byte for byte"));
    Ok(())
}

async fn recv(rx: &mut mpsc::Receiver<Frame>) -> Result<Frame, String> {
    tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .map_err(|_| "no answer within 120 s".to_string())?
        .ok_or_else(|| "link ended".to_string())
}

async fn connect_retry(addr: &str, secs: u64) -> Result<TcpStream, String> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(500)).await,
            Ok(Err(e)) => return Err(format!("connect {addr}: {e}")),
            Err(_) => return Err(format!("connect {addr}: timed out")),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn client(
    k: [u8; 32],
    cfg: Config,
    spin: Duration,
    addr: &str,
    retry: u64,
    asks: u32,
    bulk_mib: u64,
    frame_bytes: usize,
) -> Result<(), String> {
    // 1. A node without the key is refused before any queue pair exists.
    let mut wrong = k;
    wrong[0] ^= 0x5a;
    let s = connect_retry(addr, retry).await?;
    match authenticate(s, &wrong, true, Duration::from_secs(30)).await {
        Ok(_) => return Err("a wrong key was accepted".into()),
        Err(e) => info(format!("wrong key refused: {e}")),
    }
    // 2. The right key.
    let s = connect_retry(addr, retry).await?;
    let session = authenticate(s, &k, true, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let mut link = Link::establish(session, cfg)
        .await
        .map_err(|e| e.to_string())?;
    link.set_busy_poll(spin);
    info(format!(
        "busy poll {spin:?}; link up on {} qpn {} peer qpn {}",
        link.device(),
        link.ours().qpn,
        link.peer().qpn
    ));
    let ((tx, mut rx), task) = spawn_link(link);
    // 3. Control-lane asks (64-byte head), one at a time.
    let mut rtts = Vec::with_capacity(asks as usize);
    for i in 0..asks {
        let head = Bytes::from(format!("ask {i:060}"));
        let t = Instant::now();
        tx.send(Frame::new(head.clone(), Bytes::new()))
            .await
            .map_err(|_| "link ended")?;
        let f = recv(&mut rx).await?;
        rtts.push(t.elapsed());
        if f.head != head {
            return Err(format!("ask {i}: echo differs"));
        }
    }
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    if !rtts.is_empty() {
        let avg = rtts.iter().map(|d| us(*d)).sum::<f64>() / rtts.len() as f64;
        info(format!(
            "control ask round trip: {} asks, median {:.1} us, avg {:.1} us, p99 {:.1} us",
            asks,
            us(rtts[rtts.len() / 2]),
            avg,
            us(rtts[rtts.len() * 99 / 100])
        ));
    }
    // 4. Bulk: bulk_mib MiB in frames of frame_bytes, checked by the server.
    let total = bulk_mib << 20;
    tx.send(Frame::new(
        Bytes::from(format!("BULK {total}")),
        Bytes::new(),
    ))
    .await
    .map_err(|_| "link ended")?;
    let t = Instant::now();
    let mut off = 0u64;
    let mut buf = vec![0u8; frame_bytes];
    while off < total {
        let n = (total - off).min(frame_bytes as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(off + i as u64);
        }
        let f = Frame::on(Lane::Bulk, Bytes::new(), Bytes::copy_from_slice(&buf[..n]));
        tx.send(f).await.map_err(|_| "link ended")?;
        off += n as u64;
    }
    let f = recv(&mut rx).await?;
    let secs = t.elapsed().as_secs_f64();
    let verdict = String::from_utf8_lossy(&f.head).to_string();
    info(format!(
        "bulk: {} MiB in {:.2} s = {:.2} MB/s; server says: {verdict}",
        bulk_mib,
        secs,
        total as f64 / secs / 1e6
    ));
    if verdict != format!("VERIFIED {total} 0") {
        return Err(format!("server verdict: {verdict}"));
    }
    tx.send(Frame::new(Bytes::from_static(b"BYE"), Bytes::new()))
        .await
        .map_err(|_| "link ended")?;
    drop(tx);
    // Give the BYE time to complete, then end the link (closing the side channel).
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    Ok(())
}

struct TransportRun {
    node: u32,
    listen: std::net::SocketAddr,
    peer_id: u32,
    peer: std::net::SocketAddr,
    asks: u32,
    bulk_mib: u64,
    frame_bytes: usize,
    tcp: bool,
}

async fn next_event(rx: &mut mpsc::Receiver<Event>, secs: u64) -> Result<Event, String> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .map_err(|_| format!("nothing from the transport for {secs} s"))?
        .ok_or_else(|| "the transport ended".to_string())
}

async fn next_frame(rx: &mut mpsc::Receiver<Event>) -> Result<Frame, String> {
    loop {
        match next_event(rx, 300).await? {
            Event::Frame { frame, .. } => return Ok(frame),
            Event::Down { peer, reason } => return Err(format!("node {peer} down: {reason}")),
            _ => continue,
        }
    }
}

async fn transport_run(
    k: [u8; 32],
    cfg: Config,
    spin: Duration,
    r: TransportRun,
) -> Result<(), String> {
    let mut tc = transport_tcp::Config::new(r.node, r.listen, k, "rdma-guest");
    // TCG guests are slow: generous liveness.
    tc.idle_timeout = Duration::from_secs(20);
    tc.keepalive = Duration::from_secs(2);
    tc.handshake_timeout = Duration::from_secs(30);
    let (tx, mut rx) = mpsc::channel(1024);
    let t: Arc<dyn RtTransport> = if r.tcp {
        transport_tcp::Transport::start(tc, tx)
            .await
            .map_err(|e| e.to_string())?
    } else {
        let mut c = transport_rdma::Config::new(tc);
        c.link = cfg;
        c.fallback = false;
        c.busy_poll = spin;
        c.decide_timeout = Duration::from_secs(60);
        transport_rdma::Transport::start(c, tx)
            .await
            .map_err(|e| e.to_string())?
    };
    t.set_peers(vec![PeerInfo {
        id: r.peer_id,
        addrs: vec![r.peer],
    }]);
    let t0 = Instant::now();
    loop {
        if let Event::Up { peer } = next_event(&mut rx, 180).await? {
            info(format!(
                "node {peer} up after {:.1} s",
                t0.elapsed().as_secs_f64()
            ));
            break;
        }
    }
    let kind = if r.tcp { "tcp" } else { "rdma" };
    let total = r.bulk_mib << 20;
    if r.node > r.peer_id {
        // Echo control frames; check bulk bytes; report.
        let (mut got, mut bad) = (0u64, 0u64);
        let mut expect = None;
        loop {
            let f = next_frame(&mut rx).await?;
            if f.head.as_ref() == b"BYE" {
                break;
            } else if let Some(n) = f.head.strip_prefix(b"BULK ") {
                expect = std::str::from_utf8(n)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok());
            } else if f.head.as_ref() == b"B" {
                for (i, &b) in f.payload.iter().enumerate() {
                    bad += (b != pattern(got + i as u64)) as u64;
                }
                got += f.payload.len() as u64;
                if Some(got) == expect {
                    let v = Frame::new(Bytes::from(format!("VERIFIED {got} {bad}")), Bytes::new());
                    t.send(r.peer_id, v).await.map_err(|e| e.to_string())?;
                }
            } else {
                t.send(r.peer_id, f).await.map_err(|e| e.to_string())?;
            }
        }
        info(format!(
            "{kind} transport: verified {got} bulk bytes, {bad} wrong"
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        t.shutdown().await;
        return if bad == 0 && Some(got) == expect {
            Ok(())
        } else {
            Err(format!(
                "bulk {got} bytes, {bad} wrong, expected {expect:?}"
            ))
        };
    }
    let mut rtts = Vec::with_capacity(r.asks as usize);
    for i in 0..r.asks {
        let head = Bytes::from(format!("ask {i:060}"));
        let s = Instant::now();
        t.send(r.peer_id, Frame::new(head.clone(), Bytes::new()))
            .await
            .map_err(|e| e.to_string())?;
        let f = next_frame(&mut rx).await?;
        rtts.push(s.elapsed());
        if f.head != head {
            return Err(format!("ask {i}: echo differs"));
        }
    }
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    if !rtts.is_empty() {
        info(format!(
            "{kind} transport ask round trip: {} asks, median {:.1} us, p99 {:.1} us",
            r.asks,
            us(rtts[rtts.len() / 2]),
            us(rtts[rtts.len() * 99 / 100])
        ));
    }
    t.send(
        r.peer_id,
        Frame::new(Bytes::from(format!("BULK {total}")), Bytes::new()),
    )
    .await
    .map_err(|e| e.to_string())?;
    let s = Instant::now();
    let (mut off, mut buf) = (0u64, vec![0u8; r.frame_bytes]);
    while off < total {
        let n = (total - off).min(r.frame_bytes as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(off + i as u64);
        }
        let f = Frame::on(
            Lane::Bulk,
            Bytes::from_static(b"B"),
            Bytes::copy_from_slice(&buf[..n]),
        );
        t.send(r.peer_id, f).await.map_err(|e| e.to_string())?;
        off += n as u64;
    }
    let v = next_frame(&mut rx).await?;
    let secs = s.elapsed().as_secs_f64();
    let verdict = String::from_utf8_lossy(&v.head).to_string();
    info(format!(
        "{kind} transport bulk: {} MiB in {secs:.2} s = {:.2} MB/s; peer says: {verdict}",
        r.bulk_mib,
        total as f64 / secs / 1e6
    ));
    t.send(
        r.peer_id,
        Frame::new(Bytes::from_static(b"BYE"), Bytes::new()),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    t.shutdown().await;
    if verdict != format!("VERIFIED {total} 0") {
        return Err(format!("peer verdict: {verdict}"));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let k = match key(&args.key_hex) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("rdma-guest-test: {e}");
            std::process::exit(2);
        }
    };
    let cfg = Config {
        device: args.device.clone(),
        gid_index: args.gid_index,
        ..Config::default()
    };
    let spin = Duration::from_micros(args.busy_poll_us);
    let r = match args.cmd {
        Cmd::Server {
            listen,
            expect_refused,
        } => server(k, cfg, spin, &listen, expect_refused).await,
        Cmd::Client {
            connect,
            retry_secs,
            asks,
            bulk_mib,
            frame_bytes,
        } => {
            client(
                k,
                cfg,
                spin,
                &connect,
                retry_secs,
                asks,
                bulk_mib,
                frame_bytes,
            )
            .await
        }
        Cmd::Transport {
            node,
            listen,
            peer_id,
            peer,
            asks,
            bulk_mib,
            frame_bytes,
            tcp,
        } => {
            let run = TransportRun {
                node,
                listen,
                peer_id,
                peer,
                asks,
                bulk_mib,
                frame_bytes,
                tcp,
            };
            transport_run(k, cfg, spin, run).await
        }
    };
    if let Err(e) = r {
        eprintln!("rdma-guest-test: FAILED: {e}");
        println!("### INFO FAILED: {e}");
        std::process::exit(1);
    }
}
