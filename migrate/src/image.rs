//! The image format: a versioned, checksummed stream with no seeking.
//!
//! ```text
//! "OMNIMAGE" u32-le version
//! section*   = tag u32-le | len u64-le | payload[len] | crc32(tag|len|payload) u32-le
//!   PROCESS  (exactly one, first): every piece of process state except memory contents
//!   PAGES    (any number): u32 nruns, nruns × (addr u64, len u64), then the bytes of the runs
//!   END      (last): u64 total page bytes, u64 number of PAGES sections
//! ```
//! A stream without END is truncated; a section whose CRC does not match is corrupt.

use crate::error::ImageError;
use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 8] = b"OMNIMAGE";
pub const VERSION: u32 = 1;
pub(crate) const TAG_PROCESS: u32 = 1;
pub(crate) const TAG_PAGES: u32 = 2;
pub(crate) const TAG_END: u32 = 3;
const MAX_META: u64 = 64 << 20;
/// Largest PAGES section payload accepted by a reader.
pub(crate) const MAX_PAGES_SECTION: u64 = 64 << 20;
pub(crate) const PAGE: u64 = 4096;

/// Identity of a file, to refuse a thaw against a different file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmaKind {
    /// Private anonymous memory (incl. heap, stack); present pages shipped.
    Anon,
    /// Shared anonymous memory (owned by this process alone); contents shipped.
    SharedAnon,
    /// File mapping; private: only COW'd pages shipped; shared: nothing shipped.
    File,
    Vvar,
    VvarVclock,
    Vdso,
    Vsyscall,
}

#[derive(Debug, Clone)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    pub shared: bool,
    pub growsdown: bool,
    pub offset: u64,
    pub kind: VmaKind,
    /// As /proc/PID/maps shows it ("[heap]", "/usr/lib/...").
    pub name: String,
    pub file: Option<FileId>,
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// Regular file, directory or harmless character device, reopened by path.
    Path {
        path: String,
        flags: u32,
        pos: u64,
        is_dir: bool,
    },
    /// Shares its open file description with an earlier fd (kcmp).
    SharedWith { fd: i32, cloexec: bool },
    /// A terminal or pipe on 0..2: attached to thaw's stdio (or a file named at thaw).
    Stdio { what: String, cloexec: bool },
}

#[derive(Debug, Clone)]
pub struct Fd {
    pub fd: i32,
    pub kind: FdKind,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SigAction {
    pub sig: u32,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone)]
pub struct PendingSignal {
    /// true: process-wide (shared) queue.
    pub shared: bool,
    pub info: Vec<u8>,
}

/// mm fields restored with PR_SET_MM_MAP.
#[derive(Debug, Clone, Copy, Default)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
}

impl MmFields {
    /// The fields in `prctl(PR_SET_MM_MAP)` order, which is also their order in an image.
    pub fn words(&self) -> [u64; 11] {
        [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
        ]
    }
}

#[derive(Debug, Clone, Default)]
pub struct Creds {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
}

/// Everything about a frozen process except memory contents (the PROCESS section).
#[derive(Debug, Clone, Default)]
pub struct ProcessImage {
    pub pid: i32,
    pub boot_id: String,
    pub comm: String,
    pub cmdline: Vec<u8>,
    pub exe: String,
    pub exe_id: FileId,
    /// `user_regs_struct` as 27 u64, syscall restart already applied.
    pub regs: Vec<u64>,
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    /// (pointer, length, signature)
    pub rseq: Option<(u64, u32, u32)>,
    pub mm: MmFields,
    pub auxv: Vec<u8>,
    pub personality: u32,
    pub rlimits: Vec<(u32, u64, u64)>,
    pub umask: u32,
    pub cwd: String,
    pub creds: Creds,
    pub no_new_privs: bool,
    pub session_leader: bool,
    pub pgrp_leader: bool,
    /// It was stopped by job control (SIGSTOP/SIGTSTP) when frozen; thaw stops it again.
    pub stopped: bool,
    pub sigactions: Vec<SigAction>,
    /// (ss_sp, ss_flags, ss_size)
    pub altstack: (u64, u32, u64),
    pub pending: Vec<PendingSignal>,
    pub clear_child_tid: u64,
    pub robust_list: (u64, u64),
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF as `struct itimerval` (4 words each).
    pub itimers: [[u64; 4]; 3],
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
}

