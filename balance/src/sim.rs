//! A simulated cluster that runs the very decision code of the daemons ([`crate::policy`],
//! [`crate::load`]) in simulated time, to see how it scales and how close to ideal it gets.
//!
//! Time advances in ticks of one second. Each tick: jobs arrive at their home nodes and are
//! placed; every node shares its power among its runnable jobs (`speed × min(1, C / n)` each);
//! finished jobs leave; every node measures and smooths its load, gossips a bounded window of
//! its load vector to [`load::DEFAULT_FANOUT`] random peers (which answer with theirs when
//! [`Scenario::pull`] is set); every node with jobs runs
//! [`Balancer::on_tick`] on what it knows, the target checks with [`policy::accept`] on its
//! true figures, and an accepted job is frozen for the cost of moving (fixed + size /
//! bandwidth) and then runs at the target.
//!
//! Three ways to run the same workload ([`Mode`]): no balancing (jobs run where they
//! arrive), perfect knowledge (a central placer that sees every node's exact load puts each
//! job where it gets most speed; no migration), and omnode (placement at the home node from
//! its gossiped view, then migration). The report compares their makespans with a lower
//! bound ([`ideal_makespan`]) no schedule can beat.
//!
//! Deterministic for a given [`Scenario`] (seeded random numbers, ordered iteration).

// Nodes are indices into several parallel arrays (specs, vectors, smoothers, balancers).
#![allow(clippy::needless_range_loop)]

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::NodeId;
use crate::load::{self, Load, LoadVector, Smoother};
use crate::policy::{self, Balancer, Config, Flags, Local, Offer, Peer, Process};

/// A node of the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeSpec {
    pub speed: u32,
    pub capacity: f64,
}

/// A job: arrives at `home` at `arrival` (s) and needs `work` MHz·s of CPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobSpec {
    pub home: usize,
    pub arrival: f64,
    pub work: f64,
    pub size: u64,
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub nodes: Vec<NodeSpec>,
    pub jobs: Vec<JobSpec>,
    pub seed: u64,
    /// Bandwidth between any two nodes, bytes/s.
    pub bandwidth: f64,
    pub config: Config,
    /// Give up after this many ticks.
    pub max_ticks: u64,
    /// Push-pull gossip: a node answers each push with its own window. Off by default, as
    /// in the daemon: knowledge spreads faster but more senders flock to the same nodes
    /// (BENCHMARKS.md).
    pub pull: bool,
}

impl Scenario {
    /// `n` nodes of mixed power (speeds 1000/2000/3000 MHz, capacities 1/2/4 CPUs), `jobs`
    /// jobs arriving during the first `window` seconds (uniformly) at one node in sixteen
    /// (the "login nodes"), work exponential with mean `mean_work` MHz·s, images 8–256 MiB.
    pub fn mixed(n: usize, jobs: usize, window: f64, mean_work: f64, seed: u64) -> Scenario {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes: Vec<NodeSpec> = (0..n)
            .map(|_| NodeSpec {
                speed: [1000, 2000, 3000][rng.gen_range(0..3)],
                capacity: [1.0, 2.0, 4.0][rng.gen_range(0..3)],
            })
            .collect();
        let logins = n.div_ceil(16);
        let mut js: Vec<JobSpec> = (0..jobs)
            .map(|_| {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                JobSpec {
                    home: rng.gen_range(0..logins) * 16 % n,
                    arrival: if window > 0.0 {
                        rng.gen_range(0.0..window)
                    } else {
                        0.0
                    },
                    work: -u.ln() * mean_work,
                    size: rng.gen_range(8u64..=256) << 20,
                }
            })
            .collect();
        js.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
        Scenario {
            nodes,
            jobs: js,
            seed,
            bandwidth: 125e6,
            config: Config::default(),
            max_ticks: 1_000_000,
            pull: false,
        }
    }
}

/// How jobs are placed and moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every job runs where it arrived.
    None,
    /// A central placer with every node's exact load; no migration.
    Perfect,
    /// Placement at the home node from its gossiped view, then migration by the policy.
    Omnode,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub mode: Mode,
    /// Time the last job finished, s.
    pub makespan: f64,
    /// Mean time from arrival to finish, s.
    pub mean_response: f64,
    pub migrations: u64,
    /// Most migrations of any one job.
    pub max_moves_per_job: u32,
    /// Migrations back to the node a job left less than 30 s before (ping-pong).
    pub bounces: u64,
    pub refusals: u64,
    /// Jobs placed away from home at arrival.
    pub remote_placements: u64,
    /// Gossip messages sent per node per second of simulated time.
    pub gossip_per_node_s: f64,
    /// Largest gossip message, entries.
    pub max_gossip_entries: usize,
    pub ticks: u64,
}

