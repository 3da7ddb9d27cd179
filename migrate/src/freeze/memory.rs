//! Memory streaming: pagemap walk and PAGES sections through process_vm_readv or /proc/PID/mem.

use super::ferr;
use crate::error::{Error, Result};
use crate::image::*;
use crate::sys::*;
use libc::pid_t;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

const CHUNK: usize = 512 << 10;

struct Dumper<'a, W: Write> {
    pid: pid_t,
    sw: &'a mut SectionWriter<W>,
    runs: Vec<(u64, u64)>,
    data: Vec<u8>,
    used: usize,
    via_mem: bool,
    mem: Option<File>,
    total: u64,
    sections: u64,
}

impl<W: Write> Dumper<'_, W> {
    fn add(&mut self, mut a: u64, mut l: u64, readable: bool) -> Result<()> {
        if !self.runs.is_empty() && self.via_mem == readable {
            self.flush()?;
        }
        self.via_mem = !readable;
        while l > 0 {
            let take = l.min((CHUNK - self.used) as u64);
            // never merge with an earlier run: it may belong to the neighbouring mapping
            self.runs.push((a, take));
            self.used += take as usize;
            a += take;
            l -= take;
            if self.used == CHUNK || self.runs.len() == 1024 {
                self.flush()?;
            }
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let pid = self.pid;
        let buf = &mut self.data[..self.used];
        if self.via_mem {
            if self.mem.is_none() {
                self.mem = Some(
                    File::open(format!("/proc/{pid}/mem"))
                        .map_err(ferr(pid, "opening /proc/PID/mem"))?,
                );
            }
            let m = self.mem.as_ref().unwrap();
            let mut off = 0usize;
            for &(a, l) in &self.runs {
                m.read_exact_at(&mut buf[off..off + l as usize], a)
                    .map_err(ferr(pid, format!("reading memory at {a:#x}")))?;
                off += l as usize;
            }
        } else {
            read_mem(pid, buf, &self.runs).map_err(ferr(
                pid,
                format!("reading memory at {:#x}", self.runs[0].0),
            ))?;
        }
        let mut hdr = Vec::with_capacity(4 + self.runs.len() * 16);
        hdr.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for &(a, l) in &self.runs {
            hdr.extend_from_slice(&a.to_le_bytes());
            hdr.extend_from_slice(&l.to_le_bytes());
        }
        self.sw
            .section(TAG_PAGES, &[&hdr, buf])
            .map_err(Error::Stream)?;
        self.total += self.used as u64;
        self.sections += 1;
        self.runs.clear();
        self.used = 0;
        Ok(())
    }
}

pub(super) fn dump_pages<W: Write>(
    pid: pid_t,
    vmas: &[Vma],
    sw: &mut SectionWriter<W>,
) -> Result<(u64, u64)> {
    let pagemap =
        File::open(format!("/proc/{pid}/pagemap")).map_err(ferr(pid, "opening pagemap"))?;
    let mut d = Dumper {
        pid,
        sw,
        runs: Vec::new(),
        data: vec![0u8; CHUNK],
        used: 0,
        via_mem: false,
        mem: None,
        total: 0,
        sections: 0,
    };
    let mut pm: Vec<u8> = Vec::new();
    for v in vmas {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        match v.kind {
            VmaKind::SharedAnon => {
                d.add(v.start, v.len(), readable)?;
                continue;
            }
            VmaKind::Anon => {}
            VmaKind::File if !v.shared => {}
            _ => continue,
        }
        let n = (v.len() / PAGE) as usize;
        // pagemap in slices of 64Ki pages (256 MiB of address space)
        let mut i0 = 0usize;
        while i0 < n {
            let m = (n - i0).min(65536);
            pm.resize(m * 8, 0);
            let off = (v.start / PAGE + i0 as u64) * 8;
            pagemap
                .read_exact_at(&mut pm, off)
                .map_err(ferr(pid, format!("reading pagemap at {:#x}", v.start)))?;
            let mut run: Option<(u64, u64)> = None;
            for k in 0..m {
                let e = u64::from_ne_bytes(pm[k * 8..k * 8 + 8].try_into().unwrap());
                let present = e >> 63 & 1 == 1;
                let swapped = e >> 62 & 1 == 1;
                let filepg = e >> 61 & 1 == 1;
                let want = match v.kind {
                    VmaKind::File => (present && !filepg) || swapped,
                    _ => present || swapped,
                };
                let addr = v.start + (i0 + k) as u64 * PAGE;
                match (&mut run, want) {
                    (Some(r), true) => r.1 += PAGE,
                    (None, true) => run = Some((addr, PAGE)),
                    (Some(r), false) => {
                        let (a, l) = *r;
                        d.add(a, l, readable)?;
                        run = None;
                    }
                    (None, false) => {}
                }
            }
            if let Some((a, l)) = run {
                d.add(a, l, readable)?;
            }
            i0 += m;
        }
    }
    d.flush()?;
    Ok((d.total, d.sections))
}
