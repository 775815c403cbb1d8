//! Admin endpoints for operators (and the console, which uses nothing else): the invariant
//! report, the overview, orders by filter, one order's saga as a timeline, resuming a
//! parked order, and the dead letters (list, replay, discard). All need the admin token or
//! the console's session (see `session`).

use crate::domain::saga::{OrderStatus, PaymentMode};
use crate::domain::text::OVERRIDE_REASON;
use crate::domain::view::OrderDetails;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::Admin;
use crate::http::extractors::{ApiPath, ApiQuery, RawBody};
use crate::http::orders::order_error;
use crate::http::schema::{
    BearerErrors, BrokerErrors, BrokerKind, InvariantReportBody, Problem, ServerErrors,
    UnexpectedError,
};
use crate::invariants;
use crate::messaging::BusError;
use crate::messaging::dead_letters::{Action, Listing, Which};
use crate::orchestrator::operator::{self as recent, OrderTimeline};
use crate::persistence::console::{OrderFilter, OrderLine};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/admin/invariants", get(invariant_report))
        .route("/api/admin/session", get(session_info))
        .route("/api/admin/overview", get(overview))
        .route("/api/admin/orders", get(list_orders))
        .route("/api/admin/orders/{id}", get(order_timeline))
        .route("/api/admin/orders/{id}/resume", post(resume))
        .route(
            "/api/admin/dead-letters",
            get(dead_letters).delete(discard_all),
        )
        .route("/api/admin/dead-letters/replay", post(replay_all))
        .route("/api/admin/dead-letters/{id}", delete(discard_one))
        .route("/api/admin/dead-letters/{id}/replay", post(replay_one))
}

/// Checks the money and stock invariants now. Meaningful once the system is quiet (in-flight
/// orders are reported as non-terminal). Reads every order: an operator tool, not a probe.
#[utoipa::path(
    get,
    path = "/api/admin/invariants",
    operation_id = "get_invariants",
    tag = "admin",
    summary = "The invariant report (admin)",
    description = "Checks the invariants now: stock conserved per SKU, every `CONFIRMED` \
        order paid and shipped, every `REVERSED`/`REJECTED` order holding no stock and no \
        un-refunded payment, no order left non-terminal. Meaningful once the system is \
        quiet; reads every order.",
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The report", body = InvariantReportBody),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        ServerErrors,
    )
)]
async fn invariant_report(
    State(app): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    // The check reads every order of every store, much of it synchronous decoding: on the
    // runtime's workers it would stall every saga for as long, so it runs on a blocking-pool
    // thread that drives its own queries.
    let stores = app.stores.clone();
    let runtime = tokio::runtime::Handle::current();
    let report =
        tokio::task::spawn_blocking(move || runtime.block_on(invariants::check(&stores, None)))
            .await
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("invariant check")))??;
    Ok(Json(json!({
        "holds": report.holds(),
        "orders_by_status": report.orders_by_status,
        "in_flight": report.in_flight,
        "parked": report.parked,
        "violations": report.violations,
    }))
    .into_response())
}

/// `GET /api/admin/session`.
#[derive(Serialize, ToSchema)]
pub struct SessionInfo {
    /// This replica's id (several replicas), else `null`.
    #[schema(required = true)]
    replica: Option<String>,
    /// Whether `POST /api/orders/{id}/pay` exists (`DEV_ENDPOINTS=true`).
    dev_endpoints: bool,
    /// The payment mode of new orders.
    payment_mode: PaymentMode,
    #[schema(value_type = BrokerKind)]
    broker: &'static str,
}

#[utoipa::path(
    get,
    path = "/api/admin/session",
    operation_id = "get_admin_session",
    tag = "admin",
    summary = "Who is answering (admin)",
    description = "Confirms the credentials (bearer token or console session) and says what \
        this replica offers: its id, whether the dev payment endpoint exists, the payment \
        mode, the broker.",
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The session", body = SessionInfo),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        UnexpectedError,
    )
)]
async fn session_info(State(app): State<AppState>, _admin: Admin) -> Json<SessionInfo> {
    Json(SessionInfo {
        replica: app.orchestrator.ownership().replica_id().map(str::to_owned),
        dev_endpoints: app.settings.dev_endpoints,
        payment_mode: app.orchestrator.payment_mode(),
        broker: app.bus.kind(),
    })
}

