use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::{BTreeSet, HashSet};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn load(l: f64) -> Load {
    Load {
        load: l,
        cpus: 4,
        speed: 2000,
        free_mem: 1 << 30,
        total_mem: 4 << 30,
        capacity: 4.0,
    }
}

#[test]
fn smoothing_rises_slowly() {
    assert_eq!(ALPHA, 0.125);
    assert_eq!(smooth(0.0, 8.0), 1.0);
    assert_eq!(smooth(1.0, 9.0), 2.0);
    assert_eq!(smooth_with(0.0, 8.0, 0.5), 4.0);
    assert_eq!(smooth(2.0, 2.0), 2.0);
    // a steady load is approached geometrically: within 5% after 23 samples, not after 22
    let mut v = 0.0;
    for i in 1..=23 {
        v = smooth(v, 1.0);
        if i == 22 {
            assert!(v < 0.95, "{v}");
        }
    }
    assert!((0.95..1.0).contains(&v), "{v}");
}

#[test]
fn smoothing_falls_at_once() {
    assert_eq!(smooth(7.5, 1.0), 1.0);
    assert_eq!(smooth(7.5, 0.0), 0.0);
    let mut s = Smoother::default();
    assert_eq!(s.value(), None);
    assert_eq!(s.update(4.0), 4.0, "first sample taken as is");
    assert_eq!(s.update(12.0), 5.0);
    assert_eq!(s.update(0.5), 0.5);
    assert_eq!(s.value(), Some(0.5));
}

#[test]
fn smoothing_bad_samples() {
    assert_eq!(smooth(3.0, f64::NAN), 3.0);
    assert_eq!(smooth(3.0, f64::INFINITY), 3.0);
    assert_eq!(smooth(3.0, -1.0), 0.0);
    assert_eq!(smooth(f64::NAN, 2.0), 2.0);
    let mut s = Smoother::new(0.5);
    assert_eq!(s.update(f64::NAN), 0.0);
    assert_eq!(s.update(-3.0), 0.0);
    assert_eq!(s.update(2.0), 1.0);
}

#[test]
fn vector_update_get_and_age() {
    let t0 = Instant::now();
    let mut v = LoadVector::new(ms(5000));
    assert!(v.is_empty());
    v.update(1, load(1.0), t0);
    v.update(2, load(2.0), t0 + ms(1000));
    assert_eq!(v.get(1, t0 + ms(1500)), Some((load(1.0), ms(1500))));
    assert_eq!(v.get(2, t0 + ms(1500)), Some((load(2.0), ms(500))));
    assert_eq!(v.get(3, t0), None);
    assert_eq!(
        v.iter(t0 + ms(2000)).collect::<Vec<_>>(),
        vec![(1, load(1.0), ms(2000)), (2, load(2.0), ms(1000))]
    );
    // an update replaces and resets the age
    v.update(1, load(3.0), t0 + ms(2000));
    assert_eq!(v.get(1, t0 + ms(2000)), Some((load(3.0), ms(0))));
    assert_eq!(v.len(), 2);
    assert_eq!(v.remove(2), Some(load(2.0)));
    assert_eq!(v.remove(2), None);
}

