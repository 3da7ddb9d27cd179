//! Thaw: rebuild a process from an image stream, by system calls injected into a fresh child.

use crate::error::{Error, ImageError, Result};
use crate::image::*;
use crate::procfs::parse_maps;
use crate::sys::*;
use std::io::{self, Read};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

mod attrs;
mod checks;
mod fds;
mod finish;
mod inject;
mod maps;
mod memory;
mod spawn;

use checks::{check_file, fit_xstate, own_vdso_gadget, special_areas};
use inject::{Builder, GADGET_AT, call};
use maps::find_gap;
use spawn::{ChildGuard, spawn};

/// Options of [`thaw`].
#[derive(Debug, Clone, Default)]
pub struct ThawOptions {
    /// Recreate the process with its old PID (clone3 set_tid, needs root); falls back to a new
    /// PID when the old one stays taken.
    pub same_pid: bool,
    /// How long to wait for the old PID to be reaped (default 5 s).
    pub same_pid_wait: Option<Duration>,
    /// fds of the calling process to use as the thawed process's stdin/stdout/stderr where the
    /// frozen process had a terminal or pipe there. `None`: the caller's own fd 0/1/2.
    pub stdin: Option<RawFd>,
    pub stdout: Option<RawFd>,
    pub stderr: Option<RawFd>,
}

/// What a thaw did.
#[derive(Debug, Clone)]
pub struct Thawed {
    pub pid: i32,
    pub old_pid: i32,
    pub page_bytes: u64,
    /// Set when --same-pid was asked for but the old PID could not be had.
    pub pid_note: Option<String>,
    pub elapsed: Duration,
    /// Time spent streaming memory contents into the process.
    pub memory_time: Duration,
}

const TRAMP: u64 = 256 * 1024;
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

fn terr(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::ThawSys {
        what: what.into(),
        source,
    }
}

