//! Attributes: getattr from the cache or the server, setattr, readlink; waiting for written
//! data to reach the server first.

use std::sync::Arc;

use bytes::Bytes;

use super::{FIRST_INO, Mfs, OpenFile, ROOT_INO, eacces};
use crate::Error;
use crate::magic::Magic;
use crate::proto::{Attr, Cred, Op, Reply, SetAttr};

impl Mfs {
    /// Wait for the written data of every open file of `ino` to reach its server.
    pub(super) async fn settle(&self, ino: u64) -> Result<(), Error> {
        self.settle_others(ino, None).await
    }

    /// As [`Mfs::settle`], for every open file of `ino` but `me`.
    pub(super) async fn settle_others(
        &self,
        ino: u64,
        me: Option<&Arc<OpenFile>>,
    ) -> Result<(), Error> {
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

    pub(super) async fn fresh_attr(&self, cred: &Cred, ino: u64) -> Result<Attr, Error> {
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
}
