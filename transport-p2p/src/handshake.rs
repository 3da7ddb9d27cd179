//! Setting up a link: accepting or opening its stream, the `Hello` exchange, claiming the node id.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use futures_util::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use libp2p::{PeerId, Stream};
use runtime::NodeId;
use runtime::transport::lanes::Outq;
use runtime::wire::{Hello, HelloReply, Refusal};
use tracing::debug;

use crate::error::HsError;
use crate::established::{Established, run_link};
use crate::state::{Inner, LinkCtl, LinkEntry, lock};
use crate::swarm::Cmd;
use runtime::transport::table::{Phase, Slot};

/// Largest handshake message.
const MAX_HELLO: usize = 16 * 1024;

pub(crate) async fn accept_loop(inner: Arc<Inner>, mut incoming: libp2p_stream::IncomingStreams) {
    loop {
        let next = tokio::select! {
            _ = inner.root.cancelled() => return,
            n = incoming.next() => n,
        };
        let Some((peer_id, stream)) = next else {
            return;
        };
        tokio::spawn(start_link(inner.clone(), peer_id, stream));
    }
}

pub(crate) async fn start_link(inner: Arc<Inner>, peer_id: PeerId, stream: Stream) {
    let limit = inner.config.handshake_timeout;
    let r = match tokio::time::timeout(limit, handshake(&inner, peer_id, stream)).await {
        Ok(r) => r,
        Err(_) => Err((None, HsError::Timeout)),
    };
    match r {
        Ok(link) => run_link(inner, link).await,
        Err((node, e)) => link_failed(&inner, peer_id, node, e),
    }
}

pub(crate) fn link_failed(inner: &Inner, peer_id: PeerId, node: Option<NodeId>, e: HsError) {
    match &e {
        // Logged where decided.
        HsError::Refused(_) | HsError::RefusedByPeer(_) => {}
        _ if inner.root.is_cancelled() => {}
        // The connection went away while the stream was being opened; it is re-dialled.
        HsError::Open(_) => debug!("link with peer {peer_id} failed: {e}"),
        _ => {
            let who = node.map_or_else(
                || format!("peer {peer_id}"),
                |n| format!("node {n} (peer {peer_id})"),
            );
            inner.warn_limited(
                format!("hs {peer_id}"),
                &format!("link with {who} failed: {e}"),
            );
        }
    }
    let refused = match &e {
        HsError::Refused(r) | HsError::RefusedByPeer(r) => Some(r.clone()),
        _ => None,
    };
    let ended = Cmd::LinkEnded {
        node,
        peer_id,
        link: None,
        refused,
    };
    if matches!(e, HsError::Refused(_)) {
        // Give the refused peer time to read why before its connection goes.
        let cmd = inner.cmd.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = cmd.send(ended);
        });
    } else {
        let _ = inner.cmd.send(ended);
    }
}

async fn send_msg(w: &mut WriteHalf<Stream>, msg: &[u8]) -> io::Result<()> {
    let mut b = BytesMut::with_capacity(4 + msg.len());
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    w.write_all(&b).await?;
    w.flush().await
}

async fn recv_msg(r: &mut BufReader<ReadHalf<Stream>>, max: usize) -> Result<Vec<u8>, HsError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HsError::Closed,
        _ => HsError::Io(e),
    })?;
    let n = u32::from_be_bytes(len) as usize;
    if n > max {
        return Err(HsError::Protocol(format!(
            "handshake message of {n} bytes (limit {max})"
        )));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => HsError::Closed,
        _ => HsError::Io(e),
    })?;
    Ok(b)
}

