//! The per-node actor system: spawning, named actors reachable from any node as
//! `(NodeId, name)`, remote `tell`/`ask`, link events, and shutdown.
//!
//! A message to a named actor is always encoded into a frame, whether the actor is on this
//! node or another: one code path for local and remote peers.
//!
//! The dispatcher runs on a transport's receiving task and never waits there: a message
//! goes into its actor's mailbox at once, or, when that mailbox is full, into the actor's
//! own bounded backlog, which a task of its own feeds into the mailbox as room appears
//! (order kept). So a slow actor delays only its own messages, never another actor's on
//! the same link, nor the link's keepalives. An `ask` that finds the mailbox full is
//! refused with [`Error::Busy`]; a `tell` is never dropped.
//!
//! Per-actor credits bound what a slow actor holds: each sending node may have at most
//! [`CREDIT`] bytes of tells to one named actor outstanding (on the way, in the backlog, in
//! the mailbox). The sender counts them down as it sends; the receiving actor's
//! [`Charge`]s count them back up as the actor takes messages out of its mailbox, and
//! return them to the sender in [`wire::Kind::Credit`] frames on the control lane (in
//! batches of a quarter of the credit). A sender without credit waits (at most its send
//! time-out, then [`Error::Busy`]); only the senders of that actor wait, never the link's
//! read task nor another actor. When a link goes down the sender starts its credits to that
//! peer over (frames lost with the link return nothing); credit that still comes back for
//! messages of the old link is capped at [`CREDIT`], so right after a reconnect at most
//! twice the credit is outstanding, and none is ever lost. Asks take no credit: a full
//! mailbox refuses them at once.
//!
//! Every send to a peer waits for room at most a bounded time ([`System::set_send_timeout`],
//! the ask's own time-out for asks).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actor::{self, Actor, Addr, Restarts};
use crate::transport::{self, Event, Events, Frame, Lane, Transport};
use crate::wire::{self, Kind};
use crate::{Error, NodeId};

/// A message that came to a named actor through [`System::serve`].
#[derive(Debug)]
pub struct Inbound<M> {
    pub from: NodeId,
    pub msg: M,
    /// Bulk bytes sent beside the message (empty when none).
    pub payload: Bytes,
    /// Present when the sender used `ask`: answer through it.
    pub reply: Option<Responder>,
}

/// Answers one remote `ask`. Dropping it unanswered tells the asker at once.
#[derive(Debug)]
pub struct Responder {
    system: System,
    peer: NodeId,
    id: u64,
    to: String,
    done: bool,
}

impl Responder {
    pub async fn send<R: Serialize>(self, answer: &R) -> Result<(), Error> {
        self.send_with_payload(answer, Bytes::new()).await
    }

    pub async fn send_with_payload<R: Serialize>(
        self,
        answer: &R,
        payload: Bytes,
    ) -> Result<(), Error> {
        self.send_on(Lane::Control, answer, payload).await
    }

    /// Answer on `lane`: [`Lane::Bulk`] for large payloads (file blocks).
    pub async fn send_on<R: Serialize>(
        mut self,
        lane: Lane,
        answer: &R,
        payload: Bytes,
    ) -> Result<(), Error> {
        self.done = true;
        let mut frame = self.frame(Kind::Reply { id: self.id }, answer, payload)?;
        frame.lane = lane;
        let limit = self.system.send_limit();
        self.system.route(self.peer, frame, limit).await
    }

    pub async fn fail(mut self, reason: impl Into<String>) -> Result<(), Error> {
        self.done = true;
        let frame = self.failure(reason.into())?;
        let limit = self.system.send_limit();
        self.system.route(self.peer, frame, limit).await
    }

    /// Refuse the request as busy (typed, so the asker can retry), without waiting.
    fn busy(mut self) {
        self.done = true;
        if let Ok(frame) = self.frame(Kind::Busy { id: self.id }, &(), Bytes::new()) {
            self.system.send_later(self.peer, frame);
        }
    }

