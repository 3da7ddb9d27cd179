//! The life of the links to one peer, as a sans-IO state machine shared by every transport
//! (shaped like `discovery::membership`): [`Peer`] never reads the clock, never touches a
//! socket and never spawns. The transport's shell reports what happened (a dial failed, a
//! connection came in, the `Hello`s agreed, a refusal, a frame, the link ended) with the
//! time it happened, carries out the returned [`Action`]s (dial now, accept or refuse a
//! link, close a link, send a keepalive, emit `Up`/`Down`), and calls [`Peer::on_tick`] at
//! [`Peer::next_deadline`].
//!
//! # Model
//!
//! - Stages ([`Stage`]): not wanted; wanted with a dial due ([`Stage::BackingOff`] until
//!   its time); [`Stage::Dialing`] (an outbound attempt in flight: one at a time);
//!   [`Stage::Handshaking`] (a link, either direction, is exchanging `Hello`s);
//!   [`Stage::Up`]; [`Stage::Stopped`] (a refusal that re-dialling cannot fix).
//! - Links are named by the shell's ids ([`LinkId`]). There is at most one outbound attempt
//!   at a time, and no dial while a link of either direction is claimed (reserved or up);
//!   an inbound handshake does not hold a dial back, so both ends may dial at once.
//! - Simultaneous dials are settled by the lower node id, the *arbiter*: when a link's
//!   `Hello`s agree ([`Peer::on_hello_ok`]) the arbiter accepts it only if it holds no
//!   other claimed link ([`Action::Accept`], else [`Action::Refuse`] with
//!   `Refusal::Duplicate`) and keeps it reserved until the peer's first message confirms it
//!   ([`Peer::on_confirmed`]); the other end reports `on_hello_ok` only once the arbiter
//!   accepted, and then replaces whatever link it had. So both ends keep the same link and
//!   the loser never produces an `Up`/`Down` pair.
//! - Back-off: after a failed attempt the next dial waits the current step with ±50 %
//!   jitter drawn from the caller's seeded RNG; the step doubles up to `backoff_max`. A link
//!   that comes up resets it; after a link goes down the peer is re-dialled after about
//!   `backoff_min`. How a refusal affects re-dialling is [`Redial::after`]: a duplicate or
//!   a peer shutting down keeps the normal pace, a wrong key, another map, an unknown node
//!   or a wrong address waits the longest step (`backoff_max`), a non-omnode peer or one
//!   claiming our own id stops re-dialling until [`Peer::rearm`] (new addresses, new map).
//! - Liveness (`super::liveness`): a link that is up sends a keepalive after `keepalive`
//!   of sending nothing ([`Action::Keepalive`]) and is closed, with `Down`, when nothing
//!   arrived for `idle` — exactly at `last received + idle`. A link still handshaking or
//!   reserved after `handshake_timeout` is closed (a failed attempt, if it was ours).
//! - `Up` is emitted when a link becomes live and `Down` when that link ends, so `Up` and
//!   `Down` alternate, starting with `Up`.
//!
//! Must not know: sockets, tasks, encryption, framing, the runtime's actors.

use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::liveness::{Due, Liveness};
use crate::NodeId;
use crate::wire::Refusal;

/// The shell's name for one link (one connection or stream), unique within a transport.
pub type LinkId = u64;

/// A fresh seed for [`Peer::new`] (shells that want no repeatable jitter; tests pass
/// their own).
pub fn random_seed() -> u64 {
    rand::random()
}

/// Who opened a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// This node dialled.
    Outbound,
    /// The peer dialled.
    Inbound,
}

/// The times a link lives by (the transports' configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub keepalive: Duration,
    pub idle: Duration,
    pub handshake_timeout: Duration,
    /// True: the machine watches live links (the shell reports every arrival with
    /// [`Peer::on_received`] and sends the keepalives it asks for). False: the shell's
    /// link tasks send keepalives and end silent links themselves, and report the end
    /// with [`Peer::on_closed`] (transport-tcp's reader and writer do, per message).
    pub watch_liveness: bool,
}

impl Config {
    /// Whether the times make sense (see `pacing::Backoff::check`, `Liveness::check`).
    pub fn check(&self) -> Result<(), String> {
        super::pacing::Backoff::check(self.backoff_min, self.backoff_max)?;
        Liveness::check(self.keepalive, self.idle)?;
        if self.handshake_timeout.is_zero() {
            return Err("handshake_timeout must be > 0".into());
        }
        Ok(())
    }
}

/// Why an outbound attempt failed before its `Hello`s agreed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Nobody answered (refused, unreachable, timed out, reset): the network may heal.
    Unreachable,
    /// The key exchange failed: one side has another cluster key.
    Auth,
    /// The handshake did not finish in time.
    Timeout,
    /// A typed refusal, by the peer or by this node (its `Hello` did not pass our checks).
    Refused(Refusal),
}

/// How re-dialling goes on after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Redial {
    /// The usual back-off: the current step, doubling.
    Backoff,
    /// Something only a person can fix (key, map, address): wait the longest step.
    Slow,
    /// Re-dialling cannot help: stop until [`Peer::rearm`].
    Stop,
}

impl Redial {
    /// The policy for `failure`.
    pub fn after(failure: &Failure) -> Redial {
        match failure {
            Failure::Unreachable | Failure::Timeout => Redial::Backoff,
            Failure::Auth => Redial::Slow,
            Failure::Refused(r) => match r {
                // The arbiter keeps another link (soon ours); the peer is going away;
                // its old link is still closing: all pass by themselves.
                Refusal::Duplicate { .. } | Refusal::ShuttingDown | Refusal::PreviousLinkStuck => {
                    Redial::Backoff
                }
                Refusal::Version { .. }
                | Refusal::ClusterDiffers { .. }
                | Refusal::WrongNode { .. }
                | Refusal::NotListed { .. }
                | Refusal::IdTaken { .. }
                | Refusal::Malformed(_) => Redial::Slow,
                Refusal::NotOmnode { .. } | Refusal::OwnId(_) => Redial::Stop,
            },
        }
    }
}

