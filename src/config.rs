//! Configuration: every option is a CLI flag and an environment variable (`--help` lists
//! them all), validated once at start-up so a bad value stops the process with a clear
//! one-line message instead of surfacing later as a runtime error.

use crate::domain::saga::PaymentMode;
use crate::faults::Faults;
use clap::{Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(name = "order-service", version, about = "Order Orchestration Service")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<CliCommand>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CliCommand {
    /// Run the HTTP API, the order actors and the participants (the default).
    Serve,
    /// Apply all database migrations (orders, inventory, payment, shipping) and exit.
    Migrate,
    /// Run only the participants (Inventory, Payment, Shipping) — their consumers and
    /// outboxes — as a separate service next to an orchestrator started with
    /// `EMBEDDED_PARTICIPANTS=false`. Needs AMQP_URL. Serves /health/* on LISTEN_ADDR.
    Participants,
    /// Probe `GET /health/live` on LISTEN_ADDR; exit 0 if it answers 200 (for container
    /// health checks, so the runtime image needs no curl).
    Healthcheck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for development.
    Pretty,
    /// One JSON object per line, for production log pipelines.
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address the HTTP API listens on: IP:PORT, or HOST:PORT (the host name is resolved
    /// once at start-up, its IPv4 address preferred), e.g. `0.0.0.0:8080`, `localhost:8080`.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080", value_parser = parse_listen_addr)]
    pub listen_addr: SocketAddr,

    /// Orders database. `sqlite://…` (embedded default) or `postgres://…`. The participants'
    /// stores derive from it: their own schema on PostgreSQL, their own file on SQLite.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/orders.db?mode=rwc"
    )]
    pub database_url: String,

    /// RabbitMQ URL (`amqp://user:pass@host:5672/vhost`). Unset: in-process bus.
    #[arg(long, env = "AMQP_URL")]
    pub amqp_url: Option<String>,

    /// Bearer token for admin endpoints. Unset: admin endpoints are disabled (404).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Enable dev-only endpoints (`POST /api/orders/:id/pay`).
    #[arg(long, env = "DEV_ENDPOINTS", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_endpoints: bool,

    /// `auto`: charge right after the reservation; `manual`: wait for the dev pay endpoint.
    #[arg(long, env = "PAYMENT_MODE", value_enum, ignore_case = true, default_value_t = PaymentMode::Auto)]
    pub payment_mode: PaymentMode,

    /// Fraction of charges the mock payment gateway declines (0.0–1.0).
    #[arg(long, env = "PAYMENT_DECLINE_RATE", default_value_t = 0.3)]
    pub payment_decline_rate: f64,

    /// Fraction of shipments the mock shipping service fails (0.0–1.0).
    #[arg(long, env = "SHIPPING_FAILURE_RATE", default_value_t = 0.0)]
    pub shipping_failure_rate: f64,

    /// Run the in-process participants (Inventory, Payment, Shipping) in this process.
    #[arg(long, env = "EMBEDDED_PARTICIPANTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub embedded_participants: bool,

    /// Apply migrations at start-up.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Seed the demo catalogue when the inventory is empty.
    #[arg(long, env = "SEED_DEMO_CATALOGUE", default_value_t = true, action = clap::ArgAction::Set)]
    pub seed_demo_catalogue: bool,

    /// Maximum request body size in bytes.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub body_limit_bytes: usize,

    /// Admission control: `POST /api/orders` answers 503 with `Retry-After` while this many
    /// orders are being worked on in memory (live order actors), so an overload cannot
    /// starve the sagas already running. 0 turns it off.
    #[arg(long, env = "MAX_ORDERS_IN_FLIGHT", default_value_t = 2_000)]
    pub max_orders_in_flight: usize,

    /// How long idempotency keys are kept, in seconds (default 24 h).
    #[arg(long, env = "IDEMPOTENCY_RETENTION_SECS", default_value_t = 86_400)]
    pub idempotency_retention_secs: u64,

    /// Age in seconds after which an idempotency key whose request never finished (its
    /// process crashed) may be claimed again by a retry.
    #[arg(long, env = "IDEMPOTENCY_CLAIM_TIMEOUT_SECS", default_value_t = 60)]
    pub idempotency_claim_timeout_secs: u64,

    /// Maximum database connections per store (PostgreSQL).
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,

    /// How long a saga step waits for its participant before the command is resent,
    /// in milliseconds. Each retry waits twice as long (with jitter), capped at 5 minutes.
    #[arg(long, env = "STEP_TIMEOUT_MS", default_value_t = 10_000)]
    pub step_timeout_ms: u64,

    /// On RabbitMQ, how long an outbox relay of commands and replies gathers after a
    /// hand-over before it publishes, in milliseconds, when its last round published more
    /// than one message (sagas running side by side); a lone saga is never held. More
    /// per AMQP message and per confirm costs the broker and the service less CPU, at up
    /// to this much more latency per saga step. 0: publish at once, always.
    #[arg(long, env = "RELAY_LINGER_MS", default_value_t = 2)]
    pub relay_linger_ms: u64,

    /// Seconds an order actor stays in memory without a message before it is passivated
    /// (its state is in the database; the next message loads it again). Finished orders
    /// are passivated at once.
    #[arg(long, env = "ACTOR_IDLE_SECS", default_value_t = 60)]
    pub actor_idle_secs: u64,

    /// Resends of a forward step (reserve, charge, schedule) before the saga gives up and
    /// compensates. Compensation itself is retried until it completes.
    #[arg(long, env = "STEP_MAX_RETRIES", default_value_t = 3)]
    pub step_max_retries: u32,

    /// Seconds a new HTTP connection has to send its first request head in full (from
    /// accept); slower ones are closed without an answer.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,

    /// Seconds a kept-alive HTTP connection may wait, from the end of a response, until its
    /// next request head is in full; then it is closed. Keep it longer than the idle timeout
    /// of a proxy or load balancer in front, so that they close idle connections first.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_SECS", default_value_t = 75)]
    pub http_idle_timeout_secs: u64,

    /// Seconds a request body has to arrive in full, from the end of its head; a body still
    /// incomplete then gets 408 problem+json and the connection is closed.
    #[arg(long, env = "HTTP_BODY_TIMEOUT_SECS", default_value_t = 30)]
    pub http_body_timeout_secs: u64,

    /// HTTP connections served at once; further ones wait unaccepted in the listen backlog
    /// until one closes. Lowered to half the open-files limit (`ulimit -n`) if that is smaller.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: usize,

    /// How long a graceful shutdown (SIGTERM/SIGINT) may take before the process exits.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    /// Fault injection (tests and chaos drills; off by default): make the order actor
    /// panic when it handles this event. `EVENT` panics once per order, `EVENT:always`
    /// every time, `EVENT:first=N` the first N times per order (a crash loop that parks the
    /// order and ends once it is resumed), `EVENT:0.3` with that probability. Events: a saga event's name (e.g.
    /// `payment_charged`; an unknown one is refused with the list) or `order_created`.
    #[arg(long, env = "FAULT_ACTOR_PANIC")]
    pub fault_actor_panic: Option<String>,

    /// Fault injection: command types the embedded participants silently drop (acked, no
    /// effect, no reply), e.g. `payment.charge` — a participant that never answers.
    #[arg(long, env = "FAULT_DROP_COMMANDS", value_delimiter = ',')]
    pub fault_drop_commands: Vec<String>,

    /// OpenTelemetry collector base URL (OTLP over HTTP/protobuf, e.g.
    /// `http://127.0.0.1:4318`): spans are also exported as traces to `<url>/v1/traces`.
    /// Unset or empty: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// `service.name` of the exported traces.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "order-service")]
    pub otel_service_name: String,

    /// This replica's name among several (logs, health, metrics, the `partitions` table).
    /// Default: the host name.
    #[arg(long, env = "REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Partitions the orders are hashed into, each owned by one replica at a time
    /// (PostgreSQL with RabbitMQ only). Fixed for the life of a database: a replica started
    /// with another count than the database's refuses to start.
    #[arg(long, env = "PARTITIONS", default_value_t = crate::domain::partition::DEFAULT_PARTITIONS)]
    pub partitions: u16,

    /// The base URL the other replicas forward this one's requests to, e.g.
    /// `http://order-service-1:8080`. Default: `http://<host name>:<listen port>`.
    #[arg(long, env = "ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// Milliseconds a replica may be silent (paused, cut off from PostgreSQL) before the
    /// database ends its session and its partitions go to the others.
    #[arg(long, env = "OWNERSHIP_LEASE_MS", default_value_t = 3000)]
    pub ownership_lease_ms: u64,
}

