//! Changes to names on a server: mkdir, symlink, link, unlink, rmdir, rename; and statfs.

use bytes::Bytes;

use super::{Entry, FIRST_INO, Mfs, ROOT_INO};
use crate::Error;
use crate::proto::{Cred, Handle, Op, ROOT, Reply, StatFs};

impl Mfs {
    pub(super) async fn entry_op(
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

    pub(super) async fn plain(
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
