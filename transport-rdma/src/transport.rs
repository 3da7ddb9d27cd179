//! `runtime::transport::Transport` over RDMA, with TCP beside it for what RDMA cannot do.
//!
//! Every peer first gets an authenticated transport-tcp link (the shared link kit: link
//! table, simultaneous-dial arbiter, Hello and typed refusals, back-off, keepalive and
//! idle time-out). That link is the pair's liveness signal and its fall-back path; it is
//! not announced to the runtime yet. Then the lower node id dials the higher one's RDMA
//! side channel (its TCP port + 1, [`side_addr`]), both prove the cluster key again
//! (Noise, [`crate::exchange`]) and swap sealed [`crate::exchange::Offer`]s saying whether
//! each can do RDMA. Only when both can is any verbs object created ([`Link::establish`]).
//! Both ends reach the same verdict from the same two offers:
//! * RDMA: `Up` is emitted, frames go as sends (control lane) and RDMA writes with credits
//!   (bulk lane) through a per-peer [`Outq`] (byte windows, control first);
//! * TCP (no device here or there, no side channel, set-up failed): one log line saying
//!   why, `Up`, and frames go over the TCP link;
//! * refused (`fallback = false`): one error line, and no `Up` for that peer.
//!
//! Nothing is sent to a peer before its verdict, so no frame of a lane overtakes another
//! across the two paths. A failed RDMA link (a completion in error, the side channel
//! ending, a credit or piece violation) emits `Down`, closes its queue (blocked senders
//! get `Unreachable` with their frame), and the pair negotiates again after a back-off
//! while the TCP link stays; the TCP link ending (peer killed, restarted, silent past the
//! idle time-out) ends everything for that peer, and the TCP transport redials.
//!
//! A link set up fails before it is declared up when the wire does not carry RDMA
//! (the zero-byte RDMA write of [`Link::establish`] is not acknowledged): the pair falls
//! back to TCP. A pair on TCP although both ends have RDMA is re-probed: the lower id dials
//! the side channel again after a back-off (1 s doubling to `reprobe_max`), and when an
//! RDMA link comes up both ends switch to it without a `Down`: in-flight TCP sends finish
//! first (a per-peer gate), each end sends its end-of-TCP markers, and each holds the new
//! link's frames until the peer's markers arrived ([`crate::switch`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::NodeId;
use runtime::transport::lanes::Outq;
use runtime::transport::link::{check_size, lock};
use runtime::transport::pacing::{Backoff, Repeats};
use runtime::transport::{self as rt, BoxFuture, Event, Events, Frame, PeerInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::error::Error;
use crate::exchange::{Offer, Session, authenticate};
use crate::link::{self, Link};
use crate::switch::{self, Seen};
use crate::verbs::{Context, Mr, Pd};

/// Side-channel connections in authentication at once (a flood waits, it does not grow).
const MAX_PENDING_SIDE: usize = 16;
/// Longest pause before negotiating again after an RDMA link failed.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// First pause before re-probing RDMA for a peer on the TCP fall-back.
const REPROBE_MIN: Duration = Duration::from_secs(1);

/// Settings of the RDMA transport.
#[derive(Clone, Debug)]
pub struct Config {
    /// The TCP link every peer gets first (liveness, fall-back); its `listen` port + 1 is
    /// the RDMA side channel's.
    pub tcp: transport_tcp::Config,
    /// Device, GID index and buffer sizes of each RDMA link.
    pub link: link::Config,
    /// Link a peer over TCP when RDMA is not possible (true), or leave it unlinked (false).
    pub fallback: bool,
    /// Bound on each step of deciding RDMA or TCP for a peer (side-channel connect,
    /// authentication, the wait for the lower id's dial).
    pub decide_timeout: Duration,
    /// Bytes queued per peer on each lane of an RDMA link before `send` waits.
    pub control_window: usize,
    pub bulk_window: usize,
    /// Poll completions this long before sleeping on the channel (zero: never spin).
    pub busy_poll: Duration,
    /// A peer linked over TCP although both ends have RDMA (its set-up or route failed) is
    /// re-probed after 1 s, then after pauses doubling up to this; zero: never.
    pub reprobe_max: Duration,
}

impl Config {
    pub fn new(tcp: transport_tcp::Config) -> Config {
        let control_window = tcp.control_window;
        let bulk_window = tcp.bulk_window;
        Config {
            tcp,
            link: link::Config::default(),
            fallback: true,
            decide_timeout: Duration::from_secs(10),
            control_window,
            bulk_window,
            busy_poll: Duration::ZERO,
            reprobe_max: Duration::from_secs(60),
        }
    }
}

/// Where a node's RDMA side channel listens: its TCP address with the port + 1.
pub fn side_addr(tcp: SocketAddr) -> Option<SocketAddr> {
    let port = tcp.port().checked_add(1)?;
    Some(SocketAddr::new(tcp.ip(), port))
}

/// Which path a peer's frames take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Rdma,
    /// Over TCP, and why not RDMA.
    Tcp(String),
}

