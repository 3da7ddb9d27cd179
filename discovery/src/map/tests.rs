use super::*;
use proptest::prelude::*;

const F: &str = "/etc/openmosix.map";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// node1..node9 -> 192.168.1.N, loophost -> 127.0.1.1, v6host -> fd00::7, anything else fails.
fn resolver(host: &str) -> Result<Vec<IpAddr>, String> {
    if let Some(n) = host.strip_prefix("node") {
        if let Ok(n) = n.parse::<u8>() {
            if (1..=9).contains(&n) {
                return Ok(vec![
                    ip("fe80::1"),
                    IpAddr::V4(Ipv4Addr::new(192, 168, 1, n)),
                ]);
            }
        }
    }
    match host {
        "loophost" => Ok(vec![ip("127.0.1.1")]),
        "v6host" => Ok(vec![ip("fd00::7")]),
        "emptyhost" => Ok(vec![]),
        _ => Err("Name or service not known".into()),
    }
}

fn parse(text: &str) -> Result<Map, Error> {
    Map::parse_with(text, F, &resolver)
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn table(map: &Map) -> Vec<(NodeId, IpAddr)> {
    map.nodes().map(|n| (n.id, n.addr)).collect()
}

fn four() -> Vec<(NodeId, IpAddr)> {
    (1..=4)
        .map(|i| (i, IpAddr::V4(Ipv4Addr::new(192, 168, 1, i as u8))))
        .collect()
}

// ---- the examples of the seed page (openMosix HOWTO, "Distribution specific installations") ----

#[test]
fn seed_hostnames() {
    let m = parse("1 node1 1\n2 node2 1\n3 node3 1\n4 node4 1\n").unwrap();
    assert_eq!(table(&m), four());
    assert_eq!(m.node(3).unwrap().host.as_deref(), Some("node3"));
    assert!(m.nodes().all(|n| n.aliases.is_empty()));
}

#[test]
fn seed_addresses() {
    let m = parse("1 192.168.1.1 1\n2 192.168.1.2 1\n3 192.168.1.3 1\n4 192.168.1.4 1\n").unwrap();
    assert_eq!(table(&m), four());
    assert_eq!(m.node(2).unwrap().host, None);
    assert_eq!(m.node(4).unwrap().line, 4);
}

#[test]
fn seed_range() {
    let m = parse("1 192.168.1.1 4\n").unwrap();
    assert_eq!(table(&m), four());
    assert!(m.nodes().all(|n| n.line == 1));
    let long =
        parse("1 192.168.1.1 1\n2 192.168.1.2 1\n3 192.168.1.3 1\n4 192.168.1.4 1\n").unwrap();
    assert_eq!(m.digest(), long.digest());
}

#[test]
fn seed_alias() {
    let m = parse(
        "1 192.168.1.1 1\n2 192.168.1.2 1\n3 192.168.1.3 1\n4 192.168.1.4 1\n4 192.168.10.10 ALIAS\n",
    )
    .unwrap();
    assert_eq!(table(&m), four());
    let n4 = m.node(4).unwrap();
    assert_eq!(
        n4.aliases,
        vec![Alias {
            addr: ip("192.168.10.10"),
            host: None,
            line: 5
        }]
    );
    assert_eq!(
        n4.addrs().collect::<Vec<_>>(),
        vec![ip("192.168.1.4"), ip("192.168.10.10")]
    );
    assert_eq!(m.node_by_addr(ip("192.168.10.10")), Some(4));
    assert_eq!(m.node_by_addr(ip("192.168.1.2")), Some(2));
    assert_eq!(m.node_by_addr(ip("192.168.1.9")), None);
}

#[test]
fn alias_in_any_case() {
    let a = parse("1 192.168.1.1 4\n4 192.168.10.10 ALIAS\n").unwrap();
    let b = parse("1 192.168.1.1 4\n4 192.168.10.10 alias\n").unwrap();
    assert_eq!(a.node(4).unwrap().aliases[0].addr, ip("192.168.10.10"));
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn error_range_zero_says_so() {
    // Not "ALIAS for node 1, which no earlier line defines": the range itself is wrong.
    let zero = "/etc/openmosix.map:1: range 0: a range is a count of nodes, at least 1 (to give a node defined on an earlier line another address, write ALIAS)";
    assert_eq!(err("1 10.0.0.1 0"), zero);
    assert_eq!(err("1 10.0.0.1 000"), zero);
    assert_eq!(
        err("1 10.0.0.1 1\n1 10.0.1.1 0"),
        zero.replace("map:1:", "map:2:")
    );
}

#[test]
fn local_cluster_range() {
    let m = parse("1 127.0.0.1 4").unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(m.node(4).unwrap().addr, ip("127.0.0.4"));
    assert_eq!(m.ids().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
}

#[test]
fn comments_blank_lines_whitespace_crlf() {
    let text = "# cluster map\n\n  1\t192.168.1.1   2   # first two\r\n\n#3 10.0.0.1 1\n3 192.168.1.3 1#trailing\n   \n";
    let m = parse(text).unwrap();
    assert_eq!(
        table(&m),
        vec![
            (1, ip("192.168.1.1")),
            (2, ip("192.168.1.2")),
            (3, ip("192.168.1.3"))
        ]
    );
    let plain = parse("3 192.168.1.3 1\n1 192.168.1.1 1\n2 192.168.1.2 1").unwrap();
    assert_eq!(m.digest(), plain.digest());
    assert_eq!(m.digest_hex(), plain.digest_hex());
    assert_eq!(m.digest_hex().len(), 64);
}

#[test]
fn digest_differs_when_content_differs() {
    let base = parse("1 192.168.1.1 4").unwrap().digest();
    assert_ne!(base, parse("1 192.168.1.1 3").unwrap().digest());
    assert_ne!(base, parse("2 192.168.1.1 4").unwrap().digest());
    assert_ne!(base, parse("1 192.168.1.2 4").unwrap().digest());
    assert_ne!(
        base,
        parse("1 192.168.1.1 4\n4 10.0.0.1 ALIAS").unwrap().digest()
    );
    // hostnames are hashed as written, so the resolver does not matter, case does not either
    assert_eq!(
        parse("1 NODE1 1").unwrap().digest(),
        Map::parse_with("1 node1 1", F, &|_: &str| -> Result<Vec<IpAddr>, String> {
            Ok(vec![ip("10.1.1.1")])
        })
        .unwrap()
        .digest()
    );
    assert_eq!(
        parse("1 192.168.1.1 4").unwrap().normalized(),
        "omnode-map-v1\n1 192.168.1.1\n2 192.168.1.2\n3 192.168.1.3\n4 192.168.1.4\n"
    );
}

#[test]
fn digest_alias_order_does_not_matter() {
    let a = parse("1 10.0.0.1 1\n1 10.0.1.1 ALIAS\n1 10.0.2.1 ALIAS").unwrap();
    let b = parse("1 10.0.0.1 1\n1 10.0.2.1 ALIAS\n1 10.0.1.1 ALIAS").unwrap();
    assert_eq!(a.digest(), b.digest());
}

#[test]
fn ipv6_and_hostname_preference() {
    let m = parse("1 fd00::1 3\n4 v6host 1\n5 node5 1\n").unwrap();
    assert_eq!(m.node(3).unwrap().addr, ip("fd00::3"));
    assert_eq!(m.node(4).unwrap().addr, ip("fd00::7"));
    // node5 resolves to [fe80::1, 192.168.1.5]: IPv4 is preferred
    assert_eq!(m.node(5).unwrap().addr, ip("192.168.1.5"));
    assert_eq!(
        err("1 fd00::fe 3"),
        "/etc/openmosix.map:1: range of 3 nodes from fd00::fe runs past fd00::ff"
    );
}

#[test]
fn hostname_alias() {
    let m = parse("1 192.168.2.1 1\n1 node1 ALIAS").unwrap();
    let a = &m.node(1).unwrap().aliases[0];
    assert_eq!(
        (a.addr, a.host.as_deref(), a.line),
        (ip("192.168.1.1"), Some("node1"), 2)
    );
}

#[test]
fn max_ids_and_entries() {
    assert_eq!(
        parse("65535 10.0.0.1 1").unwrap().ids().collect::<Vec<_>>(),
        vec![65535]
    );
    assert_eq!(parse("65532 10.0.0.1 4").unwrap().len(), 4);
    assert_eq!(parse("1 10.0.0.0 256").unwrap().len(), 256);
    // 256 entries plus comments and blank lines is fine
    let mut text = String::from("# header\n\n");
    for i in 1..=256u32 {
        text.push_str(&format!(
            "{i} 10.0.{}.{} 1 # node {i}\n\n",
            i / 200,
            i % 200 + 1
        ));
    }
    assert_eq!(parse(&text).unwrap().len(), 256);
    text.push_str("300 10.9.9.9 1\n");
    assert_eq!(
        err(&text),
        "/etc/openmosix.map:515: more than 256 entries (the map allows at most 256 lines besides comments and blank lines)"
    );
}

// ---- bad files, each with its exact message ----

#[test]
fn error_duplicate_id() {
    assert_eq!(
        err("1 192.168.1.1 1\n2 192.168.1.2 1\n2 192.168.1.3 1\n"),
        "/etc/openmosix.map:3: duplicate node id 2 (first defined on line 2)"
    );
    assert_eq!(
        err("1 10.0.0.1 4\n# comment\n3 10.0.1.3 1\n"),
        "/etc/openmosix.map:3: duplicate node id 3 (first defined on line 1)"
    );
}

#[test]
fn error_overlapping_ranges() {
    assert_eq!(
        err("1 10.0.0.1 4\n10 10.0.0.3 2\n"),
        "/etc/openmosix.map:2: address 10.0.0.3 already used by node 3 (line 1)"
    );
    assert_eq!(
        err("1 192.168.1.1 1\n2 node1 1\n"),
        "/etc/openmosix.map:2: address 192.168.1.1 already used by node 1 (line 1)"
    );
    assert_eq!(
        err("1 10.0.0.1 2\n2 10.0.0.1 ALIAS\n"),
        "/etc/openmosix.map:2: address 10.0.0.1 already used by node 1 (line 1)"
    );
}

#[test]
fn error_range_past_255() {
    assert_eq!(
        err("1 192.168.1.250 10\n"),
        "/etc/openmosix.map:1: range of 10 nodes from 192.168.1.250 runs past 192.168.1.255"
    );
    assert_eq!(
        err("1 10.0.0.1 99999999999999999999999\n"),
        "/etc/openmosix.map:1: range of 18446744073709551615 nodes from 10.0.0.1 runs past 10.0.0.255"
    );
    assert!(parse("1 192.168.1.250 6").is_ok());
}

#[test]
fn error_hostname_with_range() {
    assert_eq!(
        err("1 node1 4\n"),
        "/etc/openmosix.map:1: hostname 'node1' with range 4: a range above 1 needs an IP address"
    );
}

#[test]
fn error_unresolvable() {
    assert_eq!(
        err("1 192.168.1.1 1\n2 nosuchhost 1\n"),
        "/etc/openmosix.map:2: cannot resolve hostname 'nosuchhost': Name or service not known"
    );
    assert_eq!(
        err("1 emptyhost 1\n"),
        "/etc/openmosix.map:1: cannot resolve hostname 'emptyhost': no addresses"
    );
    assert_eq!(
        err("1 10.0.0.1 1\n1 nosuchhost ALIAS\n"),
        "/etc/openmosix.map:2: cannot resolve hostname 'nosuchhost': Name or service not known"
    );
}

#[test]
fn error_loopback_hostname_on_multi_machine_map() {
    assert_eq!(
        err("1 node1 1\n2 loophost 1\n3 node3 1\n"),
        "/etc/openmosix.map:2: hostname 'loophost' resolves to loopback address 127.0.1.1, but the map has non-loopback addresses (fix /etc/hosts or write the node's address)"
    );
    // only loopback addresses: a one-machine cluster, fine
    let m = parse("1 127.0.0.2 1\n2 loophost 1\n").unwrap();
    assert_eq!(m.node(2).unwrap().addr, ip("127.0.1.1"));
    // a literal loopback address is not a hostname
    assert!(parse("1 127.0.0.1 1\n2 192.168.1.2 1\n").is_ok());
}

#[test]
fn error_ids() {
    assert_eq!(
        err("0 10.0.0.1 1"),
        "/etc/openmosix.map:1: node id 0 out of range (1-65535)"
    );
    assert_eq!(
        err("\n65536 10.0.0.1 1"),
        "/etc/openmosix.map:2: node id 65536 out of range (1-65535)"
    );
    assert_eq!(
        err("99999999999999999999999 10.0.0.1 1"),
        "/etc/openmosix.map:1: node id 99999999999999999999999 out of range (1-65535)"
    );
    assert_eq!(
        err("one 10.0.0.1 1"),
        "/etc/openmosix.map:1: invalid node id 'one' (expected a number 1-65535)"
    );
    assert_eq!(
        err("-1 10.0.0.1 1"),
        "/etc/openmosix.map:1: invalid node id '-1' (expected a number 1-65535)"
    );
    assert_eq!(
        err("65534 10.0.0.1 3"),
        "/etc/openmosix.map:1: range of 3 nodes from id 65534 runs past node id 65535"
    );
}

#[test]
fn error_fields_range_address() {
    assert_eq!(
        err("1 10.0.0.1"),
        "/etc/openmosix.map:1: expected 3 fields `ID ADDRESS RANGE`, found 2"
    );
    assert_eq!(
        err("1 10.0.0.1 1 extra # comment"),
        "/etc/openmosix.map:1: expected 3 fields `ID ADDRESS RANGE`, found 4"
    );
    assert_eq!(
        err("1 10.0.0.1 four"),
        "/etc/openmosix.map:1: invalid range 'four' (expected a count of at least 1, or ALIAS)"
    );
    assert_eq!(
        err("1 10.0.0.1 -2"),
        "/etc/openmosix.map:1: invalid range '-2' (expected a count of at least 1, or ALIAS)"
    );
    assert_eq!(
        err("1 192.168.1.300 1"),
        "/etc/openmosix.map:1: invalid address '192.168.1.300' (expected an IPv4 or IPv6 address or a hostname)"
    );
    assert_eq!(
        err("1 fd00::zz 1"),
        "/etc/openmosix.map:1: invalid address 'fd00::zz' (expected an IPv4 or IPv6 address or a hostname)"
    );
    assert_eq!(
        err("1 bad..host 1"),
        "/etc/openmosix.map:1: invalid address 'bad..host' (expected an IPv4 or IPv6 address or a hostname)"
    );
    assert_eq!(
        err("1 0.0.0.0 1"),
        "/etc/openmosix.map:1: address 0.0.0.0 cannot be a node address (unspecified, broadcast or multicast)"
    );
    assert_eq!(
        err("1 10.0.0.1 1\n1 224.0.0.1 ALIAS"),
        "/etc/openmosix.map:2: address 224.0.0.1 cannot be a node address (unspecified, broadcast or multicast)"
    );
}

#[test]
fn error_alias_undefined() {
    assert_eq!(
        err("1 10.0.0.1 1\n2 10.0.1.2 ALIAS\n2 10.0.0.2 1\n"),
        "/etc/openmosix.map:2: ALIAS for node 2, which no earlier line defines"
    );
}

#[test]
fn error_empty() {
    assert_eq!(err(""), "/etc/openmosix.map: the map defines no nodes");
    assert_eq!(
        err("# only comments\n\n   \n"),
        "/etc/openmosix.map: the map defines no nodes"
    );
}

#[test]
fn line_error_is_matchable() {
    match parse("1 10.0.0.1 1\n1 10.0.0.2 1").unwrap_err() {
        Error::Line { file, line, error } => {
            assert_eq!((file.as_str(), line), (F, 2));
            assert_eq!(
                error,
                LineError::DuplicateId {
                    id: 1,
                    first_line: 1
                }
            );
        }
        e => panic!("unexpected {e:?}"),
    }
}

// ---- find_local ----

#[test]
fn find_local_single_and_alias() {
    let m = parse("1 192.168.1.1 4\n4 192.168.10.10 ALIAS").unwrap();
    assert_eq!(m.find_local(|a| *a == ip("192.168.1.2"), None).unwrap(), 2);
    assert_eq!(
        m.find_local(|a| *a == ip("192.168.10.10"), None).unwrap(),
        4
    );
    assert_eq!(
        m.find_local(|a| *a == ip("192.168.1.2"), Some(2)).unwrap(),
        2
    );
}

#[test]
fn find_local_errors() {
    let m = parse("1 127.0.0.1 4").unwrap();
    let loopback = |a: &IpAddr| a.is_loopback();
    assert_eq!(
        m.find_local(loopback, None).unwrap_err().to_string(),
        "several nodes of /etc/openmosix.map have addresses of this machine (1, 2, 3, 4); choose one with --node N"
    );
    assert_eq!(m.find_local(loopback, Some(3)).unwrap(), 3);
    assert_eq!(
        m.find_local(loopback, Some(7)).unwrap_err().to_string(),
        "--node 7: /etc/openmosix.map has no node 7"
    );
    let m = parse("1 192.168.1.1 2\n2 10.0.0.2 ALIAS").unwrap();
    assert_eq!(
        m.find_local(|a| *a == ip("192.168.1.1"), Some(2))
            .unwrap_err()
            .to_string(),
        "--node 2: the addresses of node 2 in /etc/openmosix.map (192.168.1.2, 10.0.0.2) are not addresses of this machine"
    );
    assert_eq!(
        m.find_local(|_| false, None).unwrap_err().to_string(),
        "no node of /etc/openmosix.map has an address of this machine; check the map's addresses or the machine's interfaces"
    );
}

#[test]
fn find_local_with_real_interfaces() {
    let m = parse("1 127.0.0.1 4").unwrap();
    assert_eq!(m.find_local(is_local_addr, Some(2)).unwrap(), 2);
    let m = parse("1 127.0.0.7 1\n2 192.0.2.1 1").unwrap(); // 192.0.2.0/24 is TEST-NET-1
    assert_eq!(m.find_local(is_local_addr, None).unwrap(), 1);
}

#[test]
fn local_addresses() {
    assert!(is_local_addr(&ip("127.0.0.1")));
    assert!(is_local_addr(&ip("127.0.0.4")));
    assert!(is_local_addr(&ip("::1")));
    assert!(!is_local_addr(&ip("192.0.2.77")));
    let addrs = local_addrs().unwrap();
    for a in &addrs {
        assert!(is_local_addr(a));
    }
}

// ---- files ----

#[test]
fn find_default_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("openmosix.map");
    let b = dir.path().join("mosix.map");
    let c = dir.path().join("hpc.map");
    let cands = [a.clone(), b.clone(), c.clone()];
    let e = find_default_in(&cands).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "no map file found (looked for {}, {}, {})",
            a.display(),
            b.display(),
            c.display()
        )
    );
    std::fs::write(&c, "1 10.0.0.1 1").unwrap();
    assert_eq!(find_default_in(&cands).unwrap(), c);
    std::fs::write(&b, "1 10.0.0.1 1").unwrap();
    assert_eq!(find_default_in(&cands).unwrap(), b);
    std::fs::write(&a, "1 10.0.0.1 1").unwrap();
    assert_eq!(find_default_in(&cands).unwrap(), a);
    assert_eq!(
        DEFAULT_PATHS,
        ["/etc/openmosix.map", "/etc/mosix.map", "/etc/hpc.map"]
    );
}

