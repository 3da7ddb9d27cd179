//! The load monitor actor: each tick it measures this node's load ([`crate::cgroup`]: its own
//! cgroup's, or the machine's), smooths it the openMosix way (rises slowly, falls at once),
//! and gossips a bounded window of its load vector (its own figure and the least loaded nodes
//! it knows) to a few random peers that are up; entries from peers are merged when fresher
//! and aged out when stale. A measurement that fails is logged and advertises nothing: the
//! node's figure then ages out everywhere instead of showing a made-up load.

use std::time::{Duration, Instant};

use discovery::NodeId;

use crate::cgroup::Scope;
use balance::load::{self, GossipEntry, Load, LoadVector, Smoother};
use runtime::{Actor, Context, Inbound, ReplyTo};
use serde::{Deserialize, Serialize};

/// The name peers send gossip to.
pub const NAME: &str = "load";

/// This node's own figures from the last tick (smoothed load, measured memory), for the
/// checks that need them outside the actor (a guest's admission, [`own`]).
static OWN: std::sync::Mutex<Option<(Instant, Load)>> = std::sync::Mutex::new(None);

/// This node's own figures, at most `max_age` old: the last tick's, or measured now when
/// the tick's are older (or there was none yet). Err when they cannot be measured.
pub fn own(max_age: Duration) -> Result<Load, String> {
    let last = *OWN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, l)) = last
        && at.elapsed() <= max_age
    {
        return Ok(l);
    }
    let scope = Scope::detect().map_err(|e| e.to_string())?;
    let mut l = scope.sample().map_err(|e| e.to_string())?;
    if let Some(speed) = crate::balancer::speed() {
        l.speed = speed;
    }
    // the raw runnable count; the smoothed figure, when there is one, rose from it slowly
    if let Some((_, old)) = last {
        l.load = l.load.max(old.load);
    }
    Ok(l)
}

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
    scope: Option<Scope>,
    /// The last measurement error logged (logged again only when it changes).
    failing: Option<String>,
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
            scope: None,
            failing: None,
        }
    }

    /// Measures with `scope` (detected at start), refusing to advertise on errors.
    fn measure(&mut self) -> Option<Load> {
        if self.scope.is_none() {
            match Scope::detect() {
                Ok(s) => {
                    tracing::info!(
                        node = self.local,
                        in_cgroup = s.in_cgroup(),
                        "own load measured from {}",
                        s.describe()
                    );
                    self.scope = Some(s);
                }
                Err(e) => {
                    self.fail(e.to_string());
                    return None;
                }
            }
        }
        match self.scope.as_ref()?.sample() {
            Ok(mut l) => {
                // `mosctl setspeed` replaces the measured speed.
                if let Some(speed) = crate::balancer::speed() {
                    l.speed = speed;
                }
                if self.failing.take().is_some() {
                    tracing::info!(node = self.local, "own load measurable again");
                }
                Some(l)
            }
            Err(e) => {
                self.fail(e.to_string());
                None
            }
        }
    }

    fn fail(&mut self, reason: String) {
        if self.failing.as_deref() != Some(reason.as_str()) {
            tracing::warn!(
                node = self.local,
                "cannot measure this node's load, advertising none until it can: {reason}"
            );
            self.failing = Some(reason);
        }
    }

    async fn on_tick(&mut self, ctx: &Context<Self>) {
        let now = Instant::now();
        if let Some(sample) = self.measure() {
            let own = Load {
                load: self.smoother.update(sample.load),
                ..sample
            };
            self.vector.update(self.local, own, now);
            *OWN.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, own));
        }
        for gone in self.vector.expire(now) {
            tracing::debug!(node = gone, "load entry aged out");
        }
        let targets = load::pick_gossip_targets(
            &mut rand::thread_rng(),
            self.local,
            &self.peers,
            load::DEFAULT_FANOUT,
        );
        // `mosctl quiet`: this node sends no load to others.
        if targets.is_empty() || crate::balancer::quiet() {
            return;
        }
        let gossip = Gossip {
            entries: self
                .vector
                .gossip_window(self.local, load::DEFAULT_WINDOW, now),
        };
        for peer in targets {
            // Never waits on a slow peer: the next tick sends fresher figures anyway.
            match ctx.system().try_tell(peer, NAME, &gossip) {
                Ok(()) => crate::metrics::bump(&crate::metrics::COUNTERS.gossip_sent),
                Err(e) => tracing::debug!(peer, "load gossip not sent: {e}"),
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
                crate::metrics::bump(&crate::metrics::COUNTERS.gossip_received);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup whose task list cannot be read: the monitor advertises no load (and says
    /// why once), never a made-up figure; once readable, it measures again.
    #[test]
    fn an_unreadable_cgroup_advertises_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let put = |rel: &str, text: &str| {
            let p = d.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("proc/cpuinfo", "cpu MHz : 2000\n");
        put("proc/meminfo", "MemTotal: 1000 kB\nMemAvailable: 500 kB\n");
        put("proc/self/status", "Cpus_allowed_list:\t0-1\n");
        put("cg/cpu/cpu.cfs_quota_us", "-1\n");
        put("cg/cpu/cpu.cfs_period_us", "100000\n");
        put("cg/cpu/n/cpu.cfs_quota_us", "-1\n");
        put("cg/cpu/n/cpu.cfs_period_us", "100000\n");
        let mountinfo = format!(
            "31 30 0:27 / {}/cg/cpu rw - cgroup cgroup rw,cpu\n",
            d.display()
        );
        let mut m = LoadMonitor::new(1, Duration::from_millis(100));
        m.scope = Some(Scope::from_texts(&mountinfo, "1:cpu:/n\n", &d.join("proc")));
        assert_eq!(m.measure(), None, "no task list: nothing to advertise");
        assert!(
            m.failing.as_deref().unwrap().contains("tasks"),
            "{:?}",
            m.failing
        );
        put("cg/cpu/n/tasks", "");
        let l = m.measure().expect("readable again");
        assert_eq!((l.load, l.cpus, l.speed), (0.0, 2, 2000));
        assert_eq!(m.failing, None);
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
