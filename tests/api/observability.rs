//! What an operator relies on: `/metrics` parses as Prometheus text and moves under load,
//! a `traceparent` follows an order into the participants' messages, and every bad
//! configuration value stops start-up with one line naming the option and exit code 2.

use crate::helpers::{run_service, spawn_app};
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use lapin::types::AMQPValue;
use prometheus_parse::{Scrape, Value as Metric};
use reqwest::StatusCode;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

fn total(scrape: &Scrape, name: &str) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .map(|s| match &s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => *v,
            Metric::Histogram(buckets) => buckets.last().map(|b| b.count).unwrap_or(0.0),
            Metric::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_a_short_load() {
    let app = spawn_app().await;
    for _ in 0..5 {
        let order = app.create_order(&[("CB-004", 1)]).await;
        app.wait_for_terminal(order["id"].as_str().expect("id"))
            .await;
    }

    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    let text = response.text().await.expect("body");
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text format");

    for name in [
        "orders_created_total",
        "order_transitions_total",
        "saga_duration_seconds",
        "saga_step_duration_seconds",
        "http_request_duration_seconds",
        "http_requests_total",
        "outbox_messages_published_total",
    ] {
        assert!(total(&scrape, name) > 0.0, "{name} is zero or missing");
    }
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "http_requests_total"
                && s.labels.get("route") == Some("/api/orders")
                && s.labels.get("status") == Some("201")),
        "requests are labelled by route template and status"
    );
    // Bounded label sets: no label value is an order id (a UUID).
    for sample in &scrape.samples {
        for (label, value) in sample.labels.iter() {
            assert!(
                uuid::Uuid::parse_str(value).is_err(),
                "{} has an id-like label {label}={value}",
                sample.metric
            );
        }
    }
    assert!(text.contains("# TYPE saga_duration_seconds histogram"));
}

#[tokio::test]
async fn a_traceparent_sent_with_the_order_travels_in_the_commands_and_replies() {
    let app = spawn_app().await;
    let (_connection, mut consumer) = app
        .tap(&[
            ("order.commands", "#"),
            ("order.replies", "#"),
            // Replies to one of several replicas (PostgreSQL with RabbitMQ: partitioned).
            ("order.replies.replicas", "#"),
        ])
        .await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .client
        .post(app.url("/api/orders"))
        .header("Idempotency-Key", "traced")
        .header("traceparent", traceparent)
        .json(&crate::helpers::order_body(&[("KB-001", 1)]))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let mut seen = HashSet::new();
    let wanted = [
        "stock.reserve",
        "stock.reserved",
        "payment.charge",
        "payment.charged",
        "shipping.schedule",
        "shipping.scheduled",
    ];
    while !wanted.iter().all(|w| seen.contains(*w)) {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap_or_else(|_| panic!("messages with the trace in time; saw {seen:?}"))
            .expect("open")
            .expect("delivery");
        let body: Value = serde_json::from_slice(&delivery.data).expect("JSON");
        if body["order_id"] == id.as_str() {
            let header = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("traceparent").cloned());
            let carried = match header {
                Some(AMQPValue::LongString(s)) => s.to_string(),
                other => panic!(
                    "{} has no traceparent header: {other:?}",
                    delivery.routing_key
                ),
            };
            assert_eq!(carried, traceparent, "{}", delivery.routing_key);
            // The message type (a reply to a replica has its name in the routing key).
            seen.insert(body["type"].as_str().unwrap_or_default().to_owned());
        }
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
}

