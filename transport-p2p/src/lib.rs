//! `runtime::transport::Transport` over libp2p (tokio, TCP + pnet + noise + yamux), with
//! mDNS discovery.
//!
//! Owns: the libp2p swarm (listening, dialling with back-off, mDNS), the private-network
//! key (pnet PSK derived from the cluster key), the per-process libp2p identity, the
//! `wire::Hello` exchange that maps libp2p `PeerId`s to omnode `NodeId`s, one ordered
//! stream per peer carrying length-delimited frames, per-peer queues with back-pressure,
//! keepalives and idle time-outs.
//!
//! Must not know: actors, envelopes, processes, the map file (it gets peers through
//! `set_peers` and the map's digest as an opaque string). Frames are opaque bytes.
//!
//! ## Security
//! Every connection is TCP, then libp2p's private network (pnet: XSalsa20 with a 32-byte
//! pre-shared key), then noise (XX, ed25519 identities), then yamux. The pnet key is
//! HMAC-SHA256(cluster key, `"omnode transport-p2p pnet v1"`), so the raw cluster key is
//! never used as-is. A peer without the key cannot get past the protocol negotiation
//! that follows the pnet handshake: its connection fails before any stream exists, is
//! logged once as a WARN (`... wrong cluster key?`), and nothing reaches the runtime.
//! QUIC is not built in at all: pnet cannot protect it.
//!
//! ## Identity
//! The libp2p identity (ed25519 keypair, hence the `PeerId`) is generated fresh at each
//! start; it is only a connection identity. The node id comes from the `Hello` both ends
//! send on the link's stream, checked with `Hello::check` (magic, version, cluster
//! digest, not our own id). In map mode (`mdns: false`) the id must also be one of the
//! peers given to `set_peers`. Two live peers claiming one node id: the first keeps it,
//! the second is refused (`node id N already taken by peer ...; id collision`), logged on
//! both sides. Only when the first one's link has been silent for two keepalive periods
//! (the node restarted, with a new identity, before its old link timed out) does the new
//! peer take the id over, closing the old link (`Down`, then `Up`).
//!
//! ## Links
//! Between two connected peers the one with the lower `PeerId` opens one libp2p stream
//! (`/omnode/link/1`, libp2p-stream) on its first connection; both ends send a `Hello`
//! and their listen addresses, both answer `HelloReply`; once both accepted, the link is
//! up: `Event::Discovered { addrs: the peer's listen addresses }` first (mDNS mode, for
//! peers not given to `set_peers`; again before each later `Up` of that peer), then
//! `Event::Up`, then frames in order. On the stream every message is `u32 length (big endian) | body`; length 0 is a
//! keepalive, any other body is `runtime::wire::encode_frame`'s format (payloads are
//! written straight from their `Bytes`, so multi-MiB payloads stream up to `max_frame`).
//! A link that ends (stream closed, connection lost, nothing received for
//! `idle_timeout`) emits `Event::Down` once and its connections are closed; listed and
//! mDNS-found peers are re-dialled with back-off.

mod key;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use futures_util::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, Stream, StreamProtocol, Swarm, identity, mdns, noise, tcp, yamux};
use runtime::NodeId;
use runtime::transport::link::{self, Claim};
use runtime::transport::pacing::{Backoff, Repeats, jittered};
use runtime::transport::{self as rt, BoxFuture, Event, Frame, PeerInfo};
use runtime::wire::{FRAME_OVERHEAD, Hello, HelloReply, decode_frame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use key::pnet_key;
/// The libp2p identity type of [`Transport::peer_id`] (re-exported so callers need no libp2p).
pub use libp2p::PeerId;

/// The libp2p protocol of the link stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/omnode/link/1");
/// Payloads at least this big are written from their own buffer, not copied into a batch.
const DIRECT_WRITE: usize = 32 * 1024;
/// Bytes of small frames collected before a write.
const WRITE_BATCH: usize = 256 * 1024;
/// Largest handshake message.
const MAX_HELLO: usize = 16 * 1024;
/// How often the swarm task looks for peers to (re-)dial.
const DIAL_TICK: Duration = Duration::from_millis(200);
/// The same warning (same peer, same reason) is repeated at most this often.
const WARN_REPEAT: Duration = Duration::from_secs(60);

/// Settings of one transport. [`Config::new`] fills sensible defaults.
#[derive(Clone)]
pub struct Config {
    /// This node's id (sent in the `Hello`).
    pub local: NodeId,
    /// Where to listen (IPv4 or IPv6 address and port; `0.0.0.0` and port 0 allowed).
    pub listen: SocketAddr,
    /// The cluster key. The pnet pre-shared key is derived from it ([`pnet_key`]); never
    /// logged, never sent.
    pub key: [u8; 32],
    /// Digest of the cluster configuration, sent in the `Hello`; peers with another
    /// digest are refused.
    pub cluster: String,
    /// Find peers on the local network with mDNS and link to them (`Event::Discovered`).
    /// Off: only the peers given to `set_peers` are dialled and accepted.
    pub mdns: bool,
    /// How often mDNS asks the network for peers (libp2p's default is 5 minutes).
    pub mdns_query_interval: Duration,
    /// Lifetime of this node's mDNS records at the peers; an mDNS-found peer that has
    /// not answered for this long is no longer re-dialled.
    pub mdns_ttl: Duration,
    /// Limit for connecting (TCP + pnet + noise + yamux) and for the `Hello` exchange.
    pub handshake_timeout: Duration,
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
            mdns: false,
            mdns_query_interval: Duration::from_secs(1),
            mdns_ttl: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
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
            .field("mdns", &self.mdns)
            .field("mdns_query_interval", &self.mdns_query_interval)
            .field("mdns_ttl", &self.mdns_ttl)
            .field("handshake_timeout", &self.handshake_timeout)
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
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error(
        "cannot start mDNS: {0} (does this host have a multicast-capable interface with a route?)"
    )]
    Mdns(io::Error),
    #[error("cannot set up libp2p: {0}")]
    Libp2p(String),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Why a link attempt ended before `Up`.
#[derive(Debug, thiserror::Error)]
enum HsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cannot open the link stream: {0}")]
    Open(String),
    #[error("stream closed during the handshake")]
    Closed,
    #[error("handshake timed out")]
    Timeout,
    #[error("{0}")]
    Refused(String),
    #[error("peer refused the link: {0}")]
    RefusedByPeer(String),
    #[error("{0}")]
    Protocol(String),
}

