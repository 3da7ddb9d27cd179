//! The serving side: operations on one local export root, run with the caller's uid and
//! groups on dedicated worker threads (setfsuid/setfsgid/setgroups per call, per thread),
//! so the kernel checks every permission exactly as for a local process of that user.
//!
//! Files are reached by handles that stand for open `O_PATH` descriptors, never by joined
//! path strings: a lookup is `openat2(parent, name, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` of one checked name, so neither `..` nor a symlink leads out of
//! the export. /proc, devices, sockets and fifos are not exported. A read-only export
//! refuses every change before touching anything.
//!
//! Locks: POSIX (fcntl) and flock locks of a client are held here as open-file-description
//! locks (F_OFD_SETLK) on a descriptor of their own per (client node, file, lock owner), so
//! they conflict with each other and with local processes' locks exactly as the kernel
//! decides; that descriptor closes — and its locks go — when the owner closes the file or the
//! client node is dropped ([`Server::drop_client`], the daemon calls it when its link goes
//! down). Never waits: a conflict answers EAGAIN and the client retries.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::proto::{
    Attr, Cred, DirEntry, Fh, Handle, Kind, Lock, Op, ROOT, Reply, SetAttr, StatFs, TimeSet,
};
use crate::{Error, lockwait, sys};

const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// Largest read one call answers (the client asks in read-ahead windows).
pub const MAX_READ: u32 = 16 << 20;

/// What to serve and how.
#[derive(Clone, Debug)]
pub struct Export {
    pub root: PathBuf,
    pub read_only: bool,
}

impl Export {
    /// Parse `DIR[:ro]` as given to `--mfs-export`.
    pub fn parse(s: &str) -> Export {
        match s.strip_suffix(":ro") {
            Some(dir) => Export {
                root: PathBuf::from(dir),
                read_only: true,
            },
            None => Export {
                root: PathBuf::from(s.strip_suffix(":rw").unwrap_or(s)),
                read_only: false,
            },
        }
    }
}

struct Node {
    fd: Arc<OwnedFd>,
    key: (u64, u64),
    kind: Kind,
    refs: u64,
}

#[derive(Default)]
struct Handles {
    by_id: HashMap<Handle, Node>,
    by_key: HashMap<(u64, u64), Handle>,
    next: Handle,
}

enum Open {
    File { fd: Arc<OwnedFd>, append: bool },
    Dir(Arc<Vec<DirEntry>>),
}

struct Shared {
    read_only: bool,
    root_name: String,
    proc_fd: OwnedFd,
    handles: Mutex<Handles>,
    open: Mutex<HashMap<Fh, Open>>,
    /// The lock descriptors: (client node, file, lock owner).
    locks: Mutex<HashMap<LockKey, Arc<OwnedFd>>>,
    /// The ranges granted to each owner and who waits for whom (EDEADLK).
    graph: Mutex<lockwait::Graph>,
    /// Woken whenever a lock here may have been released: waiting lock calls try again.
    released: tokio::sync::Notify,
    next_fh: AtomicU64,
    /// The daemon runs as root and may take on any caller's ids.
    root: bool,
    own: (u32, u32, Vec<u32>),
}

type LockKey = (u32, Handle, u64);

/// The longest one waiting lock call waits before it answers EAGAIN (the client asks again):
/// below the daemon's call time-out, so a wait never looks like a dead node.
pub const MAX_LOCK_WAIT_MS: u32 = 2000;
/// How often a waiting lock call tries again while only locks of local processes (which send
/// no release notice) are in its way.
const LOCAL_RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

struct Job {
    cred: Cred,
    op: Op,
    data: Bytes,
    done: oneshot::Sender<Result<(Reply, Bytes), Error>>,
}

/// A running server for one export. Cheap to clone; the worker threads end when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
    jobs: mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("root", &self.shared.root_name)
            .finish()
    }
}

fn kind_of(mode: u32) -> Option<Kind> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => Some(Kind::File),
        libc::S_IFDIR => Some(Kind::Dir),
        libc::S_IFLNK => Some(Kind::Symlink),
        _ => None,
    }
}