    fn frame<R: Serialize + ?Sized>(
        &self,
        kind: Kind,
        body: &R,
        payload: Bytes,
    ) -> Result<Frame, Error> {
        let head = wire::encode_envelope(&self.to, &kind, body)?;
        Ok(Frame::new(head, payload))
    }

    fn failure(&self, reason: String) -> Result<Frame, Error> {
        self.frame(
            Kind::Failed {
                id: self.id,
                reason,
            },
            &(),
            Bytes::new(),
        )
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let reason = format!(
            "actor {:?} on node {} dropped the request unanswered",
            self.to,
            self.system.local_id()
        );
        if let Ok(frame) = self.failure(reason) {
            self.system.send_later(self.peer, frame);
        }
    }
}

/// A link to a peer node came up or went down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Found by the transport's own discovery (mDNS), with its addresses.
    Discovered(NodeId, Vec<std::net::SocketAddr>),
    Up(NodeId),
    Down(NodeId, String),
}

/// Backlog length (beyond the mailbox) from which a slow actor is warned about, each time
/// the backlog doubles. Tells are never dropped.
pub const BACKLOG: usize = 4096;

/// Default limit for waiting on room to a peer in `tell` and in answers.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes of tells one node may have outstanding to one named actor on another (or the
/// same) node before its `tell`s wait: the bound on what a slow actor holds per sender
/// (plus one message). Both ends of a link must agree on it (it is part of the protocol).
pub const CREDIT: u64 = 16 << 20;

/// What one message costs in credit beyond its bytes (so tiny messages are bounded too).
const MSG_COST: u64 = 64;

/// The credit `frame` (a tell) takes.
fn cost(frame: &Frame) -> u64 {
    (frame.head.len() + frame.payload.len()) as u64 + MSG_COST
}

/// The credit a message to a local actor holds for its sender until the actor takes it
/// out of its mailbox; dropping it (taken, or never delivered) returns the credit.
pub struct Charge {
    grants: Arc<Grants>,
    from: NodeId,
    cost: u64,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("from", &self.from)
            .field("cost", &self.cost)
            .finish()
    }
}

impl Charge {
    /// Take over `other`'s credit when it is owed to the same sender by the same actor
    /// (one release for a batch of messages instead of one per message); hands `other`
    /// back otherwise.
    pub(crate) fn absorb(&mut self, mut other: Charge) -> Result<(), Charge> {
        if other.from != self.from || !Arc::ptr_eq(&other.grants, &self.grants) {
            return Err(other);
        }
        self.cost += std::mem::take(&mut other.cost);
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.cost > 0 {
            Grants::release(&self.grants, self.from, self.cost);
        }
    }
}

/// One named actor's credit owed back to its senders: bytes taken out of its mailbox but
/// not yet returned, per sending node.
struct Grants {
    system: Weak<Inner>,
    actor: String,
    owed: Mutex<std::collections::HashMap<NodeId, u64>>,
}

impl Grants {
    /// `cost` bytes of `from`'s messages left the mailbox: return them in batches.
    fn release(this: &Arc<Grants>, from: NodeId, cost: u64) {
        let bytes = {
            let mut owed = transport::link::lock(&this.owed);
            let e = owed.entry(from).or_insert(0);
            *e += cost;
            if *e < CREDIT / 4 {
                return;
            }
            std::mem::take(e)
        };
        let Some(inner) = this.system.upgrade() else {
            return;
        };
        let system = System(inner);
        if system.0.token.is_cancelled() {
            return;
        }
        let Ok(head) = wire::encode_envelope(&this.actor, &Kind::Credit { bytes }, &()) else {
            return;
        };
        let frame = Frame::new(head, Bytes::new());
        let limit = system.send_limit();
        let grants = this.clone();
        system.0.tasks.clone().spawn(async move {
            if let Err(e) = system.route(from, frame, limit).await {
                tracing::debug!(peer = from, "credit not returned yet: {e}");
                // Owed still: returned with the next batch (or started over with the link).
                Grants::release(&grants, from, bytes);
            }
        });
    }
}