// ---------------------------------------------------------------- encoding

#[derive(Default)]
pub(crate) struct Enc(pub Vec<u8>);
impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v)
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes())
    }
    fn i64(&mut self, v: i64) {
        self.u64(v as u64)
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v)
    }
    fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes())
    }
    fn fid(&mut self, f: &FileId) {
        self.u64(f.dev);
        self.u64(f.ino);
        self.u64(f.size);
        self.i64(f.mtime_sec);
        self.i64(f.mtime_nsec);
    }
}

pub(crate) struct Dec<'a> {
    b: &'a [u8],
    p: usize,
}
fn corrupt(what: &str) -> ImageError {
    ImageError::Corrupt(format!("bad {what} in process section"))
}
impl<'a> Dec<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Dec { b, p: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        if self.b.len() - self.p < n {
            return Err(ImageError::Corrupt(
                "process section is shorter than its contents".into(),
            ));
        }
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ImageError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ImageError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, ImageError> {
        Ok(self.u64()? as i64)
    }
    fn len(&mut self, max: usize) -> Result<usize, ImageError> {
        let n = self.u64()?;
        if n > max as u64 || n > (self.b.len() - self.p) as u64 {
            return Err(corrupt("length"));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ImageError> {
        let n = self.len(usize::MAX)?;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, ImageError> {
        String::from_utf8(self.bytes()?).map_err(|_| corrupt("string"))
    }
    fn fid(&mut self) -> Result<FileId, ImageError> {
        Ok(FileId {
            dev: self.u64()?,
            ino: self.u64()?,
            size: self.u64()?,
            mtime_sec: self.i64()?,
            mtime_nsec: self.i64()?,
        })
    }
    fn done(&self) -> bool {
        self.p == self.b.len()
    }
}

impl ProcessImage {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.pid as u64);
        e.str(&self.boot_id);
        e.str(&self.comm);
        e.bytes(&self.cmdline);
        e.str(&self.exe);
        e.fid(&self.exe_id);
        e.u64(self.regs.len() as u64);
        for r in &self.regs {
            e.u64(*r)
        }
        e.bytes(&self.xstate);
        e.u64(self.sigmask);
        match self.rseq {
            Some((p, l, s)) => {
                e.u8(1);
                e.u64(p);
                e.u32(l);
                e.u32(s)
            }
            None => e.u8(0),
        }
        for v in self.mm.words() {
            e.u64(v)
        }
        e.bytes(&self.auxv);
        e.u32(self.personality);
        e.u64(self.rlimits.len() as u64);
        for (r, c, m) in &self.rlimits {
            e.u32(*r);
            e.u64(*c);
            e.u64(*m)
        }
        e.u32(self.umask);
        e.str(&self.cwd);
        for v in self.creds.uid.iter().chain(self.creds.gid.iter()) {
            e.u32(*v)
        }
        e.u64(self.creds.groups.len() as u64);
        for g in &self.creds.groups {
            e.u32(*g)
        }
        e.u8(self.no_new_privs as u8);
        e.u8(self.session_leader as u8);
        e.u8(self.pgrp_leader as u8);
        e.u8(self.stopped as u8);
        e.u64(self.sigactions.len() as u64);
        for a in &self.sigactions {
            e.u32(a.sig);
            e.u64(a.handler);
            e.u64(a.flags);
            e.u64(a.restorer);
            e.u64(a.mask)
        }
        e.u64(self.altstack.0);
        e.u32(self.altstack.1);
        e.u64(self.altstack.2);
        e.u64(self.pending.len() as u64);
        for p in &self.pending {
            e.u8(p.shared as u8);
            e.bytes(&p.info)
        }
        e.u64(self.clear_child_tid);
        e.u64(self.robust_list.0);
        e.u64(self.robust_list.1);
        for t in &self.itimers {
            for w in t {
                e.u64(*w)
            }
        }
        e.u64(self.vmas.len() as u64);
        for v in &self.vmas {
            e.u64(v.start);
            e.u64(v.end);
            e.u32(v.prot);
            e.u8(v.shared as u8);
            e.u8(v.growsdown as u8);
            e.u64(v.offset);
            e.u8(match v.kind {
                VmaKind::Anon => 0,
                VmaKind::SharedAnon => 1,
                VmaKind::File => 2,
                VmaKind::Vvar => 3,
                VmaKind::VvarVclock => 4,
                VmaKind::Vdso => 5,
                VmaKind::Vsyscall => 6,
            });
            e.str(&v.name);
            match &v.file {
                Some(f) => {
                    e.u8(1);
                    e.fid(f)
                }
                None => e.u8(0),
            }
        }
        e.u64(self.fds.len() as u64);
        for f in &self.fds {
            e.u32(f.fd as u32);
            match &f.kind {
                FdKind::Path {
                    path,
                    flags,
                    pos,
                    is_dir,
                } => {
                    e.u8(0);
                    e.str(path);
                    e.u32(*flags);
                    e.u64(*pos);
                    e.u8(*is_dir as u8)
                }
                FdKind::SharedWith { fd, cloexec } => {
                    e.u8(1);
                    e.u32(*fd as u32);
                    e.u8(*cloexec as u8)
                }
                FdKind::Stdio { what, cloexec } => {
                    e.u8(2);
                    e.str(what);
                    e.u8(*cloexec as u8)
                }
            }
        }
        e.0
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, ImageError> {
        let mut d = Dec::new(b);
        let mut p = ProcessImage {
            pid: d.u64()? as i32,
            boot_id: d.str()?,
            comm: d.str()?,
            cmdline: d.bytes()?,
            exe: d.str()?,
            exe_id: d.fid()?,
            ..Default::default()
        };
        let n = d.len(64)?;
        if n != 27 {
            return Err(corrupt("register count"));
        }
        for _ in 0..n {
            p.regs.push(d.u64()?)
        }
        p.xstate = d.bytes()?;
        p.sigmask = d.u64()?;
        p.rseq = match d.u8()? {
            0 => None,
            1 => Some((d.u64()?, d.u32()?, d.u32()?)),
            _ => return Err(corrupt("rseq")),
        };
        let mut m = [0u64; 11];
        for v in m.iter_mut() {
            *v = d.u64()?
        }
        p.mm = MmFields {
            start_code: m[0],
            end_code: m[1],
            start_data: m[2],
            end_data: m[3],
            start_brk: m[4],
            brk: m[5],
            start_stack: m[6],
            arg_start: m[7],
            arg_end: m[8],
            env_start: m[9],
            env_end: m[10],
        };
        p.auxv = d.bytes()?;
        p.personality = d.u32()?;
        let n = d.len(64)?;
        for _ in 0..n {
            p.rlimits.push((d.u32()?, d.u64()?, d.u64()?))
        }
        p.umask = d.u32()?;
        p.cwd = d.str()?;
        for i in 0..4 {
            p.creds.uid[i] = d.u32()?
        }
        for i in 0..4 {
            p.creds.gid[i] = d.u32()?
        }
        let n = d.len(65536)?;
        for _ in 0..n {
            p.creds.groups.push(d.u32()?)
        }
        p.no_new_privs = d.u8()? != 0;
        p.session_leader = d.u8()? != 0;
        p.pgrp_leader = d.u8()? != 0;
        p.stopped = d.u8()? != 0;
        let n = d.len(64)?;
        for _ in 0..n {
            let a = SigAction {
                sig: d.u32()?,
                handler: d.u64()?,
                flags: d.u64()?,
                restorer: d.u64()?,
                mask: d.u64()?,
            };
            if a.sig == 0 || a.sig > 64 {
                return Err(corrupt("signal number"));
            }
            p.sigactions.push(a)
        }
        p.altstack = (d.u64()?, d.u32()?, d.u64()?);
        let n = d.len(100_000)?;
        for _ in 0..n {
            let shared = d.u8()? != 0;
            let info = d.bytes()?;
            if info.len() != 128 {
                return Err(corrupt("siginfo"));
            }
            p.pending.push(PendingSignal { shared, info })
        }
        p.clear_child_tid = d.u64()?;
        p.robust_list = (d.u64()?, d.u64()?);
        for t in p.itimers.iter_mut() {
            for w in t.iter_mut() {
                *w = d.u64()?
            }
        }
        let n = d.len(1 << 20)?;
        for _ in 0..n {
            let start = d.u64()?;
            let end = d.u64()?;
            let prot = d.u32()?;
            let shared = d.u8()? != 0;
            let growsdown = d.u8()? != 0;
            let offset = d.u64()?;
            let kind = match d.u8()? {
                0 => VmaKind::Anon,
                1 => VmaKind::SharedAnon,
                2 => VmaKind::File,
                3 => VmaKind::Vvar,
                4 => VmaKind::VvarVclock,
                5 => VmaKind::Vdso,
                6 => VmaKind::Vsyscall,
                _ => return Err(corrupt("mapping kind")),
            };
            let name = d.str()?;
            let file = match d.u8()? {
                0 => None,
                1 => Some(d.fid()?),
                _ => return Err(corrupt("mapping file")),
            };
            if start >= end || start % PAGE != 0 || end % PAGE != 0 {
                return Err(corrupt("mapping bounds"));
            }
            if let Some(last) = p.vmas.last() {
                if start < last.end {
                    return Err(corrupt("mapping order"));
                }
            }
            p.vmas.push(Vma {
                start,
                end,
                prot,
                shared,
                growsdown,
                offset,
                kind,
                name,
                file,
            })
        }
        let n = d.len(1 << 20)?;
        for _ in 0..n {
            let fd = d.u32()? as i32;
            let kind = match d.u8()? {
                0 => FdKind::Path {
                    path: d.str()?,
                    flags: d.u32()?,
                    pos: d.u64()?,
                    is_dir: d.u8()? != 0,
                },
                1 => FdKind::SharedWith {
                    fd: d.u32()? as i32,
                    cloexec: d.u8()? != 0,
                },
                2 => FdKind::Stdio {
                    what: d.str()?,
                    cloexec: d.u8()? != 0,
                },
                _ => return Err(corrupt("fd kind")),
            };
            if fd < 0 {
                return Err(corrupt("fd number"));
            }
            p.fds.push(Fd { fd, kind })
        }
        if !d.done() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(p)
    }
}

// ---------------------------------------------------------------- sections

/// Writes the stream: header, then sections.
pub(crate) struct SectionWriter<W: Write> {
    pub w: W,
    pub bytes: u64,
}

impl<W: Write> SectionWriter<W> {
    pub fn new(mut w: W) -> io::Result<Self> {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        Ok(SectionWriter { w, bytes: 12 })
    }
    /// One section whose payload is the concatenation of `parts`.
    pub fn section(&mut self, tag: u32, parts: &[&[u8]]) -> io::Result<()> {
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let mut head = [0u8; 12];
        head[..4].copy_from_slice(&tag.to_le_bytes());
        head[4..].copy_from_slice(&len.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        self.w.write_all(&head)?;
        for p in parts {
            h.update(p);
            self.w.write_all(p)?;
        }
        self.w.write_all(&h.finalize().to_le_bytes())?;
        self.bytes += len + 16;
        Ok(())
    }
}

/// Reads the stream section by section, checking lengths and checksums.
pub(crate) struct SectionReader<R: Read> {
    r: R,
    pub bytes: u64,
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), crate::Error> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(ImageError::Truncated(what).into())
        }
        Err(e) => Err(crate::Error::Stream(e)),
    }
}

