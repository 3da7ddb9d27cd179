use super::*;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn load(l: f64, capacity: f64, speed: u32) -> Load {
    Load {
        load: l,
        cpus: capacity.ceil().max(1.0) as u32,
        speed,
        free_mem: 8 * GIB,
        total_mem: 16 * GIB,
        capacity,
    }
}

fn local(l: f64) -> Local {
    Local {
        id: 1,
        load: load(l, 1.0, 1000),
        flags: Flags::default(),
    }
}

fn peer(id: NodeId, l: Load) -> Peer {
    Peer {
        id,
        load: l,
        up: true,
        blocked: false,
        bandwidth: Some(100e6),
    }
}

fn proc_(pid: u32, cpu_s: f64, size: u64) -> Process {
    Process {
        pid,
        home: 1,
        age: Duration::from_secs_f64(cpu_s * 2.0),
        cpu: Duration::from_secs_f64(cpu_s),
        size,
        lock: false,
        arrived: None,
        came_from: None,
    }
}

/// The default policy, but always to the very best target (the hand-computed cases).
fn best() -> Config {
    Config {
        choose_among: 1,
        ..Config::default()
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// 4 runnable on one 1000 MHz CPU: 250 MHz each; an idle peer gives 1000 MHz. A process that
/// used 10 s of CPU has 10 000 MHz·s left: 40 s here, 10 s there, gain 30 s; moving 100 MB at
/// 100 MB/s plus 0.1 s costs 1.1 s, and 30 > 2 × 1.1.
#[test]
fn moves_when_gain_beats_cost_hand_computed() {
    let t0 = Instant::now();
    let mut b = Balancer::new(best());
    let d = b.on_tick(
        t0,
        &local(4.0),
        &[peer(2, load(0.0, 1.0, 1000))],
        &[proc_(7, 10.0, 100_000_000)],
    );
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].pid, d[0].to), (7, 2));
    let Reason::Load { gain, cost } = d[0].reason else {
        panic!("{d:?}")
    };
    assert!((secs(gain) - 30.0).abs() < 1e-6, "{gain:?}");
    assert!((secs(cost) - 1.1).abs() < 1e-6, "{cost:?}");
}

/// The same process having used only 0.5 s: gain 2 − 0.5 = 1.5 s < 2 × 1.1 s: it stays.
#[test]
fn stays_when_moving_costs_more_than_it_gains() {
    let mut b = Balancer::new(best());
    let d = b.on_tick(
        Instant::now(),
        &local(4.0),
        &[peer(2, load(0.0, 1.0, 1000))],
        &[proc_(7, 0.5, 100_000_000)],
    );
    assert!(d.is_empty(), "{d:?}");
    // a tiny image of the same age moves: cost 0.1 s
    let d = b.on_tick(
        Instant::now(),
        &local(4.0),
        &[peer(2, load(0.0, 1.0, 1000))],
        &[proc_(7, 0.5, 1000)],
    );
    assert_eq!(d.len(), 1);
    // no measured bandwidth: the default (100 MB/s) counts; a slow measured link stops it
    let mut slow = peer(2, load(0.0, 1.0, 1000));
    slow.bandwidth = Some(1e6); // 100 s for 100 MB
    let d = b.on_tick(
        Instant::now(),
        &local(4.0),
        &[slow],
        &[proc_(8, 10.0, 100_000_000)],
    );
    assert!(d.is_empty(), "{d:?}");
}

/// 1.2 processes on a CPU (833 MHz each) against an idle peer (1000 MHz): 1.2 < 1.3, stay.
#[test]
fn hysteresis_keeps_near_equal_nodes_apart() {
    let mut b = Balancer::new(best());
    let d = b.on_tick(
        Instant::now(),
        &local(1.2),
        &[peer(2, load(0.0, 1.0, 1000))],
        &[proc_(7, 100.0, 1000)],
    );
    assert!(d.is_empty(), "{d:?}");
    let d = b.on_tick(
        Instant::now(),
        &local(1.4),
        &[peer(2, load(0.0, 1.0, 1000))],
        &[proc_(7, 100.0, 1000)],
    );
    assert_eq!(d.len(), 1, "1.4 > 1.3: moves");
}