impl LinkKind {
    /// `rdma` or `tcp`, for a status column.
    pub fn name(&self) -> &'static str {
        match self {
            LinkKind::Rdma => "rdma",
            LinkKind::Tcp(_) => "tcp",
        }
    }
}

/// Can this node set up RDMA links with `cfg`: the device opens, its port is active, the
/// GID index exists, and one link's memory can be registered (RLIMIT_MEMLOCK).
pub fn probe(cfg: &link::Config) -> Result<String, Error> {
    let ctx = Context::open(cfg.device.as_deref(), cfg.port)?;
    let port = ctx.port()?;
    if !port.active {
        return Err(Error::PortDown {
            device: ctx.name().to_string(),
            port: cfg.port,
            state: port.state,
        });
    }
    ctx.gid(cfg.gid_index)?;
    let pd = Pd::new(&ctx)?;
    // What one link registers: receive buffers, the bulk ring, send staging.
    let piece = cfg.recv_size.max(cfg.slot_size) as usize;
    let bytes = (cfg.recv_depth * cfg.recv_size) as usize
        + (cfg.slots * cfg.slot_size) as usize
        + piece * cfg.send_depth as usize;
    drop(Mr::new(&pd, bytes, true)?);
    Ok(ctx.name().to_string())
}

enum Path {
    /// The TCP link is up; RDMA or TCP is being decided. Frames from the peer wait here.
    Deciding(Vec<Frame>),
    Tcp(String),
    Rdma(Arc<Outq>),
    Refused,
}

struct Peer {
    /// Which TCP link / negotiation this entry belongs to (stale messages are dropped).
    generation: u64,
    path: Path,
    /// `Up` was emitted (and `Down` is owed when the link ends).
    up: bool,
    cancel: CancellationToken,
    backoff: Backoff,
    /// Pauses between re-probes of RDMA while on TCP.
    reprobe: Backoff,
    /// The peer's end-of-TCP markers (see [`crate::switch`]).
    seen: watch::Sender<Seen>,
    /// TCP sends hold it shared; a switch to RDMA takes it exclusively, so no TCP frame
    /// goes after the end-of-TCP markers.
    gate: Arc<RwLock<()>>,
}

/// Why not RDMA, and whether it may work later (both ends have RDMA; set-up, route or
/// side channel failed), so the lower id re-probes.
type Fail = (String, bool);

enum Outcome {
    Rdma(Box<Link>),
    Tcp(String, bool),
    Refused(String),
}

enum Internal {
    Decided {
        peer: NodeId,
        generation: u64,
        outcome: Outcome,
    },
    LinkEnded {
        peer: NodeId,
        generation: u64,
        error: String,
    },
    Retry {
        peer: NodeId,
        generation: u64,
    },
    /// Time to try RDMA again for a peer on TCP (the lower id dials).
    Reprobe {
        peer: NodeId,
        generation: u64,
    },
    /// A re-probe failed; `retry`: schedule another.
    ReprobeFailed {
        peer: NodeId,
        generation: u64,
        why: String,
        retry: bool,
    },
}

type Accepted = (Session, Offer);

#[derive(Default)]
struct State {
    peers: HashMap<NodeId, Peer>,
    addrs: HashMap<NodeId, Vec<SocketAddr>>,
    /// Side channels accepted from a lower id before our TCP link to it was up.
    parked: HashMap<NodeId, Accepted>,
    /// Negotiations waiting for the lower id's side channel.
    waiting: HashMap<NodeId, oneshot::Sender<Accepted>>,
    next_generation: u64,
    closed: bool,
}

struct Inner {
    local: NodeId,
    key: [u8; 32],
    cfg: Config,
    tcp: Arc<transport_tcp::Transport>,
    events: Events,
    /// This node's RDMA verdict: the device name, or why not.
    avail: Result<String, String>,
    state: Mutex<State>,
    root: CancellationToken,
    internal: mpsc::UnboundedSender<Internal>,
    warned: Repeats,
    side_addr: SocketAddr,
}

