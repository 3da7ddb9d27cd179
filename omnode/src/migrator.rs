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
//! Coming home and moving on (`migrate PID home`, `migrate PID N` for a moved process, calls
//! that must run at home) are in [`crate::gohome`]; this thread drives the home half of them.
//!
//! The image streams while the process is read ([`crate::imagestream`]): home holds at most
//! the protocol's window of it.
//!
//! Job control is mirrored: a stop of the copy (reported by the target, `Wire::Stopped`) is
//! reproduced on the parked shell by the same signal, let through and answered with
//! PTRACE_LISTEN, so the parent's waitpid(WUNTRACED) sees it; `fg`/`bg` continue the shell, and
//! their SIGCONT reaches the copy as any signal does. The deputy (`crate::deputy`) runs
//! forwarded calls and emulates SIGTTIN/SIGTTOU for terminal access.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use discovery::NodeId;
use migration::forward::FwdMsg;

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
    /// How many times it has moved, this move included (for `ps` on the node it runs on).
    #[serde(default)]
    pub moves: u32,
    /// The home fds that are terminals (job control applies to calls on them).
    #[serde(default)]
    pub tty_fds: Vec<i32>,
    /// Home's `/mfs` mounts (DFSA runs file calls on the ones both nodes have alike).
    #[serde(default)]
    pub mfs: Vec<migration::dfsa::Mount>,
    /// Where it last exec'd, when not at home (a remote start): its `/mfs/lastexec`.
    #[serde(default)]
    pub lastexec: Option<u32>,
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
    /// Home to the node running the copy: freeze it and bring it home (the return trip, see
    /// [`crate::gohome`]).
    ComeHome {
        mig: MigId,
    },
    /// The node running the copy to home, before its return offer: why it comes home.
    Leaving {
        mig: MigId,
        why: String,
    },
    /// The node running the copy to home: it cannot leave now (it runs on there).
    StaysHere {
        mig: MigId,
        why: String,
    },
    /// remote → home: the copy was stopped by `signo` (job control), or continued (`None`);
    /// home mirrors a stop on the parked shell so the parent's wait sees it.
    Stopped {
        mig: MigId,
        signo: Option<i32>,
        /// How many SIGCONTs the copy had been sent when it reported: a stop report older
        /// than a SIGCONT home has since forwarded is stale and not mirrored.
        #[serde(default)]
        conts: u64,
    },
}

