//! An established link: `Discovered` and `Up`, its read loop and writer task, then `Down`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use libp2p::{PeerId, Stream};
use runtime::NodeId;
use runtime::transport::lanes::Outq;
use runtime::transport::link;
use runtime::transport::{Event, Frame};
use runtime::wire::{FRAME_OVERHEAD, decode_frame};
use tracing::info;

use crate::state::{Inner, LinkCtl, lock};
use crate::swarm::Cmd;

/// Payloads at least this big are written from their own buffer, not copied into a batch.
const DIRECT_WRITE: usize = 32 * 1024;
/// Bytes of small frames collected before a write.
const WRITE_BATCH: usize = 256 * 1024;

/// A link whose handshake completed and which is registered (Up not yet sent).
pub(crate) struct Established {
    pub(crate) node: NodeId,
    pub(crate) peer_id: PeerId,
    /// Where the peer says it listens.
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) id: u64,
    pub(crate) read: BufReader<ReadHalf<Stream>>,
    pub(crate) write: WriteHalf<Stream>,
    pub(crate) queue: Arc<Outq>,
    pub(crate) ctl: Arc<LinkCtl>,
}

/// Run an established link until it dies: `Discovered` (mDNS mode) and `Up` first,
/// frames, `Down` at the end.
pub(crate) async fn run_link(inner: Arc<Inner>, link: Established) {
    let Established {
        node,
        peer_id,
        addrs,
        id,
        mut read,
        write,
        queue,
        ctl,
    } = link;
    let discovered = {
        let mut st = lock(&inner.state);
        let listed = st.listed.contains_key(&node);
        let closed = st.closed;
        let current = match st.links.get_mut(&node) {
            Some(l) if l.id == id && !closed => {
                l.up = true;
                true
            }
            _ => false,
        };
        if !current {
            drop(st);
            inner.unclaim(node, id);
            queue.close();
            ctl.done.cancel();
            return;
        }
        (inner.config.mdns && !listed).then(|| {
            let mut addrs = addrs;
            if addrs.iter().any(|a| !a.ip().is_loopback()) {
                addrs.retain(|a| !a.ip().is_loopback());
            }
            addrs
        })
    };
    if let Some(addrs) = discovered {
        info!("discovered node {node} (peer {peer_id}) at {addrs:?}");
        inner.emit(Event::Discovered { peer: node, addrs }).await;
    }
    info!("link to node {node} up (peer {peer_id})");
    inner.emit(Event::Up { peer: node }).await;
    let _ = inner.cmd.send(Cmd::LinkUp(node));

    let writer = tokio::spawn(write_loop(inner.clone(), write, queue.clone(), ctl.clone()));
    let reason = tokio::select! {
        r = read_loop(&inner, node, &ctl, &mut read) => r,
        _ = ctl.cancel.cancelled() => String::new(),
    };
    ctl.close(&reason);
    // Senders waiting for room on this link return now, with their frames.
    queue.close();
    let reason = ctl.reason().unwrap_or(reason);
    link::join_or_abort(writer, Duration::from_secs(2)).await;
    drop(read);

    let current = {
        let mut st = lock(&inner.state);
        match st.links.get_mut(&node) {
            Some(l) if l.id == id => {
                l.up = false;
                true
            }
            _ => false,
        }
    };
    if current {
        info!("link to node {node} down: {reason}");
        inner.emit(Event::Down { peer: node, reason }).await;
        inner.unclaim(node, id);
    }
    let _ = inner.cmd.send(Cmd::LinkEnded {
        node: Some(node),
        peer_id,
    });
    ctl.done.cancel();
}

/// Fill `buf`, giving up when nothing arrives for `idle`.
async fn read_full(
    r: &mut BufReader<ReadHalf<Stream>>,
    buf: &mut [u8],
    idle: Duration,
) -> Result<(), String> {
    let mut off = 0;
    while off < buf.len() {
        match tokio::time::timeout(idle, r.read(&mut buf[off..])).await {
            Err(_) => {
                return Err(format!(
                    "nothing received for {idle:?} (peer dead or unreachable)"
                ));
            }
            Ok(Ok(0)) => return Err("connection closed by peer".into()),
            Ok(Ok(n)) => off += n,
            Ok(Err(e)) => return Err(format!("read error: {e}")),
        }
    }
    Ok(())
}

