//! Freeze: stop a process, write its image to a stream, end it (or let it run on).

use crate::error::{Error, Result};
use crate::image::*;
use crate::procfs::*;
use crate::sys::*;
use libc::pid_t;
use std::io::{self, Write};
use std::time::{Duration, Instant};

mod checks;
mod fds;
mod memory;
mod seized;
mod state;

use checks::{check_status, classify_vmas};
use fds::{collect_fds, find_shared};
use memory::dump_pages;
use seized::Seized;
pub(crate) use seized::restart_fixup;
use state::{find_gadget, parse_limits, sigmask_field};

/// Options of [`freeze`].
#[derive(Debug, Clone, Default)]
pub struct FreezeOptions {
    /// Checkpoint only: the process runs on after its image is written.
    pub leave_running: bool,
}

/// What a freeze did.
#[derive(Debug, Clone)]
pub struct FreezeReport {
    pub pid: i32,
    /// Bytes written to the stream.
    pub image_bytes: u64,
    /// Memory contents shipped.
    pub page_bytes: u64,
    pub vmas: usize,
    /// How long the process was stopped.
    pub frozen: Duration,
    /// Time spent copying memory into the stream.
    pub memory_time: Duration,
}

fn unsup(pid: pid_t, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        pid,
        reason: reason.into(),
    }
}
fn ferr(pid: pid_t, what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Freeze {
        pid,
        what: what.into(),
        source,
    }
}

fn proc_read(pid: pid_t, file: &str) -> Result<String> {
    read_to_string(&format!("/proc/{pid}/{file}")).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NoProcess { pid }
        } else {
            ferr(pid, format!("reading /proc/{pid}/{file}"))(e)
        }
    })
}

