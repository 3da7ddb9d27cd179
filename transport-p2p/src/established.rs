//! An established link: `Discovered` and `Up`, its read loop and writer task, then `Down`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use libp2p::{PeerId, Stream};
use runtime::NodeId;
use runtime::transport::lanes::Outq;
use runtime::transport::link;
use runtime::transport::pieces::{Large, Packer, Unpacker};
use runtime::transport::table::Phase;
use runtime::transport::{Event, Lane};
use tracing::info;

use crate::state::{Inner, LinkCtl, lock};
use crate::swarm::Cmd;

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
        let current = !st.links.is_closed() && st.links.set_phase(node, id, Phase::Up);
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
    let _ = inner.cmd.send(Cmd::LinkUp { node, link: id });

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

    let current = lock(&inner.state).links.set_phase(node, id, Phase::Closing);
    if current {
        info!("link to node {node} down: {reason}");
        inner.emit(Event::Down { peer: node, reason }).await;
        inner.unclaim(node, id);
    }
    let _ = inner.cmd.send(Cmd::LinkEnded {
        node: Some(node),
        peer_id,
        link: Some(id),
        refused: None,
    });
    ctl.done.cancel();
}

/// Bytes asked of the stream per read.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read before the loop lets other tasks run (see transport-tcp's read loop).
const YIELD_BYTES: usize = 256 << 10;

async fn read_loop(
    inner: &Inner,
    peer: NodeId,
    ctl: &LinkCtl,
    r: &mut BufReader<ReadHalf<Stream>>,
) -> String {
    let idle = inner.config.idle_timeout;
    let mut unpacker = Unpacker::new(inner.config.max_frame);
    let mut since_yield = 0usize;
    loop {
        if since_yield >= YIELD_BYTES {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let spare = unpacker.spare(READ_CHUNK);
        let n = match tokio::time::timeout(idle, r.read(spare)).await {
            Err(_) => {
                unpacker.commit(READ_CHUNK, 0);
                return format!("nothing received for {idle:?} (peer dead or unreachable)");
            }
            Ok(Ok(0)) => return "connection closed by peer".into(),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return format!("read error: {e}"),
        };
        unpacker.commit(READ_CHUNK, n);
        since_yield += n;
        ctl.touch();
        if let Err(reason) = unpacker.deliver(peer, &inner.events).await {
            return reason;
        }
    }
}

/// Hand what the packer has batched to the stream.
async fn write_bytes(w: &mut WriteHalf<Stream>, buf: &mut BytesMut) -> Result<(), String> {
    if !buf.is_empty() {
        w.write_all(buf)
            .await
            .map_err(|e| format!("write error: {e}"))?;
        buf.clear();
    }
    Ok(())
}

/// Collects the packer's chunks (the whole stream is one byte stream here).
fn collect(out: &mut BytesMut) -> impl FnMut(&[u8]) -> Result<(), String> + '_ {
    |c: &[u8]| {
        out.extend_from_slice(c);
        Ok(())
    }
}

async fn write_loop(
    inner: Arc<Inner>,
    mut w: WriteHalf<Stream>,
    queue: Arc<Outq>,
    ctl: Arc<LinkCtl>,
) {
    let keepalive = inner.config.keepalive;
    let mut packer = Packer::new(WRITE_BATCH);
    let mut buf = BytesMut::with_capacity(WRITE_BATCH + 64 * 1024);
    // A bulk frame being cut into pieces, with control frames written between them.
    let mut large: Option<Large> = None;
    let result: Result<(), String> = async {
        loop {
            if large.is_none() {
                let first = tokio::select! {
                    biased;
                    _ = ctl.cancel.cancelled() => break,
                    r = tokio::time::timeout(keepalive, queue.ready()) => r,
                };
                match first {
                    Err(_) => packer.keepalive(),
                    Ok(false) => break,
                    Ok(true) => {}
                }
            } else if ctl.cancel.is_cancelled() {
                break;
            }
            // Control frames first (`pop`), up to a batch; a bulk frame goes piece by
            // piece, control frames between its pieces.
            while buf.len() + packer.pending() < WRITE_BATCH {
                if let Some(l) = large.as_mut() {
                    while l.lane() == Lane::Bulk
                        && let Some(f) = queue.pop_control()
                    {
                        packer.push(&f, &mut collect(&mut buf))?;
                    }
                    packer.piece(l, &mut collect(&mut buf))?;
                    if l.is_empty() {
                        large = None;
                    }
                    continue;
                }
                match queue.pop() {
                    Some(f) => large = packer.push_split(&f, &mut collect(&mut buf))?,
                    None => break,
                }
            }
            packer.flush(&mut collect(&mut buf))?;
            write_bytes(&mut w, &mut buf).await?;
            w.flush().await.map_err(|e| format!("write error: {e}"))?;
            if large.is_some() {
                tokio::task::yield_now().await;
            }
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
            let mut sink = collect(&mut buf);
            if let Some(mut l) = large.take() {
                while !l.is_empty() {
                    if packer.piece(&mut l, &mut sink).is_err() {
                        return;
                    }
                }
            }
            while let Some(f) = queue.pop() {
                if packer.push(&f, &mut sink).is_err() {
                    return;
                }
            }
            let _ = packer.flush(&mut sink);
            drop(sink);
            let _ = write_bytes(&mut w, &mut buf).await;
            let _ = w.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), w.close()).await;
}
