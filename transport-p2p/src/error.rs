//! Errors: starting a transport ([`Error`]) and setting up a link (`HsError`).

use std::io;
use std::net::SocketAddr;

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
pub(crate) enum HsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cannot open the link stream: {0}")]
    Open(String),
    #[error("stream closed during the handshake")]
    Closed,
    #[error("handshake timed out")]
    Timeout,
    /// This node refused the peer's `Hello` (told the peer why).
    #[error("{0}")]
    Refused(runtime::wire::Refusal),
    #[error("peer refused the link: {0}")]
    RefusedByPeer(runtime::wire::Refusal),
    #[error("{0}")]
    Protocol(String),
}
