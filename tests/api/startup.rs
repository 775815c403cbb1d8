//! Start-up without the broker: the service (and the `participants` service) starts while
//! RabbitMQ cannot be reached, says so in `/health/ready`, refuses with 503 what needs the
//! broker, serves reads from the database, and works fully once the broker is reachable.
//! The broker is shared with other tests, so it is never stopped: the app is pointed at a
//! loopback port where nothing listens, and a forwarder to RabbitMQ opens there later.
//! Refused credentials and unknown vhosts still fail the start.

use crate::broker::TestVhost;
use crate::helpers::{
    ADMIN_TOKEN, TestOptions, expect_problem, forward_to_rabbitmq, free_port, order_body,
    provision, spawn_app_with,
};
use order_service::config::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client.get(url).send().await.expect("GET");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

/// Polls `url` until it answers 200 (30 s deadline: the bus retries at most every ~5 s).
async fn wait_ready(client: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get_json(client, url).await;
        if status == StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "not ready in time: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_broker_not_reached(status: StatusCode, body: &Value, port: u16) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    let broker = body["checks"]["broker"].as_str().unwrap_or_default();
    assert!(
        broker.starts_with("unavailable: not reached since start-up"),
        "{body}"
    );
    assert!(
        broker.contains(&format!("127.0.0.1:{port}")),
        "names the endpoint: {body}"
    );
    assert!(
        !broker.contains("guest:guest"),
        "credentials leaked: {body}"
    );
}

