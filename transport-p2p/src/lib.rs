//! `runtime::transport::Transport` over libp2p (tokio, TCP + pnet + noise + yamux), with
//! mDNS discovery.
//!
//! Owns: the libp2p swarm (listening, dialling with back-off, mDNS), the private-network
//! key (pnet PSK derived from the cluster key), the per-process libp2p identity, the
//! `wire::Hello` exchange that maps libp2p `PeerId`s to omnode `NodeId`s, one ordered
//! stream per peer carrying length-delimited frames, per-peer two-lane queues
//! (`runtime::transport::lanes`: byte windows, control first; closed when the link ends,
//! releasing blocked senders), keepalives and idle time-outs.
//!
//! Must not know: actors, envelopes, processes, the map file (it gets peers through
//! `set_peers` and the map's digest as an opaque string). Frames are opaque bytes.
//!
//! ## Security
//! Every connection is TCP, then libp2p's private network (pnet: XSalsa20 with a 32-byte
//! pre-shared key), then noise (XX, ed25519 identities), then yamux. The pnet key is
//! HMAC-SHA256(cluster key, `"omnode transport-p2p pnet v1"`), so the raw cluster key is
//! never used as-is. A peer without the key cannot get past the protocol negotiation
//! that follows the pnet handshake: its connection fails before any stream exists, is
//! logged once as a WARN (`... wrong cluster key?`), and nothing reaches the runtime.
//! QUIC is not built in at all: pnet cannot protect it.
//!
//! ## Identity
//! The libp2p identity (ed25519 keypair, hence the `PeerId`) is generated fresh at each
//! start; it is only a connection identity. The node id comes from the `Hello` both ends
//! send on the link's stream, checked with `Hello::check` (magic, version, cluster
//! digest, not our own id). In map mode (`mdns: false`) the id must also be one of the
//! peers given to `set_peers`. Two live peers claiming one node id: the first keeps it,
//! the second is refused (`node id N already taken by peer ...; id collision`), logged on
//! both sides. Only when the first one's link has been silent for two keepalive periods
//! (the node restarted, with a new identity, before its old link timed out) does the new
//! peer take the id over, closing the old link (`Down`, then `Up`).
//!
//! ## Links
//! Between two connected peers the one with the lower `PeerId` opens one libp2p stream
//! (`/omnode/link/1`, libp2p-stream) on its first connection; both ends send a `Hello`
//! and their listen addresses, both answer `HelloReply`; once both accepted, the link is
//! up: `Event::Discovered { addrs: the peer's listen addresses }` first (mDNS mode, for
//! peers not given to `set_peers`; again before each later `Up` of that peer), then
//! `Event::Up`, then frames in order. On the stream every message is `u32 length (big endian) | body`; length 0 is a
//! keepalive, any other body is `runtime::wire::encode_frame`'s format (payloads are
//! written straight from their `Bytes`, so multi-MiB payloads stream up to `max_frame`).
//! A link that ends (stream closed, connection lost, nothing received for
//! `idle_timeout`) emits `Event::Down` once and its connections are closed; listed and
//! mDNS-found peers are re-dialled with back-off.

mod config;
mod error;
mod established;
mod handshake;
mod key;
mod state;
mod swarm;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{StreamProtocol, Swarm, identity, mdns};
use runtime::NodeId;
use runtime::transport::pacing::{Backoff, Repeats};
use runtime::transport::table::Phase;
use runtime::transport::{self as rt, BoxFuture, Frame, PeerInfo};
use runtime::wire::FRAME_OVERHEAD;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::handshake::accept_loop;
use crate::state::{Inner, State, lock};
use crate::swarm::{Behaviour, Cmd, build_transport, swarm_task, to_multiaddr, to_socketaddr};

pub use crate::config::Config;
pub use crate::error::Error;
pub use key::pnet_key;
/// The libp2p identity type of [`Transport::peer_id`] (re-exported so callers need no libp2p).
pub use libp2p::PeerId;

/// The libp2p protocol of the link stream.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/omnode/link/1");

/// The same warning (same peer, same reason) is repeated at most this often.
const WARN_REPEAT: Duration = Duration::from_secs(60);

