//! The thin FUSE adapter (fuser): kernel requests become [`Mfs`] calls run on the tokio
//! runtime, answered when they finish, so the session thread never waits on the network.
//! Errors reach the kernel through [`crate::Error::errno`], the crate's one errno mapping.
//!
//! Mounted with `allow_other`, `default_permissions` (the kernel checks modes first; the
//! serving node checks again as the caller) and subtype `mfs`. As root, fuser mounts with
//! mount(2) itself; other users need `fusermount3` (Debian package fuse3).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow,
};

use crate::client::{Entry, Mfs};
use crate::proto::{Attr, Cred, Kind, Lock, SetAttr, TimeSet};

/// How long the kernel may keep attributes and names (as the library's attribute cache).
const TTL: Duration = Duration::from_secs(1);

/// A mounted `/mfs`. Dropping it unmounts.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    dir: PathBuf,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").field("dir", &self.dir).finish()
    }
}

impl Mounted {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Dropping the session unmounts (umount2 MNT_DETACH as root, else fusermount -u).
        drop(self.session.take());
    }
}

/// Mount `mfs` at `dir`, serving kernel requests on `rt`. A dead mount left by a killed
/// daemon at `dir` ("transport endpoint is not connected") is detached first.
pub fn mount(mfs: Arc<Mfs>, dir: &Path, rt: tokio::runtime::Handle) -> std::io::Result<Mounted> {
    mount_with(mfs, dir, rt, false)
}

/// [`mount`], read-only if asked (`mount -o ro`).
pub fn mount_with(
    mfs: Arc<Mfs>,
    dir: &Path,
    rt: tokio::runtime::Handle,
    read_only: bool,
) -> std::io::Result<Mounted> {
    if let Err(e) = std::fs::metadata(dir) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            let c = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
            // SAFETY: valid C string; detaching a dead mount point.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let fs = Adapter {
        mfs,
        rt,
        groups: Arc::new(Mutex::new(HashMap::new())),
    };
    let mut options = vec![
        MountOption::FSName("mfs".into()),
        MountOption::Subtype("mfs".into()),
        MountOption::AllowOther,
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if read_only {
        options.push(MountOption::RO);
    }
    let session = fuser::Session::new(fs, dir, &options)?.spawn()?;
    raise_read_ahead(dir);
    Ok(Mounted {
        session: Some(session),
        dir: dir.to_path_buf(),
    })
}

/// The kernel's read-ahead for this mount, in KiB: it caps each read request at the
/// device's read-ahead (128 KiB by default) whatever `max_readahead` says.
const READ_AHEAD_KB: u32 = 1024;

/// Raise the mount's read-ahead (root only: /sys/class/bdi/MAJ:MIN/read_ahead_kb); fewer,
/// larger read requests. Failing is harmless (smaller requests).
fn raise_read_ahead(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(dir) else {
        return;
    };
    let dev = m.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&path, READ_AHEAD_KB.to_string()) {
        tracing::debug!(
            "cannot raise the read-ahead of {}: {path}: {e}",
            dir.display()
        );
    }
}

type Groups = Arc<Mutex<HashMap<(u32, u32, u32), (Vec<u32>, Instant)>>>;

struct Adapter {
    mfs: Arc<Mfs>,
    rt: tokio::runtime::Handle,
    groups: Groups,
}

/// The supplementary groups of process `pid` (FUSE does not send them), cached for a second.
/// A process that cannot be read gets none: fewer rights, never more.
fn groups_of(cache: &Groups, pid: u32, uid: u32, gid: u32) -> Vec<u32> {
    let now = Instant::now();
    if let Some((g, t)) = cache.lock().expect("groups").get(&(pid, uid, gid)) {
        if now.duration_since(*t) < Duration::from_secs(1) {
            return g.clone();
        }
    }
    let groups: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default();
    let mut c = cache.lock().expect("groups");
    if c.len() > 4096 {
        c.retain(|_, (_, t)| now.duration_since(*t) < Duration::from_secs(1));
    }
    c.insert((pid, uid, gid), (groups.clone(), now));
    groups
}

fn time(t: (i64, u32)) -> SystemTime {
    if t.0 >= 0 {
        UNIX_EPOCH + Duration::new(t.0 as u64, t.1)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.0.unsigned_abs()) + Duration::from_nanos(u64::from(t.1))
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
    }
}

fn fattr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino,
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    }
}

/// Attributes for an entry the kernel must look up itself before use (given with no TTL).
fn bare_attr(ino: u64, kind: Kind) -> FileAttr {
    FileAttr {
        ino,
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: file_type(kind),
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn time_set(t: Option<TimeOrNow>) -> Option<TimeSet> {
    t.map(|t| match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => TimeSet::At(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                TimeSet::At(-(d.as_secs() as i64), 0)
            }
        },
    })
}

/// The kernel's replies: each can carry an errno.
trait Fail: Send + 'static {
    fn fail(self, errno: libc::c_int);
}

macro_rules! fail {
    ($($t:ty),*) => {$(
        impl Fail for $t {
            fn fail(self, errno: libc::c_int) {
                self.error(errno)
            }
        }
    )*};
}

