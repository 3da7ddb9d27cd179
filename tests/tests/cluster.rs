//! Real `omnode` processes on loopback addresses forming clusters from one map.
//! Each test uses its own 127.0.0.N range and port, so they may run in parallel.

use std::time::{Duration, Instant};

use omnode_tests::{Cluster, run_cli, wait_for};

const FORM: Duration = Duration::from_secs(20);

fn all_up(c: &Cluster, nodes: &[u32]) -> bool {
    let want: Vec<u64> = nodes.iter().map(|&n| n as u64).collect();
    nodes.iter().all(|&n| {
        c.up_with_load(n).is_some_and(|mut up| {
            up.sort();
            up == want
        })
    })
}

#[test]
fn four_nodes_form_a_cluster_mark_a_dead_node_down_and_up_again() {
    let c = Cluster::new("# four nodes on this machine\n1 127.0.0.11 4\n");
    form_fail_and_return(c);
}

/// The same over the libp2p transport (map mode).
#[cfg(feature = "p2p")]
#[test]
fn four_nodes_over_libp2p_form_fail_and_return() {
    let mut c = Cluster::new("1 127.0.0.15 4\n");
    c.extra = vec!["--transport".into(), "p2p".into()];
    form_fail_and_return(c);
}

fn form_fail_and_return(mut c: Cluster) {
    for n in 1..=4 {
        c.start(n);
    }
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2, 3, 4]).then_some(())).is_some(),
        "4 nodes did not all see each other up with a load"
    );

    // The JSON carries what scripts need.
    let s = c.status(2).unwrap();
    assert_eq!(s["node"], 2);
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    let n3 = nodes.iter().find(|n| n["id"] == 3).unwrap();
    let first = c.status(1).unwrap()["nodes"][0]["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let base: u8 = first.rsplit('.').next().unwrap().parse().unwrap();
    assert_eq!(n3["addr"], format!("127.0.0.{}", base + 2));
    assert!(n3["cpus"].as_u64().unwrap() >= 1 && n3["total_mem"].as_u64().unwrap() > 0);

    // A crash: the others mark it down within 5 s.
    c.kill(4);
    let killed = Instant::now();
    let down = wait_for(Duration::from_secs(5), || {
        [1, 2, 3]
            .iter()
            .all(|&n| c.up(n).is_some_and(|up| !up.contains(&4)))
            .then_some(())
    });
    assert!(
        down.is_some(),
        "node 4 still up somewhere 5 s after it was killed"
    );
    eprintln!("node 4 marked down everywhere after {:?}", killed.elapsed());
    assert!([1, 2, 3].iter().all(|&n| c.up(n).unwrap().len() == 3));

    // Back again.
    c.start(4);
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2, 3, 4]).then_some(())).is_some(),
        "node 4 did not come back up"
    );
    assert!(
        c.log_text(1).contains("node 4 is down"),
        "node 1 logs the failure"
    );
}

#[test]
fn a_node_with_another_key_is_refused_and_never_listed_up() {
    let mut c = Cluster::new("1 127.0.0.21 5\n");
    for n in 1..=4 {
        c.start(n);
    }
    let stranger_key = c.dir.path().join("other.key");
    assert!(
        run_cli(&["keygen", "--out", stranger_key.to_str().unwrap()])
            .status
            .success()
    );
    let map = c.map.clone();
    c.start_with(5, &map, &stranger_key);
    assert!(
        wait_for(FORM, || all_up(&c, &[1, 2, 3, 4]).then_some(())).is_some(),
        "the 4 good nodes did not form"
    );
    // Give the stranger time to try every node more than once.
    let refused = wait_for(Duration::from_secs(10), || {
        (1..=5)
            .any(|n| c.log_text(n).contains("authentication failed"))
            .then_some(())
    });
    assert!(refused.is_some(), "no node logged the refused link");
    std::thread::sleep(Duration::from_secs(2));
    for n in 1..=4 {
        let up = c.up(n).unwrap();
        assert!(!up.contains(&5), "node {n} lists the stranger up: {up:?}");
    }
    assert_eq!(c.up(5).unwrap(), vec![5], "the stranger sees no one");
}

#[test]
fn a_node_with_another_map_is_told_and_refused() {
    let mut c = Cluster::new("1 127.0.0.31 2\n");
    c.start(1);
    let other_map = c.dir.path().join("other.map");
    std::fs::write(&other_map, "1 127.0.0.31 2\n9 127.0.0.39 1\n").unwrap();
    let key = c.key.clone();
    c.start_with(2, &other_map, &key);
    let refused = wait_for(Duration::from_secs(10), || {
        (1..=2)
            .any(|n| c.log_text(n).contains("cluster map differs"))
            .then_some(())
    });
    assert!(refused.is_some(), "no node said the maps differ");
    assert_eq!(c.up(1).unwrap(), vec![1]);
    assert_eq!(c.up(2).unwrap(), vec![2]);
}

#[test]
fn cli_errors_are_one_actionable_line() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = run_cli(&["status", "--socket", sock.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("omnode: cannot reach the omnode daemon at")
            && err.contains("is it running"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let map = dir.path().join("bad.map");
    std::fs::write(&map, "1 127.0.0.41 1\n1 127.0.0.42 1\n").unwrap();
    let key = dir.path().join("k");
    assert!(
        run_cli(&["keygen", "--out", key.to_str().unwrap()])
            .status
            .success()
    );
    let out = run_cli(&[
        "--map",
        map.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
        "--socket",
        sock.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.starts_with(&format!("omnode: {}:2: duplicate node id 1", map.display())),
        "{err}"
    );

    let out = run_cli(&[
        "--map",
        map.to_str().unwrap(),
        "--key-file",
        "/nonexistent/key",
        "--socket",
        sock.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster key /nonexistent/key") && err.contains("omnode keygen"),
        "{err}"
    );
}

#[test]
fn a_map_node_whose_peers_never_answer_says_what_to_check() {
    let mut c = Cluster::new("1 127.0.0.45 3\n");
    c.start(1);
    let said = wait_for(Duration::from_secs(20), || {
        c.log_text(1)
            .contains("none of the 2 peers of the map has been reached")
            .then_some(())
    });
    assert!(said.is_some(), "no warning about unreachable map peers");
    let log = c.log_text(1);
    assert!(log.contains("same map, cluster key and --port"), "{log}");
    assert!(
        !log.contains("mDNS"),
        "a map node must not fall back to mDNS: {log}"
    );
    assert_eq!(c.up(1).unwrap(), vec![1]);
}
