//! The HTTP edge against hostile or slow clients, over raw sockets: timeouts for the request
//! head, an idle keep-alive connection and the body; the connection cap and the listen
//! backlog; the `http_connections_*` metrics; and what the server answers to protocol errors
//! (problem+json where a handler can still answer, and hyper's own bare answers where it
//! cannot, as docs/http-edge.md lists them).
//!
//! The metrics recorder is shared by every test in the process, so metric checks are lower
//! bounds: what this test caused must be there, on top of whatever others add.

use crate::helpers::{PROBLEM_JSON, TestApp, TestOptions, provision, spawn_app_with};
use order_service::config::Config;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One client connection, spoken to byte by byte.
struct Raw {
    stream: TcpStream,
    /// Read but not yet consumed.
    buffer: Vec<u8>,
}

struct RawResponse {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an RFC 9457 problem with this status, and returns it.
    fn problem(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some(PROBLEM_JSON), "{self:?}");
        let body: Value = serde_json::from_slice(&self.body).expect("a JSON problem");
        assert_eq!(body["status"], status, "{body}");
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        body
    }

    /// Asserts one of hyper's own answers: this status, no body, no content type.
    fn bare(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), None, "{self:?}");
        assert!(self.body.is_empty(), "{self:?}");
    }
}

impl Raw {
    async fn connect(address: &str) -> Raw {
        let address = address.trim_start_matches("http://");
        Raw {
            stream: TcpStream::connect(address).await.expect("connecting"),
            buffer: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("sending");
    }

    /// Reads into the buffer; false once the server has closed the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, or `None` if the connection closes before one is complete.
    async fn read_response(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        self.buffer.drain(..head_end + 4);
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match length {
            Some(length) => {
                while self.buffer.len() < length {
                    if !self.fill().await {
                        return None;
                    }
                }
            }
            None => while self.fill().await {},
        }
        let body = self
            .buffer
            .drain(..length.unwrap_or(self.buffer.len()))
            .collect();
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// The next response, which must come within `within`.
    async fn response(&mut self, within: Duration) -> RawResponse {
        tokio::time::timeout(within, self.read_response())
            .await
            .unwrap_or_else(|_| panic!("no response within {within:?}"))
            .expect("a response before the connection closed")
    }

    /// Sends `bytes` one at a time, `every` apart, until all are sent or the server answers
    /// or closes the connection.
    async fn trickle(&mut self, bytes: &[u8], every: Duration) {
        for byte in bytes {
            if self.stream.write_all(&[*byte]).await.is_err() {
                return;
            }
            if tokio::time::timeout(every, self.fill()).await.is_ok() {
                return;
            }
        }
    }

    /// Whether the server closes the connection within `within` (without answering).
    async fn closes_within(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, async { while self.fill().await {} })
            .await
            .is_ok()
    }
}

/// `GET /health/live`, kept alive.
const LIVE: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n";

fn options(header: u64, idle: u64, body: u64, connections: usize) -> TestOptions {
    TestOptions {
        http_header_timeout_secs: header,
        http_idle_timeout_secs: idle,
        http_body_timeout_secs: body,
        http_max_connections: connections,
        ..TestOptions::default()
    }
}

/// `http_connections_timed_out_total` of `phase`, in all apps of the process.
async fn timeouts(app: &TestApp, phase: &str) -> f64 {
    app.metric("http_connections_timed_out_total", &[("phase", phase)])
        .await
}

/// Asserts that `raw` is closed without an answer between `at_least` and `at_most` after
/// `since`.
async fn assert_closed_between(raw: &mut Raw, since: Instant, at_least: f64, at_most: f64) {
    let closed = raw.closes_within(Duration::from_secs_f64(at_most)).await;
    let elapsed = since.elapsed().as_secs_f64();
    assert!(closed, "still open after {elapsed:.1} s");
    assert!(
        elapsed >= at_least,
        "closed after {elapsed:.1} s, before {at_least} s"
    );
    assert!(
        raw.buffer.is_empty(),
        "answered: {:?}",
        String::from_utf8_lossy(&raw.buffer)
    );
}

#[tokio::test]
async fn a_request_head_not_in_by_the_header_timeout_is_closed() {
    let app = spawn_app_with(options(1, 30, 30, 1024)).await;
    let timed_out = timeouts(&app, "header").await;
    let head = b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let started = Instant::now();
    let mut silent = Raw::connect(&app.address).await;
    let mut half = Raw::connect(&app.address).await;
    half.send(&head[..20]).await;
    // A byte every 300 ms: the connection is never quiet, but the head is not in on time.
    let mut trickled = Raw::connect(&app.address).await;
    let trickling = async {
        trickled.trickle(head, Duration::from_millis(300)).await;
        assert_closed_between(&mut trickled, started, 0.9, 1.0).await;
    };
    tokio::join!(
        assert_closed_between(&mut silent, started, 0.9, 5.0),
        assert_closed_between(&mut half, started, 0.9, 5.0),
        trickling,
    );
    let counted = timeouts(&app, "header").await - timed_out;
    assert!(
        counted >= 3.0,
        "{counted} header timeouts counted, 3 expected"
    );
    // A timely head is unaffected.
    let mut good = Raw::connect(&app.address).await;
    good.send(LIVE).await;
    assert_eq!(good.response(Duration::from_secs(5)).await.status, 200);
}

#[tokio::test]
async fn a_kept_alive_connection_may_idle_until_the_idle_timeout() {
    let app = spawn_app_with(options(1, 3, 30, 1024)).await;
    let mut raw = Raw::connect(&app.address).await;
    raw.send(LIVE).await;
    assert_eq!(raw.response(Duration::from_secs(5)).await.status, 200);
    // Idle past the header timeout: the connection is still there for the next request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    raw.send(LIVE).await;
    assert_eq!(raw.response(Duration::from_secs(5)).await.status, 200);
    let timed_out = timeouts(&app, "idle").await;
    let idle_since = Instant::now();
    assert_closed_between(&mut raw, idle_since, 2.5, 6.0).await;
    let counted = timeouts(&app, "idle").await - timed_out;
    assert!(
        counted >= 1.0,
        "{counted} idle timeouts counted, 1 expected"
    );
}

/// `POST /api/orders` announcing a body of `length` bytes.
fn order_head(length: usize) -> Vec<u8> {
    format!(
        "POST /api/orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {}\r\nContent-Length: {length}\r\n\r\n",
        uuid::Uuid::new_v4()
    )
    .into_bytes()
}

/// Asserts the 408 problem that ends a body too slow to arrive, `at_least` seconds after
/// `since`, and that the connection closes after it.
async fn assert_body_timed_out(raw: &mut Raw, since: Instant, at_least: f64) {
    let response = raw.response(Duration::from_secs(5)).await;
    let waited = since.elapsed().as_secs_f64();
    let problem = response.problem(408);
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/request-timeout")),
        "{problem}"
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert!(waited >= at_least, "answered after {waited:.1} s");
    assert!(raw.closes_within(Duration::from_secs(2)).await);
}

#[tokio::test]
async fn a_request_body_not_in_by_the_body_timeout_gets_408_and_the_connection_closes() {
    let app = spawn_app_with(options(10, 30, 1, 1024)).await;
    let body = serde_json::to_vec(&crate::helpers::order_body(&[("KB-001", 1)])).expect("JSON");
    let timed_out = timeouts(&app, "body").await;

    // Half the body, then nothing.
    let mut half = Raw::connect(&app.address).await;
    half.send(&order_head(body.len())).await;
    half.send(&body[..body.len() / 2]).await;
    let started = Instant::now();
    assert_body_timed_out(&mut half, started, 0.9).await;

    // A byte every 200 ms: each arrives well within the timeout, the whole body does not.
    let mut trickled = Raw::connect(&app.address).await;
    trickled.send(&order_head(body.len())).await;
    let started = Instant::now();
    trickled.trickle(&body, Duration::from_millis(200)).await;
    assert_body_timed_out(&mut trickled, started, 0.9).await;
    let counted = timeouts(&app, "body").await - timed_out;
    assert!(
        counted >= 2.0,
        "{counted} body timeouts counted, 2 expected"
    );

    // Neither created an order; a body sent at once still does.
    let orders: Value = app
        .client
        .get(app.url("/api/orders"))
        .send()
        .await
        .expect("GET /api/orders")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        orders["orders"].as_array().map(Vec::len),
        Some(0),
        "{orders}"
    );
    let mut good = Raw::connect(&app.address).await;
    good.send(&order_head(body.len())).await;
    good.send(&body).await;
    assert_eq!(good.response(Duration::from_secs(10)).await.status, 201);
}