/// `GET /api/admin/overview`: one look at the whole system.
#[derive(Serialize, ToSchema)]
pub struct Overview {
    /// Orders per status now (every status present); `null` when the database is down.
    #[schema(required = true)]
    orders_by_status: Option<BTreeMap<&'static str, u64>>,
    /// Orders parked after a crash loop, waiting for an operator; `null` when the database
    /// is down.
    #[schema(required = true)]
    parked: Option<u64>,
    /// Messages waiting in `order.dead-letters`; `null` when the broker cannot say.
    #[schema(required = true)]
    dead_letters: Option<u64>,
    /// Outbox messages not yet published, all stores; `null` when the database is down.
    #[schema(required = true)]
    outbox_backlog: Option<u64>,
    /// Order actors alive in this replica.
    live_actors: u64,
    broker: BrokerState,
    database: DatabaseState,
    /// This replica's id (several replicas), else `null`.
    #[schema(required = true)]
    replica: Option<String>,
    /// The window `throughput` covers, and the width of one of its points.
    window_seconds: i64,
    bucket_seconds: i64,
    /// Sagas this replica finished, per bucket, oldest first (empty buckets included).
    throughput: Vec<ThroughputPoint>,
}

#[derive(Serialize, ToSchema)]
pub struct BrokerState {
    #[schema(value_type = BrokerKind)]
    kind: &'static str,
    connected: bool,
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseState {
    /// Every store answered.
    ok: bool,
}

/// Sagas that ended (any terminal status) in one bucket.
#[derive(Serialize, ToSchema)]
pub struct ThroughputPoint {
    /// When the bucket starts.
    at: DateTime<Utc>,
    completed: u64,
    per_second: f64,
    /// Saga duration percentiles (creation to end), within about 12%; `null` when none ended.
    #[schema(required = true)]
    p50_ms: Option<f64>,
    #[schema(required = true)]
    p99_ms: Option<f64>,
}

/// How long the overview waits for each of its sources.
const OVERVIEW_WAIT: Duration = Duration::from_secs(2);

#[utoipa::path(
    get,
    path = "/api/admin/overview",
    operation_id = "get_admin_overview",
    tag = "admin",
    summary = "The overview (admin)",
    description = "Orders per status, parked orders, dead letters, the outbox backlog, the \
        broker's and the database's state, live actors, and the sagas this replica finished \
        per 10 s over the last 5 minutes with their p50/p99 duration. A source that does not \
        answer within 2 s is `null`, not an error.",
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The overview", body = Overview),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        UnexpectedError,
    )
)]
async fn overview(State(app): State<AppState>, _admin: Admin) -> Json<Overview> {
    use tokio::time::timeout;
    let (counts, backlog, dead, ping) = tokio::join!(
        timeout(OVERVIEW_WAIT, app.orchestrator.counts()),
        timeout(OVERVIEW_WAIT, app.stores.outbox_backlog()),
        timeout(OVERVIEW_WAIT, app.bus.dead_letters(0)),
        timeout(OVERVIEW_WAIT, app.stores.ping()),
    );
    let (by_status, parked) = match counts {
        Ok(Ok((by_status, parked))) => (Some(by_status), Some(parked)),
        _ => (None, None),
    };
    let now = Utc::now().timestamp();
    let throughput = app
        .orchestrator
        .recent_sagas(now)
        .into_iter()
        .map(|p| ThroughputPoint {
            at: DateTime::from_timestamp(p.start, 0).unwrap_or_default(),
            completed: p.completed,
            per_second: p.per_second,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
        })
        .collect();
    Json(Overview {
        orders_by_status: by_status,
        parked,
        dead_letters: dead.ok().and_then(Result::ok).map(|l| l.total),
        outbox_backlog: backlog.ok().and_then(Result::ok),
        live_actors: app.orchestrator.live_actors() as u64,
        broker: BrokerState {
            kind: app.bus.kind(),
            connected: app.bus.is_connected(),
        },
        database: DatabaseState {
            ok: matches!(ping, Ok(Ok(()))),
        },
        replica: app.orchestrator.ownership().replica_id().map(str::to_owned),
        window_seconds: recent::BUCKET_SECS * recent::BUCKETS as i64,
        bucket_seconds: recent::BUCKET_SECS,
        throughput,
    })
}

