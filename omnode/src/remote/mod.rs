//! The remote side of a migration: admits an offer, rebuilds the process from the image as it
//! streams in (bulk lane), confirms, runs it on commit under the seccomp supervisor
//! (`migration::remote::Supervisor`), and reports its end home.
//!
//! Owns: the shell driving `migration::protocol::Target` with explicit time, the builder thread
//! (the `migrate` thaw phases, fed by the image chunks through a pipe-like reader bounded in
//! bytes by the protocol's window; the protocol acknowledges to home only what the builder has
//! read, so the image held here never exceeds the window, however slow the builder), and the
//! [`HomePort`] carrying forwarded calls to the home deputy over the control lane. Admission
//! compares the offer's CPU features with this node's ([`crate::cpufeat`]); every guest gets a
//! [`crate::watchdog`] that kills it if this daemon dies.
//! Must not know: how the process is rebuilt or how calls are classified (the crates do).
//!
//! The way home (asked by home, or a call that must run at home: fork, exec, ...) freezes the
//! copy here and drives the return trip's `protocol::Home`; see [`crate::gohome`].
//!
//! Not yet: blocking (`mosctl block`) is not consulted.

mod builder;
mod feed;
mod port;
#[cfg(test)]
mod tests;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use discovery::NodeId;
use migration::forward::FwdMsg;
use migration::protocol::{self, ExitStatus, LocalFacts, MigId, Msg, Target, TargetAction};
use migration::remote::{FdTable, HomePort, Identity, Stop, Supervisor};
use runtime::transport::Lane;

use crate::migrator::{Ident, In, Migrator, PsRow, Wire};

use builder::{Built, BuiltTx, Go, builder};
pub(crate) use feed::{ChunkReader, FeedTx, feed_channel};
use port::eventfd;

/// How many incoming migrations a node builds at once.
const MAX_IN_PROGRESS: usize = 4;

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message for an incoming migration: starts its thread on a new offer.
pub(crate) fn incoming(m: &std::sync::Arc<Migrator>, from: NodeId, mig: MigId, wire: Wire) {
    let key = (from, mig);
    let tx = lock(&m.remotes).get(&key).cloned();
    if let Some(tx) = tx {
        let _ = tx.send(In::Wire { from, wire });
        return;
    }
    let Wire::Proto {
        msg: Msg::Offer(offer),
        ident: Some(ident),
    } = wire
    else {
        // An old migration's message: say it is gone so a waiting home stops waiting.
        if let Wire::Proto { msg, .. } = &wire
            && !matches!(msg, Msg::ExitAck { .. } | Msg::Abort { .. })
        {
            let m2 = m.clone();
            let gone = Wire::Proto {
                msg: Msg::Gone { mig, ran: false },
                ident: None,
            };
            // Cannot block on the runtime here (we are on it): spawn the send.
            m.rt.spawn(async move {
                let _ = m2
                    .system
                    .tell_on(
                        Lane::Control,
                        from,
                        crate::migrator::NAME,
                        &gone,
                        Bytes::new(),
                    )
                    .await;
            });
        }
        return;
    };
    let in_progress = lock(&m.remotes).len();
    let (tx, rx) = mpsc::channel();
    lock(&m.remotes).insert(key, tx.clone());
    let m2 = m.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("mig-remote-{}", ident.pid))
        .spawn(move || {
            target_thread(&m2, from, offer, ident, in_progress, (tx, rx));
            lock(&m2.remotes).remove(&key);
            lock(&m2.table).remove(&mig);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start a migration thread: {e}");
        lock(&m.remotes).remove(&key);
    }
}

