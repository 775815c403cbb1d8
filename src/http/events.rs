//! `GET /api/events`: every order event as Server-Sent Events, from the stored history.
//!
//! One tailer per process reads new history rows (by row id, the event's `id:`) and
//! broadcasts them to every subscriber through a bounded ring; a subscriber that falls a
//! whole ring behind is cut off instead of holding the others or the service back, and its
//! client reconnects with `Last-Event-ID`, which is served from the stored history — so a
//! reconnecting client misses nothing. Because the stream is the history, it shows every
//! replica's orders.

use crate::domain::timeline::STREAM_TYPES;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::{Admin, ApiQuery};
use crate::http::schema::{BearerErrors, UnexpectedError};
use crate::orchestrator::Orchestrator;
use crate::orchestrator::operator::stream_type;
use crate::persistence::console::Transition;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Events a subscriber may fall behind by before it is cut off.
pub const RING: usize = 1024;
/// How often the tailer looks for new history while anyone listens, when this process
/// records nothing (another replica's orders, a parked one); this process's own transitions
/// wake it at once, at most every [`MIN_GAP`].
const POLL: Duration = Duration::from_millis(100);
const MIN_GAP: Duration = Duration::from_millis(10);
/// How often it only keeps its place while nobody listens.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Rows per read, from the tailer and for a catch-up.
const PAGE: u64 = 500;
/// How long the tailer waits for a missing row id (a transaction that took its id but has
/// not committed yet) before going on without it; the row stays in the history.
const GAP_WAIT: Duration = Duration::from_secs(1);

/// One event of the stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderEvent {
    /// The history row's id: increasing, and the SSE `id:` (send it back as `Last-Event-ID`).
    pub seq: i64,
    pub order_id: Uuid,
    /// `order.created` … `order.reversed`, `order.parked`, `order.resumed`, or `order.step`
    /// (a step changed without a status change). Also the SSE `event:`.
    #[serde(rename = "type")]
    #[schema(example = "order.paid")]
    pub kind: &'static str,
    #[schema(required = true)]
    pub from: Option<crate::domain::saga::OrderStatus>,
    pub status: crate::domain::saga::OrderStatus,
    /// The saga event that caused it.
    pub event: String,
    pub reason: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl From<&Transition> for OrderEvent {
    fn from(t: &Transition) -> OrderEvent {
        OrderEvent {
            seq: t.seq,
            order_id: t.order_id,
            kind: stream_type(&t.entry),
            from: t.entry.from,
            status: t.entry.status,
            event: t.entry.event.clone(),
            reason: t.entry.reason.clone(),
            at: t.entry.at,
        }
    }
}

/// The process's tailer and its subscribers.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Hub>,
}

struct Hub {
    sender: broadcast::Sender<Arc<OrderEvent>>,
    /// The last row broadcast (or passed over while nobody listened); `None` until the
    /// first subscriber. Subscribing and moving it happen under this lock, so a subscriber
    /// either finds a row in the history when it catches up or gets it broadcast.
    cursor: tokio::sync::Mutex<Option<i64>>,
    started: AtomicBool,
    orchestrator: Orchestrator,
    /// Cancelled when shutdown is asked: every stream ends, so draining does not wait on them.
    shutdown: CancellationToken,
}

impl EventHub {
    pub fn new(orchestrator: Orchestrator, shutdown: CancellationToken) -> EventHub {
        let (sender, _) = broadcast::channel(RING);
        EventHub {
            inner: Arc::new(Hub {
                sender,
                cursor: tokio::sync::Mutex::new(None),
                started: AtomicBool::new(false),
                orchestrator,
                shutdown,
            }),
        }
    }

    /// A new subscriber; the tailer starts with the first one.
    async fn subscribe(&self) -> Result<broadcast::Receiver<Arc<OrderEvent>>, ApiError> {
        let mut cursor = self.inner.cursor.lock().await;
        if cursor.is_none() {
            *cursor = Some(self.inner.orchestrator.last_transition().await?);
        }
        let receiver = self.inner.sender.subscribe();
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(tail(self.inner.clone()));
        }
        Ok(receiver)
    }
}

