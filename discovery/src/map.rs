//! The openMosix map file (`/etc/openmosix.map`): which node ids exist and at which addresses.
//!
//! # Format
//!
//! One entry per line, three whitespace-separated fields: `ID ADDRESS RANGE`.
//!
//! - `ID`: the node id of the first node of the entry, 1–65535.
//! - `ADDRESS`: an IPv4 or IPv6 address, or a hostname (resolved through a [`Resolver`]).
//! - `RANGE`: a count ≥ 1, or `ALIAS` (any case). A range of `0` is refused with a message
//!   that says so (a count of nodes starts at 1; `ALIAS` gives an earlier node another address).
//!   A count `n` defines `n` nodes: the id and the last byte of the address count up together,
//!   so `1 192.168.1.1 4` is nodes 1–4 at 192.168.1.1–192.168.1.4. A range may not run past
//!   the last byte 255, and a hostname only takes range 1. An `ALIAS` entry adds an extra
//!   address (another network interface) to a node defined on an earlier line.
//!
//! `#` starts a comment (whole-line or trailing); blank lines are ignored. At most
//! [`MAX_ENTRIES`] (256) entry lines are allowed; blank and comment-only lines do not count.
//!
//! # Checks
//!
//! Errors are one line each and name the file, the line and what is wrong
//! (`/etc/openmosix.map:3: duplicate node id 2 (first defined on line 1)`): bad syntax, an id
//! out of range, a duplicate id, the same address twice (overlapping ranges), a range past
//! `.255`, a hostname with a range above 1, an unresolvable hostname, and a hostname that
//! resolves to a loopback address in a map that also has non-loopback addresses (a
//! multi-machine map: the usual `127.0.1.1 myhost` line of `/etc/hosts` would make the node
//! unreachable for its peers). Literal loopback addresses are allowed: `1 127.0.0.1 4` is a
//! four-node cluster on one machine.
//!
//! # Digest
//!
//! [`Map::digest`] hashes the expanded node table (id, address as written — a canonical IP
//! or the lowercased hostname — and the aliases), not the text: comments, blank lines,
//! whitespace, entry order and `1 a 4` versus four one-node lines give the same digest.
//! Hostnames are hashed as written, not as resolved, so two nodes whose resolvers differ
//! still agree on the map.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::NodeId;

/// Most entry lines (non-blank, non-comment) a map may have.
pub const MAX_ENTRIES: usize = 256;
/// Highest node id.
pub const MAX_NODE_ID: NodeId = 65535;
/// Where the map is looked for when none is given, in this order.
pub const DEFAULT_PATHS: [&str; 3] = ["/etc/openmosix.map", "/etc/mosix.map", "/etc/hpc.map"];

/// What is wrong with one line of a map (shown after `FILE:LINE: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error(
        "more than {max} entries (the map allows at most {max} lines besides comments and blank lines)"
    )]
    TooManyEntries { max: usize },
    #[error("expected 3 fields `ID ADDRESS RANGE`, found {found}")]
    FieldCount { found: usize },
    #[error("invalid node id '{text}' (expected a number 1-65535)")]
    BadId { text: String },
    #[error("node id {text} out of range (1-65535)")]
    IdOutOfRange { text: String },
    #[error("invalid range '{text}' (expected a count of at least 1, or ALIAS)")]
    BadRange { text: String },
    #[error(
        "range 0: a range is a count of nodes, at least 1 (to give a node defined on an earlier line another address, write ALIAS)"
    )]
    ZeroRange,
    #[error("invalid address '{text}' (expected an IPv4 or IPv6 address or a hostname)")]
    BadAddress { text: String },
    #[error("address {addr} cannot be a node address (unspecified, broadcast or multicast)")]
    UnusableAddress { addr: IpAddr },
    #[error("range of {count} nodes from id {first} runs past node id 65535")]
    IdRangeOverflow { first: NodeId, count: u64 },
    #[error("range of {count} nodes from {start} runs past {last}")]
    RangePastEnd {
        start: IpAddr,
        count: u64,
        last: IpAddr,
    },
    #[error("hostname '{host}' with range {count}: a range above 1 needs an IP address")]
    HostnameRange { host: String, count: u64 },
    #[error("cannot resolve hostname '{host}': {reason}")]
    Unresolvable { host: String, reason: String },
    #[error(
        "hostname '{host}' resolves to loopback address {addr}, but the map has non-loopback addresses (fix /etc/hosts or write the node's address)"
    )]
    LoopbackHost { host: String, addr: IpAddr },
    #[error("duplicate node id {id} (first defined on line {first_line})")]
    DuplicateId { id: NodeId, first_line: usize },
    #[error("address {addr} already used by node {id} (line {first_line})")]
    DuplicateAddress {
        addr: IpAddr,
        id: NodeId,
        first_line: usize,
    },
    #[error("ALIAS for node {id}, which no earlier line defines")]
    AliasUndefined { id: NodeId },
}

