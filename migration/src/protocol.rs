//! The migration protocol as two sans-IO state machines: [`Home`] (the node the process leaves)
//! and [`Target`] (the node it goes to).
//!
//! Neither machine reads the clock or touches a socket or a process. The shell passes every
//! received [`Msg`] and regular ticks (or sleeps until `next_deadline`) with `now`, and carries
//! out the returned [`HomeAction`]s / [`TargetAction`]s in order.
//!
//! # The exchange
//! ```text
//! home                                   target
//! Offer ───────────────────────────────▶ admit? ── StartThaw
//!       ◀─────────────────────── Accept{window} | Refuse{reason}
//! Chunk(offset,data)… (≤ window unacked) ▶ Feed
//!       ◀─────────────────────────────── Ack{received}    (or consumed: Config::ack_consumed)
//!                                         (all bytes) FinishThaw … on_built
//!       ◀─────────────────────────────── Confirm          (built, stopped, not running)
//! Commit ──────────────────────────────▶ RunRemote
//!       ◀─────────────────────────────── Running
//! ParkHome                                 Alive ⇄ Alive (liveness while it runs)
//!       ◀─────────────────────────────── Exited{status}    (the copy ended; re-sent)
//! ReproduceExit, ExitAck ──────────────▶
//! ```
//!
//! # Why no process runs twice, and when it runs nowhere
//! - The target runs its copy only after receiving `Commit`. Home sends `Commit` only after
//!   `Confirm`, and never resumes the home process after sending it, except when the target
//!   says it never ran its copy (`Gone { ran: false }`).
//! - Before home sends `Commit`, any failure (refusal, a silent or dead target, a stalled
//!   stream, a build error) ends with [`HomeAction::ResumeAtHome`]: the frozen process continues
//!   at home, untouched, and the target kills whatever it built ([`TargetAction::KillRemote`]):
//!   on home's `Abort`, or when its own time-out fires (a lost `Abort` changes nothing).
//! - Once committed, each side watches the other: silence for `failure_timeout` makes the
//!   target kill its copy (home died: nothing is left behind) and home end the parked process
//!   ([`HomeAction::EndHome`], target lost). A silence shorter than that kills nothing.
//! - The exception is the two-generals window after `Commit` is sent: if every message between
//!   the two nodes is lost for `failure_timeout`, home cannot know whether the target ran the
//!   copy. It then never resumes (that could run the process twice); the process ends on both
//!   sides, and home says why. That is the documented "target lost after the move" ending.
//!
//! Every control message is re-sent every `resend_interval` until answered, and every
//! handler is idempotent, so the protocol survives lost, duplicated and delayed messages.
//! The image stream is go-back-N over byte offsets: the target takes only the chunk starting at
//! the next expected offset and acknowledges the bytes received so far; the sender never has
//! more than `window` unacknowledged bytes in flight, and resends from the last acknowledged
//! offset when acknowledgements stop coming.
//!
//! With [`Config::ack_consumed`] the target acknowledges bytes only when its builder has
//! consumed them ([`Target::on_consumed`]), so the bytes it holds unconsumed never exceed the
//! window (a chunk past `consumed-acknowledged + window` is a protocol error), and a builder
//! that stops consuming for `stream_timeout` ends the move before the commit.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One migration attempt, chosen by home (unique per home node; the shell routes by it).
pub type MigId = u64;

/// Identity of the executable: where it is and what it contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExeIdentity {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    /// A hash of the whole content (e.g. SHA-256); compared, never trusted alone with size.
    pub content_hash: [u8; 32],
}

/// What home proposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub mig: MigId,
    /// The process's PID at home.
    pub pid: u32,
    pub uid: u32,
    /// Total bytes of the image that will be streamed.
    pub image_size: u64,
    /// Memory the rebuilt process needs on the target (resident set), in bytes.
    pub memory_needed: u64,
    /// CPU feature flags the process may rely on (names as in /proc/cpuinfo `flags`).
    pub cpu_features: Vec<String>,
    pub exe: ExeIdentity,
}

/// Why a target refuses an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The target is not up (shutting down, or not yet ready).
    NotUp,
    /// The target is blocked for arrivals (`mosctl block`).
    Blocked,
    /// Not enough free memory for the process.
    OutOfMemory { needed: u64, free: u64 },
    /// The target's CPU lacks features the process may use.
    MissingCpuFeatures { missing: Vec<String> },
    /// The executable on the target is not the same file (absent, or identity/content differ).
    ExeDiffers { path: String, detail: String },
    /// Too many migrations in progress on the target.
    Busy,
    /// The target cannot run processes of this uid.
    UnknownUser { uid: u32 },
    /// The target's balancing policy refuses guests now (its memory or load; the reason
    /// names the node and the figures).
    Policy(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotUp => f.write_str("the node is not up"),
            Refusal::Blocked => f.write_str("the node is blocked for arriving processes"),
            Refusal::OutOfMemory { needed, free } => {
                write!(f, "not enough memory: needs {needed} bytes, {free} free")
            }
            Refusal::MissingCpuFeatures { missing } => {
                write!(f, "CPU lacks features: {}", missing.join(" "))
            }
            Refusal::ExeDiffers { path, detail } => {
                write!(f, "executable {path} differs on the node: {detail}")
            }
            Refusal::Busy => f.write_str("too many migrations in progress on the node"),
            Refusal::UnknownUser { uid } => write!(f, "cannot run processes of uid {uid}"),
            Refusal::Policy(why) => f.write_str(why),
        }
    }
}