/// The RDMA transport (see the module docs). Dropping the last handle or
/// [`rt::Transport::shutdown`] closes every link.
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// Probe the device, bind the RDMA side channel, start the TCP links. Without usable
    /// RDMA here this fails with the reason when `fallback` is off, and otherwise logs the
    /// reason once and links every peer over TCP.
    pub async fn start(config: Config, events: impl Into<Events>) -> Result<Arc<Self>, Error> {
        let avail = match probe(&config.link) {
            Ok(dev) => {
                info!(device = %dev, "RDMA device {dev} usable; peers with RDMA are linked over it");
                Ok(dev)
            }
            Err(e) if config.fallback => {
                warn!("RDMA unavailable on this node: {e}; every peer is linked over TCP");
                Err(e.to_string())
            }
            Err(e) => return Err(e),
        };
        let side_addr = side_addr(config.tcp.listen).ok_or_else(|| {
            Error::Protocol(format!(
                "TCP port {} leaves no port + 1 for the RDMA side channel",
                config.tcp.listen.port()
            ))
        })?;
        let listener = TcpListener::bind(side_addr)
            .await
            .map_err(|source| Error::Io {
                peer: format!("RDMA side channel {side_addr} (bind)"),
                source,
            })?;
        let side_addr = listener.local_addr().unwrap_or(side_addr);
        let (tcp_tx, tcp_rx) = mpsc::channel(1024);
        let tcp = transport_tcp::Transport::start(config.tcp.clone(), tcp_tx)
            .await
            .map_err(|e| Error::Protocol(format!("TCP transport: {e}")))?;
        let (itx, irx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            local: config.tcp.local,
            key: config.tcp.key,
            cfg: config,
            tcp,
            events: events.into(),
            avail,
            state: Mutex::new(State::default()),
            root: CancellationToken::new(),
            internal: itx,
            warned: Repeats::new(Duration::from_secs(60)),
            side_addr,
        });
        tokio::spawn(side_accept_loop(inner.clone(), listener));
        tokio::spawn(event_loop(inner.clone(), tcp_rx, irx));
        Ok(Arc::new(Transport { inner }))
    }

    /// The TCP transport underneath (its address, `set_cluster`).
    pub fn tcp(&self) -> &Arc<transport_tcp::Transport> {
        &self.inner.tcp
    }

    /// Where the RDMA side channel listens.
    pub fn side_addr(&self) -> SocketAddr {
        self.inner.side_addr
    }

    /// This node's RDMA device, or why it has none.
    pub fn rdma_here(&self) -> Result<&str, &str> {
        self.inner.avail.as_deref().map_err(|e| e.as_str())
    }

    /// The path of `peer`'s link, if it is up.
    pub fn link_kind(&self, peer: NodeId) -> Option<LinkKind> {
        let st = lock(&self.inner.state);
        match &st.peers.get(&peer)?.path {
            Path::Rdma(_) => Some(LinkKind::Rdma),
            Path::Tcp(why) => Some(LinkKind::Tcp(why.clone())),
            _ => None,
        }
    }

    /// The gate of `peer`'s TCP sends (see [`Peer::gate`]).
    fn gate(&self, peer: NodeId) -> Option<Arc<RwLock<()>>> {
        lock(&self.inner.state)
            .peers
            .get(&peer)
            .map(|p| p.gate.clone())
    }

    fn route(
        &self,
        peer: NodeId,
        frame: Frame,
    ) -> Result<(Option<Arc<Outq>>, Frame), rt::SendError> {
        let limit = self.capabilities_max();
        if let Err(e) = check_size(&frame, limit) {
            return Err(rt::SendError::new(e, frame));
        }
        let st = lock(&self.inner.state);
        let error = if st.closed {
            rt::Error::Closed
        } else {
            match st.peers.get(&peer).map(|p| &p.path) {
                Some(Path::Rdma(q)) => return Ok((Some(q.clone()), frame)),
                Some(Path::Tcp(_)) => return Ok((None, frame)),
                Some(_) => rt::Error::Unreachable(peer),
                None if !st.addrs.contains_key(&peer) => rt::Error::UnknownPeer(peer),
                None => rt::Error::Unreachable(peer),
            }
        };
        Err(rt::SendError::new(error, frame))
    }

    fn capabilities_max(&self) -> usize {
        self.inner
            .cfg
            .link
            .max_frame
            .min(self.inner.cfg.tcp.max_frame)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.inner.begin_shutdown();
    }
}

impl Inner {
    fn begin_shutdown(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        for p in st.peers.values() {
            if let Path::Rdma(q) = &p.path {
                q.close();
            }
            p.cancel.cancel();
        }
        st.parked.clear();
        st.waiting.clear();
        drop(st);
        self.root.cancel();
    }

    fn ours(&self) -> Offer {
        Offer {
            node: self.local,
            rdma: self.avail.as_ref().map(|_| ()).map_err(|e| e.clone()),
        }
    }

    async fn emit(&self, ev: Event) -> bool {
        self.events.send(ev).await.is_ok()
    }
}

impl rt::Transport for Transport {
    fn local_id(&self) -> NodeId {
        self.inner.local
    }

    fn capabilities(&self) -> rt::Capabilities {
        rt::Capabilities {
            max_frame: self.capabilities_max(),
            control_window: self.inner.cfg.control_window,
            bulk_window: self.inner.cfg.bulk_window,
            // Payloads are copied once into registered staging before the RDMA write.
            zero_copy: false,
        }
    }

