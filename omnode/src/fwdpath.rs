//! The direct ways of forwarded-call messages between the transport's inbox and the threads
//! that act on them, with no migration thread in between.
//!
//! A forwarded call used to cross about eight threads (BENCHMARKS.md, "Migration"): the
//! supervisor, the runtime, the inbox actor, home's migration thread, the deputy's worker, the
//! migration thread again, the runtime, the target's migration thread and the supervisor. Once a
//! deputy or a supervisor runs, its messages take the short way: the inbox (the link's own
//! reader: the migrator is served with `runtime::System::serve_direct`, no actor mailbox)
//! hands a request straight to the deputy's [`DeputyWay`], which runs a call on a regular
//! local file at once when the worker is idle ([`inline_call`]) and queues anything else for
//! the worker; the reply goes out from whoever ran the call, and the remote's inbox hands it
//! straight to the supervisor's channel and eventfd ([`RemoteWay`]). Each way counts what it
//! carried, so the migration threads still see the peer's signs of life.
//!
//! Owns: the table of open ways and what each does with a message.
//! Must not know: the forwarding protocol's rules (`migration::forward`), the migration
//! protocol (`crate::migrator`), how calls are run (`crate::deputy`).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use discovery::NodeId;
use migration::forward::{DeputyAction, DeputyFwd, FwdMsg, Reply, Seq, Tid};
use migration::protocol::MigId;
use runtime::transport::Lane;

use crate::deputy::{Job, Shared};
use crate::migrator::{Migrator, NAME, Wire};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The open ways, by migration.
#[derive(Default)]
pub(crate) struct Paths {
    /// Deputies of this node's moved processes, by migration id.
    deputies: Mutex<HashMap<MigId, Arc<DeputyWay>>>,
    /// Supervisors of guests here, by (home node, migration id).
    remotes: Mutex<HashMap<(NodeId, MigId), RemoteWay>>,
}

impl Paths {
    /// Takes `msg` the short way if one is open; otherwise gives it back for the migration
    /// thread. Never blocks (it runs on the runtime).
    pub(crate) fn deliver(
        &self,
        from: NodeId,
        mig: MigId,
        to_home: bool,
        msg: FwdMsg,
    ) -> Option<FwdMsg> {
        if to_home {
            let way = lock(&self.deputies).get(&mig).cloned();
            match way {
                Some(w) if w.to == from => {
                    w.on_msg(msg, false);
                    None
                }
                _ => Some(msg),
            }
        } else {
            let ways = lock(&self.remotes);
            match ways.get(&(from, mig)) {
                Some(w) => {
                    w.give(msg);
                    None
                }
                None => Some(msg),
            }
        }
    }

    /// Opens the deputy's way; it closes when the returned guard is dropped.
    pub(crate) fn open_deputy(&self, way: Arc<DeputyWay>) -> Opened<'_> {
        let mig = way.mig;
        lock(&self.deputies).insert(mig, way);
        Opened {
            paths: self,
            key: Key::Deputy(mig),
        }
    }

    /// Opens a supervisor's way; it closes when the returned guard is dropped.
    pub(crate) fn open_remote(&self, home: NodeId, mig: MigId, way: RemoteWay) -> Opened<'_> {
        lock(&self.remotes).insert((home, mig), way);
        Opened {
            paths: self,
            key: Key::Remote(home, mig),
        }
    }
}

enum Key {
    Deputy(MigId),
    Remote(NodeId, MigId),
}

/// An open way: closed (messages go to the migration thread again) when dropped.
pub(crate) struct Opened<'a> {
    paths: &'a Paths,
    key: Key,
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        match self.key {
            Key::Deputy(mig) => {
                if let Some(w) = lock(&self.paths.deputies).remove(&mig) {
                    w.close();
                }
            }
            Key::Remote(home, mig) => {
                lock(&self.paths.remotes).remove(&(home, mig));
            }
        }
    }
}

/// The remote's end: replies go into the supervisor's channel and its eventfd is written.
pub(crate) struct RemoteWay {
    pub(crate) tx: mpsc::Sender<FwdMsg>,
    pub(crate) wake: Arc<OwnedFd>,
    /// Messages carried (the target thread's sign of life from home).
    pub(crate) seen: Arc<AtomicU64>,
}