#[test]
fn load_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("openmosix.map");
    std::fs::write(&p, "1 127.0.0.1 4\n").unwrap();
    let m = Map::load(&p).unwrap();
    assert_eq!(m.len(), 4);
    assert_eq!(m.file(), p.display().to_string());

    std::fs::write(&p, "1 127.0.0.1 4\n2 127.0.0.9 1\n").unwrap();
    assert_eq!(
        Map::load(&p).unwrap_err().to_string(),
        format!(
            "{}:2: duplicate node id 2 (first defined on line 1)",
            p.display()
        )
    );

    std::fs::write(&p, b"1 127.0.0.1 1\n2 127.0.\xff.2 1\n").unwrap();
    assert_eq!(
        Map::load_with(&p, &resolver).unwrap_err().to_string(),
        format!(
            "{}:2: invalid address '127.0.\u{fffd}.2' (expected an IPv4 or IPv6 address or a hostname)",
            p.display()
        )
    );

    let missing = dir.path().join("nope.map");
    let e = Map::load(&missing).unwrap_err();
    assert!(matches!(e, Error::Read { .. }));
    assert!(
        e.to_string()
            .starts_with(&format!("{}: cannot read map: ", missing.display())),
        "{e}"
    );
}

#[test]
fn system_resolver_localhost() {
    let m = Map::parse("1 localhost 1", "x.map").unwrap();
    assert!(m.node(1).unwrap().addr.is_loopback());
    let e = Map::parse("1 no-such-host.invalid 1", "x.map")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("x.map:1: cannot resolve hostname 'no-such-host.invalid': "),
        "{e}"
    );
}

