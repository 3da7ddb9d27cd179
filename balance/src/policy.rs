//! Which process goes where, and when: openMosix's decisions as plain functions of plain data.
//!
//! The caller (the daemon's migrator each tick, `mosrun` at exec, or the simulator) passes
//! this node's figures and flags ([`Local`]), what it knows of its peers ([`Peer`]: load,
//! up, blocked, measured bandwidth) and the processes that could move ([`Process`]: age, CPU
//! time used, image size, lock, when it arrived here), with an explicit `now`; it gets back
//! [`Decision`]s and carries them out. Nothing here reads a clock or touches a process.
//!
//! # The rules
//!
//! - **Speed a process gets.** On a node with load `L` (runnable processes), capacity `C`
//!   (CPUs' worth) and speed `S` (MHz), one process gets `S × min(1, C / max(L, 1))`
//!   ([`Load::share`]). A process here gets the share at the present load; at a target it
//!   would get the share with one more process (plus the ones we already sent there and the
//!   target has not yet reported: [`Config::pending_for`]).
//! - **Hysteresis.** A target must offer at least [`Config::hysteresis`] times the speed the
//!   process gets here. With exact loads the move back would then need the opposite, so a
//!   process never bounces between two nodes; but loads are gossiped, smoothed and a
//!   little old, and other nodes send too, so on top a process that arrived stays at least
//!   [`Config::min_stay`] and does not go back to the node it came from within
//!   [`Config::return_after`].
//! - **Cost against gain.** The remaining CPU work is estimated from the past (a process
//!   that has used `T` CPU seconds is expected to use about `T` more: the older a process,
//!   the longer it lives), so the expected gain is the time that work takes here minus the
//!   time it takes there. The cost is [`Config::fixed_cost`] plus the image size over the
//!   bandwidth measured to the target ([`Config::default_bandwidth`] if none). A process
//!   moves only when gain > cost × [`Config::cost_factor`]; the process with the best
//!   (gain − cost) moves, to one of its [`Config::choose_among`] best targets (chosen by a
//!   hash of node and pid, so that nodes that know the same idle nodes do not all flock to
//!   the same one).
//! - **Memory ushering.** When free memory falls below [`Config::mem_low`] of the total,
//!   the largest movable processes go to nodes that keep above that mark after taking them,
//!   until enough is freed; the speed it gets there may not be worse than here.
//! - **Flags.** Node `stay`: no automatic moves at all. Node `lstay`: processes whose home
//!   is this node stay. Process `lock` (`mosrun -L`): stays. A `blocked` or down peer is
//!   never a target; this node's `block` makes [`accept`] refuse every guest.
//! - **Refusal.** A target re-checks with its own fresh figures ([`accept`]) and may refuse;
//!   [`Balancer::on_refused`] then keeps it out of the choice for [`Config::refuse_backoff`].
//! - **Placement.** [`Balancer::place`] picks the node for a new process at `mosrun` with the
//!   same speed comparison (its image at exec is tiny, so cost is not counted).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::load::Load;