/// The longest `customer` (a customer id's rule) and `q` (an Idempotency-Key's) filters.
const MAX_CUSTOMER: usize = 128;
const MAX_SEARCH: usize = 255;
/// Most orders one page lists, and how many when `limit` is absent.
const MAX_PAGE: u64 = 500;
const DEFAULT_PAGE: u64 = 50;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OrdersQuery {
    /// Only orders in this status.
    status: Option<OrderStatus>,
    /// Only this customer's orders.
    #[param(max_length = 128)]
    customer: Option<String>,
    /// Only orders created at or after this time (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Only orders created before this time (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// An order id or an `Idempotency-Key`: the order it names (while the key is kept).
    #[param(max_length = 255)]
    q: Option<String>,
    /// Only parked orders.
    parked: Option<bool>,
    /// The `next` of the page before.
    #[param(
        pattern = r"^[0-9]{1,16}_[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    before: Option<String>,
    /// How many orders (newest first).
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<u64>,
}

/// `GET /api/admin/orders`.
#[derive(Serialize, ToSchema)]
pub struct OperatorOrderList {
    orders: Vec<OrderLine>,
    /// Pass as `before` for the next page; `null` on the last page.
    #[schema(required = true)]
    next: Option<String>,
}

/// A page's cursor: the last order's creation time (microseconds) and id.
fn cursor(line: &OrderLine) -> String {
    format!("{}_{}", line.created_at.timestamp_micros(), line.id)
}

