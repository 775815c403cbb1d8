//! Several replicas: a request for an order in a partition another replica owns is
//! forwarded to that owner over HTTP (its `ADVERTISE_URL`, from the `partitions` table),
//! and its answer returned as is — so clients and load balancers need no affinity. Only
//! what needs the order's actor is forwarded: a long poll (`?wait_ms=`), the status
//! override, the manual payment and an operator's resume; plain reads are answered here from the database, and
//! a new order is created here, in a partition this replica owns (forwarded only when it
//! owns none yet).
//!
//! A forwarded request carries [`FORWARDED_BY`]; a replica that gets one for an order it does
//! not own (the partition moved meanwhile) answers 503 with `Retry-After` instead of
//! forwarding again, so a request makes at most one hop.

use crate::http::AppState;
use crate::http::errors::{problem, problem_response};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Names the replica that forwarded a request.
pub const FORWARDED_BY: &str = "x-forwarded-by-replica";

/// How long a request waits for its order's partition to get a live owner (the old one
/// died or is handing it over) before it is answered 503.
const OWNER_WAIT: Duration = Duration::from_secs(8);
/// Pause between looks at the owner while waiting.
const OWNER_POLL: Duration = Duration::from_millis(100);
/// A forwarded request's own time, beyond the long poll it asks for.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// The client that forwards; one connection pool per replica.
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: reqwest::Client,
}

impl Forwarder {
    pub fn new() -> anyhow::Result<Forwarder> {
        Ok(Forwarder {
            client: reqwest::Client::builder()
                .no_proxy()
                .pool_idle_timeout(Duration::from_secs(60))
                .connect_timeout(Duration::from_secs(2))
                .build()?,
        })
    }
}

/// What a request for an order must do here.
enum Route {
    Local,
    /// Create anywhere: this replica owns no partition yet.
    AnyOwner,
    Order(Uuid),
}

/// Middleware on the order routes: forwards to the owner what needs its actor.
pub async fn to_owner(State(app): State<AppState>, request: Request, next: Next) -> Response {
    if !app.orchestrator.ownership().is_partitioned()
        || matches!(route_here(&app, &request), Route::Local)
    {
        return next.run(request).await;
    }
    if request.headers().contains_key(FORWARDED_BY) {
        return moving();
    }
    forward(&app, request, next).await
}

/// Where the request goes as ownership stands now.
fn route_here(app: &AppState, request: &Request) -> Route {
    let ownership = app.orchestrator.ownership();
    route(request, |id| ownership.serves(id), !ownership.owns_any())
}

fn route(request: &Request, serves: impl Fn(Uuid) -> bool, owns_none: bool) -> Route {
    let segments: Vec<&str> = request.uri().path().split('/').collect();
    match (request.method(), segments.as_slice()) {
        (&Method::POST, ["", "api", "orders"]) if owns_none => Route::AnyOwner,
        (&Method::POST, ["", "api", "admin", "orders", id, "resume"]) => {
            match Uuid::parse_str(id) {
                Ok(id) if !serves(id) => Route::Order(id),
                _ => Route::Local,
            }
        }
        (method, ["", "api", "orders", id, rest @ ..]) => {
            let Ok(id) = Uuid::parse_str(id) else {
                return Route::Local; // the handler answers the bad id
            };
            let long_poll = request.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p.starts_with("wait_ms=") && p != "wait_ms=0")
            });
            let needs_actor = match (method, rest) {
                (&Method::GET, []) => long_poll,
                (&Method::PATCH, ["status"]) | (&Method::POST, ["pay"]) => true,
                _ => false,
            };
            if needs_actor && !serves(id) {
                Route::Order(id)
            } else {
                Route::Local
            }
        }
        _ => Route::Local,
    }
}

