//! Zero-config clusters in a test bed of network namespaces (one per host, on one bridge):
//! real `omnode --discovery mdns` daemons find each other by mDNS with the same key, and
//! nothing else. Needs root (namespaces) and omnode built with the `p2p` feature.
#![cfg(feature = "p2p")]

use std::time::{Duration, Instant};

use omnode_tests::netns::Bed;
use omnode_tests::{run_cli, wait_for};

fn bed(n: u8) -> Option<Bed> {
    match Bed::new(n) {
        Ok(b) => Some(b),
        Err(why) => {
            // Under CI the test must run: failing says so instead of passing silently.
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but the network-namespace test bed is unavailable (needs root and iproute2): {why}"
            );
            eprintln!("SKIPPED: network-namespace test bed unavailable: {why}");
            None
        }
    }
}

fn keygen(bed: &Bed, name: &str) -> String {
    let p = bed.path().join(name);
    let out = run_cli(&["keygen", "--out", p.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.to_str().unwrap().to_string()
}

fn status(bed: &Bed, i: u8) -> Option<serde_json::Value> {
    let out = run_cli(&[
        "status",
        "--json",
        "--socket",
        bed.socket(i).to_str().unwrap(),
    ]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// (id, source) of every node host `i` reports up.
fn up(bed: &Bed, i: u8) -> Option<Vec<(u64, String)>> {
    let s = status(bed, i)?;
    let mut v: Vec<(u64, String)> = s["nodes"]
        .as_array()?
        .iter()
        .filter(|n| n["up"] == true)
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["source"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    Some(v)
}

fn up_ids(bed: &Bed, i: u8) -> Vec<u64> {
    up(bed, i)
        .unwrap_or_default()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

fn mdns_args(key: &str) -> Vec<&str> {
    vec![
        "--discovery",
        "mdns",
        "--key-file",
        key,
        "--load-tick-ms",
        "250",
    ]
}

#[test]
fn four_hosts_without_a_map_form_one_cluster_and_a_stranger_stays_out() {
    let Some(mut bed) = bed(5) else { return };
    let key = keygen(&bed, "cluster.key");
    let other = keygen(&bed, "other.key");
    for i in 1..=4 {
        bed.start(i, &mdns_args(&key));
    }
    bed.start(5, &mdns_args(&other));
    let t0 = Instant::now();
    let formed = wait_for(Duration::from_secs(10), || {
        (1..=4)
            .all(|i| up_ids(&bed, i) == vec![1, 2, 3, 4])
            .then_some(())
    });
    assert!(
        formed.is_some(),
        "4 mDNS hosts did not list each other within 10 s: {:?}",
        (1..=4).map(|i| up(&bed, i)).collect::<Vec<_>>()
    );
    eprintln!("mDNS cluster of 4 formed in {:?}", t0.elapsed());
    // Ids come from the address (10.77.0.N → N) and every peer was found by mDNS.
    let seen = up(&bed, 1).unwrap();
    assert_eq!(
        seen,
        vec![
            (1, "local".into()),
            (2, "mdns".into()),
            (3, "mdns".into()),
            (4, "mdns".into())
        ]
    );
    assert_eq!(
        status(&bed, 3).unwrap()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == 2)
            .unwrap()["addr"],
        "10.77.0.2"
    );

    // The stranger: never listed, and sees no one.
    std::thread::sleep(Duration::from_secs(2));
    for i in 1..=4 {
        let listed: Vec<u64> = status(&bed, i).unwrap()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_u64().unwrap())
            .collect();
        assert!(
            !listed.contains(&5),
            "host {i} lists the stranger: {listed:?}"
        );
    }
    assert_eq!(up_ids(&bed, 5), vec![5]);

    // A host that goes away is marked down; back with the same id.
    bed.stop(2);
    let down = wait_for(Duration::from_secs(8), || {
        [1, 3, 4]
            .iter()
            .all(|&i| !up_ids(&bed, i).contains(&2))
            .then_some(())
    });
    assert!(down.is_some(), "host 2 still listed up after it stopped");
    bed.start(2, &mdns_args(&key));
    let back = wait_for(Duration::from_secs(10), || {
        (1..=4)
            .all(|i| up_ids(&bed, i) == vec![1, 2, 3, 4])
            .then_some(())
    });
    assert!(back.is_some(), "host 2 did not come back as node 2");
}

#[test]
fn a_map_cluster_and_an_mdns_cluster_on_one_bridge_stay_apart() {
    let Some(mut bed) = bed(6) else { return };
    let key_a = keygen(&bed, "a.key");
    let key_b = keygen(&bed, "b.key");
    let map = bed.file("openmosix.map", "1 10.77.0.1 3\n");
    let map = map.to_str().unwrap().to_string();
    for i in 1..=3 {
        bed.start(
            i,
            &[
                "--map",
                &map,
                "--key-file",
                &key_a,
                "--transport",
                "p2p",
                "--load-tick-ms",
                "250",
            ],
        );
    }
    for i in 4..=6 {
        bed.start(i, &mdns_args(&key_b));
    }
    let apart = wait_for(Duration::from_secs(15), || {
        ((1..=3).all(|i| up_ids(&bed, i) == vec![1, 2, 3])
            && (4..=6).all(|i| up_ids(&bed, i) == vec![4, 5, 6]))
        .then_some(())
    });
    assert!(
        apart.is_some(),
        "clusters did not form apart: {:?}",
        (1..=6).map(|i| up(&bed, i)).collect::<Vec<_>>()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!((1..=3).all(|i| up_ids(&bed, i) == vec![1, 2, 3]));
    assert!((4..=6).all(|i| up_ids(&bed, i) == vec![4, 5, 6]));
}

#[test]
fn the_bed_cleans_up_its_namespaces() {
    let Some(bed) = bed(2) else { return };
    let ns = bed.host(1).ns.clone();
    let list = || {
        String::from_utf8_lossy(
            &std::process::Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .to_string()
    };
    assert!(list().contains(&ns));
    drop(bed);
    assert!(!list().contains(&ns), "namespace {ns} left behind");
}

#[test]
fn two_hosts_claiming_one_node_id_are_a_reported_collision() {
    let Some(mut bed) = bed(3) else { return };
    let key = keygen(&bed, "cluster.key");
    bed.start(3, &mdns_args(&key));
    let mut args = mdns_args(&key);
    args.extend(["--node", "7"]);
    bed.start(1, &args);
    // Both ends of the first pair see each other before the second claimant arrives.
    let first = wait_for(Duration::from_secs(10), || {
        (up_ids(&bed, 3) == vec![3, 7] && up_ids(&bed, 1) == vec![3, 7]).then_some(())
    });
    assert!(
        first.is_some(),
        "hosts 1 and 3 did not find each other: {:?} {:?}",
        up(&bed, 3),
        up(&bed, 1)
    );
    bed.start(2, &args);
    let reported = wait_for(Duration::from_secs(10), || {
        (1..=3)
            .any(|i| bed.log_text(i).contains("id collision"))
            .then_some(())
    });
    assert!(reported.is_some(), "no host reported the collision");
    // The first claimant keeps the id; the second joins no one (and goes on not joining).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(up_ids(&bed, 3), vec![3, 7]);
    assert_eq!(up_ids(&bed, 1), vec![3, 7]);
    assert_eq!(up_ids(&bed, 2), vec![7]);
    let node7 = status(&bed, 3).unwrap()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 7)
        .cloned()
        .unwrap();
    assert_eq!(node7["addr"], "10.77.0.1");
}
