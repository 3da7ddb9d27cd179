//! Deterministic tests of the migration protocol: both machines driven by a simulated network
//! and simulated process states, with explicit time.

use super::*;
use proptest::prelude::*;

const TICK: Duration = Duration::from_millis(10);

fn exe() -> ExeIdentity {
    ExeIdentity {
        path: "/usr/bin/job".into(),
        dev: 1,
        ino: 2,
        size: 4096,
        mtime_ns: 5,
        content_hash: [7; 32],
    }
}

fn offer(image_size: u64) -> Offer {
    Offer {
        mig: 9,
        pid: 4711,
        uid: 1000,
        image_size,
        memory_needed: 1 << 20,
        cpu_features: vec!["sse2".into(), "avx2".into()],
        exe: exe(),
    }
}

fn facts() -> LocalFacts {
    LocalFacts {
        up: true,
        blocked: false,
        free_memory: 1 << 30,
        cpu_features: vec!["sse2".into(), "avx2".into(), "avx512f".into()],
        exe: Some(ExeIdentity {
            dev: 99,
            ino: 98,
            mtime_ns: 97,
            ..exe()
        }),
        in_progress: 0,
        max_in_progress: 4,
        uid_known: true,
        policy_refusal: None,
    }
}

fn small_config() -> Config {
    Config {
        chunk_size: 1000,
        window: 4000,
        ..Config::default()
    }
}

/// The home process as the simulated shell sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HomeProc {
    Frozen,
    Running,
    Parked,
    Ended,
    /// Ended the way the moved process ended.
    Exited(ExitStatus),
}

/// The target's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy_ {
    None,
    Building,
    Built,
    Running,
    Killed,
    Exited,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToTarget,
    ToHome,
}

/// Decides a message's fate: None = lost, Some(delay) = delivered after `delay`.
type Net = Box<dyn FnMut(Dir, &Msg, Instant) -> Option<Duration>>;

struct Sim {
    t0: Instant,
    now: Instant,
    home: Home,
    target: Option<Target>,
    facts: LocalFacts,
    config: Config,
    image: Vec<u8>,
    built: Vec<u8>,
    home_proc: HomeProc,
    copy: Copy_,
    home_alive: bool,
    target_alive: bool,
    in_flight: Vec<(Instant, Dir, Msg)>,
    net: Net,
    home_log: Vec<(Duration, HomeAction)>,
    target_log: Vec<(Duration, TargetAction)>,
    /// Most bytes seen in flight (sent but not acknowledged at home).
    max_unacked: u64,
    running_since: Option<Instant>,
    /// The copy exits with this status this long after it started running.
    exit_after: Option<(Duration, ExitStatus)>,
}

fn reliable() -> Net {
    Box::new(|_, _, _| Some(Duration::from_millis(1)))
}

impl Sim {
    fn new(config: Config, image_size: usize, facts: LocalFacts, net: Net) -> Sim {
        let t0 = Instant::now();
        let image: Vec<u8> = (0..image_size).map(|i| (i * 31 % 251) as u8).collect();
        let (home, acts) = Home::start(config.clone(), offer(image_size as u64), t0);
        let mut sim = Sim {
            t0,
            now: t0,
            home,
            target: None,
            facts,
            config,
            image,
            built: Vec::new(),
            home_proc: HomeProc::Frozen,
            copy: Copy_::None,
            home_alive: true,
            target_alive: true,
            in_flight: Vec::new(),
            net,
            home_log: Vec::new(),
            target_log: Vec::new(),
            max_unacked: 0,
            running_since: None,
            exit_after: None,
        };
        sim.home_acts(acts);
        sim
    }

    fn send(&mut self, dir: Dir, msg: Msg) {
        if let Some(delay) = (self.net)(dir, &msg, self.now) {
            self.in_flight.push((self.now + delay, dir, msg));
        }
    }

    fn home_acts(&mut self, acts: Vec<HomeAction>) {
        for a in acts {
            self.home_log.push((self.now - self.t0, a.clone()));
            match a {
                HomeAction::Send(m) => self.send(Dir::ToTarget, m),
                HomeAction::SendChunk { offset, len } => {
                    let data = Bytes::copy_from_slice(
                        &self.image[offset as usize..(offset + len) as usize],
                    );
                    self.send(
                        Dir::ToTarget,
                        Msg::Chunk {
                            mig: 9,
                            offset,
                            data,
                        },
                    );
                }
                HomeAction::ResumeAtHome { .. } => {
                    assert_eq!(
                        self.home_proc,
                        HomeProc::Frozen,
                        "resume of a non-frozen process"
                    );
                    self.home_proc = HomeProc::Running;
                }
                HomeAction::ParkHome => {
                    assert_eq!(self.home_proc, HomeProc::Frozen);
                    self.home_proc = HomeProc::Parked;
                }
                HomeAction::ReproduceExit(status) => {
                    assert_eq!(
                        self.home_proc,
                        HomeProc::Parked,
                        "exit reproduced twice or early"
                    );
                    assert_eq!(self.copy, Copy_::Exited);
                    self.home_proc = HomeProc::Exited(status);
                }
                HomeAction::EndHome { .. } => {
                    assert!(matches!(
                        self.home_proc,
                        HomeProc::Frozen | HomeProc::Parked
                    ));
                    self.home_proc = HomeProc::Ended;
                }
            }
        }
        if let HomeState::Streaming { acked, sent } = *self.home.state() {
            assert!(sent - acked <= self.config.window, "window overrun");
            self.max_unacked = self.max_unacked.max(sent - acked);
        }
        self.check();
    }