#[tokio::test]
async fn the_service_starts_without_the_broker_and_completes_orders_once_it_is_reachable() {
    let port = free_port();
    let app = spawn_app_with(TestOptions {
        amqp_port: Some(port),
        ..TestOptions::default()
    })
    .await;

    let live = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), StatusCode::OK);
    let (status, body) = get_json(&app.client, &app.url("/health/ready")).await;
    assert_broker_not_reached(status, &body, port);

    // What needs the broker: 503 with Retry-After, nothing created.
    let refused = app
        .post_order(Some("before-the-broker"), &order_body(&[("KB-001", 1)]))
        .await;
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let problem = expect_problem(refused, StatusCode::SERVICE_UNAVAILABLE, None).await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("broker")),
        "{problem}"
    );
    assert_eq!(app.order_count().await, 0);
    let unknown = uuid::Uuid::now_v7();
    let cancel = app
        .patch_status(
            &unknown.to_string(),
            &json!({"status": "REVERSED"}),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert!(cancel.headers().contains_key("retry-after"));
    expect_problem(cancel, StatusCode::SERVICE_UNAVAILABLE, None).await;
    let pay = app.pay(&unknown.to_string(), &json!({})).await;
    expect_problem(pay, StatusCode::SERVICE_UNAVAILABLE, None).await;

    // Reads come from the database.
    assert_eq!(app.stock("KB-001").await["available"], 100);
    let (status, _) = get_json(&app.client, &app.url("/api/orders")).await;
    assert_eq!(status, StatusCode::OK);
    let missing = app
        .client
        .get(app.url(&format!("/api/orders/{unknown}")))
        .send()
        .await
        .expect("GET order");
    expect_problem(missing, StatusCode::NOT_FOUND, None).await;

    // The broker becomes reachable: topology declared, consumers and relays running.
    let _forwarder = forward_to_rabbitmq(port).await;
    wait_ready(&app.client, &app.url("/health/ready")).await;
    let order = app.create_order(&[("KB-001", 2)]).await;
    let id = order["id"].as_str().expect("id");
    let done = app.wait_for_terminal(id).await;
    assert_eq!(done["status"], "CONFIRMED", "{done:#}");
    app.wait_until_quiet().await;
    assert_eq!(app.stock("KB-001").await["sold"], 2);
    // The same key that was refused is free to use.
    let retried = app
        .post_order(Some("before-the-broker"), &order_body(&[("KB-001", 1)]))
        .await;
    assert_eq!(retried.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn the_participants_service_starts_without_the_broker_and_serves_once_it_is_reachable() {
    // The orchestrator (with its participants off) on the real broker, the participants as
    // their own service behind a port where nothing listens yet.
    let app = spawn_app_with(TestOptions {
        participants: false,
        ..TestOptions::default()
    })
    .await;
    let order = app.create_order(&[("MS-002", 1)]).await;
    let id = order["id"].as_str().expect("id").to_owned();

    let broker_port = free_port();
    let health_port = free_port();
    let database_url = format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        app.database_name().expect("PostgreSQL")
    );
    let amqp = app.amqp_url.clone().expect("RabbitMQ");
    let mut config = Config::default_for(
        &database_url,
        Some(&amqp.replace("127.0.0.1:5672", &format!("127.0.0.1:{broker_port}"))),
    );
    config.listen_addr = format!("127.0.0.1:{health_port}").parse().expect("address");
    config.embedded_participants = false;
    config.payment_decline_rate = 0.0;
    config.db_max_connections = 4;
    config.validate().expect("valid configuration");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(order_service::app::run_participants(config, async {
        let _ = stopped.await;
    }));

    let health = format!("http://127.0.0.1:{health_port}/health");
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        match app.client.get(format!("{health}/ready")).send().await {
            Ok(response) => {
                let status = response.status();
                break (status, response.json::<Value>().await.expect("JSON"));
            }
            Err(error) => {
                assert!(!service.is_finished(), "participants exited: {error}");
                assert!(Instant::now() < deadline, "no health endpoint: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_broker_not_reached(status, &body, broker_port);
    let (status, _) = get_json(&app.client, &format!("{health}/live")).await;
    assert_eq!(status, StatusCode::OK);
    // The order waits for its reservation meanwhile.
    assert_eq!(app.get_order(&id).await["status"], "PENDING");

    let _forwarder = forward_to_rabbitmq(broker_port).await;
    wait_ready(&app.client, &format!("{health}/ready")).await;
    let done = app.wait_for_terminal(&id).await;
    assert_eq!(done["status"], "CONFIRMED", "{done:#}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("participants stop")
        .expect("participants task")
        .expect("participants ran without error");
}

/// Starting against the real broker with `amqp_url` fails, and fails fast.
async fn start_fails(database_url: &str, amqp_url: &str) -> String {
    let mut config = Config::default_for(database_url, Some(amqp_url));
    config.listen_addr = "127.0.0.1:0".parse().expect("address");
    config.db_max_connections = 2;
    config.validate().expect("the URL itself is valid");
    let started = Instant::now();
    let Err(error) = order_service::app::Application::build(config).await else {
        panic!("{amqp_url}: the service started");
    };
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{amqp_url}: took {:?}",
        started.elapsed()
    );
    format!("{error:#}")
}

#[tokio::test]
async fn refused_credentials_or_an_unknown_vhost_still_fail_the_start() {
    let (database_url, _amqp, _backing) = provision(false).await;
    let vhost = TestVhost::create();
    let wrong_password = vhost
        .amqp_url
        .replace("guest:guest", "guest:not-the-password");
    let error = start_fails(&database_url, &wrong_password).await;
    assert!(error.contains("ACCESS-REFUSED"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");
    let unknown_vhost = format!(
        "amqp://guest:guest@127.0.0.1:5672/no-such-vhost-{}",
        uuid::Uuid::new_v4()
    );
    let error = start_fails(&database_url, &unknown_vhost).await;
    assert!(error.contains("NOT-ALLOWED"), "{error}");
}

#[test]
fn an_amqp_url_the_client_cannot_use_is_a_config_error() {
    for url in [
        "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=soon",
        "amqp://guest:guest@127.0.0.1:5672/%2f?auth_mechanism=magic",
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
            .env_clear()
            .env("AMQP_URL", url)
            .env("LISTEN_ADDR", "127.0.0.1:1")
            .env("DATABASE_URL", "sqlite::memory:")
            .output()
            .expect("run order-service");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains("invalid AMQP_URL"), "{url}: {stderr}");
        assert!(!stderr.contains("guest:guest"), "{url}: {stderr}");
    }
}
