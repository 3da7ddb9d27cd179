//! The forwarding protocol between the remote supervisor and the home deputy, sans-IO.
//!
//! [`RemoteFwd`] (on the remote) turns trapped calls on home-backed fds into [`FwdMsg::Request`]s
//! and replies into answers to the kernel; [`DeputyFwd`] (at home) decides which requests to
//! execute on the real fds and which to answer from memory. Neither does any I/O: the shells
//! (`crate::remote` on the remote, the deputy at home) carry out the actions.
//!
//! # The two pitfalls of cancelled notifications (deputy-facts §5)
//! A signal to the trapped thread cancels its pending notification: `ID_VALID`/`SEND` fail with
//! ENOENT, and with `SA_RESTART` the kernel restarts the call as a **new** notification (new id,
//! same arguments); without it the thread gets EINTR and carries on.
//! - **A write is never done twice.** Requests carry a sequence number; a restarted call (same
//!   thread, same [`CallKey`]) that arrives while the request is in flight is attached to it
//!   instead of being sent again, and a result that could not be delivered (SEND failed) is kept
//!   per thread and replayed to the restarted call without asking home again. The deputy
//!   remembers each thread's last reply and replays it to a duplicated request.
//! - **A read never loses data.** Data read at home but not delivered (the notification was
//!   cancelled and the thread went on to another call, or the buffer was refused) is sent back
//!   ([`FwdMsg::Unread`]) and the deputy keeps it in a per-fd push-back buffer, served before
//!   the real fd on the next read. While a read whose caller went away is still running at home
//!   (e.g. blocked on a terminal), the remote asks the deputy to interrupt it
//!   ([`FwdMsg::Cancel`]) and holds back further calls on that fd until its result has come back
//!   and been pushed back, so the bytes keep their order.
//!
//! Known limits: push-back is keyed by fd number, not by open file description (a dup'ed fd has
//! its own buffer); a write completed at home whose thread then got EINTR (no `SA_RESTART`)
//! reports EINTR although the bytes were written (`SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV`
//! avoids this for regular files, at the price of delaying signals).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// A thread id on the remote (the notification's `pid` field).
pub type Tid = u32;
/// A request's sequence number, unique per remote process.
pub type Seq = u64;

/// A trapped call as the kernel shows it: a restarted call has the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallKey {
    pub nr: i64,
    pub args: [u64; 6],
}

/// A call to run at home, with the data it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    Read {
        fd: i32,
        len: u64,
    },
    Write {
        fd: i32,
        data: Bytes,
    },
    Pread {
        fd: i32,
        len: u64,
        offset: i64,
    },
    Pwrite {
        fd: i32,
        data: Bytes,
        offset: i64,
    },
    Lseek {
        fd: i32,
        offset: i64,
        whence: i32,
    },
    /// Returns the `struct stat` bytes in the reply's data.
    Fstat {
        fd: i32,
    },
    Close {
        fd: i32,
    },
    /// The identity of the regular file behind home fd `fd` ([`crate::mapfile::FileId`], its
    /// bytes in the reply's data): the remote maps an identical local file instead of coming
    /// home. Not a regular file, too large or unreadable: an errno.
    FileId {
        fd: i32,
    },
    /// A path call, run at home (relative paths against home's cwd / `dirfd`); the new fd
    /// gets number `at` at home (the remote picks the lowest number free in the process, so
    /// both sides agree on it).
    Openat {
        dirfd: i32,
        path: Bytes,
        flags: i32,
        mode: u32,
        at: i32,
    },
    /// Any other call run at home by number, its memory arguments marshalled by the table in
    /// [`crate::homecall`] (path calls, ioctls and other calls on home-backed fds); the reply's
    /// data holds the filled buffers in argument order.
    Sys {
        nr: i64,
        args: Vec<crate::homecall::Arg>,
    },
}

impl Call {
    /// The home fd the call works on, if any.
    pub fn fd(&self) -> Option<i32> {
        match self {
            Call::Read { fd, .. }
            | Call::Write { fd, .. }
            | Call::Pread { fd, .. }
            | Call::Pwrite { fd, .. }
            | Call::Lseek { fd, .. }
            | Call::Fstat { fd }
            | Call::FileId { fd }
            | Call::Close { fd } => Some(*fd),
            Call::Openat { dirfd, .. } => (*dirfd >= 0).then_some(*dirfd),
            Call::Sys { args, .. } => args.iter().find_map(|a| match a {
                crate::homecall::Arg::Fd(fd) => Some(*fd),
                _ => None,
            }),
        }
    }

    /// Reads that consume a stream position (their data must never be lost).
    fn consuming_read_fd(&self) -> Option<i32> {
        match self {
            Call::Read { fd, .. } => Some(*fd),
            _ => None,
        }
    }
}

