//! The sending half of a link: seals frames into Noise messages and writes them.
//!
//! A sender that finds the link idle (nothing queued, nothing unwritten) seals its frame
//! and writes it itself, without a hop to another task: that is what keeps the round trip
//! close to raw TCP. Otherwise the frame goes to the link's two-lane queue
//! (`runtime::transport::lanes::Outq`: byte windows per lane, control first) and the
//! link's writer task drains it in large batches. All sealing and socket writes happen
//! under one lock and only with non-blocking `try_write`, so frames stay in order and a
//! sender's future can be dropped at any point without tearing a message.
//!
//! Control frames go before queued bulk frames, and between the pieces of a bulk frame
//! being sealed (see [`crate::codec`]): a control frame waits behind at most one piece
//! ([`crate::codec::PIECE`]) plus the sealed bytes not yet written (at most
//! [`BULK_BATCH`] while bulk flows) and the socket's unsent bytes, which the link caps
//! with `TCP_NOTSENT_LOWAT` (see `crate::config::Config::unsent_limit`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use runtime::NodeId;
use runtime::transport::lanes::Outq;
use runtime::transport::link::LinkCtl;
use runtime::transport::{Frame, SendError, queue_send, queue_try_send};
use snow::StatelessTransportState;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::codec::{Large, MAX_CHUNK, Packer};
use crate::state::lock;
use runtime::transport::Lane;

const TAG: usize = 16;
/// Ciphertext collected before it is handed to the socket.
const WRITE_BATCH: usize = 256 * 1024;
/// ... while a bulk frame is being cut into pieces (what a control frame may wait behind).
pub(crate) const BULK_BATCH: usize = 128 * 1024;
/// Frames up to this size may be written by the sender itself.
const INLINE_MAX: usize = 4 * MAX_CHUNK;
/// ... when the previous send on the link is at least this long ago. A sender streaming
/// frames back to back leaves them to the writer task, which batches them (one AEAD
/// operation and one syscall for hundreds of small frames); a lone request or reply is
/// written at once.
const INLINE_GAP_NS: u64 = 5_000;

pub(crate) struct Outbox {
    write: OwnedWriteHalf,
    noise: Arc<StatelessTransportState>,
    queue: Outq,
    kick: Notify,
    state: Mutex<State>,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the latest `send`.
    last_send: AtomicU64,
}

struct State {
    packer: Packer,
    /// Sealed, not yet written.
    out: BytesMut,
    nonce: u64,
    /// The rest of a split frame still to be sealed (it follows everything in `out`).
    large: Option<Large>,
    /// A write failed; the link is dead.
    error: Option<String>,
    wrote_at: Instant,
}

fn seal_into(
    noise: &StatelessTransportState,
    nonce: &mut u64,
    chunk: &[u8],
    out: &mut BytesMut,
) -> Result<(), String> {
    let n = chunk.len() + TAG;
    out.reserve(2 + n);
    out.put_u16(n as u16);
    let start = out.len();
    out.resize(start + n, 0);
    noise
        .write_message(*nonce, chunk, &mut out[start..])
        .map_err(|e| format!("seal: {e:?}"))?;
    *nonce += 1;
    Ok(())
}

impl State {
    fn idle(&self, queue: &Outq) -> bool {
        self.out.is_empty()
            && self.large.is_none()
            && self.packer.pending() == 0
            && self.error.is_none()
            && queue.is_empty()
    }

    fn has_more(&self, queue: &Outq) -> bool {
        self.large.is_some() || self.packer.pending() > 0 || !queue.is_empty()
    }