/// Loads compare by speed: a 3000 MHz peer with one process (1500 MHz for a newcomer) beats
/// 2 processes on a 1000 MHz CPU (500 MHz each), though its raw load is not lower.
#[test]
fn a_faster_busy_node_beats_a_slow_one() {
    let fast = load(1.0, 1.0, 3000);
    let slow = load(0.0, 0.25, 1000); // a quarter-CPU cgroup: 250 MHz
    assert!(fast.normalised() < local(2.0).load.normalised());
    let mut b = Balancer::new(best());
    let d = b.on_tick(
        Instant::now(),
        &local(2.0),
        &[peer(2, slow), peer(3, fast)],
        &[proc_(7, 100.0, 1000)],
    );
    assert_eq!(d.iter().map(|d| d.to).collect::<Vec<_>>(), vec![3]);
}

#[test]
fn flags_stay_lstay_lock_block_and_down_peers() {
    let now = Instant::now();
    let idle = load(0.0, 1.0, 1000);
    let p = proc_(7, 100.0, 1000);
    let run =
        |l: Local, peers: &[Peer], p: Process| Balancer::new(best()).on_tick(now, &l, peers, &[p]);
    assert_eq!(
        run(local(4.0), &[peer(2, idle)], p).len(),
        1,
        "baseline moves"
    );
    let mut stay = local(4.0);
    stay.flags.stay = true;
    assert!(run(stay, &[peer(2, idle)], p).is_empty(), "stay");
    let mut lstay = local(4.0);
    lstay.flags.lstay = true;
    assert!(
        run(lstay, &[peer(2, idle)], p).is_empty(),
        "lstay: our own stays"
    );
    let guest = Process { home: 9, ..p };
    assert_eq!(
        run(lstay, &[peer(2, idle)], guest).len(),
        1,
        "lstay: a guest may go"
    );
    let locked = Process { lock: true, ..p };
    assert!(run(local(4.0), &[peer(2, idle)], locked).is_empty(), "lock");
    let mut blocked = peer(2, idle);
    blocked.blocked = true;
    assert!(run(local(4.0), &[blocked], p).is_empty(), "blocked peer");
    let mut down = peer(2, idle);
    down.up = false;
    assert!(run(local(4.0), &[down], p).is_empty(), "down peer");
    assert!(
        run(local(4.0), &[peer(1, idle)], p).is_empty(),
        "never to itself"
    );
    // a process that just arrived stays its minimum
    let arrived = Process {
        arrived: Some(now - Duration::from_secs(4)),
        ..p
    };
    assert!(
        run(local(4.0), &[peer(2, idle)], arrived).is_empty(),
        "min stay"
    );
    let settled = Process {
        arrived: Some(now - Duration::from_secs(5)),
        ..p
    };
    assert_eq!(run(local(4.0), &[peer(2, idle)], settled).len(), 1);
    // not straight back where it came from, until `return_after`
    let back = Process {
        came_from: Some(2),
        ..settled
    };
    assert!(
        run(local(4.0), &[peer(2, idle)], back).is_empty(),
        "return_after"
    );
    let d = run(
        local(4.0),
        &[peer(2, idle), peer(3, load(0.5, 1.0, 1000))],
        back,
    );
    assert_eq!(d[0].to, 3, "elsewhere is fine");
    let long_ago = Process {
        arrived: Some(now - Duration::from_secs(30)),
        ..back
    };
    assert_eq!(run(local(4.0), &[peer(2, idle)], long_ago)[0].to, 2);
}

#[test]
fn refused_target_is_left_alone_for_a_while() {
    let t0 = Instant::now();
    let mut b = Balancer::new(best());
    let peers = [peer(2, load(0.0, 1.0, 1000)), peer(3, load(0.5, 1.0, 1000))];
    let procs = [proc_(7, 100.0, 1000)];
    let d = b.on_tick(t0, &local(4.0), &peers, &procs);
    assert_eq!(d[0].to, 2);
    b.on_refused(2, t0);
    let d = b.on_tick(t0 + Duration::from_secs(1), &local(4.0), &peers, &procs);
    assert_eq!(d[0].to, 3, "{d:?}");
    b.on_refused(3, t0 + Duration::from_secs(1));
    assert!(
        b.on_tick(t0 + Duration::from_secs(2), &local(4.0), &peers, &procs)
            .is_empty()
    );
    let d = b.on_tick(t0 + Duration::from_secs(10), &local(4.0), &peers, &procs);
    assert_eq!(d[0].to, 2, "back after the back-off");
}

