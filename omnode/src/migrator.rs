//! The migrator: moves a running process of this node to another node, and receives the
//! processes other nodes send here (the remote side is in [`crate::remote`]).
//!
//! Owns: the thin shells that drive `migration::protocol::Home` (with explicit time) for each
//! outgoing migration, the wire format between two migrators (control lane for protocol and
//! forwarded calls, bulk lane for the image), the deputy (the parked home shell, its fds taken
//! with pidfd_getfd, forwarded calls executed on them, signals forwarded, the exit reproduced).
//! Must not know: how a process is frozen or rebuilt (`migrate`), or how the protocols decide
//! (`migration`).
//!
//! Each migration runs on an OS thread of its own: the engine's calls block (they wait for its
//! tracer thread), so they never run on the async runtime; the thread talks to the transport
//! through the runtime handle, each send bounded by the system's send time-out.
//!
//! Not yet: the image is frozen into memory and then streamed (not streamed while the process
//! is being read), CPU features are not compared, `migrate PID home`, job-control mirroring,
//! tty emulation, path calls run in the daemon's cwd rather than the home process's.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use discovery::NodeId;
use migration::forward::{DeputyAction, DeputyFwd, FwdMsg};
use migration::protocol::{self, ExeIdentity, ExitStatus, Home, HomeAction, MigId, Msg, Offer};
use runtime::transport::Lane;
use runtime::{Actor, Context, Inbound, System};
use serde::{Deserialize, Serialize};

/// The name both ends of a migration are reachable at.
pub const NAME: &str = "migrator";

/// The home facts the remote needs to answer getpid and friends and to know which fds are
/// home-backed. Sent with every offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ident {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub home_fds: Vec<i32>,
    pub cmd: String,
}

/// What two migrators send each other. Image chunks go on the bulk lane with their bytes as
/// the frame's payload (the `data` of the chunk message itself is empty on the wire).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Wire {
    Proto {
        msg: Msg,
        ident: Option<Ident>,
    },
    Fwd {
        mig: MigId,
        msg: FwdMsg,
    },
    /// A signal sent to the home PID, for the remote copy.
    Signal {
        mig: MigId,
        signo: i32,
    },
}

/// Something for one migration's thread.
pub(crate) enum In {
    Wire {
        from: NodeId,
        wire: Wire,
    },
    /// The deputy's worker finished a forwarded call.
    Done {
        tid: migration::forward::Tid,
        seq: migration::forward::Seq,
        reply: migration::forward::Reply,
    },
}

/// A forwarded call for the deputy's worker thread.
struct Job {
    tid: migration::forward::Tid,
    seq: migration::forward::Seq,
    call: migration::forward::Call,
}

/// The deputy's worker: runs forwarded calls on the real fds, one at a time, so a call that
/// blocks at home (a read of an empty pipe) never stops the migration thread's heartbeats,
/// signal forwarding or exit handling.
///
/// Path calls run as the moved process would run them at home: this thread takes the
/// process's filesystem uid, gid and groups (per thread: raw setfsuid/setfsgid/setgroups), and
/// relative paths resolve against the process's cwd (its parked home shell keeps it). If that
/// identity cannot be taken, every path call is refused with EACCES (never run as root).
fn worker(
    pid: i32,
    mut fds: HashMap<i32, OwnedFd>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<In>,
) {
    // /mfs magic folders read by this thread answer for the moved process.
    let _mfs = crate::mfsmagic::acting_for(pid);
    let cwd = match take_identity(pid) {
        Ok(cwd) => Some(cwd),
        Err(e) => {
            tracing::error!(pid, "deputy: {e}; path calls of this process are refused");
            None
        }
    };
    while let Ok(Job { tid, seq, call }) = jobs.recv() {
        let reply = match (&call, &cwd) {
            (migration::forward::Call::Openat { .. }, None) => {
                migration::forward::Reply::errno(libc::EACCES)
            }
            _ => {
                use std::os::fd::AsFd;
                migration::standin::execute_at(&mut fds, cwd.as_ref().map(|c| c.as_fd()), &call)
            }
        };
        crate::metrics::bump(&crate::metrics::COUNTERS.forwarded_calls);
        if done.send(In::Done { tid, seq, reply }).is_err() {
            return;
        }
    }
}