/// Why a migration was given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// The target refused the offer.
    Refused(Refusal),
    /// No answer to the offer within the offer time-out.
    OfferTimeout,
    /// No acknowledgement progress within the stream time-out.
    StreamStalled,
    /// No chunk from home within the stream time-out (seen by the target).
    HomeSilent,
    /// The target could not build the process.
    BuildFailed(String),
    /// No confirmation within the confirm time-out.
    ConfirmTimeout,
    /// No commit within the commit time-out (seen by the target).
    CommitTimeout,
    /// The peer sent an abort.
    PeerAborted(Box<AbortReason>),
    /// The home shell cancelled (e.g. the process exited while frozen).
    Cancelled(String),
    /// The peer sent something that does not fit the protocol (wrong size, bad offset).
    Protocol(String),
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::Refused(r) => write!(f, "refused: {r}"),
            AbortReason::OfferTimeout => f.write_str("no answer to the offer"),
            AbortReason::StreamStalled => f.write_str("the target stopped acknowledging the image"),
            AbortReason::HomeSilent => f.write_str("home stopped sending the image"),
            AbortReason::BuildFailed(e) => write!(f, "the target could not rebuild it: {e}"),
            AbortReason::ConfirmTimeout => f.write_str("the target did not confirm"),
            AbortReason::CommitTimeout => f.write_str("home did not commit"),
            AbortReason::PeerAborted(r) => write!(f, "the peer gave up: {r}"),
            AbortReason::Cancelled(e) => write!(f, "cancelled: {e}"),
            AbortReason::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// How the moved process ended on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitStatus {
    /// It called exit with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

/// The wire messages of the protocol (both directions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Offer(Offer),
    /// The target accepts; home may have `window` unacknowledged bytes in flight.
    Accept {
        mig: MigId,
        window: u64,
    },
    Refuse {
        mig: MigId,
        reason: Refusal,
    },
    /// Image bytes `[offset, offset + data.len())` (bulk lane).
    Chunk {
        mig: MigId,
        offset: u64,
        data: Bytes,
    },
    /// The target holds the first `received` bytes of the image (with
    /// [`Config::ack_consumed`]: its builder has consumed them).
    Ack {
        mig: MigId,
        received: u64,
    },
    /// The target built the process; it is stopped and waits for `Commit`.
    Confirm {
        mig: MigId,
    },
    /// Home lets go: the target may run the process.
    Commit {
        mig: MigId,
    },
    /// The target runs the process.
    Running {
        mig: MigId,
    },
    /// Either side gives up before the commit.
    Abort {
        mig: MigId,
        reason: AbortReason,
    },
    /// The target no longer has the migration; `ran` says whether its copy ever ran.
    Gone {
        mig: MigId,
        ran: bool,
    },
    /// Liveness while the moved process runs (any other message counts too).
    Alive {
        mig: MigId,
    },
    /// The moved process ended on the target (re-sent until acknowledged).
    Exited {
        mig: MigId,
        status: ExitStatus,
    },
    /// Home reproduced the exit.
    ExitAck {
        mig: MigId,
    },
}

impl Msg {
    pub fn mig(&self) -> MigId {
        match self {
            Msg::Offer(o) => o.mig,
            Msg::Accept { mig, .. }
            | Msg::Refuse { mig, .. }
            | Msg::Chunk { mig, .. }
            | Msg::Ack { mig, .. }
            | Msg::Confirm { mig }
            | Msg::Commit { mig }
            | Msg::Running { mig }
            | Msg::Abort { mig, .. }
            | Msg::Gone { mig, .. }
            | Msg::Alive { mig }
            | Msg::Exited { mig, .. }
            | Msg::ExitAck { mig } => *mig,
        }
    }
}

/// Time-outs and sizes. Both ends should use the same values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Unanswered control messages are re-sent this often. Default 200 ms.
    pub resend_interval: Duration,
    /// Home gives up when the offer is not answered within this. Default 2 s.
    pub offer_timeout: Duration,
    /// Home gives up when acknowledgements make no progress for this long; the target gives up
    /// when no expected chunk arrives for this long. Default 5 s.
    pub stream_timeout: Duration,
    /// Home gives up when the target has not confirmed this long after the last byte was
    /// acknowledged. Default 10 s (the target builds the process meanwhile).
    pub confirm_timeout: Duration,
    /// The target kills its built copy when no commit arrives this long after it confirmed.
    /// Must be longer than `confirm_timeout` is short: default 3 s.
    pub commit_timeout: Duration,
    /// After the commit, silence this long from the peer ends the process on that side.
    /// Default 5 s.
    pub failure_timeout: Duration,
    /// While the moved process runs, each side sends `Alive` this often. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// Largest chunk of image data. Default 1 MiB.
    pub chunk_size: u64,
    /// The window the target grants (bytes in flight). Default 16 MiB. The target acknowledges
    /// once per quarter window (and at the end), not per chunk: home always has a quarter of
    /// the window to send while an acknowledgement travels.
    pub window: u64,
    /// The target acknowledges only bytes its builder has consumed (reported by the shell with
    /// [`Target::on_consumed`]), not bytes received: the bytes held on the target between the
    /// socket and the builder never exceed `window`, however slow the builder. A builder that
    /// consumes nothing for `stream_timeout` while bytes wait fails the move (before the
    /// commit: the process stays at home). Default false (acknowledge on receipt) for shells
    /// that do not report consumption.
    pub ack_consumed: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            resend_interval: Duration::from_millis(200),
            offer_timeout: Duration::from_secs(2),
            stream_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
            commit_timeout: Duration::from_secs(3),
            failure_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_millis(500),
            chunk_size: 1024 * 1024,
            window: 16 * 1024 * 1024,
            ack_consumed: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Home
