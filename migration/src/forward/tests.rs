//! Deterministic tests of the two cancelled-notification pitfalls, with a simulated home fd
//! (a pipe as a byte queue, a file as a byte vector) behind the deputy.

use super::*;
use proptest::prelude::*;

fn key(nr: i64, buf: u64, len: u64) -> CallKey {
    CallKey {
        nr,
        args: [0, buf, len, 0, 0, 0],
    }
}

const READ: i64 = 0;
const WRITE: i64 = 1;

/// Home: fd 0 a pipe, fd 1 a file; counts the writes executed.
#[derive(Default)]
struct HomeFds {
    pipe: VecDeque<u8>,
    file: Vec<u8>,
    writes_done: usize,
    reads_done: usize,
}

impl HomeFds {
    fn execute(&mut self, call: &Call) -> Reply {
        match call {
            Call::Read { fd: 0, len } => {
                self.reads_done += 1;
                let n = (*len as usize).min(self.pipe.len());
                Reply::data(self.pipe.drain(..n).collect::<Vec<u8>>().into())
            }
            Call::Write { fd: 1, data } => {
                self.writes_done += 1;
                self.file.extend_from_slice(data);
                Reply::ok(data.len() as i64)
            }
            other => panic!("unexpected call {other:?}"),
        }
    }
}

/// Runs the deputy on `msgs`, executing at once; returns what it sends back.
fn deputy_round(dep: &mut DeputyFwd, home: &mut HomeFds, msgs: Vec<FwdMsg>) -> Vec<FwdMsg> {
    let mut back = Vec::new();
    for m in msgs {
        for a in dep.on_msg(m) {
            match a {
                DeputyAction::Send(m) => back.push(m),
                DeputyAction::Execute { tid, seq, call } => {
                    let r = home.execute(&call);
                    for a in dep.on_done(tid, seq, r) {
                        let DeputyAction::Send(m) = a else { panic!() };
                        back.push(m);
                    }
                }
                DeputyAction::Interrupt { .. } => {}
            }
        }
    }
    back
}

