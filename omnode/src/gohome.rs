//! Coming home and moving on: `migrate PID home`, `migrate PID N` for a process that already
//! runs elsewhere, and the calls a remote cannot serve (fork, exec, ptrace, ...) that bring the
//! process home to run them there.
//!
//! Owns: the home half of the return trip (driving `migration::protocol::Target` inside the
//! process's home thread, and the thread that rebuilds the process INTO its parked home shell
//! with `migrate::Thawing::into_shell`) and the remote half (driving `protocol::Home` inside the
//! guest's target thread, the guest frozen with `migrate::seize_guest`).
//! Must not know: how a process is frozen or rebuilt, or how the protocol decides.
//!
//! # The return trip
//! It is the same protocol as the way out with the roles swapped: the node the process runs on
//! offers and streams the image (it is the side that lets go), home admits it and rebuilds it
//! into P, the original process parked at home since it left (same PID, parent, session, and
//! its own fd table; the fds the process opened while away are the deputy's copies, installed
//! in P with pidfd_getfd). The trip's id is the outgoing migration's with [`RETURN`] set, so
//! both migrators route it to the threads that already own that process.
//!
//! Confirm before letting go, in reverse: the remote kills its frozen copy only when home says
//! `Running`, and home says it only once P has been let go at home (the protocol machine's own
//! `Running`, emitted with `RunRemote`, is held back until then). Any failure before leaves the
//! process running on the remote, unchanged: home parks P again (`Thawing::back_to_shell`) and
//! sends `Abort`, or the remote's time-outs resume it.
//!
//! # Moving on (2 → 3)
//! Goes through home: the process comes home, then leaves again. Home holds the authority, the
//! parked shell and the deputy's fds; a direct 2 → 3 transfer would need the deputy re-pointed
//! while calls may be in flight and a three-party confirm. The price is one more transfer of
//! the image (on loopback a few milliseconds per MiB).
//!
//! # Calls that must run at home
//! When the supervisor stops at such a call ([`migration::remote::Stop::GoHome`]) its
//! notification is left unanswered; the freeze's stop cancels it (the kernel makes the call
//! restartable, -ERESTARTSYS), and the image's registers are those of the call about to be made
//! (rip on the `syscall` instruction, rax the call number). So the call is made exactly once:
//! at home, by P itself, as a normal local process. If home cannot take it back, the process
//! stays on the remote, blocked at that call as before (never a wrong answer), until home asks
//! for it again (`migrate PID home`).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use discovery::NodeId;
use migration::protocol::{self, LocalFacts, MigId, Msg, Target, TargetAction};
use runtime::transport::Lane;

use crate::migrator::{Migrator, Wire};
use crate::remote::ChunkReader;

/// Set in the id of a return trip (the outgoing migration's id otherwise).
pub(crate) const RETURN: MigId = 1 << 63;

/// The deputy's fds by the moved process's fd numbers (shared with its worker thread).
pub(crate) type DeputyFds = Arc<Mutex<HashMap<i32, OwnedFd>>>;

/// From the rebuilding thread to the home thread.
pub(crate) enum BackEv {
    /// Built into P, waiting for the commit.
    Ready,
    /// Could not be built or let go: the shell (parked again), or `None` when P was lost.
    Failed(Option<migrate::HomeShell>, String),
    /// P runs at home as a normal local process.
    Running,
}

/// The home half of one return trip.
pub(crate) struct Back {
    target: Target,
    chunks: Option<mpsc::Sender<Bytes>>,
    go: Option<mpsc::Sender<()>>,
    ev: mpsc::Receiver<BackEv>,
    ev_tx: mpsc::Sender<BackEv>,
    /// P was let go at home.
    pub(crate) ran: bool,
    /// The builder has (or had) the shell.
    building: bool,
    committed: bool,
    pub(crate) why: String,
}

fn send(m: &Migrator, to: NodeId, msg: Msg) {
    m.send(
        to,
        Lane::Control,
        &Wire::Proto { msg, ident: None },
        Bytes::new(),
    );
}