/// The libp2p transport. Dropping the last handle (or [`rt::Transport::shutdown`]) closes
/// every link and stops the swarm.
pub struct Transport {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

struct Inner {
    config: Config,
    local_peer: PeerId,
    events: rt::Events,
    state: Mutex<State>,
    /// Cancelled when shutting down: links close, dialling stops.
    root: CancellationToken,
    /// Cancelled once links are closed: the swarm task drops the swarm.
    swarm_stop: CancellationToken,
    cmd: mpsc::UnboundedSender<Cmd>,
    next_link: AtomicU64,
    /// Which repeated warnings were logged lately.
    warned: Repeats,
}

#[derive(Default)]
struct State {
    closed: bool,
    /// Peers given to `set_peers`.
    listed: HashMap<NodeId, Vec<SocketAddr>>,
    links: HashMap<NodeId, LinkEntry>,
    /// Where this node listens (sent to peers, who report it in `Event::Discovered`).
    listen_addrs: Vec<SocketAddr>,
    /// The listed nodes (and address) we dialled when we connected to a peer.
    dialled_for: HashMap<PeerId, Vec<(NodeId, Multiaddr)>>,
}

struct LinkEntry {
    id: u64,
    peer_id: PeerId,
    /// True between `Up` and the start of closing.
    up: bool,
    tx: mpsc::Sender<Frame>,
    ctl: Arc<LinkCtl>,
}

/// The shared control block (cancel, first reason, done) plus when the link last heard
/// from its peer, which decides whether a new peer may take the node id over.
struct LinkCtl {
    ctl: link::LinkCtl,
    born: Instant,
    /// When the last message (frame or keepalive) arrived, in ms since `born`.
    last_rx_ms: AtomicU64,
}

impl std::ops::Deref for LinkCtl {
    type Target = link::LinkCtl;

