//! Who is in the cluster, and who is up.
//!
//! This crate owns the cluster map (the openMosix map file: [`map`]), membership and failure
//! detection ([`membership`]: the node table, heartbeat schedule, up/down), and the load
//! vector with openMosix-style smoothing and gossip target choice ([`load`]).
//!
//! It is sans-IO: it never opens a socket, never reads the clock and knows nothing of
//! transports, actors or processes. The daemon feeds it events with an explicit `now`
//! ([`std::time::Instant`]) and carries out the [`membership::Output`]s it returns. The only
//! system calls are reading a map file ([`map::Map::load`]), resolving hostnames (behind the
//! injectable [`map::Resolver`]) and listing local interface addresses
//! ([`map::is_local_addr`]).

pub mod load;
pub mod map;
pub mod membership;

/// A node number, as in the openMosix map (1–65535 there; mDNS nodes use the same space).
pub type NodeId = u32;

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Map(#[from] map::Error),
}
