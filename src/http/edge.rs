//! The HTTP/1.1 server's edge, shared by the service and the `participants` health server:
//! what a client may hold before and around a handler. Timeouts for the request head, for
//! an idle keep-alive connection and for the request body; a cap on open connections;
//! accept errors that back off instead of spinning; and the checks of the request head that
//! hyper leaves to us (`Host`, URI and header sizes), answered as problem+json. Open
//! connections, the cap, edge timeouts and failed accepts are metrics (`http_connections_*`,
//! `http_accept_errors_total`).
//! docs/http-edge.md has the why and what hyper still answers itself.

use crate::config::Config;
use crate::http::errors::{ApiError, problem, problem_response};
use crate::pause::Backoff;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Longest request target (path and query, or the absolute form) answered by a handler;
/// longer ones get 414 problem+json. hyper itself refuses targets over 65,534 bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Largest header section (names, values and their separators) answered by a handler;
/// larger ones get 431 problem+json. hyper itself refuses heads that overflow its read
/// buffer (about 400 KiB) and more than 100 header fields.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Connections the kernel queues for us while every slot is taken (the accepted ones past
/// the cap wait here); tokio's default is 128. Linux lowers it to `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `address` with a backlog of [`LISTEN_BACKLOG`]. `SO_REUSEADDR`, as the
/// standard library sets it: a restart may bind while old connections are in TIME_WAIT.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The edge's settings (`HTTP_*` options).
#[derive(Debug, Clone, Copy)]
pub struct EdgeSettings {
    /// A new connection's first request head must be in within this time of accept.
    pub header_timeout: Duration,
    /// A kept-alive connection's next request head must be in within this time of the
    /// previous response.
    pub idle_timeout: Duration,
    /// A request body must be in within this time of its head.
    pub body_timeout: Duration,
    /// Connections served at once; more wait unaccepted in the listen backlog.
    pub max_connections: usize,
}

impl From<&Config> for EdgeSettings {
    fn from(config: &Config) -> Self {
        EdgeSettings {
            header_timeout: Duration::from_secs(config.http_header_timeout_secs),
            idle_timeout: Duration::from_secs(config.http_idle_timeout_secs),
            body_timeout: Duration::from_secs(config.http_body_timeout_secs),
            max_connections: config.http_max_connections,
        }
    }
}

/// Serves `router` on `listener` until `signal` resolves, then stops accepting, lets every
/// connection finish its request in progress (idle ones close at once) and returns when
/// all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: EdgeSettings,
    signal: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let limit = connection_limit(settings.max_connections);
    metrics::gauge!("http_connections_max").set(limit as f64);
    // Zero from the start, so a scrape tells "none yet" from "not measured".
    for phase in TIMEOUT_PHASES {
        metrics::counter!("http_connections_timed_out_total", "phase" => phase).increment(0);
    }
    metrics::counter!("http_accept_errors_total").increment(0);
    let slots = Arc::new(Semaphore::new(limit));
    let graceful = GracefulShutdown::new();
    let mut backoff = AcceptBackoff::default();
    let mut signal = std::pin::pin!(signal);
    loop {
        // A free slot before accepting: over the cap, new connections wait in the kernel's
        // listen backlog, holding no descriptor of ours, until a served one closes.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = &mut signal => break,
        };
        let Ok(slot) = slot else { break }; // The semaphore is never closed.
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(error) => {
                metrics::counter!("http_accept_errors_total").increment(1);
                let pause = backoff.failed(&error);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = &mut signal => break,
                }
            }
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(HeadTimer::new(settings))
            .header_read_timeout(settings.header_timeout);
        let open = OpenConnection::new();
        let router = router.clone();
        let body_timeout = settings.body_timeout;
        let had_request = Arc::new(AtomicBool::new(false));
        let service = {
            let had_request = had_request.clone();
            hyper::service::service_fn(move |request| {
                had_request.store(true, Ordering::Relaxed);
                handle(router.clone(), request, body_timeout)
            })
        };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Timeouts and clients going away end up here; only timeouts are counted.
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection closed with an error");
                // hyper's only server-side timeout is the head timer, which waits for the
                // first head (header timeout) or, after a response, the next (idle timeout).
                if error.is_timeout() {
                    let phase = if had_request.load(Ordering::Relaxed) {
                        "idle"
                    } else {
                        "header"
                    };
                    metrics::counter!("http_connections_timed_out_total", "phase" => phase)
                        .increment(1);
                }
            }
            drop((slot, open));
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// The `phase` label values of `http_connections_timed_out_total`.
const TIMEOUT_PHASES: [&str; 3] = ["header", "idle", "body"];

