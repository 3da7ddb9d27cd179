//! The link handshake: Noise NNpsk0, the `Hello` exchange, and registering the link.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use runtime::NodeId;
use runtime::transport::lifecycle::Dir;
use runtime::transport::link::LinkCtl;
use runtime::wire::{Hello, HelloReply, Refusal};
use snow::StatelessTransportState;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::{debug, warn};

use crate::error::HsError;
use crate::established::Established;
use crate::outbox::Outbox;
use crate::state::{Inner, LinkEntry};
use runtime::transport::table::{Phase, Slot};

/// AES-GCM rather than ChaCha20-Poly1305: with ring's assembly it seals and opens twice as
/// fast on CPUs with AES instructions (BENCHMARKS.md, `noise_1MiB`).
pub(crate) const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PROLOGUE: &[u8] = b"omnode transport-tcp 1";
pub(crate) const TAG: usize = 16;

fn length_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(2)
        .max_frame_length(65535)
        .new_codec()
}

async fn send_raw(w: &mut OwnedWriteHalf, msg: &[u8]) -> io::Result<()> {
    let mut b = BytesMut::with_capacity(2 + msg.len());
    b.put_u16(msg.len() as u16);
    b.put_slice(msg);
    w.write_all(&b).await
}

pub(crate) async fn recv_raw(
    r: &mut FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
) -> Result<BytesMut, HsError> {
    match r.next().await {
        None => Err(HsError::Closed),
        Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => Err(HsError::Auth),
        Some(Err(e)) => Err(HsError::Io(e)),
        Some(Ok(m)) => Ok(m),
    }
}

/// Sealed-message helpers for the `Hello` phase (nonces 0 and 1 in each direction).
fn seal(noise: &StatelessTransportState, nonce: u64, msg: &[u8]) -> Result<Vec<u8>, HsError> {
    let mut out = vec![0u8; msg.len() + TAG];
    let n = noise
        .write_message(nonce, msg, &mut out)
        .map_err(|e| HsError::Protocol(format!("seal: {e:?}")))?;
    out.truncate(n);
    Ok(out)
}

pub(crate) fn open(
    noise: &StatelessTransportState,
    nonce: u64,
    msg: &[u8],
) -> Result<Vec<u8>, HsError> {
    let mut out = vec![0u8; msg.len()];
    let n = noise
        .read_message(nonce, msg, &mut out)
        .map_err(|_| HsError::Auth)?;
    out.truncate(n);
    Ok(out)
}

/// Set up a link: [`negotiate`] (bounded by the handshake time-out and abandoned at once
/// when the transport shuts down), then [`register`], the point of no return.
pub(crate) async fn handshake(
    inner: &Arc<Inner>,
    stream: TcpStream,
    remote: SocketAddr,
    initiator: bool,
    expect: Option<NodeId>,
) -> Result<Established, HsError> {
    let limit = inner.config.handshake_timeout;
    let neg = tokio::select! {
        biased;
        _ = inner.root.cancelled() => Err(HsError::Refused(Refusal::ShuttingDown)),
        r = tokio::time::timeout(limit, negotiate(inner, stream, remote, initiator, expect)) => {
            r.unwrap_or(Err(HsError::Timeout))
        }
    }?;
    register(inner, neg).await
}

/// Refuse a link with `reason`: log it, tell the peer (reply slot, nonce 1), close.
async fn refuse(
    inner: &Inner,
    w: &mut OwnedWriteHalf,
    noise: &StatelessTransportState,
    remote: SocketAddr,
    who: &str,
    reason: Refusal,
) -> HsError {
    inner.warn_repeated(
        format!("refused {who} {reason}"),
        &format!("refused {who} at {remote}: {reason}"),
    );
    let reply = HelloReply::Refused {
        reason: reason.clone(),
    };
    if let Ok(m) = seal(noise, 1, &reply.encode()) {
        let _ = send_raw(w, &m).await;
        let _ = w.shutdown().await;
    }
    HsError::Refused(reason)
}

/// A link whose peer is authenticated and agreed; only the arbiter's decision remains.
struct Negotiated {
    peer: NodeId,
    remote: SocketAddr,
    arbiter: bool,
    initiator: bool,
    read: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    write: OwnedWriteHalf,
    noise: StatelessTransportState,
}

