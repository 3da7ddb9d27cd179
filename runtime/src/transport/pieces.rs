//! Frames as one byte stream of lane-tagged pieces, for stream transports (TCP inside
//! Noise, libp2p streams), shared by them.
//!
//! Each direction of a link is one byte stream of *pieces*:
//! `u32 word (big endian) | [u32 total, first piece of a split frame only] | bytes`, where
//! the word holds the lane (bit 31: bulk), "more pieces of this frame follow" (bit 30),
//! "first piece of a split frame" (bit 29) and the piece's length (bits 0–28). A frame
//! (`runtime::wire::encode_frame`) of at most one piece's worth of bytes travels as one
//! piece; a larger one is cut into pieces of at most [`PIECE`] bytes, the first of which
//! says the frame's total length, so the reader reserves it once. Pieces of one lane are
//! in order; pieces of the two lanes interleave, so the writer can put a control frame
//! between two pieces of a bulk frame: a control frame waits behind at most one piece of
//! bulk, not behind a whole bulk frame. The reader reassembles per lane. A lone word 0
//! (an empty control piece) is a keepalive, skipped by the reader.
//!
//! The stream is handed to the transport in chunks of at most a chosen size (transport-tcp
//! seals each as one Noise message, so many small frames share one message and a large
//! frame spans as many as it needs). Chunk boundaries carry no meaning.
//!
//! [`Packer`] turns frames into chunks (handing each to a sink, which seals it); a large
//! payload's pieces are sealed straight from its `Bytes`, never copied into a staging
//! buffer. [`Unpacker`] takes the opened chunks (decrypted straight into its buffer) and
//! yields frames; a frame of one piece is a slice of that buffer, a split one is
//! assembled in one allocation of its size.

use super::{Event, Events, Frame, Lane};
use crate::NodeId;
use crate::wire::{FRAME_OVERHEAD, decode_frame, encode_frame};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Most bytes of a frame in one piece (what a control frame may wait behind): one Noise
/// message (65535) less its tag.
pub const PIECE: usize = 65535 - 16;

/// Bytes a piece adds in front of its part of an encoded frame.
pub const RECORD_OVERHEAD: usize = 4;

const BULK: u32 = 1 << 31;
const MORE: u32 = 1 << 30;
const FIRST: u32 = 1 << 29;
const LEN: u32 = FIRST - 1;

/// Payload pieces at least this large are sealed in place instead of copied into the batch.
const LARGE_PAYLOAD: usize = 8 * 1024;

/// Error from [`Unpacker::next_frame`]: the peer's stream is malformed; drop the link.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum UnpackError {
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed record: {0}")]
    Malformed(String),
}

/// The rest of a split frame still to be cut into pieces ([`Packer::push_split`]).
#[derive(Debug)]
pub struct Large {
    lane: Lane,
    rest: Bytes,
}

impl Large {
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// True once every piece is out.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Frames in, chunks of at most `max_chunk` bytes out.
#[derive(Debug)]
pub struct Packer {
    buf: BytesMut,
    max_chunk: usize,
    piece: usize,
}

fn lane_bit(lane: Lane) -> u32 {
    match lane {
        Lane::Control => 0,
        Lane::Bulk => BULK,
    }
}

impl Packer {
    /// `max_chunk` (at least 1) bounds every chunk handed to the sink.
    pub fn new(max_chunk: usize) -> Self {
        Self::with_piece(max_chunk, PIECE)
    }

    /// ... and `piece` (1..=[`PIECE`]) every piece of a frame.
    pub fn with_piece(max_chunk: usize, piece: usize) -> Self {
        assert!(
            max_chunk >= 1 && (1..=PIECE).contains(&piece),
            "chunk or piece size out of range"
        );
        Packer {
            buf: BytesMut::with_capacity(2 * max_chunk),
            max_chunk,
            piece,
        }
    }

    /// Bytes waiting for [`Packer::flush`].
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Append `frame` to the stream. Full chunks go to `sink` at once; the rest waits in
    /// the batch for more frames or [`Packer::flush`].
    pub fn push<E>(
        &mut self,
        frame: &Frame,
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if let Some(mut large) = self.push_split(frame, sink)? {
            while !large.rest.is_empty() {
                self.piece(&mut large, sink)?;
            }
        }
        Ok(())
    }

