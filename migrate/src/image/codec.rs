//! Encoder and decoder of the PROCESS section.
//!
//! Version 2 (written now): a sequence of records `tag u32 | len u64 | payload`:
//! CORE (1, first; the fields version 1 began with), ATTRS (2; madvise/mlock flags of each
//! mapping, THP disable, child subreaper, oom_score_adj), THREADS (3; every thread but the
//! main one), TERMINAL (4; the terminal's settings and whether it was the controlling one).
//! A tag with bit 31 set is optional: a reader that does not know it skips it; an unknown tag
//! without it is refused ([`ImageError::UnknownRecord`]): state the reader could not restore.
//! Version 1 (still read): CORE, then ATTRS and THREADS appended without tags, each optional
//! at the end. One writer and one reader serve the main thread's and the other threads'
//! state.

use super::*;
use crate::error::ImageError;

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

/// Records of a version-2 process section. Bit 31 of a tag: optional (an older reader that
/// does not know the record skips it); any other unknown tag is refused.
pub(crate) const REC_CORE: u32 = 1;
pub(crate) const REC_ATTRS: u32 = 2;
pub(crate) const REC_THREADS: u32 = 3;
pub(crate) const REC_TERMINAL: u32 = 4;
/// POSIX timers (required: a reader that cannot make them again must not thaw).
pub(crate) const REC_POSIX_TIMERS: u32 = 5;
/// File locks (required: a reader that cannot take them again must not thaw).
pub(crate) const REC_FILE_LOCKS: u32 = 6;
pub(crate) const REC_OPTIONAL: u32 = 1 << 31;

/// State of one thread's CPU and its kernel-side registrations, written the same way for the
/// main thread and for every other thread (one writer, one reader).
struct Cpu<'a> {
    regs: &'a [u64],
    xstate: &'a [u8],
    sigmask: u64,
    rseq: Option<(u64, u32, u32)>,
}

impl Enc {
    fn record(&mut self, tag: u32, f: impl FnOnce(&mut Enc)) {
        let mut inner = Enc::default();
        f(&mut inner);
        self.u32(tag);
        self.bytes(&inner.0);
    }
    fn cpu(&mut self, c: Cpu<'_>) {
        self.u64(c.regs.len() as u64);
        for r in c.regs {
            self.u64(*r)
        }
        self.bytes(c.xstate);
        self.u64(c.sigmask);
        match c.rseq {
            Some((p, l, s)) => {
                self.u8(1);
                self.u64(p);
                self.u32(l);
                self.u32(s)
            }
            None => self.u8(0),
        }
    }
    fn altstack(&mut self, a: (u64, u32, u64)) {
        self.u64(a.0);
        self.u32(a.1);
        self.u64(a.2);
    }
    fn pair(&mut self, p: (u64, u64)) {
        self.u64(p.0);
        self.u64(p.1);
    }
}

impl Dec<'_> {
    /// Registers (exactly 27), xstate, signal mask, rseq.
    #[allow(clippy::type_complexity)]
    fn cpu(
        &mut self,
        who: &str,
    ) -> Result<(Vec<u64>, Vec<u8>, u64, Option<(u64, u32, u32)>), ImageError> {
        if self.len(64)? != 27 {
            return Err(corrupt(&format!("{who} register count")));
        }
        let mut regs = Vec::with_capacity(27);
        for _ in 0..27 {
            regs.push(self.u64()?)
        }
        let xstate = self.bytes()?;
        let sigmask = self.u64()?;
        let rseq = match self.u8()? {
            0 => None,
            1 => Some((self.u64()?, self.u32()?, self.u32()?)),
            _ => return Err(corrupt(&format!("{who} rseq"))),
        };
        Ok((regs, xstate, sigmask, rseq))
    }
    fn altstack(&mut self) -> Result<(u64, u32, u64), ImageError> {
        Ok((self.u64()?, self.u32()?, self.u64()?))
    }
    fn pair(&mut self) -> Result<(u64, u64), ImageError> {
        Ok((self.u64()?, self.u64()?))
    }
    fn flag(&mut self, what: &str) -> Result<bool, ImageError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(corrupt(what)),
        }
    }
    fn siginfo(&mut self, who: &str) -> Result<Vec<u8>, ImageError> {
        let info = self.bytes()?;
        if info.len() != 128 {
            return Err(corrupt(&format!("{who} siginfo")));
        }
        Ok(info)
    }
}

