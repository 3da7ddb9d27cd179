//! `runtime::transport::Transport` over TCP (tokio).
//!
//! Owns: the listening socket, dialling and re-dialling peers with back-off, one link per
//! pair of nodes (simultaneous dials resolved by the lower node id), the Noise handshake
//! (`Noise_NNpsk0_25519_AESGCM_BLAKE2s`, the cluster key as PSK: both ends prove the
//! key without sending it, and everything after is encrypted), the `wire::Hello`
//! exchange, framing (2-byte length-delimited Noise messages carrying the [`codec`]
//! stream), per-peer ordered queues with back-pressure, keepalives and idle time-outs.
//!
//! Must not know: actors, envelopes, processes, the cluster map (it gets the peer list
//! through `set_peers` and the map's digest as an opaque string). Frames are opaque bytes.
//!
//! ## Link set-up
//! 1. TCP connect (either side dials; `TCP_NODELAY`), Noise NNpsk0 handshake. A wrong key
//!    fails here: the peer learns nothing and is dropped.
//! 2. Both ends send an encrypted `Hello`; each checks the other's (`Hello::check`, the
//!    node id is a listed peer, a dialled address answers with the expected id).
//! 3. The higher-id end answers `HelloReply` first; the lower-id end (the arbiter) then
//!    answers, accepting the link only if it holds no other live or pending link to that
//!    peer. So when both dial at once, exactly one link survives, and both ends agree
//!    which, with no `Up`/`Down` for the loser. The other end's first message confirms
//!    the arbiter's `Accepted`; only then does the arbiter emit `Up`, so a peer that dies
//!    in the handshake leaves no `Up`/`Down` pair behind.
//! 4. `Event::Up`, then frames. A link that ends (EOF, error, nothing received for
//!    `idle_timeout` although the peer sends keepalives every `keepalive`, peer removed,
//!    shutdown) emits `Event::Down` once; the dialler keeps re-dialling listed peers.
//!
//! ## Sending
//! Each direction is one stream of records (see [`codec`]) cut into Noise messages of at
//! most 64 KiB. A `send` that finds the link idle seals and writes its frame itself;
//! otherwise frames wait in the bounded per-peer queue and the link's writer task packs
//! many into each message (see `outbox`). Large payloads are sealed straight from their
//! `Bytes`; received frames are slices of the decryption buffer.

pub mod codec;
mod outbox;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use runtime::NodeId;
use runtime::transport::link::{self, Claim, LinkCtl};
use runtime::transport::pacing::{Backoff, Repeats};
use runtime::transport::{self as rt, BoxFuture, Event, Frame, PeerInfo};
use runtime::wire::{Hello, HelloReply};
use snow::StatelessTransportState;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::Unpacker;
use crate::outbox::Outbox;

/// AES-GCM rather than ChaCha20-Poly1305: with ring's assembly it seals and opens twice as
/// fast on CPUs with AES instructions (BENCHMARKS.md, `noise_1MiB`).
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PROLOGUE: &[u8] = b"omnode transport-tcp 1";
const TAG: usize = 16;
/// Inbound connections allowed in the handshake at once.
const MAX_PENDING_HANDSHAKES: usize = 128;
const DUPLICATE: &str = "duplicate link";
const WARN_REPEAT: Duration = Duration::from_secs(60);

/// Settings of one transport. [`Config::new`] fills sensible defaults.
#[derive(Clone)]
pub struct Config {
    /// This node's id.
    pub local: NodeId,
    /// Where to listen; dialled connections also leave from this IP (unless unspecified).
    pub listen: SocketAddr,
    /// The cluster key (Noise PSK). Never logged, never sent.
    pub key: [u8; 32],
    /// Digest of the cluster map, sent in the `Hello`; peers with another digest are refused.
    pub cluster: String,
    /// Limit for the Noise handshake plus the `Hello` exchange.
    pub handshake_timeout: Duration,
    /// Limit for one TCP connect.
    pub connect_timeout: Duration,
    /// First and largest pause between dial attempts (doubled each failure, ±50 % jitter).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// An empty message is sent after this long without traffic.
    pub keepalive: Duration,
    /// A link that receives nothing (not even a keepalive) this long is declared down.
    pub idle_timeout: Duration,
    /// Frames queued per peer before `send` waits.
    pub queue_capacity: usize,
    /// Largest encoded frame (head + payload + 4 bytes) sent or accepted.
    pub max_frame: usize,
}

