//! Memory streaming: a pagemap walk makes a [`PagePlan`]; the planned pages are then read
//! through process_vm_readv or /proc/PID/mem and written as PAGES sections.

use super::ferr;
use crate::error::{Error, Result};
use crate::image::*;
use crate::sys::*;
use libc::pid_t;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

const CHUNK: usize = 512 << 10;

/// Which pages a freeze writes and how they are cut into PAGES sections, decided by one
/// pagemap walk before any page is read: the image size is then known up front (an offer can
/// carry it while the pages are still to be read), and the image is exactly this plan even if
/// a page changes state meanwhile (a reclaimed MADV_FREE page then reads as zeros, which is
/// what the process itself would see).
#[derive(Debug, Clone, Default)]
pub(crate) struct PagePlan {
    pub(crate) sections: Vec<PlannedSection>,
    /// Bytes of page contents.
    pub(crate) total: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct PlannedSection {
    /// Read through /proc/PID/mem (unreadable mappings) rather than process_vm_readv.
    via_mem: bool,
    runs: Vec<(u64, u64)>,
    bytes: usize,
}

impl PlannedSection {
    /// Bytes of the section on the wire (header, run table, contents, checksum).
    pub(crate) fn wire_bytes(&self) -> u64 {
        12 + 4 + 16 * self.runs.len() as u64 + self.bytes as u64 + 4
    }
}

struct Planner {
    plan: PagePlan,
    runs: Vec<(u64, u64)>,
    used: usize,
    via_mem: bool,
}

impl Planner {
    fn add(&mut self, mut a: u64, mut l: u64, readable: bool) {
        if !self.runs.is_empty() && self.via_mem == readable {
            self.flush();
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
                self.flush();
            }
        }
    }
    fn flush(&mut self) {
        if self.runs.is_empty() {
            return;
        }
        self.plan.sections.push(PlannedSection {
            via_mem: self.via_mem,
            runs: std::mem::take(&mut self.runs),
            bytes: self.used,
        });
        self.plan.total += self.used as u64;
        self.used = 0;
    }
}

/// Reads the planned pages of `pid` and writes them as PAGES sections; returns (page bytes,
/// sections).
pub(super) fn write_plan<W: Write>(
    pid: pid_t,
    plan: &PagePlan,
    sw: &mut SectionWriter<W>,
) -> Result<(u64, u64)> {
    let mut data = vec![0u8; CHUNK];
    let mut mem: Option<File> = None;
    let mut hdr = Vec::new();
    for sec in &plan.sections {
        let buf = &mut data[..sec.bytes];
        if sec.via_mem {
            if mem.is_none() {
                mem = Some(
                    File::open(format!("/proc/{pid}/mem"))
                        .map_err(ferr(pid, "opening /proc/PID/mem"))?,
                );
            }
            let m = mem.as_ref().expect("just opened");
            let mut off = 0usize;
            for &(a, l) in &sec.runs {
                m.read_exact_at(&mut buf[off..off + l as usize], a)
                    .map_err(ferr(pid, format!("reading memory at {a:#x}")))?;
                off += l as usize;
            }
        } else {
            read_mem(pid, buf, &sec.runs)
                .map_err(ferr(pid, format!("reading memory at {:#x}", sec.runs[0].0)))?;
        }
        hdr.clear();
        hdr.extend_from_slice(&(sec.runs.len() as u32).to_le_bytes());
        for &(a, l) in &sec.runs {
            hdr.extend_from_slice(&a.to_le_bytes());
            hdr.extend_from_slice(&l.to_le_bytes());
        }
        sw.section(TAG_PAGES, &[&hdr, buf]).map_err(Error::Stream)?;
    }
    Ok((plan.total, plan.sections.len() as u64))
}

/// The pages of `vmas` a freeze writes (see [`PagePlan`]).
pub(super) fn plan_pages(pid: pid_t, vmas: &[Vma]) -> Result<PagePlan> {
    let pagemap =
        File::open(format!("/proc/{pid}/pagemap")).map_err(ferr(pid, "opening pagemap"))?;
    let mut d = Planner {
        plan: PagePlan::default(),
        runs: Vec::new(),
        used: 0,
        via_mem: false,
    };
    let mut pm: Vec<u8> = Vec::new();
    for v in vmas {
        let readable = v.prot & libc::PROT_READ as u32 != 0;
        match v.kind {
            VmaKind::SharedAnon => {
                d.add(v.start, v.len(), readable);
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
                        d.add(a, l, readable);
                        run = None;
                    }
                    (None, false) => {}
                }
            }
            if let Some((a, l)) = run {
                d.add(a, l, readable);
            }
            i0 += m;
        }
    }
    d.flush();
    Ok(d.plan)
}