fn vma_kind_tag(k: VmaKind) -> u8 {
    match k {
        VmaKind::Anon => 0,
        VmaKind::SharedAnon => 1,
        VmaKind::File => 2,
        VmaKind::Vvar => 3,
        VmaKind::VvarVclock => 4,
        VmaKind::Vdso => 5,
        VmaKind::Vsyscall => 6,
    }
}

fn vma_kind(t: u8) -> Result<VmaKind, ImageError> {
    Ok(match t {
        0 => VmaKind::Anon,
        1 => VmaKind::SharedAnon,
        2 => VmaKind::File,
        3 => VmaKind::Vvar,
        4 => VmaKind::VvarVclock,
        5 => VmaKind::Vdso,
        6 => VmaKind::Vsyscall,
        _ => return Err(corrupt("mapping kind")),
    })
}

impl ProcessImage {
    /// The process section in the current format (version 2): tagged records.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.record(REC_CORE, |e| self.enc_core(e, true));
        e.record(REC_ATTRS, |e| self.enc_attrs(e));
        if !self.threads.is_empty() {
            e.record(REC_THREADS, |e| self.enc_threads(e));
        }
        if let Some(t) = &self.terminal {
            e.record(REC_TERMINAL, |e| {
                e.bytes(&t.termios);
                e.u8(t.ctty as u8);
                e.u32(t.fd as u32);
            });
        }
        if !self.posix_timers.is_empty() {
            e.record(REC_POSIX_TIMERS, |e| {
                enc_posix_timers(e, &self.posix_timers)
            });
        }
        if !self.file_locks.is_empty() {
            e.record(REC_FILE_LOCKS, |e| enc_file_locks(e, &self.file_locks));
        }
        e.0
    }

    /// The process section as version 1 wrote it (kept so that tests can make version-1
    /// images of real processes and prove they still thaw). Refuses state version 1 cannot
    /// hold (a terminal's settings, terminals above fd 2).
    pub(crate) fn encode_v1(&self) -> Result<Vec<u8>, ImageError> {
        if !self.posix_timers.is_empty() || !self.file_locks.is_empty() {
            return Err(ImageError::Corrupt(
                "POSIX timers and file locks cannot be written in image format version 1".into(),
            ));
        }
        if self.terminal.is_some()
            || self
                .fds
                .iter()
                .any(|f| matches!(f.kind, FdKind::Terminal { .. }))
        {
            return Err(ImageError::Corrupt(
                "a terminal's state cannot be written in image format version 1".into(),
            ));
        }
        let mut e = Enc::default();
        self.enc_core(&mut e, false);
        self.enc_attrs(&mut e);
        if !self.threads.is_empty() {
            self.enc_threads(&mut e);
        }
        Ok(e.0)
    }

    /// Everything the first version of the section held (the v2 CORE record: the same
    /// fields; `v2` allows fd kinds version 1 did not have).
    fn enc_core(&self, e: &mut Enc, v2: bool) {
        e.u64(self.pid as u64);
        e.str(&self.boot_id);
        e.str(&self.comm);
        e.bytes(&self.cmdline);
        e.str(&self.exe);
        e.fid(&self.exe_id);
        e.cpu(Cpu {
            regs: &self.regs,
            xstate: &self.xstate,
            sigmask: self.sigmask,
            rseq: self.rseq,
        });
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
        e.altstack(self.altstack);
        e.u64(self.pending.len() as u64);
        for p in &self.pending {
            e.u8(p.shared as u8);
            e.bytes(&p.info)
        }
        e.u64(self.clear_child_tid);
        e.pair(self.robust_list);
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
            e.u8(vma_kind_tag(v.kind));
            e.str(&v.name);
            match &v.file {
                Some(f) => {
                    e.u8(1);
                    e.fid(f)
                }
                None => e.u8(0),
            }
        }
        let fds: Vec<&Fd> = self
            .fds
            .iter()
            .filter(|f| v2 || !matches!(f.kind, FdKind::Terminal { .. }))
            .collect();
        e.u64(fds.len() as u64);
        for f in fds {
            enc_fd(e, f)
        }
    }

    /// Attributes added to the first version: per-mapping madvise/mlock flags, THP disable,
    /// child subreaper, oom_score_adj.
    fn enc_attrs(&self, e: &mut Enc) {
        for v in &self.vmas {
            e.u32(v.flags)
        }
        e.u64(self.thp_disable);
        e.u8(self.child_subreaper as u8);
        e.u32(self.oom_score_adj as u32);
    }

    fn enc_threads(&self, e: &mut Enc) {
        e.u64(self.threads.len() as u64);
        for t in &self.threads {
            e.u32(t.tid as u32);
            e.str(&t.comm);
            e.cpu(Cpu {
                regs: &t.regs,
                xstate: &t.xstate,
                sigmask: t.sigmask,
                rseq: t.rseq,
            });
            e.altstack(t.altstack);
            e.u64(t.clear_child_tid);
            e.pair(t.robust_list);
            e.u64(t.pending.len() as u64);
            for p in &t.pending {
                e.bytes(p)
            }
        }
    }

    /// Decodes a process section of the current version.
    #[cfg(test)]
    pub(crate) fn decode(b: &[u8]) -> Result<Self, ImageError> {
        Self::decode_version(b, VERSION)
    }

    /// Decodes a process section of image format `version` (1 or 2).
    pub(crate) fn decode_version(b: &[u8], version: u32) -> Result<Self, ImageError> {
        let mut d = Dec::new(b);
        let mut p = ProcessImage::default();
        if version == 1 {
            // the core, then what was appended to it over time, each part optional at the end
            p.dec_core(&mut d, false)?;
            if !d.done() {
                p.dec_attrs(&mut d)?;
            }
            if !d.done() {
                p.dec_threads(&mut d)?;
            }
            if !d.done() {
                return Err(corrupt("trailing bytes"));
            }
            return Ok(p);
        }
        let mut seen: Vec<u32> = Vec::new();
        while !d.done() {
            let tag = d.u32()?;
            let n = d.len(usize::MAX)?;
            let body = d.take(n)?;
            if seen.contains(&tag) {
                return Err(corrupt(&format!("record {tag} (twice)")));
            }
            seen.push(tag);
            if tag != REC_CORE && seen.len() == 1 {
                return Err(corrupt("first record (not the core)"));
            }
            let mut r = Dec::new(body);
            match tag {
                REC_CORE => p.dec_core(&mut r, true)?,
                REC_ATTRS => p.dec_attrs(&mut r)?,
                REC_THREADS => p.dec_threads(&mut r)?,
                REC_TERMINAL => {
                    let termios = r.bytes()?;
                    if termios.is_empty() || termios.len() > 256 {
                        return Err(corrupt("terminal settings"));
                    }
                    let ctty = r.flag("controlling terminal")?;
                    let fd = r.u32()? as i32;
                    if !(0..=2).contains(&fd) {
                        return Err(corrupt("terminal fd"));
                    }
                    p.terminal = Some(TerminalImage { termios, ctty, fd });
                }
                REC_POSIX_TIMERS => p.posix_timers = dec_posix_timers(&mut r)?,
                REC_FILE_LOCKS => p.file_locks = dec_file_locks(&mut r)?,
                t if t & REC_OPTIONAL != 0 => continue, // optional and unknown: skipped
                t => return Err(ImageError::UnknownRecord { tag: t }),
            }
            if !r.done() {
                return Err(corrupt(&format!("record {tag} (trailing bytes)")));
            }
        }
        // a version-2 writer always writes both
        if !seen.contains(&REC_CORE) || !seen.contains(&REC_ATTRS) {
            return Err(corrupt("process section (no core or attributes record)"));
        }
        // a terminal fd above 2 names a stdio fd that holds a terminal
        for f in &p.fds {
            if let FdKind::Terminal { like, .. } = f.kind {
                let ok = p.terminal.as_ref().is_some_and(|t| t.fd == like)
                    && p.fds
                        .iter()
                        .any(|g| g.fd == like && matches!(g.kind, FdKind::Stdio { .. }));
                if !ok {
                    return Err(corrupt(
                        "terminal fd (no terminal at the stdio fd it names)",
                    ));
                }
            }
        }
        Ok(p)
    }

    fn dec_core(&mut self, d: &mut Dec<'_>, v2: bool) -> Result<(), ImageError> {
        let p = self;
        p.pid = d.u64()? as i32;
        p.boot_id = d.str()?;
        p.comm = d.str()?;
        p.cmdline = d.bytes()?;
        p.exe = d.str()?;
        p.exe_id = d.fid()?;
        (p.regs, p.xstate, p.sigmask, p.rseq) = d.cpu("main thread")?;
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
        p.altstack = d.altstack()?;
        let n = d.len(100_000)?;
        for _ in 0..n {
            let shared = d.u8()? != 0;
            let info = d.siginfo("pending")?;
            p.pending.push(PendingSignal { shared, info })
        }
        p.clear_child_tid = d.u64()?;
        p.robust_list = d.pair()?;
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
            let kind = vma_kind(d.u8()?)?;
            let name = d.str()?;
            let file = match d.u8()? {
                0 => None,
                1 => Some(d.fid()?),
                _ => return Err(corrupt("mapping file")),
            };
            if start >= end || start % PAGE != 0 || end % PAGE != 0 {
                return Err(corrupt("mapping bounds"));
            }
            if p.vmas.last().is_some_and(|last| start < last.end) {
                return Err(corrupt("mapping order"));
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
                flags: 0,
            })
        }
        let n = d.len(1 << 20)?;
        for _ in 0..n {
            let f = dec_fd(d, v2)?;
            p.fds.push(f)
        }
        Ok(())
    }

    fn dec_attrs(&mut self, d: &mut Dec<'_>) -> Result<(), ImageError> {
        for v in self.vmas.iter_mut() {
            v.flags = d.u32()?;
        }
        self.thp_disable = d.u64()?;
        self.child_subreaper = d.flag("child subreaper")?;
        self.oom_score_adj = d.u32()? as i32;
        if !(-1000..=1000).contains(&self.oom_score_adj) {
            return Err(corrupt("oom_score_adj"));
        }
        Ok(())
    }

    fn dec_threads(&mut self, d: &mut Dec<'_>) -> Result<(), ImageError> {
        let n = d.len(1 << 16)?;
        if n == 0 {
            return Err(corrupt("thread count"));
        }
        for _ in 0..n {
            let tid = d.u32()? as i32;
            let comm = d.str()?;
            if tid <= 0 || tid == self.pid || self.threads.last().is_some_and(|l| l.tid >= tid) {
                return Err(corrupt("thread id"));
            }
            let (regs, xstate, sigmask, rseq) = d.cpu("thread")?;
            let altstack = d.altstack()?;
            let clear_child_tid = d.u64()?;
            let robust_list = d.pair()?;
            let m = d.len(100_000)?;
            let mut pending = Vec::new();
            for _ in 0..m {
                pending.push(d.siginfo("thread")?)
            }
            self.threads.push(ThreadImage {
                tid,
                comm,
                regs,
                xstate,
                sigmask,
                rseq,
                altstack,
                clear_child_tid,
                robust_list,
                pending,
            })
        }
        Ok(())
    }
}