/// Errors of this module; every one formats as a single line a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line of the map is wrong.
    #[error("{file}:{line}: {error}")]
    Line {
        file: String,
        line: usize,
        error: LineError,
    },
    #[error("{file}: cannot read map: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: the map defines no nodes")]
    Empty { file: String },
    /// None of the candidate paths exists (zero-config mode may fall back to mDNS).
    #[error("no map file found (looked for {})", join_paths(.candidates))]
    NotFound { candidates: Vec<PathBuf> },
    #[error(
        "no node of {file} has an address of this machine; check the map's addresses or the machine's interfaces"
    )]
    NoLocalNode { file: String },
    #[error(
        "several nodes of {file} have addresses of this machine ({}); choose one with --node N",
        join_ids(.ids)
    )]
    AmbiguousLocal { file: String, ids: Vec<NodeId> },
    #[error("--node {id}: {file} has no node {id}")]
    UnknownNode { file: String, id: NodeId },
    #[error(
        "--node {id}: the addresses of node {id} in {file} ({}) are not addresses of this machine",
        join_addrs(.addrs)
    )]
    NotLocal {
        file: String,
        id: NodeId,
        addrs: Vec<IpAddr>,
    },
    /// A peer announced a map digest different from ours ([`Map::check_peer_digest`]).
    #[error(
        "node {peer} has a different map (digest {} vs ours {} from {file}); refused: use the same map file on every node",
        short(.theirs),
        short(.ours)
    )]
    DigestMismatch {
        file: String,
        peer: NodeId,
        ours: String,
        theirs: String,
    },
}

/// What changed between two maps ([`Map::changes`]), ids increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Nodes only in the new map.
    pub added: Vec<NodeId>,
    /// Nodes only in the old map.
    pub removed: Vec<NodeId>,
    /// Nodes in both whose addresses (primary or aliases) differ.
    pub changed: Vec<NodeId>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// First 12 hex digits of a digest, for messages.
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn join_paths(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

fn join_ids(ids: &[NodeId]) -> String {
    let v: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    v.join(", ")
}

fn join_addrs(addrs: &[IpAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(|i| i.to_string()).collect();
    v.join(", ")
}

/// Resolves hostnames of the map. Injectable so that tests are deterministic.
pub trait Resolver {
    /// All addresses of `host`, or a short reason why there are none.
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String>;
}

/// The system resolver (`getaddrinfo` through [`std::net::ToSocketAddrs`], port 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        (host, 0)
            .to_socket_addrs()
            .map(|it| it.map(|sa| sa.ip()).collect())
            .map_err(|e| e.to_string())
    }
}

/// Any `Fn(&str) -> Result<Vec<IpAddr>, String>` is a resolver (handy in tests).
impl<F> Resolver for F
where
    F: Fn(&str) -> Result<Vec<IpAddr>, String>,
{
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        self(host)
    }
}

/// One node of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    /// Primary address (resolved if the map gave a hostname).
    pub addr: IpAddr,
    /// The hostname as written (lowercased), if the map gave one.
    pub host: Option<String>,
    /// Line of the map that defined the node.
    pub line: usize,
    /// Extra addresses from `ALIAS` lines, in file order.
    pub aliases: Vec<Alias>,
}

/// An extra address of a node (`ID ADDRESS ALIAS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub addr: IpAddr,
    pub host: Option<String>,
    pub line: usize,
}

impl Node {
    /// The primary address, then the aliases.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.addr).chain(self.aliases.iter().map(|a| a.addr))
    }
}

/// A parsed, checked and expanded map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    file: String,
    nodes: BTreeMap<NodeId, Node>,
}

enum Address {
    Ip(IpAddr),
    Host(String),
}

enum Range {
    Alias,
    Count(u64),
}

