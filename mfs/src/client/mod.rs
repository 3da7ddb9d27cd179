//! The client side: the `/mfs` tree as a plain async filesystem (no FUSE inside).
//!
//! - An inode table: local inode numbers for `(node, server handle)`, each remembering its
//!   parent and name, so a handle gone stale (the serving node restarted) is found again by
//!   walking from the node's root, and only if it is still the same file (dev, ino).
//! - Attributes cached for [`Config::attr_ttl`]; opening a file always fetches them afresh
//!   (close-to-open): [`Opened::keep_cache`] says whether the data seen before is still valid.
//! - Read-ahead: reads are served from windows of [`Config::read_ahead`] bytes, and the next
//!   window is fetched in the background while a sequential reader uses this one.
//! - Write-behind: contiguous writes are gathered up to [`Config::write_behind`] bytes and
//!   sent while the writer goes on (one batch in flight); `flush` (close), `fsync`, reads,
//!   getattr and setattr wait for them, and a failed batch is reported by the next of those.
//!
//! - Locks: POSIX (fcntl) and flock locks are held on the serving node for their owner
//!   (see [`crate::server`]); a blocking lock is retried until granted; an owner's locks go
//!   when it closes the file (flush: POSIX, release: flock).
//!
//! `/mfs` itself holds one directory per node and the magic links of [`crate::magic`]
//! (`here`, `home`, `magic`, `lastexec`, `selected`), resolved per calling process.
//!
//! Modules by subject, each adding methods to [`Mfs`]: `table` (inodes, running an operation
//! on a node, stale handles), `root` (`/mfs` itself, lookup), `attr`, `open`, `dir`, `names`
//! (namespace changes, statfs), `data` (read-ahead, write-behind), `locks`; `remote` is how
//! the library reaches servers.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use crate::magic::{Resolver, Unmoved};
use crate::proto::{self, Attr, Cred, Fh, Kind, Op, Reply};
use crate::{Error, NodeId};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use remote::{Direct, Remote};

mod attr;
mod data;
mod dir;
mod locks;
mod names;
mod open;
mod remote;
mod root;
mod table;

use dir::OpenDir;
use table::Table;

/// The local inode of `/mfs`.
pub const ROOT_INO: u64 = 1;
/// `/mfs/here`: the node the calling process runs on (the other magic links: [`Magic::ino`]).
pub const HERE_INO: u64 = 2;
/// `/mfs/home`: the calling process's home node.
pub const HOME_INO: u64 = 3;
const FIRST_INO: u64 = 16;

#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub local: NodeId,
    pub attr_ttl: Duration,
    pub read_ahead: usize,
    /// Windows fetched ahead of a sequential reader at once.
    pub read_ahead_windows: usize,
    pub write_behind: usize,
    /// Directory entries asked for per call.
    pub dir_batch: u32,
    /// Offer READDIRPLUS to the kernel (listings with attributes). On unless the environment
    /// says `MFS_READDIRPLUS=0` (benchmarks compare both in one run).
    pub readdirplus: bool,
}

impl Config {
    pub fn new(local: NodeId) -> Config {
        Config {
            local,
            attr_ttl: Duration::from_secs(1),
            read_ahead: 1 << 20,
            read_ahead_windows: 3,
            write_behind: 1 << 20,
            dir_batch: 1024,
            readdirplus: std::env::var_os("MFS_READDIRPLUS").is_none_or(|v| v != "0"),
        }
    }
}

/// A looked-up file: its local inode number and attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ino: u64,
    pub attr: Attr,
}

/// An opened file.
#[derive(Clone, Debug)]
pub struct Opened {
    pub fh: u64,
    /// The file is unchanged since it was last seen: data cached from before stays valid.
    pub keep_cache: bool,
    pub attr: Attr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub ino: u64,
    /// The offset to continue after this entry.
    pub next: u64,
}

/// A directory entry as READDIRPLUS gives it to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirPlusItem {
    pub name: Vec<u8>,
    pub kind: Kind,
    /// The local inode: the entry's own when `attr` is known, else a stand-in that no other
    /// entry or lookup ever gets (the kernel must look the name up itself: give it no TTL).
    pub ino: u64,
    /// The attributes a lookup found (`None`: not looked up, or the lookup failed).
    pub attr: Option<Attr>,
    /// Counted as one lookup of `ino`: if the kernel never receives the entry (its buffer was
    /// full), [`Mfs::forget`] it once.
    pub counted: bool,
    /// The offset to continue after this entry.
    pub next: u64,
}

struct Window {
    generation: u64,
    off: u64,
    data: Bytes,
    /// Shorter than asked: the file ends inside this window.
    eof: bool,
}

#[derive(Default)]
struct FileState {
    window: Option<Window>,
    /// Windows being fetched ahead of a sequential reader, in file order.
    prefetch: std::collections::VecDeque<JoinHandle<Result<Window, Error>>>,
    /// Where the last of them ends.
    ahead: u64,
    dirty: Option<(u64, BytesMut)>,
    inflight: Option<JoinHandle<Result<(), Error>>>,
    /// Where the last read ended: a read starting there is sequential.
    last_end: u64,
}

struct OpenFile {
    ino: u64,
    node: NodeId,
    fh: Fh,
    cred: Cred,
    generation: Arc<AtomicU64>,
    st: tokio::sync::Mutex<FileState>,
}

/// The `/mfs` file system of one node.
pub struct Mfs {
    remote: Arc<dyn Remote>,
    cfg: Config,
    nodes: RwLock<Vec<NodeId>>,
    table: Mutex<Table>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<OpenDir>>>,
    /// Per open directory: READDIRPLUS entries fetched but not yet given to the kernel, and
    /// the offset they continue at.
    dir_ahead: Mutex<HashMap<u64, (u64, Vec<DirPlusItem>)>>,
    next_fh: AtomicU64,
    started: (i64, u32),
    resolver: RwLock<Arc<dyn Resolver>>,
    /// (inode, lock owner) pairs that took a lock: their locks are dropped at close.
    lockers: Mutex<HashSet<(u64, u64)>>,
}

fn eacces() -> Error {
    Error::Remote {
        node: 0,
        errno: libc::EACCES,
        msg: "/mfs itself cannot be changed".into(),
    }
}

impl Mfs {
    pub fn new(remote: Arc<dyn Remote>, cfg: Config, nodes: Vec<NodeId>) -> Mfs {
        let cfg_local = cfg.local;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Mfs {
            remote,
            cfg,
            nodes: RwLock::new(nodes),
            table: Mutex::new(Table {
                inodes: HashMap::new(),
                by_key: HashMap::new(),
                next: FIRST_INO,
            }),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            dir_ahead: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            started: (now.as_secs() as i64, now.subsec_nanos()),
            resolver: RwLock::new(Arc::new(Unmoved(cfg_local))),
            lockers: Mutex::new(HashSet::new()),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The nodes shown under `/mfs` (from the map or membership).
    pub fn set_nodes(&self, nodes: Vec<NodeId>) {
        *self.nodes.write().expect("nodes") = nodes;
    }

    async fn send(
        &self,
        node: NodeId,
        cred: &Cred,
        op: Op,
        data: Bytes,
    ) -> Result<(Reply, Bytes), Error> {
        self.remote
            .call(
                node,
                proto::Request {
                    cred: cred.clone(),
                    op,
                },
                data,
            )
            .await
    }
}