    /// Like [`Packer::push`], but a frame larger than a piece is only started: the rest
    /// comes back, for the caller to emit with [`Packer::piece`] until it is empty, in
    /// between other frames of the *other* lane if it likes (never of the same lane).
    pub fn push_split<E>(
        &mut self,
        frame: &Frame,
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<Large>, E> {
        let len = FRAME_OVERHEAD + frame.head.len() + frame.payload.len();
        let lane = lane_bit(frame.lane);
        if len <= self.piece {
            self.buf.reserve(RECORD_OVERHEAD + len);
            self.buf.put_u32(lane | len as u32);
            encode_frame(frame, &mut self.buf);
            self.emit_full(sink)?;
            return Ok(None);
        }
        // The first piece: the head (if it fits), or the whole frame copied piece by
        // piece (a head larger than a piece is rare).
        let first = FRAME_OVERHEAD + frame.head.len();
        let rest = if first <= self.piece {
            self.buf.reserve(2 * RECORD_OVERHEAD + first);
            self.buf.put_u32(lane | MORE | FIRST | first as u32);
            self.buf.put_u32(len as u32);
            self.buf.put_u32(frame.head.len() as u32);
            self.buf.put_slice(&frame.head);
            frame.payload.clone()
        } else {
            let mut all = BytesMut::with_capacity(len);
            encode_frame(frame, &mut all);
            let mut all = all.freeze();
            let part = all.split_to(self.piece);
            self.buf.reserve(2 * RECORD_OVERHEAD + part.len());
            self.buf.put_u32(lane | MORE | FIRST | part.len() as u32);
            self.buf.put_u32(len as u32);
            self.buf.put_slice(&part);
            all
        };
        self.emit_full(sink)?;
        Ok(Some(Large {
            lane: frame.lane,
            rest,
        }))
    }

    /// Emit the next piece of `large` (nothing once it is empty). A large piece is sealed
    /// straight from its `Bytes`.
    pub fn piece<E>(
        &mut self,
        large: &mut Large,
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if large.rest.is_empty() {
            return Ok(());
        }
        let part = large.rest.split_to(large.rest.len().min(self.piece));
        let more = if large.rest.is_empty() { 0 } else { MORE };
        self.buf
            .put_u32(lane_bit(large.lane) | more | part.len() as u32);
        if part.len() >= LARGE_PAYLOAD {
            self.flush(sink)?;
            for c in part.chunks(self.max_chunk) {
                sink(c)?;
            }
        } else {
            self.buf.put_slice(&part);
            self.emit_full(sink)?;
        }
        Ok(())
    }

    fn emit_full<E>(&mut self, sink: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        while self.buf.len() >= self.max_chunk {
            sink(&self.buf[..self.max_chunk])?;
            self.buf.advance(self.max_chunk);
        }
        Ok(())
    }

    /// Append a keepalive (an empty control piece) to the batch.
    pub fn keepalive(&mut self) {
        self.buf.put_u32(0);
    }

    /// The largest chunk this packer emits.
    pub fn max_chunk(&self) -> usize {
        self.max_chunk
    }

    /// Hand everything pending to `sink` (at most one chunk, since `push` emits full ones).
    pub fn flush<E>(&mut self, sink: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        while !self.buf.is_empty() {
            let n = self.buf.len().min(self.max_chunk);
            sink(&self.buf[..n])?;
            self.buf.advance(n);
        }
        self.buf.clear();
        Ok(())
    }
}

/// A split frame being reassembled: its bytes so far and its total length.
#[derive(Debug)]
struct Partial {
    bytes: BytesMut,
    total: usize,
}

/// Chunks in, frames out.
#[derive(Debug)]
pub struct Unpacker {
    buf: BytesMut,
    max_frame: usize,
    partial: [Option<Partial>; 2],
}

impl Unpacker {
    /// `max_frame`: the largest encoded frame (head + payload + 4) accepted.
    pub fn new(max_frame: usize) -> Self {
        Unpacker {
            buf: BytesMut::with_capacity(2 * PIECE),
            max_frame,
            partial: [None, None],
        }
    }