/// A lower bound of the makespan no schedule beats: every job needs at least its work at
/// the fastest per-CPU speed after its arrival, and the work arriving from any moment on
/// needs at least that work over the cluster's whole power.
pub fn ideal_makespan(s: &Scenario) -> f64 {
    let power: f64 = s
        .nodes
        .iter()
        .map(|n| f64::from(n.speed) * n.capacity)
        .sum();
    let fastest = s
        .nodes
        .iter()
        .map(|n| f64::from(n.speed) * n.capacity.min(1.0))
        .fold(0.0, f64::max);
    let mut jobs: Vec<&JobSpec> = s.jobs.iter().collect();
    jobs.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    let mut bound: f64 = jobs
        .iter()
        .map(|j| j.arrival + j.work / fastest)
        .fold(0.0, f64::max);
    let mut rest: f64 = jobs.iter().map(|j| j.work).sum();
    for j in jobs {
        bound = bound.max(j.arrival + rest / power);
        rest -= j.work;
    }
    bound
}

#[derive(Debug, Clone)]
struct Job {
    spec: JobSpec,
    node: usize,
    left: f64,
    cpu: f64,
    /// Frozen (moving) until this time.
    frozen_until: f64,
    /// Arrived at `node` at this time (by migration).
    arrived: Option<f64>,
    moves: u32,
    /// The node it last left, and when.
    left_node: Option<(usize, f64)>,
    done: Option<f64>,
}

