//! POSIX timers of the image made again in the new process (see `freeze::timers`), injected
//! into its main thread once every thread exists: each one under its old id
//! (PR_TIMER_CREATE_RESTORE_IDS, Linux 6.16 and later), on its clock, with its signal, value
//! and notification aimed at the new TID of its thread, then armed for the time that was left.

use super::inject::{Builder, Call, call};
use super::threads::Made;
use crate::error::{Error, Result};
use crate::image::*;
use libc::pid_t;

/// prctl options (include/uapi/linux/prctl.h, Linux 6.16).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;

/// The new TID of `old` (the old PID or an old thread's TID).
fn new_tid(img: &ProcessImage, pid: pid_t, made: &[Made], old: i32) -> Result<pid_t> {
    if old == img.pid {
        return Ok(pid);
    }
    img.threads
        .iter()
        .zip(made)
        .find(|(t, _)| t.tid == old)
        .map(|(_, m)| m.tid)
        .ok_or_else(|| {
            Error::Image(crate::error::ImageError::Corrupt(format!(
                "a POSIX timer signals thread {old}, which is not in the image"
            )))
        })
}

/// Appends the calls that make every timer of `img` again (none when it has none).
pub(super) fn calls(
    b: &mut Builder,
    img: &ProcessImage,
    pid: pid_t,
    made: &[Made],
    calls: &mut Vec<Call>,
) -> Result<()> {
    if img.posix_timers.is_empty() {
        return Ok(());
    }
    calls.push(call(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS) (POSIX timers need Linux 6.16 or later)",
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0],
    ));
    for t in &img.posix_timers {
        // struct sigevent: sigev_value, sigev_signo, sigev_notify, then the target TID
        let mut sev = [0u8; 64];
        sev[0..8].copy_from_slice(&t.value.to_ne_bytes());
        sev[8..12].copy_from_slice(&t.signo.to_ne_bytes());
        sev[12..16].copy_from_slice(&t.notify.to_ne_bytes());
        if t.notify & libc::SIGEV_THREAD_ID != 0 {
            let tid = new_tid(img, pid, made, t.target)?;
            sev[16..20].copy_from_slice(&tid.to_ne_bytes());
        }
        let sev = b.data(&sev)?;
        let id = b.data(&t.id.to_ne_bytes())?;
        calls.push(call(
            format!("timer_create of POSIX timer {}", t.id),
            libc::SYS_timer_create,
            &[t.clock as u64, sev, id],
        ));
        // A periodic timer that has just expired shows no time left while its signal is
        // pending (the kernel re-arms it when the signal is taken): one interval from now.
        let left = if t.left == (0, 0) { t.interval } else { t.left };
        if left != (0, 0) {
            let mut its = Vec::with_capacity(32);
            for w in [t.interval.0, t.interval.1, left.0, left.1] {
                its.extend_from_slice(&w.to_ne_bytes());
            }
            let its = b.data(&its)?;
            calls.push(call(
                format!("timer_settime of POSIX timer {}", t.id),
                libc::SYS_timer_settime,
                &[t.id as u64, 0, its, 0],
            ));
        }
    }
    calls.push(call(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS, off)",
        libc::SYS_prctl,
        &[PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0],
    ));
    Ok(())
}