/// Why the dispatcher did not deliver a message.
enum Undelivered {
    /// Mailbox full: the ask is handed back to be refused as busy.
    Busy(Responder),
    /// Queued, but the actor's backlog has grown to this many messages (a warning).
    Backlogged(usize),
    Stopped,
    Decode(String),
}

/// Decodes a message for one named actor and queues it without waiting (see the module
/// docs). A tell comes with the credit it holds.
type Delivery = Box<
    dyn Fn(NodeId, Bytes, Bytes, Option<Responder>, Option<Charge>) -> Result<(), Undelivered>
        + Send
        + Sync,
>;

/// A named actor as the dispatcher sees it.
struct Named {
    deliver: Delivery,
    grants: Arc<Grants>,
}
type Answer = Result<(Bytes, Bytes), Error>;

/// One actor's overflow: messages that found its mailbox full, fed in by a pump task.
struct Backlog<T> {
    queue: VecDeque<T>,
    pumping: bool,
}

struct Inner {
    local: NodeId,
    transport: OnceLock<Arc<dyn Transport>>,
    named: DashMap<String, Named>,
    /// Credit left per peer and named actor there (absent: full [`CREDIT`]).
    credits: Mutex<std::collections::HashMap<NodeId, std::collections::HashMap<String, i64>>>,
    /// Woken whenever credit comes back.
    credit_back: tokio::sync::Notify,
    pending: DashMap<u64, oneshot::Sender<Answer>>,
    next_id: AtomicU64,
    links: broadcast::Sender<LinkEvent>,
    token: CancellationToken,
    tasks: TaskTracker,
    /// Limit for waiting on room to a peer, in milliseconds.
    send_limit_ms: AtomicU64,
}

/// Handle to a node's actor system. Cheap to clone.
#[derive(Clone)]
pub struct System(Arc<Inner>);

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("local", &self.0.local)
            .finish()
    }
}

impl System {
    /// A system for node `local` with no transport yet: it reaches only its own actors
    /// until [`System::attach`]. Start the transport with [`System::events`] first.
    pub fn new(local: NodeId) -> System {
        let (links, _) = broadcast::channel(256);
        System(Arc::new(Inner {
            local,
            transport: OnceLock::new(),
            named: DashMap::new(),
            credits: Mutex::new(Default::default()),
            credit_back: tokio::sync::Notify::new(),
            pending: DashMap::new(),
            next_id: AtomicU64::new(1),
            links,
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            send_limit_ms: AtomicU64::new(SEND_TIMEOUT.as_millis() as u64),
        }))
    }

