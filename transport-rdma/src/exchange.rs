//! Authenticating a peer and exchanging queue-pair details, over a TCP side channel.
//!
//! 1. TCP connect, then a Noise `NNpsk0` handshake with the cluster key as the PSK (the
//!    same construction transport-tcp uses, with its own prologue). A peer without the key
//!    fails here, before this side has created a queue pair or registered any memory it
//!    could write to: [`authenticate`] is called first, the verbs objects after.
//! 2. Each side sends its [`LinkInfo`] (QPN, PSN, GID, the address and rkey of its bulk
//!    ring) sealed with the session, so the rkey is never on the wire in clear and cannot
//!    be forged by a node without the key.
//! 3. The TCP connection stays open as the link's liveness signal: when it ends the link
//!    is down (the RC QP alone notices a dead peer only after its retry time-outs).
//!
//! What this does not protect: RoCE/InfiniBand packets themselves are neither encrypted
//! nor authenticated; someone who can sniff *and* inject on the RDMA fabric can read
//! bulk data and, having seen an rkey, write into that ring. README says so.

use std::time::Duration;

use snow::StatelessTransportState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;

const PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PROLOGUE: &[u8] = b"omnode transport-rdma 1";
const MAGIC: &[u8; 8] = b"OMRDMA1\0";
pub const INFO_LEN: usize = 72;

/// What one side tells the other about its end of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub qpn: u32,
    pub psn: u32,
    pub gid: [u8; 16],
    pub lid: u16,
    /// `ibv_mtu` enum value of the active MTU.
    pub mtu: u8,
    /// Receive buffers posted, and the size of each.
    pub recv_depth: u32,
    pub recv_size: u32,
    /// The bulk ring: address, key, number and size of slots.
    pub ring_addr: u64,
    pub ring_rkey: u32,
    pub slots: u32,
    pub slot_size: u32,
}

impl LinkInfo {
    pub fn encode(&self) -> [u8; INFO_LEN] {
        let mut b = [0u8; INFO_LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.qpn.to_le_bytes());
        b[12..16].copy_from_slice(&self.psn.to_le_bytes());
        b[16..32].copy_from_slice(&self.gid);
        b[32..34].copy_from_slice(&self.lid.to_le_bytes());
        b[34] = self.mtu;
        b[36..40].copy_from_slice(&self.recv_depth.to_le_bytes());
        b[40..44].copy_from_slice(&self.recv_size.to_le_bytes());
        b[44..52].copy_from_slice(&self.ring_addr.to_le_bytes());
        b[52..56].copy_from_slice(&self.ring_rkey.to_le_bytes());
        b[56..60].copy_from_slice(&self.slots.to_le_bytes());
        b[60..64].copy_from_slice(&self.slot_size.to_le_bytes());
        b
    }

    /// Decode and sanity-check (sizes a link can use; `max_slots`/`max_depth` bound what
    /// this side will track).
    pub fn decode(b: &[u8]) -> Result<LinkInfo, Error> {
        let bad = |m: String| Error::Protocol(format!("link info: {m}"));
        if b.len() != INFO_LEN || &b[..8] != MAGIC {
            return Err(bad(format!(
                "{} bytes, or not an omnode RDMA link info",
                b.len()
            )));
        }
        let u32at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let i = LinkInfo {
            qpn: u32at(8),
            psn: u32at(12) & 0xff_ffff,
            gid: b[16..32].try_into().expect("16 bytes"),
            lid: u16::from_le_bytes([b[32], b[33]]),
            mtu: b[34],
            recv_depth: u32at(36),
            recv_size: u32at(40),
            ring_addr: u64::from_le_bytes(b[44..52].try_into().expect("8 bytes")),
            ring_rkey: u32at(52),
            slots: u32at(56),
            slot_size: u32at(60),
        };
        if !(1..=5).contains(&i.mtu) {
            return Err(bad(format!("MTU code {}", i.mtu)));
        }
        if !(crate::credit::MIN_RECV_DEPTH..=4096).contains(&i.recv_depth)
            || !(64..=(1 << 20)).contains(&i.recv_size)
        {
            return Err(bad(format!(
                "{} receive buffers of {} bytes",
                i.recv_depth, i.recv_size
            )));
        }
        if !(1..=1024).contains(&i.slots) || !(64..=(64 << 20)).contains(&i.slot_size) {
            return Err(bad(format!(
                "{} ring slots of {} bytes",
                i.slots, i.slot_size
            )));
        }
        Ok(i)
    }
}

