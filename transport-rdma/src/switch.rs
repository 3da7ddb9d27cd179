//! Switching a peer from the TCP fall-back to RDMA without reordering a lane.
//!
//! While a peer is linked over TCP, frames of each lane travel in order on the TCP link.
//! When RDMA works again (see `transport`'s re-probe), each side stops sending over TCP,
//! sends one end-of-TCP marker per lane after its last TCP frame, and from then on sends
//! over RDMA. The receiving side holds every frame that comes over the new RDMA link until
//! it has seen the peer's marker on both lanes: TCP keeps each lane in order, so by then
//! every frame the peer sent over TCP has been delivered, and none overtakes another.
//!
//! A marker names the queue pair numbers of the new link (the sender's, then the
//! receiver's), so a marker of an earlier switch cannot release a later link's frames.
//! It is a frame the runtime never sends: a head of a zero byte and a fixed text (16 bytes),
//! the two queue pair numbers, and no payload. The runtime's heads start with its msgpack
//! header struct, and a msgpack struct never begins with the byte 0 (that is the integer 0).
//!
//! Must not know: verbs, sockets. Pure logic, tested here.

use bytes::{BufMut, Bytes, BytesMut};
use runtime::transport::{Frame, Lane};

const MAGIC: &[u8; 16] = b"\0omnode-rdma-sw\0";
const LEN: usize = MAGIC.len() + 8;

/// The queue pair numbers (sender's, receiver's) of the link a marker opens.
pub type Pair = (u32, u32);

/// The end-of-TCP marker for `lane` of the link from queue pair `from` to `to`.
pub fn marker(lane: Lane, from: u32, to: u32) -> Frame {
    let mut h = BytesMut::with_capacity(LEN);
    h.put_slice(MAGIC);
    h.put_u32(from);
    h.put_u32(to);
    Frame::on(lane, h.freeze(), Bytes::new())
}

/// The pair a frame names, if it is a marker.
pub fn parse(f: &Frame) -> Option<Pair> {
    if f.head.len() != LEN || !f.payload.is_empty() || !f.head.starts_with(MAGIC) {
        return None;
    }
    let n = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&f.head[i..i + 4]);
        u32::from_be_bytes(b)
    };
    Some((n(MAGIC.len()), n(MAGIC.len() + 4)))
}

/// The last marker seen on each lane.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    last: [Option<Pair>; 2],
}

impl Seen {
    pub fn record(&mut self, lane: Lane, pair: Pair) {
        self.last[lane.index()] = Some(pair);
    }

    /// Both lanes' markers for `pair` arrived: the peer's TCP frames are all delivered.
    pub fn both(&self, pair: Pair) -> bool {
        self.last.iter().all(|l| *l == Some(pair))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_round_trips_and_other_frames_are_not_markers() {
        let m = marker(Lane::Bulk, 17, 0xdead_beef);
        assert_eq!(m.lane, Lane::Bulk);
        assert_eq!(parse(&m), Some((17, 0xdead_beef)));
        // A frame with the same head but a payload, a shorter head, or another text: no.
        let with_payload = Frame::new(m.head.clone(), Bytes::from_static(b"x"));
        assert_eq!(parse(&with_payload), None);
        assert_eq!(
            parse(&Frame::new(m.head.slice(..LEN - 1), Bytes::new())),
            None
        );
        let mut other = m.head.to_vec();
        other[3] ^= 1;
        assert_eq!(parse(&Frame::new(Bytes::from(other), Bytes::new())), None);
        assert_eq!(
            parse(&Frame::new(Bytes::from_static(b"ask 1"), Bytes::new())),
            None
        );
    }

    #[test]
    fn frames_are_released_only_after_both_lanes_markers_of_this_link() {
        let mut s = Seen::default();
        let link = (5, 9);
        assert!(!s.both(link));
        s.record(Lane::Control, link);
        assert!(!s.both(link), "the bulk lane may still carry TCP frames");
        // A marker of an earlier switch on the bulk lane does not count.
        s.record(Lane::Bulk, (4, 9));
        assert!(!s.both(link));
        s.record(Lane::Bulk, link);
        assert!(s.both(link));
        // A later link needs markers of its own.
        assert!(!s.both((6, 10)));
    }
}
