//! Directories: `/mfs` itself listed from the node table and magic links, other directories
//! read from their server in batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{DirItem, DirPlusItem, Mfs, ROOT_INO};
use crate::magic::Magic;
use crate::proto::{Cred, Fh, Kind, Op, ROOT, Reply};
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

    /// READDIRPLUS: entries from `offset` on (as [`Mfs::readdir`]), each with its inode and
    /// attributes from a lookup on the server in the same round trip — counted as a lookup
    /// of it, as the kernel counts it. `/mfs` itself, `.`, `..` and entries whose lookup
    /// failed come without attributes, under inode numbers of their own.
    pub async fn readdirplus(&self, fh: u64, offset: u64) -> Result<Vec<DirPlusItem>, Error> {
        // What the last call fetched beyond the kernel's buffer: the continuation, if asked.
        let kept = self.dir_ahead.lock().expect("dir ahead").remove(&fh);
        if let Some((at, items)) = kept {
            if at == offset && !items.is_empty() {
                return Ok(items);
            }
            self.forget_items(items);
        }
        let dir = self
            .dirs
            .lock()
            .expect("open dirs")
            .get(&fh)
            .cloned()
            .ok_or(Error::BadFile(fh))?;
        let OpenDir::Remote {
            node,
            fh,
            cred,
            ino,
            parent,
        } = &*dir
        else {
            let items = self.readdir(fh, offset).await?;
            return Ok(items.into_iter().map(|it| self.root_item(it)).collect());
        };
        let mut out = Vec::new();
        if offset == 0 {
            out.push(self.bare(DirItem {
                name: b".".to_vec(),
                kind: Kind::Dir,
                ino: *ino,
                next: 1,
            }));
        }
        if offset <= 1 {
            out.push(self.bare(DirItem {
                name: b"..".to_vec(),
                kind: Kind::Dir,
                ino: *parent,
                next: 2,
            }));
        }
        let from = offset.saturating_sub(2);
        // A handle gone stale answers every lookup with an error: entries without attributes.
        let handle = self.where_is(*ino).map(|(_, h)| h).unwrap_or(0);
        let op = Op::ReadDirPlus {
            fh: *fh,
            dir: handle,
            offset: from,
            max: self.cfg.dir_batch,
        };
        let (r, _) = self.send(*node, cred, op, Bytes::new()).await?;
        let Reply::DirPlus { entries, .. } = r else {
            return Err(Error::Protocol {
                node: *node,
                what: format!("{r:?} to readdirplus"),
            });
        };
        for (i, e) in entries.into_iter().enumerate() {
            let next = 2 + from + i as u64 + 1;
            out.push(match e.found {
                Some((h, attr)) => {
                    let entry = self.enter(*node, h, *ino, &e.entry.name, attr, true);
                    DirPlusItem {
                        name: e.entry.name,
                        kind: entry.attr.kind,
                        ino: entry.ino,
                        attr: Some(entry.attr),
                        counted: true,
                        next,
                    }
                }
                None => self.bare(DirItem {
                    name: e.entry.name,
                    kind: e.entry.kind,
                    ino: 0,
                    next,
                }),
            });
        }
        Ok(out)
    }

    /// The entries of a [`Mfs::readdirplus`] answer that the kernel did not receive (its
    /// buffer was full), kept for its next call at offset `at`; forgotten when it asks for
    /// something else or closes the directory.
    pub fn unsent(&self, fh: u64, at: u64, items: Vec<DirPlusItem>) {
        if items.is_empty() {
            return;
        }
        if !self.dirs.lock().expect("open dirs").contains_key(&fh) {
            return self.forget_items(items);
        }
        let old = self
            .dir_ahead
            .lock()
            .expect("dir ahead")
            .insert(fh, (at, items));
        if let Some((_, old)) = old {
            self.forget_items(old);
        }
    }

    fn forget_items(&self, items: Vec<DirPlusItem>) {
        for it in items.into_iter().filter(|it| it.counted) {
            self.forget(it.ino, 1);
        }
    }

    /// An entry of `/mfs` itself: the magic links with their attributes; a node's folder with
    /// the attributes it had when last looked up, else without (it is looked up, one call to
    /// that node, only when used: a node that is down does not slow `ls /mfs`).
    fn root_item(&self, it: DirItem) -> DirPlusItem {
        if Magic::from_ino(it.ino).is_some() {
            return DirPlusItem {
                attr: Some(self.magic_link(it.ino)),
                ..self.bare(it)
            };
        }
        let node = std::str::from_utf8(&it.name)
            .ok()
            .and_then(|s| s.parse::<NodeId>().ok());
        let known = node.and_then(|n| {
            let t = self.table.lock().expect("inode table");
            let i = t.inodes.get(t.by_key.get(&(n, ROOT))?)?;
            Some(i.attr.clone())
        });
        match (node, known) {
            (Some(n), Some(attr)) if it.ino == 0 => {
                let e = self.enter(n, ROOT, ROOT_INO, &it.name, attr, false);
                DirPlusItem {
                    name: it.name,
                    kind: it.kind,
                    ino: e.ino,
                    attr: Some(e.attr),
                    counted: true,
                    next: it.next,
                }
            }
            _ => self.bare(it),
        }
    }

    /// An entry without attributes: its own inode number if it has one (`.`, `..`, magic
    /// links: the kernel takes no lookup of these), else a fresh one never used again.
    fn bare(&self, it: DirItem) -> DirPlusItem {
        let ino = if it.ino != 0 {
            it.ino
        } else {
            let mut t = self.table.lock().expect("inode table");
            t.next += 1;
            t.next - 1
        };
        DirPlusItem {
            name: it.name,
            kind: it.kind,
            ino,
            attr: None,
            counted: false,
            next: it.next,
        }
    }

    pub async fn releasedir(&self, fh: u64) -> Result<(), Error> {
        let dir = self
            .dirs
            .lock()
            .expect("open dirs")
            .remove(&fh)
            .ok_or(Error::BadFile(fh))?;
        let kept = self.dir_ahead.lock().expect("dir ahead").remove(&fh);
        if let Some((_, items)) = kept {
            self.forget_items(items);
        }
        match &*dir {
            OpenDir::Root(_) => Ok(()),
            OpenDir::Remote { node, fh, cred, .. } => self
                .send(*node, cred, Op::ReleaseDir { fh: *fh }, Bytes::new())
                .await
                .map(drop),
        }
    }
}
