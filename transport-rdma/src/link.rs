//! One RDMA link: verbs objects, credits and pieces driven by one tokio task.
//!
//! [`Link::establish`] is called with an authenticated [`Session`] (no verbs object
//! exists before the peer proved the cluster key). It opens the device, registers three
//! regions once for the link's life (the memory-registration cache: nothing is registered
//! per message) and connects an RC queue pair:
//! * receive buffers (`recv_depth` × `recv_size`), all posted, re-posted as consumed;
//! * the bulk ring (`slots` × `slot_size`), the only region the peer may RDMA-write;
//! * send staging (`send_depth` pieces), each busy until its send completes.
//!
//! [`Link::run`] moves frames: control-lane frames go first, as two-sided sends; bulk
//! frames as RDMA writes with immediate into the peer's ring, each only with credit (see
//! [`crate::credit`]). Any failed completion, a credit or piece protocol violation, or the
//! side channel closing ends the link with an [`Error`] the caller logs and redials.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use runtime::transport::{Frame, Lane};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tracing::debug;

use crate::credit::{Credits, Need};
use crate::error::Error;
use crate::exchange::{LinkInfo, Session};
use crate::piece::{Chunker, HEADER, Header, Reassembler};
use crate::verbs::{Completion, Context, Cq, Mr, Pd, Qp, QpCaps, Remote, WriteTo};

/// Sizes and device choice for a link.
#[derive(Clone, Debug)]
pub struct Config {
    /// Device name (`mlx5_0`, `rxe0`); the first one when `None`.
    pub device: Option<String>,
    pub port: u8,
    /// GID table index (RoCE v2 over IPv4: usually 1).
    pub gid_index: u8,
    pub recv_depth: u32,
    pub recv_size: u32,
    pub slots: u32,
    pub slot_size: u32,
    pub send_depth: u32,
    pub max_frame: usize,
    /// Bound on the set-up exchange.
    pub setup_timeout: Duration,
    /// A posted send or write that has not completed after this long ends the link: a
    /// broken route may stall a queue pair without any completion in error (seen with
    /// soft-RoCE and a blackholed route), and nothing may wait forever.
    pub stall_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            device: None,
            port: 1,
            gid_index: 1,
            recv_depth: 64,
            recv_size: 4096,
            slots: 16,
            slot_size: 1 << 20,
            send_depth: 32,
            max_frame: 64 << 20,
            setup_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(15),
        }
    }
}

const RECV: u64 = 1 << 32;
const SEND: u64 = 2 << 32;
/// The zero-byte RDMA write that proves the route before the link is declared up.
const ROUTE_CHECK: u64 = 3 << 32;

/// Counters a test or `status` can show.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub sends: u64,
    pub writes: u64,
    pub credit_msgs: u64,
    pub recvs: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// An established RDMA link (QP in RTS, buffers posted).
pub struct Link {
    // Field order is drop order: the QP before the regions and CQ it uses.
    qp: Qp,
    cq: Cq,
    recv: Mr,
    ring: Mr,
    staging: Mr,
    _pd: Arc<Pd>,
    ctx: Arc<Context>,
    ours: LinkInfo,
    peer: LinkInfo,
    cfg: Config,
    side: tokio::net::TcpStream,
    /// Completions taken while waiting for the route check (the peer may already send).
    early: Vec<Completion>,
    pub stats: Stats,
}

fn psn() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id().rotate_left(11)) & 0xff_ffff
}

/// A queue pair in RTS says nothing about the wire: set-up sends no packet. Write zero
/// bytes into the peer's ring and wait for the acknowledgement, so a link whose route is
/// broken (port down, no route to the GID, RoCE filtered) fails here, before it is
/// declared up, and the caller can fall back. Other completions seen meanwhile (the peer
/// may already send) are returned for [`Link::run`] to handle first.
async fn check_route(
    qp: &Qp,
    cq: &mut Cq,
    staging: &Mr,
    peer: &LinkInfo,
    limit: Duration,
) -> Result<Vec<Completion>, Error> {
    qp.post_write(ROUTE_CHECK, staging, 0, 0, peer.ring_addr, peer.ring_rkey)?;
    let mut early = Vec::new();
    let mut wcs = Vec::with_capacity(16);
    let wait = async {
        loop {
            cq.wait(&mut wcs, 16).await?;
            for wc in wcs.drain(..) {
                if wc.wr_id == ROUTE_CHECK {
                    if !wc.ok() {
                        return Err(Error::Route {
                            status: wc.status_str(),
                        });
                    }
                    return Ok(());
                }
                early.push(wc);
            }
        }
    };
    tokio::time::timeout(limit, wait).await.map_err(|_| {
        Error::Timeout("the route check (zero-byte RDMA write) was not acknowledged")
    })??;
    Ok(early)
}