impl Config {
    pub fn new(
        local: NodeId,
        listen: SocketAddr,
        key: [u8; 32],
        cluster: impl Into<String>,
    ) -> Self {
        Config {
            local,
            listen,
            key,
            cluster: cluster.into(),
            handshake_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keepalive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            queue_capacity: 4096,
            max_frame: 64 << 20,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("local", &self.local)
            .field("listen", &self.listen)
            .field("key", &"<redacted>")
            .field("cluster", &self.cluster)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .field("keepalive", &self.keepalive)
            .field("idle_timeout", &self.idle_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_frame", &self.max_frame)
            .finish()
    }
}

/// Errors starting a transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Why a link attempt ended before `Up`.
#[derive(Debug, thiserror::Error)]
enum HsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("authentication failed (wrong cluster key?)")]
    Auth,
    #[error("connection closed during the handshake (wrong cluster key on one side?)")]
    Closed,
    #[error("handshake timed out")]
    Timeout,
    #[error("{0}")]
    Refused(String),
    #[error("peer refused the link: {0}")]
    RefusedByPeer(String),
    #[error("duplicate link")]
    Duplicate,
    #[error("{0}")]
    Protocol(String),
}

/// The TCP transport. Dropping the last handle (or [`rt::Transport::shutdown`]) closes
/// every link.
pub struct Transport {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

struct Inner {
    config: Config,
    params: snow::params::NoiseParams,
    events: rt::Events,
    state: Mutex<State>,
    root: CancellationToken,
    next_link: AtomicU64,
    handshakes: Semaphore,
    /// Cancelled once the listening socket is closed.
    listener_closed: CancellationToken,
    /// Which repeated warnings were logged lately (refusals repeat on every re-dial).
    warned: Repeats,
}

#[derive(Default)]
struct State {
    closed: bool,
    peers: HashMap<NodeId, PeerEntry>,
    links: HashMap<NodeId, LinkEntry>,
}

struct PeerEntry {
    addrs: Vec<SocketAddr>,
    cancel: CancellationToken,
    wake: Arc<Notify>,
}

struct LinkEntry {
    id: u64,
    state: LinkState,
    outbox: Arc<Outbox>,
    ctl: Arc<LinkCtl>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Accepted by this node (the arbiter), waiting for the peer's confirmation; no `Up`
    /// yet, so it vanishes silently if the peer dies now.
    Reserved,
    /// `Up` emitted (or about to be); frames may be sent.
    Up,
    /// Ending; its `Down` is being delivered.
    Closing,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport {
    /// Bind the listener and start accepting; peers are dialled once [`rt::Transport::set_peers`]
    /// names them. Events (links up and down, frames) go to `events`.
    pub async fn start(
        config: Config,
        events: impl Into<rt::Events>,
    ) -> Result<Arc<Transport>, Error> {
        if config.queue_capacity == 0 {
            return Err(Error::Config("queue_capacity must be at least 1".into()));
        }
        Backoff::check(config.backoff_min, config.backoff_max).map_err(Error::Config)?;
        let params: snow::params::NoiseParams = NOISE_PARAMS
            .parse()
            .map_err(|e| Error::Config(format!("{e:?}")))?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        info!(node = config.local, %local_addr, "transport listening");
        let inner = Arc::new(Inner {
            config,
            params,
            events: events.into(),
            state: Mutex::new(State::default()),
            root: CancellationToken::new(),
            next_link: AtomicU64::new(1),
            handshakes: Semaphore::new(MAX_PENDING_HANDSHAKES),
            warned: Repeats::new(WARN_REPEAT),
            listener_closed: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(inner.clone(), listener));
        Ok(Arc::new(Transport { inner, local_addr }))
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.inner.begin_shutdown();
    }
}

impl rt::Transport for Transport {
    fn local_id(&self) -> NodeId {
        self.inner.config.local
    }

    fn send(&self, peer: NodeId, frame: Frame) -> BoxFuture<'_, Result<(), rt::Error>> {
        Box::pin(async move {
            link::check_size(&frame, self.inner.config.max_frame)?;
            let tx = {
                let st = lock(&self.inner.state);
                if st.closed {
                    return Err(rt::Error::Closed);
                }
                match st.links.get(&peer) {
                    Some(l) if l.state == LinkState::Up => l.outbox.clone(),
                    _ if !st.peers.contains_key(&peer) => return Err(rt::Error::UnknownPeer(peer)),
                    _ => return Err(rt::Error::Unreachable(peer)),
                }
            };
            tx.send(frame)
                .await
                .map_err(|_| rt::Error::Unreachable(peer))
        })
    }

    fn set_peers(&self, peers: Vec<PeerInfo>) {
        let inner = &self.inner;
        let mut st = lock(&inner.state);
        if st.closed {
            return;
        }
        let wanted: HashMap<NodeId, Vec<SocketAddr>> = peers
            .into_iter()
            .filter(|p| p.id != inner.config.local)
            .map(|p| (p.id, p.addrs))
            .collect();
        let removed: Vec<NodeId> = st
            .peers
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in removed {
            if let Some(p) = st.peers.remove(&id) {
                p.cancel.cancel();
            }
            if let Some(l) = st.links.get(&id) {
                l.ctl.close("peer removed from the peer list");
            }
        }
        for (id, addrs) in wanted {
            if let Some(p) = st.peers.get_mut(&id) {
                p.addrs = addrs;
                continue;
            }
            let cancel = inner.root.child_token();
            let wake = Arc::new(Notify::new());
            st.peers.insert(
                id,
                PeerEntry {
                    addrs,
                    cancel: cancel.clone(),
                    wake: wake.clone(),
                },
            );
            tokio::spawn(dial_loop(inner.clone(), id, cancel, wake));
        }
    }

    fn connected(&self) -> Vec<NodeId> {
        let st = lock(&self.inner.state);
        let mut v: Vec<NodeId> = st
            .links
            .iter()
            .filter(|(_, l)| l.state == LinkState::Up)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let dones = self.inner.begin_shutdown();
            let all = async {
                self.inner.listener_closed.cancelled().await;
                for d in dones {
                    d.cancelled().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
        })
    }
}

impl Inner {
    /// Stop accepting and dialling, close every link (writers flush briefly). Returns the
    /// links' completion tokens.
    fn begin_shutdown(&self) -> Vec<CancellationToken> {
        let mut st = lock(&self.state);
        st.closed = true;
        let dones = st.links.values().map(|l| l.ctl.done.clone()).collect();
        for l in st.links.values() {
            l.ctl.close("transport shut down");
        }
        drop(st);
        self.root.cancel();
        dones
    }

