//! The RDMA link's message format and the chunking/reassembly of frames, sans-IO.
//!
//! Every message on the QP is one *piece*: a 16-byte header and up to a buffer's worth
//! of frame bytes. Control-lane pieces travel as two-sided sends into the peer's posted
//! receive buffers; bulk-lane pieces as RDMA writes with immediate into a slot of the
//! peer's registered ring (the immediate names the slot). A frame longer than a piece
//! is cut into several; the first piece says the frame's head and total length. Every
//! header also returns credits (see [`crate::credit`]).
//!
//! ```text
//! 0      1      2      3      4        8        12             16
//! | kind | flags| lane | 0    | recv_cr| slot_cr| head_len     | total_len (first piece) |
//! ```
//! (all little endian; `recv_cr`, `slot_cr` u16 each at 4 and 6; `head_len` u32 at 8;
//! `total_len` u32 at 12 = head + payload bytes of the whole frame).

use bytes::{Bytes, BytesMut};
use runtime::transport::{Frame, Lane};

pub const HEADER: usize = 16;
const KIND_DATA: u8 = 1;
const KIND_CREDIT: u8 = 2;
const FIRST: u8 = 1;
const LAST: u8 = 2;

/// A decoded piece header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub credit: bool,
    pub first: bool,
    pub last: bool,
    pub lane: Lane,
    pub recv_credits: u16,
    pub slot_credits: u16,
    pub head_len: u32,
    pub total_len: u32,
}

impl Header {
    pub fn credit_only(recv: u16, slots: u16) -> Header {
        Header {
            credit: true,
            first: false,
            last: false,
            lane: Lane::Control,
            recv_credits: recv,
            slot_credits: slots,
            head_len: 0,
            total_len: 0,
        }
    }

