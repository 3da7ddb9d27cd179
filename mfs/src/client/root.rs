//! `/mfs` itself: one directory per node and the magic links resolved per calling process, and
//! lookup, which starts there.

use std::sync::Arc;

use bytes::Bytes;

use super::{Entry, Mfs, ROOT_INO};
use crate::magic::Magic;
use crate::magic::Resolver;
use crate::proto::{Attr, Cred, Kind, Op, ROOT, Reply};
use crate::{Error, NodeId};

fn magic_attr(ino: u64, kind: Kind, perm: u32, size: u64, t: (i64, u32)) -> Attr {
    Attr {
        ino,
        dev: 0,
        size,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        kind,
        perm,
        nlink: if kind == Kind::Dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        blksize: 4096,
    }
}

impl Mfs {
    pub(super) fn has_node(&self, n: NodeId) -> bool {
        self.nodes.read().expect("nodes").contains(&n) || n == self.cfg.local
    }

    /// Who answers the magic folders (by default: processes never move, all are this node).
    pub fn set_resolver(&self, r: Arc<dyn Resolver>) {
        *self.resolver.write().expect("resolver") = r;
    }

    /// The node magic link `ino` stands for, for process `pid`.
    pub(super) fn magic_node(&self, ino: u64, pid: u32) -> NodeId {
        match Magic::from_ino(ino) {
            Some(m) => self.resolver.read().expect("resolver").resolve(m, pid),
            None => self.cfg.local,
        }
    }

    /// Process `pid` created `ino` with O_CREAT (what `/mfs/magic` follows).
    pub fn note_created(&self, pid: u32, ino: u64) {
        let node = self
            .table
            .lock()
            .expect("inode table")
            .inodes
            .get(&ino)
            .map(|i| i.node);
        if let Some(node) = node {
            self.resolver.read().expect("resolver").created(pid, node);
        }
    }

    pub(super) fn root_attr(&self) -> Attr {
        magic_attr(ROOT_INO, Kind::Dir, 0o555, 0, self.started)
    }

    /// A magic link's attributes; its size is that of this node's number (the target
    /// depends on who reads it).
    pub(super) fn magic_link(&self, ino: u64) -> Attr {
        let target = self.cfg.local.to_string();
        magic_attr(ino, Kind::Symlink, 0o777, target.len() as u64, self.started)
    }

    pub async fn lookup(&self, cred: &Cred, parent: u64, name: &[u8]) -> Result<Entry, Error> {
        if parent == ROOT_INO {
            if let Some(m) = Magic::from_name(name) {
                return Ok(Entry {
                    ino: m.ino(),
                    attr: self.magic_link(m.ino()),
                });
            }
            return match name {
                b"." | b".." => Ok(Entry {
                    ino: ROOT_INO,
                    attr: self.root_attr(),
                }),
                _ => {
                    let node = std::str::from_utf8(name)
                        .ok()
                        .filter(|s| !s.starts_with('0') && !s.starts_with('+'))
                        .and_then(|s| s.parse::<NodeId>().ok())
                        .filter(|&n| self.has_node(n))
                        .ok_or_else(|| Error::Remote {
                            node: self.cfg.local,
                            errno: libc::ENOENT,
                            msg: format!(
                                "no node {:?} in the cluster",
                                String::from_utf8_lossy(name)
                            ),
                        })?;
                    let (r, _) = self
                        .send(node, cred, Op::GetAttr { handle: ROOT }, Bytes::new())
                        .await?;
                    let Reply::Attr(attr) = r else {
                        return Err(Error::Protocol {
                            node,
                            what: format!("{r:?} to getattr"),
                        });
                    };
                    Ok(self.enter(node, ROOT, ROOT_INO, name, attr, false))
                }
            };
        }
        let (node, r, _) = self
            .on(
                cred,
                &[parent],
                |h| Op::Lookup {
                    parent: h[0],
                    name: name.to_vec(),
                },
                Bytes::new(),
            )
            .await?;
        match r {
            Reply::Entry { handle, attr } => Ok(self.enter(node, handle, parent, name, attr, true)),
            r => Err(Error::Protocol {
                node,
                what: format!("{r:?} to a lookup"),
            }),
        }
    }
}