/// The result of a call: `ret` as the kernel returns it (negative errno on failure) and the
/// bytes to copy into the caller's buffer (reads, fstat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ret: i64,
    pub data: Bytes,
}

impl Reply {
    pub fn ok(ret: i64) -> Reply {
        Reply {
            ret,
            data: Bytes::new(),
        }
    }
    pub fn errno(e: i32) -> Reply {
        Reply::ok(-i64::from(e))
    }
    pub fn data(data: Bytes) -> Reply {
        Reply {
            ret: data.len() as i64,
            data,
        }
    }
}

/// The wire messages between remote and deputy (control lane, ordered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FwdMsg {
    /// remote → home: run this call.
    Request { tid: Tid, seq: Seq, call: Call },
    /// home → remote: its result.
    Reply { tid: Tid, seq: Seq, reply: Reply },
    /// remote → home: the caller went away; interrupt the call if it is still running (its
    /// reply is still expected).
    Cancel { tid: Tid, seq: Seq },
    /// remote → home: these bytes read from `fd` were never delivered; serve them first.
    Unread { fd: i32, data: Bytes },
    /// remote → home, before a call on a terminal whenever it changed: whether the moved
    /// process ignores or blocks SIGTTIN / SIGTTOU (the deputy's job-control decision needs it,
    /// see [`crate::jobctl`]).
    TtySigs { ttin_off: bool, ttou_off: bool },
}

// ---------------------------------------------------------------------------------------------
// Remote side
// ---------------------------------------------------------------------------------------------

/// What the remote shell has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteAction {
    /// Send to the deputy.
    Send(FwdMsg),
    /// Answer notification `notif` of thread `tid`: check ID_VALID, copy `reply.data` into the
    /// caller's buffer, SEND `reply.ret`; then report with [`RemoteFwd::on_answered`].
    Answer { notif: u64, tid: Tid, reply: Reply },
    /// The call of notification `notif` was given up at home before it did anything (see
    /// [`RemoteFwd::interrupt_all`]): leave it unanswered; the caller still waits at it, and the
    /// call is made again (at home once the process is there, or forwarded anew).
    Unanswered { notif: u64, tid: Tid },
}

/// How answering a notification went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The thread got the result.
    Delivered,
    /// The notification was cancelled (ID_VALID or SEND gave ENOENT): the result was not
    /// delivered; a restarted call will get it.
    Cancelled,
    /// The data could not be copied into the caller (EFAULT); the shell answered the error
    /// itself. Read data goes back home.
    DataRefused,
}

#[derive(Debug, Clone)]
struct Pending {
    tid: Tid,
    key: CallKey,
    read_fd: Option<i32>,
    /// The notification waiting for the result; None once its caller went away (orphan).
    notif: Option<u64>,
}

#[derive(Debug, Clone)]
struct Deferred {
    tid: Tid,
    notif: u64,
    key: CallKey,
    call: Call,
}

/// A result handed out for delivery, until the shell says how it went.
#[derive(Debug, Clone)]
struct Delivering {
    tid: Tid,
    key: CallKey,
    reply: Reply,
    read_fd: Option<i32>,
}

/// The remote end of the forwarding protocol for one process. See the module documentation.
#[derive(Debug, Default)]
pub struct RemoteFwd {
    next_seq: Seq,
    pending: BTreeMap<Seq, Pending>,
    /// Each thread's request in flight whose caller still waits.
    current: HashMap<Tid, Seq>,
    delivering: HashMap<u64, Delivering>,
    /// Results that were computed but not delivered, per thread.
    unanswered: HashMap<Tid, Delivering>,
    /// fds with an orphaned read still running at home: further calls on them wait.
    held_fds: HashSet<i32>,
    deferred: VecDeque<Deferred>,
    /// Requests home was asked to give up while their callers still wait
    /// ([`RemoteFwd::interrupt_all`]).
    interrupting: HashSet<Seq>,
}

impl RemoteFwd {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests in flight (for tests and `mps`).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The process is to be frozen (for its way home) while calls forwarded home are in flight,
    /// e.g. a read waiting at home for input that does not come: asks the deputy to give each
    /// up. Their callers keep waiting. A result that comes back anyway (the call had finished)
    /// is delivered as usual; one given up before it did anything (`EINTR`, the deputy's
    /// answer to an interrupted wait) becomes [`RemoteAction::Unanswered`]: never a wrong
    /// `EINTR` to the process, which makes the call again where it next runs.
    pub fn interrupt_all(&mut self) -> Vec<RemoteAction> {
        let mut out = Vec::new();
        for (&seq, p) in &self.pending {
            if p.notif.is_some() && self.interrupting.insert(seq) {
                out.push(RemoteAction::Send(FwdMsg::Cancel { tid: p.tid, seq }));
            }
        }
        out
    }

