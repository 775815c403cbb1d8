//! `spawn_app()`: the whole service on a random port, against a fresh PostgreSQL database
//! and a fresh RabbitMQ vhost (or, with `TestOptions::embedded`, a fresh SQLite file and the
//! in-process bus). Everything is removed again when the [`TestApp`] is dropped.

#![allow(dead_code)] // Not every test module uses every helper.

use crate::broker::TestVhost;
use order_service::app::Application;
use order_service::config::Config;
use order_service::domain::saga::PaymentMode;
use order_service::invariants::{self, InvariantReport};
use order_service::persistence::Stores;
use reqwest::{Response, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Once;
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const PG_HOW: &str = "PostgreSQL must run on 127.0.0.1:5432 (user postgres, trust auth); start it with \
     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`";

static TRACING: Once = Once::new();

/// Knobs a test may turn; the defaults make the saga deterministic (nothing declines).
#[derive(Debug, Clone)]
pub struct TestOptions {
    pub payment_decline_rate: f64,
    pub shipping_failure_rate: f64,
    pub payment_mode: PaymentMode,
    pub dev_endpoints: bool,
    pub admin_token: Option<String>,
    /// SQLite + in-process bus instead of PostgreSQL + RabbitMQ.
    pub embedded: bool,
    /// Run Inventory, Payment and Shipping in the app; `false` lets a test start them
    /// later with [`TestApp::start_participants`] (commands wait in their queues meanwhile).
    pub participants: bool,
    /// First step timeout; tests of timeouts shorten it.
    pub step_timeout_ms: u64,
    pub step_max_retries: u32,
    /// `FAULT_ACTOR_PANIC`, e.g. `payment_charged` or `payment_charged:always`.
    pub fault_actor_panic: Option<String>,
    /// `FAULT_DROP_COMMANDS`, e.g. `payment.charge`.
    pub fault_drop_commands: Vec<String>,
    /// Idempotency key retention.
    pub idempotency_retention_secs: u64,
    /// `ACTOR_IDLE_SECS`.
    pub actor_idle_secs: u64,
    /// `MAX_ORDERS_IN_FLIGHT`.
    pub max_orders_in_flight: usize,
    /// `HTTP_HEADER_TIMEOUT_SECS`, `HTTP_IDLE_TIMEOUT_SECS`, `HTTP_BODY_TIMEOUT_SECS`.
    pub http_header_timeout_secs: u64,
    pub http_idle_timeout_secs: u64,
    pub http_body_timeout_secs: u64,
    /// `HTTP_MAX_CONNECTIONS`.
    pub http_max_connections: usize,
    /// The app reaches the test's vhost through this loopback port instead of RabbitMQ's
    /// own 5672, e.g. a port where nothing listens yet (see [`forward_to_rabbitmq`]).
    pub amqp_port: Option<u16>,
}

impl Default for TestOptions {
    fn default() -> Self {
        TestOptions {
            payment_decline_rate: 0.0,
            shipping_failure_rate: 0.0,
            payment_mode: PaymentMode::Auto,
            dev_endpoints: true,
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            embedded: false,
            participants: true,
            step_timeout_ms: 10_000,
            step_max_retries: 3,
            fault_actor_panic: None,
            fault_drop_commands: Vec::new(),
            idempotency_retention_secs: 86_400,
            actor_idle_secs: 60,
            max_orders_in_flight: 2_000,
            http_header_timeout_secs: 10,
            http_idle_timeout_secs: 75,
            http_body_timeout_secs: 30,
            http_max_connections: 1024,
            amqp_port: None,
        }
    }
}

pub enum Backing {
    Postgres { database: String, _vhost: TestVhost },
    Sqlite { dir: std::path::PathBuf },
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    /// Direct access to the stores, to check what the API cannot show.
    pub stores: Stores,
    pub amqp_url: Option<String>,
    participants: Option<(
        tokio::task::JoinSet<()>,
        tokio_util::sync::CancellationToken,
    )>,
    options: TestOptions,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    backing: Backing,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    TRACING.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            order_service::telemetry::init(order_service::config::LogFormat::Pretty);
        }
    });
    let (database_url, amqp_url, backing) = provision(options.embedded).await;
    let app_amqp_url = match (&amqp_url, options.amqp_port) {
        (Some(url), Some(port)) => {
            Some(url.replace("127.0.0.1:5672", &format!("127.0.0.1:{port}")))
        }
        (url, _) => url.clone(),
    };
    let mut config = Config::default_for(&database_url, app_amqp_url.as_deref());
    config.listen_addr = "127.0.0.1:0".parse().expect("valid address");
    config.payment_decline_rate = options.payment_decline_rate;
    config.shipping_failure_rate = options.shipping_failure_rate;
    config.payment_mode = options.payment_mode;
    config.dev_endpoints = options.dev_endpoints;
    config.admin_token = options.admin_token.clone();
    config.db_max_connections = 4;
    config.embedded_participants = options.participants;
    config.step_timeout_ms = options.step_timeout_ms;
    config.step_max_retries = options.step_max_retries;
    config.fault_actor_panic = options.fault_actor_panic.clone();
    config.fault_drop_commands = options.fault_drop_commands.clone();
    config.idempotency_retention_secs = options.idempotency_retention_secs;
    config.actor_idle_secs = options.actor_idle_secs;
    config.max_orders_in_flight = options.max_orders_in_flight;
    config.http_header_timeout_secs = options.http_header_timeout_secs;
    config.http_idle_timeout_secs = options.http_idle_timeout_secs;
    config.http_body_timeout_secs = options.http_body_timeout_secs;
    config.http_max_connections = options.http_max_connections;
    config.idempotency_claim_timeout_secs = 60;
    config.shutdown_timeout_secs = 5;
    config.validate().expect("test configuration is valid");

    let app = Application::build(config)
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    let stores = Stores::connect(&database_url, 2)
        .await
        .expect("test store connections");
    TestApp {
        address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client"),
        stores,
        amqp_url,
        participants: None,
        options,
        stop: Some(stop),
        server: Some(server),
        backing,
    }
}