impl Link {
    /// Open the device, register, create and connect the QP with the peer of `session`.
    pub async fn establish(mut session: Session, cfg: Config) -> Result<Link, Error> {
        let ctx = Context::open(cfg.device.as_deref(), cfg.port)?;
        let port = ctx.port()?;
        if !port.active {
            return Err(Error::PortDown {
                device: ctx.name().to_string(),
                port: cfg.port,
                state: port.state,
            });
        }
        let gid = ctx.gid(cfg.gid_index)?;
        let pd = Pd::new(&ctx)?;
        let cq = Cq::new(&ctx, cfg.recv_depth + cfg.send_depth + 8)?;
        let recv = Mr::new(&pd, (cfg.recv_depth * cfg.recv_size) as usize, false)?;
        let ring = Mr::new(&pd, (cfg.slots * cfg.slot_size) as usize, true)?;
        let qp = Qp::new(
            &pd,
            &cq,
            QpCaps {
                send_depth: cfg.send_depth,
                recv_depth: cfg.recv_depth,
            },
        )?;
        for i in 0..cfg.recv_depth {
            let off = (i * cfg.recv_size) as usize;
            qp.post_recv(RECV | i as u64, &recv, off, cfg.recv_size as usize)?;
        }
        let ours = LinkInfo {
            qpn: qp.qpn(),
            psn: psn(),
            gid,
            lid: port.lid,
            mtu: port.active_mtu as u8,
            recv_depth: cfg.recv_depth,
            recv_size: cfg.recv_size,
            ring_addr: ring.addr(),
            ring_rkey: ring.rkey(),
            slots: cfg.slots,
            slot_size: cfg.slot_size,
        };
        let peer = session.swap(&ours, cfg.setup_timeout).await?;
        let mtu = ours.mtu.min(peer.mtu) as u32;
        qp.connect(
            &Remote {
                qpn: peer.qpn,
                psn: peer.psn,
                gid: peer.gid,
                lid: peer.lid,
            },
            cfg.gid_index,
            mtu,
            ours.psn,
        )?;
        let piece = peer.recv_size.max(peer.slot_size) as usize;
        let staging = Mr::new(&pd, piece * cfg.send_depth as usize, false)?;
        let mut cq = cq;
        let early = check_route(&qp, &mut cq, &staging, &peer, cfg.setup_timeout).await?;
        debug!(
            device = ctx.name(),
            qpn = ours.qpn,
            peer_qpn = peer.qpn,
            "rdma link connected"
        );
        Ok(Link {
            qp,
            cq,
            recv,
            ring,
            staging,
            _pd: pd,
            ctx,
            ours,
            peer,
            cfg,
            side: session.into_stream(),
            early,
            stats: Stats::default(),
        })
    }

    /// Poll completions for up to `spin` before sleeping on the channel (see
    /// [`Cq::set_busy_poll`]); zero turns it off.
    pub fn set_busy_poll(&mut self, spin: Duration) {
        self.cq.set_busy_poll(spin);
    }

    pub fn device(&self) -> &str {
        self.ctx.name()
    }

    pub fn ours(&self) -> &LinkInfo {
        &self.ours
    }

    pub fn peer(&self) -> &LinkInfo {
        &self.peer
    }