/// Makes the calling thread act on files as process `pid` does (its filesystem uid and gid
/// and its supplementary groups) and returns its cwd as an `O_PATH` directory fd.
fn take_identity(pid: i32) -> Result<OwnedFd, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let field = |key: &str| -> Result<Vec<u32>, String> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| format!("/proc/{pid}/status has no {key}"))?;
        line.split_whitespace()
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("/proc/{pid}/status: bad {key} {line}"))
            })
            .collect()
    };
    let (uids, gids, groups) = (field("Uid:")?, field("Gid:")?, field("Groups:")?);
    let (Some(&fsuid), Some(&fsgid)) = (uids.get(3), gids.get(3)) else {
        return Err(format!("/proc/{pid}/status: no filesystem uid or gid"));
    };
    let cwd = std::ffi::CString::new(format!("/proc/{pid}/cwd")).expect("no NUL");
    // SAFETY: open of a NUL-terminated path; on success a fresh fd we own.
    let fd = unsafe {
        libc::open(
            cwd.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot open the cwd of {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fresh fd.
    let cwd = unsafe { OwnedFd::from_raw_fd(fd) };
    let groups: Vec<libc::gid_t> = groups;
    // SAFETY: raw syscalls act on this thread only (glibc's wrappers would change every
    // thread of the daemon); the groups pointer and length describe a live Vec.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        libc::syscall(libc::SYS_setfsgid, fsgid);
        libc::syscall(libc::SYS_setfsuid, fsuid);
        // setfsuid/setfsgid report the previous value, never an error: ask again to check
        let now_gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let now_uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if now_uid != fsuid || now_gid != fsgid {
            return Err(format!(
                "cannot act as uid {fsuid} gid {fsgid} (still {now_uid}/{now_gid})"
            ));
        }
    }
    Ok(cwd)
}

/// Shared by the control socket, the inbound actor and the migration threads.
pub struct Migrator {
    pub(crate) system: System,
    pub(crate) rt: tokio::runtime::Handle,
    local: NodeId,
    next: AtomicU64,
    /// Outgoing migrations (and their deputies) by id.
    homes: Mutex<HashMap<MigId, mpsc::Sender<In>>>,
    /// Incoming ones by (home node, id).
    pub(crate) remotes: Mutex<HashMap<(NodeId, MigId), mpsc::Sender<In>>>,
    /// Rows for `omnode ps`.
    pub(crate) table: Mutex<HashMap<MigId, PsRow>>,
}

/// One row of `omnode ps`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PsRow {
    pub pid: i32,
    pub node: NodeId,
    pub home: NodeId,
    pub state: String,
    pub moves: u32,
    pub cmd: String,
    /// On the node it runs on, for a guest: its PID there.
    #[serde(default)]
    pub local_pid: Option<i32>,
}

static GLOBAL: OnceLock<Arc<Migrator>> = OnceLock::new();

/// The migrator of this daemon, once [`start`] ran.
pub fn global() -> Option<Arc<Migrator>> {
    GLOBAL.get().cloned()
}

/// How many moved processes involve `nodes`: (guests here whose home is one of them, processes of
/// this node running on one of them).
pub fn involving(nodes: &[NodeId]) -> (usize, usize) {
    let Some(m) = global() else {
        return (0, 0);
    };
    let table = lock(&m.table);
    let guests = table
        .values()
        .filter(|r| r.node == m.local && nodes.contains(&r.home))
        .count();
    let ours = table
        .values()
        .filter(|r| r.home == m.local && nodes.contains(&r.node))
        .count();
    (guests, ours)
}

/// Creates the migrator and makes it reachable from other nodes.
pub fn start(system: &System) -> Arc<Migrator> {
    let m = Arc::new(Migrator {
        system: system.clone(),
        rt: tokio::runtime::Handle::current(),
        local: system.local_id(),
        next: AtomicU64::new(1),
        homes: Mutex::new(HashMap::new()),
        remotes: Mutex::new(HashMap::new()),
        table: Mutex::new(HashMap::new()),
    });
    let _ = GLOBAL.set(m.clone());
    let m2 = m.clone();
    let inbox = system.spawn(NAME, move || InboxActor { m: m2.clone() });
    system.serve::<Wire, _>(NAME, inbox);
    m
}

/// Receives wire messages and hands each to its migration's thread.
struct InboxActor {
    m: Arc<Migrator>,
}

pub struct InboxMsg(Inbound<Wire>);

impl From<Inbound<Wire>> for InboxMsg {
    fn from(i: Inbound<Wire>) -> Self {
        InboxMsg(i)
    }
}