    pub fn encode(&self) -> [u8; HEADER] {
        let mut b = [0u8; HEADER];
        b[0] = if self.credit { KIND_CREDIT } else { KIND_DATA };
        b[1] = (self.first as u8 * FIRST) | (self.last as u8 * LAST);
        b[2] = self.lane.index() as u8;
        b[4..6].copy_from_slice(&self.recv_credits.to_le_bytes());
        b[6..8].copy_from_slice(&self.slot_credits.to_le_bytes());
        b[8..12].copy_from_slice(&self.head_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.total_len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() < HEADER {
            return Err(format!(
                "piece of {} bytes, shorter than its header",
                b.len()
            ));
        }
        let credit = match b[0] {
            KIND_DATA => false,
            KIND_CREDIT => true,
            k => return Err(format!("unknown piece kind {k}")),
        };
        let lane = match b[2] {
            0 => Lane::Control,
            1 => Lane::Bulk,
            l => return Err(format!("unknown lane {l}")),
        };
        if b[1] & !(FIRST | LAST) != 0 || b[3] != 0 {
            return Err("reserved header bits set".into());
        }
        let u32at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Ok(Header {
            credit,
            first: b[1] & FIRST != 0,
            last: b[1] & LAST != 0,
            lane,
            recv_credits: u16::from_le_bytes([b[4], b[5]]),
            slot_credits: u16::from_le_bytes([b[6], b[7]]),
            head_len: u32at(8),
            total_len: u32at(12),
        })
    }
}

/// Cuts one frame into pieces of at most `piece` bytes (header included), without
/// copying: each piece is the header plus up to two slices (of head and payload).
pub struct Chunker {
    frame: Frame,
    total: usize,
    sent: usize,
    piece: usize,
    done: bool,
}

/// One piece ready to go: copy `header` then `parts` into a registered staging buffer.
#[derive(Debug)]
pub struct Piece {
    pub header: Header,
    pub parts: [Bytes; 2],
}

impl Piece {
    pub fn len(&self) -> usize {
        HEADER + self.parts[0].len() + self.parts[1].len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Chunker {
    /// `piece` is the buffer or slot size; must exceed [`HEADER`]. Frames longer than
    /// `u32::MAX` bytes are the caller's to refuse (`max_frame`).
    pub fn new(frame: Frame, piece: usize) -> Chunker {
        assert!(
            piece > HEADER,
            "piece size {piece} must exceed the {HEADER}-byte header"
        );
        let total = frame.head.len() + frame.payload.len();
        Chunker {
            frame,
            total,
            sent: 0,
            piece,
            done: false,
        }
    }

    pub fn lane(&self) -> Lane {
        self.frame.lane
    }

    /// The next piece, or `None` when the frame is all out. Credits are filled in later.
    pub fn next_piece(&mut self) -> Option<Piece> {
        if self.done {
            return None;
        }
        let first = self.sent == 0;
        let end = (self.sent + (self.piece - HEADER)).min(self.total);
        let hl = self.frame.head.len();
        let (sent, frame) = (self.sent, &self.frame);
        let part = |b: &Bytes, base: usize| {
            let s = sent.clamp(base, base + b.len()) - base;
            let e = end.clamp(base, base + b.len()) - base;
            b.slice(s..e)
        };
        let parts = [part(&frame.head, 0), part(&frame.payload, hl)];
        let header = Header {
            credit: false,
            first,
            last: end == self.total,
            lane: self.frame.lane,
            recv_credits: 0,
            slot_credits: 0,
            head_len: hl as u32,
            total_len: self.total as u32,
        };
        self.sent = end;
        self.done = end == self.total;
        Some(Piece { header, parts })
    }
}

/// Puts one lane's pieces back together into frames, checking they follow the rules.
#[derive(Debug)]
pub struct Reassembler {
    lane: Lane,
    max_frame: usize,
    cur: Option<(usize, usize, BytesMut)>,
}

impl Reassembler {
    pub fn new(lane: Lane, max_frame: usize) -> Reassembler {
        Reassembler {
            lane,
            max_frame,
            cur: None,
        }
    }

    /// Feed one data piece (header already decoded, `body` = the bytes after it).
    /// Returns a frame when this piece completes one.
    pub fn push(&mut self, h: &Header, body: &[u8]) -> Result<Option<Frame>, String> {
        if h.credit || h.lane != self.lane {
            return Err(format!(
                "piece for {:?} fed to the {:?} reassembler",
                h.lane, self.lane
            ));
        }
        if h.first {
            if self.cur.is_some() {
                return Err("a new frame began before the last one ended".into());
            }
            let total = h.total_len as usize;
            if total > self.max_frame {
                return Err(format!(
                    "frame of {total} bytes exceeds the limit of {}",
                    self.max_frame
                ));
            }
            if h.head_len as usize > total {
                return Err(format!(
                    "head of {} bytes in a frame of {total}",
                    h.head_len
                ));
            }
            self.cur = Some((h.head_len as usize, total, BytesMut::with_capacity(total)));
        }
        let Some((hl, total, buf)) = self.cur.as_mut() else {
            return Err("a frame continued that never began".into());
        };
        if h.head_len as usize != *hl || h.total_len as usize != *total {
            return Err("frame lengths changed between pieces".into());
        }
        if buf.len() + body.len() > *total {
            return Err(format!(
                "pieces carry more than the announced {total} bytes"
            ));
        }
        buf.extend_from_slice(body);
        let complete = buf.len() == *total;
        if complete != h.last {
            return Err(format!(
                "last-piece flag {} but {} of {total} bytes received",
                h.last,
                buf.len()
            ));
        }
        if !complete {
            return Ok(None);
        }
        let (hl, _, buf) = self.cur.take().expect("checked above");
        let mut all = buf.freeze();
        let payload = all.split_off(hl);
        Ok(Some(Frame::on(self.lane, all, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pieces(f: &Frame, size: usize) -> Vec<(Header, Vec<u8>)> {
        let mut c = Chunker::new(f.clone(), size);
        let mut out = vec![];
        while let Some(p) = c.next_piece() {
            assert!(p.len() <= size, "piece of {} > {size}", p.len());
            let mut body = p.parts[0].to_vec();
            body.extend_from_slice(&p.parts[1]);
            // through the wire format
            let h = Header::decode(&p.header.encode()).unwrap();
            assert_eq!(h, p.header);
            out.push((h, body));
        }
        out
    }

    proptest! {
        #[test]
        fn frames_cut_into_pieces_come_back_identical(
            frames in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), proptest::collection::vec(any::<u8>(), 0..3000), any::<bool>()), 1..8),
            size in (HEADER + 1)..600,
        ) {
            let mut rx = [Reassembler::new(Lane::Control, 1 << 20), Reassembler::new(Lane::Bulk, 1 << 20)];
            for (h, p, bulk) in frames {
                let lane = if bulk { Lane::Bulk } else { Lane::Control };
                let f = Frame::on(lane, Bytes::from(h), Bytes::from(p));
                let ps = pieces(&f, size);
                let want = (f.head.len() + f.payload.len()).div_ceil(size - HEADER).max(1);
                prop_assert_eq!(ps.len(), want);
                let mut got = None;
                for (i, (h, body)) in ps.iter().enumerate() {
                    let r = rx[lane.index()].push(h, body).map_err(TestCaseError::fail)?;
                    prop_assert_eq!(r.is_some(), i + 1 == ps.len());
                    got = r.or(got);
                }
                prop_assert_eq!(got.unwrap(), f);
            }
        }

        #[test]
        fn garbage_pieces_are_refused_not_panicked_on(
            raw in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..40)), 1..20),
        ) {
            let mut rx = Reassembler::new(Lane::Control, 64);
            for (h, body) in raw {
                if let Ok(h) = Header::decode(&h) {
                    if !h.credit && h.lane == Lane::Control {
                        if let Ok(Some(f)) = rx.push(&h, &body) {
                            prop_assert!(f.head.len() + f.payload.len() <= 64);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn broken_sequences_are_named() {
        let f = Frame::on(
            Lane::Bulk,
            Bytes::from_static(b"hd"),
            Bytes::from(vec![7u8; 100]),
        );
        let ps = pieces(&f, HEADER + 40);
        assert_eq!(ps.len(), 3);
        let mut rx = Reassembler::new(Lane::Bulk, 1000);
        assert!(
            rx.push(&ps[1].0, &ps[1].1)
                .unwrap_err()
                .contains("never began")
        );
        rx.push(&ps[0].0, &ps[0].1).unwrap();
        assert!(
            rx.push(&ps[0].0, &ps[0].1)
                .unwrap_err()
                .contains("began before")
        );
        let mut rx = Reassembler::new(Lane::Bulk, 50);
        assert!(
            rx.push(&ps[0].0, &ps[0].1)
                .unwrap_err()
                .contains("exceeds the limit")
        );
        let mut rx = Reassembler::new(Lane::Bulk, 1000);
        rx.push(&ps[0].0, &ps[0].1).unwrap();
        let mut early = ps[1].0;
        early.last = true;
        assert!(
            rx.push(&early, &ps[1].1)
                .unwrap_err()
                .contains("last-piece flag")
        );
        assert!(Header::decode(&[9u8; 16]).unwrap_err().contains("kind"));
        assert!(Header::decode(&[1u8; 3]).unwrap_err().contains("shorter"));
    }

    #[test]
    fn an_empty_frame_is_one_piece() {
        let f = Frame::on(Lane::Control, Bytes::new(), Bytes::new());
        let ps = pieces(&f, 64);
        assert_eq!(ps.len(), 1);
        assert!(ps[0].0.first && ps[0].0.last);
        let mut rx = Reassembler::new(Lane::Control, 10);
        assert_eq!(rx.push(&ps[0].0, &ps[0].1).unwrap(), Some(f));
    }
}
