//! The HTTP/1.1 server's edge, shared by the service and the `participants` health server:
//! what a client may hold before and around a handler. Timeouts for the request head, for
//! an idle keep-alive connection and for the request body; a cap on open connections; and
//! accept errors that back off instead of spinning. docs/http-edge.md has the why.

use crate::config::Config;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::Request;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::rt::{Sleep, Timer};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

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
    let slots = Arc::new(Semaphore::new(connection_limit(settings.max_connections)));
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
        let router = router.clone();
        let body_timeout = settings.body_timeout;
        let service = hyper::service::service_fn(move |request| {
            handle(router.clone(), request, body_timeout)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Timeouts and clients going away end up here; nothing to act on.
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn handle(
    router: Router,
    request: Request<Incoming>,
    body_timeout: Duration,
) -> Result<Response, Infallible> {
    let request = request.map(|body| {
        if hyper::body::Body::is_end_stream(&body) {
            Body::new(body)
        } else {
            Body::new(DeadlineBody::new(body, body_timeout))
        }
    });
    router.oneshot(request).await
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
}

impl DeadlineBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        DeadlineBody {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
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
#[derive(Default)]
struct AcceptBackoff {
    pause: Duration,
    failures: u64,
    logged: Option<Instant>,
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
        self.pause = (self.pause * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
        self.pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
