//! The state shared by a transport's tasks: links, listed peers, and claiming a node id.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use runtime::NodeId;
use runtime::transport::lanes::Outq;
use runtime::transport::link::{self, Claim};
use runtime::transport::liveness;
use runtime::transport::pacing::Repeats;
use runtime::transport::table::{Entry, Phase, Slot, Table};
use runtime::transport::{self as rt, Event};
use runtime::wire::Refusal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::swarm::Cmd;

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// The cluster digest sent and checked in new handshakes: `config.cluster` until
    /// [`crate::Transport::set_cluster`] replaces it (a new map loaded into a running node).
    pub(crate) cluster: Mutex<String>,
    pub(crate) local_peer: PeerId,
    pub(crate) events: rt::Events,
    pub(crate) state: Mutex<State>,
    /// Cancelled when shutting down: links close, dialling stops.
    pub(crate) root: CancellationToken,
    /// Cancelled once links are closed: the swarm task drops the swarm.
    pub(crate) swarm_stop: CancellationToken,
    pub(crate) cmd: mpsc::UnboundedSender<Cmd>,
    pub(crate) next_link: AtomicU64,
    /// Which repeated warnings were logged lately.
    pub(crate) warned: Repeats,
}

#[derive(Default)]
pub(crate) struct State {
    /// Peers given to `set_peers`.
    pub(crate) listed: HashMap<NodeId, Vec<SocketAddr>>,
    pub(crate) links: Table<LinkEntry>,
    /// Where this node listens (sent to peers, who report it in `Event::Discovered`).
    pub(crate) listen_addrs: Vec<SocketAddr>,
    /// The listed nodes (and address) we dialled when we connected to a peer.
    pub(crate) dialled_for: HashMap<PeerId, Vec<(NodeId, Multiaddr)>>,
}

/// What transport-p2p keeps per link in the shared [`Table`] ([`Phase::Reserved`] until
/// its `Up`).
pub(crate) struct LinkEntry {
    pub(crate) peer_id: PeerId,
    pub(crate) queue: Arc<Outq>,
    pub(crate) ctl: Arc<LinkCtl>,
}

impl Entry for LinkEntry {
    fn ctl(&self) -> &link::LinkCtl {
        &self.ctl
    }
}

/// The shared control block (cancel, first reason, done) plus the link's clocks
/// (`runtime::transport::liveness`), which decide whether a new peer may take the node id
/// over.
pub(crate) struct LinkCtl {
    ctl: link::LinkCtl,
    live: liveness::Shared,
}

impl std::ops::Deref for LinkCtl {
    type Target = link::LinkCtl;

    fn deref(&self) -> &link::LinkCtl {
        &self.ctl
    }
}

impl LinkCtl {
    pub(crate) fn new(parent: &CancellationToken, config: &Config) -> Arc<Self> {
        Arc::new(LinkCtl {
            ctl: link::LinkCtl::new(parent),
            live: liveness::Shared::new(config.keepalive, config.idle_timeout, Instant::now()),
        })
    }

    /// Something arrived from the peer.
    pub(crate) fn touch(&self) {
        self.live.received(Instant::now());
    }

    /// How long nothing arrived on this link.
    fn silent_for(&self) -> Duration {
        self.live.snapshot().silent_for(Instant::now())
    }

    /// The peer missed two keepalives.
    fn stale(&self) -> bool {
        self.live.snapshot().stale(Instant::now())
    }
}

pub(crate) use runtime::transport::link::lock;

impl Inner {
    /// Stop dialling, close every link (writers flush briefly), then stop the swarm.
    /// Returns the links' completion tokens.
    pub(crate) fn begin_shutdown(&self) -> Vec<CancellationToken> {
        let dones = lock(&self.state).links.close_all("transport shut down");
        self.root.cancel();
        // Without a runtime (dropped outside tokio) the swarm task is gone anyway.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let stop = self.swarm_stop.clone();
            let wait = dones.clone();
            handle.spawn(async move {
                let all = async {
                    for d in wait {
                        d.cancelled().await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
                stop.cancel();
            });
        } else {
            self.swarm_stop.cancel();
        }
        dones
    }

    pub(crate) async fn emit(&self, ev: Event) {
        // The runtime may be gone during shutdown; nothing to do then.
        let _ = self.events.send(ev).await;
    }

    /// Log `msg` as a warning unless the same `key` was warned about recently.
    pub(crate) fn warn_limited(&self, key: String, msg: &str) {
        if self.warned.warn_now(key) {
            warn!("{msg}");
        } else {
            debug!("{msg}");
        }
    }

    /// Register a link for `node` from `peer_id` whose `Hello` passed (not `Up` yet).
    pub(crate) async fn claim(
        &self,
        node: NodeId,
        peer_id: PeerId,
        entry: Slot<LinkEntry>,
    ) -> Result<(), Refusal> {
        let mut entry = Some(entry);
        let local = self.config.local;
        link::claim(|| {
            let mut st = lock(&self.state);
            let listed = self.config.mdns || st.listed.contains_key(&node);
            st.links.claim_look(local, node, listed, &mut entry, |old| {
                let (held_by, ctl) = (old.link.peer_id, &old.link.ctl);
                if held_by != peer_id && old.phase == Phase::Up && ctl.stale() {
                    // Our link to the previous holder has missed its keepalives: most
                    // likely that node restarted (new libp2p identity) before we noticed.
                    info!(
                        "node {node} reconnects as peer {peer_id}; its link to peer {held_by} is silent for {:?}, closing it",
                        ctl.silent_for()
                    );
                    ctl.close("replaced: the node reconnected with a new identity");
                    Claim::WaitFor(ctl.done.clone())
                } else if held_by != peer_id {
                    Claim::Decided(Err(Refusal::IdTaken {
                        node,
                        holder: held_by.to_string(),
                        claimant: peer_id.to_string(),
                    }))
                } else {
                    // The same peer opened a new stream: its old one is dead.
                    ctl.close("replaced by a new stream from the same peer");
                    Claim::WaitFor(ctl.done.clone())
                }
            })
        })
        .await
    }

    pub(crate) fn unclaim(&self, node: NodeId, id: u64) {
        let mut st = lock(&self.state);
        st.links.remove(node, id);
    }

    pub(crate) fn has_link_with(&self, peer_id: &PeerId) -> bool {
        lock(&self.state)
            .links
            .iter()
            .any(|(_, s)| &s.link.peer_id == peer_id)
    }
}
