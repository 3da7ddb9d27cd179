//! Opening and creating files (close-to-open: attributes always fetched afresh on open).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::table::same_version;
use super::{Entry, FIRST_INO, FileState, Mfs, OpenFile, Opened};
use crate::proto::{Cred, Fh, Op, Reply};
use crate::{Error, NodeId};

impl Mfs {
    pub(super) fn add_file(&self, ino: u64, node: NodeId, fh: Fh, cred: &Cred) -> u64 {
        let generation = {
            let t = self.table.lock().expect("inode table");
            t.inodes
                .get(&ino)
                .map(|i| i.generation.clone())
                .unwrap_or_default()
        };
        let local = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let f = OpenFile {
            ino,
            node,
            fh,
            cred: cred.clone(),
            generation,
            st: tokio::sync::Mutex::new(FileState::default()),
        };
        self.files
            .lock()
            .expect("open files")
            .insert(local, Arc::new(f));
        local
    }

    /// Open a file; its attributes are always fetched afresh (close-to-open).
    pub async fn open(&self, cred: &Cred, ino: u64, flags: i32) -> Result<Opened, Error> {
        if ino < FIRST_INO {
            return Err(Error::Remote {
                node: 0,
                errno: libc::EISDIR,
                msg: "not a file".into(),
            });
        }
        self.settle(ino).await?;
        let before = {
            let t = self.table.lock().expect("inode table");
            t.inodes.get(&ino).map(|i| i.attr.clone())
        };
        let (node, r, _) = self
            .on(
                cred,
                &[ino],
                |h| Op::Open {
                    handle: h[0],
                    flags,
                },
                Bytes::new(),
            )
            .await?;
        let Reply::Opened { fh, attr } = r else {
            return Err(Error::Protocol {
                node,
                what: format!("{r:?} to open"),
            });
        };
        let keep_cache =
            before.is_some_and(|b| same_version(&b, &attr)) && flags & libc::O_TRUNC == 0;
        self.note_attr(ino, &attr);
        Ok(Opened {
            fh: self.add_file(ino, node, fh, cred),
            keep_cache,
            attr,
        })
    }

    pub async fn create(
        &self,
        cred: &Cred,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
    ) -> Result<(Entry, Opened), Error> {
        let (node, r, _) = self
            .on(
                cred,
                &[parent],
                |h| Op::Create {
                    parent: h[0],
                    name: name.to_vec(),
                    mode,
                    flags,
                },
                Bytes::new(),
            )
            .await?;
        let Reply::Created { handle, attr, fh } = r else {
            return Err(Error::Protocol {
                node,
                what: format!("{r:?} to create"),
            });
        };
        self.expire_attr(parent);
        let e = self.enter(node, handle, parent, name, attr.clone(), true);
        let fh = self.add_file(e.ino, node, fh, cred);
        Ok((
            e,
            Opened {
                fh,
                keep_cache: false,
                attr,
            },
        ))
    }
}
