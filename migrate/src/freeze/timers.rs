//! POSIX timers (timer_create) of a process being frozen: each one's id, clock, notification
//! (signal, value, target thread) from /proc/PID/timers, and its interval and time left by an
//! injected `timer_gettime`. Thaw makes them again under the same ids (see
//! `thaw::timers`).
//!
//! Refused (fails closed): a line of /proc/PID/timers it cannot parse, a timer on a CPU-time
//! clock (the clock of a new process or thread starts again at zero) or on a clock it does not
//! know, a timer whose target thread is not one of the process's threads, and any timer of a
//! process that moves to another node (the home shell would keep it armed).
//! Not carried: the overrun count of a timer whose signal is pending (it starts again at 0).

use super::{ferr, unsup};
use crate::error::Result;
use crate::image::PosixTimer;
use crate::sys::*;
use libc::pid_t;

/// Clocks a timer may use: REALTIME, MONOTONIC, BOOTTIME, REALTIME_ALARM, BOOTTIME_ALARM, TAI.
const CLOCKS: [i32; 6] = [0, 1, 7, 8, 9, 11];

/// One entry of /proc/PID/timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ProcTimer {
    pub(super) id: i32,
    pub(super) signo: i32,
    pub(super) value: u64,
    /// SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD, with SIGEV_THREAD_ID when `tid`.
    pub(super) notify: i32,
    pub(super) target: pid_t,
    pub(super) clock: i32,
}

/// Parses /proc/PID/timers; refuses what thaw could not make again.
pub(super) fn parse(pid: pid_t, text: &str) -> Result<Vec<ProcTimer>> {
    let bad = |l: &str| {
        unsup(
            pid,
            format!(
                "cannot parse /proc/{pid}/timers (at {l:?}), so its POSIX timers cannot be checked"
            ),
        )
    };
    let mut out = Vec::new();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(l) = lines.next() {
        let mut next = |key: &str| -> Result<&str> {
            let l = lines.next().ok_or_else(|| bad("its end"))?;
            l.strip_prefix(key).map(str::trim).ok_or_else(|| bad(l))
        };
        let id: i32 = l
            .strip_prefix("ID:")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| bad(l))?;
        let sig = next("signal:")?;
        let (signo, value) = sig.split_once('/').ok_or_else(|| bad(sig))?;
        let signo: i32 = signo.parse().map_err(|_| bad(sig))?;
        let value = u64::from_str_radix(value, 16).map_err(|_| bad(sig))?;
        let n = next("notify:")?;
        let (how, whom) = n.split_once('/').ok_or_else(|| bad(n))?;
        let mut notify = match how {
            "signal" => libc::SIGEV_SIGNAL,
            "none" => libc::SIGEV_NONE,
            "thread" => libc::SIGEV_THREAD,
            _ => return Err(bad(n)),
        };
        let (kind, target) = whom.split_once('.').ok_or_else(|| bad(n))?;
        let target: pid_t = target.parse().map_err(|_| bad(n))?;
        match kind {
            "tid" => notify |= libc::SIGEV_THREAD_ID,
            "pid" => {}
            _ => return Err(bad(n)),
        }
        let c = next("ClockID:")?;
        let clock: i32 = c.parse().map_err(|_| bad(c))?;
        if !CLOCKS.contains(&clock) {
            return Err(unsup(
                pid,
                format!(
                    "its POSIX timer {id} runs on clock {clock} (a CPU-time or unknown clock, which starts again in a new process; not supported)"
                ),
            ));
        }
        if !(1..=64).contains(&signo) && notify & !libc::SIGEV_THREAD_ID != libc::SIGEV_NONE {
            return Err(bad(sig));
        }
        out.push(ProcTimer {
            id,
            signo,
            value,
            notify,
            target,
            clock,
        });
    }
    // the kernel lists them in its hash order; the image keeps them in id order
    out.sort_by_key(|t| t.id);
    if out.windows(2).any(|w| w[0].id == w[1].id) {
        return Err(bad("an id listed twice"));
    }
    Ok(out)
}

/// Reads /proc/PID/timers and refuses what cannot be carried; the timers.
pub(super) fn check(pid: pid_t, moving: bool) -> Result<Vec<ProcTimer>> {
    let t = parse(pid, &super::proc_read(pid, "timers")?)?;
    if moving && !t.is_empty() {
        return Err(unsup(
            pid,
            format!(
                "it has {} POSIX timers (timer_create; carried by `omnode freeze`, not yet by migration)",
                t.len()
            ),
        ));
    }
    Ok(t)
}