/// The knobs of the policy; [`Config::default`] holds openMosix-like values.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// A target must offer at least this factor more speed per process (> 1).
    pub hysteresis: f64,
    /// A target takes a process when, by its fresh figures, it offers at least this factor
    /// more speed than the sender (between 1 and `hysteresis`: the sender's figures for it
    /// were older).
    pub accept_margin: f64,
    /// The expected gain must exceed the cost times this.
    pub cost_factor: f64,
    /// Cost of any migration besides moving the image (freeze, set-up).
    pub fixed_cost: Duration,
    /// Bandwidth (bytes/s) assumed towards a node never measured.
    pub default_bandwidth: f64,
    /// A process that arrived stays at least this long.
    pub min_stay: Duration,
    /// A process does not go back to the node it came from within this time of arriving.
    pub return_after: Duration,
    /// Memory ushering starts when free memory is below this fraction of the total.
    pub mem_low: f64,
    /// At most this many load decisions per tick (memory ushering comes on top).
    pub max_moves: usize,
    /// A process goes to one of this many best targets, chosen by a hash of (node, pid),
    /// so that nodes knowing the same least loaded nodes do not all pick the same (1: always
    /// the best).
    pub choose_among: usize,
    /// A target that refused is not chosen again for this long.
    pub refuse_backoff: Duration,
    /// A process sent to a node counts in that node's load for this long.
    pub pending_for: Duration,
    /// A target takes no guest while it runs more than this many runnable processes per
    /// CPU of capacity, the guest counted ([`admit`]).
    pub max_load_per_cpu: f64,
    /// The margin of free memory a target keeps after taking a guest is the low-water mark
    /// ([`Config::mem_low`] of its total), but at most this many bytes (a large machine
    /// need not keep gigabytes free).
    pub max_mem_margin: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hysteresis: 1.3,
            accept_margin: 1.1,
            cost_factor: 2.0,
            fixed_cost: Duration::from_millis(100),
            default_bandwidth: 100e6,
            min_stay: Duration::from_secs(5),
            return_after: Duration::from_secs(30),
            mem_low: 0.10,
            max_moves: 1,
            choose_among: 3,
            refuse_backoff: Duration::from_secs(10),
            pending_for: Duration::from_secs(3),
            max_load_per_cpu: 16.0,
            max_mem_margin: 256 << 20,
        }
    }
}

/// This node's administrative flags (`mosctl stay`, `lstay`, `block`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Flags {
    /// No automatic migration away from this node.
    pub stay: bool,
    /// Processes whose home is this node stay here.
    pub lstay: bool,
    /// No guest processes are accepted.
    pub block: bool,
}

/// This node as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Local {
    pub id: NodeId,
    pub load: Load,
    pub flags: Flags,
}

/// A peer as the decision sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peer {
    pub id: NodeId,
    pub load: Load,
    pub up: bool,
    /// The peer said `block`: it takes no guests.
    pub blocked: bool,
    /// Measured bandwidth towards it, bytes/s.
    pub bandwidth: Option<f64>,
}

/// A process that could move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Process {
    pub pid: u32,
    /// Where it was started.
    pub home: NodeId,
    /// Time since it started.
    pub age: Duration,
    /// CPU time it has used.
    pub cpu: Duration,
    /// Bytes its image takes to move.
    pub size: u64,
    /// `mosrun -L` / lock: never moved automatically.
    pub lock: bool,
    /// When it arrived on this node; None when it was started here and never left.
    pub arrived: Option<Instant>,
    /// The node it came from (with `arrived`).
    pub came_from: Option<NodeId>,
}

/// Why a process is to move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// Expected time saved and the cost of moving.
    Load { gain: Duration, cost: Duration },
    /// Memory ushering: free memory here and the low-water mark.
    Memory { free: u64, low: u64 },
}

/// Move process `pid` to node `to`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub pid: u32,
    pub to: NodeId,
    pub reason: Reason,
}

/// Why a target refuses a process.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("node {node} is blocked (mosctl block): it takes no guests")]
    Blocked { node: NodeId },
    #[error(
        "node {node} has {free} bytes of memory free, {needed} needed (the process and the margin the node keeps)"
    )]
    NoMemory {
        node: NodeId,
        free: u64,
        needed: u64,
    },
    #[error(
        "node {node} is no faster for it any more: {there:.0} MHz there against {here:.0} MHz at the sender"
    )]
    Busy { node: NodeId, there: f64, here: f64 },
    #[error(
        "node {node} is loaded: {per_cpu:.1} runnable processes per CPU with the guest, more than its limit of {limit:.1}"
    )]
    Loaded {
        node: NodeId,
        per_cpu: f64,
        limit: f64,
    },
}

/// What the sender tells a target when asking it to take a process.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    pub from: NodeId,
    /// The sender's figures now, the process still counted there.
    pub from_load: Load,
    pub size: u64,
    /// Memory ushering: speed need not improve, memory must fit.
    pub memory: bool,
}

