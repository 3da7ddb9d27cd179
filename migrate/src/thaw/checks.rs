//! Checks before anything is created: files unchanged, the vDSO, the CPU's xsave features.

use crate::error::{Error, Result};
use crate::image::*;
use crate::sys::*;

pub(super) fn check_file(path: &str, id: &FileId, same_boot: bool) -> Result<()> {
    let now = stat_id(path).map_err(|e| Error::FileChanged {
        path: path.into(),
        why: format!("cannot stat it: {e}"),
    })?;
    let why = if now.size != id.size {
        format!("size is {} bytes, was {}", now.size, id.size)
    } else if (now.mtime_sec, now.mtime_nsec) != (id.mtime_sec, id.mtime_nsec) {
        "modification time differs".to_string()
    } else if same_boot && (now.ino != id.ino || now.dev != id.dev) {
        "it was replaced (different inode)".to_string()
    } else {
        return Ok(());
    };
    Err(Error::FileChanged {
        path: path.into(),
        why,
    })
}

pub(super) fn special_areas(vmas: &[Vma]) -> Vec<(VmaKind, u64, u64)> {
    vmas.iter()
        .filter(|v| matches!(v.kind, VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vdso))
        .map(|v| (v.kind, v.start, v.end))
        .collect()
}

pub(super) fn own_vdso_gadget(maps: &[crate::procfs::MapsLine]) -> Option<u64> {
    let v = maps.iter().find(|m| m.name == "[vdso]")?;
    // SAFETY: our own vdso is mapped readable for its whole length.
    let s = unsafe { std::slice::from_raw_parts(v.start as *const u8, (v.end - v.start) as usize) };
    s.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| v.start + i as u64)
}

/// XCR0 (the xsave features the kernel enabled) and the standard-format xsave size for them,
/// or None without OSXSAVE.
fn own_xsave() -> Option<(u64, usize)> {
    // SAFETY: cpuid is always available on x86_64; xgetbv only runs when OSXSAVE says it may.
    unsafe {
        let c = std::arch::x86_64::__cpuid(1);
        if c.ecx & (1 << 27) == 0 {
            return None;
        }
        let (lo, hi): (u32, u32);
        std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack));
        let d = std::arch::x86_64::__cpuid_count(0xd, 0);
        Some(((hi as u64) << 32 | lo as u64, d.ebx as usize))
    }
}

/// Makes the frozen xsave area fit this CPU: refuses state components it lacks, and pads or
/// trims the (standard-format) area to this CPU's size; components past the end are in their
/// init state per the header's XSTATE_BV.
pub(super) fn fit_xstate(x: &[u8]) -> Result<Vec<u8>> {
    let Some((have, size)) = own_xsave() else {
        return Ok(x.to_vec());
    };
    let used = x
        .get(512..520)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .ok_or_else(|| Error::Thaw("the image's FPU state is too short".into()))?;
    if used & !have != 0 {
        return Err(Error::TargetUnfit {
            reason: format!(
                "the frozen FPU/vector state uses CPU features {used:#x} that this CPU lacks (it has {have:#x}); nodes need the same CPU features"
            ),
        });
    }
    let mut v = x.to_vec();
    if size >= 576 && v.len() != size {
        v.resize(size, 0);
    }
    Ok(v)
}

/// An image thawed for `o` runs as `o` and with no more than `o` has: every uid is `o`'s,
/// every gid and group one of `o`'s groups, no hard limit above `o`'s, no oom_score_adj
/// below `o`'s. Fails closed: a limit `o` has no figure for is refused.
pub(crate) fn check_owner(img: &ProcessImage, o: &super::ThawOwner) -> Result<()> {
    let no = |reason: String| Err(Error::NotOwner { reason });
    let c = &img.creds;
    if let Some(u) = c.uid.iter().find(|&&u| u != o.uid) {
        return no(format!("it runs as uid {u}, you are uid {}", o.uid));
    }
    if let Some(g) = c
        .gid
        .iter()
        .chain(&c.groups)
        .find(|g| !o.groups.contains(g))
    {
        return no(format!("it has group {g}, which you do not"));
    }
    for &(r, _, hard) in &img.rlimits {
        match o.hard_limits.iter().find(|l| l.0 == r) {
            Some(&(_, mine)) if hard <= mine => {}
            Some(&(_, mine)) => {
                return no(format!(
                    "its hard limit {r} is {hard}, above yours ({mine})"
                ));
            }
            None => return no(format!("your hard limit {r} is unknown")),
        }
    }
    if img.oom_score_adj < o.oom_score_adj {
        return no(format!(
            "its oom_score_adj is {}, below yours ({})",
            img.oom_score_adj, o.oom_score_adj
        ));
    }
    Ok(())
}

/// The new process's file-system uid and gid are the image's (checked after they were set:
/// setfsuid does not say whether it failed). Fails closed.
pub(super) fn check_fs_creds(pid: i32, c: &Creds) -> Result<()> {
    let st = read_to_string(&format!("/proc/{pid}/status"))
        .map_err(|e| Error::Thaw(format!("cannot read /proc/{pid}/status: {e}")))?;
    let fs = |key: &str| {
        crate::procfs::status_field(&st, key)
            .and_then(|v| v.split_whitespace().nth(3)?.parse::<u32>().ok())
    };
    if fs("Uid") != Some(c.uid[3]) || fs("Gid") != Some(c.gid[3]) {
        return Err(Error::Thaw(format!(
            "the new process's file-system uid/gid did not become {}/{}",
            c.uid[3], c.gid[3]
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xstate_with_unknown_features_is_refused_and_sizes_are_fitted() {
        let Some((_, size)) = own_xsave() else { return };
        let mut x = vec![0u8; 832];
        x[512..520].copy_from_slice(&(1u64 << 62).to_le_bytes());
        let e = fit_xstate(&x).expect_err("bit 62 is no CPU feature");
        assert!(e.to_string().contains("same CPU features"), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::RetryElsewhere, "{e}");
        x[512..520].copy_from_slice(&3u64.to_le_bytes()); // x87 + SSE
        assert_eq!(fit_xstate(&x).unwrap().len(), size);
        assert!(fit_xstate(&[0u8; 100]).is_err());
    }
}
