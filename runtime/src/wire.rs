//! Wire formats shared by every transport and by the runtime.
//!
//! - [`Hello`]: the versioned handshake both ends of a link send once it is authenticated.
//! - [`encode_frame`] / [`decode_frame`]: a [`Frame`] as one byte string
//!   (`u32 head length, big endian | head | payload`), for stream transports that put it in
//!   a length-delimited frame. Decoding is zero-copy (slices of the input `Bytes`).
//! - [`Header`]: the runtime's envelope at the front of [`Frame::head`], MessagePack,
//!   followed by the MessagePack body of the message.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::transport::Frame;

/// Bumped whenever anything on the wire changes incompatibly.
/// v2: typed refusals in `HelloReply`, `Kind::Busy`.
/// v3: per-actor credits (`Kind::Credit`); transport-tcp cuts frames into lane-tagged
/// pieces.
pub const PROTOCOL_VERSION: u16 = 3;

/// The first message on an authenticated link, in both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always `"omnode"`: a link to something else is refused at once.
    pub magic: String,
    pub version: u16,
    pub node: NodeId,
    /// Digest of the cluster configuration (the normalized map), so nodes with different
    /// maps refuse each other instead of disagreeing about who is who.
    pub cluster: String,
}

impl Hello {
    pub const MAGIC: &'static str = "omnode";

    pub fn new(node: NodeId, cluster: impl Into<String>) -> Self {
        Hello {
            magic: Self::MAGIC.into(),
            version: PROTOCOL_VERSION,
            node,
            cluster: cluster.into(),
        }
    }

    /// Check a peer's hello against ours: `Err(refusal)` is sent back as
    /// [`HelloReply::Refused`] and logged on both sides.
    pub fn check(&self, ours: &Hello) -> Result<(), Refusal> {
        if self.magic != Self::MAGIC {
            return Err(Refusal::NotOmnode {
                magic: short(&self.magic).to_string(),
            });
        }
        if self.version != ours.version {
            return Err(Refusal::Version {
                peer: self.version,
                ours: ours.version,
            });
        }
        if self.node == ours.node {
            return Err(Refusal::OwnId(self.node));
        }
        if self.cluster != ours.cluster {
            return Err(Refusal::ClusterDiffers {
                peer: short(&self.cluster).to_string(),
                ours: short(&ours.cluster).to_string(),
            });
        }
        Ok(())
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec(self).expect("hello encodes"))
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        rmp_serde::from_slice(b).map_err(|e| DecodeError::Msgpack(e.to_string()))
    }
}

/// The first 12 characters of `d` (whole characters: a peer's string may be any UTF-8).
fn short(d: &str) -> &str {
    match d.char_indices().nth(12) {
        Some((at, _)) => &d[..at],
        None => d,
    }
}

/// Why a link was refused, as sent in [`HelloReply::Refused`]: callers match on the
/// variant, people read the message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("not an omnode peer (magic {magic:?})")]
    NotOmnode { magic: String },
    #[error(
        "protocol version mismatch: peer speaks v{peer}, this node v{ours}; run the same omnode version on every node"
    )]
    Version { peer: u16, ours: u16 },
    #[error("peer claims this node's own id {0}")]
    OwnId(NodeId),
    #[error(
        "cluster map differs (peer {peer}, this node {ours}); use the same map file on every node"
    )]
    ClusterDiffers { peer: String, ours: String },
    #[error("dialled node {dialled} but node {answered} answered; check the addresses in the map")]
    WrongNode { dialled: NodeId, answered: NodeId },
    #[error("node {peer} is not in node {local}'s peer list")]
    NotListed { peer: NodeId, local: NodeId },
    /// The arbiter keeps another link to this peer (simultaneous dials): not an error.
    #[error("duplicate link: node {local} already has a link to node {peer}")]
    Duplicate { local: NodeId, peer: NodeId },
    #[error(
        "node id {node} already taken by peer {holder}; id collision (peer {claimant} claims it too)"
    )]
    IdTaken {
        node: NodeId,
        holder: String,
        claimant: String,
    },
    #[error("malformed hello: {0}")]
    Malformed(String),
    #[error("transport is shutting down")]
    ShuttingDown,
    #[error("previous link did not close in time")]
    PreviousLinkStuck,
}

/// The answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted,
    Refused { reason: Refusal },
}

