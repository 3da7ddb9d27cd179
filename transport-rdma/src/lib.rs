//! RDMA verbs links for omnode (InfiniBand, RoCE; tested on soft-RoCE `rdma_rxe`).
//!
//! Owns: opening an RDMA device and checking its port and GID ([`verbs`], the crate's only
//! unsafe code), authenticating the peer with the cluster key *before* any queue pair or
//! remotely writable memory exists and swapping queue-pair details sealed ([`exchange`]),
//! reliable-connected queue pairs whose control lane is two-sided send/receive into
//! pre-posted buffers and whose bulk lane is RDMA write-with-immediate into the peer's
//! registered ring ([`link`]), credit accounting so no side overruns the other
//! ([`credit`]), and cutting frames into pieces and putting them back ([`piece`]).
//! Completions are read through the completion channel's fd in tokio; nothing spins.
//!
//! Must not know: actors, envelopes, processes, the cluster map. Frames are opaque bytes
//! (`runtime::transport::Frame`).
//!
//! [`Transport`] is the `runtime::transport::Transport`: a transport-tcp link to every
//! peer first (liveness, fall-back), then RDMA when both ends can, decided over the
//! authenticated side channel before any queue pair exists ([`transport`]). A peer on the
//! TCP fall-back is re-probed with back-off and switched back to RDMA when it works again,
//! without reordering a lane ([`switch`]).

pub mod credit;
pub mod error;
pub mod exchange;
pub mod link;
pub mod piece;
pub mod switch;
pub mod transport;
pub mod verbs;

pub use error::Error;
pub use transport::{Config, LinkKind, Transport};