    /// How long `tell` (and answering an `ask`) waits for room to a peer before failing
    /// with [`transport::Error::Timeout`]. Default [`SEND_TIMEOUT`].
    pub fn set_send_timeout(&self, limit: Duration) {
        self.0
            .send_limit_ms
            .store(limit.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    fn send_limit(&self) -> Duration {
        Duration::from_millis(self.0.send_limit_ms.load(Ordering::Relaxed))
    }

    /// Send `frame` from a task of its own (answers the dispatcher must not wait for).
    fn send_later(&self, peer: NodeId, frame: Frame) {
        let system = self.clone();
        let limit = self.send_limit();
        self.0.tasks.spawn(async move {
            if let Err(e) = system.route(peer, frame, limit).await {
                tracing::debug!(peer, "answer not sent: {e}");
            }
        });
    }

    /// Where a transport should deliver what it receives: straight into this system's
    /// dispatcher, on the transport's receiving task (no extra task hop per message).
    pub fn events(&self) -> Events {
        Events::direct(Arc::new(Dispatch(Arc::downgrade(&self.0))))
    }

    /// Send through `transport` from now on. A system has one transport for its life;
    /// a second call is refused (returns false) and changes nothing.
    pub fn attach(&self, transport: Arc<dyn Transport>) -> bool {
        self.0.transport.set(transport).is_ok()
    }

    pub fn local_id(&self) -> NodeId {
        self.0.local
    }

    pub fn transport(&self) -> Option<&Arc<dyn Transport>> {
        self.0.transport.get()
    }

    /// Spawn an actor under supervision: `factory` builds it, and builds it again after a
    /// panic (at most [`Restarts::default`] times in a row before it is left stopped).
    pub fn spawn<A: Actor>(
        &self,
        name: &str,
        factory: impl FnMut() -> A + Send + 'static,
    ) -> Addr<A> {
        actor::spawn(self, name, Restarts::default(), factory)
    }

    pub fn spawn_with<A: Actor>(
        &self,
        name: &str,
        restarts: Restarts,
        factory: impl FnMut() -> A + Send + 'static,
    ) -> Addr<A> {
        actor::spawn(self, name, restarts, factory)
    }

    /// Make `addr` reachable from every node as `(this node, name)`, receiving messages of
    /// type `M` wrapped in [`Inbound`].
    pub fn serve<M, A>(&self, name: &str, addr: Addr<A>)
    where
        M: DeserializeOwned + Send + 'static,
        A: Actor,
        A::Msg: From<Inbound<M>>,
    {
        let backlog = Arc::new(Mutex::new(Backlog::<(A::Msg, Option<Charge>)> {
            queue: VecDeque::new(),
            pumping: false,
        }));
        let tasks = self.0.tasks.clone();
        let actor = name.to_string();
        let deliver: Delivery = Box::new(move |from, body, payload, reply, charge| {
            let msg =
                wire::decode_body::<M>(&body).map_err(|e| Undelivered::Decode(e.to_string()))?;
            let mut b = transport::link::lock(&backlog);
            if reply.is_some() && (b.pumping || addr.room() == 0) {
                return Err(Undelivered::Busy(reply.expect("checked")));
            }
            let msg: A::Msg = Inbound {
                from,
                msg,
                payload,
                reply,
            }
            .into();
            let msg = (msg, charge);
            if b.pumping {
                // Never dropped: a tell is queued; its sender's credit bounds the backlog
                // (a warning each time it doubles past BACKLOG).
                b.queue.push_back(msg);
                let n = b.queue.len();
                if n >= BACKLOG && n.is_power_of_two() {
                    return Err(Undelivered::Backlogged(n));
                }
                return Ok(());
            }
            match addr.try_tell_back(msg) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Undelivered::Stopped),
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    b.queue.push_back(msg);
                    b.pumping = true;
                    drop(b);
                    let (addr, backlog, actor) = (addr.clone(), backlog.clone(), actor.clone());
                    tracing::debug!(actor = %actor, "mailbox full; feeding its backlog");
                    tasks.spawn(async move {
                        loop {
                            let waiting = {
                                let mut b = transport::link::lock(&backlog);
                                if b.queue.is_empty() {
                                    b.pumping = false;
                                    return;
                                }
                                b.queue.len()
                            };
                            // Room for a batch, then move it in one go: one wake-up of
                            // this task per batch, not per message.
                            let Ok(permits) = addr.reserve_many(waiting).await else {
                                let mut b = transport::link::lock(&backlog);
                                b.queue.clear();
                                b.pumping = false;
                                return;
                            };
                            // Only this task takes from the queue: it holds at least
                            // `permits.len()` messages.
                            let mut b = transport::link::lock(&backlog);
                            for permit in permits {
                                match b.queue.pop_front() {
                                    Some(m) => permit.send(m),
                                    None => break,
                                }
                            }
                        }
                    });
                    Ok(())
                }
            }
        });
        let grants = Arc::new(Grants {
            system: Arc::downgrade(&self.0),
            actor: name.to_string(),
            owed: Mutex::new(Default::default()),
        });
        self.0
            .named
            .insert(name.to_string(), Named { deliver, grants });
    }

    /// Make `f` reachable from every node as `(this node, name)`: it is called with each
    /// message of type `M` on the link's own reader, with no actor mailbox between (one
    /// wake-up less per message than [`System::serve`]). So `f` must never wait: it hands the
    /// message on (a channel, an eventfd) or does something short. The message's credit goes
    /// back to its sender when `f` returns; an `ask`'s [`Responder`] is `f`'s to answer.
    pub fn serve_direct<M, F>(&self, name: &str, f: F)
    where
        M: DeserializeOwned + Send + 'static,
        F: Fn(Inbound<M>) + Send + Sync + 'static,
    {
        let deliver: Delivery = Box::new(move |from, body, payload, reply, charge| {
            let msg =
                wire::decode_body::<M>(&body).map_err(|e| Undelivered::Decode(e.to_string()))?;
            f(Inbound {
                from,
                msg,
                payload,
                reply,
            });
            drop(charge);
            Ok(())
        });
        let grants = Arc::new(Grants {
            system: Arc::downgrade(&self.0),
            actor: name.to_string(),
            owed: Mutex::new(Default::default()),
        });
        self.0
            .named
            .insert(name.to_string(), Named { deliver, grants });
    }

    /// Subscribe to links coming up and going down.
    pub fn link_events(&self) -> broadcast::Receiver<LinkEvent> {
        self.0.links.subscribe()
    }

    /// Fire-and-forget to `(node, name)`.
    pub async fn tell<M: Serialize + ?Sized>(
        &self,
        node: NodeId,
        name: &str,
        msg: &M,
    ) -> Result<(), Error> {
        self.tell_with_payload(node, name, msg, Bytes::new()).await
    }

    /// `tell` with bulk bytes beside the message, on the control lane.
    pub async fn tell_with_payload<M: Serialize + ?Sized>(
        &self,
        node: NodeId,
        name: &str,
        msg: &M,
        payload: Bytes,
    ) -> Result<(), Error> {
        self.tell_on(Lane::Control, node, name, msg, payload).await
    }

    /// `tell` on a chosen lane: [`Lane::Bulk`] for memory pages and file blocks, so they
    /// never hold back control messages. Waits for room at most the send time-out.
    pub async fn tell_on<M: Serialize + ?Sized>(
        &self,
        lane: Lane,
        node: NodeId,
        name: &str,
        msg: &M,
        payload: Bytes,
    ) -> Result<(), Error> {
        let frame = Self::tell_frame(lane, name, msg, payload)?;
        let limit = self.send_limit();
        let cost = cost(&frame);
        self.take_credit(node, name, cost, limit).await?;
        let r = self.route(node, frame, limit).await;
        if r.is_err() {
            self.give_credit(node, name, cost); // never sent
        }
        r
    }

    /// Take `cost` bytes of credit for `(node, name)` if there is room now: at least the
    /// cost, or half the credit for a message larger than that.
    fn try_take_credit(&self, node: NodeId, name: &str, cost: u64) -> bool {
        let mut all = transport::link::lock(&self.0.credits);
        let per = all.entry(node).or_default();
        let need = cost.min(CREDIT / 2) as i64;
        match per.get_mut(name) {
            Some(left) if *left >= need => *left -= cost as i64,
            Some(_) => return false,
            None => {
                per.insert(name.to_string(), CREDIT as i64 - cost as i64);
            }
        }
        true
    }

    /// Take credit, waiting for it at most `limit` ([`Error::Busy`] then).
    async fn take_credit(
        &self,
        node: NodeId,
        name: &str,
        cost: u64,
        limit: Duration,
    ) -> Result<(), Error> {
        // Credit is there nearly always: no clock read, no waiter registered.
        if self.try_take_credit(node, name, cost) {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let back = self.0.credit_back.notified();
            tokio::pin!(back);
            back.as_mut().enable();
            if self.try_take_credit(node, name, cost) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, back).await.is_err() {
                return Err(Error::Busy {
                    node,
                    name: name.to_string(),
                });
            }
        }
    }

    /// Credit for `(node, name)` came back (capped at [`CREDIT`]).
    fn give_credit(&self, node: NodeId, name: &str, bytes: u64) {
        {
            let mut all = transport::link::lock(&self.0.credits);
            if let Some(left) = all.get_mut(&node).and_then(|per| per.get_mut(name)) {
                *left = (*left).saturating_add(bytes as i64).min(CREDIT as i64);
            }
        }
        self.0.credit_back.notify_waiters();
    }

    /// `peer`'s link went down: credits to it start over (see the module docs).
    fn reset_credit(&self, peer: NodeId) {
        transport::link::lock(&self.0.credits).remove(&peer);
        self.0.credit_back.notify_waiters();
    }

    /// `tell` without waiting: fails with [`transport::Error::Full`] when the control
    /// lane to `node` has no room now (heartbeats and gossip, which the next tick replaces).
    pub fn try_tell<M: Serialize + ?Sized>(
        &self,
        node: NodeId,
        name: &str,
        msg: &M,
    ) -> Result<(), Error> {
        let frame = Self::tell_frame(Lane::Control, name, msg, Bytes::new())?;
        let cost = cost(&frame);
        if !self.try_take_credit(node, name, cost) {
            return Err(Error::Busy {
                node,
                name: name.to_string(),
            });
        }
        if node == self.0.local {
            self.on_frame(node, frame);
            return Ok(());
        }
        let r = match self.0.transport.get() {
            Some(t) => t
                .try_send(node, frame)
                .map_err(|e| Error::Transport(e.error)),
            None => Err(Error::Transport(transport::Error::Unreachable(node))),
        };
        if r.is_err() {
            self.give_credit(node, name, cost);
        }
        r
    }

    fn tell_frame<M: Serialize + ?Sized>(
        lane: Lane,
        name: &str,
        msg: &M,
        payload: Bytes,
    ) -> Result<Frame, Error> {
        let head = wire::encode_envelope(name, &Kind::Tell, msg)?;
        Ok(Frame::on(lane, head, payload))
    }

    /// Request/reply with `(node, name)`, waiting at most `timeout`.
    pub async fn ask<Q: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        node: NodeId,
        name: &str,
        req: &Q,
        timeout: Duration,
    ) -> Result<R, Error> {
        Ok(self
            .ask_with_payload(node, name, req, Bytes::new(), timeout)
            .await?
            .0)
    }

    pub async fn ask_with_payload<Q: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        node: NodeId,
        name: &str,
        req: &Q,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(R, Bytes), Error> {
        self.ask_on(Lane::Control, node, name, req, payload, timeout)
            .await
    }

    /// `ask_with_payload` with the request on `lane` ([`Lane::Bulk`] for file blocks).
    pub async fn ask_on<Q: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        lane: Lane,
        node: NodeId,
        name: &str,
        req: &Q,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<(R, Bytes), Error> {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let head = wire::encode_envelope(name, &Kind::Ask { id }, req)?;
        let (tx, rx) = oneshot::channel();
        self.0.pending.insert(id, tx);
        let _forget = Forget { system: self, id };
        let deadline = Instant::now() + timeout;
        self.route(node, Frame::on(lane, head, payload), timeout)
            .await
            .map_err(|e| match e {
                Error::Transport(transport::Error::Timeout { .. }) => Error::Timeout {
                    node,
                    name: name.to_string(),
                    after: timeout,
                },
                e => e,
            })?;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(Ok((body, payload)))) => Ok((wire::decode_body(&body)?, payload)),
            Ok(Ok(Err(Error::Busy { node, .. }))) => Err(Error::Busy {
                node,
                name: name.to_string(),
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout {
                node,
                name: name.to_string(),
                after: timeout,
            }),
        }
    }

    /// Cancelled when the system shuts down; long-running tasks select on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.0.token.clone()
    }

    /// Tasks that shutdown waits for.
    pub fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }

    /// Stop every actor and task (waiting at most `grace`), then close the transport.
    pub async fn shutdown(&self, grace: Duration) {
        self.0.token.cancel();
        self.0.tasks.close();
        if tokio::time::timeout(grace, self.0.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within {grace:?}");
        }
        self.0.named.clear();
        if let Some(t) = self.0.transport.get() {
            t.shutdown().await;
        }
    }

    /// Send a frame to `node`: through the transport (waiting for room at most `limit`),
    /// or straight to dispatch when it is us.
    async fn route(&self, node: NodeId, frame: Frame, limit: Duration) -> Result<(), Error> {
        if node == self.0.local {
            self.on_frame(node, frame);
            return Ok(());
        }
        let Some(t) = self.0.transport.get() else {
            return Err(Error::Transport(transport::Error::Unreachable(node)));
        };
        // Room is there nearly always: queue without a boxed future; wait only when full.
        match t.try_send(node, frame) {
            Ok(()) => Ok(()),
            Err(transport::SendError {
                error: transport::Error::Full { .. },
                frame,
            }) => t
                .send_timeout(node, frame, limit)
                .await
                .map_err(|e| Error::Transport(e.error)),
            Err(e) => Err(Error::Transport(e.error)),
        }
    }

    fn on_event(&self, ev: Event) {
        match ev {
            Event::Frame { peer, frame } => self.on_frame(peer, frame),
            Event::Discovered { peer, addrs } => {
                let _ = self.0.links.send(LinkEvent::Discovered(peer, addrs));
            }
            Event::Up { peer } => {
                let _ = self.0.links.send(LinkEvent::Up(peer));
            }
            Event::Down { peer, reason } => {
                self.reset_credit(peer);
                let _ = self.0.links.send(LinkEvent::Down(peer, reason));
            }
        }
    }

    /// Dispatch one frame. Never waits (see the module docs): answers it cannot give now
    /// go out from tasks of their own.
    fn on_frame(&self, peer: NodeId, frame: Frame) {
        let cost = cost(&frame);
        let (to, kind, body) = match wire::decode_envelope(&frame.head) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(peer, "dropping malformed frame: {e}");
                return;
            }
        };
        match kind {
            Kind::Reply { id } => {
                if let Some((_, tx)) = self.0.pending.remove(&id) {
                    let _ = tx.send(Ok((body, frame.payload)));
                }
            }
            Kind::Failed { id, reason } => {
                if let Some((_, tx)) = self.0.pending.remove(&id) {
                    let _ = tx.send(Err(Error::Remote { node: peer, reason }));
                }
            }
            Kind::Busy { id } => {
                if let Some((_, tx)) = self.0.pending.remove(&id) {
                    let _ = tx.send(Err(Error::Busy {
                        node: peer,
                        name: String::new(),
                    }));
                }
            }
            Kind::Credit { bytes } => self.give_credit(peer, to, bytes),
            Kind::Tell | Kind::Ask { .. } => {
                let responder = match kind {
                    Kind::Ask { id } => Some(Responder {
                        system: self.clone(),
                        peer,
                        id,
                        to: to.to_string(),
                        done: false,
                    }),
                    _ => None,
                };
                // Never awaits: the map guard is held only while the message is queued.
                let outcome = match self.0.named.get(to) {
                    Some(named) => {
                        let charge = responder.is_none().then(|| Charge {
                            grants: named.grants.clone(),
                            from: peer,
                            cost,
                        });
                        (named.deliver)(peer, body, frame.payload, responder, charge)
                    }
                    None => {
                        if responder.is_none() {
                            // No actor to hold the credit: return it at once.
                            self.return_credit(peer, to, cost);
                        }
                        if let Some(mut r) = responder {
                            r.done = true;
                            let reason =
                                format!("no actor named {:?} on node {}", to, self.0.local);
                            if let Ok(f) = r.failure(reason) {
                                self.send_later(peer, f);
                            }
                        }
                        Err(Undelivered::Stopped)
                    }
                };
                match outcome {
                    Ok(()) => {}
                    Err(Undelivered::Busy(r)) => {
                        tracing::debug!(peer, to = %to, "mailbox full; ask refused as busy");
                        r.busy();
                    }
                    Err(Undelivered::Backlogged(n)) => tracing::warn!(
                        peer,
                        to = %to,
                        "actor is slow: {n} messages wait in its backlog beyond its mailbox"
                    ),
                    Err(Undelivered::Stopped) => {
                        tracing::debug!(peer, to = %to, "message not delivered: no such actor or it stopped")
                    }
                    Err(Undelivered::Decode(e)) => {
                        tracing::debug!(peer, to = %to, "message not delivered: {e}")
                    }
                }
            }
        }
    }
}