// ---------------------------------------------------------------------------------------------

/// What the home shell has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeAction {
    /// Send this message to the target.
    Send(Msg),
    /// Read image bytes `[offset, offset + len)` and send them as [`Msg::Chunk`] (bulk lane).
    /// The same range may be asked for again (resend after loss): the image must stay readable
    /// until the migration ends.
    SendChunk { offset: u64, len: u64 },
    /// The migration failed before the commit: let the frozen process continue at home,
    /// untouched.
    ResumeAtHome { reason: AbortReason },
    /// The target runs the process: turn the home process into the parked shell.
    ParkHome,
    /// The process was lost after the commit (target dead or unreachable): end the home shell
    /// with the documented status and log `reason`.
    EndHome { reason: String },
    /// The moved process ended on the target: make the home shell end the same way.
    ReproduceExit(ExitStatus),
}

/// Where the home side of a migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeState {
    Offering,
    Streaming {
        acked: u64,
        sent: u64,
    },
    AwaitConfirm,
    /// `Commit` sent; the process stays frozen until `Running` (or `Gone { ran: false }`).
    Committing,
    /// The process runs on the target; home holds the parked shell.
    Moved,
    /// Ended: the process continues at home.
    Resumed(AbortReason),
    /// Ended: the process was lost after the commit.
    Lost(String),
    /// Ended: the moved process ended with this status, reproduced at home.
    Finished(ExitStatus),
}

/// The home end of one migration. See the module documentation.
#[derive(Debug, Clone)]
pub struct Home {
    config: Config,
    offer: Offer,
    state: HomeState,
    window: u64,
    /// The highest image offset ever sent (acks up to it are legitimate after a go-back).
    high: u64,
    /// When the current state's time-out started counting.
    since: Instant,
    /// When the last message that needs an answer (or a heartbeat) was sent.
    last_send: Instant,
    /// Last message received from the target.
    last_heard: Instant,
}

impl Home {
    /// Starts a migration: the process is frozen; returns the machine and the offer to send.
    pub fn start(config: Config, offer: Offer, now: Instant) -> (Self, Vec<HomeAction>) {
        let msg = Msg::Offer(offer.clone());
        let home = Home {
            config,
            offer,
            state: HomeState::Offering,
            window: 0,
            high: 0,
            since: now,
            last_send: now,
            last_heard: now,
        };
        (home, vec![HomeAction::Send(msg)])
    }

    pub fn state(&self) -> &HomeState {
        &self.state
    }

    pub fn mig(&self) -> MigId {
        self.offer.mig
    }

    /// True once the machine has ended (resumed at home or lost); `Moved` is not an end: the
    /// machine keeps watching the target's liveness.
    pub fn is_done(&self) -> bool {
        matches!(
            self.state,
            HomeState::Resumed(_) | HomeState::Lost(_) | HomeState::Finished(_)
        )
    }

    /// The latest time the shell must call [`Home::on_tick`] by (None once done).
    pub fn next_deadline(&self) -> Option<Instant> {
        let c = &self.config;
        let resend = self.last_send + c.resend_interval;
        match self.state {
            HomeState::Offering => Some(resend.min(self.since + c.offer_timeout)),
            HomeState::Streaming { .. } => Some(resend.min(self.since + c.stream_timeout)),
            HomeState::AwaitConfirm => Some(resend.min(self.since + c.confirm_timeout)),
            HomeState::Committing => Some(resend.min(self.last_heard + c.failure_timeout)),
            HomeState::Moved => Some(
                (self.last_send + c.heartbeat_interval).min(self.last_heard + c.failure_timeout),
            ),
            HomeState::Resumed(_) | HomeState::Lost(_) | HomeState::Finished(_) => None,
        }
    }

    fn msg_mig(&self) -> MigId {
        self.offer.mig
    }

    fn resume(&mut self, reason: AbortReason, tell_target: bool) -> Vec<HomeAction> {
        let mut out = Vec::new();
        if tell_target {
            out.push(HomeAction::Send(Msg::Abort {
                mig: self.msg_mig(),
                reason: reason.clone(),
            }));
        }
        out.push(HomeAction::ResumeAtHome {
            reason: reason.clone(),
        });
        self.state = HomeState::Resumed(reason);
        out
    }

