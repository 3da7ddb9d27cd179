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
    /// Actionable errors with the real device: no such device, wrong GID index, the port
    /// down (`--port-flap NIC`: set it down and up again), RLIMIT_MEMLOCK too low.
    Errors {
        #[arg(long)]
        port_flap: Option<String>,
    },
    /// Route failure under a running link (`--break-cmd`, run by the lower id), fall-back
    /// to TCP, and the switch back to RDMA after `--mend-cmd`.
    Faults {
        #[arg(long)]
        node: u32,
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        peer_id: u32,
        #[arg(long)]
        peer: std::net::SocketAddr,
        #[arg(long, default_value = "")]
        break_cmd: String,
        #[arg(long, default_value = "")]
        mend_cmd: String,
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

// ---- error paths and route failures (issue 12 parts 1 and 2) ----

/// Drop CAP_IPC_LOCK from this process, so the memory-lock limit applies to it although
/// it runs as root (the guests run everything as root).
fn drop_ipc_lock() -> Result<(), String> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const V3: u32 = 0x2008_0522;
    const CAP_IPC_LOCK: u32 = 14;
    let mut h = Header {
        version: V3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget reads the header and writes two Data entries (version 3), which `d` has.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } != 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    d[0].effective &= !(1 << CAP_IPC_LOCK);
    d[0].permitted &= !(1 << CAP_IPC_LOCK);
    // SAFETY: as above; capset only reads both.
    if unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn sh(cmd: &str) -> Result<(), String> {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !st.success() {
        return Err(format!("{cmd}: {st}"));
    }
    info(format!("ran `{cmd}`"));
    Ok(())
}

/// `probe` with `cfg` must fail with an error `want` accepts and whose text names `words`.
fn expect_error(
    what: &str,
    cfg: &Config,
    want: fn(&Error) -> bool,
    words: &[&str],
) -> Result<(), String> {
    match transport_rdma::transport::probe(cfg) {
        Ok(dev) => Err(format!("{what}: the probe succeeded on {dev}")),
        Err(e) => {
            let text = e.to_string();
            info(format!("{what}: {text}"));
            if !want(&e) {
                return Err(format!("{what}: wrong kind of error: {e:?}"));
            }
            if text.contains('\n') {
                return Err(format!("{what}: the error is not one line"));
            }
            for w in words {
                if !text.contains(w) {
                    return Err(format!("{what}: the error does not name `{w}`"));
                }
            }
            Ok(())
        }
    }
}

async fn wait_probe(cfg: &Config, ok: bool, secs: u64) -> Result<String, String> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = transport_rdma::transport::probe(cfg);
        if r.is_ok() == ok {
            return Ok(match r {
                Ok(d) => d,
                Err(e) => e.to_string(),
            });
        }
        if Instant::now() > until {
            return Err(format!("probe still {r:?} after {secs} s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Errors a person can act on, with the real device: no such device, a GID index that is
/// not there, the port down, the memory-lock limit too low (last: it stays for the process).
async fn errors_run(k: [u8; 32], cfg: Config, port_flap: Option<String>) -> Result<(), String> {
    let good = transport_rdma::transport::probe(&cfg).map_err(|e| format!("probe: {e}"))?;
    let dev = Config {
        device: Some("nosuch0".into()),
        ..cfg.clone()
    };
    expect_error(
        "no device",
        &dev,
        |e| matches!(e, Error::NoDevice { .. }),
        &["nosuch0", &good],
    )?;
    let gid = Config {
        gid_index: 200,
        ..cfg.clone()
    };
    expect_error(
        "wrong GID",
        &gid,
        |e| matches!(e, Error::Gid { .. }),
        &["GID index 200", &good],
    )?;
    if let Some(nic) = port_flap {
        let before = transport_rdma::verbs::Context::open(cfg.device.as_deref(), cfg.port)
            .and_then(|c| c.gid(cfg.gid_index))
            .map_err(|e| e.to_string())?;
        sh(&format!("ip link set {nic} down"))?;
        let r = wait_probe(&cfg, false, 20).await;
        let up = sh(&format!(
            "ip link set {nic} up && ip route replace 10.0.0.0/24 dev {nic}"
        ));
        let down = r?;
        up?;
        info(format!("port down: {down}"));
        if !down.contains("is not active") || !down.contains(&good) {
            return Err(format!("port down: the error does not say so: {down}"));
        }
        wait_probe(&cfg, true, 60).await?;
        let after = transport_rdma::verbs::Context::open(cfg.device.as_deref(), cfg.port)
            .and_then(|c| c.gid(cfg.gid_index))
            .map_err(|e| e.to_string())?;
        if after != before {
            return Err("the GID changed across the port flap".into());
        }
        info("port up again, same GID");
    }
    drop_ipc_lock()?;
    let lim = libc::rlimit {
        rlim_cur: 64 << 10,
        rlim_max: 64 << 10,
    };
    // SAFETY: setrlimit reads the rlimit we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
    }
    expect_error(
        "memlock",
        &cfg,
        |e| matches!(e, Error::MemLock { .. }),
        &["RLIMIT_MEMLOCK", "ulimit -l", "65536"],
    )?;
    // What omnode --transport rdma --no-fallback says at start.
    let tc = transport_tcp::Config::new(1, "127.0.0.1:18790".parse().unwrap(), k, "rdma-guest");
    let mut c = transport_rdma::Config::new(tc);
    c.link = cfg.clone();
    c.fallback = false;
    let (tx, _rx) = mpsc::channel(16);
    match transport_rdma::Transport::start(c, tx).await {
        Ok(_) => return Err("the transport started without fall-back despite the limit".into()),
        Err(e) => {
            let text = e.to_string();
            info(format!("--no-fallback start: {text}"));
            if !text.contains("RLIMIT_MEMLOCK") || text.contains('\n') {
                return Err(format!("the start error is not the one-line limit: {text}"));
            }
        }
    }
    Ok(())
}

struct FaultsRun {
    node: u32,
    listen: std::net::SocketAddr,
    peer_id: u32,
    peer: std::net::SocketAddr,
    break_cmd: String,
    mend_cmd: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Rdma,
    Broken,
    Mended,
}

/// The route under an RDMA link breaks (the lower id runs `break_cmd`), and mends: the
/// pair must fall back to TCP (frames lost on the way only with a `Down` or a send
/// error), and switch back to RDMA when the route works again, with no `Down` and no
/// frame lost or reordered at the switch. Sequence-numbered frames flow all along; the
/// higher id echoes them.
async fn faults_run(k: [u8; 32], cfg: Config, r: FaultsRun) -> Result<(), String> {
    let mut tc = transport_tcp::Config::new(r.node, r.listen, k, "rdma-guest");
    tc.idle_timeout = Duration::from_secs(20);
    tc.keepalive = Duration::from_secs(2);
    tc.handshake_timeout = Duration::from_secs(30);
    let mut c = transport_rdma::Config::new(tc);
    c.link = cfg;
    c.link.setup_timeout = Duration::from_secs(15);
    c.link.stall_timeout = Duration::from_secs(6);
    c.fallback = true;
    c.decide_timeout = Duration::from_secs(20);
    c.reprobe_max = Duration::from_secs(4);
    let (tx, mut rx) = mpsc::channel(1024);
    let t = transport_rdma::Transport::start(c, tx)
        .await
        .map_err(|e| e.to_string())?;
    t.set_peers(vec![PeerInfo {
        id: r.peer_id,
        addrs: vec![r.peer],
    }]);
    let peer = r.peer_id;
    let deadline = Instant::now() + Duration::from_secs(300);
    if r.node > r.peer_id {
        let (mut echoed, mut failed) = (0u64, 0u64);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = tokio::time::timeout(left, rx.recv())
                .await
                .map_err(|_| "the echo side ran out of time".to_string())?
                .ok_or("the transport ended")?;
            if let Event::Frame { frame, .. } = ev {
                if frame.head.as_ref() == b"BYE" {
                    break;
                }
                match t
                    .send_within(peer, frame, Some(Duration::from_secs(2)))
                    .await
                {
                    Ok(()) => echoed += 1,
                    Err(_) => failed += 1,
                }
            }
        }
        info(format!(
            "faults echo side: {echoed} echoed, {failed} refused by the transport"
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.shutdown().await;
        return Ok(());
    }
    let kind =
        |t: &transport_rdma::Transport| t.link_kind(peer).map(|k| k.name()).unwrap_or("none");
    let mut phase = Phase::Rdma;
    let mut seq = 0u64;
    let mut sent: std::collections::VecDeque<u64> = Default::default();
    let (mut downs, mut ups, mut refused, mut lost) = (0u32, 0u32, 0u32, 0u64);
    let (mut mended_downs, mut mended_lost) = (0u32, 0u64);
    let mut good_in_phase = 0u32;
    let mut t_phase = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let t0 = Instant::now();
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "phase {phase:?} not done in time (link {}, downs {downs}, lost {lost})",
                kind(&t)
            ));
        }
        tokio::select! {
            _ = tick.tick() => {
                if t.link_kind(peer).is_none() {
                    continue;
                }
                seq += 1;
                let f = Frame::new(Bytes::from(format!("S {seq}")), Bytes::new());
                match t.send_within(peer, f, Some(Duration::from_secs(2))).await {
                    Ok(()) => sent.push_back(seq),
                    Err(e) => {
                        refused += 1;
                        if refused <= 3 || refused.is_power_of_two() {
                            info(format!("send {seq} refused ({refused} so far): {}", e.error));
                        }
                    }
                }
            }
            ev = rx.recv() => match ev.ok_or("the transport ended")? {
                Event::Frame { frame, .. } => {
                    let s = std::str::from_utf8(&frame.head)
                        .ok()
                        .and_then(|h| h.strip_prefix("S "))
                        .and_then(|n| n.parse::<u64>().ok())
                        .ok_or("an echo that is not ours")?;
                    while sent.front().is_some_and(|&f| f < s) {
                        sent.pop_front();
                        lost += 1;
                        if phase == Phase::Mended {
                            mended_lost += 1;
                        }
                    }
                    if sent.pop_front() != Some(s) {
                        return Err(format!("echo {s} out of order (phase {phase:?})"));
                    }
                    let want = if phase == Phase::Broken { "tcp" } else { "rdma" };
                    if kind(&t) == want {
                        good_in_phase += 1;
                    }
                }
                Event::Down { reason, .. } => {
                    downs += 1;
                    if phase == Phase::Mended {
                        mended_downs += 1;
                    }
                    info(format!("Down at {:.1} s in phase {phase:?}: {reason}", t0.elapsed().as_secs_f64()));
                }
                Event::Up { .. } => {
                    ups += 1;
                    info(format!("Up at {:.1} s in phase {phase:?}, link {}", t0.elapsed().as_secs_f64(), kind(&t)));
                }
                Event::Discovered { .. } => {}
            },
        }
        if good_in_phase >= 20 {
            good_in_phase = 0;
            let secs = t_phase.elapsed().as_secs_f64();
            match phase {
                Phase::Rdma => {
                    info(format!(
                        "linked over rdma, 20 echoes; breaking the route after {secs:.1} s"
                    ));
                    sh(&r.break_cmd)?;
                    phase = Phase::Broken;
                }
                Phase::Broken => {
                    info(format!(
                        "fell back to tcp and 20 echoes came back over it {secs:.1} s after the break; mending"
                    ));
                    sh(&r.mend_cmd)?;
                    phase = Phase::Mended;
                }
                Phase::Mended => {
                    info(format!(
                        "switched back to rdma and 20 echoes came back over it {secs:.1} s after mending"
                    ));
                    break;
                }
            }
            t_phase = Instant::now();
        }
    }
    info(format!(
        "faults: {seq} frames, {refused} refused by send, {lost} lost in flight, {downs} Down, {ups} Up; at the switch back: {mended_downs} Down, {mended_lost} lost"
    ));
    t.send(peer, Frame::new(Bytes::from_static(b"BYE"), Bytes::new()))
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    t.shutdown().await;
    if lost > 0 && downs == 0 {
        return Err(format!("{lost} frames lost without a Down"));
    }
    if mended_downs > 0 || mended_lost > 0 {
        return Err("the switch back to RDMA was not seamless".into());
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
        Cmd::Errors { port_flap } => errors_run(k, cfg, port_flap).await,
        Cmd::Faults {
            node,
            listen,
            peer_id,
            peer,
            break_cmd,
            mend_cmd,
        } => {
            let run = FaultsRun {
                node,
                listen,
                peer_id,
                peer,
                break_cmd,
                mend_cmd,
            };
            faults_run(k, cfg, run).await
        }
    };
    if let Err(e) = r {
        eprintln!("rdma-guest-test: FAILED: {e}");
        println!("### INFO FAILED: {e}");
        std::process::exit(1);
    }
}
