//! MFS in the daemon: the mfs server actor (this node's export, served to authenticated
//! peers only — the runtime accepts no message from a link without the cluster key), the
//! client's [`mfs::client::Remote`] over the actor system, and the `/mfs` mount (feature `mfs`).
//!
//! File data travels as the `Bytes` payload of an ask (`ask_with_payload`), so moving it to
//! the transport's bulk lane is a change of that one call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mfs::client::{BoxFuture, Remote};
use mfs::proto::{ACTOR, Answer, Reply, Request};
use mfs::server::{Export, Server};
use runtime::{Actor, Context, Inbound, LinkEvent, NodeId, System};
use tokio::sync::Semaphore;

use crate::Error;

/// How long one call to a node's mfs server may take before it fails with EIO: a node that
/// went down is noticed within this time, never waited on forever.
#[cfg_attr(not(feature = "mfs"), allow(dead_code))]
pub const CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest a request may take on this node before its slot is given back (answered EIO).
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests served at once; more wait in the actor's mailbox (back-pressure to the peers).
const IN_FLIGHT: usize = 64;
const SERVER_THREADS: usize = 4;

/// The daemon's MFS options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Mount every node's files at DIR (`DIR/<node>/...`, `DIR/here`, `DIR/home`).
    /// Needs omnode built with the `mfs` feature (FUSE).
    #[arg(long, value_name = "DIR")]
    pub mfs: Option<PathBuf>,

    /// The directory this node serves to the cluster's MFS, `:ro` for read-only.
    /// Every node of the cluster reaches it with the calling user's own uid and groups.
    #[arg(long, value_name = "DIR[:ro]", default_value = "/")]
    pub mfs_export: String,
}

pub struct ServerActor {
    server: Server,
    slots: Arc<Semaphore>,
}

pub struct Msg(Inbound<Request>);

impl From<Inbound<Request>> for Msg {
    fn from(i: Inbound<Request>) -> Self {
        Msg(i)
    }
}

impl Actor for ServerActor {
    type Msg = Msg;

    async fn handle(&mut self, Msg(inbound): Msg, ctx: &mut Context<Self>) {
        let Some(reply) = inbound.reply else {
            tracing::debug!(peer = inbound.from, "mfs request without ask ignored");
            return;
        };
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let server = self.server.clone();
        let (req, local) = (inbound.msg, ctx.system().local_id());
        ctx.system().tasks().spawn(async move {
            let (answer, data): (Answer, Bytes) =
                // A file system that hangs (a dead NFS mount inside the export) must not
                // hold the slot forever; the asker has given up by then anyway.
                match tokio::time::timeout(SERVE_TIMEOUT, server.call(req.cred, req.op, inbound.payload)).await {
                    Ok(Ok((r, b))) => (Ok(r), b),
                    Ok(Err(e)) => (Err(e.to_fault()), Bytes::new()),
                    Err(_) => {
                        let late = mfs::Error::Timeout { node: local, after: SERVE_TIMEOUT };
                        (Err(late.to_fault()), Bytes::new())
                    }
                };
            let _ = reply.send_with_payload(&answer, data).await;
            drop(permit);
        });
    }
}

/// [`Remote`] through the actor system: one ask per call, bounded by [`CALL_TIMEOUT`].
#[cfg_attr(not(feature = "mfs"), allow(dead_code))]
pub struct ActorRemote {
    system: System,
    timeout: Duration,
}

impl Remote for ActorRemote {
    fn call(
        &self,
        node: NodeId,
        req: Request,
        data: Bytes,
    ) -> BoxFuture<'static, Result<(Reply, Bytes), mfs::Error>> {
        let (system, after) = (self.system.clone(), self.timeout);
        Box::pin(async move {
            let asked = system.ask_with_payload::<Request, Answer>(node, ACTOR, &req, data, after);
            // The ask's own time-out covers the answer; this one also covers the send.
            match tokio::time::timeout(after + Duration::from_millis(500), asked).await {
                Err(_) | Ok(Err(runtime::Error::Timeout { .. })) => {
                    Err(mfs::Error::Timeout { node, after })
                }
                Ok(Err(e)) => Err(mfs::Error::Unreachable {
                    node,
                    reason: e.to_string(),
                }),
                Ok(Ok((Ok(r), b))) => Ok((r, b)),
                Ok(Ok((Err(f), _))) => Err(mfs::Error::Remote {
                    node,
                    errno: f.errno,
                    msg: f.msg,
                }),
            }
        })
    }
}

/// What runs while the daemon runs; dropping it unmounts.
pub struct Running {
    #[cfg(feature = "mfs")]
    _mount: Option<mfs::fuse::Mounted>,
}

/// Serve this node's export, and mount `/mfs` when asked. `nodes`: the map's nodes (more
/// are added as their links come up).
pub fn start(system: &System, args: &Args, nodes: Vec<NodeId>) -> Result<Running, Error> {
    let export = Export::parse(&args.mfs_export);
    let server = Server::start(&export, SERVER_THREADS)
        .map_err(|e| Error::Config(format!("--mfs-export {}: {e}", args.mfs_export)))?;
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let addr = system.spawn(ACTOR, move || ServerActor {
        server: server.clone(),
        slots: slots.clone(),
    });
    system.serve::<Request, _>(ACTOR, addr);
    tracing::info!(
        "mfs: serving {} to the cluster",
        mfs::server::describe(&export.root, export.read_only)
    );
    let Some(dir) = &args.mfs else {
        return Ok(Running {
            #[cfg(feature = "mfs")]
            _mount: None,
        });
    };
    mount(system, dir, nodes)
}

#[cfg(feature = "mfs")]
fn mount(system: &System, dir: &std::path::Path, nodes: Vec<NodeId>) -> Result<Running, Error> {
    use mfs::client::{Config, Mfs};
    let remote = Arc::new(ActorRemote {
        system: system.clone(),
        timeout: CALL_TIMEOUT,
    });
    let client = Arc::new(Mfs::new(
        remote,
        Config::new(system.local_id()),
        nodes.clone(),
    ));
    let mounted = mfs::fuse::mount(client.clone(), dir, tokio::runtime::Handle::current())
        .map_err(|e| Error::Config(format!("cannot mount mfs at {}: {e}", dir.display())))?;
    // Nodes found later (mDNS) get their folder when their link comes up.
    let mut events = system.link_events();
    let token = system.shutdown_token();
    system.tasks().spawn(async move {
        let mut known = nodes;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(LinkEvent::Up(n)) if !known.contains(&n) => {
                        known.push(n);
                        client.set_nodes(known.clone());
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    _ => {}
                },
            }
        }
    });
    tracing::info!("mfs: every node's files at {}", dir.display());
    Ok(Running {
        _mount: Some(mounted),
    })
}

#[cfg(not(feature = "mfs"))]
fn mount(_system: &System, dir: &std::path::Path, _nodes: Vec<NodeId>) -> Result<Running, Error> {
    let _ = LinkEvent::Up(0);
    Err(Error::Config(format!(
        "--mfs {}: this omnode was built without FUSE support (build with --features mfs)",
        dir.display()
    )))
}