impl Actor for InboxActor {
    type Msg = InboxMsg;
    async fn handle(&mut self, msg: InboxMsg, _ctx: &mut Context<Self>) {
        let Inbound {
            from, msg, payload, ..
        } = msg.0;
        self.m.dispatch(from, msg, payload);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Migrator {
    fn dispatch(self: &Arc<Self>, from: NodeId, mut wire: Wire, payload: Bytes) {
        if let Wire::Proto {
            msg: Msg::Chunk { data, .. },
            ..
        } = &mut wire
        {
            *data = payload;
        }
        let (mig, to_home) = match &wire {
            Wire::Proto { msg, .. } => (
                msg.mig(),
                matches!(
                    msg,
                    Msg::Accept { .. }
                        | Msg::Refuse { .. }
                        | Msg::Ack { .. }
                        | Msg::Confirm { .. }
                        | Msg::Running { .. }
                        | Msg::Gone { .. }
                        | Msg::Exited { .. }
                ) || (matches!(msg, Msg::Alive { .. } | Msg::Abort { .. })
                    && lock(&self.homes).contains_key(&msg.mig())),
            ),
            Wire::Fwd { mig, msg } => (
                *mig,
                matches!(
                    msg,
                    FwdMsg::Request { .. } | FwdMsg::Cancel { .. } | FwdMsg::Unread { .. }
                ),
            ),
            Wire::Signal { mig, .. } => (*mig, false),
        };
        if to_home {
            let tx = lock(&self.homes).get(&mig).cloned();
            match tx {
                Some(tx) => {
                    let _ = tx.send(In::Wire { from, wire });
                }
                None => tracing::debug!(mig, from, "message for an unknown outgoing migration"),
            }
        } else {
            crate::remote::incoming(self, from, mig, wire);
        }
    }

    /// Sends `wire` to `node`'s migrator from a migration thread (blocking, bounded).
    pub(crate) fn send(&self, node: NodeId, lane: Lane, wire: &Wire, payload: Bytes) -> bool {
        let sys = self.system.clone();
        match self
            .rt
            .block_on(async move { sys.tell_on(lane, node, NAME, wire, payload).await })
        {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(node, "migration message not sent: {e}");
                false
            }
        }
    }

    /// `omnode migrate PID NODE`: moves `pid` to `to`. `uid` is the caller's (SO_PEERCRED).
    /// Returns a line for the person who asked; refusals name the node and the reason.
    pub async fn migrate(
        self: &Arc<Self>,
        pid: i32,
        to: NodeId,
        uid: Option<u32>,
    ) -> Result<String, String> {
        let owner = proc_uid(pid).map_err(|e| format!("process {pid}: {e}"))?;
        match uid {
            Some(0) => {}
            Some(u) if u == owner => {}
            Some(u) => {
                return Err(format!(
                    "uid {u} may not move process {pid} (it belongs to uid {owner})"
                ));
            }
            None => return Err("the caller's uid is unknown (SO_PEERCRED failed); refused".into()),
        }
        if to == self.local {
            return Err(format!("process {pid} already runs on node {to}"));
        }
        if lock(&self.table)
            .values()
            .any(|r| r.pid == pid && r.home == self.local)
        {
            return Err(format!("process {pid} is already moved or moving"));
        }
        let mig = (u64::from(self.local) << 40) | self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        lock(&self.homes).insert(mig, tx.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let me = self.clone();
        std::thread::Builder::new()
            .name(format!("mig-home-{pid}"))
            .spawn(move || {
                home_thread(&me, mig, pid, to, (tx, rx), done_tx);
                lock(&me.homes).remove(&mig);
                lock(&me.table).remove(&mig);
            })
            .map_err(|e| format!("cannot start the migration thread: {e}"))?;
        match tokio::time::timeout(Duration::from_secs(30), done_rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!(
                "moving {pid} to node {to}: the migration thread ended"
            )),
            Err(_) => Err(format!("moving {pid} to node {to}: no result within 30 s")),
        }
    }

    /// Rows for `omnode ps`.
    pub fn rows(&self) -> Vec<PsRow> {
        let mut v: Vec<PsRow> = lock(&self.table).values().cloned().collect();
        v.sort_by_key(|r| r.pid);
        v
    }

    pub(crate) fn local(&self) -> NodeId {
        self.local
    }
}

fn proc_uid(pid: i32) -> Result<u32, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("no such process ({e})"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .ok_or_else(|| "unreadable /proc status (no Uid line)".to_string())
}

/// ppid, pgid, sid from /proc/PID/stat.
fn proc_ids(pid: i32) -> Result<(i32, i32, i32), String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("unreadable /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<i32, String> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unreadable /proc/{pid}/stat"))
    };
    Ok((num(1)?, num(2)?, num(3)?))
}