const OFFER_MAGIC: &[u8; 8] = b"OMRDOFR1";
/// Longest reason carried in an [`Offer`].
pub const MAX_REASON: usize = 512;

/// The first sealed message each side sends: which node it is, and whether it can set up
/// an RDMA link (or why not, for the other side's log line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub node: u32,
    /// `Ok` when this node has a usable RDMA device; the reason otherwise.
    pub rdma: Result<(), String>,
}

impl Offer {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + MAX_REASON);
        b.extend_from_slice(OFFER_MAGIC);
        b.extend_from_slice(&self.node.to_le_bytes());
        match &self.rdma {
            Ok(()) => b.push(1),
            Err(why) => {
                b.push(0);
                // Cut on a char boundary, so the peer gets valid UTF-8.
                let mut end = why.len().min(MAX_REASON);
                while !why.is_char_boundary(end) {
                    end -= 1;
                }
                b.extend_from_slice(&why.as_bytes()[..end]);
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<Offer, Error> {
        if b.len() < 13 || b.len() > 13 + MAX_REASON || &b[..8] != OFFER_MAGIC {
            return Err(Error::Protocol(format!(
                "RDMA offer: {} bytes, or not an omnode RDMA offer",
                b.len()
            )));
        }
        let node = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes"));
        let rdma = match b[12] {
            1 if b.len() == 13 => Ok(()),
            0 => Err(String::from_utf8_lossy(&b[13..]).into_owned()),
            f => {
                return Err(Error::Protocol(format!("RDMA offer: flag {f}")));
            }
        };
        Ok(Offer { node, rdma })
    }
}

/// An authenticated side channel to the peer.
pub struct Session {
    stream: TcpStream,
    noise: StatelessTransportState,
    peer: String,
}

async fn write_msg(s: &mut TcpStream, m: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(2 + m.len());
    b.extend_from_slice(&(m.len() as u16).to_be_bytes());
    b.extend_from_slice(m);
    s.write_all(&b).await
}

async fn read_msg(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await?;
    let mut m = vec![0u8; u16::from_be_bytes(l) as usize];
    s.read_exact(&mut m).await?;
    Ok(m)
}

/// Run the Noise handshake on `stream` (the dialler is the initiator), within `limit`.
pub async fn authenticate(
    mut stream: TcpStream,
    key: &[u8; 32],
    initiator: bool,
    limit: Duration,
) -> Result<Session, Error> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let io = |source| Error::Io {
        peer: peer.clone(),
        source,
    };
    let proto = |e: snow::Error| Error::Protocol(format!("noise: {e:?}"));
    let _ = stream.set_nodelay(true);
    let fut = async {
        let params = PARAMS.parse().map_err(proto)?;
        let b = snow::Builder::new(params).psk(0, key).prologue(PROLOGUE);
        let mut buf = vec![0u8; 256];
        let noise = if initiator {
            let mut hs = b.build_initiator().map_err(proto)?;
            let n = hs.write_message(&[], &mut buf).map_err(proto)?;
            write_msg(&mut stream, &buf[..n]).await.map_err(io)?;
            let m = read_msg(&mut stream).await.map_err(|_| Error::Auth)?;
            hs.read_message(&m, &mut buf).map_err(|_| Error::Auth)?;
            hs.into_stateless_transport_mode().map_err(proto)?
        } else {
            let mut hs = b.build_responder().map_err(proto)?;
            let m = read_msg(&mut stream).await.map_err(io)?;
            hs.read_message(&m, &mut buf).map_err(|_| Error::Auth)?;
            let n = hs.write_message(&[], &mut buf).map_err(proto)?;
            write_msg(&mut stream, &buf[..n]).await.map_err(io)?;
            hs.into_stateless_transport_mode().map_err(proto)?
        };
        // Key confirmation: NNpsk0's responder has not yet seen proof from the initiator
        // that it holds the key, so both seal a known message and check the other's.
        let mut out = vec![0u8; 64];
        let n = noise
            .write_message(0, b"omnode rdma key ok", &mut out)
            .map_err(proto)?;
        write_msg(&mut stream, &out[..n]).await.map_err(io)?;
        let m = read_msg(&mut stream).await.map_err(|_| Error::Auth)?;
        let mut plain = vec![0u8; m.len()];
        let n = noise
            .read_message(0, &m, &mut plain)
            .map_err(|_| Error::Auth)?;
        if &plain[..n] != b"omnode rdma key ok" {
            return Err(Error::Auth);
        }
        Ok::<_, Error>(noise)
    };
    let noise = tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::Timeout("authenticating the peer"))??;
    Ok(Session {
        stream,
        noise,
        peer,
    })
}