    /// Log `msg` as a warning once per `key` a minute (debug in between), so a peer that
    /// keeps re-dialling with a wrong key or map does not flood the log.
    fn warn_repeated(&self, key: String, msg: &str) {
        if self.warned.warn_now(key) {
            warn!("{msg}");
        } else {
            debug!("{msg}");
        }
    }

    async fn emit(&self, ev: Event) {
        // The runtime may be gone during shutdown; nothing to do then.
        let _ = self.events.send(ev).await;
    }

    fn is_listed(&self, peer: NodeId) -> bool {
        lock(&self.state).peers.contains_key(&peer)
    }

    /// Install a link for `peer` whose handshake finished. The arbiter (lower id) refuses
    /// when another link is live; the other end follows the arbiter, replacing a stale link.
    async fn claim(&self, peer: NodeId, arbiter: bool, entry: LinkEntry) -> Result<(), String> {
        let mut entry = Some(entry);
        link::claim(|| {
            let mut st = lock(&self.state);
            if st.closed {
                return Claim::Decided(Err("transport is shutting down".into()));
            }
            if !st.peers.contains_key(&peer) {
                return Claim::Decided(Err(format!("node {peer} is not in this node's peer list")));
            }
            match st.links.get(&peer) {
                None => {
                    st.links.insert(peer, entry.take().expect("entry"));
                    Claim::Decided(Ok(()))
                }
                Some(old) if arbiter && old.state != LinkState::Closing => {
                    Claim::Decided(Err(format!(
                        "{DUPLICATE}: node {} already has a link to node {peer}",
                        self.config.local
                    )))
                }
                Some(old) => {
                    if !arbiter {
                        old.ctl.close("replaced by a new link");
                    }
                    Claim::WaitFor(old.ctl.done.clone())
                }
            }
        })
        .await
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            _ = inner.root.cancelled() => {
                drop(listener);
                inner.listener_closed.cancel();
                return;
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = inner.handshakes.try_acquire() else {
            debug!("too many pending handshakes; dropping connection from {remote}");
            continue;
        };
        permit.forget();
        let inner = inner.clone();
        tokio::spawn(async move {
            // Not raced against shutdown: once registered, a link must reach `run_link`
            // (claim refuses after shutdown, and the handshake is bounded by its time-out).
            let r = handshake(&inner, stream, remote, false, None).await;
            inner.handshakes.add_permits(1);
            match r {
                Ok(link) => run_link(inner, link).await,
                Err(HsError::Duplicate) => {}
                Err(HsError::Auth) | Err(HsError::Closed) => inner.warn_repeated(
                    format!("auth {}", remote.ip()),
                    &format!(
                        "refused link from {remote}: authentication failed (wrong cluster key?)"
                    ),
                ),
                Err(HsError::Refused(_)) | Err(HsError::RefusedByPeer(_)) => {} // logged where decided
                Err(e) => warn!("dropped connection from {remote}: {e}"),
            }
        });
    }
}

async fn dial_loop(inner: Arc<Inner>, peer: NodeId, cancel: CancellationToken, wake: Arc<Notify>) {
    let cfg = &inner.config;
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut last_error = String::new();
    loop {
        // Nothing to do while a link (either direction) exists.
        loop {
            let has_link = lock(&inner.state).links.contains_key(&peer);
            if !has_link {
                break;
            }
            // A link exists (whoever dialled it): start afresh when it ends.
            backoff.reset();
            last_error.clear();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
            }
        }
        let addrs = match lock(&inner.state).peers.get(&peer) {
            Some(p) => p.addrs.clone(),
            None => return,
        };
        let mut linked = false;
        for addr in addrs {
            if cancel.is_cancelled() {
                return;
            }
            // Not raced against `cancel`: see accept_loop.
            let r = dial(&inner, peer, addr).await;
            match r {
                Ok(link) => {
                    linked = true;
                    last_error.clear();
                    run_link(inner.clone(), link).await;
                    break;
                }
                // The peer keeps another link (usually ours from its side, about to show
                // up here); if that one is stale, retry with growing pauses.
                Err(HsError::Duplicate) => break,
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        match e {
                            // Refusals were logged where they were decided.
                            HsError::Refused(_) | HsError::RefusedByPeer(_) => {}
                            HsError::Auth | HsError::Closed => {
                                warn!("link to node {peer} at {addr} failed: {msg}")
                            }
                            _ => info!("cannot reach node {peer} at {addr}: {msg}"),
                        }
                        last_error = msg;
                    } else {
                        debug!("cannot reach node {peer} at {addr}: {msg}");
                    }
                }
            }
        }
        let pause = if linked {
            backoff.reset();
            backoff.pause()
        } else {
            backoff.failed()
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            // A link coming up from the other side (or going down) re-checks at once.
            _ = wake.notified() => {}
        }
    }
}

