//! The runtime over the in-process fabric: local and remote tell/ask, time-outs, unknown
//! actors, supervision after a panic, link events, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runtime::mem::Fabric;
use runtime::{Actor, Context, Error, Inbound, LinkEvent, ReplyTo, System};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Req {
    Add(i64),
    Get,
    Boom,
    Ignore,
    Echo(Vec<u8>),
    /// Recorded in arrival order.
    Seq(i64),
    /// Answers the recorded `Seq` values.
    Seqs,
    /// Sleeps this many milliseconds in the handler (a slow actor).
    Sleep(u64),
}

struct Counter {
    total: i64,
    seq: Vec<i64>,
}

enum Msg {
    Remote(Inbound<Req>),
    Local(i64, ReplyTo<i64>),
}

impl From<Inbound<Req>> for Msg {
    fn from(i: Inbound<Req>) -> Self {
        Msg::Remote(i)
    }
}

impl Actor for Counter {
    type Msg = Msg;
    async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) {
        match msg {
            Msg::Local(n, reply) => {
                self.total += n;
                let _ = reply.send(self.total);
            }
            Msg::Remote(Inbound {
                msg,
                reply,
                payload,
                from,
            }) => match msg {
                Req::Add(n) => {
                    self.total += n;
                    if let Some(r) = reply {
                        r.send(&self.total).await.unwrap();
                    }
                }
                Req::Get => {
                    reply.unwrap().send(&(self.total, from)).await.unwrap();
                }
                Req::Boom => panic!("boom (this panic is part of the test)"),
                Req::Seq(n) => self.seq.push(n),
                Req::Seqs => reply.unwrap().send(&self.seq).await.unwrap(),
                Req::Sleep(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    if let Some(r) = reply {
                        r.send(&ms).await.unwrap();
                    }
                }
                Req::Ignore => {}
                Req::Echo(head) => {
                    let mut out = head;
                    out.reverse();
                    reply
                        .unwrap()
                        .send_with_payload(&out, payload)
                        .await
                        .unwrap();
                }
            },
        }
    }
}

fn node(fabric: &Fabric, id: u32) -> System {
    let sys = System::new(id);
    sys.attach(fabric.join(id, sys.events()));
    let starts = Arc::new(AtomicUsize::new(0));
    let s2 = starts.clone();
    let addr = sys.spawn("counter", move || {
        s2.fetch_add(1, Ordering::SeqCst);
        Counter {
            total: 0,
            seq: vec![],
        }
    });
    sys.serve::<Req, _>("counter", addr);
    let sleeper = sys.spawn("sleeper", || Counter {
        total: 0,
        seq: vec![],
    });
    sys.serve::<Req, _>("sleeper", sleeper);
    sys
}

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn remote_and_local_ask_reach_the_same_actor() {
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let _b = node(&fabric, 2);
    let total: i64 = a.ask(2, "counter", &Req::Add(5), T).await.unwrap();
    assert_eq!(total, 5);
    a.tell(2, "counter", &Req::Add(10)).await.unwrap();
    let (total, from): (i64, u32) = a.ask(2, "counter", &Req::Get, T).await.unwrap();
    assert_eq!((total, from), (15, 1));
    // The same path to our own node.
    let own: i64 = a.ask(1, "counter", &Req::Add(3), T).await.unwrap();
    assert_eq!(own, 3);
}

#[tokio::test]
async fn payload_travels_beside_the_message() {
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let _b = node(&fabric, 2);
    let big = Bytes::from(vec![7u8; 1 << 20]);
    let (head, payload): (Vec<u8>, Bytes) = a
        .ask_with_payload(2, "counter", &Req::Echo(vec![1, 2, 3]), big.clone(), T)
        .await
        .unwrap();
    assert_eq!(head, vec![3, 2, 1]);
    assert_eq!(payload, big);
}

