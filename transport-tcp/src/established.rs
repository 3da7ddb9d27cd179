//! An established link: `Up`, its writer task and read loop, then `Down`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use runtime::NodeId;
use runtime::transport::Event;
use runtime::transport::link::{self, LinkCtl};
use snow::StatelessTransportState;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::{debug, info};

use crate::codec::Unpacker;
use crate::handshake::{TAG, open, recv_raw};
use crate::outbox::Outbox;
use crate::state::{Inner, lock};

/// A link whose handshake completed and which is registered (Up not yet sent).
pub(crate) struct Established {
    pub(crate) peer: NodeId,
    pub(crate) remote: SocketAddr,
    pub(crate) id: u64,
    pub(crate) arbiter: bool,
    pub(crate) read: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    pub(crate) noise: Arc<StatelessTransportState>,
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) ctl: Arc<LinkCtl>,
}

/// Run an established link until it dies; emits `Up` first and `Down` at the end.
///
/// The arbiter emits `Up` only once the peer confirms (its first message after the
/// arbiter's `Accepted`), so a peer that dies or shuts down during the handshake leaves no
/// `Up`/`Down` pair behind on either side.
pub(crate) async fn run_link(inner: Arc<Inner>, link: Established) {
    let Established {
        peer,
        remote,
        id,
        arbiter,
        mut read,
        noise,
        outbox,
        ctl,
    } = link;
    // The writer starts at once: it carries the arbiter's `Accepted` (and the other
    // side's confirmation). On shutdown it flushes what is queued, briefly.
    let writer = {
        let (inner, outbox, ctl) = (inner.clone(), outbox.clone(), ctl.clone());
        tokio::spawn(async move {
            match outbox.run(&ctl, inner.config.keepalive).await {
                Some(reason) => ctl.close(&reason),
                None if inner.root.is_cancelled() => outbox.flush(Duration::from_secs(1)).await,
                None => {}
            }
        })
    };
    let mut next_nonce = 2;
    let mut was_up = false;
    let mut reason = String::new();
    if arbiter {
        let limit = inner.config.handshake_timeout;
        let confirm = tokio::select! {
            r = tokio::time::timeout(limit, recv_raw(&mut read)) => match r {
                Ok(Ok(m)) => open(&noise, 2, &m).map(|_| ()).map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("peer did not confirm the link in time".into()),
            },
            _ = ctl.cancel.cancelled() => Err(String::new()),
        };
        match confirm {
            Ok(()) => {
                next_nonce = 3;
                if !inner.confirmed(peer, id) {
                    ctl.close("replaced");
                }
            }
            Err(e) => {
                debug!("link to node {peer} at {remote} not confirmed: {e}");
                ctl.close(&e);
            }
        }
    }
    if !ctl.cancel.is_cancelled() {
        was_up = true;
        info!("link to node {peer} up ({remote})");
        inner.emit(Event::Up { peer }).await;
        reason = tokio::select! {
            r = read_loop(&inner, peer, &mut read, &noise, next_nonce) => r,
            _ = ctl.cancel.cancelled() => String::new(),
        };
    }
    ctl.close(&reason);
    // Senders waiting for room on this link return now, with their frames.
    outbox.close();
    // The writer stops at the cancellation (flushing for a bounded while on shutdown).
    link::join_or_abort(writer, Duration::from_millis(1500)).await;
    drop(outbox);
    let reason = ctl.reason().unwrap_or(reason);
    drop(read);

    // The lifecycle hears of the end here, with the slot going to `Closing` (one lock).
    let current = inner.closing(peer, id, &reason);
    if current {
        if was_up {
            info!("link to node {peer} down: {reason}");
            inner.emit(Event::Down { peer, reason }).await;
        }
        lock(&inner.state).links.remove(peer, id);
    }
    ctl.done.cancel();
}

/// See `read_loop`.
const YIELD_BYTES: usize = 256 << 10;

async fn read_loop(
    inner: &Inner,
    peer: NodeId,
    read: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    noise: &StatelessTransportState,
    mut nonce: u64,
) -> String {
    let idle = inner.config.idle_timeout;
    let mut unpacker = Unpacker::new(inner.config.max_frame);
    // Bytes opened since this task last let others run: a stream of bulk keeps the socket
    // readable, and tokio's budget alone would let this loop hold its worker for
    // milliseconds, delaying the tasks that answer control frames.
    let mut since_yield = 0usize;
    // One idle timer for the link's life, moved only when it fires (to `idle` after the
    // last message): no timer registered and removed per message read.
    let mut last = tokio::time::Instant::now();
    let quiet = tokio::time::sleep(idle);
    tokio::pin!(quiet);
    loop {
        if since_yield >= YIELD_BYTES {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let next = tokio::select! {
            biased;
            m = read.next() => m,
            _ = &mut quiet => {
                if last.elapsed() >= idle {
                    return format!("nothing received for {idle:?} (peer dead or unreachable)");
                }
                quiet.as_mut().reset(last + idle);
                continue;
            }
        };
        last = tokio::time::Instant::now();
        let msg = match next {
            None => return "connection closed by peer".into(),
            Some(Err(e)) => return format!("read error: {e}"),
            Some(Ok(m)) => m,
        };
        if msg.len() < TAG {
            return "malformed message (shorter than its tag)".into();
        }
        // Room for the whole ciphertext: ring then opens in place instead of copying it.
        let r = unpacker.fill_with(msg.len(), |out| noise.read_message(nonce, &msg, out));
        if r.is_err() {
            return "message failed authentication; dropped link".into();
        }
        nonce += 1;
        since_yield += msg.len();
        if let Err(reason) = unpacker.deliver(peer, &inner.events).await {
            return reason;
        }
    }
}