    fn deref(&self) -> &link::LinkCtl {
        &self.ctl
    }
}

impl LinkCtl {
    fn new(parent: &CancellationToken) -> Arc<Self> {
        Arc::new(LinkCtl {
            ctl: link::LinkCtl::new(parent),
            born: Instant::now(),
            last_rx_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_rx_ms.store(ms, Ordering::Relaxed);
    }

    /// How long nothing arrived on this link.
    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_rx_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}

/// Requests to the swarm task.
enum Cmd {
    SetPeers(Vec<(NodeId, Vec<SocketAddr>)>),
    LinkUp(NodeId),
    /// A link (or a link attempt) with this peer ended: close its connections unless
    /// another link to it is live, and re-dial soon.
    LinkEnded {
        node: Option<NodeId>,
        peer_id: PeerId,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addrs_round_trip_and_garbage_is_skipped() {
        let a: Vec<SocketAddr> = vec!["10.0.0.1:4100".parse().unwrap(), "[::1]:7".parse().unwrap()];
        assert_eq!(decode_addrs(&encode_addrs(&a)), a);
        assert_eq!(decode_addrs(b""), vec![]);
        assert_eq!(
            decode_addrs(b"x,1.2.3.4:5,\xff"),
            vec!["1.2.3.4:5".parse().unwrap()]
        );
    }

    #[test]
    fn multiaddr_conversion() {
        let a: SocketAddr = "127.0.0.9:4000".parse().unwrap();
        assert_eq!(to_multiaddr(a).to_string(), "/ip4/127.0.0.9/tcp/4000");
        assert_eq!(to_socketaddr(&to_multiaddr(a)), Some(a));
    }

    #[test]
    fn wrong_key_errors_get_a_hint() {
        assert!(
            connection_hint("Multistream select failed: Protocol negotiation failed.").is_some()
        );
        assert!(connection_hint("Connection refused (os error 111)").is_none());
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    stream: libp2p_stream::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

fn build_transport(
    config: &Config,
    keypair: &identity::Keypair,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Error> {
    let psk = PreSharedKey::new(pnet_key(&config.key));
    let noise = noise::Config::new(keypair).map_err(|e| Error::Libp2p(format!("noise: {e}")))?;
    let mut yamux = yamux::Config::default();
    yamux.set_max_num_streams(64);
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    Ok(tcp
        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(yamux)
        .timeout(config.handshake_timeout)
        .boxed())
}

fn to_multiaddr(a: SocketAddr) -> Multiaddr {
    let ip = match a.ip() {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(a.port()))
}

fn to_socketaddr(m: &Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in m.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

impl Transport {
    /// Build the swarm, listen, and (with `config.mdns`) start mDNS. Peers are dialled
    /// once [`rt::Transport::set_peers`] names them or mDNS finds them. Events (peers
    /// discovered, links up and down, frames) go to `events`.
    pub async fn start(
        config: Config,
        events: impl Into<rt::Events>,
    ) -> Result<Arc<Transport>, Error> {
        if config.queue_capacity == 0 {
            return Err(Error::Config("queue_capacity must be at least 1".into()));
        }
        Backoff::check(config.backoff_min, config.backoff_max).map_err(Error::Config)?;
        if config.max_frame > u32::MAX as usize || config.max_frame < FRAME_OVERHEAD {
            return Err(Error::Config(
                "max_frame must be between 4 bytes and 4 GiB".into(),
            ));
        }
        if config.keepalive >= config.idle_timeout {
            return Err(Error::Config(
                "keepalive must be shorter than idle_timeout".into(),
            ));
        }
        let keypair = identity::Keypair::generate_ed25519();
        let local_peer = keypair.public().to_peer_id();
        let transport = build_transport(&config, &keypair)?;
        let mdns = if config.mdns {
            let mc = mdns::Config {
                ttl: config.mdns_ttl,
                query_interval: config.mdns_query_interval,
                enable_ipv6: config.listen.is_ipv6(),
            };
            Some(mdns::tokio::Behaviour::new(mc, local_peer).map_err(Error::Mdns)?)
        } else {
            None
        };
        let behaviour = Behaviour {
            stream: libp2p_stream::Behaviour::new(),
            mdns: Toggle::from(mdns),
        };
        let swarm_config = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(config.handshake_timeout.max(Duration::from_secs(5)));
        let mut swarm = Swarm::new(transport, behaviour, local_peer, swarm_config);
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(PROTOCOL)
            .map_err(|e| Error::Libp2p(format!("stream protocol: {e}")))?;

        let listen = config.listen;
        let listen_err = |reason: String| Error::Listen {
            addr: listen,
            reason,
        };
        swarm
            .listen_on(to_multiaddr(listen))
            .map_err(|e| listen_err(e.to_string()))?;
        // Wait for the listener to be up (so port 0 is resolved and errors are reported).
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match swarm.next().await {
                    Some(SwarmEvent::NewListenAddr { address, .. }) => {
                        if let Some(a) = to_socketaddr(&address) {
                            return Ok(a);
                        }
                    }
                    Some(SwarmEvent::ListenerClosed { reason, .. }) => {
                        return Err(listen_err(match reason {
                            Ok(()) => "listener closed".into(),
                            Err(e) => e.to_string(),
                        }));
                    }
                    Some(SwarmEvent::ListenerError { error, .. }) => {
                        return Err(listen_err(error.to_string()));
                    }
                    Some(_) => {}
                    None => return Err(listen_err("swarm ended".into())),
                }
            }
        })
        .await
        .map_err(|_| listen_err("timed out waiting for the listener".into()))??;
        let local_addr = SocketAddr::new(listen.ip(), first.port());
        info!(
            node = config.local,
            %local_addr,
            peer_id = %local_peer,
            mdns = config.mdns,
            "transport-p2p listening"
        );

        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            config,
            local_peer,
            events: events.into(),
            state: Mutex::new(State {
                listen_addrs: vec![first],
                ..State::default()
            }),
            root: CancellationToken::new(),
            swarm_stop: CancellationToken::new(),
            cmd: cmd_tx,
            next_link: AtomicU64::new(1),
            warned: Repeats::new(WARN_REPEAT),
        });
        tokio::spawn(accept_loop(inner.clone(), incoming));
        tokio::spawn(swarm_task(inner.clone(), swarm, control, cmd_rx));
        Ok(Arc::new(Transport { inner, local_addr }))
    }

    /// The address actually bound (the configured IP with the real port when 0 was given).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This process's libp2p identity (fresh at each start).
    pub fn peer_id(&self) -> PeerId {
        self.inner.local_peer
    }

    /// The libp2p identity of the peer behind `node`'s live link, if any.
    pub fn peer_id_of(&self, node: NodeId) -> Option<PeerId> {
        let st = lock(&self.inner.state);
        st.links.get(&node).filter(|l| l.up).map(|l| l.peer_id)
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
                    Some(l) if l.up => l.tx.clone(),
                    _ if !self.inner.config.mdns && !st.listed.contains_key(&peer) => {
                        return Err(rt::Error::UnknownPeer(peer));
                    }
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
        let wanted: HashMap<NodeId, Vec<SocketAddr>> = peers
            .into_iter()
            .filter(|p| p.id != inner.config.local)
            .map(|p| (p.id, p.addrs))
            .collect();
        {
            let mut st = lock(&inner.state);
            if st.closed {
                return;
            }
            if !inner.config.mdns {
                for (id, l) in &st.links {
                    if !wanted.contains_key(id) {
                        l.ctl.close("peer removed from the peer list");
                    }
                }
            }
            st.listed = wanted.clone();
        }
        let _ = inner.cmd.send(Cmd::SetPeers(wanted.into_iter().collect()));
    }

    fn connected(&self) -> Vec<NodeId> {
        let st = lock(&self.inner.state);
        let mut v: Vec<NodeId> = st
            .links
            .iter()
            .filter(|(_, l)| l.up)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let dones = self.inner.begin_shutdown();
            let all = async {
                for d in dones {
                    d.cancelled().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
            self.inner.swarm_stop.cancel();
        })
    }
}

impl Inner {
    /// Stop dialling, close every link (writers flush briefly), then stop the swarm.
    /// Returns the links' completion tokens.
    fn begin_shutdown(&self) -> Vec<CancellationToken> {
        let mut st = lock(&self.state);
        st.closed = true;
        let dones: Vec<CancellationToken> = st.links.values().map(|l| l.ctl.done.clone()).collect();
        for l in st.links.values() {
            l.ctl.close("transport shut down");
        }
        drop(st);
        self.root.cancel();
        // Without a runtime (dropped outside tokio) the swarm task is gone anyway.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let stop = self.swarm_stop.clone();
            let wait = dones.clone();
            handle.spawn(async move {
                let all = async {
                    for d in wait {
                        d.cancelled().await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
                stop.cancel();
            });
        } else {
            self.swarm_stop.cancel();
        }
        dones
    }

    async fn emit(&self, ev: Event) {
        // The runtime may be gone during shutdown; nothing to do then.
        let _ = self.events.send(ev).await;
    }

    /// Log `msg` as a warning unless the same `key` was warned about recently.
    fn warn_limited(&self, key: String, msg: &str) {
        if self.warned.warn_now(key) {
            warn!("{msg}");
        } else {
            debug!("{msg}");
        }
    }

    /// Register a link for `node` from `peer_id` whose `Hello` passed (not `Up` yet).
    async fn claim(&self, node: NodeId, peer_id: PeerId, entry: LinkEntry) -> Result<(), String> {
        let mut entry = Some(entry);
        link::claim(|| {
            let mut st = lock(&self.state);
            if st.closed {
                return Claim::Decided(Err("transport is shutting down".into()));
            }
            if !self.config.mdns && !st.listed.contains_key(&node) {
                return Claim::Decided(Err(format!(
                    "node {node} is not in node {}'s peer list",
                    self.config.local
                )));
            }
            match st.links.get(&node) {
                None => {
                    st.links.insert(node, entry.take().expect("entry"));
                    Claim::Decided(Ok(()))
                }
                Some(old)
                    if old.peer_id != peer_id
                        && old.up
                        && old.ctl.silent_for() >= self.stale_after() =>
                {
                    // Our link to the previous holder has missed its keepalives: most
                    // likely that node restarted (new libp2p identity) before we noticed.
                    info!(
                        "node {node} reconnects as peer {peer_id}; its link to peer {} is silent for {:?}, closing it",
                        old.peer_id,
                        old.ctl.silent_for()
                    );
                    old.ctl
                        .close("replaced: the node reconnected with a new identity");
                    Claim::WaitFor(old.ctl.done.clone())
                }
                Some(old) if old.peer_id != peer_id => Claim::Decided(Err(format!(
                    "node id {node} already taken by peer {}; id collision (peer {peer_id} claims it too)",
                    old.peer_id
                ))),
                Some(old) => {
                    // The same peer opened a new stream: its old one is dead.
                    old.ctl.close("replaced by a new stream from the same peer");
                    Claim::WaitFor(old.ctl.done.clone())
                }
            }
        })
        .await
    }

    /// A link silent this long (two missed keepalives) yields its node id to a new peer.
    fn stale_after(&self) -> Duration {
        (self.config.keepalive * 2).min(self.config.idle_timeout)
    }

    fn unclaim(&self, node: NodeId, id: u64) {
        let mut st = lock(&self.state);
        if st.links.get(&node).is_some_and(|l| l.id == id) {
            st.links.remove(&node);
        }
    }

    fn link_up(&self, node: NodeId) -> bool {
        lock(&self.state).links.get(&node).is_some_and(|l| l.up)
    }

    fn has_link_with(&self, peer_id: &PeerId) -> bool {
        lock(&self.state)
            .links
            .values()
            .any(|l| &l.peer_id == peer_id)
    }
}

// ---------------------------------------------------------------------------------------
// Swarm task: listening, dialling, mDNS, opening link streams.

struct DialEntry {
    addrs: Vec<Multiaddr>,
    backoff: Backoff,
    next_at: Instant,
}

struct Dialer {
    /// Listed peers (map mode and hints), by node id.
    map: HashMap<NodeId, DialEntry>,
    /// Peers found by mDNS, by libp2p identity.
    found: HashMap<PeerId, DialEntry>,
    /// Dials in flight: the address (map mode) or peer (mDNS).
    pending_addr: HashMap<ConnectionId, (NodeId, Multiaddr)>,
    pending_peer: HashMap<ConnectionId, PeerId>,
    /// Established connections we dialled, by remote address.
    dialled: HashMap<ConnectionId, Multiaddr>,
}

async fn swarm_task(
    inner: Arc<Inner>,
    mut swarm: Swarm<Behaviour>,
    control: libp2p_stream::Control,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let cfg = inner.config.clone();
    let mut d = Dialer {
        map: HashMap::new(),
        found: HashMap::new(),
        pending_addr: HashMap::new(),
        pending_peer: HashMap::new(),
        dialled: HashMap::new(),
    };
    let mut tick = tokio::time::interval(DIAL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.swarm_stop.cancelled() => break,
            ev = swarm.select_next_some() => on_swarm_event(&inner, &control, &mut d, ev),
            Some(cmd) = cmd_rx.recv() => on_cmd(&inner, &mut swarm, &mut d, cmd),
            _ = tick.tick() => {
                if !inner.root.is_cancelled() {
                    dial_due(&inner, &mut swarm, &mut d);
                }
            }
        }
    }
    debug!("swarm task of node {} stopped", cfg.local);
}

fn dial_due(inner: &Inner, swarm: &mut Swarm<Behaviour>, d: &mut Dialer) {
    let now = Instant::now();
    for (node, e) in d.map.iter_mut() {
        if now < e.next_at || inner.link_up(*node) {
            continue;
        }
        for addr in &e.addrs {
            let busy = d.pending_addr.values().any(|(_, a)| a == addr)
                || d.dialled.values().any(|a| a == addr);
            if busy {
                continue;
            }
            let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
            let id = opts.connection_id();
            match swarm.dial(opts) {
                Ok(()) => {
                    d.pending_addr.insert(id, (*node, addr.clone()));
                }
                Err(e) => debug!("cannot dial node {node} at {addr}: {e}"),
            }
        }
        e.next_at = now + e.backoff.failed();
    }
    for (peer, e) in d.found.iter_mut() {
        if now < e.next_at || swarm.is_connected(peer) || d.pending_peer.values().any(|p| p == peer)
        {
            continue;
        }
        let opts = DialOpts::peer_id(*peer)
            .addresses(e.addrs.clone())
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let id = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                d.pending_peer.insert(id, *peer);
            }
            Err(err) => debug!("cannot dial mDNS peer {peer}: {err}"),
        }
        e.next_at = now + e.backoff.failed();
    }
}

fn on_cmd(inner: &Inner, swarm: &mut Swarm<Behaviour>, d: &mut Dialer, cmd: Cmd) {
    let cfg = &inner.config;
    match cmd {
        Cmd::SetPeers(peers) => {
            let now = Instant::now();
            let mut keep = HashSet::new();
            for (node, addrs) in peers {
                keep.insert(node);
                let addrs: Vec<Multiaddr> = addrs.into_iter().map(to_multiaddr).collect();
                match d.map.get_mut(&node) {
                    Some(e) => {
                        if e.addrs != addrs {
                            e.addrs = addrs;
                            e.next_at = now;
                            e.backoff.reset();
                        }
                    }
                    None => {
                        d.map.insert(
                            node,
                            DialEntry {
                                addrs,
                                backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
                                next_at: now,
                            },
                        );
                    }
                }
            }
            d.map.retain(|n, _| keep.contains(n));
            dial_due(inner, swarm, d);
        }
        Cmd::LinkUp(node) => {
            if let Some(e) = d.map.get_mut(&node) {
                e.backoff.reset();
            }
        }
        Cmd::LinkEnded { node, peer_id } => {
            if !inner.has_link_with(&peer_id) && swarm.is_connected(&peer_id) {
                let _ = swarm.disconnect_peer_id(peer_id);
            }
            if let Some(e) = node.and_then(|n| d.map.get_mut(&n)) {
                e.next_at = e.next_at.min(Instant::now() + jittered(cfg.backoff_min));
            }
        }
    }
}

fn on_swarm_event(
    inner: &Arc<Inner>,
    control: &libp2p_stream::Control,
    d: &mut Dialer,
    ev: SwarmEvent<BehaviourEvent>,
) {
    match ev {
        SwarmEvent::NewListenAddr { address, .. } => {
            debug!("listening on {address}");
            if let Some(a) = to_socketaddr(&address) {
                let mut st = lock(&inner.state);
                if !st.listen_addrs.contains(&a) {
                    st.listen_addrs.push(a);
                }
            }
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            if let Some(a) = to_socketaddr(&address) {
                lock(&inner.state).listen_addrs.retain(|x| *x != a);
            }
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            num_established,
            ..
        } => {
            d.pending_peer.remove(&connection_id);
            if let Some((_, addr)) = d.pending_addr.remove(&connection_id) {
                // Every listed node that has this address expects to find itself here.
                let wanted: Vec<(NodeId, Multiaddr)> = d
                    .map
                    .iter()
                    .filter(|(_, e)| e.addrs.contains(&addr))
                    .map(|(n, _)| (*n, addr.clone()))
                    .collect();
                lock(&inner.state).dialled_for.insert(peer_id, wanted);
                d.dialled.insert(connection_id, addr);
            }
            debug!(%peer_id, addr = %endpoint.get_remote_address(), "connection established");
            if let Some(e) = d.found.get_mut(&peer_id) {
                e.backoff.reset();
            }
            if num_established.get() == 1
                && inner.local_peer < peer_id
                && !inner.root.is_cancelled()
            {
                let inner = inner.clone();
                let mut control = control.clone();
                tokio::spawn(async move {
                    let opened = tokio::time::timeout(
                        inner.config.handshake_timeout,
                        control.open_stream(peer_id, PROTOCOL),
                    )
                    .await;
                    let stream = match opened {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            link_failed(&inner, peer_id, None, HsError::Open(e.to_string()));
                            return;
                        }
                        Err(_) => {
                            link_failed(&inner, peer_id, None, HsError::Timeout);
                            return;
                        }
                    };
                    start_link(inner, peer_id, stream).await;
                });
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            num_established,
            cause,
            ..
        } => {
            d.dialled.remove(&connection_id);
            debug!(%peer_id, ?cause, remaining = num_established, "connection closed");
            if num_established == 0 {
                lock(&inner.state).dialled_for.remove(&peer_id);
                if let Some(e) = d.found.get_mut(&peer_id) {
                    e.next_at = e.next_at.min(Instant::now() + e.backoff.pause());
                }
            }
        }
        SwarmEvent::OutgoingConnectionError {
            connection_id,
            peer_id,
            error,
        } => {
            let addr = d.pending_addr.remove(&connection_id).map(|(_, a)| a);
            d.pending_peer.remove(&connection_id);
            let target = match (&addr, peer_id) {
                (Some(a), _) => a.to_string(),
                (None, Some(p)) => format!("peer {p}"),
                (None, None) => "peer".into(),
            };
            let msg = error_chain(&error);
            match connection_hint(&msg) {
                Some(hint) => inner.warn_limited(
                    format!("out {target} {hint}"),
                    &format!("cannot connect to {target}: {hint} [{msg}]"),
                ),
                None => debug!("cannot connect to {target}: {msg}"),
            }
        }
        SwarmEvent::IncomingConnectionError {
            send_back_addr,
            error,
            ..
        } => {
            let msg = error_chain(&error);
            let hint = connection_hint(&msg).unwrap_or("connection failed");
            let from = to_socketaddr(&send_back_addr)
                .map(|a| a.to_string())
                .unwrap_or_else(|| send_back_addr.to_string());
            let ip = to_socketaddr(&send_back_addr).map(|a| a.ip().to_string());
            inner.warn_limited(
                format!("in {} {hint}", ip.unwrap_or_default()),
                &format!("refused connection from {from}: {hint} [{msg}]"),
            );
        }
        SwarmEvent::ListenerError { error, .. } => warn!("listener error: {error}"),
        SwarmEvent::ListenerClosed { reason, .. } if !inner.root.is_cancelled() => {
            warn!("listener closed: {reason:?}");
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(ev)) => on_mdns(inner, d, ev),
        _ => {}
    }
}

fn on_mdns(inner: &Inner, d: &mut Dialer, ev: mdns::Event) {
    let cfg = &inner.config;
    match ev {
        mdns::Event::Discovered(list) => {
            let now = Instant::now();
            for (peer, addr) in list {
                if peer == inner.local_peer {
                    continue;
                }
                debug!(%peer, %addr, "mDNS found a peer");
                let e = d.found.entry(peer).or_insert_with(|| DialEntry {
                    addrs: Vec::new(),
                    backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
                    next_at: now,
                });
                if !e.addrs.contains(&addr) {
                    e.addrs.push(addr.clone());
                }
            }
        }
        mdns::Event::Expired(list) => {
            for (peer, addr) in list {
                debug!(%peer, %addr, "mDNS record expired");
                if let Some(e) = d.found.get_mut(&peer) {
                    e.addrs.retain(|a| a != &addr);
                    if e.addrs.is_empty() {
                        d.found.remove(&peer);
                    }
                }
            }
        }
    }
}

/// The error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// What a connection error most likely means for a person; `None` for plain network
/// errors (nobody listening, no route), which back-off retries quietly.
fn connection_hint(msg: &str) -> Option<&'static str> {
    let m = msg.to_ascii_lowercase();
    if m.contains("connection refused") || m.contains("unreachable") {
        None
    } else if m.contains("negotiat")
        || m.contains("pnet")
        || m.contains("handshake")
        || m.contains("noise")
        || m.contains("protocol")
        || m.contains("timeout")
        || m.contains("timed out")
        || m.contains("unexpected eof")
        || m.contains("reset")
    {
        Some("private-network (pnet) handshake failed: wrong cluster key on one side?")
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------
// Links.

async fn accept_loop(inner: Arc<Inner>, mut incoming: libp2p_stream::IncomingStreams) {
    loop {
        let next = tokio::select! {
            _ = inner.root.cancelled() => return,
            n = incoming.next() => n,
        };
        let Some((peer_id, stream)) = next else {
            return;
        };
        tokio::spawn(start_link(inner.clone(), peer_id, stream));
    }
}

/// A link whose handshake completed and which is registered (Up not yet sent).
struct Established {
    node: NodeId,
    peer_id: PeerId,
    /// Where the peer says it listens.
    addrs: Vec<SocketAddr>,
    id: u64,
    read: BufReader<ReadHalf<Stream>>,
    write: WriteHalf<Stream>,
    rx: mpsc::Receiver<Frame>,
    ctl: Arc<LinkCtl>,
}

async fn start_link(inner: Arc<Inner>, peer_id: PeerId, stream: Stream) {
    let limit = inner.config.handshake_timeout;
    let r = match tokio::time::timeout(limit, handshake(&inner, peer_id, stream)).await {
        Ok(r) => r,
        Err(_) => Err((None, HsError::Timeout)),
    };
    match r {
        Ok(link) => run_link(inner, link).await,
        Err((node, e)) => link_failed(&inner, peer_id, node, e),
    }
}

fn link_failed(inner: &Inner, peer_id: PeerId, node: Option<NodeId>, e: HsError) {
    match &e {
        // Logged where decided.
        HsError::Refused(_) | HsError::RefusedByPeer(_) => {}
        _ if inner.root.is_cancelled() => {}
        // The connection went away while the stream was being opened; it is re-dialled.
        HsError::Open(_) => debug!("link with peer {peer_id} failed: {e}"),
        _ => {
            let who = node.map_or_else(
                || format!("peer {peer_id}"),
                |n| format!("node {n} (peer {peer_id})"),
            );
            inner.warn_limited(
                format!("hs {peer_id}"),
                &format!("link with {who} failed: {e}"),
            );
        }
    }
    if matches!(e, HsError::Refused(_)) {
        // Give the refused peer time to read why before its connection goes.
        let cmd = inner.cmd.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = cmd.send(Cmd::LinkEnded { node, peer_id });
        });
    } else {
        let _ = inner.cmd.send(Cmd::LinkEnded { node, peer_id });
    }
}