impl Back {
    /// An offer from the node the process runs on: admitted (the executable must still be the
    /// same file here) or refused (the refusal is sent).
    pub(crate) fn on_offer(
        m: &Migrator,
        from: NodeId,
        offer: protocol::Offer,
        why: String,
    ) -> Option<(Back, Vec<TargetAction>)> {
        let facts = LocalFacts {
            up: true,
            blocked: false,
            free_memory: u64::MAX,
            cpu_features: offer.cpu_features.clone(),
            exe: crate::migrator::exe_identity(&offer.exe.path),
            in_progress: 0,
            max_in_progress: 1,
            uid_known: true,
            // home always takes its own process back
            policy_refusal: None,
        };
        let (t, acts) =
            Target::on_offer(protocol::Config::default(), offer, &facts, Instant::now());
        let Some(target) = t else {
            for a in acts {
                if let TargetAction::Send(msg) = a {
                    send(m, from, msg);
                }
            }
            return None;
        };
        let (ev_tx, ev) = mpsc::channel();
        Some((
            Back {
                target,
                chunks: None,
                go: None,
                ev,
                ev_tx,
                ran: false,
                building: false,
                committed: false,
                why,
            },
            acts,
        ))
    }

    pub(crate) fn on_msg(&mut self, msg: Msg) -> Vec<TargetAction> {
        self.target.on_msg(msg, Instant::now())
    }

    pub(crate) fn on_tick(&mut self) -> Vec<TargetAction> {
        self.target.on_tick(Instant::now())
    }

    pub(crate) fn on_built(&mut self, r: Result<(), String>) -> Vec<TargetAction> {
        self.target.on_built(r, Instant::now())
    }

    pub(crate) fn is_done(&self) -> bool {
        self.target.is_done()
    }

    /// The next event of the rebuilding thread, if any.
    pub(crate) fn next_ev(&mut self) -> Option<BackEv> {
        let ev = self.ev.try_recv().ok()?;
        if !matches!(ev, BackEv::Ready) {
            self.building = false;
        }
        Some(ev)
    }

    /// The rebuilding thread has nothing of ours (it ended, or never started).
    pub(crate) fn ev_idle(&self) -> bool {
        !self.building
    }

    /// The commit came (P is, or was being, let go).
    pub(crate) fn committed(&self) -> bool {
        self.committed
    }

    /// Carries out the machine's actions. `shell` is handed to the builder on `StartThaw` (and
    /// comes back in [`BackEv::Failed`]); `fds` are the deputy's.
    pub(crate) fn act(
        &mut self,
        m: &Migrator,
        from: NodeId,
        acts: Vec<TargetAction>,
        shell: &mut Option<migrate::HomeShell>,
        fds: &DeputyFds,
    ) {
        let mut acts = std::collections::VecDeque::from(acts);
        while let Some(a) = acts.pop_front() {
            match a {
                // held back until P really runs at home (see the module docs)
                TargetAction::Send(Msg::Running { .. }) if !self.ran => {}
                TargetAction::Send(msg) => send(m, from, msg),
                TargetAction::StartThaw(_) => {
                    let r = start(shell.take(), fds, self.ev_tx.clone());
                    match r {
                        Ok((chunks, go)) => {
                            self.chunks = Some(chunks);
                            self.go = Some(go);
                            self.building = true;
                        }
                        Err((sh, e)) => {
                            *shell = sh;
                            acts.extend(self.on_built(Err(e)));
                        }
                    }
                }
                TargetAction::Feed { data, .. } => {
                    if let Some(c) = &self.chunks {
                        let _ = c.send(data);
                    }
                }
                TargetAction::FinishThaw => self.chunks = None,
                TargetAction::RunRemote => {
                    self.committed = true;
                    if let Some(g) = &self.go {
                        let _ = g.send(());
                    }
                }
                TargetAction::KillRemote { reason } => {
                    // never P itself: the builder parks it again when the commit cannot come
                    tracing::info!("coming home given up: {reason}");
                    self.go = None;
                    self.chunks = None;
                }
            }
        }
    }

    /// P runs at home: the `Running` the machine emitted is sent now.
    pub(crate) fn now_running(&mut self, m: &Migrator, from: NodeId) {
        self.ran = true;
        send(
            m,
            from,
            Msg::Running {
                mig: self.target.mig(),
            },
        );
    }

