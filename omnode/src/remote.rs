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

/// Image bytes from the protocol shell to the builder thread. It counts the bytes the builder
/// took ([`FeedTx`] bounds what is fed by it; the shell acknowledges it to home).
pub(crate) struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    /// Bytes read out so far (shared with the feeding side).
    consumed: Arc<AtomicU64>,
    total: u64,
    /// Wakes the protocol shell each time a chunk is used up (it then acknowledges).
    wake: Option<mpsc::Sender<In>>,
}

impl ChunkReader {
    /// A reader of chunks that are not bounded or acknowledged on consumption.
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> ChunkReader {
        ChunkReader {
            rx,
            cur: Bytes::new(),
            consumed: Arc::new(AtomicU64::new(0)),
            total: 0,
            wake: None,
        }
    }
}

/// The protocol shell's end of the image channel to the builder, bounded in bytes: bytes fed
/// and not yet read by the builder never exceed `limit` (the protocol's window). It never
/// blocks: bytes past the bound are refused (the protocol already keeps home within the
/// window, so a refusal means a fault, and the move ends before the commit).
pub(crate) struct FeedTx {
    tx: mpsc::Sender<Bytes>,
    fed: u64,
    consumed: Arc<AtomicU64>,
    limit: u64,
}

impl FeedTx {
    pub(crate) fn send(&mut self, data: Bytes) -> Result<(), String> {
        let len = data.len() as u64;
        let held = self.fed - self.consumed.load(Ordering::Acquire).min(self.fed);
        if held + len > self.limit {
            return Err(format!(
                "the builder has {held} image bytes unread; {len} more would pass the bound of {}",
                self.limit
            ));
        }
        self.tx
            .send(data)
            .map_err(|_| "the builder stopped reading the image".to_string())?;
        self.fed += len;
        Ok(())
    }
}

/// A byte-bounded image channel (see [`FeedTx`]); `wake` is poked each time the builder used
/// up a chunk.
pub(crate) fn feed_channel(limit: u64, wake: Option<mpsc::Sender<In>>) -> (FeedTx, ChunkReader) {
    let (tx, rx) = mpsc::channel();
    let consumed = Arc::new(AtomicU64::new(0));
    (
        FeedTx {
            tx,
            fed: 0,
            consumed: consumed.clone(),
            limit,
        },
        ChunkReader {
            rx,
            cur: Bytes::new(),
            consumed,
            total: 0,
            wake,
        },
    )
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
        self.total += n as u64;
        self.consumed.store(self.total, Ordering::Release);
        if self.cur.is_empty() {
            // drop the used-up chunk now, then let the shell acknowledge
            self.cur = Bytes::new();
            if let Some(w) = &self.wake {
                let _ = w.send(In::Wake);
            }
        }
        Ok(n)
    }
}

/// From the builder thread to the protocol shell.
#[allow(clippy::large_enum_variant)] // one `Leaving` per way home: not worth a box
enum Built {
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
struct BuiltTx {
    tx: mpsc::Sender<Built>,
    wake: mpsc::Sender<In>,
}

impl BuiltTx {
    fn send(&self, b: Built) -> Result<(), mpsc::SendError<Built>> {
        self.tx.send(b)?;
        let _ = self.wake.send(In::Wake);
        Ok(())
    }
}

/// From the protocol shell to the builder thread.
enum Go {
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
fn leave(pid: i32, home_pid: i32, why: String, go: &mpsc::Receiver<Go>, out: &BuiltTx) -> bool {
    let fail = |e: String| {
        tracing::warn!(pid, "it cannot go home now: {e}");
        let _ = out.send(Built::LeaveFailed(e));
        false
    };
    let mut seized = match migrate::seize_guest(pid, migrate::DEFAULT_STOP_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot freeze it: {e}")),
    };
    let img = match seized.collect() {
        Ok(i) => i,
        Err(e) => return fail(format!("cannot freeze it: {e}")),
    };
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
                            if !leave(pid, ident.pid, why, &go, &out) {
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
                            if !leave(pid, ident.pid, why, &go, &out) {
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
                    if !leave(pid, ident.pid, why, &go, &out) {
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

fn target_thread(
    m: &std::sync::Arc<Migrator>,
    home: NodeId,
    offer: protocol::Offer,
    ident: Ident,
    in_progress: usize,
    (wake, rx): (mpsc::Sender<In>, mpsc::Receiver<In>),
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
                        tracing::info!(home, mig, "the image streams in (first chunk)");
                    }
                    if let Some(c) = chunks.as_mut()
                        && let Err(e) = c.send(data)
                    {
                        tracing::warn!(home, mig, "image not handed to the builder: {e}");
                        pending.extend(target.fail(e));
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
                    consumed = None;
                    pending.extend(target.on_built(r, Instant::now()))
                }
                Built::Running(p) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The image channel holds at most its bound of unread bytes: more is refused without
    /// blocking; what the builder reads frees room, is counted exactly, and each used-up
    /// chunk wakes the shell; the bytes come out whole and in order.
    #[test]
    fn feed_channel_is_bounded_in_bytes_and_counts_consumption() {
        let (wtx, wrx) = mpsc::channel();
        let (mut tx, mut rx) = feed_channel(10, Some(wtx));
        tx.send(Bytes::from_static(b"abcdef")).unwrap();
        tx.send(Bytes::from_static(b"ghij")).unwrap();
        let e = tx.send(Bytes::from_static(b"k")).unwrap_err();
        assert!(e.contains("10 image bytes unread"), "{e}");
        let mut buf = [0u8; 4];
        assert_eq!(rx.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"abcd");
        assert_eq!(tx.consumed.load(Ordering::Acquire), 4);
        assert!(wrx.try_recv().is_err(), "no wake before a chunk is used up");
        // 4 read: room for 4 more, not 5
        assert!(tx.send(Bytes::from_static(b"klmno")).is_err());
        tx.send(Bytes::from_static(b"klmn")).unwrap();
        let mut all = b"abcd".to_vec();
        drop(tx);
        rx.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdefghijklmn");
        assert_eq!(rx.consumed.load(Ordering::Acquire), 14);
        assert_eq!(wrx.try_iter().filter(|w| matches!(w, In::Wake)).count(), 3);
    }
}
