//! The tree image: several processes (a process and its descendants) in one stream.
//!
//! ```text
//! "OMNTREE1" u32-le version (1)
//! u64-le len | tree section[len] | crc32(len|payload) u32-le
//!   tree section = records: tag u32-le | len u64-le | payload[len]; a tag with bit 31 set is
//!   optional (skipped when unknown), any other unknown tag is refused
//! then one ordinary process image (see [`super`], "OMNIMAGE" .. END) per live process, in
//! the order of [`TreeImage::procs`] (parents before their children), zombies excepted
//! ```
//! The per-process images are complete on their own; the tree section says how they fit
//! together: who is whose parent, process groups, zombies with their exit status, and which
//! fds of which processes are one open file description (pipes between them with the bytes
//! waiting in them, files with one shared offset).

use crate::error::ImageError;
use std::io::{self, Read, Write};

pub const TREE_MAGIC: &[u8; 8] = b"OMNTREE1";
pub const TREE_VERSION: u32 = 1;
const MAX_TREE: u64 = 256 << 20;
const REC_PROCS: u32 = 1;
const REC_SHARED: u32 = 2;
const OPTIONAL: u32 = 1 << 31;

/// One process of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeProc {
    pub pid: i32,
    /// Its parent (0 for the root of the tree).
    pub ppid: i32,
    /// Its process group (the root's, or a process of the tree).
    pub pgid: i32,
    /// Some(status as wait() reports it) for a zombie: no image follows for it.
    pub zombie: Option<i32>,
}

/// What several fds of the tree share (one open file description).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedKind {
    /// A pipe whose every end is held inside the tree, with its capacity and waiting bytes.
    Pipe { size: u32, data: Vec<u8> },
    /// A regular file, one offset for all (opened again by path).
    File { path: String, flags: u32, pos: u64 },
}

/// One end of a shared description: process, fd number, and for a pipe its side and the
/// file status flags of that side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEnd {
    pub pid: i32,
    pub fd: i32,
    pub write: bool,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    pub kind: SharedKind,
    pub ends: Vec<SharedEnd>,
}

/// The tree section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeImage {
    /// Parents before their children; the first is the root.
    pub procs: Vec<TreeProc>,
    pub shared: Vec<Shared>,
}

fn corrupt(what: &str) -> ImageError {
    ImageError::Corrupt(format!("bad {what} in tree section"))
}

struct D<'a> {
    b: &'a [u8],
    p: usize,
}
impl<'a> D<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        if self.b.len() - self.p < n {
            return Err(corrupt("length"));
        }
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, ImageError> {
        Ok(self.u32()? as i32)
    }
    fn bytes(&mut self) -> Result<&'a [u8], ImageError> {
        let n = self.u64()?;
        if n > (self.b.len() - self.p) as u64 {
            return Err(corrupt("length"));
        }
        self.take(n as usize)
    }
    fn done(&self) -> bool {
        self.p == self.b.len()
    }
}

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes())
}
fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes())
}
fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    put_u64(v, b.len() as u64);
    v.extend_from_slice(b)
}
fn record(v: &mut Vec<u8>, tag: u32, body: Vec<u8>) {
    put_u32(v, tag);
    put_bytes(v, &body);
}

