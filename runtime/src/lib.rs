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

pub mod transport;
pub mod wire;

/// A node's number: the openMosix node id from the map (1–65535), or one derived by mDNS.
pub type NodeId = u32;