async fn dial(inner: &Arc<Inner>, peer: NodeId, addr: SocketAddr) -> Result<Established, HsError> {
    let cfg = &inner.config;
    let connect = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let ip = cfg.listen.ip();
        if !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4() {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(addr).await
    };
    let stream = match tokio::time::timeout(cfg.connect_timeout, connect).await {
        Err(_) => {
            return Err(HsError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
        Ok(r) => r?,
    };
    handshake(inner, stream, addr, true, Some(peer)).await
}

/// A link whose handshake completed and which is registered (Up not yet sent).
struct Established {
    peer: NodeId,
    remote: SocketAddr,
    id: u64,
    arbiter: bool,
    read: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    noise: Arc<StatelessTransportState>,
    outbox: Arc<Outbox>,
    ctl: Arc<LinkCtl>,
}

fn length_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(65535)
        .new_codec()
}

async fn send_raw(w: &mut OwnedWriteHalf, msg: &[u8]) -> io::Result<()> {
    let mut b = BytesMut::with_capacity(2 + msg.len());
    b.put_u16(msg.len() as u16);
    b.put_slice(msg);
    w.write_all(&b).await
}

async fn recv_raw(
    r: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
) -> Result<BytesMut, HsError> {
    match r.next().await {
        None => Err(HsError::Closed),
        Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => Err(HsError::Auth),
        Some(Err(e)) => Err(HsError::Io(e)),
        Some(Ok(m)) => Ok(m),
    }
}

/// Sealed-message helpers for the `Hello` phase (nonces 0 and 1 in each direction).
fn seal(noise: &StatelessTransportState, nonce: u64, msg: &[u8]) -> Result<Vec<u8>, HsError> {
    let mut out = vec![0u8; msg.len() + TAG];
    let n = noise
        .write_message(nonce, msg, &mut out)
        .map_err(|e| HsError::Protocol(format!("seal: {e:?}")))?;
    out.truncate(n);
    Ok(out)
}

fn open(noise: &StatelessTransportState, nonce: u64, msg: &[u8]) -> Result<Vec<u8>, HsError> {
    let mut out = vec![0u8; msg.len()];
    let n = noise
        .read_message(nonce, msg, &mut out)
        .map_err(|_| HsError::Auth)?;
    out.truncate(n);
    Ok(out)
}

/// Set up a link: [`negotiate`] (bounded by the handshake time-out and abandoned at once
/// when the transport shuts down), then [`register`], the point of no return.
async fn handshake(
    inner: &Arc<Inner>,
    stream: TcpStream,
    remote: SocketAddr,
    initiator: bool,
    expect: Option<NodeId>,
) -> Result<Established, HsError> {
    let limit = inner.config.handshake_timeout;
    let neg = tokio::select! {
        biased;
        _ = inner.root.cancelled() => Err(HsError::Refused("transport is shutting down".into())),
        r = tokio::time::timeout(limit, negotiate(inner, stream, remote, initiator, expect)) => {
            r.unwrap_or(Err(HsError::Timeout))
        }
    }?;
    register(inner, neg).await
}

/// Refuse a link with `reason`: log it, tell the peer (reply slot, nonce 1), close.
async fn refuse(
    inner: &Inner,
    w: &mut OwnedWriteHalf,
    noise: &StatelessTransportState,
    remote: SocketAddr,
    who: &str,
    reason: String,
) -> HsError {
    inner.warn_repeated(
        format!("refused {who} {reason}"),
        &format!("refused {who} at {remote}: {reason}"),
    );
    let reply = HelloReply::Refused {
        reason: reason.clone(),
    };
    if let Ok(m) = seal(noise, 1, &reply.encode()) {
        let _ = send_raw(w, &m).await;
        let _ = w.shutdown().await;
    }
    HsError::Refused(reason)
}

/// A link whose peer is authenticated and agreed; only the arbiter's decision remains.
struct Negotiated {
    peer: NodeId,
    remote: SocketAddr,
    arbiter: bool,
    read: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    write: OwnedWriteHalf,
    noise: StatelessTransportState,
}

async fn negotiate(
    inner: &Arc<Inner>,
    stream: TcpStream,
    remote: SocketAddr,
    initiator: bool,
    expect: Option<NodeId>,
) -> Result<Negotiated, HsError> {
    let cfg = &inner.config;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = FramedRead::new(r, length_codec());
    let proto = |e: snow::Error| HsError::Protocol(format!("{e:?}"));

    // 1. Noise NNpsk0: -> psk, e   <- e, ee
    let builder = snow::Builder::new(inner.params.clone())
        .psk(0, &cfg.key)
        .prologue(PROLOGUE);
    let mut buf = vec![0u8; 1024];
    let noise = if initiator {
        let mut hs = builder.build_initiator().map_err(proto)?;
        let n = hs.write_message(&[], &mut buf).map_err(proto)?;
        send_raw(&mut w, &buf[..n]).await?;
        let m = recv_raw(&mut r).await?;
        hs.read_message(&m, &mut buf).map_err(|_| HsError::Auth)?;
        hs.into_stateless_transport_mode().map_err(proto)?
    } else {
        let mut hs = builder.build_responder().map_err(proto)?;
        let m = recv_raw(&mut r).await?;
        hs.read_message(&m, &mut buf).map_err(|_| HsError::Auth)?;
        let n = hs.write_message(&[], &mut buf).map_err(proto)?;
        send_raw(&mut w, &buf[..n]).await?;
        hs.into_stateless_transport_mode().map_err(proto)?
    };

    // 2. Hellos, both ways (nonce 0), checked on both sides.
    let ours = Hello::new(cfg.local, cfg.cluster.clone());
    send_raw(&mut w, &seal(&noise, 0, &ours.encode())?).await?;
    let theirs = open(&noise, 0, &recv_raw(&mut r).await?)?;
    let hello = match Hello::decode(&theirs) {
        Ok(h) => h,
        Err(e) => {
            let reason = format!("malformed hello: {e}");
            return Err(refuse(inner, &mut w, &noise, remote, "link", reason).await);
        }
    };
    let peer = hello.node;
    let who = format!("node {peer}");
    let mut problem = hello.check(&ours).err();
    if problem.is_none() {
        if let Some(want) = expect.filter(|&want| want != peer) {
            problem = Some(format!(
                "dialled node {want} but node {peer} answered; check the addresses in the map"
            ));
        } else if !inner.is_listed(peer) {
            problem = Some(format!(
                "node {peer} is not in node {}'s peer list",
                cfg.local
            ));
        }
    }
    if let Some(reason) = problem {
        return Err(refuse(inner, &mut w, &noise, remote, &who, reason).await);
    }

    // 3. Replies (nonce 1): the higher id answers first; the lower id (the arbiter)
    //    answers last, in `register`, once it knows whether it keeps this link.
    let arbiter = cfg.local < peer;
    if !arbiter {
        send_raw(&mut w, &seal(&noise, 1, &HelloReply::Accepted.encode())?).await?;
    }
    let m = open(&noise, 1, &recv_raw(&mut r).await?)?;
    match HelloReply::decode(&m) {
        Ok(HelloReply::Accepted) => {}
        Ok(HelloReply::Refused { reason }) if reason.starts_with(DUPLICATE) => {
            debug!("node {peer} at {remote} kept another link: {reason}");
            return Err(HsError::Duplicate);
        }
        Ok(HelloReply::Refused { reason }) => {
            inner.warn_repeated(
                format!("refused by {peer} {reason}"),
                &format!("node {peer} at {remote} refused the link: {reason}"),
            );
            return Err(HsError::RefusedByPeer(reason));
        }
        Err(e) => {
            return Err(HsError::Protocol(format!(
                "malformed hello reply from node {peer}: {e}"
            )));
        }
    }
    Ok(Negotiated {
        peer,
        remote,
        arbiter,
        read: r,
        write: w,
        noise,
    })
}

/// Install a negotiated link. Not cancelled from outside: once `claim` succeeds the link
/// must reach `run_link`, which reports it down.
async fn register(inner: &Arc<Inner>, neg: Negotiated) -> Result<Established, HsError> {
    let Negotiated {
        peer,
        remote,
        arbiter,
        read,
        write,
        noise,
    } = neg;
    let noise = Arc::new(noise);
    // The arbiter's `Accepted` goes out first on the link, once it is registered.
    let mut preamble = BytesMut::new();
    if arbiter {
        let m = seal(&noise, 1, &HelloReply::Accepted.encode())?;
        preamble.put_u16(m.len() as u16);
        preamble.put_slice(&m);
    }
    let outbox = Outbox::new(
        write,
        noise.clone(),
        inner.config.queue_capacity,
        &preamble,
        !arbiter,
    )
    .map_err(HsError::Protocol)?;
    let ctl = Arc::new(LinkCtl::new(&inner.root));
    let id = inner.next_link.fetch_add(1, Ordering::Relaxed);
    let entry = LinkEntry {
        id,
        state: if arbiter {
            LinkState::Reserved
        } else {
            LinkState::Up
        },
        outbox: outbox.clone(),
        ctl: ctl.clone(),
    };
    let refusal = |reason: String| -> Vec<u8> {
        let m = seal(&noise, 1, &HelloReply::Refused { reason }.encode()).unwrap_or_default();
        let mut b = Vec::with_capacity(2 + m.len());
        b.extend_from_slice(&(m.len() as u16).to_be_bytes());
        b.extend_from_slice(&m);
        b
    };
    match inner.claim(peer, arbiter, entry).await {
        Ok(()) => {}
        Err(reason) if arbiter && reason.starts_with(DUPLICATE) => {
            debug!("node {peer} at {remote}: {reason}");
            outbox.write_now(&refusal(reason));
            return Err(HsError::Duplicate);
        }
        Err(reason) if arbiter => {
            inner.warn_repeated(
                format!("refused node {peer} {reason}"),
                &format!("refused node {peer} at {remote}: {reason}"),
            );
            outbox.write_now(&refusal(reason.clone()));
            return Err(HsError::Refused(reason));
        }
        Err(reason) => {
            // The arbiter accepted already; it will see this link close at once.
            warn!("dropped the link node {peer} at {remote} accepted: {reason}");
            return Err(HsError::Refused(reason));
        }
    }
    Ok(Established {
        peer,
        remote,
        id,
        arbiter,
        read,
        noise,
        outbox,
        ctl,
    })
}

/// Run an established link until it dies; emits `Up` first and `Down` at the end.
///
/// The arbiter emits `Up` only once the peer confirms (its first message after the
/// arbiter's `Accepted`), so a peer that dies or shuts down during the handshake leaves no
/// `Up`/`Down` pair behind on either side.
async fn run_link(inner: Arc<Inner>, link: Established) {
    let Established {
        peer,
        remote,
        id,
        arbiter,
        mut read,
        noise,
        outbox,
        ctl,
    } = link;
    // The writer starts at once: it carries the arbiter's `Accepted` (and the other
    // side's confirmation). On shutdown it flushes what is queued, briefly.
    let writer = {
        let (inner, outbox, ctl) = (inner.clone(), outbox.clone(), ctl.clone());
        tokio::spawn(async move {
            match outbox.run(&ctl, inner.config.keepalive).await {
                Some(reason) => ctl.close(&reason),
                None if inner.root.is_cancelled() => outbox.flush(Duration::from_secs(1)).await,
                None => {}
            }
        })
    };
    let mut next_nonce = 2;
    let mut was_up = false;
    let mut reason = String::new();
    if arbiter {
        let limit = inner.config.handshake_timeout;
        let confirm = tokio::select! {
            r = tokio::time::timeout(limit, recv_raw(&mut read)) => match r {
                Ok(Ok(m)) => open(&noise, 2, &m).map(|_| ()).map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("peer did not confirm the link in time".into()),
            },
            _ = ctl.cancel.cancelled() => Err(String::new()),
        };
        match confirm {
            Ok(()) => {
                next_nonce = 3;
                let mut st = lock(&inner.state);
                match st.links.get_mut(&peer) {
                    Some(l) if l.id == id => l.state = LinkState::Up,
                    _ => ctl.close("replaced"),
                }
            }
            Err(e) => {
                debug!("link to node {peer} at {remote} not confirmed: {e}");
                ctl.close(&e);
            }
        }
    }
    if !ctl.cancel.is_cancelled() {
        was_up = true;
        info!("link to node {peer} up ({remote})");
        inner.emit(Event::Up { peer }).await;
        reason = tokio::select! {
            r = read_loop(&inner, peer, &mut read, &noise, next_nonce) => r,
            _ = ctl.cancel.cancelled() => String::new(),
        };
    }
    ctl.close(&reason);
    // The writer stops at the cancellation (flushing for a bounded while on shutdown).
    link::join_or_abort(writer, Duration::from_millis(1500)).await;
    drop(outbox);
    let reason = ctl.reason().unwrap_or(reason);
    drop(read);

    let current = {
        let mut st = lock(&inner.state);
        match st.links.get_mut(&peer) {
            Some(l) if l.id == id => {
                l.state = LinkState::Closing;
                true
            }
            _ => false,
        }
    };
    if current {
        if was_up {
            info!("link to node {peer} down: {reason}");
            inner.emit(Event::Down { peer, reason }).await;
        }
        let mut st = lock(&inner.state);
        if st.links.get(&peer).is_some_and(|l| l.id == id) {
            st.links.remove(&peer);
        }
        if let Some(p) = st.peers.get(&peer) {
            p.wake.notify_one();
        }
    }
    ctl.done.cancel();
}

async fn read_loop(
    inner: &Inner,
    peer: NodeId,
    read: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    noise: &StatelessTransportState,
    mut nonce: u64,
) -> String {
    let idle = inner.config.idle_timeout;
    let mut unpacker = Unpacker::new(inner.config.max_frame);
    loop {
        let msg = match tokio::time::timeout(idle, read.next()).await {
            Err(_) => return format!("nothing received for {idle:?} (peer dead or unreachable)"),
            Ok(None) => return "connection closed by peer".into(),
            Ok(Some(Err(e))) => return format!("read error: {e}"),
            Ok(Some(Ok(m))) => m,
        };
        if msg.len() < TAG {
            return "malformed message (shorter than its tag)".into();
        }
        // Room for the whole ciphertext: ring then opens in place instead of copying it.
        let r = unpacker.fill_with(msg.len(), |out| noise.read_message(nonce, &msg, out));
        if r.is_err() {
            return "message failed authentication; dropped link".into();
        }
        nonce += 1;
        loop {
            match unpacker.next_frame() {
                Ok(Some(frame)) => {
                    if inner
                        .events
                        .send(Event::Frame { peer, frame })
                        .await
                        .is_err()
                    {
                        return "event receiver closed".into();
                    }
                }
                Ok(None) => break,
                Err(e) => return format!("malformed stream from peer: {e}"),
            }
        }
    }
}