    fn send_within(
        &self,
        peer: NodeId,
        frame: Frame,
        limit: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), rt::SendError>> {
        Box::pin(async move {
            let gate = self.gate(peer);
            let _shared = match &gate {
                Some(g) => Some(g.read().await),
                None => None,
            };
            match self.route(peer, frame)? {
                (Some(q), frame) => rt::queue_send(&q, peer, frame, limit).await,
                (None, frame) => self.inner.tcp.send_within(peer, frame, limit).await,
            }
        })
    }

    fn try_send(&self, peer: NodeId, frame: Frame) -> Result<(), rt::SendError> {
        let gate = self.gate(peer);
        let _shared = match &gate {
            Some(g) => match g.try_read() {
                Ok(s) => Some(s),
                // A switch to RDMA is draining the TCP sends: like a full lane.
                Err(_) => {
                    let lane = frame.lane;
                    return Err(rt::SendError::new(rt::Error::Full { peer, lane }, frame));
                }
            },
            None => None,
        };
        match self.route(peer, frame)? {
            (Some(q), frame) => rt::queue_try_send(&q, peer, frame),
            (None, frame) => self.inner.tcp.try_send(peer, frame),
        }
    }

    fn set_peers(&self, peers: Vec<PeerInfo>) {
        {
            let mut st = lock(&self.inner.state);
            if st.closed {
                return;
            }
            st.addrs = peers
                .iter()
                .filter(|p| p.id != self.inner.local)
                .map(|p| (p.id, p.addrs.clone()))
                .collect();
        }
        self.inner.tcp.set_peers(peers);
    }

    fn connected(&self) -> Vec<NodeId> {
        let st = lock(&self.inner.state);
        let mut v: Vec<NodeId> = st
            .peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.begin_shutdown();
            self.inner.tcp.shutdown().await;
        })
    }
}

/// The one task that emits `Up`, `Down` and TCP frames, so they stay in order.
async fn event_loop(
    inner: Arc<Inner>,
    mut tcp: mpsc::Receiver<Event>,
    mut internal: mpsc::UnboundedReceiver<Internal>,
) {
    loop {
        let go_on = tokio::select! {
            _ = inner.root.cancelled() => false,
            ev = tcp.recv() => match ev {
                Some(ev) => on_tcp(&inner, ev).await,
                None => false,
            },
            m = internal.recv() => match m {
                Some(m) => on_internal(&inner, m).await,
                None => false,
            },
        };
        if !go_on {
            return;
        }
    }
}

async fn on_tcp(inner: &Arc<Inner>, ev: Event) -> bool {
    match ev {
        Event::Up { peer } => {
            let mut st = lock(&inner.state);
            st.next_generation += 1;
            let generation = st.next_generation;
            let cancel = inner.root.child_token();
            if let Some(old) = st.peers.insert(
                peer,
                Peer {
                    generation,
                    path: Path::Deciding(Vec::new()),
                    up: false,
                    cancel: cancel.clone(),
                    backoff: Backoff::new(Duration::from_millis(500), BACKOFF_MAX),
                    reprobe: Backoff::new(REPROBE_MIN, inner.cfg.reprobe_max.max(REPROBE_MIN)),
                    seen: watch::Sender::new(Seen::default()),
                    gate: Arc::new(RwLock::new(())),
                },
            ) {
                old.cancel.cancel();
            }
            drop(st);
            tokio::spawn(negotiate(inner.clone(), peer, generation, cancel, false));
            true
        }
        Event::Down { peer, reason } => {
            let old = lock(&inner.state).peers.remove(&peer);
            match old {
                Some(p) => {
                    p.cancel.cancel();
                    if let Path::Rdma(q) = &p.path {
                        q.close();
                    }
                    !p.up || inner.emit(Event::Down { peer, reason }).await
                }
                None => true,
            }
        }
        Event::Frame { peer, frame } => {
            if let Some(pair) = switch::parse(&frame) {
                if let Some(p) = lock(&inner.state).peers.get(&peer) {
                    p.seen.send_modify(|s| s.record(frame.lane, pair));
                }
                return true;
            }
            let send = {
                let mut st = lock(&inner.state);
                match st.peers.get_mut(&peer).map(|p| &mut p.path) {
                    Some(Path::Deciding(held)) => {
                        held.push(frame);
                        None
                    }
                    Some(Path::Tcp(_) | Path::Rdma(_)) => Some(frame),
                    Some(Path::Refused) | None => None,
                }
            };
            match send {
                Some(frame) => inner.emit(Event::Frame { peer, frame }).await,
                None => true,
            }
        }
        Event::Discovered { .. } => true,
    }
}

