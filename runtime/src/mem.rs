//! An in-process [`Transport`]: nodes joined to one [`Fabric`] reach each other through
//! channels. For tests of the logic above the transport (the runtime, membership, actors);
//! real clusters use a network transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::NodeId;
use crate::transport::lanes::Outq;
use crate::transport::{
    BoxFuture, Capabilities, Error, Event, Events, Frame, PeerInfo, SendError, Transport,
    queue_send, queue_try_send,
};

/// Bytes each lane of a fabric link may queue.
const WINDOW: usize = 4 << 20;

/// Each attached node and where its events go.
type Members = Vec<(NodeId, Events)>;

/// The shared medium. Cheap to clone.
#[derive(Clone, Default)]
pub struct Fabric {
    nodes: Arc<Mutex<Members>>,
    /// Link events go out, in order, from one task of their own, so joining and leaving
    /// never wait on a receiver (nor run its handler under the fabric's lock).
    announcer: Arc<OnceLock<mpsc::UnboundedSender<(Events, Event)>>>,
    /// One two-lane queue per (from, to), each drained in order by a task of its own.
    queues: Arc<Mutex<HashMap<(NodeId, NodeId), Arc<Outq>>>>,
}

impl Fabric {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach node `id`; every node already attached and the new one see each other `Up`.
    pub fn join(&self, id: NodeId, events: impl Into<Events>) -> Arc<Link> {
        let events = events.into();
        let mut nodes = self.nodes.lock().expect("fabric lock");
        for (peer, tx) in nodes.iter() {
            self.announce(tx, Event::Up { peer: id });
            self.announce(&events, Event::Up { peer: *peer });
        }
        nodes.push((id, events));
        Arc::new(Link {
            id,
            fabric: self.clone(),
        })
    }

    fn leave(&self, id: NodeId) {
        let mut nodes = self.nodes.lock().expect("fabric lock");
        nodes.retain(|(n, _)| *n != id);
        self.queues
            .lock()
            .expect("fabric lock")
            .retain(|(a, b), q| {
                let gone = *a == id || *b == id;
                if gone {
                    q.close();
                }
                !gone
            });
        for (_, tx) in nodes.iter() {
            self.announce(
                tx,
                Event::Down {
                    peer: id,
                    reason: "left the fabric".into(),
                },
            );
        }
    }

    fn announce(&self, to: &Events, ev: Event) {
        let tx = self.announcer.get_or_init(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<(Events, Event)>();
            tokio::spawn(async move {
                while let Some((to, ev)) = rx.recv().await {
                    let _ = to.send(ev).await;
                }
            });
            tx
        });
        let _ = tx.send((to.clone(), ev));
    }

    /// The queue from `from` to `to`, started on first use; `None` when `to` is not joined.
    fn queue(&self, from: NodeId, to: NodeId) -> Option<Arc<Outq>> {
        let nodes = self.nodes.lock().expect("fabric lock");
        let events = nodes.iter().find(|(n, _)| *n == to)?.1.clone();
        let mut queues = self.queues.lock().expect("fabric lock");
        let q = queues.entry((from, to)).or_insert_with(|| {
            let q = Arc::new(Outq::new(WINDOW, WINDOW));
            let pump = q.clone();
            tokio::spawn(async move {
                while pump.ready().await {
                    while let Some(frame) = pump.pop() {
                        if events
                            .send(Event::Frame { peer: from, frame })
                            .await
                            .is_err()
                        {
                            pump.close();
                            pump.clear();
                            return;
                        }
                    }
                }
            });
            q
        });
        Some(q.clone())
    }
}

/// One node's end of a [`Fabric`].
pub struct Link {
    id: NodeId,
    fabric: Fabric,
}

impl Transport for Link {
    fn local_id(&self) -> NodeId {
        self.id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_frame: usize::MAX,
            control_window: WINDOW,
            bulk_window: WINDOW,
            zero_copy: true,
        }
    }

    fn send_within(
        &self,
        peer: NodeId,
        frame: Frame,
        limit: Option<Duration>,
    ) -> BoxFuture<'_, Result<(), SendError>> {
        let q = self.fabric.queue(self.id, peer);
        Box::pin(async move {
            match q {
                Some(q) => queue_send(&q, peer, frame, limit).await,
                None => Err(SendError::new(Error::Unreachable(peer), frame)),
            }
        })
    }

    fn try_send(&self, peer: NodeId, frame: Frame) -> Result<(), SendError> {
        match self.fabric.queue(self.id, peer) {
            Some(q) => queue_try_send(&q, peer, frame),
            None => Err(SendError::new(Error::Unreachable(peer), frame)),
        }
    }

    fn set_peers(&self, _peers: Vec<PeerInfo>) {}

    fn connected(&self) -> Vec<NodeId> {
        let nodes = self.fabric.nodes.lock().expect("fabric lock");
        nodes
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| *n != self.id)
            .collect()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.fabric.leave(self.id);
        Box::pin(async {})
    }
}
