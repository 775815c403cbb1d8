//! Schemas that exist only to document responses in the OpenAPI document: the handlers
//! build these bodies as JSON, and the shapes here say what they hold.

use crate::domain::saga::OrderStatus;
use crate::domain::view::OrderSummary;
use crate::participants::inventory::StockView;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

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