impl TreeImage {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut p = Vec::new();
        put_u32(&mut p, self.procs.len() as u32);
        for t in &self.procs {
            put_u32(&mut p, t.pid as u32);
            put_u32(&mut p, t.ppid as u32);
            put_u32(&mut p, t.pgid as u32);
            match t.zombie {
                None => put_u32(&mut p, 0),
                Some(s) => {
                    put_u32(&mut p, 1);
                    put_u32(&mut p, s as u32);
                }
            }
        }
        record(&mut out, REC_PROCS, p);
        let mut s = Vec::new();
        put_u32(&mut s, self.shared.len() as u32);
        for sh in &self.shared {
            match &sh.kind {
                SharedKind::Pipe { size, data } => {
                    put_u32(&mut s, 1);
                    put_u32(&mut s, *size);
                    put_bytes(&mut s, data);
                }
                SharedKind::File { path, flags, pos } => {
                    put_u32(&mut s, 2);
                    put_bytes(&mut s, path.as_bytes());
                    put_u32(&mut s, *flags);
                    put_u64(&mut s, *pos);
                }
            }
            put_u32(&mut s, sh.ends.len() as u32);
            for e in &sh.ends {
                put_u32(&mut s, e.pid as u32);
                put_u32(&mut s, e.fd as u32);
                put_u32(&mut s, e.write as u32);
                put_u32(&mut s, e.flags);
            }
        }
        record(&mut out, REC_SHARED, s);
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Result<TreeImage, ImageError> {
        let mut d = D { b, p: 0 };
        let mut t = TreeImage::default();
        let mut seen = Vec::new();
        while !d.done() {
            let tag = d.u32()?;
            let body = d.bytes()?;
            if seen.contains(&tag) {
                return Err(corrupt(&format!("record {tag} (twice)")));
            }
            seen.push(tag);
            let mut r = D { b: body, p: 0 };
            match tag {
                REC_PROCS => {
                    let n = r.u32()?;
                    for _ in 0..n {
                        let pid = r.i32()?;
                        let ppid = r.i32()?;
                        let pgid = r.i32()?;
                        let zombie = match r.u32()? {
                            0 => None,
                            1 => Some(r.i32()?),
                            _ => return Err(corrupt("zombie flag")),
                        };
                        t.procs.push(TreeProc {
                            pid,
                            ppid,
                            pgid,
                            zombie,
                        });
                    }
                }
                REC_SHARED => {
                    let n = r.u32()?;
                    for _ in 0..n {
                        let kind = match r.u32()? {
                            1 => SharedKind::Pipe {
                                size: r.u32()?,
                                data: r.bytes()?.to_vec(),
                            },
                            2 => SharedKind::File {
                                path: String::from_utf8(r.bytes()?.to_vec())
                                    .map_err(|_| corrupt("path"))?,
                                flags: r.u32()?,
                                pos: r.u64()?,
                            },
                            _ => return Err(corrupt("shared kind")),
                        };
                        let m = r.u32()?;
                        let mut ends = Vec::new();
                        for _ in 0..m {
                            ends.push(SharedEnd {
                                pid: r.i32()?,
                                fd: r.i32()?,
                                write: match r.u32()? {
                                    0 => false,
                                    1 => true,
                                    _ => return Err(corrupt("pipe side")),
                                },
                                flags: r.u32()?,
                            });
                        }
                        t.shared.push(Shared { kind, ends });
                    }
                }
                t if t & OPTIONAL != 0 => continue,
                t => return Err(ImageError::UnknownRecord { tag: t }),
            }
            if !r.done() {
                return Err(corrupt(&format!("record {tag} (trailing bytes)")));
            }
        }
        if !seen.contains(&REC_PROCS) {
            return Err(corrupt("record list (no processes)"));
        }
        t.check()?;
        Ok(t)
    }

    /// The tree is a tree: a root first, every other process's parent earlier in the list,
    /// no PID twice, no zombie with children, every shared end in a live process.
    pub(crate) fn check(&self) -> Result<(), ImageError> {
        let Some(root) = self.procs.first() else {
            return Err(corrupt("process list (empty)"));
        };
        if root.zombie.is_some() || root.pid <= 1 {
            return Err(corrupt("root"));
        }
        for (i, p) in self.procs.iter().enumerate() {
            if p.pid <= 1 || self.procs[..i].iter().any(|q| q.pid == p.pid) {
                return Err(corrupt(&format!("PID {}", p.pid)));
            }
            if i > 0 {
                match self.procs[..i].iter().find(|q| q.pid == p.ppid) {
                    Some(q) if q.zombie.is_none() => {}
                    _ => return Err(corrupt(&format!("parent of {}", p.pid))),
                }
            }
        }
        for s in &self.shared {
            for e in &s.ends {
                if !self
                    .procs
                    .iter()
                    .any(|p| p.pid == e.pid && p.zombie.is_none())
                    || e.fd < 0
                {
                    return Err(corrupt(&format!("shared fd {} of {}", e.fd, e.pid)));
                }
            }
        }
        Ok(())
    }

    /// Live processes, in image order.
    pub fn live(&self) -> impl Iterator<Item = &TreeProc> {
        self.procs.iter().filter(|p| p.zombie.is_none())
    }

    /// Writes the header and the tree section.
    pub(crate) fn write_head<W: Write>(&self, w: &mut W) -> io::Result<u64> {
        let body = self.encode();
        let len = (body.len() as u64).to_le_bytes();
        let mut h = crc32fast::Hasher::new();
        h.update(&len);
        h.update(&body);
        w.write_all(TREE_MAGIC)?;
        w.write_all(&TREE_VERSION.to_le_bytes())?;
        w.write_all(&len)?;
        w.write_all(&body)?;
        w.write_all(&h.finalize().to_le_bytes())?;
        Ok(12 + 8 + body.len() as u64 + 4)
    }

