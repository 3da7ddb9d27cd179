//! The per-node actor system: spawning, named actors reachable from any node as
//! `(NodeId, name)`, remote `tell`/`ask`, link events, and shutdown.
//!
//! A message to a named actor is always encoded into a frame, whether the actor is on this
//! node or another: one code path for local and remote peers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actor::{self, Actor, Addr, Restarts};
use crate::transport::{self, Event, Events, Frame, Transport};
use crate::wire::{self, Header, Kind};
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
        mut self,
        answer: &R,
        payload: Bytes,
    ) -> Result<(), Error> {
        self.done = true;
        let frame = self.frame(Kind::Reply { id: self.id }, answer, payload)?;
        self.system.route(self.peer, frame).await
    }

    pub async fn fail(mut self, reason: impl Into<String>) -> Result<(), Error> {
        self.done = true;
        let frame = self.failure(reason.into())?;
        self.system.route(self.peer, frame).await
    }

    fn frame<R: Serialize + ?Sized>(
        &self,
        kind: Kind,
        body: &R,
        payload: Bytes,
    ) -> Result<Frame, Error> {
        let head = wire::encode_head(
            &Header {
                to: self.to.clone(),
                kind,
            },
            body,
        )?;
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
            let (system, peer) = (self.system.clone(), self.peer);
            self.system.tasks().spawn(async move {
                let _ = system.route(peer, frame).await;
            });
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

/// Decodes a message for one named actor and queues it; the future waits while the
/// actor's mailbox is full, so a busy actor slows its senders instead of losing messages.
type Delivery = Box<
    dyn Fn(
            NodeId,
            Bytes,
            Bytes,
            Option<Responder>,
        ) -> transport::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;
type Answer = Result<(Bytes, Bytes), Error>;

struct Inner {
    local: NodeId,
    transport: OnceLock<Arc<dyn Transport>>,
    named: DashMap<String, Delivery>,
    pending: DashMap<u64, oneshot::Sender<Answer>>,
    next_id: AtomicU64,
    links: broadcast::Sender<LinkEvent>,
    token: CancellationToken,
    tasks: TaskTracker,
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
            pending: DashMap::new(),
            next_id: AtomicU64::new(1),
            links,
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }))
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
        let deliver: Delivery = Box::new(move |from, body, payload, reply| {
            let addr = addr.clone();
            let decoded = wire::decode_body::<M>(&body);
            Box::pin(async move {
                let msg = decoded.map_err(|e| e.to_string())?;
                let inbound = Inbound {
                    from,
                    msg,
                    payload,
                    reply,
                };
                addr.tell(inbound.into()).await.map_err(|e| e.to_string())
            })
        });
        self.0.named.insert(name.to_string(), deliver);
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

    pub async fn tell_with_payload<M: Serialize + ?Sized>(
        &self,
        node: NodeId,
        name: &str,
        msg: &M,
        payload: Bytes,
    ) -> Result<(), Error> {
        let head = wire::encode_head(
            &Header {
                to: name.to_string(),
                kind: Kind::Tell,
            },
            msg,
        )?;
        self.route(node, Frame::new(head, payload)).await
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
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let head = wire::encode_head(
            &Header {
                to: name.to_string(),
                kind: Kind::Ask { id },
            },
            req,
        )?;
        let (tx, rx) = oneshot::channel();
        self.0.pending.insert(id, tx);
        let _forget = Forget { system: self, id };
        self.route(node, Frame::new(head, payload)).await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok((body, payload)))) => Ok((wire::decode_body(&body)?, payload)),
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

    /// Send a frame to `node`: through the transport, or straight to dispatch when it is us.
    async fn route(&self, node: NodeId, frame: Frame) -> Result<(), Error> {
        if node == self.0.local {
            // Boxed: a local reply routes back through `on_frame`, which is what called us.
            Box::pin(self.on_frame(node, frame)).await;
            return Ok(());
        }
        match self.0.transport.get() {
            Some(t) => t.send(node, frame).await.map_err(Error::Transport),
            None => Err(Error::Transport(transport::Error::Unreachable(node))),
        }
    }

    async fn on_event(&self, ev: Event) {
        match ev {
            Event::Frame { peer, frame } => self.on_frame(peer, frame).await,
            Event::Discovered { peer, addrs } => {
                let _ = self.0.links.send(LinkEvent::Discovered(peer, addrs));
            }
            Event::Up { peer } => {
                let _ = self.0.links.send(LinkEvent::Up(peer));
            }
            Event::Down { peer, reason } => {
                let _ = self.0.links.send(LinkEvent::Down(peer, reason));
            }
        }
    }

    async fn on_frame(&self, peer: NodeId, frame: Frame) {
        let (header, body) = match wire::decode_head(&frame.head) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(peer, "dropping malformed frame: {e}");
                return;
            }
        };
        match header.kind {
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
            Kind::Tell | Kind::Ask { .. } => {
                let mut responder = match header.kind {
                    Kind::Ask { id } => Some(Responder {
                        system: self.clone(),
                        peer,
                        id,
                        to: header.to.clone(),
                        done: false,
                    }),
                    _ => None,
                };
                // The map guard is dropped before anything is awaited.
                let delivery = self
                    .0
                    .named
                    .get(&header.to)
                    .map(|deliver| deliver(peer, body, frame.payload, responder.take()));
                let outcome = match delivery {
                    Some(delivery) => delivery.await,
                    None => {
                        let reason =
                            format!("no actor named {:?} on node {}", header.to, self.0.local);
                        if let Some(r) = responder {
                            let _ = r.fail(reason.clone()).await;
                        }
                        Err(reason)
                    }
                };
                if let Err(e) = outcome {
                    tracing::debug!(peer, to = %header.to, "message not delivered: {e}");
                }
            }
        }
    }
}

/// The direct [`Events`] handler: runs the dispatcher on the transport's task. Holds the
/// system weakly, so a transport kept alive elsewhere does not keep the system alive.
struct Dispatch(Weak<Inner>);

impl transport::Handler for Dispatch {
    fn handle(&self, ev: Event) -> transport::BoxFuture<'_, bool> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(inner) if !inner.token.is_cancelled() => {
                    System(inner).on_event(ev).await;
                    true
                }
                _ => false,
            }
        })
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