impl RemoteWay {
    /// Hands a message to the supervisor (also from the target's migration thread).
    pub(crate) fn give(&self, msg: FwdMsg) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(msg);
        let one = 1u64;
        // SAFETY: writing 8 bytes from `one` to our own eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// The forwarding machine of one moved process and the messages given to it before it started
/// (sans-IO: what to do comes back as actions). While `held`, messages are kept in arrival
/// order; [`Front::start`] runs them before any later one. So the way can be opened before the
/// remote can send anything on it, and the switch from "not yet" to "serving" keeps the
/// remote's order (an `Unread` and the `Request` after it on the same fd cannot swap).
#[derive(Debug, Default)]
pub(crate) struct Front {
    pub(crate) dep: DeputyFwd,
    held: Option<Vec<FwdMsg>>,
}

impl Front {
    /// A front that holds what it is given until [`Front::start`].
    pub(crate) fn held() -> Front {
        Front {
            dep: DeputyFwd::new(),
            held: Some(Vec::new()),
        }
    }

    /// A message from the remote: held, or given to the machine (`note` sees each message
    /// when the machine does).
    pub(crate) fn on_msg(&mut self, msg: FwdMsg, note: impl FnOnce(&FwdMsg)) -> Vec<DeputyAction> {
        match &mut self.held {
            Some(h) => {
                h.push(msg);
                Vec::new()
            }
            None => {
                note(&msg);
                self.dep.on_msg(msg)
            }
        }
    }

    /// Serving from now on: the held messages first, in the order they came.
    pub(crate) fn start(&mut self, mut note: impl FnMut(&FwdMsg)) -> Vec<DeputyAction> {
        let mut acts = Vec::new();
        for msg in self.held.take().unwrap_or_default() {
            note(&msg);
            acts.extend(self.dep.on_msg(msg));
        }
        acts
    }

    /// Forgets what it holds (the move failed; nothing of it may run).
    pub(crate) fn drop_held(&mut self) {
        if let Some(h) = &mut self.held {
            h.clear();
        }
    }
}

/// The messages to the remote, in the order the machine made them, sent by one sender at a time
/// (sans-IO: the caller sends what [`OutQueue::next`] gives and then calls [`OutQueue::sent`]).
/// A reply replayed from the inbox and a reply from the worker go out in the order they were
/// made, whichever thread sends them.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    q: std::collections::VecDeque<FwdMsg>,
    /// A sender is at work (it takes the next message when it is done).
    busy: bool,
}

impl OutQueue {
    pub(crate) fn push(&mut self, msg: FwdMsg) {
        self.q.push_back(msg);
    }

    /// The next message to send, unless another sender is at work (it sends it then).
    pub(crate) fn next(&mut self) -> Option<FwdMsg> {
        if self.busy {
            return None;
        }
        let m = self.q.pop_front()?;
        self.busy = true;
        Some(m)
    }

    /// The message from [`OutQueue::next`] was sent (or given up).
    pub(crate) fn sent(&mut self) {
        self.busy = false;
    }
}

/// The deputy's front: the forwarding machine of one moved process, shared by the inbox (which
/// hands it requests), the worker (which reports results) and the migration thread. Opened
/// before the offer, held until the process runs there ([`DeputyWay::start`]).
pub(crate) struct DeputyWay {
    /// The node the process runs on.
    pub(crate) to: NodeId,
    pub(crate) mig: MigId,
    front: Mutex<Front>,
    out: Arc<Mutex<OutQueue>>,
    /// To the worker; `None` once the deputy ends (the worker then ends).
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The process's fds at home (the worker's table): a call that cannot wait runs on them
    /// here, without the worker ([`inline_call`]).
    fds: crate::gohome::DeputyFds,
    pub(crate) shared: Arc<Shared>,
    /// Messages carried (home's sign of life from the remote).
    pub(crate) seen: AtomicU64,
    system: runtime::System,
    rt: tokio::runtime::Handle,
}