/// Sends the request to the owner of its order's partition (any owner for a create),
/// waiting for one while the partition has none; answers it here if this replica becomes the
/// owner meanwhile (it just started, or got its ownership session back).
async fn forward(app: &AppState, request: Request, next: Next) -> Response {
    let ownership = app.orchestrator.ownership();
    let me = ownership.replica_id().unwrap_or_default().to_owned();
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, app.settings.body_limit_bytes).await else {
        return problem_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
                "the request body exceeds the limit",
            ),
        );
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let timeout = FORWARD_TIMEOUT + wait_of(&parts.uri);
    let deadline = Instant::now() + OWNER_WAIT;
    loop {
        let request = Request::from_parts(parts.clone(), Body::from(body.clone()));
        let id = match route_here(app, &request) {
            Route::Local => return next.run(request).await,
            Route::Order(id) => Some(id),
            Route::AnyOwner => None,
        };
        let partition = match id {
            Some(id) => ownership.partition_of(id),
            None => ownership.partition_of(Uuid::new_v4()),
        };
        let owner = partition
            .and_then(|p| ownership.owner(p))
            .filter(|o| o.replica_id != me);
        if let Some(owner) = owner {
            let url = format!("{}{path}", owner.url.trim_end_matches('/'));
            let mut headers = end_to_end(&parts.headers);
            if let Ok(value) = HeaderValue::from_str(&me) {
                headers.insert(HeaderName::from_static(FORWARDED_BY), value);
            }
            let sent = app
                .forwarder
                .client
                .request(parts.method.clone(), &url)
                .headers(headers)
                .body(body.clone())
                .timeout(timeout)
                .send()
                .await;
            match sent {
                Ok(answer) => {
                    metrics::counter!("requests_forwarded_total").increment(1);
                    return relay(answer).await;
                }
                // Not sent (the owner is gone): wait for its successor. Anything later
                // may have been acted on, and is not repeated.
                Err(error) if error.is_connect() => {
                    tracing::debug!(%error, owner = owner.replica_id, "owner unreachable; waiting for a new one");
                }
                Err(error) => {
                    tracing::warn!(%error, owner = owner.replica_id, "forwarding failed");
                    return moving();
                }
            }
        }
        if Instant::now() >= deadline {
            return moving();
        }
        tokio::time::sleep(OWNER_POLL).await;
    }
}

/// The long poll a request asks for (`wait_ms`), to extend its forwarding timeout.
fn wait_of(uri: &axum::http::Uri) -> Duration {
    uri.query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("wait_ms=")))
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// The headers of a request or response without the hop-by-hop ones.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in [
        header::CONNECTION,
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        out.remove(name);
    }
    out.remove("keep-alive");
    out
}

async fn relay(answer: reqwest::Response) -> Response {
    let status = answer.status();
    let headers = end_to_end(answer.headers());
    match answer.bytes().await {
        Ok(bytes) => {
            let mut response = (status, Body::from(bytes)).into_response();
            response.headers_mut().extend(headers);
            response
        }
        Err(error) => {
            tracing::warn!(%error, "reading the owner's answer failed");
            moving()
        }
    }
}

/// 503: the order's partition is changing owner; a retry in a second finds the new one.
fn moving() -> Response {
    let mut response = problem_response(
        StatusCode::SERVICE_UNAVAILABLE,
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "partition-moving",
            "Order's partition is changing owner",
            "the replica that owns this order is changing; retry shortly",
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("a request")
    }

    #[test]
    fn only_what_needs_the_owners_actor_is_forwarded() {
        let id = Uuid::now_v7();
        let elsewhere = |_| false;
        let forwarded = |m: Method, uri: String| matches!(route(&request(m, &uri), elsewhere, false), Route::Order(i) if i == id);
        assert!(forwarded(
            Method::GET,
            format!("/api/orders/{id}?wait_ms=500")
        ));
        assert!(forwarded(Method::PATCH, format!("/api/orders/{id}/status")));
        assert!(forwarded(Method::POST, format!("/api/orders/{id}/pay")));
        assert!(forwarded(
            Method::POST,
            format!("/api/admin/orders/{id}/resume")
        ));
        assert!(!forwarded(Method::GET, format!("/api/admin/orders/{id}")));
        assert!(!forwarded(Method::GET, format!("/api/orders/{id}")));
        assert!(!forwarded(
            Method::GET,
            format!("/api/orders/{id}?wait_ms=0")
        ));
        assert!(matches!(
            route(
                &request(Method::GET, "/api/orders/not-a-uuid?wait_ms=5"),
                elsewhere,
                false
            ),
            Route::Local
        ));
        // Owned here: never forwarded.
        let owned = request(Method::PATCH, &format!("/api/orders/{id}/status"));
        assert!(matches!(route(&owned, |_| true, false), Route::Local));
        // A create goes elsewhere only while this replica owns nothing.
        let create = request(Method::POST, "/api/orders");
        assert!(matches!(route(&create, elsewhere, false), Route::Local));
        assert!(matches!(route(&create, elsewhere, true), Route::AnyOwner));
    }

    #[test]
    fn hop_by_hop_headers_are_not_passed_on() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(header::HOST, HeaderValue::from_static("a:1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        headers.insert("idempotency-key", HeaderValue::from_static("k"));
        let kept = end_to_end(&headers);
        assert_eq!(kept.len(), 2);
        assert!(kept.contains_key(header::AUTHORIZATION) && kept.contains_key("idempotency-key"));
    }
}