async fn send_msg(w: &mut WriteHalf<Stream>, msg: &[u8]) -> io::Result<()> {
    let mut b = BytesMut::with_capacity(4 + msg.len());
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    w.write_all(&b).await?;
    w.flush().await
}

async fn recv_msg(r: &mut BufReader<ReadHalf<Stream>>, max: usize) -> Result<Vec<u8>, HsError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HsError::Closed,
        _ => HsError::Io(e),
    })?;
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(HsError::Protocol(format!(
            "handshake message of {n} bytes (limit {max})"
        )));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HsError::Closed,
        _ => HsError::Io(e),
    })?;
    Ok(b)
}

/// Listen addresses as sent on the link: `addr,addr,...` (UTF-8).
fn encode_addrs(addrs: &[SocketAddr]) -> Vec<u8> {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// Lenient: what does not parse is skipped.
fn decode_addrs(b: &[u8]) -> Vec<SocketAddr> {
    String::from_utf8_lossy(b)
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

async fn handshake(
    inner: &Arc<Inner>,
    peer_id: PeerId,
    stream: Stream,
) -> Result<Established, (Option<NodeId>, HsError)> {
    let cfg = &inner.config;
    let (r, mut w) = stream.split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let err = |e: HsError| (None, e);

    // 1. Hellos and listen addresses, both ways at once.
    let ours = Hello::new(cfg.local, cfg.cluster.clone());
    let our_addrs = encode_addrs(&lock(&inner.state).listen_addrs);
    send_msg(&mut w, &ours.encode())
        .await
        .map_err(|e| err(e.into()))?;
    send_msg(&mut w, &our_addrs)
        .await
        .map_err(|e| err(e.into()))?;
    let theirs = recv_msg(&mut r, MAX_HELLO).await.map_err(err)?;
    let addrs = decode_addrs(&recv_msg(&mut r, MAX_HELLO).await.map_err(err)?);

    let refuse = async |w: &mut WriteHalf<Stream>, who: String, reason: String| -> HsError {
        inner.warn_limited(
            format!("refuse {peer_id} {reason}"),
            &format!("refused {who}: {reason}"),
        );
        let _ = send_msg(
            w,
            &HelloReply::Refused {
                reason: reason.clone(),
            }
            .encode(),
        )
        .await;
        let _ = w.close().await;
        HsError::Refused(reason)
    };
    let hello = match Hello::decode(&theirs) {
        Ok(h) => h,
        Err(e) => {
            let who = format!("peer {peer_id}");
            return Err(err(
                refuse(&mut w, who, format!("malformed hello: {e}")).await
            ));
        }
    };
    let node = hello.node;
    let who = format!("node {node} (peer {peer_id})");
    let fail = |e: HsError| (Some(node), e);
    if let Err(reason) = hello.check(&ours) {
        return Err(fail(refuse(&mut w, who, reason).await));
    }
    let dialled = lock(&inner.state).dialled_for.get(&peer_id).cloned();
    for (want, addr) in dialled.into_iter().flatten().filter(|(w, _)| *w != node) {
        inner.warn_limited(
            format!("wrong addr {addr} {node}"),
            &format!(
                "dialled node {want} at {addr}, but node {node} answered; check the addresses in the map"
            ),
        );
    }

    // 2. Claim the node id, then answer; the link is up once both accepted.
    let (tx, rx) = mpsc::channel(cfg.queue_capacity);
    let ctl = LinkCtl::new(&inner.root);
    let id = inner.next_link.fetch_add(1, Ordering::Relaxed);
    let entry = LinkEntry {
        id,
        peer_id,
        up: false,
        tx,
        ctl: ctl.clone(),
    };
    if let Err(reason) = inner.claim(node, peer_id, entry).await {
        return Err(fail(refuse(&mut w, who, reason).await));
    }
    let answer = async {
        send_msg(&mut w, &HelloReply::Accepted.encode()).await?;
        let m = recv_msg(&mut r, MAX_HELLO).await?;
        match HelloReply::decode(&m) {
            Ok(HelloReply::Accepted) => Ok(()),
            Ok(HelloReply::Refused { reason }) => {
                inner.warn_limited(
                    format!("refused-by {peer_id} {reason}"),
                    &format!("{who} refused the link: {reason}"),
                );
                Err(HsError::RefusedByPeer(reason))
            }
            Err(e) => Err(HsError::Protocol(format!(
                "malformed hello reply from {who}: {e}"
            ))),
        }
    };
    if let Err(e) = answer.await {
        inner.unclaim(node, id);
        return Err(fail(e));
    }
    Ok(Established {
        node,
        peer_id,
        addrs,
        id,
        read: r,
        write: w,
        rx,
        ctl,
    })
}

/// Run an established link until it dies: `Discovered` (mDNS mode) and `Up` first,
/// frames, `Down` at the end.
async fn run_link(inner: Arc<Inner>, link: Established) {
    let Established {
        node,
        peer_id,
        addrs,
        id,
        mut read,
        write,
        rx,
        ctl,
    } = link;
    let discovered = {
        let mut st = lock(&inner.state);
        let listed = st.listed.contains_key(&node);
        let closed = st.closed;
        let current = match st.links.get_mut(&node) {
            Some(l) if l.id == id && !closed => {
                l.up = true;
                true
            }
            _ => false,
        };
        if !current {
            drop(st);
            inner.unclaim(node, id);
            ctl.done.cancel();
            return;
        }
        (inner.config.mdns && !listed).then(|| {
            let mut addrs = addrs;
            if addrs.iter().any(|a| !a.ip().is_loopback()) {
                addrs.retain(|a| !a.ip().is_loopback());
            }
            addrs
        })
    };
    if let Some(addrs) = discovered {
        info!("discovered node {node} (peer {peer_id}) at {addrs:?}");
        inner.emit(Event::Discovered { peer: node, addrs }).await;
    }
    info!("link to node {node} up (peer {peer_id})");
    inner.emit(Event::Up { peer: node }).await;
    let _ = inner.cmd.send(Cmd::LinkUp(node));

    let writer = tokio::spawn(write_loop(inner.clone(), write, rx, ctl.clone()));
    let reason = tokio::select! {
        r = read_loop(&inner, node, &ctl, &mut read) => r,
        _ = ctl.cancel.cancelled() => String::new(),
    };
    ctl.close(&reason);
    let reason = ctl.reason().unwrap_or(reason);
    link::join_or_abort(writer, Duration::from_secs(2)).await;
    drop(read);

    let current = {
        let mut st = lock(&inner.state);
        match st.links.get_mut(&node) {
            Some(l) if l.id == id => {
                l.up = false;
                true
            }
            _ => false,
        }
    };
    if current {
        info!("link to node {node} down: {reason}");
        inner.emit(Event::Down { peer: node, reason }).await;
        inner.unclaim(node, id);
    }
    let _ = inner.cmd.send(Cmd::LinkEnded {
        node: Some(node),
        peer_id,
    });
    ctl.done.cancel();
}

/// Fill `buf`, giving up when nothing arrives for `idle`.
async fn read_full(
    r: &mut BufReader<ReadHalf<Stream>>,
    buf: &mut [u8],
    idle: Duration,
) -> Result<(), String> {
    let mut off = 0;
    while off < buf.len() {
        match tokio::time::timeout(idle, r.read(&mut buf[off..])).await {
            Err(_) => {
                return Err(format!(
                    "nothing received for {idle:?} (peer dead or unreachable)"
                ));
            }
            Ok(Ok(0)) => return Err("connection closed by peer".into()),
            Ok(Ok(n)) => off += n,
            Ok(Err(e)) => return Err(format!("read error: {e}")),
        }
    }
    Ok(())
}

async fn read_loop(
    inner: &Inner,
    peer: NodeId,
    ctl: &LinkCtl,
    r: &mut BufReader<ReadHalf<Stream>>,
) -> String {
    let idle = inner.config.idle_timeout;
    let max = inner.config.max_frame;
    loop {
        let mut len = [0u8; 4];
        if let Err(e) = read_full(r, &mut len, idle).await {
            return e;
        }
        ctl.touch();
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 {
            continue; // keepalive
        }
        if n > max {
            return format!("peer sent a frame of {n} bytes (limit {max})");
        }
        let mut b = BytesMut::zeroed(n);
        if let Err(e) = read_full(r, &mut b, idle).await {
            return e;
        }
        let frame = match decode_frame(b.freeze()) {
            Ok(f) => f,
            Err(e) => return format!("malformed frame from peer: {e}"),
        };
        if inner
            .events
            .send(Event::Frame { peer, frame })
            .await
            .is_err()
        {
            return "event receiver closed".into();
        }
    }
}

/// Add `frame` to the batch; a large payload is written from its own buffer.
async fn push_frame(
    w: &mut WriteHalf<Stream>,
    buf: &mut BytesMut,
    frame: &Frame,
) -> Result<(), String> {
    let len = FRAME_OVERHEAD + frame.head.len() + frame.payload.len();
    buf.reserve(8 + frame.head.len());
    buf.put_u32(len as u32);
    buf.put_u32(frame.head.len() as u32);
    buf.put_slice(&frame.head);
    if frame.payload.len() >= DIRECT_WRITE {
        write_bytes(w, buf).await?;
        w.write_all(&frame.payload)
            .await
            .map_err(|e| format!("write error: {e}"))?;
    } else {
        buf.put_slice(&frame.payload);
    }
    Ok(())
}

async fn write_bytes(w: &mut WriteHalf<Stream>, buf: &mut BytesMut) -> Result<(), String> {
    if !buf.is_empty() {
        w.write_all(buf)
            .await
            .map_err(|e| format!("write error: {e}"))?;
        buf.clear();
    }
    Ok(())
}

async fn write_loop(
    inner: Arc<Inner>,
    mut w: WriteHalf<Stream>,
    mut rx: mpsc::Receiver<Frame>,
    ctl: Arc<LinkCtl>,
) {
    let keepalive = inner.config.keepalive;
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + 64 * 1024);
    let result: Result<(), String> = async {
        loop {
            let first = tokio::select! {
                biased;
                _ = ctl.cancel.cancelled() => break,
                r = tokio::time::timeout(keepalive, rx.recv()) => r,
            };
            match first {
                Err(_) => buf.put_u32(0),
                Ok(None) => break,
                Ok(Some(frame)) => {
                    push_frame(&mut w, &mut buf, &frame).await?;
                    while buf.len() < WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(f) => push_frame(&mut w, &mut buf, &f).await?,
                            Err(_) => break,
                        }
                    }
                }
            }
            write_bytes(&mut w, &mut buf).await?;
            w.flush().await.map_err(|e| format!("write error: {e}"))?;
        }
        Ok(())
    }
    .await;
    if let Err(reason) = result {
        ctl.close(&reason);
        return;
    }
    // Closing: on shutdown, flush what is queued for a short while, then close our side.
    if inner.root.is_cancelled() {
        let flush = async {
            rx.close();
            while let Some(f) = rx.recv().await {
                if push_frame(&mut w, &mut buf, &f).await.is_err() {
                    return;
                }
            }
            let _ = write_bytes(&mut w, &mut buf).await;
            let _ = w.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.close()).await;
}
