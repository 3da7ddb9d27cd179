use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Local node 1, peers 2 and 3 from the map, default config, all heartbeats of t0 sent.
fn setup() -> (Membership, Instant) {
    let t0 = Instant::now();
    let mut m = Membership::new(1, Config::default(), t0);
    m.add_nodes([1, 2, 3], Source::Map, t0);
    assert_eq!(
        m.on_tick(t0),
        vec![
            Output::SendHeartbeat { to: 2 },
            Output::SendHeartbeat { to: 3 }
        ]
    );
    (m, t0)
}

#[test]
fn defaults() {
    let c = Config::default();
    assert_eq!(c.heartbeat_interval, ms(500));
    assert_eq!(c.down_timeout, ms(3000));
}

#[test]
fn local_node_always_up() {
    let t0 = Instant::now();
    let m = Membership::new(5, Config::default(), t0);
    assert!(m.is_up(5));
    assert!(m.contains(5));
    assert!(!m.is_up(6));
    assert!(!m.contains(6));
    assert_eq!(
        m.nodes().collect::<Vec<_>>(),
        vec![NodeState {
            id: 5,
            up: true,
            since: t0,
            source: Source::Local,
            last_seen: None,
            link: false
        }]
    );
    assert_eq!(m.next_deadline(), None);
    assert!(m.up_peers().is_empty());
}

#[test]
fn new_peers_start_down_and_get_a_heartbeat_at_once() {
    let t0 = Instant::now();
    let mut m = Membership::new(2, Config::default(), t0);
    assert!(m.add_node(3, Source::Map, t0));
    assert!(m.add_node(1, Source::Mdns, t0));
    assert!(!m.add_node(2, Source::Map, t0), "local node is not a peer");
    assert!(!m.add_node(3, Source::Mdns, t0), "already known");
    let ids: Vec<_> = m.nodes().map(|n| (n.id, n.up, n.source)).collect();
    assert_eq!(
        ids,
        vec![
            (1, false, Source::Mdns),
            (2, true, Source::Local),
            (3, false, Source::Map)
        ]
    );
    assert_eq!(m.next_deadline(), Some(t0));
    assert_eq!(
        m.on_tick(t0 + ms(1)),
        vec![
            Output::SendHeartbeat { to: 1 },
            Output::SendHeartbeat { to: 3 }
        ]
    );
    // mDNS node later found in the map: source becomes Map
    assert!(!m.add_node(1, Source::Map, t0));
    assert_eq!(m.node(1).unwrap().source, Source::Map);
}

#[test]
fn heartbeats_scheduled_at_the_interval() {
    let (mut m, t0) = setup();
    assert_eq!(m.next_deadline(), Some(t0 + ms(500)));
    assert_eq!(m.on_tick(t0 + ms(100)), vec![]);
    assert_eq!(m.on_tick(t0 + ms(499)), vec![]);
    assert_eq!(
        m.on_tick(t0 + ms(500)),
        vec![
            Output::SendHeartbeat { to: 2 },
            Output::SendHeartbeat { to: 3 }
        ]
    );
    assert_eq!(m.on_tick(t0 + ms(999)), vec![]);
    assert_eq!(
        m.on_tick(t0 + ms(1000)),
        vec![
            Output::SendHeartbeat { to: 2 },
            Output::SendHeartbeat { to: 3 }
        ]
    );
    // a stalled loop: one heartbeat per peer, then the schedule restarts from now
    assert_eq!(
        m.on_tick(t0 + ms(2700)),
        vec![
            Output::SendHeartbeat { to: 2 },
            Output::SendHeartbeat { to: 3 }
        ]
    );
    assert_eq!(m.on_tick(t0 + ms(3000)), vec![]);
    assert_eq!(m.next_deadline(), Some(t0 + ms(3200)));
}

#[test]
fn heartbeat_marks_up_once() {
    let (mut m, t0) = setup();
    assert_eq!(
        m.on_heartbeat(2, t0 + ms(10)),
        vec![Output::NodeUp { id: 2 }]
    );
    assert_eq!(m.on_heartbeat(2, t0 + ms(20)), vec![]);
    assert!(m.is_up(2));
    assert!(!m.is_up(3));
    assert_eq!(m.up_peers(), vec![2]);
    let s = m.node(2).unwrap();
    assert_eq!(
        (s.up, s.since, s.last_seen, s.link),
        (true, t0 + ms(10), Some(t0 + ms(20)), true)
    );
}

