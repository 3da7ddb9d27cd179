//! The crate's only unsafe code: thin owners of libibverbs objects (rdma-sys 0.3).
//!
//! Each type owns one verbs object and keeps its parents alive with an `Arc`, so they are
//! destroyed child first: [`Qp`] → [`Cq`] / [`Mr`] → [`Pd`] → [`Context`]. Safe wrappers
//! check every offset and length against the registered region before a work request
//! names it. Completions are read through the completion channel's fd (see
//! [`Cq::wait`]): tokio's `AsyncFd` wakes the task, nothing spins.

use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::Arc;

use rdma_sys as sys;
use tokio::io::unix::AsyncFd;

use crate::error::Error;

fn last_os(call: &'static str) -> Error {
    Error::Verbs {
        call,
        source: io::Error::last_os_error(),
    }
}

fn rc(call: &'static str, r: i32) -> Result<(), Error> {
    if r == 0 {
        Ok(())
    } else {
        // Verbs calls return the errno value (positive) or -1 with errno set.
        let source = if r > 0 {
            io::Error::from_raw_os_error(r)
        } else {
            io::Error::last_os_error()
        };
        Err(Error::Verbs { call, source })
    }
}

/// An open RDMA device and the port used on it.
pub struct Context {
    ctx: *mut sys::ibv_context,
    name: String,
    port: u8,
}

// SAFETY: an ibv_context is thread safe (libibverbs locks internally); we only pass the
// pointer to verbs calls and never touch the memory it points to ourselves.
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

/// What [`Context::port`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub active: bool,
    /// The `ibv_port_state` value (4 = ACTIVE).
    pub state: u32,
    /// The `ibv_mtu` enum value (1 = 256 … 5 = 4096).
    pub active_mtu: u32,
    pub lid: u16,
}

