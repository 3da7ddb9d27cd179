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
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, mpsc};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::proto::{Attr, Cred, DirEntry, Fh, Handle, Kind, Op, ROOT, Reply};
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

mod dispatch;
use dispatch::{run_as, worker};
mod handles;
mod locks;

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