async fn on_internal(inner: &Arc<Inner>, m: Internal) -> bool {
    match m {
        Internal::Decided {
            peer,
            generation,
            outcome,
        } => {
            let (held, cancel, q) = {
                let mut st = lock(&inner.state);
                st.parked.remove(&peer);
                let Some(p) = st
                    .peers
                    .get_mut(&peer)
                    .filter(|p| p.generation == generation)
                else {
                    return true; // the TCP link ended meanwhile; the Link is dropped
                };
                let held = match &mut p.path {
                    Path::Deciding(h) => std::mem::take(h),
                    _ => Vec::new(),
                };
                let mut q = None;
                match &outcome {
                    Outcome::Rdma(link) => {
                        let outq =
                            Arc::new(Outq::new(inner.cfg.control_window, inner.cfg.bulk_window));
                        info!(
                            node = inner.local,
                            "node {peer}: linked over RDMA ({}, qpn {} to {})",
                            link.device(),
                            link.ours().qpn,
                            link.peer().qpn
                        );
                        p.path = Path::Rdma(outq.clone());
                        p.backoff.reset();
                        q = Some(outq);
                    }
                    Outcome::Tcp(why, retry) => {
                        let again = *retry && reprobes(inner, peer);
                        info!(
                            node = inner.local,
                            "node {peer}: linked over TCP, not RDMA: {why}{}",
                            if again {
                                "; trying RDMA again with back-off"
                            } else {
                                ""
                            }
                        );
                        p.path = Path::Tcp(why.clone());
                        if again {
                            let delay = p.reprobe.failed();
                            reprobe_after(inner, peer, generation, delay);
                        }
                    }
                    Outcome::Refused(why) => {
                        let delay = p.backoff.failed();
                        if inner.warned.warn_now(format!("refused {peer}")) {
                            error!(
                                node = inner.local,
                                "node {peer}: not linked: no RDMA ({why}) and --no-fallback forbids TCP; trying again every {BACKOFF_MAX:?} at most"
                            );
                        } else {
                            debug!(node = inner.local, "node {peer}: not linked: {why}");
                        }
                        p.path = Path::Refused;
                        st.next_generation += 1;
                        let next = st.next_generation;
                        // `p` borrowed `st`: look the entry up again to bump it.
                        if let Some(p) = st.peers.get_mut(&peer) {
                            p.generation = next;
                        }
                        drop(st);
                        retry_after(inner, peer, next, delay);
                        return true;
                    }
                }
                p.up = true;
                (held, p.cancel.clone(), q)
            };
            if !inner.emit(Event::Up { peer }).await {
                return false;
            }
            for frame in held {
                if !inner.emit(Event::Frame { peer, frame }).await {
                    return false;
                }
            }
            if let (Outcome::Rdma(link), Some(q)) = (outcome, q) {
                // Nothing went over TCP before this verdict; the markers are for a peer
                // that was on TCP and switches (it holds our RDMA frames until they come).
                for lane in [rt::Lane::Control, rt::Lane::Bulk] {
                    let m = switch::marker(lane, link.ours().qpn, link.peer().qpn);
                    let _ = rt::Transport::try_send(&*inner.tcp, peer, m);
                }
                tokio::spawn(run_link(
                    inner.clone(),
                    *link,
                    q,
                    peer,
                    generation,
                    cancel,
                    None,
                ));
            }
            true
        }
        Internal::LinkEnded {
            peer,
            generation,
            error,
        } => {
            let (delay, next, was_up) = {
                let mut st = lock(&inner.state);
                st.next_generation += 1;
                let next = st.next_generation;
                let Some(p) = st
                    .peers
                    .get_mut(&peer)
                    .filter(|p| p.generation == generation)
                else {
                    return true;
                };
                if let Path::Rdma(q) = &p.path {
                    q.close();
                }
                p.path = Path::Deciding(Vec::new());
                p.generation = next;
                let was_up = std::mem::replace(&mut p.up, false);
                (p.backoff.failed(), next, was_up)
            };
            warn!(
                node = inner.local,
                "node {peer}: RDMA link ended: {error}; negotiating again in {delay:?}"
            );
            if was_up
                && !inner
                    .emit(Event::Down {
                        peer,
                        reason: format!("RDMA link ended: {error}"),
                    })
                    .await
            {
                return false;
            }
            retry_after(inner, peer, next, delay);
            true
        }
        Internal::Retry { peer, generation } => {
            let cancel = {
                let mut st = lock(&inner.state);
                match st.peers.get_mut(&peer) {
                    Some(p) if p.generation == generation && !p.up => {
                        if matches!(p.path, Path::Refused) {
                            p.path = Path::Deciding(Vec::new());
                        }
                        p.cancel.clone()
                    }
                    _ => return true,
                }
            };
            tokio::spawn(negotiate(inner.clone(), peer, generation, cancel, true));
            true
        }
        Internal::Reprobe { peer, generation } => {
            let cancel = {
                let st = lock(&inner.state);
                match st.peers.get(&peer) {
                    Some(p) if p.generation == generation && matches!(p.path, Path::Tcp(_)) => {
                        p.cancel.clone()
                    }
                    _ => return true,
                }
            };
            let inner = inner.clone();
            tokio::spawn(async move {
                let r = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = dial_side(&inner, peer) => r,
                };
                match r {
                    Ok(link) => switch_to_rdma(inner, peer, generation, link).await,
                    Err((why, retry)) => {
                        let _ = inner.internal.send(Internal::ReprobeFailed {
                            peer,
                            generation,
                            why,
                            retry,
                        });
                    }
                }
            });
            true
        }
        Internal::ReprobeFailed {
            peer,
            generation,
            why,
            retry,
        } => {
            let mut st = lock(&inner.state);
            let Some(p) = st
                .peers
                .get_mut(&peer)
                .filter(|p| p.generation == generation && matches!(p.path, Path::Tcp(_)))
            else {
                return true;
            };
            if retry {
                let delay = p.reprobe.failed();
                debug!(
                    node = inner.local,
                    "node {peer}: RDMA still not possible ({why}); staying on TCP, next try in {delay:?}"
                );
                drop(st);
                reprobe_after(inner, peer, generation, delay);
            } else {
                info!(node = inner.local, "node {peer}: staying on TCP: {why}");
            }
            true
        }
    }
}