#[test]
fn vector_ages_out() {
    let t0 = Instant::now();
    let mut v = LoadVector::new(ms(3000));
    v.update(1, load(1.0), t0);
    v.update(2, load(2.0), t0 + ms(1000));
    assert!(v.get(1, t0 + ms(2999)).is_some());
    assert_eq!(
        v.get(1, t0 + ms(3000)),
        None,
        "stale at exactly the staleness"
    );
    assert_eq!(
        v.iter(t0 + ms(3000)).map(|e| e.0).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(v.len(), 2, "stale entries stay until expire");
    assert_eq!(v.expire(t0 + ms(3000)), vec![1]);
    assert_eq!(v.len(), 1);
    assert_eq!(v.expire(t0 + ms(3999)), Vec::<NodeId>::new());
    assert_eq!(v.expire(t0 + ms(4000)), vec![2]);
    assert!(v.is_empty());
}

#[test]
fn vector_merge_keeps_newest() {
    let t0 = Instant::now() + Duration::from_secs(60); // room for checked_sub
    let mut v = LoadVector::new(ms(5000));
    v.update(2, load(2.0), t0);
    // older than ours: dropped
    assert!(!v.merge(2, load(9.0), ms(500), t0 + ms(400)));
    assert_eq!(v.get(2, t0 + ms(400)).unwrap().0, load(2.0));
    // same age: ours kept
    assert!(!v.merge(2, load(9.0), ms(400), t0 + ms(400)));
    // newer: taken, with its age carried over
    assert!(v.merge(2, load(5.0), ms(100), t0 + ms(400)));
    assert_eq!(v.get(2, t0 + ms(400)), Some((load(5.0), ms(100))));
    // already stale on arrival: dropped
    assert!(!v.merge(3, load(1.0), ms(5000), t0));
    assert_eq!(v.get(3, t0), None);
    assert!(v.merge(3, load(1.0), ms(4999), t0));
    assert_eq!(
        v.get(3, t0 + ms(1)),
        None,
        "and it ages from its measurement"
    );
}

#[test]
fn gossip_round_trip_and_skip_local() {
    let t0 = Instant::now() + Duration::from_secs(60);
    let mut a = LoadVector::default();
    assert_eq!(a.staleness(), DEFAULT_STALENESS);
    a.update(1, load(1.0), t0);
    a.update(2, load(2.0), t0 + ms(250));
    a.update(3, load(3.0), t0 - ms(20_000)); // stale: not gossiped
    let g = a.gossip(t0 + ms(1000));
    assert_eq!(
        g,
        vec![
            GossipEntry {
                id: 1,
                load: load(1.0),
                age_ms: 1000
            },
            GossipEntry {
                id: 2,
                load: load(2.0),
                age_ms: 750
            },
        ]
    );
    let wire = rmp_serde::to_vec_named(&g).unwrap();
    let back: Vec<GossipEntry> = rmp_serde::from_slice(&wire).unwrap();
    assert_eq!(back, g);

    let mut b = LoadVector::default();
    b.update(2, load(0.5), t0 + ms(2000)); // b is node 2: its own figure stays
    let later = t0 + ms(1100);
    assert_eq!(b.merge_gossip(&back, 2, later), 1);
    // the age travels as sent (transit time is not known to the receiver)
    assert_eq!(b.get(1, later), Some((load(1.0), ms(1000))));
    assert_eq!(b.get(2, t0 + ms(2000)).unwrap().0, load(0.5));
}

#[test]
fn load_serde() {
    let l = load(1.25);
    let bytes = rmp_serde::to_vec(&l).unwrap();
    assert_eq!(rmp_serde::from_slice::<Load>(&bytes).unwrap(), l);
}

#[test]
fn gossip_targets_distinct_excluding_self() {
    let mut rng = StdRng::seed_from_u64(7);
    let peers = [1, 2, 3, 4, 5, 6, 7, 8];
    for _ in 0..200 {
        let t = pick_gossip_targets(&mut rng, 3, &peers, 3);
        assert_eq!(t.len(), 3);
        assert!(!t.contains(&3));
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 3, "{t:?}");
        assert!(t.iter().all(|id| peers.contains(id)));
    }
}

#[test]
fn gossip_targets_edge_cases() {
    let mut rng = StdRng::seed_from_u64(1);
    assert!(pick_gossip_targets(&mut rng, 1, &[], 3).is_empty());
    assert!(pick_gossip_targets(&mut rng, 1, &[1], 3).is_empty());
    assert!(pick_gossip_targets(&mut rng, 1, &[2, 3], 0).is_empty());
    let mut all = pick_gossip_targets(&mut rng, 1, &[4, 2, 1, 2, 4, 3], 10);
    all.sort();
    assert_eq!(all, vec![2, 3, 4]);
    // deterministic for a given seed
    let a = pick_gossip_targets(&mut StdRng::seed_from_u64(9), 0, &[1, 2, 3, 4, 5], 2);
    let b = pick_gossip_targets(&mut StdRng::seed_from_u64(9), 0, &[1, 2, 3, 4, 5], 2);
    assert_eq!(a, b);
}

