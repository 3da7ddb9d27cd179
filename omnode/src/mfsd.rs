//! MFS in the daemon: the mfs server actor (this node's export, served to authenticated
//! peers only — the runtime accepts no message from a link without the cluster key), the
//! client's [`mfs::client::Remote`] over the actor system, the `/mfs` mounts (feature `mfs`:
//! `--mfs DIR` at start, and `mount.mfs` / `omnode mfs mount` while running), the magic
//! folders' resolver ([`crate::mfsmagic`]) and `omnode mfs select`.
//!
//! Locks: the asking node of a lock call is taken from the authenticated link (never from the
//! message), and when a node's link goes down every lock it held here is released.
//!
//! File data travels as the `Bytes` payload of an ask or its answer, on the transport's bulk
//! lane (writes' requests, reads' answers); everything else on the control lane.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use mfs::client::{BoxFuture, Remote};
use mfs::proto::{ACTOR, Answer, Op, Reply, Request};
use mfs::server::{Export, Server};
use runtime::transport::Lane;
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

    /// DFSA for the `--mfs` mount (as the seed's `dfsa=1`): a process that moved here runs
    /// its file calls on MFS paths here, when its home node mounts MFS at the same path with
    /// DFSA too; 0: they go home.
    #[arg(long, value_name = "0|1", default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub mfs_dfsa: u8,
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
        let (mut req, local) = (inbound.msg, ctx.system().local_id());
        // Whose locks these are is the link's to say, not the message's.
        if let Op::Lock { client, .. } | Op::GetLock { client, .. } | Op::DropLocks { client, .. } =
            &mut req.op
        {
            *client = inbound.from;
        }
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
            // File data goes on the bulk lane: it never holds back control messages.
            let lane = if data.is_empty() { Lane::Control } else { Lane::Bulk };
            let _ = reply.send_on(lane, &answer, data).await;
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
            let lane = if data.is_empty() {
                Lane::Control
            } else {
                Lane::Bulk
            };
            let asked = system.ask_on::<Request, Answer>(lane, node, ACTOR, &req, data, after);
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
    #[cfg_attr(not(feature = "mfs"), allow(dead_code))]
    state: Arc<State>,
}

impl Drop for Running {
    fn drop(&mut self) {
        #[cfg(feature = "mfs")]
        lock(&self.state.mounts).clear();
    }
}

/// Serve this node's export, and mount `/mfs` when asked. `nodes`: the map's nodes (more
/// are added as their links come up).
pub fn start(system: &System, args: &Args, nodes: Vec<NodeId>) -> Result<Running, Error> {
    let export = Export::parse(&args.mfs_export);
    let server = Server::start(&export, SERVER_THREADS)
        .map_err(|e| Error::Config(format!("--mfs-export {}: {e}", args.mfs_export)))?;
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let served = server.clone();
    let addr = system.spawn(ACTOR, move || ServerActor {
        server: served.clone(),
        slots: slots.clone(),
    });
    system.serve::<Request, _>(ACTOR, addr);
    tracing::info!(
        "mfs: serving {} to the cluster",
        mfs::server::describe(&export.root, export.read_only)
    );
    let state = Arc::new(State {
        system: system.clone(),
        nodes: Mutex::new(nodes),
        resolver: Arc::new(crate::mfsmagic::Resolver::new(system.local_id())),
        #[cfg(feature = "mfs")]
        mounts: Mutex::new(Vec::new()),
        settings: Mutex::new(Vec::new()),
    });
    let _ = STATE.set(state.clone());
    watch_links(system, state.clone(), server);
    if let Some(dir) = &args.mfs {
        mount(&state, dir, false, args.mfs_dfsa == 1)?;
    }
    Ok(Running { state })
}

/// This node's `/mfs` mounts and their settings (empty when MFS is not mounted): sent with a
/// migration offer, and compared with the home's by the node a process moves to (DFSA).
pub fn mounts() -> Vec<migration::dfsa::Mount> {
    STATE
        .get()
        .map(|s| lock(&s.settings).clone())
        .unwrap_or_default()
}

