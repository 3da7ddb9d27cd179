//! Pacing shared by the transports: the pause between dial attempts (exponential back-off
//! with jitter) and warnings that would repeat on every re-dial. Knows no sockets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// `d` scaled by a random factor in 0.5..1.5 (±50 % jitter), so peers that failed together
/// do not retry in step.
pub fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// Exponential back-off between attempts to reach one peer: the pause starts at `min`,
/// doubles after each failed attempt up to `max`, and has ±50 % jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Whether `min`/`max` make a back-off (the transports' `backoff_min`/`backoff_max`).
    pub fn check(min: Duration, max: Duration) -> Result<(), String> {
        if min.is_zero() || max < min {
            Err("backoff_min must be > 0 and <= backoff_max".into())
        } else {
            Ok(())
        }
    }

    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            step: min,
        }
    }

    /// Start afresh (a link came up): the next pause is about `min` again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The pause for the current step, jittered, without growing it.
    pub fn pause(&self) -> Duration {
        jittered(self.step)
    }

    /// The pause after a failed attempt: the current step, jittered; the step then doubles
    /// (up to `max`) for the attempt after.
    pub fn failed(&mut self) -> Duration {
        let pause = self.pause();
        self.step = (self.step * 2).min(self.max);
        pause
    }
}

/// Warnings remembered at most; beyond that the old ones are forgotten.
const REMEMBERED: usize = 1024;

/// Which repeated warnings were given recently: a peer that keeps re-dialling with a wrong
/// key or map is warned about once per `every`, and at debug level in between.
pub struct Repeats {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Repeats {
    pub fn new(every: Duration) -> Self {
        Repeats {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// True when the warning `key` should be logged as a warning now (first time, or the
    /// last was `every` ago or longer), and remembers that it was; false in between.
    pub fn warn_now(&self, key: String) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < self.every)
        {
            return false;
        }
        if last.len() >= REMEMBERED {
            last.retain(|_, t| now.duration_since(*t) < self.every);
            if last.len() >= REMEMBERED {
                last.clear();
            }
        }
        last.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_max_with_jitter_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        for step in [100, 200, 350, 350] {
            let p = b.failed();
            assert!(
                p >= ms(step) / 2 && p <= ms(step) * 3 / 2,
                "{p:?} for {step}"
            );
        }
        b.reset();
        let p = b.pause();
        assert!(p >= ms(50) && p <= ms(150), "{p:?}");
        let p = b.pause();
        assert!(p <= ms(150), "pause must not grow the step: {p:?}");
    }

    #[test]
    fn backoff_check() {
        let ms = Duration::from_millis;
        assert!(Backoff::check(ms(1), ms(1)).is_ok());
        assert!(Backoff::check(ms(0), ms(1)).is_err());
        assert!(Backoff::check(ms(2), ms(1)).is_err());
    }

    #[test]
    fn repeats_warn_once_per_period_and_key() {
        let r = Repeats::new(Duration::from_secs(60));
        assert!(r.warn_now("a".into()));
        assert!(!r.warn_now("a".into()));
        assert!(r.warn_now("b".into()));
        let r = Repeats::new(Duration::ZERO);
        assert!(r.warn_now("a".into()));
        assert!(r.warn_now("a".into()));
    }

    #[test]
    fn repeats_stay_bounded() {
        let r = Repeats::new(Duration::from_secs(60));
        for i in 0..3 * REMEMBERED {
            assert!(r.warn_now(i.to_string()));
        }
        assert!(r.last.lock().unwrap().len() <= REMEMBERED);
    }
}
