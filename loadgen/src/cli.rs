//! Command line of the load generator.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// Load generator for the order service: creates orders (closed or open loop), follows each
/// saga to its terminal state (long poll `GET /api/orders/{id}?wait_ms=`, or short polling),
/// and checks the invariants afterwards.
///
/// Exit status: 0 when every check passed, 1 when an invariant failed or an order was left
/// non-terminal after the drain timeout, 2 on a usage or setup error.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Args {
    /// Base URL of the service; several (repeated, or comma-separated) spread the saga
    /// requests round-robin over them, as a load balancer without affinity would. Stock
    /// setup and the checks use the first.
    #[arg(
        long,
        value_name = "URL[,URL…]",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: Vec<String>,

    /// Stop after this many orders (default 1000 when --duration is not given).
    #[arg(long, conflicts_with = "duration")]
    pub orders: Option<u64>,

    /// Create orders for this long (e.g. 30s, 2m, 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Closed loop: this many workers, each creating an order and waiting for its saga to be
    /// terminal before creating the next one, so at most this many sagas are in flight
    /// (default 16 when --rate is not given; see --closed-on).
    #[arg(long, conflicts_with = "rate", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,

    /// Closed loop: what a worker waits for before creating its next order. `saga` (default):
    /// the order's terminal state; `create`: only the create call's answer (the sagas are
    /// followed separately and their number in flight is not bounded). With --no-follow
    /// the default is `create`.
    #[arg(long, value_enum, conflicts_with = "rate")]
    pub closed_on: Option<ClosedOn>,

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
    #[arg(long, conflicts_with = "follow")]
    pub no_follow: bool,

    /// How created orders are followed to their terminal state: `wait` long-polls
    /// `GET /api/orders/{id}?wait_ms=…` (asked again until terminal); `poll` polls
    /// `GET /api/orders/{id}` on a backoff schedule, for services without the long poll;
    /// `events` reads one `GET /api/events` stream for every order (needs --admin-token).
    #[arg(long, value_enum, default_value_t = FollowMode::Wait)]
    pub follow: FollowMode,

    /// --follow wait: how long each long poll asks the service to wait (its `wait_ms`;
    /// at most 60s). An order still not terminal then is asked for again.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub long_poll: Duration,

    /// --follow wait: most long polls open at once; more followed orders wait their turn
    /// (first come, first served), so a large backlog (open loop) does not hold thousands of
    /// connections and waiters in the service.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_waits: u32,

    /// After the load: how long to wait for the followed orders to become terminal.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// After the drain: how long to wait for the stock and invariant checks to settle
    /// (Inventory marks stock sold asynchronously after an order is CONFIRMED).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub settle_timeout: Duration,

    /// --follow poll: first poll of an order after its create call; each next poll waits
    /// 1.5 times longer. (--follow wait: first back-off after a failed or premature answer.)
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub poll_min: Duration,

    /// --follow poll: longest wait between two polls of one order. (--follow wait: longest
    /// back-off.)
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub poll_max: Duration,

    /// --follow poll: most polls per second across all followed orders: when more are due,
    /// they wait their turn (with N orders in flight, each is polled about every N / budget
    /// s), so a growing backlog does not turn into a polling storm against the service.
    #[arg(long, default_value_t = 500.0)]
    pub poll_budget: f64,

    /// Timeout of one HTTP request (a long poll gets --long-poll more).
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

/// How created orders are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FollowMode {
    /// Long poll `GET /api/orders/{id}?wait_ms=…`.
    Wait,
    /// Short polls of `GET /api/orders/{id}` with back-off.
    Poll,
    /// One Server-Sent Events stream (`GET /api/events`) for every order.
    Events,
}

impl FollowMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FollowMode::Wait => "wait",
            FollowMode::Poll => "poll",
            FollowMode::Events => "events",
        }
    }
}

/// What a closed-loop worker waits for before its next order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClosedOn {
    /// The saga's terminal state.
    Saga,
    /// The create call's answer only.
    Create,
}

impl ClosedOn {
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedOn::Saga => "saga",
            ClosedOn::Create => "create",
        }
    }
}

