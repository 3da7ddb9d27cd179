//! The load monitor actor: each tick it measures this node's load, smooths it the openMosix
//! way (rises slowly, falls at once), and gossips its load vector to a few random peers
//! that are up; entries from peers are merged when fresher and aged out when stale.

use std::time::{Duration, Instant};

use discovery::NodeId;
use discovery::load::{self, GossipEntry, Load, LoadVector, Smoother};
use runtime::{Actor, Context, Inbound, ReplyTo};
use serde::{Deserialize, Serialize};

/// The name peers send gossip to.
pub const NAME: &str = "load";

/// What one node sends another each tick.
#[derive(Debug, Serialize, Deserialize)]
pub struct Gossip {
    pub entries: Vec<GossipEntry>,
}

pub enum Msg {
    Tick,
    Gossip(Inbound<Gossip>),
    /// The peers that are up now (from the membership actor).
    Peers(Vec<NodeId>),
    Snapshot(ReplyTo<Vec<(NodeId, Load, Duration)>>),
}

impl From<Inbound<Gossip>> for Msg {
    fn from(i: Inbound<Gossip>) -> Self {
        Msg::Gossip(i)
    }
}

pub struct LoadMonitor {
    local: NodeId,
    vector: LoadVector,
    smoother: Smoother,
    peers: Vec<NodeId>,
    tick: Duration,
}

impl LoadMonitor {
    pub fn new(local: NodeId, tick: Duration) -> Self {
        LoadMonitor {
            local,
            // Stale after ten ticks, at least the default.
            vector: LoadVector::new(load::DEFAULT_STALENESS.max(tick * 10)),
            smoother: Smoother::default(),
            peers: Vec::new(),
            tick,
        }
    }

    async fn on_tick(&mut self, ctx: &Context<Self>) {
        let now = Instant::now();
        let sample = sample();
        let own = Load {
            load: self.smoother.update(sample.runnable),
            ..sample.load
        };
        self.vector.update(self.local, own, now);
        for gone in self.vector.expire(now) {
            tracing::debug!(node = gone, "load entry aged out");
        }
        let targets = load::pick_gossip_targets(
            &mut rand::thread_rng(),
            self.local,
            &self.peers,
            load::DEFAULT_FANOUT,
        );
        if targets.is_empty() {
            return;
        }
        let gossip = Gossip {
            entries: self.vector.gossip(now),
        };
        for peer in targets {
            // Never waits on a slow peer: the next tick sends fresher figures anyway.
            if let Err(e) = ctx.system().try_tell(peer, NAME, &gossip) {
                tracing::debug!(peer, "load gossip not sent: {e}");
            }
        }
    }
}

impl Actor for LoadMonitor {
    type Msg = Msg;

    async fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.every(self.tick, || Msg::Tick);
    }

    async fn handle(&mut self, msg: Msg, ctx: &mut Context<Self>) {
        match msg {
            Msg::Tick => self.on_tick(ctx).await,
            Msg::Gossip(g) => {
                // Only figures about (and from) members that are up: a peer cannot plant
                // entries for node ids outside the cluster.
                if !self.peers.contains(&g.from) {
                    return;
                }
                let members: Vec<GossipEntry> = g
                    .msg
                    .entries
                    .into_iter()
                    .filter(|e| self.peers.contains(&e.id))
                    .collect();
                self.vector
                    .merge_gossip(&members, self.local, Instant::now());
            }
            Msg::Peers(p) => self.peers = p,
            Msg::Snapshot(reply) => {
                let _ = reply.send(self.vector.iter(Instant::now()).collect());
            }
        }
    }
}

/// One raw measurement of this machine.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Runnable processes other than the sampler itself.
    pub runnable: f64,
    /// cpus, speed and memory figures (`load` unset).
    pub load: Load,
}

