//! The remote side of a migration: admits an offer, rebuilds the process from the image as it
//! streams in (bulk lane), confirms, runs it on commit under the seccomp supervisor
//! (`migration::remote::Supervisor`), and reports its end home.
//!
//! Owns: the shell driving `migration::protocol::Target` with explicit time, the builder thread
//! (the `migrate` thaw phases, fed by the image chunks through a pipe-like reader), and the
//! [`HomePort`] carrying forwarded calls to the home deputy over the control lane.
//! Must not know: how the process is rebuilt or how calls are classified (the crates do).
//!
//! Not yet: calls that must go home (fork, exec, ...) leave the process blocked at that call
//! (never a wrong answer, but it does not come home yet); blocking (`mosctl block`) is not
//! consulted; CPU features are not compared.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use discovery::NodeId;
use migration::forward::FwdMsg;
use migration::protocol::{self, ExitStatus, LocalFacts, MigId, Msg, Target, TargetAction};
use migration::remote::{FdTable, HomePort, Identity, Stop, Supervisor};
use runtime::transport::Lane;

use crate::migrator::{Ident, In, Migrator, PsRow, Wire};

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
    lock(&m.remotes).insert(key, tx);
    let m2 = m.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("mig-remote-{}", ident.pid))
        .spawn(move || {
            target_thread(&m2, from, offer, ident, in_progress, rx);
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

/// Image bytes from the protocol shell to the builder thread.
struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv_timeout(Duration::from_secs(30)) {
                Ok(b) => self.cur = b,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(0),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no image data for 30 s",
                    ));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// From the builder thread to the protocol shell.
enum Built {
    Ready(Result<(), String>),
    Running(i32),
    Ended(ExitStatus),
}

/// From the protocol shell to the builder thread.
enum Go {
    Run,
}

/// The home port: forwarded calls go home on the control lane; replies come back through the
/// protocol shell's channel and an eventfd.
struct Port {
    m: std::sync::Arc<Migrator>,
    home: NodeId,
    mig: MigId,
    rx: mpsc::Receiver<FwdMsg>,
    wake: std::sync::Arc<OwnedFd>,
}

impl HomePort for Port {
    fn send(&mut self, msg: FwdMsg) -> Result<(), String> {
        let w = Wire::Fwd { mig: self.mig, msg };
        if self.m.send(self.home, Lane::Control, &w, Bytes::new()) {
            Ok(())
        } else {
            Err(format!("node {} is unreachable", self.home))
        }
    }
    fn try_recv(&mut self) -> Option<FwdMsg> {
        self.rx.try_recv().ok()
    }
    fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
    fn clear_wake(&mut self) {
        let mut v = 0u64;
        // SAFETY: reading 8 bytes from our non-blocking eventfd into `v`.
        unsafe { libc::read(self.wake.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd with integer flags; on success a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn filter() -> Result<migrate::SeccompFilter, String> {
    let p = migration::seccomp::Program::build(&migration::seccomp::TrapSet::remote())
        .map_err(|e| format!("seccomp filter: {e}"))?;
    Ok(migrate::SeccompFilter(
        p.instructions()
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect(),
    ))
}

fn wait_status(pid: i32) -> ExitStatus {
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
fn builder(
    m: std::sync::Arc<Migrator>,
    home: NodeId,
    mig: MigId,
    ident: Ident,
    reader: ChunkReader,
    go: mpsc::Receiver<Go>,
    out: mpsc::Sender<Built>,
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
    drop(placeholders);
    let _ = out.send(Built::Ready(Ok(())));
    // Wait for the commit; dropping `t` (abort) kills the half-built process.
    match go.recv_timeout(Duration::from_secs(60)) {
        Ok(Go::Run) => {}
        Err(_) => return,
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
    let mut sup = Supervisor::new(listener, id, FdTable::new(ident.home_fds.clone()), port);
    loop {
        match sup.run(Instant::now() + Duration::from_secs(3600)) {
            Ok(Stop::Exited) => break,
            Ok(Stop::Deadline) => continue,
            Ok(Stop::GoHome { reason, .. }) => {
                // Not implemented yet: the process stays blocked at the call (nothing wrong
                // is answered); its end is still reported when it is killed.
                tracing::warn!(
                    pid,
                    ?reason,
                    "the moved process must go home; not implemented yet, it waits"
                );
                break;
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
        "guest ended ({status:?}): {} calls forwarded home, {} answered as home's identity, {} run here",
        st.forwarded,
        st.identity,
        st.continued
    );
    let _ = out.send(Built::Ended(status));
}

fn target_thread(
    m: &std::sync::Arc<Migrator>,
    home: NodeId,
    offer: protocol::Offer,
    ident: Ident,
    in_progress: usize,
    rx: mpsc::Receiver<In>,
) {
    let mig = offer.mig;
    let uid_known = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(offer.uid))
        .ok()
        .flatten()
        .is_some();
    let facts = LocalFacts {
        up: true,
        blocked: crate::balancer::blocked(),
        free_memory: free_memory(),
        cpu_features: offer.cpu_features.clone(),
        exe: crate::migrator::exe_identity(&offer.exe.path),
        in_progress,
        max_in_progress: MAX_IN_PROGRESS,
        uid_known,
    };
    let send = |msg: Msg| {
        m.send(
            home,
            Lane::Control,
            &Wire::Proto { msg, ident: None },
            Bytes::new(),
        );
    };
    let (t, acts) = Target::on_offer(protocol::Config::default(), offer, &facts, Instant::now());
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
    let (fwd_tx, fwd_rx) = mpsc::channel::<FwdMsg>();
    let wake = match eventfd() {
        Ok(w) => std::sync::Arc::new(w),
        Err(e) => {
            tracing::error!("eventfd: {e}");
            return;
        }
    };
    let mut fwd_rx = Some(fwd_rx);
    let mut chunks: Option<mpsc::Sender<Bytes>> = None;
    let mut go: Option<mpsc::Sender<Go>> = None;
    let mut local_pid: Option<i32> = None;
    let mut pending = acts;
    let mut ran = false;
    let mut early_signals: Vec<i32> = Vec::new();
    loop {
        for a in std::mem::take(&mut pending) {
            match a {
                TargetAction::Send(msg) => send(msg),
                TargetAction::StartThaw(_) => {
                    let (ctx, crx) = mpsc::channel();
                    let (gtx, grx) = mpsc::channel();
                    chunks = Some(ctx);
                    go = Some(gtx);
                    let (m2, ident2, out, prx, w2) = (
                        m.clone(),
                        ident.clone(),
                        built_tx.clone(),
                        fwd_rx.take().expect("one thaw per migration"),
                        wake.clone(),
                    );
                    let reader = ChunkReader {
                        rx: crx,
                        cur: Bytes::new(),
                    };
                    if let Err(e) = std::thread::Builder::new()
                        .name(format!("mig-build-{}", ident.pid))
                        .spawn(move || builder(m2, home, mig, ident2, reader, grx, out, prx, w2))
                    {
                        pending.extend(target.on_built(Err(e.to_string()), Instant::now()));
                    }
                }
                TargetAction::Feed { data, .. } => {
                    if let Some(c) = &chunks {
                        let _ = c.send(data);
                    }
                }
                TargetAction::FinishThaw => chunks = None,
                TargetAction::RunRemote => {
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
                Wire::Proto { msg, .. } => pending.extend(target.on_msg(msg, Instant::now())),
                Wire::Fwd { msg, .. } => {
                    target.on_sign_of_life(Instant::now());
                    let _ = fwd_tx.send(msg);
                    let one = 1u64;
                    // SAFETY: writing 8 bytes to our eventfd.
                    unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
                }
                Wire::Signal { signo, .. } => {
                    target.on_sign_of_life(Instant::now());
                    match local_pid {
                        // SAFETY: kill with integer arguments.
                        Some(p) => unsafe {
                            libc::kill(p, signo);
                        },
                        // Home may forward a signal before the builder said the copy runs.
                        None if ran => early_signals.push(signo),
                        None => {}
                    }
                }
            },
            Ok(In::Done { .. }) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while let Ok(b) = built_rx.try_recv() {
            match b {
                Built::Ready(r) => pending.extend(target.on_built(r, Instant::now())),
                Built::Running(p) => {
                    local_pid = Some(p);
                    for signo in early_signals.drain(..) {
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
                            moves: 1,
                            cmd: ident.cmd.clone(),
                            local_pid: Some(p),
                        },
                    );
                }
                Built::Ended(st) => {
                    local_pid = None;
                    lock(&m.table).remove(&mig);
                    pending.extend(target.on_exited(st, Instant::now()));
                }
            }
        }
        pending.extend(target.on_tick(Instant::now()));
        if target.is_done() && local_pid.is_none() && pending.is_empty() {
            return;
        }
    }
}
