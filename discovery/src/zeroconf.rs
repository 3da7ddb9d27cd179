//! Zero-config (mDNS) mode: which address a node stands on and which node id it takes.
//!
//! Like openMosix's omdiscd, a node's id is the last two bytes of its IPv4 address
//! (`10.0.3.7` is node `3 * 256 + 7 = 775`): stable across restarts, unique within a /16, and
//! readable. Two nodes claiming one id (the same last two bytes in different subnets) are a
//! collision: the transport keeps the first and refuses the second with a log line naming
//! both, and the operator gives one of them `--node N`.

use std::net::{IpAddr, Ipv4Addr};

use crate::NodeId;

/// The cluster "digest" every mDNS-mode node sends in its handshake: mDNS nodes agree with
/// each other (the cluster key keeps clusters apart) and refuse map-mode nodes.
pub const CLUSTER: &str = "mdns-v1";

/// The node id for `ip`, or None for an address that gives none (x.y.0.0).
pub fn node_id(ip: Ipv4Addr) -> Option<NodeId> {
    let [_, _, hi, lo] = ip.octets();
    let id = (u32::from(hi) << 8) | u32::from(lo);
    (id != 0).then_some(id)
}

/// The address a zero-config node stands on: the first non-loopback, non-link-local IPv4
/// address of `addrs` (the machine's interface addresses, in interface order).
pub fn primary_ipv4(addrs: &[IpAddr]) -> Option<Ipv4Addr> {
    addrs.iter().find_map(|a| match a {
        IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified() => {
            Some(*v4)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_the_last_two_address_bytes() {
        assert_eq!(node_id(Ipv4Addr::new(10, 0, 3, 7)), Some(775));
        assert_eq!(node_id(Ipv4Addr::new(192, 168, 1, 4)), Some(260));
        assert_eq!(node_id(Ipv4Addr::new(10, 77, 0, 12)), Some(12));
        assert_eq!(node_id(Ipv4Addr::new(172, 16, 0, 0)), None);
        assert_eq!(node_id(Ipv4Addr::new(10, 9, 255, 255)), Some(65535));
    }

    #[test]
    fn primary_address_skips_loopback_link_local_and_v6() {
        let addrs: Vec<IpAddr> = vec![
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "169.254.3.4".parse().unwrap(),
            "fe80::1".parse().unwrap(),
            "10.77.0.3".parse().unwrap(),
            "192.168.1.9".parse().unwrap(),
        ];
        assert_eq!(primary_ipv4(&addrs), Some(Ipv4Addr::new(10, 77, 0, 3)));
        assert_eq!(primary_ipv4(&addrs[..4]), None);
    }
}