/// On the tracer thread, every thread stopped: the timers with their interval and time left,
/// read by an injected `timer_gettime` (into `out`, 32 bytes of scratch memory in the process).
/// `tids`: the process's threads; a timer aimed at another one is refused.
pub(super) fn collect(
    t: &mut Tracee,
    pid: pid_t,
    out: u64,
    tids: &[pid_t],
    moving: bool,
) -> Result<Vec<PosixTimer>> {
    let mut v = Vec::new();
    for pt in check(pid, moving)? {
        if pt.notify & libc::SIGEV_THREAD_ID != 0 && pt.target != pid && !tids.contains(&pt.target)
        {
            return Err(unsup(
                pid,
                format!(
                    "its POSIX timer {} signals thread {}, which is not one of its threads",
                    pt.id, pt.target
                ),
            ));
        }
        let r = t
            .syscall_raw(libc::SYS_timer_gettime, &[pt.id as u64, out])
            .map_err(ferr(pid, "injected timer_gettime"))?;
        if r != 0 {
            return Err(
                ferr(pid, format!("timer_gettime of POSIX timer {}", pt.id))(
                    crate::error::from_neg(r.min(-1)),
                ),
            );
        }
        let mut b = [0u8; 32];
        read_mem(pid, &mut b, &[(out, 32)]).map_err(ferr(pid, "reading timer_gettime's result"))?;
        let w = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
        v.push(PosixTimer {
            id: pt.id,
            clock: pt.clock,
            signo: pt.signo,
            value: pt.value,
            notify: pt.notify,
            target: pt.target,
            interval: (w(0), w(8)),
            left: (w(16), w(24)),
        });
    }
    Ok(v)
}

/// The id of the timer whose expiry the siginfo `info` reports (si_code SI_TIMER), if any.
fn timer_of(info: &[u8]) -> Option<i32> {
    let int = |o: usize| Some(i32::from_ne_bytes(info.get(o..o + 4)?.try_into().ok()?));
    // struct siginfo on x86_64: signo, errno, code, padding, then _timer's si_tid (the id)
    (int(8)? == libc::SI_TIMER).then_some(int(16)?)
}

/// A timer's expiry whose signal is still pending is not carried as a queued signal (a copy
/// queued by thaw would not re-arm a periodic timer when taken, as the kernel's own does):
/// true when `info` is such an expiry of one of `timers`, which is then armed to expire at
/// once instead, so that the new kernel queues its own signal; the caller drops `info`.
pub(super) fn absorb(timers: &mut [PosixTimer], info: &[u8]) -> bool {
    let Some(t) = timer_of(info).and_then(|id| timers.iter_mut().find(|t| t.id == id)) else {
        return false;
    };
    t.left = (0, 1);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_expiry_becomes_an_expiry_at_once() {
        let info = |code: i32, id: i32| {
            let mut v = vec![0u8; 128];
            v[0..4].copy_from_slice(&34i32.to_ne_bytes());
            v[8..12].copy_from_slice(&code.to_ne_bytes());
            v[16..20].copy_from_slice(&id.to_ne_bytes());
            v
        };
        let t = |id| PosixTimer {
            id,
            left: (0, 0),
            interval: (0, 15_000_000),
            ..Default::default()
        };
        let mut ts = vec![t(1), t(2)];
        assert!(absorb(&mut ts, &info(libc::SI_TIMER, 2)));
        assert!(!absorb(&mut ts, &info(libc::SI_USER, 1)));
        assert!(
            !absorb(&mut ts, &info(libc::SI_TIMER, 9)),
            "a timer it does not carry"
        );
        assert!(!absorb(&mut ts, &[0u8; 8]), "short");
        assert_eq!((ts[0].left, ts[1].left), ((0, 0), (0, 1)));
    }

    #[test]
    fn parses_the_kernels_format_and_refuses_cpu_clocks_and_garbage() {
        let text = "ID: 3\nsignal: 14/0000000000000000\nnotify: signal/pid.7\nClockID: 0\nID: 0\nsignal: 32/000056479cd13050\nnotify: signal/tid.10095\nClockID: 1\n";
        let t = parse(7, text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            ProcTimer {
                id: 0,
                signo: 32,
                value: 0x56479cd13050,
                notify: libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID,
                target: 10095,
                clock: 1
            }
        );
        assert_eq!(t[1].notify, libc::SIGEV_SIGNAL);
        assert_eq!((t[1].id, t[1].target, t[1].clock), (3, 7, 0));
        assert!(parse(7, "").unwrap().is_empty());
        let cpu = text.replace("ClockID: 1", "ClockID: -6");
        assert!(parse(7, &cpu).unwrap_err().to_string().contains("clock -6"));
        for bad in [
            "ID: x\n",
            "ID: 0\nsignal: 32\n",
            "ID: 0\nsignal: 32/00\nnotify: weird/pid.1\nClockID: 0\n",
            "ID: 0\nsignal: 32/00\nnotify: signal/pid.1\n",
        ] {
            let e = parse(7, bad).unwrap_err().to_string();
            assert!(e.contains("cannot parse /proc/7/timers"), "{bad:?}: {e}");
        }
    }
}
