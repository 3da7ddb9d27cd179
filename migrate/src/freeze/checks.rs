//! Refusal checks run before the process is touched (status, shared memory, memory map).

use super::{ferr, proc_read, unsup};
use crate::error::Result;
use crate::image::*;
use crate::procfs::*;
use crate::sys::*;
use libc::pid_t;

/// Checks done before the process is touched (and again once it is stopped).
/// `multi`: several threads are fine (see [`super::threads`]); otherwise they are refused.
/// `guest`: a seccomp filter is fine (the supervisor's, on a guest; see [`super::seize_guest`]).
pub(super) fn check_status(pid: pid_t, seized: bool, multi: bool, guest: bool) -> Result<String> {
    check_status_in(pid, seized, multi, guest, false)
}

/// [`check_status`]; `tree`: frozen with its descendants ([`super::tree`]), so children are
/// allowed (the tree takes them).
pub(super) fn check_status_in(
    pid: pid_t,
    seized: bool,
    multi: bool,
    guest: bool,
    tree: bool,
) -> Result<String> {
    let st = proc_read(pid, "status")?;
    // every check fails closed: a field that cannot be read or parsed refuses the freeze
    let field = |k: &str| {
        status_field(&st, k).ok_or_else(|| {
            unsup(
                pid,
                format!("/proc/{pid}/status has no {k} line, so it cannot be checked"),
            )
        })
    };
    let threads: u32 = field("Threads")?.parse().map_err(|_| {
        unsup(
            pid,
            format!("cannot parse the thread count in /proc/{pid}/status"),
        )
    })?;
    if threads > 1 && !multi {
        return Err(unsup(
            pid,
            format!(
                "it has {threads} threads (`omnode freeze` carries threads; moving a multi-threaded process is not supported yet)"
            ),
        ));
    }
    field("TracerPid")?;
    field("State")?;
    field("Seccomp")?;
    if let Some(t) = status_field(&st, "TracerPid") {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::gettid() }.to_string();
        if t != "0" && !(seized && t == me) {
            return Err(unsup(
                pid,
                format!("it is already traced by process {t} (a debugger or another omnode)"),
            ));
        }
    }
    if let Some(s) = status_field(&st, "State") {
        if s.starts_with('Z') || s.starts_with('X') {
            return Err(unsup(pid, "it has already exited (zombie)"));
        }
    }
    // A guest's filter is its supervisor's (the image does not carry it): allowed there only.
    if !guest && status_field(&st, "Seccomp").is_some_and(|v| v != "0") {
        return Err(unsup(
            pid,
            "it runs under a seccomp filter (not supported yet)",
        ));
    }
    // POSIX timers are carried; what thaw could not make again is refused here
    super::timers::parse(pid, &proc_read(pid, "timers")?)?;
    let kids = proc_read(pid, &format!("task/{pid}/children"))?;
    let kids: Vec<&str> = kids.split_whitespace().collect();
    if !kids.is_empty() && !tree {
        return Err(unsup(
            pid,
            format!(
                "it has child processes ({}) (child processes are not supported yet)",
                kids.iter()
                    .map(|k| {
                        let comm = read_to_string(&format!("/proc/{k}/comm")).unwrap_or_default();
                        format!("{k} {}", comm.trim())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    Ok(st)
}

/// Refuses shared anonymous memory that another process also maps (its contents would fork).
fn check_shared_anon(pid: pid_t, lines: &[crate::procfs::MapsLine]) -> Result<()> {
    let ours: Vec<u64> = lines
        .iter()
        .filter(|m| {
            m.shared && (m.name.starts_with("/dev/zero") || m.name.starts_with("[anon_shmem:"))
        })
        .map(|m| m.ino)
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    // Fails closed: a process whose map cannot be read might share it, unless it cannot have
    // got it. Such memory passes only by fork, and exec starts a new address space, so when the
    // parent does not map it, it was made in this process (or dropped by the parent after the
    // fork) and a sharer is one forked after this process started.
    let stat_of = |p: pid_t| -> Option<(pid_t, u64)> {
        let f = stat_fields(&read_to_string(&format!("/proc/{p}/stat")).ok()?).ok()?;
        Some((f.get(3)?.parse().ok()?, f.get(21)?.parse().ok()?))
    };
    let (ppid, started) =
        stat_of(pid).ok_or_else(|| unsup(pid, format!("cannot parse /proc/{pid}/stat")))?;
    let holds = |maps: &str| -> Option<bool> {
        Some(parse_maps(maps).ok()?.iter().any(|m| {
            m.shared
                && (m.name.starts_with("/dev/zero") || m.name.starts_with("[anon_shmem:"))
                && ours.contains(&m.ino)
        }))
    };
    let parent_lacks_it = read_to_string(&format!("/proc/{ppid}/maps"))
        .ok()
        .and_then(|m| holds(&m))
        == Some(false);
    let rd = std::fs::read_dir("/proc").map_err(ferr(pid, "listing /proc"))?;
    for e in rd {
        let e = e.map_err(ferr(pid, "listing /proc"))?;
        let Some(other) = e.file_name().to_str().and_then(|s| s.parse::<pid_t>().ok()) else {
            continue;
        };
        if other == pid {
            continue;
        }
        let maps = match read_to_string(&format!("/proc/{other}/maps")) {
            Ok(m) => m,
            // it exited meanwhile
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => continue,
            Err(e) => {
                let older = stat_of(other).is_some_and(|(_, t)| t < started);
                if parent_lacks_it && older {
                    continue;
                }
                return Err(unsup(
                    pid,
                    format!(
                        "it has shared anonymous memory and the memory map of process {other} cannot be read ({e}), so it cannot be shown that no one else maps it"
                    ),
                ));
            }
        };
        let theirs = parse_maps(&maps).map_err(ferr(pid, format!("parsing /proc/{other}/maps")))?;
        if let Some(m) = theirs.iter().find(|m| {
            m.shared
                && (m.name.starts_with("/dev/zero") || m.name.starts_with("[anon_shmem:"))
                && ours.contains(&m.ino)
        }) {
            return Err(unsup(
                pid,
                format!(
                    "its shared anonymous memory ({}, inode {}) is also mapped by process {other} (not supported yet)",
                    m.name, m.ino
                ),
            ));
        }
    }
    Ok(())
}

/// /proc/PID/smaps, read once: its mapping lines (as /proc/PID/maps shows them) and each
/// mapping's VmFlags, so that both describe the same moment.
fn read_smaps(pid: pid_t) -> Result<(String, Vec<String>)> {
    let s = proc_read(pid, "smaps")?;
    let bad = || unsup(pid, format!("cannot parse /proc/{pid}/smaps"));
    let mut maps = String::new();
    let mut flags = Vec::new();
    let mut n = 0usize;
    for l in s.lines() {
        if let Some(f) = l.strip_prefix("VmFlags:") {
            flags.push(f.trim().to_string());
            if flags.len() != n {
                return Err(bad());
            }
        } else if l
            .split(' ')
            .next()
            .and_then(|r| r.split_once('-'))
            .is_some_and(|(a, b)| {
                u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
            })
        {
            maps.push_str(l);
            maps.push('\n');
            n += 1;
        }
    }
    if flags.len() != n {
        return Err(bad());
    }
    Ok((maps, flags))
}

/// The carried bits of one mapping's VmFlags; anything it cannot make again is refused.
fn vm_flags(pid: pid_t, name: &str, flags: &str) -> Result<(u32, bool)> {
    let mut bits = 0;
    let mut growsdown = false;
    for f in flags.split_whitespace() {
        if f == "gd" {
            growsdown = true;
        }
        if let Some(&(_, b)) = vmflag::CARRIED.iter().find(|c| c.0 == f) {
            bits |= b;
        } else if !vmflag::IMPLIED.contains(&f) {
            let what = match f {
                "um" | "uw" | "ui" => "is registered with userfaultfd",
                "ss" => "is a shadow stack",
                "sl" => "is sealed (mseal)",
                "ht" => "is hugetlbfs memory",
                "io" | "pf" | "mm" | "de" => "is a device or driver mapping",
                _ => "has a mapping flag omnode does not know",
            };
            return Err(unsup(
                pid,
                format!("its mapping {name} {what} (VmFlags \"{f}\"; not supported)"),
            ));
        }
    }
    Ok((bits, growsdown))
}

/// The memory map with each mapping's VmFlags, as [`read_smaps`] returns it.
pub(super) type MapView = (String, Vec<String>);

/// The memory map, from /proc/PID/smaps, with every refusal about it; also the view it used.
///
/// smaps walks every page table (about 0.1-0.3 s for a 1 GiB heap here), so once stopped the
/// view read before the stop (`pre`) is used when /proc/PID/maps still shows exactly its
/// mappings; otherwise smaps is read again. (A whole-mapping madvise/mlock between that read
/// and the stop would go unseen: the one window this leaves.)
pub(super) fn classify_vmas(pid: pid_t, pre: Option<MapView>) -> Result<(Vec<Vma>, MapView)> {
    let (maps, smaps) = match pre {
        Some(v) if proc_read(pid, "maps")? == v.0 => v,
        _ => read_smaps(pid)?,
    };
    let lines = parse_maps(&maps).map_err(ferr(pid, "parsing maps"))?;
    check_shared_anon(pid, &lines)?;
    let mut v = Vec::with_capacity(lines.len());
    for (m, vmflags) in lines.into_iter().zip(&smaps) {
        let n = m.name.as_str();
        let mut file = None;
        let kind = match n {
            "[vdso]" => VmaKind::Vdso,
            "[vvar]" => VmaKind::Vvar,
            "[vvar_vclock]" => VmaKind::VvarVclock,
            "[vsyscall]" => VmaKind::Vsyscall,
            _ if m.shared && (n.starts_with("/dev/zero") || n.starts_with("[anon_shmem:")) => {
                VmaKind::SharedAnon
            }
            "" | "[heap]" | "[stack]" => VmaKind::Anon,
            _ if n.starts_with("[anon:") => VmaKind::Anon,
            _ if n.starts_with("/SYSV") => {
                return Err(unsup(
                    pid,
                    format!("it maps a SysV shared memory segment ({n}) (not supported yet)"),
                ));
            }
            _ if n.starts_with("/memfd:") => {
                return Err(unsup(
                    pid,
                    format!("it maps a memfd ({n}) (not supported yet)"),
                ));
            }
            _ if m.shared && n.starts_with("/dev/shm/") => {
                return Err(unsup(
                    pid,
                    format!("it maps POSIX shared memory {n} (not supported yet)"),
                ));
            }
            _ if n.ends_with(" (deleted)") => {
                return Err(unsup(
                    pid,
                    format!("it maps a deleted file ({n}), which cannot be mapped again"),
                ));
            }
            _ if n.starts_with('/') => {
                let id = stat_id(n).map_err(ferr(pid, format!("stat of mapped file {n}")))?;
                if id.ino != m.ino {
                    return Err(unsup(
                        pid,
                        format!("mapped file {n} was replaced on disk since it was mapped"),
                    ));
                }
                file = Some(id);
                VmaKind::File
            }
            _ => {
                return Err(unsup(
                    pid,
                    format!("it has a special mapping {n} (not supported)"),
                ));
            }
        };
        let special = matches!(
            kind,
            VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
        );
        let (flags, growsdown) = if special {
            (0, false)
        } else {
            vm_flags(pid, n, vmflags)?
        };
        v.push(Vma {
            flags,
            start: m.start,
            end: m.end,
            prot: m.prot,
            shared: m.shared,
            growsdown,
            offset: m.offset,
            kind,
            name: m.name,
            file,
        });
    }
    Ok((v, (maps, smaps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_flags_carry_known_bits_and_refuse_the_rest() {
        let (bits, gd) = vm_flags(1, "[stack]", "rd wr mr mw me gd ac dd lo lf").unwrap();
        assert!(gd);
        assert_eq!(
            bits,
            vmflag::MAY_WRITE
                | vmflag::ACCOUNT
                | vmflag::DONTDUMP
                | vmflag::LOCKED
                | vmflag::LOCKONFAULT
        );
        for (f, why) in [
            ("um", "userfaultfd"),
            ("sl", "sealed"),
            ("ss", "shadow stack"),
            ("pf", "device"),
            ("zz", "does not know"),
        ] {
            let e = vm_flags(1, "x", &format!("rd wr {f}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(why) && e.contains(f), "{f}: {e}");
        }
    }
}