fn parse_cursor(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = text.split_once('_')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

#[utoipa::path(
    get,
    path = "/api/admin/orders",
    operation_id = "list_admin_orders",
    tag = "admin",
    summary = "Orders by filter, paged (admin)",
    description = "Newest first, filtered by status, customer, creation time and parked; \
        `q` finds one order by its id or by the `Idempotency-Key` that created it. Pages \
        follow `next`.",
    params(OrdersQuery),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The orders", body = OperatorOrderList),
        (status = 400, description = "Unknown status, `limit` outside 1-500, a malformed time, \
            cursor or query string", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        ServerErrors,
    )
)]
async fn list_orders(
    State(app): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<OrdersQuery>,
) -> Result<Response, ApiError> {
    let invalid = |detail: String| ApiError::bad_request("Invalid query string", detail);
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(invalid(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let too_long = |value: &Option<String>, max: usize| {
        value.as_ref().is_some_and(|v| v.chars().count() > max)
    };
    if too_long(&query.customer, MAX_CUSTOMER) || too_long(&query.q, MAX_SEARCH) {
        return Err(invalid(format!(
            "customer is at most {MAX_CUSTOMER} characters, q at most {MAX_SEARCH}"
        )));
    }
    let before = match query.before.as_deref() {
        None => None,
        Some(text) => Some(
            parse_cursor(text)
                .ok_or_else(|| invalid("before must be the `next` of an earlier page".into()))?,
        ),
    };
    let ids = match query.q.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(q) => {
            let mut ids: Vec<Uuid> = Uuid::parse_str(q).into_iter().collect();
            ids.extend(app.orchestrator.order_of_key(q).await?);
            Some(ids)
        }
    };
    let filter = OrderFilter {
        status: query.status,
        customer: query.customer,
        from: query.from,
        to: query.to,
        parked: query.parked.unwrap_or(false),
        ids,
        before,
    };
    // One more than asked tells whether another page follows.
    let mut orders = app.orchestrator.operator_orders(&filter, limit + 1).await?;
    let next = if orders.len() as u64 > limit {
        orders.truncate(limit as usize);
        orders.last().map(cursor)
    } else {
        None
    };
    Ok(Json(OperatorOrderList { orders, next }).into_response())
}

#[utoipa::path(
    get,
    path = "/api/admin/orders/{id}",
    operation_id = "get_admin_order",
    tag = "admin",
    summary = "One order's saga as a timeline (admin)",
    description = "The order, and its history replayed through the saga: each transition \
        with the time spent in the step before it, the commands it sent, the events it \
        published and the step states after it; and which operator actions are open now.",
    params(("id" = Uuid, Path, description = "Order id")),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The order and its timeline", body = OrderTimeline),
        (status = 400, description = "`id` is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such order, or admin endpoints are disabled (no \
            `ADMIN_TOKEN`)", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        ServerErrors,
    )
)]
async fn order_timeline(
    State(app): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let timeline = app
        .orchestrator
        .order_timeline(id, app.settings.dev_endpoints)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    Ok(Json(timeline).into_response())
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ResumeRequest {
    /// Recorded in the order's history; absent: "resumed by an operator".
    #[schema(schema_with = reason_schema)]
    reason: Option<String>,
}

fn reason_schema() -> utoipa::openapi::schema::Object {
    OVERRIDE_REASON.schema(
        "Recorded in the order's history; no control characters",
        "fixed the payment gateway's certificate",
        true,
    )
}

#[utoipa::path(
    post,
    path = "/api/admin/orders/{id}/resume",
    operation_id = "resume_order",
    tag = "admin",
    summary = "Resume a parked order (admin)",
    description = "Un-parks an order parked after a crash loop: through its actor (spawned by \
        the supervisor, its restart count fresh), recorded in its history as `resumed` with \
        the reason, and the commands its saga waits for resent, its step timer re-armed. The \
        body is optional.",
    params(("id" = Uuid, Path, description = "Order id")),
    request_body(content = ResumeRequest, content_type = "application/json",
        description = "Optional: an empty body is the same as `{}`"),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The order after resuming", body = OrderDetails),
        (status = 400, description = "`id` is not a UUID, malformed JSON or unreadable body",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or admin endpoints are disabled (no \
            `ADMIN_TOKEN`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not parked", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "A reason over 500 characters or with control \
            characters, wrong types or unknown fields", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The database or the order actor is unavailable; retry \
            shortly", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
        (status = 408, description = "Body not in full within `HTTP_BODY_TIMEOUT_SECS` of the \
            request head (the connection is then closed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "Body larger than `BODY_LIMIT_BYTES`", body = Problem,
            content_type = "application/problem+json"),
        BearerErrors,
        UnexpectedError,
    )
)]
#[tracing::instrument(name = "http.resume", skip_all, fields(order_id = %id))]
async fn resume(
    State(app): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
    body: RawBody,
) -> Result<Response, ApiError> {
    let request: ResumeRequest = body.optional_json()?;
    let reason = request
        .reason
        .unwrap_or_else(|| "resumed by an operator".into());
    OVERRIDE_REASON
        .check(&reason)
        .map_err(ApiError::validation)?;
    app.orchestrator
        .resume_parked(id, reason)
        .await
        .map_err(order_error)?;
    let order = app
        .orchestrator
        .order(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    Ok(Json(order).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeadLettersQuery {
    /// How many to list, from the head of the queue.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<usize>,
}

const MAX_DEAD_LETTERS_LISTED: usize = 1000;

fn bus_error(error: BusError) -> ApiError {
    match error {
        BusError::DeadLetter(detail) => {
            ApiError::conflict("dead-letter-not-replayable", "Cannot replay", detail)
        }
        other => {
            tracing::warn!(error = %other, "dead letters: broker unavailable");
            ApiError::Unavailable(format!("the broker is unavailable: {other}"))
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/admin/dead-letters",
    operation_id = "list_dead_letters",
    tag = "admin",
    summary = "Dead letters (admin)",
    description = "The messages waiting in `order.dead-letters`, from the head of the queue, \
        without consuming them: each with its queue of origin, the broker's reason, its \
        headers and (the first 4 KiB of) its body. `id` names it for a replay or a discard.",
    params(DeadLettersQuery),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The dead letters", body = Listing),
        (status = 400, description = "`limit` outside 1-1000 or a malformed query string",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        BrokerErrors,
    )
)]
async fn dead_letters(
    State(app): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<DeadLettersQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_DEAD_LETTERS_LISTED).contains(&limit) {
        return Err(ApiError::bad_request(
            "Invalid query string",
            format!("limit must be between 1 and {MAX_DEAD_LETTERS_LISTED}"),
        ));
    }
    let listing = app.bus.dead_letters(limit).await.map_err(bus_error)?;
    Ok(Json(listing).into_response())
}

/// `{"replayed": n}` or `{"discarded": n}`.
#[derive(Serialize, ToSchema)]
pub struct Replayed {
    replayed: usize,
}

#[derive(Serialize, ToSchema)]
pub struct Discarded {
    discarded: usize,
}

async fn settle(app: &AppState, which: Which<'_>, action: Action) -> Result<usize, ApiError> {
    let settled = app
        .bus
        .settle_dead_letters(which, action)
        .await
        .map_err(bus_error)?;
    if let Which::One(id) = which
        && settled == 0
    {
        return Err(ApiError::NotFound(format!(
            "no dead letter {id} (already replayed or discarded?)"
        )));
    }
    let action_name = match action {
        Action::Replay => "replayed",
        Action::Discard => "discarded",
    };
    tracing::warn!(
        count = settled,
        action = action_name,
        "dead letters settled by an operator"
    );
    metrics::counter!("dead_letters_settled_total", "action" => action_name)
        .increment(settled as u64);
    Ok(settled)
}

#[utoipa::path(
    post,
    path = "/api/admin/dead-letters/{id}/replay",
    operation_id = "replay_dead_letter",
    tag = "admin",
    summary = "Replay one dead letter (admin)",
    description = "Publishes the dead letter, as it was, to the queue it was rejected from, \
        where the same idempotent consumers take it again, and removes it from \
        `order.dead-letters`. Rejected again, it comes back as a new dead letter.",
    params(("id" = String, Path, description = "The dead letter's `id`")),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "Replayed", body = Replayed),
        (status = 404, description = "No such dead letter, or admin endpoints are disabled \
            (no `ADMIN_TOKEN`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It names no queue of origin, or that queue is gone; it \
            stays", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        BrokerErrors,
    )
)]
async fn replay_one(
    State(app): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let replayed = settle(&app, Which::One(&id), Action::Replay).await?;
    Ok(Json(Replayed { replayed }).into_response())
}