fn free_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn target_thread(
    m: &std::sync::Arc<Migrator>,
    home: NodeId,
    offer: protocol::Offer,
    ident: Ident,
    in_progress: usize,
    (wake, rx): (mpsc::Sender<In>, mpsc::Receiver<In>),
) {
    let mig = offer.mig;
    let t0 = Instant::now();
    // Where a move's time goes here (RUST_LOG=omnode::phase=debug).
    let phase = |what: &str| {
        tracing::debug!(target: "omnode::phase", mig, us = t0.elapsed().as_micros() as u64, "target: {what}");
    };
    let uid_known = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(offer.uid))
        .ok()
        .flatten()
        .is_some();
    let facts = LocalFacts {
        up: true,
        blocked: crate::balancer::blocked(),
        free_memory: free_memory(),
        // Unknown features here (unreadable /proc/cpuinfo) refuse every offer: fail closed.
        cpu_features: crate::cpufeat::local().unwrap_or_else(|e| {
            tracing::error!(home, mig, "CPU features unknown, refusing: {e}");
            Vec::new()
        }),
        exe: crate::migrator::exe_identity(&offer.exe.path),
        in_progress,
        max_in_progress: MAX_IN_PROGRESS,
        uid_known,
        // free memory (own cgroup's) for the image plus a margin, and the load limit
        policy_refusal: crate::balancer::guest_refusal(offer.memory_needed),
    };
    let send = |msg: Msg| {
        m.send(
            home,
            Lane::Control,
            &Wire::Proto { msg, ident: None },
            Bytes::new(),
        );
    };
    // The target acknowledges what the builder consumed: what this node holds of the image
    // stays within the window however slow the builder is.
    let config = protocol::Config {
        ack_consumed: true,
        ..protocol::Config::default()
    };
    let window = config.window;
    phase("local facts");
    let (t, acts) = Target::on_offer(config, offer, &facts, Instant::now());
    let Some(mut target) = t else {
        for a in acts {
            if let TargetAction::Send(msg) = a {
                tracing::info!(home, mig, "offer refused: {msg:?}");
                send(msg);
            }
        }
        return;
    };
    let (built_tx, built_rx) = mpsc::channel::<Built>();
    let reader_wake = wake.clone();
    let built_tx = BuiltTx { tx: built_tx, wake };
    let (fwd_tx, fwd_rx) = mpsc::channel::<FwdMsg>();
    let wake = match eventfd() {
        Ok(w) => std::sync::Arc::new(w),
        Err(e) => {
            tracing::error!("eventfd: {e}");
            return;
        }
    };
    let mut fwd_rx = Some(fwd_rx);
    // Replies from home go straight to the supervisor (crate::fwdpath); counted as signs of
    // life of home.
    let fwd_seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut fwd_seen_last = 0u64;
    let fwd_way = || crate::fwdpath::RemoteWay {
        tx: fwd_tx.clone(),
        wake: wake.clone(),
        seen: fwd_seen.clone(),
    };
    let _opened = m.fwd_paths.open_remote(home, mig, fwd_way());
    let mut chunks: Option<FeedTx> = None;
    // the builder's consumption, as last reported to the protocol
    let mut consumed: Option<Arc<AtomicU64>> = None;
    let mut consumed_last = 0u64;
    let mut go: Option<mpsc::Sender<Go>> = None;
    let mut local_pid: Option<i32> = None;
    let mut pending = acts;
    let mut ran = false;
    let mut early_signals: Vec<i32> = Vec::new();
    // the way home (see crate::gohome): this side lets go, so it drives `Home`
    let ret_mig = mig | crate::gohome::RETURN;
    let mut leave: Option<(protocol::Home, Option<migrate::Seized>, Bytes)> = None;
    let mut returned = false;
    // Job control: the stop signal last forwarded, and whether the copy is seen stopped.
    let mut stop_sig = libc::SIGSTOP;
    let mut stopped = false;
    let mut conts = 0u64;
    loop {
        for a in std::mem::take(&mut pending) {
            match a {
                TargetAction::Send(msg) => send(msg),
                TargetAction::StartThaw(_) => {
                    phase("accepted: builder starts");
                    let (ctx, reader) = feed_channel(window, Some(reader_wake.clone()));
                    let (gtx, grx) = mpsc::channel();
                    consumed = Some(ctx.consumed.clone());
                    chunks = Some(ctx);
                    go = Some(gtx);
                    let (m2, ident2, out, prx, w2) = (
                        m.clone(),
                        ident.clone(),
                        built_tx.clone(),
                        fwd_rx.take().expect("one thaw per migration"),
                        wake.clone(),
                    );
                    if let Err(e) = std::thread::Builder::new()
                        .name(format!("mig-build-{}", ident.pid))
                        .spawn(move || builder(m2, home, mig, ident2, reader, grx, out, prx, w2))
                    {
                        pending.extend(target.on_built(Err(e.to_string()), Instant::now()));
                    }
                }
                TargetAction::Feed { offset, data } => {
                    if offset == 0 {
                        phase("first chunk");
                        tracing::info!(home, mig, "the image streams in (first chunk)");
                    }
                    if let Some(c) = chunks.as_mut()
                        && let Err(e) = c.send(data)
                    {
                        tracing::warn!(home, mig, "image not handed to the builder: {e}");
                        pending.extend(target.fail(e));
                    }
                }
                TargetAction::FinishThaw => {
                    phase("whole image in");
                    chunks = None
                }
                TargetAction::RunRemote => {
                    phase("commit: run");
                    ran = true;
                    crate::metrics::bump(&crate::metrics::COUNTERS.migrations_in);
                    if let Some(g) = &go {
                        let _ = g.send(Go::Run);
                    }
                }
                TargetAction::KillRemote { reason } => {
                    tracing::info!(home, mig, "ending the copy: {reason}");
                    go = None;
                    chunks = None;
                    if let Some(p) = local_pid {
                        // SAFETY: kill with integer arguments.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
            }
        }
        if target.is_done() {
            // Keep the thread (and the registration) until a started copy has been reaped.
            if !ran || local_pid.is_none() {
                return;
            }
        }
        let wait = target
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(50));
        match rx.recv_timeout(wait) {
            Ok(In::Wire { wire, .. }) => match wire {
                Wire::ComeHome { .. } => {
                    target.on_sign_of_life(Instant::now());
                    match &go {
                        Some(g) if local_pid.is_some() && leave.is_none() => {
                            let _ = g.send(Go::ComeHome("home asked for it".into()));
                        }
                        _ => {
                            let why = "it is not running here right now".to_string();
                            m.send(
                                home,
                                Lane::Control,
                                &Wire::StaysHere { mig, why },
                                Bytes::new(),
                            );
                        }
                    }
                }
                Wire::Proto { msg, .. } if msg.mig() == ret_mig => {
                    if let Some((h, _, _)) = leave.as_mut() {
                        let acts = h.on_msg(msg, Instant::now());
                        leave_acts(
                            m,
                            home,
                            &mut leave,
                            acts,
                            go.as_ref(),
                            local_pid,
                            &mut returned,
                        );
                    }
                }
                Wire::Proto { msg, .. } => pending.extend(target.on_msg(msg, Instant::now())),
                Wire::Fwd { msg, .. } => {
                    target.on_sign_of_life(Instant::now());
                    fwd_way().give(msg);
                }
                Wire::Leaving { .. } | Wire::StaysHere { .. } | Wire::Stopped { .. } => {}
                Wire::Signal { signo, .. } => {
                    target.on_sign_of_life(Instant::now());
                    match local_pid {
                        Some(p) => {
                            if signo == libc::SIGCONT {
                                conts += 1;
                            }
                            let sig = stop_substitute(p, signo);
                            if sig == libc::SIGSTOP {
                                stop_sig = signo;
                            }
                            // SAFETY: kill with integer arguments.
                            unsafe { libc::kill(p, sig) };
                        }
                        // Home may forward a signal before the builder said the copy runs.
                        None if ran => early_signals.push(signo),
                        None => {}
                    }
                }
            },
            Ok(In::ComeHome { .. } | In::Wake) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let seen = fwd_seen.load(std::sync::atomic::Ordering::Relaxed);
        if seen != fwd_seen_last {
            fwd_seen_last = seen;
            target.on_sign_of_life(Instant::now());
        }
        if let Some(c) = &consumed {
            let now_consumed = c.load(Ordering::Acquire);
            if now_consumed != consumed_last {
                consumed_last = now_consumed;
                pending.extend(target.on_consumed(now_consumed, Instant::now()));
            }
        }
        while let Ok(b) = built_rx.try_recv() {
            match b {
                Built::Ready(r) => {
                    phase("built: confirming");
                    consumed = None;
                    pending.extend(target.on_built(r, Instant::now()))
                }
                Built::Running(p) => {
                    phase("running");
                    local_pid = Some(p);
                    for signo in early_signals.drain(..) {
                        if signo == libc::SIGCONT {
                            conts += 1;
                        }
                        // SAFETY: kill with integer arguments.
                        unsafe { libc::kill(p, signo) };
                    }
                    lock(&m.table).insert(
                        mig,
                        PsRow {
                            pid: ident.pid,
                            node: m.local(),
                            home,
                            state: "guest".into(),
                            moves: ident.moves.max(1),
                            cmd: ident.cmd.clone(),
                            local_pid: Some(p),
                        },
                    );
                }
                Built::Ended(st) => {
                    local_pid = None;
                    lock(&m.table).remove(&mig);
                    if returned {
                        // it went home: the copy here was ended on purpose, nothing to report
                        return;
                    }
                    pending.extend(target.on_exited(st, Instant::now()));
                }
                Built::Leaving {
                    seized,
                    image,
                    mut offer,
                    why,
                } => {
                    offer.mig = ret_mig;
                    m.send(
                        home,
                        Lane::Control,
                        &Wire::Leaving { mig: ret_mig, why },
                        Bytes::new(),
                    );
                    let (h, acts) =
                        protocol::Home::start(protocol::Config::default(), offer, Instant::now());
                    leave = Some((h, Some(seized), image));
                    leave_acts(
                        m,
                        home,
                        &mut leave,
                        acts,
                        go.as_ref(),
                        local_pid,
                        &mut returned,
                    );
                }
                Built::LeaveFailed(why) => {
                    m.send(
                        home,
                        Lane::Control,
                        &Wire::StaysHere { mig, why },
                        Bytes::new(),
                    );
                }
            }
        }
        if let Some((h, _, _)) = leave.as_mut() {
            let acts = h.on_tick(Instant::now());
            leave_acts(
                m,
                home,
                &mut leave,
                acts,
                go.as_ref(),
                local_pid,
                &mut returned,
            );
        }
        if let Some(p) = local_pid {
            // Job control mirrored home: a stop of the copy is reported, then its end.
            let now_stopped = proc_state(p) == Some(b'T');
            if now_stopped != stopped {
                stopped = now_stopped;
                let signo = now_stopped.then_some(stop_sig);
                m.send(
                    home,
                    Lane::Control,
                    &Wire::Stopped { mig, signo, conts },
                    Bytes::new(),
                );
                if !now_stopped {
                    stop_sig = libc::SIGSTOP;
                }
            }
        }
        pending.extend(target.on_tick(Instant::now()));
        if target.is_done() && local_pid.is_none() && pending.is_empty() {
            return;
        }
    }
}

type Leave = Option<(protocol::Home, Option<migrate::Seized>, Bytes)>;

/// Carries out the way home's actions (this node lets go; see crate::gohome).
fn leave_acts(
    m: &std::sync::Arc<Migrator>,
    home: NodeId,
    leave: &mut Leave,
    acts: Vec<protocol::HomeAction>,
    go: Option<&mpsc::Sender<Go>>,
    local_pid: Option<i32>,
    returned: &mut bool,
) {
    use protocol::HomeAction;
    for a in acts {
        let Some((h, seized, image)) = leave.as_mut() else {
            return;
        };
        let ret_mig = h.mig();
        match a {
            HomeAction::Send(msg) => {
                m.send(
                    home,
                    Lane::Control,
                    &Wire::Proto { msg, ident: None },
                    Bytes::new(),
                );
            }
            HomeAction::SendChunk { offset, len } => {
                let (o, l) = (offset as usize, len as usize);
                let msg = Msg::Chunk {
                    mig: ret_mig,
                    offset,
                    data: Bytes::new(),
                };
                m.send(
                    home,
                    Lane::Bulk,
                    &Wire::Proto { msg, ident: None },
                    image.slice(o..o + l),
                );
            }
            HomeAction::ResumeAtHome { reason } => {
                // home could not take it: it runs on here, unchanged
                drop(seized.take());
                tracing::info!(home, "the way home failed: {reason}; it runs on here");
                if let Some(g) = go {
                    let _ = g.send(Go::Resume);
                }
                let why = reason.to_string();
                let base = ret_mig & !crate::gohome::RETURN;
                m.send(
                    home,
                    Lane::Control,
                    &Wire::StaysHere { mig: base, why },
                    Bytes::new(),
                );
                *leave = None;
            }
            HomeAction::ParkHome | HomeAction::EndHome { .. } => {
                // Home runs it (or may: after the commit it must never run twice): end the
                // frozen copy here.
                if let HomeAction::EndHome { reason } = &a {
                    tracing::warn!(
                        home,
                        "no word from home after the commit ({reason}); the copy here ends"
                    );
                }
                let killed = seized
                    .take()
                    .map(|s| s.finish(migrate::Ending::Kill).is_ok())
                    .unwrap_or(false);
                if !killed && let Some(p) = local_pid {
                    // SAFETY: kill with integer arguments, our own child.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
                *returned = true;
                if let Some(g) = go {
                    let _ = g.send(Go::Returned);
                }
                *leave = None;
            }
            HomeAction::ReproduceExit(_) => {}
        }
    }
}

/// The state letter of `/proc/PID/stat` (`T`: stopped).
fn proc_state(pid: i32) -> Option<u8> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().bytes().next()
}

/// The signal to send the copy for `signo` forwarded from home. A job-control stop signal
/// (TSTP, TTIN, TTOU) under its default action becomes SIGSTOP: the copy's process group here
/// may be orphaned (its parent is the daemon), and the kernel drops those signals for
/// orphaned groups, while at home the job would stop (deputy-facts: "orphaned process groups
/// drop SIGTSTP/TTIN/TTOU"). A caught, ignored or blocked one goes as it is.
fn stop_substitute(pid: i32, signo: i32) -> i32 {
    if !matches!(signo, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
        return signo;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return signo;
    };
    let set = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| migration::jobctl::mask_has(v, signo))
    };
    match (set("SigCgt:"), set("SigIgn:"), set("SigBlk:")) {
        (Some(false), Some(false), Some(false)) => libc::SIGSTOP,
        _ => signo,
    }
}