    fn lose(&mut self, reason: String) -> Vec<HomeAction> {
        self.state = HomeState::Lost(reason.clone());
        vec![HomeAction::EndHome { reason }]
    }

    /// Chunks that fit in the window from `sent` on.
    fn fill_window(&mut self, out: &mut Vec<HomeAction>) {
        let HomeState::Streaming { acked, sent } = &mut self.state else {
            return;
        };
        let total = self.offer.image_size;
        let window = self.window.max(1);
        let chunk = self.config.chunk_size.max(1);
        while *sent < total {
            let in_flight = *sent - *acked;
            if in_flight >= window {
                break;
            }
            let len = chunk.min(total - *sent).min(window - in_flight);
            out.push(HomeAction::SendChunk { offset: *sent, len });
            *sent += len;
            self.high = self.high.max(*sent);
        }
    }

    /// The home shell gives up before the commit (e.g. the frozen process was killed).
    /// After `Commit` was sent this does nothing: the decision is no longer home's alone.
    pub fn cancel(&mut self, why: &str, now: Instant) -> Vec<HomeAction> {
        let _ = now;
        match self.state {
            HomeState::Offering | HomeState::Streaming { .. } | HomeState::AwaitConfirm => {
                self.resume(AbortReason::Cancelled(why.to_string()), true)
            }
            _ => Vec::new(),
        }
    }

    /// A message from the target.
    pub fn on_msg(&mut self, msg: Msg, now: Instant) -> Vec<HomeAction> {
        if msg.mig() != self.offer.mig {
            return Vec::new();
        }
        self.last_heard = self.last_heard.max(now);
        let mut out = Vec::new();
        match (&self.state, msg) {
            (HomeState::Offering, Msg::Accept { window, .. }) => {
                // home's own limit too: the bytes in flight are held in home's memory
                self.window = window.min(self.config.window);
                self.state = HomeState::Streaming { acked: 0, sent: 0 };
                self.since = now;
                self.last_send = now;
                if self.offer.image_size == 0 {
                    self.state = HomeState::AwaitConfirm;
                } else {
                    self.fill_window(&mut out);
                }
            }
            (HomeState::Offering, Msg::Refuse { reason, .. }) => {
                return self.resume(AbortReason::Refused(reason), false);
            }
            (HomeState::Streaming { acked, sent }, Msg::Ack { received, .. }) => {
                let (acked, sent) = (*acked, *sent);
                if received > self.high {
                    return self.resume(
                        AbortReason::Protocol(format!(
                            "ack of {received} bytes, only {} of {} sent",
                            self.high, self.offer.image_size
                        )),
                        true,
                    );
                }
                if received > acked {
                    self.since = now;
                    self.last_send = now;
                    if received == self.offer.image_size {
                        self.state = HomeState::AwaitConfirm;
                    } else {
                        self.state = HomeState::Streaming {
                            acked: received,
                            sent: sent.max(received),
                        };
                        self.fill_window(&mut out);
                    }
                }
            }
            (HomeState::Streaming { .. } | HomeState::AwaitConfirm, Msg::Confirm { .. }) => {
                // A confirm during the stream can only come from a confused target: it cannot
                // have built a process from an incomplete image.
                if matches!(self.state, HomeState::Streaming { .. }) {
                    return self.resume(
                        AbortReason::Protocol(
                            "confirm before the whole image was acknowledged".into(),
                        ),
                        true,
                    );
                }
                self.state = HomeState::Committing;
                self.since = now;
                self.last_send = now;
                out.push(HomeAction::Send(Msg::Commit {
                    mig: self.msg_mig(),
                }));
            }
            (
                HomeState::Offering | HomeState::Streaming { .. } | HomeState::AwaitConfirm,
                Msg::Abort { reason, .. },
            ) => {
                return self.resume(AbortReason::PeerAborted(Box::new(reason)), false);
            }
            (
                HomeState::Offering | HomeState::Streaming { .. } | HomeState::AwaitConfirm,
                Msg::Gone { .. },
            ) => {
                return self.resume(
                    AbortReason::PeerAborted(Box::new(AbortReason::Protocol(
                        "target forgot the migration".into(),
                    ))),
                    false,
                );
            }
            (HomeState::Committing | HomeState::Moved, Msg::Exited { status, .. }) => {
                // An exit while committing: the target ran it and our `Running` was lost.
                if self.state == HomeState::Committing {
                    out.push(HomeAction::ParkHome);
                }
                self.state = HomeState::Finished(status);
                out.push(HomeAction::ReproduceExit(status));
                out.push(HomeAction::Send(Msg::ExitAck {
                    mig: self.msg_mig(),
                }));
            }
            (HomeState::Finished(_) | HomeState::Lost(_), Msg::Exited { .. }) => {
                out.push(HomeAction::Send(Msg::ExitAck {
                    mig: self.msg_mig(),
                }));
            }
            // Only a running target sends `Alive`: it also means our commit arrived (the
            // `Running` answers may all have been lost).
            (HomeState::Committing, Msg::Running { .. } | Msg::Alive { .. }) => {
                self.state = HomeState::Moved;
                self.last_send = now;
                out.push(HomeAction::ParkHome);
            }
            (HomeState::Committing, Msg::Confirm { .. }) => {
                // Our commit was lost or is late: the resend timer handles it.
            }
            (HomeState::Committing, Msg::Gone { ran: false, .. } | Msg::Abort { .. }) => {
                // The target never ran its copy: the frozen process is still the only one.
                return self.resume(AbortReason::CommitTimeout, false);
            }
            (HomeState::Committing | HomeState::Moved, Msg::Gone { ran: true, .. }) => {
                return self
                    .lose("the target ended the moved process (it lost contact with home)".into());
            }
            (HomeState::Resumed(_), Msg::Confirm { .. } | Msg::Accept { .. } | Msg::Ack { .. }) => {
                // A late answer to a migration we gave up: make sure the target drops it.
                out.push(HomeAction::Send(Msg::Abort {
                    mig: self.msg_mig(),
                    reason: AbortReason::Cancelled("home already resumed the process".into()),
                }));
            }
            _ => {}
        }
        out
    }