async fn negotiate(
    inner: &Arc<Inner>,
    stream: TcpStream,
    remote: SocketAddr,
    initiator: bool,
    expect: Option<NodeId>,
) -> Result<Negotiated, HsError> {
    let cfg = &inner.config;
    stream.set_nodelay(true)?;
    set_unsent_limit(&stream, cfg.unsent_limit)?;
    let (r, mut w) = stream.into_split();
    let mut r = FramedRead::new(r, length_codec());
    let proto = |e: snow::Error| HsError::Protocol(format!("{e:?}"));

    // 1. Noise NNpsk0: -> psk, e   <- e, ee
    let builder = snow::Builder::new(inner.params.clone())
        .psk(0, &cfg.key)
        .prologue(PROLOGUE);
    let mut buf = vec![0u8; 1024];
    let noise = if initiator {
        let mut hs = builder.build_initiator().map_err(proto)?;
        let n = hs.write_message(&[], &mut buf).map_err(proto)?;
        send_raw(&mut w, &buf[..n]).await?;
        let m = recv_raw(&mut r).await?;
        hs.read_message(&m, &mut buf).map_err(|_| HsError::Auth)?;
        hs.into_stateless_transport_mode().map_err(proto)?
    } else {
        let mut hs = builder.build_responder().map_err(proto)?;
        let m = recv_raw(&mut r).await?;
        hs.read_message(&m, &mut buf).map_err(|_| HsError::Auth)?;
        let n = hs.write_message(&[], &mut buf).map_err(proto)?;
        send_raw(&mut w, &buf[..n]).await?;
        hs.into_stateless_transport_mode().map_err(proto)?
    };

    // 2. Hellos, both ways (nonce 0), checked on both sides.
    let ours = Hello::new(cfg.local, crate::state::lock(&inner.cluster).clone());
    send_raw(&mut w, &seal(&noise, 0, &ours.encode())?).await?;
    let theirs = open(&noise, 0, &recv_raw(&mut r).await?)?;
    let hello = match Hello::decode(&theirs) {
        Ok(h) => h,
        Err(e) => {
            let reason = Refusal::Malformed(e.to_string());
            return Err(refuse(inner, &mut w, &noise, remote, "link", reason).await);
        }
    };
    let peer = hello.node;
    let who = format!("node {peer}");
    let mut problem = hello.check(&ours).err();
    if problem.is_none() {
        if let Some(want) = expect.filter(|&want| want != peer) {
            problem = Some(Refusal::WrongNode {
                dialled: want,
                answered: peer,
            });
        } else if !inner.is_listed(peer) {
            problem = Some(Refusal::NotListed {
                peer,
                local: cfg.local,
            });
        }
    }
    if let Some(reason) = problem {
        return Err(refuse(inner, &mut w, &noise, remote, &who, reason).await);
    }

    // 3. Replies (nonce 1): the higher id answers first; the lower id (the arbiter)
    //    answers last, in `register`, once it knows whether it keeps this link.
    let arbiter = cfg.local < peer;
    if !arbiter {
        send_raw(&mut w, &seal(&noise, 1, &HelloReply::Accepted.encode())?).await?;
    }
    let m = open(&noise, 1, &recv_raw(&mut r).await?)?;
    match HelloReply::decode(&m) {
        Ok(HelloReply::Accepted) => {}
        Ok(HelloReply::Refused {
            reason: reason @ Refusal::Duplicate { .. },
        }) => {
            debug!("node {peer} at {remote} kept another link: {reason}");
            return Err(HsError::Duplicate);
        }
        Ok(HelloReply::Refused { reason }) => {
            inner.warn_repeated(
                format!("refused by {peer} {reason}"),
                &format!("node {peer} at {remote} refused the link: {reason}"),
            );
            return Err(HsError::RefusedByPeer(reason));
        }
        Err(e) => {
            return Err(HsError::Protocol(format!(
                "malformed hello reply from node {peer}: {e}"
            )));
        }
    }
    Ok(Negotiated {
        peer,
        remote,
        arbiter,
        initiator,
        read: r,
        write: w,
        noise,
    })
}

/// Install a negotiated link. Not cancelled from outside: once `claim` succeeds the link
/// must reach `run_link`, which reports it down.
async fn register(inner: &Arc<Inner>, neg: Negotiated) -> Result<Established, HsError> {
    let Negotiated {
        peer,
        remote,
        arbiter,
        initiator,
        read,
        write,
        noise,
    } = neg;
    let noise = Arc::new(noise);
    // The arbiter's `Accepted` goes out first on the link, once it is registered.
    let mut preamble = BytesMut::new();
    if arbiter {
        let m = seal(&noise, 1, &HelloReply::Accepted.encode())?;
        preamble.put_u16(m.len() as u16);
        preamble.put_slice(&m);
    }
    let outbox = Outbox::new(
        write,
        noise.clone(),
        (inner.config.control_window, inner.config.bulk_window),
        &preamble,
        !arbiter,
    )
    .map_err(HsError::Protocol)?;
    let ctl = Arc::new(LinkCtl::new(&inner.root));
    let id = inner.next_link.fetch_add(1, Ordering::Relaxed);
    let entry = Slot {
        id,
        phase: if arbiter { Phase::Reserved } else { Phase::Up },
        link: LinkEntry {
            outbox: outbox.clone(),
            ctl: ctl.clone(),
        },
    };
    let refusal = |reason: Refusal| -> Vec<u8> {
        let m = seal(&noise, 1, &HelloReply::Refused { reason }.encode()).unwrap_or_default();
        let mut b = Vec::with_capacity(2 + m.len());
        b.extend_from_slice(&(m.len() as u16).to_be_bytes());
        b.extend_from_slice(&m);
        b
    };
    let dir = if initiator {
        Dir::Outbound
    } else {
        Dir::Inbound
    };
    match inner.claim(peer, arbiter, dir, entry).await {
        Ok(()) => {}
        Err(reason @ Refusal::Duplicate { .. }) if arbiter => {
            debug!("node {peer} at {remote}: {reason}");
            outbox.write_now(&refusal(reason));
            return Err(HsError::Duplicate);
        }
        Err(reason) if arbiter => {
            inner.warn_repeated(
                format!("refused node {peer} {reason}"),
                &format!("refused node {peer} at {remote}: {reason}"),
            );
            outbox.write_now(&refusal(reason.clone()));
            return Err(HsError::Refused(reason));
        }
        Err(reason) => {
            // The arbiter accepted already; it will see this link close at once.
            warn!("dropped the link node {peer} at {remote} accepted: {reason}");
            return Err(HsError::Refused(reason));
        }
    }
    Ok(Established {
        peer,
        remote,
        id,
        arbiter,
        read,
        noise,
        outbox,
        ctl,
    })
}

/// Cap the bytes the kernel holds unsent on `stream` (`TCP_NOTSENT_LOWAT`; 0: leave it).
fn set_unsent_limit(stream: &TcpStream, limit: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if limit == 0 {
        return Ok(());
    }
    let value = libc::c_int::try_from(limit).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is the stream's open socket for the whole call; the option value is
    // a c_int on our stack whose size is passed with it.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