/// Why a link was closed or a peer went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Nothing arrived for the idle time-out.
    Idle { silent: Duration },
    /// The handshake (or the arbiter's wait for confirmation) took too long.
    HandshakeTimeout,
    /// The other end settled on another link to this peer.
    Replaced,
    /// The arbiter keeps another link (simultaneous dials): not an error.
    Duplicate,
    /// A typed refusal ended the link.
    Refused(Refusal),
    /// The peer is no longer wanted (removed from the peer list, shutting down).
    Unwanted,
    /// Sending made no progress (the shell's judgement).
    Stalled,
    /// The connection ended (EOF, error), as the shell tells it.
    Closed(String),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Idle { silent } => {
                write!(
                    f,
                    "nothing received for {silent:?} (peer dead or unreachable)"
                )
            }
            Ended::HandshakeTimeout => f.write_str("handshake timed out"),
            Ended::Replaced => f.write_str("replaced by a new link"),
            Ended::Duplicate => f.write_str("duplicate link"),
            Ended::Refused(r) => write!(f, "refused: {r}"),
            Ended::Unwanted => f.write_str("peer removed from the peer list"),
            Ended::Stalled => f.write_str("sending stalled"),
            Ended::Closed(s) => f.write_str(s),
        }
    }
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start one outbound attempt now (over the peer's addresses); report its link with
    /// [`Peer::on_connected`] or its failure with [`Peer::on_dial_failed`].
    Dial,
    /// Arbiter: tell the peer this link is accepted (`HelloReply::Accepted`).
    Accept { link: LinkId },
    /// Tell the peer why (`HelloReply::Refused`) and close the link.
    Refuse { link: LinkId, reason: Refusal },
    /// Close the link (no `Down` unless one follows).
    Close { link: LinkId, why: Ended },
    /// Send a keepalive on the link now.
    Keepalive { link: LinkId },
    /// The peer is reachable over `link`: emit `Event::Up`.
    Up { link: LinkId },
    /// The peer's live link ended: emit `Event::Down`.
    Down { why: Ended },
}

/// Where the peer stands (for logs and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Unwanted,
    BackingOff { until: Instant },
    Dialing,
    Handshaking,
    Up,
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `Hello`s in flight.
    Handshaking,
    /// Arbiter: accepted, waiting for the peer's first message.
    Reserved,
    Up,
}

#[derive(Clone, Debug)]
struct Link {
    id: LinkId,
    dir: Dir,
    phase: Phase,
    since: Instant,
    live: Liveness,
}

/// One peer's links. See the module docs.
#[derive(Debug)]
pub struct Peer {
    local: NodeId,
    peer: NodeId,
    cfg: Config,
    rng: StdRng,
    wanted: bool,
    stopped: bool,
    step: Duration,
    /// When the next dial is due (wanted, no attempt in flight, no claimed link).
    dial_at: Option<Instant>,
    /// An outbound attempt not yet connected.
    dialing: bool,
    links: Vec<Link>,
}

impl Peer {
    /// The links from `local` to `peer`, not wanted yet. `seed` drives the jitter.
    pub fn new(local: NodeId, peer: NodeId, cfg: Config, seed: u64) -> Self {
        Peer {
            local,
            peer,
            cfg,
            rng: StdRng::seed_from_u64(seed),
            wanted: false,
            stopped: false,
            step: cfg.backoff_min,
            dial_at: None,
            dialing: false,
            links: Vec::new(),
        }
    }

    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// True when this node settles simultaneous dials (the lower id).
    pub fn is_arbiter(&self) -> bool {
        self.local < self.peer
    }

    pub fn stage(&self) -> Stage {
        if self.live().is_some() {
            Stage::Up
        } else if !self.links.is_empty() {
            Stage::Handshaking
        } else if self.dialing {
            Stage::Dialing
        } else if self.stopped {
            Stage::Stopped
        } else if let Some(until) = self.dial_at {
            Stage::BackingOff { until }
        } else {
            Stage::Unwanted
        }
    }

    /// The live (up) link, if any.
    pub fn live(&self) -> Option<LinkId> {
        self.links
            .iter()
            .find(|l| l.phase == Phase::Up)
            .map(|l| l.id)
    }

