//! Sans-IO membership: the node table, the heartbeat schedule and failure detection.
//!
//! [`Membership`] never reads the clock and never sends anything. The daemon calls
//! [`Membership::on_tick`] regularly (at least every heartbeat interval; or sleep until
//! [`Membership::next_deadline`]), reports received heartbeats and transport link events, and
//! carries out the returned [`Output`]s.
//!
//! # Model and choices
//!
//! - The local node is always up and never in the peer set; it is never sent a heartbeat.
//! - A peer starts down ("not yet heard from") when added; no [`Output::NodeDown`] is
//!   emitted for that, only for an up → down transition. [`Output::NodeUp`] is emitted on a
//!   down → up transition.
//! - Heartbeats go to every known peer, up or down (a down peer must hear from us to come up),
//!   each peer every `heartbeat_interval`. A newly added peer is due at once. After a stall the
//!   schedule restarts from `now` (no burst of catch-up heartbeats).
//! - Up: a heartbeat ([`Membership::on_heartbeat`]) marks a peer up. The daemon may report any
//!   authenticated message from a peer as a heartbeat: every one is a sign of life. The daemon
//!   checks the map digest before reporting a peer's heartbeat; a refused peer is never reported
//!   and so never comes up.
//! - Down by silence: a peer whose last sign of life is `down_timeout` old or older is marked
//!   down on the next tick (`DownReason::Timeout`). With the defaults (500 ms heartbeats, 3 s
//!   timeout) a dead node is marked down within 3–3.5 s given ticks every 500 ms.
//! - Down by link loss: [`Membership::on_link_down`] marks an up peer down at once
//!   (`DownReason::LinkLost`): the transport knows the connection is gone, so there is no point
//!   in waiting. It comes back up with its next heartbeat. [`Membership::on_link_up`] does not
//!   mark a peer up (only a heartbeat does, after the daemon's checks) but sends it a heartbeat
//!   at once so that both ends come up quickly.
//! - Heartbeats and link events from a node not in the table are reported as
//!   [`Output::UnknownPeer`] and otherwise ignored; the daemon may log them, or (mDNS) call
//!   [`Membership::add_node`] and report the heartbeat again.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use crate::NodeId;

/// Where a node of the table comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// This node.
    Local,
    /// The map file.
    Map,
    /// Found by mDNS (zero-config mode).
    Mdns,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How often each peer is sent a heartbeat. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// A peer silent this long is marked down. Default 3 s. Should be several heartbeat
    /// intervals, or a single late heartbeat marks a live peer down.
    pub down_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_interval: Duration::from_millis(500),
            down_timeout: Duration::from_secs(3),
        }
    }
}

/// Why a peer was marked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// No sign of life for `silent_for` (≥ the down timeout).
    Timeout { silent_for: Duration },
    /// The transport reported the link lost.
    LinkLost,
    /// [`Membership::remove_node`] took it out of the table.
    Removed,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::Timeout { silent_for } => {
                write!(f, "no heartbeat for {:.1}s", silent_for.as_secs_f64())
            }
            DownReason::LinkLost => f.write_str("link lost"),
            DownReason::Removed => f.write_str("removed from the node table"),
        }
    }
}

/// What the daemon has to do or know after an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Send our heartbeat to `to`.
    SendHeartbeat { to: NodeId },
    /// `id` went from down (or never heard from) to up.
    NodeUp { id: NodeId },
    /// `id` went from up to down.
    NodeDown { id: NodeId, reason: DownReason },
    /// A heartbeat or link event named a node that is not in the table; nothing changed.
    UnknownPeer { id: NodeId },
}

/// A row of the node table, as returned by [`Membership::nodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    pub id: NodeId,
    pub up: bool,
    /// When the node entered its current up/down state (for a peer never heard from: when it
    /// was added; for the local node: when the table was created).
    pub since: Instant,
    pub source: Source,
    /// Last sign of life (None for the local node and for peers never heard from).
    pub last_seen: Option<Instant>,
    /// Whether the link to it is up as last reported (a heartbeat counts as a link-up).
    pub link: bool,
}

#[derive(Debug, Clone)]
struct Peer {
    source: Source,
    up: bool,
    since: Instant,
    last_seen: Option<Instant>,
    next_heartbeat: Instant,
    link: bool,
}

/// The node table and failure detector. See the module documentation.
#[derive(Debug, Clone)]
pub struct Membership {
    local: NodeId,
    config: Config,
    created: Instant,
    peers: BTreeMap<NodeId, Peer>,
}

impl Membership {
    /// A table holding only the local node. Add peers with [`Membership::add_node`].
    pub fn new(local: NodeId, config: Config, now: Instant) -> Self {
        Membership {
            local,
            config,
            created: now,
            peers: BTreeMap::new(),
        }
    }

