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

use crate::NodeId;

/// Weight of a rising sample (see the module documentation).
pub const ALPHA: f64 = 1.0 / 8.0;
/// Suggested age after which a load entry is dropped (ten 1 s ticks).
pub const DEFAULT_STALENESS: Duration = Duration::from_secs(10);
/// Suggested number of peers to gossip to per tick.
pub const DEFAULT_FANOUT: usize = 2;

/// One node's load figures, as gossiped on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Load {
    /// Smoothed number of runnable (cluster) processes.
    pub load: f64,
    /// Number of CPUs.
    pub cpus: u32,
    /// CPU speed figure (higher is faster; e.g. MHz or a bogomips-like score).
    pub speed: u32,
    /// Free memory, bytes.
    pub free_mem: u64,
    /// Total memory, bytes.
    pub total_mem: u64,
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
