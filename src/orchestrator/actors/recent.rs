//! Sagas this process finished over the last minutes, for the console's charts: per
//! fixed-width bucket, how many ended and their durations in a log-scale histogram, so
//! memory stays bounded however many sagas run and p50/p99 come out within one bin (±12%).

use std::collections::VecDeque;
use std::sync::Mutex;

/// Width of one bucket, and how many are kept.
pub const BUCKET_SECS: i64 = 10;
pub const BUCKETS: usize = 30;
/// Bin `i` holds durations up to `BIN_BASE_MS * GROWTH^i`; the last bin holds the rest.
const BIN_BASE_MS: f64 = 1.0;
const GROWTH: f64 = 1.25;
const BINS: usize = 80;

#[derive(Debug, Clone)]
struct Bucket {
    /// Unix time (s) the bucket starts, a multiple of [`BUCKET_SECS`].
    start: i64,
    finished: u64,
    bins: [u32; BINS],
}

/// One bucket as shown: how many sagas finished, per second, and the percentiles.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Point {
    /// Unix time (s) the bucket starts.
    pub start: i64,
    pub completed: u64,
    pub per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Default)]
pub struct RecentSagas {
    buckets: Mutex<VecDeque<Bucket>>,
}

fn bin_of(ms: f64) -> usize {
    if ms <= BIN_BASE_MS {
        return 0;
    }
    let bin = ((ms / BIN_BASE_MS).ln() / GROWTH.ln()).ceil();
    (bin as usize).min(BINS - 1)
}

fn upper_ms(bin: usize) -> f64 {
    BIN_BASE_MS * GROWTH.powi(bin as i32)
}

fn percentile(bins: &[u32; BINS], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (bin, count) in bins.iter().enumerate() {
        seen += u64::from(*count);
        if seen >= rank {
            return Some(upper_ms(bin));
        }
    }
    Some(upper_ms(BINS - 1))
}

impl RecentSagas {
    /// A saga that took `duration_ms` finished at `now` (Unix seconds).
    pub fn record(&self, now: i64, duration_ms: f64) {
        let start = now - now.rem_euclid(BUCKET_SECS);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.back().is_none_or(|b| b.start < start) {
            buckets.push_back(Bucket {
                start,
                finished: 0,
                bins: [0; BINS],
            });
            while buckets.len() > BUCKETS {
                buckets.pop_front();
            }
        }
        // A clock step backwards lands in the newest bucket rather than reordering them.
        if let Some(bucket) = buckets.back_mut() {
            bucket.finished += 1;
            bucket.bins[bin_of(duration_ms)] += 1;
        }
    }

    /// The last [`BUCKETS`] buckets up to `now`, oldest first, empty ones included.
    pub fn points(&self, now: i64) -> Vec<Point> {
        let newest = now - now.rem_euclid(BUCKET_SECS);
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        (0..BUCKETS as i64)
            .rev()
            .map(|back| newest - back * BUCKET_SECS)
            .map(|start| match buckets.iter().find(|b| b.start == start) {
                Some(b) => Point {
                    start,
                    completed: b.finished,
                    per_second: b.finished as f64 / BUCKET_SECS as f64,
                    p50_ms: percentile(&b.bins, b.finished, 0.50),
                    p99_ms: percentile(&b.bins, b.finished, 0.99),
                },
                None => Point {
                    start,
                    completed: 0,
                    per_second: 0.0,
                    p50_ms: None,
                    p99_ms: None,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentiles_per_bucket_within_one_bin() {
        let recent = RecentSagas::default();
        let t0 = 1_800_000_000; // a multiple of 10
        for ms in 1..=100 {
            recent.record(t0 + 3, f64::from(ms) * 10.0);
        }
        recent.record(t0 + 25, 5.0);
        let points = recent.points(t0 + 29);
        assert_eq!(points.len(), BUCKETS);
        let last = &points[BUCKETS - 1];
        assert_eq!((last.start, last.completed), (t0 + 20, 1));
        let first_of_ours = &points[BUCKETS - 3];
        assert_eq!(first_of_ours.start, t0);
        assert_eq!(first_of_ours.completed, 100);
        assert!((first_of_ours.per_second - 10.0).abs() < 1e-9);
        let p50 = first_of_ours.p50_ms.expect("p50");
        let p99 = first_of_ours.p99_ms.expect("p99");
        assert!((500.0..=500.0 * GROWTH).contains(&p50), "{p50}");
        assert!((990.0..=990.0 * GROWTH).contains(&p99), "{p99}");
        assert_eq!(points[0].completed, 0);
        assert_eq!(points[0].p50_ms, None);
    }

    #[test]
    fn old_buckets_go_and_memory_stays_bounded() {
        let recent = RecentSagas::default();
        for i in 0..(BUCKETS as i64 * 3) {
            recent.record(1_800_000_000 + i * BUCKET_SECS, 1e9);
        }
        assert_eq!(recent.buckets.lock().expect("lock").len(), BUCKETS);
        let now = 1_800_000_000 + (BUCKETS as i64 * 3 - 1) * BUCKET_SECS;
        assert!(recent.points(now).iter().all(|p| p.completed == 1));
        assert!(
            recent.points(now + 10 * BUCKET_SECS)[..BUCKETS - 10]
                .iter()
                .all(|p| p.completed == 1)
        );
    }
}