// --- POSIX timers (issue 8 part 3)

fn enc_posix_timers(e: &mut Enc, ts: &[PosixTimer]) {
    e.u64(ts.len() as u64);
    for t in ts {
        e.u32(t.id as u32);
        e.u32(t.clock as u32);
        e.u32(t.signo as u32);
        e.u64(t.value);
        e.u32(t.notify as u32);
        e.u32(t.target as u32);
        for w in [t.interval.0, t.interval.1, t.left.0, t.left.1] {
            e.u64(w);
        }
    }
}

fn dec_posix_timers(d: &mut Dec<'_>) -> Result<Vec<PosixTimer>, ImageError> {
    let n = d.len(1 << 20)?;
    let mut v: Vec<PosixTimer> = Vec::new();
    for _ in 0..n {
        let id = d.u32()? as i32;
        if id < 0 || v.last().is_some_and(|l| l.id >= id) {
            return Err(corrupt("POSIX timer id"));
        }
        let clock = d.u32()? as i32;
        let signo = d.u32()? as i32;
        let value = d.u64()?;
        let notify = d.u32()? as i32;
        let target = d.u32()? as i32;
        let mut w = [0u64; 4];
        for x in w.iter_mut() {
            *x = d.u64()?;
        }
        let known = [libc::SIGEV_SIGNAL, libc::SIGEV_NONE, libc::SIGEV_THREAD];
        if !known.contains(&(notify & !libc::SIGEV_THREAD_ID))
            || target <= 0
            || !(0..=64).contains(&signo)
            || w[1] >= 1_000_000_000
            || w[3] >= 1_000_000_000
        {
            return Err(corrupt("POSIX timer"));
        }
        v.push(PosixTimer {
            id,
            clock,
            signo,
            value,
            notify,
            target,
            interval: (w[0], w[1]),
            left: (w[2], w[3]),
        });
    }
    Ok(v)
}