/// One accepted connection in `http_connections_open`, until dropped (also when the
/// runtime drops the connection's task).
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::gauge!("http_connections_open").increment(1.0);
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("http_connections_open").decrement(1.0);
    }
}

async fn handle(
    router: Router,
    request: Request<Incoming>,
    body_timeout: Duration,
) -> Result<Response, Infallible> {
    if let Some(refusal) = screen(&request) {
        return Ok(refusal);
    }
    let request = request.map(|body| {
        if hyper::body::Body::is_end_stream(&body) {
            Body::new(body)
        } else {
            Body::new(DeadlineBody::new(body, body_timeout))
        }
    });
    router.oneshot(request).await
}

/// The answer to what hyper passes on but a handler must not see: a `Host` missing
/// (HTTP/1.1), repeated or malformed (RFC 9112 section 3.2), and targets or header
/// sections over our limits.
fn screen<B>(request: &Request<B>) -> Option<Response> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(refuse(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI too long",
            format!("the request target is {target} bytes; at most {MAX_URI_BYTES} are accepted"),
        ));
    }
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Some(refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-fields-too-large",
            "Request header fields too large",
            format!(
                "the header section is {headers} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        ));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let refusal = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => ApiError::bad_request(
            "Duplicate Host header",
            "a request must carry exactly one Host header",
        ),
        // HTTP/1.0 predates Host; RFC 9112 requires it of HTTP/1.1 requests only.
        (None, _) if request.version() >= Version::HTTP_11 => ApiError::bad_request(
            "Missing Host header",
            "an HTTP/1.1 request must carry a Host header",
        ),
        (Some(host), None) if !valid_host(host.as_bytes()) => ApiError::bad_request(
            "Invalid Host header",
            "Host must be a host name or address, optionally with a port",
        ),
        _ => return None,
    };
    tracing::debug!(error = %refusal, "request refused at the edge");
    Some(refusal.into_response())
}

/// `Host = uri-host [ ":" port ]`; empty is allowed by the grammar, and so is an empty port.
fn valid_host(host: &[u8]) -> bool {
    if host.is_empty() {
        return true;
    }
    let Ok(authority) = axum::http::uri::Authority::try_from(host) else {
        return false;
    };
    let authority = authority.as_str();
    // An IPv6 literal has colons of its own.
    let port = match authority.rfind(']') {
        Some(end) => match &authority[end + 1..] {
            "" => None,
            rest => match rest.strip_prefix(':') {
                Some(port) => Some(port),
                None => return false,
            },
        },
        None => authority.split_once(':').map(|(_, port)| port),
    };
    !authority.contains('@') && port.is_none_or(|p| p.is_empty() || p.parse::<u16>().is_ok())
}

fn refuse(status: StatusCode, kind: &str, title: &str, detail: String) -> Response {
    tracing::debug!(%status, detail, "request refused at the edge");
    problem_response(status, problem(status, kind, title, &detail))
}

/// The request body did not arrive in full within `HTTP_BODY_TIMEOUT_SECS`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// Whether reading a body failed because of [`BodyTimeout`] (somewhere in the chain).
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<BodyTimeout>())
}

/// A request body with one deadline for all of it. tower-http's `TimeoutBody` restarts its
/// timer at every chunk, so a client trickling a byte at a time would never be cut off.
struct DeadlineBody {
    body: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Counted once, however often the body is polled past its deadline.
    counted: bool,
}