/// Runs `s` in `mode`.
pub fn run(s: &Scenario, mode: Mode) -> Report {
    let n = s.nodes.len();
    let mut rng = StdRng::seed_from_u64(s.seed ^ 0x5eed);
    let t0 = Instant::now();
    let at = |t: f64| t0 + Duration::from_secs_f64(t.max(0.0));
    let mut jobs: Vec<Job> = Vec::with_capacity(s.jobs.len());
    let mut next_arrival = 0usize;
    let mut vectors: Vec<LoadVector> = (0..n).map(|_| LoadVector::default()).collect();
    let mut smoothers: Vec<Smoother> = vec![Smoother::default(); n];
    let mut balancers: Vec<Balancer> = (0..n).map(|_| Balancer::new(s.config.clone())).collect();
    let ids: Vec<NodeId> = (0..n as NodeId).collect();
    // runnable jobs per node, kept up to date
    let mut running = vec![0usize; n];
    let mut report = Report {
        mode,
        makespan: 0.0,
        mean_response: 0.0,
        migrations: 0,
        max_moves_per_job: 0,
        bounces: 0,
        refusals: 0,
        remote_placements: 0,
        gossip_per_node_s: 0.0,
        max_gossip_entries: 0,
        ticks: 0,
    };
    let mut gossip_sent = 0u64;
    let mut finished = 0usize;
    let mut tick = 0u64;
    let figures = |i: usize, runnable: f64| -> Load {
        let spec = s.nodes[i];
        Load {
            load: runnable,
            cpus: spec.capacity.ceil() as u32,
            speed: spec.speed,
            free_mem: 64 << 30,
            total_mem: 128 << 30,
            capacity: spec.capacity,
        }
    };
    while finished < s.jobs.len() && tick < s.max_ticks {
        let t = tick as f64;
        let now = at(t);
        // 1. arrivals up to the end of this tick, placed
        while next_arrival < s.jobs.len() && s.jobs[next_arrival].arrival < t + 1.0 {
            let spec = s.jobs[next_arrival];
            next_arrival += 1;
            let node = match mode {
                Mode::None => spec.home,
                Mode::Perfect => {
                    let (mut best, mut best_share) = (spec.home, f64::MIN);
                    for i in 0..n {
                        let share = figures(i, running[i] as f64).share(1.0);
                        if share > best_share {
                            (best, best_share) = (i, share);
                        }
                    }
                    best
                }
                Mode::Omnode => {
                    let h = spec.home;
                    let own = vectors[h]
                        .get(h as NodeId, now)
                        .map(|(l, _)| l)
                        .unwrap_or_else(|| figures(h, running[h] as f64));
                    // the home node knows its own runnable count exactly
                    let local = Local {
                        id: h as NodeId,
                        load: Load {
                            load: running[h] as f64,
                            ..own
                        },
                        flags: Flags::default(),
                    };
                    let peers = peers_of(&vectors[h], h, now, s.bandwidth);
                    balancers[h].place(now, &local, &peers, spec.size) as usize
                }
            };
            if node != spec.home {
                report.remote_placements += 1;
            }
            running[node] += 1;
            jobs.push(Job {
                spec,
                node,
                left: spec.work,
                cpu: 0.0,
                frozen_until: spec.arrival,
                arrived: None,
                moves: 0,
                left_node: None,
                done: None,
            });
        }
        // 2. run one second
        for j in jobs.iter_mut().filter(|j| j.done.is_none()) {
            let spec = s.nodes[j.node];
            let start = j.frozen_until.max(t);
            if start >= t + 1.0 {
                continue;
            }
            let frac = (spec.capacity / running[j.node].max(1) as f64).min(1.0);
            let rate = f64::from(spec.speed) * frac;
            let span = t + 1.0 - start;
            if j.left <= rate * span {
                let used = j.left / rate;
                j.done = Some(start + used);
                j.cpu += used * frac;
                j.left = 0.0;
            } else {
                j.left -= rate * span;
                j.cpu += span * frac;
            }
        }
        for j in jobs
            .iter_mut()
            .filter(|j| j.done.is_some() && j.left == 0.0)
        {
            j.left = -1.0; // counted
            running[j.node] -= 1;
            finished += 1;
        }
        tick += 1;
        let t = tick as f64;
        let now = at(t);
        if mode != Mode::Omnode {
            continue;
        }
        // 3. measure, smooth, gossip (all sends of a tick are delivered at its end)
        for i in 0..n {
            let l = smoothers[i].update(running[i] as f64);
            vectors[i].update(i as NodeId, figures(i, l), now);
        }
        let mut mail = Vec::with_capacity(n * load::DEFAULT_FANOUT * 2);
        let windows: Vec<_> = (0..n)
            .map(|i| vectors[i].gossip_window(i as NodeId, load::DEFAULT_WINDOW, now))
            .collect();
        for i in 0..n {
            report.max_gossip_entries = report.max_gossip_entries.max(windows[i].len());
            for to in load::pick_gossip_targets(&mut rng, i as NodeId, &ids, load::DEFAULT_FANOUT) {
                mail.push((to as usize, i));
                gossip_sent += 1;
                if s.pull {
                    mail.push((i, to as usize));
                    gossip_sent += 1;
                }
            }
        }
        for (to, from) in mail {
            vectors[to].merge_gossip(&windows[from], to as NodeId, now);
        }
        if tick % 10 == 0 {
            for v in &mut vectors {
                v.expire(now);
            }
        }
        // 4. balance
        let mut on: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (k, j) in jobs.iter().enumerate() {
            if j.done.is_none() && j.frozen_until <= t {
                on[j.node].push(k);
            }
        }
        for i in 0..n {
            if on[i].is_empty() {
                continue;
            }
            let own = vectors[i].get(i as NodeId, now).map(|(l, _)| l);
            let Some(own) = own else { continue };
            let local = Local {
                id: i as NodeId,
                load: own,
                flags: Flags::default(),
            };
            let procs: Vec<Process> = on[i]
                .iter()
                .map(|&k| {
                    let j = &jobs[k];
                    Process {
                        pid: k as u32,
                        home: j.spec.home as NodeId,
                        age: Duration::from_secs_f64((t - j.spec.arrival).max(0.0)),
                        cpu: Duration::from_secs_f64(j.cpu),
                        size: j.spec.size,
                        lock: false,
                        arrived: j.arrived.map(at),
                        came_from: j.left_node.map(|(n, _)| n as NodeId),
                    }
                })
                .collect();
            let peers = peers_of(&vectors[i], i, now, s.bandwidth);
            for d in balancers[i].on_tick(now, &local, &peers, &procs) {
                let to = d.to as usize;
                let k = d.pid as usize;
                let target = Local {
                    id: d.to,
                    load: figures(to, running[to] as f64),
                    flags: Flags::default(),
                };
                let offer = Offer {
                    from: i as NodeId,
                    from_load: figures(i, running[i] as f64),
                    size: jobs[k].spec.size,
                    memory: matches!(d.reason, policy::Reason::Memory { .. }),
                };
                match policy::accept(&s.config, &target, &offer) {
                    Ok(()) => {
                        let cost = s.config.fixed_cost.as_secs_f64()
                            + jobs[k].spec.size as f64 / s.bandwidth;
                        let j = &mut jobs[k];
                        running[i] -= 1;
                        running[to] += 1;
                        if j.left_node.is_some_and(|(n, at)| n == to && t - at < 30.0) {
                            report.bounces += 1;
                        }
                        j.left_node = Some((i, t));
                        j.moves += 1;
                        report.max_moves_per_job = report.max_moves_per_job.max(j.moves);
                        j.node = to;
                        j.frozen_until = t + cost;
                        j.arrived = Some(t + cost);
                        report.migrations += 1;
                    }
                    Err(_) => {
                        balancers[i].on_refused(d.to, now);
                        report.refusals += 1;
                    }
                }
            }
        }
    }
    report.ticks = tick;
    let done: Vec<&Job> = jobs.iter().filter(|j| j.done.is_some()).collect();
    report.makespan = done.iter().filter_map(|j| j.done).fold(0.0, f64::max);
    report.mean_response = done
        .iter()
        .map(|j| j.done.unwrap() - j.spec.arrival)
        .sum::<f64>()
        / done.len().max(1) as f64;
    report.gossip_per_node_s = gossip_sent as f64 / (n as f64 * tick.max(1) as f64);
    report
}

