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

/// Whether a page PAGEMAP_SCAN reported with `categories` goes into the image: in anonymous
/// private memory every present or swapped page except those mapping the shared zero page (a
/// page only ever read: thaw maps the region afresh, where it reads as zeros too, and the
/// original did not count it in its RSS either); in private file mappings the pages copied on
/// write (present and anonymous, or swapped), as the pagemap walk below decides.
fn scan_wants(kind: VmaKind, categories: u64) -> bool {
    let present = categories & PAGE_IS_PRESENT != 0;
    let swapped = categories & PAGE_IS_SWAPPED != 0;
    match kind {
        VmaKind::File => (present && categories & PAGE_IS_FILE == 0) || swapped,
        _ => (present && categories & PAGE_IS_PFNZERO == 0) || swapped,
    }
}

/// The pages of `vmas` a freeze writes (see [`PagePlan`]): through PAGEMAP_SCAN (one call
/// per mapping returns ranges, and tells zero-page mappings apart); on a kernel without it
/// (before 6.7), by reading /proc/PID/pagemap, which copies the zero pages too.
pub(super) fn plan_pages(pid: pid_t, vmas: &[Vma]) -> Result<PagePlan> {
    let pagemap =
        File::open(format!("/proc/{pid}/pagemap")).map_err(ferr(pid, "opening pagemap"))?;
    let mut d = Planner {
        plan: PagePlan::default(),
        runs: Vec::new(),
        used: 0,
        via_mem: false,
    };
    let (mut buf, mut regions) = (Vec::new(), Vec::new());
    let mut scan = true;
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
        if scan {
            regions.clear();
            match pagemap_scan(&pagemap, v.start, v.end, &mut buf, &mut regions) {
                Ok(()) => {
                    let mut run: Option<(u64, u64)> = None;
                    for r in regions.iter().filter(|r| scan_wants(v.kind, r.categories)) {
                        match &mut run {
                            Some((a, l)) if *a + *l == r.start => *l += r.end - r.start,
                            _ => {
                                if let Some((a, l)) = run {
                                    d.add(a, l, readable);
                                }
                                run = Some((r.start, r.end - r.start));
                            }
                        }
                    }
                    if let Some((a, l)) = run {
                        d.add(a, l, readable);
                    }
                    continue;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                    scan = false;
                }
                // an answer that does not fit the question is not trusted: this mapping is
                // planned from pagemap instead (correct, only slower)
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    tracing::warn!(pid, vma = %format_args!("{:#x}-{:#x}", v.start, v.end), "{e}; planned from pagemap");
                }
                Err(e) => {
                    return Err(ferr(pid, format!("PAGEMAP_SCAN of {:#x}", v.start))(e));
                }
            }
        }
        walk_pagemap(pid, &pagemap, v, readable, &mut d)?;
    }
    d.flush();
    Ok(d.plan)
}

/// [`plan_pages`] of one mapping by reading 8 bytes of /proc/PID/pagemap per page.
fn walk_pagemap(
    pid: pid_t,
    pagemap: &File,
    v: &Vma,
    readable: bool,
    d: &mut Planner,
) -> Result<()> {
    let mut pm: Vec<u8> = Vec::new();
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, pages: u64, prot: i32) -> Vma {
        Vma {
            start,
            end: start + pages * PAGE,
            prot: prot as u32,
            shared: false,
            growsdown: false,
            offset: 0,
            kind: VmaKind::Anon,
            name: String::new(),
            file: None,
            flags: 0,
        }
    }

    fn runs(plan: &PagePlan) -> Vec<(u64, u64, bool)> {
        plan.sections
            .iter()
            .flat_map(|s| s.runs.iter().map(move |&(a, l)| (a, l, s.via_mem)))
            .collect()
    }

    /// Our own memory: pages written (one of them with zeros), pages only read (they map the
    /// shared zero page), untouched pages, and a written mapping made PROT_NONE afterwards.
    /// PAGEMAP_SCAN plans exactly the written pages; the pagemap walk of older kernels plans
    /// the read ones too; both read the PROT_NONE page through /proc/PID/mem.
    #[test]
    fn zero_pages_are_left_out_written_ones_kept() {
        let pg = PAGE as usize;
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: fresh private anonymous mappings of our own, unmapped at the end.
        let (a, b) = unsafe {
            (
                libc::mmap(std::ptr::null_mut(), 64 * pg, rw, flags, -1, 0),
                libc::mmap(std::ptr::null_mut(), 4 * pg, rw, flags, -1, 0),
            )
        };
        assert!(a != libc::MAP_FAILED && b != libc::MAP_FAILED);
        let (a, b) = (a as *mut u8, b as *mut u8);
        let mut sum = 0u32;
        // SAFETY: every offset lies inside the mappings made above.
        unsafe {
            for p in (0..8).chain([40]) {
                a.add(p * pg + 7).write_volatile(p as u8 + 1);
            }
            a.add(50 * pg).write_volatile(0);
            for p in 16..32 {
                sum += a.add(p * pg).read_volatile() as u32;
            }
            b.add(pg).write_volatile(9);
            assert_eq!(libc::mprotect(b.cast(), 4 * pg, libc::PROT_NONE), 0);
        }
        assert_eq!(sum, 0);
        let (a, b) = (a as u64, b as u64);
        let vmas = [anon(a, 64, rw), anon(b, 4, libc::PROT_NONE)];
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        let plan = plan_pages(me, &vmas).expect("plan");
        let written = vec![
            (a, 8 * PAGE, false),
            (a + 40 * PAGE, PAGE, false),
            (a + 50 * PAGE, PAGE, false),
            (b + PAGE, PAGE, true),
        ];
        assert_eq!(runs(&plan), written);
        assert_eq!(plan.total, 11 * PAGE);

        let pagemap = File::open(format!("/proc/{me}/pagemap")).unwrap();
        let mut d = Planner {
            plan: PagePlan::default(),
            runs: Vec::new(),
            used: 0,
            via_mem: false,
        };
        for v in &vmas {
            let readable = v.prot & libc::PROT_READ as u32 != 0;
            walk_pagemap(me, &pagemap, v, readable, &mut d).unwrap();
        }
        d.flush();
        assert_eq!(
            runs(&d.plan),
            vec![
                (a, 8 * PAGE, false),
                (a + 16 * PAGE, 16 * PAGE, false),
                (a + 40 * PAGE, PAGE, false),
                (a + 50 * PAGE, PAGE, false),
                (b + PAGE, PAGE, true),
            ]
        );
        // SAFETY: the mappings made above, no longer used.
        unsafe {
            libc::munmap(a as *mut libc::c_void, 64 * pg);
            libc::munmap(b as *mut libc::c_void, 4 * pg);
        }
    }
}