#[utoipa::path(
    post,
    path = "/api/admin/dead-letters/replay",
    operation_id = "replay_dead_letters",
    tag = "admin",
    summary = "Replay every dead letter (admin)",
    description = "Replays every dead letter waiting now (up to 10,000 at a time), each to the \
        queue it was rejected from. One that cannot be replayed stops the run with a 409; \
        those before it are replayed.",
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "How many were replayed", body = Replayed),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A dead letter names no queue of origin, or that queue is \
            gone", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        BrokerErrors,
    )
)]
async fn replay_all(State(app): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let replayed = settle(&app, Which::All, Action::Replay).await?;
    Ok(Json(Replayed { replayed }).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/admin/dead-letters/{id}",
    operation_id = "discard_dead_letter",
    tag = "admin",
    summary = "Discard one dead letter (admin)",
    params(("id" = String, Path, description = "The dead letter's `id`")),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "Discarded", body = Discarded),
        (status = 404, description = "No such dead letter, or admin endpoints are disabled \
            (no `ADMIN_TOKEN`)", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        BrokerErrors,
    )
)]
async fn discard_one(
    State(app): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let discarded = settle(&app, Which::One(&id), Action::Discard).await?;
    Ok(Json(Discarded { discarded }).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/admin/dead-letters",
    operation_id = "discard_dead_letters",
    tag = "admin",
    summary = "Discard every dead letter (admin)",
    description = "Removes every dead letter waiting now (up to 10,000 at a time).",
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "How many were discarded", body = Discarded),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        BrokerErrors,
    )
)]
async fn discard_all(State(app): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let discarded = settle(&app, Which::All, Action::Discard).await?;
    Ok(Json(Discarded { discarded }).into_response())
}
