//! Command line of the load generator.

use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// Load generator for the order service: creates orders (closed or open loop), follows each
/// saga to its terminal state, and checks the invariants afterwards.
///
/// Exit status: 0 when every check passed, 1 when an invariant failed or an order was left
/// non-terminal after the drain timeout, 2 on a usage or setup error.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Args {
    /// Base URL of the service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Stop after this many orders (default 1000 when --duration is not given).
    #[arg(long, conflicts_with = "duration")]
    pub orders: Option<u64>,

    /// Create orders for this long (e.g. 30s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Closed loop: this many workers, each creating one order after the other
    /// (default 16 when --rate is not given).
    #[arg(long, conflicts_with = "rate", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,

    /// Open loop: schedule this many orders per second, independent of the responses;
    /// latency is measured from each order's scheduled start (no coordinated omission).
    #[arg(long)]
    pub rate: Option<f64>,

    /// Open loop: most create calls in flight; an order due while the cap is reached is
    /// dropped and counted.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,

    /// SKU mix, `SKU:weight` (weight defaults to 1); repeat for several SKUs.
    #[arg(long = "sku", value_name = "SKU[:WEIGHT]", value_parser = parse_sku)]
    pub skus: Vec<SkuWeight>,

    /// Quantity of the SKU in each order (one line per order).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub quantity: u32,

    /// `customer_id` of the orders.
    #[arg(long, default_value = "loadgen")]
    pub customer_id: String,

    /// Admin token: enables the invariant check (`GET /api/admin/invariants`) and --stock.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Before the run, set every SKU's available stock to this (`PUT /api/inventory/{sku}`;
    /// needs --admin-token).
    #[arg(long, requires = "admin_token")]
    pub stock: Option<i64>,

    /// With --stock: the price to set (default: keep the SKU's price; 1000 for a new SKU).
    #[arg(long, requires = "stock")]
    pub price_cents: Option<i64>,

    /// Expected payment decline rate (the service's PAYMENT_DECLINE_RATE): the report
    /// compares it with the observed REVERSED share of CONFIRMED + REVERSED.
    #[arg(long)]
    pub expect_decline_rate: Option<f64>,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Only measure the create calls; do not follow the sagas.
    #[arg(long)]
    pub no_follow: bool,

    /// After the load: how long to wait for the followed orders to become terminal.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// After the drain: how long to wait for the stock and invariant checks to settle
    /// (Inventory marks stock sold asynchronously after an order is CONFIRMED).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub settle_timeout: Duration,

    /// First poll of an order after its create call; each next poll waits 1.5 times longer.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub poll_min: Duration,

    /// Longest wait between two polls of one order.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub poll_max: Duration,

    /// Most polls per second across all followed orders: when more are due, they wait
    /// their turn (with N orders in flight, each is polled about every N / budget s), so a
    /// growing backlog does not turn into a polling storm against the service.
    #[arg(long, default_value_t = 500.0)]
    pub poll_budget: f64,

    /// Timeout of one HTTP request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Retries of a create call (same Idempotency-Key) after a 503 or a transport error.
    #[arg(long, default_value_t = 10)]
    pub max_retries: u32,

    /// Other clients use the service too: skip the check that stock sold equals the
    /// CONFIRMED quantities this run observed.
    #[arg(long)]
    pub shared: bool,

    /// A label copied into the report (e.g. the benchmark mode).
    #[arg(long)]
    pub label: Option<String>,

    /// Tokio worker threads (the generator shares the machine with the service).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: u32,

    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// One entry of the SKU mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuWeight {
    pub sku: String,
    pub weight: u32,
}

/// How orders are produced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Closed { concurrency: u32 },
    Open { rate: f64 },
}

/// When the load phase ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    Orders(u64),
    Duration(Duration),
}

impl Args {
    pub fn mode(&self) -> Mode {
        match (self.rate, self.concurrency) {
            (Some(rate), _) => Mode::Open { rate },
            (None, c) => Mode::Closed {
                concurrency: c.unwrap_or(16),
            },
        }
    }

    pub fn stop(&self) -> Stop {
        match (self.orders, self.duration) {
            (_, Some(d)) => Stop::Duration(d),
            (n, None) => Stop::Orders(n.unwrap_or(1000)),
        }
    }

    /// The SKU mix, the demo catalogue's `CB-004` by default.
    pub fn sku_mix(&self) -> Vec<SkuWeight> {
        if self.skus.is_empty() {
            vec![SkuWeight {
                sku: "CB-004".into(),
                weight: 1,
            }]
        } else {
            self.skus.clone()
        }
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0)
        {
            return Err("--rate must be a number of orders per second in (0, 1000000]".into());
        }
        if self.orders == Some(0) {
            return Err("--orders must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be positive".into());
        }
        if let Some(p) = self.expect_decline_rate
            && !(0.0..=1.0).contains(&p)
        {
            return Err("--expect-decline-rate must be between 0 and 1".into());
        }
        if self
            .stock
            .is_some_and(|s| !(0..=1_000_000_000).contains(&s))
        {
            return Err("--stock must be between 0 and 1000000000".into());
        }
        if self
            .price_cents
            .is_some_and(|p| !(0..=1_000_000_000).contains(&p))
        {
            return Err("--price-cents must be between 0 and 1000000000".into());
        }
        if self.poll_min.is_zero() || self.poll_min > self.poll_max {
            return Err("--poll-min must be positive and at most --poll-max".into());
        }
        if !(self.poll_budget.is_finite() && self.poll_budget > 0.0) {
            return Err("--poll-budget must be positive".into());
        }
        if self.max_in_flight == 0 {
            return Err("--max-in-flight must be at least 1".into());
        }
        let mix = self.sku_mix();
        for (i, a) in mix.iter().enumerate() {
            if mix[..i].iter().any(|b| b.sku == a.sku) {
                return Err(format!("--sku {} given twice", a.sku));
            }
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err("--url must start with http:// or https://".into());
        }
        Ok(())
    }
}

/// `30s`, `2m`, `500ms`, `1h`, `1.5s`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 30s, 2m, 500ms)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// `SKU` or `SKU:weight`.
pub fn parse_sku(s: &str) -> Result<SkuWeight, String> {
    let (sku, weight) = match s.rsplit_once(':') {
        Some((sku, w)) => (
            sku,
            w.parse::<u32>()
                .ok()
                .filter(|w| *w >= 1)
                .ok_or_else(|| format!("invalid weight in {s:?}: a whole number >= 1"))?,
        ),
        None => (s, 1),
    };
    let valid = !sku.is_empty()
        && sku.len() <= 64
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(format!(
            "invalid SKU {sku:?}: 1-64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(SkuWeight {
        sku: sku.to_owned(),
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn skus() {
        assert_eq!(
            parse_sku("CB-004:3"),
            Ok(SkuWeight {
                sku: "CB-004".into(),
                weight: 3
            })
        );
        assert_eq!(parse_sku("KB-001").map(|s| s.weight), Ok(1));
        assert!(parse_sku("KB-001:0").is_err());
        assert!(parse_sku("bad sku").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