/// Gives `ip` to node `id` (defined on `line`, from hostname `host` if any), refusing an
/// address some node already has.
fn claim_address(
    owners: &mut HashMap<IpAddr, (NodeId, usize)>,
    hosts: &mut Vec<(usize, String, IpAddr)>,
    ip: IpAddr,
    id: NodeId,
    line: usize,
    host: &Option<String>,
) -> Result<(), LineError> {
    if let Some(&(owner, first_line)) = owners.get(&ip) {
        return Err(LineError::DuplicateAddress {
            addr: ip,
            id: owner,
            first_line,
        });
    }
    owners.insert(ip, (id, line));
    if let Some(h) = host {
        hosts.push((line, h.clone(), ip));
    }
    Ok(())
}

/// `text` made safe for a one-line message: control characters escaped, at most 80 characters.
fn shown(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == 80 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_id(text: &str) -> Result<NodeId, LineError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LineError::BadId { text: shown(text) });
    }
    match text.parse::<u64>() {
        Ok(n) if (1..=u64::from(MAX_NODE_ID)).contains(&n) => Ok(n as NodeId),
        _ => Err(LineError::IdOutOfRange { text: shown(text) }),
    }
}

fn parse_range(text: &str) -> Result<Range, LineError> {
    if text.eq_ignore_ascii_case("alias") {
        return Ok(Range::Alias);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LineError::BadRange { text: shown(text) });
    }
    // All digits: only overflow can fail, and a huge count is simply "too many".
    match text.parse::<u64>().unwrap_or(u64::MAX) {
        0 => Err(LineError::ZeroRange),
        n => Ok(Range::Count(n)),
    }
}

fn valid_hostname(text: &str) -> bool {
    let name = text.strip_suffix('.').unwrap_or(text);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_address(text: &str) -> Result<Address, LineError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Address::Ip(ip));
    }
    // Something that looks like an address but is not one (192.168.1.300) is a typo, not a
    // hostname to look up.
    let numeric = text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if numeric || text.contains(':') || !valid_hostname(text) {
        return Err(LineError::BadAddress { text: shown(text) });
    }
    Ok(Address::Host(text.to_ascii_lowercase()))
}

fn resolve(host: &str, resolver: &dyn Resolver) -> Result<IpAddr, LineError> {
    let addrs = resolver
        .resolve(host)
        .map_err(|reason| LineError::Unresolvable {
            host: host.into(),
            reason: shown(&reason),
        })?;
    // Prefer IPv4, as openMosix maps are IPv4 maps; otherwise the resolver's first answer.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| LineError::Unresolvable {
            host: host.into(),
            reason: "no addresses".into(),
        })
}

fn last_byte(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    }
}

fn with_last_byte(ip: IpAddr, b: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mut o = a.octets();
            o[3] = b;
            IpAddr::V4(Ipv4Addr::from(o))
        }
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[15] = b;
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}

