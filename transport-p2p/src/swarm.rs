//! The swarm task: the libp2p transport stack, listening, dialling, mDNS, opening link streams.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, Transport as _};
use libp2p::core::upgrade::Version;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identity, mdns, noise, tcp, yamux};
use runtime::NodeId;
use runtime::transport::lifecycle::{self, Action, Dir, Ended, Failure};
use runtime::transport::pacing::Backoff;
use runtime::wire::Refusal;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::config::Config;
use crate::error::{Error, HsError};
use crate::handshake::{link_failed, start_link};
use crate::state::{Inner, lock};
use crate::{PROTOCOL, pnet_key};

/// How often the swarm task looks for peers to (re-)dial.
const DIAL_TICK: Duration = Duration::from_millis(200);

/// Requests to the swarm task.
pub(crate) enum Cmd {
    SetPeers(Vec<(NodeId, Vec<SocketAddr>)>),
    /// Link `link` to `node` is up.
    LinkUp {
        node: NodeId,
        link: u64,
    },
    /// A link (`link`: it was up) or a link attempt (`refused`: why, if a refusal ended
    /// it) with this peer ended: close its connections unless another link to it is live;
    /// the peer's lifecycle decides when to re-dial.
    LinkEnded {
        node: Option<NodeId>,
        peer_id: PeerId,
        link: Option<u64>,
        refused: Option<Refusal>,
    },
}

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) stream: libp2p_stream::Behaviour,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The lifecycle's timings, from the configuration. The link tasks keep their own
/// keepalive and idle clocks (`state::LinkCtl`).
fn life_config(c: &Config) -> lifecycle::Config {
    lifecycle::Config {
        backoff_min: c.backoff_min,
        backoff_max: c.backoff_max,
        keepalive: c.keepalive,
        idle: c.idle_timeout,
        handshake_timeout: c.handshake_timeout,
        watch_liveness: false,
    }
}

