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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::task::JoinHandle;

use crate::magic::{Magic, Resolver, Unmoved};
use crate::proto::{self, Attr, Cred, Fh, Handle, Kind, Op, ROOT, Reply, SetAttr, StatFs};
use crate::{Error, NodeId};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub use remote::{Direct, Remote};

mod data;
mod locks;
mod remote;

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

struct Inode {
    node: NodeId,
    handle: Handle,
    parent: u64,
    name: Vec<u8>,
    attr: Attr,
    fetched: Instant,
    /// Kernel lookups not yet forgotten.
    lookups: u64,
    /// Server lookups not yet forgotten (what to tell the server at the end).
    server_refs: u64,
    /// Bumped on every change seen here: read-ahead windows of older generations are dropped.
    generation: Arc<AtomicU64>,
}

struct Table {
    inodes: HashMap<u64, Inode>,
    by_key: HashMap<(NodeId, Handle), u64>,
    next: u64,
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

enum OpenDir {
    Root(Vec<DirItem>),
    Remote {
        node: NodeId,
        fh: Fh,
        cred: Cred,
        ino: u64,
        parent: u64,
    },
}

/// The `/mfs` file system of one node.
pub struct Mfs {
    remote: Arc<dyn Remote>,
    cfg: Config,
    nodes: RwLock<Vec<NodeId>>,
    table: Mutex<Table>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<OpenDir>>>,
    next_fh: AtomicU64,
    started: (i64, u32),
    resolver: RwLock<Arc<dyn Resolver>>,
    /// (inode, lock owner) pairs that took a lock: their locks are dropped at close.
    lockers: Mutex<HashSet<(u64, u64)>>,
}

fn magic_attr(ino: u64, kind: Kind, perm: u32, size: u64, t: (i64, u32)) -> Attr {
    Attr {
        ino,
        dev: 0,
        size,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        kind,
        perm,
        nlink: if kind == Kind::Dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        blksize: 4096,
    }
}

fn same_version(a: &Attr, b: &Attr) -> bool {
    (a.size, a.mtime, a.ctime) == (b.size, b.mtime, b.ctime)
}

fn is_stale(e: &Error) -> bool {
    e.errno() == libc::ESTALE
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

    fn has_node(&self, n: NodeId) -> bool {
        self.nodes.read().expect("nodes").contains(&n) || n == self.cfg.local
    }

    /// Who answers the magic folders (by default: processes never move, all are this node).
    pub fn set_resolver(&self, r: Arc<dyn Resolver>) {
        *self.resolver.write().expect("resolver") = r;
    }

    /// The node magic link `ino` stands for, for process `pid`.
    fn magic_node(&self, ino: u64, pid: u32) -> NodeId {
        match Magic::from_ino(ino) {
            Some(m) => self.resolver.read().expect("resolver").resolve(m, pid),
            None => self.cfg.local,
        }
    }

    /// Process `pid` created `ino` with O_CREAT (what `/mfs/magic` follows).
    pub fn note_created(&self, pid: u32, ino: u64) {
        let node = self
            .table
            .lock()
            .expect("inode table")
            .inodes
            .get(&ino)
            .map(|i| i.node);
        if let Some(node) = node {
            self.resolver.read().expect("resolver").created(pid, node);
        }
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

    fn where_is(&self, ino: u64) -> Result<(NodeId, Handle), Error> {
        let t = self.table.lock().expect("inode table");
        t.inodes
            .get(&ino)
            .map(|i| (i.node, i.handle))
            .ok_or(Error::Stale(ino))
    }

    /// Run an operation on the handles of `inos` (all on one node); when the server calls a
    /// handle stale, find the files again from the node's root and retry once.
    async fn on(
        &self,
        cred: &Cred,
        inos: &[u64],
        make: impl Fn(&[Handle]) -> Op,
        data: Bytes,
    ) -> Result<(NodeId, Reply, Bytes), Error> {
        let mut node = None;
        let mut hs = Vec::with_capacity(inos.len());
        for &ino in inos {
            if ino < FIRST_INO {
                return Err(eacces());
            }
            let (n, h) = self.where_is(ino)?;
            if node.is_some_and(|m| m != n) {
                return Err(Error::Remote {
                    node: n,
                    errno: libc::EXDEV,
                    msg: "files on different nodes".into(),
                });
            }
            node = Some(n);
            hs.push(h);
        }
        let node = node.expect("at least one inode");
        match self.send(node, cred, make(&hs), data.clone()).await {
            Err(e) if is_stale(&e) => {
                let mut hs = Vec::with_capacity(inos.len());
                for &ino in inos {
                    hs.push(self.rewalk(cred, ino).await?);
                }
                let (r, b) = self.send(node, cred, make(&hs), data).await?;
                Ok((node, r, b))
            }
            Err(e) => Err(e),
            Ok((r, b)) => Ok((node, r, b)),
        }
    }

    /// Find `ino` again by name from its node's root; refuse if it is now another file.
    async fn rewalk(&self, cred: &Cred, ino: u64) -> Result<Handle, Error> {
        let mut chain = Vec::new();
        let node;
        {
            let t = self.table.lock().expect("inode table");
            let mut cur = ino;
            loop {
                let i = t.inodes.get(&cur).ok_or(Error::Stale(ino))?;
                if i.handle == ROOT {
                    node = i.node;
                    break;
                }
                chain.push((cur, i.name.clone(), (i.attr.dev, i.attr.ino)));
                cur = i.parent;
            }
        }
        let mut h = ROOT;
        for (cur, name, key) in chain.into_iter().rev() {
            let (r, _) = self
                .send(node, cred, Op::Lookup { parent: h, name }, Bytes::new())
                .await?;
            let Reply::Entry { handle, attr } = r else {
                return Err(Error::Protocol {
                    node,
                    what: format!("{r:?} to a lookup"),
                });
            };
            if (attr.dev, attr.ino) != key {
                return Err(Error::Stale(cur));
            }
            let mut t = self.table.lock().expect("inode table");
            if let Some(i) = t.inodes.get_mut(&cur) {
                let old = std::mem::replace(&mut i.handle, handle);
                i.server_refs = 1;
                i.attr = attr;
                i.fetched = Instant::now();
                t.by_key.remove(&(node, old));
                t.by_key.insert((node, handle), cur);
            }
            h = handle;
        }
        Ok(h)
    }

    /// Enter a server's answer about a file in the inode table (one more lookup of it).
    fn enter(
        &self,
        node: NodeId,
        handle: Handle,
        parent: u64,
        name: &[u8],
        attr: Attr,
        counted: bool,
    ) -> Entry {
        let mut t = self.table.lock().expect("inode table");
        if let Some(&ino) = t.by_key.get(&(node, handle)) {
            if let Some(i) = t.inodes.get_mut(&ino) {
                if !same_version(&i.attr, &attr) {
                    i.generation.fetch_add(1, Ordering::Relaxed);
                }
                i.attr = attr.clone();
                i.fetched = Instant::now();
                i.lookups += 1;
                if counted {
                    i.server_refs += 1;
                }
                i.parent = parent;
                i.name = name.to_vec();
                return Entry { ino, attr };
            }
        }
        let ino = t.next;
        t.next += 1;
        t.by_key.insert((node, handle), ino);
        t.inodes.insert(
            ino,
            Inode {
                node,
                handle,
                parent,
                name: name.to_vec(),
                attr: attr.clone(),
                fetched: Instant::now(),
                lookups: 1,
                server_refs: u64::from(counted),
                generation: Arc::new(AtomicU64::new(0)),
            },
        );
        Entry { ino, attr }
    }

    fn note_attr(&self, ino: u64, attr: &Attr) {
        let mut t = self.table.lock().expect("inode table");
        if let Some(i) = t.inodes.get_mut(&ino) {
            if !same_version(&i.attr, attr) {
                i.generation.fetch_add(1, Ordering::Relaxed);
            }
            i.attr = attr.clone();
            i.fetched = Instant::now();
        }
    }

    fn expire_attr(&self, ino: u64) {
        let mut t = self.table.lock().expect("inode table");
        if let Some(i) = t.inodes.get_mut(&ino) {
            i.fetched = Instant::now() - self.cfg.attr_ttl * 2;
            i.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn root_attr(&self) -> Attr {
        magic_attr(ROOT_INO, Kind::Dir, 0o555, 0, self.started)
    }

    /// A magic link's attributes; its size is that of this node's number (the target
    /// depends on who reads it).
    fn magic_link(&self, ino: u64) -> Attr {
        let target = self.cfg.local.to_string();
        magic_attr(ino, Kind::Symlink, 0o777, target.len() as u64, self.started)
    }

    pub async fn lookup(&self, cred: &Cred, parent: u64, name: &[u8]) -> Result<Entry, Error> {
        if parent == ROOT_INO {
            if let Some(m) = Magic::from_name(name) {
                return Ok(Entry {
                    ino: m.ino(),
                    attr: self.magic_link(m.ino()),
                });
            }
            return match name {
                b"." | b".." => Ok(Entry {
                    ino: ROOT_INO,
                    attr: self.root_attr(),
                }),
                _ => {
                    let node = std::str::from_utf8(name)
                        .ok()
                        .filter(|s| !s.starts_with('0') && !s.starts_with('+'))
                        .and_then(|s| s.parse::<NodeId>().ok())
                        .filter(|&n| self.has_node(n))
                        .ok_or_else(|| Error::Remote {
                            node: self.cfg.local,
                            errno: libc::ENOENT,
                            msg: format!(
                                "no node {:?} in the cluster",
                                String::from_utf8_lossy(name)
                            ),
                        })?;
                    let (r, _) = self
                        .send(node, cred, Op::GetAttr { handle: ROOT }, Bytes::new())
                        .await?;
                    let Reply::Attr(attr) = r else {
                        return Err(Error::Protocol {
                            node,
                            what: format!("{r:?} to getattr"),
                        });
                    };
                    Ok(self.enter(node, ROOT, ROOT_INO, name, attr, false))
                }
            };
        }
        let (node, r, _) = self
            .on(
                cred,
                &[parent],
                |h| Op::Lookup {
                    parent: h[0],
                    name: name.to_vec(),
                },
                Bytes::new(),
            )
            .await?;
        match r {
            Reply::Entry { handle, attr } => Ok(self.enter(node, handle, parent, name, attr, true)),
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?} to a lookup"),
            }),
        }
    }

    /// The kernel forgets `n` lookups of `ino`; at zero the server is told too.
    pub fn forget(&self, ino: u64, n: u64) {
        let gone = {
            let mut t = self.table.lock().expect("inode table");
            let Some(i) = t.inodes.get_mut(&ino) else {
                return;
            };
            i.lookups = i.lookups.saturating_sub(n);
            if i.lookups > 0 {
                return;
            }
            let i = t.inodes.remove(&ino).expect("present");
            t.by_key.remove(&(i.node, i.handle));
            i
        };
        if gone.server_refs > 0 && gone.handle != ROOT {
            let call = self.remote.call(
                gone.node,
                proto::Request {
                    cred: Cred::root(),
                    op: Op::Forget {
                        handle: gone.handle,
                        n: gone.server_refs,
                    },
                },
                Bytes::new(),
            );
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = call.await;
                });
            }
        }
    }

    /// Wait for the written data of every open file of `ino` to reach its server.
    async fn settle(&self, ino: u64) -> Result<(), Error> {
        self.settle_others(ino, None).await
    }

    /// As [`Mfs::settle`], for every open file of `ino` but `me`.
    async fn settle_others(&self, ino: u64, me: Option<&Arc<OpenFile>>) -> Result<(), Error> {
        let open: Vec<Arc<OpenFile>> = self
            .files
            .lock()
            .expect("open files")
            .values()
            .filter(|f| f.ino == ino && !me.is_some_and(|m| Arc::ptr_eq(m, f)))
            .cloned()
            .collect();
        for f in open {
            let mut st = f.st.lock().await;
            self.drain(&f, &mut st).await?;
        }
        Ok(())
    }

    pub async fn getattr(&self, cred: &Cred, ino: u64) -> Result<Attr, Error> {
        match ino {
            ROOT_INO => return Ok(self.root_attr()),
            i if Magic::from_ino(i).is_some() => return Ok(self.magic_link(ino)),
            _ => {}
        }
        self.settle(ino).await?;
        {
            let t = self.table.lock().expect("inode table");
            let i = t.inodes.get(&ino).ok_or(Error::Stale(ino))?;
            if i.fetched.elapsed() < self.cfg.attr_ttl {
                return Ok(i.attr.clone());
            }
        }
        self.fresh_attr(cred, ino).await
    }

    async fn fresh_attr(&self, cred: &Cred, ino: u64) -> Result<Attr, Error> {
        let (node, r, _) = self
            .on(cred, &[ino], |h| Op::GetAttr { handle: h[0] }, Bytes::new())
            .await?;
        match r {
            Reply::Attr(a) => {
                self.note_attr(ino, &a);
                Ok(a)
            }
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?} to getattr"),
            }),
        }
    }

    /// Change attributes; `fh` is an open file of the caller to truncate through.
    pub async fn setattr(
        &self,
        cred: &Cred,
        ino: u64,
        mut set: SetAttr,
        fh: Option<u64>,
    ) -> Result<Attr, Error> {
        if ino < FIRST_INO {
            return Err(eacces());
        }
        self.settle(ino).await?;
        set.fh = fh
            .and_then(|fh| self.files.lock().expect("open files").get(&fh).cloned())
            .map(|f| f.fh);
        self.expire_attr(ino);
        let (node, r, _) = self
            .on(
                cred,
                &[ino],
                |h| Op::SetAttr {
                    handle: h[0],
                    set: set.clone(),
                },
                Bytes::new(),
            )
            .await?;
        match r {
            Reply::Attr(a) => {
                self.note_attr(ino, &a);
                Ok(a)
            }
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?} to setattr"),
            }),
        }
    }

    /// readlink as an unknown process (magic links: as one that never moved).
    pub async fn readlink(&self, cred: &Cred, ino: u64) -> Result<Vec<u8>, Error> {
        self.readlink_for(cred, 0, ino).await
    }

    /// readlink by process `pid`: magic links name the node they stand for, for it.
    pub async fn readlink_for(&self, cred: &Cred, pid: u32, ino: u64) -> Result<Vec<u8>, Error> {
        if Magic::from_ino(ino).is_some() {
            return Ok(self.magic_node(ino, pid).to_string().into_bytes());
        }
        let (node, r, _) = self
            .on(
                cred,
                &[ino],
                |h| Op::ReadLink { handle: h[0] },
                Bytes::new(),
            )
            .await?;
        match r {
            Reply::Link(t) => Ok(t),
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?} to readlink"),
            }),
        }
    }

    fn add_file(&self, ino: u64, node: NodeId, fh: Fh, cred: &Cred) -> u64 {
        let generation = {
            let t = self.table.lock().expect("inode table");
            t.inodes
                .get(&ino)
                .map(|i| i.generation.clone())
                .unwrap_or_default()
        };
        let local = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let f = OpenFile {
            ino,
            node,
            fh,
            cred: cred.clone(),
            generation,
            st: tokio::sync::Mutex::new(FileState::default()),
        };
        self.files
            .lock()
            .expect("open files")
            .insert(local, Arc::new(f));
        local
    }

    /// Open a file; its attributes are always fetched afresh (close-to-open).
    pub async fn open(&self, cred: &Cred, ino: u64, flags: i32) -> Result<Opened, Error> {
        if ino < FIRST_INO {
            return Err(Error::Remote {
                node: 0,
                errno: libc::EISDIR,
                msg: "not a file".into(),
            });
        }
        self.settle(ino).await?;
        let before = {
            let t = self.table.lock().expect("inode table");
            t.inodes.get(&ino).map(|i| i.attr.clone())
        };
        let (node, r, _) = self
            .on(
                cred,
                &[ino],
                |h| Op::Open {
                    handle: h[0],
                    flags,
                },
                Bytes::new(),
            )
            .await?;
        let Reply::Opened { fh, attr } = r else {
            return Err(Error::Protocol {
                node,
                what: format!("{r:?} to open"),
            });
        };
        let keep_cache =
            before.is_some_and(|b| same_version(&b, &attr)) && flags & libc::O_TRUNC == 0;
        self.note_attr(ino, &attr);
        Ok(Opened {
            fh: self.add_file(ino, node, fh, cred),
            keep_cache,
            attr,
        })
    }

    pub async fn create(
        &self,
        cred: &Cred,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Entry, Opened), Error> {
        let (node, r, _) = self
            .on(
                cred,
                &[parent],
                |h| Op::Create {
                    parent: h[0],
                    name: name.to_vec(),
                    mode,
                    flags,
                },
                Bytes::new(),
            )
            .await?;
        let Reply::Created { handle, attr, fh } = r else {
            return Err(Error::Protocol {
                node,
                what: format!("{r:?} to create"),
            });
        };
        self.expire_attr(parent);
        let e = self.enter(node, handle, parent, name, attr.clone(), true);
        let fh = self.add_file(e.ino, node, fh, cred);
        Ok((
            e,
            Opened {
                fh,
                keep_cache: false,
                attr,
            },
        ))
    }

    pub async fn opendir(&self, cred: &Cred, ino: u64) -> Result<u64, Error> {
        let dir = if ino == ROOT_INO {
            let mut items = vec![
                DirItem {
                    name: b".".to_vec(),
                    kind: Kind::Dir,
                    ino: ROOT_INO,
                    next: 1,
                },
                DirItem {
                    name: b"..".to_vec(),
                    kind: Kind::Dir,
                    ino: ROOT_INO,
                    next: 2,
                },
            ];
            let mut nodes = self.nodes.read().expect("nodes").clone();
            if !nodes.contains(&self.cfg.local) {
                nodes.push(self.cfg.local);
            }
            nodes.sort_unstable();
            for n in nodes {
                items.push(DirItem {
                    name: n.to_string().into_bytes(),
                    kind: Kind::Dir,
                    ino: 0,
                    next: 0,
                });
            }
            for m in Magic::ALL {
                items.push(DirItem {
                    name: m.name().as_bytes().to_vec(),
                    kind: Kind::Symlink,
                    ino: m.ino(),
                    next: 0,
                });
            }
            for (i, it) in items.iter_mut().enumerate() {
                it.next = i as u64 + 1;
            }
            OpenDir::Root(items)
        } else {
            let (node, r, _) = self
                .on(cred, &[ino], |h| Op::OpenDir { handle: h[0] }, Bytes::new())
                .await?;
            let Reply::Opened { fh, attr } = r else {
                return Err(Error::Protocol {
                    node,
                    what: format!("{r:?} to opendir"),
                });
            };
            self.note_attr(ino, &attr);
            let parent = {
                let t = self.table.lock().expect("inode table");
                t.inodes.get(&ino).map(|i| i.parent).unwrap_or(ROOT_INO)
            };
            OpenDir::Remote {
                node,
                fh,
                cred: cred.clone(),
                ino,
                parent,
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .expect("open dirs")
            .insert(fh, Arc::new(dir));
        Ok(fh)
    }

    /// Entries from `offset` on (0 is the start); an empty answer is the end.
    pub async fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirItem>, Error> {
        let dir = self
            .dirs
            .lock()
            .expect("open dirs")
            .get(&fh)
            .cloned()
            .ok_or(Error::BadFile(fh))?;
        match &*dir {
            OpenDir::Root(items) => Ok(items.iter().skip(offset as usize).cloned().collect()),
            OpenDir::Remote {
                node,
                fh,
                cred,
                ino,
                parent,
            } => {
                let mut out = Vec::new();
                if offset == 0 {
                    out.push(DirItem {
                        name: b".".to_vec(),
                        kind: Kind::Dir,
                        ino: *ino,
                        next: 1,
                    });
                }
                if offset <= 1 {
                    out.push(DirItem {
                        name: b"..".to_vec(),
                        kind: Kind::Dir,
                        ino: *parent,
                        next: 2,
                    });
                }
                let from = offset.saturating_sub(2);
                let op = Op::ReadDir {
                    fh: *fh,
                    offset: from,
                    max: self.cfg.dir_batch,
                };
                let (r, _) = self.send(*node, cred, op, Bytes::new()).await?;
                let Reply::Dir { entries, .. } = r else {
                    return Err(Error::Protocol {
                        node: *node,
                        what: format!("{r:?} to readdir"),
                    });
                };
                for (i, e) in entries.into_iter().enumerate() {
                    out.push(DirItem {
                        name: e.name,
                        kind: e.kind,
                        ino: e.ino,
                        next: 2 + from + i as u64 + 1,
                    });
                }
                Ok(out)
            }
        }
    }

    pub async fn releasedir(&self, fh: u64) -> Result<(), Error> {
        let dir = self
            .dirs
            .lock()
            .expect("open dirs")
            .remove(&fh)
            .ok_or(Error::BadFile(fh))?;
        match &*dir {
            OpenDir::Root(_) => Ok(()),
            OpenDir::Remote { node, fh, cred, .. } => self
                .send(*node, cred, Op::ReleaseDir { fh: *fh }, Bytes::new())
                .await
                .map(drop),
        }
    }

    async fn entry_op(
        &self,
        cred: &Cred,
        parent: u64,
        name: &[u8],
        inos: &[u64],
        make: impl Fn(&[Handle]) -> Op,
    ) -> Result<Entry, Error> {
        let (node, r, _) = self.on(cred, inos, make, Bytes::new()).await?;
        self.expire_attr(parent);
        match r {
            Reply::Entry { handle, attr } => Ok(self.enter(node, handle, parent, name, attr, true)),
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?}"),
            }),
        }
    }

    pub async fn mkdir(
        &self,
        cred: &Cred,
        parent: u64,
        name: &[u8],
        mode: u32,
    ) -> Result<Entry, Error> {
        self.entry_op(cred, parent, name, &[parent], |h| Op::Mkdir {
            parent: h[0],
            name: name.to_vec(),
            mode,
        })
        .await
    }

    pub async fn symlink(
        &self,
        cred: &Cred,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<Entry, Error> {
        self.entry_op(cred, parent, name, &[parent], |h| Op::Symlink {
            parent: h[0],
            name: name.to_vec(),
            target: target.to_vec(),
        })
        .await
    }

    pub async fn link(
        &self,
        cred: &Cred,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<Entry, Error> {
        self.expire_attr(ino);
        self.entry_op(cred, new_parent, new_name, &[ino, new_parent], |h| {
            Op::Link {
                handle: h[0],
                new_parent: h[1],
                new_name: new_name.to_vec(),
            }
        })
        .await
    }

    async fn plain(
        &self,
        cred: &Cred,
        inos: &[u64],
        make: impl Fn(&[Handle]) -> Op,
    ) -> Result<(), Error> {
        let (node, r, _) = self.on(cred, inos, make, Bytes::new()).await?;
        for &i in inos {
            self.expire_attr(i);
        }
        match r {
            Reply::Ok => Ok(()),
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?}"),
            }),
        }
    }

    pub async fn unlink(&self, cred: &Cred, parent: u64, name: &[u8]) -> Result<(), Error> {
        self.plain(cred, &[parent], |h| Op::Unlink {
            parent: h[0],
            name: name.to_vec(),
        })
        .await
    }

    pub async fn rmdir(&self, cred: &Cred, parent: u64, name: &[u8]) -> Result<(), Error> {
        self.plain(cred, &[parent], |h| Op::Rmdir {
            parent: h[0],
            name: name.to_vec(),
        })
        .await
    }

    pub async fn rename(
        &self,
        cred: &Cred,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), Error> {
        self.plain(cred, &[parent, new_parent], |h| Op::Rename {
            parent: h[0],
            name: name.to_vec(),
            new_parent: h[1],
            new_name: new_name.to_vec(),
            flags,
        })
        .await?;
        // The moved inode now lives under its new name (for finding it again after a restart).
        let mut t = self.table.lock().expect("inode table");
        if let Some(i) = t
            .inodes
            .values_mut()
            .find(|i| i.parent == parent && i.name == name)
        {
            i.parent = new_parent;
            i.name = new_name.to_vec();
        }
        Ok(())
    }

    /// The serving node's real numbers; `/mfs` itself reports this node's export.
    pub async fn statfs(&self, cred: &Cred, ino: u64) -> Result<StatFs, Error> {
        self.statfs_for(cred, 0, ino).await
    }

    /// statfs by process `pid` (a magic link: the node it stands for, for `pid`).
    pub async fn statfs_for(&self, cred: &Cred, pid: u32, ino: u64) -> Result<StatFs, Error> {
        let (node, r) = if ino < FIRST_INO {
            let node = if ino == ROOT_INO {
                self.cfg.local
            } else {
                self.magic_node(ino, pid)
            };
            (
                node,
                self.send(node, cred, Op::StatFs { handle: ROOT }, Bytes::new())
                    .await?
                    .0,
            )
        } else {
            let (node, r, _) = self
                .on(cred, &[ino], |h| Op::StatFs { handle: h[0] }, Bytes::new())
                .await?;
            (node, r)
        };
        match r {
            Reply::StatFs(s) => Ok(s),
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?} to statfs"),
            }),
        }
    }
}