/// A process coming home holds fds that it opened on the node it ran on by DFSA (under a
/// `/mfs` mount with dfsa=1, which means the same file here): opened again here by path, with
/// the image's flags and offset, so the rebuild can install them like the deputy's copies.
/// `held`: the fd numbers the deputy has copies of. An fd that cannot be opened again is left
/// out (the rebuild then refuses it, and the process stays where it runs).
pub fn reopen_dfsa_fds(
    img: &migrate::ProcessImage,
    held: &[i32],
) -> Vec<(i32, std::os::fd::OwnedFd)> {
    use std::os::unix::fs::OpenOptionsExt;
    let ours: Vec<PathBuf> = mounts()
        .into_iter()
        .filter(|m| m.dfsa)
        .map(|m| m.path)
        .collect();
    let mut out = Vec::new();
    for f in &img.fds {
        let migrate::FdKind::Path {
            path, flags, pos, ..
        } = &f.kind
        else {
            continue;
        };
        let dfsa = ours.iter().any(|m| {
            migration::dfsa::under(m.as_os_str().as_encoded_bytes(), path.as_bytes()).is_some()
        });
        if held.contains(&f.fd) || !dfsa {
            continue;
        }
        // Opened already: never create or truncate again.
        let flags = *flags as i32 & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC);
        let mut o = std::fs::OpenOptions::new();
        match flags & libc::O_ACCMODE {
            libc::O_WRONLY => o.write(true),
            libc::O_RDWR => o.read(true).write(true),
            _ => o.read(true),
        };
        o.custom_flags(flags & !libc::O_ACCMODE);
        let file = match o.open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(fd = f.fd, path, "a DFSA fd cannot be opened at home: {e}");
                continue;
            }
        };
        if flags & libc::O_APPEND == 0 {
            use std::io::Seek;
            let mut file = &file;
            if let Err(e) = file.seek(std::io::SeekFrom::Start(*pos)) {
                tracing::warn!(
                    fd = f.fd,
                    path,
                    "a DFSA fd cannot be put at {pos} at home: {e}"
                );
                continue;
            }
        }
        out.push((f.fd, std::os::fd::OwnedFd::from(file)));
    }
    out
}

/// What `omnode mfs ...` requests reach, once [`start`] ran.
struct State {
    system: System,
    /// The nodes shown under `/mfs` (the map's, and every node whose link came up since).
    nodes: Mutex<Vec<NodeId>>,
    resolver: Arc<crate::mfsmagic::Resolver>,
    #[cfg(feature = "mfs")]
    mounts: Mutex<Vec<(PathBuf, Arc<mfs::client::Mfs>, mfs::fuse::Mounted)>>,
    /// Each mount's path, dfsa and read-only settings (what DFSA compares between nodes).
    settings: Mutex<Vec<migration::dfsa::Mount>>,
}

static STATE: OnceLock<Arc<State>> = OnceLock::new();

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nodes found later (mDNS) get their folder when their link comes up; a node whose link
/// goes down loses the locks it held here.
fn watch_links(system: &System, state: Arc<State>, server: Server) {
    let mut events = system.link_events();
    let token = system.shutdown_token();
    system.tasks().spawn(async move {
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                ev = events.recv() => match ev {
                    Ok(LinkEvent::Up(n)) => {
                        let mut known = lock(&state.nodes);
                        if !known.contains(&n) {
                            known.push(n);
                            #[cfg(feature = "mfs")]
                            for (_, client, _) in lock(&state.mounts).iter() {
                                client.set_nodes(known.clone());
                            }
                        }
                    }
                    Ok(LinkEvent::Down(n, _)) => server.drop_client(n),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    _ => {}
                },
            }
        }
    });
}

/// A control request about MFS (`omnode mfs select`, `omnode mfs mount` / `mount.mfs`).
pub async fn serve(req: crate::control::Request, uid: Option<u32>) -> crate::control::Response {
    use crate::control::{Request, Response};
    let Some(state) = STATE.get().cloned() else {
        return Response::Error("this daemon does not run MFS".into());
    };
    let Some(uid) = uid else {
        return Response::Error("the caller's uid is unknown (SO_PEERCRED failed); refused".into());
    };
    match req {
        Request::MfsSelect { pid, node } => {
            let owner = std::fs::metadata(format!("/proc/{pid}"))
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
            match owner {
                Err(_) => return Response::Error(format!("process {pid}: no such process")),
                Ok(o) if uid != 0 && o != uid => {
                    return Response::Error(format!(
                        "uid {uid} may not select for process {pid} (it belongs to uid {o})"
                    ));
                }
                Ok(_) => {}
            }
            let known = lock(&state.nodes).contains(&node) || node == state.system.local_id();
            if !known {
                return Response::Error(format!(
                    "node {node} is not in this cluster (nodes: {:?})",
                    lock(&state.nodes)
                ));
            }
            match state.resolver.select(pid, node) {
                Ok(()) => Response::Done(format!(
                    "/mfs/selected is node {node} for process {pid} and the children it starts from now on"
                )),
                Err(e) => Response::Error(e),
            }
        }
        Request::MfsMount { dir, options } => {
            if uid != 0 {
                return Response::Error(format!("uid {uid} may not mount (root only)"));
            }
            let opts = match MountOptions::parse(&options) {
                Ok(o) => o,
                Err(e) => return Response::Error(e),
            };
            match mount(&state, &dir, opts.read_only, opts.dfsa) {
                Ok(None) => Response::Done(format!("mfs is already mounted at {}", dir.display())),
                Ok(Some(())) => Response::Done(format!(
                    "mounted every node's files at {}{}",
                    dir.display(),
                    if opts.dfsa {
                        " (dfsa=1: processes moved here from nodes with the same setting run their file calls on it here)"
                    } else {
                        ""
                    }
                )),
                Err(e) => Response::Error(e.to_string()),
            }
        }
        _ => Response::Error("not an mfs request".into()),
    }
}