pub(crate) fn build_transport(
    config: &Config,
    keypair: &identity::Keypair,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Error> {
    let psk = PreSharedKey::new(pnet_key(&config.key));
    let noise = noise::Config::new(keypair).map_err(|e| Error::Libp2p(format!("noise: {e}")))?;
    let mut yamux = yamux::Config::default();
    yamux.set_max_num_streams(64);
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    Ok(tcp
        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
        .upgrade(Version::V1)
        .authenticate(noise)
        .multiplex(yamux)
        .timeout(config.handshake_timeout)
        .boxed())
}

pub(crate) fn to_multiaddr(a: SocketAddr) -> Multiaddr {
    let ip = match a.ip() {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(a.port()))
}

pub(crate) fn to_socketaddr(m: &Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for p in m.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(IpAddr::V4(a)),
            Protocol::Ip6(a) => ip = Some(IpAddr::V6(a)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

struct DialEntry {
    addrs: Vec<Multiaddr>,
    backoff: Backoff,
    next_at: Instant,
}

/// A listed peer: its addresses and its link lifecycle (`runtime::transport::lifecycle`),
/// which says when to dial; this task dials and reports how each attempt ended.
struct MapEntry {
    addrs: Vec<Multiaddr>,
    life: lifecycle::Peer,
    /// Dials of the current attempt not yet connected or failed.
    pending: usize,
    /// One of them connected: the attempt ends with the link (up or failed).
    connected: bool,
    /// The lifecycle asked for a dial that has not started yet.
    due: bool,
}

impl MapEntry {
    /// The attempt ended without a link.
    fn failed(&mut self, why: Failure) {
        self.pending = 0;
        self.connected = false;
        let a = self.life.on_dial_failed(Instant::now(), why);
        self.note(a);
    }

    /// Remember a dial the lifecycle asks for (the next tick starts it).
    fn note(&mut self, actions: Vec<Action>) {
        if actions.contains(&Action::Dial) {
            self.due = true;
        }
    }
}

struct Dialer {
    /// Listed peers (map mode and hints), by node id.
    map: HashMap<NodeId, MapEntry>,
    /// Peers found by mDNS, by libp2p identity.
    found: HashMap<PeerId, DialEntry>,
    /// Dials in flight: the address (map mode) or peer (mDNS).
    pending_addr: HashMap<ConnectionId, (NodeId, Multiaddr)>,
    pending_peer: HashMap<ConnectionId, PeerId>,
    /// Established connections we dialled, by remote address (and the listed node the
    /// dial was for).
    dialled: HashMap<ConnectionId, (Option<NodeId>, Multiaddr)>,
}

pub(crate) async fn swarm_task(
    inner: Arc<Inner>,
    mut swarm: Swarm<Behaviour>,
    control: libp2p_stream::Control,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let cfg = inner.config.clone();
    let mut d = Dialer {
        map: HashMap::new(),
        found: HashMap::new(),
        pending_addr: HashMap::new(),
        pending_peer: HashMap::new(),
        dialled: HashMap::new(),
    };
    let mut tick = tokio::time::interval(DIAL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.swarm_stop.cancelled() => break,
            ev = swarm.select_next_some() => on_swarm_event(&inner, &control, &mut d, ev),
            Some(cmd) = cmd_rx.recv() => on_cmd(&inner, &mut swarm, &mut d, cmd),
            _ = tick.tick() => {
                if !inner.root.is_cancelled() {
                    dial_due(&mut swarm, &mut d);
                }
            }
        }
    }
    debug!("swarm task of node {} stopped", cfg.local);
}

fn dial_due(swarm: &mut Swarm<Behaviour>, d: &mut Dialer) {
    let now = Instant::now();
    for (node, e) in d.map.iter_mut() {
        // Only a dial is this task's to do: links close themselves, and their Up/Down
        // are emitted by the link tasks.
        let a = e.life.on_tick(now);
        e.note(a);
        if !std::mem::take(&mut e.due) {
            continue;
        }
        e.pending = 0;
        e.connected = false;
        for addr in &e.addrs {
            let busy = d.pending_addr.values().any(|(_, a)| a == addr)
                || d.dialled.values().any(|(_, a)| a == addr);
            if busy {
                continue;
            }
            let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
            let id = opts.connection_id();
            match swarm.dial(opts) {
                Ok(()) => {
                    d.pending_addr.insert(id, (*node, addr.clone()));
                    e.pending += 1;
                }
                Err(e) => debug!("cannot dial node {node} at {addr}: {e}"),
            }
        }
        if e.pending == 0 {
            e.failed(Failure::Unreachable);
        }
    }
    for (peer, e) in d.found.iter_mut() {
        if now < e.next_at || swarm.is_connected(peer) || d.pending_peer.values().any(|p| p == peer)
        {
            continue;
        }
        let opts = DialOpts::peer_id(*peer)
            .addresses(e.addrs.clone())
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let id = opts.connection_id();
        match swarm.dial(opts) {
            Ok(()) => {
                d.pending_peer.insert(id, *peer);
            }
            Err(err) => debug!("cannot dial mDNS peer {peer}: {err}"),
        }
        e.next_at = now + e.backoff.failed();
    }
}

fn on_cmd(inner: &Inner, swarm: &mut Swarm<Behaviour>, d: &mut Dialer, cmd: Cmd) {
    let cfg = &inner.config;
    match cmd {
        Cmd::SetPeers(peers) => {
            let now = Instant::now();
            let mut keep = HashSet::new();
            for (node, addrs) in peers {
                keep.insert(node);
                let addrs: Vec<Multiaddr> = addrs.into_iter().map(to_multiaddr).collect();
                match d.map.get_mut(&node) {
                    Some(e) => {
                        if e.addrs != addrs {
                            e.addrs = addrs;
                            let a = e.life.rearm(now);
                            e.note(a);
                        }
                    }
                    None => {
                        let mut life = lifecycle::Peer::new(
                            cfg.local,
                            node,
                            life_config(cfg),
                            lifecycle::random_seed(),
                        );
                        // A link already up (found by the peer's dial) counts.
                        let up = lock(&inner.state)
                            .links
                            .get(node)
                            .filter(|s| s.phase == runtime::transport::table::Phase::Up)
                            .map(|s| s.id);
                        let mut due = life.set_wanted(now, true);
                        if let Some(link) = up {
                            due.extend(life.on_settled(now, link, Dir::Inbound));
                        }
                        let due = due.contains(&Action::Dial) && life.live().is_none();
                        d.map.insert(
                            node,
                            MapEntry {
                                addrs,
                                life,
                                pending: 0,
                                connected: false,
                                due,
                            },
                        );
                    }
                }
            }
            d.map.retain(|n, _| keep.contains(n));
            dial_due(swarm, d);
        }
        Cmd::LinkUp { node, link } => {
            if let Some(e) = d.map.get_mut(&node) {
                e.pending = 0;
                e.connected = false;
                let a = e.life.on_settled(Instant::now(), link, Dir::Inbound);
                e.note(a);
            }
        }
        Cmd::LinkEnded {
            node,
            peer_id,
            link,
            refused,
        } => {
            if !inner.has_link_with(&peer_id) && swarm.is_connected(&peer_id) {
                let _ = swarm.disconnect_peer_id(peer_id);
            }
            let ours = node.filter(|n| {
                lock(&inner.state)
                    .dialled_for
                    .get(&peer_id)
                    .is_some_and(|v| v.iter().any(|(w, _)| w == n))
            });
            let now = Instant::now();
            match (link, node.and_then(|n| d.map.get_mut(&n))) {
                (Some(link), Some(e)) => {
                    let a = e
                        .life
                        .on_closed(now, link, Ended::Closed("link ended".into()));
                    e.note(a);
                }
                // An attempt of ours failed after it connected: a refusal paces the
                // re-dial as its kind says.
                (None, Some(e)) if ours.is_some() && e.connected => {
                    e.failed(refused.map_or(Failure::Unreachable, Failure::Refused));
                }
                _ => {}
            }
        }
    }
}

fn on_swarm_event(
    inner: &Arc<Inner>,
    control: &libp2p_stream::Control,
    d: &mut Dialer,
    ev: SwarmEvent<BehaviourEvent>,
) {
    match ev {
        SwarmEvent::NewListenAddr { address, .. } => {
            debug!("listening on {address}");
            if let Some(a) = to_socketaddr(&address) {
                let mut st = lock(&inner.state);
                if !st.listen_addrs.contains(&a) {
                    st.listen_addrs.push(a);
                }
            }
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            if let Some(a) = to_socketaddr(&address) {
                lock(&inner.state).listen_addrs.retain(|x| *x != a);
            }
        }
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            num_established,
            ..
        } => {
            d.pending_peer.remove(&connection_id);
            if let Some((node, addr)) = d.pending_addr.remove(&connection_id) {
                if let Some(e) = d.map.get_mut(&node) {
                    e.pending = e.pending.saturating_sub(1);
                    e.connected = true;
                }
                // Every listed node that has this address expects to find itself here.
                let wanted: Vec<(NodeId, Multiaddr)> = d
                    .map
                    .iter()
                    .filter(|(_, e)| e.addrs.contains(&addr))
                    .map(|(n, _)| (*n, addr.clone()))
                    .collect();
                lock(&inner.state).dialled_for.insert(peer_id, wanted);
                d.dialled.insert(connection_id, (Some(node), addr));
            }
            debug!(%peer_id, addr = %endpoint.get_remote_address(), "connection established");
            if let Some(e) = d.found.get_mut(&peer_id) {
                e.backoff.reset();
            }
            if num_established.get() == 1
                && inner.local_peer < peer_id
                && !inner.root.is_cancelled()
            {
                let inner = inner.clone();
                let mut control = control.clone();
                tokio::spawn(async move {
                    let opened = tokio::time::timeout(
                        inner.config.handshake_timeout,
                        control.open_stream(peer_id, PROTOCOL),
                    )
                    .await;
                    let stream = match opened {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            link_failed(&inner, peer_id, None, HsError::Open(e.to_string()));
                            return;
                        }
                        Err(_) => {
                            link_failed(&inner, peer_id, None, HsError::Timeout);
                            return;
                        }
                    };
                    start_link(inner, peer_id, stream).await;
                });
            }
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            connection_id,
            num_established,
            cause,
            ..
        } => {
            // A connection we dialled that closes before its link came up ends the attempt.
            if let Some((Some(node), _)) = d.dialled.remove(&connection_id) {
                if let Some(e) = d.map.get_mut(&node) {
                    if e.connected && e.life.stage() == lifecycle::Stage::Dialing {
                        e.failed(Failure::Unreachable);
                    }
                }
            }
            debug!(%peer_id, ?cause, remaining = num_established, "connection closed");
            if num_established == 0 {
                lock(&inner.state).dialled_for.remove(&peer_id);
                if let Some(e) = d.found.get_mut(&peer_id) {
                    e.next_at = e.next_at.min(Instant::now() + e.backoff.pause());
                }
            }
        }
        SwarmEvent::OutgoingConnectionError {
            connection_id,
            peer_id,
            error,
        } => {
            let pending = d.pending_addr.remove(&connection_id);
            if let Some((node, _)) = &pending {
                if let Some(e) = d.map.get_mut(node) {
                    e.pending = e.pending.saturating_sub(1);
                    if e.pending == 0 && !e.connected {
                        e.failed(Failure::Unreachable);
                    }
                }
            }
            let addr = pending.map(|(_, a)| a);
            d.pending_peer.remove(&connection_id);
            let target = match (&addr, peer_id) {
                (Some(a), _) => a.to_string(),
                (None, Some(p)) => format!("peer {p}"),
                (None, None) => "peer".into(),
            };
            let msg = error_chain(&error);
            match connection_hint(&msg) {
                Some(hint) => inner.warn_limited(
                    format!("out {target} {hint}"),
                    &format!("cannot connect to {target}: {hint} [{msg}]"),
                ),
                None => debug!("cannot connect to {target}: {msg}"),
            }
        }
        SwarmEvent::IncomingConnectionError {
            send_back_addr,
            error,
            ..
        } => {
            let msg = error_chain(&error);
            let hint = connection_hint(&msg).unwrap_or("connection failed");
            let from = to_socketaddr(&send_back_addr)
                .map(|a| a.to_string())
                .unwrap_or_else(|| send_back_addr.to_string());
            let ip = to_socketaddr(&send_back_addr).map(|a| a.ip().to_string());
            inner.warn_limited(
                format!("in {} {hint}", ip.unwrap_or_default()),
                &format!("refused connection from {from}: {hint} [{msg}]"),
            );
        }
        SwarmEvent::ListenerError { error, .. } => warn!("listener error: {error}"),
        SwarmEvent::ListenerClosed { reason, .. } if !inner.root.is_cancelled() => {
            warn!("listener closed: {reason:?}");
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(ev)) => on_mdns(inner, d, ev),
        _ => {}
    }
}