/// Whether this node re-probes RDMA for `peer` while on TCP: the lower id dials, the
/// higher only answers; only with RDMA here and re-probing configured.
fn reprobes(inner: &Inner, peer: NodeId) -> bool {
    inner.local < peer && inner.avail.is_ok() && !inner.cfg.reprobe_max.is_zero()
}

fn reprobe_after(inner: &Arc<Inner>, peer: NodeId, generation: u64, delay: Duration) {
    let tx = inner.internal.clone();
    let root = inner.root.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = root.cancelled() => {}
            _ = tokio::time::sleep(delay) => {
                let _ = tx.send(Internal::Reprobe { peer, generation });
            }
        }
    });
}

/// A peer on TCP has an RDMA link again: stop TCP sends (waiting for those under way),
/// point the peer at the new link, send the end-of-TCP markers, and run the link, whose
/// frames are held until the peer's markers arrived. Anything failing ends the new link
/// like any RDMA link (`Down`, negotiate again); nothing is dropped unnoticed.
async fn switch_to_rdma(inner: Arc<Inner>, peer: NodeId, generation: u64, link: Link) {
    let current = |st: &State| {
        st.peers
            .get(&peer)
            .filter(|p| p.generation == generation && matches!(p.path, Path::Tcp(_)))
            .map(|p| (p.gate.clone(), p.cancel.clone()))
    };
    let Some((gate, cancel)) = current(&lock(&inner.state)) else {
        return;
    };
    let t = inner.cfg.decide_timeout;
    let exclusive = tokio::select! {
        _ = cancel.cancelled() => return,
        w = tokio::time::timeout(t, gate.write()) => w,
    };
    let Ok(exclusive) = exclusive else {
        // The peer may have switched: its link ends when ours is dropped, and it redials.
        warn!(
            node = inner.local,
            "node {peer}: not switching to RDMA: TCP sends still under way after {t:?}"
        );
        return;
    };
    let q = Arc::new(Outq::new(inner.cfg.control_window, inner.cfg.bulk_window));
    let seen = {
        let mut st = lock(&inner.state);
        if current(&st).is_none() {
            return;
        }
        let Some(p) = st.peers.get_mut(&peer) else {
            return;
        };
        p.path = Path::Rdma(q.clone());
        p.reprobe.reset();
        p.backoff.reset();
        p.seen.subscribe()
    };
    drop(exclusive);
    info!(
        node = inner.local,
        "node {peer}: RDMA works again: switched from TCP to RDMA ({}, qpn {} to {})",
        link.device(),
        link.ours().qpn,
        link.peer().qpn
    );
    let (ours, theirs) = (link.ours().qpn, link.peer().qpn);
    for lane in [rt::Lane::Control, rt::Lane::Bulk] {
        let m = switch::marker(lane, ours, theirs);
        if let Err(e) = rt::Transport::send_within(&*inner.tcp, peer, m, Some(t)).await {
            q.close();
            let _ = inner.internal.send(Internal::LinkEnded {
                peer,
                generation,
                error: format!("switching to RDMA: the end-of-TCP marker: {}", e.error),
            });
            return;
        }
    }
    run_link(
        inner,
        link,
        q,
        peer,
        generation,
        cancel,
        Some((seen, (theirs, ours))),
    )
    .await;
}