/// Listen addresses as sent on the link: `addr,addr,...` (UTF-8).
fn encode_addrs(addrs: &[SocketAddr]) -> Vec<u8> {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// Lenient: what does not parse is skipped.
fn decode_addrs(b: &[u8]) -> Vec<SocketAddr> {
    String::from_utf8_lossy(b)
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

async fn handshake(
    inner: &Arc<Inner>,
    peer_id: PeerId,
    stream: Stream,
) -> Result<Established, (Option<NodeId>, HsError)> {
    let cfg = &inner.config;
    let (r, mut w) = stream.split();
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let err = |e: HsError| (None, e);

    // 1. Hellos and listen addresses, both ways at once.
    let ours = Hello::new(cfg.local, lock(&inner.cluster).clone());
    let our_addrs = encode_addrs(&lock(&inner.state).listen_addrs);
    send_msg(&mut w, &ours.encode())
        .await
        .map_err(|e| err(e.into()))?;
    send_msg(&mut w, &our_addrs)
        .await
        .map_err(|e| err(e.into()))?;
    let theirs = recv_msg(&mut r, MAX_HELLO).await.map_err(err)?;
    let addrs = decode_addrs(&recv_msg(&mut r, MAX_HELLO).await.map_err(err)?);

    let refuse = async |w: &mut WriteHalf<Stream>, who: String, reason: Refusal| -> HsError {
        inner.warn_limited(
            format!("refuse {peer_id} {reason}"),
            &format!("refused {who}: {reason}"),
        );
        let reply = HelloReply::Refused {
            reason: reason.clone(),
        };
        let _ = send_msg(w, &reply.encode()).await;
        let _ = w.close().await;
        HsError::Refused(reason)
    };
    let hello = match Hello::decode(&theirs) {
        Ok(h) => h,
        Err(e) => {
            let who = format!("peer {peer_id}");
            return Err(err(
                refuse(&mut w, who, Refusal::Malformed(e.to_string())).await
            ));
        }
    };
    let node = hello.node;
    let who = format!("node {node} (peer {peer_id})");
    let fail = |e: HsError| (Some(node), e);
    if let Err(reason) = hello.check(&ours) {
        return Err(fail(refuse(&mut w, who, reason).await));
    }
    let dialled = lock(&inner.state).dialled_for.get(&peer_id).cloned();
    for (want, addr) in dialled.into_iter().flatten().filter(|(w, _)| *w != node) {
        inner.warn_limited(
            format!("wrong addr {addr} {node}"),
            &format!(
                "dialled node {want} at {addr}, but node {node} answered; check the addresses in the map"
            ),
        );
    }

    // 2. Claim the node id, then answer; the link is up once both accepted.
    let queue = Arc::new(Outq::new(cfg.control_window, cfg.bulk_window));
    let ctl = LinkCtl::new(&inner.root, &inner.config);
    let id = inner.next_link.fetch_add(1, Ordering::Relaxed);
    let entry = Slot {
        id,
        phase: Phase::Reserved,
        link: LinkEntry {
            peer_id,
            queue: queue.clone(),
            ctl: ctl.clone(),
        },
    };
    if let Err(reason) = inner.claim(node, peer_id, entry).await {
        return Err(fail(refuse(&mut w, who, reason).await));
    }
    let answer = async {
        send_msg(&mut w, &HelloReply::Accepted.encode()).await?;
        let m = recv_msg(&mut r, MAX_HELLO).await?;
        match HelloReply::decode(&m) {
            Ok(HelloReply::Accepted) => Ok(()),
            Ok(HelloReply::Refused { reason }) => {
                inner.warn_limited(
                    format!("refused-by {peer_id} {reason}"),
                    &format!("{who} refused the link: {reason}"),
                );
                Err(HsError::RefusedByPeer(reason))
            }
            Err(e) => Err(HsError::Protocol(format!(
                "malformed hello reply from {who}: {e}"
            ))),
        }
    };
    if let Err(e) = answer.await {
        inner.unclaim(node, id);
        return Err(fail(e));
    }
    Ok(Established {
        node,
        peer_id,
        addrs,
        id,
        read: r,
        write: w,
        queue,
        ctl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addrs_round_trip_and_garbage_is_skipped() {
        let a: Vec<SocketAddr> = vec!["10.0.0.1:4100".parse().unwrap(), "[::1]:7".parse().unwrap()];
        assert_eq!(decode_addrs(&encode_addrs(&a)), a);
        assert_eq!(decode_addrs(b""), vec![]);
        assert_eq!(
            decode_addrs(b"x,1.2.3.4:5,\xff"),
            vec!["1.2.3.4:5".parse().unwrap()]
        );
    }
}
