//! The real binary as a child process: `kill -9` in the middle of load and a restart
//! lose nothing; SIGTERM drains and exits 0. Plus a PostgreSQL outage with the service
//! in-process (connections really cut, new ones refused for a few seconds).

use crate::helpers::{
    ADMIN_TOKEN, TestOptions, free_port, metric_in, order_body, provision, settled_report,
    spawn_app_with,
};
use futures::StreamExt;
use order_service::persistence::Stores;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// The service binary running as a child process. Its output goes to a temp file, kept
/// (and its path printed) when the test fails, removed otherwise.
pub(crate) struct ServiceProcess {
    pub(crate) child: Child,
    pub(crate) base: String,
    env: Vec<(&'static str, String)>,
    log: std::path::PathBuf,
}

impl ServiceProcess {
    pub(crate) fn start(
        database_url: &str,
        amqp_url: &str,
        extra: &[(&'static str, &str)],
    ) -> ServiceProcess {
        Self::start_on(free_port(), database_url, amqp_url, extra)
    }

    /// [`ServiceProcess::start`] on a given loopback port (e.g. to advertise it).
    pub(crate) fn start_on(
        port: u16,
        database_url: &str,
        amqp_url: &str,
        extra: &[(&'static str, &str)],
    ) -> ServiceProcess {
        let mut env = vec![
            ("DATABASE_URL", database_url.to_owned()),
            ("AMQP_URL", amqp_url.to_owned()),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            // Several test apps share one PostgreSQL (max_connections 100).
            ("DB_MAX_CONNECTIONS", "4".to_owned()),
            (
                "RUST_LOG",
                "info,sqlx=warn,sea_orm=warn,lapin=warn,ractor=warn".to_owned(),
            ),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let log = std::env::temp_dir().join(format!("order-service-{port}.log"));
        ServiceProcess {
            child: Self::spawn(&env, &log),
            base: format!("http://127.0.0.1:{port}"),
            env,
            log,
        }
    }

    fn spawn(env: &[(&'static str, String)], log: &std::path::Path) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        Command::new(env!("CARGO_BIN_EXE_order-service"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(out.try_clone().expect("log file")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start the order-service binary")
    }

    pub(crate) async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client
                .get(format!("{}/health/ready", self.base))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("service exited early ({status}); log: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "service not ready; log: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Sends `signal` (a `kill` name such as `TERM`, `STOP`, `CONT`) to the process.
    pub(crate) fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {} failed", self.child.id());
    }

    /// SIGTERM, then waits (25 s at most) for the exit and returns its status.
    pub(crate) async fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(25);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 25 s after SIGTERM; log: {}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn restart(&mut self) {
        self.child = Self::spawn(&self.env, &self.log);
    }

    /// The sum of the samples of metric `name` whose labels include `labels` in this
    /// process's `/metrics` (0 if there are none).
    pub(crate) async fn metric(
        &self,
        client: &reqwest::Client,
        name: &str,
        labels: &[(&str, &str)],
    ) -> f64 {
        let text = client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        metric_in(&text, name, labels)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped (SIGSTOP) process.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("log of {} kept in {}", self.base, self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The status and body of `POST /api/orders` (the body as a JSON string if it is not JSON).
pub(crate) async fn post(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    body: &Value,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let response = client
        .post(format!("{base}/api/orders"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    // Not JSON (a proxy's page, say): the text itself, for the failure message.
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

async fn wait_all_terminal(client: &reqwest::Client, base: &str, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in ids {
        loop {
            let order: Value = client
                .get(format!("{base}/api/orders/{id}"))
                .send()
                .await
                .expect("GET order")
                .json()
                .await
                .expect("JSON");
            if matches!(
                order["status"].as_str(),
                Some("CONFIRMED" | "REVERSED" | "REJECTED")
            ) {
                break;
            }
            assert!(Instant::now() < deadline, "order {id} stuck: {order:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn kill_9_during_load_then_restart_completes_every_order_with_the_invariants_intact() {
    let (database_url, amqp_url, _backing) = provision(false).await;
    let amqp_url = amqp_url.expect("RabbitMQ");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut service = ServiceProcess::start(
        &database_url,
        &amqp_url,
        &[
            ("PAYMENT_DECLINE_RATE", "0.3"),
            ("SHIPPING_FAILURE_RATE", "0.1"),
            ("STEP_TIMEOUT_MS", "2000"),
            // Claims of requests killed mid-way are taken over by their retry after 2 s.
            ("IDEMPOTENCY_CLAIM_TIMEOUT_SECS", "2"),
        ],
    );
    service.wait_ready(&client).await;
    for sku in ["LOAD-1", "LOAD-2"] {
        let r = client
            .put(format!("{}/api/inventory/{sku}", service.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"available": 400, "price_cents": 1_000}))
            .send()
            .await
            .expect("PUT stock");
        assert_eq!(r.status(), StatusCode::OK);
    }

    // 500 orders from 32 concurrent clients; the service is killed once 250 have answered.
    let requests: Vec<(String, Value)> = (0..500)
        .map(|i| {
            (
                format!("kill9-{i}"),
                order_body(&[("LOAD-1", 1 + i % 2), ("LOAD-2", 1)]),
            )
        })
        .collect();
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let killed = tokio::sync::Notify::new();
    let base = service.base.clone();
    let load = futures::stream::iter(requests.iter())
        .map(|(key, body)| {
            let (client, base, answered, killed) = (&client, &base, &answered, &killed);
            async move {
                let result = post(client, base, key, body).await;
                if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == 250 {
                    killed.notify_one();
                }
                (key.clone(), result.ok())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>();
    let (results, ()) = tokio::join!(load, async {
        killed.notified().await;
        service.kill9();
    });

    let in_flight_before_restart = results.iter().filter(|(_, r)| r.is_none()).count();
    service.restart();
    service.wait_ready(&client).await;
    // Every request is retried with its key: a lost response replays, a lost request runs.
    let mut created: HashMap<String, String> = HashMap::new();
    for (key, body) in &requests {
        let retry_until = Instant::now() + Duration::from_secs(15);
        let (status, order) = loop {
            let (status, order) = post(&client, &service.base, key, body)
                .await
                .expect("retry after restart");
            // A request killed mid-way left its key claimed: retry once the claim expires.
            let in_flight = order["type"] == "/problems/idempotency-key-in-flight";
            if status == StatusCode::CONFLICT && in_flight && Instant::now() < retry_until {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            break (status, order);
        };
        match status {
            StatusCode::CREATED => {
                created.insert(key.clone(), order["id"].as_str().expect("id").to_owned());
            }
            StatusCode::CONFLICT => {
                assert_eq!(order["type"], "/problems/insufficient-stock", "{order}")
            }
            other => panic!("{key}: unexpected {other}: {order}"),
        }
    }
    let ids: Vec<String> = created.values().cloned().collect();
    wait_all_terminal(&client, &service.base, &ids).await;

    let stores = Stores::connect(&database_url, 2).await.expect("stores");
    let initial = BTreeMap::from([("LOAD-1".to_owned(), 400), ("LOAD-2".to_owned(), 400)]);
    let report = settled_report(&stores, &initial).await;
    assert!(report.holds(), "{:#?}", report.violations);
    let total: u64 = report.orders_by_status.values().sum();
    assert_eq!(
        total as usize,
        ids.len(),
        "one order per idempotency key, none lost, none duplicated"
    );
    assert!(
        in_flight_before_restart > 0 || results.len() == 500,
        "the kill happened during load"
    );
    stores.close().await;
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_and_nothing_is_lost() {
    let (database_url, amqp_url, _backing) = provision(false).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let mut service = ServiceProcess::start(
        &database_url,
        &amqp_url.expect("RabbitMQ"),
        &[("PAYMENT_DECLINE_RATE", "0")],
    );
    service.wait_ready(&client).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, order) = post(
            &client,
            &service.base,
            &format!("term-{i}"),
            &order_body(&[("CB-004", 1)]),
        )
        .await
        .expect("POST");
        assert_eq!(status, StatusCode::CREATED);
        ids.push(order["id"].as_str().expect("id").to_owned());
    }

    let status = service.terminate().await;
    assert_eq!(status.code(), Some(0), "log: {}", service.log_text());
    assert!(
        service.log_text().contains("\"stopped\""),
        "clean stop logged"
    );

    service.restart();
    service.wait_ready(&client).await;
    wait_all_terminal(&client, &service.base, &ids).await;
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qAtc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_postgresql_outage_is_reported_and_survived_without_losing_anything() {
    let app = spawn_app_with(TestOptions {
        payment_decline_rate: 0.3,
        ..Default::default()
    })
    .await;
    let database = app.database_name().expect("PostgreSQL app").to_owned();
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = app
            .post_order(Some(&format!("before-{i}")), &order_body(&[("KB-001", 1)]))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.push(
            r.json::<Value>().await.expect("JSON")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }

    // The outage: existing connections cut, new ones refused, for four seconds.
    psql(&format!(
        "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS false"
    ));
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
    ));
    let outage_ends = Instant::now() + Duration::from_secs(4);
    let mut saw_unready = false;
    let mut during = 0;
    let mut refused = Vec::new();
    while Instant::now() < outage_ends {
        let ready = app
            .client
            .get(app.url("/health/ready"))
            .send()
            .await
            .expect("ready answers");
        saw_unready |= ready.status() == StatusCode::SERVICE_UNAVAILABLE;
        let started = Instant::now();
        let r = app
            .post_order(
                Some(&format!("during-{during}")),
                &order_body(&[("KB-001", 1)]),
            )
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a request hung during the outage"
        );
        match r.status() {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(r.headers().contains_key("retry-after"));
                refused.push(format!("during-{during}"));
            }
            StatusCode::CREATED => ids.push(
                r.json::<Value>().await.expect("JSON")["id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            ),
            other => panic!(
                "during the outage: {other} {}",
                r.text().await.unwrap_or_default()
            ),
        }
        during += 1;
    }
    psql(&format!(
        "ALTER DATABASE \"{database}\" ALLOW_CONNECTIONS true"
    ));
    assert!(saw_unready, "/health/ready reported the outage");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = app
            .client
            .get(app.url("/health/ready"))
            .send()
            .await
            .expect("ready");
        if ready.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A well-behaved client retries what was refused, with the same key.
    let retries = refused.iter().cloned();
    for key in retries.chain((0..10).map(|i| format!("after-{i}"))) {
        let r = app
            .post_order(Some(&key), &order_body(&[("KB-001", 1)]))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED, "{key}");
        ids.push(
            r.json::<Value>().await.expect("JSON")["id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    ids.sort();
    ids.dedup();
    for id in &ids {
        app.wait_for_terminal(id).await;
    }
    app.wait_until_quiet().await;
    let report = app.invariants(&[("KB-001", 100)]).await;
    assert!(report.holds(), "{:#?}", report.violations);
    assert_eq!(
        app.order_count().await,
        ids.len(),
        "every 201 is an order; nothing else was created"
    );
}
