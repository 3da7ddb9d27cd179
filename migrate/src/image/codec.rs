//! Encoder and decoder of the PROCESS section.

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
            }
        }
        // appended after the first version of this section; a section without them decodes
        // with the defaults (not carried then)
        for v in &self.vmas {
            e.u32(v.flags)
        }
        e.u64(self.thp_disable);
        e.u8(self.child_subreaper as u8);
        e.u32(self.oom_score_adj as u32);
        // appended later still: the other threads (absent: a single-threaded process). An
        // older reader refuses an image with them ("trailing bytes"): it could not thaw it.
        if !self.threads.is_empty() {
            e.u64(self.threads.len() as u64);
            for t in &self.threads {
                e.u32(t.tid as u32);
                e.str(&t.comm);
                e.u64(t.regs.len() as u64);
                for r in &t.regs {
                    e.u64(*r)
                }
                e.bytes(&t.xstate);
                e.u64(t.sigmask);
                match t.rseq {
                    Some((p, l, s)) => {
                        e.u8(1);
                        e.u64(p);
                        e.u32(l);
                        e.u32(s)
                    }
                    None => e.u8(0),
                }
                e.u64(t.altstack.0);
                e.u32(t.altstack.1);
                e.u64(t.altstack.2);
                e.u64(t.clear_child_tid);
                e.u64(t.robust_list.0);
                e.u64(t.robust_list.1);
                e.u64(t.pending.len() as u64);
                for p in &t.pending {
                    e.bytes(p)
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
                flags: 0,
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
                _ => return Err(corrupt("fd kind")),
            };
            if fd < 0 {
                return Err(corrupt("fd number"));
            }
            p.fds.push(Fd { fd, kind })
        }
        if !d.done() {
            for v in p.vmas.iter_mut() {
                v.flags = d.u32()?;
            }
            p.thp_disable = d.u64()?;
            p.child_subreaper = match d.u8()? {
                0 => false,
                1 => true,
                _ => return Err(corrupt("child subreaper")),
            };
            p.oom_score_adj = d.u32()? as i32;
            if !(-1000..=1000).contains(&p.oom_score_adj) {
                return Err(corrupt("oom_score_adj"));
            }
        }
        if !d.done() {
            let n = d.len(1 << 16)?;
            if n == 0 {
                return Err(corrupt("thread count"));
            }
            for _ in 0..n {
                let mut t = ThreadImage {
                    tid: d.u32()? as i32,
                    comm: d.str()?,
                    ..Default::default()
                };
                if t.tid <= 0 || t.tid == p.pid || p.threads.last().is_some_and(|l| l.tid >= t.tid)
                {
                    return Err(corrupt("thread id"));
                }
                if d.len(64)? != 27 {
                    return Err(corrupt("thread register count"));
                }
                for _ in 0..27 {
                    t.regs.push(d.u64()?)
                }
                t.xstate = d.bytes()?;
                t.sigmask = d.u64()?;
                t.rseq = match d.u8()? {
                    0 => None,
                    1 => Some((d.u64()?, d.u32()?, d.u32()?)),
                    _ => return Err(corrupt("thread rseq")),
                };
                t.altstack = (d.u64()?, d.u32()?, d.u64()?);
                t.clear_child_tid = d.u64()?;
                t.robust_list = (d.u64()?, d.u64()?);
                let m = d.len(100_000)?;
                for _ in 0..m {
                    let info = d.bytes()?;
                    if info.len() != 128 {
                        return Err(corrupt("thread siginfo"));
                    }
                    t.pending.push(info)
                }
                p.threads.push(t)
            }
        }
        if !d.done() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(p)
    }
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
        // ...except exactly where the first version of the section ended: that decodes,
        // with nothing of the appended fields carried
        let v1 = b.len() - (4 * p.vmas.len() + 8 + 1 + 4);
        for n in 0..b.len() {
            assert_eq!(ProcessImage::decode(&b[..n]).is_ok(), n == v1, "cut at {n}");
        }
        let old = ProcessImage::decode(&b[..v1]).unwrap();
        assert_eq!(
            (
                old.vmas[0].flags,
                old.thp_disable,
                old.child_subreaper,
                old.oom_score_adj
            ),
            (0, 0, false, 0)
        );
    }

    #[test]
    fn thread_records_round_trip_and_single_threaded_images_stay_as_before() {
        let single = ProcessImage {
            pid: 10,
            regs: vec![0; 27],
            ..Default::default()
        };
        let sb = single.encode();
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
        // no thread records: byte for byte what a single-threaded image always was
        assert!(mb.starts_with(&sb) && mb.len() > sb.len());
        let q = ProcessImage::decode(&mb).unwrap();
        assert_eq!(q.threads, multi.threads);
        assert!(ProcessImage::decode(&sb).unwrap().threads.is_empty());
        // every cut inside the thread records is an error, never a panic
        for n in sb.len() + 1..mb.len() {
            assert!(ProcessImage::decode(&mb[..n]).is_err(), "cut at {n}");
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
}