#[test]
fn gossip_targets_cover_every_peer() {
    let mut rng = StdRng::seed_from_u64(42);
    let peers: Vec<NodeId> = (1..=10).collect();
    let mut counts = [0u32; 11];
    for _ in 0..5000 {
        for id in pick_gossip_targets(&mut rng, 5, &peers, 1) {
            counts[id as usize] += 1;
        }
    }
    assert_eq!(counts[5], 0);
    for (id, &c) in counts.iter().enumerate().skip(1) {
        if id != 5 {
            // 5000 / 9 ≈ 556 expected
            assert!((400..720).contains(&c), "peer {id} picked {c} times");
        }
    }
}

/// 32 nodes, each tick every node measures itself and gossips its vector to 2 random peers:
/// every node knows every node's load within a few ticks, with no broadcast.
#[test]
fn gossip_spreads_to_everyone_in_a_few_ticks() {
    let t0 = Instant::now() + Duration::from_secs(60);
    let n: NodeId = 32;
    let ids: Vec<NodeId> = (1..=n).collect();
    let mut rng = StdRng::seed_from_u64(2024);
    let mut vectors: Vec<LoadVector> = ids.iter().map(|_| LoadVector::default()).collect();
    let mut full_at = None;
    for tick in 0..20u64 {
        let now = t0 + ms(1000 * tick);
        for &id in &ids {
            vectors[(id - 1) as usize].update(id, load(f64::from(id)), now);
        }
        let mut mail = Vec::new();
        for &id in &ids {
            let g = vectors[(id - 1) as usize].gossip(now);
            for to in pick_gossip_targets(&mut rng, id, &ids, DEFAULT_FANOUT) {
                mail.push((to, g.clone()));
            }
        }
        for (to, g) in mail {
            vectors[(to - 1) as usize].merge_gossip(&g, to, now);
        }
        if vectors.iter().all(|v| v.iter(now).count() == n as usize) {
            full_at = Some(tick);
            break;
        }
    }
    let full_at = full_at.expect("load never reached every node");
    assert!(full_at <= 8, "took {full_at} ticks");
    let known: BTreeSet<NodeId> = vectors[0]
        .iter(t0 + ms(1000 * full_at))
        .map(|e| e.0)
        .collect();
    assert_eq!(known.len(), 32);
}

#[test]
fn normalised_by_capacity_and_speed() {
    let base = load(4.0); // 4 runnable on 4 CPUs of 2000 MHz
    assert_eq!(base.power(), 8000.0);
    assert_eq!(base.normalised(), 0.5);
    // a half-CPU cgroup quota of the same machine: 8 times the figure
    let capped = Load {
        capacity: 0.5,
        ..base
    };
    assert_eq!(capped.normalised(), 4.0);
    // twice the speed, half the figure
    let fast = Load {
        speed: 4000,
        ..base
    };
    assert_eq!(fast.normalised(), base.normalised() / 2.0);
    // an old peer without capacity: its CPUs count
    let old = Load {
        capacity: 0.0,
        ..base
    };
    assert_eq!(old.capacity(), 4.0);
    // a node reporting nothing stays finite and looks powerless
    let none = Load::default();
    assert!(none.normalised().is_finite() && none.power() > 0.0);
}

