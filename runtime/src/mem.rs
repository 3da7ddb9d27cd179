//! An in-process [`Transport`]: nodes joined to one [`Fabric`] reach each other through
//! channels. For tests of the logic above the transport (the runtime, membership, actors);
//! real clusters use a network transport.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::NodeId;
use crate::transport::{BoxFuture, Error, Event, Frame, PeerInfo, Transport};

/// Each attached node and where its events go.
type Members = Vec<(NodeId, mpsc::Sender<Event>)>;

/// The shared medium. Cheap to clone.
#[derive(Clone, Default)]
pub struct Fabric {
    nodes: Arc<Mutex<Members>>,
}

impl Fabric {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attach node `id`; every node already attached and the new one see each other `Up`.
    pub fn join(&self, id: NodeId, events: mpsc::Sender<Event>) -> Arc<Link> {
        let mut nodes = self.nodes.lock().expect("fabric lock");
        for (peer, tx) in nodes.iter() {
            let _ = tx.try_send(Event::Up { peer: id });
            let _ = events.try_send(Event::Up { peer: *peer });
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
            let _ = tx.try_send(Event::Down {
                peer: id,
                reason: "left the fabric".into(),
            });
        }
    }

    fn sender(&self, id: NodeId) -> Option<mpsc::Sender<Event>> {
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
