//! The end-of-run report: printed for people, and as JSON for `bench/run.sh`.

use crate::checks::{InvariantReport, StockView};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Retries {
    pub status_503: u64,
    pub transport: u64,
    pub key_in_flight: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeclineCheck {
    /// Expected REVERSED share of CONFIRMED + REVERSED.
    pub expected: f64,
    pub observed: f64,
    /// 99% binomial band around the expected share for this many sagas.
    pub band_low: f64,
    pub band_high: f64,
    pub sagas: u64,
    pub within_band: bool,
}

impl DeclineCheck {
    pub fn new(expected: f64, confirmed: u64, reversed: u64) -> Option<DeclineCheck> {
        let n = confirmed + reversed;
        if n == 0 {
            return None;
        }
        let observed = reversed as f64 / n as f64;
        let half = 2.576 * (expected * (1.0 - expected) / n as f64).sqrt();
        let (low, high) = ((expected - half).max(0.0), (expected + half).min(1.0));
        Some(DeclineCheck {
            expected,
            observed,
            band_low: low,
            band_high: high,
            sagas: n,
            within_band: (low..=high).contains(&observed),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StockCheck {
    pub sku: String,
    pub before: StockView,
    pub after: StockView,
    /// available + reserved + sold unchanged.
    pub conserved: bool,
    pub sold_delta: i64,
    /// Quantity of the CONFIRMED orders this run observed for the SKU.
    pub confirmed_quantity: i64,
    /// `sold_delta == confirmed_quantity`; `None` when not checked (see `sold_check_skipped`).
    pub sold_matches: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkuEntry {
    pub sku: String,
    pub weight: u32,
}

/// One of several --url and the saga requests sent to it.
#[derive(Debug, Clone, Serialize)]
pub struct UrlRequests {
    pub url: String,
    /// Create attempts, polls and long polls (the setup and check calls, all to the first
    /// URL, are not counted).
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: Option<String>,
    /// The (first) URL: setup and checks.
    pub url: String,
    /// With several --url: each, in order, and the saga requests sent to it round-robin;
    /// absent with one URL, so that report stays as it was.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<UrlRequests>,
    /// `closed` or `open`.
    pub mode: String,
    pub concurrency: Option<u32>,
    /// Closed loop: what a worker waits for before its next order, `saga` or `create`.
    pub closed_on: Option<String>,
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub orders_limit: Option<u64>,
    pub skus: Vec<SkuEntry>,
    pub quantity: u32,
    pub follow: bool,
    /// How the sagas were followed: `wait` (long poll) or `poll`; `None` with --no-follow.
    pub follow_mode: Option<String>,
    /// `wait_ms` of each long poll.
    pub long_poll_ms: Option<u64>,
    /// Most long polls open at once.
    pub max_waits: Option<u32>,
    pub started_at: String,

    pub load_seconds: f64,
    pub drain_seconds: f64,
    pub created: u64,
    pub created_per_sec: f64,
    pub completed: u64,
    pub completed_during_load: u64,
    /// Sagas that became terminal during the load phase, per second of it.
    pub completed_per_sec: f64,
    /// All completed sagas over load + drain time.
    pub completed_per_sec_overall: f64,
    pub error_count: u64,
    pub errors: BTreeMap<String, u64>,
    pub retries: Retries,
    pub idempotent_replays: u64,
    /// Open loop: orders not sent because --max-in-flight create calls were pending.
    pub dropped: u64,
    /// `GET /api/orders/{id}` requests made to follow the sagas (long polls included).
    pub polls: u64,
    pub polls_per_saga: f64,
    /// Polls that waited for the --poll-budget (--follow poll).
    pub polls_delayed: u64,
    pub poll_budget: f64,
    /// Long polls answered with a non-terminal order when their wait ran out.
    pub waits_expired: u64,
    /// Long polls answered with a non-terminal order long before their wait ran out (the
    /// service does not seem to support `wait_ms`).
    pub waits_early: u64,
    /// Long polls that waited for a free --max-waits slot.
    pub waits_queued: u64,
    pub poll_errors: BTreeMap<String, u64>,

    pub create_latency: Option<Latency>,
    /// Open loop: scheduled start → the create call's start (the generator's own lag,
    /// included in the create and saga latencies); `None` in closed loop.
    pub send_lag: Option<Latency>,
    /// Create call start (scheduled start in open loop) → the answer (long poll or poll) that
    /// showed the terminal state.
    pub saga_latency: Option<Latency>,
    /// The service's own clock: order `created_at` → `updated_at` of the terminal state
    /// (free of the polling granularity).
    pub saga_server_latency: Option<Latency>,
    pub terminal: BTreeMap<String, u64>,
    pub unfinished: u64,
    pub unfinished_sample: Vec<String>,
    pub parked: Vec<String>,

    pub decline: Option<DeclineCheck>,
    pub stock: Vec<StockCheck>,
    pub sold_check_skipped: Option<String>,
    pub invariants: Option<InvariantReport>,
    pub invariants_skipped: Option<String>,

    pub failures: Vec<String>,
    pub passed: bool,
}

/// `850µs`, `12.34ms`, `1.50s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

fn latency_line(out: &mut String, name: &str, l: Option<&Latency>) {
    match l {
        Some(l) => {
            let _ = writeln!(
                out,
                "  {name:<15} p50 {:>9}  p90 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}  (n={}, mean {})",
                fmt_us(l.p50_us),
                fmt_us(l.p90_us),
                fmt_us(l.p99_us),
                fmt_us(l.p999_us),
                fmt_us(l.max_us),
                l.count,
                fmt_us(l.mean_us as u64),
            );
        }
        None => {
            let _ = writeln!(out, "  {name:<15} -");
        }
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let load = match (self.mode.as_str(), self.concurrency, self.rate) {
            ("closed", Some(c), _) => match self.closed_on.as_deref() {
                Some("saga") => format!("closed loop, concurrency {c}, each waiting for its saga"),
                Some("create") if self.follow => format!(
                    "closed loop, concurrency {c}, on the create call (sagas followed apart)"
                ),
                _ => format!("closed loop, concurrency {c}"),
            },
            (_, _, Some(r)) => format!("open loop, {r} orders/s scheduled"),
            _ => self.mode.clone(),
        };
        let skus = self
            .skus
            .iter()
            .map(|s| format!("{}:{}", s.sku, s.weight))
            .collect::<Vec<_>>()
            .join(" ");
        let target = if self.urls.is_empty() {
            self.url.clone()
        } else {
            format!(
                "round-robin over {} (setup and checks on the first)",
                self.urls
                    .iter()
                    .map(|u| u.url.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            out,
            "== loadgen {}{load}; SKU mix {skus}, quantity {}; {target}",
            self.label
                .as_ref()
                .map(|l| format!("[{l}] "))
                .unwrap_or_default(),
            self.quantity,
        );
        let _ = write!(
            out,
            "  load phase      {:.2}s: created {} ({:.1}/s)",
            self.load_seconds, self.created, self.created_per_sec,
        );
        if self.follow {
            let _ = write!(
                out,
                ", completed {} during the load ({:.1}/s)",
                self.completed_during_load, self.completed_per_sec
            );
        }
        let _ = writeln!(out);
        if self.follow {
            let _ = writeln!(
                out,
                "  drain           {:.2}s: completed {} in all ({:.1}/s over load + drain), {} not terminal",
                self.drain_seconds, self.completed, self.completed_per_sec_overall, self.unfinished
            );
        }
        latency_line(&mut out, "create call", self.create_latency.as_ref());
        if self.send_lag.is_some() {
            latency_line(&mut out, "send lag", self.send_lag.as_ref());
        }
        if self.follow {
            let observed = match self.follow_mode.as_deref() {
                Some("wait") => "saga (waited)",
                Some("events") => "saga (streamed)",
                _ => "saga (polled)",
            };
            latency_line(&mut out, observed, self.saga_latency.as_ref());
            latency_line(&mut out, "saga (server)", self.saga_server_latency.as_ref());
            let total: u64 = self.terminal.values().sum();
            let terminal = if self.terminal.is_empty() {
                "none".to_owned()
            } else {
                self.terminal
                    .iter()
                    .map(|(k, v)| {
                        format!("{k} {v} ({:.1}%)", 100.0 * *v as f64 / total.max(1) as f64)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "  terminal        {terminal}");
        }
        let _ = writeln!(
            out,
            "  errors          {} ({})",
            self.error_count,
            counts(&self.errors)
        );
        let _ = writeln!(
            out,
            "  retries         503: {}, transport: {}, key in flight: {}; idempotent replays {}; dropped (in-flight cap) {}",
            self.retries.status_503,
            self.retries.transport,
            self.retries.key_in_flight,
            self.idempotent_replays,
            self.dropped
        );
        if let Some(wait_ms) = self.long_poll_ms {
            let _ = writeln!(
                out,
                "  long polls      {} GET /api/orders/{{id}}?wait_ms={wait_ms} ({:.2} per saga; {} ran out, {} answered early without a terminal state, {} queued for the {} open at most); errors: {}",
                self.polls,
                self.polls_per_saga,
                self.waits_expired,
                self.waits_early,
                self.waits_queued,
                self.max_waits.unwrap_or(0),
                counts(&self.poll_errors)
            );
            if self.waits_early > 0 {
                let _ = writeln!(
                    out,
                    "  note            the service answered {} long polls early: if it ignores wait_ms, use --follow poll",
                    self.waits_early
                );
            }
        } else if self.follow_mode.as_deref() == Some("events") {
            let _ = writeln!(
                out,
                "  events          one GET /api/events stream ({}) for every saga; no per-order requests",
                crate::events::TYPES
            );
        } else if self.follow {
            let _ = writeln!(
                out,
                "  polling         {} GET /api/orders/{{id}} ({:.1} per saga, {:.0}/s; {} waited for the {}/s budget); poll errors: {} — polling adds load to the service",
                self.polls,
                self.polls_per_saga,
                self.polls as f64 / (self.load_seconds + self.drain_seconds).max(1e-9),
                self.polls_delayed,
                self.poll_budget,
                counts(&self.poll_errors)
            );
        }
        if !self.urls.is_empty() {
            let total: u64 = self.urls.iter().map(|u| u.requests).sum();
            let per_url = self
                .urls
                .iter()
                .map(|u| {
                    format!(
                        "{} {} ({:.1}%)",
                        u.url,
                        u.requests,
                        100.0 * u.requests as f64 / total.max(1) as f64
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "  per URL         {per_url} (saga requests: create attempts and GETs)"
            );
        }
        if let Some(d) = &self.decline {
            let _ = writeln!(
                out,
                "  declines        expected {:.1}% REVERSED of CONFIRMED+REVERSED, observed {:.1}% of {} (99% band {:.1}–{:.1}%): {}",
                100.0 * d.expected,
                100.0 * d.observed,
                d.sagas,
                100.0 * d.band_low,
                100.0 * d.band_high,
                if d.within_band {
                    "as expected"
                } else {
                    "OUTSIDE the band"
                }
            );
        }
        for s in &self.stock {
            let sold = match s.sold_matches {
                Some(true) => format!(
                    "sold +{} == CONFIRMED quantity {}",
                    s.sold_delta, s.confirmed_quantity
                ),
                Some(false) => format!(
                    "sold +{} != CONFIRMED quantity {} (MISMATCH)",
                    s.sold_delta, s.confirmed_quantity
                ),
                None => format!(
                    "sold +{} (CONFIRMED quantity observed {}, not compared)",
                    s.sold_delta, s.confirmed_quantity
                ),
            };
            let _ = writeln!(
                out,
                "  stock {:<9} total {} -> {} ({}); available {} -> {}, reserved {} -> {}, {sold}",
                s.sku,
                s.before.total(),
                s.after.total(),
                if s.conserved {
                    "conserved"
                } else {
                    "NOT CONSERVED"
                },
                s.before.available,
                s.after.available,
                s.before.reserved,
                s.after.reserved,
            );
        }
        if let Some(why) = &self.sold_check_skipped {
            let _ = writeln!(out, "  sold check      skipped: {why}");
        }
        match (&self.invariants, &self.invariants_skipped) {
            (Some(i), _) => {
                let _ = writeln!(
                    out,
                    "  invariants      holds={} in_flight={} parked={} violations={} (orders by status: {})",
                    i.holds,
                    i.in_flight,
                    i.parked,
                    i.violations.len(),
                    counts(&i.orders_by_status)
                );
                for v in i.violations.iter().take(10) {
                    let _ = writeln!(out, "    violation: {v}");
                }
            }
            (None, Some(why)) => {
                let _ = writeln!(out, "  invariants      not checked: {why}");
            }
            (None, None) => {}
        }
        for id in self.unfinished_sample.iter().take(10) {
            let _ = writeln!(out, "    not terminal: {id}");
        }
        if self.passed {
            let _ = writeln!(out, "  result          PASS");
        } else {
            let _ = writeln!(out, "  result          FAIL: {}", self.failures.join("; "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_latencies() {
        assert_eq!(fmt_us(850), "850µs");
        assert_eq!(fmt_us(12_340), "12.34ms");
        assert_eq!(fmt_us(1_500_000), "1.50s");
    }

    #[test]
    fn decline_band() {
        let d = DeclineCheck::new(0.3, 700, 300).expect("sagas");
        assert!(d.within_band);
        assert!((d.observed - 0.3).abs() < 1e-9);
        let d = DeclineCheck::new(0.3, 900, 100).expect("sagas");
        assert!(!d.within_band);
        assert!(DeclineCheck::new(0.3, 0, 0).is_none());
    }
}