pub(crate) fn section_name(tag: u32) -> &'static str {
    match tag {
        TAG_PROCESS => "process",
        TAG_PAGES => "pages",
        TAG_END => "end",
        _ => "unknown",
    }
}

impl<R: Read> SectionReader<R> {
    pub fn new(mut r: R) -> Result<Self, crate::Error> {
        let mut head = [0u8; 12];
        read_full(&mut r, &mut head, "the header")?;
        if &head[..8] != MAGIC {
            return Err(ImageError::BadMagic.into());
        }
        let v = u32::from_le_bytes(head[8..].try_into().unwrap());
        if v != VERSION {
            return Err(ImageError::WrongVersion {
                found: v,
                supported: VERSION,
            }
            .into());
        }
        Ok(SectionReader { r, bytes: 12 })
    }

    /// Reads the next section into `buf` (resized to the payload length) and returns its tag.
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<u32, crate::Error> {
        let mut head = [0u8; 12];
        read_full(&mut self.r, &mut head, "a section header")?;
        let tag = u32::from_le_bytes(head[..4].try_into().unwrap());
        let len = u64::from_le_bytes(head[4..].try_into().unwrap());
        let max = match tag {
            TAG_PROCESS => MAX_META,
            TAG_PAGES => MAX_PAGES_SECTION + 16 * 1024 + 4,
            TAG_END => 16,
            _ => return Err(ImageError::Corrupt(format!("unknown section tag {tag}")).into()),
        };
        if len > max {
            return Err(ImageError::Corrupt(format!(
                "{} section claims {len} bytes",
                section_name(tag)
            ))
            .into());
        }
        let name = section_name(tag);
        if buf.len() < len as usize {
            buf.resize(len as usize, 0);
        } else {
            buf.truncate(len as usize);
        }
        read_full(&mut self.r, buf, name)?;
        let mut crc = [0u8; 4];
        read_full(&mut self.r, &mut crc, name)?;
        let mut h = crc32fast::Hasher::new();
        h.update(&head);
        h.update(buf);
        if h.finalize() != u32::from_le_bytes(crc) {
            return Err(ImageError::Checksum(name).into());
        }
        self.bytes += len + 16;
        Ok(tag)
    }
}