    /// Reads and checks the header and the tree section (the process images follow in `r`).
    pub(crate) fn read_head<R: Read>(r: &mut R) -> Result<TreeImage, crate::Error> {
        let full = |r: &mut R, b: &mut [u8], what: &'static str| match r.read_exact(b) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(crate::Error::from(ImageError::Truncated(what)))
            }
            Err(e) => Err(crate::Error::Stream(e)),
        };
        let mut head = [0u8; 20];
        full(r, &mut head, "the tree header")?;
        if &head[..8] != TREE_MAGIC {
            return Err(ImageError::BadMagic.into());
        }
        let v = u32::from_le_bytes(head[8..12].try_into().unwrap());
        if v != TREE_VERSION {
            return Err(ImageError::WrongVersion {
                found: v,
                supported: TREE_VERSION,
            }
            .into());
        }
        let len = u64::from_le_bytes(head[12..20].try_into().unwrap());
        if len > MAX_TREE {
            return Err(ImageError::Corrupt(format!("tree section claims {len} bytes")).into());
        }
        let mut body = vec![0u8; len as usize];
        full(r, &mut body, "the tree section")?;
        let mut crc = [0u8; 4];
        full(r, &mut crc, "the tree section")?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head[12..20]);
        h.update(&body);
        if h.finalize() != u32::from_le_bytes(crc) {
            return Err(ImageError::Checksum("tree").into());
        }
        Ok(TreeImage::decode(&body)?)
    }
}

impl TreeImage {
    /// Reads the tree section at the start of a tree image (for tools and tests; the process
    /// images that follow are left in `r`).
    pub fn read_from<R: Read>(mut r: R) -> Result<TreeImage, crate::Error> {
        Self::read_head(&mut r)
    }
}

/// Whether `head` (the first 8 bytes of a stream) starts a tree image.
pub fn is_tree_image(head: &[u8]) -> bool {
    head.len() >= 8 && &head[..8] == TREE_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TreeImage {
        TreeImage {
            procs: vec![
                TreeProc {
                    pid: 100,
                    ppid: 0,
                    pgid: 100,
                    zombie: None,
                },
                TreeProc {
                    pid: 101,
                    ppid: 100,
                    pgid: 100,
                    zombie: None,
                },
                TreeProc {
                    pid: 102,
                    ppid: 100,
                    pgid: 100,
                    zombie: Some(3 << 8),
                },
            ],
            shared: vec![
                Shared {
                    kind: SharedKind::Pipe {
                        size: 65536,
                        data: b"waiting".to_vec(),
                    },
                    ends: vec![
                        SharedEnd {
                            pid: 100,
                            fd: 4,
                            write: true,
                            flags: 1,
                        },
                        SharedEnd {
                            pid: 101,
                            fd: 0,
                            write: false,
                            flags: 0,
                        },
                    ],
                },
                Shared {
                    kind: SharedKind::File {
                        path: "/tmp/x".into(),
                        flags: 0o2001,
                        pos: 77,
                    },
                    ends: vec![SharedEnd {
                        pid: 101,
                        fd: 5,
                        write: false,
                        flags: 0,
                    }],
                },
            ],
        }
    }

    #[test]
    fn a_tree_section_round_trips_through_its_stream_form() {
        let t = sample();
        let mut v = Vec::new();
        t.write_head(&mut v).unwrap();
        v.extend_from_slice(b"after");
        let mut r = &v[..];
        assert_eq!(TreeImage::read_head(&mut r).unwrap(), t);
        assert_eq!(r, b"after", "reads exactly the tree part");
    }

    #[test]
    fn unknown_required_records_are_refused_and_optional_ones_skipped() {
        let mut b = sample().encode();
        let mut opt = b.clone();
        record(&mut opt, OPTIONAL | 9, vec![1, 2, 3]);
        assert_eq!(TreeImage::decode(&opt).unwrap(), sample());
        record(&mut b, 9, vec![1, 2, 3]);
        assert!(matches!(
            TreeImage::decode(&b),
            Err(ImageError::UnknownRecord { tag: 9 })
        ));
    }

    #[test]
    fn a_flipped_byte_or_a_cut_is_refused() {
        let mut v = Vec::new();
        sample().write_head(&mut v).unwrap();
        for i in [0, 9, 15, 25, v.len() - 1] {
            let mut w = v.clone();
            w[i] ^= 0x40;
            assert!(TreeImage::read_head(&mut &w[..]).is_err(), "byte {i}");
        }
        assert!(TreeImage::read_head(&mut &v[..v.len() - 2]).is_err());
    }

    #[test]
    fn a_child_listed_before_its_parent_or_a_zombie_parent_is_refused() {
        let mut t = sample();
        t.procs.swap(0, 1);
        assert!(t.check().is_err());
        let mut t = sample();
        t.procs[1].ppid = 102;
        t.procs.swap(1, 2);
        assert!(t.check().is_err());
        let mut t = sample();
        t.shared[0].ends[0].pid = 102; // a zombie holds no fds
        assert!(t.check().is_err());
    }
}