impl Session {
    /// Send ours and read the peer's [`LinkInfo`], sealed (nonce 1 each way), within `limit`.
    pub async fn swap(&mut self, ours: &LinkInfo, limit: Duration) -> Result<LinkInfo, Error> {
        let proto = |e: snow::Error| Error::Protocol(format!("noise: {e:?}"));
        let peer = self.peer.clone();
        let io = |source| Error::Io { peer, source };
        let fut = async {
            let mut out = vec![0u8; INFO_LEN + 16];
            let n = self
                .noise
                .write_message(1, &ours.encode(), &mut out)
                .map_err(proto)?;
            write_msg(&mut self.stream, &out[..n]).await.map_err(io)?;
            let m = read_msg(&mut self.stream).await.map_err(|_| Error::Auth)?;
            let mut plain = vec![0u8; m.len()];
            let n = self
                .noise
                .read_message(1, &m, &mut plain)
                .map_err(|_| Error::Auth)?;
            LinkInfo::decode(&plain[..n])
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| Error::Timeout("exchanging queue-pair details"))?
    }

    /// Tell the peer who we are and whether this node can do RDMA, and learn the same of
    /// it, sealed (nonce 2 each way), within `limit`. Sent before any verbs object exists,
    /// so both ends agree on RDMA or TCP before either creates a queue pair.
    pub async fn offer(&mut self, ours: &Offer, limit: Duration) -> Result<Offer, Error> {
        self.send_offer(ours, limit).await?;
        self.recv_offer(limit).await
    }

    /// The sending half of [`Session::offer`].
    pub async fn send_offer(&mut self, ours: &Offer, limit: Duration) -> Result<(), Error> {
        let proto = |e: snow::Error| Error::Protocol(format!("noise: {e:?}"));
        let peer = self.peer.clone();
        let io = |source| Error::Io { peer, source };
        let plain = ours.encode();
        let mut out = vec![0u8; plain.len() + 16];
        let n = self
            .noise
            .write_message(2, &plain, &mut out)
            .map_err(proto)?;
        tokio::time::timeout(limit, write_msg(&mut self.stream, &out[..n]))
            .await
            .map_err(|_| Error::Timeout("sending the RDMA offer"))?
            .map_err(io)
    }

