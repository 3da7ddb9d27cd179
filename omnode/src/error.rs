//! The daemon's and CLI's errors, each printed as one line a person can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{0}")]
    Map(#[from] discovery::map::Error),
    #[error("{0}")]
    Config(String),
    #[error("cannot start the transport: {0}")]
    Transport(String),
    #[error("control socket {path}: {reason}")]
    Socket { path: PathBuf, reason: String },
    #[error(
        "cannot reach the omnode daemon at {path}: {reason} (is it running? choose a node with --socket or OMNODE_SOCKET)"
    )]
    NotRunning { path: PathBuf, reason: String },
    #[error("the daemon at {path} answered: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