    /// Time passes: resends, heartbeats and time-outs.
    pub fn on_tick(&mut self, now: Instant) -> Vec<HomeAction> {
        let c = self.config.clone();
        let resend_due = now >= self.last_send + c.resend_interval;
        let mut out = Vec::new();
        match self.state.clone() {
            HomeState::Offering => {
                if now >= self.since + c.offer_timeout {
                    return self.resume(AbortReason::OfferTimeout, true);
                }
                if resend_due {
                    self.last_send = now;
                    out.push(HomeAction::Send(Msg::Offer(self.offer.clone())));
                }
            }
            HomeState::Streaming { acked, .. } => {
                if now >= self.since + c.stream_timeout {
                    return self.resume(AbortReason::StreamStalled, true);
                }
                if resend_due {
                    // Go back to the last acknowledged byte.
                    self.last_send = now;
                    self.state = HomeState::Streaming { acked, sent: acked };
                    self.fill_window(&mut out);
                }
            }
            HomeState::AwaitConfirm => {
                if now >= self.since + c.confirm_timeout {
                    return self.resume(AbortReason::ConfirmTimeout, true);
                }
            }
            HomeState::Committing => {
                if now >= self.last_heard + c.failure_timeout {
                    return self.lose(format!(
                        "no word from the target for {:?} after the commit; it may have run the \
                         process, so it is not resumed at home",
                        now - self.last_heard
                    ));
                }
                if resend_due {
                    self.last_send = now;
                    out.push(HomeAction::Send(Msg::Commit {
                        mig: self.msg_mig(),
                    }));
                }
            }
            HomeState::Moved => {
                if now >= self.last_heard + c.failure_timeout {
                    return self.lose(format!(
                        "no word from the target for {:?} while the process ran there",
                        now - self.last_heard
                    ));
                }
                if now >= self.last_send + c.heartbeat_interval {
                    self.last_send = now;
                    out.push(HomeAction::Send(Msg::Alive {
                        mig: self.msg_mig(),
                    }));
                }
            }
            HomeState::Resumed(_) | HomeState::Lost(_) | HomeState::Finished(_) => {}
        }
        out
    }

    /// Any other traffic from the target (forwarded calls) is a sign of life too.
    pub fn on_sign_of_life(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }
}

// ---------------------------------------------------------------------------------------------
// Target
// ---------------------------------------------------------------------------------------------

/// What the target knows about itself when an offer comes in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    pub up: bool,
    pub blocked: bool,
    pub free_memory: u64,
    pub cpu_features: Vec<String>,
    /// The identity of the file at the offer's exe path on this node (None: absent).
    pub exe: Option<ExeIdentity>,
    /// Migrations already in progress here, and how many are allowed at once.
    pub in_progress: usize,
    pub max_in_progress: usize,
    /// Whether this node can run processes of the offer's uid.
    pub uid_known: bool,
    /// Why the node's balancing policy takes no guest of this size now (its free memory
    /// or its load), if it does not.
    pub policy_refusal: Option<String>,
}

/// Decides whether the target takes an offer. Pure: the same facts give the same answer.
pub fn admit(offer: &Offer, facts: &LocalFacts) -> Result<(), Refusal> {
    if !facts.up {
        return Err(Refusal::NotUp);
    }
    if facts.blocked {
        return Err(Refusal::Blocked);
    }
    if facts.in_progress >= facts.max_in_progress {
        return Err(Refusal::Busy);
    }
    if let Some(why) = &facts.policy_refusal {
        return Err(Refusal::Policy(why.clone()));
    }
    if !facts.uid_known {
        return Err(Refusal::UnknownUser { uid: offer.uid });
    }
    let missing: Vec<String> = offer
        .cpu_features
        .iter()
        .filter(|f| !facts.cpu_features.contains(f))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(Refusal::MissingCpuFeatures { missing });
    }
    if offer.memory_needed > facts.free_memory {
        return Err(Refusal::OutOfMemory {
            needed: offer.memory_needed,
            free: facts.free_memory,
        });
    }
    let path = offer.exe.path.clone();
    match &facts.exe {
        None => {
            return Err(Refusal::ExeDiffers {
                path,
                detail: "not found".into(),
            });
        }
        Some(here) => {
            // dev/ino/mtime differ between machines even for identical files; size and content
            // decide. (dev/ino are kept for the same-node case and for logs.)
            if here.size != offer.exe.size {
                return Err(Refusal::ExeDiffers {
                    path,
                    detail: format!("size {} here, {} at home", here.size, offer.exe.size),
                });
            }
            if here.content_hash != offer.exe.content_hash {
                return Err(Refusal::ExeDiffers {
                    path,
                    detail: "content differs (hash)".into(),
                });
            }
        }
    }
    Ok(())
}

