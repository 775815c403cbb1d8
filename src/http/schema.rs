//! Schemas that exist only to document responses in the OpenAPI document: the handlers
//! build these bodies as JSON, and the shapes here say what they hold.

use crate::domain::saga::OrderStatus;
use crate::domain::view::OrderSummary;
use crate::participants::inventory::StockView;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, ToSchema};

/// An RFC 9457 problem document: the body of every error response
/// (`Content-Type: application/problem+json`). Besides the standard members a problem may
/// carry extension members, depending on its `type`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// Identifies the problem type: `/problems/<slug>`, e.g. `/problems/insufficient-stock`,
    /// `/problems/validation-error`, `/problems/idempotency-key-reused`.
    #[serde(rename = "type")]
    #[schema(format = "uri-reference", example = "/problems/insufficient-stock")]
    kind: String,
    /// Short summary of the problem type.
    #[schema(example = "Not enough stock")]
    title: String,
    /// The HTTP status code.
    #[schema(minimum = 100, maximum = 599, example = 409)]
    status: u16,
    /// What went wrong in this occurrence (absent on 500).
    #[schema(
        required = false,
        example = "requested 26 of MN-003, only 25 available"
    )]
    detail: String,
    /// `validation-error`: every problem found in the request, one message each.
    #[schema(required = false)]
    errors: Vec<String>,
    /// `transition-not-allowed`: the statuses the order may be changed to (may be empty).
    #[schema(required = false)]
    allowed: Vec<OrderStatus>,
    /// `transition-not-allowed`: the order's status.
    #[schema(required = false)]
    current_status: OrderStatus,
    /// `insufficient-stock`, `unknown-sku`, `stock-adjustment-refused`: the SKU concerned.
    #[schema(required = false)]
    sku: String,
    /// `insufficient-stock`: the quantity requested.
    #[schema(required = false)]
    requested: i64,
    /// `insufficient-stock`, `stock-adjustment-refused`: the quantity available.
    #[schema(required = false)]
    available: i64,
    /// `stock-adjustment-refused`: the quantity reserved by orders in progress.
    #[schema(required = false)]
    reserved: i64,
    /// `stock-adjustment-refused`: the change asked for.
    #[schema(required = false)]
    adjust: i64,
}

/// `GET /api/orders`: newest first.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OrderList {
    orders: Vec<OrderSummary>,
}

/// `GET /api/inventory`: every SKU, ordered by SKU.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StockList {
    items: Vec<StockView>,
}

/// `GET /health/live`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Liveness {
    #[schema(value_type = String, pattern = "^ok$", example = "ok")]
    status: &'static str,
}

/// Overall readiness.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ReadinessStatus {
    Ready,
    Unavailable,
}

/// Which broker the service uses.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum BrokerKind {
    Rabbitmq,
    InProcess,
}

/// `GET /health/ready`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    status: ReadinessStatus,
    checks: ReadinessChecks,
    order_actors: OrderActorStats,
    /// The partitions this replica owns (several replicas; PostgreSQL with RabbitMQ).
    /// `null` when one process owns every order (SQLite, or no broker).
    ownership: Option<OwnershipView>,
}

/// A replica's share of the orders' partitions.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OwnershipView {
    /// `REPLICA_ID` (default: the host name).
    #[schema(example = "order-service-1")]
    replica_id: String,
    /// How many partitions the orders are hashed into.
    #[schema(example = 32)]
    partitions: u16,
    /// The partitions this replica owns now.
    #[schema(example = json!([0, 1, 2]))]
    owned: Vec<u16>,
    /// Live replicas, as last counted (0 while this one's ownership session is down).
    #[schema(example = 3)]
    members: u64,
}

/// Each dependency: `ok`, or `unavailable: <why>`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ReadinessChecks {
    #[schema(example = "ok")]
    database: String,
    #[schema(example = "ok")]
    broker: String,
    broker_kind: BrokerKind,
    /// Several replicas only: whether this replica's ownership session is up.
    #[schema(example = "ok")]
    ownership: Option<String>,
}

/// Order actors; the counters count since the process started.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OrderActorStats {
    /// Actors alive now (orders being worked on).
    live: u64,
    /// Actor restarts after a panic.
    restarts: u64,
    /// Orders parked after a crash loop.
    parked: u64,
    /// Resends of pending commands (after a step timeout, or on start-up recovery).
    step_retries: u64,
    /// Forward steps given up after their resends (the saga compensated).
    step_timeouts: u64,
}

/// `GET /api/admin/invariants`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct InvariantReportBody {
    /// Every invariant holds: no violation, nothing in flight, nothing parked.
    holds: bool,
    /// Number of orders per status.
    orders_by_status: BTreeMap<String, u64>,
    /// Orders not yet terminal (and not parked); 0 once the system is quiet.
    in_flight: u64,
    /// Orders parked after a crash loop; they need an operator.
    parked: u64,
    /// One line per broken rule about money and stock; empty when consistent.
    violations: Vec<String>,
}

/// A problem+json response, optionally with one documented header.
fn problem(description: &str, header: Option<(&str, &str)>) -> RefOr<Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", content);
    if let Some((name, about)) = header {
        let string = ObjectBuilder::new().schema_type(Type::String).build();
        response = response.header(
            name,
            HeaderBuilder::new()
                .schema(string)
                .description(Some(about))
                .build(),
        );
    }
    RefOr::T(response.build())
}

fn responses<const N: usize>(
    list: [(&str, RefOr<Response>); N],
) -> BTreeMap<String, RefOr<Response>> {
    list.into_iter().map(|(s, r)| (s.to_owned(), r)).collect()
}

/// 500 and 503 of a handler whose only dependency is the database.
pub struct ServerErrors;

impl IntoResponses for ServerErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut out = UnexpectedError::responses();
        out.extend(responses([(
            "503",
            problem(
                "The database is unavailable; retry shortly",
                Some(("Retry-After", "Seconds to wait before retrying")),
            ),
        )]));
        out
    }
}

/// 500 and 503 of a handler whose only dependency is the broker (the dead letters).
pub struct BrokerErrors;

impl IntoResponses for BrokerErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let mut out = UnexpectedError::responses();
        out.extend(responses([(
            "503",
            problem(
                "The broker is unavailable; retry shortly",
                Some(("Retry-After", "Seconds to wait before retrying")),
            ),
        )]));
        out
    }
}

/// 500 alone, for handlers whose 503 says more.
pub struct UnexpectedError;

impl IntoResponses for UnexpectedError {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([(
            "500",
            problem("Unexpected failure (logged; no details)", None),
        )])
    }
}

/// 401 and 403 of an admin endpoint.
pub struct BearerErrors;

impl IntoResponses for BearerErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            (
                "401",
                problem("No bearer token", Some(("WWW-Authenticate", "`Bearer`"))),
            ),
            ("403", problem("Wrong bearer token", None)),
        ])
    }
}

/// 408, 413 and 415 of an endpoint that reads a JSON body.
pub struct BodyErrors;

impl IntoResponses for BodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        responses([
            (
                "408",
                problem(
                    "Body not in full within `HTTP_BODY_TIMEOUT_SECS` of the request head (the \
                     connection is then closed)",
                    None,
                ),
            ),
            ("413", problem("Body larger than `BODY_LIMIT_BYTES`", None)),
            (
                "415",
                problem("Body is not `Content-Type: application/json`", None),
            ),
        ])
    }
}
