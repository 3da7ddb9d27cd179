//! The omnode actor runtime.
//!
//! Owns: actors and their typed local addresses ([`actor`]), named actors reachable as
//! `(NodeId, name)` from any node ([`system`]), `tell` and `ask` with time-outs,
//! supervision (a panicking actor is restarted, not the node taken down), graceful
//! shutdown, the [`transport::Transport`] trait every link layer implements, and the wire
//! envelope and handshake ([`wire`]).
//!
//! Must not know: sockets, TCP, libp2p or RDMA (those are transports), the cluster map,
//! processes or files. It moves messages; what they mean belongs to the actors.

pub mod actor;
pub mod mem;
pub mod system;
pub mod transport;
pub mod wire;

pub use actor::{Actor, Addr, Context, ReplyTo};
pub use system::{Inbound, LinkEvent, Responder, System};

use std::time::Duration;

/// A node's number: the openMosix node id from the map (1–65535), or one derived by mDNS.
pub type NodeId = u32;

/// What can go wrong sending to an actor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the actor has stopped")]
    Stopped,
    #[error("the actor's mailbox is full")]
    MailboxFull,
    #[error("the actor dropped the request without answering")]
    NoReply,
    #[error("no answer from a local actor within {0:?}")]
    LocalTimeout(Duration),
    #[error("no answer from {name:?} on node {node} within {after:?}")]
    Timeout {
        node: NodeId,
        name: String,
        after: Duration,
    },
    #[error("node {node} refused: {reason}")]
    Remote { node: NodeId, reason: String },
    /// The actor cannot take more now: an `ask` found its mailbox full, or a `tell` found
    /// no credit left for it within the send time-out (the actor holds
    /// [`system::CREDIT`] bytes of this node's messages). Refused unprocessed; try later.
    #[error(
        "actor {name:?} on node {node} is busy (mailbox full, or no credit left for it); message refused, try later"
    )]
    Busy { node: NodeId, name: String },
    #[error(transparent)]
    Transport(#[from] transport::Error),
    #[error(transparent)]
    Decode(#[from] wire::DecodeError),
}