#[test]
fn goes_down_after_the_timeout_and_not_before() {
    let (mut m, t0) = setup();
    m.on_heartbeat(2, t0);
    m.on_heartbeat(3, t0);
    // 3 keeps sending, 2 falls silent
    let mut t = t0;
    for step in 1..=5 {
        t = t0 + ms(500 * step);
        m.on_heartbeat(3, t);
        let out = m.on_tick(t);
        assert_eq!(
            out,
            vec![
                Output::SendHeartbeat { to: 2 },
                Output::SendHeartbeat { to: 3 }
            ]
        );
    }
    assert_eq!(t, t0 + ms(2500));
    assert_eq!(m.next_deadline(), Some(t0 + ms(3000)));
    assert_eq!(m.on_tick(t0 + ms(2999)), vec![]);
    assert!(m.is_up(2));
    assert_eq!(
        m.on_tick(t0 + ms(3000)),
        vec![
            Output::NodeDown {
                id: 2,
                reason: DownReason::Timeout {
                    silent_for: ms(3000)
                }
            },
            Output::SendHeartbeat { to: 2 },
            Output::SendHeartbeat { to: 3 },
        ]
    );
    assert!(!m.is_up(2));
    assert!(m.is_up(3));
    assert_eq!(m.node(2).unwrap().since, t0 + ms(3000));
    // no second NodeDown
    assert_eq!(
        m.on_tick(t0 + ms(3500)),
        vec![
            Output::SendHeartbeat { to: 2 },
            Output::SendHeartbeat { to: 3 }
        ]
    );
    let out = m.on_tick(t0 + ms(9000));
    assert_eq!(out.len(), 3, "3 times out now: {out:?}");
}

#[test]
fn comes_back_up_on_a_heartbeat() {
    let (mut m, t0) = setup();
    m.on_heartbeat(2, t0);
    let out = m.on_tick(t0 + ms(3100));
    assert_eq!(
        out[0],
        Output::NodeDown {
            id: 2,
            reason: DownReason::Timeout {
                silent_for: ms(3100)
            }
        }
    );
    assert_eq!(
        m.on_heartbeat(2, t0 + ms(3200)),
        vec![Output::NodeUp { id: 2 }]
    );
    assert!(m.is_up(2));
    assert_eq!(m.node(2).unwrap().since, t0 + ms(3200));
    assert_eq!(
        m.on_tick(t0 + ms(6199)),
        vec![
            Output::SendHeartbeat { to: 2 },
            Output::SendHeartbeat { to: 3 }
        ]
    );
    assert_eq!(
        m.on_tick(t0 + ms(6200))[0],
        Output::NodeDown {
            id: 2,
            reason: DownReason::Timeout {
                silent_for: ms(3000)
            }
        }
    );
}

#[test]
fn link_down_marks_down_at_once() {
    let (mut m, t0) = setup();
    m.on_heartbeat(2, t0);
    assert_eq!(
        m.on_link_down(2, t0 + ms(50)),
        vec![Output::NodeDown {
            id: 2,
            reason: DownReason::LinkLost
        }]
    );
    assert!(!m.is_up(2));
    assert!(!m.node(2).unwrap().link);
    // already down: nothing more, neither from the link nor from the timeout
    assert_eq!(m.on_link_down(2, t0 + ms(60)), vec![]);
    assert_eq!(m.on_link_down(3, t0 + ms(60)), vec![]);
    assert!(
        !m.on_tick(t0 + ms(5000))
            .iter()
            .any(|o| matches!(o, Output::NodeDown { .. }))
    );
    // heartbeats are still scheduled for it, and a heartbeat brings it back
    assert_eq!(
        m.on_heartbeat(2, t0 + ms(5100)),
        vec![Output::NodeUp { id: 2 }]
    );
}

#[test]
fn link_up_sends_a_heartbeat_now_but_does_not_mark_up() {
    let (mut m, t0) = setup();
    assert_eq!(
        m.on_link_up(3, t0 + ms(100)),
        vec![Output::SendHeartbeat { to: 3 }]
    );
    assert!(!m.is_up(3));
    assert!(m.node(3).unwrap().link);
    // 3's schedule restarted from the link-up
    assert_eq!(
        m.on_tick(t0 + ms(500)),
        vec![Output::SendHeartbeat { to: 2 }]
    );
    assert_eq!(
        m.on_tick(t0 + ms(600)),
        vec![Output::SendHeartbeat { to: 3 }]
    );
}

#[test]
fn unknown_senders_are_reported_and_ignored() {
    let (mut m, t0) = setup();
    assert_eq!(m.on_heartbeat(9, t0), vec![Output::UnknownPeer { id: 9 }]);
    assert_eq!(m.on_link_up(9, t0), vec![Output::UnknownPeer { id: 9 }]);
    assert_eq!(m.on_link_down(9, t0), vec![Output::UnknownPeer { id: 9 }]);
    assert!(!m.contains(9));
    // our own id is ignored silently
    assert_eq!(m.on_heartbeat(1, t0), vec![]);
    assert_eq!(m.on_link_up(1, t0), vec![]);
    assert_eq!(m.on_link_down(1, t0), vec![]);
    assert!(m.is_up(1));
    // mDNS flow: add, then the heartbeat counts
    assert!(m.add_node(9, Source::Mdns, t0));
    assert_eq!(m.on_heartbeat(9, t0), vec![Output::NodeUp { id: 9 }]);
}

