//! Helpers shared by the transport tests: nodes on 127.x.y.z loopback addresses.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use runtime::NodeId;
use runtime::transport::{Event, Frame, PeerInfo, Transport as _};
use tokio::sync::mpsc;
use transport_tcp::{Config, Transport};

pub const KEY: [u8; 32] = [7; 32];
pub const CLUSTER: &str = "0123456789abcdef-test-map";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A loopback address 127.0.0.N unique to one test (`net` 0..=13) and node (`host` 1..=9);
/// port 0 picks a free one.
pub fn addr(net: u8, host: u8, port: u16) -> SocketAddr {
    assert!(net <= 13 && (1..=9).contains(&host));
    SocketAddr::from(([127, 0, 0, 100 + net * 10 + host], port))
}

pub struct Node {
    pub id: NodeId,
    pub t: Arc<Transport>,
    pub rx: mpsc::Receiver<Event>,
}

impl Node {
    pub fn addr(&self) -> SocketAddr {
        self.t.local_addr()
    }
    pub fn info(&self) -> PeerInfo {
        PeerInfo {
            id: self.id,
            addrs: vec![self.addr()],
        }
    }

    /// The next event, or a panic naming what was awaited after a bounded wait.
    pub async fn next(&mut self, what: &str) -> Event {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!(
                "node {}: event channel closed while waiting for {what}",
                self.id
            ),
            Err(_) => panic!(
                "node {}: no event within {WAIT:?} while waiting for {what}",
                self.id
            ),
        }
    }

    pub async fn expect_up(&mut self, peer: NodeId) {
        match self.next("Up").await {
            Event::Up { peer: p } if p == peer => {}
            other => panic!("node {}: expected Up from {peer}, got {other:?}", self.id),
        }
    }

    pub async fn expect_down(&mut self, peer: NodeId, within: Duration) -> String {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(Event::Down { peer: p, reason })) if p == peer => reason,
            other => panic!(
                "node {}: expected Down from {peer} within {within:?}, got {other:?}",
                self.id
            ),
        }
    }

    pub async fn expect_frame(&mut self, peer: NodeId) -> Frame {
        match self.next("a frame").await {
            Event::Frame { peer: p, frame } if p == peer => frame,
            other => panic!(
                "node {}: expected a frame from {peer}, got {other:?}",
                self.id
            ),
        }
    }

    /// Assert that no event arrives within `d` (a bounded wait for silence).
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(ev) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("node {}: expected no event for {d:?}, got {ev:?}", self.id);
        }
    }
}

pub fn config(id: NodeId, listen: SocketAddr) -> Config {
    Config::new(id, listen, KEY, CLUSTER)
}

pub async fn start_with(config: Config) -> Node {
    start_with_events(config, 4096).await
}

/// Start with an event channel of `capacity` (a slow runtime).
pub async fn start_with_events(config: Config, capacity: usize) -> Node {
    let (tx, rx) = mpsc::channel(capacity);
    let id = config.local;
    let t = Transport::start(config, tx)
        .await
        .expect("transport starts");
    Node { id, t, rx }
}

/// Start on an address a dropped transport may still hold for a moment (its listener
/// closes asynchronously after the drop).
pub async fn restart(id: NodeId, listen: SocketAddr) -> Node {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (tx, rx) = mpsc::channel(4096);
        match Transport::start(config(id, listen), tx).await {
            Ok(t) => return Node { id, t, rx },
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("retrying start: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("restart on {listen}: {e}"),
        }
    }
}

pub async fn start(id: NodeId, listen: SocketAddr) -> Node {
    start_with(config(id, listen)).await
}

/// Start nodes, tell each about all others, and wait until every pair is up.
pub async fn mesh(net: u8, ids: &[NodeId]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for &id in ids {
        nodes.push(start(id, addr(net, id as u8, 0)).await);
    }
    let infos: Vec<PeerInfo> = nodes.iter().map(|n| n.info()).collect();
    for n in &nodes {
        n.t.set_peers(infos.clone());
    }
    for n in nodes.iter_mut() {
        let mut want: Vec<NodeId> = ids.iter().copied().filter(|&i| i != n.id).collect();
        while !want.is_empty() {
            match n.next("Up").await {
                Event::Up { peer } => {
                    assert!(
                        want.contains(&peer),
                        "node {}: unexpected Up from {peer}",
                        n.id
                    );
                    want.retain(|&p| p != peer);
                }
                other => panic!("node {}: expected Up, got {other:?}", n.id),
            }
        }
    }
    nodes
}

pub fn frame(head: &[u8], payload: &[u8]) -> Frame {
    Frame::new(
        Bytes::copy_from_slice(head),
        Bytes::copy_from_slice(payload),
    )
}