impl DeadlineBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            counted: false,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // What has arrived is handed over even past the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(self.deadline.as_mut().poll(cx));
        // The answer is 408 with `Connection: close` (`ApiError::RequestTimeout`).
        if !std::mem::replace(&mut self.counted, true) {
            metrics::counter!("http_connections_timed_out_total", "phase" => "body").increment(1);
        }
        Poll::Ready(Some(Err(Box::new(BodyTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// hyper's header-read timer runs whenever a connection waits for a request head: from
/// accept, and again from the end of every response. This timer (one per connection)
/// gives the first wait the header timeout and later ones the idle timeout, so a kept-alive
/// connection may idle longer than a new one may take to send its first head.
struct HeadTimer {
    tokio: TokioTimer,
    header: Duration,
    idle: Duration,
    first_wait_done: AtomicBool,
}

impl HeadTimer {
    fn new(settings: EdgeSettings) -> Self {
        HeadTimer {
            tokio: TokioTimer::new(),
            header: settings.header_timeout,
            idle: settings.idle_timeout,
            first_wait_done: AtomicBool::new(false),
        }
    }

    /// hyper asks for `now + header timeout`; after the first wait that becomes
    /// `now + idle timeout`.
    fn deadline(&self, asked: Instant) -> Instant {
        if !self.first_wait_done.swap(true, Ordering::Relaxed) {
            return asked;
        }
        asked
            .checked_sub(self.header)
            .and_then(|start| start.checked_add(self.idle))
            .unwrap_or(asked)
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.tokio.sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.tokio.sleep_until(self.deadline(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        self.tokio.reset(sleep, self.deadline(new_deadline));
    }

    fn now(&self) -> Instant {
        self.tokio.now()
    }
}

/// The configured cap, lowered to half the soft open-files limit (`ulimit -n`) when that
/// is smaller: past the limit accept fails with EMFILE, and the database pools, the broker
/// and files need descriptors too.
fn connection_limit(configured: usize) -> usize {
    match open_files_limit() {
        Some(files) if configured > files / 2 => {
            let lowered = (files / 2).max(1);
            tracing::warn!(
                configured,
                lowered,
                open_files_limit = files,
                "HTTP_MAX_CONNECTIONS lowered to half the open-files limit; raise `ulimit -n` to serve more"
            );
            lowered
        }
        _ => configured,
    }
}

/// The soft limit on open files, where the platform shows it (Linux); `None` if unlimited
/// or unknown.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Accept errors other than a client that gave up (EMFILE, ENFILE, ENOBUFS…) last until
/// something frees up: retrying at once would spin, and logging each would flood the log.
struct AcceptBackoff {
    pause: Backoff,
    failures: u64,
    logged: Option<Instant>,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            pause: Backoff::new(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX),
            failures: 0,
            logged: None,
        }
    }
}

const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

impl AcceptBackoff {
    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
            *self = AcceptBackoff::default();
        }
    }

    /// How long to wait before accepting again.
    fn failed(&mut self, error: &io::Error) -> Duration {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionRefused
        ) {
            return Duration::ZERO;
        }
        self.failures += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= ACCEPT_LOG_EVERY)
        {
            tracing::error!(
                %error,
                failures = self.failures,
                "cannot accept connections; retrying with backoff (logged at most every 10 s)"
            );
            self.logged = Some(Instant::now());
        }
        self.pause.next_pause()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, hosts: &[&str]) -> Request<()> {
        let mut builder = Request::builder().uri("/health/live").version(version);
        for host in hosts {
            builder = builder.header(header::HOST, *host);
        }
        builder.body(()).expect("a valid request")
    }

    fn status(request: &Request<()>) -> Option<StatusCode> {
        screen(request).map(|r| r.status())
    }

    #[test]
    fn host_is_required_once_of_http_1_1_and_at_most_once_of_http_1_0() {
        assert_eq!(status(&request(Version::HTTP_11, &["a.example"])), None);
        assert_eq!(
            status(&request(Version::HTTP_11, &["a.example:8080"])),
            None
        );
        assert_eq!(status(&request(Version::HTTP_11, &["[::1]:8080"])), None);
        assert_eq!(status(&request(Version::HTTP_11, &["10.0.0.1"])), None);
        assert_eq!(status(&request(Version::HTTP_11, &[""])), None);
        assert_eq!(status(&request(Version::HTTP_10, &[])), None);
        let bad = Some(StatusCode::BAD_REQUEST);
        assert_eq!(status(&request(Version::HTTP_11, &[])), bad);
        assert_eq!(status(&request(Version::HTTP_11, &["a", "a"])), bad);
        assert_eq!(status(&request(Version::HTTP_10, &["a", "b"])), bad);
        assert_eq!(status(&request(Version::HTTP_11, &["a.example:"])), None);
        for host in [
            "a b",
            "user@a.example",
            "a.example:port",
            "a.example:1:2",
            "a.example:65536",
            "[::1]x",
            "a.example/x",
        ] {
            assert_eq!(status(&request(Version::HTTP_11, &[host])), bad, "{host}");
        }
    }

    #[test]
    fn later_head_waits_get_the_idle_timeout() {
        let timer = HeadTimer::new(EdgeSettings {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(30),
            max_connections: 1,
        });
        let now = Instant::now();
        let asked = now + Duration::from_secs(10);
        assert_eq!(timer.deadline(asked), asked);
        assert_eq!(timer.deadline(asked), now + Duration::from_secs(75));
    }

    #[test]
    fn accept_backoff_grows_to_a_second_and_ignores_clients_that_gave_up() {
        let mut backoff = AcceptBackoff::default();
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(backoff.failed(&reset), Duration::ZERO);
        let emfile = io::Error::from_raw_os_error(24);
        let pauses: Vec<_> = (0..10).map(|_| backoff.failed(&emfile)).collect();
        assert_eq!(pauses[0], ACCEPT_PAUSE_MIN);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(pauses[9], ACCEPT_PAUSE_MAX);
        backoff.succeeded();
        assert_eq!(backoff.failed(&emfile), ACCEPT_PAUSE_MIN);
    }
}