/// What the target shell has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAction {
    Send(Msg),
    /// Start building a fresh process for this offer (stopped, not running).
    StartThaw(Offer),
    /// Apply image bytes at `offset` (always the next expected offset: bytes arrive in order).
    Feed {
        offset: u64,
        data: Bytes,
    },
    /// The whole image arrived: finish the build, then call [`Target::on_built`].
    FinishThaw,
    /// Home committed: let the rebuilt process run.
    RunRemote,
    /// Kill the copy here (partly built, built, or running) and leave nothing behind.
    KillRemote {
        reason: AbortReason,
    },
}

/// Where the target side of a migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    Receiving {
        received: u64,
    },
    Building,
    AwaitCommit,
    Running,
    /// The copy ended with this status; telling home until it acknowledges.
    Exited(ExitStatus),
    /// Ended; `ran` says whether the copy ever ran here.
    Done {
        ran: bool,
        reason: Option<AbortReason>,
    },
}

/// The target end of one migration. See the module documentation.
#[derive(Debug, Clone)]
pub struct Target {
    config: Config,
    offer: Offer,
    state: TargetState,
    since: Instant,
    last_send: Instant,
    last_heard: Instant,
    /// The answer to the offer (re-sent on a duplicate offer).
    answer: Msg,
    /// Bytes the builder consumed (== received unless `config.ack_consumed`).
    consumed: u64,
    /// The highest `received` acknowledged so far.
    acked: u64,
    /// Since when bytes wait for the builder without it consuming any (`ack_consumed` only).
    waiting_since: Instant,
}

impl Target {
    /// An offer came in. Returns None with the refusal to send when `facts` say no.
    pub fn on_offer(
        config: Config,
        offer: Offer,
        facts: &LocalFacts,
        now: Instant,
    ) -> (Option<Self>, Vec<TargetAction>) {
        if let Err(reason) = admit(&offer, facts) {
            return (
                None,
                vec![TargetAction::Send(Msg::Refuse {
                    mig: offer.mig,
                    reason,
                })],
            );
        }
        let answer = Msg::Accept {
            mig: offer.mig,
            window: config.window,
        };
        let mut out = vec![TargetAction::StartThaw(offer.clone())];
        let state = if offer.image_size == 0 {
            out.push(TargetAction::FinishThaw);
            TargetState::Building
        } else {
            TargetState::Receiving { received: 0 }
        };
        out.push(TargetAction::Send(answer.clone()));
        let t = Target {
            config,
            offer,
            state,
            since: now,
            last_send: now,
            last_heard: now,
            answer,
            consumed: 0,
            acked: 0,
            waiting_since: now,
        };
        (Some(t), out)
    }

    pub fn state(&self) -> &TargetState {
        &self.state
    }