// --- file locks (issue 8 part 3)

fn enc_file_locks(e: &mut Enc, ls: &[FileLock]) {
    e.u64(ls.len() as u64);
    for l in ls {
        e.u32(l.fd as u32);
        e.u8(match l.kind {
            LockKind::Flock => 0,
            LockKind::Posix => 1,
            LockKind::Ofd => 2,
        });
        e.u8(l.write as u8);
        e.u64(l.start);
        e.u8(l.end.is_some() as u8);
        e.u64(l.end.unwrap_or(0));
    }
}

fn dec_file_locks(d: &mut Dec<'_>) -> Result<Vec<FileLock>, ImageError> {
    let n = d.len(1 << 20)?;
    let mut v = Vec::new();
    for _ in 0..n {
        let fd = d.u32()? as i32;
        let kind = match d.u8()? {
            0 => LockKind::Flock,
            1 => LockKind::Posix,
            2 => LockKind::Ofd,
            _ => return Err(corrupt("file lock kind")),
        };
        let write = d.flag("file lock type")?;
        let start = d.u64()?;
        let bounded = d.flag("file lock end")?;
        let end = d.u64()?;
        let end = bounded.then_some(end);
        if fd < 0
            || start > i64::MAX as u64
            || end.is_some_and(|e| e < start || e > i64::MAX as u64)
            || (kind == LockKind::Flock && (start, end) != (0, None))
        {
            return Err(corrupt("file lock"));
        }
        v.push(FileLock {
            fd,
            kind,
            write,
            start,
            end,
        });
    }
    Ok(v)
}