impl HelloReply {
    pub fn encode(&self) -> Bytes {
        Bytes::from(rmp_serde::to_vec(self).expect("hello reply encodes"))
    }
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        rmp_serde::from_slice(b).map_err(|e| DecodeError::Msgpack(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame too short ({0} bytes)")]
    Short(usize),
    #[error("frame head length {head} exceeds frame size {frame}")]
    BadHeadLength { head: usize, frame: usize },
    #[error("malformed message: {0}")]
    Msgpack(String),
}

/// Bytes [`encode_frame`] adds to head and payload.
pub const FRAME_OVERHEAD: usize = 4;

/// Append `frame` to `dst` as `u32 head length | head | payload`.
pub fn encode_frame(frame: &Frame, dst: &mut BytesMut) {
    dst.reserve(FRAME_OVERHEAD + frame.head.len() + frame.payload.len());
    dst.put_u32(frame.head.len() as u32);
    dst.put_slice(&frame.head);
    dst.put_slice(&frame.payload);
}

/// Split one encoded frame; head and payload share `src`'s memory.
pub fn decode_frame(mut src: Bytes) -> Result<Frame, DecodeError> {
    if src.len() < FRAME_OVERHEAD {
        return Err(DecodeError::Short(src.len()));
    }
    let head_len = src.get_u32() as usize;
    if head_len > src.len() {
        return Err(DecodeError::BadHeadLength {
            head: head_len,
            frame: src.len() + FRAME_OVERHEAD,
        });
    }
    let head = src.split_to(head_len);
    Ok(Frame::new(head, src))
}

/// What a frame's head says about the message that follows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Fire and forget.
    Tell,
    /// A request; the answer comes back as `Reply` with the same id.
    Ask { id: u64 },
    /// The answer to `Ask { id }`.
    Reply { id: u64 },
    /// The request `id` could not be delivered or answered.
    Failed { id: u64, reason: String },
    /// The request `id` was refused because the actor's mailbox is full: try later.
    Busy { id: u64 },
    /// `bytes` more of the receiver's actor `Header::to` may be sent as tells: the
    /// actor has taken that many bytes of the sender's messages out of its mailbox (see
    /// `runtime::system`, per-actor credits).
    Credit { bytes: u64 },
}

/// The runtime's envelope: to which named actor, and what kind of message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub to: String,
    pub kind: Kind,
}

/// Build a frame head: MessagePack header followed by the MessagePack body.
///
/// One allocation for a small message: the buffer starts with room for the header and a
/// small body (a `Vec` that grew by doubling cost two reallocations and a second
/// allocation in `Bytes::from` per 64-byte tell, 10 % of a one-way stream's CPU), and a
/// frozen `BytesMut` becomes `Bytes` without another one.
pub fn encode_head<T: Serialize + ?Sized>(header: &Header, body: &T) -> Result<Bytes, DecodeError> {
    encode_envelope(&header.to, &header.kind, body)
}

/// [`encode_head`] from borrowed parts (no copy of the actor's name per message).
pub fn encode_envelope<T: Serialize + ?Sized>(
    to: &str,
    kind: &Kind,
    body: &T,
) -> Result<Bytes, DecodeError> {
    /// [`Header`]'s wire form, borrowed (MessagePack: the same array of two).
    #[derive(Serialize)]
    struct HeaderRef<'a> {
        to: &'a str,
        kind: &'a Kind,
    }
    let header = HeaderRef { to, kind };
    let mut out = BytesMut::with_capacity(HEAD_GUESS + to.len()).writer();
    rmp_serde::encode::write(&mut out, &header).map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    rmp_serde::encode::write_named(&mut out, body)
        .map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    Ok(out.into_inner().freeze())
}

/// Room [`encode_head`] reserves beyond the actor's name: the header's other fields and a
/// small body.
const HEAD_GUESS: usize = 176;

/// Split a frame head into the header and the still-encoded body.
pub fn decode_head(head: &Bytes) -> Result<(Header, Bytes), DecodeError> {
    let (to, kind, body) = decode_envelope(head)?;
    Ok((
        Header {
            to: to.to_string(),
            kind,
        },
        body,
    ))
}

/// [`decode_head`] with the actor's name borrowed from `head` (no allocation for it).
pub fn decode_envelope(head: &Bytes) -> Result<(&str, Kind, Bytes), DecodeError> {
    let bad = |e: String| DecodeError::Msgpack(e);
    let mut rd = &head[..];
    let n = rmp::decode::read_array_len(&mut rd).map_err(|e| bad(e.to_string()))?;
    if n != 2 {
        return Err(bad(format!("envelope of {n} fields, not 2")));
    }
    let (to, rest) = rmp::decode::read_str_from_slice(rd).map_err(|e| bad(e.to_string()))?;
    let mut de = rmp_serde::Deserializer::new(rest);
    let kind = Kind::deserialize(&mut de).map_err(|e| bad(e.to_string()))?;
    let at = head.len() - de.get_ref().len();
    Ok((to, kind, head.slice(at..)))
}