/// Read /proc: runnable processes (/proc/stat `procs_running`), CPUs, speed (MHz from
/// /proc/cpuinfo, bogomips if no MHz is given), and memory (/proc/meminfo).
pub fn sample() -> Sample {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let running = field(&stat, "procs_running").unwrap_or(1.0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let speed = cpu_speed(&cpuinfo);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |k: &str| field(&meminfo, k).map(|v| v as u64 * 1024).unwrap_or(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    Sample {
        runnable: (running - 1.0).max(0.0),
        load: Load {
            load: 0.0,
            cpus,
            speed,
            free_mem: kib("MemAvailable:"),
            total_mem: kib("MemTotal:"),
        },
    }
}

/// The first number after `key` at the start of a line.
fn field(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

fn cpu_speed(cpuinfo: &str) -> u32 {
    let value = |key: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with(key))
            .find_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
    };
    value("cpu MHz")
        .or_else(|| value("bogomips"))
        .map(|v| v.round() as u32)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_fields() {
        let stat = "cpu  1 2 3\nprocs_running 3\nprocs_blocked 0\n";
        assert_eq!(field(stat, "procs_running"), Some(3.0));
        let mem = "MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n";
        assert_eq!(field(mem, "MemAvailable:"), Some(1000.0));
        assert_eq!(cpu_speed("processor\t: 0\ncpu MHz\t\t: 2445.406\n"), 2445);
        assert_eq!(cpu_speed("BogoMIPS\t: 50.00\nbogomips\t: 4890.81\n"), 4891);
    }

    #[test]
    fn sample_of_this_machine_is_plausible() {
        let s = sample();
        assert!(s.load.cpus >= 1);
        assert!(
            s.load.total_mem > s.load.free_mem && s.load.free_mem > 0,
            "{s:?}"
        );
        assert!(s.runnable >= 0.0);
    }

    /// Gossip naming node ids that are not members (or coming from a non-member) is
    /// ignored; entries about members are merged.
    #[tokio::test]
    async fn gossip_about_non_members_is_ignored() {
        let fabric = runtime::mem::Fabric::new();
        let a = runtime::System::new(1);
        a.attach(fabric.join(1, a.events()));
        let b = runtime::System::new(2);
        b.attach(fabric.join(2, b.events()));
        let c = runtime::System::new(3);
        c.attach(fabric.join(3, c.events()));
        let addr = a.spawn(NAME, || LoadMonitor::new(1, Duration::from_secs(3600)));
        a.serve::<Gossip, _>(NAME, addr.clone());
        addr.tell(Msg::Peers(vec![2])).await.unwrap();
        let entry = |id| GossipEntry {
            id,
            load: Load {
                load: 1.5,
                cpus: 2,
                ..Load::default()
            },
            age_ms: 0,
        };
        let gossip = Gossip {
            entries: vec![entry(2), entry(99), entry(3)],
        };
        // From a member: only its member entries count.
        b.tell(1, NAME, &gossip).await.unwrap();
        // From a node that is not a member (3): nothing counts.
        c.tell(
            1,
            NAME,
            &Gossip {
                entries: vec![entry(77)],
            },
        )
        .await
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let ids = loop {
            let snap = addr
                .ask(Msg::Snapshot, Duration::from_secs(2))
                .await
                .unwrap();
            // Our own entry (the first tick) aside.
            let mut ids: Vec<NodeId> = snap
                .iter()
                .map(|(id, _, _)| *id)
                .filter(|&id| id != 1)
                .collect();
            ids.sort_unstable();
            if ids.contains(&2) || Instant::now() > deadline {
                break ids;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // A last look after node 3's gossip had time to arrive as well.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let snap = addr
            .ask(Msg::Snapshot, Duration::from_secs(2))
            .await
            .unwrap();
        let mut after: Vec<NodeId> = snap
            .iter()
            .map(|(id, _, _)| *id)
            .filter(|&id| id != 1)
            .collect();
        after.sort_unstable();
        assert_eq!(ids, vec![2]);
        assert_eq!(after, vec![2]);
    }
}