/// Freezes process `pid` into `out`. Without `leave_running` the process is killed once the whole
/// image has been written and flushed. On any error the process is left running, untouched.
pub fn freeze<W: Write>(pid: i32, out: W, opts: &FreezeOptions) -> Result<FreezeReport> {
    // SAFETY: getpid has no preconditions.
    if pid <= 1 || pid == unsafe { libc::getpid() } {
        return Err(unsup(pid, "omnode cannot freeze itself or init"));
    }
    // --- checks before touching anything
    check_status(pid, false)?;
    classify_vmas(pid, &proc_read(pid, "maps")?)?;
    collect_fds(pid)?;

    let was_stopped = proc_read(pid, "status")
        .map(|st| status_field(&st, "State").is_some_and(|s| s.starts_with('T')))
        .unwrap_or(false);
    // --- stop it
    if let Err(e) = ptrace(
        libc::PTRACE_SEIZE,
        pid,
        0,
        libc::PTRACE_O_TRACESYSGOOD as usize,
    ) {
        return Err(match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoProcess { pid },
            Some(libc::EPERM) => unsup(
                pid,
                "not permitted to trace it (already traced, or not root?)",
            ),
            _ => ferr(pid, "PTRACE_SEIZE")(e),
        });
    }
    let stop_start = Instant::now();
    let mut g = Seized {
        pid,
        orig_regs: None,
        orig_mask: None,
        stashed: Vec::new(),
        active: true,
    };
    ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0).map_err(ferr(pid, "PTRACE_INTERRUPT"))?;
    loop {
        let st = wait(pid).map_err(ferr(pid, "waiting for the process to stop"))?;
        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
            g.active = false;
            return Err(Error::NoProcess { pid });
        }
        if libc::WIFSTOPPED(st) {
            if st >> 16 == libc::PTRACE_EVENT_STOP {
                break;
            }
            let mut info = vec![0u8; 128];
            ptrace(libc::PTRACE_GETSIGINFO, pid, 0, info.as_mut_ptr() as usize)
                .map_err(ferr(pid, "PTRACE_GETSIGINFO"))?;
            g.stashed.push(info);
            ptrace(libc::PTRACE_CONT, pid, 0, 0).map_err(ferr(pid, "PTRACE_CONT"))?;
        }
    }

    // --- authoritative checks, now that it cannot change
    let status = check_status(pid, true)?;
    let maps = proc_read(pid, "maps")?;
    let vmas = classify_vmas(pid, &maps)?;
    let mut fds = collect_fds(pid)?;
    find_shared(pid, &mut fds);

    let regs = getregs(pid).map_err(ferr(pid, "PTRACE_GETREGS"))?;
    let xstate = get_xstate(pid).map_err(ferr(pid, "reading the xsave area"))?;
    let sigmask = get_sigmask(pid).map_err(ferr(pid, "PTRACE_GETSIGMASK"))?;
    let rseq = get_rseq(pid).map_err(ferr(pid, "PTRACE_GET_RSEQ_CONFIGURATION"))?;
    let mut pending = Vec::new();
    for shared in [false, true] {
        for info in peek_siginfo(pid, shared).map_err(ferr(pid, "PTRACE_PEEKSIGINFO"))? {
            pending.push(PendingSignal { shared, info });
        }
    }

    let stat = stat_fields(&proc_read(pid, "stat")?).map_err(ferr(pid, "parsing stat"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(ferr(pid, "reading its executable"))?
        .to_string_lossy()
        .into_owned();
    if exe.ends_with(" (deleted)") {
        return Err(unsup(pid, format!("its executable was deleted ({exe})")));
    }
    let exe_id = stat_id(&exe).map_err(ferr(pid, format!("stat of {exe}")))?;
    let exe_now =
        stat_id(&format!("/proc/{pid}/exe")).map_err(ferr(pid, "stat of its executable"))?;
    if exe_now.ino != exe_id.ino || exe_now.dev != exe_id.dev {
        return Err(unsup(
            pid,
            format!("its executable {exe} was replaced on disk"),
        ));
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map_err(ferr(pid, "reading its cwd"))?
        .to_string_lossy()
        .into_owned();
    if cwd.ends_with(" (deleted)") {
        return Err(unsup(
            pid,
            format!("its working directory was deleted ({cwd})"),
        ));
    }
    let auxv = std::fs::read(format!("/proc/{pid}/auxv")).map_err(ferr(pid, "reading auxv"))?;
    let personality = u32::from_str_radix(proc_read(pid, "personality")?.trim(), 16).unwrap_or(0);
    let comm = proc_read(pid, "comm")?.trim_end_matches('\n').to_string();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let boot_id = read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let ids = |k: &str| -> [u32; 4] {
        let mut a = [0u32; 4];
        for (i, v) in status_field(&status, k)
            .unwrap_or("")
            .split_whitespace()
            .take(4)
            .enumerate()
        {
            a[i] = v.parse().unwrap_or(0);
        }
        a
    };
    let creds = Creds {
        uid: ids("Uid"),
        gid: ids("Gid"),
        groups: status_field(&status, "Groups")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect(),
    };
    let umask = status_field(&status, "Umask")
        .and_then(|v| u32::from_str_radix(v, 8).ok())
        .unwrap_or(0o022);
    let no_new_privs = status_field(&status, "NoNewPrivs").is_some_and(|v| v != "0");
    // /proc/PID/limits rather than prlimit(): that needs CAP_SYS_RESOURCE for other users' processes
    let rlimits = parse_limits(&proc_read(pid, "limits")?);
    let mut robust = (0u64, 0u64);
    // SAFETY: get_robust_list writes two words.
    unsafe { libc::syscall(libc::SYS_get_robust_list, pid, &mut robust.0, &mut robust.1) };

    // --- injected queries
    let gadget = find_gadget(pid, &vmas)
        .ok_or_else(|| unsup(pid, "no syscall instruction found in its code"))?;
    g.orig_regs = Some(regs);
    g.orig_mask = Some(sigmask);
    set_sigmask(pid, !0u64).map_err(ferr(pid, "PTRACE_SETSIGMASK"))?;
    let mut t = Tracee {
        pid,
        gadget,
        base: regs,
        stashed: Vec::new(),
        int3: false,
    };
    let inj = |e: io::Error| ferr(pid, "injected system call")(e);
    let prw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    // scratch area: [0, 2048) sigactions, 2048 sigaltstack, 2080 tid address, 2304 results,
    // 4096.. code of the batch
    const SCRATCH: u64 = 16384;
    let scratch = t
        .syscall(
            libc::SYS_mmap,
            &[
                0,
                SCRATCH,
                prw | libc::PROT_EXEC as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .map_err(inj)?;
    let res: Result<_> = (|| {
        let want = sigmask_field(&status, "SigCgt") | sigmask_field(&status, "SigIgn");
        let sigs: Vec<u32> = (1..=64u32)
            .filter(|&sig| want & (1u64 << (sig - 1)) != 0 && sig != 9 && sig != 19)
            .collect();
        let mut calls = vec![
            (libc::SYS_brk, [0; 6]),
            (libc::SYS_sigaltstack, [0, scratch + 2048, 0, 0, 0, 0]),
            (
                libc::SYS_prctl,
                [libc::PR_GET_TID_ADDRESS as u64, scratch + 2080, 0, 0, 0, 0],
            ),
        ];
        for which in 0..3u64 {
            calls.push((
                libc::SYS_getitimer,
                [which, scratch + 2560 + 32 * which, 0, 0, 0, 0],
            ));
        }
        for &sig in &sigs {
            calls.push((
                libc::SYS_rt_sigaction,
                [sig as u64, 0, scratch + 32 * (sig as u64 - 1), 8, 0, 0],
            ));
        }
        // all of it in one ptrace stop
        let r = t
            .batch(scratch + 4096, scratch + 2304, &calls)
            .map_err(inj)?;
        if let Some(e) = r[1..].iter().find(|&&v| (-4095..0).contains(&v)) {
            return Err(inj(crate::error::from_neg(*e)));
        }
        let mut b = vec![0u8; 2656];
        read_mem(pid, &mut b, &[(scratch, 2656)]).map_err(ferr(pid, "reading injected results"))?;
        let w = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        let acts = sigs
            .iter()
            .map(|&sig| {
                let o = 32 * (sig as usize - 1);
                SigAction {
                    sig,
                    handler: w(o),
                    flags: w(o + 8),
                    restorer: w(o + 16),
                    mask: w(o + 24),
                }
            })
            .collect::<Vec<_>>();
        let alt = (
            w(2048),
            u32::from_ne_bytes(b[2056..2060].try_into().unwrap()),
            w(2064),
        );
        let mut itimers = [[0u64; 4]; 3];
        for (k, t) in itimers.iter_mut().enumerate() {
            for (j, v) in t.iter_mut().enumerate() {
                *v = w(2560 + 32 * k + 8 * j);
            }
        }
        Ok((r[0] as u64, acts, alt, w(2080), itimers))
    })();
    let unmap = t
        .syscall_exit_stop(libc::SYS_munmap, &[scratch, SCRATCH])
        .map_err(inj)
        .and_then(|r| {
            if r == 0 {
                Ok(())
            } else {
                Err(inj(crate::error::from_neg(r)))
            }
        });
    let (brk, sigactions, altstack, ctid, itimers) = res?;
    unmap?;
    g.stashed.append(&mut t.stashed);
    // Put registers and mask back now, not after the (possibly long) memory copy: should omnode
    // die from here on, the kernel detaches and the process simply runs on.
    let mut back = regs;
    restart_fixup(&mut back, false);
    setregs(pid, &back).map_err(ferr(pid, "PTRACE_SETREGS"))?;
    g.orig_regs = None;
    set_sigmask(pid, sigmask).map_err(ferr(pid, "PTRACE_SETSIGMASK"))?;
    g.orig_mask = None;

    let mut img_regs = regs;
    restart_fixup(&mut img_regs, true);
    let f = |n| field_u64(&stat, n);
    let pgrp = f(5) as i32;
    let sid = f(6) as i32;
    for info in &g.stashed {
        pending.push(PendingSignal {
            shared: false,
            info: info.clone(),
        });
    }
    let img = ProcessImage {
        pid,
        boot_id,
        comm,
        cmdline,
        exe,
        exe_id,
        regs: regs_to_vec(&img_regs),
        xstate,
        sigmask,
        rseq,
        mm: MmFields {
            start_code: f(26),
            end_code: f(27),
            start_data: f(45),
            end_data: f(46),
            start_brk: f(47),
            brk,
            start_stack: f(28),
            arg_start: f(48),
            arg_end: f(49),
            env_start: f(50),
            env_end: f(51),
        },
        auxv,
        personality,
        rlimits,
        umask,
        cwd,
        creds,
        no_new_privs,
        session_leader: sid == pid,
        pgrp_leader: pgrp == pid,
        stopped: was_stopped,
        sigactions,
        altstack,
        pending,
        clear_child_tid: ctid,
        robust_list: robust,
        itimers,
        vmas,
        fds,
    };

    // --- stream it
    let mem_start = Instant::now();
    let sio = |e: io::Error| Error::Stream(e);
    let mut sw = SectionWriter::new(io::BufWriter::with_capacity(1 << 16, out)).map_err(sio)?;
    sw.section(TAG_PROCESS, &[&img.encode()]).map_err(sio)?;
    let (page_bytes, sections) = dump_pages(pid, &img.vmas, &mut sw)?;
    let mut end = [0u8; 16];
    end[..8].copy_from_slice(&page_bytes.to_le_bytes());
    end[8..].copy_from_slice(&sections.to_le_bytes());
    sw.section(TAG_END, &[&end]).map_err(sio)?;
    sw.w.flush().map_err(sio)?;
    let memory_time = mem_start.elapsed();

    if opts.leave_running {
        g.release();
    } else {
        g.kill();
    }
    let frozen = stop_start.elapsed();
    Ok(FreezeReport {
        pid,
        image_bytes: sw.bytes,
        page_bytes,
        vmas: img.vmas.len(),
        frozen,
        memory_time,
    })
}