async fn read_loop(
    inner: &Inner,
    peer: NodeId,
    ctl: &LinkCtl,
    r: &mut BufReader<ReadHalf<Stream>>,
) -> String {
    let idle = inner.config.idle_timeout;
    let max = inner.config.max_frame;
    loop {
        let mut len = [0u8; 4];
        if let Err(e) = read_full(r, &mut len, idle).await {
            return e;
        }
        ctl.touch();
        let n = u32::from_be_bytes(len) as usize;
        if n == 0 {
            continue; // keepalive
        }
        if n > max {
            return format!("peer sent a frame of {n} bytes (limit {max})");
        }
        let mut b = BytesMut::zeroed(n);
        if let Err(e) = read_full(r, &mut b, idle).await {
            return e;
        }
        let frame = match decode_frame(b.freeze()) {
            Ok(f) => f,
            Err(e) => return format!("malformed frame from peer: {e}"),
        };
        if inner
            .events
            .send(Event::Frame { peer, frame })
            .await
            .is_err()
        {
            return "event receiver closed".into();
        }
    }
}

/// Add `frame` to the batch; a large payload is written from its own buffer.
async fn push_frame(
    w: &mut WriteHalf<Stream>,
    buf: &mut BytesMut,
    frame: &Frame,
) -> Result<(), String> {
    let len = FRAME_OVERHEAD + frame.head.len() + frame.payload.len();
    buf.reserve(8 + frame.head.len());
    buf.put_u32(len as u32);
    buf.put_u32(frame.head.len() as u32);
    buf.put_slice(&frame.head);
    if frame.payload.len() >= DIRECT_WRITE {
        write_bytes(w, buf).await?;
        w.write_all(&frame.payload)
            .await
            .map_err(|e| format!("write error: {e}"))?;
    } else {
        buf.put_slice(&frame.payload);
    }
    Ok(())
}

async fn write_bytes(w: &mut WriteHalf<Stream>, buf: &mut BytesMut) -> Result<(), String> {
    if !buf.is_empty() {
        w.write_all(buf)
            .await
            .map_err(|e| format!("write error: {e}"))?;
        buf.clear();
    }
    Ok(())
}

async fn write_loop(
    inner: Arc<Inner>,
    mut w: WriteHalf<Stream>,
    queue: Arc<Outq>,
    ctl: Arc<LinkCtl>,
) {
    let keepalive = inner.config.keepalive;
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + 64 * 1024);
    let result: Result<(), String> = async {
        loop {
            let first = tokio::select! {
                biased;
                _ = ctl.cancel.cancelled() => break,
                r = tokio::time::timeout(keepalive, queue.ready()) => r,
            };
            match first {
                Err(_) => buf.put_u32(0),
                Ok(false) => break,
                Ok(true) => {
                    // Control frames first (`pop`), up to a batch.
                    while buf.len() < WRITE_BATCH {
                        match queue.pop() {
                            Some(f) => push_frame(&mut w, &mut buf, &f).await?,
                            None => break,
                        }
                    }
                }
            }
            write_bytes(&mut w, &mut buf).await?;
            w.flush().await.map_err(|e| format!("write error: {e}"))?;
        }
        Ok(())
    }
    .await;
    if let Err(reason) = result {
        ctl.close(&reason);
        return;
    }
    // Closing: on shutdown, flush what is queued for a short while, then close our side.
    if inner.root.is_cancelled() {
        let flush = async {
            queue.close();
            while let Some(f) = queue.pop() {
                if push_frame(&mut w, &mut buf, &f).await.is_err() {
                    return;
                }
            }
            let _ = write_bytes(&mut w, &mut buf).await;
            let _ = w.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.close()).await;
}
