//! Process attributes: limits, name, cwd, signal handlers, mm fields and exe, session.

use super::inject::{Builder, call};
use super::terr;
use crate::error::{Result, errno};
use crate::image::*;
use libc::pid_t;

/// Resource limits, name, cwd, umask, personality, signal handlers, mm fields, session.
/// `keep_exe`: the process already has the image's executable (a thaw into the home shell;
/// the kernel refuses to change it while the file is mapped).
pub(super) fn set_attributes(
    b: &mut Builder,
    img: &ProcessImage,
    pid: pid_t,
    keep_exe: bool,
) -> Result<()> {
    for &(res, cur, max) in &img.rlimits {
        let l = libc::rlimit64 {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: prlimit64 with a valid pointer.
        if unsafe { libc::prlimit64(pid, res as _, &l, std::ptr::null_mut()) } != 0 {
            // Raising a hard limit needs CAP_SYS_RESOURCE: keep as much as we may.
            let mut now = libc::rlimit64 {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: as above.
            unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut now) };
            let c = libc::rlimit64 {
                rlim_cur: cur.min(now.rlim_max),
                rlim_max: max.min(now.rlim_max),
            };
            // SAFETY: as above.
            if unsafe { libc::prlimit64(pid, res as _, &c, std::ptr::null_mut()) } != 0 {
                return Err(terr(format!("setting resource limit {res}"))(errno()));
            }
            tracing::warn!(
                pid,
                res,
                cur,
                max,
                "resource limit lowered to {}:{} (no CAP_SYS_RESOURCE)",
                c.rlim_cur,
                c.rlim_max
            );
        }
    }
    // the mappings finished (protections, madvise, mlock), now that their contents are in
    let calls = super::maps::after_contents(img);
    b.run(&calls)?;
    // oom_score_adj (lowering it needs CAP_SYS_RESOURCE)
    std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        img.oom_score_adj.to_string(),
    )
    .map_err(terr(format!(
        "setting oom_score_adj to {}",
        img.oom_score_adj
    )))?;
    let mut calls = Vec::new();
    // set either way: the new process inherited thaw's own
    calls.push(call(
        "prctl(PR_SET_THP_DISABLE)",
        libc::SYS_prctl,
        &[
            libc::PR_SET_THP_DISABLE as u64,
            img.thp_disable & 1,
            if img.thp_disable & 1 != 0 {
                img.thp_disable & !1
            } else {
                0
            },
            0,
            0,
        ],
    ));
    calls.push(call(
        "prctl(PR_SET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        &[
            libc::PR_SET_CHILD_SUBREAPER as u64,
            img.child_subreaper as u64,
            0,
            0,
            0,
        ],
    ));
    let mut name = img.comm.as_bytes().to_vec();
    name.truncate(15);
    name.push(0);
    let p = b.data(&name)?;
    calls.push(call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        &[libc::PR_SET_NAME as u64, p, 0, 0, 0],
    ));
    let p = b.cstr(&img.cwd)?;
    calls.push(call(format!("chdir {}", img.cwd), libc::SYS_chdir, &[p]));
    calls.push(call("umask", libc::SYS_umask, &[img.umask as u64]));
    calls.push(call(
        "personality",
        libc::SYS_personality,
        &[img.personality as u64],
    ));
    // signal handlers: the image's, and default for whatever we (and so the child) had set
    let mut acts: Vec<SigAction> = img.sigactions.clone();
    for sig in 1..=64u32 {
        if sig == 9 || sig == 19 || acts.iter().any(|a| a.sig == sig) {
            continue;
        }
        let mut o = [0u64; 4];
        // SAFETY: query only.
        let r =
            unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, 0usize, o.as_mut_ptr(), 8usize) };
        if r == 0 && o != [0; 4] {
            acts.push(SigAction {
                sig,
                ..Default::default()
            });
        }
    }
    for a in &acts {
        let mut s = Vec::with_capacity(32);
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            s.extend_from_slice(&w.to_ne_bytes());
        }
        let p = b.data(&s)?;
        calls.push(call(
            format!("rt_sigaction {}", a.sig),
            libc::SYS_rt_sigaction,
            &[a.sig as u64, p, 0, 8],
        ));
    }
    let mut s = Vec::with_capacity(24);
    s.extend_from_slice(&img.altstack.0.to_ne_bytes());
    s.extend_from_slice(&(img.altstack.1 & !(libc::SS_ONSTACK as u32)).to_ne_bytes());
    s.extend_from_slice(&[0u8; 4]);
    s.extend_from_slice(&img.altstack.2.to_ne_bytes());
    let p = b.data(&s)?;
    calls.push(call("sigaltstack", libc::SYS_sigaltstack, &[p, 0]));
    calls.push(call(
        "set_tid_address",
        libc::SYS_set_tid_address,
        &[img.clear_child_tid],
    ));
    if img.robust_list.0 != 0 {
        calls.push(call(
            "set_robust_list",
            libc::SYS_set_robust_list,
            &[img.robust_list.0, img.robust_list.1],
        ));
    }
    let p = b.cstr(&img.exe)?;
    calls.push(call(
        format!("open {}", img.exe),
        libc::SYS_openat,
        &[
            libc::AT_FDCWD as u64,
            p,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
        ],
    ));
    let exe_fd = *b.run(&calls)?.last().unwrap();

    // mm fields, auxv and exe
    let mut calls = Vec::new();
    let auxv = b.data(&img.auxv)?;
    let mut s = Vec::with_capacity(104);
    for w in img.mm.words().into_iter().chain([auxv]) {
        s.extend_from_slice(&w.to_ne_bytes());
    }
    s.extend_from_slice(&(img.auxv.len() as u32).to_ne_bytes());
    let exe_arg = if keep_exe { u32::MAX } else { exe_fd as u32 };
    s.extend_from_slice(&exe_arg.to_ne_bytes());
    let p = b.data(&s)?;
    calls.push(call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        &[
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            p,
            104,
            0,
        ],
    ));
    calls.push(call("close", libc::SYS_close, &[exe_fd]));
    // session and process group
    if img.session_leader {
        calls.push(call("setsid", libc::SYS_setsid, &[]));
    } else if img.pgrp_leader {
        calls.push(call("setpgid", libc::SYS_setpgid, &[0, 0]));
    }
    let present: Vec<i32> = img.fds.iter().map(|f| f.fd).collect();
    for fd in 0..3 {
        if !present.contains(&fd) {
            calls.push(call("close", libc::SYS_close, &[fd as u64]));
        }
    }
    b.run(&calls)?;
    Ok(())
}
