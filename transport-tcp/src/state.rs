//! The state shared by a transport's tasks: peers, links, and claiming a link for a peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use runtime::NodeId;
use runtime::transport::link::{self, Claim, LinkCtl};
use runtime::transport::pacing::Repeats;
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
    pub(crate) closed: bool,
    pub(crate) peers: HashMap<NodeId, PeerEntry>,
    pub(crate) links: HashMap<NodeId, LinkEntry>,
}

pub(crate) struct PeerEntry {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) cancel: CancellationToken,
    pub(crate) wake: Arc<Notify>,
}

pub(crate) struct LinkEntry {
    pub(crate) id: u64,
    pub(crate) state: LinkState,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) ctl: Arc<LinkCtl>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// Accepted by this node (the arbiter), waiting for the peer's confirmation; no `Up`
    /// yet, so it vanishes silently if the peer dies now.
    Reserved,
    /// `Up` emitted (or about to be); frames may be sent.
    Up,
    /// Ending; its `Down` is being delivered.
    Closing,
}

pub(crate) use runtime::transport::link::lock;

impl Inner {
    /// Stop accepting and dialling, close every link (writers flush briefly). Returns the
    /// links' completion tokens.
    pub(crate) fn begin_shutdown(&self) -> Vec<CancellationToken> {
        let mut st = lock(&self.state);
        st.closed = true;
        let dones = st.links.values().map(|l| l.ctl.done.clone()).collect();
        for l in st.links.values() {
            l.ctl.close("transport shut down");
        }
        drop(st);
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
        entry: LinkEntry,
    ) -> Result<(), Refusal> {
        let mut entry = Some(entry);
        link::claim(|| {
            let mut st = lock(&self.state);
            if st.closed {
                return Claim::Decided(Err(Refusal::ShuttingDown));
            }
            if !st.peers.contains_key(&peer) {
                return Claim::Decided(Err(Refusal::NotListed {
                    peer,
                    local: self.config.local,
                }));
            }
            match st.links.get(&peer) {
                None => {
                    st.links.insert(peer, entry.take().expect("entry"));
                    Claim::Decided(Ok(()))
                }
                Some(old) if arbiter && old.state != LinkState::Closing => {
                    Claim::Decided(Err(Refusal::Duplicate {
                        local: self.config.local,
                        peer,
                    }))
                }
                Some(old) => {
                    if !arbiter {
                        old.ctl.close("replaced by a new link");
                    }
                    Claim::WaitFor(old.ctl.done.clone())
                }
            }
        })
        .await
    }
}
