//! The data path of open files: reads served from read-ahead windows (the next ones fetched
//! while a sequential reader uses this one), writes gathered for write-behind (one batch in
//! flight), and close, fsync and release, which wait for the gathered writes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::{FileState, Mfs, OpenFile, Window};
use crate::Error;
use crate::proto::{self, Op, Reply};

impl Mfs {
    pub(super) fn file(&self, fh: u64) -> Result<Arc<OpenFile>, Error> {
        self.files
            .lock()
            .expect("open files")
            .get(&fh)
            .cloned()
            .ok_or(Error::BadFile(fh))
    }

    fn fetch(
        &self,
        f: &OpenFile,
        off: u64,
        len: usize,
    ) -> impl Future<Output = Result<Window, Error>> + Send + 'static {
        let generation = f.generation.load(Ordering::Relaxed);
        let (node, fh) = (f.node, f.fh);
        let call = self.remote.call(
            node,
            proto::Request {
                cred: f.cred.clone(),
                op: Op::Read {
                    fh,
                    offset: off,
                    size: len as u32,
                },
            },
            Bytes::new(),
        );
        async move {
            let (r, data) = call.await?;
            if r != Reply::Data || data.len() > len {
                return Err(Error::Protocol {
                    node,
                    what: format!("{r:?} with {} bytes to a read of {len}", data.len()),
                });
            }
            Ok(Window {
                generation,
                off,
                eof: data.len() < len,
                data,
            })
        }
    }

    pub async fn read(&self, fh: u64, off: u64, size: u32) -> Result<Bytes, Error> {
        let f = self.file(fh)?;
        // What any descriptor of this file wrote here is readable (POSIX, within one node).
        self.settle(f.ino).await?;
        let mut st = f.st.lock().await;
        self.drain(&f, &mut st).await?;
        let end = off + u64::from(size);
        let ra = self.cfg.read_ahead.max(4096);
        let mut out: Option<BytesMut> = None;
        let mut first: Option<Bytes> = None;
        let mut pos = off;
        while pos < end {
            let generation = f.generation.load(Ordering::Relaxed);
            if let Some(w) = &st.window {
                let wend = w.off + w.data.len() as u64;
                if w.generation == generation && w.off <= pos && pos < wend {
                    let take = end.min(wend);
                    let piece = w
                        .data
                        .slice((pos - w.off) as usize..(take - w.off) as usize);
                    pos = take;
                    match (&mut out, first.take()) {
                        (None, None) => first = Some(piece),
                        (None, Some(p)) => {
                            let mut b = BytesMut::with_capacity(size as usize);
                            b.extend_from_slice(&p);
                            b.extend_from_slice(&piece);
                            out = Some(b);
                        }
                        (Some(b), _) => b.extend_from_slice(&piece),
                    }
                    if pos >= wend && w.eof {
                        break;
                    }
                    continue;
                }
                if w.generation == generation && w.eof && pos >= wend {
                    break;
                }
            }
            // Not in the window: the next prefetched one, or a fresh fetch.
            let mut found = None;
            while let Some(p) = st.prefetch.pop_front() {
                match p.await {
                    Ok(Ok(w))
                        if w.generation == generation
                            && w.off <= pos
                            && pos < w.off + w.data.len().max(1) as u64 =>
                    {
                        found = Some(w);
                        break;
                    }
                    // Before the reader: skip it. Anything else: the sequence is broken.
                    Ok(Ok(w)) if w.generation == generation && w.off < pos => {}
                    _ => {
                        Self::cancel_prefetch(&mut st);
                        break;
                    }
                }
            }
            let w = match found {
                Some(w) => w,
                None => {
                    Self::cancel_prefetch(&mut st);
                    self.fetch(&f, pos, ra.max((end - pos) as usize)).await?
                }
            };
            let empty = w.data.is_empty();
            st.window = Some(w);
            if empty {
                break;
            }
        }
        // A sequential reader: the next windows are fetched while it reads this one.
        let sequential = off == st.last_end;
        st.last_end = pos;
        if let Some(w) = &st.window {
            let wend = w.off + w.data.len() as u64;
            if sequential && !w.eof {
                if st.prefetch.is_empty() {
                    st.ahead = wend;
                }
                // Not past the end as last seen (a file growing meanwhile is read on demand).
                let size = {
                    let t = self.table.lock().expect("inode table");
                    t.inodes.get(&f.ino).map_or(u64::MAX, |i| i.attr.size)
                };
                while st.prefetch.len() < self.cfg.read_ahead_windows.max(1) && st.ahead < size {
                    let at = st.ahead;
                    st.prefetch.push_back(tokio::spawn(self.fetch(&f, at, ra)));
                    st.ahead = at + ra as u64;
                }
            }
        }
        Ok(match (out, first) {
            (Some(b), _) => b.freeze(),
            (None, Some(p)) => p,
            (None, None) => Bytes::new(),
        })
    }

    pub async fn write(&self, fh: u64, off: u64, data: &[u8]) -> Result<u32, Error> {
        let f = self.file(fh)?;
        // Batches of two descriptors must not overtake each other: one writer at a time.
        self.settle_others(f.ino, Some(&f)).await?;
        let mut st = f.st.lock().await;
        f.generation.fetch_add(1, Ordering::Relaxed);
        st.window = None;
        Self::cancel_prefetch(&mut st);
        self.expire_attr(f.ino);
        let wb = self.cfg.write_behind.max(4096);
        let appended = match &mut st.dirty {
            Some((o, buf)) if *o + buf.len() as u64 == off && buf.len() + data.len() <= wb => {
                buf.extend_from_slice(data);
                true
            }
            _ => false,
        };
        if !appended {
            self.push(&f, &mut st).await?;
            st.dirty = Some((off, BytesMut::from(data)));
        }
        if st.dirty.as_ref().is_some_and(|(_, b)| b.len() >= wb) {
            self.push(&f, &mut st).await?;
        }
        Ok(data.len() as u32)
    }

    pub(super) fn cancel_prefetch(st: &mut FileState) {
        for p in st.prefetch.drain(..) {
            p.abort();
        }
    }

    /// Send the gathered writes (after the batch still in flight has landed).
    async fn push(&self, f: &OpenFile, st: &mut FileState) -> Result<(), Error> {
        if let Some(prev) = st.inflight.take() {
            prev.await.map_err(|_| Error::Stopped)??;
        }
        let Some((off, buf)) = st.dirty.take() else {
            return Ok(());
        };
        let len = buf.len();
        let node = f.node;
        let call = self.remote.call(
            node,
            proto::Request {
                cred: f.cred.clone(),
                op: Op::Write {
                    fh: f.fh,
                    offset: off,
                },
            },
            buf.freeze(),
        );
        st.inflight = Some(tokio::spawn(async move {
            match call.await? {
                (Reply::Written(n), _) if n as usize == len => Ok(()),
                (Reply::Written(n), _) => Err(Error::Remote {
                    node,
                    errno: libc::EIO,
                    msg: format!("short write: {n} of {len} bytes"),
                }),
                (r, _) => Err(Error::Protocol {
                    node,
                    what: format!("{r:?} to a write"),
                }),
            }
        }));
        Ok(())
    }

    /// Everything written so far has reached the server (or the error that stopped it).
    pub(super) async fn drain(&self, f: &OpenFile, st: &mut FileState) -> Result<(), Error> {
        self.push(f, st).await?;
        if let Some(prev) = st.inflight.take() {
            prev.await.map_err(|_| Error::Stopped)??;
        }
        Ok(())
    }

    /// close(2) of one descriptor: written data reaches the server, errors are reported.
    pub async fn flush(&self, fh: u64) -> Result<(), Error> {
        let f = self.file(fh)?;
        let mut st = f.st.lock().await;
        let r = self.drain(&f, &mut st).await;
        self.expire_attr(f.ino);
        r
    }

    pub async fn fsync(&self, fh: u64, datasync: bool) -> Result<(), Error> {
        let f = self.file(fh)?;
        let mut st = f.st.lock().await;
        self.drain(&f, &mut st).await?;
        self.send(
            f.node,
            &f.cred,
            Op::Fsync { fh: f.fh, datasync },
            Bytes::new(),
        )
        .await
        .map(drop)
    }

    pub async fn release(&self, fh: u64) -> Result<(), Error> {
        let Some(f) = self.files.lock().expect("open files").remove(&fh) else {
            return Err(Error::BadFile(fh));
        };
        let mut st = f.st.lock().await;
        Self::cancel_prefetch(&mut st);
        let written = self.drain(&f, &mut st).await;
        let closed = self
            .send(f.node, &f.cred, Op::Release { fh: f.fh }, Bytes::new())
            .await
            .map(drop);
        written.and(closed)
    }
}
