//! The control actor and its Unix socket: the CLI sends one JSON request per line and reads
//! one JSON response per line. The socket tells the caller's uid (SO_PEERCRED), which
//! privileged requests check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use discovery::NodeId;
use discovery::membership::Source;
use runtime::{Actor, Addr, Context, ReplyTo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::loadmon::{self, LoadMonitor};
use crate::members::{self, Members};
use crate::reload::Reload;

/// The longest request line accepted.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an internal actor may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// `setpe -r`: the map in use.
    GetMap,
    /// `setpe -w -f FILE`: load this map file (an absolute path the daemon reads) into the
    /// running node. Root or the daemon's own user only.
    SetMap {
        path: PathBuf,
    },
    /// `setpe -off`: this node leaves the cluster (the daemon stops). Root or the daemon's
    /// own user only.
    Leave,
    /// `migrate PID NODE`: move process PID to node NODE (`home`: bring it back). A user
    /// moves only their own processes, root any.
    Migrate {
        pid: i32,
        to: String,
    },
    /// `mosrun -jN prog`: the caller (process `pid`) is about to exec its program; move it to
    /// `to` once it has. Answered at once (before the exec).
    MoveAfterExec {
        pid: i32,
        to: u32,
    },
    /// `omnode ps` / `mps`: the processes of this node running elsewhere and the guests
    /// running here.
    Ps,
    /// `mosrun` (no `-j` of one node): the caller (process `pid`) is about to exec its
    /// program; place it by the policy ([`crate::balancer`]) and, unless `lock` (`mosrun
    /// -L`), let the balancer move it later. Answered at once (before the exec).
    Place {
        pid: i32,
        place: crate::balancer::Placement,
        #[serde(default)]
        lock: bool,
        /// `mosrun --tree`: the caller stays here and every exec in its tree is placed.
        #[serde(default)]
        tree: bool,
    },
    /// `mosctl`: change or read this node's flags; expel, bring.
    Node(crate::balancer::NodeOp),
    /// `omnode mfs select NODE`: `/mfs/selected` of process `pid` and of the children it
    /// starts from now on. Its owner or root.
    MfsSelect {
        pid: u32,
        node: u32,
    },
    /// `omnode freeze` of a non-root user: the daemon freezes `pid` if the caller could thaw
    /// it, streams the image back and ends the process once the caller stored it (see
    /// [`crate::ckpt_daemon`]).
    Freeze {
        pid: i32,
        #[serde(default)]
        leave_running: bool,
    },
    /// `omnode thaw` of a non-root user: the caller sends its stdio and these `--fd`
    /// descriptors, then the image; the daemon thaws it as the caller.
    Thaw {
        #[serde(default)]
        placeholders: Vec<i32>,
        #[serde(default)]
        wait: bool,
    },
    /// `mount.mfs` / `omnode mfs mount`: mount `/mfs` at `dir` (`options`: mount's `-o`).
    /// Root only.
    MfsMount {
        dir: PathBuf,
        #[serde(default)]
        options: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Status(StatusReport),
    /// The map in use: its file and its entries, one `ID ADDRESS [ALIAS]` per line.
    Map {
        file: String,
        text: String,
    },
    /// What a request did, in words for the person who asked.
    Done(String),
    Error(String),
    Ps(Vec<crate::migrator::PsRow>),
    /// This node's flags (`mosctl status`, and after a `mosctl` change).
    Flags(crate::balancer::FlagsReport),
    /// What `mosctl expel` / `bring` moved and what not (with why).
    Moves(crate::balancer::MoveReport),
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The answering node.
    pub node: NodeId,
    pub nodes: Vec<NodeRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: NodeId,
    pub addr: String,
    pub up: bool,
    /// The answering node itself.
    pub local: bool,
    /// How the node is known: `local`, `map` or `mdns`.
    pub source: String,
    /// Seconds in the current up/down state.
    pub since_s: f64,
    /// Seconds since the last sign of life (null for the local node and nodes never heard
    /// from). For a DOWN node the figures below are null: they would be stale.
    #[serde(default)]
    pub last_seen_s: Option<f64>,
    /// Smoothed runnable processes; null when no fresh figure is known.
    pub load: Option<f64>,
    pub load_age_ms: Option<u64>,
    pub cpus: Option<u32>,
    pub speed: Option<u32>,
    pub free_mem: Option<u64>,
    pub total_mem: Option<u64>,
    /// CPUs' worth of time the node may use (a cgroup's quota or cpuset, else its CPUs).
    #[serde(default)]
    pub capacity: Option<f64>,
    /// The load normalised by speed (runnable per 1000 MHz of capacity × speed).
    #[serde(default)]
    pub norm_load: Option<f64>,
    /// The transport of this node's link to it (`tcp`, `p2p`, `rdma`, `tcp (fallback)`);
    /// null for the answering node and nodes without a link.
    #[serde(default)]
    pub link: Option<String>,
    /// Why a `--transport rdma` link runs over TCP (null otherwise).
    #[serde(default)]
    pub link_why: Option<String>,
}

impl NodeRow {
    /// Fill in which transport links this node to the row's node (see [`crate::status`]).
    fn with_link(mut self, local: NodeId) -> NodeRow {
        if self.id != local {
            if let Some((link, why)) = crate::status::link_of(self.id) {
                (self.link, self.link_why) = (Some(link), why);
            }
        }
        self
    }
}

pub enum Msg {
    Request {
        req: Request,
        uid: Option<u32>,
        reply: ReplyTo<Response>,
    },
}

pub struct Control {
    local: NodeId,
    members: Addr<Members>,
    load: Addr<LoadMonitor>,
    /// Loads new maps; None in zero-config mode (no map to replace).
    reload: Option<Arc<Reload>>,
    /// Cancelled by `setpe -off`: the daemon stops.
    leave: CancellationToken,
}

impl Control {
    pub fn new(
        local: NodeId,
        members: Addr<Members>,
        load: Addr<LoadMonitor>,
        reload: Option<Arc<Reload>>,
        leave: CancellationToken,
    ) -> Self {
        Control {
            local,
            members,
            load,
            reload,
            leave,
        }
    }

    /// Whether `uid` may change this node: root or the daemon's own user.
    fn privileged(uid: Option<u32>) -> Result<(), String> {
        let me = nix::unistd::geteuid().as_raw();
        match uid {
            Some(u) if u == 0 || u == me => Ok(()),
            Some(u) => Err(format!(
                "uid {u} may not change this node (only root or uid {me}, which runs omnode)"
            )),
            None => Err("the caller's uid is unknown (SO_PEERCRED failed); refused".into()),
        }
    }

    async fn request(&self, req: Request, uid: Option<u32>) -> Response {
        let no_map = || {
            Response::Error(
                "this node runs zero-config (mDNS): it has no map to show or replace".into(),
            )
        };
        match req {
            Request::Status => match self.status().await {
                Ok(r) => Response::Status(r),
                Err(e) => Response::Error(format!("status unavailable: {e}")),
            },
            Request::GetMap => match &self.reload {
                None => no_map(),
                Some(r) => {
                    let (file, text) = r.current();
                    Response::Map { file, text }
                }
            },
            Request::SetMap { path } => {
                if let Err(e) = Self::privileged(uid) {
                    return Response::Error(e);
                }
                match &self.reload {
                    None => no_map(),
                    Some(r) => match r.load(Some(&path)).await {
                        Ok(done) => Response::Done(done),
                        Err(e) => Response::Error(e),
                    },
                }
            }
            Request::Migrate { .. }
            | Request::MoveAfterExec { .. }
            | Request::Ps
            | Request::Place { .. }
            | Request::Node(_) => {
                Response::Error("migrations are served by the socket connection".into())
            }
            Request::MfsSelect { .. } | Request::MfsMount { .. } => {
                Response::Error("mfs requests are served by the socket connection".into())
            }
            Request::Freeze { .. } | Request::Thaw { .. } => {
                Response::Error("freeze and thaw are served by the socket connection".into())
            }
            Request::Leave => {
                if let Err(e) = Self::privileged(uid) {
                    return Response::Error(e);
                }
                tracing::info!(?uid, "setpe -off: node {} leaves the cluster", self.local);
                self.leave.cancel();
                Response::Done(format!(
                    "node {} leaves the cluster: its daemon stops",
                    self.local
                ))
            }
        }
    }

    async fn status(&self) -> Result<StatusReport, runtime::Error> {
        let states = self
            .members
            .ask(members::Msg::Snapshot, ASK_TIMEOUT)
            .await?;
        let loads: BTreeMap<_, _> = self
            .load
            .ask(loadmon::Msg::Snapshot, ASK_TIMEOUT)
            .await?
            .into_iter()
            .map(|(id, l, age)| (id, (l, age)))
            .collect();
        let now = std::time::Instant::now();
        let nodes = states
            .into_iter()
            .map(|(s, addr)| {
                // A DOWN node's last figures are stale: show when it was last seen instead.
                let l = loads.get(&s.id).filter(|_| s.up || s.id == self.local);
                NodeRow {
                    last_seen_s: s
                        .last_seen
                        .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                    id: s.id,
                    addr,
                    up: s.up,
                    local: s.id == self.local,
                    source: match s.source {
                        Source::Local => "local",
                        Source::Map => "map",
                        Source::Mdns => "mdns",
                    }
                    .into(),
                    since_s: now.saturating_duration_since(s.since).as_secs_f64(),
                    load: l.map(|(l, _)| l.load),
                    load_age_ms: l.map(|(_, age)| age.as_millis() as u64),
                    cpus: l.map(|(l, _)| l.cpus),
                    speed: l.map(|(l, _)| l.speed),
                    free_mem: l.map(|(l, _)| l.free_mem),
                    total_mem: l.map(|(l, _)| l.total_mem),
                    capacity: l.map(|(l, _)| l.capacity()),
                    norm_load: l.map(|(l, _)| l.normalised()),
                    link: None,
                    link_why: None,
                }
                .with_link(self.local)
            })
            .collect();
        Ok(StatusReport {
            node: self.local,
            nodes,
        })
    }
}

impl Actor for Control {
    type Msg = Msg;

    async fn handle(&mut self, msg: Msg, _ctx: &mut Context<Self>) {
        let Msg::Request { req, uid, reply } = msg;
        tracing::debug!(?req, ?uid, "control request");
        let resp = self.request(req, uid).await;
        let _ = reply.send(resp);
    }
}

/// Bind the control socket at `path` (replacing a stale one left by a dead daemon, refusing
/// to steal one a live daemon serves).
pub async fn bind(path: &Path) -> Result<UnixListener, Error> {
    let err = |reason: String| Error::Socket {
        path: path.to_owned(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err(
                "exists and is not a socket; choose another --socket".into()
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(err(
                "another omnode daemon is serving it; stop it or choose another --socket".into(),
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    // Anyone may ask for status; privileged requests check the caller's uid.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| err(e.to_string()))?;
    Ok(listener)
}

/// Serve the socket until `token` is cancelled.
pub async fn serve(
    listener: UnixListener,
    control: Addr<Control>,
    token: tokio_util::sync::CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, control).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn connection(stream: UnixStream, control: Addr<Control>) -> std::io::Result<()> {
    let cred = stream.peer_cred().ok();
    let uid = cred.map(|c| c.uid());
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd.take(MAX_REQUEST as u64));
    let mut line = String::new();
    let resp = match tokio::time::timeout(REQUEST_TIMEOUT, lines.read_line(&mut line)).await {
        Err(_) => Response::Error("no request within 10 s".into()),
        Ok(Err(e)) => Response::Error(format!("unreadable request: {e}")),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error(format!("bad request: {e}")),
            // a user's freeze/thaw: a binary conversation on the raw socket, on a blocking
            // thread (the client sends nothing after its request line until told to)
            Ok(req @ (Request::Freeze { .. } | Request::Thaw { .. })) => {
                let Some(c) = cred else {
                    return Err(std::io::Error::other("SO_PEERCRED failed"));
                };
                let peer = crate::ckpt_daemon::Peer {
                    uid: c.uid(),
                    pid: c.pid(),
                };
                let rd = lines.into_inner().into_inner();
                let s = rd.reunite(wr).map_err(std::io::Error::other)?.into_std()?;
                s.set_nonblocking(false)?;
                tokio::task::spawn_blocking(move || match req {
                    Request::Freeze { pid, leave_running } => {
                        crate::ckpt_daemon::serve_freeze(pid, leave_running, peer, s)
                    }
                    Request::Thaw { placeholders, wait } => {
                        crate::ckpt_daemon::serve_thaw(placeholders, wait, peer, s)
                    }
                    _ => {}
                });
                return Ok(());
            }
            // Migrations take longer than an ask of the control actor may: served here.
            Ok(req @ (Request::Migrate { .. } | Request::MoveAfterExec { .. } | Request::Ps)) => {
                crate::migrator::serve(req, uid).await
            }
            Ok(req @ (Request::Place { .. } | Request::Node(_))) => {
                crate::balancer::serve(req, uid).await
            }
            Ok(req @ (Request::MfsSelect { .. } | Request::MfsMount { .. })) => {
                crate::mfsd::serve(req, uid).await
            }
            Ok(req) => control
                .ask(|reply| Msg::Request { req, uid, reply }, ASK_TIMEOUT)
                .await
                .unwrap_or_else(|e| Response::Error(format!("control actor: {e}"))),
        },
    };
    let mut out = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
    out.push(b'\n');
    wr.write_all(&out).await?;
    wr.shutdown().await
}

/// Send one request to the daemon at `path` and read its response (CLI side; blocking).
pub fn call(path: &Path, req: &Request) -> Result<Response, Error> {
    use std::io::{BufRead, Write};
    let not_running = |e: std::io::Error| Error::NotRunning {
        path: PathBuf::from(path),
        reason: e.to_string(),
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(not_running)?;
    s.set_read_timeout(Some(Duration::from_secs(40)))
        .map_err(not_running)?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line).map_err(not_running)?;
    let mut answer = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut answer)
        .map_err(not_running)?;
    serde_json::from_str(&answer).map_err(|e| Error::Refused {
        path: path.to_owned(),
        reason: format!("unreadable answer: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_but_never_a_live_one_or_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/omnode.sock");
        let live = bind(&path).await.unwrap();
        let again = bind(&path).await.unwrap_err().to_string();
        assert!(
            again.contains("another omnode daemon is serving it"),
            "{again}"
        );
        drop(live); // the socket file stays behind, as after a crash
        assert!(path.exists());
        let _rebound = bind(&path).await.unwrap();

        let file = dir.path().join("precious");
        std::fs::write(&file, "keep me").unwrap();
        let refused = bind(&file).await.unwrap_err().to_string();
        assert!(refused.contains("is not a socket"), "{refused}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