    /// Append one chunk by copying it.
    pub fn push_chunk(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Append up to `max_len` bytes written by `fill` straight into the buffer (a
    /// decryption); `fill` returns how many it wrote. On error nothing is appended.
    pub fn fill_with<E>(
        &mut self,
        max_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), E> {
        let start = self.buf.len();
        self.buf.resize(start + max_len, 0);
        match fill(&mut self.buf[start..]) {
            Ok(n) => {
                self.buf.truncate(start + n.min(max_len));
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Room for `n` more bytes at the end of the stream, to be filled by a read and then
    /// kept with [`Unpacker::commit`].
    pub fn spare(&mut self, n: usize) -> &mut [u8] {
        let start = self.buf.len();
        self.buf.resize(start + n, 0);
        &mut self.buf[start..]
    }

    /// Keep `filled` of the `n` bytes last handed out by [`Unpacker::spare`].
    pub fn commit(&mut self, n: usize, filled: usize) {
        let len = self.buf.len() - n + filled.min(n);
        self.buf.truncate(len);
    }

    /// Hand every complete frame in the stream to `events` as [`Event::Frame`] from
    /// `peer`, in order. `Err`: why the link must end (a malformed stream, or the receiver
    /// gone).
    pub async fn deliver(&mut self, peer: NodeId, events: &Events) -> Result<(), String> {
        loop {
            match self.next_frame() {
                Ok(Some(frame)) => {
                    if events.send(Event::Frame { peer, frame }).await.is_err() {
                        return Err("event receiver closed".into());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("malformed stream from peer: {e}")),
            }
        }
    }

    /// The next complete frame, if the stream holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, UnpackError> {
        loop {
            if self.buf.len() < RECORD_OVERHEAD {
                return Ok(None);
            }
            let word = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes"));
            if word == 0 {
                self.buf.advance(RECORD_OVERHEAD); // keepalive
                continue;
            }
            let (lane, at) = if word & BULK != 0 {
                (Lane::Bulk, 1)
            } else {
                (Lane::Control, 0)
            };
            let (more, first) = (word & MORE != 0, word & FIRST != 0);
            let len = (word & LEN) as usize;
            if !more && !first {
                if len > self.max_frame {
                    return Err(UnpackError::TooLarge {
                        size: len,
                        limit: self.max_frame,
                    });
                }
            } else if len > PIECE {
                return Err(UnpackError::Malformed(format!(
                    "piece of {len} bytes, more than {PIECE}"
                )));
            }
            let start = RECORD_OVERHEAD + if first { 4 } else { 0 };
            if self.buf.len() < start {
                return Ok(None);
            }
            let total = if first {
                let total =
                    u32::from_be_bytes(self.buf[4..8].try_into().expect("4 bytes")) as usize;
                if total > self.max_frame {
                    return Err(UnpackError::TooLarge {
                        size: total,
                        limit: self.max_frame,
                    });
                }
                if !more || total <= len {
                    return Err(UnpackError::Malformed(format!(
                        "first piece of {len} bytes of a split frame of {total}"
                    )));
                }
                total
            } else {
                0
            };
            if self.buf.len() < start + len {
                self.buf.reserve(start + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(start);
            let part = self.buf.split_to(len);
            let whole = match (&mut self.partial[at], first) {
                (None, false) if !more => Some(part),
                (None, true) => {
                    let mut bytes = BytesMut::with_capacity(total);
                    bytes.extend_from_slice(&part);
                    self.partial[at] = Some(Partial { bytes, total });
                    None
                }
                (Some(p), false) => {
                    if p.bytes.len() + len > p.total || (!more && p.bytes.len() + len != p.total) {
                        return Err(UnpackError::Malformed(format!(
                            "pieces of {} bytes for a frame of {}",
                            p.bytes.len() + len,
                            p.total
                        )));
                    }
                    p.bytes.extend_from_slice(&part);
                    if more {
                        None
                    } else {
                        self.partial[at].take().map(|p| p.bytes)
                    }
                }
                _ => {
                    return Err(UnpackError::Malformed(format!(
                        "{lane:?} piece out of place (first {first}, more {more})"
                    )));
                }
            };
            if let Some(rec) = whole {
                if rec.len() < FRAME_OVERHEAD {
                    return Err(UnpackError::Malformed(format!(
                        "record of {} bytes is shorter than a frame header",
                        rec.len()
                    )));
                }
                let mut frame = decode_frame(rec.freeze())
                    .map_err(|e| UnpackError::Malformed(e.to_string()))?;
                frame.lane = lane;
                return Ok(Some(frame));
            }
        }
    }
}
