//! `runtime::transport::Transport` over TCP (tokio).
//!
//! Owns: the listening socket, dialling and re-dialling peers, one link per pair of nodes
//! (when to dial, the back-off, how a refusal paces re-dialling and which of two
//! simultaneous links survives are decided by `runtime::transport::lifecycle`, whose
//! thin shell is each peer's dial task), the Noise handshake
//! (`Noise_NNpsk0_25519_AESGCM_BLAKE2s`, the cluster key as PSK: both ends prove the
//! key without sending it, and everything after is encrypted), the `wire::Hello`
//! exchange, framing (2-byte length-delimited Noise messages carrying the [`codec`]
//! stream), per-peer two-lane queues (`runtime::transport::lanes`, byte windows, control
//! first) with back-pressure, keepalives and idle time-outs.
//!
//! Must not know: actors, envelopes, processes, the cluster map (it gets the peer list
//! through `set_peers` and the map's digest as an opaque string). Frames are opaque bytes.
//!
//! ## Link set-up
//! 1. TCP connect (either side dials; `TCP_NODELAY`), Noise NNpsk0 handshake. A wrong key
//!    fails here: the peer learns nothing and is dropped.
//! 2. Both ends send an encrypted `Hello`; each checks the other's (`Hello::check`, the
//!    node id is a listed peer, a dialled address answers with the expected id).
//! 3. The higher-id end answers `HelloReply` first; the lower-id end (the arbiter) then
//!    answers, accepting the link only if it holds no other live or pending link to that
//!    peer. So when both dial at once, exactly one link survives, and both ends agree
//!    which, with no `Up`/`Down` for the loser. The other end's first message confirms
//!    the arbiter's `Accepted`; only then does the arbiter emit `Up`, so a peer that dies
//!    in the handshake leaves no `Up`/`Down` pair behind.
//! 4. `Event::Up`, then frames. A link that ends (EOF, error, nothing received for
//!    `idle_timeout` although the peer sends keepalives every `keepalive`, peer removed,
//!    shutdown) emits `Event::Down` once; the dialler keeps re-dialling listed peers.
//!
//! ## Sending
//! Each direction is one stream of records (see [`codec`]) cut into Noise messages of at
//! most 64 KiB. A `send` that finds the link idle seals and writes its frame itself;
//! otherwise frames wait in the bounded per-peer queue and the link's writer task packs
//! many into each message (see `outbox`). Large payloads are sealed straight from their
//! `Bytes`; received frames are slices of the decryption buffer.
//!
//! Lanes: the writer takes control frames before queued bulk frames. Both lanes share one
//! byte stream, so a control frame can still wait for the bulk frame being sealed (up to
//! `max_frame`) and for what the kernel's socket buffers hold; senders of bulk data should
//! use frames of a few MiB at most. When a link ends its queue is closed: every sender
//! waiting for room returns `Unreachable` with its frame.

pub mod codec;
mod config;
mod dial;
mod error;
mod established;
mod handshake;
mod outbox;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime::NodeId;
use runtime::transport::lifecycle;
use runtime::transport::pacing::{Backoff, Repeats};
use runtime::transport::{self as rt, BoxFuture, Frame, PeerInfo};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use crate::config::Config;
pub use crate::error::Error;

use crate::dial::{accept_loop, dial_loop};
use crate::handshake::NOISE_PARAMS;
use crate::state::{Inner, PeerEntry, State, lock};

/// Inbound connections allowed in the handshake at once.
const MAX_PENDING_HANDSHAKES: usize = 128;
const WARN_REPEAT: Duration = Duration::from_secs(60);

/// The TCP transport. Dropping the last handle (or [`rt::Transport::shutdown`]) closes
/// every link.
pub struct Transport {
    inner: Arc<Inner>,
    local_addr: SocketAddr,
}

