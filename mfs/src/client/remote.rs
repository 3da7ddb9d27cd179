//! How the client reaches a node's server: the [`Remote`] trait (the daemon implements it
//! over the actor system) and [`Direct`], servers in this process (tests, benchmarks).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use super::BoxFuture;
use crate::proto::{self, Reply};
use crate::server::Server;
use crate::{Error, NodeId};

/// How the client reaches the mfs server of a node. The daemon implements it with the actor
/// system; tests with [`Direct`].
pub trait Remote: Send + Sync + 'static {
    /// Run `req` on `node`'s server; `data` is the payload (write data), and so is the
    /// answer's `Bytes` (read data). Must give up within a bounded time.
    fn call(
        &self,
        node: NodeId,
        req: proto::Request,
        data: Bytes,
    ) -> BoxFuture<'static, Result<(Reply, Bytes), Error>>;
}

/// Servers in this process, one per node number. Errors come back as they would over the
/// wire: as the errno and message of a [`proto::Fault`].
#[derive(Clone, Default)]
pub struct Direct {
    servers: Arc<RwLock<HashMap<NodeId, Server>>>,
}

impl Direct {
    pub fn new() -> Direct {
        Direct::default()
    }
    pub fn add(&self, node: NodeId, server: Server) {
        self.servers.write().expect("servers").insert(node, server);
    }
    /// The server standing for `node`.
    pub fn server(&self, node: NodeId) -> Option<Server> {
        self.servers.read().expect("servers").get(&node).cloned()
    }
    /// As if `node` went down: calls to it fail with ENOTCONN.
    pub fn remove(&self, node: NodeId) {
        self.servers.write().expect("servers").remove(&node);
    }
}

impl Remote for Direct {
    fn call(
        &self,
        node: NodeId,
        req: proto::Request,
        data: Bytes,
    ) -> BoxFuture<'static, Result<(Reply, Bytes), Error>> {
        let server = self.servers.read().expect("servers").get(&node).cloned();
        Box::pin(async move {
            let Some(server) = server else {
                return Err(Error::Unreachable {
                    node,
                    reason: "no such server".into(),
                });
            };
            server.call(req.cred, req.op, data).await.map_err(|e| {
                let f = e.to_fault();
                Error::Remote {
                    node,
                    errno: f.errno,
                    msg: f.msg,
                }
            })
        })
    }
}
