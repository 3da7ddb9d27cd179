//! Building the call sent home from a trapped notification: its memory arguments read from
//! the process and the memory the result is copied back to ([`crate::homecall`]).

use super::*;

impl<P: HomePort> Supervisor<P> {
    /// The call to send home, or `None` when it works relative to a local directory fd (it
    /// then runs here).
    pub(super) fn build_call(&mut self, n: &Notif, req: Req) -> seccomp::Result<Option<Call>> {
        Ok(Some(match req {
            Req::Read { fd, len, .. } => Call::Read { fd, len },
            Req::Write { fd, buf, len } => Call::Write {
                fd,
                data: Bytes::from(self.listener.read_mem(n, buf, len as usize)?),
            },
            Req::Pread {
                fd, len, offset, ..
            } => Call::Pread { fd, len, offset },
            Req::Pwrite {
                fd,
                buf,
                len,
                offset,
            } => Call::Pwrite {
                fd,
                data: Bytes::from(self.listener.read_mem(n, buf, len as usize)?),
                offset,
            },
            Req::Lseek { fd, offset, whence } => Call::Lseek { fd, offset, whence },
            Req::Fstat { fd, .. } => Call::Fstat { fd },
            Req::FileId { fd } => Call::FileId { fd },
            Req::Close { fd } => Call::Close { fd },
            Req::Sys { nr } => match self.sys_args(n, nr)? {
                Some(args) => Call::Sys { nr, args },
                None => return Ok(None),
            },
            Req::Openat {
                dirfd,
                path,
                flags,
                mode,
            } => {
                let path = self.read_path(n, path)?;
                if path.first() == Some(&b'/') && flags & (libc::O_ACCMODE | libc::O_PATH) == 0 {
                    self.open_paths.insert(n.id, path.clone());
                }
                let dirfd = if dirfd == libc::AT_FDCWD || self.fds.is_home(dirfd.into()) {
                    dirfd
                } else if path.first() == Some(&b'/') {
                    libc::AT_FDCWD // absolute: the local dirfd plays no part
                } else {
                    return Ok(None);
                };
                Call::Openat {
                    dirfd,
                    path: Bytes::from(path),
                    flags,
                    mode,
                    at: lowest_free_fd(n.pid).map_err(|source| seccomp::Error::Mem {
                        op: "listing /proc/<pid>/fd",
                        pid: n.pid,
                        addr: 0,
                        len: 0,
                        source,
                    })?,
                }
            }
        }))
    }

    /// The arguments of a [`Req::Sys`] call, read out of the process by the table; `None` when
    /// a directory fd is local and its path relative (the call runs here).
    pub(super) fn sys_args(&self, n: &Notif, nr: i64) -> seccomp::Result<Option<Vec<Arg>>> {
        let a = n.data.args;
        let Some(t) = homecall::template(nr) else {
            return Ok(Some(Vec::new())); // not reached: classify forwards only table calls
        };
        let clamp = |v: u64| v.min(u64::from(homecall::MAX_BUF));
        let mut out = Vec::with_capacity(t.len());
        let mut local_dir = false;
        for (i, slot) in t.iter().enumerate() {
            let arg = match slot {
                Slot::Val => Arg::Val(a[i]),
                Slot::Dir => {
                    let fd = a[i] as i32;
                    if fd == libc::AT_FDCWD {
                        Arg::Val(libc::AT_FDCWD as u64)
                    } else if self.fds.is_home(fd.into()) {
                        Arg::Fd(fd)
                    } else {
                        local_dir = true;
                        Arg::Val(libc::AT_FDCWD as u64)
                    }
                }
                Slot::Fd => Arg::Fd(a[i] as i32),
                Slot::Path | Slot::PathOrNull => {
                    if a[i] == 0 && *slot == Slot::PathOrNull {
                        if local_dir {
                            return Ok(None);
                        }
                        Arg::Null
                    } else {
                        let p = self.read_path(n, a[i])?;
                        if local_dir && p.first() != Some(&b'/') {
                            return Ok(None);
                        }
                        local_dir = false;
                        Arg::In(Bytes::from(p))
                    }
                }
                Slot::In(len) => Arg::In(Bytes::from(self.listener.read_mem(
                    n,
                    a[i],
                    *len as usize,
                )?)),
                Slot::InOrNull(len) => {
                    if a[i] == 0 {
                        Arg::Null
                    } else {
                        Arg::In(Bytes::from(self.listener.read_mem(
                            n,
                            a[i],
                            *len as usize,
                        )?))
                    }
                }
                Slot::Out(len) => Arg::Out(*len),
                Slot::OutLen(li) => Arg::Out(clamp(a[*li]) as u32),
                Slot::Len => Arg::Val(clamp(a[i])),
                Slot::IoctlArg => match homecall::ioctl_arg(a[1]) {
                    Some(IoArg::Val) | None | Some(IoArg::Local | IoArg::Home) => Arg::Val(a[i]),
                    Some(IoArg::In(len) | IoArg::InOut(len)) => Arg::In(Bytes::from(
                        self.listener.read_mem(n, a[i], len as usize)?,
                    )),
                    Some(IoArg::Out(len)) => Arg::Out(len),
                },
            };
            out.push(arg);
        }
        Ok(Some(out))
    }

    /// Where a [`Req::Sys`] call's result buffers go in the process: (address, bytes), in the
    /// order of the reply's data.
    pub(super) fn sys_outs(nr: i64, a: [u64; 6], ret: i64) -> Vec<(u64, usize)> {
        let Some(t) = homecall::template(nr) else {
            return Vec::new();
        };
        let clamp = |v: u64| v.min(u64::from(homecall::MAX_BUF)) as usize;
        t.iter()
            .enumerate()
            .filter_map(|(i, slot)| match slot {
                Slot::Out(len) => Some((a[i], *len as usize)),
                Slot::OutLen(li) => Some((a[i], clamp(a[*li]).min(ret.max(0) as usize))),
                Slot::IoctlArg => match homecall::ioctl_arg(a[1]) {
                    Some(IoArg::Out(len) | IoArg::InOut(len)) => Some((a[i], len as usize)),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// A NUL-terminated path (without the NUL) at `addr`, read page by page (a path may end
    /// right before an unmapped page). Longer than PATH_MAX: ENAMETOOLONG, as the kernel says.
    pub(super) fn read_path(&self, n: &Notif, addr: u64) -> seccomp::Result<Vec<u8>> {
        const PATH_MAX: usize = 4096;
        let mut out = Vec::new();
        let mut at = addr;
        while out.len() < PATH_MAX {
            let in_page = 4096 - (at % 4096) as usize;
            let chunk = self
                .listener
                .read_mem(n, at, in_page.min(PATH_MAX - out.len()))?;
            if let Some(end) = chunk.iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk);
            at += chunk.len() as u64;
        }
        Err(seccomp::Error::Mem {
            op: "reading a path",
            pid: n.pid,
            addr,
            len: PATH_MAX,
            source: io::Error::from_raw_os_error(libc::ENAMETOOLONG),
        })
    }
}