impl DeputyWay {
    /// A way that holds the remote's messages until [`DeputyWay::start`].
    pub(crate) fn new(
        m: &Migrator,
        to: NodeId,
        mig: MigId,
        jobs: mpsc::Sender<Job>,
        fds: crate::gohome::DeputyFds,
        shared: Arc<Shared>,
    ) -> DeputyWay {
        DeputyWay {
            to,
            mig,
            front: Mutex::new(Front::held()),
            out: Arc::default(),
            jobs: Mutex::new(Some(jobs)),
            fds,
            shared,
            seen: AtomicU64::new(0),
            system: m.system.clone(),
            rt: m.rt.clone(),
        }
    }

    /// The process runs there and its deputy is ready: what came meanwhile is served first, in
    /// order (the caller is not on the runtime).
    pub(crate) fn start(&self) {
        {
            let mut f = lock(&self.front);
            let acts = f.start(|m| crate::deputy::note(&self.shared, m));
            self.act(&mut f, acts);
        }
        self.flush(true);
    }

    /// The move failed: nothing held runs.
    pub(crate) fn drop_held(&self) {
        lock(&self.front).drop_held();
    }

    /// The worker ends after its current call.
    pub(crate) fn close(&self) {
        lock(&self.jobs).take();
    }

    /// Bytes read at home for the process and not yet delivered, on any of `fds`.
    pub(crate) fn pushed_back(&self, fds: &[i32]) -> usize {
        let f = lock(&self.front);
        fds.iter().map(|&fd| f.dep.pushed_back(fd)).sum()
    }

    /// A message from the remote. `may_block`: the caller is not on the runtime.
    pub(crate) fn on_msg(&self, msg: FwdMsg, may_block: bool) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        {
            let mut f = lock(&self.front);
            let acts = f.on_msg(msg, |m| crate::deputy::note(&self.shared, m));
            self.act(&mut f, acts);
        }
        self.flush(may_block);
    }

    /// The worker finished a call (it may block: it is not on the runtime).
    pub(crate) fn done(&self, tid: Tid, seq: Seq, reply: Reply) {
        {
            let mut f = lock(&self.front);
            let acts = f.dep.on_done(tid, seq, reply);
            self.act(&mut f, acts);
        }
        self.flush(true);
    }

    /// Carries out the machine's actions while its lock is held, so messages to the remote are
    /// queued and calls handed to the worker in the machine's order.
    fn act(&self, f: &mut Front, acts: Vec<DeputyAction>) {
        let mut acts = std::collections::VecDeque::from(acts);
        while let Some(a) = acts.pop_front() {
            match a {
                DeputyAction::Send(msg) => lock(&self.out).push(msg),
                DeputyAction::Execute { tid, seq, call } => {
                    let jobs = lock(&self.jobs);
                    // The worker idle (so no earlier call of the process is still running
                    // there) and a call that cannot wait: it runs here and now, one wake-up
                    // less per call (BENCHMARKS.md, "Migration").
                    if jobs.is_some()
                        && self.shared.busy.load(Ordering::SeqCst) == 0
                        && !self.shared.stopped.load(Ordering::SeqCst)
                        && let Some(reply) = inline_call(&self.fds, &call)
                    {
                        drop(jobs);
                        crate::metrics::bump(&crate::metrics::COUNTERS.forwarded_calls);
                        acts.extend(f.dep.on_done(tid, seq, reply));
                        continue;
                    }
                    let sent = jobs.as_ref().is_some_and(|j| {
                        self.shared.busy.fetch_add(1, Ordering::SeqCst);
                        let ok = j.send(Job { tid, seq, call }).is_ok();
                        if !ok {
                            self.shared.busy.fetch_sub(1, Ordering::SeqCst);
                        }
                        ok
                    });
                    drop(jobs);
                    if !sent {
                        acts.extend(f.dep.on_done(tid, seq, Reply::errno(libc::EIO)));
                    }
                }
                // A call held by the worker's waits (input, the foreground) stops waiting.
                DeputyAction::Interrupt { seq, .. } => {
                    self.shared.cancelled.store(seq, Ordering::SeqCst);
                }
            }
        }
    }

    /// Sends what is queued for the remote on the control lane, in order, unless another
    /// sender is at work (it sends it): at once when the lane has room, else bounded by the
    /// send time-out (from a thread), or from one task of the runtime that then sends the rest
    /// (on the runtime).
    fn flush(&self, may_block: bool) {
        let (sys, to, mig, out) = (self.system.clone(), self.to, self.mig, self.out.clone());
        loop {
            let Some(msg) = lock(&out).next() else { return };
            let wire = Wire::Fwd { mig, msg };
            if sys.try_tell(to, NAME, &wire).is_ok() {
                lock(&out).sent();
                continue;
            }
            if may_block {
                self.rt.block_on(tell(&sys, to, &wire));
                lock(&out).sent();
                continue;
            }
            self.rt.spawn(async move {
                let mut wire = wire;
                loop {
                    tell(&sys, to, &wire).await;
                    let mut o = lock(&out);
                    o.sent();
                    match o.next() {
                        Some(msg) => wire = Wire::Fwd { mig, msg },
                        None => return,
                    }
                }
            });
            return;
        }
    }
}

