//! The crate's errors, typed so a caller can tell "no RDMA here, use TCP" from "this link
//! broke, redial" from "the peer is hostile or buggy".

use std::io;

/// Everything that can go wrong setting up or running an RDMA link.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no RDMA device{}; devices found: [{}] (is rdma_rxe / the HCA driver loaded, and /dev/infiniband present?)",
        .wanted.as_deref().map(|w| format!(" named {w}")).unwrap_or_default(), .found.join(", "))]
    NoDevice {
        wanted: Option<String>,
        found: Vec<String>,
    },
    #[error(
        "RDMA device {device} port {port} is not active (state {state}); check the link and `rdma link show`"
    )]
    PortDown {
        device: String,
        port: u8,
        state: u32,
    },
    #[error(
        "RDMA device {device}: GID index {index} unusable: {reason} (RoCE v2 over IPv4 is usually index 1; see `show_gids`)"
    )]
    Gid {
        device: String,
        index: u8,
        reason: String,
    },
    #[error(
        "cannot register {bytes} bytes of memory: the locked-memory limit (RLIMIT_MEMLOCK) is {limit}; raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity in the unit)"
    )]
    MemLock { bytes: usize, limit: String },
    #[error("{call} failed: {source}")]
    Verbs {
        call: &'static str,
        source: io::Error,
    },
    #[error(
        "queue pair transition to {to} failed: {source} (wrong GID index, or the peer's address unreachable?)"
    )]
    QpTransition { to: &'static str, source: io::Error },
    #[error(
        "work request {wr_id} failed: {status} (the queue pair is in the error state; the link must be redialled)"
    )]
    Completion { wr_id: u64, status: String },
    #[error(
        "the RDMA path to the peer does not work: {status} (the queue pair is set up but a zero-byte RDMA write was not acknowledged: no route to the peer's GID, RoCE (UDP 4791) blocked, or its port down)"
    )]
    Route { status: String },
    #[error(
        "no send on the RDMA link completed for {0:?}: the path to the peer is broken (port down, no route, RoCE blocked) or the peer stopped answering"
    )]
    Stalled(std::time::Duration),
    #[error("range {off}+{len} is outside the {region}-byte registered region")]
    OutOfBounds {
        off: usize,
        len: usize,
        region: usize,
    },
    #[error("authentication with the peer failed (wrong cluster key?)")]
    Auth,
    #[error("peer {peer}: {source}")]
    Io { peer: String, source: io::Error },
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("protocol violation by the peer: {0}")]
    Protocol(String),
    #[error("link closed: {0}")]
    Closed(String),
}

impl Error {
    /// True when this node has no usable RDMA at all (fall back to TCP), as opposed to one
    /// link failing (redial over RDMA).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::NoDevice { .. }
                | Error::PortDown { .. }
                | Error::Gid { .. }
                | Error::MemLock { .. }
        )
    }
}
