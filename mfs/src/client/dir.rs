//! Directories: `/mfs` itself listed from the node table and magic links, other directories
//! read from their server in batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{DirItem, Mfs, ROOT_INO};
use crate::magic::Magic;
use crate::proto::{Cred, Fh, Kind, Op, Reply};
use crate::{Error, NodeId};

pub(super) enum OpenDir {
    Root(Vec<DirItem>),
    Remote {
        node: NodeId,
        fh: Fh,
        cred: Cred,
        ino: u64,
        parent: u64,
    },
}

impl Mfs {
    pub async fn opendir(&self, cred: &Cred, ino: u64) -> Result<u64, Error> {
        let dir = if ino == ROOT_INO {
            let mut items = vec![
                DirItem {
                    name: b".".to_vec(),
                    kind: Kind::Dir,
                    ino: ROOT_INO,
                    next: 1,
                },
                DirItem {
                    name: b"..".to_vec(),
                    kind: Kind::Dir,
                    ino: ROOT_INO,
                    next: 2,
                },
            ];
            let mut nodes = self.nodes.read().expect("nodes").clone();
            if !nodes.contains(&self.cfg.local) {
                nodes.push(self.cfg.local);
            }
            nodes.sort_unstable();
            for n in nodes {
                items.push(DirItem {
                    name: n.to_string().into_bytes(),
                    kind: Kind::Dir,
                    ino: 0,
                    next: 0,
                });
            }
            for m in Magic::ALL {
                items.push(DirItem {
                    name: m.name().as_bytes().to_vec(),
                    kind: Kind::Symlink,
                    ino: m.ino(),
                    next: 0,
                });
            }
            for (i, it) in items.iter_mut().enumerate() {
                it.next = i as u64 + 1;
            }
            OpenDir::Root(items)
        } else {
            let (node, r, _) = self
                .on(cred, &[ino], |h| Op::OpenDir { handle: h[0] }, Bytes::new())
                .await?;
            let Reply::Opened { fh, attr } = r else {
                return Err(Error::Protocol {
                    node,
                    what: format!("{r:?} to opendir"),
                });
            };
            self.note_attr(ino, &attr);
            let parent = {
                let t = self.table.lock().expect("inode table");
                t.inodes.get(&ino).map(|i| i.parent).unwrap_or(ROOT_INO)
            };
            OpenDir::Remote {
                node,
                fh,
                cred: cred.clone(),
                ino,
                parent,
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .expect("open dirs")
            .insert(fh, Arc::new(dir));
        Ok(fh)
    }

    /// Entries from `offset` on (0 is the start); an empty answer is the end.
    pub async fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirItem>, Error> {
        let dir = self
            .dirs
            .lock()
            .expect("open dirs")
            .get(&fh)
            .cloned()
            .ok_or(Error::BadFile(fh))?;
        match &*dir {
            OpenDir::Root(items) => Ok(items.iter().skip(offset as usize).cloned().collect()),
            OpenDir::Remote {
                node,
                fh,
                cred,
                ino,
                parent,
            } => {
                let mut out = Vec::new();
                if offset == 0 {
                    out.push(DirItem {
                        name: b".".to_vec(),
                        kind: Kind::Dir,
                        ino: *ino,
                        next: 1,
                    });
                }
                if offset <= 1 {
                    out.push(DirItem {
                        name: b"..".to_vec(),
                        kind: Kind::Dir,
                        ino: *parent,
                        next: 2,
                    });
                }
                let from = offset.saturating_sub(2);
                let op = Op::ReadDir {
                    fh: *fh,
                    offset: from,
                    max: self.cfg.dir_batch,
                };
                let (r, _) = self.send(*node, cred, op, Bytes::new()).await?;
                let Reply::Dir { entries, .. } = r else {
                    return Err(Error::Protocol {
                        node: *node,
                        what: format!("{r:?} to readdir"),
                    });
                };
                for (i, e) in entries.into_iter().enumerate() {
                    out.push(DirItem {
                        name: e.name,
                        kind: e.kind,
                        ino: e.ino,
                        next: 2 + from + i as u64 + 1,
                    });
                }
                Ok(out)
            }
        }
    }

    pub async fn releasedir(&self, fh: u64) -> Result<(), Error> {
        let dir = self
            .dirs
            .lock()
            .expect("open dirs")
            .remove(&fh)
            .ok_or(Error::BadFile(fh))?;
        match &*dir {
            OpenDir::Root(_) => Ok(()),
            OpenDir::Remote { node, fh, cred, .. } => self
                .send(*node, cred, Op::ReleaseDir { fh: *fh }, Bytes::new())
                .await
                .map(drop),
        }
    }
}
