//! The builder thread: rebuilds the process from the streamed image, runs it under the
//! supervisor on commit, and freezes it for its way home.

use super::port::{Port, filter};
use super::*;

/// From the builder thread to the protocol shell.
#[allow(clippy::large_enum_variant)] // one `Leaving` per way home: not worth a box
pub(super) enum Built {
    Ready(Result<(), String>),
    Running(i32),
    Ended(ExitStatus),
    /// The copy is frozen for its way home (see crate::gohome): the image and the offer (its
    /// id is set by the protocol shell).
    Leaving {
        seized: migrate::Seized,
        image: Bytes,
        offer: protocol::Offer,
        why: String,
    },
    /// It could not be frozen for its way home; it runs on here.
    LeaveFailed(String),
}

/// The builder's way to the protocol shell: its news, and a wake-up of the shell's message
/// loop (which otherwise looks only after a message or its time-out: a confirmation could
/// wait up to 50 ms).
#[derive(Clone)]
pub(super) struct BuiltTx {
    pub(super) tx: mpsc::Sender<Built>,
    pub(super) wake: mpsc::Sender<In>,
}

impl BuiltTx {
    fn send(&self, b: Built) -> Result<(), mpsc::SendError<Built>> {
        self.tx.send(b)?;
        let _ = self.wake.send(In::Wake);
        Ok(())
    }
}

/// From the protocol shell to the builder thread.
pub(super) enum Go {
    Run,
    /// Home asks for it back.
    ComeHome(String),
    /// The way home failed: supervise it again.
    Resume,
    /// It is home: the copy here was killed.
    Returned,
}

/// Freezes the copy for its way home and hands it to the protocol shell; true when it went
/// home (the copy here was killed), false when it runs on here.
pub(super) fn leave(
    pid: i32,
    home_pid: i32,
    why: String,
    tid_address: Option<u64>,
    go: &mpsc::Receiver<Go>,
    out: &BuiltTx,
) -> bool {
    let fail = |e: String| {
        tracing::warn!(pid, "it cannot go home now: {e}");
        let _ = out.send(Built::LeaveFailed(e));
        false
    };
    let mut seized = match migrate::seize_guest(pid, migrate::DEFAULT_STOP_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot freeze it: {e}")),
    };
    let mut img = match seized.collect() {
        Ok(i) => i,
        Err(e) => return fail(format!("cannot freeze it: {e}")),
    };
    // the main thread's set_tid_address was answered here, not run (see
    // migration::remote::Class::SetTidAddress): home sets what it asked for
    if let Some(a) = tid_address {
        img.clear_child_tid = a;
    }
    let mut buf = Vec::new();
    let st = match seized.stream(&img, &mut buf) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot freeze it: {e}")),
    };
    let Some(exe) = crate::migrator::exe_identity(&img.exe) else {
        return fail(format!("its executable {} is unreadable", img.exe));
    };
    let offer = protocol::Offer {
        mig: 0,
        pid: home_pid as u32,
        uid: img.creds.uid[0],
        image_size: buf.len() as u64,
        memory_needed: st.page_bytes,
        cpu_features: Vec::new(),
        exe,
    };
    let _ = out.send(Built::Leaving {
        seized,
        image: Bytes::from(buf),
        offer,
        why,
    });
    loop {
        match go.recv_timeout(Duration::from_secs(300)) {
            Ok(Go::Returned) => return true,
            Ok(Go::Resume) | Err(_) => return false,
            Ok(Go::ComeHome(_) | Go::Run) => {}
        }
    }
}

pub(super) fn wait_status(pid: i32) -> ExitStatus {
    let mut st = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return ExitStatus::Signal(libc::SIGKILL);
        }
    }
    if libc::WIFEXITED(st) {
        ExitStatus::Code(libc::WEXITSTATUS(st))
    } else {
        ExitStatus::Signal(libc::WTERMSIG(st))
    }
}