/// The target's check of an [`Offer`], with its own fresh figures.
pub fn accept(cfg: &Config, me: &Local, offer: &Offer) -> Result<(), Refusal> {
    if me.flags.block {
        return Err(Refusal::Blocked { node: me.id });
    }
    let low = low_water(cfg, &me.load);
    let needed = offer.size.saturating_add(low);
    if me.load.free_mem < needed {
        return Err(Refusal::NoMemory {
            node: me.id,
            free: me.load.free_mem,
            needed,
        });
    }
    let (there, here) = (me.load.share(1.0), offer.from_load.share(0.0));
    // Memory ushering only asks not to be slower; a load move asks to be faster by the
    // accept margin (the sender applied the full hysteresis with older figures).
    let ok = if offer.memory {
        there >= here
    } else {
        there > here * cfg.accept_margin.max(1.0)
    };
    if !ok {
        return Err(Refusal::Busy {
            node: me.id,
            there,
            here,
        });
    }
    Ok(())
}

/// Whether this node takes a guest of `size` bytes now, by its own fresh figures alone (the
/// check every arriving process passes, whoever sent it and why): not blocked, free memory
/// (its own cgroup's when it runs in one) of at least `size` plus its margin
/// ([`guest_margin`]), and at most [`Config::max_load_per_cpu`] runnable per CPU of capacity
/// with the guest counted. A load figure that is not a number refuses (fail closed).
pub fn admit(cfg: &Config, me: &Local, size: u64) -> Result<(), Refusal> {
    if me.flags.block {
        return Err(Refusal::Blocked { node: me.id });
    }
    let needed = size.saturating_add(guest_margin(cfg, &me.load));
    if me.load.free_mem < needed {
        return Err(Refusal::NoMemory {
            node: me.id,
            free: me.load.free_mem,
            needed,
        });
    }
    let per_cpu = (me.load.load + 1.0) / me.load.capacity();
    // a figure that is not a number is no figure: it refuses too
    let within = per_cpu.is_finite() && per_cpu <= cfg.max_load_per_cpu;
    if within {
        Ok(())
    } else {
        Err(Refusal::Loaded {
            node: me.id,
            per_cpu,
            limit: cfg.max_load_per_cpu,
        })
    }
}

/// The free memory a node keeps after taking a guest: the low-water mark, capped.
pub fn guest_margin(cfg: &Config, l: &Load) -> u64 {
    low_water(cfg, l).min(cfg.max_mem_margin)
}