    pub fn mig(&self) -> MigId {
        self.offer.mig
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, TargetState::Done { .. })
    }

    /// The latest time the shell must call [`Target::on_tick`] by (None once done).
    pub fn next_deadline(&self) -> Option<Instant> {
        let c = &self.config;
        let stall = self
            .builder_waits()
            .then(|| self.waiting_since + c.stream_timeout);
        match self.state {
            TargetState::Receiving { .. } => {
                let silent = self.last_heard + c.stream_timeout;
                Some(stall.map_or(silent, |s| s.min(silent)))
            }
            TargetState::Building => stall,
            TargetState::AwaitCommit => {
                Some((self.last_send + c.resend_interval).min(self.since + c.commit_timeout))
            }
            TargetState::Running => Some(
                (self.last_send + c.heartbeat_interval).min(self.last_heard + c.failure_timeout),
            ),
            TargetState::Exited(_) => {
                Some((self.last_send + c.resend_interval).min(self.last_heard + c.failure_timeout))
            }
            TargetState::Done { .. } => None,
        }
    }

    /// Bytes received so far (the whole image once receiving ended).
    fn received(&self) -> u64 {
        match self.state {
            TargetState::Receiving { received } => received,
            _ => self.offer.image_size,
        }
    }

    /// Whether received bytes wait for the builder (only counted with `ack_consumed`, before
    /// the build is reported).
    fn builder_waits(&self) -> bool {
        self.config.ack_consumed
            && matches!(
                self.state,
                TargetState::Receiving { .. } | TargetState::Building
            )
            && self.consumed < self.received()
    }

    /// The point acknowledged now: what the builder consumed, or what arrived.
    fn ack_point(&self) -> u64 {
        if self.config.ack_consumed {
            self.consumed
        } else {
            self.received()
        }
    }

    fn ack(&mut self, received: u64) -> TargetAction {
        self.acked = self.acked.max(received);
        TargetAction::Send(Msg::Ack {
            mig: self.offer.mig,
            received,
        })
    }

    /// Bytes held here that the builder has not consumed yet (never more than the window with
    /// `ack_consumed`).
    pub fn unconsumed(&self) -> u64 {
        match self.state {
            TargetState::Receiving { .. } | TargetState::Building => {
                self.received() - self.consumed
            }
            _ => 0,
        }
    }

    /// The builder has consumed the first `consumed` bytes of the image (the shell reports it;
    /// with `ack_consumed` this is what gets acknowledged, once per quarter window crossed and
    /// at the end). Reports beyond the bytes received are a fault of the shell: the move ends.
    pub fn on_consumed(&mut self, consumed: u64, now: Instant) -> Vec<TargetAction> {
        if !self.config.ack_consumed
            || !matches!(
                self.state,
                TargetState::Receiving { .. } | TargetState::Building
            )
            || consumed <= self.consumed
        {
            return Vec::new();
        }
        if consumed > self.received() {
            return self.kill(
                AbortReason::BuildFailed(format!(
                    "the builder reports {consumed} bytes consumed, only {} received",
                    self.received()
                )),
                true,
            );
        }
        let before = self.consumed;
        self.consumed = consumed;
        self.waiting_since = now;
        let step = (self.config.window / 4).max(1);
        if consumed / step != before / step || consumed == self.offer.image_size {
            vec![self.ack(consumed)]
        } else {
            Vec::new()
        }
    }

    /// The shell gives up before the commit (e.g. it cannot hand bytes to the builder): the
    /// copy is killed and home told. Does nothing after the commit.
    pub fn fail(&mut self, why: String) -> Vec<TargetAction> {
        match self.state {
            TargetState::Receiving { .. } | TargetState::Building | TargetState::AwaitCommit => {
                self.kill(AbortReason::BuildFailed(why), true)
            }
            _ => Vec::new(),
        }
    }

    fn kill(&mut self, reason: AbortReason, tell_home: bool) -> Vec<TargetAction> {
        let ran = self.state == TargetState::Running;
        let mut out = vec![TargetAction::KillRemote {
            reason: reason.clone(),
        }];
        if tell_home {
            out.push(TargetAction::Send(if ran {
                Msg::Gone {
                    mig: self.offer.mig,
                    ran,
                }
            } else {
                Msg::Abort {
                    mig: self.offer.mig,
                    reason: reason.clone(),
                }
            }));
        }
        self.state = TargetState::Done {
            ran,
            reason: Some(reason),
        };
        out
    }

    /// The running copy ended (the shell reaped it): tell home, until it acknowledges.
    pub fn on_exited(&mut self, status: ExitStatus, now: Instant) -> Vec<TargetAction> {
        if self.state != TargetState::Running {
            return Vec::new();
        }
        self.state = TargetState::Exited(status);
        self.last_send = now;
        vec![TargetAction::Send(Msg::Exited {
            mig: self.offer.mig,
            status,
        })]
    }

    /// The shell finished building (after [`TargetAction::FinishThaw`]).
    pub fn on_built(&mut self, result: Result<(), String>, now: Instant) -> Vec<TargetAction> {
        if self.state != TargetState::Building {
            return Vec::new();
        }
        match result {
            Ok(()) => {
                let mut out = Vec::new();
                if self.acked < self.offer.image_size {
                    // built, so consumed: home must hold the whole image acknowledged before
                    // it takes the confirm
                    self.consumed = self.offer.image_size;
                    out.push(self.ack(self.offer.image_size));
                }
                self.state = TargetState::AwaitCommit;
                self.since = now;
                self.last_send = now;
                out.push(TargetAction::Send(Msg::Confirm {
                    mig: self.offer.mig,
                }));
                out
            }
            Err(e) => self.kill(AbortReason::BuildFailed(e), true),
        }
    }

    /// A message from home.
    pub fn on_msg(&mut self, msg: Msg, now: Instant) -> Vec<TargetAction> {
        if msg.mig() != self.offer.mig {
            return Vec::new();
        }
        self.last_heard = self.last_heard.max(now);
        let mig = self.offer.mig;
        let mut out = Vec::new();
        match (&self.state, msg) {
            (
                TargetState::Receiving { .. } | TargetState::Building | TargetState::AwaitCommit,
                Msg::Offer(_),
            ) => {
                out.push(TargetAction::Send(self.answer.clone()));
            }
            (TargetState::Receiving { received }, Msg::Chunk { offset, data, .. }) => {
                let received = *received;
                let len = data.len() as u64;
                if offset == received && len > 0 {
                    if received + len > self.offer.image_size {
                        return self.kill(
                            AbortReason::Protocol(format!(
                                "chunk at {offset} of {len} bytes passes the image size {}",
                                self.offer.image_size
                            )),
                            true,
                        );
                    }
                    let now_received = received + len;
                    if self.config.ack_consumed {
                        // Home never has more than the window beyond what we acknowledged.
                        if now_received > self.acked + self.config.window {
                            return self.kill(
                                AbortReason::Protocol(format!(
                                    "chunk at {offset} of {len} bytes passes the window: {} \
                                     acknowledged, window {}",
                                    self.acked, self.config.window
                                )),
                                true,
                            );
                        }
                        if self.consumed == received {
                            // the builder had nothing to do until now
                            self.waiting_since = now;
                        }
                    }
                    out.push(TargetAction::Feed { offset, data });
                    // One acknowledgement per quarter window crossed (any advance of a quarter
                    // crosses one, so a full window always brings one), and at the end; with
                    // `ack_consumed` they come from `on_consumed` instead.
                    let step = (self.config.window / 4).max(1);
                    if !self.config.ack_consumed
                        && (now_received / step != received / step
                            || now_received == self.offer.image_size)
                    {
                        out.push(self.ack(now_received));
                    }
                    if now_received == self.offer.image_size {
                        self.state = TargetState::Building;
                        out.push(TargetAction::FinishThaw);
                    } else {
                        self.state = TargetState::Receiving {
                            received: now_received,
                        };
                    }
                } else {
                    // A duplicate or a chunk after a lost one: say where we are.
                    let at = self.ack_point();
                    out.push(self.ack(at));
                }
            }
            (TargetState::Building, Msg::Chunk { .. }) => {
                let at = self.ack_point();
                out.push(self.ack(at));
            }
            (TargetState::AwaitCommit, Msg::Chunk { .. }) => {
                out.push(TargetAction::Send(Msg::Ack {
                    mig,
                    received: self.offer.image_size,
                }));
                out.push(TargetAction::Send(Msg::Confirm { mig }));
            }
            (
                TargetState::Receiving { .. } | TargetState::Building | TargetState::AwaitCommit,
                Msg::Abort { reason, .. },
            ) => {
                return self.kill(AbortReason::PeerAborted(Box::new(reason)), false);
            }
            (TargetState::AwaitCommit, Msg::Commit { .. }) => {
                self.state = TargetState::Running;
                self.last_send = now;
                out.push(TargetAction::RunRemote);
                out.push(TargetAction::Send(Msg::Running { mig }));
            }
            (TargetState::Running, Msg::Commit { .. }) => {
                out.push(TargetAction::Send(Msg::Running { mig }));
            }
            (TargetState::Exited(status), Msg::Commit { .. }) => {
                out.push(TargetAction::Send(Msg::Exited {
                    mig,
                    status: *status,
                }));
            }
            (TargetState::Exited(_), Msg::ExitAck { .. }) => {
                self.state = TargetState::Done {
                    ran: true,
                    reason: None,
                };
            }
            (TargetState::Done { ran, .. }, Msg::Commit { .. }) => {
                out.push(TargetAction::Send(Msg::Gone { mig, ran: *ran }));
            }
            _ => {}
        }
        out
    }

    /// Time passes: resends, heartbeats and time-outs.
    pub fn on_tick(&mut self, now: Instant) -> Vec<TargetAction> {
        let c = self.config.clone();
        let mig = self.offer.mig;
        let mut out = Vec::new();
        match self.state {
            TargetState::Receiving { .. } | TargetState::Building => {
                if self.builder_waits() && now >= self.waiting_since + c.stream_timeout {
                    return self.kill(
                        AbortReason::BuildFailed(format!(
                            "the builder consumed nothing for {:?} ({} of {} bytes consumed)",
                            now - self.waiting_since,
                            self.consumed,
                            self.received()
                        )),
                        true,
                    );
                }
                if matches!(self.state, TargetState::Receiving { .. })
                    && now >= self.last_heard + c.stream_timeout
                {
                    return self.kill(AbortReason::HomeSilent, true);
                }
            }
            TargetState::AwaitCommit => {
                if now >= self.since + c.commit_timeout {
                    return self.kill(AbortReason::CommitTimeout, true);
                }
                if now >= self.last_send + c.resend_interval {
                    self.last_send = now;
                    out.push(TargetAction::Send(Msg::Confirm { mig }));
                }
            }
            TargetState::Running => {
                if now >= self.last_heard + c.failure_timeout {
                    return self.kill(
                        AbortReason::PeerAborted(Box::new(AbortReason::Cancelled(format!(
                            "no word from home for {:?}",
                            now - self.last_heard
                        )))),
                        true,
                    );
                }
                if now >= self.last_send + c.heartbeat_interval {
                    self.last_send = now;
                    out.push(TargetAction::Send(Msg::Alive { mig }));
                }
            }
            TargetState::Exited(status) => {
                if now >= self.last_heard + c.failure_timeout {
                    // Home is gone: nothing is left here to kill or to tell.
                    self.state = TargetState::Done {
                        ran: true,
                        reason: None,
                    };
                } else if now >= self.last_send + c.resend_interval {
                    self.last_send = now;
                    out.push(TargetAction::Send(Msg::Exited { mig, status }));
                }
            }
            TargetState::Done { .. } => {}
        }
        out
    }

    /// Any other traffic from home (forwarded-call answers, signals) is a sign of life too.
    pub fn on_sign_of_life(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }
}

#[cfg(test)]
mod tests;
