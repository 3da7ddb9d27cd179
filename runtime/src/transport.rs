//! The `Transport` trait: what the runtime needs from a link layer (TCP, libp2p, RDMA).
//!
//! A transport keeps at most one authenticated link per peer node and reports links coming
//! and going as [`Event`]s on the channel it was started with. Each link has two ordered
//! lanes ([`Lane::Control`] and [`Lane::Bulk`]), each with its own window counted in bytes
//! ([`lanes::Outq`], shared by every transport): control frames never wait behind queued
//! bulk bytes, and order holds within a lane. Sending is in tokio's style:
//! [`Transport::send`] waits for room, [`Transport::try_send`] does not,
//! [`Transport::send_timeout`] waits at most a given time; every failure hands the frame
//! back ([`SendError`]), and a sender waiting on a link that dies gets
//! [`Error::Unreachable`] at once (the link's end closes its queue; a silent peer is
//! declared dead at the idle time-out).
//!
//! A transport knows nothing of actors: the runtime puts its envelope in [`Frame::head`]
//! and bulk data (memory pages, file blocks) in [`Frame::payload`], which a transport moves
//! without copying it into the head (RDMA writes it straight into a registered buffer;
//! receive buffers can come from a [`pool::Pool`]). [`Transport::capabilities`] tells the
//! largest frame and whether registered buffers move without a copy.
//!
//! Every link is authenticated with the cluster key before a single frame is accepted on
//! it, and both ends exchange a versioned [`crate::wire::Hello`]; a peer with another
//! protocol version or another cluster map is refused with a typed
//! [`crate::wire::Refusal`] it can log.
//!
//! Shared link machinery (used by every transport, written once): [`lanes`] (the two-lane
//! queue), [`pieces`] (frames as lane-tagged pieces of a byte stream), [`link`] (control
//! block, slot claim, size check), [`lifecycle`] (the links to one peer as a sans-IO
//! state machine: dialling, back-off, arbitration of simultaneous dials, refusals,
//! keepalive and idle time-out, `Up`/`Down`), [`pacing`] (back-off, repeated
//! warnings), [`pool`] (receive buffers), [`table`] (the link table: one link per peer, the
//! claim of its slot, the sender's lookup).

pub mod lanes;
pub mod lifecycle;
pub mod link;
pub mod liveness;
pub mod pacing;
pub mod pieces;
pub mod pool;
pub mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::NodeId;

/// A boxed future, so `Transport` stays object safe (`Arc<dyn Transport>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which of a link's two ordered lanes a frame travels on. Each lane has its own window
/// counted in bytes; control frames never wait behind queued bulk bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Membership, load, asks, replies, forwarded system calls: small and urgent.
    #[default]
    Control,
    /// Memory pages, file blocks: large, throughput first.
    Bulk,
}

impl Lane {
    /// 0 for control, 1 for bulk (an index into per-lane arrays).
    pub fn index(self) -> usize {
        match self {
            Lane::Control => 0,
            Lane::Bulk => 1,
        }
    }
}

/// One message on a link: a small head (the runtime's envelope, MessagePack) and an
/// optional large payload carried beside it without extra copies, on one [`Lane`].
/// The lane is the sender's choice of queue and of the pieces it travels in
/// ([`pieces`]); [`crate::wire::encode_frame`] does not carry it. A received frame says the
/// lane it came on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub head: Bytes,
    pub payload: Bytes,
    pub lane: Lane,
}

impl Frame {
    /// A frame on the control lane.
    pub fn new(head: Bytes, payload: Bytes) -> Self {
        Frame {
            head,
            payload,
            lane: Lane::Control,
        }
    }

    /// A frame on `lane`.
    pub fn on(lane: Lane, head: Bytes, payload: Bytes) -> Self {
        Frame {
            head,
            payload,
            lane,
        }
    }
}