/// Eight processes on one CPU, two idle one-CPU peers, up to 8 moves a tick: the processes
/// sent count in the targets' loads, so they spread evenly and stop when the hysteresis
/// says so (computed below), instead of all eight flocking to the first idle node.
#[test]
fn sends_spread_over_targets_instead_of_flocking() {
    let cfg = Config {
        max_moves: 8,
        ..best()
    };
    let mut b = Balancer::new(cfg);
    let procs: Vec<Process> = (0..8).map(|i| proc_(100 + i, 100.0, 1000)).collect();
    let peers = [peer(2, load(0.0, 1.0, 1000)), peer(3, load(0.0, 1.0, 1000))];
    let d = b.on_tick(Instant::now(), &local(8.0), &peers, &procs);
    let to2 = d.iter().filter(|d| d.to == 2).count();
    let to3 = d.iter().filter(|d| d.to == 3).count();
    // after k moves: here 1000/(8-k), there 1000/(n+1); moves while there > 1.3 × here
    let mut here = 8.0f64;
    let mut there = [0.0f64, 0.0];
    let mut expected = 0;
    loop {
        let i = if there[0] <= there[1] { 0 } else { 1 };
        if 1000.0 / (there[i] + 1.0).max(1.0) > 1.3 * 1000.0 / here.max(1.0) {
            there[i] += 1.0;
            here -= 1.0;
            expected += 1;
        } else {
            break;
        }
    }
    assert_eq!(to2 + to3, expected, "{d:?}");
    assert!(to2.abs_diff(to3) <= 1, "{to2} vs {to3}");
    // the next tick (nothing reported yet) sends no more: the pending ones count
    let rest: Vec<Process> = procs
        .iter()
        .filter(|p| !d.iter().any(|d| d.pid == p.pid))
        .copied()
        .collect();
    let mut me = local(8.0);
    me.load.load = 8.0 - expected as f64;
    assert!(b.on_tick(Instant::now(), &me, &peers, &rest).is_empty());
}

/// 1 GiB free of 16 (mark: 1.6 GiB): the largest movable process (1 GiB) goes to the node
/// with most room; enough is then free, the smaller one stays.
#[test]
fn memory_ushering_moves_the_largest_to_the_roomiest() {
    let mut me = local(1.0);
    me.load.free_mem = GIB;
    let mut roomy = load(0.0, 1.0, 1000); // 1000 MHz there as here: not slower
    roomy.free_mem = 12 * GIB;
    let mut tight = load(0.0, 1.0, 1000);
    tight.free_mem = 2 * GIB; // 2 − 1 < 1.6: would fall below its own mark
    let procs = [
        proc_(1, 0.0, GIB),
        proc_(2, 0.0, GIB / 2),
        Process {
            lock: true,
            ..proc_(3, 0.0, 4 * GIB)
        },
    ];
    let mut b = Balancer::new(best());
    let d = b.on_tick(
        Instant::now(),
        &me,
        &[peer(2, tight), peer(3, roomy)],
        &procs,
    );
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].pid, d[0].to), (1, 3));
    assert_eq!(
        d[0].reason,
        Reason::Memory {
            free: GIB,
            low: (16.0 * GIB as f64 * 0.1) as u64
        }
    );
    // nowhere with room: nothing moves
    let d = Balancer::new(best()).on_tick(Instant::now(), &me, &[peer(2, tight)], &procs);
    assert!(d.is_empty(), "{d:?}");
    // room, but slower there (2 runnable on a CPU: 333 MHz against 1000 here): stays
    let mut busy_roomy = roomy;
    busy_roomy.load = 2.0;
    let d = Balancer::new(best()).on_tick(Instant::now(), &me, &[peer(3, busy_roomy)], &procs);
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn accept_checks_block_memory_and_fresh_load() {
    let cfg = Config::default();
    let offer = Offer {
        from: 2,
        from_load: load(4.0, 1.0, 1000),
        size: GIB,
        memory: false,
    };
    assert_eq!(accept(&cfg, &local(0.0), &offer), Ok(()));
    let mut blocked = local(0.0);
    blocked.flags.block = true;
    assert_eq!(
        accept(&cfg, &blocked, &offer),
        Err(Refusal::Blocked { node: 1 })
    );
    let mut full = local(0.0);
    full.load.free_mem = 2 * GIB;
    assert!(matches!(
        accept(&cfg, &full, &offer),
        Err(Refusal::NoMemory { .. })
    ));
    // we got busy since the sender looked: 4 here + 1 = 200 MHz < 250 at the sender
    let e = accept(&cfg, &local(4.0), &offer).unwrap_err();
    assert!(matches!(e, Refusal::Busy { node: 1, .. }), "{e}");
    assert!(e.to_string().contains("node 1"), "{e}");
    // faster, but by less than the accept margin: 1000 against 1000/1.05
    let marginal = Offer {
        from_load: load(1.05, 1.0, 1000),
        ..offer
    };
    assert!(matches!(
        accept(&cfg, &local(0.0), &marginal),
        Err(Refusal::Busy { .. })
    ));
    let clear = Offer {
        from_load: load(1.2, 1.0, 1000),
        ..offer
    };
    assert_eq!(accept(&cfg, &local(0.0), &clear), Ok(()));
    // equal speed is enough for memory ushering, not for load
    let even = Offer {
        from_load: load(1.0, 1.0, 1000),
        memory: true,
        ..offer
    };
    assert_eq!(accept(&cfg, &local(0.0), &even), Ok(()));
    assert!(
        accept(
            &cfg,
            &local(0.0),
            &Offer {
                memory: false,
                ..even
            }
        )
        .is_err()
    );
}

