//! When an order resends a step its participant did not answer, and when it gives up.

use chrono::{DateTime, Utc};
use std::time::Duration;

/// Exponential backoff with jitter for resending a saga step, and the retry bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The wait for an answer after the first send (`STEP_TIMEOUT_MS`).
    pub first_wait: Duration,
    /// The longest wait, before jitter.
    pub max_wait: Duration,
    /// Resends of a forward step before giving up and compensating (`STEP_MAX_RETRIES`).
    pub max_retries: u32,
}

/// Each wait is a random 80–120 % of the unjittered one, so many orders timing out together
/// do not resend in lockstep.
const JITTER: std::ops::Range<f64> = 0.8..1.2;
/// Doublings beyond this no longer change anything (the cap is reached long before).
const MAX_DOUBLINGS: u32 = 16;

impl RetryPolicy {
    /// Waits double from `first_wait` up to five minutes.
    pub fn new(first_wait: Duration, max_retries: u32) -> Self {
        RetryPolicy {
            first_wait,
            max_wait: Duration::from_secs(300),
            max_retries,
        }
    }

    /// The step's deadline when its commands were just sent for the `attempts`-th time
    /// (0: the first send).
    pub fn deadline_after(&self, attempts: i32) -> DateTime<Utc> {
        let wait = self.wait(attempts, rand::random_range(JITTER));
        Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
    }

    /// Whether a step already resent `attempts` times is given up when its deadline passes.
    pub fn gives_up(&self, attempts: i32) -> bool {
        u32::try_from(attempts).unwrap_or(0) >= self.max_retries
    }

    fn wait(&self, attempts: i32, jitter: f64) -> Duration {
        let doublings = u32::try_from(attempts).unwrap_or(0).min(MAX_DOUBLINGS);
        self.first_wait
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_wait)
            .mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn waits_double_from_the_first_up_to_the_cap() {
        let policy = RetryPolicy::new(10 * SECOND, 3);
        let waits: Vec<_> = (0..7).map(|a| policy.wait(a, 1.0).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(policy.wait(i32::MAX, 1.0), policy.max_wait);
        assert_eq!(
            policy.wait(-1, 1.0),
            policy.first_wait,
            "nonsense counts as none"
        );
    }

    #[test]
    fn deadlines_fall_within_twenty_percent_of_the_wait() {
        let policy = RetryPolicy::new(10 * SECOND, 3);
        for attempts in [0, 2, 10] {
            let wait = chrono::Duration::from_std(policy.wait(attempts, 1.0)).expect("wait");
            for _ in 0..200 {
                let before = Utc::now();
                let deadline = policy.deadline_after(attempts);
                let after = Utc::now();
                assert!(deadline >= before + wait * 8 / 10, "{attempts}: too early");
                assert!(deadline <= after + wait * 12 / 10, "{attempts}: too late");
            }
        }
    }

    #[test]
    fn it_gives_up_after_max_retries_resends() {
        let policy = RetryPolicy::new(SECOND, 2);
        assert!(!policy.gives_up(0));
        assert!(!policy.gives_up(1));
        assert!(policy.gives_up(2));
        assert!(policy.gives_up(3));
        assert!(RetryPolicy::new(SECOND, 0).gives_up(0));
    }
}