/// A fixed mix of node and pid (splitmix64 finaliser): deterministic, differs per node.
fn spread_hash(node: NodeId, pid: u32) -> u64 {
    let mut z = (u64::from(node) << 32 | u64::from(pid)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn low_water(cfg: &Config, l: &Load) -> u64 {
    (l.total_mem as f64 * cfg.mem_low.clamp(0.0, 1.0)) as u64
}

/// The decision state of one node: what it sent recently (counted in the targets' loads
/// until they report) and who refused it.
#[derive(Debug, Clone)]
pub struct Balancer {
    cfg: Config,
    /// (target, when sent, bytes)
    pending: Vec<(NodeId, Instant, u64)>,
    /// target → refused until
    refused: BTreeMap<NodeId, Instant>,
}

/// A peer with what we sent it added.
#[derive(Debug, Clone, Copy)]
struct Target {
    id: NodeId,
    load: Load,
    bandwidth: f64,
}

impl Balancer {
    pub fn new(cfg: Config) -> Self {
        Balancer {
            cfg,
            pending: Vec::new(),
            refused: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The target refused (or the move failed): leave it alone for a while.
    pub fn on_refused(&mut self, to: NodeId, now: Instant) {
        self.refused.insert(to, now + self.cfg.refuse_backoff);
        if let Some(i) = self.pending.iter().rposition(|p| p.0 == to) {
            self.pending.remove(i);
        }
    }

    fn expire(&mut self, now: Instant) {
        let pending_for = self.cfg.pending_for;
        self.pending
            .retain(|p| now.saturating_duration_since(p.1) < pending_for);
        self.refused.retain(|_, until| *until > now);
    }

    /// Peers that may receive a process, with what we sent them counted in.
    fn targets(&self, local: NodeId, peers: &[Peer], now: Instant) -> Vec<Target> {
        // one entry per node: the first given counts
        let mut firsts: Vec<&Peer> = peers.iter().collect();
        firsts.sort_by_key(|p| p.id);
        firsts.dedup_by_key(|p| p.id);
        firsts
            .into_iter()
            .filter(|p| p.up && !p.blocked && p.id != local)
            .filter(|p| self.refused.get(&p.id).is_none_or(|until| *until <= now))
            .filter(|p| p.load.load.is_finite())
            .map(|p| {
                let mut load = p.load;
                for (_, _, bytes) in self.pending.iter().filter(|s| s.0 == p.id) {
                    load.load += 1.0;
                    load.free_mem = load.free_mem.saturating_sub(*bytes);
                }
                Target {
                    id: p.id,
                    load,
                    bandwidth: p
                        .bandwidth
                        .filter(|b| b.is_finite() && *b > 0.0)
                        .unwrap_or(self.cfg.default_bandwidth),
                }
            })
            .collect()
    }

    fn movable<'a>(&self, local: &Local, procs: &'a [Process], now: Instant) -> Vec<&'a Process> {
        procs
            .iter()
            .filter(|p| !p.lock)
            .filter(|p| !(local.flags.lstay && p.home == local.id))
            .filter(|p| {
                p.arrived
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.min_stay)
            })
            .collect()
    }

    /// Whether `p` may go to `to` now (not straight back where it came from).
    fn may_go(&self, p: &Process, to: NodeId, now: Instant) -> bool {
        match (p.came_from, p.arrived) {
            (Some(from), Some(at)) if from == to => {
                now.saturating_duration_since(at) >= self.cfg.return_after
            }
            _ => true,
        }
    }

    /// One balancing round: the moves to make now (at most [`Config::max_moves`] for load,
    /// plus what memory ushering needs).
    pub fn on_tick(
        &mut self,
        now: Instant,
        local: &Local,
        peers: &[Peer],
        procs: &[Process],
    ) -> Vec<Decision> {
        self.expire(now);
        if local.flags.stay {
            return Vec::new();
        }
        let mut targets = self.targets(local.id, peers, now);
        let mut movable = self.movable(local, procs, now);
        let mut me = local.load;
        let mut out = Vec::new();

        // Memory ushering: largest first, to the node with most room that is not slower.
        let low = low_water(&self.cfg, &me);
        if me.free_mem < low {
            movable.sort_by(|a, b| b.size.cmp(&a.size).then(a.pid.cmp(&b.pid)));
            let mut i = 0;
            while me.free_mem < low && i < movable.len() {
                let p = movable[i];
                let here = me.share(0.0);
                let best = targets
                    .iter_mut()
                    .filter(|t| {
                        self.may_go(p, t.id, now)
                            && t.load.free_mem
                                >= p.size.saturating_add(low_water(&self.cfg, &t.load))
                            && t.load.share(1.0) >= here
                    })
                    .max_by(|a, b| {
                        let room = |t: &Target| t.load.free_mem - p.size;
                        room(a).cmp(&room(b)).then(b.id.cmp(&a.id))
                    });
                if let Some(t) = best {
                    out.push(Decision {
                        pid: p.pid,
                        to: t.id,
                        reason: Reason::Memory {
                            free: me.free_mem,
                            low,
                        },
                    });
                    self.pending.push((t.id, now, p.size));
                    t.load.load += 1.0;
                    t.load.free_mem -= p.size;
                    me.free_mem = me.free_mem.saturating_add(p.size).min(me.total_mem);
                    me.load = (me.load - 1.0).max(0.0);
                    movable.remove(i);
                } else {
                    i += 1;
                }
            }
        }

        // Load: the best (gain − cost) over every movable process and target.
        for _ in 0..self.cfg.max_moves {
            let mut best: Option<(f64, usize, usize, Duration, Duration)> = None;
            for (pi, p) in movable.iter().enumerate() {
                for (ti, t) in targets.iter().enumerate() {
                    if !self.may_go(p, t.id, now) {
                        continue;
                    }
                    if let Some((gain, cost)) = self.worth(&me, p, t) {
                        let net = gain - cost;
                        let better = match best {
                            None => true,
                            Some((b, bpi, bti, ..)) => {
                                net > b
                                    || (net == b
                                        && (movable[pi].pid, targets[ti].id)
                                            < (movable[bpi].pid, targets[bti].id))
                            }
                        };
                        if better {
                            best = Some((
                                net,
                                pi,
                                ti,
                                Duration::from_secs_f64(gain),
                                Duration::from_secs_f64(cost),
                            ));
                        }
                    }
                }
            }
            let Some((_, pi, mut ti, mut gain, mut cost)) = best else {
                break;
            };
            // Spread: every node sees the same least-loaded nodes, so each picks among the
            // `choose_among` best targets for this process by a hash of (node, pid), not
            // always the very best (which would make them all flock to one node).
            if self.cfg.choose_among > 1 {
                let p = movable[pi];
                let mut good: Vec<(f64, usize, f64, f64)> = targets
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| self.may_go(p, t.id, now))
                    .filter_map(|(i, t)| self.worth(&me, p, t).map(|(g, c)| (g - c, i, g, c)))
                    .collect();
                good.sort_by(|a, b| {
                    b.0.total_cmp(&a.0)
                        .then(targets[a.1].id.cmp(&targets[b.1].id))
                });
                good.truncate(self.cfg.choose_among);
                let pick = spread_hash(local.id, p.pid) as usize % good.len().max(1);
                if let Some(&(_, i, g, c)) = good.get(pick) {
                    ti = i;
                    gain = Duration::from_secs_f64(g);
                    cost = Duration::from_secs_f64(c);
                }
            }
            let p = movable.remove(pi);
            let t = &mut targets[ti];
            out.push(Decision {
                pid: p.pid,
                to: t.id,
                reason: Reason::Load { gain, cost },
            });
            self.pending.push((t.id, now, p.size));
            t.load.load += 1.0;
            t.load.free_mem = t.load.free_mem.saturating_sub(p.size);
            me.load = (me.load - 1.0).max(0.0);
        }
        out
    }

    /// (gain, cost) in seconds when moving `p` from `me` to `t` is worth it.
    fn worth(&self, me: &Load, p: &Process, t: &Target) -> Option<(f64, f64)> {
        if t.load.free_mem < p.size.saturating_add(low_water(&self.cfg, &t.load)) {
            return None;
        }
        let here = me.share(0.0);
        let there = t.load.share(1.0);
        // (NaN compares false: no move)
        let faster = there > here * self.cfg.hysteresis.max(1.0);
        if !faster {
            return None;
        }
        // remaining work ≈ the CPU time used so far, at this node's per-CPU speed
        let work = p.cpu.as_secs_f64() * f64::from(me.speed.max(1));
        let gain = work / here - work / there;
        let cost = self.cfg.fixed_cost.as_secs_f64() + p.size as f64 / t.bandwidth;
        (gain.is_finite() && gain > cost * self.cfg.cost_factor).then_some((gain, cost))
    }

    /// Where a new process (`mosrun` without a node flag) should start: the node that gives
    /// it the most speed, if that beats this node by the hysteresis; else this node. The
    /// choice counts as sent (it raises that node's load until it reports).
    pub fn place(&mut self, now: Instant, local: &Local, peers: &[Peer], size: u64) -> NodeId {
        self.expire(now);
        if local.flags.stay || local.flags.lstay {
            return local.id;
        }
        let here = local.load.share(1.0);
        let best = self
            .targets(local.id, peers, now)
            .into_iter()
            .filter(|t| t.load.free_mem >= size.saturating_add(low_water(&self.cfg, &t.load)))
            .map(|t| (t.load.share(1.0), t.id))
            .filter(|(s, _)| *s > here * self.cfg.hysteresis.max(1.0))
            .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        match best {
            Some((_, id)) => {
                self.pending.push((id, now, size));
                id
            }
            None => local.id,
        }
    }
}

#[cfg(test)]
mod tests;