    /// Seal queued frames into `out` until it holds about `limit` bytes or nothing is left.
    fn fill(
        &mut self,
        noise: &StatelessTransportState,
        queue: &Outq,
        limit: usize,
    ) -> Result<(), String> {
        let State {
            packer,
            out,
            nonce,
            large,
            ..
        } = self;
        loop {
            if let Some(l) = large.as_mut() {
                let bulk = l.lane() == Lane::Bulk;
                let limit = if bulk { limit.min(BULK_BATCH) } else { limit };
                while !l.is_empty() && out.len() < limit {
                    let mut sink = |c: &[u8]| seal_into(noise, nonce, c, out);
                    if bulk {
                        // Control frames go between two pieces of a bulk frame.
                        while let Some(f) = queue.pop_control() {
                            packer.push(&f, &mut sink)?;
                        }
                    }
                    packer.piece(l, &mut sink)?;
                }
                if !l.is_empty() {
                    // Batched control frames and the word of the next piece go out now.
                    packer.flush(&mut |c: &[u8]| seal_into(noise, nonce, c, out))?;
                    return Ok(());
                }
                *large = None;
            }
            if out.len() + packer.pending() >= limit {
                break;
            }
            let Some(frame) = queue.pop() else { break };
            let mut sink = |c: &[u8]| seal_into(noise, nonce, c, out);
            *large = packer.push_split(&frame, &mut sink)?;
        }
        packer.flush(&mut |c: &[u8]| seal_into(noise, nonce, c, out))?;
        Ok(())
    }

    /// Write as much of `out` as the socket takes now. `Ok(true)`: all written.
    fn try_flush(&mut self, write: &OwnedWriteHalf) -> io::Result<bool> {
        while !self.out.is_empty() {
            match write.try_write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.out.split_to(n);
                    self.wrote_at = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        Ok(true)
    }
}

impl Outbox {
    /// `preamble`: raw bytes written first (the arbiter's sealed `Accepted`). `confirm`:
    /// start the stream with an empty message (the non-arbiter's confirmation, see
    /// `run_link`), sealed before any frame can be.
    pub(crate) fn new(
        write: OwnedWriteHalf,
        noise: Arc<StatelessTransportState>,
        windows: (usize, usize),
        preamble: &[u8],
        confirm: bool,
    ) -> Result<Arc<Outbox>, String> {
        let mut state = State {
            packer: Packer::new(MAX_CHUNK),
            out: BytesMut::with_capacity(64 * 1024),
            nonce: 2,
            large: None,
            error: None,
            wrote_at: Instant::now(),
        };
        state.out.extend_from_slice(preamble);
        if confirm {
            seal_into(&noise, &mut state.nonce, &[], &mut state.out)?;
        }
        let ob = Arc::new(Outbox {
            write,
            noise,
            queue: Outq::new(windows.0, windows.1),
            kick: Notify::new(),
            state: Mutex::new(state),
            epoch: Instant::now(),
            last_send: AtomicU64::new(0),
        });
        ob.kick.notify_one();
        Ok(ob)
    }

    /// Best effort, before the link is registered: write `raw` (a refusal) if the socket
    /// takes it now.
    pub(crate) fn write_now(&self, raw: &[u8]) {
        let _ = self.write.try_write(raw);
    }

    /// The link ended: wake every sender waiting for room (they get `Unreachable` and their
    /// frame back) and accept no more frames.
    pub(crate) fn close(&self) {
        self.queue.close();
    }

    /// Write `frame` at once if the link is idle and the frame small, else queue it,
    /// waiting for room at most `limit` (`Some(ZERO)`: not at all).
    pub(crate) async fn send(
        &self,
        peer: NodeId,
        frame: Frame,
        limit: Option<Duration>,
    ) -> Result<(), SendError> {
        let frame = match self.write_inline(frame) {
            None => return Ok(()),
            Some(f) => f,
        };
        let r = match limit {
            Some(d) if d.is_zero() => queue_try_send(&self.queue, peer, frame),
            _ => queue_send(&self.queue, peer, frame, limit).await,
        };
        if r.is_ok() {
            self.kick.notify_one();
        }
        r
    }

