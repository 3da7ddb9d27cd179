//! An in-process [`Transport`]: nodes joined to one [`Fabric`] reach each other through
//! channels. For tests of the logic above the transport (the runtime, membership, actors);
//! real clusters use a network transport.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::mpsc;

use crate::NodeId;
use crate::transport::{BoxFuture, Error, Event, Events, Frame, PeerInfo, Transport};

/// Each attached node and where its events go.
type Members = Vec<(NodeId, Events)>;

/// The shared medium. Cheap to clone.
#[derive(Clone, Default)]
pub struct Fabric {
    nodes: Arc<Mutex<Members>>,
    /// Link events go out, in order, from one task of their own, so joining and leaving
    /// never wait on a receiver (nor run its handler under the fabric's lock).
    announcer: Arc<OnceLock<mpsc::UnboundedSender<(Events, Event)>>>,
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

    fn sender(&self, id: NodeId) -> Option<Events> {
        let nodes = self.nodes.lock().expect("fabric lock");
        nodes
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, tx)| tx.clone())
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

    fn send(&self, peer: NodeId, frame: Frame) -> BoxFuture<'_, Result<(), Error>> {
        let tx = self.fabric.sender(peer);
        let me = self.id;
        Box::pin(async move {
            let tx = tx.ok_or(Error::Unreachable(peer))?;
            tx.send(Event::Frame { peer: me, frame })
                .await
                .map_err(|_| Error::Unreachable(peer))
        })
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
