//! The membership actor: drives `discovery::membership::Membership` with heartbeats over the
//! runtime and link events from the transport, logs nodes going up and down, and tells the
//! load monitor which peers are up.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use discovery::NodeId;

use discovery::membership::{Membership, NodeState, Output, Source};
use runtime::{Actor, Addr, Context, Inbound, LinkEvent, ReplyTo};
use serde::{Deserialize, Serialize};

use crate::loadmon::{self, LoadMonitor};

/// The name peers send heartbeats to.
pub const NAME: &str = "membership";

/// How often the failure detector looks at the clock.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's cluster digest, checked once more on top of the handshake.
    pub cluster: String,
}

pub enum Msg {
    Tick,
    Heartbeat(Inbound<Heartbeat>),
    Link(LinkEvent),
    /// Every node with its address.
    Snapshot(ReplyTo<Vec<(NodeState, String)>>),
    /// A new map was loaded (`setpe -w`, SIGHUP): its nodes with their addresses, and its
    /// digest. Map nodes not in it leave the table; new ones join it, down until heard from.
    SetMap {
        addrs: BTreeMap<NodeId, String>,
        cluster: String,
        reply: ReplyTo<()>,
    },
}

impl From<Inbound<Heartbeat>> for Msg {
    fn from(i: Inbound<Heartbeat>) -> Self {
        Msg::Heartbeat(i)
    }
}

pub struct Members {
    table: Membership,
    /// Addresses to show: from the map, or as discovered.
    addrs: BTreeMap<NodeId, String>,
    cluster: String,
    load: Addr<LoadMonitor>,
    started: Instant,
    /// When we last said that no peer is reachable.
    warned: Option<Instant>,
}

/// How long a node waits for its first peer before saying none is reachable.
const LONELY_AFTER: Duration = Duration::from_secs(10);

impl Members {
    pub fn new(
        table: Membership,
        addrs: BTreeMap<NodeId, String>,
        cluster: String,
        load: Addr<LoadMonitor>,
    ) -> Self {
        Members {
            table,
            addrs,
            cluster,
            load,
            started: Instant::now(),
            warned: None,
        }
    }

    /// Say so, once a minute, when the map names peers and none has ever been reached: a
    /// map-mode node never silently goes zero-config.
    fn check_lonely(&mut self, now: Instant) {
        let peers: Vec<_> = self
            .table
            .nodes()
            .filter(|n| n.source == Source::Map)
            .collect();
        if peers.is_empty() || peers.iter().any(|n| n.last_seen.is_some()) {
            return;
        }
        let due = self.warned.map_or(now >= self.started + LONELY_AFTER, |t| {
            now >= t + LONELY_AFTER * 6
        });
        if due {
            self.warned = Some(now);
            tracing::warn!(
                "none of the {} peers of the map has been reached after {}s: check that omnode runs on them with the same map, cluster key and --port",
                peers.len(),
                now.duration_since(self.started).as_secs()
            );
        }
    }

    async fn apply(&mut self, outputs: Vec<Output>, ctx: &Context<Self>) {
        let mut changed = false;
        for out in outputs {
            match out {
                Output::SendHeartbeat { to } => {
                    let hb = Heartbeat {
                        cluster: self.cluster.clone(),
                    };
                    // Never waits: a peer whose control lane is full misses this beat
                    // instead of delaying the beats to every other peer.
                    match ctx.system().try_tell(to, NAME, &hb) {
                        Ok(()) => crate::metrics::bump(&crate::metrics::COUNTERS.heartbeats_sent),
                        Err(e) => tracing::trace!(node = to, "heartbeat not sent: {e}"),
                    }
                }
                Output::NodeUp { id } => {
                    tracing::info!(node = id, "node {id} is up");
                    changed = true;
                }
                Output::NodeDown { id, reason } => {
                    tracing::warn!(node = id, "node {id} is down: {reason}");
                    changed = true;
                }
                Output::UnknownPeer { id } => {
                    tracing::debug!(node = id, "message from a node not in the table")
                }
            }
        }
        if changed {
            let _ = self
                .load
                .try_tell(loadmon::Msg::Peers(self.table.up_peers()));
        }
    }
}

impl Actor for Members {
    type Msg = Msg;

    async fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.every(TICK, || Msg::Tick);
        let mut links = ctx.system().link_events();
        let me = ctx.addr().clone();
        let token = ctx.system().shutdown_token();
        ctx.system().tasks().spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = token.cancelled() => break,
                    ev = links.recv() => ev,
                };
                match ev {
                    Ok(ev) => {
                        if me.tell(Msg::Link(ev)).await.is_err() {
                            break;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!("membership missed {n} link events");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    async fn handle(&mut self, msg: Msg, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let outputs = match msg {
            Msg::Tick => {
                self.check_lonely(now);
                self.table.on_tick(now)
            }
            Msg::Heartbeat(hb) => {
                crate::metrics::bump(&crate::metrics::COUNTERS.heartbeats_received);
                if hb.msg.cluster != self.cluster {
                    tracing::warn!(
                        node = hb.from,
                        "heartbeat from node {} with another cluster map; ignored",
                        hb.from
                    );
                    return;
                }
                self.table.on_heartbeat(hb.from, now)
            }
            Msg::Link(LinkEvent::Discovered(id, addrs)) => {
                if self.table.add_node(id, Source::Mdns, now) {
                    tracing::info!(node = id, "found node {id} by mDNS at {addrs:?}");
                }
                if let Some(a) = addrs.first() {
                    self.addrs.entry(id).or_insert_with(|| a.ip().to_string());
                }
                return;
            }
            Msg::Link(LinkEvent::Up(id)) => self.table.on_link_up(id, now),
            Msg::Link(LinkEvent::Down(id, reason)) => {
                tracing::debug!(node = id, "link down: {reason}");
                self.table.on_link_down(id, now)
            }
            Msg::SetMap {
                addrs,
                cluster,
                reply,
            } => {
                let gone: Vec<NodeId> = self
                    .table
                    .nodes()
                    .filter(|n| n.source == Source::Map && !addrs.contains_key(&n.id))
                    .map(|n| n.id)
                    .collect();
                let mut outputs = Vec::new();
                for id in gone {
                    tracing::info!(node = id, "node {id} is no longer in the map");
                    outputs.extend(self.table.remove_node(id));
                    self.addrs.remove(&id);
                }
                self.table
                    .add_nodes(addrs.keys().copied(), Source::Map, now);
                self.addrs.extend(addrs);
                self.cluster = cluster;
                let _ = reply.send(());
                let _ = self
                    .load
                    .try_tell(loadmon::Msg::Peers(self.table.up_peers()));
                outputs
            }
            Msg::Snapshot(reply) => {
                let rows = self
                    .table
                    .nodes()
                    .map(|n| (n, self.addrs.get(&n.id).cloned().unwrap_or_default()));
                let _ = reply.send(rows.collect());
                return;
            }
        };
        self.apply(outputs, ctx).await;
    }
}