fn peers_of(v: &LoadVector, me: usize, now: Instant, bandwidth: f64) -> Vec<Peer> {
    v.iter(now)
        .filter(|(id, _, _)| *id as usize != me)
        .map(|(id, load, _)| Peer {
            id,
            load,
            up: true,
            blocked: false,
            bandwidth: Some(bandwidth),
        })
        .collect()
}

/// How many gossip ticks until every node knows a node of the least load, starting from
/// empty vectors with fixed loads (a random 10% idle, at least one, the rest 1–8 runnable
/// per CPU):
/// `(ticks until every node knows some idle node, ticks until every node knows the very
/// least loaded node by normalised load)`; None when not within `limit` ticks.
///
/// With `pull`, a node that receives a gossip answers with its own window (push-pull: twice
/// the messages, but no node goes a tick without hearing from anyone).
pub fn spread_ticks(n: usize, seed: u64, limit: u64, pull: bool) -> (Option<u64>, Option<u64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let loads: Vec<Load> = (0..n)
        .map(|_| {
            let idle = rng.gen_bool(0.1);
            let cap = [1.0, 2.0, 4.0][rng.gen_range(0..3)];
            Load {
                load: if idle {
                    0.0
                } else {
                    cap * rng.gen_range(1.0..8.0)
                },
                cpus: cap as u32,
                speed: [1000, 2000, 3000][rng.gen_range(0..3)],
                free_mem: 1 << 30,
                total_mem: 2 << 30,
                capacity: cap,
            }
        })
        .collect();
    let mut loads = loads;
    let one = rng.gen_range(0..n.max(1));
    if let Some(l) = loads.get_mut(one) {
        l.load = 0.0;
    }
    let least = loads
        .iter()
        .map(Load::normalised)
        .fold(f64::INFINITY, f64::min);
    let ids: Vec<NodeId> = (0..n as NodeId).collect();
    let mut vectors: Vec<LoadVector> = (0..n).map(|_| LoadVector::default()).collect();
    let (mut idle_at, mut least_at) = (None, None);
    for tick in 1..=limit {
        let now = t0 + Duration::from_secs(tick);
        for (i, v) in vectors.iter_mut().enumerate() {
            v.update(i as NodeId, loads[i], now);
        }
        let mut mail = Vec::new();
        let windows: Vec<_> = (0..n)
            .map(|i| vectors[i].gossip_window(i as NodeId, load::DEFAULT_WINDOW, now))
            .collect();
        for i in 0..n {
            for to in load::pick_gossip_targets(&mut rng, i as NodeId, &ids, load::DEFAULT_FANOUT) {
                mail.push((to as usize, i));
                if pull {
                    mail.push((i, to as usize));
                }
            }
        }
        for (to, from) in mail {
            vectors[to].merge_gossip(&windows[from], to as NodeId, now);
        }
        let knows = |pred: &dyn Fn(&Load) -> bool| {
            vectors
                .iter()
                .all(|v| v.iter(now).any(|(_, l, _)| pred(&l)))
        };
        if idle_at.is_none() && knows(&|l: &Load| l.load == 0.0) {
            idle_at = Some(tick);
        }
        if least_at.is_none() && knows(&|l: &Load| l.normalised() <= least) {
            least_at = Some(tick);
        }
        if idle_at.is_some() && least_at.is_some() {
            break;
        }
    }
    (idle_at, least_at)
}

#[cfg(test)]
mod tests;
