//! The inode table: local inode numbers for `(node, server handle)`, each remembering its parent
//! and name; running an operation on a node by inode (finding a stale handle again from the
//! node's root); the attribute cache; forgetting inodes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

use std::collections::HashMap;

use super::{Entry, FIRST_INO, Mfs, eacces};
use crate::proto::{self, Attr, Cred, Handle, Op, ROOT, Reply};
use crate::{Error, NodeId};

pub(super) struct Inode {
    pub(super) node: NodeId,
    pub(super) handle: Handle,
    pub(super) parent: u64,
    pub(super) name: Vec<u8>,
    pub(super) attr: Attr,
    pub(super) fetched: Instant,
    /// Kernel lookups not yet forgotten.
    pub(super) lookups: u64,
    /// Server lookups not yet forgotten (what to tell the server at the end).
    pub(super) server_refs: u64,
    /// Bumped on every change seen here: read-ahead windows of older generations are dropped.
    pub(super) generation: Arc<AtomicU64>,
}

pub(super) struct Table {
    pub(super) inodes: HashMap<u64, Inode>,
    pub(super) by_key: HashMap<(NodeId, Handle), u64>,
    pub(super) next: u64,
}

pub(super) fn same_version(a: &Attr, b: &Attr) -> bool {
    (a.size, a.mtime, a.ctime) == (b.size, b.mtime, b.ctime)
}

fn is_stale(e: &Error) -> bool {
    e.errno() == libc::ESTALE
}

impl Mfs {
    pub(super) fn where_is(&self, ino: u64) -> Result<(NodeId, Handle), Error> {
        let t = self.table.lock().expect("inode table");
        t.inodes
            .get(&ino)
            .map(|i| (i.node, i.handle))
            .ok_or(Error::Stale(ino))
    }

    /// Run an operation on the handles of `inos` (all on one node); when the server calls a
    /// handle stale, find the files again from the node's root and retry once.
    pub(super) async fn on(
        &self,
        cred: &Cred,
        inos: &[u64],
        make: impl Fn(&[Handle]) -> Op,
        data: Bytes,
    ) -> Result<(NodeId, Reply, Bytes), Error> {
        let mut node = None;
        let mut hs = Vec::with_capacity(inos.len());
        for &ino in inos {
            if ino < FIRST_INO {
                return Err(eacces());
            }
            let (n, h) = self.where_is(ino)?;
            if node.is_some_and(|m| m != n) {
                return Err(Error::Remote {
                    node: n,
                    errno: libc::EXDEV,
                    msg: "files on different nodes".into(),
                });
            }
            node = Some(n);
            hs.push(h);
        }
        let node = node.expect("at least one inode");
        match self.send(node, cred, make(&hs), data.clone()).await {
            Err(e) if is_stale(&e) => {
                let mut hs = Vec::with_capacity(inos.len());
                for &ino in inos {
                    hs.push(self.rewalk(cred, ino).await?);
                }
                let (r, b) = self.send(node, cred, make(&hs), data).await?;
                Ok((node, r, b))
            }
            Err(e) => Err(e),
            Ok((r, b)) => Ok((node, r, b)),
        }
    }

    /// Find `ino` again by name from its node's root; refuse if it is now another file.
    pub(super) async fn rewalk(&self, cred: &Cred, ino: u64) -> Result<Handle, Error> {
        let mut chain = Vec::new();
        let node;
        {
            let t = self.table.lock().expect("inode table");
            let mut cur = ino;
            loop {
                let i = t.inodes.get(&cur).ok_or(Error::Stale(ino))?;
                if i.handle == ROOT {
                    node = i.node;
                    break;
                }
                chain.push((cur, i.name.clone(), (i.attr.dev, i.attr.ino)));
                cur = i.parent;
            }
        }
        let mut h = ROOT;
        for (cur, name, key) in chain.into_iter().rev() {
            let (r, _) = self
                .send(node, cred, Op::Lookup { parent: h, name }, Bytes::new())
                .await?;
            let Reply::Entry { handle, attr } = r else {
                return Err(Error::Protocol {
                    node,
                    what: format!("{r:?} to a lookup"),
                });
            };
            if (attr.dev, attr.ino) != key {
                return Err(Error::Stale(cur));
            }
            let mut t = self.table.lock().expect("inode table");
            if let Some(i) = t.inodes.get_mut(&cur) {
                let old = std::mem::replace(&mut i.handle, handle);
                i.server_refs = 1;
                i.attr = attr;
                i.fetched = Instant::now();
                t.by_key.remove(&(node, old));
                t.by_key.insert((node, handle), cur);
            }
            h = handle;
        }
        Ok(h)
    }

    /// Enter a server's answer about a file in the inode table (one more lookup of it).
    pub(super) fn enter(
        &self,
        node: NodeId,
        handle: Handle,
        parent: u64,
        name: &[u8],
        attr: Attr,
        counted: bool,
    ) -> Entry {
        let mut t = self.table.lock().expect("inode table");
        if let Some(&ino) = t.by_key.get(&(node, handle)) {
            if let Some(i) = t.inodes.get_mut(&ino) {
                if !same_version(&i.attr, &attr) {
                    i.generation.fetch_add(1, Ordering::Relaxed);
                }
                i.attr = attr.clone();
                i.fetched = Instant::now();
                i.lookups += 1;
                if counted {
                    i.server_refs += 1;
                }
                i.parent = parent;
                i.name = name.to_vec();
                return Entry { ino, attr };
            }
        }
        let ino = t.next;
        t.next += 1;
        t.by_key.insert((node, handle), ino);
        t.inodes.insert(
            ino,
            Inode {
                node,
                handle,
                parent,
                name: name.to_vec(),
                attr: attr.clone(),
                fetched: Instant::now(),
                lookups: 1,
                server_refs: u64::from(counted),
                generation: Arc::new(AtomicU64::new(0)),
            },
        );
        Entry { ino, attr }
    }

    pub(super) fn note_attr(&self, ino: u64, attr: &Attr) {
        let mut t = self.table.lock().expect("inode table");
        if let Some(i) = t.inodes.get_mut(&ino) {
            if !same_version(&i.attr, attr) {
                i.generation.fetch_add(1, Ordering::Relaxed);
            }
            i.attr = attr.clone();
            i.fetched = Instant::now();
        }
    }

    pub(super) fn expire_attr(&self, ino: u64) {
        let mut t = self.table.lock().expect("inode table");
        if let Some(i) = t.inodes.get_mut(&ino) {
            i.fetched = Instant::now() - self.cfg.attr_ttl * 2;
            i.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The kernel forgets `n` lookups of `ino`; at zero the server is told too.
    pub fn forget(&self, ino: u64, n: u64) {
        let gone = {
            let mut t = self.table.lock().expect("inode table");
            let Some(i) = t.inodes.get_mut(&ino) else {
                return;
            };
            i.lookups = i.lookups.saturating_sub(n);
            if i.lookups > 0 {
                return;
            }
            let i = t.inodes.remove(&ino).expect("present");
            t.by_key.remove(&(i.node, i.handle));
            i
        };
        if gone.server_refs > 0 && gone.handle != ROOT {
            let call = self.remote.call(
                gone.node,
                proto::Request {
                    cred: Cred::root(),
                    op: Op::Forget {
                        handle: gone.handle,
                        n: gone.server_refs,
                    },
                },
                Bytes::new(),
            );
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = call.await;
                });
            }
        }
    }
}
