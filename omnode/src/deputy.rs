//! The deputy: the home end of a moved process's forwarded calls.
//!
//! Owns: the worker thread that runs forwarded calls on the real fds (its `pidfd_getfd` copies
//! of the parked home process's fds) in the moved process's identity, and the carrying-out of
//! `migration::forward::DeputyFwd`'s actions.
//! Must not know: the migration protocol (`crate::migrator` drives it) or how calls are
//! classified on the remote (`migration::remote`).

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::mpsc;

use bytes::Bytes;
use discovery::NodeId;
use migration::forward::{DeputyAction, DeputyFwd};
use migration::protocol::MigId;
use runtime::transport::Lane;

use crate::migrator::{In, Migrator, Wire};

/// A forwarded call for the deputy's worker thread.
pub(crate) struct Job {
    tid: migration::forward::Tid,
    seq: migration::forward::Seq,
    call: migration::forward::Call,
}

/// The deputy's worker: runs forwarded calls on the real fds, one at a time, so a call that
/// blocks at home (a read of an empty pipe) never stops the migration thread's heartbeats,
/// signal forwarding or exit handling.
///
/// Path calls run as the moved process would run them at home: this thread takes the
/// process's filesystem uid, gid and groups (per thread: raw setfsuid/setfsgid/setgroups), and
/// relative paths resolve against the process's cwd (its parked home shell keeps it). If that
/// identity cannot be taken, every path call is refused with EACCES (never run as root).
pub(crate) fn worker(
    pid: i32,
    mut fds: HashMap<i32, OwnedFd>,
    jobs: mpsc::Receiver<Job>,
    done: mpsc::Sender<In>,
) {
    let cwd = match take_identity(pid) {
        Ok(cwd) => Some(cwd),
        Err(e) => {
            tracing::error!(pid, "deputy: {e}; path calls of this process are refused");
            None
        }
    };
    while let Ok(Job { tid, seq, call }) = jobs.recv() {
        let reply = match (&call, &cwd) {
            (migration::forward::Call::Openat { .. }, None) => {
                migration::forward::Reply::errno(libc::EACCES)
            }
            _ => {
                use std::os::fd::AsFd;
                migration::standin::execute_at(&mut fds, cwd.as_ref().map(|c| c.as_fd()), &call)
            }
        };
        crate::metrics::bump(&crate::metrics::COUNTERS.forwarded_calls);
        if done.send(In::Done { tid, seq, reply }).is_err() {
            return;
        }
    }
}

/// Makes the calling thread act on files as process `pid` does (its filesystem uid and gid
/// and its supplementary groups) and returns its cwd as an `O_PATH` directory fd.
fn take_identity(pid: i32) -> Result<OwnedFd, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let field = |key: &str| -> Result<Vec<u32>, String> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .ok_or_else(|| format!("/proc/{pid}/status has no {key}"))?;
        line.split_whitespace()
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("/proc/{pid}/status: bad {key} {line}"))
            })
            .collect()
    };
    let (uids, gids, groups) = (field("Uid:")?, field("Gid:")?, field("Groups:")?);
    let (Some(&fsuid), Some(&fsgid)) = (uids.get(3), gids.get(3)) else {
        return Err(format!("/proc/{pid}/status: no filesystem uid or gid"));
    };
    let cwd = std::ffi::CString::new(format!("/proc/{pid}/cwd")).expect("no NUL");
    // SAFETY: open of a NUL-terminated path; on success a fresh fd we own.
    let fd = unsafe {
        libc::open(
            cwd.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot open the cwd of {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fresh fd.
    let cwd = unsafe { OwnedFd::from_raw_fd(fd) };
    let groups: Vec<libc::gid_t> = groups;
    // SAFETY: raw syscalls act on this thread only (glibc's wrappers would change every
    // thread of the daemon); the groups pointer and length describe a live Vec.
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        libc::syscall(libc::SYS_setfsgid, fsgid);
        libc::syscall(libc::SYS_setfsuid, fsuid);
        // setfsuid/setfsgid report the previous value, never an error: ask again to check
        let now_gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let now_uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if now_uid != fsuid || now_gid != fsgid {
            return Err(format!(
                "cannot act as uid {fsuid} gid {fsgid} (still {now_uid}/{now_gid})"
            ));
        }
    }
    Ok(cwd)
}


/// The deputy: carries out the forwarding machine's actions; calls go to the worker.
pub(crate) fn deputy(
    m: &Migrator,
    to: NodeId,
    mig: MigId,
    dep: &mut DeputyFwd,
    jobs: Option<&mpsc::Sender<Job>>,
    acts: Vec<DeputyAction>,
) {
    for a in acts {
        match a {
            DeputyAction::Send(msg) => {
                m.send(to, Lane::Control, &Wire::Fwd { mig, msg }, Bytes::new());
            }
            DeputyAction::Execute { tid, seq, call } => {
                let sent = jobs.is_some_and(|j| j.send(Job { tid, seq, call }).is_ok());
                if !sent {
                    let acts = dep.on_done(tid, seq, migration::forward::Reply::errno(libc::EIO));
                    for a in acts {
                        if let DeputyAction::Send(msg) = a {
                            m.send(to, Lane::Control, &Wire::Fwd { mig, msg }, Bytes::new());
                        }
                    }
                }
            }
            // Not yet: a call blocked at home is not interrupted (its reply still comes).
            DeputyAction::Interrupt { .. } => {}
        }
    }
}