#[tokio::test]
async fn unknown_actor_unanswered_request_and_unreachable_node_fail_clearly() {
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let _b = node(&fabric, 2);
    match a.ask::<_, i64>(2, "nobody", &Req::Get, T).await {
        Err(Error::Remote { node: 2, reason }) => {
            assert!(reason.contains("no actor named \"nobody\""), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    match a.ask::<_, i64>(2, "counter", &Req::Ignore, T).await {
        Err(Error::Remote { node: 2, reason }) => {
            assert!(reason.contains("unanswered"), "{reason}")
        }
        other => panic!("expected unanswered, got {other:?}"),
    }
    match a.ask::<_, i64>(9, "counter", &Req::Get, T).await {
        Err(Error::Transport(runtime::transport::Error::Unreachable(9))) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn ask_times_out_when_nothing_answers() {
    // A node whose events are never read: the request goes out, no answer comes back.
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let (tx, _rx_kept_but_unread) = mpsc::channel(16);
    let _silent = fabric.join(3, tx);
    let t0 = std::time::Instant::now();
    match a
        .ask::<_, i64>(3, "counter", &Req::Get, Duration::from_millis(200))
        .await
    {
        Err(Error::Timeout { node: 3, after, .. }) => assert_eq!(after, Duration::from_millis(200)),
        other => panic!("expected a time-out, got {other:?}"),
    }
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_panicking_actor_is_restarted_and_the_node_goes_on() {
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let _: i64 = a.ask(1, "counter", &Req::Add(4), T).await.unwrap();
    a.tell(1, "counter", &Req::Boom).await.unwrap();
    // Rebuilt from its factory: state starts over, and it answers again.
    let (total, _): (i64, u32) = a.ask(1, "counter", &Req::Get, T).await.unwrap();
    assert_eq!(total, 0);
}

#[tokio::test]
async fn an_actor_that_keeps_panicking_is_given_up_on() {
    let sys = System::new(1);
    let addr = sys.spawn_with(
        "fragile",
        runtime::actor::Restarts {
            max: 2,
            within: Duration::from_secs(60),
        },
        || Counter {
            total: 0,
            seq: vec![],
        },
    );
    sys.serve::<Req, _>("fragile", addr.clone());
    for _ in 0..3 {
        sys.tell(1, "fragile", &Req::Boom).await.unwrap();
    }
    tokio::time::timeout(T, async {
        while !addr.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("supervisor gives up after too many panics");
    assert!(matches!(
        addr.ask(|r| Msg::Local(1, r), T).await,
        Err(Error::Stopped)
    ));
}

#[tokio::test]
async fn local_typed_ask() {
    let sys = System::new(1);
    let addr = sys.spawn("c", || Counter {
        total: 0,
        seq: vec![],
    });
    assert_eq!(addr.ask(|r| Msg::Local(2, r), T).await.unwrap(), 2);
    assert_eq!(addr.ask(|r| Msg::Local(3, r), T).await.unwrap(), 5);
}

#[tokio::test]
async fn link_events_and_shutdown() {
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let mut links = a.link_events();
    let b = node(&fabric, 2);
    assert_eq!(
        tokio::time::timeout(T, links.recv())
            .await
            .unwrap()
            .unwrap(),
        LinkEvent::Up(2)
    );
    b.shutdown(T).await;
    match tokio::time::timeout(T, links.recv())
        .await
        .unwrap()
        .unwrap()
    {
        LinkEvent::Down(2, _) => {}
        other => panic!("expected node 2 down, got {other:?}"),
    }
    assert!(a.ask::<_, i64>(2, "counter", &Req::Get, T).await.is_err());
    a.shutdown(T).await;
    assert!(a.shutdown_token().is_cancelled());
}

/// Ask `Seqs` until the actor has seen `n` values (a busy mailbox answers `Busy`: retry).
async fn seqs(a: &System, node: u32, name: &str, n: usize) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match a.ask::<_, Vec<i64>>(node, name, &Req::Seqs, T).await {
            Ok(v) if v.len() >= n => return v,
            Ok(_) | Err(Error::Busy { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all {n} arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_burst_larger_than_the_mailbox_is_delivered_in_full_and_in_order() {
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let _b = node(&fabric, 2);
    // Beyond the mailbox and beyond the backlog's warning mark: nothing is dropped.
    let n = (runtime::actor::MAILBOX + 2 * runtime::system::BACKLOG) as i64;
    for i in 1..=n {
        a.tell(2, "counter", &Req::Seq(i)).await.unwrap();
    }
    let got = seqs(&a, 2, "counter", n as usize).await;
    let want: Vec<i64> = (1..=n).collect();
    assert_eq!(got, want, "every message once, in the order sent");
}

/// A slow actor delays neither another actor's messages on the same link nor the link.
#[tokio::test]
async fn a_sleeping_actor_does_not_delay_another_actor_on_the_same_link() {
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let _b = node(&fabric, 2);
    // Fill the sleeper's mailbox and part of its backlog: 2 s of sleeping each ...
    tokio::time::timeout(T, async {
        for _ in 0..(runtime::actor::MAILBOX + 100) {
            a.tell(2, "sleeper", &Req::Sleep(2_000)).await.unwrap();
        }
    })
    .await
    .expect("tells to a slow actor must not stall the link");
    // ... while the counter on the same link answers at once.
    for i in 1..=50 {
        let t0 = std::time::Instant::now();
        let total: i64 = a.ask(2, "counter", &Req::Add(1), T).await.unwrap();
        assert_eq!(total, i);
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "ask {i} took {:?} behind the sleeping actor",
            t0.elapsed()
        );
    }
    // An ask to the full actor is refused as busy, at once, not queued behind 2 s sleeps.
    let t0 = std::time::Instant::now();
    match a.ask::<_, u64>(2, "sleeper", &Req::Sleep(0), T).await {
        Err(Error::Busy { node: 2, name }) => assert_eq!(name, "sleeper"),
        other => panic!("expected busy, got {other:?}"),
    }
    assert!(t0.elapsed() < Duration::from_millis(500));
}

/// Per-actor credits: a fast sender to a sleeping actor is held back at about
/// `CREDIT` bytes (the receiver's memory for that actor stays bounded), sees `Busy`
/// after its send time-out, other actors on the same link are not affected, and the
/// credit comes back once the actor takes its messages.
#[tokio::test]
async fn a_fast_sender_to_a_sleeping_actor_is_held_back_by_credit() {
    let fabric = Fabric::new();
    let a = node(&fabric, 1);
    let _b = node(&fabric, 2);
    let limit = Duration::from_millis(200);
    a.set_send_timeout(limit);
    a.tell(2, "sleeper", &Req::Sleep(1_500)).await.unwrap();
    let chunk = Bytes::from(vec![7u8; 64 * 1024]);
    let mut sent: u64 = 0;
    let mut last = 0;
    let refused = loop {
        let t0 = std::time::Instant::now();
        match a
            .tell_with_payload(2, "sleeper", &Req::Ignore, chunk.clone())
            .await
        {
            Ok(()) => {
                sent += 1;
                last = chunk.len() as u64;
            }
            Err(e) => break (e, t0.elapsed()),
        }
        assert!(
            sent * chunk.len() as u64 <= 2 * runtime::system::CREDIT,
            "{sent} messages accepted: no back-pressure"
        );
    };
    match refused {
        (Error::Busy { node: 2, name }, waited) => {
            assert_eq!(name, "sleeper");
            assert!(
                waited >= limit,
                "refused after {waited:?}, before the time-out"
            );
        }
        other => panic!("expected busy, got {other:?}"),
    }
    let bytes = sent * last;
    let credit = runtime::system::CREDIT;
    assert!(
        bytes <= credit && bytes + 2 * last >= credit,
        "held back after {bytes} bytes, credit {credit}"
    );
    // Another actor on the same link is not held back.
    for i in 1..=20 {
        let total: i64 = a.ask(2, "counter", &Req::Add(1), T).await.unwrap();
        assert_eq!(total, i);
        a.tell(2, "counter", &Req::Seq(i)).await.unwrap();
    }
    // Once the sleeper wakes and takes its messages, its credit comes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match a
            .tell_with_payload(2, "sleeper", &Req::Ignore, chunk.clone())
            .await
        {
            Ok(()) => break,
            Err(Error::Busy { .. }) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "credit never came back"
                )
            }
            Err(e) => panic!("{e}"),
        }
    }
}