    fn unread(out: &mut Vec<RemoteAction>, d: Delivering) {
        if let Some(fd) = d.read_fd
            && !d.data_is_empty()
        {
            out.push(RemoteAction::Send(FwdMsg::Unread {
                fd,
                data: d.reply.data,
            }));
        }
    }

    /// Thread `tid` trapped a call on a home-backed fd (or a path call) as notification
    /// `notif`.
    pub fn on_call(&mut self, tid: Tid, notif: u64, key: CallKey, call: Call) -> Vec<RemoteAction> {
        let mut out = Vec::new();
        // 1. A result this thread never received: the restart gets it; anything else means the
        //    thread moved on and read data goes back home.
        if let Some(d) = self.unanswered.remove(&tid) {
            if d.key == key {
                self.delivering.insert(notif, d.clone());
                out.push(RemoteAction::Answer {
                    notif,
                    tid,
                    reply: d.reply,
                });
                return out;
            }
            Self::unread(&mut out, d);
        }
        // 2. The thread's request still in flight: a restart attaches to it; another call
        //    orphans it.
        if let Some(&seq) = self.current.get(&tid) {
            let p = self
                .pending
                .get_mut(&seq)
                .expect("current request is pending");
            if p.key == key {
                p.notif = Some(notif);
                return out;
            }
            p.notif = None;
            if let Some(fd) = p.read_fd {
                self.held_fds.insert(fd);
            }
            self.current.remove(&tid);
            out.push(RemoteAction::Send(FwdMsg::Cancel { tid, seq }));
        }
        // 3. A call of this thread waiting for a held fd: a restart replaces it, another call
        //    drops it (it was never sent).
        self.deferred.retain(|d| d.tid != tid);
        let d = Deferred {
            tid,
            notif,
            key,
            call,
        };
        if d.call.fd().is_some_and(|fd| self.held_fds.contains(&fd)) {
            self.deferred.push_back(d);
        } else {
            self.send_request(d, &mut out);
        }
        out
    }

    fn send_request(&mut self, d: Deferred, out: &mut Vec<RemoteAction>) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.pending.insert(
            seq,
            Pending {
                tid: d.tid,
                key: d.key,
                read_fd: d.call.consuming_read_fd(),
                notif: Some(d.notif),
            },
        );
        self.current.insert(d.tid, seq);
        out.push(RemoteAction::Send(FwdMsg::Request {
            tid: d.tid,
            seq,
            call: d.call,
        }));
    }

    /// A message from the deputy.
    pub fn on_msg(&mut self, msg: FwdMsg) -> Vec<RemoteAction> {
        let FwdMsg::Reply { tid, seq, reply } = msg else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Some(p) = self.pending.remove(&seq) else {
            return out; // duplicate or unknown: already handled
        };
        if p.tid != tid {
            // A confused peer: keep the request (its real reply may still come).
            self.pending.insert(seq, p);
            return out;
        }
        if self.current.get(&tid) == Some(&seq) {
            self.current.remove(&tid);
        }
        if self.interrupting.remove(&seq)
            && reply.ret == -i64::from(libc::EINTR)
            && let Some(notif) = p.notif
        {
            out.push(RemoteAction::Unanswered { notif, tid });
            return out;
        }
        let d = Delivering {
            tid,
            key: p.key,
            reply,
            read_fd: p.read_fd,
        };
        match p.notif {
            Some(notif) => {
                out.push(RemoteAction::Answer {
                    notif,
                    tid,
                    reply: d.reply.clone(),
                });
                self.delivering.insert(notif, d);
            }
            None => {
                // Orphan: its caller went away. Read data goes back, then the fd is free.
                let fd = d.read_fd;
                Self::unread(&mut out, d);
                if let Some(fd) = fd {
                    self.held_fds.remove(&fd);
                    self.release_deferred(&mut out);
                }
            }
        }
        out
    }

    fn release_deferred(&mut self, out: &mut Vec<RemoteAction>) {
        let mut still = VecDeque::new();
        while let Some(d) = self.deferred.pop_front() {
            if d.call.fd().is_some_and(|fd| self.held_fds.contains(&fd)) {
                still.push_back(d);
            } else {
                self.send_request(d, out);
            }
        }
        self.deferred = still;
    }

    /// How answering `notif` went (after an [`RemoteAction::Answer`]).
    pub fn on_answered(&mut self, notif: u64, how: Answered) -> Vec<RemoteAction> {
        let mut out = Vec::new();
        let Some(d) = self.delivering.remove(&notif) else {
            return out;
        };
        match how {
            Answered::Delivered => {}
            Answered::Cancelled => {
                if let Some(old) = self.unanswered.insert(d.tid, d) {
                    Self::unread(&mut out, old);
                }
            }
            Answered::DataRefused => Self::unread(&mut out, d),
        }
        out
    }

    /// The thread exited (or the process ended): undelivered read data goes back home.
    pub fn on_thread_gone(&mut self, tid: Tid) -> Vec<RemoteAction> {
        let mut out = Vec::new();
        if let Some(d) = self.unanswered.remove(&tid) {
            Self::unread(&mut out, d);
        }
        self.deferred.retain(|d| d.tid != tid);
        if let Some(seq) = self.current.remove(&tid) {
            if let Some(p) = self.pending.get_mut(&seq) {
                p.notif = None;
                if let Some(fd) = p.read_fd {
                    self.held_fds.insert(fd);
                }
            }
            out.push(RemoteAction::Send(FwdMsg::Cancel { tid, seq }));
        }
        out
    }
}

