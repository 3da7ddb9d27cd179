//! Accepting inbound connections and dialling (and re-dialling) listed peers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use runtime::NodeId;
use runtime::transport::lifecycle::{Failure, Redial};
use runtime::wire::Refusal;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::HsError;
use crate::established::{Established, run_link};
use crate::handshake::handshake;
use crate::state::{Inner, lock};

pub(crate) async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        let (stream, remote) = tokio::select! {
            biased;
            _ = inner.root.cancelled() => {
                drop(listener);
                inner.listener_closed.cancel();
                return;
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = inner.handshakes.clone().try_acquire_owned() else {
            debug!("too many pending handshakes; dropping connection from {remote}");
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            // Not raced against shutdown: once registered, a link must reach `run_link`
            // (claim refuses after shutdown, and the handshake is bounded by its time-out).
            // The permit is returned when the handshake ends, however it ends (a panic
            // included).
            let r = handshake(&inner, stream, remote, false, None).await;
            drop(permit);
            match r {
                Ok(link) => run_link(inner, link).await,
                Err(HsError::Duplicate) => {}
                Err(HsError::Auth) | Err(HsError::Closed) => inner.warn_repeated(
                    format!("auth {}", remote.ip()),
                    &format!(
                        "refused link from {remote}: authentication failed (wrong cluster key?)"
                    ),
                ),
                Err(HsError::Refused(_)) | Err(HsError::RefusedByPeer(_)) => {} // logged where decided
                Err(e) => warn!("dropped connection from {remote}: {e}"),
            }
        });
    }
}

/// The peer's dial task: the thin shell of its `lifecycle::Peer` (kept in its
/// `PeerEntry`). It runs the lifecycle's timers, makes the dials it asks for (each over
/// the peer's addresses in turn) and reports how they ended; links run in tasks of their
/// own.
pub(crate) async fn dial_loop(
    inner: Arc<Inner>,
    peer: NodeId,
    cancel: CancellationToken,
    wake: Arc<Notify>,
) {
    let mut last_error = String::new();
    loop {
        // What is due: a dial, or nothing until the lifecycle's next deadline.
        let (addrs, deadline) = {
            let mut st = lock(&inner.state);
            let Some(p) = st.peers.get_mut(&peer) else {
                return;
            };
            let a = p.life.on_tick(std::time::Instant::now());
            Inner::act_from(&mut st, peer, a, false);
            let Some(p) = st.peers.get_mut(&peer) else {
                return;
            };
            let addrs = std::mem::take(&mut p.dial_now).then(|| p.addrs.clone());
            (addrs, p.life.next_deadline())
        };
        let Some(addrs) = addrs else {
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
                _ = sleep => {}
            }
            continue;
        };
        // The mildest failure over the addresses decides how re-dialling goes on.
        let mut failure: Option<Failure> = None;
        for addr in addrs {
            if cancel.is_cancelled() {
                return;
            }
            // Not raced against `cancel`: see accept_loop.
            match dial(&inner, peer, addr).await {
                Ok(link) => {
                    last_error.clear();
                    failure = None;
                    tokio::spawn(run_link(inner.clone(), link));
                    break;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        match e {
                            // Refusals were logged where they were decided.
                            HsError::Refused(_)
                            | HsError::RefusedByPeer(_)
                            | HsError::Duplicate => {}
                            HsError::Auth | HsError::Closed => {
                                warn!("link to node {peer} at {addr} failed: {msg}")
                            }
                            _ => info!("cannot reach node {peer} at {addr}: {msg}"),
                        }
                        last_error = msg;
                    } else {
                        debug!("cannot reach node {peer} at {addr}: {msg}");
                    }
                    let f = failure_of(peer, &e, inner.config.local);
                    failure = Some(match failure {
                        Some(old) if mildness(&old) <= mildness(&f) => old,
                        _ => f,
                    });
                }
            }
        }
        let mut st = lock(&inner.state);
        if let Some(p) = st.peers.get_mut(&peer) {
            let now = std::time::Instant::now();
            // After a success the lifecycle already knows (the claim told it); a failure
            // after the lifecycle moved on (the attempt was settled) changes nothing.
            let a = p
                .life
                .on_dial_failed(now, failure.unwrap_or(Failure::Unreachable));
            Inner::act_from(&mut st, peer, a, false);
        }
    }
}

/// What a failed attempt means to the lifecycle.
fn failure_of(peer: NodeId, e: &HsError, local: NodeId) -> Failure {
    match e {
        HsError::Auth => Failure::Auth,
        HsError::Timeout => Failure::Timeout,
        HsError::Refused(r) | HsError::RefusedByPeer(r) => Failure::Refused(r.clone()),
        HsError::Duplicate => Failure::Refused(Refusal::Duplicate {
            local: peer,
            peer: local,
        }),
        HsError::Io(_) | HsError::Closed | HsError::Protocol(_) => Failure::Unreachable,
    }
}

/// Lower is milder: plain back-off, then the slow pace, then stopping.
fn mildness(f: &Failure) -> u8 {
    match Redial::after(f) {
        Redial::Backoff => 0,
        Redial::Slow => 1,
        Redial::Stop => 2,
    }
}

async fn dial(inner: &Arc<Inner>, peer: NodeId, addr: SocketAddr) -> Result<Established, HsError> {
    let cfg = &inner.config;
    let connect = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(size) = cfg.recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let ip = cfg.listen.ip();
        if !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4() {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.connect(addr).await
    };
    let stream = match tokio::time::timeout(cfg.connect_timeout, connect).await {
        Err(_) => {
            return Err(HsError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timed out",
            )));
        }
        Ok(r) => r?,
    };
    handshake(inner, stream, addr, true, Some(peer)).await
}
