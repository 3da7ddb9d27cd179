//! Memory-map rebuild: free address ranges and the image's mappings at their old addresses.

use super::TASK_SIZE;
use super::inject::{Builder, call};
use crate::error::{Error, Result};
use crate::image::*;

pub(super) fn find_gap(busy: &mut [(u64, u64)], size: u64, lo: u64) -> Option<u64> {
    busy.sort();
    let mut cand = lo;
    for &(s, e) in busy.iter() {
        if e <= cand {
            continue;
        }
        if s >= cand + size {
            return Some(cand);
        }
        cand = cand.max(e);
    }
    if cand + size <= TASK_SIZE {
        Some(cand)
    } else {
        None
    }
}

/// The protection a mapping is made with, set back by [`after_contents`]: shared anonymous
/// memory is written by process_vm_writev, which honours protections and cannot write a
/// read-only shared mapping even through /proc/PID/mem, so it is made writable; a read-only
/// private mapping that was writable once (RELRO, "ac") is made writable so that the kernel
/// charges it again, as it did the original (else it would also merge with its neighbours).
pub(super) fn map_prot(v: &Vma) -> u32 {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    match v.kind {
        VmaKind::SharedAnon => v.prot | rw,
        VmaKind::Anon | VmaKind::File if !v.shared && v.flags & vmflag::ACCOUNT != 0 => {
            v.prot | libc::PROT_WRITE as u32
        }
        _ => v.prot,
    }
}

/// Calls that finish the mappings once their contents are in: protections set back, madvise
/// state, mlock.
pub(super) fn after_contents(img: &ProcessImage) -> Vec<super::inject::Call> {
    let mut calls = Vec::new();
    for v in &img.vmas {
        let (a, l) = (v.start, v.len());
        if map_prot(v) != v.prot {
            calls.push(call(
                format!("mprotect of {a:#x}-{:#x} {}", v.end, v.name),
                libc::SYS_mprotect,
                &[a, l, v.prot as u64],
            ));
        }
        for (bit, advice, what) in [
            (vmflag::DONTDUMP, libc::MADV_DONTDUMP, "MADV_DONTDUMP"),
            (vmflag::DONTFORK, libc::MADV_DONTFORK, "MADV_DONTFORK"),
            (vmflag::WIPEONFORK, libc::MADV_WIPEONFORK, "MADV_WIPEONFORK"),
            (vmflag::HUGEPAGE, libc::MADV_HUGEPAGE, "MADV_HUGEPAGE"),
            (vmflag::NOHUGEPAGE, libc::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"),
            (vmflag::MERGEABLE, libc::MADV_MERGEABLE, "MADV_MERGEABLE"),
            (vmflag::SEQUENTIAL, libc::MADV_SEQUENTIAL, "MADV_SEQUENTIAL"),
            (vmflag::RANDOM, libc::MADV_RANDOM, "MADV_RANDOM"),
        ] {
            if v.flags & bit != 0 {
                calls.push(call(
                    format!("madvise({what}) of {a:#x}-{:#x} {}", v.end, v.name),
                    libc::SYS_madvise,
                    &[a, l, advice as u64],
                ));
            }
        }
        if v.flags & vmflag::LOCKED != 0 {
            let onfault = if v.flags & vmflag::LOCKONFAULT != 0 {
                libc::MLOCK_ONFAULT as u64
            } else {
                0
            };
            calls.push(call(
                format!("mlock2 of {a:#x}-{:#x} {}", v.end, v.name),
                libc::SYS_mlock2,
                &[a, l, onfault],
            ));
        }
    }
    calls
}

/// Opens each mapped file once, maps every mapping at its old address, closes the files.
pub(super) fn map_vmas(b: &mut Builder, img: &ProcessImage) -> Result<()> {
    let mode_of = |v: &Vma| -> u64 {
        // a shared file mapping may be made writable later only if its file was open for
        // writing ("mw"): open it the same way, so that its maximum protection comes back
        (if v.shared && (v.prot & libc::PROT_WRITE as u32 != 0 || v.flags & vmflag::MAY_WRITE != 0)
        {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        }) as u64
    };
    let mut files: Vec<(&str, u64)> = Vec::new();
    for v in img.vmas.iter().filter(|v| v.kind == VmaKind::File) {
        if !files.contains(&(v.name.as_str(), mode_of(v))) {
            files.push((v.name.as_str(), mode_of(v)));
        }
    }
    let mut calls = Vec::new();
    for &(path, mode) in &files {
        let p = b.cstr(path)?;
        calls.push(call(
            format!("open {path}"),
            libc::SYS_openat,
            &[libc::AT_FDCWD as u64, p, mode | libc::O_CLOEXEC as u64],
        ));
    }
    let fds = b.run(&calls)?;
    let mut calls = Vec::new();
    let mut mapped = Vec::new();
    for v in &img.vmas {
        let fixed = libc::MAP_FIXED as u64;
        let (flags, fd, off) = match v.kind {
            VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso | VmaKind::Vsyscall => continue,
            VmaKind::Anon => {
                let mut f = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64 | fixed;
                if v.growsdown {
                    f |= libc::MAP_GROWSDOWN as u64;
                }
                (f, u64::MAX, 0)
            }
            VmaKind::SharedAnon => (
                (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64 | fixed,
                u64::MAX,
                0,
            ),
            VmaKind::File => {
                let i = files
                    .iter()
                    .position(|f| *f == (v.name.as_str(), mode_of(v)))
                    .unwrap();
                let f = if v.shared {
                    libc::MAP_SHARED
                } else {
                    libc::MAP_PRIVATE
                } as u64
                    | fixed;
                (f, fds[i], v.offset)
            }
        };
        let flags = if v.flags & vmflag::NORESERVE != 0 {
            flags | libc::MAP_NORESERVE as u64
        } else {
            flags
        };
        calls.push(call(
            format!("mmap of {:#x}-{:#x} {}", v.start, v.end, v.name),
            libc::SYS_mmap,
            &[v.start, v.len(), map_prot(v) as u64, flags, fd, off],
        ));
        mapped.push(v.start);
    }
    for fd in &fds {
        calls.push(call("close", libc::SYS_close, &[*fd]));
    }
    let r = b.run(&calls)?;
    for (want, got) in mapped.iter().zip(r) {
        if *want != got {
            return Err(Error::Thaw(format!("mapping {want:#x} landed at {got:#x}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_gap_skips_busy_ranges() {
        let mut busy = vec![(0x2000, 0x5000), (0x1000, 0x1800), (0x6000, 0x7000)];
        assert_eq!(find_gap(&mut busy, 0x800, 0x1000), Some(0x1800));
        assert_eq!(find_gap(&mut busy, 0x1000, 0x1000), Some(0x5000));
        assert_eq!(find_gap(&mut busy, 0x2000, 0x1000), Some(0x7000));
    }
}