#[tokio::test]
async fn over_the_connection_cap_new_connections_wait_and_accepted_ones_are_served() {
    let app = spawn_app_with(options(30, 30, 30, 2)).await;
    // Two kept-alive connections take both slots.
    let mut first = Raw::connect(&app.address).await;
    first.send(LIVE).await;
    assert_eq!(first.response(Duration::from_secs(5)).await.status, 200);
    let mut second = Raw::connect(&app.address).await;
    second.send(LIVE).await;
    assert_eq!(second.response(Duration::from_secs(5)).await.status, 200);

    // A third connects (the kernel queues it) but is neither served nor refused.
    let mut third = Raw::connect(&app.address).await;
    third.send(LIVE).await;
    if let Ok(answer) =
        tokio::time::timeout(Duration::from_millis(1500), third.read_response()).await
    {
        panic!("a connection over the cap was not left waiting: {answer:?}");
    }
    // The accepted ones still are served.
    first.send(LIVE).await;
    assert_eq!(first.response(Duration::from_secs(2)).await.status, 200);

    // Once a slot frees, the waiting connection is served.
    drop(second);
    assert_eq!(third.response(Duration::from_secs(5)).await.status, 200);
}

#[tokio::test]
async fn open_connections_and_the_cap_are_metrics() {
    let app = spawn_app_with(options(30, 30, 30, 1024)).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut raw = Raw::connect(&app.address).await;
        raw.send(LIVE).await;
        assert_eq!(raw.response(Duration::from_secs(5)).await.status, 200);
        held.push(raw);
    }
    // The five held here, and the scrape's own connection.
    let open = app.metric("http_connections_open", &[]).await;
    assert!(open >= 6.0, "http_connections_open is {open} with 6 open");
    let cap = app.metric("http_connections_max", &[]).await;
    assert!(cap >= 1.0, "http_connections_max is {cap}");
    for phase in ["header", "idle", "body"] {
        assert!(
            metric_exists(&app, "http_connections_timed_out_total", phase).await,
            "no http_connections_timed_out_total{{phase=\"{phase}\"}}"
        );
    }
    drop(held);
}

