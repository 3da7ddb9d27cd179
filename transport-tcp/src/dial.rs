//! Accepting inbound connections and dialling (and re-dialling) listed peers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use runtime::NodeId;
use runtime::transport::pacing::Backoff;
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

pub(crate) async fn dial_loop(
    inner: Arc<Inner>,
    peer: NodeId,
    cancel: CancellationToken,
    wake: Arc<Notify>,
) {
    let cfg = &inner.config;
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut last_error = String::new();
    loop {
        // Nothing to do while a link (either direction) exists.
        loop {
            let has_link = lock(&inner.state).links.contains(peer);
            if !has_link {
                break;
            }
            // A link exists (whoever dialled it): start afresh when it ends.
            backoff.reset();
            last_error.clear();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
            }
        }
        let addrs = match lock(&inner.state).peers.get(&peer) {
            Some(p) => p.addrs.clone(),
            None => return,
        };
        let mut linked = false;
        for addr in addrs {
            if cancel.is_cancelled() {
                return;
            }
            // Not raced against `cancel`: see accept_loop.
            let r = dial(&inner, peer, addr).await;
            match r {
                Ok(link) => {
                    linked = true;
                    last_error.clear();
                    run_link(inner.clone(), link).await;
                    break;
                }
                // The peer keeps another link (usually ours from its side, about to show
                // up here); if that one is stale, retry with growing pauses.
                Err(HsError::Duplicate) => break,
                Err(e) => {
                    let msg = e.to_string();
                    if msg != last_error {
                        match e {
                            // Refusals were logged where they were decided.
                            HsError::Refused(_) | HsError::RefusedByPeer(_) => {}
                            HsError::Auth | HsError::Closed => {
                                warn!("link to node {peer} at {addr} failed: {msg}")
                            }
                            _ => info!("cannot reach node {peer} at {addr}: {msg}"),
                        }
                        last_error = msg;
                    } else {
                        debug!("cannot reach node {peer} at {addr}: {msg}");
                    }
                }
            }
        }
        let pause = if linked {
            backoff.reset();
            backoff.pause()
        } else {
            backoff.failed()
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            // A link coming up from the other side (or going down) re-checks at once.
            _ = wake.notified() => {}
        }
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
