//! Load figures, openMosix-style smoothing, the load vector and gossip target choice.
//!
//! Pure functions and plain data: the daemon's load monitor measures, calls [`smooth`] (or a
//! [`Smoother`]), stores its own and its peers' figures in a [`LoadVector`], and each tick
//! sends [`LoadVector::gossip`] to the peers [`pick_gossip_targets`] chooses (openMosix's
//! probabilistic dissemination: a few random peers per tick, never a broadcast).
//!
//! # Smoothing
//!
//! The load is an exponential average that rises slowly and falls at once:
//!
//! ```text
//! new = if sample <= old { sample } else { old + (sample - old) * ALPHA }     ALPHA = 1/8
//! ```
//!
//! A short burst barely raises the advertised load (other nodes do not flee from or flock to
//! a node because of a spike), while a node that became idle says so at once (so it is chosen
//! as a target quickly). A steady load `L` is reached within about 5% after 23 samples
//! (`(7/8)^23 ≈ 0.046`). Non-finite samples are ignored and negative ones count as 0.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use discovery::NodeId;

/// Weight of a rising sample (see the module documentation).
pub const ALPHA: f64 = 1.0 / 8.0;
/// Suggested age after which a load entry is dropped (ten 1 s ticks).
pub const DEFAULT_STALENESS: Duration = Duration::from_secs(10);
/// Suggested number of peers to gossip to per tick.
pub const DEFAULT_FANOUT: usize = 2;
/// Suggested number of entries per gossip message ([`LoadVector::gossip_window`]).
pub const DEFAULT_WINDOW: usize = 16;

/// The speed figure a normalised load is expressed in: one CPU of 1000 MHz.
pub const REFERENCE_SPEED: f64 = 1000.0;

/// One node's load figures, as gossiped on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Load {
    /// Smoothed number of runnable (cluster) processes.
    pub load: f64,
    /// Number of CPUs the node may run on (a cgroup's cpuset, else the machine's).
    pub cpus: u32,
    /// CPU speed figure per CPU (higher is faster; MHz, or bogomips when no MHz is given).
    pub speed: u32,
    /// Free memory, bytes (a cgroup's limit minus its usage when it has a limit).
    pub free_mem: u64,
    /// Total memory, bytes (a cgroup's memory limit when lower than the machine's).
    pub total_mem: u64,
    /// CPU capacity in CPUs' worth of time: a cgroup's quota / period when it has one,
    /// else `cpus`. 0 means "not given" (an old peer): [`Load::capacity`] then uses `cpus`.
    #[serde(default)]
    pub capacity: f64,
}

impl Load {
    /// CPUs' worth of time this node can give (at least a tiny positive figure, so that
    /// divisions stay finite; a node reporting nothing is treated as nearly powerless).
    pub fn capacity(&self) -> f64 {
        let c = if self.capacity.is_finite() && self.capacity > 0.0 {
            self.capacity
        } else {
            f64::from(self.cpus)
        };
        c.max(1e-3)
    }

    /// Computing power: capacity × speed (MHz·CPUs), at least a tiny positive figure.
    pub fn power(&self) -> f64 {
        (self.capacity() * f64::from(self.speed.max(1))).max(1e-3)
    }

    /// The load normalised by speed: runnable processes per [`REFERENCE_SPEED`] of power,
    /// so that a node twice as fast (or with twice the CPUs) shows half the figure for the
    /// same processes and unequal nodes compare fairly.
    pub fn normalised(&self) -> f64 {
        self.load.max(0.0) * REFERENCE_SPEED / self.power()
    }

    /// The speed (MHz) one process gets here when `extra` processes are added to the
    /// present load: a full CPU while there are fewer processes than CPUs, else a share.
    pub fn share(&self, extra: f64) -> f64 {
        let n = (self.load.max(0.0) + extra).max(1.0);
        let per_cpu = (self.capacity() / n).min(1.0);
        f64::from(self.speed.max(1)) * per_cpu
    }
}

/// One smoothing step with [`ALPHA`]: rises slowly, falls at once.
pub fn smooth(old: f64, sample: f64) -> f64 {
    smooth_with(old, sample, ALPHA)
}

/// One smoothing step with weight `alpha` (0 < alpha ≤ 1) for a rising sample.
pub fn smooth_with(old: f64, sample: f64, alpha: f64) -> f64 {
    if !sample.is_finite() {
        return old;
    }
    let sample = sample.max(0.0);
    if !old.is_finite() || sample <= old {
        sample
    } else {
        old + (sample - old) * alpha
    }
}

/// A running smoothed value. The first sample is taken as it is (a node that starts busy
/// does not claim to be idle for its first seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Smoother {
    value: Option<f64>,
    alpha: f64,
}

impl Default for Smoother {
    fn default() -> Self {
        Smoother::new(ALPHA)
    }
}

impl Smoother {
    pub fn new(alpha: f64) -> Self {
        Smoother { value: None, alpha }
    }

    /// Feeds a sample; returns the new smoothed value.
    pub fn update(&mut self, sample: f64) -> f64 {
        let v = match self.value {
            None if sample.is_finite() => sample.max(0.0),
            None => 0.0,
            Some(old) => smooth_with(old, sample, self.alpha),
        };
        self.value = Some(v);
        v
    }

    /// The current value (None before the first sample).
    pub fn value(&self) -> Option<f64> {
        self.value
    }
}

/// A load entry as sent to peers: the figures and how old they are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GossipEntry {
    pub id: NodeId,
    pub load: Load,
    /// Age of the figures when sent, in milliseconds.
    pub age_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    load: Load,
    measured: Instant,
}