/// What the executable at `path` is, here: identity and a SHA-256 of its content.
pub(crate) fn exe_identity(path: &str) -> Option<ExeIdentity> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).ok()?;
    Some(ExeIdentity {
        path: path.to_string(),
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        content_hash: h.finalize().into(),
    })
}

type Done = tokio::sync::oneshot::Sender<Result<String, String>>;

/// The home side of one migration, then its deputy, until the moved process ends.
fn home_thread(
    m: &Migrator,
    mig: MigId,
    pid: i32,
    to: NodeId,
    (me_tx, rx): (mpsc::Sender<In>, mpsc::Receiver<In>),
    done: Done,
) {
    let mut done = Some(done);
    let mut answer = |r: Result<String, String>| {
        if let Some(d) = done.take() {
            let _ = d.send(r);
        }
    };
    let mut seized = match migrate::seize(pid, migrate::DEFAULT_STOP_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return answer(Err(format!("process {pid} cannot move to node {to}: {e}"))),
    };
    let img = match seized.collect() {
        Ok(i) => i,
        Err(e) => return answer(Err(format!("process {pid} cannot move to node {to}: {e}"))),
    };
    let (ppid, pgid, sid) = match proc_ids(pid) {
        Ok(v) => v,
        Err(e) => return answer(Err(format!("process {pid}: {e}"))),
    };
    let mut buf = Vec::new();
    let streamed = match seized.stream(&img, &mut buf) {
        Ok(s) => s,
        Err(e) => return answer(Err(format!("process {pid} cannot move to node {to}: {e}"))),
    };
    let image = Bytes::from(buf);
    let Some(exe) = exe_identity(&img.exe) else {
        return answer(Err(format!(
            "process {pid}: its executable {} is unreadable",
            img.exe
        )));
    };
    let ident = Ident {
        pid,
        ppid,
        pgid,
        sid,
        home_fds: img.fds.iter().map(|f| f.fd).collect(),
        cmd: img.comm.clone(),
    };
    let offer = Offer {
        mig,
        pid: pid as u32,
        uid: img.creds.uid[0],
        image_size: image.len() as u64,
        memory_needed: streamed.page_bytes,
        cpu_features: Vec::new(),
        exe,
    };
    lock(&m.table).insert(
        mig,
        PsRow {
            pid,
            node: m.local,
            home: m.local,
            state: "migrating".into(),
            moves: 0,
            cmd: img.comm.clone(),
            local_pid: None,
        },
    );
    let (mut home, acts) = Home::start(protocol::Config::default(), offer, Instant::now());
    let mut seized = Some(seized);
    let mut shell: Option<migrate::HomeShell> = None;
    let mut jobs: Option<mpsc::Sender<Job>> = None;
    let mut dep = DeputyFwd::new();
    let mut early: Vec<FwdMsg> = Vec::new();
    let mut pending = acts;
    loop {
        for a in std::mem::take(&mut pending) {
            match a {
                HomeAction::Send(msg) => {
                    let ident = matches!(msg, Msg::Offer(_)).then(|| ident.clone());
                    m.send(to, Lane::Control, &Wire::Proto { msg, ident }, Bytes::new());
                }
                HomeAction::SendChunk { offset, len } => {
                    let (o, l) = (offset as usize, len as usize);
                    let msg = Msg::Chunk {
                        mig,
                        offset,
                        data: Bytes::new(),
                    };
                    m.send(
                        to,
                        Lane::Bulk,
                        &Wire::Proto { msg, ident: None },
                        image.slice(o..o + l),
                    );
                }
                HomeAction::ResumeAtHome { reason } => {
                    drop(seized.take()); // puts the process back, running as it was
                    tracing::info!(pid, node = to, "migration refused or failed: {reason}");
                    return answer(Err(format!(
                        "node {to}: {reason}; process {pid} keeps running here"
                    )));
                }
                HomeAction::ParkHome => {
                    let Some(s) = seized.take() else { continue };
                    match s.finish(migrate::Ending::ParkAsHomeShell) {
                        Ok(migrate::Finished::Parked(sh)) => {
                            let mut fds = HashMap::new();
                            for &fd in &ident.home_fds {
                                match sh.take_fd(fd) {
                                    Ok(f) => {
                                        fds.insert(fd, f);
                                    }
                                    Err(e) => tracing::warn!(pid, fd, "deputy cannot take fd: {e}"),
                                }
                            }
                            shell = Some(sh);
                            let (jtx, jrx) = mpsc::channel();
                            let back = me_tx.clone();
                            if let Err(e) = std::thread::Builder::new()
                                .name(format!("deputy-{pid}"))
                                .spawn(move || worker(pid, fds, jrx, back))
                            {
                                tracing::error!(pid, "cannot start the deputy worker: {e}");
                            }
                            jobs = Some(jtx);
                            if let Some(r) = lock(&m.table).get_mut(&mig) {
                                r.node = to;
                                r.state = "running".into();
                                r.moves += 1;
                            }
                            for msg in std::mem::take(&mut early) {
                                let acts = dep.on_msg(msg);
                                deputy(m, to, mig, &mut dep, jobs.as_ref(), acts);
                            }
                            crate::metrics::bump(&crate::metrics::COUNTERS.migrations_out);
                            answer(Ok(format!("process {pid} moved to node {to}")));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // The target runs the copy, but the home process could not be
                            // parked (the engine then puts it back running, or, once taken
                            // apart, kills it). Nothing of the copy has touched home yet (no
                            // deputy: its forwarded calls were only queued), so ending the copy
                            // leaves exactly one process: the one at home, if it is still there.
                            early.clear();
                            m.send(
                                to,
                                Lane::Control,
                                &Wire::Signal {
                                    mig,
                                    signo: libc::SIGKILL,
                                },
                                Bytes::new(),
                            );
                            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                                .is_ok_and(|st| !st.contains(") Z ") && !st.contains(") X "));
                            tracing::error!(
                                pid,
                                node = to,
                                alive,
                                "the home shell could not be parked: {e}; the copy on node {to} is killed"
                            );
                            answer(Err(if alive {
                                format!(
                                    "node {to}: process {pid} could not be parked at home ({e}); the copy there was ended and it keeps running here"
                                )
                            } else {
                                format!(
                                    "node {to}: process {pid} could not be parked at home ({e}) and was lost"
                                )
                            }));
                        }
                    }
                }
                HomeAction::EndHome { reason } => {
                    tracing::error!(
                        pid,
                        node = to,
                        "moved process lost: {reason}; it ends with SIGKILL at home"
                    );
                    if let Some(sh) = shell.as_mut() {
                        let _ = sh.die_by(libc::SIGKILL);
                    }
                    answer(Err(format!("node {to}: {reason}")));
                    return;
                }
                HomeAction::ReproduceExit(st) => {
                    if let Some(sh) = shell.as_mut() {
                        let r = match st {
                            ExitStatus::Code(c) => sh.exit(c),
                            ExitStatus::Signal(s) => sh.die_by(s),
                        };
                        if let Err(e) = r {
                            tracing::error!(pid, "reproducing the exit ({st:?}) failed: {e}");
                        }
                    }
                    shell = None;
                }
            }
        }
        if home.is_done() {
            // Answer the ExitAck re-sends for a little while? The target stops on ExitAck.
            return;
        }
        let now = Instant::now();
        let wait = home
            .next_deadline()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(if shell.is_some() {
                20
            } else {
                100
            }));
        match rx.recv_timeout(wait) {
            Ok(In::Wire { from, wire }) if from == to => match wire {
                Wire::Proto { msg, .. } => pending.extend(home.on_msg(msg, Instant::now())),
                Wire::Fwd { msg, .. } => {
                    home.on_sign_of_life(Instant::now());
                    if jobs.is_some() {
                        let acts = dep.on_msg(msg);
                        deputy(m, to, mig, &mut dep, jobs.as_ref(), acts);
                    } else {
                        early.push(msg);
                    }
                }
                Wire::Signal { .. } => {}
            },
            Ok(In::Done { tid, seq, reply }) => {
                let acts = dep.on_done(tid, seq, reply);
                deputy(m, to, mig, &mut dep, jobs.as_ref(), acts);
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        pending.extend(home.on_tick(Instant::now()));
        if let Some(sh) = shell.as_mut() {
            match sh.next_event(Duration::ZERO) {
                Ok(None) => {}
                Ok(Some(migrate::ShellEvent::Signal { info, held })) => {
                    if held {
                        let _ = sh.suppress();
                    }
                    if !info.from_us() {
                        m.send(
                            to,
                            Lane::Control,
                            &Wire::Signal {
                                mig,
                                signo: info.signo,
                            },
                            Bytes::new(),
                        );
                    }
                }
                Ok(Some(migrate::ShellEvent::GroupStop { signo })) => {
                    // Job control is not mirrored yet: the stop goes to the remote, the shell
                    // runs on parked.
                    let _ = sh.resume();
                    m.send(
                        to,
                        Lane::Control,
                        &Wire::Signal { mig, signo },
                        Bytes::new(),
                    );
                }
                Ok(Some(migrate::ShellEvent::Ended { status })) => {
                    tracing::warn!(
                        pid,
                        status,
                        "the home shell ended (killed at home); ending the remote"
                    );
                    m.send(
                        to,
                        Lane::Control,
                        &Wire::Signal {
                            mig,
                            signo: libc::SIGKILL,
                        },
                        Bytes::new(),
                    );
                    shell = None;
                }
                Err(e) => tracing::debug!(pid, "home shell: {e}"),
            }
        }
    }
}

/// The deputy: carries out the forwarding machine's actions; calls go to the worker.
fn deputy(
    m: &Migrator,
    to: NodeId,
    mig: MigId,
    dep: &mut DeputyFwd,
    jobs: Option<&mpsc::Sender<Job>>,
    acts: Vec<DeputyAction>,
) {
    for a in acts {
        match a {
            DeputyAction::Send(msg) => {
                m.send(to, Lane::Control, &Wire::Fwd { mig, msg }, Bytes::new());
            }
            DeputyAction::Execute { tid, seq, call } => {
                let sent = jobs.is_some_and(|j| j.send(Job { tid, seq, call }).is_ok());
                if !sent {
                    let acts = dep.on_done(tid, seq, migration::forward::Reply::errno(libc::EIO));
                    for a in acts {
                        if let DeputyAction::Send(msg) = a {
                            m.send(to, Lane::Control, &Wire::Fwd { mig, msg }, Bytes::new());
                        }
                    }
                }
            }
            // Not yet: a call blocked at home is not interrupted (its reply still comes).
            DeputyAction::Interrupt { .. } => {}
        }
    }
}

/// A `Migrate` or `Ps` request from the control socket.
pub async fn serve(req: crate::control::Request, uid: Option<u32>) -> crate::control::Response {
    use crate::control::{Request, Response};
    let Some(m) = global() else {
        return Response::Error("this daemon has no migrator".into());
    };
    match req {
        Request::Ps => Response::Ps(m.rows()),
        Request::Migrate { pid, to } => {
            let node = match to.as_str() {
                "home" => {
                    return Response::Error(format!(
                        "process {pid}: bringing a process home is not implemented yet"
                    ));
                }
                n => match n.parse::<NodeId>() {
                    Ok(n) => n,
                    Err(_) => {
                        return Response::Error(format!("'{to}' is not a node number or 'home'"));
                    }
                },
            };
            match m.migrate(pid, node, uid).await {
                Ok(s) => Response::Done(s),
                Err(e) => Response::Error(e),
            }
        }
        Request::MoveAfterExec { pid, to } => {
            let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let Some(before) = exe(pid) else {
                return Response::Error(format!("process {pid}: no such process"));
            };
            if let Err(e) = proc_uid(pid).and_then(|owner| match uid {
                Some(0) => Ok(()),
                Some(u) if u == owner => Ok(()),
                _ => Err(format!(
                    "uid {uid:?} may not move process {pid} (it belongs to uid {owner})"
                )),
            }) {
                return Response::Error(e);
            }
            let m2 = m.clone();
            m.rt.spawn(async move {
                // Wait (at most 5 s) for the exec, then move it.
                let t0 = Instant::now();
                while exe(pid).as_ref() == Some(&before) {
                    if t0.elapsed() > Duration::from_secs(5) {
                        tracing::warn!(pid, "mosrun: no exec within 5 s; not moved");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                match m2.migrate(pid, to, uid).await {
                    Ok(s) => tracing::info!(pid, "mosrun: {s}"),
                    Err(e) => tracing::warn!(pid, "mosrun: it runs at home: {e}"),
                }
            });
            Response::Done(format!(
                "process {pid} moves to node {to} once it runs its program"
            ))
        }
        _ => Response::Error("not a migration request".into()),
    }
}