impl Context {
    /// Open `name` (the first device when `None`), using `port` (1-based).
    pub fn open(name: Option<&str>, port: u8) -> Result<Arc<Context>, Error> {
        let mut n = 0i32;
        // SAFETY: ibv_get_device_list writes the count into `n` and returns a
        // NULL-terminated array (or NULL), freed below with ibv_free_device_list.
        let list = unsafe { sys::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(Error::NoDevice {
                wanted: name.map(str::to_string),
                found: vec![],
            });
        }
        let mut found = Vec::new();
        let mut chosen: *mut sys::ibv_device = ptr::null_mut();
        for i in 0..n.max(0) as usize {
            // SAFETY: i < n, the array holds n device pointers.
            let dev = unsafe { *list.add(i) };
            // SAFETY: dev is a valid device; the name is a NUL-terminated string owned by it.
            let dn = unsafe { CStr::from_ptr(sys::ibv_get_device_name(dev)) }
                .to_string_lossy()
                .into_owned();
            if chosen.is_null() && name.is_none_or(|w| w == dn) {
                chosen = dev;
            }
            found.push(dn);
        }
        let ctx = if chosen.is_null() {
            ptr::null_mut()
        } else {
            // SAFETY: chosen comes from the list, which is still alive here.
            unsafe { sys::ibv_open_device(chosen) }
        };
        // SAFETY: list came from ibv_get_device_list; opened contexts stay valid after it.
        unsafe { sys::ibv_free_device_list(list) };
        if chosen.is_null() {
            return Err(Error::NoDevice {
                wanted: name.map(str::to_string),
                found,
            });
        }
        if ctx.is_null() {
            return Err(last_os("ibv_open_device"));
        }
        let dn = found
            .into_iter()
            .find(|d| name.is_none_or(|w| w == d))
            .unwrap_or_default();
        Ok(Arc::new(Context {
            ctx,
            name: dn,
            port,
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port_num(&self) -> u8 {
        self.port
    }

    /// The port's state, MTU and LID.
    pub fn port(&self) -> Result<PortInfo, Error> {
        // SAFETY: ibv_port_attr is plain data; all-zero is a valid value.
        let mut attr: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is open; attr is a valid, writable ibv_port_attr.
        rc("ibv_query_port", unsafe {
            sys::___ibv_query_port(self.ctx, self.port, &mut attr)
        })?;
        Ok(PortInfo {
            active: attr.state == sys::ibv_port_state::IBV_PORT_ACTIVE,
            state: attr.state,
            active_mtu: attr.active_mtu,
            lid: attr.lid,
        })
    }

    /// The port's GID at `index` (RoCE v2 with an IPv4 address: usually index 1).
    pub fn gid(&self, index: u8) -> Result<[u8; 16], Error> {
        // SAFETY: ibv_gid is 16 plain bytes.
        let mut gid: sys::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is open; gid is writable.
        let r = unsafe { sys::ibv_query_gid(self.ctx, self.port, index as i32, &mut gid) };
        if r != 0 {
            return Err(Error::Gid {
                device: self.name.clone(),
                index,
                reason: io::Error::last_os_error().to_string(),
            });
        }
        // SAFETY: every bit pattern is a valid [u8; 16].
        let raw = unsafe { gid.raw };
        if raw == [0u8; 16] {
            return Err(Error::Gid {
                device: self.name.clone(),
                index,
                reason: "the GID table entry is empty (no IP address on the netdev?)".into(),
            });
        }
        Ok(raw)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: every child object holds an Arc<Context>, so none is left.
        unsafe { sys::ibv_close_device(self.ctx) };
    }
}

/// A protection domain.
pub struct Pd {
    pd: *mut sys::ibv_pd,
    ctx: Arc<Context>,
}

// SAFETY: a PD is only passed to thread-safe verbs calls.
unsafe impl Send for Pd {}
// SAFETY: as above.
unsafe impl Sync for Pd {}

impl Pd {
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Pd>, Error> {
        // SAFETY: ctx is open.
        let pd = unsafe { sys::ibv_alloc_pd(ctx.ctx) };
        if pd.is_null() {
            return Err(last_os("ibv_alloc_pd"));
        }
        Ok(Arc::new(Pd {
            pd,
            ctx: ctx.clone(),
        }))
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

impl Drop for Pd {
    fn drop(&mut self) {
        // SAFETY: MRs and QPs hold an Arc<Pd>; none is left.
        unsafe { sys::ibv_dealloc_pd(self.pd) };
    }
}

/// A memory region this process owns and registered once (not per message). Its bytes
/// may be written by the device (receives, the peer's RDMA writes), so they are only
/// reached through bounds-checked copies, never through references.
pub struct Mr {
    mr: *mut sys::ibv_mr,
    buf: *mut u8,
    len: usize,
    _pd: Arc<Pd>,
}

// SAFETY: the region is owned here and reached only by copies; the MR handle is only
// passed to thread-safe verbs calls.
unsafe impl Send for Mr {}
// SAFETY: as above; concurrent copies touch the region only through raw pointers.
unsafe impl Sync for Mr {}

impl Mr {
    /// Allocate `len` zeroed bytes and register them; `remote_write` lets the peer
    /// RDMA-write into them (only the bulk receive ring).
    pub fn new(pd: &Arc<Pd>, len: usize, remote_write: bool) -> Result<Mr, Error> {
        let len = len.max(1);
        let buf = Box::into_raw(vec![0u8; len].into_boxed_slice()) as *mut u8;
        let mut access = sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0;
        if remote_write {
            access |= sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        }
        // SAFETY: buf points to len owned bytes that stay allocated until Drop, after
        // ibv_dereg_mr.
        let mr = unsafe { sys::ibv_reg_mr(pd.pd, buf.cast(), len, access as i32) };
        if mr.is_null() {
            let source = io::Error::last_os_error();
            // SAFETY: buf came from Box::into_raw of a len-byte boxed slice.
            drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(buf, len)) });
            return Err(memlock_or(len, "ibv_reg_mr", source));
        }
        Ok(Mr {
            mr,
            buf,
            len,
            _pd: pd.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn addr(&self) -> u64 {
        self.buf as u64
    }

    pub fn lkey(&self) -> u32 {
        // SAFETY: mr is a registered region until Drop.
        unsafe { (*self.mr).lkey }
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.mr).rkey }
    }

    fn check(&self, off: usize, len: usize) -> Result<(), Error> {
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::OutOfBounds {
                off,
                len,
                region: self.len,
            }),
        }
    }

    /// Copy `src` into the region at `off`.
    pub fn write(&self, off: usize, src: &[u8]) -> Result<(), Error> {
        self.check(off, src.len())?;
        // SAFETY: bounds checked above; src is a separate Rust slice, so no overlap.
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), self.buf.add(off), src.len()) };
        Ok(())
    }

    /// Copy `dst.len()` bytes from the region at `off` into `dst`.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> Result<(), Error> {
        self.check(off, dst.len())?;
        // SAFETY: bounds checked above; dst is a separate Rust slice.
        unsafe { ptr::copy_nonoverlapping(self.buf.add(off), dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: deregister first (the device stops using the memory), then free it.
        unsafe {
            sys::ibv_dereg_mr(self.mr);
            drop(Box::from_raw(ptr::slice_from_raw_parts_mut(
                self.buf, self.len,
            )));
        }
    }
}