fn sends(acts: &[RemoteAction]) -> Vec<FwdMsg> {
    acts.iter()
        .filter_map(|a| match a {
            RemoteAction::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn answers(acts: &[RemoteAction]) -> Vec<(u64, Reply)> {
    acts.iter()
        .filter_map(|a| match a {
            RemoteAction::Answer { notif, reply, .. } => Some((*notif, reply.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn write_done_at_home_but_not_delivered_is_replayed_never_written_twice() {
    let (mut rem, mut dep, mut home) = (RemoteFwd::new(), DeputyFwd::new(), HomeFds::default());
    let call = Call::Write {
        fd: 1,
        data: Bytes::from_static(b"first"),
    };
    let k = key(WRITE, 0x1000, 5);
    let acts = rem.on_call(7, 1, k, call.clone());
    let replies = deputy_round(&mut dep, &mut home, sends(&acts));
    let mut answered = Vec::new();
    for r in replies {
        answered.extend(answers(&rem.on_msg(r)));
    }
    assert_eq!(answered, vec![(1, Reply::ok(5))]);
    // A signal arrived meanwhile: SEND says ENOENT.
    assert!(rem.on_answered(1, Answered::Cancelled).is_empty());
    // SA_RESTART: the same call comes back as notification 2 and is answered from memory.
    let acts = rem.on_call(7, 2, k, call.clone());
    assert!(
        sends(&acts).is_empty(),
        "the write must not be sent home again: {acts:?}"
    );
    assert_eq!(answers(&acts), vec![(2, Reply::ok(5))]);
    rem.on_answered(2, Answered::Delivered);
    assert_eq!(home.file, b"first");
    assert_eq!(home.writes_done, 1);

    // The next write (a new call, same buffer and length) is a new request and is executed.
    let acts = rem.on_call(7, 3, k, call);
    let replies = deputy_round(&mut dep, &mut home, sends(&acts));
    assert_eq!(replies.len(), 1);
    assert_eq!(home.file, b"firstfirst");
    assert_eq!(home.writes_done, 2);
}

#[test]
fn restart_while_the_write_is_in_flight_attaches_to_it() {
    let (mut rem, mut dep, mut home) = (RemoteFwd::new(), DeputyFwd::new(), HomeFds::default());
    let call = Call::Write {
        fd: 1,
        data: Bytes::from_static(b"abc"),
    };
    let k = key(WRITE, 0x2000, 3);
    let first = sends(&rem.on_call(7, 1, k, call.clone()));
    assert_eq!(first.len(), 1);
    // Cancelled before home answered, restarted as notification 2: nothing new goes home.
    assert!(rem.on_call(7, 2, k, call).is_empty());
    assert_eq!(rem.in_flight(), 1);
    let replies = deputy_round(&mut dep, &mut home, first.clone());
    let acts = rem.on_msg(replies[0].clone());
    assert_eq!(answers(&acts), vec![(2, Reply::ok(3))]);
    // The request duplicated on the wire (e.g. re-sent after a reconnect) is replayed.
    let again = deputy_round(&mut dep, &mut home, first);
    assert_eq!(again, replies);
    assert_eq!(home.writes_done, 1);
    assert_eq!(home.file, b"abc");
    // A duplicated reply is ignored.
    assert!(rem.on_msg(replies[0].clone()).is_empty());
}

#[test]
fn read_interrupted_without_restart_pushes_the_data_back() {
    let (mut rem, mut dep, mut home) = (RemoteFwd::new(), DeputyFwd::new(), HomeFds::default());
    home.pipe.extend(b"hello world");
    let acts = rem.on_call(7, 1, key(READ, 0x3000, 5), Call::Read { fd: 0, len: 5 });
    let replies = deputy_round(&mut dep, &mut home, sends(&acts));
    let acts = rem.on_msg(replies[0].clone());
    assert_eq!(answers(&acts)[0].1.data, &b"hello"[..]);
    // No SA_RESTART: the thread got EINTR and reads again into another buffer.
    rem.on_answered(1, Answered::Cancelled);
    let acts = rem.on_call(7, 2, key(READ, 0x4000, 64), Call::Read { fd: 0, len: 64 });
    let out = sends(&acts);
    assert!(matches!(&out[0], FwdMsg::Unread { fd: 0, data } if data == &b"hello"[..]));
    let replies = deputy_round(&mut dep, &mut home, out);
    let got = answers(&rem.on_msg(replies[0].clone()));
    assert_eq!(got[0].1.data, &b"hello"[..], "pushed-back bytes come first");
    assert_eq!(home.reads_done, 1, "served from the push-back buffer");
    rem.on_answered(2, Answered::Delivered);
    let acts = rem.on_call(7, 3, key(READ, 0x4000, 64), Call::Read { fd: 0, len: 64 });
    let replies = deputy_round(&mut dep, &mut home, sends(&acts));
    assert_eq!(
        answers(&rem.on_msg(replies[0].clone()))[0].1.data,
        &b" world"[..]
    );
}

#[test]
fn refused_buffer_sends_read_data_back() {
    let (mut rem, mut dep, mut home) = (RemoteFwd::new(), DeputyFwd::new(), HomeFds::default());
    home.pipe.extend(b"xyz");
    let acts = rem.on_call(7, 1, key(READ, 0x3000, 3), Call::Read { fd: 0, len: 3 });
    let replies = deputy_round(&mut dep, &mut home, sends(&acts));
    rem.on_msg(replies[0].clone());
    let back = sends(&rem.on_answered(1, Answered::DataRefused));
    deputy_round(&mut dep, &mut home, back);
    assert_eq!(dep.pushed_back(0), 3);
}

#[test]
fn orphaned_blocking_read_is_cancelled_and_later_calls_on_that_fd_wait_for_its_bytes() {
    let (mut rem, mut dep, mut home) = (RemoteFwd::new(), DeputyFwd::new(), HomeFds::default());
    // Thread 7 reads fd 0; home finds the pipe empty and blocks.
    let req = sends(&rem.on_call(7, 1, key(READ, 0x3000, 8), Call::Read { fd: 0, len: 8 }));
    let acts = dep.on_msg(req[0].clone());
    let [DeputyAction::Execute { tid, seq, call }] = acts.as_slice() else {
        panic!("{acts:?}")
    };
    let (tid, seq, call) = (*tid, *seq, call.clone());
    // A signal: its handler runs (no restart) and reads fd 0 again, into another buffer.
    let acts = rem.on_call(7, 2, key(READ, 0x5000, 8), Call::Read { fd: 0, len: 8 });
    assert_eq!(sends(&acts), vec![FwdMsg::Cancel { tid: 7, seq }]);
    // Meanwhile another thread writes fd 1: not held back.
    let w = sends(&rem.on_call(
        8,
        3,
        key(WRITE, 0x6000, 2),
        Call::Write {
            fd: 1,
            data: Bytes::from_static(b"ok"),
        },
    ));
    assert!(matches!(w[..], [FwdMsg::Request { tid: 8, .. }]));
    // The cancel makes the deputy interrupt the blocked read, which returns what arrived.
    assert_eq!(
        dep.on_msg(FwdMsg::Cancel { tid: 7, seq }),
        vec![DeputyAction::Interrupt { tid: 7, seq }]
    );
    home.pipe.extend(b"data");
    let r = home.execute(&call);
    let reply = dep.on_done(tid, seq, r);
    let DeputyAction::Send(reply) = reply[0].clone() else {
        panic!()
    };
    // The orphan's bytes go back first, then the held read is sent.
    let out = sends(&rem.on_msg(reply));
    assert!(
        matches!(&out[0], FwdMsg::Unread { fd: 0, data } if data == &b"data"[..]),
        "{out:?}"
    );
    assert!(matches!(
        &out[1],
        FwdMsg::Request {
            tid: 7,
            call: Call::Read { fd: 0, .. },
            ..
        }
    ));
    home.pipe.extend(b"more");
    let replies = deputy_round(&mut dep, &mut home, out);
    let got = answers(&rem.on_msg(replies[0].clone()));
    assert_eq!(got, vec![(2, Reply::data(Bytes::from_static(b"data")))]);
}

/// Bytes the deputy holds for fd 0, in order (test helper).
fn drain_pushback(dep: &mut DeputyFwd) -> Vec<u8> {
    dep.take_pushback(0, u64::MAX)
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

#[derive(Debug, Clone)]
enum Op {
    /// Deliver everything on the wire.
    Deliver,
    /// Finish the oldest call running at home.
    Complete,
    /// A signal to the thread; `restart` says whether its call restarts (SA_RESTART).
    Signal { restart: bool },
    /// The idle thread starts a new read of `len` bytes.
    Read { len: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Deliver),
        Just(Op::Complete),
        any::<bool>().prop_map(|restart| Op::Signal { restart }),
        (1u8..9).prop_map(|len| Op::Read { len }),
    ]
}

proptest! {
    /// Whatever the interleaving of signals (restarting or not), home completions and message
    /// delivery, every byte of the home pipe ends up either delivered to the thread, in the
    /// deputy's push-back buffer, or still in the pipe — in order, none lost, none twice.
    #[test]
    fn reads_never_lose_or_duplicate_bytes(ops in proptest::collection::vec(op(), 1..120)) {
        let original: Vec<u8> = (0..200u8).collect();
        let (mut rem, mut dep, mut home) = (RemoteFwd::new(), DeputyFwd::new(), HomeFds::default());
        home.pipe.extend(&original);
        let mut to_dep: Vec<FwdMsg> = Vec::new();
        let mut to_rem: Vec<FwdMsg> = Vec::new();
        let mut running: VecDeque<(Tid, Seq, Call)> = VecDeque::new();
        let mut delivered: Vec<u8> = Vec::new();
        // The thread's outstanding call: (notif, key, len, cancelled).
        let mut waiting: Option<(u64, CallKey, u64, bool)> = None;
        let mut next_notif = 0u64;
        let mut next_buf = 0u64;
        let mut answer_queue: Vec<(u64, Reply)> = Vec::new();

        let drain = |ops: Vec<Op>| ops.into_iter().chain(std::iter::repeat_n(Op::Deliver, 1).chain(
            std::iter::repeat_n([Op::Complete, Op::Deliver], 40).flatten()));
        for op in drain(ops) {
            match op {
                Op::Deliver => {
                    for m in std::mem::take(&mut to_dep) {
                        for a in dep.on_msg(m) {
                            match a {
                                DeputyAction::Send(m) => to_rem.push(m),
                                DeputyAction::Execute { tid, seq, call } => running.push_back((tid, seq, call)),
                                DeputyAction::Interrupt { .. } => {}
                            }
                        }
                    }
                    for m in std::mem::take(&mut to_rem) {
                        for a in rem.on_msg(m) {
                            match a {
                                RemoteAction::Send(m) => to_dep.push(m),
                                RemoteAction::Answer { notif, reply, .. } => answer_queue.push((notif, reply)),
                                RemoteAction::Unanswered { .. } => unreachable!("interrupt_all is not used here"),
                            }
                        }
                    }
                }
                Op::Complete => {
                    if let Some((tid, seq, call)) = running.pop_front() {
                        let r = home.execute(&call);
                        for a in dep.on_done(tid, seq, r) {
                            if let DeputyAction::Send(m) = a { to_rem.push(m) }
                        }
                    }
                }
                Op::Signal { restart } => {
                    if let Some((notif, k, len, false)) = waiting {
                        next_notif += 1;
                        if restart {
                            waiting = Some((next_notif, k, len, false));
                            for a in rem.on_call(7, next_notif, k, Call::Read { fd: 0, len }) {
                                match a {
                                    RemoteAction::Send(m) => to_dep.push(m),
                                    RemoteAction::Answer { notif, reply, .. } => answer_queue.push((notif, reply)),
                                RemoteAction::Unanswered { .. } => unreachable!("interrupt_all is not used here"),
                                }
                            }
                        } else {
                            waiting = Some((notif, k, len, true)); // EINTR: the thread is idle
                        }
                    }
                }
                Op::Read { len } => {
                    if waiting.is_none() || matches!(waiting, Some((_, _, _, true))) {
                        next_notif += 1;
                        next_buf += 1;
                        let k = key(READ, next_buf, u64::from(len));
                        waiting = Some((next_notif, k, u64::from(len), false));
                        for a in rem.on_call(7, next_notif, k, Call::Read { fd: 0, len: u64::from(len) }) {
                            match a {
                                RemoteAction::Send(m) => to_dep.push(m),
                                RemoteAction::Answer { notif, reply, .. } => answer_queue.push((notif, reply)),
                                RemoteAction::Unanswered { .. } => unreachable!("interrupt_all is not used here"),
                            }
                        }
                    }
                }
            }
            // The thread takes answers addressed to its live notification; others are stale.
            for (notif, reply) in std::mem::take(&mut answer_queue) {
                let live = matches!(waiting, Some((n, _, _, false)) if n == notif);
                let how = if live {
                    prop_assert!(reply.data.len() as u64 <= waiting.unwrap().2);
                    delivered.extend_from_slice(&reply.data);
                    waiting = None;
                    Answered::Delivered
                } else {
                    Answered::Cancelled
                };
                for a in rem.on_answered(notif, how) {
                    if let RemoteAction::Send(m) = a { to_dep.push(m) }
                }
            }
        }
        // The thread ends: what it never received goes home.
        for a in rem.on_thread_gone(7) {
            if let RemoteAction::Send(m) = a { to_dep.push(m) }
        }
        for _ in 0..5 {
            for m in std::mem::take(&mut to_dep) {
                for a in dep.on_msg(m) {
                    if let DeputyAction::Execute { tid, seq, call } = a { running.push_back((tid, seq, call)) }
                }
            }
            while let Some((tid, seq, call)) = running.pop_front() {
                let r = home.execute(&call);
                for a in dep.on_done(tid, seq, r) {
                    if let DeputyAction::Send(m) = a { to_rem.push(m) }
                }
            }
            for m in std::mem::take(&mut to_rem) {
                for a in rem.on_msg(m) {
                    if let RemoteAction::Send(m) = a { to_dep.push(m) }
                }
            }
        }
        let mut all = delivered.clone();
        all.extend(drain_pushback(&mut dep));
        all.extend(home.pipe.iter());
        prop_assert_eq!(all, original);
    }
}

/// Issue 13 part 2c: the process must go home while its read waits at home for input. Home is
/// asked to give the read up; its EINTR is never delivered (the call stays unanswered, to be
/// made again at home), and nothing is in flight any more.
#[test]
fn an_interrupted_read_that_did_nothing_stays_unanswered() {
    let mut rem = RemoteFwd::new();
    let mut dep = DeputyFwd::new();
    let k = key(READ, 0x1000, 64);
    let acts = rem.on_call(7, 1, k, Call::Read { fd: 0, len: 64 });
    let [FwdMsg::Request { tid, seq, call }] = <[FwdMsg; 1]>::try_from(sends(&acts)).unwrap()
    else {
        panic!("{acts:?}")
    };
    assert!(matches!(
        dep.on_msg(FwdMsg::Request { tid, seq, call }).as_slice(),
        [DeputyAction::Execute { .. }]
    ));
    // the way home begins: the deputy is asked to give the waiting read up
    let acts = rem.interrupt_all();
    assert_eq!(sends(&acts), vec![FwdMsg::Cancel { tid: 7, seq }]);
    assert!(rem.interrupt_all().is_empty(), "asked once");
    assert_eq!(
        dep.on_msg(FwdMsg::Cancel { tid: 7, seq }),
        vec![DeputyAction::Interrupt { tid: 7, seq }]
    );
    // the worker's wait gives up before reading: EINTR
    let back = dep.on_done(7, seq, Reply::errno(libc::EINTR));
    let [DeputyAction::Send(reply)] = back.as_slice() else {
        panic!("{back:?}")
    };
    let acts = rem.on_msg(reply.clone());
    assert_eq!(acts, vec![RemoteAction::Unanswered { notif: 1, tid: 7 }]);
    assert!(answers(&acts).is_empty(), "EINTR is never delivered");
    assert_eq!(rem.in_flight(), 0);
    // the process stayed after all: the same call forwarded again is a new request, run anew
    let acts = rem.on_call(7, 1, k, Call::Read { fd: 0, len: 64 });
    let [FwdMsg::Request { seq: seq2, .. }] = <[FwdMsg; 1]>::try_from(sends(&acts)).unwrap() else {
        panic!("{acts:?}")
    };
    assert!(seq2 > seq);
}

/// A read that had already got its data when home was asked to give it up: the data is
/// delivered as usual (never lost, never turned into EINTR).
#[test]
fn an_interrupted_read_that_got_data_is_delivered() {
    let mut rem = RemoteFwd::new();
    let k = key(READ, 0x1000, 64);
    let acts = rem.on_call(7, 1, k, Call::Read { fd: 0, len: 64 });
    let [FwdMsg::Request { seq, .. }] = <[FwdMsg; 1]>::try_from(sends(&acts)).unwrap() else {
        panic!("{acts:?}")
    };
    assert_eq!(rem.interrupt_all().len(), 1);
    let data = Reply::data(Bytes::from_static(b"late line\n"));
    let acts = rem.on_msg(FwdMsg::Reply {
        tid: 7,
        seq,
        reply: data.clone(),
    });
    assert_eq!(answers(&acts), vec![(1, data)]);
    assert!(rem.on_answered(1, Answered::Delivered).is_empty());
    assert_eq!(rem.in_flight(), 0);
}
