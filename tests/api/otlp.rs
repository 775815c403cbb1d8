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
        self.traced_order_to_the_end(client, None).await
    }

    /// [`Self::order_to_the_end`], sending `traceparent` with the create when given.
    async fn traced_order_to_the_end(
        &self,
        client: &reqwest::Client,
        traceparent: Option<&str>,
    ) -> String {
        let mut request = client.post(format!("{}/api/orders", self.base));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request
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

/// Every span the receiver got, checking each request is an OTLP/HTTP protobuf export of
/// `service_name`.
fn exported_spans(receiver: &Receiver, service_name: &str, log: &str) -> Vec<Span> {
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
                Some(service_name)
            );
            spans.extend(
                resource_spans
                    .scope_spans
                    .into_iter()
                    .flat_map(|scope| scope.spans),
            );
        }
    }
    spans
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

    let spans = exported_spans(&receiver, "order-service-otlp-test", &log);
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

/// The spans of one trace, by span id, with the questions the test asks of them.
struct Trace<'a> {
    spans: Vec<&'a Span>,
}

impl<'a> Trace<'a> {
    fn span(&self, span_id: &[u8]) -> Option<&'a Span> {
        self.spans.iter().copied().find(|s| s.span_id == span_id)
    }

    fn parent(&self, span: &Span) -> Option<&'a Span> {
        self.span(&span.parent_span_id)
    }

    /// The spans named `name` whose attribute `key` is `value` (all, without an attribute).
    fn named(&self, name: &str, attribute: Option<(&str, &str)>) -> Vec<&'a Span> {
        let found: Vec<&Span> = self
            .spans
            .iter()
            .copied()
            .filter(|s| s.name == name)
            .filter(|s| {
                attribute.is_none_or(|(k, v)| {
                    let found = string_attribute(&s.attributes, k);
                    // A reply to one of several replicas has the replica's name before its
                    // type.
                    found == Some(v)
                        || (k == "routing_key"
                            && found
                                .and_then(|f| f.split_once('.'))
                                .is_some_and(|(_, rest)| rest == v))
                })
            })
            .collect();
        assert!(
            !found.is_empty(),
            "no {name} {attribute:?}: {}",
            self.describe()
        );
        found
    }

    /// The span that sent the message `span` handles: `span`'s parent is the handling of a
    /// message with `routing_key`, whose parent is the sender's span.
    fn sender(&self, span: &Span, routing_key: &str) -> &'a Span {
        let process = self.parent(span);
        assert!(
            process.is_some_and(|p| p.name == "message.process"
                && string_attribute(&p.attributes, "routing_key") == Some(routing_key)),
            "{} is not handling a {routing_key}: {}",
            span.name,
            self.describe()
        );
        process
            .and_then(|p| self.parent(p))
            .unwrap_or_else(|| panic!("{routing_key} has no sender: {}", self.describe()))
    }

    /// Whether `ancestor` is `span`'s parent, grandparent, …
    fn descends(&self, span: &Span, ancestor: &Span) -> bool {
        let mut current = self.parent(span);
        while let Some(parent) = current {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            current = self.parent(parent);
        }
        false
    }

    fn describe(&self) -> String {
        self.spans
            .iter()
            .map(|s| {
                let parent = self.parent(s).map_or("-", |p| p.name.as_str());
                let key = string_attribute(&s.attributes, "routing_key")
                    .or_else(|| string_attribute(&s.attributes, "event"))
                    .unwrap_or_default();
                format!("{} [{key}] <- {parent}", s.name)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One order with a caller's `traceparent`: every span of the order is in the caller's
/// trace, and each has the span that caused it as its parent — the request continues the
/// caller's span; each participant handles a command under the actor span that sent it;
/// the actor applies each reply under the participant span that answered.
async fn one_order_is_one_trace(extra: &[(&str, &str)]) {
    let receiver = Receiver::start().await;
    let client = reqwest::Client::new();
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()),
        ("OTEL_SERVICE_NAME", "order-service-trace-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
    ];
    env.extend_from_slice(extra);
    let mut service = Service::start(&env);
    service.wait_ready(&client).await;
    let (trace_id, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let id = service
        .traced_order_to_the_end(&client, Some(&format!("00-{trace_id}-{caller}-01")))
        .await;
    assert_eq!(
        service.terminate().await,
        Some(0),
        "log: {}",
        service.log_text()
    );
    let spans = exported_spans(&receiver, "order-service-trace-test", &service.log_text());

    let trace_id = hex::decode(trace_id).expect("hex");
    // The test's polls for the status send no traceparent: their own traces.
    for span in spans.iter().filter(|s| {
        string_attribute(&s.attributes, "order_id") == Some(id.as_str())
            && s.name != "http.get_order"
    }) {
        assert_eq!(
            span.trace_id, trace_id,
            "{} of the order is not in the caller's trace",
            span.name
        );
    }
    let trace = Trace {
        spans: spans.iter().filter(|s| s.trace_id == trace_id).collect(),
    };
    let request = trace.named("http.request", None)[0];
    assert_eq!(request.parent_span_id, hex::decode(caller).expect("hex"));
    for span in &trace.spans {
        assert!(
            span.span_id == request.span_id || trace.parent(span).is_some(),
            "{} has no parent in the trace: {}",
            span.name,
            trace.describe()
        );
    }
    let created = trace.named("order.create", None)[0];
    assert!(trace.descends(created, trace.named("http.create_order", None)[0]));
    assert!(trace.descends(created, request));
    // Every command is handled under the order actor's span that sent it (a resend by
    // start-up recovery or a timer included); the first reservation under the create's.
    let commands = [
        ("stock.reserve", "inventory.reserve"),
        ("payment.charge", "payment.charge"),
        ("shipping.schedule", "shipping.schedule"),
    ];
    for (command, handler) in commands {
        for span in trace.named(handler, None) {
            let sender = trace.sender(span, command);
            assert!(sender.name.starts_with("order."), "{}", trace.describe());
        }
    }
    assert!(
        trace
            .named("inventory.reserve", None)
            .iter()
            .any(|s| trace.sender(s, "stock.reserve").span_id == created.span_id),
        "{}",
        trace.describe()
    );
    // Every reply is applied under the participant's span that answered, and the next
    // command is sent from that application.
    for (reply, event, answered_by, next) in [
        (
            "stock.reserved",
            "stock_reserved",
            "inventory.reserve",
            Some(commands[1]),
        ),
        (
            "payment.charged",
            "payment_charged",
            "payment.charge",
            Some(commands[2]),
        ),
        (
            "shipping.scheduled",
            "shipment_scheduled",
            "shipping.schedule",
            None,
        ),
    ] {
        let applied = trace.named("order.apply", Some(("event", event)));
        for span in &applied {
            assert!(
                trace.named(answered_by, None).iter().any(|by| trace
                    .named("message.process", Some(("routing_key", reply)))
                    .iter()
                    .any(|p| p.parent_span_id == by.span_id && trace.descends(span, p))),
                "{event} not applied under {answered_by}'s {reply}: {}",
                trace.describe()
            );
        }
        if let Some((command, handler)) = next {
            assert!(
                trace.named(handler, None).iter().any(|s| {
                    let sender = trace.sender(s, command);
                    applied.iter().any(|a| a.span_id == sender.span_id)
                }),
                "{command} not sent from the {event} application: {}",
                trace.describe()
            );
        }
    }
}

#[tokio::test]
async fn one_order_is_one_trace_that_continues_the_callers_on_the_in_process_bus() {
    one_order_is_one_trace(&[]).await;
}

#[tokio::test]
async fn one_order_is_one_trace_that_continues_the_callers_on_rabbitmq() {
    let (database_url, amqp_url, _backing) = crate::helpers::provision(false).await;
    let amqp_url = amqp_url.expect("RabbitMQ");
    one_order_is_one_trace(&[
        ("DATABASE_URL", database_url.as_str()),
        ("AMQP_URL", amqp_url.as_str()),
    ])
    .await;
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