fn attr_of(st: &libc::stat) -> Option<Attr> {
    Some(Attr {
        ino: st.st_ino,
        dev: st.st_dev,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: (st.st_atime, st.st_atime_nsec as u32),
        mtime: (st.st_mtime, st.st_mtime_nsec as u32),
        ctime: (st.st_ctime, st.st_ctime_nsec as u32),
        kind: kind_of(st.st_mode)?,
        perm: st.st_mode & 0o7777,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        blksize: st.st_blksize as u32,
    })
}

/// /proc is not exported, nor FUSE mounts inside the export (among them /mfs itself: serving
/// it would loop back into this daemon).
#[allow(clippy::unnecessary_cast)] // f_type's type differs between architectures
fn hidden_fs(fs: &libc::statfs) -> bool {
    let t = fs.f_type as i64;
    t == PROC_SUPER_MAGIC || t == FUSE_SUPER_MAGIC
}

/// A name the server may look up or create: one component, not `.` or `..`.
fn check_name(name: &[u8]) -> Result<&[u8], Error> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Error::BadName(String::from_utf8_lossy(name).into_owned()));
    }
    if name == b"." || name == b".." {
        return Err(Error::Escape(String::from_utf8_lossy(name).into_owned()));
    }
    Ok(name)
}

fn shown(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Server {
    /// Open `export.root` and start `threads` worker threads.
    pub fn start(export: &Export, threads: usize) -> Result<Server, Error> {
        // Every file a peer has looked up holds an O_PATH descriptor until it is forgotten.
        sys::raise_fd_limit();
        let root_name = export.root.display().to_string();
        let root = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(&export.root)
            .map_err(|e| Error::os("open export", &root_name, e))?;
        let proc_fd: OwnedFd = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open("/proc/self/fd")
            .map_err(|e| Error::os("open", "/proc/self/fd", e))?
            .into();
        let root: OwnedFd = root.into();
        let st = sys::fstat(root.as_fd()).map_err(|e| Error::os("stat export", &root_name, e))?;
        // Handles of another run of this server must not name files of this one: numbers
        // start at a base that differs per run (ROOT alone is the same every time).
        let base = run_base();
        let mut handles = Handles {
            next: base,
            ..Default::default()
        };
        let key = (st.st_dev, st.st_ino);
        handles.by_key.insert(key, ROOT);
        handles.by_id.insert(
            ROOT,
            Node {
                fd: Arc::new(root),
                key,
                kind: Kind::Dir,
                refs: u64::MAX / 2,
            },
        );
        // SAFETY: plain id queries.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let shared = Arc::new(Shared {
            read_only: export.read_only,
            root_name,
            proc_fd,
            handles: Mutex::new(handles),
            open: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            graph: Mutex::new(lockwait::Graph::default()),
            released: tokio::sync::Notify::new(),
            next_fh: AtomicU64::new(base),
            root: euid == 0,
            own: (euid, egid, sys::thread_groups()),
        });
        let (tx, rx) = mpsc::sync_channel::<Job>(1024);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let (rx, shared) = (rx.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("mfs-server-{i}"))
                .spawn(move || worker(&shared, &rx))
                .map_err(|e| Error::os("start thread", "mfs-server", e))?;
        }
        Ok(Server { shared, jobs: tx })
    }

    pub fn read_only(&self) -> bool {
        self.shared.read_only
    }

    /// Node `client` is gone: every lock it held here is released.
    pub fn drop_client(&self, client: u32) {
        let gone: Vec<Arc<OwnedFd>> = {
            let mut locks = self.shared.locks.lock().expect("lock table");
            let keys: Vec<LockKey> = locks.keys().filter(|k| k.0 == client).copied().collect();
            keys.iter().filter_map(|k| locks.remove(k)).collect()
        };
        self.shared
            .graph
            .lock()
            .expect("lock graph")
            .client_gone(client);
        self.shared.released.notify_waiters();
        if !gone.is_empty() {
            tracing::info!(
                client,
                owners = gone.len(),
                "mfs: locks of a departed node released"
            );
        }
    }

    /// Lock owners holding a descriptor here (tests, metrics).
    pub fn lock_owners(&self) -> usize {
        self.shared.locks.lock().expect("lock table").len()
    }

    /// Run one operation as `cred`. `data` is the payload (write data); the answer's `Bytes`
    /// is read data.
    pub async fn call(&self, cred: Cred, op: Op, data: Bytes) -> Result<(Reply, Bytes), Error> {
        match op {
            Op::Lock {
                handle,
                client,
                owner,
                lock,
                wait_ms,
            } if wait_ms > 0 && lock.typ != libc::F_UNLCK => {
                self.lock_wait(cred, handle, (client, owner), lock, wait_ms)
                    .await
            }
            op => self.job(cred, op, data).await,
        }
    }

    /// A lock call that waits (up to `wait_ms`): tried, and tried again each time a lock of
    /// this server is released; refused with EDEADLK when the owners it would wait for wait
    /// (through any chain) for it. A conflicting lock of a local process of this node sends no
    /// release notice: while only such locks are in the way it is tried again every
    /// [`LOCAL_RECHECK`].
    async fn lock_wait(
        &self,
        cred: Cred,
        handle: Handle,
        who: lockwait::Owner,
        lock: Lock,
        wait_ms: u32,
    ) -> Result<(Reply, Bytes), Error> {
        let until = tokio::time::Instant::now()
            + std::time::Duration::from_millis(u64::from(wait_ms.min(MAX_LOCK_WAIT_MS)));
        let graph = &self.shared.graph;
        let unwait = || graph.lock().expect("lock graph").unwait(who);
        loop {
            // Registered before the try: a release between the try and the wait still wakes.
            let released = self.shared.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let op = Op::Lock {
                handle,
                client: who.0,
                owner: who.1,
                lock,
                wait_ms: 0,
            };
            let r = self.job(cred.clone(), op, Bytes::new()).await;
            let busy = matches!(&r, Err(e) if matches!(e.errno(), libc::EAGAIN | libc::EACCES));
            if !busy {
                unwait();
                return r;
            }
            let ours = {
                let mut g = graph.lock().expect("lock graph");
                if g.would_deadlock(who, handle, lock) {
                    g.unwait(who);
                    return Err(Error::os(
                        "lock",
                        format!("handle {handle}: waiting would deadlock"),
                        std::io::Error::from_raw_os_error(libc::EDEADLK),
                    ));
                }
                g.wait(who, handle, lock);
                !g.holders(who, handle, lock).is_empty()
            };
            let now = tokio::time::Instant::now();
            if now >= until {
                unwait();
                return r;
            }
            let nap = if ours {
                until
            } else {
                (now + LOCAL_RECHECK).min(until)
            };
            tokio::select! {
                _ = released => {}
                _ = tokio::time::sleep_until(nap) => {}
            }
        }
    }

    async fn job(&self, cred: Cred, op: Op, data: Bytes) -> Result<(Reply, Bytes), Error> {
        let (done, rx) = oneshot::channel();
        let job = Job {
            cred,
            op,
            data,
            done,
        };
        let jobs = self.jobs.clone();
        // The queue is bounded: wait for room off the async threads.
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || jobs.send(job).map_err(drop))
                    .await
                    .map_err(|_| Error::Stopped)?
                    .map_err(|_| Error::Stopped)?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(Error::Stopped),
        }
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Run one operation on the calling thread (tests; threads that already run as `cred`).
    pub fn call_blocking(&self, cred: &Cred, op: Op, data: Bytes) -> Result<(Reply, Bytes), Error> {
        run_as(&self.shared, cred, op, data)
    }
}