fn usable(ip: IpAddr) -> Result<IpAddr, LineError> {
    let bad = match ip {
        IpAddr::V4(a) => a.is_unspecified() || a.is_broadcast() || a.is_multicast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    if bad {
        Err(LineError::UnusableAddress { addr: ip })
    } else {
        Ok(ip)
    }
}

impl Map {
    /// Parses `text` (the contents of `file`, which is only used in messages), resolving
    /// hostnames with the system resolver.
    pub fn parse(text: &str, file: &str) -> Result<Map, Error> {
        Self::parse_with(text, file, &SystemResolver)
    }

    /// Parses `text` resolving hostnames with `resolver`.
    pub fn parse_with(text: &str, file: &str, resolver: &dyn Resolver) -> Result<Map, Error> {
        let at = |line: usize, error: LineError| Error::Line {
            file: file.to_owned(),
            line,
            error,
        };
        let mut nodes: BTreeMap<NodeId, Node> = BTreeMap::new();
        // address -> (node, line) for overlap checks
        let mut owners: HashMap<IpAddr, (NodeId, usize)> = HashMap::new();
        // (line, host, resolved) for the loopback check, in file order
        let mut hosts: Vec<(usize, String, IpAddr)> = Vec::new();
        let mut entries = 0usize;

        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let content = raw.split('#').next().unwrap_or("");
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(at(line, LineError::TooManyEntries { max: MAX_ENTRIES }));
            }
            if fields.len() != 3 {
                return Err(at(
                    line,
                    LineError::FieldCount {
                        found: fields.len(),
                    },
                ));
            }
            let id = parse_id(fields[0]).map_err(|e| at(line, e))?;
            let address = parse_address(fields[1]).map_err(|e| at(line, e))?;
            let range = parse_range(fields[2]).map_err(|e| at(line, e))?;

            match range {
                Range::Alias => {
                    if !nodes.contains_key(&id) {
                        return Err(at(line, LineError::AliasUndefined { id }));
                    }
                    let (ip, host) = match address {
                        Address::Ip(ip) => (ip, None),
                        Address::Host(h) => {
                            (resolve(&h, resolver).map_err(|e| at(line, e))?, Some(h))
                        }
                    };
                    usable(ip).map_err(|e| at(line, e))?;
                    claim_address(&mut owners, &mut hosts, ip, id, line, &host)
                        .map_err(|e| at(line, e))?;
                    let node = nodes.get_mut(&id).expect("checked above");
                    node.aliases.push(Alias {
                        addr: ip,
                        host,
                        line,
                    });
                }
                Range::Count(count) => {
                    let (start, host) = match address {
                        Address::Ip(ip) => {
                            let last = u64::from(last_byte(ip));
                            if last.saturating_add(count - 1) > 255 {
                                return Err(at(
                                    line,
                                    LineError::RangePastEnd {
                                        start: ip,
                                        count,
                                        last: with_last_byte(ip, 255),
                                    },
                                ));
                            }
                            (ip, None)
                        }
                        Address::Host(h) => {
                            if count > 1 {
                                return Err(at(line, LineError::HostnameRange { host: h, count }));
                            }
                            (resolve(&h, resolver).map_err(|e| at(line, e))?, Some(h))
                        }
                    };
                    if u64::from(id) + (count - 1) > u64::from(MAX_NODE_ID) {
                        return Err(at(line, LineError::IdRangeOverflow { first: id, count }));
                    }
                    // count <= 256 here (checked against the last byte above, or 1 for hosts).
                    for i in 0..count {
                        let nid = id + i as NodeId;
                        let ip = with_last_byte(start, last_byte(start) + i as u8);
                        usable(ip).map_err(|e| at(line, e))?;
                        if let Some(prev) = nodes.get(&nid) {
                            return Err(at(
                                line,
                                LineError::DuplicateId {
                                    id: nid,
                                    first_line: prev.line,
                                },
                            ));
                        }
                        claim_address(&mut owners, &mut hosts, ip, nid, line, &host)
                            .map_err(|e| at(line, e))?;
                        nodes.insert(
                            nid,
                            Node {
                                id: nid,
                                addr: ip,
                                host: host.clone(),
                                line,
                                aliases: Vec::new(),
                            },
                        );
                    }
                }
            }
        }

        if nodes.is_empty() {
            return Err(Error::Empty { file: file.into() });
        }
        let multi_machine = owners.keys().any(|ip| !ip.is_loopback());
        if multi_machine {
            if let Some((line, host, addr)) = hosts.into_iter().find(|(_, _, ip)| ip.is_loopback())
            {
                return Err(at(line, LineError::LoopbackHost { host, addr }));
            }
        }
        Ok(Map {
            file: file.into(),
            nodes,
        })
    }

    /// Reads and parses the map at `path` with the system resolver.
    pub fn load(path: impl AsRef<Path>) -> Result<Map, Error> {
        Self::load_with(path, &SystemResolver)
    }

    /// Reads and parses the map at `path` with `resolver`. Invalid UTF-8 is replaced (and then
    /// reported as a bad field on its line), not refused wholesale.
    pub fn load_with(path: impl AsRef<Path>, resolver: &dyn Resolver) -> Result<Map, Error> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse_with(&String::from_utf8_lossy(&bytes), &file, resolver)
    }

    /// The file name given when parsing (for messages).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// All nodes, by increasing id.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> + '_ {
        self.nodes.values()
    }

    /// All node ids, increasing.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes.keys().copied()
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(&id)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.nodes.contains_key(&id)
    }

    /// Number of nodes (after range expansion; aliases do not count).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false for a parsed map (an empty map is an error); here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node that has `addr` as its primary or an alias address.
    pub fn node_by_addr(&self, addr: IpAddr) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|n| n.addrs().any(|a| a == addr))
            .map(|n| n.id)
    }

    /// The normalized text the digest is taken over: `omnode-map-v1`, then per node in id
    /// order `ID ADDRESS` and `ID ADDRESS ALIAS` per alias (aliases sorted), one per line.
    pub fn normalized(&self) -> String {
        let mut s = String::from("omnode-map-v1\n");
        let written =
            |ip: &IpAddr, host: &Option<String>| host.clone().unwrap_or_else(|| ip.to_string());
        for n in self.nodes.values() {
            let _ = writeln!(s, "{} {}", n.id, written(&n.addr, &n.host));
            let mut aliases: Vec<String> = n
                .aliases
                .iter()
                .map(|a| written(&a.addr, &a.host))
                .collect();
            aliases.sort();
            for a in aliases {
                let _ = writeln!(s, "{} {} ALIAS", n.id, a);
            }
        }
        s
    }

    /// SHA-256 of [`Map::normalized`]: equal for maps that differ only in comments,
    /// whitespace, entry order or range notation. Peers compare it to refuse a different map.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.normalized().as_bytes()).into()
    }

    /// [`Map::digest`] as 64 lowercase hex digits.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }

    /// Ok if `theirs` (a peer's [`Map::digest_hex`], any case) equals ours; otherwise the
    /// one-line refusal to log and to tell the peer.
    pub fn check_peer_digest(&self, peer: NodeId, theirs: &str) -> Result<(), Error> {
        let ours = self.digest_hex();
        if theirs.eq_ignore_ascii_case(&ours) {
            Ok(())
        } else {
            Err(Error::DigestMismatch {
                file: self.file.clone(),
                peer,
                ours,
                theirs: shown(theirs),
            })
        }
    }

    /// What a reload from `self` to `new` changes (`setpe -w` on a running node).
    pub fn changes(&self, new: &Map) -> Changes {
        let mut c = Changes::default();
        for (id, old) in &self.nodes {
            match new.nodes.get(id) {
                None => c.removed.push(*id),
                Some(n) if n.addrs().ne(old.addrs()) => c.changed.push(*id),
                Some(_) => {}
            }
        }
        c.added = new
            .ids()
            .filter(|id| !self.nodes.contains_key(id))
            .collect();
        c
    }

    /// The node this machine is: the one with an address for which `is_local` holds.
    ///
    /// With `wanted` (`--node N`), N must be a node of the map with a local address. Without
    /// it, exactly one node may have a local address; with several (a local test cluster on
    /// 127.0.0.N) the error lists them and says to choose with `--node N`.
    pub fn find_local(
        &self,
        is_local: impl Fn(&IpAddr) -> bool,
        wanted: Option<NodeId>,
    ) -> Result<NodeId, Error> {
        let local = |n: &Node| n.addrs().any(|a| is_local(&a));
        if let Some(id) = wanted {
            let node = self.nodes.get(&id).ok_or_else(|| Error::UnknownNode {
                file: self.file.clone(),
                id,
            })?;
            if local(node) {
                return Ok(id);
            }
            return Err(Error::NotLocal {
                file: self.file.clone(),
                id,
                addrs: node.addrs().collect(),
            });
        }
        let ids: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| local(n))
            .map(|n| n.id)
            .collect();
        match ids.as_slice() {
            [] => Err(Error::NoLocalNode {
                file: self.file.clone(),
            }),
            [one] => Ok(*one),
            _ => Err(Error::AmbiguousLocal {
                file: self.file.clone(),
                ids,
            }),
        }
    }
}