/// Per-node load figures with their age; an entry `staleness` old or older is no longer
/// reported and is dropped by [`LoadVector::expire`].
#[derive(Debug, Clone)]
pub struct LoadVector {
    staleness: Duration,
    entries: BTreeMap<NodeId, Entry>,
}

impl Default for LoadVector {
    fn default() -> Self {
        LoadVector::new(DEFAULT_STALENESS)
    }
}

impl LoadVector {
    pub fn new(staleness: Duration) -> Self {
        LoadVector {
            staleness,
            entries: BTreeMap::new(),
        }
    }

    pub fn staleness(&self) -> Duration {
        self.staleness
    }

    /// Figures measured now (the node's own, or received directly from `id`).
    pub fn update(&mut self, id: NodeId, load: Load, now: Instant) {
        self.entries.insert(
            id,
            Entry {
                load,
                measured: now,
            },
        );
    }

    /// Figures about `id` that were already `age` old when they reached us. Kept only if
    /// newer than what we hold and not already stale; returns whether they were kept.
    pub fn merge(&mut self, id: NodeId, load: Load, age: Duration, now: Instant) -> bool {
        if age >= self.staleness {
            return false;
        }
        let Some(measured) = now.checked_sub(age) else {
            return false;
        };
        match self.entries.get(&id) {
            Some(e) if e.measured >= measured => false,
            _ => {
                self.entries.insert(id, Entry { load, measured });
                true
            }
        }
    }

    /// Merges a peer's [`LoadVector::gossip`], skipping entries about `local` (we know our own
    /// load best). Returns how many entries were kept.
    pub fn merge_gossip(&mut self, entries: &[GossipEntry], local: NodeId, now: Instant) -> usize {
        entries
            .iter()
            .filter(|e| e.id != local)
            .filter(|e| self.merge(e.id, e.load, Duration::from_millis(e.age_ms), now))
            .count()
    }

    fn fresh(&self, e: &Entry, now: Instant) -> Option<Duration> {
        let age = now.saturating_duration_since(e.measured);
        (age < self.staleness).then_some(age)
    }

    /// The figures for `id` and their age, if held and not stale.
    pub fn get(&self, id: NodeId, now: Instant) -> Option<(Load, Duration)> {
        let e = self.entries.get(&id)?;
        self.fresh(e, now).map(|age| (e.load, age))
    }

    /// Fresh entries, by increasing id: `(id, load, age)`.
    pub fn iter(&self, now: Instant) -> impl Iterator<Item = (NodeId, Load, Duration)> + '_ {
        self.entries
            .iter()
            .filter_map(move |(&id, e)| self.fresh(e, now).map(|age| (id, e.load, age)))
    }

    /// Fresh entries as they go on the wire.
    pub fn gossip(&self, now: Instant) -> Vec<GossipEntry> {
        self.iter(now)
            .map(|(id, load, age)| GossipEntry {
                id,
                load,
                age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            })
            .collect()
    }

    /// A bounded gossip message, openMosix's load window: the sender's own entry first, then
    /// the `max - 1` fresh entries with the lowest normalised load (ties: younger first, then
    /// lower id). Its size does not grow with the cluster, and the least-loaded nodes, the
    /// ones everybody wants to hear about, spread fastest.
    pub fn gossip_window(&self, local: NodeId, max: usize, now: Instant) -> Vec<GossipEntry> {
        let entry = |id, load, age: Duration| GossipEntry {
            id,
            load,
            age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        };
        let mut out: Vec<GossipEntry> = Vec::with_capacity(max);
        if max == 0 {
            return out;
        }
        if let Some((l, age)) = self.get(local, now) {
            out.push(entry(local, l, age));
        }
        let mut rest: Vec<GossipEntry> = self
            .iter(now)
            .filter(|(id, _, _)| *id != local)
            .map(|(id, l, age)| entry(id, l, age))
            .collect();
        let order = |a: &GossipEntry, b: &GossipEntry| {
            a.load
                .normalised()
                .total_cmp(&b.load.normalised())
                .then(a.age_ms.cmp(&b.age_ms))
                .then(a.id.cmp(&b.id))
        };
        let room = max - out.len();
        // the `room` smallest in linear time, then only those sorted
        if rest.len() > room && room > 0 {
            rest.select_nth_unstable_by(room - 1, order);
            rest.truncate(room);
        }
        rest.sort_unstable_by(order);
        out.extend(rest.into_iter().take(room));
        out
    }

    /// Drops stale entries; returns their ids, increasing.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let stale: Vec<NodeId> = self
            .entries
            .iter()
            .filter(|(_, e)| self.fresh(e, now).is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in &stale {
            self.entries.remove(id);
        }
        stale
    }

    /// Forgets `id` (e.g. when membership marks it down).
    pub fn remove(&mut self, id: NodeId) -> Option<Load> {
        self.entries.remove(&id).map(|e| e.load)
    }

    /// Number of entries held, stale ones not yet expired included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Up to `k` distinct peers chosen at random from `peers_up`, never `local`; duplicates in
/// `peers_up` count once. Fewer than `k` when there are not enough peers. Random order.
pub fn pick_gossip_targets<R: Rng + ?Sized>(
    rng: &mut R,
    local: NodeId,
    peers_up: &[NodeId],
    k: usize,
) -> Vec<NodeId> {
    let mut pool: Vec<NodeId> = peers_up.iter().copied().filter(|&id| id != local).collect();
    pool.sort_unstable();
    pool.dedup();
    pool.choose_multiple(rng, k).copied().collect()
}

#[cfg(test)]
mod tests;