#[test]
fn every_bad_configuration_value_stops_start_up_with_one_line_naming_it_and_exit_code_2() {
    let cases: &[(&str, &str, &str)] = &[
        ("PAYMENT_DECLINE_RATE", "1.5", "PAYMENT_DECLINE_RATE"),
        ("PAYMENT_DECLINE_RATE", "abc", "PAYMENT_DECLINE_RATE"),
        ("SHIPPING_FAILURE_RATE", "-0.1", "SHIPPING_FAILURE_RATE"),
        ("DATABASE_URL", "mysql://localhost/orders", "DATABASE_URL"),
        ("AMQP_URL", "not a url", "AMQP_URL"),
        ("AMQP_URL", "http://127.0.0.1:5672", "AMQP_URL"),
        ("LISTEN_ADDR", "nope", "LISTEN_ADDR"),
        ("ADMIN_TOKEN", "short", "ADMIN_TOKEN"),
        ("DEV_ENDPOINTS", "maybe", "DEV_ENDPOINTS"),
        ("PAYMENT_MODE", "sometimes", "PAYMENT_MODE"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("BODY_LIMIT_BYTES", "10", "BODY_LIMIT_BYTES"),
        ("BODY_LIMIT_BYTES", "-1", "BODY_LIMIT_BYTES"),
        ("DB_MAX_CONNECTIONS", "0", "DB_MAX_CONNECTIONS"),
        ("STEP_TIMEOUT_MS", "1", "STEP_TIMEOUT_MS"),
        ("STEP_MAX_RETRIES", "many", "STEP_MAX_RETRIES"),
        (
            "IDEMPOTENCY_RETENTION_SECS",
            "1d",
            "IDEMPOTENCY_RETENTION_SECS",
        ),
        ("FAULT_ACTOR_PANIC", "teleported", "FAULT_ACTOR_PANIC"),
        ("FAULT_ACTOR_PANIC", "stock_reserved:2", "FAULT_ACTOR_PANIC"),
        (
            "FAULT_DROP_COMMANDS",
            "stock.teleport",
            "FAULT_DROP_COMMANDS",
        ),
    ];
    for (var, value, named) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_order-service"))
            .env_clear()
            .env(var, value)
            // Must never get as far as binding or connecting.
            .env(
                "LISTEN_ADDR",
                if *var == "LISTEN_ADDR" {
                    value
                } else {
                    "127.0.0.1:1"
                },
            )
            .env(
                "DATABASE_URL",
                if *var == "DATABASE_URL" {
                    value
                } else {
                    "sqlite::memory:"
                },
            )
            .output()
            .expect("run order-service");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{var}={value}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(named),
            "{var}={value}: message does not name it: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{var}={value}: nothing on stdout");
    }
}

/// The one line keeps what helps to fix the value: clap's list of valid values, and a hint
/// for an address that is not IP:PORT or HOST:PORT.
#[test]
fn a_bad_value_s_line_says_what_would_be_valid() {
    for (var, value, says) in [
        (
            "PAYMENT_MODE",
            "sometimes",
            "[possible values: auto, manual]",
        ),
        ("LOG_FORMAT", "xml", "[possible values: pretty, json]"),
        ("LISTEN_ADDR", "localhost", "e.g. 0.0.0.0:8080"),
        (
            "LISTEN_ADDR",
            "no-such-host.invalid:8080",
            "use an IP address",
        ),
    ] {
        let (code, stderr, _) =
            run_service(&[("DATABASE_URL", "sqlite::memory:"), (var, value)], &[]);
        assert_eq!(code, Some(2), "{var}={value}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{var}={value}: {stderr:?}"
        );
        assert!(stderr.contains(says), "{var}={value}: {stderr}");
    }
}

/// Enum values are matched regardless of case, and LISTEN_ADDR takes a host name: the
/// configuration is accepted (the probe then finds nothing listening: exit 1, not 2).
#[test]
fn enum_values_ignore_case_and_the_listen_address_takes_a_host_name() {
    let (code, stderr, _) = run_service(
        &[
            ("DATABASE_URL", "sqlite::memory:"),
            ("PAYMENT_MODE", "Manual"),
            ("LOG_FORMAT", "JSON"),
            ("LISTEN_ADDR", "localhost:1"),
        ],
        &["healthcheck"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!stderr.contains("invalid value"), "{stderr}");
}

/// A start-up failure is said once, each cause once (SeaORM's error repeats sqlx's).
#[test]
fn a_missing_database_is_reported_once_in_one_line() {
    let database = format!("missing_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}?sslmode=disable");
    let (code, stderr, stdout) = run_service(
        &[("DATABASE_URL", &url), ("LISTEN_ADDR", "127.0.0.1:0")],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
    assert_eq!(
        stderr.matches("does not exist").count(),
        1,
        "said once: {stderr}"
    );
    assert!(
        !stdout.contains("does not exist"),
        "not again on stdout: {stdout}"
    );
}