fn on_mdns(inner: &Inner, d: &mut Dialer, ev: mdns::Event) {
    let cfg = &inner.config;
    match ev {
        mdns::Event::Discovered(list) => {
            let now = Instant::now();
            for (peer, addr) in list {
                if peer == inner.local_peer {
                    continue;
                }
                debug!(%peer, %addr, "mDNS found a peer");
                let e = d.found.entry(peer).or_insert_with(|| DialEntry {
                    addrs: Vec::new(),
                    backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
                    next_at: now,
                });
                if !e.addrs.contains(&addr) {
                    e.addrs.push(addr.clone());
                }
            }
        }
        mdns::Event::Expired(list) => {
            for (peer, addr) in list {
                debug!(%peer, %addr, "mDNS record expired");
                if let Some(e) = d.found.get_mut(&peer) {
                    e.addrs.retain(|a| a != &addr);
                    if e.addrs.is_empty() {
                        d.found.remove(&peer);
                    }
                }
            }
        }
    }
}

/// The error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// What a connection error most likely means for a person; `None` for plain network
/// errors (nobody listening, no route), which back-off retries quietly.
fn connection_hint(msg: &str) -> Option<&'static str> {
    let m = msg.to_ascii_lowercase();
    if m.contains("connection refused") || m.contains("unreachable") {
        None
    } else if m.contains("negotiat")
        || m.contains("pnet")
        || m.contains("handshake")
        || m.contains("noise")
        || m.contains("protocol")
        || m.contains("timeout")
        || m.contains("timed out")
        || m.contains("unexpected eof")
        || m.contains("reset")
    {
        Some("private-network (pnet) handshake failed: wrong cluster key on one side?")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiaddr_conversion() {
        let a: SocketAddr = "127.0.0.9:4000".parse().unwrap();
        assert_eq!(to_multiaddr(a).to_string(), "/ip4/127.0.0.9/tcp/4000");
        assert_eq!(to_socketaddr(&to_multiaddr(a)), Some(a));
    }

    #[test]
    fn wrong_key_errors_get_a_hint() {
        assert!(
            connection_hint("Multistream select failed: Protocol negotiation failed.").is_some()
        );
        assert!(connection_hint("Connection refused (os error 111)").is_none());
    }
}
