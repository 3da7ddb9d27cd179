//! Who is in the cluster, and who is up.
//!
//! This crate owns the cluster map (the openMosix map file: [`map`]), membership and failure
//! detection ([`membership`]: the node table, heartbeat schedule, up/down). Load figures,
//! their smoothing and gossip live in the `balance` crate.
//!
//! It is sans-IO: it never opens a socket, never reads the clock and knows nothing of
//! transports, actors or processes. The daemon feeds it events with an explicit `now`
//! ([`std::time::Instant`]) and carries out the [`membership::Output`]s it returns. The only
//! system calls are reading a map file ([`map::Map::load`]), resolving hostnames (behind the
//! injectable [`map::Resolver`]) and listing local interface addresses
//! ([`map::is_local_addr`]).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use discovery::map::{self, Map};
//! use discovery::membership::{Config, Membership, Output, Source};
//!
//! let map = Map::parse("1 127.0.0.1 4  # four nodes on this machine", "example.map")?;
//! let me = map.find_local(map::is_local_addr, Some(2))?; // `--node 2`
//! let t0 = Instant::now();
//! let mut members = Membership::new(me, Config::default(), t0);
//! members.add_nodes(map.ids(), Source::Map, t0);
//! // every peer is due a heartbeat at once
//! assert_eq!(members.on_tick(t0).len(), 3);
//! // node 3 answers: it is up, and goes down after 3 s of silence
//! assert_eq!(members.on_heartbeat(3, t0), vec![Output::NodeUp { id: 3 }]);
//! let later = t0 + Duration::from_secs(3);
//! assert!(members.on_tick(later).iter().any(|o| matches!(o, Output::NodeDown { id: 3, .. })));
//! # Ok::<(), discovery::Error>(())
//! ```

pub mod map;
pub mod membership;
pub mod zeroconf;

/// A node number, as in the openMosix map (1–65535 there; mDNS nodes use the same space).
pub type NodeId = u32;

/// Any error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Map(#[from] map::Error),
}
