//! Loading a new map into the running node (`setpe -w`, SIGHUP): check it, then give the
//! transport its new peers and digest and the membership actor its new node table. Nodes
//! are added and removed without restarting anyone; a map in which this node would have
//! another id or address is refused (that needs a restart), and nothing changes then.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use discovery::NodeId;
use discovery::map::{self, Map};
use runtime::Addr;
use runtime::transport::{PeerInfo, Transport};

use crate::members::{self, Members};

/// Replaces the cluster digest of new handshakes (the transport's `set_cluster`).
pub type SetCluster = Box<dyn Fn(String) + Send + Sync>;

pub struct Reload {
    local: NodeId,
    /// `--node N` as given at start.
    node_arg: Option<NodeId>,
    port: u16,
    transport: Arc<dyn Transport>,
    set_cluster: SetCluster,
    members: Addr<Members>,
    /// The map in use and the file it came from (SIGHUP reads that file again).
    current: Mutex<(Map, PathBuf)>,
    /// One load at a time.
    busy: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Reload {
    pub fn new(
        local: NodeId,
        node_arg: Option<NodeId>,
        port: u16,
        (map, path): (Map, PathBuf),
        transport: Arc<dyn Transport>,
        set_cluster: SetCluster,
        members: Addr<Members>,
    ) -> Self {
        Reload {
            local,
            node_arg,
            port,
            transport,
            set_cluster,
            members,
            current: Mutex::new((map, path)),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// The map file in use and its entries (`setpe -r`).
    pub fn current(&self) -> (String, String) {
        let cur = lock(&self.current);
        (cur.1.display().to_string(), cur.0.normalized())
    }

    /// Load `path` (None: the file in use again, as on SIGHUP). Returns what changed, in
    /// words; on error nothing has changed.
    pub async fn load(&self, path: Option<&Path>) -> Result<String, String> {
        use crate::metrics::{COUNTERS, bump};
        let r = self.load_inner(path).await;
        match &r {
            Ok(_) => bump(&COUNTERS.map_loads),
            Err(e) => {
                bump(&COUNTERS.map_load_failures);
                tracing::warn!("new map refused; the map in use stays: {e}");
            }
        }
        r
    }

    async fn load_inner(&self, path: Option<&Path>) -> Result<String, String> {
        let _one = self.busy.lock().await;
        let path = match path {
            Some(p) => p.to_owned(),
            None => lock(&self.current).1.clone(),
        };
        let new = Map::load(&path).map_err(|e| e.to_string())?;
        let local = new
            .find_local(map::is_local_addr, self.node_arg)
            .map_err(|e| e.to_string())?;
        let old = lock(&self.current).0.clone();
        if local != self.local {
            return Err(format!(
                "in {} this machine is node {local}, but this daemon runs as node {}; a node cannot change its id while running: restart it with the new map",
                new.file(),
                self.local
            ));
        }
        let (was, now) = (
            old.node(local).map(|n| n.addr),
            new.node(local).map(|n| n.addr),
        );
        if was != now {
            return Err(format!(
                "in {} node {local} has address {}, but this daemon listens on {}; a node cannot change its address while running: restart it with the new map",
                new.file(),
                now.map(|a| a.to_string()).unwrap_or_default(),
                was.map(|a| a.to_string()).unwrap_or_default(),
            ));
        }
        let changes = old.changes(&new);
        let same = old.digest() == new.digest();
        if !same {
            (self.set_cluster)(new.digest_hex());
            let peers = new
                .nodes()
                .filter(|n| n.id != local)
                .map(|n| PeerInfo {
                    id: n.id,
                    addrs: n.addrs().map(|a| SocketAddr::new(a, self.port)).collect(),
                })
                .collect();
            self.transport.set_peers(peers);
            let addrs: BTreeMap<NodeId, String> =
                new.nodes().map(|n| (n.id, n.addr.to_string())).collect();
            let cluster = new.digest_hex();
            self.members
                .ask(
                    |reply| members::Msg::SetMap {
                        addrs,
                        cluster,
                        reply,
                    },
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| format!("the membership actor did not take the new map: {e}"))?;
        }
        let text = if same {
            format!(
                "node {local}: {} is the map in use already ({} nodes); nothing changed",
                new.file(),
                new.len()
            )
        } else {
            let list = |v: &[NodeId]| {
                if v.is_empty() {
                    "none".to_string()
                } else {
                    v.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            };
            let (guests, ours) = crate::migrator::involving(&changes.removed);
            let moved = if guests + ours == 0 {
                "no moved process involves them".to_string()
            } else {
                format!(
                    "{guests} process(es) of theirs running here end once their home is silent for \
the failure time-out, and {ours} process(es) of this node running there end at home, killed by \
SIGKILL (as when a node is lost)"
                )
            };
            format!(
                "node {local}: loaded {} ({} nodes); added: {}; removed: {}; addresses changed: {}. \
Links to removed nodes are closed: {moved}. \
Load the same map on every node: nodes with another map are refused until they agree.",
                new.file(),
                new.len(),
                list(&changes.added),
                list(&changes.removed),
                list(&changes.changed),
            )
        };
        tracing::info!("{text}");
        *lock(&self.current) = (new, path);
        Ok(text)
    }
}