/// Runs `call` at once when it cannot wait or block for long: a read, write, pread, pwrite,
/// lseek or fstat of a regular file on a local disk filesystem (ext4, xfs, btrfs, tmpfs,
/// overlayfs; not FUSE or a network filesystem, which may wait on a server, even on this
/// daemon's own `/mfs`). Such a call needs neither the terminal's job-control check nor the
/// wait for input nor the process's filesystem ids (its fd is open), so it runs exactly as the
/// worker would run it. Anything else: `None` (the worker runs it).
fn inline_call(fds: &crate::gohome::DeputyFds, call: &migration::forward::Call) -> Option<Reply> {
    use migration::forward::Call;
    let fd = match call {
        Call::Read { fd, .. }
        | Call::Write { fd, .. }
        | Call::Pread { fd, .. }
        | Call::Pwrite { fd, .. }
        | Call::Lseek { fd, .. }
        | Call::Fstat { fd } => *fd,
        _ => return None,
    };
    let mut table = lock(fds);
    let raw = table.get(&fd)?.as_raw_fd();
    // The filesystem first, from /proc alone: fstat or fstatfs on a FUSE file asks its server,
    // which for this daemon's own /mfs may need the very link whose reader runs this (a
    // deadlock that stalled heartbeats in CI).
    if !on_local_disk(raw) {
        return None;
    }
    // SAFETY: fstat into a zeroed struct stat, on an fd of the table (held open by the lock).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(raw, &mut st) } < 0 || st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    Some(migration::standin::execute_at(&mut table, None, call))
}

/// Whether our fd `raw` is on a local disk filesystem (ext2/3/4, xfs, btrfs, tmpfs, overlay),
/// read from /proc only (its mount id in fdinfo, that mount's type in mountinfo), so that no
/// filesystem server is asked. Anything unreadable: `false` (the worker runs the call).
fn on_local_disk(raw: std::os::fd::RawFd) -> bool {
    const LOCAL_DISK: [&str; 7] = ["ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay"];
    let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")) else {
        return false;
    };
    let Some(mnt) = info.lines().find_map(|l| l.strip_prefix("mnt_id:")) else {
        return false;
    };
    let mnt = mnt.trim();
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // "ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER"
    mounts.lines().any(|l| {
        l.split(' ').next() == Some(mnt)
            && l.split(" - ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .is_some_and(|t| LOCAL_DISK.contains(&t))
    })
}