fn worker(shared: &Shared, rx: &Mutex<mpsc::Receiver<Job>>) {
    if let Err(e) = sys::unshare_fs() {
        tracing::error!("mfs server thread cannot get its own umask: {e}; it stops");
        return;
    }
    loop {
        let job = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        let out = run_as(shared, &job.cred, job.op, job.data);
        let _ = job.done.send(out);
    }
}

/// Take on `cred`, run `op`, and go back to the daemon's own ids, on this thread.
fn run_as(shared: &Shared, cred: &Cred, op: Op, data: Bytes) -> Result<(Reply, Bytes), Error> {
    if shared.read_only && op.writes() {
        return Err(Error::ReadOnly);
    }
    if !shared.root {
        // Not root: we can act only as ourselves; anyone else is refused (fail closed).
        let (u, g, _) = &shared.own;
        if cred.uid != *u || cred.gid != *g {
            return Err(Error::Creds {
                uid: cred.uid,
                gid: cred.gid,
            });
        }
        return run(shared, op, data);
    }
    if sys::set_thread_creds(cred.uid, cred.gid, &cred.groups).is_err() {
        let (u, g, gs) = &shared.own;
        let _ = sys::set_thread_creds(*u, *g, gs);
        return Err(Error::Creds {
            uid: cred.uid,
            gid: cred.gid,
        });
    }
    let out = run(shared, op, data);
    let (u, g, gs) = &shared.own;
    if let Err(e) = sys::set_thread_creds(*u, *g, gs) {
        // A thread stuck with a caller's ids must not serve anyone else.
        tracing::error!("mfs server thread cannot return to its own ids: {e}");
        panic!("mfs server thread cannot return to its own ids: {e}");
    }
    out
}