    /// Move frames until `outgoing` is closed and drained and the peer closed the side
    /// channel (`Ok`), or the link fails (`Err`). Received frames go to `incoming`.
    pub async fn run(
        &mut self,
        mut outgoing: mpsc::Receiver<Frame>,
        incoming: mpsc::Sender<Frame>,
    ) -> Result<(), Error> {
        let piece_size = self.peer.recv_size.max(self.peer.slot_size) as usize;
        let mut credits = Credits::new(
            self.peer.recv_depth,
            self.peer.slots,
            self.cfg.recv_depth,
            self.cfg.slots,
        );
        let mut free: Vec<u32> = (0..self.cfg.send_depth).rev().collect();
        let mut lanes: [VecDeque<Chunker>; 2] = Default::default();
        let mut rx = [
            Reassembler::new(Lane::Control, self.cfg.max_frame),
            Reassembler::new(Lane::Bulk, self.cfg.max_frame),
        ];
        let mut out_open = true;
        let mut wcs = Vec::with_capacity(64);
        let mut side_buf = [0u8; 64];
        let mut delivered: VecDeque<Frame> = VecDeque::new();
        // When the oldest unfinished send was posted, or the last send completed since.
        let mut progress = tokio::time::Instant::now();
        let stall = self.cfg.stall_timeout;
        for wc in std::mem::take(&mut self.early) {
            self.completion(wc, &mut credits, &mut free, &mut rx, &mut delivered)?;
        }
        loop {
            // 1. Send what credits and staging allow, control first.
            self.pump(&mut credits, &mut free, &mut lanes, piece_size)?;
            let idle =
                lanes.iter().all(|l| l.is_empty()) && free.len() == self.cfg.send_depth as usize;
            if !out_open && idle && delivered.is_empty() {
                // Everything sent and completed; wait for the peer to finish (side EOF).
                // Completions keep being served below.
            }
            let want_more = out_open && lanes.iter().map(|l| l.len()).sum::<usize>() < 4;
            let outstanding = free.len() < self.cfg.send_depth as usize;
            if !outstanding {
                progress = tokio::time::Instant::now();
            }
            tokio::select! {
                biased;
                r = self.cq.wait(&mut wcs, 64), if delivered.len() < 16 => {
                    r?;
                    let before = free.len();
                    for wc in wcs.drain(..) {
                        self.completion(wc, &mut credits, &mut free, &mut rx, &mut delivered)?;
                    }
                    if free.len() > before {
                        progress = tokio::time::Instant::now();
                    }
                }
                _ = tokio::time::sleep_until(progress + stall), if outstanding && !stall.is_zero() => {
                    return Err(Error::Stalled(stall));
                }
                permit = incoming.reserve(), if !delivered.is_empty() => {
                    let permit = permit.map_err(|_| Error::Closed("the receiver of incoming frames is gone".into()))?;
                    permit.send(delivered.pop_front().expect("non-empty"));
                }
                f = outgoing.recv(), if want_more => match f {
                    Some(f) => {
                        let size = f.head.len() + f.payload.len();
                        if size > self.cfg.max_frame || size > u32::MAX as usize {
                            return Err(Error::Protocol(format!("frame of {size} bytes over the limit of {}", self.cfg.max_frame)));
                        }
                        let lane = f.lane.index();
                        let chunk = match f.lane {
                            Lane::Control => self.peer.recv_size as usize,
                            Lane::Bulk => self.peer.slot_size as usize,
                        };
                        lanes[lane].push_back(Chunker::new(f, chunk));
                    }
                    None => out_open = false,
                },
                r = self.side.read(&mut side_buf) => match r {
                    Ok(0) if !out_open && idle && delivered.is_empty() => return Ok(()),
                    Ok(0) => return Err(Error::Closed("the peer closed the side channel".into())),
                    Ok(_) => return Err(Error::Protocol("unexpected bytes on the side channel".into())),
                    Err(e) => return Err(Error::Io { peer: "side channel".into(), source: e }),
                },
            }
        }
    }