/// The `-o` options of `mount -t mfs` (the seed's fstab line has `dfsa=1`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    pub dfsa: bool,
}

impl MountOptions {
    /// mount(8)'s generic options are accepted (and mostly mount(8)'s business); anything
    /// else is refused with its name, never silently ignored.
    pub fn parse(s: &str) -> Result<MountOptions, String> {
        let mut o = MountOptions::default();
        for opt in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            match opt {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                "dfsa=1" => o.dfsa = true,
                "dfsa=0" => o.dfsa = false,
                "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev"
                | "nofail" | "nodev" | "nosuid" | "exec" | "noexec" | "relatime" | "noatime"
                | "atime" | "async" | "sync" => {}
                x if x.starts_with("x-") || x.starts_with("comment=") => {}
                x if x.starts_with("dfsa=") => {
                    return Err(format!("mount option '{x}': dfsa is 0 or 1"));
                }
                x => {
                    return Err(format!(
                        "unknown mount option '{x}' for mfs (known: ro, rw, dfsa=0|1 and mount(8)'s generic ones)"
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// Mount `/mfs` at `dir`. `Ok(None)`: it already is.
#[cfg(feature = "mfs")]
fn mount(state: &State, dir: &Path, read_only: bool, dfsa: bool) -> Result<Option<()>, Error> {
    use mfs::client::{Config, Mfs};
    let mut mounts = lock(&state.mounts);
    if mounts.iter().any(|(d, _, _)| d == dir) {
        if mounted_at(dir) {
            return Ok(None);
        }
        // Unmounted from outside (umount /mfs): forget it and mount again.
        mounts.retain(|(d, _, _)| d != dir);
    }
    let system = &state.system;
    let remote = Arc::new(ActorRemote {
        system: system.clone(),
        timeout: CALL_TIMEOUT,
    });
    let client = Arc::new(Mfs::new(
        remote,
        Config::new(system.local_id()),
        lock(&state.nodes).clone(),
    ));
    client.set_resolver(state.resolver.clone());
    let mounted = mfs::fuse::mount_with(
        client.clone(),
        dir,
        tokio::runtime::Handle::current(),
        read_only,
    )
    .map_err(|e| Error::Config(format!("cannot mount mfs at {}: {e}", dir.display())))?;
    tracing::info!(
        "mfs: every node's files at {} (dfsa={})",
        dir.display(),
        u8::from(dfsa)
    );
    mounts.push((dir.to_path_buf(), client, mounted));
    let mut settings = lock(&state.settings);
    settings.retain(|m| m.path != dir);
    settings.push(migration::dfsa::Mount {
        path: dir.to_path_buf(),
        dfsa,
        read_only,
    });
    Ok(Some(()))
}

/// Whether an mfs FUSE mount sits at `dir` (this daemon's mount namespace).
#[cfg(feature = "mfs")]
fn mounted_at(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true; // cannot tell: do not stack a second mount on it
    };
    let want = dir.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let fstype = f.iter().position(|x| *x == "-").and_then(|i| f.get(i + 1));
        f.get(4) == Some(&want.as_str()) && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

#[cfg(not(feature = "mfs"))]
fn mount(_state: &State, dir: &Path, _read_only: bool, _dfsa: bool) -> Result<Option<()>, Error> {
    Err(Error::Config(format!(
        "mfs at {}: this omnode was built without FUSE support (build with --features mfs)",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::MountOptions;

    #[test]
    fn the_seeds_fstab_options_parse_and_unknown_ones_are_named() {
        let o = MountOptions::parse("rw,dfsa=1,noauto,_netdev").unwrap();
        assert_eq!(
            o,
            MountOptions {
                read_only: false,
                dfsa: true
            }
        );
        assert!(MountOptions::parse("ro").unwrap().read_only);
        assert_eq!(MountOptions::parse("").unwrap(), MountOptions::default());
        let e = MountOptions::parse("rw,cache=loose").unwrap_err();
        assert!(e.contains("'cache=loose'"), "{e}");
        assert!(
            MountOptions::parse("dfsa=2")
                .unwrap_err()
                .contains("dfsa is 0 or 1")
        );
    }
}
