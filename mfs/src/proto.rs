//! The wire messages between an mfs client and a node's mfs server (serde). File data never
//! sits inside these messages: it travels as the ask's `Bytes` payload (bulk lane).

use serde::{Deserialize, Serialize};

/// A server-side file handle (one per file the server has looked up); 1 is the export root.
pub type Handle = u64;
/// A server-side open file or directory.
pub type Fh = u64;

/// The export root's handle.
pub const ROOT: Handle = 1;

/// The caller's identity: the serving node acts with exactly these ids (the same uids on
/// every node, as openMosix required).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Cred {
    pub fn root() -> Cred {
        Cred {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// st_ino on the serving node.
    pub ino: u64,
    pub dev: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub kind: Kind,
    /// Permission bits (07777).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(i64, u32),
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    /// An open file of the caller to truncate through (ftruncate), if it has one.
    pub fh: Option<Fh>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub kind: Kind,
    pub ino: u64,
}

/// A directory entry with what a lookup of it found (READDIRPLUS): its handle and attributes,
/// counted as one lookup like [`Op::Lookup`]; `None` when the lookup failed (the entry went
/// meanwhile, or the caller may list the directory but not search it).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirEntryPlus {
    pub entry: DirEntry,
    pub found: Option<(Handle, Attr)>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// One operation. Names are raw bytes (Linux file names need not be UTF-8).
/// A byte-range lock as FUSE and fcntl describe it: `typ` F_RDLCK, F_WRLCK or F_UNLCK;
/// `start..=end` with `end` = `i64::MAX` for "to the end of the file, however long";
/// `pid`: the holder's PID as its node knows it (answers to getlk; 0 if unknown).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lock {
    pub typ: i32,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

/// The `end` of a lock that reaches past any end of file.
pub const LOCK_TO_EOF: u64 = i64::MAX as u64;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum Op {
    Lookup {
        parent: Handle,
        name: Vec<u8>,
    },
    /// The caller drops `n` lookups of `handle`.
    Forget {
        handle: Handle,
        n: u64,
    },
    GetAttr {
        handle: Handle,
    },
    SetAttr {
        handle: Handle,
        set: SetAttr,
    },
    ReadLink {
        handle: Handle,
    },
    Open {
        handle: Handle,
        flags: i32,
    },
    Create {
        parent: Handle,
        name: Vec<u8>,
        mode: u32,
        flags: i32,
    },
    Read {
        fh: Fh,
        offset: u64,
        size: u32,
    },
    /// The data is the payload.
    Write {
        fh: Fh,
        offset: u64,
    },
    Fsync {
        fh: Fh,
        datasync: bool,
    },
    Release {
        fh: Fh,
    },
    OpenDir {
        handle: Handle,
    },
    ReadDir {
        fh: Fh,
        offset: u64,
        max: u32,
    },
    ReleaseDir {
        fh: Fh,
    },
    /// [`Op::ReadDir`] with a lookup of each entry in directory `dir` (READDIRPLUS): a
    /// listing and the attributes of what it lists in one round trip.
    ReadDirPlus {
        fh: Fh,
        dir: Handle,
        offset: u64,
        max: u32,
    },
    Mkdir {
        parent: Handle,
        name: Vec<u8>,
        mode: u32,
    },
    Unlink {
        parent: Handle,
        name: Vec<u8>,
    },
    Rmdir {
        parent: Handle,
        name: Vec<u8>,
    },
    Rename {
        parent: Handle,
        name: Vec<u8>,
        new_parent: Handle,
        new_name: Vec<u8>,
        flags: u32,
    },
    Link {
        handle: Handle,
        new_parent: Handle,
        new_name: Vec<u8>,
    },
    Symlink {
        parent: Handle,
        name: Vec<u8>,
        target: Vec<u8>,
    },
    StatFs {
        handle: Handle,
    },
    /// Take, change or drop (F_UNLCK) a lock of `owner`: EAGAIN while another owner holds a
    /// conflicting one. `wait_ms` > 0: wait up to that long for it, woken when a lock of the
    /// file is released (EAGAIN at the end: ask again), EDEADLK when waiting would close a
    /// cycle of waiting owners. `client`: the asking node — set by the serving daemon from
    /// the authenticated link, whatever the asker wrote.
    Lock {
        handle: Handle,
        client: u32,
        owner: u64,
        lock: Lock,
        #[serde(default)]
        wait_ms: u32,
    },
    /// The first conflicting lock of another owner (F_UNLCK: none).
    GetLock {
        handle: Handle,
        client: u32,
        owner: u64,
        lock: Lock,
    },
    /// Every lock of `owner` on the file goes (it closed the file).
    DropLocks {
        handle: Handle,
        client: u32,
        owner: u64,
    },
}

impl Op {
    /// True for operations that change the export (refused on a read-only export).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            Op::SetAttr { .. }
                | Op::Create { .. }
                | Op::Write { .. }
                | Op::Mkdir { .. }
                | Op::Unlink { .. }
                | Op::Rmdir { .. }
                | Op::Rename { .. }
                | Op::Link { .. }
                | Op::Symlink { .. }
        )
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Request {
    pub cred: Cred,
    pub op: Op,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Entry {
        handle: Handle,
        attr: Attr,
    },
    Attr(Attr),
    Opened {
        fh: Fh,
        attr: Attr,
    },
    Created {
        handle: Handle,
        attr: Attr,
        fh: Fh,
    },
    /// The data is the payload.
    Data,
    Written(u32),
    Link(Vec<u8>),
    Dir {
        entries: Vec<DirEntry>,
        eof: bool,
    },
    DirPlus {
        entries: Vec<DirEntryPlus>,
        eof: bool,
    },
    StatFs(StatFs),
    Lock(Lock),
}

/// A refused operation: the errno and a reason a person can read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub errno: i32,
    pub msg: String,
}

/// What the server actor answers: the reply, or why not.
pub type Answer = Result<Reply, Fault>;

/// The name the mfs server actor is reachable under on every node.
pub const ACTOR: &str = "mfs";
