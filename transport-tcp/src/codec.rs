//! The plaintext stream inside the encrypted link, cut into Noise-sized chunks.
//!
//! After the handshake each direction of a link is one byte stream of *records*:
//! `u32 record length (big endian) | runtime::wire::encode_frame(frame)`. The stream is
//! cut into chunks of at most [`MAX_CHUNK`] bytes, each sealed as one Noise message, so
//! many small frames share one message (one AEAD operation, one syscall) and a large frame
//! spans as many messages as it needs. Chunk boundaries carry no meaning; an empty chunk is
//! a keepalive.
//!
//! [`Packer`] turns frames into chunks (handing each to a sink, which seals it); a large
//! payload is sealed straight from its `Bytes`, never copied into a staging buffer.
//! [`Unpacker`] takes the opened chunks (decrypted straight into its buffer) and yields
//! frames whose head and payload are slices of that buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use runtime::transport::Frame;
use runtime::wire::{FRAME_OVERHEAD, decode_frame, encode_frame};

/// Largest Noise message (65535) minus the AEAD tag.
pub const MAX_CHUNK: usize = 65535 - 16;

/// Bytes a record adds in front of an encoded frame.
pub const RECORD_OVERHEAD: usize = 4;

/// Payloads at least this large are sealed in place instead of copied into the batch.
const LARGE_PAYLOAD: usize = 8 * 1024;

/// Error from [`Unpacker::next_frame`]: the peer's stream is malformed; drop the link.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum UnpackError {
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed record: {0}")]
    Malformed(String),
}

/// Frames in, chunks of at most `max_chunk` bytes out.
#[derive(Debug)]
pub struct Packer {
    buf: BytesMut,
    max_chunk: usize,
}

impl Default for Packer {
    fn default() -> Self {
        Self::new(MAX_CHUNK)
    }
}

impl Packer {
    /// `max_chunk` (1..=[`MAX_CHUNK`]) bounds every chunk handed to the sink.
    pub fn new(max_chunk: usize) -> Self {
        assert!(
            (1..=MAX_CHUNK).contains(&max_chunk),
            "chunk size out of range"
        );
        Packer {
            buf: BytesMut::with_capacity(2 * max_chunk),
            max_chunk,
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
        if let Some(payload) = self.push_split(frame, sink)? {
            for piece in payload.chunks(self.max_chunk) {
                sink(piece)?;
            }
        }
        Ok(())
    }

    /// Like [`Packer::push`], but a large payload is handed back instead of sealed: the
    /// caller must pass it to the sink next, in pieces of at most `max_chunk` bytes, before
    /// anything else (so it can write to the socket between pieces).
    pub fn push_split<E>(
        &mut self,
        frame: &Frame,
        sink: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<Bytes>, E> {
        let len = FRAME_OVERHEAD + frame.head.len() + frame.payload.len();
        if frame.payload.len() >= LARGE_PAYLOAD {
            self.buf
                .reserve(RECORD_OVERHEAD + FRAME_OVERHEAD + frame.head.len());
            self.buf.put_u32(len as u32);
            self.buf.put_u32(frame.head.len() as u32);
            self.buf.put_slice(&frame.head);
            self.flush(sink)?;
            return Ok(Some(frame.payload.clone()));
        }
        self.buf.reserve(RECORD_OVERHEAD + len);
        self.buf.put_u32(len as u32);
        encode_frame(frame, &mut self.buf);
        while self.buf.len() >= self.max_chunk {
            sink(&self.buf[..self.max_chunk])?;
            self.buf.advance(self.max_chunk);
        }
        Ok(None)
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

/// Chunks in, frames out.
#[derive(Debug)]
pub struct Unpacker {
    buf: BytesMut,
    max_frame: usize,
}

impl Unpacker {
    /// `max_frame`: the largest encoded frame (head + payload + 4) accepted.
    pub fn new(max_frame: usize) -> Self {
        Unpacker {
            buf: BytesMut::with_capacity(2 * MAX_CHUNK),
            max_frame,
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

    /// The next complete frame, if the stream holds one.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, UnpackError> {
        if self.buf.len() < RECORD_OVERHEAD {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > self.max_frame {
            return Err(UnpackError::TooLarge {
                size: len,
                limit: self.max_frame,
            });
        }
        if len < FRAME_OVERHEAD {
            return Err(UnpackError::Malformed(format!(
                "record of {len} bytes is shorter than a frame header"
            )));
        }
        let total = RECORD_OVERHEAD + len;
        if self.buf.len() < total {
            // Make room for the whole frame once, so a large one is assembled in a single
            // allocation instead of growing chunk by chunk.
            self.buf.reserve(total - self.buf.len() + MAX_CHUNK);
            return Ok(None);
        }
        let mut rec = self.buf.split_to(total);
        rec.advance(RECORD_OVERHEAD);
        decode_frame(rec.freeze())
            .map(Some)
            .map_err(|e| UnpackError::Malformed(e.to_string()))
    }
}