impl Delivering {
    fn data_is_empty(&self) -> bool {
        self.reply.ret <= 0 || self.reply.data.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// Deputy side
// ---------------------------------------------------------------------------------------------

/// What the deputy shell has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeputyAction {
    /// Send to the remote.
    Send(FwdMsg),
    /// Run `call` on the real fd (in the home process's context); report with
    /// [`DeputyFwd::on_done`].
    Execute { tid: Tid, seq: Seq, call: Call },
    /// Interrupt the running call (e.g. signal the worker blocked in it); it still reports.
    Interrupt { tid: Tid, seq: Seq },
}

/// The home end of the forwarding protocol for one process. See the module documentation.
#[derive(Debug, Default)]
pub struct DeputyFwd {
    pushback: HashMap<i32, VecDeque<Bytes>>,
    /// Each thread's last reply, replayed to a duplicated request.
    last: HashMap<Tid, (Seq, Reply)>,
    running: HashSet<(Tid, Seq)>,
}

impl DeputyFwd {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes waiting in `fd`'s push-back buffer.
    pub fn pushed_back(&self, fd: i32) -> usize {
        self.pushback
            .get(&fd)
            .map_or(0, |q| q.iter().map(Bytes::len).sum())
    }

    fn take_pushback(&mut self, fd: i32, len: u64) -> Option<Bytes> {
        let q = self.pushback.get_mut(&fd)?;
        let mut want = usize::try_from(len).unwrap_or(usize::MAX);
        if want == 0 || q.is_empty() {
            return None;
        }
        let mut out = BytesMut::new();
        while want > 0 {
            let Some(mut front) = q.pop_front() else {
                break;
            };
            if front.len() > want {
                let rest = front.split_off(want);
                q.push_front(rest);
            }
            want -= front.len();
            out.extend_from_slice(&front);
        }
        if q.is_empty() {
            self.pushback.remove(&fd);
        }
        Some(out.freeze())
    }

    /// A message from the remote.
    pub fn on_msg(&mut self, msg: FwdMsg) -> Vec<DeputyAction> {
        match msg {
            FwdMsg::Request { tid, seq, call } => {
                if let Some((last_seq, reply)) = self.last.get(&tid) {
                    if *last_seq == seq {
                        return vec![DeputyAction::Send(FwdMsg::Reply {
                            tid,
                            seq,
                            reply: reply.clone(),
                        })];
                    }
                    if *last_seq > seq {
                        return Vec::new();
                    }
                }
                if self.running.contains(&(tid, seq)) {
                    return Vec::new();
                }
                match &call {
                    Call::Read { fd, len } => {
                        if let Some(data) = self.take_pushback(*fd, *len) {
                            return self.on_done(tid, seq, Reply::data(data));
                        }
                    }
                    Call::Close { fd } => {
                        self.pushback.remove(fd);
                    }
                    _ => {}
                }
                self.running.insert((tid, seq));
                vec![DeputyAction::Execute { tid, seq, call }]
            }
            FwdMsg::Cancel { tid, seq } => {
                if self.running.contains(&(tid, seq)) {
                    vec![DeputyAction::Interrupt { tid, seq }]
                } else {
                    Vec::new()
                }
            }
            FwdMsg::Unread { fd, data } => {
                if !data.is_empty() {
                    self.pushback.entry(fd).or_default().push_front(data);
                }
                Vec::new()
            }
            FwdMsg::Reply { .. } | FwdMsg::TtySigs { .. } => Vec::new(),
        }
    }

    /// A call finished at home (also after an interrupt, with whatever it got).
    pub fn on_done(&mut self, tid: Tid, seq: Seq, reply: Reply) -> Vec<DeputyAction> {
        self.running.remove(&(tid, seq));
        self.last.insert(tid, (seq, reply.clone()));
        vec![DeputyAction::Send(FwdMsg::Reply { tid, seq, reply })]
    }
}

#[cfg(test)]
mod tests;