// ---- never panics ----

fn check_no_panic(text: &str) {
    match parse(text) {
        Ok(m) => {
            assert!(!m.is_empty() && m.len() <= 256 * 256);
            let _ = m.digest();
            let _ = m.find_local(|a| a.is_loopback(), None);
        }
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "multi-line message: {s:?}");
            assert!(s.starts_with(F), "{s}");
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_no_panic(&text);
    }

    #[test]
    fn map_like_text_never_panics(
        lines in proptest::collection::vec(
            (
                prop_oneof![Just("0".to_string()), Just("65535".to_string()), "[0-9]{1,6}", "[a-z#-]{0,3}"],
                prop_oneof![
                    "(10|127|192)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
                    "fd00::[0-9a-f]{1,3}",
                    "(node[0-9]|loophost|v6host|emptyhost|x)",
                    ".{0,8}",
                ],
                prop_oneof!["[0-9]{1,4}", Just("ALIAS".to_string()), Just("0".to_string()), ".{0,3}"],
                prop_oneof![Just(""), Just(" # c"), Just(" extra"), Just("\r")],
            ),
            0..40,
        )
    ) {
        let text: String = lines
            .iter()
            .map(|(a, b, c, d)| format!("{a} {b}\t{c}{d}\n"))
            .collect();
        check_no_panic(&text);
    }
}

