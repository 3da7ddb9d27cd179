//! The state shared by a transport's tasks: peers, links, and claiming a link for a peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use runtime::NodeId;
use runtime::transport::link::{self, Claim, LinkCtl};
use runtime::transport::pacing::Repeats;
use runtime::transport::table::{Entry, Phase, Slot, Table};
use runtime::transport::{self as rt, Event};
use runtime::wire::Refusal;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::outbox::Outbox;

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// The cluster digest sent and checked in new handshakes: `config.cluster` until
    /// [`crate::Transport::set_cluster`] replaces it (a new map loaded into a running node).
    pub(crate) cluster: Mutex<String>,
    pub(crate) params: snow::params::NoiseParams,
    pub(crate) events: rt::Events,
    pub(crate) state: Mutex<State>,
    pub(crate) root: CancellationToken,
    pub(crate) next_link: AtomicU64,
    /// Inbound handshakes in progress; each holds an owned permit, returned on drop.
    pub(crate) handshakes: Arc<Semaphore>,
    /// Cancelled once the listening socket is closed.
    pub(crate) listener_closed: CancellationToken,
    /// Which repeated warnings were logged lately (refusals repeat on every re-dial).
    pub(crate) warned: Repeats,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) peers: HashMap<NodeId, PeerEntry>,
    pub(crate) links: Table<LinkEntry>,
}

pub(crate) struct PeerEntry {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) cancel: CancellationToken,
    pub(crate) wake: Arc<Notify>,
}

/// What transport-tcp keeps per link in the shared [`Table`]. A link accepted by this
/// node (the arbiter) is [`Phase::Reserved`] until the peer confirms.
pub(crate) struct LinkEntry {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) ctl: Arc<LinkCtl>,
}

impl Entry for LinkEntry {
    fn ctl(&self) -> &LinkCtl {
        &self.ctl
    }
}

pub(crate) use runtime::transport::link::lock;

impl Inner {
    /// Stop accepting and dialling, close every link (writers flush briefly). Returns the
    /// links' completion tokens.
    pub(crate) fn begin_shutdown(&self) -> Vec<CancellationToken> {
        let dones = lock(&self.state).links.close_all("transport shut down");
        self.root.cancel();
        dones
    }

    /// Log `msg` as a warning once per `key` a minute (debug in between), so a peer that
    /// keeps re-dialling with a wrong key or map does not flood the log.
    pub(crate) fn warn_repeated(&self, key: String, msg: &str) {
        if self.warned.warn_now(key) {
            warn!("{msg}");
        } else {
            debug!("{msg}");
        }
    }

    pub(crate) async fn emit(&self, ev: Event) {
        // The runtime may be gone during shutdown; nothing to do then.
        let _ = self.events.send(ev).await;
    }

    pub(crate) fn is_listed(&self, peer: NodeId) -> bool {
        lock(&self.state).peers.contains_key(&peer)
    }

    /// Install a link for `peer` whose handshake finished. The arbiter (lower id) refuses
    /// when another link is live; the other end follows the arbiter, replacing a stale link.
    pub(crate) async fn claim(
        &self,
        peer: NodeId,
        arbiter: bool,
        entry: Slot<LinkEntry>,
    ) -> Result<(), Refusal> {
        let mut entry = Some(entry);
        let local = self.config.local;
        link::claim(|| {
            let mut st = lock(&self.state);
            let listed = st.peers.contains_key(&peer);
            st.links.claim_look(local, peer, listed, &mut entry, |old| {
                if arbiter && old.phase != Phase::Closing {
                    return Claim::Decided(Err(Refusal::Duplicate { local, peer }));
                }
                if !arbiter {
                    old.link.ctl.close("replaced by a new link");
                }
                Claim::WaitFor(old.link.ctl.done.clone())
            })
        })
        .await
    }
}