/// `LISTEN_ADDR`: an IP address and port, or a host name and port.
fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    let hint = "expected IP:PORT or HOST:PORT, e.g. 0.0.0.0:8080 or localhost:8080";
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("no port ({hint})"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("no host ({hint})"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number 0-65535 ({hint})"))?;
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            format!("cannot resolve {host:?} ({e}); use an IP address such as 0.0.0.0:{port}")
        })?
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| {
            format!("{host:?} resolves to no address; use an IP address such as 0.0.0.0:{port}")
        })
}

/// A configuration value that cannot work. The message names the option.
#[derive(Debug, thiserror::Error)]
#[error("invalid {option}: {problem}")]
pub struct ConfigError {
    pub option: &'static str,
    pub problem: String,
}

impl Config {
    /// Checks what clap's types cannot: ranges and URL schemes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (option, rate) in [
            ("PAYMENT_DECLINE_RATE", self.payment_decline_rate),
            ("SHIPPING_FAILURE_RATE", self.shipping_failure_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError {
                    option,
                    problem: format!("{rate} is not a fraction between 0.0 and 1.0"),
                });
            }
        }
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError {
                option: "DATABASE_URL",
                problem: "must start with sqlite:, postgres:// or postgresql://".into(),
            });
        }
        if let Some(amqp) = &self.amqp_url {
            let parsed = url::Url::parse(amqp).map_err(|e| ConfigError {
                option: "AMQP_URL",
                problem: format!("not a URL ({e})"),
            })?;
            if !matches!(parsed.scheme(), "amqp" | "amqps") {
                return Err(ConfigError {
                    option: "AMQP_URL",
                    problem: "must start with amqp:// or amqps://".into(),
                });
            }
            // What the client library itself rejects (e.g. a bad port or query option),
            // found here rather than at the first connection attempt.
            crate::messaging::amqp::parse_url(amqp).map_err(|e| ConfigError {
                option: "AMQP_URL",
                problem: match e {
                    crate::messaging::BusError::InvalidUrl(problem) => problem,
                    other => other.to_string(),
                },
            })?;
        }
        if matches!(&self.admin_token, Some(t) if t.len() < 16) {
            return Err(ConfigError {
                option: "ADMIN_TOKEN",
                problem: "must be at least 16 characters (or unset to disable admin endpoints)"
                    .into(),
            });
        }
        if self.body_limit_bytes < 1024 {
            return Err(ConfigError {
                option: "BODY_LIMIT_BYTES",
                problem: "must be at least 1024".into(),
            });
        }
        if self.actor_idle_secs == 0 {
            return Err(ConfigError {
                option: "ACTOR_IDLE_SECS",
                problem: "must be at least 1".into(),
            });
        }
        if self.step_timeout_ms < 10 {
            return Err(ConfigError {
                option: "STEP_TIMEOUT_MS",
                problem: "must be at least 10".into(),
            });
        }
        for (option, secs) in [
            ("HTTP_HEADER_TIMEOUT_SECS", self.http_header_timeout_secs),
            ("HTTP_IDLE_TIMEOUT_SECS", self.http_idle_timeout_secs),
            ("HTTP_BODY_TIMEOUT_SECS", self.http_body_timeout_secs),
        ] {
            if !(1..=86_400).contains(&secs) {
                return Err(ConfigError {
                    option,
                    problem: format!("{secs} is not between 1 and 86400 seconds"),
                });
            }
        }
        if !(1..=1_000_000).contains(&self.http_max_connections) {
            return Err(ConfigError {
                option: "HTTP_MAX_CONNECTIONS",
                problem: format!("{} is not between 1 and 1000000", self.http_max_connections),
            });
        }
        Faults::from_config(self)?;
        if !(1..=crate::domain::partition::MAX_PARTITIONS).contains(&self.partitions) {
            return Err(ConfigError {
                option: "PARTITIONS",
                problem: format!(
                    "{} is not between 1 and {}",
                    self.partitions,
                    crate::domain::partition::MAX_PARTITIONS
                ),
            });
        }
        if !(300..=600_000).contains(&self.ownership_lease_ms) {
            return Err(ConfigError {
                option: "OWNERSHIP_LEASE_MS",
                problem: format!("{} is not between 300 and 600000", self.ownership_lease_ms),
            });
        }
        if let Some(url) = &self.advertise_url
            && !matches!(url::Url::parse(url), Ok(u) if matches!(u.scheme(), "http" | "https"))
        {
            return Err(ConfigError {
                option: "ADVERTISE_URL",
                problem: format!("{url:?} is not an http:// or https:// URL"),
            });
        }
        if self.db_max_connections == 0 {
            return Err(ConfigError {
                option: "DB_MAX_CONNECTIONS",
                problem: "must be at least 1".into(),
            });
        }
        // Empty means unset, as the OpenTelemetry spec says for its variables.
        if let Some(endpoint) = self
            .otel_exporter_otlp_endpoint
            .as_ref()
            .filter(|e| !e.is_empty())
        {
            let bad = |problem: String| ConfigError {
                option: "OTEL_EXPORTER_OTLP_ENDPOINT",
                problem,
            };
            let parsed = url::Url::parse(endpoint)
                .map_err(|e| bad(format!("{endpoint:?} is not a URL ({e})")))?;
            if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
                return Err(bad(format!(
                    "{endpoint:?} is not an http:// or https:// URL (e.g. http://127.0.0.1:4318)"
                )));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(bad(format!(
                    "{endpoint:?}: a base URL takes no query or fragment (/v1/traces is appended)"
                )));
            }
        }
        if self.otel_service_name.trim().is_empty() {
            return Err(ConfigError {
                option: "OTEL_SERVICE_NAME",
                problem: "must not be empty".into(),
            });
        }
        Ok(())
    }

    pub fn relay_linger(&self) -> Duration {
        Duration::from_millis(self.relay_linger_ms)
    }

    /// Whether the orders are partitioned among replicas: they can be only with PostgreSQL
    /// (ownership, fencing) and RabbitMQ (replies routed to a partition's owner).
    pub fn partitioned(&self) -> bool {
        !crate::persistence::is_sqlite(&self.database_url) && self.amqp_url.is_some()
    }

    /// `REPLICA_ID`, or the host name.
    pub fn replica_id(&self) -> String {
        // The host's name, looked up once per process.
        static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        self.replica_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(|| {
                HOST.get_or_init(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .or_else(|| std::env::var("HOSTNAME").ok())
                        .map(|h| h.trim().to_owned())
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| format!("replica-{}", std::process::id()))
                })
                .clone()
            })
    }

    /// `ADVERTISE_URL`, or `http://<replica id>:<port>`.
    pub fn advertise_url(&self, port: u16) -> String {
        self.advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{port}", self.replica_id()))
    }

    pub fn step_timeout(&self) -> Duration {
        Duration::from_millis(self.step_timeout_ms)
    }

    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_secs)
    }

    /// Defaults for tests and embedding: everything from the defaults above, whatever the
    /// environment holds (a `LOG_FORMAT` exported in the shell must not change a test run).
    pub fn default_for(database_url: &str, amqp_url: Option<&str>) -> Config {
        let without_env =
            Config::augment_args(clap::Command::new("order-service")).mut_args(|arg| arg.env(None));
        let mut config = without_env
            .try_get_matches_from(["order-service"])
            .and_then(|matches| Config::from_arg_matches(&matches))
            .unwrap_or_else(|error| error.exit());
        config.database_url = database_url.to_owned();
        config.amqp_url = amqp_url.map(str::to_owned);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Config, LogFormat, parse_listen_addr};
    use clap::Parser;

    /// Set for the child process of `the_test_defaults_ignore_the_environment`.
    const CHILD: &str = "ORDER_SERVICE_CONFIG_TEST_CHILD";

    #[test]
    fn the_test_defaults_ignore_the_environment() {
        let defaults = || format!("{:?}", Config::default_for("sqlite::memory:", None));
        // In a child process (this test binary, running the test below): setting variables
        // here would race the other tests reading the environment.
        let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "config::tests::print_the_defaults",
                "--exact",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .env("RELAY_LINGER_MS", "7")
            .env("LOG_FORMAT", "json")
            .env("PAYMENT_DECLINE_RATE", "0.9")
            .output()
            .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed = stdout
            .lines()
            .find_map(|line| line.strip_prefix("defaults: "))
            .unwrap_or_else(|| panic!("the child printed no defaults: {stdout}"));
        assert_eq!(printed, defaults());
    }

    /// The child's half of `the_test_defaults_ignore_the_environment`; nothing elsewhere.
    #[test]
    fn print_the_defaults() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let from_env = Cli::try_parse_from(["order-service"])
            .expect("parses")
            .config;
        assert_eq!(
            (from_env.relay_linger_ms, from_env.log_format),
            (7, LogFormat::Json),
            "the variables are set and the service's own parse reads them"
        );
        println!(
            "defaults: {:?}",
            Config::default_for("sqlite::memory:", None)
        );
    }

    #[test]
    fn the_listen_address_is_an_ip_or_a_host_name_with_a_port() {
        assert_eq!(
            parse_listen_addr("0.0.0.0:8080").map(|a| a.to_string()),
            Ok("0.0.0.0:8080".to_owned())
        );
        assert_eq!(
            parse_listen_addr("[::1]:8080").map(|a| a.to_string()),
            Ok("[::1]:8080".to_owned())
        );
        let local = parse_listen_addr("localhost:8080").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 8080, "{local}");
        for bad in ["localhost", ":8080", "localhost:99999", "localhost:x"] {
            let error = parse_listen_addr(bad).expect_err(bad);
            assert!(error.contains("IP:PORT or HOST:PORT"), "{bad}: {error}");
        }
    }
}