/// One work completion, copied out of the CQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    /// `IBV_WC_SUCCESS` (0) or the failure status.
    pub status: u32,
    pub opcode: u32,
    pub byte_len: u32,
    /// Immediate data (host order) of an RDMA write with immediate.
    pub imm: Option<u32>,
}

impl Completion {
    pub fn ok(&self) -> bool {
        self.status == sys::ibv_wc_status::IBV_WC_SUCCESS
    }

    pub fn is_recv(&self) -> bool {
        self.opcode & sys::ibv_wc_opcode::IBV_WC_RECV != 0
    }

    /// The status as libibverbs names it ("transport retry counter exceeded", ...).
    pub fn status_str(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static NUL-terminated string for any value.
        unsafe { CStr::from_ptr(sys::ibv_wc_status_str(self.status)) }
            .to_string_lossy()
            .into_owned()
    }
}

struct ChannelFd(RawFd);
impl std::os::fd::AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The CQ and its channel; shared with the QPs that complete into it, so it outlives them.
pub struct CqRaw {
    cq: *mut sys::ibv_cq,
    channel: *mut sys::ibv_comp_channel,
    _ctx: Arc<Context>,
}

// SAFETY: CQ and channel are only passed to verbs calls; polling happens from one task
// at a time (`&mut self` on [`Cq`]'s poll paths).
unsafe impl Send for CqRaw {}
// SAFETY: as above.
unsafe impl Sync for CqRaw {}

impl Drop for CqRaw {
    fn drop(&mut self) {
        // SAFETY: QPs hold an Arc<CqRaw>; none is left. Events were acked as they came.
        unsafe {
            sys::ibv_destroy_cq(self.cq);
            sys::ibv_destroy_comp_channel(self.channel);
        }
    }
}

/// A completion queue with its own completion channel, read from tokio.
pub struct Cq {
    // Declared first so it is dropped (deregistered) before the channel and its fd go.
    fd: AsyncFd<ChannelFd>,
    raw: Arc<CqRaw>,
    spin: std::time::Duration,
}