/// (address, length) runs of a PAGES section.
pub(crate) type Runs = Vec<(u64, u64)>;

/// Reads the PAGES sections up to and including the END section, handing each section's
/// runs and the data behind them to `each`, and checks that END counts what was read.
/// Returns the bytes of page data read.
pub(crate) fn read_pages<R: Read>(
    sr: &mut SectionReader<R>,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&Runs, &[u8]) -> Result<(), crate::Error>,
) -> Result<u64, crate::Error> {
    let (mut total, mut sections) = (0u64, 0u64);
    loop {
        match sr.next(buf)? {
            TAG_PAGES => {
                let (runs, data) = parse_pages(buf)?;
                each(&runs, data)?;
                total += data.len() as u64;
                sections += 1;
            }
            TAG_END => {
                let (t, s) = decode_end(buf)?;
                if t != total || s != sections {
                    return Err(ImageError::Corrupt(
                        "end section does not match the page data".into(),
                    )
                    .into());
                }
                return Ok(total);
            }
            _ => {
                return Err(
                    ImageError::Corrupt("unexpected section among the page data".into()).into(),
                );
            }
        }
    }
}

/// Parses a PAGES payload into its runs and the data behind them.
pub(crate) fn parse_pages(buf: &[u8]) -> Result<(Runs, &[u8]), ImageError> {
    let bad = |w: &str| ImageError::Corrupt(format!("pages section: {w}"));
    if buf.len() < 4 {
        return Err(bad("too short"));
    }
    let n = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
    if n > 1024 || buf.len() < 4 + n * 16 {
        return Err(bad("bad run count"));
    }
    let mut runs = Vec::with_capacity(n);
    let mut total = 0u64;
    for i in 0..n {
        let o = 4 + i * 16;
        let a = u64::from_le_bytes(buf[o..o + 8].try_into().unwrap());
        let l = u64::from_le_bytes(buf[o + 8..o + 16].try_into().unwrap());
        if a % PAGE != 0 || l % PAGE != 0 || l == 0 || a.checked_add(l).is_none() {
            return Err(bad("unaligned run"));
        }
        total += l;
        runs.push((a, l));
    }
    let data = &buf[4 + n * 16..];
    if data.len() as u64 != total {
        return Err(bad("data length does not match its runs"));
    }
    Ok((runs, data))
}

