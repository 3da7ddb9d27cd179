//! The worker threads: each job run with the caller's ids, and one operation mapped to the
//! table methods.

use std::os::fd::AsFd;
use std::sync::{Mutex, mpsc};

use bytes::Bytes;

use super::{Job, MAX_READ, Shared, check_name, shown};
use crate::proto::{Cred, DirEntryPlus, Kind, Op, Reply, StatFs};
use crate::{Error, sys};

pub(super) fn worker(shared: &Shared, rx: &Mutex<mpsc::Receiver<Job>>) {
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
pub(super) fn run_as(
    shared: &Shared,
    cred: &Cred,
    op: Op,
    data: Bytes,
) -> Result<(Reply, Bytes), Error> {
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

/// One operation, already running with the caller's ids.
pub(super) fn run(s: &Shared, op: Op, data: Bytes) -> Result<(Reply, Bytes), Error> {
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
        Op::ReadDirPlus {
            fh,
            dir,
            offset,
            max,
        } => {
            let (entries, eof) = s.readdir(fh, offset, max)?;
            let entries = entries
                .into_iter()
                .map(|entry| DirEntryPlus {
                    // As the caller, as any lookup: a name it may not search has no attributes.
                    found: s.lookup_listed(dir, &entry.name).ok(),
                    entry,
                })
                .collect();
            Reply::DirPlus { entries, eof }
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