    fn target_acts(&mut self, acts: Vec<TargetAction>) {
        let mut built_now = false;
        for a in acts {
            self.target_log.push((self.now - self.t0, a.clone()));
            match a {
                TargetAction::Send(m) => self.send(Dir::ToHome, m),
                TargetAction::StartThaw(_) => {
                    assert_eq!(self.copy, Copy_::None);
                    self.copy = Copy_::Building;
                }
                TargetAction::Feed { offset, data } => {
                    assert_eq!(offset as usize, self.built.len(), "bytes out of order");
                    self.built.extend_from_slice(&data);
                }
                TargetAction::FinishThaw => built_now = true,
                TargetAction::RunRemote => {
                    assert_eq!(self.copy, Copy_::Built);
                    assert_eq!(
                        self.built, self.image,
                        "ran a copy built from a wrong image"
                    );
                    self.copy = Copy_::Running;
                    self.running_since = Some(self.now);
                }
                TargetAction::KillRemote { .. } => {
                    assert_ne!(self.copy, Copy_::None);
                    self.copy = Copy_::Killed;
                }
            }
        }
        self.check();
        if built_now {
            self.copy = Copy_::Built;
            let ok = if self.built == self.image {
                Ok(())
            } else {
                Err("image mismatch".to_string())
            };
            let now = self.now;
            let acts = self.target.as_mut().unwrap().on_built(ok, now);
            self.target_acts(acts);
        }
    }

    /// Never on both nodes at once.
    fn check(&self) {
        assert!(
            !(self.home_proc == HomeProc::Running && self.copy == Copy_::Running),
            "process runs on both nodes at {:?}",
            self.now - self.t0
        );
    }

    fn step(&mut self) {
        self.now += TICK;
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|(at, _, _)| *at <= now);
        self.in_flight = rest;
        for (_, dir, msg) in due {
            match dir {
                Dir::ToHome if self.home_alive => {
                    let acts = self.home.on_msg(msg, now);
                    self.home_acts(acts);
                }
                Dir::ToTarget if self.target_alive => match (&mut self.target, msg) {
                    (None, Msg::Offer(o)) => {
                        let (t, acts) = Target::on_offer(self.config.clone(), o, &self.facts, now);
                        self.target = t;
                        self.target_acts(acts);
                    }
                    (Some(t), msg) => {
                        let acts = t.on_msg(msg, now);
                        self.target_acts(acts);
                    }
                    (None, _) => {}
                },
                _ => {}
            }
        }
        if self.home_alive {
            let acts = self.home.on_tick(now);
            self.home_acts(acts);
        }
        if let (Some(since), Some((after, status))) = (self.running_since, self.exit_after)
            && self.copy == Copy_::Running
            && self.target_alive
            && now >= since + after
        {
            self.copy = Copy_::Exited;
            let acts = self.target.as_mut().unwrap().on_exited(status, now);
            self.target_acts(acts);
        }
        if self.target_alive
            && let Some(t) = self.target.as_mut()
        {
            let acts = t.on_tick(now);
            self.target_acts(acts);
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if cond(self) {
                return true;
            }
            self.step();
        }
        cond(self)
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn home_resumed_reason(&self) -> Option<AbortReason> {
        self.home_log.iter().find_map(|(_, a)| match a {
            HomeAction::ResumeAtHome { reason } => Some(reason.clone()),
            _ => None,
        })
    }
}

#[test]
fn happy_path_moves_the_process_and_respects_the_window() {
    let mut sim = Sim::new(small_config(), 25_500, facts(), reliable());
    assert!(sim.run_until(Duration::from_secs(5), |s| *s.home.state()
        == HomeState::Moved));
    assert_eq!(sim.home_proc, HomeProc::Parked);
    assert_eq!(sim.copy, Copy_::Running);
    assert_eq!(sim.built, sim.image);
    assert!(
        sim.max_unacked > 0 && sim.max_unacked <= 4000,
        "{}",
        sim.max_unacked
    );
    // Stays moved while both sides live: heartbeats keep it alive well past the failure timeout.
    sim.run_for(Duration::from_secs(20));
    assert_eq!(*sim.home.state(), HomeState::Moved);
    assert_eq!(*sim.target.as_ref().unwrap().state(), TargetState::Running);
    assert_eq!(sim.copy, Copy_::Running);
    // The messages survive the wire encoding.
    for (_, a) in &sim.home_log {
        if let HomeAction::Send(m) = a {
            let bytes = rmp_serde::to_vec(m).unwrap();
            assert_eq!(&rmp_serde::from_slice::<Msg>(&bytes).unwrap(), m);
        }
    }
}