// ---- peers and reloads ----

#[test]
fn peer_digest_check() {
    let m = parse("1 192.168.1.1 4").unwrap();
    let same = parse("# same\n1 192.168.1.1 2\n3 192.168.1.3 2\n").unwrap();
    assert!(m.check_peer_digest(2, &same.digest_hex()).is_ok());
    assert!(
        m.check_peer_digest(2, &same.digest_hex().to_uppercase())
            .is_ok()
    );
    let other = parse("1 192.168.1.1 5").unwrap();
    let e = m.check_peer_digest(3, &other.digest_hex()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "node 3 has a different map (digest {} vs ours {} from /etc/openmosix.map); refused: use the same map file on every node",
            &other.digest_hex()[..12],
            &m.digest_hex()[..12]
        )
    );
    assert!(matches!(e, Error::DigestMismatch { peer: 3, .. }));
    assert!(
        m.check_peer_digest(3, "ab\ncd")
            .unwrap_err()
            .to_string()
            .starts_with("node 3 has a different map (digest ab\\ncd vs ours ")
    );
}

#[test]
fn map_changes() {
    let old = parse("1 192.168.1.1 4\n4 10.0.0.4 ALIAS").unwrap();
    assert!(old.changes(&old).is_empty());
    let new = parse("1 192.168.1.1 2\n3 192.168.1.33 1\n5 192.168.1.5 1\n").unwrap();
    assert_eq!(
        old.changes(&new),
        Changes {
            added: vec![5],
            removed: vec![4],
            changed: vec![3],
        }
    );
    let alias_only = parse("1 192.168.1.1 4").unwrap();
    assert_eq!(old.changes(&alias_only).changed, vec![4]);
}

#[test]
fn messages_escape_control_characters() {
    assert_eq!(
        err("1 ho\u{1b}[2Jst 1"),
        "/etc/openmosix.map:1: invalid address 'ho\\u{1b}[2Jst' (expected an IPv4 or IPv6 address or a hostname)"
    );
    let long = "x".repeat(300);
    assert_eq!(
        err(&format!("{long} 10.0.0.1 1")),
        format!(
            "/etc/openmosix.map:1: invalid node id '{}…' (expected a number 1-65535)",
            "x".repeat(80)
        )
    );
}