/// Something for one migration's thread.
pub(crate) enum In {
    Wire {
        from: NodeId,
        wire: Wire,
    },
    /// `migrate PID home`: bring the process back.
    ComeHome {
        reply: Done,
    },
    /// Another channel of the thread has news (the target's builder finished a step): look
    /// there now rather than at the next time-out.
    Wake,
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
    /// Processes of this node that moved and came back (state "home"), by PID, for `ps` and
    /// their move count.
    pub(crate) came_home: Mutex<HashMap<i32, PsRow>>,
    /// The direct ways of forwarded-call messages (no migration-thread hop), see
    /// [`crate::fwdpath`].
    pub(crate) fwd_paths: crate::fwdpath::Paths,
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
        came_home: Mutex::new(HashMap::new()),
        fwd_paths: Default::default(),
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
        // a return trip goes to the threads that own the process (see crate::gohome)
        let ret = match &wire {
            Wire::Proto { msg, .. } => Some(msg.mig()),
            Wire::Leaving { mig, .. } => Some(*mig),
            _ => None,
        }
        .filter(|m| m & crate::gohome::RETURN != 0);
        if let Some(r) = ret {
            let base = r & !crate::gohome::RETURN;
            let tx = lock(&self.homes).get(&base).cloned();
            match tx {
                Some(tx) => {
                    let _ = tx.send(In::Wire { from, wire });
                }
                None => crate::remote::incoming(self, from, base, wire),
            }
            return;
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
                    FwdMsg::Request { .. }
                        | FwdMsg::Cancel { .. }
                        | FwdMsg::Unread { .. }
                        | FwdMsg::TtySigs { .. }
                ),
            ),
            Wire::Signal { mig, .. } | Wire::ComeHome { mig } => (*mig, false),
            Wire::Leaving { mig, .. } | Wire::StaysHere { mig, .. } | Wire::Stopped { mig, .. } => {
                (*mig, true)
            }
        };
        // forwarded calls and their replies go straight to the deputy's worker or to the
        // remote's supervisor once those run (crate::fwdpath)
        let wire = match wire {
            Wire::Fwd { mig, msg } => match self.fwd_paths.deliver(from, mig, to_home, msg) {
                None => return,
                Some(msg) => Wire::Fwd { mig, msg },
            },
            w => w,
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

    /// Sends `wire` to `node`'s migrator from a migration thread (blocking, bounded). A small
    /// control message goes without the runtime when the lane has room now.
    pub(crate) fn send(&self, node: NodeId, lane: Lane, wire: &Wire, payload: Bytes) -> bool {
        if lane == Lane::Control
            && payload.is_empty()
            && self.system.try_tell(node, NAME, wire).is_ok()
        {
            return true;
        }
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
        self.migrate_from(pid, to, uid, None).await
    }

    /// [`Migrator::migrate`] of a process already seized, stopped at the first instruction of
    /// its program (`mosrun`'s remote start, [`migrate::watch_exec`]). A refusal or failure
    /// releases it: it runs at home.
    pub async fn migrate_seized(
        self: &Arc<Self>,
        seized: migrate::Seized,
        to: NodeId,
        uid: Option<u32>,
    ) -> Result<String, String> {
        self.migrate_from(seized.pid(), to, uid, Some(seized)).await
    }

    async fn migrate_from(
        self: &Arc<Self>,
        pid: i32,
        to: NodeId,
        uid: Option<u32>,
        seized: Option<migrate::Seized>,
    ) -> Result<String, String> {
        may_move(pid, uid)?;
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
                home_thread(&me, mig, pid, to, seized, (tx, rx), done_tx);
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
        let mut back = lock(&self.came_home);
        back.retain(|pid, _| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|st| !st.contains(") Z ") && !st.contains(") X "))
        });
        for r in back.values() {
            if !v.iter().any(|x| x.pid == r.pid && x.home == r.home) {
                v.push(r.clone());
            }
        }
        v.sort_by_key(|r| r.pid);
        v
    }

    pub(crate) fn local(&self) -> NodeId {
        self.local
    }
}

/// A user moves only their own processes, root any.
fn may_move(pid: i32, uid: Option<u32>) -> Result<(), String> {
    let owner = proc_uid(pid).map_err(|e| format!("process {pid}: {e}"))?;
    match uid {
        Some(0) => Ok(()),
        Some(u) if u == owner => Ok(()),
        Some(u) => Err(format!(
            "uid {u} may not move process {pid} (it belongs to uid {owner})"
        )),
        None => Err("the caller's uid is unknown (SO_PEERCRED failed); refused".into()),
    }
}

impl Migrator {
    /// The node a moved process of this node runs on, with its migration's thread.
    fn moved_to(&self, pid: i32) -> Option<(NodeId, mpsc::Sender<In>)> {
        let (mig, node) = lock(&self.table)
            .iter()
            .find(|(_, r)| r.pid == pid && r.home == self.local && r.node != self.local)
            .map(|(mig, r)| (*mig, r.node))?;
        let tx = lock(&self.homes).get(&mig).cloned()?;
        Some((node, tx))
    }

