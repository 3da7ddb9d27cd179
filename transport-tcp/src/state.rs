//! The state shared by a transport's tasks: peers, links, and claiming a link for a peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use runtime::NodeId;
use runtime::transport::lifecycle::{self, Action, Dir, Ended};
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
    /// Wakes the peer's dial task (a dial is due, or the next deadline moved).
    pub(crate) wake: Arc<Notify>,
    /// The peer's link lifecycle: when to dial, which link to keep, how refusals pace
    /// re-dialling (`runtime::transport::lifecycle`).
    pub(crate) life: lifecycle::Peer,
    /// The lifecycle asked for a dial that the dial task has not started yet.
    pub(crate) dial_now: bool,
}

impl PeerEntry {
    /// Carry out what the lifecycle asks that is this entry's to do: start a dial.
    /// Outside the dial task, `wake` it too: the lifecycle's next deadline may have moved.
    fn take_dial(&mut self, actions: &[Action], wake: bool) {
        if actions.contains(&Action::Dial) {
            self.dial_now = true;
        }
        if wake {
            self.wake.notify_one();
        }
    }
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

    /// The lifecycle's timings, from the configuration. transport-tcp's link tasks keep
    /// their own keepalive and idle clocks (per message, on the fast path).
    pub(crate) fn life_config(&self) -> lifecycle::Config {
        let c = &self.config;
        lifecycle::Config {
            backoff_min: c.backoff_min,
            backoff_max: c.backoff_max,
            keepalive: c.keepalive,
            idle: c.idle_timeout,
            handshake_timeout: c.handshake_timeout,
            watch_liveness: false,
        }
    }

    /// Carry out `peer`'s lifecycle `actions` (under the state lock): dials go to the
    /// peer's dial task, closes to the links. Accepting or refusing is done by the
    /// handshake that asked; `Up`/`Down` are emitted by the link task; keepalives by its
    /// writer.
    pub(crate) fn act(st: &mut State, peer: NodeId, actions: Vec<Action>) {
        Self::act_from(st, peer, actions, true)
    }

    /// [`Inner::act`]; `wake`: false from the peer's own dial task (it looks again anyway).
    pub(crate) fn act_from(st: &mut State, peer: NodeId, actions: Vec<Action>, wake: bool) {
        for a in &actions {
            if let Action::Close { link, why } = a {
                if let Some(s) = st.links.current(peer, *link) {
                    s.link.ctl.close(&why.to_string());
                }
            }
        }
        if let Some(p) = st.peers.get_mut(&peer) {
            p.take_dial(&actions, wake);
        }
    }

    /// The arbiter's reserved link `id` was confirmed by the peer: it is up. False when it
    /// no longer holds the slot.
    pub(crate) fn confirmed(&self, peer: NodeId, id: u64) -> bool {
        let mut st = lock(&self.state);
        if !st.links.set_phase(peer, id, Phase::Up) {
            return false;
        }
        if let Some(p) = st.peers.get_mut(&peer) {
            let a = p.life.on_confirmed(std::time::Instant::now(), id);
            Self::act(&mut st, peer, a);
        }
        true
    }

    /// Link `id` of `peer` ended: its slot goes to `Closing` and the lifecycle hears of it
    /// (and schedules the re-dial). False when it no longer held the slot.
    pub(crate) fn closing(&self, peer: NodeId, id: u64, reason: &str) -> bool {
        let mut st = lock(&self.state);
        let current = st.links.set_phase(peer, id, Phase::Closing);
        self.forget(&mut st, peer, id, reason);
        current
    }

    fn forget(&self, st: &mut State, peer: NodeId, id: u64, reason: &str) {
        if let Some(p) = st.peers.get_mut(&peer) {
            let why = Ended::Closed(reason.to_string());
            let a = p.life.on_closed(std::time::Instant::now(), id, why);
            Self::act(st, peer, a);
        }
    }

    /// Install a link for `peer` whose handshake finished. The lifecycle decides
    /// (`lifecycle::Peer::on_hello_ok`): the arbiter (lower id) refuses when another link
    /// is reserved or live; the other end follows the arbiter, replacing its old link. The
    /// slot is then taken once a replaced link has finished closing.
    pub(crate) async fn claim(
        &self,
        peer: NodeId,
        arbiter: bool,
        dir: Dir,
        entry: Slot<LinkEntry>,
    ) -> Result<(), Refusal> {
        let id = entry.id;
        let local = self.config.local;
        {
            let mut st = lock(&self.state);
            if st.links.is_closed() {
                return Err(Refusal::ShuttingDown);
            }
            let now = std::time::Instant::now();
            let Some(p) = st.peers.get_mut(&peer) else {
                return Err(Refusal::NotListed { peer, local });
            };
            let mut a = p.life.on_connected(now, id, dir);
            a.extend(p.life.on_hello_ok(now, id));
            let refused = a.iter().find_map(|a| match a {
                Action::Refuse { link, reason } if *link == id => Some(reason.clone()),
                Action::Close { link, .. } if *link == id => {
                    Some(Refusal::NotListed { peer, local })
                }
                _ => None,
            });
            Self::act(&mut st, peer, a);
            if let Some(reason) = refused {
                return Err(reason);
            }
        }
        let r = self.take_slot(peer, arbiter, entry).await;
        if let Err(reason) = &r {
            let mut st = lock(&self.state);
            self.forget(&mut st, peer, id, &reason.to_string());
        }
        r
    }

    async fn take_slot(
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
                // The lifecycle closed a replaced link already; one still live here is
                // one it has not heard the end of (the arbiter keeps it).
                if arbiter && old.phase != Phase::Closing && !old.link.ctl.cancel.is_cancelled() {
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