#[test]
fn empty_image_and_window_smaller_than_a_chunk_still_move() {
    for (size, window) in [(0usize, 4000u64), (5000, 300), (3000, 100)] {
        let config = Config {
            window,
            ..small_config()
        };
        let mut sim = Sim::new(config, size, facts(), reliable());
        assert!(
            sim.run_until(Duration::from_secs(30), |s| *s.home.state()
                == HomeState::Moved),
            "size {size} window {window}: {:?}",
            sim.home.state()
        );
        assert_eq!(sim.built, sim.image);
        assert!(sim.max_unacked <= window);
    }
}

#[test]
fn refusals_leave_the_process_at_home_and_build_nothing() {
    let cases: Vec<(LocalFacts, Refusal)> = vec![
        (
            LocalFacts {
                up: false,
                ..facts()
            },
            Refusal::NotUp,
        ),
        (
            LocalFacts {
                blocked: true,
                ..facts()
            },
            Refusal::Blocked,
        ),
        (
            LocalFacts {
                free_memory: 1000,
                ..facts()
            },
            Refusal::OutOfMemory {
                needed: 1 << 20,
                free: 1000,
            },
        ),
        (
            LocalFacts {
                cpu_features: vec!["sse2".into()],
                ..facts()
            },
            Refusal::MissingCpuFeatures {
                missing: vec!["avx2".into()],
            },
        ),
        (
            LocalFacts {
                exe: Some(ExeIdentity {
                    content_hash: [8; 32],
                    ..exe()
                }),
                ..facts()
            },
            Refusal::ExeDiffers {
                path: "/usr/bin/job".into(),
                detail: "content differs (hash)".into(),
            },
        ),
        (
            LocalFacts {
                exe: None,
                ..facts()
            },
            Refusal::ExeDiffers {
                path: "/usr/bin/job".into(),
                detail: "not found".into(),
            },
        ),
        (
            LocalFacts {
                in_progress: 4,
                ..facts()
            },
            Refusal::Busy,
        ),
        (
            LocalFacts {
                policy_refusal: Some("node 2 runs 9.0 processes per CPU".into()),
                ..facts()
            },
            Refusal::Policy("node 2 runs 9.0 processes per CPU".into()),
        ),
    ];
    for (f, want) in cases {
        let mut sim = Sim::new(small_config(), 10_000, f, reliable());
        assert!(sim.run_until(Duration::from_secs(5), |s| s.home.is_done()));
        assert_eq!(
            sim.home_resumed_reason(),
            Some(AbortReason::Refused(want.clone()))
        );
        assert_eq!(sim.home_proc, HomeProc::Running);
        assert_eq!(sim.copy, Copy_::None, "{want:?}");
        assert!(
            sim.target_log
                .iter()
                .all(|(_, a)| matches!(a, TargetAction::Send(_)))
        );
        // The reason reads as one line naming what is wrong.
        let line = AbortReason::Refused(want).to_string();
        assert!(
            !line.contains('\n') && line.starts_with("refused: "),
            "{line}"
        );
    }
}

#[test]
fn target_silent_during_stream_home_aborts_and_resumes() {
    // Every message from the target after its third is lost (it hangs mid-stream).
    let mut count = 0;
    let net: Net = Box::new(move |dir, _, _| {
        if dir == Dir::ToHome {
            count += 1;
            if count > 3 {
                return None;
            }
        }
        Some(Duration::from_millis(1))
    });
    let mut sim = Sim::new(small_config(), 50_000, facts(), net);
    assert!(sim.run_until(Duration::from_secs(30), |s| s.home.is_done()));
    assert_eq!(sim.home_resumed_reason(), Some(AbortReason::StreamStalled));
    let at = sim
        .home_log
        .iter()
        .find(|(_, a)| matches!(a, HomeAction::ResumeAtHome { .. }))
        .unwrap()
        .0;
    assert!(
        at >= Duration::from_secs(5) && at < Duration::from_secs(6),
        "{at:?}"
    );
    assert_eq!(sim.home_proc, HomeProc::Running);
    // The target got home's abort and killed its partial copy.
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.copy, Copy_::Killed);
}

#[test]
fn target_dies_mid_stream_home_resumes() {
    let mut sim = Sim::new(small_config(), 50_000, facts(), reliable());
    assert!(sim.run_until(Duration::from_secs(5), |s| s.built.len() >= 10_000));
    sim.target_alive = false;
    assert!(sim.run_until(Duration::from_secs(10), |s| s.home.is_done()));
    assert_eq!(sim.home_resumed_reason(), Some(AbortReason::StreamStalled));
    assert_eq!(sim.home_proc, HomeProc::Running);
}

#[test]
fn home_silent_after_confirm_target_kills_its_copy_when_no_commit_comes() {
    // Home "dies" the moment the confirm reaches it: it never answers.
    let mut sim = Sim::new(small_config(), 20_000, facts(), reliable());
    // The step that built the copy put the confirm on the wire; home dies before it arrives.
    assert!(sim.run_until(Duration::from_secs(5), |s| s.copy == Copy_::Built));
    assert!(matches!(
        sim.home.state(),
        HomeState::Streaming { .. } | HomeState::AwaitConfirm
    ));
    sim.home_alive = false;
    let confirmed = sim.now;
    assert!(sim.run_until(Duration::from_secs(10), |s| s.copy == Copy_::Killed));
    let waited = sim.now - confirmed;
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_millis(3100),
        "{waited:?}"
    );
    assert!(
        sim.target_log
            .iter()
            .all(|(_, a)| *a != TargetAction::RunRemote)
    );
}

