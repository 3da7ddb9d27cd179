//! Refusal checks run before the process is touched (status, shared memory, memory map).

use super::{ferr, proc_read, unsup};
use crate::error::Result;
use crate::image::*;
use crate::procfs::*;
use crate::sys::*;
use libc::pid_t;

/// Checks done before the process is touched (and again once it is stopped).
pub(super) fn check_status(pid: pid_t, seized: bool) -> Result<String> {
    let st = proc_read(pid, "status")?;
    let threads: u32 = status_field(&st, "Threads")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if threads > 1 {
        return Err(unsup(
            pid,
            format!("it has {threads} threads (threads are not supported yet)"),
        ));
    }
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
    if status_field(&st, "Seccomp").is_some_and(|v| v != "0") {
        return Err(unsup(
            pid,
            "it runs under a seccomp filter (not supported yet)",
        ));
    }
    let timers = read_to_string(&format!("/proc/{pid}/timers")).unwrap_or_default();
    let n = timers.lines().filter(|l| l.starts_with("ID:")).count();
    if n > 0 {
        return Err(unsup(
            pid,
            format!("it has {n} POSIX timers (timer_create; not supported yet)"),
        ));
    }
    let kids = read_to_string(&format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let kids: Vec<&str> = kids.split_whitespace().collect();
    if !kids.is_empty() {
        return Err(unsup(
            pid,
            format!(
                "it has child processes ({}) (child processes are not supported yet)",
                kids.join(", ")
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
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Ok(());
    };
    for e in rd.flatten() {
        let Some(other) = e.file_name().to_str().and_then(|s| s.parse::<pid_t>().ok()) else {
            continue;
        };
        if other == pid {
            continue;
        }
        let Ok(maps) = read_to_string(&format!("/proc/{other}/maps")) else {
            continue;
        };
        let Ok(theirs) = parse_maps(&maps) else {
            continue;
        };
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

pub(super) fn classify_vmas(pid: pid_t, maps: &str) -> Result<Vec<Vma>> {
    let lines = parse_maps(maps).map_err(ferr(pid, "parsing maps"))?;
    check_shared_anon(pid, &lines)?;
    let mut v = Vec::with_capacity(lines.len());
    for m in lines {
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
        v.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot,
            shared: m.shared,
            growsdown: n == "[stack]",
            offset: m.offset,
            kind,
            name: m.name,
            file,
        });
    }
    Ok(v)
}
