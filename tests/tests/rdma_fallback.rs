//! `omnode --transport rdma` on a machine without an RDMA device (this one, CI's): real
//! daemons on loopback. Nodes link over TCP and say why, `status` names each link's
//! transport, a node started with plain `--transport tcp` is linked too, and
//! `--no-fallback` refuses to start with the reason. The RDMA path itself runs in the
//! soft-RoCE guests (scripts/rdma-guest).
#![cfg(feature = "rdma")]

use std::time::Duration;

use omnode_tests::{Cluster, run_cli, wait_for};

const FORM: Duration = Duration::from_secs(30);

fn node<'a>(s: &'a serde_json::Value, id: u64) -> &'a serde_json::Value {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap()
}

#[test]
fn rdma_nodes_without_a_device_link_over_tcp_and_status_says_so() {
    let mut c = Cluster::new("1 127.0.0.231 3\n");
    let (map, key) = (c.map.clone(), c.key.clone());
    c.start_with_args(1, &map, &key, &["--transport", "rdma"]);
    c.start_with_args(2, &map, &key, &["--transport", "rdma"]);
    c.start_with_args(3, &map, &key, &["--transport", "tcp"]);
    let formed = wait_for(FORM, || {
        (1..=3)
            .all(|n| c.up(n).is_some_and(|up| up.len() == 3))
            .then_some(())
    });
    assert!(
        formed.is_some(),
        "the three nodes did not all see each other up"
    );
    let links = wait_for(FORM, || {
        let s = c.status(1)?;
        let (n2, n3) = (node(&s, 2).clone(), node(&s, 3).clone());
        (n2["link"].is_string() && n3["link"].is_string()).then_some((n2, n3))
    });
    let (n2, n3) = links.expect("status of node 1 names no link transport");
    assert_eq!(n2["link"], "tcp (fallback)", "{n2}");
    let why2 = n2["link_why"].as_str().unwrap();
    assert!(why2.contains("no RDMA device"), "{why2}");
    // Node 3 runs plain TCP: no side channel to dial.
    assert_eq!(n3["link"], "tcp (fallback)", "{n3}");
    let why3 = n3["link_why"].as_str().unwrap();
    assert!(why3.contains("no RDMA side channel"), "{why3}");
    assert!(node(&c.status(1).unwrap(), 1)["link"].is_null());
    // Node 3 (plain TCP) says tcp for its links.
    let s3 = c.status(3).unwrap();
    assert_eq!(node(&s3, 1)["link"], "tcp", "{s3}");

    // The table has the column.
    let out = run_cli(&["status", "--socket", c.socket(1).to_str().unwrap()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let head = table.lines().next().unwrap();
    assert!(head.contains("LINK"), "{table}");
    assert_eq!(table.matches("tcp (fallback)").count(), 2, "{table}");

    // One log line per peer says why, and one says this node has no RDMA.
    let log = c.log_text(1);
    assert!(log.contains("RDMA unavailable on this node"), "{log}");
    assert_eq!(
        log.matches("node 2: linked over TCP, not RDMA").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("node 3: linked over TCP, not RDMA").count(),
        1,
        "{log}"
    );
}

#[test]
fn rdma_with_no_fallback_refuses_to_start_and_says_why() {
    let mut c = Cluster::new("1 127.0.0.235 2\n");
    let (map, key) = (c.map.clone(), c.key.clone());
    c.start_with_args(1, &map, &key, &["--transport", "rdma", "--no-fallback"]);
    let st = c
        .wait_exit(1, Duration::from_secs(20))
        .expect("omnode --no-fallback kept running without an RDMA device");
    assert!(!st.success());
    let log = c.log_text(1);
    assert!(
        log.contains("no RDMA device") && log.contains("/dev/infiniband"),
        "{log}"
    );
}