#[test]
fn commit_lost_until_target_gave_up_home_resumes_because_the_copy_never_ran() {
    // Every Commit is lost for 4 s: the target gives up after 3 s and tells home, which still
    // holds the frozen process and may resume it.
    let mut t_start = None;
    let net: Net = Box::new(move |dir, m, now| {
        if dir == Dir::ToTarget && matches!(m, Msg::Commit { .. }) {
            let s = *t_start.get_or_insert(now);
            if now < s + Duration::from_secs(4) {
                return None;
            }
        }
        Some(Duration::from_millis(1))
    });
    let mut sim = Sim::new(small_config(), 20_000, facts(), net);
    assert!(sim.run_until(Duration::from_secs(20), |s| s.home.is_done()));
    assert_eq!(sim.home_resumed_reason(), Some(AbortReason::CommitTimeout));
    assert_eq!(sim.home_proc, HomeProc::Running);
    assert_eq!(sim.copy, Copy_::Killed);
    sim.run_for(Duration::from_secs(5));
    assert_eq!(
        sim.copy,
        Copy_::Killed,
        "a late commit must not revive the copy"
    );
}

#[test]
fn target_dies_after_confirm_home_never_resumes_and_ends_after_failure_timeout() {
    let mut sim = Sim::new(small_config(), 20_000, facts(), reliable());
    assert!(sim.run_until(Duration::from_secs(5), |s| s.copy == Copy_::Built));
    sim.target_alive = false;
    assert!(sim.run_until(Duration::from_secs(20), |s| s.home.is_done()));
    assert!(matches!(sim.home.state(), HomeState::Lost(_)));
    assert_eq!(sim.home_proc, HomeProc::Ended);
    assert_eq!(sim.home_resumed_reason(), None);
}

#[test]
fn home_dies_after_commit_target_kills_within_failure_timeout() {
    let mut sim = Sim::new(small_config(), 20_000, facts(), reliable());
    assert!(sim.run_until(Duration::from_secs(5), |s| s.copy == Copy_::Running));
    sim.run_for(Duration::from_secs(2));
    sim.home_alive = false;
    let died = sim.now;
    assert!(sim.run_until(Duration::from_secs(20), |s| s.copy == Copy_::Killed));
    let took = sim.now - died;
    // Within the failure timeout of the last sign of life (at most one heartbeat before).
    assert!(took <= Duration::from_secs(5) + TICK, "{took:?}");
    assert!(
        took >= Duration::from_secs(5) - Duration::from_millis(510),
        "{took:?}"
    );
    assert!(sim.target.as_ref().unwrap().is_done());
}

#[test]
fn home_link_back_before_failure_timeout_kills_nothing() {
    // Both directions drop everything for 4.5 s (< 5 s failure timeout) while it runs.
    let outage = std::cell::Cell::new(None::<Instant>);
    let outage = std::rc::Rc::new(outage);
    let o2 = outage.clone();
    let net: Net = Box::new(move |_, _, now| match o2.get() {
        Some(start) if now >= start && now < start + Duration::from_millis(4500) => None,
        _ => Some(Duration::from_millis(1)),
    });
    let mut sim = Sim::new(small_config(), 20_000, facts(), net);
    assert!(sim.run_until(Duration::from_secs(5), |s| s.copy == Copy_::Running));
    sim.run_for(Duration::from_secs(1));
    outage.set(Some(sim.now));
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.copy, Copy_::Running);
    assert_eq!(*sim.home.state(), HomeState::Moved);
    assert_eq!(sim.home_proc, HomeProc::Parked);

    // The same outage longer than the failure timeout ends it on both sides, never twice.
    let outage2 = std::rc::Rc::new(std::cell::Cell::new(None::<Instant>));
    let o3 = outage2.clone();
    let net: Net = Box::new(move |_, _, now| match o3.get() {
        Some(start) if now >= start => None,
        _ => Some(Duration::from_millis(1)),
    });
    let mut sim = Sim::new(small_config(), 20_000, facts(), net);
    assert!(sim.run_until(Duration::from_secs(5), |s| s.copy == Copy_::Running));
    outage2.set(Some(sim.now));
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sim.copy, Copy_::Killed);
    assert_eq!(sim.home_proc, HomeProc::Ended);
}