impl System {
    /// Return `bytes` of credit for tells to `to` that no actor will take.
    fn return_credit(&self, peer: NodeId, to: &str, bytes: u64) {
        let head = wire::encode_envelope(to, &Kind::Credit { bytes }, &());
        if let Ok(head) = head {
            self.send_later(peer, Frame::new(head, Bytes::new()));
        }
    }
}

/// The direct [`Events`] handler: runs the dispatcher on the transport's task. Holds the
/// system weakly, so a transport kept alive elsewhere does not keep the system alive.
struct Dispatch(Weak<Inner>);

impl transport::Handler for Dispatch {
    fn handle(&self, ev: Event) -> bool {
        match self.0.upgrade() {
            Some(inner) if !inner.token.is_cancelled() => {
                System(inner).on_event(ev);
                true
            }
            _ => false,
        }
    }
}

/// Removes an ask's pending entry however the ask ends.
struct Forget<'a> {
    system: &'a System,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.system.0.pending.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(grants: &Arc<Grants>, from: NodeId, cost: u64) -> Charge {
        Charge {
            grants: grants.clone(),
            from,
            cost,
        }
    }

    fn owed(grants: &Grants) -> Vec<(NodeId, u64)> {
        let mut v: Vec<_> = transport::link::lock(&grants.owed)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        v.sort_unstable();
        v
    }

    /// A batch's charges merge per sender and actor; every byte is owed back exactly once,
    /// to the node that sent it.
    #[test]
    fn merged_charges_return_every_byte_once_to_its_sender() {
        let grants = |actor: &str| {
            Arc::new(Grants {
                system: Weak::new(),
                actor: actor.into(),
                owed: Mutex::new(Default::default()),
            })
        };
        let (a, b) = (grants("a"), grants("b"));
        let mut first = charge(&a, 1, 100);
        first.absorb(charge(&a, 1, 20)).unwrap();
        first.absorb(charge(&a, 1, 3)).unwrap();
        // Another sender, or another actor's charge: handed back, not merged.
        let other_node = first.absorb(charge(&a, 2, 7)).unwrap_err();
        let other_actor = first.absorb(charge(&b, 1, 9)).unwrap_err();
        assert_eq!(owed(&a), vec![], "nothing released before the charges drop");
        drop(first);
        assert_eq!(owed(&a), vec![(1, 123)]);
        drop(other_node);
        drop(other_actor);
        assert_eq!(owed(&a), vec![(1, 123), (2, 7)]);
        assert_eq!(owed(&b), vec![(1, 9)]);
    }
}