fn enc_fd(e: &mut Enc, f: &Fd) {
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
        FdKind::External { what, flags } => {
            e.u8(3);
            e.str(what);
            e.u32(*flags)
        }
        FdKind::Pipe {
            pipe,
            write,
            flags,
            size,
            data,
        } => {
            e.u8(4);
            e.u64(*pipe);
            e.u8(*write as u8);
            e.u32(*flags);
            e.u32(*size);
            e.bytes(data)
        }
        FdKind::EventFd {
            count,
            semaphore,
            flags,
        } => {
            e.u8(5);
            e.u64(*count);
            e.u8(*semaphore as u8);
            e.u32(*flags)
        }
        FdKind::Epoll { flags, watches } => {
            e.u8(6);
            e.u32(*flags);
            e.u64(watches.len() as u64);
            for w in watches {
                e.u32(w.fd as u32);
                e.u32(w.events);
                e.u64(w.data)
            }
        }
        FdKind::TimerFd {
            clockid,
            flags,
            ticks,
            value,
            interval,
        } => {
            e.u8(7);
            e.u32(*clockid as u32);
            e.u32(*flags);
            e.u64(*ticks);
            for v in [value.0, value.1, interval.0, interval.1] {
                e.u64(v)
            }
        }
        FdKind::SignalFd { mask, flags } => {
            e.u8(8);
            e.u64(*mask);
            e.u32(*flags)
        }
        FdKind::Contents {
            name,
            memfd,
            flags,
            pos,
            mode,
            seals,
            data,
        } => {
            e.u8(9);
            e.str(name);
            e.u8(*memfd as u8);
            e.u32(*flags);
            e.u64(*pos);
            e.u32(*mode);
            e.u32(*seals);
            e.bytes(data)
        }
        FdKind::SocketPair {
            pair,
            first,
            flags,
            data,
        } => {
            e.u8(10);
            e.u64(*pair);
            e.u8(*first as u8);
            e.u32(*flags);
            e.bytes(data)
        }
        FdKind::Terminal { like, flags } => {
            e.u8(11);
            e.u32(*like as u32);
            e.u32(*flags)
        }
        FdKind::Inotify { flags, watches } => {
            e.u8(12);
            e.u32(*flags);
            e.u64(watches.len() as u64);
            for w in watches {
                e.u32(w.wd as u32);
                e.u32(w.mask);
                e.str(&w.path);
                e.u64(w.dev);
                e.u64(w.ino);
            }
        }
    }
}