/// The invariant report once it holds (the system went quiet: no outbox backlog, counters
/// settled), or the last one after 30 s. `initial` is each SKU's initial stock.
pub async fn settled_report(stores: &Stores, initial: &BTreeMap<String, i64>) -> InvariantReport {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let report = invariants::check(stores, Some(initial))
            .await
            .expect("invariant check runs");
        if report.holds() || tokio::time::Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of the samples of metric `name` whose labels include `labels` in a Prometheus
/// text scrape (0 if there are none).
pub fn metric_in(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::{Scrape, Value as Sample};
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text format");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v) => *v,
            other => panic!("{name} is not a counter or gauge: {other:?}"),
        })
        .sum()
}

/// A loopback port where nothing listens (bound and released at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Makes RabbitMQ reachable on `port`: forwards every connection to 127.0.0.1:5672 until
/// the returned task is aborted (or the test ends). Lets a test make the broker
/// unreachable for its app alone, without touching the broker other tests share.
pub async fn forward_to_rabbitmq(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the forwarder's port");
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                }
            });
        }
    })
}

/// A fresh, empty place for one test's state: a PostgreSQL database and a RabbitMQ vhost,
/// or (embedded) a SQLite directory. Removed again when the returned [`Backing`] drops.
pub async fn provision(embedded: bool) -> (String, Option<String>, Backing) {
    if embedded {
        let dir =
            std::env::temp_dir().join(format!("order-service-test-{}", Uuid::new_v4().simple()));
        let url = format!("sqlite://{}/orders.db?mode=rwc", dir.display());
        (url, None, Backing::Sqlite { dir })
    } else {
        // The vhost first: if creating the database fails, the vhost's Drop removes it
        // (the other way round a failed vhost would leak the database).
        let vhost = TestVhost::create();
        let database = format!("test_{}", Uuid::new_v4().simple());
        let admin = Database::connect(PG_ADMIN_URL)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL ({e}). {PG_HOW}"));
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{database}\""))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database ({e}). {PG_HOW}"));
        let _ = admin.close().await;
        let amqp = vhost.amqp_url.clone();
        (
            format!("postgres://postgres@127.0.0.1:5432/{database}"),
            Some(amqp),
            Backing::Postgres {
                database,
                _vhost: vhost,
            },
        )
    }
}

/// [`provision`], with the stores connected (two connections each) and migrated.
pub async fn migrated_stores(embedded: bool) -> (Stores, Option<String>, Backing) {
    let (url, amqp, backing) = provision(embedded).await;
    let stores = Stores::connect(&url, 2).await.expect("connecting");
    stores.migrate().await.expect("migrating");
    (stores, amqp, backing)
}

/// Every row of a store's outbox, oldest first.
pub async fn outbox_rows(db: &sea_orm::DatabaseConnection) -> Vec<entity::outbox::Model> {
    use sea_orm::{EntityTrait, QueryOrder};
    entity::outbox::Entity::find()
        .order_by_asc(entity::outbox::Column::Id)
        .all(db)
        .await
        .expect("reading the outbox")
}

