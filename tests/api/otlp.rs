//! OpenTelemetry trace export: the real binary as a child process, exporting to a small
//! OTLP/HTTP receiver running in the test (a real protocol peer: it accepts
//! `POST /v1/traces` and decodes the protobuf `ExportTraceServiceRequest`). With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set the spans of an order arrive, flushed on SIGTERM;
//! without it nothing is sent. Embedded defaults (SQLite, in-process bus): no PostgreSQL or
//! RabbitMQ needed.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    body: Bytes,
}

/// A minimal OTLP/HTTP collector: records every request; answers `POST /v1/traces` with an
/// empty `ExportTraceServiceResponse` (200), anything else with 404.
struct Receiver {
    endpoint: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let received = Arc::new(Mutex::new(Vec::new()));
        let record = |path: String, headers: &HeaderMap, body: Bytes, log: &Mutex<Vec<_>>| {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            log.lock().unwrap().push(Received {
                path,
                content_type,
                body,
            });
        };
        let app = Router::new()
            .route(
                "/v1/traces",
                post(
                    move |State(log): State<Arc<Mutex<Vec<Received>>>>,
                          headers: HeaderMap,
                          body: Bytes| async move {
                        record("/v1/traces".into(), &headers, body, &log);
                        (
                            StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            Vec::<u8>::new(),
                        )
                    },
                ),
            )
            .fallback(
                move |State(log): State<Arc<Mutex<Vec<Received>>>>,
                      uri: Uri,
                      headers: HeaderMap,
                      body: Bytes| async move {
                    record(uri.path().to_owned(), &headers, body, &log);
                    StatusCode::NOT_FOUND
                },
            )
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver");
        });
        Receiver { endpoint, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The service binary with its own temporary directory (SQLite files, log), both removed
/// on drop; the process is killed if still running.
struct Service {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Service {
    fn start(extra: &[(&str, &str)]) -> Service {
        let dir = std::env::temp_dir().join(format!(
            "order-service-otlp-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log = std::fs::File::create(dir.join("service.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_order-service"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/orders.db?mode=rwc", dir.display()),
            )
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .env("PAYMENT_DECLINE_RATE", "0")
            .envs(extra.iter().copied())
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start the order-service binary");
        Service {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default()
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client
                .get(format!("{}/health/ready", self.base))
                .send()
                .await
                && r.status().is_success()
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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates one order and waits until its saga is over; returns its id.
    async fn order_to_the_end(&self, client: &reqwest::Client) -> String {
        let response = client
            .post(format!("{}/api/orders", self.base))
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&json!({
                "customer_id": "c",
                "currency": "USD",
                "items": [{"sku": "KB-001", "quantity": 1}]
            }))
            .send()
            .await
            .expect("POST /api/orders");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        let order: Value = response.json().await.expect("order JSON");
        let id = order["id"].as_str().expect("id").to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let order: Value = client
                .get(format!("{}/api/orders/{id}", self.base))
                .send()
                .await
                .expect("GET order")
                .json()
                .await
                .expect("order JSON");
            if matches!(
                order["status"].as_str(),
                Some("CONFIRMED" | "REVERSED" | "REJECTED")
            ) {
                return id;
            }
            assert!(
                Instant::now() < deadline,
                "order not terminal: {order}; log: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then the exit code (graceful shutdown, including the exporter's flush).
    async fn terminate(&mut self) -> Option<i32> {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("send SIGTERM");
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM; log: {}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn string_attribute<'a>(
    attributes: &'a [opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
}

#[tokio::test]
async fn spans_are_exported_over_otlp_http_and_the_last_ones_flushed_on_sigterm() {
    let receiver = Receiver::start().await;
    let client = reqwest::Client::new();
    let mut service = Service::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint),
        ("OTEL_SERVICE_NAME", "order-service-otlp-test"),
        // No periodic export during the test: whatever arrives was flushed at shutdown.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ]);
    service.wait_ready(&client).await;
    let id = service.order_to_the_end(&client).await;
    assert!(
        receiver.received().is_empty(),
        "nothing exported before the batch is due or flushed: {:?}",
        receiver.received()
    );

    assert_eq!(
        service.terminate().await,
        Some(0),
        "log: {}",
        service.log_text()
    );
    let log = service.log_text();
    assert!(
        log.contains("exporting traces"),
        "start-up says so; log: {log}"
    );

    let received = receiver.received();
    assert!(!received.is_empty(), "no OTLP request; log: {log}");
    let mut spans: Vec<Span> = Vec::new();
    for request in &received {
        assert_eq!(request.path, "/v1/traces", "log: {log}");
        assert_eq!(request.content_type, "application/x-protobuf");
        assert!(!request.body.is_empty(), "empty OTLP body");
        let export = ExportTraceServiceRequest::decode(request.body.clone())
            .expect("an OTLP ExportTraceServiceRequest");
        for resource_spans in export.resource_spans {
            let resource = resource_spans.resource.expect("a resource");
            assert_eq!(
                string_attribute(&resource.attributes, "service.name"),
                Some("order-service-otlp-test")
            );
            spans.extend(
                resource_spans
                    .scope_spans
                    .into_iter()
                    .flat_map(|scope| scope.spans),
            );
        }
    }
    let of_the_order: Vec<&str> = spans
        .iter()
        .filter(|span| string_attribute(&span.attributes, "order_id") == Some(id.as_str()))
        .map(|span| span.name.as_str())
        .collect();
    for name in ["http.create_order", "order.create", "inventory.reserve"] {
        assert!(
            of_the_order.contains(&name),
            "no {name} span with order_id={id}; spans of the order: {of_the_order:?}"
        );
    }
}

#[tokio::test]
async fn without_an_otlp_endpoint_nothing_is_exported() {
    let receiver = Receiver::start().await;
    let client = reqwest::Client::new();
    // Only OTEL_EXPORTER_OTLP_ENDPOINT turns export on: the SDK's other variables, even one
    // naming a live collector, do not. Unset and empty (the spec's "empty = unset") alike.
    let traces_endpoint = format!("{}/v1/traces", receiver.endpoint);
    for endpoint in [None, Some("")] {
        let mut env = vec![
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                traces_endpoint.as_str(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ];
        env.extend(endpoint.map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e)));
        let mut service = Service::start(&env);
        service.wait_ready(&client).await;
        service.order_to_the_end(&client).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            service.terminate().await,
            Some(0),
            "{endpoint:?}: log: {}",
            service.log_text()
        );
        let log = service.log_text();
        assert!(
            !log.contains("exporting traces"),
            "{endpoint:?}: log: {log}"
        );
        assert!(
            receiver.received().is_empty(),
            "{endpoint:?}: requests without an OTLP endpoint: {:?}",
            receiver.received()
        );
    }
}

#[test]
fn a_bad_otlp_endpoint_or_service_name_is_a_config_error_naming_the_option() {
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "grpc://127.0.0.1:4317"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/?x=1"),
        ("OTEL_SERVICE_NAME", " "),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_order-service"))
            .env_clear()
            .env(var, value)
            // Must never get as far as binding or connecting.
            .env("LISTEN_ADDR", "127.0.0.1:1")
            .env("DATABASE_URL", "sqlite::memory:")
            .output()
            .expect("run order-service");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{var}={value}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{var}={value}: {stderr:?}"
        );
        assert!(
            stderr.contains(&format!("invalid {var}")),
            "{var}={value}: message does not name it: {stderr}"
        );
    }
}