impl Shared {
    fn node(&self, h: Handle) -> Result<(Arc<OwnedFd>, Kind), Error> {
        let hs = self.handles.lock().expect("handle table");
        hs.by_id
            .get(&h)
            .map(|n| (n.fd.clone(), n.kind))
            .ok_or(Error::Stale(h))
    }

    fn file(&self, fh: Fh) -> Result<(Arc<OwnedFd>, bool), Error> {
        match self.open.lock().expect("open table").get(&fh) {
            Some(Open::File { fd, append }) => Ok((fd.clone(), *append)),
            _ => Err(Error::BadFile(fh)),
        }
    }

    fn add_open(&self, o: Open) -> Fh {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.open.lock().expect("open table").insert(fh, o);
        fh
    }

    /// The handle for an O_PATH descriptor (one handle per inode), counting one lookup.
    fn register(&self, fd: OwnedFd, what: &str) -> Result<(Handle, Attr), Error> {
        let st = sys::fstat(fd.as_fd()).map_err(|e| Error::os("stat", what, e))?;
        let attr = attr_of(&st).ok_or_else(|| Error::NotExported(what.to_string()))?;
        if attr.kind == Kind::Dir {
            let fs = sys::fstatfs(fd.as_fd()).map_err(|e| Error::os("statfs", what, e))?;
            if hidden_fs(&fs) {
                return Err(Error::NotExported(what.to_string()));
            }
        }
        let key = (st.st_dev, st.st_ino);
        let mut hs = self.handles.lock().expect("handle table");
        if let Some(&h) = hs.by_key.get(&key) {
            if let Some(n) = hs.by_id.get_mut(&h) {
                n.refs += 1;
                return Ok((h, attr));
            }
        }
        let h = hs.next;
        hs.next += 1;
        hs.by_key.insert(key, h);
        hs.by_id.insert(
            h,
            Node {
                fd: Arc::new(fd),
                key,
                kind: attr.kind,
                refs: 1,
            },
        );
        Ok((h, attr))
    }

    fn forget(&self, h: Handle, n: u64) {
        let mut hs = self.handles.lock().expect("handle table");
        let gone = match hs.by_id.get_mut(&h) {
            Some(node) if h != ROOT => {
                node.refs = node.refs.saturating_sub(n);
                (node.refs == 0).then_some(node.key)
            }
            _ => None,
        };
        if let Some(key) = gone {
            hs.by_id.remove(&h);
            hs.by_key.remove(&key);
        }
    }

    /// The name of `fd` inside /proc/self/fd (a magic link back to the same file).
    fn proc_name(fd: BorrowedFd<'_>) -> Vec<u8> {
        fd.as_raw_fd().to_string().into_bytes()
    }

    fn stat_attr(&self, fd: BorrowedFd<'_>, what: &str) -> Result<Attr, Error> {
        let st = sys::fstat(fd).map_err(|e| Error::os("stat", what, e))?;
        attr_of(&st).ok_or_else(|| Error::NotExported(what.to_string()))
    }