/// Rebuilds the process stored in `input` as a new child of the caller and lets it run.
pub fn thaw<R: Read>(input: R, opts: &ThawOptions) -> Result<Thawed> {
    let t0 = Instant::now();
    let mut sr = SectionReader::new(input)?;
    let mut buf = Vec::new();
    if sr.next(&mut buf)? != TAG_PROCESS {
        return Err(ImageError::Corrupt("first section is not the process section".into()).into());
    }
    let img = ProcessImage::decode(&buf)?;

    // --- checks before creating anything
    let boot_id = read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let same_boot = !img.boot_id.is_empty() && boot_id.trim() == img.boot_id;
    check_file(&img.exe, &img.exe_id, same_boot)?;
    for v in &img.vmas {
        if let (VmaKind::File, Some(id)) = (v.kind, &v.file) {
            check_file(&v.name, id, same_boot)?;
        }
    }
    let self_maps =
        parse_maps(&read_to_string("/proc/self/maps").map_err(terr("reading /proc/self/maps"))?)
            .map_err(terr("parsing /proc/self/maps"))?;
    let own: Vec<(VmaKind, u64, u64)> = self_maps
        .iter()
        .filter_map(|m| {
            let k = match m.name.as_str() {
                "[vvar]" => VmaKind::Vvar,
                "[vvar_vclock]" => VmaKind::VvarVclock,
                "[vdso]" => VmaKind::Vdso,
                _ => return None,
            };
            Some((k, m.start, m.end))
        })
        .collect();
    let theirs = special_areas(&img.vmas);
    if !theirs.is_empty() {
        let sizes =
            |v: &[(VmaKind, u64, u64)]| v.iter().map(|x| (x.0, x.2 - x.1)).collect::<Vec<_>>();
        if sizes(&own) != sizes(&theirs) {
            return Err(Error::Thaw(
                "the vDSO layout of this kernel differs from the one the process was frozen on"
                    .into(),
            ));
        }
    }
    let xstate = fit_xstate(&img.xstate)?;
    let gadget =
        own_vdso_gadget(&self_maps).ok_or_else(|| Error::Thaw("no vDSO in this process".into()))?;

    // --- the new process
    let fds = [
        opts.stdin.unwrap_or(-1),
        opts.stdout.unwrap_or(-1),
        opts.stderr.unwrap_or(-1),
    ];
    let mut pid_note = None;
    let pid = if opts.same_pid {
        let deadline = Instant::now() + opts.same_pid_wait.unwrap_or(Duration::from_secs(5));
        loop {
            match spawn(&fds, Some(img.pid)) {
                Ok(p) => break p,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    let st = read_to_string(&format!("/proc/{}/stat", img.pid)).unwrap_or_default();
                    let zombie = st
                        .rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
                    if (st.is_empty() || zombie) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    pid_note = Some(format!(
                        "PID {} is taken; the process got a new PID",
                        img.pid
                    ));
                    break spawn(&fds, None).map_err(terr("clone3"))?;
                }
                Err(e) => return Err(terr(format!("clone3 with PID {}", img.pid))(e)),
            }
        }
    } else {
        spawn(&fds, None).map_err(terr("clone3"))?
    };
    let mut guard = ChildGuard { pid, armed: true };
    let st = wait(pid).map_err(terr("waiting for the new process"))?;
    if !libc::WIFSTOPPED(st) {
        return Err(Error::Thaw(
            "the new process did not stop as expected".into(),
        ));
    }
    ptrace(
        libc::PTRACE_SETOPTIONS,
        pid,
        0,
        (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL) as usize,
    )
    .map_err(terr("PTRACE_SETOPTIONS"))?;
    let base = getregs(pid).map_err(terr("PTRACE_GETREGS"))?;
    let mut b = Builder {
        t: Tracee {
            pid,
            gadget,
            base,
            stashed: Vec::new(),
            int3: false,
        },
        tramp: 0,
        data_off: 0,
    };

    // trampoline + scratch area, free in both layouts
    let child_maps =
        parse_maps(&read_to_string(&format!("/proc/{pid}/maps")).map_err(terr("reading maps"))?)
            .map_err(terr("parsing maps"))?;
    let mut busy: Vec<(u64, u64)> = child_maps.iter().map(|m| (m.start, m.end)).collect();
    busy.extend(img.vmas.iter().map(|v| (v.start, v.end)));
    let tramp = find_gap(&mut busy, TRAMP, 0x1000_0000)
        .ok_or_else(|| Error::Thaw("no free address range".into()))?;
    let rwx = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let r = b.sys(
        "mmap of the trampoline",
        libc::SYS_mmap,
        &[
            tramp,
            TRAMP,
            rwx,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64,
            u64::MAX,
            0,
        ],
    )?;
    if r != tramp {
        return Err(Error::Thaw("trampoline landed at the wrong address".into()));
    }
    write_mem(pid, &[0x0f, 0x05, 0xcc], &[(tramp + GADGET_AT, 3)])
        .map_err(terr("writing the trampoline"))?;
    b.t.gadget = tramp + GADGET_AT;
    b.t.int3 = true;
    b.tramp = tramp;

    // drop what the child inherited from us: rseq, fds, every mapping but ours and the vdso
    let mut calls = Vec::new();
    if let Some((p, l, s)) = get_rseq(pid).map_err(terr("PTRACE_GET_RSEQ_CONFIGURATION"))? {
        calls.push(call(
            "rseq unregister",
            libc::SYS_rseq,
            &[p, l as u64, 1, s as u64],
        ));
    }
    calls.push(call(
        "close_range",
        libc::SYS_close_range,
        &[3, u32::MAX as u64, 0],
    ));
    let mut keep: Vec<(u64, u64)> = vec![(tramp, tramp + TRAMP)];
    keep.extend(own.iter().map(|x| (x.1, x.2)));
    keep.sort();
    let mut cur = 0u64;
    for &(s, e) in keep.iter().chain(std::iter::once(&(TASK_SIZE, TASK_SIZE))) {
        if s > cur {
            calls.push(call("munmap", libc::SYS_munmap, &[cur, s - cur]));
        }
        cur = cur.max(e);
    }
    // vvar, vvar_vclock and vdso move together to their old addresses
    if theirs.is_empty() {
        for &(_, s, e) in &own {
            calls.push(call("munmap of the vdso", libc::SYS_munmap, &[s, e - s]));
        }
    } else if own.iter().map(|x| x.1).ne(theirs.iter().map(|x| x.1)) {
        let total: u64 = own.iter().map(|x| x.2 - x.1).sum();
        let mut busy2 = busy.clone();
        busy2.push((tramp, tramp + TRAMP));
        let tmp = find_gap(&mut busy2, total, 0x2000_0000)
            .ok_or_else(|| Error::Thaw("no free address range".into()))?;
        let mv = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        let mut off = 0;
        let mut staged = Vec::new();
        for &(_, s, e) in &own {
            calls.push(call(
                "mremap of the vdso",
                libc::SYS_mremap,
                &[s, e - s, e - s, mv, tmp + off],
            ));
            staged.push((tmp + off, e - s));
            off += e - s;
        }
        for (&(a, l), &(_, dst, _)) in staged.iter().zip(theirs.iter()) {
            calls.push(call(
                "mremap of the vdso",
                libc::SYS_mremap,
                &[a, l, l, mv, dst],
            ));
        }
    }
    b.run(&calls)?;

    // --- the mappings: open each file once, map everything, close the files
    maps::map_vmas(&mut b, &img)?;

    // --- memory contents, streamed
    let mem_t = Instant::now();
    let (total, memf) = memory::write_contents(&mut sr, &mut buf, pid, &img)?;
    let memory_time = mem_t.elapsed();

    memory::patch_cached_tid(&memf, pid, &img)?;

    // --- process attributes
    attrs::set_attributes(&mut b, &img, pid)?;

    fds::restore_fds(&mut b, &img)?;

    finish::finish(&mut b, &img, pid, tramp, xstate)?;
    guard.armed = false;
    Ok(Thawed {
        pid,
        old_pid: img.pid,
        page_bytes: total,
        pid_note,
        elapsed: t0.elapsed(),
        memory_time,
    })
}