fn dec_fd(d: &mut Dec<'_>, v2: bool) -> Result<Fd, ImageError> {
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
        3 => FdKind::External {
            what: d.str()?,
            flags: d.u32()?,
        },
        4 => FdKind::Pipe {
            pipe: d.u64()?,
            write: d.u8()? != 0,
            flags: d.u32()?,
            size: d.u32()?,
            data: d.bytes()?,
        },
        5 => FdKind::EventFd {
            count: d.u64()?,
            semaphore: d.u8()? != 0,
            flags: d.u32()?,
        },
        6 => {
            let flags = d.u32()?;
            let n = d.len(1 << 20)?;
            let mut watches = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let w = EpollWatch {
                    fd: d.u32()? as i32,
                    events: d.u32()?,
                    data: d.u64()?,
                };
                if w.fd < 0 {
                    return Err(corrupt("epoll watch fd"));
                }
                watches.push(w)
            }
            FdKind::Epoll { flags, watches }
        }
        7 => FdKind::TimerFd {
            clockid: d.u32()? as i32,
            flags: d.u32()?,
            ticks: d.u64()?,
            value: (d.u64()?, d.u64()?),
            interval: (d.u64()?, d.u64()?),
        },
        8 => FdKind::SignalFd {
            mask: d.u64()?,
            flags: d.u32()?,
        },
        9 => FdKind::Contents {
            name: d.str()?,
            memfd: d.u8()? != 0,
            flags: d.u32()?,
            pos: d.u64()?,
            mode: d.u32()?,
            seals: d.u32()?,
            data: d.bytes()?,
        },
        10 => FdKind::SocketPair {
            pair: d.u64()?,
            first: d.u8()? != 0,
            flags: d.u32()?,
            data: d.bytes()?,
        },
        11 if v2 => {
            let like = d.u32()? as i32;
            if !(0..=2).contains(&like) {
                return Err(corrupt("terminal fd"));
            }
            FdKind::Terminal {
                like,
                flags: d.u32()?,
            }
        }
        12 if v2 => {
            let flags = d.u32()?;
            let n = d.len(1 << 20)?;
            let mut watches: Vec<InotifyWatch> = Vec::new();
            for _ in 0..n {
                let w = InotifyWatch {
                    wd: d.u32()? as i32,
                    mask: d.u32()?,
                    path: d.str()?,
                    dev: d.u64()?,
                    ino: d.u64()?,
                };
                if w.wd <= 0
                    || watches.last().is_some_and(|l| l.wd >= w.wd)
                    || !w.path.starts_with('/')
                {
                    return Err(corrupt("inotify watch"));
                }
                watches.push(w);
            }
            FdKind::Inotify { flags, watches }
        }
        _ => return Err(corrupt("fd kind")),
    };
    if fd < 0 {
        return Err(corrupt("fd number"));
    }
    Ok(Fd { fd, kind })
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
                flags: vmflag::DONTDUMP | vmflag::LOCKED,
            }],
            thp_disable: 3,
            child_subreaper: true,
            oom_score_adj: -17,
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
                Fd {
                    fd: 251,
                    kind: FdKind::External {
                        what: "write end of pipe:[77]".into(),
                        flags: 0o2000001,
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
            assert!(ProcessImage::decode(&b[..n]).is_err(), "cut at {n}");
        }
        // version 1 of the same state reads back the same
        let b1 = p.encode_v1().unwrap();
        let q1 = ProcessImage::decode_version(&b1, 1).unwrap();
        assert_eq!(format!("{p:?}"), format!("{q1:?}"));
        // ...and in version 1 a cut exactly where its first version ended decodes, with
        // nothing of the appended fields carried
        let v1 = b1.len() - (4 * p.vmas.len() + 8 + 1 + 4);
        for n in 0..b1.len() {
            assert_eq!(
                ProcessImage::decode_version(&b1[..n], 1).is_ok(),
                n == v1,
                "cut at {n}"
            );
        }
        let old = ProcessImage::decode_version(&b1[..v1], 1).unwrap();
        assert_eq!(
            (
                old.vmas[0].flags,
                old.thp_disable,
                old.child_subreaper,
                old.oom_score_adj
            ),
            (0, 0, false, 0)
        );
        // a version-1 section is not a version-2 one and the other way round
        assert!(ProcessImage::decode_version(&b1, 2).is_err());
        assert!(ProcessImage::decode_version(&b, 1).is_err());
    }

    #[test]
    fn thread_records_round_trip_and_single_threaded_images_stay_as_before() {
        let single = ProcessImage {
            pid: 10,
            regs: vec![0; 27],
            ..Default::default()
        };
        let sb = single.encode();
        let sb1 = single.encode_v1().unwrap();
        let t = |tid: i32| ThreadImage {
            tid,
            comm: format!("worker {tid}"),
            regs: (100..127).collect(),
            xstate: vec![tid as u8; 832],
            sigmask: 1 << 9,
            rseq: Some((0x7f00_0000_1920, 32, 0x5305_3053)),
            altstack: (0x7000, 0, 8192),
            clear_child_tid: 0x7f00_0000_12d0,
            robust_list: (0x7f00_0000_12e0, 24),
            pending: vec![vec![tid as u8; 128]],
        };
        let multi = ProcessImage {
            threads: vec![t(11), t(12)],
            ..single.clone()
        };
        let mb = multi.encode();
        // no thread record: the single-threaded section is the same without it
        assert!(mb.starts_with(&sb) && mb.len() > sb.len());
        let q = ProcessImage::decode(&mb).unwrap();
        assert_eq!(q.threads, multi.threads);
        assert!(ProcessImage::decode(&sb).unwrap().threads.is_empty());
        // every cut inside the thread record is an error, never a panic
        for n in sb.len() + 1..mb.len() {
            assert!(ProcessImage::decode(&mb[..n]).is_err(), "cut at {n}");
        }
        // version 1: threads appended to the single-threaded section, read back the same
        let mb1 = multi.encode_v1().unwrap();
        assert!(mb1.starts_with(&sb1) && mb1.len() > sb1.len());
        assert_eq!(
            ProcessImage::decode_version(&mb1, 1).unwrap().threads,
            multi.threads
        );
        for n in sb1.len() + 1..mb1.len() {
            assert!(
                ProcessImage::decode_version(&mb1[..n], 1).is_err(),
                "cut at {n}"
            );
        }
        // thread ids must be ascending, positive and not the main thread's
        for bad in [vec![t(12), t(11)], vec![t(10)], vec![t(-1)]] {
            let b = ProcessImage {
                threads: bad,
                ..single.clone()
            }
            .encode();
            assert!(ProcessImage::decode(&b).is_err());
        }
    }

    fn with_record(b: &[u8], tag: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = b.to_vec();
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn unknown_optional_records_are_skipped_and_unknown_required_ones_refused() {
        let p = ProcessImage {
            pid: 10,
            regs: vec![0; 27],
            oom_score_adj: 5,
            ..Default::default()
        };
        let b = p.encode();
        let skip = with_record(&b, REC_OPTIONAL | 77, b"from a newer omnode");
        let q = ProcessImage::decode(&skip).unwrap();
        assert_eq!((q.pid, q.oom_score_adj), (10, 5));
        let refuse = with_record(&b, 77, b"from a newer omnode");
        assert!(matches!(
            ProcessImage::decode(&refuse),
            Err(ImageError::UnknownRecord { tag: 77 })
        ));
        // a known record twice, or a record before the core, is corrupt
        let twice = with_record(&b, REC_ATTRS, &b[b.len() - 13..]);
        assert!(ProcessImage::decode(&twice).is_err());
        assert!(ProcessImage::decode(&with_record(&[], REC_OPTIONAL | 1, b"")).is_err());
    }

    #[test]
    fn terminal_state_round_trips_and_is_checked() {
        let p = ProcessImage {
            pid: 10,
            regs: vec![0; 27],
            fds: vec![
                Fd {
                    fd: 0,
                    kind: FdKind::Stdio {
                        what: "terminal /dev/pts/3".into(),
                        cloexec: false,
                    },
                },
                Fd {
                    fd: 3,
                    kind: FdKind::Terminal {
                        like: 0,
                        flags: 0o2,
                    },
                },
            ],
            terminal: Some(TerminalImage {
                termios: (0..60).collect(),
                ctty: true,
                fd: 0,
            }),
            ..Default::default()
        };
        let q = ProcessImage::decode(&p.encode()).unwrap();
        assert_eq!(format!("{p:?}"), format!("{q:?}"));
        // version 1 cannot hold it: refused rather than written without it
        assert!(p.encode_v1().is_err());
        // a terminal fd naming a stdio fd without a terminal is corrupt
        let mut bad = p.clone();
        bad.terminal = None;
        assert!(ProcessImage::decode(&bad.encode()).is_err());
    }

    #[test]
    fn posix_timers_round_trip_and_bad_ones_are_corrupt() {
        let t = |id: i32| PosixTimer {
            id,
            clock: 1,
            signo: 32,
            value: 0x5647_9cd1_3050,
            notify: libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID,
            target: 100 + id,
            interval: (0, 500_000_000),
            left: (3, 250_000_000),
        };
        let p = ProcessImage {
            pid: 99,
            regs: vec![0; 27],
            posix_timers: vec![t(0), t(4)],
            ..Default::default()
        };
        let b = p.encode();
        assert_eq!(
            ProcessImage::decode(&b).unwrap().posix_timers,
            p.posix_timers
        );
        // version 1 cannot hold them: refused rather than written without them
        assert!(p.encode_v1().is_err());
        // without timers the record is not written at all
        let none = ProcessImage {
            posix_timers: Vec::new(),
            ..p.clone()
        };
        assert!(b.len() > none.encode().len());
        for (what, bad) in [
            ("ids out of order", vec![t(4), t(0)]),
            (
                "nanoseconds",
                vec![PosixTimer {
                    left: (0, 1_000_000_000),
                    ..t(0)
                }],
            ),
            ("notify", vec![PosixTimer { notify: 9, ..t(0) }]),
        ] {
            let q = ProcessImage {
                posix_timers: bad,
                ..p.clone()
            };
            assert!(ProcessImage::decode(&q.encode()).is_err(), "{what}");
        }
        // the record is required: a reader that does not know tag 5 must refuse it
        assert_eq!(REC_POSIX_TIMERS & REC_OPTIONAL, 0);
    }

    #[test]
    fn file_locks_round_trip_and_bad_ones_are_corrupt() {
        let l = |fd, kind, end| FileLock {
            fd,
            kind,
            write: fd % 2 == 0,
            start: if kind == LockKind::Flock { 0 } else { 5 },
            end,
        };
        let p = ProcessImage {
            pid: 99,
            regs: vec![0; 27],
            file_locks: vec![
                l(3, LockKind::Flock, None),
                l(4, LockKind::Posix, Some(14)),
                l(5, LockKind::Ofd, None),
            ],
            ..Default::default()
        };
        assert_eq!(
            ProcessImage::decode(&p.encode()).unwrap().file_locks,
            p.file_locks
        );
        assert!(p.encode_v1().is_err());
        for bad in [
            l(3, LockKind::Flock, Some(9)),
            l(4, LockKind::Posix, Some(2)),
        ] {
            let q = ProcessImage {
                file_locks: vec![bad],
                ..p.clone()
            };
            assert!(ProcessImage::decode(&q.encode()).is_err());
        }
        assert_eq!(REC_FILE_LOCKS & REC_OPTIONAL, 0);
    }
}