    fn pump(
        &mut self,
        credits: &mut Credits,
        free: &mut Vec<u32>,
        lanes: &mut [VecDeque<Chunker>; 2],
        piece_size: usize,
    ) -> Result<(), Error> {
        loop {
            let Some(&st) = free.last() else {
                return Ok(());
            };
            let lane = if !lanes[0].is_empty() && credits.can(Need::Recv) {
                0
            } else if !lanes[1].is_empty() && credits.can(Need::Slot) {
                1
            } else if credits.should_send_credit() {
                credits.take(Need::Credit);
                let (r, s) = credits.piggyback();
                let h = Header::credit_only(r as u16, s as u16);
                let off = st as usize * piece_size;
                self.staging.write(off, &h.encode())?;
                self.qp
                    .post_send(SEND | st as u64, &self.staging, off, HEADER)?;
                free.pop();
                self.stats.credit_msgs += 1;
                continue;
            } else {
                return Ok(());
            };
            let chunker = lanes[lane].front_mut().expect("non-empty");
            let Some(mut p) = chunker.next_piece() else {
                lanes[lane].pop_front();
                continue;
            };
            let need = if lane == 0 { Need::Recv } else { Need::Slot };
            let slot = credits.take(need).expect("checked with can");
            let (r, s) = credits.piggyback();
            p.header.recv_credits = r as u16;
            p.header.slot_credits = s as u16;
            let off = st as usize * piece_size;
            self.staging.write(off, &p.header.encode())?;
            self.staging.write(off + HEADER, &p.parts[0])?;
            self.staging
                .write(off + HEADER + p.parts[0].len(), &p.parts[1])?;
            let len = p.len();
            match slot {
                None => {
                    self.qp
                        .post_send(SEND | st as u64, &self.staging, off, len)?;
                    self.stats.sends += 1;
                }
                Some(slot) => {
                    let addr = self.peer.ring_addr + slot as u64 * self.peer.slot_size as u64;
                    let to = WriteTo {
                        remote_addr: addr,
                        rkey: self.peer.ring_rkey,
                        imm: slot,
                    };
                    self.qp
                        .post_write_imm(SEND | st as u64, &self.staging, off, len, to)?;
                    self.stats.writes += 1;
                }
            }
            self.stats.bytes_out += len as u64;
            free.pop();
            if p.header.last {
                lanes[lane].pop_front();
            }
        }
    }

    fn completion(
        &mut self,
        wc: Completion,
        credits: &mut Credits,
        free: &mut Vec<u32>,
        rx: &mut [Reassembler; 2],
        delivered: &mut VecDeque<Frame>,
    ) -> Result<(), Error> {
        if !wc.ok() {
            return Err(Error::Completion {
                wr_id: wc.wr_id,
                status: wc.status_str(),
            });
        }
        let idx = (wc.wr_id & 0xffff_ffff) as u32;
        if wc.wr_id & SEND != 0 {
            free.push(idx);
            return Ok(());
        }
        if wc.wr_id & RECV == 0 || idx >= self.cfg.recv_depth {
            return Err(Error::Protocol(format!(
                "completion with unknown id {:#x}",
                wc.wr_id
            )));
        }
        self.stats.recvs += 1;
        let len = wc.byte_len as usize;
        let mut data = vec![0u8; len];
        let slot = wc.imm;
        match slot {
            Some(s) if s < self.cfg.slots && len <= self.cfg.slot_size as usize => {
                self.ring
                    .read((s * self.cfg.slot_size) as usize, &mut data)?;
            }
            Some(s) => {
                return Err(Error::Protocol(format!(
                    "RDMA write named slot {s} with {len} bytes"
                )));
            }
            None => self
                .recv
                .read((idx * self.cfg.recv_size) as usize, &mut data)?,
        }
        // The buffer is copied out: post it again at once, and owe the peer its credit.
        let h = Header::decode(&data).map_err(Error::Protocol)?;
        self.qp.post_recv(
            RECV | idx as u64,
            &self.recv,
            (idx * self.cfg.recv_size) as usize,
            self.cfg.recv_size as usize,
        )?;
        credits.reposted(!h.credit);
        if slot.is_some() {
            credits.slot_freed();
        }
        self.stats.bytes_in += len as u64;
        credits
            .grant(h.recv_credits as u32, h.slot_credits as u32)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        if h.credit {
            return Ok(());
        }
        if (h.lane == Lane::Bulk) != slot.is_some() {
            return Err(Error::Protocol(
                "bulk pieces must come as RDMA writes, control as sends".into(),
            ));
        }
        if let Some(f) = rx[h.lane.index()]
            .push(&h, &data[HEADER..])
            .map_err(Error::Protocol)?
        {
            delivered.push_back(f);
        }
        Ok(())
    }
}
