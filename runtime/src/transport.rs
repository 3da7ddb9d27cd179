//! The `Transport` trait: what the runtime needs from a link layer (TCP, libp2p, RDMA).
//!
//! A transport keeps at most one authenticated link per peer node, carries ordered
//! [`Frame`]s on it, and reports links coming and going as [`Event`]s on the channel it
//! was started with. It knows nothing of actors: the runtime puts its envelope in
//! [`Frame::head`] and bulk data (memory pages, file blocks) in [`Frame::payload`], which
//! a transport moves without copying it into the head (RDMA writes it straight into a
//! registered buffer).
//!
//! Every link is authenticated with the cluster key before a single frame is accepted on
//! it, and both ends exchange a versioned [`crate::wire::Hello`]; a peer with another
//! protocol version or another cluster map is refused with a reason it can log.

pub mod link;
pub mod pacing;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::NodeId;

/// A boxed future, so `Transport` stays object safe (`Arc<dyn Transport>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message on a link: a small head (the runtime's envelope, MessagePack) and an
/// optional large payload carried beside it without extra copies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub head: Bytes,
    pub payload: Bytes,
}

impl Frame {
    pub fn new(head: Bytes, payload: Bytes) -> Self {
        Frame { head, payload }
    }
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
    /// Handle one event; the transport reads nothing more from that peer until the future
    /// ends (back-pressure). Returns false once the handler is gone for good.
    fn handle(&self, ev: Event) -> BoxFuture<'_, bool>;
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
            Sink::Direct(h) => h.handle(ev).await.then_some(()).ok_or(Closed),
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
    #[error("node {0} is not reachable (no authenticated link)")]
    Unreachable(NodeId),
    #[error("node {0} is not a known peer")]
    UnknownPeer(NodeId),
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("transport is shut down")]
    Closed,
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

    /// Queue `frame` for `peer`. Frames to one peer arrive in the order they were sent.
    /// Waits while the peer's queue is full (back-pressure); fails at once with
    /// [`Error::Unreachable`] when there is no authenticated link to `peer` now.
    fn send(&self, peer: NodeId, frame: Frame) -> BoxFuture<'_, Result<(), Error>>;

    /// Replace the set of peers this transport keeps links to (dialling new ones, with
    /// back-off, and dropping removed ones). Transports that discover peers themselves
    /// (libp2p with mDNS) may treat this as hints.
    fn set_peers(&self, peers: Vec<PeerInfo>);

    /// Peers with an authenticated link now.
    fn connected(&self) -> Vec<NodeId>;

    /// Close every link and stop accepting. Pending frames are flushed for a short while.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}