/// Reads new history rows in id order and broadcasts them, until shutdown.
async fn tail(hub: Arc<Hub>) {
    // A missing id and since when it is missing.
    let mut gap: Option<(i64, Instant)> = None;
    let recorded = &hub.orchestrator.stats().recorded;
    loop {
        let listening = hub.sender.receiver_count() > 0;
        let pause = if listening { POLL } else { IDLE_POLL };
        tokio::select! {
            () = hub.shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
            () = recorded.notified(), if listening => tokio::time::sleep(MIN_GAP).await,
        }
        let mut cursor = hub.cursor.lock().await;
        let at = cursor.unwrap_or(0);
        if hub.sender.receiver_count() == 0 {
            // Nobody would see what is broadcast now: only keep the place.
            if let Ok(last) = hub.orchestrator.last_transition().await {
                *cursor = Some(last.max(at));
            }
            gap = None;
            continue;
        }
        let rows = match hub.orchestrator.transitions_after(at, None, PAGE).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "event stream: reading the history failed; retrying");
                continue;
            }
        };
        let mut next = at;
        for row in &rows {
            if row.seq != next + 1 {
                let since = match gap {
                    Some((missing, since)) if missing == next + 1 => since,
                    _ => Instant::now(),
                };
                gap = Some((next + 1, since));
                if since.elapsed() < GAP_WAIT {
                    break;
                }
            }
            gap = None;
            next = row.seq;
            // No receiver left is not an error: the next round notices.
            let _ = hub.sender.send(Arc::new(OrderEvent::from(row)));
        }
        *cursor = Some(next);
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this order's events.
    order_id: Option<Uuid>,
    /// Only these event types, comma-separated (e.g. `order.confirmed,order.reversed`).
    #[param(example = "order.confirmed,order.reversed")]
    types: Option<String>,
    /// Seconds between heartbeats (SSE comments) while nothing happens.
    #[param(minimum = 1, maximum = 60, default = 15)]
    heartbeat_secs: Option<u64>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/events", get(events))
}

/// What a subscriber wants.
struct Filter {
    order_id: Option<Uuid>,
    types: Option<Vec<&'static str>>,
}

impl Filter {
    fn wants(&self, event: &OrderEvent) -> bool {
        self.order_id.is_none_or(|id| id == event.order_id)
            && self.types.as_ref().is_none_or(|t| t.contains(&event.kind))
    }
}

fn sse_event(event: &OrderEvent) -> Event {
    let data = serde_json::to_string(event).unwrap_or_default();
    Event::default()
        .id(event.seq.to_string())
        .event(event.kind)
        .data(data)
}

/// `Last-Event-ID`: the header, which browsers send when they reconnect.
fn last_event_id(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "Invalid Last-Event-ID",
                "Last-Event-ID must be the id of an event of this stream (a whole number)",
            )
        })
}