    /// [`Outbox::send`] without waiting.
    pub(crate) fn try_send(&self, peer: NodeId, frame: Frame) -> Result<(), SendError> {
        let frame = match self.write_inline(frame) {
            None => return Ok(()),
            Some(f) => f,
        };
        let r = queue_try_send(&self.queue, peer, frame);
        if r.is_ok() {
            self.kick.notify_one();
        }
        r
    }

    /// Seal and write `frame` now if the link is idle; hands it back otherwise.
    fn write_inline(&self, frame: Frame) -> Option<Frame> {
        let size = frame.head.len() + frame.payload.len();
        if size > INLINE_MAX {
            return Some(frame);
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let gap = now.saturating_sub(self.last_send.swap(now, Ordering::Relaxed));
        if gap < INLINE_GAP_NS || self.queue.is_closed() {
            return Some(frame);
        }
        let Ok(mut guard) = self.state.try_lock() else {
            return Some(frame);
        };
        if !guard.idle(&self.queue) {
            return Some(frame);
        }
        let st = &mut *guard;
        let mut sink = |c: &[u8]| seal_into(&self.noise, &mut st.nonce, c, &mut st.out);
        let sealed = st
            .packer
            .push(&frame, &mut sink)
            .and_then(|()| st.packer.flush(&mut sink));
        match sealed.map(|()| st.try_flush(&self.write)) {
            Ok(Ok(true)) => return None,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => st.error = Some(format!("write error: {e}")),
            Err(e) => st.error = Some(e),
        }
        drop(guard);
        self.kick.notify_one();
        None
    }

    /// The link's writer task: drains the queue, writes what senders left unwritten, sends
    /// keepalives. Returns the reason the link failed, or `None` when cancelled.
    pub(crate) async fn run(&self, ctl: &LinkCtl, keepalive: Duration) -> Option<String> {
        loop {
            let idle_tick = tokio::select! {
                biased;
                _ = ctl.cancel.cancelled() => return None,
                _ = self.kick.notified() => false,
                _ = tokio::time::sleep(keepalive) => true,
            };
            loop {
                let blocked = {
                    let mut st = lock(&self.state);
                    if let Some(e) = st.error.take() {
                        return Some(e);
                    }
                    if idle_tick && st.idle(&self.queue) && st.wrote_at.elapsed() >= keepalive {
                        let st = &mut *st;
                        if let Err(e) = seal_into(&self.noise, &mut st.nonce, &[], &mut st.out) {
                            return Some(e);
                        }
                    }
                    if let Err(e) = st.fill(&self.noise, &self.queue, WRITE_BATCH) {
                        return Some(e);
                    }
                    match st.try_flush(&self.write) {
                        Err(e) => return Some(format!("write error: {e}")),
                        Ok(true) if !st.has_more(&self.queue) => break,
                        Ok(true) => false,
                        Ok(false) => true,
                    }
                };
                // A batch is out and more waits: let other tasks (those that answer
                // control frames) run before the next batch.
                tokio::task::yield_now().await;
                if blocked {
                    tokio::select! {
                        biased;
                        _ = ctl.cancel.cancelled() => return None,
                        r = self.write.writable() => {
                            if let Err(e) = r {
                                return Some(format!("write error: {e}"));
                            }
                        }
                    }
                }
            }
        }
    }

    /// On shutdown: write what is queued, for at most `limit`.
    pub(crate) async fn flush(&self, limit: Duration) {
        let all = async {
            self.queue.close();
            loop {
                let blocked = {
                    let mut st = lock(&self.state);
                    if st.error.is_some() || st.fill(&self.noise, &self.queue, WRITE_BATCH).is_err()
                    {
                        return;
                    }
                    match st.try_flush(&self.write) {
                        Err(_) => return,
                        Ok(true) if !st.has_more(&self.queue) => return,
                        Ok(done) => !done,
                    }
                };
                if blocked && self.write.writable().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(limit, all).await;
    }
}