impl Transport {
    /// Bind the listener and start accepting; peers are dialled once [`rt::Transport::set_peers`]
    /// names them. Events (links up and down, frames) go to `events`.
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
        runtime::transport::liveness::Liveness::check(config.keepalive, config.idle_timeout)
            .map_err(Error::Config)?;
        let params: snow::params::NoiseParams = NOISE_PARAMS
            .parse()
            .map_err(|e| Error::Config(format!("{e:?}")))?;
        let listener = listen(&config).map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        info!(node = config.local, %local_addr, "transport listening");
        let inner = Arc::new(Inner {
            cluster: Mutex::new(config.cluster.clone()),
            config,
            params,
            events: events.into(),
            state: Mutex::new(State::default()),
            root: CancellationToken::new(),
            next_link: AtomicU64::new(1),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            warned: Repeats::new(WARN_REPEAT),
            listener_closed: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(inner.clone(), listener));
        Ok(Arc::new(Transport { inner, local_addr }))
    }

    /// Replace the cluster digest that new handshakes send and require (a new map loaded into
    /// the running node). Links already up stay up; the layers above check the digest again.
    pub fn set_cluster(&self, cluster: impl Into<String>) {
        *lock(&self.inner.cluster) = cluster.into();
        // Peers refused for another map are tried afresh with this one.
        let mut st = lock(&self.inner.state);
        let now = std::time::Instant::now();
        let ids: Vec<NodeId> = st.peers.keys().copied().collect();
        for id in ids {
            if let Some(p) = st.peers.get_mut(&id) {
                let a = p.life.rearm(now);
                Inner::act(&mut st, id, a);
            }
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Transport {
    /// The outbox of `peer`'s live link, or why `frame` cannot go (handed back).
    fn outbox(
        &self,
        peer: NodeId,
        frame: Frame,
    ) -> Result<(Arc<outbox::Outbox>, Frame), rt::SendError> {
        let st = lock(&self.inner.state);
        let listed = st.peers.contains_key(&peer);
        st.links
            .route(peer, listed, frame, self.inner.config.max_frame, |l| {
                l.outbox.clone()
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
            let (outbox, frame) = self.outbox(peer, frame)?;
            outbox.send(peer, frame, limit).await
        })
    }

    fn try_send(&self, peer: NodeId, frame: Frame) -> Result<(), rt::SendError> {
        let (outbox, frame) = self.outbox(peer, frame)?;
        outbox.try_send(peer, frame)
    }

    fn set_peers(&self, peers: Vec<PeerInfo>) {
        let inner = &self.inner;
        let mut st = lock(&inner.state);
        if st.links.is_closed() {
            return;
        }
        let wanted: HashMap<NodeId, Vec<SocketAddr>> = peers
            .into_iter()
            .filter(|p| p.id != inner.config.local)
            .map(|p| (p.id, p.addrs))
            .collect();
        let removed: Vec<NodeId> = st
            .peers
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in removed {
            if let Some(p) = st.peers.remove(&id) {
                p.cancel.cancel();
            }
            if let Some(l) = st.links.get(id) {
                l.link.ctl.close("peer removed from the peer list");
            }
        }
        let now = std::time::Instant::now();
        for (id, addrs) in wanted {
            if let Some(p) = st.peers.get_mut(&id) {
                if p.addrs != addrs {
                    // New addresses: a peer that was given up on is tried afresh.
                    p.addrs = addrs;
                    let a = p.life.rearm(now);
                    Inner::act(&mut st, id, a);
                }
                continue;
            }
            let cancel = inner.root.child_token();
            let wake = Arc::new(Notify::new());
            let seed = lifecycle::random_seed();
            let mut life = lifecycle::Peer::new(inner.config.local, id, inner.life_config(), seed);
            let first = life.set_wanted(now, true);
            st.peers.insert(
                id,
                PeerEntry {
                    addrs,
                    cancel: cancel.clone(),
                    wake: wake.clone(),
                    life,
                    dial_now: false,
                },
            );
            Inner::act(&mut st, id, first);
            tokio::spawn(dial_loop(inner.clone(), id, cancel, wake));
        }
    }

    fn connected(&self) -> Vec<NodeId> {
        lock(&self.inner.state).links.up()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let dones = self.inner.begin_shutdown();
            let all = async {
                self.inner.listener_closed.cancelled().await;
                for d in dones {
                    d.cancelled().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), all).await;
        })
    }
}

/// The listening socket, with the configured receive buffer (inherited by accepted links).
fn listen(config: &Config) -> std::io::Result<TcpListener> {
    let socket = if config.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if let Some(size) = config.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(config.listen)?;
    socket.listen(1024)
}
