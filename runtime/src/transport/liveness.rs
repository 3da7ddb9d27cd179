//! When a link must send a keepalive and when its peer counts as dead, decided from
//! explicit times (sans-IO, like `discovery::membership`): the transports feed in what
//! they sent and received and ask [`Liveness::poll`] what is due. [`Shared`] is the same
//! clock readable and writable from a link's reader and writer tasks at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a link must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing until `until` (unless traffic changes it).
    Nothing { until: Instant },
    /// Nothing was sent for a keepalive period: send an empty message.
    Keepalive,
    /// Nothing was received for the idle time-out: the peer is dead or unreachable.
    Dead { silent: Duration },
}

/// A link's keepalive and idle clocks.
#[derive(Clone, Debug)]
pub struct Liveness {
    keepalive: Duration,
    idle: Duration,
    last_rx: Instant,
    last_tx: Instant,
}

impl Liveness {
    /// Whether `keepalive`/`idle` make sense: a peer must get several keepalives per idle
    /// time-out, or a healthy link is declared dead.
    pub fn check(keepalive: Duration, idle: Duration) -> Result<(), String> {
        if keepalive.is_zero() || keepalive >= idle {
            Err("keepalive must be > 0 and shorter than idle_timeout".into())
        } else {
            Ok(())
        }
    }

    /// A link that came up at `now`.
    pub fn new(keepalive: Duration, idle: Duration, now: Instant) -> Self {
        Liveness {
            keepalive,
            idle,
            last_rx: now,
            last_tx: now,
        }
    }

    /// Something (a frame or a keepalive) arrived at `now`.
    pub fn received(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// Something was written at `now`.
    pub fn sent(&mut self, now: Instant) {
        self.last_tx = self.last_tx.max(now);
    }

    /// How long nothing arrived, at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_rx)
    }

    /// Silent for two keepalive periods (or the idle time-out, if shorter): the peer has
    /// missed keepalives and likely restarted or died, though it is not declared dead yet.
    pub fn stale(&self, now: Instant) -> bool {
        self.silent_for(now) >= (self.keepalive * 2).min(self.idle)
    }

    /// What is due at `now`: death first, then a keepalive, else the next deadline.
    pub fn poll(&self, now: Instant) -> Due {
        let silent = self.silent_for(now);
        if silent >= self.idle {
            return Due::Dead { silent };
        }
        if now.saturating_duration_since(self.last_tx) >= self.keepalive {
            return Due::Keepalive;
        }
        Due::Nothing {
            until: (self.last_rx + self.idle).min(self.last_tx + self.keepalive),
        }
    }

    /// When [`Liveness::poll`] will next have something to do (a keepalive or death) if
    /// nothing is sent or received before.
    pub fn next_due(&self) -> Instant {
        (self.last_rx + self.idle).min(self.last_tx + self.keepalive)
    }

    /// When the peer will count as dead if nothing arrives before.
    pub fn dead_at(&self) -> Instant {
        self.last_rx + self.idle
    }
}

/// [`Liveness`] shared by a link's tasks (times kept as atomics, in microseconds since the
/// link came up).
#[derive(Debug)]
pub struct Shared {
    born: Instant,
    keepalive: Duration,
    idle: Duration,
    last_rx_us: AtomicU64,
    last_tx_us: AtomicU64,
}

impl Shared {
    pub fn new(keepalive: Duration, idle: Duration, now: Instant) -> Self {
        Shared {
            born: now,
            keepalive,
            idle,
            last_rx_us: AtomicU64::new(0),
            last_tx_us: AtomicU64::new(0),
        }
    }

    fn us(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.born).as_micros() as u64
    }

    pub fn received(&self, now: Instant) {
        self.last_rx_us.fetch_max(self.us(now), Ordering::Relaxed);
    }

    pub fn sent(&self, now: Instant) {
        self.last_tx_us.fetch_max(self.us(now), Ordering::Relaxed);
    }

    /// The clocks as they are now, to ask what is due.
    pub fn snapshot(&self) -> Liveness {
        let at = |us: &AtomicU64| self.born + Duration::from_micros(us.load(Ordering::Relaxed));
        Liveness {
            keepalive: self.keepalive,
            idle: self.idle,
            last_rx: at(&self.last_rx_us),
            last_tx: at(&self.last_tx_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn keepalives_are_due_after_a_quiet_period_and_death_after_the_idle_time_out() {
        let t0 = Instant::now();
        let mut l = Liveness::new(100 * MS, 400 * MS, t0);
        assert_eq!(
            l.poll(t0),
            Due::Nothing {
                until: t0 + 100 * MS
            }
        );
        assert_eq!(
            l.poll(t0 + 99 * MS),
            Due::Nothing {
                until: t0 + 100 * MS
            }
        );
        assert_eq!(l.poll(t0 + 100 * MS), Due::Keepalive);
        l.sent(t0 + 100 * MS);
        // Receiving keeps the link alive; sending does not.
        l.received(t0 + 350 * MS);
        assert_eq!(
            l.poll(t0 + 150 * MS),
            Due::Nothing {
                until: t0 + 200 * MS
            }
        );
        l.sent(t0 + 700 * MS);
        assert_eq!(l.poll(t0 + 750 * MS), Due::Dead { silent: 400 * MS });
        assert_eq!(l.dead_at(), t0 + 750 * MS);
        // Time running backwards (clocks fed out of order) changes nothing.
        l.received(t0);
        assert_eq!(l.silent_for(t0 + 350 * MS), Duration::ZERO);
    }

    #[test]
    fn stale_after_two_missed_keepalives() {
        let t0 = Instant::now();
        let l = Liveness::new(100 * MS, 1000 * MS, t0);
        assert!(!l.stale(t0 + 199 * MS));
        assert!(l.stale(t0 + 200 * MS));
        let short_idle = Liveness::new(100 * MS, 150 * MS, t0);
        assert!(short_idle.stale(t0 + 150 * MS));
    }

    #[test]
    fn check_refuses_keepalives_that_cannot_beat_the_idle_time_out() {
        assert!(Liveness::check(MS, 2 * MS).is_ok());
        assert!(Liveness::check(2 * MS, 2 * MS).is_err());
        assert!(Liveness::check(Duration::ZERO, 2 * MS).is_err());
    }

    #[test]
    fn shared_clocks_match_the_plain_ones() {
        let t0 = Instant::now();
        let s = Shared::new(100 * MS, 400 * MS, t0);
        s.received(t0 + 300 * MS);
        s.sent(t0 + 50 * MS);
        s.received(t0 + 10 * MS); // older: ignored
        let l = s.snapshot();
        assert_eq!(l.silent_for(t0 + 300 * MS), Duration::ZERO);
        assert_eq!(
            l.poll(t0 + 149 * MS),
            Due::Nothing {
                until: t0 + 150 * MS
            }
        );
        assert_eq!(l.poll(t0 + 150 * MS), Due::Keepalive);
        assert_eq!(l.poll(t0 + 700 * MS), Due::Dead { silent: 400 * MS });
    }
}