async fn tell(sys: &runtime::System, to: NodeId, wire: &Wire) {
    if let Err(e) = sys
        .tell_on(Lane::Control, to, NAME, wire, Bytes::new())
        .await
    {
        tracing::debug!(node = to, "forwarded-call reply not sent: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migration::forward::Call;

    fn read(seq: Seq) -> FwdMsg {
        FwdMsg::Request {
            tid: 1,
            seq,
            call: Call::Read { fd: 0, len: 2 },
        }
    }

    fn unread() -> FwdMsg {
        FwdMsg::Unread {
            fd: 0,
            data: Bytes::from_static(b"xy"),
        }
    }

    /// What the remote sent before the deputy started is served first, in its order: the
    /// bytes it gave back (`Unread`) answer the read it sent after them, and a request that
    /// comes after the start is handled after the held ones.
    #[test]
    fn held_messages_run_first_and_in_the_order_they_came() {
        let mut f = Front::held();
        let mut noted = Vec::new();
        assert!(
            f.on_msg(unread(), |_| panic!("noted while held"))
                .is_empty()
        );
        assert!(f.on_msg(read(1), |_| panic!("noted while held")).is_empty());
        let acts = f.start(|m| noted.push(m.clone()));
        assert_eq!(noted, vec![unread(), read(1)]);
        assert_eq!(
            acts,
            vec![DeputyAction::Send(FwdMsg::Reply {
                tid: 1,
                seq: 1,
                reply: Reply::data(Bytes::from_static(b"xy")),
            })]
        );
        // started: a later request runs at once, after the held ones
        let acts = f.on_msg(read(2), |_| {});
        assert!(
            matches!(acts.as_slice(), [DeputyAction::Execute { seq: 2, .. }]),
            "{acts:?}"
        );
        // swapped (the bug this prevents): the read runs on the real fd, the bytes wait
        let mut g = Front::held();
        g.on_msg(read(1), |_| {});
        g.on_msg(unread(), |_| {});
        assert!(matches!(
            g.start(|_| {}).as_slice(),
            [DeputyAction::Execute { seq: 1, .. }]
        ));
    }

    /// A call on a regular file of a local disk filesystem runs at once, exactly as the worker
    /// would run it (the bytes land in the file at its shared offset); a call on a pipe, or a
    /// call that is not a plain file call, is left to the worker.
    #[test]
    fn only_plain_calls_on_local_regular_files_run_inline() {
        use std::io::{Read, Seek};
        use std::os::fd::OwnedFd;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::File::create(&path).unwrap();
        let (pr, pw) = nix::unistd::pipe().unwrap();
        let fds: crate::gohome::DeputyFds = Arc::new(Mutex::new(HashMap::from([
            (3, OwnedFd::from(file.try_clone().unwrap())),
            (4, pw),
        ])));
        let write = |fd| Call::Write {
            fd,
            data: Bytes::from_static(b"hello"),
        };
        let local = matches!(
            nix::sys::statfs::fstatfs(&file).map(|s| s.filesystem_type().0),
            Ok(0xEF53 | 0x5846_5342 | 0x9123_683E | 0x0102_1994 | 0x794C_7630)
        );
        match inline_call(&fds, &write(3)) {
            Some(r) => {
                assert!(local, "ran inline on a filesystem not in the list");
                assert_eq!(r.ret, 5);
                let mut got = String::new();
                std::fs::File::open(&path)
                    .unwrap()
                    .read_to_string(&mut got)
                    .unwrap();
                assert_eq!(got, "hello");
                // the offset is the file's own (shared with the process's other holders)
                assert_eq!((&file).stream_position().unwrap(), 5);
            }
            None => assert!(!local, "a write to a local regular file went to the worker"),
        }
        assert!(inline_call(&fds, &write(4)).is_none(), "a pipe may block");
        assert!(inline_call(&fds, &write(9)).is_none(), "no such fd here");
        assert!(inline_call(&fds, &Call::Close { fd: 3 }).is_none());
        let mut nothing = [0u8; 1];
        nix::fcntl::fcntl(
            &pr,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        assert!(
            nix::unistd::read(&pr, &mut nothing).is_err(),
            "nothing was written to the pipe"
        );
    }

    #[test]
    fn a_failed_move_drops_what_was_held() {
        let mut f = Front::held();
        f.on_msg(read(1), |_| {});
        f.drop_held();
        assert!(f.start(|_| {}).is_empty());
    }

    /// One sender at a time: a message queued while another is being sent waits for it, so a
    /// replayed reply (queued by the inbox) and the next reply (by the worker) keep their order.
    #[test]
    fn the_out_queue_gives_one_message_at_a_time_in_order() {
        let reply = |seq| FwdMsg::Reply {
            tid: 1,
            seq,
            reply: Reply::ok(0),
        };
        let mut q = OutQueue::default();
        q.push(reply(1));
        assert_eq!(q.next(), Some(reply(1)));
        q.push(reply(2));
        q.push(reply(3));
        assert_eq!(q.next(), None, "a second sender while the first is at work");
        q.sent();
        assert_eq!(q.next(), Some(reply(2)));
        q.sent();
        assert_eq!(q.next(), Some(reply(3)));
        q.sent();
        assert_eq!(q.next(), None);
    }
}