/// Decode a message body.
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    rmp_serde::from_slice(body).map_err(|e| DecodeError::Msgpack(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frame_round_trips(head in proptest::collection::vec(any::<u8>(), 0..512),
                             payload in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let f = Frame::new(Bytes::from(head), Bytes::from(payload));
            let mut buf = BytesMut::new();
            encode_frame(&f, &mut buf);
            prop_assert_eq!(buf.len(), FRAME_OVERHEAD + f.head.len() + f.payload.len());
            prop_assert_eq!(decode_frame(buf.freeze()).unwrap(), f);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let b = Bytes::from(data);
            if let Ok(f) = decode_frame(b.clone()) {
                prop_assert_eq!(f.head.len() + f.payload.len() + FRAME_OVERHEAD, b.len());
                let _ = decode_head(&f.head);
            }
            let _ = Hello::decode(&b);
            let _ = HelloReply::decode(&b);
        }

        #[test]
        fn envelope_round_trips(to in "[a-z]{0,20}", id in any::<u64>(), tell in any::<bool>(),
                                body in proptest::collection::vec(any::<u32>(), 0..64)) {
            let header = Header { to, kind: if tell { Kind::Tell } else { Kind::Ask { id } } };
            let head = encode_head(&header, &body).unwrap();
            let (h2, rest) = decode_head(&head).unwrap();
            prop_assert_eq!(&h2, &header);
            // The borrowed form reads the same bytes as the owned one (same wire form).
            let owned = {
                let mut v = Vec::new();
                rmp_serde::encode::write(&mut v, &header).unwrap();
                rmp_serde::encode::write_named(&mut v, &body).unwrap();
                Bytes::from(v)
            };
            prop_assert_eq!(&owned, &head);
            let (to, kind, rest2) = decode_envelope(&owned).unwrap();
            prop_assert_eq!((to, &kind), (header.to.as_str(), &header.kind));
            prop_assert_eq!(&rest2, &rest);
            prop_assert_eq!(decode_body::<Vec<u32>>(&rest).unwrap(), body);
        }
    }

    #[test]
    fn hello_refusals_are_typed() {
        let ours = Hello::new(1, "abcdef0123456789");
        assert_eq!(Hello::new(2, "abcdef0123456789").check(&ours), Ok(()));
        assert_eq!(
            Hello::new(2, "ffff").check(&ours),
            Err(Refusal::ClusterDiffers {
                peer: "ffff".into(),
                ours: "abcdef012345".into()
            })
        );
        let mut old = Hello::new(2, "abcdef0123456789");
        old.version = PROTOCOL_VERSION + 1;
        assert_eq!(
            old.check(&ours),
            Err(Refusal::Version {
                peer: PROTOCOL_VERSION + 1,
                ours: PROTOCOL_VERSION
            })
        );
        assert_eq!(
            Hello::new(1, "abcdef0123456789").check(&ours),
            Err(Refusal::OwnId(1))
        );
        let mut alien = Hello::new(2, "abcdef0123456789");
        alien.magic = "http".into();
        let r = alien.check(&ours).unwrap_err();
        assert!(matches!(&r, Refusal::NotOmnode { magic } if magic == "http"));
        assert!(r.to_string().contains("not an omnode peer"), "{r}");
        // The refusal survives the wire as the same variant.
        let reply = HelloReply::Refused { reason: r.clone() };
        assert_eq!(HelloReply::decode(&reply.encode()), Ok(reply));
    }

    /// A digest (or magic) that is not ASCII used to panic when cut to 12 bytes.
    #[test]
    fn non_ascii_digests_are_refused_without_panicking() {
        let ours = Hello::new(1, "abcdef0123456789");
        for digest in [
            "ééééééééééééé",
            "a€€€€€€€€€€€€€",
            "🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀",
            "ab\u{0}ü",
        ] {
            let r = Hello::new(2, digest).check(&ours).unwrap_err();
            let Refusal::ClusterDiffers { peer, .. } = &r else {
                panic!("{r:?}")
            };
            assert!(digest.starts_with(peer.as_str()));
            assert_eq!(peer.chars().count(), digest.chars().count().min(12));
            let mut h = Hello::new(2, "abcdef0123456789");
            h.magic = digest.into();
            assert!(matches!(h.check(&ours), Err(Refusal::NotOmnode { .. })));
        }
    }

    proptest! {
        #[test]
        fn any_hello_strings_check_without_panicking(magic in ".*", cluster in ".*", node in any::<u32>(), version in any::<u16>()) {
            let ours = Hello::new(1, "abcdef0123456789");
            let h = Hello { magic, version, node, cluster };
            let _ = h.check(&ours).map_err(|r| r.to_string());
        }
    }

    #[test]
    fn truncated_frame_is_an_error() {
        assert_eq!(
            decode_frame(Bytes::from_static(&[0, 0])),
            Err(DecodeError::Short(2))
        );
        assert_eq!(
            decode_frame(Bytes::from_static(&[0, 0, 0, 9, 1])),
            Err(DecodeError::BadHeadLength { head: 9, frame: 5 })
        );
    }
}