    fn lookup(&self, parent: Handle, name: &[u8]) -> Result<(Handle, Attr), Error> {
        let name = check_name(name)?;
        let (dir, _) = self.node(parent)?;
        let fd = sys::lookup_beneath(dir.as_fd(), name).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => Error::Escape(shown(name)),
            _ => Error::os("lookup", shown(name), e),
        })?;
        self.register(fd, &shown(name))
    }

    fn setattr(&self, h: Handle, set: &SetAttr) -> Result<Attr, Error> {
        let (fd, kind) = self.node(h)?;
        let what = format!("handle {h}");
        let pname = Self::proc_name(fd.as_fd());
        let proc = self.proc_fd.as_fd();
        if let Some(mode) = set.mode {
            if kind == Kind::Symlink {
                return Err(Error::os(
                    "chmod",
                    what,
                    std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                ));
            }
            sys::fchmodat(proc, &pname, mode & 0o7777).map_err(|e| Error::os("chmod", &what, e))?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            sys::fchown(fd.as_fd(), set.uid, set.gid).map_err(|e| Error::os("chown", &what, e))?;
        }
        if let Some(size) = set.size {
            if kind != Kind::File {
                return Err(Error::os(
                    "truncate",
                    what,
                    std::io::Error::from_raw_os_error(libc::EISDIR),
                ));
            }
            let opened = match set.fh.map(|fh| self.file(fh)) {
                Some(Ok((f, _))) => f,
                _ => Arc::new(
                    sys::openat(proc, &pname, libc::O_WRONLY, 0)
                        .map_err(|e| Error::os("truncate", &what, e))?,
                ),
            };
            sys::ftruncate(opened.as_fd(), size).map_err(|e| Error::os("truncate", &what, e))?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let ts = |t: Option<TimeSet>| match t {
                None => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                Some(TimeSet::Now) => libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_NOW,
                },
                Some(TimeSet::At(s, n)) => libc::timespec {
                    tv_sec: s,
                    tv_nsec: n as i64,
                },
            };
            let times = [ts(set.atime), ts(set.mtime)];
            sys::utimensat(proc, &pname, &times).map_err(|e| Error::os("utimes", &what, e))?;
        }
        self.stat_attr(fd.as_fd(), &what)
    }

    fn open(&self, h: Handle, flags: i32) -> Result<(Fh, Attr), Error> {
        let (fd, kind) = self.node(h)?;
        let what = format!("handle {h}");
        if kind != Kind::File {
            return Err(Error::NotOpenable(what));
        }
        let acc = flags & libc::O_ACCMODE;
        if self.read_only && (acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0) {
            return Err(Error::ReadOnly);
        }
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_TRUNC
            | libc::O_SYNC
            | libc::O_DSYNC
            | libc::O_NOATIME;
        let file = sys::openat(
            self.proc_fd.as_fd(),
            &Self::proc_name(fd.as_fd()),
            flags & keep,
            0,
        )
        .map_err(|e| Error::os("open", &what, e))?;
        let attr = self.stat_attr(file.as_fd(), &what)?;
        let fh = self.add_open(Open::File {
            fd: Arc::new(file),
            append: flags & libc::O_APPEND != 0,
        });
        Ok((fh, attr))
    }

    fn create(
        &self,
        parent: Handle,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Handle, Attr, Fh), Error> {
        let name = check_name(name)?;
        let (dir, _) = self.node(parent)?;
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_TRUNC
            | libc::O_EXCL
            | libc::O_SYNC
            | libc::O_DSYNC;
        let file = sys::openat(
            dir.as_fd(),
            name,
            (flags & keep) | libc::O_CREAT | libc::O_NOFOLLOW,
            mode & 0o7777,
        )
        .map_err(|e| Error::os("create", shown(name), e))?;
        let st = sys::fstat(file.as_fd()).map_err(|e| Error::os("stat", shown(name), e))?;
        if kind_of(st.st_mode) != Some(Kind::File) {
            return Err(Error::NotExported(shown(name)));
        }
        let path = sys::openat(
            self.proc_fd.as_fd(),
            &Self::proc_name(file.as_fd()),
            libc::O_PATH,
            0,
        )
        .map_err(|e| Error::os("create", shown(name), e))?;
        let (handle, attr) = self.register(path, &shown(name))?;
        let fh = self.add_open(Open::File {
            fd: Arc::new(file),
            append: flags & libc::O_APPEND != 0,
        });
        Ok((handle, attr, fh))
    }

    fn opendir(&self, h: Handle) -> Result<Fh, Error> {
        let (fd, kind) = self.node(h)?;
        let what = format!("directory handle {h}");
        if kind != Kind::Dir {
            return Err(Error::os(
                "opendir",
                what,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        let dir = sys::openat(fd.as_fd(), b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| Error::os("opendir", &what, e))?;
        let dev = sys::fstat(fd.as_fd())
            .map_err(|e| Error::os("stat", &what, e))?
            .st_dev;
        let raw = sys::read_dir(dir).map_err(|e| Error::os("readdir", &what, e))?;
        let mut entries = Vec::with_capacity(raw.len());
        for (name, ty, ino) in raw {
            let kind = match ty {
                libc::DT_REG => Kind::File,
                libc::DT_LNK => Kind::Symlink,
                libc::DT_DIR | libc::DT_UNKNOWN => {
                    // A directory may be a mount point of /proc; an unknown type needs a look.
                    let Ok(st) = sys::fstatat(fd.as_fd(), &name, libc::AT_SYMLINK_NOFOLLOW) else {
                        continue;
                    };
                    match kind_of(st.st_mode) {
                        Some(Kind::Dir) if st.st_dev != dev => {
                            let hidden = sys::lookup_beneath(fd.as_fd(), &name)
                                .and_then(|d| sys::fstatfs(d.as_fd()))
                                .map(|fs| hidden_fs(&fs))
                                .unwrap_or(true);
                            if hidden {
                                continue;
                            }
                            Kind::Dir
                        }
                        Some(k) => k,
                        None => continue,
                    }
                }
                _ => continue,
            };
            entries.push(DirEntry { name, kind, ino });
        }
        Ok(self.add_open(Open::Dir(Arc::new(entries))))
    }

    fn readdir(&self, fh: Fh, offset: u64, max: u32) -> Result<(Vec<DirEntry>, bool), Error> {
        let entries = match self.open.lock().expect("open table").get(&fh) {
            Some(Open::Dir(e)) => e.clone(),
            _ => return Err(Error::BadFile(fh)),
        };
        let start = (offset as usize).min(entries.len());
        let end = start.saturating_add(max.max(1) as usize).min(entries.len());
        Ok((entries[start..end].to_vec(), end == entries.len()))
    }

    /// The lock descriptor of `key` (opened on first use, as the caller: for reading and
    /// writing if it may, else for what it may).
    fn lock_fd(&self, key: LockKey, create: bool) -> Result<Option<Arc<OwnedFd>>, Error> {
        if let Some(fd) = self.locks.lock().expect("lock table").get(&key) {
            return Ok(Some(fd.clone()));
        }
        if !create {
            return Ok(None);
        }
        let (fd, kind) = self.node(key.1)?;
        let what = format!("handle {}", key.1);
        if kind != Kind::File {
            return Err(Error::NotOpenable(what));
        }
        let name = Self::proc_name(fd.as_fd());
        let modes: &[i32] = if self.read_only {
            &[libc::O_RDONLY]
        } else {
            &[libc::O_RDWR, libc::O_WRONLY, libc::O_RDONLY]
        };
        let mut last = None;
        for &m in modes {
            match sys::openat(self.proc_fd.as_fd(), &name, m | libc::O_NOCTTY, 0) {
                Ok(f) => {
                    let f = Arc::new(f);
                    let mut locks = self.locks.lock().expect("lock table");
                    return Ok(Some(locks.entry(key).or_insert(f).clone()));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(Error::os(
            "open for locking",
            what,
            last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EACCES)),
        ))
    }

    fn setlk(&self, key: LockKey, l: Lock) -> Result<(), Error> {
        let what = || format!("lock on handle {}", key.1);
        let Some(fd) = self.lock_fd(key, l.typ != libc::F_UNLCK)? else {
            return Ok(()); // nothing held: nothing to unlock
        };
        sys::ofd_setlk(fd.as_fd(), l.typ, l.start, l.end)
            .map_err(|e| Error::os("lock", what(), e))?;
        self.graph
            .lock()
            .expect("lock graph")
            .granted((key.0, key.2), key.1, l);
        // An unlock, or a write lock made a read lock: waiters may go on now.
        self.released.notify_waiters();
        Ok(())
    }

    fn getlk(&self, key: LockKey, l: Lock) -> Result<Lock, Error> {
        let fd = self.lock_fd(key, true)?.expect("created");
        let (typ, start, end, pid) = sys::ofd_getlk(fd.as_fd(), l.typ, l.start, l.end)
            .map_err(|e| Error::os("getlk", format!("handle {}", key.1), e))?;
        // OFD locks have no PID (-1); a local process's lock has its PID on this node.
        Ok(Lock {
            typ,
            start,
            end,
            pid: u32::try_from(pid).unwrap_or(0),
        })
    }

    fn release(&self, fh: Fh) -> Result<(), Error> {
        self.open
            .lock()
            .expect("open table")
            .remove(&fh)
            .map(drop)
            .ok_or(Error::BadFile(fh))
    }
}

/// One operation, already running with the caller's ids.
fn run(s: &Shared, op: Op, data: Bytes) -> Result<(Reply, Bytes), Error> {
    let none = Bytes::new();
    let r = match op {
        Op::Lookup { parent, name } => {
            let (handle, attr) = s.lookup(parent, &name)?;
            Reply::Entry { handle, attr }
        }
        Op::Forget { handle, n } => {
            s.forget(handle, n);
            Reply::Ok
        }
        Op::GetAttr { handle } => {
            let (fd, _) = s.node(handle)?;
            Reply::Attr(s.stat_attr(fd.as_fd(), &format!("handle {handle}"))?)
        }
        Op::SetAttr { handle, set } => Reply::Attr(s.setattr(handle, &set)?),
        Op::ReadLink { handle } => {
            let (fd, _) = s.node(handle)?;
            Reply::Link(
                sys::readlink(fd.as_fd())
                    .map_err(|e| Error::os("readlink", format!("handle {handle}"), e))?,
            )
        }
        Op::Open { handle, flags } => {
            let (fh, attr) = s.open(handle, flags)?;
            Reply::Opened { fh, attr }
        }
        Op::Create {
            parent,
            name,
            mode,
            flags,
        } => {
            let (handle, attr, fh) = s.create(parent, &name, mode, flags)?;
            Reply::Created { handle, attr, fh }
        }
        Op::Read { fh, offset, size } => {
            let (fd, _) = s.file(fh)?;
            let buf = sys::pread_new(fd.as_fd(), size.min(MAX_READ) as usize, offset)
                .map_err(|e| Error::os("read", format!("file {fh}"), e))?;
            return Ok((Reply::Data, buf.freeze()));
        }
        Op::Write { fh, offset } => {
            let (fd, append) = s.file(fh)?;
            let n = if append {
                sys::write_all(fd.as_fd(), &data)
            } else {
                sys::pwrite(fd.as_fd(), &data, offset)
            }
            .map_err(|e| Error::os("write", format!("file {fh}"), e))?;
            Reply::Written(n as u32)
        }
        Op::Fsync { fh, datasync } => {
            let (fd, _) = s.file(fh)?;
            sys::fsync(fd.as_fd(), datasync)
                .map_err(|e| Error::os("fsync", format!("file {fh}"), e))?;
            Reply::Ok
        }
        Op::Release { fh } | Op::ReleaseDir { fh } => {
            s.release(fh)?;
            Reply::Ok
        }
        Op::OpenDir { handle } => {
            let fh = s.opendir(handle)?;
            let (fd, _) = s.node(handle)?;
            Reply::Opened {
                fh,
                attr: s.stat_attr(fd.as_fd(), &format!("handle {handle}"))?,
            }
        }
        Op::ReadDir { fh, offset, max } => {
            let (entries, eof) = s.readdir(fh, offset, max)?;
            Reply::Dir { entries, eof }
        }
        Op::Mkdir { parent, name, mode } => {
            let name = check_name(&name)?;
            let (dir, _) = s.node(parent)?;
            sys::mkdirat(dir.as_fd(), name, mode & 0o7777)
                .map_err(|e| Error::os("mkdir", shown(name), e))?;
            let (handle, attr) = s.lookup(parent, name)?;
            Reply::Entry { handle, attr }
        }
        Op::Unlink { parent, name } => {
            let name = check_name(&name)?;
            let (dir, _) = s.node(parent)?;
            sys::unlinkat(dir.as_fd(), name, 0).map_err(|e| Error::os("unlink", shown(name), e))?;
            Reply::Ok
        }
        Op::Rmdir { parent, name } => {
            let name = check_name(&name)?;
            let (dir, _) = s.node(parent)?;
            sys::unlinkat(dir.as_fd(), name, libc::AT_REMOVEDIR)
                .map_err(|e| Error::os("rmdir", shown(name), e))?;
            Reply::Ok
        }
        Op::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        } => {
            let (name, new_name) = (check_name(&name)?, check_name(&new_name)?);
            let (d1, _) = s.node(parent)?;
            let (d2, _) = s.node(new_parent)?;
            sys::renameat2(d1.as_fd(), name, d2.as_fd(), new_name, flags).map_err(|e| {
                Error::os(
                    "rename",
                    format!("{} to {}", shown(name), shown(new_name)),
                    e,
                )
            })?;
            Reply::Ok
        }
        Op::Link {
            handle,
            new_parent,
            new_name,
        } => {
            let new_name = check_name(&new_name)?;
            let (fd, kind) = s.node(handle)?;
            if kind == Kind::Dir {
                return Err(Error::os(
                    "link",
                    shown(new_name),
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ));
            }
            let (dir, _) = s.node(new_parent)?;
            sys::linkat(
                s.proc_fd.as_fd(),
                &Shared::proc_name(fd.as_fd()),
                dir.as_fd(),
                new_name,
                libc::AT_SYMLINK_FOLLOW,
            )
            .map_err(|e| Error::os("link", shown(new_name), e))?;
            let (handle, attr) = s.lookup(new_parent, new_name)?;
            Reply::Entry { handle, attr }
        }
        Op::Symlink {
            parent,
            name,
            target,
        } => {
            let name = check_name(&name)?;
            let (dir, _) = s.node(parent)?;
            sys::symlinkat(&target, dir.as_fd(), name)
                .map_err(|e| Error::os("symlink", shown(name), e))?;
            let (handle, attr) = s.lookup(parent, name)?;
            Reply::Entry { handle, attr }
        }
        Op::Lock {
            handle,
            client,
            owner,
            lock,
            ..
        } => {
            s.setlk((client, handle, owner), lock)?;
            Reply::Ok
        }
        Op::GetLock {
            handle,
            client,
            owner,
            lock,
        } => Reply::Lock(s.getlk((client, handle, owner), lock)?),
        Op::DropLocks {
            handle,
            client,
            owner,
        } => {
            let fd = s
                .locks
                .lock()
                .expect("lock table")
                .remove(&(client, handle, owner));
            drop(fd);
            s.graph
                .lock()
                .expect("lock graph")
                .dropped((client, owner), handle);
            s.released.notify_waiters();
            Reply::Ok
        }
        Op::StatFs { handle } => {
            let (fd, _) = s.node(handle)?;
            let f = sys::fstatfs(fd.as_fd())
                .map_err(|e| Error::os("statfs", format!("handle {handle}"), e))?;
            Reply::StatFs(StatFs {
                blocks: f.f_blocks,
                bfree: f.f_bfree,
                bavail: f.f_bavail,
                files: f.f_files,
                ffree: f.f_ffree,
                bsize: f.f_bsize as u32,
                namelen: f.f_namelen as u32,
                frsize: f.f_frsize as u32,
            })
        }
    };
    Ok((r, none))
}

/// A number that differs between runs: time and pid, in the upper 32 bits.
fn run_base() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mix = t ^ (u64::from(std::process::id()) << 20) ^ t.rotate_left(29);
    ((mix & 0x7fff_ffff) | 1) << 32
}

/// The export root of a server, for messages.
pub fn describe(root: &Path, read_only: bool) -> String {
    format!(
        "{}{}",
        root.display(),
        if read_only { " (read-only)" } else { "" }
    )
}

use std::os::unix::fs::OpenOptionsExt;