    pub fn local(&self) -> NodeId {
        self.local
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds a peer (down until it is heard from; its first heartbeat is due at once).
    /// Returns false, changing nothing, for the local node or a node already known — except
    /// that a node known from mDNS and now added from the map takes the source `Map`.
    pub fn add_node(&mut self, id: NodeId, source: Source, now: Instant) -> bool {
        if id == self.local {
            return false;
        }
        if let Some(p) = self.peers.get_mut(&id) {
            if source == Source::Map {
                p.source = Source::Map;
            }
            return false;
        }
        self.peers.insert(
            id,
            Peer {
                source,
                up: false,
                since: now,
                last_seen: None,
                next_heartbeat: now,
                link: false,
            },
        );
        true
    }

    /// [`Membership::add_node`] for each id (the local id is skipped).
    pub fn add_nodes(
        &mut self,
        ids: impl IntoIterator<Item = NodeId>,
        source: Source,
        now: Instant,
    ) {
        for id in ids {
            self.add_node(id, source, now);
        }
    }

    /// Takes a peer out of the table: `[NodeDown { reason: Removed }]` if it was up, else
    /// nothing. The local node cannot be removed.
    pub fn remove_node(&mut self, id: NodeId) -> Vec<Output> {
        match self.peers.remove(&id) {
            Some(p) if p.up => vec![Output::NodeDown {
                id,
                reason: DownReason::Removed,
            }],
            _ => Vec::new(),
        }
    }

    /// Time passes: first `NodeDown` for each up peer silent for `down_timeout` or longer,
    /// then `SendHeartbeat` for each peer whose heartbeat is due, each in increasing id order.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            if !p.up {
                continue;
            }
            let silent_for = p
                .last_seen
                .map_or(Duration::MAX, |seen| now.saturating_duration_since(seen));
            if silent_for >= self.config.down_timeout {
                p.up = false;
                p.since = now;
                out.push(Output::NodeDown {
                    id,
                    reason: DownReason::Timeout { silent_for },
                });
            }
        }
        for (&id, p) in self.peers.iter_mut() {
            if now >= p.next_heartbeat {
                p.next_heartbeat = now + self.config.heartbeat_interval;
                out.push(Output::SendHeartbeat { to: id });
            }
        }
        out
    }

    /// A heartbeat (or any other authenticated message) from `from`: `[NodeUp]` if it was
    /// down, nothing if it was up, `[UnknownPeer]` if it is not in the table. Our own id is
    /// ignored.
    pub fn on_heartbeat(&mut self, from: NodeId, now: Instant) -> Vec<Output> {
        if from == self.local {
            return Vec::new();
        }
        let Some(p) = self.peers.get_mut(&from) else {
            return vec![Output::UnknownPeer { id: from }];
        };
        p.last_seen = Some(p.last_seen.map_or(now, |seen| seen.max(now)));
        p.link = true;
        if p.up {
            Vec::new()
        } else {
            p.up = true;
            p.since = now;
            vec![Output::NodeUp { id: from }]
        }
    }

    /// The transport has an authenticated link to `id`: send it a heartbeat now
    /// (`[SendHeartbeat]`), so that it marks us up without waiting for the schedule.
    pub fn on_link_up(&mut self, id: NodeId, now: Instant) -> Vec<Output> {
        if id == self.local {
            return Vec::new();
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return vec![Output::UnknownPeer { id }];
        };
        p.link = true;
        p.next_heartbeat = now + self.config.heartbeat_interval;
        vec![Output::SendHeartbeat { to: id }]
    }

    /// The transport lost its link to `id`: an up peer is marked down at once
    /// (`[NodeDown { reason: LinkLost }]`).
    pub fn on_link_down(&mut self, id: NodeId, now: Instant) -> Vec<Output> {
        if id == self.local {
            return Vec::new();
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return vec![Output::UnknownPeer { id }];
        };
        p.link = false;
        if p.up {
            p.up = false;
            p.since = now;
            vec![Output::NodeDown {
                id,
                reason: DownReason::LinkLost,
            }]
        } else {
            Vec::new()
        }
    }

    /// The earliest instant at which [`Membership::on_tick`] has something to do (a heartbeat
    /// due or an up peer's timeout), or None with no peers. May be in the past.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| {
                let timeout = p
                    .last_seen
                    .filter(|_| p.up)
                    .map(|seen| seen + self.config.down_timeout);
                std::iter::once(p.next_heartbeat).chain(timeout)
            })
            .min()
    }

    /// All nodes, the local one included, in increasing id order.
    pub fn nodes(&self) -> impl Iterator<Item = NodeState> + '_ {
        let mut v: Vec<NodeState> = self
            .peers
            .iter()
            .map(|(&id, p)| Self::state(id, p))
            .collect();
        let pos = v.partition_point(|n| n.id < self.local);
        v.insert(pos, self.local_state());
        v.into_iter()
    }

    fn local_state(&self) -> NodeState {
        NodeState {
            id: self.local,
            up: true,
            since: self.created,
            source: Source::Local,
            last_seen: None,
            link: false,
        }
    }

    fn state(id: NodeId, p: &Peer) -> NodeState {
        NodeState {
            id,
            up: p.up,
            since: p.since,
            source: p.source,
            last_seen: p.last_seen,
            link: p.link,
        }
    }

    /// The row of one node, the local one included.
    pub fn node(&self, id: NodeId) -> Option<NodeState> {
        if id == self.local {
            return Some(self.local_state());
        }
        self.peers.get(&id).map(|p| Self::state(id, p))
    }

    /// Whether `id` is in the table (the local node always is).
    pub fn contains(&self, id: NodeId) -> bool {
        id == self.local || self.peers.contains_key(&id)
    }

    /// True for the local node and for peers that are up; false for unknown ids.
    pub fn is_up(&self, id: NodeId) -> bool {
        id == self.local || self.peers.get(&id).is_some_and(|p| p.up)
    }

    /// The peers (not the local node) that are up, increasing.
    pub fn up_peers(&self) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(&id, _)| id)
            .collect()
    }
}

#[cfg(test)]
mod tests;
