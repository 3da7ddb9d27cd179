//! The baseline for `scripts/bench-mfs.sh`: a minimal local FUSE passthrough over one
//! directory, built with the same fuser as MFS and the same kernel settings (1 MiB
//! max_readahead and max_write, 64 background requests), answering on fuser's session thread
//! with plain pread/pwrite. Enough for dd, cp, stat, ls and tar; not a general file system
//! (no rename, links, xattrs or locks).
//!
//! Usage (root): `passthrough SOURCE_DIR MOUNT_POINT` — runs until unmounted or killed.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, MountOption, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};

const TTL: Duration = Duration::from_secs(1);

struct Passthrough {
    /// inode (the source's st_ino; 1 is the root) -> path
    paths: HashMap<u64, PathBuf>,
    root_ino: u64,
    files: HashMap<u64, File>,
    next_fh: u64,
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

impl Passthrough {
    fn ino(&self, m: &std::fs::Metadata) -> u64 {
        if m.ino() == self.root_ino { 1 } else { m.ino() }
    }

    fn attr(&self, m: &std::fs::Metadata) -> FileAttr {
        let kind = match m.mode() & libc::S_IFMT {
            libc::S_IFDIR => FileType::Directory,
            libc::S_IFLNK => FileType::Symlink,
            _ => FileType::RegularFile,
        };
        FileAttr {
            ino: self.ino(m),
            size: m.size(),
            blocks: m.blocks(),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: m.blksize() as u32,
            flags: 0,
        }
    }

    fn path(&self, ino: u64) -> Result<PathBuf, i32> {
        self.paths.get(&ino).cloned().ok_or(libc::ENOENT)
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Result<(PathBuf, std::fs::Metadata), i32> {
        let p = self.path(parent)?.join(name);
        let m = std::fs::symlink_metadata(&p).map_err(|e| errno(&e))?;
        self.paths.insert(self.ino(&m), p.clone());
        Ok((p, m))
    }

    fn open_fh(&mut self, f: File) -> u64 {
        self.next_fh += 1;
        self.files.insert(self.next_fh, f);
        self.next_fh
    }
}

impl Filesystem for Passthrough {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok((_, m)) => reply.entry(&TTL, &self.attr(&m), 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self
            .path(ino)
            .and_then(|p| std::fs::symlink_metadata(p).map_err(|e| errno(&e)))
        {
            Ok(m) => reply.attr(&TTL, &self.attr(&m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let r = (|| {
            let p = self.path(ino)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| errno(&e))?;
            }
            if let Some(size) = size {
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(size))
                    .map_err(|e| errno(&e))?;
            }
            std::fs::symlink_metadata(&p).map_err(|e| errno(&e))
        })();
        match r {
            Ok(m) => reply.attr(&TTL, &self.attr(&m)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self.path(parent).and_then(|p| {
            let p = p.join(name);
            std::fs::create_dir(&p).map_err(|e| errno(&e))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| errno(&e))
        });
        match r.and_then(|()| self.child(parent, name)) {
            Ok((_, m)) => reply.entry(&TTL, &self.attr(&m), 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        match self
            .path(parent)
            .and_then(|p| std::fs::remove_file(p.join(name)).map_err(|e| errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let acc = flags & libc::O_ACCMODE;
        let r = self.path(ino).and_then(|p| {
            OpenOptions::new()
                .read(acc != libc::O_WRONLY)
                .write(acc != libc::O_RDONLY)
                .custom_flags(flags & libc::O_TRUNC)
                .open(p)
                .map_err(|e| errno(&e))
        });
        match r {
            Ok(f) => reply.opened(self.open_fh(f), 0),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.path(parent).and_then(|p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(flags & libc::O_TRUNC != 0)
                .mode(mode)
                .open(p.join(name))
                .map_err(|e| errno(&e))
        });
        match r.and_then(|f| self.child(parent, name).map(|(_, m)| (f, m))) {
            Ok((f, m)) => {
                let attr = self.attr(&m);
                reply.created(&TTL, &attr, 0, self.open_fh(f), 0)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        let Some(f) = self.files.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match f.read_at(&mut buf[got..], offset.max(0) as u64 + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..got])
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
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let Some(f) = self.files.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        match f.write_all_at(data, offset.max(0) as u64) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsync(&mut self, _req: &Request<'_>, _ino: u64, fh: u64, _ds: bool, reply: ReplyEmpty) {
        match self.files.get(&fh).map(|f| f.sync_all()) {
            Some(Ok(())) => reply.ok(),
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(libc::EBADF),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files.remove(&fh);
        reply.ok()
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let p = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let entries = match std::fs::read_dir(&p) {
            Ok(d) => d,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut all = vec![(ino, FileType::Directory, OsStr::new(".").to_owned())];
        all.push((1, FileType::Directory, OsStr::new("..").to_owned()));
        for e in entries.flatten() {
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => FileType::Directory,
                Ok(t) if t.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let Ok(m) = e.metadata() else { continue };
            all.push((self.ino(&m), kind, e.file_name()));
        }
        for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, i as i64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: passthrough SOURCE_DIR MOUNT_POINT");
        std::process::exit(2);
    }
    let src = PathBuf::from(&args[1]);
    let root_ino = match std::fs::metadata(&src) {
        Ok(m) => m.ino(),
        Err(e) => {
            eprintln!("passthrough: {}: {e}", src.display());
            std::process::exit(1);
        }
    };
    let fs = Passthrough {
        paths: HashMap::from([(1, src)]),
        root_ino,
        files: HashMap::new(),
        next_fh: 0,
    };
    let options = [
        MountOption::FSName("passthrough".into()),
        MountOption::AllowOther,
        MountOption::DefaultPermissions,
    ];
    if let Err(e) = fuser::mount2(fs, &args[2], &options) {
        eprintln!("passthrough: mount {}: {e}", args[2]);
        std::process::exit(1);
    }
}