/// What a transport can do, so migration and MFS pick chunk sizes per transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Largest encoded frame (head + payload + [`crate::wire::FRAME_OVERHEAD`]) it sends.
    pub max_frame: usize,
    /// Bytes each lane may queue per peer before `send` waits.
    pub control_window: usize,
    pub bulk_window: usize,
    /// True when payloads in registered buffers move without a copy (RDMA writes);
    /// false when every payload is copied or encrypted on its way (TCP, libp2p).
    pub zero_copy: bool,
}

/// Where a peer can be reached. A node may have several addresses (the map's `ALIAS`
/// lines); a transport tries them in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: NodeId,
    pub addrs: Vec<SocketAddr>,
}

/// What a transport tells the runtime.
#[derive(Debug)]
pub enum Event {
    /// The transport found `peer` by itself (mDNS), authenticated it, and learnt its
    /// addresses; sent before that peer's first `Up`. Transports that only dial the peers
    /// given to [`Transport::set_peers`] never send it.
    Discovered {
        peer: NodeId,
        addrs: Vec<SocketAddr>,
    },
    /// An authenticated link to `peer` is up; frames may flow.
    Up { peer: NodeId },
    /// The link to `peer` is gone (closed, timed out, refused); frames queued for it are lost.
    Down { peer: NodeId, reason: String },
    /// A frame arrived from `peer`, in the order `peer` sent it.
    Frame { peer: NodeId, frame: Frame },
}

/// Takes events straight from a transport's receiving task (see [`Events::direct`]).
pub trait Handler: Send + Sync + 'static {
    /// Handle one event without waiting: the receiving task goes on reading at once, so a
    /// handler must never block (the runtime's dispatcher queues or refuses instead).
    /// Returns false once the handler is gone for good.
    fn handle(&self, ev: Event) -> bool;
}

/// Where a transport delivers what it receives: into a channel (tests, tools), or straight
/// into a [`Handler`] (the runtime's dispatcher) on the transport's own receiving task,
/// which saves a task hop per message. Cheap to clone.
#[derive(Clone)]
pub struct Events(Sink);

#[derive(Clone)]
enum Sink {
    Channel(mpsc::Sender<Event>),
    Direct(Arc<dyn Handler>),
}

/// The receiving side of [`Events`] has gone away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the event receiver is closed")]
pub struct Closed;

impl Events {
    pub fn direct(handler: Arc<dyn Handler>) -> Self {
        Events(Sink::Direct(handler))
    }

    /// Deliver `ev`, waiting while the receiver is busy.
    pub async fn send(&self, ev: Event) -> Result<(), Closed> {
        match &self.0 {
            Sink::Channel(tx) => tx.send(ev).await.map_err(|_| Closed),
            Sink::Direct(h) => h.handle(ev).then_some(()).ok_or(Closed),
        }
    }
}

impl From<mpsc::Sender<Event>> for Events {
    fn from(tx: mpsc::Sender<Event>) -> Self {
        Events(Sink::Channel(tx))
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Sink::Channel(_) => "Events(channel)",
            Sink::Direct(_) => "Events(direct)",
        })
    }
}

/// Errors a transport reports to a sender.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    #[error("node {0} is not reachable (no authenticated link, or the link ended)")]
    Unreachable(NodeId),
    #[error("node {0} is not a known peer")]
    UnknownPeer(NodeId),
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the {lane:?} lane to node {peer} is full")]
    Full { peer: NodeId, lane: Lane },
    #[error("no room on the {lane:?} lane to node {peer} within {after:?}")]
    Timeout {
        peer: NodeId,
        lane: Lane,
        after: std::time::Duration,
    },
    #[error("transport is shut down")]
    Closed,
}

/// A failed send: why, and the frame handed back to the caller (like tokio's `SendError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct SendError {
    pub error: Error,
    pub frame: Frame,
}