    /// The receiving half of [`Session::offer`].
    pub async fn recv_offer(&mut self, limit: Duration) -> Result<Offer, Error> {
        let m = tokio::time::timeout(limit, read_msg(&mut self.stream))
            .await
            .map_err(|_| Error::Timeout("reading the peer's RDMA offer"))?
            .map_err(|source| Error::Io {
                peer: self.peer.clone(),
                source,
            })?;
        let mut plain = vec![0u8; m.len()];
        let n = self
            .noise
            .read_message(2, &m, &mut plain)
            .map_err(|_| Error::Auth)?;
        Offer::decode(&plain[..n])
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The side channel, kept open as the link's liveness signal.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn info(qpn: u32) -> LinkInfo {
        LinkInfo {
            qpn,
            psn: 0x123456,
            gid: [7; 16],
            lid: 0,
            mtu: 3,
            recv_depth: 16,
            recv_size: 4096,
            ring_addr: 0xdead_0000,
            ring_rkey: 0x4242,
            slots: 8,
            slot_size: 1 << 20,
        }
    }

    async fn pair(
        k1: [u8; 32],
        k2: [u8; 32],
    ) -> (Result<LinkInfo, Error>, Result<LinkInfo, Error>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t = Duration::from_secs(5);
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut sess = authenticate(s, &k1, false, t).await?;
            sess.swap(&info(1), t).await
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let client = async {
            let mut sess = authenticate(s, &k2, true, t).await?;
            sess.swap(&info(2), t).await
        }
        .await;
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn the_same_key_swaps_link_info() {
        let (s, c) = pair([3; 32], [3; 32]).await;
        assert_eq!(s.unwrap(), info(2));
        assert_eq!(c.unwrap(), info(1));
    }

    #[tokio::test]
    async fn a_wrong_key_learns_nothing_and_is_refused_on_both_sides() {
        let (s, c) = pair([3; 32], [4; 32]).await;
        assert!(matches!(s, Err(Error::Auth)), "{s:?}");
        assert!(c.is_err(), "{c:?}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let _held = l.accept().await.unwrap();
        let r = authenticate(s, &[1; 32], true, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(Error::Timeout(_))), "{:?}", r.err());
    }

    #[tokio::test]
    async fn offers_cross_sealed_and_bad_ones_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t = Duration::from_secs(5);
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut sess = authenticate(s, &[5; 32], false, t).await.unwrap();
            let theirs = sess.recv_offer(t).await.unwrap();
            sess.send_offer(
                &Offer {
                    node: 2,
                    rdma: Ok(()),
                },
                t,
            )
            .await
            .unwrap();
            theirs
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let mut sess = authenticate(s, &[5; 32], true, t).await.unwrap();
        let why = "no RDMA device; devices found: [] é".to_string();
        let got = sess
            .offer(
                &Offer {
                    node: 1,
                    rdma: Err(why.clone()),
                },
                t,
            )
            .await
            .unwrap();
        assert_eq!(
            got,
            Offer {
                node: 2,
                rdma: Ok(())
            }
        );
        assert_eq!(
            server.await.unwrap(),
            Offer {
                node: 1,
                rdma: Err(why)
            }
        );

        let long = Offer {
            node: 3,
            rdma: Err("é".repeat(MAX_REASON)),
        };
        let d = Offer::decode(&long.encode()).unwrap();
        assert!(d.rdma.unwrap_err().len() <= MAX_REASON);
        assert!(Offer::decode(b"OMRDOFR1\x01\0\0\0\x07").is_err());
        assert!(Offer::decode(b"short").is_err());
    }

    #[test]
    fn link_info_round_trips_and_bad_values_are_refused() {
        let i = info(9);
        assert_eq!(LinkInfo::decode(&i.encode()).unwrap(), i);
        let mut b = i.encode();
        b[0] = b'X';
        assert!(LinkInfo::decode(&b).is_err());
        let mut j = i;
        j.slots = 0;
        assert!(LinkInfo::decode(&j.encode()).is_err());
        j = i;
        j.recv_depth = 2;
        assert!(LinkInfo::decode(&j.encode()).is_err());
        assert!(LinkInfo::decode(&[0u8; 5]).is_err());
    }
}