fail!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyLock,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite
);

impl Adapter {
    fn cred(&self, req: &Request<'_>) -> Cred {
        Cred {
            uid: req.uid(),
            gid: req.gid(),
            groups: groups_of(&self.groups, req.pid(), req.uid(), req.gid()),
        }
    }

    /// Run `call` on the runtime; answer the kernel with `ok` on success, the errno of the
    /// crate's one mapping otherwise. The session thread never waits.
    fn answer<T, R: Fail>(
        &self,
        reply: R,
        call: impl Future<Output = Result<T, crate::Error>> + Send + 'static,
        ok: impl FnOnce(R, T) + Send + 'static,
    ) {
        self.rt.spawn(async move {
            match call.await {
                Ok(v) => ok(reply, v),
                Err(e) => reply.fail(e.errno()),
            }
        });
    }
}

fn entry(reply: ReplyEntry, e: Entry) {
    reply.entry(&TTL, &fattr(e.ino, &e.attr), 0)
}

fn lock_of(start: u64, end: u64, typ: i32, pid: u32) -> Lock {
    Lock {
        typ,
        start,
        end,
        pid,
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        // Answers are async (several in flight per file): let the kernel queue more
        // read-ahead and write-back requests than its default 12 before it throttles.
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        // Locks are the serving node's business, not this kernel's: without these the
        // kernel would keep them local, and two nodes would both "hold" the same lock.
        use fuser::consts::{FUSE_DO_READDIRPLUS, FUSE_FLOCK_LOCKS, FUSE_POSIX_LOCKS};
        // Listings carry the attributes of what they list: `ls -l` of a directory is one
        // round trip, not one per file. Always, not the kernel's adaptive mode: that asks
        // for attributes only in the first call of a listing (`ls -l` then looks up the rest
        // one by one).
        if !self.mfs.config().readdirplus {
        } else if let Err(missing) = config.add_capabilities(FUSE_DO_READDIRPLUS) {
            tracing::debug!(missing, "the kernel offers no READDIRPLUS");
        }
        if let Err(missing) = config.add_capabilities(FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS) {
            tracing::warn!(
                missing,
                "the kernel offers no remote locking: locks on /mfs stay on this node"
            );
        }
        Ok(())
    }

    fn lookup(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let (m, c, name) = (self.mfs.clone(), self.cred(req), name.as_bytes().to_vec());
        self.answer(
            reply,
            async move { m.lookup(&c, parent, &name).await },
            entry,
        );
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        let m = self.mfs.clone();
        self.rt.spawn(async move { m.forget(ino, nlookup) });
    }

    fn getattr(&mut self, req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        self.answer(
            reply,
            async move { m.getattr(&c, ino).await },
            move |r, a| r.attr(&TTL, &fattr(ino, &a)),
        );
    }

    fn setattr(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: time_set(atime),
            mtime: time_set(mtime),
            fh: None,
        };
        self.answer(
            reply,
            async move { m.setattr(&c, ino, set, fh).await },
            move |r, a| r.attr(&TTL, &fattr(ino, &a)),
        );
    }

    fn readlink(&mut self, req: &Request<'_>, ino: u64, reply: ReplyData) {
        let (m, c, pid) = (self.mfs.clone(), self.cred(req), req.pid());
        self.answer(
            reply,
            async move { m.readlink_for(&c, pid, ino).await },
            |r, t| r.data(&t),
        );
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (m, c, name) = (self.mfs.clone(), self.cred(req), name.as_bytes().to_vec());
        let mode = mode & !umask & 0o7777;
        self.answer(
            reply,
            async move { m.mkdir(&c, parent, &name, mode).await },
            entry,
        );
    }

    fn unlink(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let (m, c, name) = (self.mfs.clone(), self.cred(req), name.as_bytes().to_vec());
        self.answer(
            reply,
            async move { m.unlink(&c, parent, &name).await },
            |r, ()| r.ok(),
        );
    }

    fn rmdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let (m, c, name) = (self.mfs.clone(), self.cred(req), name.as_bytes().to_vec());
        self.answer(
            reply,
            async move { m.rmdir(&c, parent, &name).await },
            |r, ()| r.ok(),
        );
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        let (name, target) = (
            link_name.as_bytes().to_vec(),
            target.as_os_str().as_bytes().to_vec(),
        );
        self.answer(
            reply,
            async move { m.symlink(&c, parent, &name, &target).await },
            entry,
        );
    }

    fn rename(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        let (name, newname) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        self.answer(
            reply,
            async move {
                m.rename(&c, parent, &name, newparent, &newname, flags)
                    .await
            },
            |r, ()| r.ok(),
        );
    }

    fn link(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        let name = newname.as_bytes().to_vec();
        self.answer(
            reply,
            async move { m.link(&c, ino, newparent, &name).await },
            entry,
        );
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        self.answer(
            reply,
            async move { m.open(&c, ino, flags).await },
            |r, o| {
                let keep = if o.keep_cache {
                    fuser::consts::FOPEN_KEEP_CACHE
                } else {
                    0
                };
                r.opened(o.fh, keep)
            },
        );
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let m = self.mfs.clone();
        self.answer(
            reply,
            async move { m.read(fh, offset.max(0) as u64, size).await },
            |r, d| r.data(&d),
        );
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let (m, data) = (self.mfs.clone(), data.to_vec());
        self.answer(
            reply,
            async move { m.write(fh, offset.max(0) as u64, &data).await },
            |r, n| r.written(n),
        );
    }

    /// close(2) of a descriptor: written data reaches the server, and the closing process's
    /// POSIX locks on the file go (POSIX: any close by the owner releases them).
    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        let m = self.mfs.clone();
        self.answer(
            reply,
            async move {
                let written = m.flush(fh).await;
                let unlocked = m.drop_locks(fh, lock_owner).await;
                written.and(unlocked)
            },
            |r, ()| r.ok(),
        );
    }

    /// The last close of an open file: its flock lock (owned by the open file) goes.
    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let m = self.mfs.clone();
        self.answer(
            reply,
            async move {
                let unlocked = match lock_owner {
                    Some(o) => m.drop_locks(fh, o).await,
                    None => Ok(()),
                };
                m.release(fh).await.and(unlocked)
            },
            |r, ()| r.ok(),
        );
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, datasync: bool, reply: ReplyEmpty) {
        let m = self.mfs.clone();
        self.answer(
            reply,
            async move { m.fsync(fh, datasync).await },
            |r, ()| r.ok(),
        );
    }

    fn opendir(&mut self, req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        self.answer(reply, async move { m.opendir(&c, ino).await }, |r, fh| {
            r.opened(fh, 0)
        });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        reply: ReplyDirectory,
    ) {
        let m = self.mfs.clone();
        self.answer(
            reply,
            async move { m.readdir(fh, offset.max(0) as u64).await },
            |mut r, items| {
                for it in items {
                    let ino = if it.ino == 0 { u64::MAX } else { it.ino };
                    if r.add(
                        ino,
                        it.next as i64,
                        file_type(it.kind),
                        OsStr::from_bytes(&it.name),
                    ) {
                        break;
                    }
                }
                r.ok();
            },
        );
    }

    /// Entries with their attributes: each one the kernel receives counts as a lookup of it
    /// (forgotten later); those that did not fit in the kernel's buffer are kept for its next
    /// call ([`Mfs::unsent`]). An entry without attributes gets a TTL of zero: the kernel
    /// looks it up before use.
    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        reply: ReplyDirectoryPlus,
    ) {
        let (m, mm) = (self.mfs.clone(), self.mfs.clone());
        self.answer(
            reply,
            async move { m.readdirplus(fh, offset.max(0) as u64).await },
            move |mut r, items| {
                // Where the kernel asks next: after the last entry that fitted.
                let mut at = offset.max(0) as u64;
                let mut rest = Vec::new();
                for it in items {
                    if rest.is_empty() {
                        let (ttl, attr) = match &it.attr {
                            Some(a) => (TTL, fattr(it.ino, a)),
                            None => (Duration::ZERO, bare_attr(it.ino, it.kind)),
                        };
                        let name = OsStr::from_bytes(&it.name);
                        if !r.add(it.ino, it.next as i64, name, &ttl, &attr, 0) {
                            at = it.next;
                            continue;
                        }
                    }
                    rest.push(it);
                }
                r.ok();
                mm.unsent(fh, at, rest);
            },
        );
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        let m = self.mfs.clone();
        self.answer(reply, async move { m.releasedir(fh).await }, |r, ()| r.ok());
    }

    fn statfs(&mut self, req: &Request<'_>, ino: u64, reply: ReplyStatfs) {
        let (m, c, pid) = (self.mfs.clone(), self.cred(req), req.pid());
        self.answer(
            reply,
            async move { m.statfs_for(&c, pid, ino).await },
            |r, s| {
                r.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                )
            },
        );
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (m, c, name) = (self.mfs.clone(), self.cred(req), name.as_bytes().to_vec());
        let (mode, pid) = (mode & !umask & 0o7777, req.pid());
        self.answer(
            reply,
            async move {
                let made = m.create(&c, parent, &name, mode, flags).await?;
                m.note_created(pid, made.0.ino);
                Ok(made)
            },
            |r, (e, o)| r.created(&TTL, &fattr(e.ino, &e.attr), 0, o.fh, 0),
        );
    }

    fn getlk(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        let want = lock_of(start, end, typ, pid);
        self.answer(
            reply,
            async move { m.getlk(&c, ino, lock_owner, want).await },
            |r, l| r.locked(l.start, l.end, l.typ, l.pid),
        );
    }

    /// POSIX locks (owner: the process's file table) and flock locks (owner: the open file;
    /// the kernel sends them here too, as whole-file locks).
    fn setlk(
        &mut self,
        req: &Request<'_>,
        ino: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let (m, c) = (self.mfs.clone(), self.cred(req));
        let want = lock_of(start, end, typ, pid);
        self.answer(
            reply,
            async move { m.setlk(&c, ino, lock_owner, want, sleep).await },
            |r, ()| r.ok(),
        );
    }
}