#[test]
fn exit_on_the_target_is_reproduced_at_home_once_despite_losses() {
    // The first three `Exited` messages are lost.
    let mut lost = 0;
    let net: Net = Box::new(move |_, m, _| {
        if matches!(m, Msg::Exited { .. }) && lost < 3 {
            lost += 1;
            return None;
        }
        Some(Duration::from_millis(1))
    });
    let mut sim = Sim::new(small_config(), 20_000, facts(), net);
    sim.exit_after = Some((Duration::from_secs(2), ExitStatus::Code(42)));
    assert!(sim.run_until(Duration::from_secs(20), |s| s.home.is_done()));
    assert_eq!(sim.home_proc, HomeProc::Exited(ExitStatus::Code(42)));
    assert_eq!(*sim.home.state(), HomeState::Finished(ExitStatus::Code(42)));
    sim.run_for(Duration::from_secs(1));
    assert!(
        sim.target.as_ref().unwrap().is_done(),
        "the target stops once home acknowledged"
    );
    let reproduced = sim
        .home_log
        .iter()
        .filter(|(_, a)| matches!(a, HomeAction::ReproduceExit(_)))
        .count();
    assert_eq!(reproduced, 1);
    // Home never went silent on it: nothing was killed, no "lost" ending.
    assert!(
        !sim.target_log
            .iter()
            .any(|(_, a)| matches!(a, TargetAction::KillRemote { .. }))
    );
}

#[test]
fn every_running_lost_home_learns_from_the_heartbeats() {
    // Found by the proptest: a loss pattern that hits every `Running` but lets `Alive` through
    // kept home committing for ever (frozen, never parked).
    let net: Net = Box::new(|_, m, _| match m {
        Msg::Running { .. } => None,
        _ => Some(Duration::from_millis(1)),
    });
    let mut sim = Sim::new(small_config(), 20_000, facts(), net);
    assert!(sim.run_until(Duration::from_secs(5), |s| *s.home.state()
        == HomeState::Moved));
    assert_eq!(sim.home_proc, HomeProc::Parked);
    assert_eq!(sim.copy, Copy_::Running);
}

#[test]
fn bad_input_is_refused_not_panicked() {
    let now = Instant::now();
    let (mut home, _) = Home::start(small_config(), offer(5000), now);
    home.on_msg(Msg::Accept { mig: 9, window: 0 }, now);
    // An ack for bytes never sent.
    let acts = home.on_msg(
        Msg::Ack {
            mig: 9,
            received: u64::MAX,
        },
        now,
    );
    assert!(matches!(
        acts.last(),
        Some(HomeAction::ResumeAtHome {
            reason: AbortReason::Protocol(_)
        })
    ));
    // Another migration's messages are ignored.
    let (mut home, _) = Home::start(small_config(), offer(5000), now);
    assert!(
        home.on_msg(
            Msg::Accept {
                mig: 10,
                window: 10
            },
            now
        )
        .is_empty()
    );

    // A chunk that passes the announced size.
    let (t, _) = Target::on_offer(small_config(), offer(10), &facts(), now);
    let mut t = t.unwrap();
    let acts = t.on_msg(
        Msg::Chunk {
            mig: 9,
            offset: 0,
            data: Bytes::from(vec![0; 11]),
        },
        now,
    );
    assert!(matches!(
        acts[0],
        TargetAction::KillRemote {
            reason: AbortReason::Protocol(_)
        }
    ));
}

/// The target acknowledges once per quarter window crossed and at the end, not per chunk;
/// every byte is still fed, in order.
#[test]
fn target_acknowledges_per_quarter_window_not_per_chunk() {
    let now = Instant::now();
    let config = Config {
        chunk_size: 500,
        window: 4000,
        ..Config::default()
    };
    let (t, _) = Target::on_offer(config, offer(4300), &facts(), now);
    let mut t = t.unwrap();
    let mut acks = Vec::new();
    let mut fed = 0u64;
    let mut offset = 0u64;
    while offset < 4300 {
        let len = 500.min(4300 - offset);
        let acts = t.on_msg(
            Msg::Chunk {
                mig: 9,
                offset,
                data: Bytes::from(vec![1; len as usize]),
            },
            now,
        );
        for a in acts {
            match a {
                TargetAction::Feed { offset: o, data } => {
                    assert_eq!(o, fed);
                    fed += data.len() as u64;
                }
                TargetAction::Send(Msg::Ack { received, .. }) => acks.push(received),
                _ => {}
            }
        }
        offset += len;
    }
    assert_eq!(fed, 4300);
    // quarter window = 1000 bytes: after 1000, 2000, 3000, 4000, and the end
    assert_eq!(acks, vec![1000, 2000, 3000, 4000, 4300]);
}

// ---------------------------------------------------------------------------------------------
// Random loss, duplication and delay.
// ---------------------------------------------------------------------------------------------

/// `fates[i]` decides the i-th message (of either direction): lost if `.0`, else delayed `.1` ms.
/// With `max_run`, no more than that many consecutive losses per direction (a link that loses
/// messages but never goes silent for a failure time-out).
fn lossy(fates: Vec<(bool, u16)>, max_run: Option<usize>) -> Net {
    lossy_with_outages(fates, max_run, Vec::new())
}