    /// Letting P go failed after the commit: the remote copy must run on.
    pub(crate) fn run_failed(&self, m: &Migrator, from: NodeId, e: &str) {
        send(
            m,
            from,
            Msg::Abort {
                mig: self.target.mig(),
                reason: protocol::AbortReason::BuildFailed(e.to_string()),
            },
        );
    }
}

type Started = (mpsc::Sender<Bytes>, mpsc::Sender<()>);

/// Copies of the deputy's fds (waiting at most 2 s for a forwarded call that holds them) and
/// the rebuilding thread.
fn start(
    shell: Option<migrate::HomeShell>,
    fds: &DeputyFds,
    out: mpsc::Sender<BackEv>,
) -> Result<Started, (Option<migrate::HomeShell>, String)> {
    let Some(shell) = shell else {
        return Err((None, "home has no parked shell for it".into()));
    };
    let t0 = Instant::now();
    let copies = loop {
        match fds.try_lock() {
            Ok(g) => {
                let mut v = Vec::new();
                for (&n, f) in g.iter() {
                    match f.try_clone() {
                        Ok(c) => v.push((n, c)),
                        Err(e) => {
                            return Err((Some(shell), format!("dup of the deputy's fd {n}: {e}")));
                        }
                    }
                }
                break v;
            }
            Err(std::sync::TryLockError::Poisoned(_)) => {
                return Err((Some(shell), "the deputy's fd table is unusable".into()));
            }
            Err(std::sync::TryLockError::WouldBlock) if t0.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err((
                    Some(shell),
                    "a forwarded call is still running at home; try again".into(),
                ));
            }
        }
    };
    let (ctx, crx) = mpsc::channel();
    let (gtx, grx) = mpsc::channel();
    let pid = shell.pid();
    let (shell_tx, shell_rx) = mpsc::channel::<migrate::HomeShell>();
    let _ = shell_tx.send(shell);
    let spawned = std::thread::Builder::new()
        .name(format!("mig-back-{pid}"))
        .spawn(move || {
            let shell = shell_rx.recv().expect("sent above");
            let reader = ChunkReader::new(crx);
            let ev = build_back(shell, copies, reader, grx, &out);
            let _ = out.send(ev);
        });
    match spawned {
        Ok(_) => Ok((ctx, gtx)),
        // the closure (and the shell with it) is gone: P is lost with its tracer thread
        Err(e) => Err((None, format!("cannot start the rebuilding thread: {e}"))),
    }
}

/// Rebuilds the process into P, waits for the commit, lets P go.
fn build_back(
    shell: migrate::HomeShell,
    mut fds: Vec<(i32, OwnedFd)>,
    reader: ChunkReader,
    go: mpsc::Receiver<()>,
    out: &mpsc::Sender<BackEv>,
) -> BackEv {
    let mut reader = match migrate::ImageReader::new(reader) {
        Ok(r) => r,
        Err(e) => return BackEv::Failed(Some(shell), e.to_string()),
    };
    // fds opened by DFSA where it ran are opened again here (same /mfs path, same file)
    let held: Vec<i32> = fds.iter().map(|(n, _)| *n).collect();
    fds.extend(crate::mfsd::reopen_dfsa_fds(reader.process(), &held));
    let raw: Vec<(i32, RawFd)> = fds.iter().map(|(n, f)| (*n, f.as_raw_fd())).collect();
    let mut t = match migrate::Thawing::into_shell(&mut reader, shell, &raw) {
        Ok(t) => t,
        Err((sh, e)) => return BackEv::Failed(Some(sh), e.to_string()),
    };
    let r = (|| {
        t.pages(&mut reader)?;
        t.attributes()?;
        t.fds()
    })();
    if let Err(e) = r {
        return match t.back_to_shell() {
            Ok(sh) => BackEv::Failed(Some(sh), e.to_string()),
            Err(e2) => BackEv::Failed(None, format!("{e}; then {e2}")),
        };
    }
    drop(fds);
    let _ = out.send(BackEv::Ready);
    match go.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => match t.run_home() {
            Ok(_) => BackEv::Running,
            Err((sh, e)) => BackEv::Failed(sh, e.to_string()),
        },
        Err(_) => match t.back_to_shell() {
            Ok(sh) => BackEv::Failed(Some(sh), "no commit came".into()),
            Err(e) => BackEv::Failed(None, format!("no commit came; {e}")),
        },
    }
}