/// Whether a scrape shows the counter with this phase (at zero before anything timed out).
async fn metric_exists(app: &TestApp, name: &str, phase: &str) -> bool {
    let text = app.metrics_text().await;
    let sample = format!("{name}{{phase=\"{phase}\"}} ");
    text.lines().any(|l| l.starts_with(&sample))
}

#[tokio::test]
async fn connections_over_the_cap_complete_their_handshake_in_the_listen_backlog() {
    let app = spawn_app_with(options(30, 30, 30, 1)).await;
    let mut held = Raw::connect(&app.address).await;
    held.send(LIVE).await;
    assert_eq!(held.response(Duration::from_secs(5)).await.status, 200);
    // Past a backlog of 128 the kernel drops the handshake and the client retries a second
    // later; 300 fit in one of 1024.
    let address = app.address.trim_start_matches("http://").to_owned();
    let connects = (0..300).map(|_| {
        let address = address.clone();
        tokio::spawn(async move {
            tokio::time::timeout(Duration::from_millis(700), TcpStream::connect(address)).await
        })
    });
    let mut queued = Vec::new();
    let mut late = 0;
    for connect in futures::future::join_all(connects).await {
        match connect.expect("connect task") {
            Ok(stream) => queued.push(stream.expect("connecting")),
            Err(_) => late += 1,
        }
    }
    assert_eq!(
        late, 0,
        "{late} of 300 connections did not complete within 700 ms"
    );
    drop(queued);
    drop(held);
    let response = app
        .client
        .get(app.url("/health/live"))
        .send()
        .await
        .expect("served after the queue drained");
    assert_eq!(response.status(), 200);
}

/// Sends `request` on a new connection and returns the answer.
async fn exchange(app: &TestApp, request: &[u8]) -> RawResponse {
    let mut raw = Raw::connect(&app.address).await;
    raw.send(request).await;
    raw.response(Duration::from_secs(10)).await
}