/// The libp2p transport. Dropping the last handle (or [`rt::Transport::shutdown`]) closes
/// every link and stops the swarm.
pub struct Transport {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

impl Transport {
    /// Build the swarm, listen, and (with `config.mdns`) start mDNS. Peers are dialled
    /// once [`rt::Transport::set_peers`] names them or mDNS finds them. Events (peers
    /// discovered, links up and down, frames) go to `events`.
    pub async fn start(
        config: Config,
        events: impl Into<rt::Events>,
    ) -> Result<Arc<Transport>, Error> {
        if config.control_window == 0 || config.bulk_window == 0 {
            return Err(Error::Config(
                "control_window and bulk_window must be at least 1 byte".into(),
            ));
        }
        Backoff::check(config.backoff_min, config.backoff_max).map_err(Error::Config)?;
        if config.max_frame > u32::MAX as usize || config.max_frame < FRAME_OVERHEAD {
            return Err(Error::Config(
                "max_frame must be between 4 bytes and 4 GiB".into(),
            ));
        }
        runtime::transport::liveness::Liveness::check(config.keepalive, config.idle_timeout)
            .map_err(Error::Config)?;
        let keypair = identity::Keypair::generate_ed25519();
        let local_peer = keypair.public().to_peer_id();
        let transport = build_transport(&config, &keypair)?;
        let mdns = if config.mdns {
            let mc = mdns::Config {
                ttl: config.mdns_ttl,
                query_interval: config.mdns_query_interval,
                enable_ipv6: config.listen.is_ipv6(),
            };
            Some(mdns::tokio::Behaviour::new(mc, local_peer).map_err(Error::Mdns)?)
        } else {
            None
        };
        let behaviour = Behaviour {
            stream: libp2p_stream::Behaviour::new(),
            mdns: Toggle::from(mdns),
        };
        let swarm_config = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(config.handshake_timeout.max(Duration::from_secs(5)));
        let mut swarm = Swarm::new(transport, behaviour, local_peer, swarm_config);
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(PROTOCOL)
            .map_err(|e| Error::Libp2p(format!("stream protocol: {e}")))?;

        let listen = config.listen;
        let listen_err = |reason: String| Error::Listen {
            addr: listen,
            reason,
        };
        swarm
            .listen_on(to_multiaddr(listen))
            .map_err(|e| listen_err(e.to_string()))?;
        // Wait for the listener to be up (so port 0 is resolved and errors are reported).
        let first = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match swarm.next().await {
                    Some(SwarmEvent::NewListenAddr { address, .. }) => {
                        if let Some(a) = to_socketaddr(&address) {
                            return Ok(a);
                        }
                    }
                    Some(SwarmEvent::ListenerClosed { reason, .. }) => {
                        return Err(listen_err(match reason {
                            Ok(()) => "listener closed".into(),
                            Err(e) => e.to_string(),
                        }));
                    }
                    Some(SwarmEvent::ListenerError { error, .. }) => {
                        return Err(listen_err(error.to_string()));
                    }
                    Some(_) => {}
                    None => return Err(listen_err("swarm ended".into())),
                }
            }
        })
        .await
        .map_err(|_| listen_err("timed out waiting for the listener".into()))??;
        let local_addr = SocketAddr::new(listen.ip(), first.port());
        info!(
            node = config.local,
            %local_addr,
            peer_id = %local_peer,
            mdns = config.mdns,
            "transport-p2p listening"
        );

        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            cluster: Mutex::new(config.cluster.clone()),
            config,
            local_peer,
            events: events.into(),
            state: Mutex::new(State {
                listen_addrs: vec![first],
                ..State::default()
            }),
            root: CancellationToken::new(),
            swarm_stop: CancellationToken::new(),
            cmd: cmd_tx,
            next_link: AtomicU64::new(1),
            warned: Repeats::new(WARN_REPEAT),
        });
        tokio::spawn(accept_loop(inner.clone(), incoming));
        tokio::spawn(swarm_task(inner.clone(), swarm, control, cmd_rx));
        Ok(Arc::new(Transport { inner, local_addr }))
    }

    /// Replace the cluster digest that new handshakes send and require (a new map loaded into
    /// the running node). Links already up stay up; the layers above check the digest again.
    pub fn set_cluster(&self, cluster: impl Into<String>) {
        *lock(&self.inner.cluster) = cluster.into();
    }

    /// The address actually bound (the configured IP with the real port when 0 was given).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This process's libp2p identity (fresh at each start).
    pub fn peer_id(&self) -> PeerId {
        self.inner.local_peer
    }

    /// The libp2p identity of the peer behind `node`'s live link, if any.
    pub fn peer_id_of(&self, node: NodeId) -> Option<PeerId> {
        let st = lock(&self.inner.state);
        st.links
            .get(node)
            .filter(|s| s.phase == Phase::Up)
            .map(|s| s.link.peer_id)
    }
}

impl Transport {
    /// The queue of `peer`'s live link, or why `frame` cannot go (handed back).
    fn queue(
        &self,
        peer: NodeId,
        frame: Frame,
    ) -> Result<(Arc<runtime::transport::lanes::Outq>, Frame), rt::SendError> {
        let st = lock(&self.inner.state);
        let listed = self.inner.config.mdns || st.listed.contains_key(&peer);
        st.links
            .route(peer, listed, frame, self.inner.config.max_frame, |l| {
                l.queue.clone()
            })
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.inner.begin_shutdown();
    }
}

impl rt::Transport for Transport {
    fn local_id(&self) -> NodeId {
        self.inner.config.local
    }

    fn capabilities(&self) -> rt::Capabilities {
        rt::Capabilities {
            max_frame: self.inner.config.max_frame,
            control_window: self.inner.config.control_window,
            bulk_window: self.inner.config.bulk_window,
            zero_copy: false,
        }
    }

    fn send_within(
        &self,
        peer: NodeId,
        frame: Frame,
        limit: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), rt::SendError>> {
        Box::pin(async move {
            let (q, frame) = self.queue(peer, frame)?;
            rt::queue_send(&q, peer, frame, limit).await
        })
    }

    fn try_send(&self, peer: NodeId, frame: Frame) -> Result<(), rt::SendError> {
        let (q, frame) = self.queue(peer, frame)?;
        rt::queue_try_send(&q, peer, frame)
    }

    fn set_peers(&self, peers: Vec<PeerInfo>) {
        let inner = &self.inner;
        let wanted: HashMap<NodeId, Vec<SocketAddr>> = peers
            .into_iter()
            .filter(|p| p.id != inner.config.local)
            .map(|p| (p.id, p.addrs))
            .collect();
        {
            let mut st = lock(&inner.state);
            if st.links.is_closed() {
                return;
            }
            if !inner.config.mdns {
                st.links.close_unless(
                    |id| wanted.contains_key(&id),
                    "peer removed from the peer list",
                );
            }
            st.listed = wanted.clone();
        }
        let _ = inner.cmd.send(Cmd::SetPeers(wanted.into_iter().collect()));
    }

    fn connected(&self) -> Vec<NodeId> {
        lock(&self.inner.state).links.up()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let dones = self.inner.begin_shutdown();
            let all = async {
                for d in dones {
                    d.cancelled().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
            self.inner.swarm_stop.cancel();
        })
    }
}