impl SendError {
    pub fn new(error: Error, frame: Frame) -> Self {
        SendError { error, frame }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Error {
        e.error
    }
}

/// Queue `frame` for `peer` on `q` (a link's [`lanes::Outq`]), waiting at most `limit`
/// for room (forever with `None`). The transports' common `send_within`.
pub async fn queue_send(
    q: &lanes::Outq,
    peer: NodeId,
    frame: Frame,
    limit: Option<std::time::Duration>,
) -> Result<(), SendError> {
    // Room is there nearly always: no clock read, no waiter registered.
    let frame = match q.try_send(frame) {
        Err((frame, lanes::QueueError::Full)) => frame,
        r => return r.map_err(|(frame, e)| queue_error(peer, frame, e, limit)),
    };
    let r = match limit {
        Some(d) if d.is_zero() => Err((frame, lanes::QueueError::Full)),
        Some(d) => q.send(frame, Some(tokio::time::Instant::now() + d)).await,
        None => q.send(frame, None).await,
    };
    r.map_err(|(frame, e)| queue_error(peer, frame, e, limit))
}

/// [`lanes::Outq::try_send`] with the transport's errors. The transports' `try_send`.
pub fn queue_try_send(q: &lanes::Outq, peer: NodeId, frame: Frame) -> Result<(), SendError> {
    q.try_send(frame)
        .map_err(|(frame, e)| queue_error(peer, frame, e, None))
}

fn queue_error(
    peer: NodeId,
    frame: Frame,
    e: lanes::QueueError,
    limit: Option<std::time::Duration>,
) -> SendError {
    let lane = frame.lane;
    let error = match e {
        lanes::QueueError::Full => Error::Full { peer, lane },
        lanes::QueueError::Timeout => Error::Timeout {
            peer,
            lane,
            after: limit.unwrap_or_default(),
        },
        lanes::QueueError::Closed => Error::Unreachable(peer),
    };
    SendError { error, frame }
}

/// A link layer between nodes. See the module docs for the contract.
///
/// Implementations are started with their own configuration (local node id, cluster key,
/// listen address) and an [`Events`] for what they receive (usually
/// [`crate::System::events`]), and handed to the runtime as `Arc<dyn Transport>`
/// ([`crate::System::attach`]).
pub trait Transport: Send + Sync + 'static {
    /// This node's id.
    fn local_id(&self) -> NodeId;

    /// What this transport can do (frame size, windows, zero-copy).
    fn capabilities(&self) -> Capabilities;

    /// Queue `frame` on its lane for `peer`. Frames on one lane to one peer arrive in the
    /// order they were sent. Waits for room in the lane's window at most `limit` (forever
    /// with `None`, not at all with `Some(Duration::ZERO)`); fails at once with
    /// [`Error::Unreachable`] when there is no authenticated link to `peer` now, and
    /// promptly (at the latest at the idle time-out) when the link dies while waiting.
    /// Every failure hands the frame back.
    fn send_within(
        &self,
        peer: NodeId,
        frame: Frame,
        limit: Option<std::time::Duration>,
    ) -> BoxFuture<'_, Result<(), SendError>>;

    /// Queue `frame`, waiting for room (see [`Transport::send_within`]).
    fn send(&self, peer: NodeId, frame: Frame) -> BoxFuture<'_, Result<(), SendError>> {
        self.send_within(peer, frame, None)
    }

    /// Queue `frame`, waiting for room at most `limit`.
    fn send_timeout(
        &self,
        peer: NodeId,
        frame: Frame,
        limit: std::time::Duration,
    ) -> BoxFuture<'_, Result<(), SendError>> {
        self.send_within(peer, frame, Some(limit))
    }

    /// Queue `frame` only if its lane has room now ([`Error::Full`] otherwise).
    fn try_send(&self, peer: NodeId, frame: Frame) -> Result<(), SendError>;

    /// Replace the set of peers this transport keeps links to (dialling new ones, with
    /// back-off, and dropping removed ones). Transports that discover peers themselves
    /// (libp2p with mDNS) may treat this as hints.
    fn set_peers(&self, peers: Vec<PeerInfo>);

    /// Peers with an authenticated link now.
    fn connected(&self) -> Vec<NodeId>;

    /// Close every link and stop accepting. Pending frames are flushed for a short while.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
