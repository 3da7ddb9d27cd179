//! The handle and open-file tables: lookups beneath the export, attributes, open, create,
//! directories.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Node, Open, Shared, attr_of, check_name, hidden_fs, kind_of, shown};
use crate::proto::{Attr, DirEntry, Fh, Handle, Kind, ROOT, SetAttr, TimeSet};
use crate::{Error, sys};

impl Shared {
    pub(super) fn node(&self, h: Handle) -> Result<(Arc<OwnedFd>, Kind), Error> {
        let hs = self.handles.lock().expect("handle table");
        hs.by_id
            .get(&h)
            .map(|n| (n.fd.clone(), n.kind))
            .ok_or(Error::Stale(h))
    }

    pub(super) fn file(&self, fh: Fh) -> Result<(Arc<OwnedFd>, bool), Error> {
        match self.open.lock().expect("open table").get(&fh) {
            Some(Open::File { fd, append }) => Ok((fd.clone(), *append)),
            _ => Err(Error::BadFile(fh)),
        }
    }

    pub(super) fn add_open(&self, o: Open) -> Fh {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.open.lock().expect("open table").insert(fh, o);
        fh
    }

    /// The handle for an O_PATH descriptor (one handle per inode), counting one lookup.
    pub(super) fn register(&self, fd: OwnedFd, what: &str) -> Result<(Handle, Attr), Error> {
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

    pub(super) fn forget(&self, h: Handle, n: u64) {
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
    pub(super) fn proc_name(fd: BorrowedFd<'_>) -> Vec<u8> {
        fd.as_raw_fd().to_string().into_bytes()
    }

    pub(super) fn stat_attr(&self, fd: BorrowedFd<'_>, what: &str) -> Result<Attr, Error> {
        let st = sys::fstat(fd).map_err(|e| Error::os("stat", what, e))?;
        attr_of(&st).ok_or_else(|| Error::NotExported(what.to_string()))
    }

    pub(super) fn lookup(&self, parent: Handle, name: &[u8]) -> Result<(Handle, Attr), Error> {
        let name = check_name(name)?;
        let (dir, _) = self.node(parent)?;
        let fd = sys::lookup_beneath(dir.as_fd(), name).map_err(|e| match e.raw_os_error() {
            Some(libc::EXDEV) => Error::Escape(shown(name)),
            _ => Error::os("lookup", shown(name), e),
        })?;
        self.register(fd, &shown(name))
    }

    /// A lookup of a name just listed (READDIRPLUS): a file that already has a handle is
    /// found by one `fstatat` of the name in the directory, as the caller (no new descriptor;
    /// same file system as the directory only, so no mount point is crossed); any other as
    /// [`Shared::lookup`]. Counts one lookup either way.
    pub(super) fn lookup_listed(
        &self,
        parent: Handle,
        name: &[u8],
    ) -> Result<(Handle, Attr), Error> {
        let checked = check_name(name)?;
        let (dir, _) = self.node(parent)?;
        if let Ok(st) = sys::fstatat(dir.as_fd(), checked, libc::AT_SYMLINK_NOFOLLOW) {
            if let Some(attr) = attr_of(&st) {
                let mut hs = self.handles.lock().expect("handle table");
                let same_fs = hs.by_id.get(&parent).map(|n| n.key.0) == Some(st.st_dev);
                if let Some(&h) = hs.by_key.get(&(st.st_dev, st.st_ino)).filter(|_| same_fs) {
                    if let Some(n) = hs.by_id.get_mut(&h) {
                        n.refs += 1;
                        return Ok((h, attr));
                    }
                }
            }
        }
        self.lookup(parent, name)
    }

    pub(super) fn setattr(&self, h: Handle, set: &SetAttr) -> Result<Attr, Error> {
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

    pub(super) fn open(&self, h: Handle, flags: i32) -> Result<(Fh, Attr), Error> {
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

    pub(super) fn create(
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

    pub(super) fn opendir(&self, h: Handle) -> Result<Fh, Error> {
        let (fd, kind) = self.node(h)?;
        let what = format!("directory handle {h}");
        if kind != Kind::Dir {
            return Err(Error::os(
                "opendir",
                what,
                std::io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        // Through /proc/self/fd (as files are opened): listing needs read permission on the
        // directory only, as locally; `openat(fd, ".")` would also need search permission.
        // In a directory the caller may not search, subdirectories cannot be checked for
        // mount points of /proc (below) and are left out: fail closed.
        let dir = sys::openat(
            self.proc_fd.as_fd(),
            &Self::proc_name(fd.as_fd()),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
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

    pub(super) fn readdir(
        &self,
        fh: Fh,
        offset: u64,
        max: u32,
    ) -> Result<(Vec<DirEntry>, bool), Error> {
        let entries = match self.open.lock().expect("open table").get(&fh) {
            Some(Open::Dir(e)) => e.clone(),
            _ => return Err(Error::BadFile(fh)),
        };
        let start = (offset as usize).min(entries.len());
        let end = start.saturating_add(max.max(1) as usize).min(entries.len());
        Ok((entries[start..end].to_vec(), end == entries.len()))
    }

    pub(super) fn release(&self, fh: Fh) -> Result<(), Error> {
        self.open
            .lock()
            .expect("open table")
            .remove(&fh)
            .map(drop)
            .ok_or(Error::BadFile(fh))
    }
}
