//! Errors: starting a transport ([`Error`]) and setting up a link (`HsError`).

use std::io;
use std::net::SocketAddr;

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
pub(crate) enum HsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("authentication failed (wrong cluster key?)")]
    Auth,
    #[error("connection closed during the handshake (wrong cluster key on one side?)")]
    Closed,
    #[error("handshake timed out")]
    Timeout,
    /// This node refused the peer's `Hello` (told the peer why).
    #[error("{0}")]
    Refused(runtime::wire::Refusal),
    #[error("peer refused the link: {0}")]
    RefusedByPeer(runtime::wire::Refusal),
    #[error("duplicate link")]
    Duplicate,
    #[error("{0}")]
    Protocol(String),
}