#[test]
fn share_per_process() {
    let l = Load {
        load: 1.0,
        ..load(1.0)
    };
    // one more process on 4 CPUs with 1 busy: a whole CPU
    assert_eq!(l.share(1.0), 2000.0);
    let busy = load(8.0);
    // 9 processes on 4 CPUs
    assert!((busy.share(1.0) - 2000.0 * 4.0 / 9.0).abs() < 1e-9);
    let half = Load {
        capacity: 0.5,
        load: 0.0,
        ..load(0.0)
    };
    assert_eq!(half.share(1.0), 1000.0, "half a CPU even when alone");
}

#[test]
fn gossip_window_is_bounded_own_first_then_least_loaded() {
    let t0 = Instant::now() + Duration::from_secs(60);
    let mut v = LoadVector::default();
    for id in 1..=40 {
        v.update(id, load(f64::from(41 - id)), t0);
    }
    let w = v.gossip_window(3, 5, t0 + ms(10));
    assert_eq!(w.len(), 5);
    assert_eq!(w[0].id, 3, "own entry first");
    let ids: Vec<NodeId> = w[1..].iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![40, 39, 38, 37], "then the least loaded");
    assert!(v.gossip_window(3, 0, t0).is_empty());
    // a node that does not know its own load yet sends the least loaded only
    let w = v.gossip_window(99, 2, t0);
    assert_eq!(w.iter().map(|e| e.id).collect::<Vec<_>>(), vec![40, 39]);
    // small vectors go whole
    let mut small = LoadVector::default();
    small.update(1, load(1.0), t0);
    small.update(2, load(0.0), t0);
    assert_eq!(small.gossip_window(1, 16, t0).len(), 2);
}

#[test]
fn old_wire_format_without_capacity_still_reads() {
    #[derive(Serialize)]
    struct OldLoad {
        load: f64,
        cpus: u32,
        speed: u32,
        free_mem: u64,
        total_mem: u64,
    }
    let old = OldLoad {
        load: 1.0,
        cpus: 2,
        speed: 1000,
        free_mem: 1,
        total_mem: 2,
    };
    let bytes = rmp_serde::to_vec(&old).unwrap();
    let l: Load = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!((l.cpus, l.capacity, l.capacity()), (2, 0.0, 2.0));
}

mod window_props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the vector: at most `max` entries, distinct, all fresh ones we hold, the
        /// sender's own first when known, then no entry left out with a lower normalised load
        /// than one sent.
        #[test]
        fn gossip_window_is_bounded_and_least_loaded(
            loads in prop::collection::btree_map(1u32..200, (0.0f64..50.0, 0u64..20_000), 0..120),
            local in 1u32..200,
            max in 0usize..24,
        ) {
            let t0 = Instant::now() + Duration::from_secs(60);
            let now = t0 + ms(20_000);
            let mut v = LoadVector::default();
            for (&id, &(l, age)) in &loads {
                v.update(id, load(l), now - ms(age));
            }
            let w = v.gossip_window(local, max, now);
            prop_assert!(w.len() <= max);
            let fresh: Vec<(NodeId, Load, Duration)> = v.iter(now).collect();
            prop_assert_eq!(w.len(), max.min(fresh.len()));
            let ids: BTreeSet<NodeId> = w.iter().map(|e| e.id).collect();
            prop_assert_eq!(ids.len(), w.len(), "distinct");
            for e in &w {
                let (l, age) = v.get(e.id, now).expect("a fresh entry");
                prop_assert_eq!(e.load, l);
                prop_assert_eq!(e.age_ms, age.as_millis() as u64);
            }
            let own_known = v.get(local, now).is_some();
            if own_known && max > 0 {
                prop_assert_eq!(w[0].id, local);
            }
            let others: Vec<&GossipEntry> = w.iter().filter(|e| e.id != local).collect();
            let worst_sent = others.iter().map(|e| e.load.normalised()).fold(f64::MIN, f64::max);
            for (id, l, _) in &fresh {
                if *id != local && !ids.contains(id) {
                    prop_assert!(l.normalised() >= worst_sent, "left out {} with {}", id, l.load);
                }
            }
        }
    }
}