/// Negotiate with `peer` again after `delay`, unless its entry changed meanwhile.
fn retry_after(inner: &Arc<Inner>, peer: NodeId, generation: u64, delay: Duration) {
    let tx = inner.internal.clone();
    let root = inner.root.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = root.cancelled() => {}
            _ = tokio::time::sleep(delay) => {
                let _ = tx.send(Internal::Retry { peer, generation });
            }
        }
    });
}

/// Decide RDMA or TCP for `peer`, and report it to the event loop. After an RDMA link
/// failed (`retry`) the lower id dials only after its back-off, so the higher id waits
/// that much longer before it gives up on RDMA.
async fn negotiate(
    inner: Arc<Inner>,
    peer: NodeId,
    generation: u64,
    cancel: CancellationToken,
    retry: bool,
) {
    let attempt = async {
        if inner.local < peer {
            dial_side(&inner, peer).await
        } else {
            let extra = if retry { BACKOFF_MAX } else { Duration::ZERO };
            wait_side(&inner, peer, inner.cfg.decide_timeout + extra).await
        }
    };
    let outcome = tokio::select! {
        _ = cancel.cancelled() => return,
        r = attempt => match r {
            Ok(link) => Outcome::Rdma(Box::new(link)),
            Err((why, retry)) if inner.cfg.fallback => Outcome::Tcp(why, retry),
            Err((why, _)) => Outcome::Refused(why),
        },
    };
    let _ = inner.internal.send(Internal::Decided {
        peer,
        generation,
        outcome,
    });
}

/// Both offers say RDMA: set the link up. Otherwise the reason, for the log line.
async fn finish(
    inner: &Inner,
    peer: NodeId,
    session: Session,
    theirs: Offer,
) -> Result<Link, Fail> {
    if theirs.node != peer {
        return Err((
            format!(
                "the RDMA side channel answered as node {}, not {peer}",
                theirs.node
            ),
            false,
        ));
    }
    if let Err(why) = &inner.avail {
        return Err((format!("no RDMA on this node: {why}"), false));
    }
    if let Err(why) = theirs.rdma {
        return Err((format!("node {peer} has no RDMA: {why}"), false));
    }
    let mut link = Link::establish(session, inner.cfg.link.clone())
        .await
        .map_err(|e| (format!("RDMA link set-up failed: {e}"), true))?;
    link.set_busy_poll(inner.cfg.busy_poll);
    Ok(link)
}

/// The lower id's side: connect to the peer's side channel, authenticate, swap offers.
async fn dial_side(inner: &Inner, peer: NodeId) -> Result<Link, Fail> {
    let addrs = lock(&inner.state)
        .addrs
        .get(&peer)
        .cloned()
        .unwrap_or_default();
    let t = inner.cfg.decide_timeout;
    let mut why = (format!("node {peer} has no address"), false);
    for addr in addrs {
        let Some(side) = side_addr(addr) else {
            continue;
        };
        let stream = match tokio::time::timeout(t, TcpStream::connect(side)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // Refused: the peer runs without RDMA (a restart bounces the TCP link).
                let retry = e.kind() != std::io::ErrorKind::ConnectionRefused;
                why = (
                    format!(
                        "no RDMA side channel at {side} ({e}; is node {peer} started with --transport rdma?)"
                    ),
                    retry,
                );
                continue;
            }
            Err(_) => {
                why = (
                    format!("connecting to the RDMA side channel at {side} timed out after {t:?}"),
                    true,
                );
                continue;
            }
        };
        let mut session = authenticate(stream, &inner.key, true, t)
            .await
            .map_err(|e| (format!("RDMA side channel at {side}: {e}"), true))?;
        let theirs = session
            .offer(&inner.ours(), t)
            .await
            .map_err(|e| (format!("RDMA side channel at {side}: {e}"), true))?;
        return finish(inner, peer, session, theirs).await;
    }
    Err(why)
}

/// The higher id's side: wait for the lower id's side channel (accepted by
/// [`side_accept_loop`], which already sent our offer).
async fn wait_side(inner: &Inner, peer: NodeId, t: Duration) -> Result<Link, Fail> {
    let rx = {
        let mut st = lock(&inner.state);
        match st.parked.remove(&peer) {
            Some(acc) => Err(acc),
            None => {
                let (tx, rx) = oneshot::channel();
                st.waiting.insert(peer, tx);
                Ok(rx)
            }
        }
    };
    let (session, theirs) = match rx {
        Err(acc) => acc,
        Ok(rx) => match tokio::time::timeout(t, rx).await {
            Ok(Ok(acc)) => acc,
            _ => {
                lock(&inner.state).waiting.remove(&peer);
                return Err((
                    format!(
                        "node {peer} opened no RDMA side channel within {t:?} (is it started with --transport rdma?)"
                    ),
                    true,
                ));
            }
        },
    };
    finish(inner, peer, session, theirs).await
}