/// Builds, runs and supervises the process.
#[allow(clippy::too_many_arguments)]
pub(super) fn builder(
    m: std::sync::Arc<Migrator>,
    home: NodeId,
    mig: MigId,
    ident: Ident,
    reader: ChunkReader,
    go: mpsc::Receiver<Go>,
    out: BuiltTx,
    port_rx: mpsc::Receiver<FwdMsg>,
    wake: std::sync::Arc<OwnedFd>,
) {
    let fail = |e: String| {
        let _ = out.send(Built::Ready(Err(e)));
    };
    let filter = match filter() {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let mut placeholders: Vec<OwnedFd> = Vec::new();
    for _ in &ident.home_fds {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            Ok(f) => placeholders.push(f.into()),
            Err(e) => return fail(format!("placeholder fd: {e}")),
        }
    }
    let opts = migrate::ThawOptions {
        fd_placeholders: ident
            .home_fds
            .iter()
            .zip(&placeholders)
            .map(|(&n, f)| (n, f.as_raw_fd()))
            .collect(),
        seccomp_filter: Some(filter.clone()),
        // its TID here is its home PID (gettid, set_tid_address say so): glibc's cached TID,
        // the owner of the locks it holds, stays that
        keep_cached_tid: true,
        ..Default::default()
    };
    let mut reader = match migrate::ImageReader::new(reader) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    let r = (|| {
        let mut t = migrate::Thawing::skeleton(&reader, &opts)?;
        t.pages(&mut reader)?;
        t.attributes()?;
        t.fds()?;
        t.install_filter(&filter)?;
        Ok::<_, migrate::Error>(t)
    })();
    let t = match r {
        Ok(t) => t,
        Err(e) => return fail(e.to_string()),
    };
    // Before confirming: a guest must never outlive this daemon (a SIGKILLed daemon cannot kill
    // it). Without the watchdog the move fails and the process stays at home.
    let _watchdog = match crate::watchdog::Watchdog::start(t.pid()) {
        Ok(w) => w,
        Err(e) => return fail(format!("cannot start the guest's watchdog: {e}")),
    };
    tracing::info!(
        home,
        mig,
        local_pid = t.pid(),
        watchdog = _watchdog.pid(),
        "guest watched by its watchdog"
    );
    drop(placeholders);
    let _ = out.send(Built::Ready(Ok(())));
    // Wait for the commit; dropping `t` (abort) kills the half-built process.
    match go.recv_timeout(Duration::from_secs(60)) {
        Ok(Go::Run) => {}
        Ok(_) | Err(_) => return,
    }
    let thawed = match t.run() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(home, mig, "the rebuilt process could not start: {e}");
            let _ = out.send(Built::Ended(ExitStatus::Signal(libc::SIGKILL)));
            return;
        }
    };
    let pid = thawed.pid;
    // its /mfs/lastexec, for as long as it runs here
    let _exec = crate::mfsmagic::guest_lastexec(pid as u32, ident.lastexec);
    // The guest never outlives its supervisor's listener (it would get ENOSYS for its home
    // calls): the guard kills it first, whatever ends the supervisor.
    let guard = match migration::guard::KillOnDrop::new(pid) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(pid, "cannot watch the rebuilt process: {e}; killing it");
            // SAFETY: kill with integer arguments, our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = out.send(Built::Running(pid));
            let _ = out.send(Built::Ended(wait_status(pid)));
            return;
        }
    };
    let _ = out.send(Built::Running(pid));
    let Some(listener) = thawed.listener else {
        let _ = out.send(Built::Ended(wait_status(pid)));
        return;
    };
    let listener = match migration::seccomp::Listener::new(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(pid, "seccomp listener: {e}; killing the remote copy");
            // SAFETY: kill with integer arguments, our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = out.send(Built::Ended(wait_status(pid)));
            return;
        }
    };
    let _ = listener.set_sync_wake_up();
    let id = Identity {
        pid: ident.pid,
        ppid: ident.ppid,
        pgid: ident.pgid,
        sid: ident.sid,
        local_pid: pid,
    };
    let port = Port {
        m,
        home,
        mig,
        rx: port_rx,
        wake,
    };
    // A call that must run at home and could not go there: the process waits at it (never a
    // wrong answer) until home asks for it again.
    let mut blocked_at_home_call = false;
    let fds = FdTable::new(ident.home_fds.clone()).with_ttys(ident.tty_fds.clone());
    let mut sup = Supervisor::new(listener, id, fds, port).kill_guest_on_drop(guard);
    sup.set_dfsa(migration::dfsa::Dfsa::open(&migration::dfsa::agreed(
        &ident.mfs,
        &crate::mfsd::mounts(),
    )));
    loop {
        match sup.run(Instant::now() + Duration::from_millis(100)) {
            Ok(Stop::Exited) => break,
            Ok(Stop::Deadline) => {
                if let Ok(Go::ComeHome(why)) = go.try_recv() {
                    // Not while a call forwarded home is half-done (a read's data would be
                    // lost): home gives up the calls still waiting there (a read of an empty
                    // pipe), which then stay unanswered here and are made again at home; serve
                    // until none is in flight, for at most 3 s.
                    let until = Instant::now() + Duration::from_secs(3);
                    let mut stop = sup.interrupt_in_flight().map(|()| Stop::Deadline);
                    while stop.is_ok() && sup.in_flight() > 0 && Instant::now() < until {
                        stop = sup.run_until_idle(until);
                        if !matches!(stop, Ok(Stop::Deadline)) {
                            break;
                        }
                    }
                    match stop {
                        Ok(Stop::Deadline) if sup.in_flight() == 0 => {
                            if !leave(pid, ident.pid, why, sup.tid_address(), &go, &out) {
                                if blocked_at_home_call {
                                    tracing::info!(
                                        pid,
                                        "it still waits at a call that must run at home"
                                    );
                                }
                                // it stays: the calls given up at home are made again
                                stop = sup.resume_given_up().map(|s| s.unwrap_or(Stop::Deadline));
                            }
                        }
                        Ok(Stop::Deadline) => {
                            let _ = out.send(Built::LeaveFailed(
                                "a call forwarded home is in progress (e.g. a read waiting for input there); try again".into(),
                            ));
                            stop = sup.resume_given_up().map(|s| s.unwrap_or(Stop::Deadline));
                        }
                        _ => {}
                    }
                    match stop {
                        Ok(Stop::Deadline) => {}
                        Ok(Stop::Exited) => break,
                        Ok(Stop::GoHome { reason, .. }) => {
                            let why = format!("it made a call that must run at home ({reason:?})");
                            if !leave(pid, ident.pid, why, sup.tid_address(), &go, &out) {
                                blocked_at_home_call = true;
                            }
                        }
                        Err(e) => {
                            tracing::error!(pid, "supervisor: {e}; killing the remote copy");
                            // SAFETY: kill with integer arguments, our own child.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                            break;
                        }
                    }
                }
                continue;
            }
            Ok(Stop::GoHome { reason, .. }) => {
                // The notification stays unanswered; the freeze cancels it and the call is
                // made again at home (see crate::gohome).
                if !blocked_at_home_call {
                    let why = format!("it made a call that must run at home ({reason:?})");
                    tracing::info!(pid, "{why}");
                    if !leave(pid, ident.pid, why, sup.tid_address(), &go, &out) {
                        blocked_at_home_call = true;
                    }
                }
                continue;
            }
            Err(e) => {
                tracing::error!(pid, "supervisor: {e}; killing the remote copy");
                // SAFETY: kill with integer arguments, our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
        }
    }
    let st = sup.stats().clone();
    drop(sup);
    let status = wait_status(pid);
    tracing::info!(
        home,
        pid = ident.pid,
        local_pid = pid,
        "guest ended ({status:?}): {} calls forwarded home, {} answered as home's identity, {} run here, {} file calls on /mfs run here by DFSA, {} home files mapped here",
        st.forwarded,
        st.identity,
        st.continued,
        st.dfsa,
        st.mapped_here
    );
    let _ = out.send(Built::Ended(status));
}
