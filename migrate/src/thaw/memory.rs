//! Memory contents: PAGES sections written into the new process, the cached TID patched.

use super::terr;
use crate::error::{ImageError, Result};
use crate::image::*;
use crate::sys::*;
use libc::pid_t;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

/// Streams the PAGES sections into the new process; returns the bytes written and
/// /proc/PID/mem.
pub(super) fn write_contents<R: Read>(
    sr: &mut SectionReader<R>,
    buf: &mut Vec<u8>,
    pid: pid_t,
    img: &ProcessImage,
) -> Result<(u64, File)> {
    let memf = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(terr("opening /proc/PID/mem"))?;
    let mut wr: Vec<(u64, u64)> = Vec::new();
    let total = read_pages(sr, buf, |runs, data| {
        let mut off = 0usize;
        let mut wr_start = 0usize;
        wr.clear();
        for &(a, l) in runs {
            let i = img.vmas.partition_point(|v| v.start <= a);
            let v = i.checked_sub(1).map(|i| &img.vmas[i]);
            let ok = v.filter(|v| {
                a + l <= v.end
                    && (matches!(v.kind, VmaKind::Anon | VmaKind::SharedAnon)
                        || (v.kind == VmaKind::File && !v.shared))
            });
            let Some(v) = ok else {
                return Err(ImageError::Corrupt(format!(
                    "page data at {a:#x} lies outside the memory map"
                ))
                .into());
            };
            if super::maps::map_prot(v) & libc::PROT_WRITE as u32 != 0 {
                if wr.is_empty() {
                    wr_start = off;
                }
                if wr_start + wr.iter().map(|x| x.1 as usize).sum::<usize>() != off {
                    write_mem(pid, &data[wr_start..off], &wr)
                        .map_err(terr(format!("writing memory at {:#x}", wr[0].0)))?;
                    wr.clear();
                    wr_start = off;
                }
                wr.push((a, l));
            } else {
                memf.write_all_at(&data[off..off + l as usize], a)
                    .map_err(terr(format!("writing memory at {a:#x}")))?;
            }
            off += l as usize;
        }
        if !wr.is_empty() {
            let len: usize = wr.iter().map(|x| x.1 as usize).sum();
            write_mem(pid, &data[wr_start..wr_start + len], &wr)
                .map_err(terr(format!("writing memory at {:#x}", wr[0].0)))?;
        }
        Ok(())
    })?;
    Ok((total, memf))
}

/// Patches the cached TID in glibc's struct pthread when the PID changed.
pub(super) fn patch_cached_tid(memf: &File, pid: pid_t, img: &ProcessImage) -> Result<()> {
    // cached TID in glibc's struct pthread (clear_child_tid points at it)
    if pid != img.pid && img.clear_child_tid != 0 {
        let mut v = [0u8; 4];
        if memf.read_exact_at(&mut v, img.clear_child_tid).is_ok()
            && i32::from_ne_bytes(v) == img.pid
        {
            memf.write_all_at(&pid.to_ne_bytes(), img.clear_child_tid)
                .map_err(terr("patching the cached TID"))?;
        }
    }
    Ok(())
}
