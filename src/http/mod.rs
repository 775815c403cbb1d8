//! HTTP API (axum): one router per resource, merged here with the cross-cutting layers —
//! request tracing, body limit, panic catching, and problem+json for every error response,
//! including the ones axum produces itself (404, 405).

pub mod admin;
pub mod console;
pub mod edge;
pub mod errors;
pub mod events;
pub mod extractors;
pub mod forward;
pub mod health;
pub mod inventory;
pub mod openapi;
pub mod orders;
pub mod schema;
pub mod session;

use crate::messaging::Bus;
use crate::orchestrator::Orchestrator;
use crate::participants::inventory::Inventory;
use crate::persistence::Stores;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use errors::{ApiError, problem, problem_response};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};

/// HTTP-facing settings, taken from the configuration once.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub admin_token: Option<String>,
    pub dev_endpoints: bool,
    pub body_limit_bytes: usize,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub orchestrator: Orchestrator,
    pub stores: Stores,
    pub inventory: Inventory,
    pub bus: Bus,
    pub settings: Arc<HttpSettings>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Forwards what another replica must answer (several replicas).
    pub forwarder: forward::Forwarder,
    /// The order event stream's tailer and subscribers.
    pub events: events::EventHub,
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.body_limit_bytes;
    let metrics = state.metrics.clone();
    let to_owner = middleware::from_fn_with_state(state.clone(), forward::to_owner);
    Router::new()
        .merge(orders::router().route_layer(to_owner.clone()))
        .merge(inventory::router())
        .merge(health::router())
        .merge(admin::router().route_layer(to_owner))
        .merge(events::router())
        .merge(console::router())
        .merge(openapi::router())
        // Only matched routes: the route label stays a bounded set of templates.
        .route_layer(middleware::from_fn(track_http))
        .route(
            "/metrics",
            axum::routing::get(move |State(app): State<AppState>| {
                render_metrics(app, metrics.clone())
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            problem_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-error",
                    "Internal server error",
                    "",
                ),
            )
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(|response: &Response, latency, span: &tracing::Span| {
                    span.record("http.response.status_code", response.status().as_u16());
                    DefaultOnResponse::default().on_response(response, latency, span);
                }),
        )
        .with_state(state)
}

/// The span of one request; with a W3C `traceparent` header it continues the caller's
/// trace (see `telemetry::trace_context::adopt_parent`).
fn request_span(request: &Request) -> tracing::Span {
    let span = tracing::info_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    crate::telemetry::trace_context::adopt_parent(&span, traceparent);
    span
}

/// Counts and times every request by method, route template and status.
async fn track_http(request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`: Prometheus text exposition. Gauges of in-memory state are sampled here.
async fn render_metrics(
    app: AppState,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> Response {
    let stats = app.orchestrator.stats();
    metrics::gauge!("order_actors_live").set(app.orchestrator.live_actors() as f64);
    let ownership = app.orchestrator.ownership();
    if ownership.is_partitioned() {
        metrics::gauge!("partitions_owned").set(ownership.owned().len() as f64);
        metrics::gauge!("replicas_live").set(ownership.members() as f64);
    }
    metrics::counter!("order_actor_restarts_total")
        .absolute(stats.restarts.load(Ordering::Relaxed));
    metrics::counter!("orders_parked_total").absolute(stats.parked.load(Ordering::Relaxed));
    metrics::counter!("saga_step_retries_total").absolute(stats.retries.load(Ordering::Relaxed));
    metrics::counter!("saga_step_timeouts_total").absolute(stats.timeouts.load(Ordering::Relaxed));
    handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let status = StatusCode::METHOD_NOT_ALLOWED;
    problem_response(
        status,
        problem(
            status,
            "method-not-allowed",
            "Method not allowed",
            &format!("{method} is not allowed on {}", uri.path()),
        ),
    )
}