/// How orders are produced.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Closed { concurrency: u32, on: ClosedOn },
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
                on: self.closed_on.unwrap_or(if self.no_follow {
                    ClosedOn::Create
                } else {
                    ClosedOn::Saga
                }),
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
        if self.no_follow && self.closed_on == Some(ClosedOn::Saga) {
            return Err("--closed-on saga needs the sagas followed: drop --no-follow".into());
        }
        if self.long_poll < Duration::from_millis(1) || self.long_poll > Duration::from_secs(60) {
            return Err("--long-poll must be between 1ms and 60s (the service's limit)".into());
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
        if self.follow == FollowMode::Events && self.admin_token.is_none() {
            return Err("--follow events reads GET /api/events, which needs --admin-token".into());
        }
        let mix = self.sku_mix();
        for (i, a) in mix.iter().enumerate() {
            if mix[..i].iter().any(|b| b.sku == a.sku) {
                return Err(format!("--sku {} given twice", a.sku));
            }
        }
        self.base_urls()?;
        Ok(())
    }

    /// The --url values without a trailing `/`, in the order given: each must be http(s)
    /// and appear once (a duplicate would silently get a double share of the requests).
    pub fn base_urls(&self) -> Result<Vec<String>, String> {
        let mut bases: Vec<String> = Vec::with_capacity(self.url.len());
        for url in &self.url {
            let url = url.trim();
            if url.is_empty() {
                return Err("--url: an empty URL (a stray comma?)".into());
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(if self.url.len() == 1 {
                    "--url must start with http:// or https://".into()
                } else {
                    format!("--url {url:?} must start with http:// or https://")
                });
            }
            let base = url.trim_end_matches('/').to_owned();
            if bases.contains(&base) {
                return Err(format!("--url {base} given twice"));
            }
            bases.push(base);
        }
        if bases.is_empty() {
            return Err("--url: at least one URL".into());
        }
        Ok(bases)
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
    fn closed_loop_waits_for_the_saga_by_default() {
        let mode = |argv: &[&str]| {
            let args = Args::try_parse_from([&["loadgen"], argv].concat()).expect("valid");
            assert_eq!(args.validate(), Ok(()));
            args.mode()
        };
        assert!(matches!(
            mode(&["--concurrency", "4"]),
            Mode::Closed {
                concurrency: 4,
                on: ClosedOn::Saga
            }
        ));
        assert!(matches!(
            mode(&["--closed-on", "create"]),
            Mode::Closed {
                on: ClosedOn::Create,
                ..
            }
        ));
        assert!(matches!(
            mode(&["--no-follow"]),
            Mode::Closed {
                on: ClosedOn::Create,
                ..
            }
        ));
        assert!(matches!(mode(&["--rate", "10"]), Mode::Open { .. }));
        let args = Args::try_parse_from(["loadgen"]).expect("valid");
        assert_eq!(args.follow, FollowMode::Wait);
        assert_eq!(args.long_poll, Duration::from_secs(30));
        let args = Args::try_parse_from(["loadgen", "--no-follow", "--closed-on", "saga"])
            .expect("parses");
        assert!(args.validate().is_err());
        let args = Args::try_parse_from(["loadgen", "--long-poll", "61s"]).expect("parses");
        assert!(args.validate().is_err());
        assert!(Args::try_parse_from(["loadgen", "--rate", "5", "--closed-on", "saga"]).is_err());
    }

    #[test]
    fn urls_repeated_or_comma_separated() {
        let urls = |argv: &[&str]| {
            Args::try_parse_from([&["loadgen"], argv].concat())
                .map_err(|e| e.to_string())
                .and_then(|a| a.base_urls())
        };
        assert_eq!(urls(&[]), Ok(vec!["http://127.0.0.1:8080".to_owned()]));
        assert_eq!(
            urls(&["--url", "http://a:8080/"]),
            Ok(vec!["http://a:8080".to_owned()])
        );
        let three = Ok(vec![
            "http://a:8080".to_owned(),
            "https://b".to_owned(),
            "http://c:1".to_owned(),
        ]);
        assert_eq!(
            urls(&[
                "--url",
                "http://a:8080",
                "--url",
                "https://b",
                "--url",
                "http://c:1"
            ]),
            three
        );
        assert_eq!(
            urls(&["--url", "http://a:8080,https://b,http://c:1"]),
            three
        );
        assert_eq!(
            urls(&["--url", "http://a:8080,https://b", "--url", "http://c:1"]),
            three
        );
    }

    #[test]
    fn an_invalid_url_among_several_is_named() {
        let error = |argv: &[&str]| {
            let args = Args::try_parse_from([&["loadgen"], argv].concat()).expect("parses");
            args.validate().expect_err("invalid")
        };
        assert_eq!(
            error(&["--url", "http://a,ftp://b"]),
            "--url \"ftp://b\" must start with http:// or https://"
        );
        assert_eq!(
            error(&["--url", "http://a", "--url", "b:8080"]),
            "--url \"b:8080\" must start with http:// or https://"
        );
        // One URL: the message as it always was.
        assert_eq!(
            error(&["--url", "localhost:8080"]),
            "--url must start with http:// or https://"
        );
        assert_eq!(
            error(&["--url", "http://a,"]),
            "--url: an empty URL (a stray comma?)"
        );
        assert_eq!(
            error(&["--url", "http://a/,http://a"]),
            "--url http://a given twice"
        );
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }
}