    /// Links known, in any phase (at most a few).
    pub fn links(&self) -> impl Iterator<Item = (LinkId, Dir)> + '_ {
        self.links.iter().map(|l| (l.id, l.dir))
    }

    /// Whether `link` is one of this peer's links.
    pub fn has(&self, link: LinkId) -> bool {
        self.links.iter().any(|l| l.id == link)
    }

    /// Keep links to the peer (dialling it now if nothing is under way) or not (closing
    /// every link, `Down` if one was up).
    pub fn set_wanted(&mut self, now: Instant, wanted: bool) -> Vec<Action> {
        let mut out = Vec::new();
        if wanted == self.wanted {
            return out;
        }
        self.wanted = wanted;
        if wanted {
            self.stopped = false;
            self.step = self.cfg.backoff_min;
            self.dial_at = Some(now);
            self.poll(now, &mut out);
        } else {
            self.dial_at = None;
            for l in std::mem::take(&mut self.links) {
                out.push(Action::Close {
                    link: l.id,
                    why: Ended::Unwanted,
                });
                if l.phase == Phase::Up {
                    out.push(Action::Down {
                        why: Ended::Unwanted,
                    });
                }
            }
        }
        out
    }

    /// Start afresh (new addresses, a new map): the back-off returns to its first step and
    /// a stopped peer is dialled again.
    pub fn rearm(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        self.step = self.cfg.backoff_min;
        self.stopped = false;
        if self.wanted && !self.dialing && !self.claimed() {
            self.dial_at = Some(now);
        }
        self.poll(now, &mut out);
        out
    }

    /// The outbound attempt failed before it had a link.
    pub fn on_dial_failed(&mut self, now: Instant, why: Failure) -> Vec<Action> {
        let mut out = Vec::new();
        if self.dialing {
            self.dialing = false;
            self.failed(now, &why);
            self.poll(now, &mut out);
        }
        out
    }

    /// A connection to the peer exists and its handshake begins: ours (the dial
    /// connected) or theirs (accepted). Its `Hello`s are next.
    pub fn on_connected(&mut self, now: Instant, link: LinkId, dir: Dir) -> Vec<Action> {
        if dir == Dir::Outbound {
            self.dialing = false;
        }
        if !self.wanted && dir == Dir::Outbound {
            return vec![Action::Close {
                link,
                why: Ended::Unwanted,
            }];
        }
        if !self.has(link) {
            self.links.push(Link {
                id: link,
                dir,
                phase: Phase::Handshaking,
                since: now,
                live: Liveness::new(self.cfg.keepalive, self.cfg.idle, now),
            });
        }
        Vec::new()
    }

    /// The `Hello`s on `link` agreed (arbiter: the peer's `Hello` passed; the other end:
    /// the arbiter's `Accepted` arrived too). Decides which link the pair keeps.
    pub fn on_hello_ok(&mut self, now: Instant, link: LinkId) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(i) = self.index(link) else {
            return out;
        };
        if !self.wanted {
            self.links.remove(i);
            out.push(Action::Refuse {
                link,
                reason: Refusal::NotListed {
                    peer: self.peer,
                    local: self.local,
                },
            });
            return out;
        }
        if self.is_arbiter() {
            if self.claimed() {
                let l = self.links.remove(i);
                out.push(Action::Refuse {
                    link,
                    reason: Refusal::Duplicate {
                        local: self.local,
                        peer: self.peer,
                    },
                });
                if l.dir == Dir::Outbound {
                    let dup = Refusal::Duplicate {
                        local: self.local,
                        peer: self.peer,
                    };
                    self.failed(now, &Failure::Refused(dup));
                }
            } else {
                let l = &mut self.links[i];
                l.phase = Phase::Reserved;
                l.since = now;
                out.push(Action::Accept { link });
                self.dial_at = None;
            }
        } else {
            // The arbiter accepted this link: every other link goes.
            self.replace_with(now, link, &mut out);
        }
        self.poll(now, &mut out);
        out
    }

    /// A link settled by the shell's own rule is up (transport-p2p: the lower libp2p
    /// identity opens the one stream of a connection, a node id is claimed once): it
    /// replaces every other link, and ends any attempt of ours.
    pub fn on_settled(&mut self, now: Instant, link: LinkId, dir: Dir) -> Vec<Action> {
        let mut out = Vec::new();
        self.dialing = false;
        if !self.wanted {
            return out;
        }
        if !self.has(link) {
            out.extend(self.on_connected(now, link, dir));
        }
        self.replace_with(now, link, &mut out);
        self.poll(now, &mut out);
        out
    }

    /// `link` is up; every other link goes (`Down` for one that was up).
    fn replace_with(&mut self, now: Instant, link: LinkId, out: &mut Vec<Action>) {
        self.links.retain(|l| {
            if l.id == link {
                return true;
            }
            out.push(Action::Close {
                link: l.id,
                why: Ended::Replaced,
            });
            if l.phase == Phase::Up {
                out.push(Action::Down {
                    why: Ended::Replaced,
                });
            }
            false
        });
        if let Some(i) = self.index(link) {
            if self.links[i].phase != Phase::Up {
                self.up(now, i, out);
            }
        }
    }

    /// Arbiter: the peer's first message on a reserved link confirms it; it is up.
    pub fn on_confirmed(&mut self, now: Instant, link: LinkId) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(i) = self.index(link) {
            if self.links[i].phase == Phase::Reserved {
                self.up(now, i, &mut out);
            }
            self.links[i].live.received(now);
        }
        out
    }

    /// A refusal ended `link` before it was up: sent by the peer (`by_peer`) or decided
    /// here (the peer's `Hello` failed our checks).
    pub fn on_refused(
        &mut self,
        now: Instant,
        link: LinkId,
        reason: Refusal,
        by_peer: bool,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(i) = self.index(link) else {
            return out;
        };
        let l = self.links.remove(i);
        if !by_peer {
            out.push(Action::Refuse {
                link,
                reason: reason.clone(),
            });
        }
        if l.phase == Phase::Up {
            out.push(Action::Down {
                why: Ended::Refused(reason.clone()),
            });
            self.after_down(now);
        } else if l.dir == Dir::Outbound {
            self.failed(now, &Failure::Refused(reason));
        }
        self.poll(now, &mut out);
        out
    }

    /// A frame (or keepalive) arrived on `link`.
    pub fn on_received(&mut self, now: Instant, link: LinkId) {
        if let Some(i) = self.index(link) {
            self.links[i].live.received(now);
        }
    }

    /// Something was written on `link`.
    pub fn on_sent(&mut self, now: Instant, link: LinkId) {
        if let Some(i) = self.index(link) {
            self.links[i].live.sent(now);
        }
    }

    /// Sending on `link` made no progress for as long as the shell tolerates: close it.
    pub fn on_stalled(&mut self, now: Instant, link: LinkId) -> Vec<Action> {
        self.end(now, link, Ended::Stalled, true)
    }

    /// `link` ended (EOF, error, closed by the other end).
    pub fn on_closed(&mut self, now: Instant, link: LinkId, why: Ended) -> Vec<Action> {
        self.end(now, link, why, false)
    }

    /// Time passed: dials due, handshakes too slow, keepalives due, silent links.
    pub fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.links.len() {
            let l = &self.links[i];
            let why = match l.phase {
                Phase::Handshaking | Phase::Reserved
                    if now.saturating_duration_since(l.since) >= self.cfg.handshake_timeout =>
                {
                    Some(Ended::HandshakeTimeout)
                }
                Phase::Up if !self.cfg.watch_liveness => None,
                Phase::Up => match l.live.poll(now) {
                    Due::Dead { silent } => Some(Ended::Idle { silent }),
                    Due::Keepalive => {
                        out.push(Action::Keepalive { link: l.id });
                        self.links[i].live.sent(now);
                        None
                    }
                    Due::Nothing { .. } => None,
                },
                _ => None,
            };
            match why {
                Some(why) => {
                    let id = self.links[i].id;
                    out.extend(self.end(now, id, why, true));
                }
                None => i += 1,
            }
        }
        self.poll(now, &mut out);
        out
    }

    /// When [`Peer::on_tick`] must run next, if anything is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        let links = self.links.iter().filter_map(|l| match l.phase {
            Phase::Handshaking | Phase::Reserved => Some(l.since + self.cfg.handshake_timeout),
            Phase::Up => self.cfg.watch_liveness.then(|| l.live.next_due()),
        });
        let dial = self.dial_at.filter(|_| self.may_dial());
        links.chain(dial).min()
    }

    fn index(&self, link: LinkId) -> Option<usize> {
        self.links.iter().position(|l| l.id == link)
    }

    /// A link the pair has settled on (reserved by the arbiter, or up).
    fn claimed(&self) -> bool {
        self.links.iter().any(|l| l.phase != Phase::Handshaking)
    }

    /// No attempt of ours under way (dialling, or its link handshaking) and no link
    /// settled on: a dial may start.
    fn may_dial(&self) -> bool {
        self.wanted
            && !self.stopped
            && !self.dialing
            && !self
                .links
                .iter()
                .any(|l| l.dir == Dir::Outbound || l.phase != Phase::Handshaking)
    }

    fn up(&mut self, now: Instant, i: usize, out: &mut Vec<Action>) {
        let l = &mut self.links[i];
        l.phase = Phase::Up;
        l.live = Liveness::new(self.cfg.keepalive, self.cfg.idle, now);
        out.push(Action::Up { link: l.id });
        self.step = self.cfg.backoff_min;
        self.dial_at = None;
    }

    /// An attempt of ours failed: when to try again.
    fn failed(&mut self, now: Instant, why: &Failure) {
        match Redial::after(why) {
            Redial::Backoff => {}
            Redial::Slow => self.step = self.cfg.backoff_max,
            Redial::Stop => {
                self.stopped = true;
                self.dial_at = None;
                return;
            }
        }
        let pause = self.jittered(self.step);
        self.step = (self.step * 2).min(self.cfg.backoff_max);
        self.dial_at = Some(now + pause);
    }

    /// The live link went down: dial again after about the first step.
    fn after_down(&mut self, now: Instant) {
        self.step = self.cfg.backoff_min;
        let pause = self.jittered(self.step);
        self.dial_at = Some(now + pause);
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        d.mul_f64(self.rng.gen_range(0.5..1.5))
    }

    fn end(&mut self, now: Instant, link: LinkId, why: Ended, close: bool) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(i) = self.index(link) else {
            return out;
        };
        let l = self.links.remove(i);
        if close {
            out.push(Action::Close {
                link,
                why: why.clone(),
            });
        }
        match l.phase {
            Phase::Up => {
                out.push(Action::Down { why });
                self.after_down(now);
            }
            _ if l.dir == Dir::Outbound => {
                let f = match why {
                    Ended::HandshakeTimeout => Failure::Timeout,
                    Ended::Refused(r) => Failure::Refused(r),
                    _ => Failure::Unreachable,
                };
                self.failed(now, &f);
            }
            // An inbound link of the arbiter's that was reserved: its dials were held
            // back by it, so one is due now at the latest.
            Phase::Reserved => self.after_down(now),
            Phase::Handshaking => {}
        }
        self.poll(now, &mut out);
        out
    }

    /// Dial when one is due.
    fn poll(&mut self, now: Instant, out: &mut Vec<Action>) {
        if !self.may_dial() {
            return;
        }
        let due = *self.dial_at.get_or_insert(now);
        if due <= now {
            self.dial_at = None;
            self.dialing = true;
            out.push(Action::Dial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> Config {
        Config {
            backoff_min: 100 * MS,
            backoff_max: 2000 * MS,
            keepalive: 500 * MS,
            idle: 2000 * MS,
            handshake_timeout: 1000 * MS,
            watch_liveness: true,
        }
    }

    fn dials(a: &[Action]) -> usize {
        a.iter().filter(|a| **a == Action::Dial).count()
    }

    /// A follower (node 2 of 1–2) whose link `link` is up since `now`.
    fn follower_up(now: Instant, link: LinkId) -> Peer {
        let mut p = Peer::new(2, 1, cfg(), 7);
        assert_eq!(p.set_wanted(now, true), vec![Action::Dial]);
        assert!(p.on_connected(now, link, Dir::Outbound).is_empty());
        assert_eq!(p.on_hello_ok(now, link), vec![Action::Up { link }]);
        assert_eq!(p.stage(), Stage::Up);
        p
    }

    // ---- a simulated pair of nodes (1, the arbiter, and 2) over a lossy network ----

    #[derive(Clone, Debug)]
    enum Msg {
        /// The dialler's connection reached the acceptor.
        Connect,
        Hello,
        /// Follower → arbiter: the follower's `Accepted` (sent first).
        FollowerAccepted,
        /// Arbiter → follower: the arbiter's decision.
        ArbiterAccepted,
        Refused(Refusal),
        /// Any frame (the follower's confirmation, keepalives).
        Frame,
        Close,
    }

    struct Conn {
        id: LinkId,
        dialler: usize,
        /// Messages on their way to node 0 and node 1.
        q: [VecDeque<Msg>; 2],
        /// Each end still has the connection.
        open: [bool; 2],
    }

    struct Sim {
        now: Instant,
        nodes: [Peer; 2],
        /// `Up` minus `Down` events so far, per node (must stay 0 or 1).
        up: [i32; 2],
        /// `Down` events so far, per node.
        downs: [u32; 2],
        /// An outbound attempt awaits its fate, per node.
        pending: [bool; 2],
        conns: Vec<Conn>,
        next: LinkId,
    }

    impl Sim {
        fn new(seed: u64) -> Sim {
            let now = Instant::now();
            let mut s = Sim {
                now,
                nodes: [
                    Peer::new(1, 2, cfg(), seed),
                    Peer::new(2, 1, cfg(), seed ^ 0xabcdef),
                ],
                up: [0, 0],
                downs: [0, 0],
                pending: [false; 2],
                conns: Vec::new(),
                next: 1,
            };
            for k in 0..2 {
                let a = s.nodes[k].set_wanted(now, true);
                s.apply(k, a);
            }
            s
        }

        fn conn(&mut self, id: LinkId) -> Option<&mut Conn> {
            self.conns.iter_mut().find(|c| c.id == id)
        }

        fn send(&mut self, from: usize, link: LinkId, m: Msg) {
            if let Some(c) = self.conn(link) {
                if c.open[from] && c.open[1 - from] {
                    c.q[1 - from].push_back(m);
                }
            }
        }

        fn close(&mut self, k: usize, link: LinkId) {
            if let Some(c) = self.conn(link) {
                if c.open[k] {
                    c.open[k] = false;
                    c.q[1 - k].push_back(Msg::Close);
                }
            }
        }

        fn apply(&mut self, k: usize, actions: Vec<Action>) {
            for a in actions {
                match a {
                    Action::Dial => {
                        assert!(!self.pending[k], "node {k} dials twice at once");
                        self.pending[k] = true;
                    }
                    Action::Accept { link } => self.send(k, link, Msg::ArbiterAccepted),
                    Action::Refuse { link, reason } => {
                        self.send(k, link, Msg::Refused(reason));
                        self.close(k, link);
                    }
                    Action::Close { link, .. } => self.close(k, link),
                    Action::Keepalive { link } => self.send(k, link, Msg::Frame),
                    Action::Up { link } => {
                        self.up[k] += 1;
                        assert_eq!(self.up[k], 1, "node {k}: Up twice without Down");
                        assert_eq!(self.nodes[k].live(), Some(link));
                        if k == 1 {
                            // The follower's first message confirms the link.
                            self.send(k, link, Msg::Frame);
                        }
                    }
                    Action::Down { .. } => {
                        self.up[k] -= 1;
                        self.downs[k] += 1;
                        assert_eq!(self.up[k], 0, "node {k}: Down without Up");
                    }
                }
            }
            let ups = self.nodes[k]
                .links
                .iter()
                .filter(|l| l.phase == Phase::Up)
                .count();
            assert!(ups <= 1, "node {k} has {ups} live links");
            assert_eq!(ups as i32, self.up[k], "node {k}: Up/Down out of step");
        }

        /// The pending dial of node `k` connects or fails.
        fn resolve(&mut self, k: usize, ok: bool) {
            if !std::mem::take(&mut self.pending[k]) {
                return;
            }
            let now = self.now;
            if !ok {
                let a = self.nodes[k].on_dial_failed(now, Failure::Unreachable);
                return self.apply(k, a);
            }
            let id = self.next;
            self.next += 1;
            let mut c = Conn {
                id,
                dialler: k,
                q: [VecDeque::new(), VecDeque::new()],
                open: [true, true],
            };
            c.q[1 - k].push_back(Msg::Connect);
            c.q[1 - k].push_back(Msg::Hello);
            self.conns.push(c);
            let a = self.nodes[k].on_connected(now, id, Dir::Outbound);
            self.apply(k, a);
        }

        /// Deliver the next message on connection `i` to node `k`.
        fn deliver(&mut self, i: usize, k: usize) {
            let now = self.now;
            let Some(c) = self.conns.get_mut(i) else {
                return;
            };
            let Some(m) = c.q[k].pop_front() else {
                return;
            };
            let (id, dialler) = (c.id, c.dialler);
            if !c.open[k] {
                return;
            }
            let n = &mut self.nodes[k];
            let a = match m {
                Msg::Connect => {
                    debug_assert_ne!(dialler, k);
                    let a = n.on_connected(now, id, Dir::Inbound);
                    self.send(k, id, Msg::Hello);
                    a
                }
                Msg::Hello => {
                    if k == 1 && self.nodes[1].has(id) {
                        self.send(1, id, Msg::FollowerAccepted);
                    }
                    Vec::new()
                }
                Msg::FollowerAccepted => n.on_hello_ok(now, id),
                Msg::ArbiterAccepted => n.on_hello_ok(now, id),
                Msg::Refused(r) => n.on_refused(now, id, r, true),
                Msg::Frame => {
                    let a = n.on_confirmed(now, id);
                    n.on_received(now, id);
                    a
                }
                Msg::Close => {
                    if let Some(c) = self.conn(id) {
                        c.open[k] = false;
                    }
                    self.nodes[k].on_closed(now, id, Ended::Closed("eof".into()))
                }
            };
            // A link this node no longer knows (closed, refused): it closes its end.
            let known = self.nodes[k].has(id);
            self.apply(k, a);
            if !known {
                self.close(k, id);
            }
        }

        fn kill(&mut self, i: usize) {
            if let Some(c) = self.conns.get_mut(i) {
                for k in 0..2 {
                    c.q[k].clear();
                    if c.open[k] {
                        c.q[k].push_back(Msg::Close);
                    }
                }
            }
        }

        fn advance(&mut self, d: Duration) {
            self.now += d;
            for k in 0..2 {
                let a = self.nodes[k].on_tick(self.now);
                self.apply(k, a);
            }
        }

        fn busy(&self) -> bool {
            self.pending.iter().any(|p| *p)
                || self.conns.iter().any(|c| c.q.iter().any(|q| !q.is_empty()))
        }

        /// Deliver everything, dials succeed, time runs to each deadline: until both ends
        /// hold the same live link and nothing is in flight, or `limit` of virtual time.
        fn settle(&mut self, limit: Duration) -> Option<LinkId> {
            let end = self.now + limit;
            while self.now < end {
                while self.busy() {
                    for k in 0..2 {
                        self.resolve(k, true);
                    }
                    for i in 0..self.conns.len() {
                        for k in 0..2 {
                            self.deliver(i, k);
                        }
                    }
                }
                let (a, b) = (self.nodes[0].live(), self.nodes[1].live());
                if a.is_some() && a == b {
                    return a;
                }
                let next = self.nodes.iter().filter_map(|n| n.next_deadline()).min();
                let step = next.map_or(100 * MS, |t| t.saturating_duration_since(self.now));
                self.advance(step.max(MS));
            }
            None
        }
    }

    #[test]
    fn simultaneous_dials_keep_the_same_link_on_both_ends() {
        let mut s = Sim::new(1);
        assert_eq!(s.pending, [true, true], "both dial at once");
        // Both connections exist before any Hello is read.
        s.resolve(0, true);
        s.resolve(1, true);
        let (a, b) = (s.conns[0].id, s.conns[1].id);
        // Crossing Hellos: each end connects and reads the other's Hello in turn.
        for _ in 0..2 {
            for i in 0..2 {
                s.deliver(i, 0);
                s.deliver(i, 1);
            }
        }
        // The arbiter (node 1) got both follower Accepteds: it accepts the first, refuses
        // the second as a duplicate.
        let kept = s.settle(10 * cfg().idle).expect("one link survives");
        assert!(kept == a || kept == b);
        assert_eq!(s.nodes[0].links().count(), 1, "{:?}", s.nodes[0]);
        assert_eq!(s.nodes[1].links().count(), 1, "{:?}", s.nodes[1]);
        assert_eq!(s.up, [1, 1], "one Up on each side");
        assert_eq!(s.downs, [0, 0], "no Up/Down pair for the losing link");
    }

    #[test]
    fn a_link_the_arbiter_dropped_is_replaced_before_the_other_end_hears_of_it() {
        let mut s = Sim::new(2);
        let old = s.settle(10 * cfg().idle).expect("linked");
        let i_old = s.conns.iter().position(|c| c.id == old).unwrap();
        // The arbiter gives up on the link; its Close to node 2 is slow to arrive.
        let now = s.now;
        let a = s.nodes[0].on_stalled(now, old);
        s.apply(0, a);
        assert_eq!(s.up, [0, 1]);
        let at = s.nodes[0].next_deadline().expect("a re-dial is scheduled");
        s.now = at;
        let a = s.nodes[0].on_tick(at);
        s.apply(0, a);
        s.resolve(0, true);
        let i_new = s.conns.len() - 1;
        let new = s.conns[i_new].id;
        while s.conns[i_new].q.iter().any(|q| !q.is_empty()) {
            s.deliver(i_new, 0);
            s.deliver(i_new, 1);
        }
        // Node 2 followed the arbiter: the old link went down, the new one is up.
        assert_eq!(s.nodes[1].live(), Some(new));
        assert_eq!(s.nodes[0].live(), Some(new));
        assert_eq!(s.downs, [1, 1]);
        assert_eq!(s.up, [1, 1]);
        // The old Close arriving late changes nothing.
        while !s.conns[i_old].q[1].is_empty() {
            s.deliver(i_old, 1);
        }
        assert_eq!(s.nodes[1].live(), Some(new));
        assert_eq!(s.up, [1, 1]);
    }

    #[test]
    fn the_arbiter_refuses_a_second_link_and_the_follower_replaces_its_old_one() {
        let t0 = Instant::now();
        let mut arb = Peer::new(1, 2, cfg(), 3);
        assert_eq!(arb.set_wanted(t0, true), vec![Action::Dial]);
        assert!(arb.on_connected(t0, 10, Dir::Inbound).is_empty());
        assert!(arb.on_connected(t0, 11, Dir::Outbound).is_empty());
        assert_eq!(arb.on_hello_ok(t0, 10), vec![Action::Accept { link: 10 }]);
        let r = arb.on_hello_ok(t0, 11);
        assert!(
            matches!(
                &r[..],
                [Action::Refuse {
                    link: 11,
                    reason: Refusal::Duplicate { local: 1, peer: 2 }
                }]
            ),
            "{r:?}"
        );
        assert_eq!(arb.stage(), Stage::Handshaking, "reserved until confirmed");
        assert_eq!(arb.on_confirmed(t0, 10), vec![Action::Up { link: 10 }]);
        assert_eq!(arb.live(), Some(10));

        let mut fol = follower_up(t0, 20);
        assert!(fol.on_connected(t0, 21, Dir::Inbound).is_empty());
        let r = fol.on_hello_ok(t0, 21);
        assert_eq!(
            r,
            vec![
                Action::Close {
                    link: 20,
                    why: Ended::Replaced
                },
                Action::Down {
                    why: Ended::Replaced
                },
                Action::Up { link: 21 },
            ]
        );
        assert_eq!(fol.live(), Some(21));
    }

    /// The pause before the next dial after `failure` on a fresh peer, and whether one
    /// is scheduled at all.
    fn pause_after(failure: Failure) -> Option<Duration> {
        let t0 = Instant::now();
        let mut p = Peer::new(2, 1, cfg(), 11);
        assert_eq!(p.set_wanted(t0, true), vec![Action::Dial]);
        assert!(p.on_dial_failed(t0, failure).is_empty());
        p.next_deadline().map(|t| t - t0)
    }

    fn refused_after_hello(reason: Refusal, by_peer: bool) -> (Vec<Action>, Option<Duration>) {
        let t0 = Instant::now();
        let mut p = Peer::new(2, 1, cfg(), 11);
        p.set_wanted(t0, true);
        p.on_connected(t0, 5, Dir::Outbound);
        let a = p.on_refused(t0, 5, reason, by_peer);
        (a, p.next_deadline().map(|t| t - t0))
    }

    #[test]
    fn refusals_stop_or_slow_redial_as_each_should() {
        let (min, max) = (cfg().backoff_min, cfg().backoff_max);
        let normal = |d: Option<Duration>| d.is_some_and(|d| d >= min / 2 && d < min * 3 / 2);
        let slow = |d: Option<Duration>| d.is_some_and(|d| d >= max / 2 && d < max * 3 / 2);
        // Network trouble and passing refusals: the first step.
        assert!(normal(pause_after(Failure::Unreachable)));
        assert!(normal(pause_after(Failure::Refused(Refusal::Duplicate {
            local: 1,
            peer: 2
        }))));
        assert!(normal(pause_after(Failure::Refused(Refusal::ShuttingDown))));
        // Bad key, map differs, unknown node: the longest step at once.
        assert!(slow(pause_after(Failure::Auth)));
        let differs = Refusal::ClusterDiffers {
            peer: "aa".into(),
            ours: "bb".into(),
        };
        assert!(slow(pause_after(Failure::Refused(differs.clone()))));
        assert!(slow(pause_after(Failure::Refused(Refusal::NotListed {
            peer: 2,
            local: 1
        }))));
        // Not omnode at all, or our own id: no more dials.
        assert_eq!(pause_after(Failure::Refused(Refusal::OwnId(2))), None);
        assert_eq!(
            pause_after(Failure::Refused(Refusal::NotOmnode {
                magic: "http".into()
            })),
            None
        );
        // The same through a link that was refused after its Hello: by the peer (nothing
        // to send back), or by us (tell the peer why).
        let (a, d) = refused_after_hello(differs.clone(), true);
        assert!(a.is_empty() && slow(d), "{a:?} {d:?}");
        let (a, d) = refused_after_hello(differs.clone(), false);
        assert_eq!(
            a,
            vec![Action::Refuse {
                link: 5,
                reason: differs
            }]
        );
        assert!(slow(d));
        let (_, d) = refused_after_hello(Refusal::OwnId(2), false);
        assert_eq!(d, None);
    }

    #[test]
    fn a_stopped_peer_stays_quiet_until_rearmed() {
        let t0 = Instant::now();
        let mut p = Peer::new(2, 1, cfg(), 5);
        p.set_wanted(t0, true);
        p.on_dial_failed(t0, Failure::Refused(Refusal::OwnId(2)));
        assert_eq!(p.stage(), Stage::Stopped);
        assert_eq!(dials(&p.on_tick(t0 + 3600 * 1000 * MS)), 0);
        assert_eq!(p.rearm(t0 + 3600 * 1000 * MS), vec![Action::Dial]);
        assert_eq!(p.stage(), Stage::Dialing);
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_seeded_jitter_and_resets_when_up() {
        let t0 = Instant::now();
        let schedule = |seed: u64| {
            let mut p = Peer::new(2, 1, cfg(), seed);
            let mut now = t0;
            p.set_wanted(now, true);
            let mut pauses = Vec::new();
            for _ in 0..8 {
                p.on_dial_failed(now, Failure::Unreachable);
                let at = p.next_deadline().expect("a dial is scheduled");
                // Nothing before the deadline, the dial at it.
                assert_eq!(dials(&p.on_tick(at - MS)), 0);
                assert_eq!(p.on_tick(at), vec![Action::Dial]);
                pauses.push(at - now);
                now = at;
            }
            (p, now, pauses)
        };
        let (mut p, now, pauses) = schedule(42);
        let mut step = cfg().backoff_min;
        for d in &pauses {
            assert!(
                *d >= step / 2 && *d < step * 3 / 2,
                "{d:?} for step {step:?}"
            );
            step = (step * 2).min(cfg().backoff_max);
        }
        // Jitter comes from the seed: the same seed gives the same schedule.
        assert_eq!(schedule(42).2, pauses);
        assert_ne!(schedule(43).2, pauses);
        // A link that comes up and goes down: the next dial after about the first step.
        p.on_connected(now, 1, Dir::Outbound);
        p.on_hello_ok(now, 1);
        let r = p.on_closed(now, 1, Ended::Closed("eof".into()));
        assert!(
            matches!(
                &r[..],
                [Action::Down {
                    why: Ended::Closed(_)
                }]
            ),
            "{r:?}"
        );
        let d = p.next_deadline().unwrap() - now;
        assert!(d < cfg().backoff_min * 3 / 2, "{d:?}");
    }

    #[test]
    fn idle_ends_the_link_exactly_at_the_idle_time_out() {
        let t0 = Instant::now();
        let c = cfg();
        let mut p = follower_up(t0, 1);
        // Keepalives go out every `keepalive` of silence, without keeping the link alive.
        let mut now = t0;
        while now + c.keepalive < t0 + c.idle {
            assert_eq!(p.next_deadline(), Some(now + c.keepalive));
            now += c.keepalive;
            assert_eq!(p.on_tick(now), vec![Action::Keepalive { link: 1 }]);
        }
        assert_eq!(p.next_deadline(), Some(t0 + c.idle));
        let just_before = t0 + c.idle - Duration::from_nanos(1);
        assert!(p.on_tick(just_before).is_empty());
        assert_eq!(p.live(), Some(1));
        let r = p.on_tick(t0 + c.idle);
        let why = Ended::Idle { silent: c.idle };
        assert_eq!(
            r,
            vec![
                Action::Close {
                    link: 1,
                    why: why.clone()
                },
                Action::Down { why }
            ]
        );
        assert_eq!(p.live(), None);
        // A frame received in time pushes death back by the idle time-out.
        let mut p = follower_up(t0, 2);
        p.on_received(t0 + c.idle / 2, 2);
        let r = p.on_tick(t0 + c.idle);
        assert!(!r.iter().any(|a| matches!(a, Action::Down { .. })), "{r:?}");
        assert_eq!(p.live(), Some(2));
    }

    #[test]
    fn unwatched_links_are_left_to_the_shell() {
        let t0 = Instant::now();
        let mut p = Peer::new(
            2,
            1,
            Config {
                watch_liveness: false,
                ..cfg()
            },
            1,
        );
        p.set_wanted(t0, true);
        p.on_connected(t0, 1, Dir::Outbound);
        p.on_hello_ok(t0, 1);
        assert_eq!(p.next_deadline(), None);
        assert!(p.on_tick(t0 + 10 * cfg().idle).is_empty());
        assert_eq!(p.live(), Some(1));
    }

    #[test]
    fn a_link_settled_by_the_shell_replaces_the_others_and_ends_the_attempt() {
        let t0 = Instant::now();
        let mut p = Peer::new(2, 1, cfg(), 4);
        assert_eq!(p.set_wanted(t0, true), vec![Action::Dial]);
        assert_eq!(
            p.on_settled(t0, 7, Dir::Inbound),
            vec![Action::Up { link: 7 }]
        );
        assert_eq!(p.stage(), Stage::Up);
        let r = p.on_settled(t0, 8, Dir::Inbound);
        assert_eq!(
            r,
            vec![
                Action::Close {
                    link: 7,
                    why: Ended::Replaced
                },
                Action::Down {
                    why: Ended::Replaced
                },
                Action::Up { link: 8 },
            ]
        );
        // The attempt is over: once the link ends, a dial comes after about the first step.
        let r = p.on_closed(t0, 8, Ended::Closed("eof".into()));
        assert!(matches!(&r[..], [Action::Down { .. }]), "{r:?}");
        let at = p.next_deadline().expect("re-dial scheduled");
        assert_eq!(p.on_tick(at), vec![Action::Dial]);
    }

    #[test]
    fn a_handshake_that_hangs_is_a_failed_attempt() {
        let t0 = Instant::now();
        let mut p = Peer::new(2, 1, cfg(), 9);
        p.set_wanted(t0, true);
        p.on_connected(t0, 3, Dir::Outbound);
        assert_eq!(p.next_deadline(), Some(t0 + cfg().handshake_timeout));
        let r = p.on_tick(t0 + cfg().handshake_timeout);
        assert_eq!(
            r,
            vec![Action::Close {
                link: 3,
                why: Ended::HandshakeTimeout
            }]
        );
        assert!(matches!(p.stage(), Stage::BackingOff { .. }));
    }

    #[test]
    fn unwanted_peers_lose_their_links_with_one_down() {
        let t0 = Instant::now();
        let mut p = follower_up(t0, 1);
        p.on_connected(t0, 2, Dir::Inbound);
        let r = p.set_wanted(t0, false);
        assert_eq!(
            r,
            vec![
                Action::Close {
                    link: 1,
                    why: Ended::Unwanted
                },
                Action::Down {
                    why: Ended::Unwanted
                },
                Action::Close {
                    link: 2,
                    why: Ended::Unwanted
                },
            ]
        );
        assert_eq!(p.stage(), Stage::Unwanted);
        assert_eq!(p.next_deadline(), None);
        // A dial that connects after that is closed at once.
        let r = p.on_connected(t0, 3, Dir::Outbound);
        assert!(matches!(&r[..], [Action::Close { link: 3, .. }]));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Resolve { node: usize, ok: bool },
        Deliver { conn: usize, node: usize },
        Kill { conn: usize },
        Stall { node: usize },
        Advance { ms: u64 },
        Toggle { node: usize },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            2 => (0..2usize, any::<bool>()).prop_map(|(node, ok)| Op::Resolve { node, ok }),
            8 => (0..8usize, 0..2usize).prop_map(|(conn, node)| Op::Deliver { conn, node }),
            1 => (0..8usize).prop_map(|conn| Op::Kill { conn }),
            1 => (0..2usize).prop_map(|node| Op::Stall { node }),
            2 => (1..200u64).prop_map(|ms| Op::Advance { ms }),
            1 => (1..3000u64).prop_map(|ms| Op::Advance { ms }),
            1 => (0..2usize).prop_map(|node| Op::Toggle { node }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// Random interleavings of dials, deliveries, lost connections, time and wanting:
        /// never two live links on a node, `Up`/`Down` always alternate (checked after
        /// every step), and once both want each other and the network heals, both ends
        /// hold one and the same live link.
        #[test]
        fn random_events_never_leave_two_links_or_none(
            seed in proptest::prelude::any::<u64>(),
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let mut s = Sim::new(seed);
            for o in ops {
                match o {
                    Op::Resolve { node, ok } => s.resolve(node, ok),
                    Op::Deliver { conn, node } => {
                        let n = s.conns.len();
                        if n > 0 {
                            s.deliver(n - 1 - conn % n, node);
                        }
                    }
                    Op::Kill { conn } => {
                        let n = s.conns.len();
                        if n > 0 {
                            s.kill(n - 1 - conn % n);
                        }
                    }
                    Op::Stall { node } => {
                        // One end gives up on its live link; the other hears of it later.
                        if let Some(link) = s.nodes[node].live() {
                            let now = s.now;
                            let a = s.nodes[node].on_stalled(now, link);
                            s.apply(node, a);
                        }
                    }
                    Op::Advance { ms } => s.advance(Duration::from_millis(ms)),
                    Op::Toggle { node } => {
                        let now = s.now;
                        let want = !s.nodes[node].wanted;
                        let a = s.nodes[node].set_wanted(now, want);
                        s.apply(node, a);
                    }
                }
            }
            for k in 0..2 {
                let now = s.now;
                let a = s.nodes[k].set_wanted(now, true);
                s.apply(k, a);
            }
            let kept = s.settle(60 * cfg().idle);
            proptest::prop_assert!(kept.is_some(), "no common link: {:?} / {:?}", s.nodes[0], s.nodes[1]);
            proptest::prop_assert_eq!(s.up, [1, 1]);
        }
    }
}