/// The first of [`DEFAULT_PATHS`] that exists.
pub fn find_default() -> Result<PathBuf, Error> {
    find_default_in(&DEFAULT_PATHS)
}

/// The first of `candidates` that exists, or [`Error::NotFound`] listing them all.
pub fn find_default_in<P: AsRef<Path>>(candidates: &[P]) -> Result<PathBuf, Error> {
    candidates
        .iter()
        .map(AsRef::as_ref)
        .find(|p| p.exists())
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::NotFound {
            candidates: candidates
                .iter()
                .map(|p| p.as_ref().to_path_buf())
                .collect(),
        })
}

/// The addresses of this machine's interfaces (`getifaddrs`), IPv4 and IPv6.
pub fn local_addrs() -> std::io::Result<Vec<IpAddr>> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into ifap, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points to a sockaddr whose real type is given by
            // sa_family; we only reinterpret it as the matching sockaddr_in / sockaddr_in6.
            unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    Ok(out)
}

/// True for loopback addresses (127.0.0.0/8, ::1) and addresses of this machine's interfaces.
/// Each call lists the interfaces; to test many addresses, call [`local_addrs`] once.
pub fn is_local_addr(ip: &IpAddr) -> bool {
    ip.is_loopback() || local_addrs().map(|v| v.contains(ip)).unwrap_or(false)
}

#[cfg(test)]
mod tests;