    /// `omnode migrate PID home`: brings a moved process of this node back into its parked
    /// home shell (see [`crate::gohome`]). A failure leaves it running where it is.
    pub async fn come_home(self: &Arc<Self>, pid: i32, uid: Option<u32>) -> Result<String, String> {
        may_move(pid, uid)?;
        let Some((node, tx)) = self.moved_to(pid) else {
            return Err(format!(
                "process {pid} does not run on another node (it is at home or not moved by omnode)"
            ));
        };
        let (d_tx, d_rx) = tokio::sync::oneshot::channel();
        if tx.send(In::ComeHome { reply: d_tx }).is_err() {
            return Err(format!("process {pid}: its migration has just ended"));
        }
        match tokio::time::timeout(Duration::from_secs(40), d_rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!(
                "bringing {pid} home from node {node}: the migration thread ended"
            )),
            Err(_) => Err(format!(
                "bringing {pid} home from node {node}: no result within 40 s"
            )),
        }
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

/// What the executable at `path` is, here: identity and a SHA-256 of its content. The hash
/// is kept for a file whose device, inode, size, mtime and ctime are unchanged (a tree's
/// compiler is exec'd again and again; hashing 30 MiB of cc1 on a capped node each time
/// outlasted the offer's time-out).
pub(crate) fn exe_identity(path: &str) -> Option<ExeIdentity> {
    use sha2::Digest;
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    type Key = (String, u64, u64, u64, i64, i64, i64, i64);
    static CACHE: std::sync::OnceLock<Mutex<HashMap<Key, [u8; 32]>>> = std::sync::OnceLock::new();
    let md = std::fs::metadata(path).ok()?;
    let key: Key = (
        path.to_string(),
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
    );
    let cache = CACHE.get_or_init(Default::default);
    let known = lock(cache).get(&key).copied();
    let content_hash = match known {
        Some(h) => h,
        None => {
            let mut f = std::fs::File::open(path).ok()?;
            let mut h = sha2::Sha256::new();
            std::io::copy(&mut f, &mut h).ok()?;
            let h: [u8; 32] = h.finalize().into();
            let md2 = std::fs::metadata(path).ok()?;
            // changed while read: not kept
            if md2.mtime_nsec() == md.mtime_nsec() && md2.size() == md.size() {
                let mut c = lock(cache);
                if c.len() > 1024 {
                    c.clear();
                }
                c.insert(key, h);
            }
            h
        }
    };
    Some(ExeIdentity {
        path: path.to_string(),
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
        content_hash,
    })
}

type Done = tokio::sync::oneshot::Sender<Result<String, String>>;

/// The protocol's settings for a move from here. Home holds the image bytes in flight (read,
/// not yet acknowledged) in its own memory, in the cgroup of the process it moves: on a node
/// short of memory (the reason for ushering) a full 16 MiB window could make that cgroup kill
/// the very process being moved. So home's window is at most an eighth of its free memory
/// (at least one chunk; the pieces read ahead follow it, and with the transport's copies home
/// holds a few times that); when the free memory cannot be read, the default.
fn home_config() -> protocol::Config {
    let mut c = protocol::Config::default();
    if let Ok(own) = crate::loadmon::own(Duration::from_secs(2)) {
        c.window = (own.free_mem / 8).clamp(c.chunk_size, c.window);
    }
    c
}

/// The home side of one migration, then its deputy, until the moved process ends.
fn home_thread(
    m: &Migrator,
    mig: MigId,
    pid: i32,
    to: NodeId,
    seized: Option<migrate::Seized>,
    (_me_tx, rx): (mpsc::Sender<In>, mpsc::Receiver<In>),
    done: Done,
) {
    let mut done = Some(done);
    let mut answer = |r: Result<String, String>| {
        if let Some(d) = done.take() {
            let _ = d.send(r);
        }
    };
    let cpu_features = match crate::cpufeat::offered() {
        Ok(f) => f,
        Err(e) => {
            return answer(Err(format!(
                "process {pid} cannot move to node {to}: this node's CPU features are unknown ({e})"
            )));
        }
    };
    let frozen_at = Instant::now();
    let seized = match seized {
        Some(s) => Ok(s),
        None => migrate::seize(pid, migrate::DEFAULT_STOP_TIMEOUT),
    };
    let mut seized = match seized {
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
    // What the image holds and its exact size, before any page is read: the offer goes out
    // now and the pages stream while they are read (bounded memory here).
    let plan = match seized.plan(&img) {
        Ok(p) => p,
        Err(e) => return answer(Err(format!("process {pid} cannot move to node {to}: {e}"))),
    };
    // moves made before (it came home since): the count goes on
    let prev_moves = lock(&m.came_home).get(&pid).map_or(0, |r| r.moves);
    let (image_len, page_bytes) = (plan.image_bytes, plan.page_bytes);
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
        // fds that live inside the process (pipes within it, eventfd, epoll, ...) move with it
        home_fds: migrate::home_backed(&img.fds),
        cmd: img.comm.clone(),
        moves: prev_moves + 1,
        tty_fds: migrate::home_backed(&img.fds)
            .into_iter()
            .filter(|&fd| crate::deputy::is_tty_fd(pid, fd))
            .collect(),
        mfs: crate::mfsd::mounts(),
        lastexec: crate::mfsmagic::lastexec_of(pid as u32),
    };
    // Shared by the deputy's worker and this thread (made ready before the offer).
    let shared = std::sync::Arc::new(crate::deputy::Shared::default());
    // Everything the deputy will need is taken now, while the process is frozen here: if it
    // cannot be (an fd, the process's identity), the move is refused before anything left.
    let mut prepared = match crate::deputy::prepare(pid, &ident.home_fds, shared.clone()) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(pid, node = to, "move refused: {e}");
            drop(seized); // puts the process back, running as it was
            return answer(Err(format!(
                "process {pid} cannot move to node {to}: {e}; it keeps running here"
            )));
        }
    };
    let offer = Offer {
        mig,
        pid: pid as u32,
        uid: img.creds.uid[0],
        image_size: image_len,
        memory_needed: page_bytes,
        cpu_features,
        exe,
    };
    lock(&m.table).insert(
        mig,
        PsRow {
            pid,
            node: m.local,
            home: m.local,
            state: "migrating".into(),
            moves: prev_moves,
            cmd: img.comm.clone(),
            local_pid: None,
        },
    );
    let config = home_config();
    // pieces read ahead are held here too: no more than the window allows
    let ahead = (config.window / crate::imagestream::PIECE as u64) as usize;
    let mut source = match crate::imagestream::ImageSource::start(seized, plan, pid, ahead) {
        Ok(s) => Some(s),
        Err(e) => {
            lock(&m.table).remove(&mig);
            // the Seized went with the failed thread start and was dropped: the process runs
            return answer(Err(format!(
                "process {pid} cannot move to node {to}: cannot start reading it: {e}; it keeps running here"
            )));
        }
    };
    let (mut home, acts) = Home::start(config, offer, Instant::now());
    let mut seized: Option<migrate::Seized> = None;
    let mut held_peak = 0u64;
    let mut shell: Option<migrate::HomeShell> = None;
    // The deputy's front (crate::fwdpath), serving once the shell is parked (`way`). Its way
    // opens now, before the offer, so no forwarded message can reach this thread instead:
    // what the remote sends before the shell is parked is held there in the order it came and
    // served first (`DeputyWay::start`).
    let mut way: Option<Arc<crate::fwdpath::DeputyWay>> = None;
    let held_way: Option<Arc<crate::fwdpath::DeputyWay>> = prepared.as_ref().map(|p| {
        let w = Arc::new(crate::fwdpath::DeputyWay::new(
            m,
            to,
            mig,
            p.jobs.clone(),
            shared.clone(),
        ));
        let _ = p.way.set(w.clone());
        w
    });
    let mut opened: Option<crate::fwdpath::Opened<'_>> =
        held_way.clone().map(|w| m.fwd_paths.open_deputy(w));
    let mut fwd_seen = 0u64;
    /// Held calls stop waiting once the deputy ends.
    struct CloseOnDrop(std::sync::Arc<crate::deputy::Shared>);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.closed.store(true, Ordering::SeqCst);
        }
    }
    let _close = CloseOnDrop(shared.clone());
    // SIGCONTs forwarded to the copy (see `Wire::Stopped`).
    let mut conts_sent = 0u64;
    let mut tty_stops_seen = 0u64;
    let mut pending = acts;
    let fds_shared: crate::gohome::DeputyFds =
        prepared.as_ref().map(|p| p.fds.clone()).unwrap_or_default();
    let mut back: Option<crate::gohome::Back> = None;
    let mut waiters: Vec<Done> = Vec::new();
    let mut leaving_why = String::from("asked at home");
    let ret_mig = mig | crate::gohome::RETURN;
    loop {
        for a in std::mem::take(&mut pending) {
            match a {
                HomeAction::Send(msg) => {
                    let ident = matches!(msg, Msg::Offer(_)).then(|| ident.clone());
                    m.send(to, Lane::Control, &Wire::Proto { msg, ident }, Bytes::new());
                }
                HomeAction::SendChunk { offset, len } => {
                    let data = match source.as_mut() {
                        Some(src) => src.get(offset, len, Duration::from_secs(30)),
                        None => Err("the image is no longer held".to_string()),
                    };
                    match data {
                        Ok(data) => {
                            let msg = Msg::Chunk {
                                mig,
                                offset,
                                data: Bytes::new(),
                            };
                            m.send(to, Lane::Bulk, &Wire::Proto { msg, ident: None }, data);
                        }
                        Err(e) => {
                            tracing::warn!(pid, node = to, "image: {e}");
                            pending.extend(home.cancel(&e, Instant::now()));
                        }
                    }
                }
                HomeAction::ResumeAtHome { reason } => {
                    if let Some(src) = source.take() {
                        seized = src.finish();
                    }
                    drop(seized.take()); // puts the process back, running as it was
                    tracing::info!(pid, node = to, "migration refused or failed: {reason}");
                    return answer(Err(format!(
                        "node {to}: {reason}; process {pid} keeps running here"
                    )));
                }
                HomeAction::ParkHome => {
                    if let Some(src) = source.take() {
                        seized = src.finish();
                    }
                    let Some(s) = seized.take() else { continue };
                    match s.finish(migrate::Ending::ParkAsHomeShell) {
                        Ok(migrate::Finished::Parked(sh)) => {
                            shell = Some(sh);
                            // the deputy was made ready before the offer (its fds, its worker,
                            // its way): it serves from now on, what came meanwhile first
                            drop(prepared.take());
                            let Some(w) = held_way.clone() else { continue };
                            w.start();
                            way = Some(w);
                            if let Some(r) = lock(&m.table).get_mut(&mig) {
                                r.node = to;
                                r.state = "running".into();
                                r.moves += 1;
                            }
                            crate::metrics::bump(&crate::metrics::COUNTERS.migrations_out);
                            let frozen = frozen_at.elapsed();
                            tracing::info!(
                                pid,
                                node = to,
                                image_bytes = image_len,
                                held_at_most = held_peak,
                                frozen_ms = frozen.as_secs_f64() * 1e3,
                                "moved"
                            );
                            answer(Ok(format!(
                                "process {pid} moved to node {to} (image {:.1} MiB, frozen {:.1} ms)",
                                image_len as f64 / 1048576.0,
                                frozen.as_secs_f64() * 1e3
                            )));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            // The target runs the copy, but the home process could not be
                            // parked (the engine then puts it back running, or, once taken
                            // apart, kills it). Nothing of the copy has touched home yet (no
                            // deputy: its forwarded calls were only queued), so ending the copy
                            // leaves exactly one process: the one at home, if it is still there.
                            if let Some(w) = &held_way {
                                w.drop_held();
                            }
                            drop(opened.take());
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
            Ok(In::ComeHome { reply }) => {
                if shell.is_none() || back.is_some() || way.is_none() {
                    let _ = reply.send(Err(format!(
                        "process {pid} is not running on node {to} right now (moving or already coming home)"
                    )));
                } else {
                    m.send(to, Lane::Control, &Wire::ComeHome { mig }, Bytes::new());
                    waiters.push(reply);
                }
            }
            Ok(In::Wire { from, wire }) if from == to => match wire {
                Wire::Leaving { why, .. } => {
                    tracing::info!(pid, node = to, "coming home: {why}");
                    leaving_why = why;
                }
                Wire::StaysHere { why, .. } => {
                    tracing::info!(pid, node = to, "it cannot come home now: {why}");
                    for w in waiters.drain(..) {
                        let _ = w.send(Err(format!(
                            "process {pid} cannot come home now ({why}); it keeps running on node {to}"
                        )));
                    }
                }
                Wire::Proto { msg, .. } if msg.mig() == ret_mig => match msg {
                    Msg::Offer(_)
                        if back.is_none() && {
                            // data read at home for it and not yet delivered would be lost
                            let fds: Vec<i32> = lock(&fds_shared).keys().copied().collect();
                            way.as_ref().is_some_and(|w| w.pushed_back(&fds) > 0)
                        } =>
                    {
                        let why =
                            "data read at home for it is still waiting to be delivered; try again";
                        m.send(
                            to,
                            Lane::Control,
                            &Wire::Proto {
                                msg: Msg::Abort {
                                    mig: ret_mig,
                                    reason: protocol::AbortReason::Cancelled(why.into()),
                                },
                                ident: None,
                            },
                            Bytes::new(),
                        );
                    }
                    Msg::Offer(offer) if back.is_none() => {
                        match crate::gohome::Back::on_offer(m, to, offer, leaving_why.clone()) {
                            Some((mut b, acts)) => {
                                if let Some(r) = lock(&m.table).get_mut(&mig) {
                                    r.state = "coming home".into();
                                }
                                b.act(m, to, acts, &mut shell, &fds_shared);
                                back = Some(b);
                            }
                            None => {
                                for w in waiters.drain(..) {
                                    let _ = w.send(Err(format!(
                                        "process {pid} cannot come home (the return was refused here); it keeps running on node {to}"
                                    )));
                                }
                            }
                        }
                    }
                    msg => {
                        if let Some(b) = back.as_mut() {
                            let acts = b.on_msg(msg);
                            b.act(m, to, acts, &mut shell, &fds_shared);
                        }
                    }
                },
                Wire::Proto { msg, .. } => {
                    pending.extend(home.on_msg(msg, Instant::now()));
                    if let Some(src) = source.as_mut() {
                        match home.state() {
                            protocol::HomeState::Streaming { acked, .. } => src.release(*acked),
                            protocol::HomeState::Offering => {}
                            // the whole image is acknowledged: let the memory go
                            _ => src.release(u64::MAX),
                        }
                        held_peak = held_peak.max(src.peak);
                    }
                }
                Wire::Fwd { msg, .. } => {
                    home.on_sign_of_life(Instant::now());
                    // only when the way was not open (no deputy): nothing serves it
                    match &way {
                        Some(w) => w.on_msg(msg, true),
                        None => match &held_way {
                            Some(w) => w.on_msg(msg, true),
                            None => tracing::debug!(pid, "a forwarded message with no deputy"),
                        },
                    }
                }
                Wire::Signal { .. } | Wire::ComeHome { .. } => {}
                Wire::Stopped { signo, conts, .. } => {
                    home.on_sign_of_life(Instant::now());
                    shared.stopped.store(signo.is_some(), Ordering::SeqCst);
                    // Job control mirrored: the copy stopped, so the parked shell stops by the
                    // same signal (sent by us, let through below), and its parent's
                    // waitpid(WUNTRACED) sees it. A continue needs nothing: the SIGCONT that
                    // continued the copy came through the shell.
                    // Not mirrored: a stale report (a SIGCONT went out since), a shell that is
                    // stopped already, or a stop caused by the deputy's own SIGTTIN/SIGTTOU
                    // (it stopped the shell directly; it may since have been continued).
                    let emulated = signo.is_some_and(|s| s == libc::SIGTTIN || s == libc::SIGTTOU)
                        && shared.tty_stops.load(Ordering::SeqCst) > tty_stops_seen;
                    if emulated {
                        tty_stops_seen += 1;
                    }
                    if let (Some(sig), Some(_), true) = (
                        signo,
                        shell.as_ref(),
                        conts == conts_sent && !emulated && !crate::deputy::is_stopped(pid),
                    ) {
                        tracing::debug!(
                            pid,
                            sig,
                            "the moved process stopped; stopping the home shell"
                        );
                        // SAFETY: kill with integer arguments: our parked, traced process.
                        unsafe { libc::kill(pid, sig) };
                    }
                }
            },
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // calls that took the short way are signs of life too
        if let Some(w) = &way {
            let seen = w.seen.load(Ordering::Relaxed);
            if seen != fwd_seen {
                fwd_seen = seen;
                home.on_sign_of_life(Instant::now());
            }
        }
        pending.extend(home.on_tick(Instant::now()));
        if let Some(b) = back.as_mut() {
            let mut acts = b.on_tick();
            let mut home_now = false;
            let mut failed = None;
            while let Some(ev) = b.next_ev() {
                match ev {
                    crate::gohome::BackEv::Ready => acts.extend(b.on_built(Ok(()))),
                    crate::gohome::BackEv::Running => {
                        b.now_running(m, to);
                        home_now = true;
                    }
                    crate::gohome::BackEv::Failed(sh, e) => {
                        if sh.is_none() {
                            tracing::error!(
                                pid,
                                "coming home failed and the home process was lost: {e}; ending the copy on node {to}"
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
                        }
                        shell = sh;
                        if b.committed() {
                            b.run_failed(m, to, &e);
                        } else {
                            acts.extend(b.on_built(Err(e.clone())));
                        }
                        failed = Some(e);
                    }
                }
            }
            b.act(m, to, acts, &mut shell, &fds_shared);
            if home_now {
                let moves = lock(&m.table).get(&mig).map_or(1, |r| r.moves) + 1;
                lock(&m.came_home).insert(
                    pid,
                    PsRow {
                        pid,
                        node: m.local,
                        home: m.local,
                        state: "home".into(),
                        moves,
                        cmd: ident.cmd.clone(),
                        local_pid: None,
                    },
                );
                lock(&m.table).remove(&mig);
                tracing::info!(pid, node = to, "the process came home ({})", b.why);
                for w in waiters.drain(..) {
                    let _ = w.send(Ok(format!("process {pid} came home from node {to}")));
                }
                drop(opened.take()); // the deputy's worker ends
                drop(way.take());
                // answer a re-sent commit for a little while (our `Running` may be lost)
                let until = Instant::now() + Duration::from_secs(3);
                while let Some(left) = until.checked_duration_since(Instant::now()) {
                    match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                        Ok(In::Wire {
                            wire: Wire::Proto { msg, .. },
                            ..
                        }) if msg.mig() == ret_mig => {
                            let acts = b.on_msg(msg);
                            b.act(m, to, acts, &mut shell, &fds_shared);
                        }
                        Ok(In::ComeHome { reply }) => {
                            let _ = reply.send(Ok(format!("process {pid} is at home")));
                        }
                        Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                return;
            }
            if let Some(e) = failed {
                if let Some(r) = lock(&m.table).get_mut(&mig) {
                    r.state = "running".into();
                }
                for w in waiters.drain(..) {
                    let _ = w.send(Err(format!(
                        "process {pid} could not come home ({e}); it keeps running on node {to}"
                    )));
                }
            }
            if b.is_done() && !b.ran && b.ev_idle() {
                if let Some(r) = lock(&m.table).get_mut(&mig) {
                    r.state = "running".into();
                }
                for w in waiters.drain(..) {
                    let _ = w.send(Err(format!(
                        "process {pid} could not come home; it keeps running on node {to}"
                    )));
                }
                back = None;
            }
        }
        if let Some(sh) = shell.as_mut() {
            crate::deputy::mirror_cwd(pid, sh, &shared);
        }
        if let Some(sh) = shell.as_mut() {
            match sh.next_event(Duration::ZERO) {
                Ok(None) => {}
                Ok(Some(migrate::ShellEvent::Signal { info, held })) => {
                    // Our own stop signals (a mirrored stop, the terminal's SIGTTIN/SIGTTOU
                    // for a background read) act on the shell; the others only on the copy.
                    let ours = info.from_us()
                        && matches!(
                            info.signo,
                            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                        );
                    if held {
                        let _ = if ours { sh.deliver() } else { sh.suppress() };
                    }
                    // Ours are not forwarded (they mirror the copy), except the terminal's
                    // SIGTTIN/SIGTTOU, which the copy must get as the kernel would send it.
                    if !info.from_us() || matches!(info.signo, libc::SIGTTIN | libc::SIGTTOU) {
                        if info.signo == libc::SIGCONT {
                            conts_sent += 1;
                        }
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
                    // Only our own stop signals are let through: the shell stays stopped
                    // (PTRACE_LISTEN) until the job is continued, as the parent expects.
                    tracing::debug!(pid, signo, "the home shell is stopped by job control");
                    if let Err(e) = sh.listen() {
                        tracing::warn!(pid, "home shell: {e}; it runs on");
                        let _ = sh.resume();
                    }
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
                "home" => m.local,
                n => match n.parse::<NodeId>() {
                    Ok(n) => n,
                    Err(_) => {
                        return Response::Error(format!("'{to}' is not a node number or 'home'"));
                    }
                },
            };
            // A process of ours running elsewhere comes home first; moving it on goes via
            // home (see crate::gohome).
            let mut said = Vec::new();
            if let Some((at, _)) = m.moved_to(pid) {
                if at == node {
                    return Response::Error(format!("process {pid} already runs on node {node}"));
                }
                match m.come_home(pid, uid).await {
                    Ok(s) => said.push(s),
                    Err(e) => return Response::Error(e),
                }
                if node == m.local {
                    return Response::Done(said.join("; "));
                }
            } else if to == "home" {
                return Response::Error(format!(
                    "process {pid} does not run on another node (it is at home or not moved by omnode)"
                ));
            }
            match m.migrate(pid, node, uid).await {
                Ok(s) => {
                    said.push(s);
                    Response::Done(said.join("; "))
                }
                Err(e) if said.is_empty() => Response::Error(e),
                Err(e) => Response::Error(format!("{}; then: {e}", said.join("; "))),
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
                // A remote start counts as an exec there (/mfs/lastexec), from before the move
                // (its offer carries it).
                crate::mfsmagic::started_on(pid as u32, to);
                match m2.migrate(pid, to, uid).await {
                    Ok(s) => tracing::info!(pid, "mosrun: {s}"),
                    Err(e) => {
                        crate::mfsmagic::started_here(pid as u32);
                        tracing::warn!(pid, "mosrun: it runs at home: {e}")
                    }
                }
            });
            Response::Done(format!(
                "process {pid} moves to node {to} once it runs its program"
            ))
        }
        _ => Response::Error("not a migration request".into()),
    }
}