async fn side_accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_PENDING_SIDE));
    loop {
        let permit = tokio::select! {
            _ = inner.root.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, from) = tokio::select! {
            _ = inner.root.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!("RDMA side channel: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let root = inner.root.clone();
            tokio::select! {
                _ = root.cancelled() => {}
                r = side_accept(&inner, stream) => if let Err(e) = r {
                    if inner.warned.warn_now(from.ip().to_string()) {
                        warn!("RDMA side channel from {from} refused: {e}");
                    } else {
                        debug!("RDMA side channel from {from} refused: {e}");
                    }
                },
            }
        });
    }
}

async fn side_accept(inner: &Arc<Inner>, stream: TcpStream) -> Result<(), String> {
    let t = inner.cfg.decide_timeout;
    let mut session = authenticate(stream, &inner.key, false, t)
        .await
        .map_err(|e| e.to_string())?;
    let theirs = session.recv_offer(t).await.map_err(|e| e.to_string())?;
    let peer = theirs.node;
    {
        let st = lock(&inner.state);
        if st.closed {
            return Err("shutting down".into());
        }
        if !st.addrs.contains_key(&peer) || peer >= inner.local {
            return Err(format!(
                "node {peer} is not a listed peer with a lower id than ours ({})",
                inner.local
            ));
        }
    }
    session
        .send_offer(&inner.ours(), t)
        .await
        .map_err(|e| e.to_string())?;
    let mut st = lock(&inner.state);
    let acc = (session, theirs);
    let acc = match st.waiting.remove(&peer) {
        Some(tx) => match tx.send(acc) {
            Ok(()) => return Ok(()),
            Err(acc) => acc,
        },
        None => acc,
    };
    // A re-probe from the lower id while the peer is on TCP: set the link up, then switch.
    let on_tcp = st
        .peers
        .get(&peer)
        .filter(|p| matches!(p.path, Path::Tcp(_)))
        .map(|p| (p.generation, p.cancel.clone()));
    if let Some((generation, cancel)) = on_tcp {
        drop(st);
        let inner = inner.clone();
        let (session, theirs) = acc;
        tokio::spawn(async move {
            let r = tokio::select! {
                _ = cancel.cancelled() => return,
                r = finish(&inner, peer, session, theirs) => r,
            };
            match r {
                Ok(link) => switch_to_rdma(inner, peer, generation, link).await,
                Err((why, _)) => debug!(
                    node = inner.local,
                    "node {peer}: RDMA re-probe failed ({why}); staying on TCP"
                ),
            }
        });
        return Ok(());
    }
    st.parked.insert(peer, acc);
    Ok(())
}

/// Move frames over an established RDMA link until it ends or the peer's entry is gone.
async fn run_link(
    inner: Arc<Inner>,
    mut link: Link,
    q: Arc<Outq>,
    peer: NodeId,
    generation: u64,
    cancel: CancellationToken,
    hold: Option<(watch::Receiver<Seen>, switch::Pair)>,
) {
    let (out_tx, out_rx) = mpsc::channel::<Frame>(1);
    let (in_tx, mut in_rx) = mpsc::channel::<Frame>(16);
    let q2 = q.clone();
    let bridge = tokio::spawn(async move {
        while q2.ready().await {
            while let Some(f) = q2.pop() {
                if out_tx.send(f).await.is_err() {
                    return;
                }
            }
        }
    });
    let inner2 = inner.clone();
    let wait = inner.cfg.decide_timeout;
    let forward = tokio::spawn(async move {
        // After a switch from TCP: nothing from the new link before the peer's TCP frames.
        if let Some((mut seen, pair)) = hold {
            match tokio::time::timeout(wait, seen.wait_for(|s| s.both(pair))).await {
                Ok(Ok(_)) => {}
                _ => {
                    // Dropping `in_rx` ends the link (`Down`, negotiate again).
                    warn!(
                        node = inner2.local,
                        "node {peer}: no end-of-TCP markers within {wait:?} after the switch to RDMA"
                    );
                    return;
                }
            }
        }
        while let Some(frame) = in_rx.recv().await {
            if !inner2.emit(Event::Frame { peer, frame }).await {
                return;
            }
        }
    });
    let r = tokio::select! {
        _ = cancel.cancelled() => None,
        r = link.run(out_rx, in_tx) => Some(r),
    };
    q.close();
    bridge.abort();
    let Some(r) = r else {
        forward.abort();
        return;
    };
    // Every frame received before the end is delivered before the `Down`.
    let _ = tokio::time::timeout(Duration::from_secs(5), forward).await;
    debug!(node = inner.local, peer, stats = ?link.stats, "RDMA link finished");
    let error = match r {
        Ok(()) => "closed by the peer".to_string(),
        Err(e) => e.to_string(),
    };
    drop(link);
    let _ = inner.internal.send(Internal::LinkEnded {
        peer,
        generation,
        error,
    });
}