impl Cq {
    /// A CQ of `depth` entries; must be called inside a tokio runtime.
    pub fn new(ctx: &Arc<Context>, depth: u32) -> Result<Cq, Error> {
        // SAFETY: ctx is open.
        let channel = unsafe { sys::ibv_create_comp_channel(ctx.ctx) };
        if channel.is_null() {
            return Err(last_os("ibv_create_comp_channel"));
        }
        // SAFETY: channel is valid; the CQ reports on it.
        let cq = unsafe { sys::ibv_create_cq(ctx.ctx, depth as i32, ptr::null_mut(), channel, 0) };
        if cq.is_null() {
            let e = last_os("ibv_create_cq");
            // SAFETY: the channel has no CQ attached.
            unsafe { sys::ibv_destroy_comp_channel(channel) };
            return Err(e);
        }
        // SAFETY: channel is valid; its fd is owned by it and lives as long as it does.
        let rawfd = unsafe { (*channel).fd };
        let raw = rawfd;
        let fd = (|| {
            // SAFETY: fcntl on an fd we own; only adds O_NONBLOCK.
            let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
            // SAFETY: as above.
            if fl < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
                return Err(last_os("fcntl(O_NONBLOCK) on the completion channel"));
            }
            // SAFETY: the fd belongs to the completion channel, which stays open until
            // CqRaw drops; Cq drops its AsyncFd before its Arc<CqRaw> (field order).
            unsafe { AsyncFd::register(ChannelFd(raw)) }.map_err(|e| Error::Verbs {
                call: "AsyncFd on the completion channel",
                source: io::Error::from(e),
            })
        })();
        let raw = Arc::new(CqRaw {
            cq,
            channel,
            _ctx: ctx.clone(),
        });
        Ok(Cq {
            raw,
            fd: fd?,
            spin: std::time::Duration::ZERO,
        })
    }

    /// Take up to `max` completions now (no waiting).
    pub fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, Error> {
        const BATCH: usize = 32;
        let mut total = 0;
        while total < max {
            // SAFETY: ibv_wc is plain data; zero is valid.
            let mut wc: [sys::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
            let want = BATCH.min(max - total) as i32;
            // SAFETY: cq is valid; wc has room for `want` entries.
            let n = unsafe { sys::ibv_poll_cq(self.raw.cq, want, wc.as_mut_ptr()) };
            if n < 0 {
                return Err(Error::Verbs {
                    call: "ibv_poll_cq",
                    source: io::Error::other(format!("returned {n}")),
                });
            }
            for w in &wc[..n as usize] {
                let imm = (w.wc_flags & sys::ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0)
                    // SAFETY: with IBV_WC_WITH_IMM the union holds imm_data (big endian).
                    .then(|| u32::from_be(unsafe { w.imm_data_invalidated_rkey_union.imm_data }));
                out.push(Completion {
                    wr_id: w.wr_id,
                    status: w.status,
                    opcode: w.opcode,
                    byte_len: w.byte_len,
                    imm,
                });
            }
            total += n as usize;
            if (n as usize) < want as usize {
                break;
            }
        }
        Ok(total)
    }

    /// Busy-poll mode: [`Cq::wait`] polls for up to `spin` (yielding to other tasks between
    /// polls) before it arms the channel and sleeps. Zero (the default) never spins: it
    /// costs a core while it polls, and buys latency where wake-ups are slow.
    pub fn set_busy_poll(&mut self, spin: std::time::Duration) {
        self.spin = spin;
    }

    /// Wait until at least one completion is there, then take them. Sleeps on the
    /// completion channel's fd (after the busy-poll period, if one is set).
    pub async fn wait(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, Error> {
        if !self.spin.is_zero() {
            let until = std::time::Instant::now() + self.spin;
            loop {
                let n = self.poll(out, max)?;
                if n > 0 {
                    return Ok(n);
                }
                if std::time::Instant::now() >= until {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        loop {
            let n = self.poll(out, max)?;
            if n > 0 {
                return Ok(n);
            }
            // Arm, then look again: a completion that came before arming raises no event.
            // SAFETY: cq is valid.
            rc("ibv_req_notify_cq", unsafe {
                sys::ibv_req_notify_cq(self.raw.cq, 0)
            })?;
            let n = self.poll(out, max)?;
            if n > 0 {
                return Ok(n);
            }
            let mut guard = self.fd.readable().await.map_err(|source| Error::Verbs {
                call: "completion channel readiness",
                source,
            })?;
            let mut ev_cq = ptr::null_mut();
            let mut ev_ctx = ptr::null_mut();
            // SAFETY: channel is valid and non-blocking; the out pointers are writable.
            let r = unsafe { sys::ibv_get_cq_event(self.raw.channel, &mut ev_cq, &mut ev_ctx) };
            if r == 0 {
                // SAFETY: one event taken from our own CQ must be acknowledged.
                unsafe { sys::ibv_ack_cq_events(ev_cq, 1) };
            } else {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                } else {
                    return Err(Error::Verbs {
                        call: "ibv_get_cq_event",
                        source: e,
                    });
                }
            }
        }
    }
}

/// The other end of a reliable-connected queue pair, as learnt over the authenticated
/// exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    pub qpn: u32,
    pub psn: u32,
    pub gid: [u8; 16],
    pub lid: u16,
}

/// Where an RDMA write with immediate lands: the peer's address and rkey, and the
/// immediate value its receive completion carries.
#[derive(Clone, Copy, Debug)]
pub struct WriteTo {
    pub remote_addr: u64,
    pub rkey: u32,
    pub imm: u32,
}

/// A reliable-connected queue pair; both directions' completions go to one CQ.
pub struct Qp {
    qp: *mut sys::ibv_qp,
    pd: Arc<Pd>,
    _cq: Arc<CqRaw>,
}

// SAFETY: posting to a QP is thread safe in libibverbs; we post from one task anyway.
unsafe impl Send for Qp {}
// SAFETY: as above.
unsafe impl Sync for Qp {}

/// Sizes of a QP's queues.
#[derive(Clone, Copy, Debug)]
pub struct QpCaps {
    pub send_depth: u32,
    pub recv_depth: u32,
}

impl Qp {
    /// An RC QP in INIT state, on `pd`, completing into `cq`.
    pub fn new(pd: &Arc<Pd>, cq: &Cq, caps: QpCaps) -> Result<Qp, Error> {
        let raw_cq = cq.raw.cq;
        // SAFETY: plain data; zero is valid for the fields not set.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = raw_cq;
        init.recv_cq = raw_cq;
        init.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = caps.send_depth;
        init.cap.max_recv_wr = caps.recv_depth;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.sq_sig_all = 1;
        // SAFETY: pd and cq are valid and outlive the QP (we hold Arcs).
        let qp = unsafe { sys::ibv_create_qp(pd.pd, &mut init) };
        if qp.is_null() {
            return Err(last_os("ibv_create_qp"));
        }
        let q = Qp {
            qp,
            pd: pd.clone(),
            _cq: cq.raw.clone(),
        };
        // SAFETY: plain data.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = pd.ctx.port;
        a.qp_access_flags = sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0
            | sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0;
        use sys::ibv_qp_attr_mask as M;
        q.modify(
            &mut a,
            M::IBV_QP_STATE.0
                | M::IBV_QP_PKEY_INDEX.0
                | M::IBV_QP_PORT.0
                | M::IBV_QP_ACCESS_FLAGS.0,
            "INIT",
        )?;
        Ok(q)
    }

    pub fn qpn(&self) -> u32 {
        // SAFETY: qp is valid until Drop.
        unsafe { (*self.qp).qp_num }
    }

    fn modify(&self, a: &mut sys::ibv_qp_attr, mask: u32, to: &'static str) -> Result<(), Error> {
        // SAFETY: qp is valid; a is a filled ibv_qp_attr matching mask.
        let r = unsafe { sys::ibv_modify_qp(self.qp, a, mask as i32) };
        if r != 0 {
            let source = if r > 0 {
                io::Error::from_raw_os_error(r)
            } else {
                io::Error::last_os_error()
            };
            return Err(Error::QpTransition { to, source });
        }
        Ok(())
    }

    /// INIT → RTR (ready to receive from `remote`) → RTS (ready to send, our `psn`).
    pub fn connect(
        &self,
        remote: &Remote,
        sgid_index: u8,
        mtu: u32,
        psn: u32,
    ) -> Result<(), Error> {
        use sys::ibv_qp_attr_mask as M;
        // SAFETY: plain data.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = mtu;
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn;
        a.max_dest_rd_atomic = 1;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.port_num = self.pd.ctx.port;
        a.ah_attr.is_global = 1;
        a.ah_attr.grh.dgid = sys::ibv_gid { raw: remote.gid };
        a.ah_attr.grh.sgid_index = sgid_index;
        a.ah_attr.grh.hop_limit = 1;
        self.modify(
            &mut a,
            M::IBV_QP_STATE.0
                | M::IBV_QP_AV.0
                | M::IBV_QP_PATH_MTU.0
                | M::IBV_QP_DEST_QPN.0
                | M::IBV_QP_RQ_PSN.0
                | M::IBV_QP_MAX_DEST_RD_ATOMIC.0
                | M::IBV_QP_MIN_RNR_TIMER.0,
            "RTR",
        )?;
        // SAFETY: plain data.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = 7;
        a.sq_psn = psn;
        a.max_rd_atomic = 1;
        self.modify(
            &mut a,
            M::IBV_QP_STATE.0
                | M::IBV_QP_TIMEOUT.0
                | M::IBV_QP_RETRY_CNT.0
                | M::IBV_QP_RNR_RETRY.0
                | M::IBV_QP_SQ_PSN.0
                | M::IBV_QP_MAX_QP_RD_ATOMIC.0,
            "RTS",
        )
    }

    /// Post a receive of up to `len` bytes into `mr` at `off`.
    pub fn post_recv(&self, wr_id: u64, mr: &Mr, off: usize, len: usize) -> Result<(), Error> {
        mr.check(off, len)?;
        let mut sge = sys::ibv_sge {
            addr: mr.addr() + off as u64,
            length: len as u32,
            lkey: mr.lkey(),
        };
        let mut wr = sys::ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad = ptr::null_mut();
        // SAFETY: the sge names a checked range of a registered region that stays
        // registered while the QP exists (the caller owns both; see link.rs).
        rc("ibv_post_recv", unsafe {
            sys::ibv_post_recv(self.qp, &mut wr, &mut bad)
        })
    }

    /// Post a two-sided send of `len` bytes from `mr` at `off`.
    pub fn post_send(&self, wr_id: u64, mr: &Mr, off: usize, len: usize) -> Result<(), Error> {
        self.post(wr_id, mr, off, len, None)
    }

    /// Post an RDMA write with immediate of `len` bytes from `mr` at `off` into the peer's
    /// registered memory (`to`: its address, rkey and the immediate value).
    pub fn post_write_imm(
        &self,
        wr_id: u64,
        mr: &Mr,
        off: usize,
        len: usize,
        to: WriteTo,
    ) -> Result<(), Error> {
        self.post(
            wr_id,
            mr,
            off,
            len,
            Some((to.remote_addr, to.rkey, Some(to.imm))),
        )
    }

    /// Post a plain RDMA write (no immediate: no receive is consumed on the peer) of `len`
    /// bytes from `mr` at `off` to `remote_addr`/`rkey`. Zero bytes is allowed: it needs
    /// the responder's acknowledgement all the same, so its completion proves the route.
    pub fn post_write(
        &self,
        wr_id: u64,
        mr: &Mr,
        off: usize,
        len: usize,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), Error> {
        self.post(wr_id, mr, off, len, Some((remote_addr, rkey, None)))
    }

    fn post(
        &self,
        wr_id: u64,
        mr: &Mr,
        off: usize,
        len: usize,
        write: Option<(u64, u32, Option<u32>)>,
    ) -> Result<(), Error> {
        mr.check(off, len)?;
        let mut sge = sys::ibv_sge {
            addr: mr.addr() + off as u64,
            length: len as u32,
            lkey: mr.lkey(),
        };
        // SAFETY: plain data; the unions are set below for the opcode used.
        let mut wr: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = &mut sge;
        // A zero-byte write carries no scatter/gather entry at all.
        wr.num_sge = (len > 0) as i32;
        wr.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        match write {
            None => wr.opcode = sys::ibv_wr_opcode::IBV_WR_SEND,
            Some((remote_addr, rkey, imm)) => {
                match imm {
                    Some(imm) => {
                        wr.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                        wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
                    }
                    None => wr.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                }
                wr.wr.rdma = sys::rdma_t { remote_addr, rkey };
            }
        }
        let mut bad = ptr::null_mut();
        // SAFETY: the sge names a checked range of a registered region that the caller
        // keeps untouched until this wr_id completes (link.rs owns the staging slots).
        rc("ibv_post_send", unsafe {
            sys::ibv_post_send(self.qp, &mut wr, &mut bad)
        })
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: the QP is ours; outstanding work requests are flushed by destroying it.
        unsafe { sys::ibv_destroy_qp(self.qp) };
    }
}

/// `ibv_reg_mr` failed: name the memory-lock limit when that is the likely cause.
fn memlock_or(bytes: usize, call: &'static str, source: io::Error) -> Error {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } == 0;
    let low = ok
        && lim.rlim_cur != libc::RLIM_INFINITY
        && (lim.rlim_cur as usize) < bytes.saturating_mul(2);
    if matches!(
        source.raw_os_error(),
        Some(libc::ENOMEM) | Some(libc::EPERM) | Some(libc::EAGAIN)
    ) && low
    {
        return Error::MemLock {
            bytes,
            limit: format!("{} bytes", lim.rlim_cur),
        };
    }
    Error::Verbs { call, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real libibverbs: a device name that does not exist is refused with the list of
    /// devices that do (empty on a machine without RDMA), not a panic or a null pointer.
    #[test]
    fn a_missing_device_is_named_with_what_exists() {
        match Context::open(Some("omnode-no-such-device"), 1) {
            Err(Error::NoDevice { wanted, found }) => {
                assert_eq!(wanted.as_deref(), Some("omnode-no-such-device"));
                assert!(!found.iter().any(|d| d == "omnode-no-such-device"));
                let text = Error::NoDevice { wanted, found }.to_string();
                assert!(text.contains("omnode-no-such-device"), "{text}");
            }
            Err(e) => panic!("expected NoDevice, got {e}"),
            Ok(_) => panic!("a device that does not exist was opened"),
        }
    }

    #[test]
    fn unavailable_errors_mean_fall_back_others_mean_redial() {
        assert!(
            Error::NoDevice {
                wanted: None,
                found: vec![]
            }
            .is_unavailable()
        );
        assert!(
            Error::MemLock {
                bytes: 1,
                limit: "0".into()
            }
            .is_unavailable()
        );
        assert!(
            !Error::Completion {
                wr_id: 1,
                status: "x".into()
            }
            .is_unavailable()
        );
        assert!(!Error::Closed("x".into()).is_unavailable());
    }
}
