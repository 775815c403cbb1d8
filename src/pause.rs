//! How background loops wait: [`Backoff`] between failed attempts, [`sleep_or_shutdown`]
//! between rounds, so every loop stops waiting as soon as shutdown is asked.

use rand::Rng;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Capped exponential backoff: each pause is twice the last, from `initial` up to `max`,
/// until [`Backoff::reset`] after a success.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    jitter: bool,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
            jitter: false,
        }
    }

    /// "Equal jitter": each pause is a random 50–100 % of the unjittered one, so that many
    /// processes retrying against the same peer do not do it in step.
    pub const fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The next pause, before jitter.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The pause to take now; the one after is twice as long (up to the cap).
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.current;
        self.grow();
        if self.jitter {
            pause.mul_f64(rand::rng().random_range(0.5..=1.0))
        } else {
            pause
        }
    }

    /// Doubles the next pause (up to the cap) without taking one.
    pub fn grow(&mut self) {
        self.current = self.current.saturating_mul(2).min(self.max);
    }

    /// Back to the initial pause.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Sleeps for `duration` unless `shutdown` is (or gets) cancelled first. Returns whether it
/// slept the whole time; `false` means the caller should stop.
pub async fn sleep_or_shutdown(shutdown: &CancellationToken, duration: Duration) -> bool {
    shutdown
        .run_until_cancelled(tokio::time::sleep(duration))
        .await
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_up_to_the_cap_and_reset_to_the_initial_one() {
        let mut backoff = Backoff::new(100 * MS, 1000 * MS);
        let pauses: Vec<_> = (0..6).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.current(), 1000 * MS);
        backoff.reset();
        assert_eq!(backoff.current(), 100 * MS);
        assert_eq!(backoff.next_pause(), 100 * MS);
        backoff.grow();
        assert_eq!(backoff.next_pause(), 400 * MS);
    }

    #[test]
    fn a_jittered_pause_is_half_to_all_of_the_unjittered_one() {
        let mut backoff = Backoff::new(100 * MS, 5000 * MS).with_jitter();
        for _ in 0..40 {
            let base = backoff.current();
            let pause = backoff.next_pause();
            assert!(pause >= base / 2 && pause <= base, "{pause:?} of {base:?}");
        }
        assert_eq!(backoff.current(), 5000 * MS);
    }

    #[test]
    fn doubling_saturates_instead_of_overflowing() {
        let mut backoff = Backoff::new(Duration::MAX / 2 + MS, Duration::MAX);
        backoff.grow();
        assert_eq!(backoff.current(), Duration::MAX);
    }

    #[tokio::test]
    async fn sleep_or_shutdown_sleeps_unless_shutting_down() {
        let shutdown = CancellationToken::new();
        assert!(sleep_or_shutdown(&shutdown, MS).await);

        let later = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(10 * MS).await;
            later.cancel();
        });
        let stopped = tokio::time::timeout(
            Duration::from_secs(10),
            sleep_or_shutdown(&shutdown, Duration::from_secs(3600)),
        )
        .await;
        assert_eq!(stopped, Ok(false));
        // Already cancelled: returns at once, even for no sleep at all.
        assert!(!sleep_or_shutdown(&shutdown, Duration::ZERO).await);
    }
}