#[test]
fn placement_uses_the_same_comparison() {
    let t0 = Instant::now();
    let mut b = Balancer::new(best());
    let peers = [peer(2, load(1.0, 1.0, 1000)), peer(3, load(0.0, 1.0, 1000))];
    // one process here already: a newcomer gets 500 MHz; node 3 gives 1000
    assert_eq!(b.place(t0, &local(1.0), &peers, 1 << 20), 3);
    // the first placement counts: node 3 now offers 500 MHz like node 2; not 1.3× the 500
    // here, but with 2 here (333 MHz) it is, and the tie goes to the lower id
    assert_eq!(b.place(t0, &local(1.0), &peers, 1 << 20), 1);
    assert_eq!(b.place(t0, &local(2.0), &peers, 1 << 20), 2);
    // an idle node keeps its new process (1000 MHz here, nobody better by 1.3×)
    assert_eq!(
        Balancer::new(best()).place(t0, &local(0.0), &peers, 1 << 20),
        1
    );
    let mut stay = local(5.0);
    stay.flags.lstay = true;
    assert_eq!(Balancer::new(best()).place(t0, &stay, &peers, 1 << 20), 1);
}

fn arb_load() -> impl Strategy<Value = Load> {
    (
        0.0f64..16.0,
        1u32..8,
        0.1f64..8.0,
        500u32..4000,
        0u64..32,
        1u64..32,
    )
        .prop_map(|(l, cpus, cap, speed, free, total)| Load {
            load: l,
            cpus,
            speed,
            free_mem: free.min(total) * GIB,
            total_mem: total * GIB,
            capacity: cap.min(f64::from(cpus)),
        })
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    (
        1u32..10,
        arb_load(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(1e5f64..1e10),
    )
        .prop_map(|(id, load, up, blocked, bandwidth)| Peer {
            id,
            load,
            up,
            blocked,
            bandwidth,
        })
}

fn arb_proc() -> impl Strategy<Value = Process> {
    (
        1u32..1000,
        1u32..4,
        0u64..10_000,
        0u64..10_000,
        0u64..(4 * GIB),
        any::<bool>(),
        prop::option::of((0u64..40_000, 1u32..10)),
    )
        .prop_map(|(pid, home, age, cpu, size, lock, arrived)| Process {
            pid,
            home,
            age: Duration::from_millis(age.max(cpu)),
            cpu: Duration::from_millis(cpu),
            size,
            lock,
            arrived: arrived.map(|(ms, _)| base() - Duration::from_millis(ms)),
            came_from: arrived.map(|(_, from)| from),
        })
}

fn base() -> Instant {
    use std::sync::OnceLock;
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(|| Instant::now() + Duration::from_secs(100))
}

proptest! {
    /// Whatever the inputs: no move to a down, blocked, refused node or to itself; no
    /// locked, lstay'd or freshly arrived process moves; nothing at all under `stay`; each
    /// process at most once; at most `max_moves` load decisions; same inputs, same answer.
    #[test]
    fn decisions_respect_every_rule(
        me in arb_load(),
        flags in (any::<bool>(), any::<bool>()),
        peers in prop::collection::vec(arb_peer(), 0..8),
        procs in prop::collection::vec(arb_proc(), 0..12),
        refused in prop::option::of(1u32..10),
        max_moves in 0usize..4,
        choose_among in 1usize..4,
    ) {
        // a node's processes have distinct PIDs (the decisions name them by PID)
        let procs: Vec<_> = {
            let mut ids = std::collections::BTreeSet::new();
            procs.into_iter().filter(|p| ids.insert(p.pid)).collect()
        };
        let cfg = Config { max_moves, choose_among, ..Config::default() };
        let now = base();
        let local = Local { id: 1, load: me, flags: Flags { stay: flags.0, lstay: flags.1, block: false } };
        let mut b = Balancer::new(cfg.clone());
        if let Some(r) = refused {
            b.on_refused(r, now - Duration::from_secs(1));
        }
        let mut b2 = b.clone();
        let d = b.on_tick(now, &local, &peers, &procs);
        prop_assert_eq!(&d, &b2.on_tick(now, &local, &peers, &procs));
        if flags.0 {
            prop_assert!(d.is_empty());
        }
        let mut seen = std::collections::BTreeSet::new();
        for x in &d {
            prop_assert!(x.to != 1);
            prop_assert!(Some(x.to) != refused, "refused target chosen");
            // some entry for that node is up and not blocked (ids may repeat: the first counts)
            let mut sorted = peers.clone();
            sorted.sort_by_key(|p| p.id);
            let first = sorted.iter().find(|p| p.id == x.to).unwrap();
            prop_assert!(first.up && !first.blocked, "{:?} to {:?}", x, first);
            let p = procs.iter().find(|p| p.pid == x.pid).unwrap();
            prop_assert!(!p.lock);
            prop_assert!(!(flags.1 && p.home == 1));
            prop_assert!(p.arrived.is_none_or(|t| now.duration_since(t) >= cfg.min_stay));
            prop_assert!(p.came_from != Some(x.to) || now.duration_since(p.arrived.unwrap()) >= cfg.return_after);
            prop_assert!(seen.insert(x.pid));
        }
        let load_moves = d.iter().filter(|x| matches!(x.reason, Reason::Load { .. })).count();
        prop_assert!(load_moves <= max_moves);
    }

    /// No ping-pong: when A sends P to B, B (with the loads as they are after the move, and
    /// P past its minimum stay) never sends P back to A.
    #[test]
    fn never_sends_a_process_straight_back(
        a in arb_load(),
        b_load in arb_load(),
        cpu_ms in 0u64..1_000_000,
        size in 0u64..GIB,
    ) {
        let roomy = |mut l: Load| { l.total_mem = 64 * GIB; l.free_mem = 32 * GIB; l };
        let (a, b_load) = (roomy(a), roomy(b_load));
        let t0 = base();
        let p = Process {
            pid: 7, home: 1, age: Duration::from_millis(cpu_ms * 2),
            cpu: Duration::from_millis(cpu_ms), size, lock: false, arrived: None, came_from: None,
        };
        let at_a = Local { id: 1, load: a, flags: Flags::default() };
        let d = Balancer::new(best()).on_tick(t0, &at_a, &[peer(2, b_load)], &[p]);
        prop_assume!(!d.is_empty());
        prop_assert_eq!(d[0].to, 2);
        // after the move, exactly: A has one less, B one more
        let later = t0 + Duration::from_secs(60);
        let a_after = Load { load: (a.load - 1.0).max(0.0), ..a };
        let b_after = Load { load: b_load.load + 1.0, ..b_load };
        let at_b = Local { id: 2, load: b_after, flags: Flags::default() };
        // (past `return_after` too: the hysteresis alone prevents the bounce)
        let moved = Process { arrived: Some(t0), came_from: Some(1), age: p.age + Duration::from_secs(60), cpu: p.cpu + Duration::from_secs(60), ..p };
        let back = Balancer::new(best()).on_tick(later, &at_b, &[peer(1, a_after)], &[moved]);
        prop_assert!(back.is_empty(), "{:?} then {:?}", d, back);
    }
}

/// Three senders that know the same three idle nodes: with `choose_among` 3 they do not all
/// pick the same one; with 1 they do.
#[test]
fn senders_spread_over_equally_good_targets() {
    let peers = [
        peer(10, load(0.0, 1.0, 1000)),
        peer(11, load(0.0, 1.0, 1000)),
        peer(12, load(0.0, 1.0, 1000)),
    ];
    let pick = |cfg: &Config, node: NodeId, pid: u32| {
        let me = Local {
            id: node,
            ..local(4.0)
        };
        let d = Balancer::new(cfg.clone()).on_tick(
            Instant::now(),
            &me,
            &peers,
            &[proc_(pid, 100.0, 1000)],
        );
        d[0].to
    };
    let spread = Config::default();
    assert_eq!(spread.choose_among, 3);
    let chosen: std::collections::BTreeSet<NodeId> = (1..=6).map(|n| pick(&spread, n, 7)).collect();
    assert!(chosen.len() >= 2, "{chosen:?}");
    let flock: std::collections::BTreeSet<NodeId> = (1..=6).map(|n| pick(&best(), n, 7)).collect();
    assert_eq!(flock.len(), 1);
    // deterministic
    assert_eq!(pick(&spread, 3, 7), pick(&spread, 3, 7));
}

/// A guest is admitted by the target's own figures: memory for the image plus the margin
/// (10% of its total, at most 256 MiB), the load per CPU with the guest at most the limit.
#[test]
fn admit_checks_block_memory_with_margin_and_load_per_cpu() {
    let cfg = Config::default();
    const MIB: u64 = 1 << 20;
    // a cgroup node: 160 MiB total, 40 MiB free, half a CPU
    let mut small = Local {
        id: 2,
        load: Load {
            load: 0.0,
            cpus: 2,
            speed: 2000,
            free_mem: 40 * MIB,
            total_mem: 160 * MIB,
            capacity: 0.5,
        },
        flags: Flags::default(),
    };
    // margin 16 MiB: 24 MiB fits, 24 MiB + 1 byte does not
    assert_eq!(admit(&cfg, &small, 24 * MIB), Ok(()));
    let e = admit(&cfg, &small, 24 * MIB + 1).unwrap_err();
    assert_eq!(
        e,
        Refusal::NoMemory {
            node: 2,
            free: 40 * MIB,
            needed: 40 * MIB + 1
        }
    );
    assert!(e.to_string().contains("node 2") && e.to_string().contains("memory"));
    // a big machine keeps at most 256 MiB, not 10% of 64 GiB
    let big = Local {
        load: Load {
            free_mem: GIB,
            total_mem: 64 * GIB,
            ..small.load
        },
        ..small
    };
    assert_eq!(admit(&cfg, &big, GIB - (256 << 20)), Ok(()));
    assert!(admit(&cfg, &big, GIB - (256 << 20) + 1).is_err());
    // load: (7 + 1) / 0.5 = 16 per CPU is the limit; 7.5 + 1 is over it
    small.load.load = 7.0;
    assert_eq!(admit(&cfg, &small, MIB), Ok(()));
    small.load.load = 7.5;
    let e = admit(&cfg, &small, MIB).unwrap_err();
    assert!(
        matches!(e, Refusal::Loaded { node: 2, per_cpu, .. } if (per_cpu - 17.0).abs() < 1e-9),
        "{e}"
    );
    assert!(e.to_string().contains("loaded"), "{e}");
    // a load that is not a number refuses
    small.load.load = f64::NAN;
    assert!(matches!(
        admit(&cfg, &small, MIB),
        Err(Refusal::Loaded { .. })
    ));
    small.load.load = 0.0;
    small.flags.block = true;
    assert_eq!(admit(&cfg, &small, MIB), Err(Refusal::Blocked { node: 2 }));
}