pub fn order_body(items: &[(&str, i64)]) -> Value {
    json!({
        "customer_id": "customer-1",
        "currency": "USD",
        "items": items.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect::<Vec<_>>(),
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_order(&self, key: Option<&str>, body: &Value) -> Response {
        let mut request = self.client.post(self.url("/api/orders")).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.expect("POST /api/orders")
    }

    /// Creates an order (asserting 201) and returns its JSON.
    pub async fn create_order(&self, items: &[(&str, i64)]) -> Value {
        let key = Uuid::new_v4().to_string();
        let response = self.post_order(Some(&key), &order_body(items)).await;
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(status, StatusCode::CREATED, "create failed: {body}");
        body
    }

    pub async fn get_order(&self, id: &str) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/api/orders/{id}")))
            .send()
            .await
            .expect("GET order");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON order")
    }

    /// Polls the order until its status is one of `statuses` (10 s deadline).
    pub async fn wait_for_status(&self, id: &str, statuses: &[&str]) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let order = self.get_order(id).await;
            if statuses.iter().any(|s| order["status"] == *s) {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {id} did not reach {statuses:?} in time: {order:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_for_terminal(&self, id: &str) -> Value {
        self.wait_for_status(id, &["CONFIRMED", "REVERSED", "REJECTED"])
            .await
    }

    pub async fn stock(&self, sku: &str) -> Value {
        let response = self
            .client
            .get(self.url(&format!("/api/inventory/{sku}")))
            .send()
            .await
            .expect("GET stock");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON stock")
    }

    /// Sets a SKU's stock and price through the admin API.
    pub async fn put_stock(&self, sku: &str, available: i64, price_cents: i64) -> Value {
        let response = self
            .client
            .put(self.url(&format!("/api/inventory/{sku}")))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "available": available, "price_cents": price_cents }))
            .send()
            .await
            .expect("PUT stock");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("JSON stock")
    }

    pub async fn patch_status(&self, id: &str, body: &Value, token: Option<&str>) -> Response {
        let mut request = self
            .client
            .patch(self.url(&format!("/api/orders/{id}/status")))
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("PATCH status")
    }

    pub async fn pay(&self, id: &str, body: &Value) -> Response {
        self.client
            .post(self.url(&format!("/api/orders/{id}/pay")))
            .json(body)
            .send()
            .await
            .expect("POST pay")
    }

    /// Starts the participants in the test process (for apps spawned with
    /// `participants: false`), connected to the app's broker vhost and stores.
    pub async fn start_participants(&mut self) {
        let amqp = self
            .amqp_url
            .as_deref()
            .expect("participants outside the app need RabbitMQ");
        let bus = order_service::messaging::Bus::connect(Some(amqp))
            .await
            .expect("bus connects");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut workers = tokio::task::JoinSet::new();
        order_service::participants::runtime::spawn(
            &mut workers,
            &self.stores,
            &bus,
            order_service::participants::runtime::ParticipantSettings {
                payment_decline_rate: self.options.payment_decline_rate,
                shipping_failure_rate: self.options.shipping_failure_rate,
                faults: Default::default(),
                relay_linger: Config::default_for(amqp, Some(amqp)).relay_linger(),
            },
            &shutdown,
        );
        self.participants = Some((workers, shutdown));
    }

    /// The test database's name (PostgreSQL apps only).
    pub fn database_name(&self) -> Option<&str> {
        match &self.backing {
            Backing::Postgres { database, .. } => Some(database),
            Backing::Sqlite { .. } => None,
        }
    }

    /// A channel on the app's RabbitMQ vhost with publisher confirms on, for publishing
    /// messages by hand. Keep the connection alive as long as the channel is used.
    pub async fn broker_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let url = self
            .amqp_url
            .as_deref()
            .expect("this test needs the RabbitMQ app");
        let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
            .await
            .expect("connect to the test vhost");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(Default::default())
            .await
            .expect("publisher confirms");
        (connection, channel)
    }

    /// A private queue bound to each `(exchange, pattern)`: sees a copy of every message the
    /// service publishes there, without taking any from the service's own queues.
    pub async fn tap(&self, bindings: &[(&str, &str)]) -> (lapin::Connection, lapin::Consumer) {
        use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        let (connection, channel) = self.broker_channel().await;
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), exclusive, FieldTable::default())
            .await
            .expect("declare a private queue");
        for (exchange, pattern) in bindings {
            channel
                .queue_bind(
                    queue.name().clone(),
                    (*exchange).into(),
                    (*pattern).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the private queue");
        }
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "tap".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume the private queue");
        (connection, consumer)
    }

    /// The sum of the samples of metric `name` whose labels include `labels`, in a fresh
    /// scrape of `/metrics` (0 if there are none). The recorder is shared by every app in
    /// the test process, so other tests' samples are included.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics_text().await, name, labels)
    }

    /// The body of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// Counts orders in the database (all statuses).
    pub async fn order_count(&self) -> usize {
        use sea_orm::{EntityTrait, PaginatorTrait};
        entity::orders::Entity::find()
            .count(&self.stores.orders)
            .await
            .expect("count orders") as usize
    }

    /// The DESIGN.md invariants, given each SKU's initial stock.
    pub async fn invariants(&self, initial: &[(&str, i64)]) -> InvariantReport {
        let initial: BTreeMap<String, i64> =
            initial.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect();
        invariants::check(&self.stores, Some(&initial))
            .await
            .expect("invariant check runs")
    }

    /// Waits until every participant has processed everything (no outbox backlog, stock
    /// counters settled), so invariants are checked on a quiet system.
    pub async fn wait_until_quiet(&self) {
        use order_service::persistence::outbox::backlog;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // A failed read (the database just came back, a busy machine) is retried, not fatal.
            let observed = async {
                let mut pending = 0;
                for db in [
                    &self.stores.orders,
                    &self.stores.inventory,
                    &self.stores.payment,
                    &self.stores.shipping,
                ] {
                    pending += backlog(db).await?;
                }
                let report = invariants::check(&self.stores, None).await?;
                Ok::<_, sea_orm::DbErr>((pending, report))
            }
            .await;
            let state = match observed {
                Ok((0, report)) if report.consistent() => return,
                Ok((pending, report)) => {
                    format!("backlog {pending}, violations {:#?}", report.violations)
                }
                Err(e) => format!("database error {e}"),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "system did not settle: {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some((mut workers, shutdown)) = self.participants.take() {
            shutdown.cancel();
            workers.abort_all();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Problem documents and stock snapshots (used by the idempotency and bad-input tests).
// ---------------------------------------------------------------------------------------

/// The media type of every error response (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Checks that `response` is an RFC 9457 problem: exactly `status`, content type
/// `application/problem+json`, a JSON object whose `status` equals the HTTP status, a
/// non-empty `title`, and (if given) a `type` ending in `type_suffix`. Returns the problem
/// document, or every mismatch found.
pub async fn check_problem(
    response: Response,
    status: StatusCode,
    type_suffix: Option<&str>,
) -> Result<Value, String> {
    let actual = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let text = response
        .text()
        .await
        .map_err(|e| format!("body unreadable: {e}"))?;
    let mut problems = Vec::new();
    if actual != status {
        problems.push(format!("status {actual}, expected {status}"));
    }
    if content_type.as_deref() != Some(PROBLEM_JSON) {
        problems.push(format!(
            "content-type {content_type:?}, expected {PROBLEM_JSON}"
        ));
    }
    let body: Value = match serde_json::from_str(&text) {
        Ok(body) => body,
        Err(e) => {
            problems.push(format!("body is not JSON ({e}): {text:?}"));
            return Err(problems.join("; "));
        }
    };
    if body["status"] != json!(actual.as_u16()) {
        problems.push(format!(
            "body status {} does not match HTTP {actual}",
            body["status"]
        ));
    }
    if body["title"].as_str().is_none_or(|t| t.trim().is_empty()) {
        problems.push(format!("title missing or empty: {}", body["title"]));
    }
    if let Some(suffix) = type_suffix
        && !body["type"].as_str().is_some_and(|t| t.ends_with(suffix))
    {
        problems.push(format!(
            "type {}, expected one ending in {suffix:?}",
            body["type"]
        ));
    }
    if problems.is_empty() {
        Ok(body)
    } else {
        Err(format!("{}; body: {body}", problems.join("; ")))
    }
}

/// [`check_problem`], panicking on a mismatch.
pub async fn expect_problem(
    response: Response,
    status: StatusCode,
    type_suffix: Option<&str>,
) -> Value {
    check_problem(response, status, type_suffix)
        .await
        .unwrap_or_else(|e| panic!("not the expected problem response: {e}"))
}

impl TestApp {
    /// Every SKU as `GET /api/inventory` shows it (counts and prices).
    pub async fn inventory(&self) -> Value {
        let response = self
            .client
            .get(self.url("/api/inventory"))
            .send()
            .await
            .expect("GET /api/inventory");
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("JSON inventory");
        body["items"].clone()
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        match self {
            Backing::Postgres { database, .. } => {
                let output = Command::new("psql")
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc"])
                    .arg(format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    ))
                    .output();
                if !matches!(&output, Ok(o) if o.status.success()) {
                    eprintln!("warning: could not drop test database {database}: {output:?}");
                }
            }
            Backing::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// What the `order-service` binary did with only `env` set (and `args`): its exit code,
/// standard error and standard output.
pub fn run_service(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_order-service"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run order-service");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}