/// [`lossy`], plus one-directional outages `(direction 0/1, start ms, length ms)` counted from
/// the first message: everything in that direction is lost meanwhile.
fn lossy_with_outages(
    fates: Vec<(bool, u16)>,
    max_run: Option<usize>,
    outages: Vec<(usize, u32, u32)>,
) -> Net {
    let mut i = 0;
    let mut runs = [0usize; 2];
    let mut t0 = None;
    Box::new(move |dir, _, now| {
        let t0 = *t0.get_or_insert(now);
        let at = (now - t0).as_millis() as u32;
        let d = dir as usize;
        if outages
            .iter()
            .any(|&(od, start, len)| od == d && at >= start && at < start.saturating_add(len))
        {
            return None;
        }
        let (lose, delay) = fates[i % fates.len()];
        i += 1;
        let lose = lose && max_run.is_none_or(|m| runs[d] < m);
        if lose {
            runs[d] += 1;
            None
        } else {
            runs[d] = 0;
            Some(Duration::from_millis(1 + u64::from(delay)))
        }
    })
}

fn outcome_ok(sim: &Sim) -> bool {
    match (sim.home_proc, sim.copy) {
        (HomeProc::Running, Copy_::None | Copy_::Killed) | (HomeProc::Parked, Copy_::Running) => {
            true
        }
        (HomeProc::Exited(s), Copy_::Exited) => Some(s) == sim.exit_after.map(|e| e.1),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Losses that never silence a direction for long: the process always ends on exactly one
    /// node (moved, or resumed at home), and never runs on both meanwhile (checked every step).
    #[test]
    fn bounded_loss_ends_on_exactly_one_node(
        fates in proptest::collection::vec((any::<bool>(), 0u16..300), 1..200),
        size in 0usize..40_000,
        exit in proptest::option::of((0u64..20_000, -5i32..300)),
    ) {
        let mut sim = Sim::new(small_config(), size, facts(), lossy(fates, Some(4)));
        sim.exit_after = exit.map(|(ms, code)| (Duration::from_millis(ms), ExitStatus::Code(code)));
        // Go-back-N over a link losing up to half the messages is slow, but it gets there.
        sim.run_for(Duration::from_secs(200));
        prop_assert!(outcome_ok(&sim), "home {:?} copy {:?} state {:?}", sim.home_proc, sim.copy, sim.home.state());
        if sim.running_since.is_some() {
            prop_assert_eq!(&sim.built, &sim.image);
            // A copy that ran and exited had its status reproduced at home.
            if sim.exit_after.is_some() {
                prop_assert_eq!(sim.home_proc, HomeProc::Exited(sim.exit_after.unwrap().1));
            }
        }
    }

    /// Arbitrary loss (links may die for good): never on both nodes; on neither only when both
    /// sides declared it lost after the commit (the documented ending), never silently.
    #[test]
    fn any_loss_never_runs_twice(
        fates in proptest::collection::vec((proptest::bool::weighted(0.5), 0u16..3000), 1..200),
        outages in proptest::collection::vec((0usize..2, 0u32..30_000, 0u32..15_000), 0..4),
        size in 0usize..40_000,
    ) {
        let net = lossy_with_outages(fates, None, outages);
        let mut sim = Sim::new(small_config(), size, facts(), net);
        sim.run_for(Duration::from_secs(60));
        // Then the link dies for good: every pending decision has to be taken by time-outs.
        sim.net = Box::new(|_, _, _| None);
        sim.run_for(Duration::from_secs(20));
        let neither = !matches!(sim.home_proc, HomeProc::Running | HomeProc::Parked)
            || (sim.home_proc == HomeProc::Parked && sim.copy != Copy_::Running);
        if neither {
            prop_assert_eq!(sim.home_proc, HomeProc::Ended);
            prop_assert!(matches!(sim.home.state(), HomeState::Lost(_)));
            prop_assert!(sim.copy != Copy_::Running && sim.copy != Copy_::Built);
        } else {
            prop_assert!(outcome_ok(&sim), "home {:?} copy {:?}", sim.home_proc, sim.copy);
        }
        let _ = sim.elapsed();
    }
}

/// Home keeps its own window when the target grants a larger one (the bytes in flight are held
/// in home's memory: a node short of memory moves with a small window).
#[test]
fn home_sends_no_more_than_its_own_window_whatever_the_target_grants() {
    let t0 = Instant::now();
    let config = Config {
        chunk_size: 1000,
        window: 2000,
        ..Config::default()
    };
    let o = offer(10_000);
    let mig = o.mig;
    let (mut home, _) = Home::start(config, o, t0);
    let acts = home.on_msg(Msg::Accept { mig, window: 8000 }, t0);
    let asked: u64 = acts
        .iter()
        .map(|a| match a {
            HomeAction::SendChunk { len, .. } => *len,
            _ => 0,
        })
        .sum();
    assert_eq!(asked, 2000, "{acts:?}");
}

// ---------------------------------------------------------------------------------------------
// Acknowledgement on consumption (Config::ack_consumed).
// ---------------------------------------------------------------------------------------------

/// Home and target on an instant, lossless link, with a builder that consumes what the shell
/// lets it: the test decides how much per step.
struct Paced {
    now: Instant,
    home: Home,
    target: Target,
    image: Vec<u8>,
    /// Bytes fed to the builder (in order), and how many of them it consumed.
    fed: Vec<u8>,
    consumed: u64,
    /// Every ack the target sent, with the bytes consumed when it sent it.
    acks: Vec<(u64, u64)>,
    finish: bool,
    most_unconsumed: u64,
    home_actions: Vec<HomeAction>,
    target_actions: Vec<TargetAction>,
}

impl Paced {
    fn new(config: Config, size: usize) -> Paced {
        let now = Instant::now();
        let image: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
        let (home, hacts) = Home::start(config.clone(), offer(size as u64), now);
        let Some(HomeAction::Send(Msg::Offer(o))) = hacts.into_iter().next() else {
            panic!("no offer")
        };
        let (t, tacts) = Target::on_offer(config, o, &facts(), now);
        let mut p = Paced {
            now,
            home,
            target: t.expect("admitted"),
            image,
            fed: Vec::new(),
            consumed: 0,
            acks: Vec::new(),
            finish: false,
            most_unconsumed: 0,
            home_actions: Vec::new(),
            target_actions: Vec::new(),
        };
        p.deliver(Vec::new(), tacts);
        p
    }

    /// Carries out actions until both sides are quiet.
    fn deliver(&mut self, mut h: Vec<HomeAction>, mut t: Vec<TargetAction>) {
        while !h.is_empty() || !t.is_empty() {
            for a in std::mem::take(&mut h) {
                self.home_actions.push(a.clone());
                let msg = match a {
                    HomeAction::Send(m) => m,
                    HomeAction::SendChunk { offset, len } => Msg::Chunk {
                        mig: 9,
                        offset,
                        data: Bytes::copy_from_slice(
                            &self.image[offset as usize..(offset + len) as usize],
                        ),
                    },
                    _ => continue,
                };
                t.extend(self.target.on_msg(msg, self.now));
                self.most_unconsumed = self.most_unconsumed.max(self.target.unconsumed());
            }
            for a in std::mem::take(&mut t) {
                self.target_actions.push(a.clone());
                match a {
                    TargetAction::Send(m) => {
                        if let Msg::Ack { received, .. } = m {
                            self.acks.push((received, self.consumed));
                        }
                        h.extend(self.home.on_msg(m, self.now));
                    }
                    TargetAction::Feed { offset, data } => {
                        assert_eq!(offset as usize, self.fed.len(), "fed out of order");
                        self.fed.extend_from_slice(&data);
                    }
                    TargetAction::FinishThaw => self.finish = true,
                    _ => {}
                }
            }
        }
    }

    /// The builder consumes up to `n` more of the bytes it was fed; time moves on by `dt`.
    fn step(&mut self, n: u64, dt: Duration) {
        self.now += dt;
        let c = (self.consumed + n).min(self.fed.len() as u64);
        if c > self.consumed {
            self.consumed = c;
            let t = self.target.on_consumed(c, self.now);
            self.deliver(Vec::new(), t);
        }
        if self.finish && self.consumed == self.image.len() as u64 {
            self.finish = false;
            let t = self.target.on_built(Ok(()), self.now);
            self.deliver(Vec::new(), t);
        }
        let h = self.home.on_tick(self.now);
        let t = self.target.on_tick(self.now);
        self.deliver(h, t);
    }
}

fn consumed_config() -> Config {
    Config {
        ack_consumed: true,
        ..small_config()
    }
}

/// With `ack_consumed`, the target acknowledges what its builder consumed, never what merely
/// arrived: a builder that does not consume gets at most one window of bytes, which home
/// stops sending; a builder that consumes slowly gets acknowledgements at its pace, per
/// quarter window; the image arrives whole and in order, and the move completes.
#[test]
fn acks_follow_consumption_and_unconsumed_bytes_stay_within_the_window() {
    let size = 20_000usize;
    let config = consumed_config();
    let mut p = Paced::new(config.clone(), size);
    // The builder consumes nothing: one window arrives, no acknowledgement, nothing more.
    for _ in 0..10 {
        p.step(0, TICK);
    }
    assert_eq!(p.fed.len() as u64, config.window, "one window, no more");
    assert_eq!(p.target.unconsumed(), config.window);
    assert!(p.acks.is_empty(), "acks without consumption: {:?}", p.acks);
    assert_eq!(
        *p.home.state(),
        HomeState::Streaming {
            acked: 0,
            sent: config.window
        }
    );
    // It consumes 700 bytes per step (not a multiple of anything here).
    let mut steps = 0;
    while !matches!(p.home.state(), HomeState::Committing | HomeState::Moved) {
        p.step(700, TICK);
        steps += 1;
        assert!(steps < 1000, "no commit: {:?}", p.home.state());
        assert!(p.target.unconsumed() <= config.window);
    }
    assert!(p.most_unconsumed <= config.window, "{}", p.most_unconsumed);
    assert_eq!(p.fed, p.image, "the image arrived whole and in order");
    // Every ack names consumed bytes, per quarter window crossed, and the end.
    let step = config.window / 4;
    let mut last = 0;
    for &(acked, consumed) in &p.acks {
        assert!(acked <= consumed, "ack of {acked} with {consumed} consumed");
        assert!(acked > last, "acks move forward: {:?}", p.acks);
        assert!(
            acked / step != last / step || acked == size as u64,
            "{:?}",
            p.acks
        );
        last = acked;
    }
    assert_eq!(last, size as u64);
    assert!(
        p.acks.len() as u64 <= size as u64 / step + 1,
        "not one ack per quarter window: {:?}",
        p.acks
    );

    // The same stalled builder with acknowledgement on receipt: the whole image arrives,
    // unconsumed, which is what `ack_consumed` prevents.
    let mut r = Paced::new(small_config(), size);
    for _ in 0..10 {
        r.step(0, TICK);
    }
    assert_eq!(r.fed.len(), size, "on receipt everything is sent at once");
    assert_eq!(r.target.unconsumed(), size as u64);
}

/// A builder that stops consuming fails the move before the commit: home resumes the
/// process and the target kills its copy, each within the stream time-out.
#[test]
fn a_stalled_builder_fails_the_move_and_the_process_stays_home() {
    let config = consumed_config();
    let mut p = Paced::new(config.clone(), 20_000);
    for _ in 0..3 {
        p.step(1500, TICK);
    }
    let t0 = p.now;
    let mut waited = Duration::ZERO;
    while !(p.home.is_done() && p.target.is_done()) {
        p.step(0, TICK);
        waited = p.now - t0;
        assert!(waited < config.stream_timeout * 2, "nobody gave up");
    }
    assert!(waited <= config.stream_timeout + TICK, "{waited:?}");
    assert!(
        p.home_actions
            .iter()
            .any(|a| matches!(a, HomeAction::ResumeAtHome { .. })),
        "the process stays at home"
    );
    assert!(
        !p.home_actions
            .iter()
            .any(|a| matches!(a, HomeAction::Send(Msg::Commit { .. }))),
        "never committed"
    );
    assert!(
        p.target_actions
            .iter()
            .any(|a| matches!(a, TargetAction::KillRemote { .. })),
        "the copy is killed"
    );
}

/// The target's own time-out: bytes wait, home keeps resending (so it is not silent), the
/// builder consumes nothing: the target ends the copy and tells home why.
#[test]
fn the_target_ends_a_stalled_build_even_while_home_keeps_sending() {
    let config = consumed_config();
    let now = Instant::now();
    let (t, _) = Target::on_offer(config.clone(), offer(20_000), &facts(), now);
    let mut t = t.unwrap();
    let chunk = |o: u64| Msg::Chunk {
        mig: 9,
        offset: o,
        data: Bytes::from(vec![3; 1000]),
    };
    t.on_msg(chunk(0), now);
    t.on_msg(chunk(1000), now);
    assert_eq!(t.unconsumed(), 2000);
    let mut at = now;
    let mut end = None;
    while at < now + config.stream_timeout * 2 {
        at += config.resend_interval;
        let mut acts = t.on_msg(chunk(0), at); // home's go-back resend
        acts.extend(t.on_tick(at));
        if let Some(a) = acts
            .iter()
            .find(|a| matches!(a, TargetAction::KillRemote { .. }))
        {
            end = Some((at, a.clone(), acts.clone()));
            break;
        }
        assert!(
            acts.iter()
                .all(|a| matches!(a, TargetAction::Send(Msg::Ack { received: 0, .. }))),
            "{acts:?}"
        );
    }
    let (at, kill, acts) = end.expect("the target never gave up");
    assert!(at - now >= config.stream_timeout, "too early");
    assert!(matches!(
        kill,
        TargetAction::KillRemote {
            reason: AbortReason::BuildFailed(_)
        }
    ));
    assert!(
        acts.iter()
            .any(|a| matches!(a, TargetAction::Send(Msg::Abort { .. }))),
        "home is told"
    );
}

/// A chunk beyond acknowledged + window is a protocol error, and consumption reports beyond
/// what arrived are refused too.
#[test]
fn bytes_beyond_the_window_or_false_consumption_end_the_move() {
    let config = consumed_config();
    let now = Instant::now();
    let (t, _) = Target::on_offer(config.clone(), offer(20_000), &facts(), now);
    let mut t = t.unwrap();
    for i in 0..4 {
        let acts = t.on_msg(
            Msg::Chunk {
                mig: 9,
                offset: i * 1000,
                data: Bytes::from(vec![1; 1000]),
            },
            now,
        );
        assert!(matches!(acts[..], [TargetAction::Feed { .. }]), "{acts:?}");
    }
    let acts = t.on_msg(
        Msg::Chunk {
            mig: 9,
            offset: 4000,
            data: Bytes::from(vec![1; 1]),
        },
        now,
    );
    assert!(
        matches!(
            acts[0],
            TargetAction::KillRemote {
                reason: AbortReason::Protocol(_)
            }
        ),
        "{acts:?}"
    );

    let (t, _) = Target::on_offer(config, offer(20_000), &facts(), now);
    let mut t = t.unwrap();
    t.on_msg(
        Msg::Chunk {
            mig: 9,
            offset: 0,
            data: Bytes::from(vec![1; 1000]),
        },
        now,
    );
    let acts = t.on_consumed(1001, now);
    assert!(matches!(
        acts[0],
        TargetAction::KillRemote {
            reason: AbortReason::BuildFailed(_)
        }
    ));
}