#[tokio::test]
async fn host_uri_and_header_errors_are_problem_json() {
    let app = spawn_app_with(TestOptions::default()).await;
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "no Host",
            b"GET /health/live HTTP/1.1\r\n\r\n",
            "Missing Host header",
        ),
        (
            "two Hosts",
            b"GET /health/live HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            "Duplicate Host header",
        ),
        (
            "two Hosts, HTTP/1.0",
            b"GET /health/live HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            "Duplicate Host header",
        ),
        (
            "a Host that is no host",
            b"GET /health/live HTTP/1.1\r\nHost: a b\r\n\r\n",
            "Invalid Host header",
        ),
    ];
    for (name, request, title) in cases {
        let problem = exchange(&app, request).await.problem(400);
        assert_eq!(problem["title"], title, "{name}: {problem}");
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("/bad-request")),
            "{name}: {problem}"
        );
    }

    let long_target = format!(
        "GET /health/live?{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "q".repeat(9_000)
    );
    let problem = exchange(&app, long_target.as_bytes()).await.problem(414);
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/uri-too-long"))
    );
    let big_header = format!(
        "GET /health/live HTTP/1.1\r\nHost: a\r\nX-Filler: {}\r\n\r\n",
        "f".repeat(20_000)
    );
    let problem = exchange(&app, big_header.as_bytes()).await.problem(431);
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/header-fields-too-large"))
    );

    // Still served: HTTP/1.0 without Host, a Host with a port, the absolute form.
    for request in [
        &b"GET /health/live HTTP/1.0\r\n\r\n"[..],
        b"GET /health/live HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        b"GET http://localhost:8080/health/live HTTP/1.1\r\nHost: localhost:8080\r\n\r\n",
        b"GET /health/live?q=1 HTTP/1.1\r\nHost: a\r\nX-Filler: 0123456789\r\n\r\n",
    ] {
        let response = exchange(&app, request).await;
        assert_eq!(
            response.status,
            200,
            "{}: {response:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[tokio::test]
async fn what_hyper_refuses_before_any_handler_gets_its_bare_answers() {
    let app = spawn_app_with(TestOptions::default()).await;
    let huge_target = format!(
        "GET /health/live?{} HTTP/1.1\r\nHost: a\r\n\r\n",
        "q".repeat(70_000)
    );
    exchange(&app, huge_target.as_bytes()).await.bare(414);
    let many_headers = format!(
        "GET /health/live HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..101)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect::<String>()
    );
    exchange(&app, many_headers.as_bytes()).await.bare(431);
    let huge_head = format!(
        "GET /health/live HTTP/1.1\r\nHost: a\r\n{}\r\n",
        (0..5)
            .map(|i| format!("X-{i}: {}\r\n", "f".repeat(100_000)))
            .collect::<String>()
    );
    exchange(&app, huge_head.as_bytes()).await.bare(431);
    exchange(
        &app,
        b"GET /health/live HTTP/1.1\r\nHost: a\r\nX-Bad: a\x01b\r\n\r\n",
    )
    .await
    .bare(400);
    exchange(
        &app,
        b"GET /health/live HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
    )
    .await
    .bare(400);
}

#[tokio::test]
async fn the_participants_health_server_has_the_same_edge() {
    let (database_url, amqp_url, _backing) = provision(false).await;
    let mut config = Config::default_for(&database_url, amqp_url.as_deref());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    config.listen_addr = ([127, 0, 0, 1], port).into();
    config.db_max_connections = 2;
    config.http_header_timeout_secs = 1;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let participants = tokio::spawn(order_service::app::run_participants(config, async {
        let _ = stopped.await;
    }));
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut raw = loop {
        if let Ok(stream) = TcpStream::connect(&address).await {
            break Raw {
                stream,
                buffer: Vec::new(),
            };
        }
        assert!(Instant::now() < deadline, "participants never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    raw.send(b"GET /health/live HTTP/1.1\r\n\r\n").await;
    raw.response(Duration::from_secs(5)).await.problem(400);
    let started = Instant::now();
    let mut slow = Raw::connect(&address).await;
    slow.send(b"GET /health/live HTTP/1.1\r\n").await;
    assert_closed_between(&mut slow, started, 0.9, 5.0).await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), participants)
        .await
        .expect("participants stop")
        .expect("participants task")
        .expect("participants run");
}