#[utoipa::path(
    get,
    path = "/api/events",
    operation_id = "stream_events",
    tag = "admin",
    summary = "Every order event, as Server-Sent Events",
    description = "A `text/event-stream` of every order event as it happens: `event:` is the \
        type (`order.created`, `order.stock_reserved`, `order.paid`, `order.confirmed`, \
        `order.rejected`, `order.failed`, `order.cancelled`, `order.reversed`, \
        `order.parked`, `order.resumed`, `order.step`), `id:` its place in the stored \
        history, `data:` the `OrderEvent` as JSON. Reconnecting with `Last-Event-ID` first \
        replays every event after it from the history, so nothing is missed. Heartbeats \
        (comments) keep idle connections open. A subscriber too slow to keep up (1,024 events \
        behind) is disconnected; it reconnects with `Last-Event-ID`. The stream ends when the \
        service shuts down. Needs the admin token (orders are private) or the console's \
        session.",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, nullable = false,
            description = "Resume after this event (`id:` of the last event received)"),
    ),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The stream (never ends by itself); each event's data \
            is an `OrderEvent`", body = OrderEvent, content_type = "text/event-stream"),
        (status = 400, description = "Unknown event type, malformed `order_id`, \
            `heartbeat_secs` outside 1-60, `Last-Event-ID` not a whole number",
            body = crate::http::schema::Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = crate::http::schema::Problem, content_type = "application/problem+json"),
        BearerErrors,
        UnexpectedError,
    )
)]
async fn events(
    State(app): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let invalid = |detail: String| ApiError::bad_request("Invalid query string", detail);
    let types = match query.types.as_deref() {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    STREAM_TYPES
                        .iter()
                        .copied()
                        .find(|k| *k == t)
                        .ok_or_else(|| {
                            invalid(format!(
                                "unknown event type {t:?}; one of {}",
                                STREAM_TYPES.join(", ")
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let heartbeat = query.heartbeat_secs.unwrap_or(15);
    if !(1..=60).contains(&heartbeat) {
        return Err(invalid("heartbeat_secs must be between 1 and 60".into()));
    }
    let after = last_event_id(&headers)?;
    let filter = Filter {
        order_id: query.order_id,
        types,
    };
    // Subscribed before the catch-up reads the history: whatever is broadcast meanwhile is
    // in the ring, and what was broadcast before is in the history.
    let live = app.events.subscribe().await?;
    metrics::gauge!("event_stream_subscribers").increment(1.0);
    let stream = stream(
        app.orchestrator.clone(),
        app.events.inner.shutdown.clone(),
        live,
        after,
        filter,
    );
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(heartbeat))
                .text("heartbeat"),
        )
        .into_response())
}

/// Decrements the subscriber gauge when the stream is dropped.
struct Subscribed;

impl Drop for Subscribed {
    fn drop(&mut self) {
        metrics::gauge!("event_stream_subscribers").decrement(1.0);
    }
}

struct StreamState {
    orchestrator: Orchestrator,
    shutdown: CancellationToken,
    live: broadcast::Receiver<Arc<OrderEvent>>,
    filter: Filter,
    /// The last event sent (or caught up to); `None` before the first when live only.
    last: Option<i64>,
    /// Still reading the history after `last`.
    catching_up: bool,
    pending: VecDeque<Arc<OrderEvent>>,
    /// The retry hint goes first.
    greeted: bool,
    _subscribed: Subscribed,
}

fn stream(
    orchestrator: Orchestrator,
    shutdown: CancellationToken,
    live: broadcast::Receiver<Arc<OrderEvent>>,
    after: Option<i64>,
    filter: Filter,
) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    let state = StreamState {
        orchestrator,
        shutdown,
        live,
        filter,
        last: after,
        catching_up: after.is_some(),
        pending: VecDeque::new(),
        greeted: false,
        _subscribed: Subscribed,
    };
    futures::stream::unfold(state, |mut s| async move {
        if !s.greeted {
            s.greeted = true;
            // Browsers reconnect after this many milliseconds.
            return Some((Ok(Event::default().retry(Duration::from_secs(1))), s));
        }
        loop {
            if let Some(event) = s.pending.pop_front() {
                s.last = Some(event.seq);
                if s.filter.wants(&event) {
                    return Some((Ok(sse_event(&event)), s));
                }
                continue;
            }
            if s.catching_up {
                let after = s.last.unwrap_or(0);
                let rows = tokio::select! {
                    () = s.shutdown.cancelled() => return None,
                    rows = s.orchestrator.transitions_after(after, s.filter.order_id, PAGE) => rows,
                };
                match rows {
                    Ok(rows) if rows.is_empty() => s.catching_up = false,
                    Ok(rows) => s
                        .pending
                        .extend(rows.iter().map(|r| Arc::new(OrderEvent::from(r)))),
                    Err(error) => {
                        tracing::warn!(%error, "event stream: catch-up failed; closing the stream");
                        return None;
                    }
                }
                continue;
            }
            let received = tokio::select! {
                () = s.shutdown.cancelled() => return None,
                received = s.live.recv() => received,
            };
            match received {
                Ok(event) if s.last.is_some_and(|last| event.seq <= last) => continue,
                Ok(event) => s.pending.push_back(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    metrics::counter!("event_stream_cut_off_total").increment(1);
                    tracing::info!(missed, "event stream subscriber too slow; cut off");
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