pub(crate) fn decode_end(buf: &[u8]) -> Result<(u64, u64), ImageError> {
    if buf.len() != 16 {
        return Err(ImageError::Corrupt("bad end section".into()));
    }
    Ok((
        u64::from_le_bytes(buf[..8].try_into().unwrap()),
        u64::from_le_bytes(buf[8..].try_into().unwrap()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_section_round_trips() {
        let p = ProcessImage {
            pid: 4711,
            comm: "cat".into(),
            cmdline: b"cat\0-n\0".to_vec(),
            exe: "/usr/bin/cat".into(),
            regs: (0..27).collect(),
            xstate: vec![7; 832],
            rseq: Some((0x7f00_0000_0920, 32, 0x5305_3053)),
            sigactions: vec![SigAction {
                sig: 10,
                handler: 0x401000,
                flags: 0x0400_0000,
                restorer: 0x402000,
                mask: 1,
            }],
            pending: vec![PendingSignal {
                shared: true,
                info: vec![1; 128],
            }],
            vmas: vec![Vma {
                start: 0x1000,
                end: 0x3000,
                prot: 3,
                shared: false,
                growsdown: true,
                offset: 0,
                kind: VmaKind::Anon,
                name: "[stack]".into(),
                file: None,
            }],
            fds: vec![
                Fd {
                    fd: 1,
                    kind: FdKind::Path {
                        path: "/tmp/a b".into(),
                        flags: 0o2001,
                        pos: 99,
                        is_dir: false,
                    },
                },
                Fd {
                    fd: 2,
                    kind: FdKind::SharedWith {
                        fd: 1,
                        cloexec: true,
                    },
                },
            ],
            itimers: [[0, 20000, 0, 5], [0; 4], [0; 4]],
            stopped: true,
            ..Default::default()
        };
        let q = ProcessImage::decode(&p.encode()).unwrap();
        assert_eq!(format!("{p:?}"), format!("{q:?}"));
        // every truncation of the section is an error, never a panic
        let b = p.encode();
        for n in 0..b.len() {
            assert!(ProcessImage::decode(&b[..n]).is_err());
        }
    }

    #[test]
    fn stream_round_trips_and_detects_damage() {
        let mut out = Vec::new();
        let mut w = SectionWriter::new(&mut out).unwrap();
        w.section(TAG_PROCESS, &[b"abc"]).unwrap();
        w.section(TAG_END, &[&[0u8; 16]]).unwrap();
        let mut r = SectionReader::new(&out[..]).unwrap();
        let mut buf = Vec::new();
        assert_eq!(r.next(&mut buf).unwrap(), TAG_PROCESS);
        assert_eq!(buf, b"abc");
        assert_eq!(r.next(&mut buf).unwrap(), TAG_END);
        out[25] ^= 1;
        let mut r = SectionReader::new(&out[..]).unwrap();
        assert!(matches!(
            r.next(&mut buf),
            Err(crate::Error::Image(ImageError::Checksum(_)))
        ));
    }
}