#[test]
fn remove_node() {
    let (mut m, t0) = setup();
    m.on_heartbeat(2, t0);
    assert_eq!(
        m.remove_node(2),
        vec![Output::NodeDown {
            id: 2,
            reason: DownReason::Removed
        }]
    );
    assert_eq!(m.remove_node(3), vec![], "3 was down");
    assert_eq!(m.remove_node(1), vec![], "local node stays");
    assert_eq!(m.remove_node(42), vec![]);
    assert_eq!(m.nodes().map(|n| n.id).collect::<Vec<_>>(), vec![1]);
    assert_eq!(m.on_tick(t0 + ms(10_000)), vec![]);
}

#[test]
fn heartbeats_out_of_order_keep_the_latest() {
    let (mut m, t0) = setup();
    m.on_heartbeat(2, t0 + ms(1000));
    m.on_heartbeat(2, t0 + ms(400)); // an older timestamp must not move last_seen back
    assert_eq!(m.node(2).unwrap().last_seen, Some(t0 + ms(1000)));
    assert!(
        m.on_tick(t0 + ms(3500))
            .iter()
            .all(|o| !matches!(o, Output::NodeDown { .. }))
    );
}

#[test]
fn nodes_sorted_with_local_in_place() {
    let t0 = Instant::now();
    let mut m = Membership::new(3, Config::default(), t0);
    m.add_nodes([5, 1, 4, 2], Source::Map, t0);
    assert_eq!(
        m.nodes().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(m.node(3).unwrap().source, Source::Local);
}

#[test]
fn custom_config_and_reason_text() {
    let t0 = Instant::now();
    let cfg = Config {
        heartbeat_interval: ms(100),
        down_timeout: ms(250),
    };
    let mut m = Membership::new(1, cfg.clone(), t0);
    assert_eq!(m.config(), &cfg);
    assert_eq!(m.local(), 1);
    m.add_node(2, Source::Map, t0);
    m.on_heartbeat(2, t0);
    let out = m.on_tick(t0 + ms(250));
    assert_eq!(
        out,
        vec![
            Output::NodeDown {
                id: 2,
                reason: DownReason::Timeout {
                    silent_for: ms(250)
                }
            },
            Output::SendHeartbeat { to: 2 }
        ]
    );
    assert_eq!(
        DownReason::Timeout {
            silent_for: ms(3040)
        }
        .to_string(),
        "no heartbeat for 3.0s"
    );
    assert_eq!(DownReason::LinkLost.to_string(), "link lost");
    assert_eq!(
        DownReason::Removed.to_string(),
        "removed from the node table"
    );
}

/// A simulated three-node cluster over a perfect network driven by hand: all come up, one
/// dies, the others mark it down within the timeout plus one tick, it returns and comes up.
#[test]
fn simulated_cluster() {
    let t0 = Instant::now();
    let mut nodes: Vec<Membership> = (1..=3)
        .map(|id| {
            let mut m = Membership::new(id, Config::default(), t0);
            m.add_nodes(1..=3, Source::Map, t0);
            m
        })
        .collect();
    let mut alive = [true, true, true];
    let mut events: Vec<(u64, NodeId, Output)> = Vec::new();
    for tick in 0..40u64 {
        let now = t0 + ms(tick * 250);
        if tick == 8 {
            alive[2] = false; // node 3 dies at 2 s
        }
        if tick == 28 {
            // and restarts at 7 s with a fresh table
            alive[2] = true;
            nodes[2] = Membership::new(3, Config::default(), now);
            nodes[2].add_nodes(1..=3, Source::Map, now);
        }
        let mut sends = Vec::new();
        for (i, m) in nodes.iter_mut().enumerate() {
            if !alive[i] {
                continue;
            }
            for o in m.on_tick(now) {
                match o {
                    Output::SendHeartbeat { to } => sends.push((m.local(), to)),
                    other => events.push((tick, m.local(), other)),
                }
            }
        }
        for (from, to) in sends {
            let i = (to - 1) as usize;
            if alive[i] {
                for o in nodes[i].on_heartbeat(from, now) {
                    events.push((tick, to, o));
                }
            }
        }
    }
    let downs: Vec<_> = events
        .iter()
        .filter(|e| matches!(e.2, Output::NodeDown { .. }))
        .collect();
    assert_eq!(downs.len(), 2, "{events:?}");
    for (tick, at, o) in downs {
        assert!(matches!(o, Output::NodeDown { id: 3, .. }));
        assert_ne!(*at, 3);
        // last heartbeat from 3 at 1.5 s (tick 6); marked down at 4.5 s (tick 18)
        assert_eq!(*tick, 18);
    }
    let ups_of_3: Vec<_> = events
        .iter()
        .filter(|e| e.2 == Output::NodeUp { id: 3 })
        .map(|e| e.0)
        .collect();
    assert_eq!(ups_of_3, vec![0, 0, 28, 28]);
    for m in &nodes {
        assert!(
            m.nodes().all(|n| n.up),
            "node {} sees {:?}",
            m.local(),
            m.nodes().collect::<Vec<_>>()
        );
    }
}
