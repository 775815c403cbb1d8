//! What an operator reads: orders by filter, counts per status, one order's saga as a
//! timeline with what each step caused, the sagas finished lately, and the history as a
//! stream. Reads only; the operator's actions (cancel, pay, resume) go through the actors
//! like every other change.

use crate::domain::saga::{OrderStatus, PaymentMode};
use crate::domain::timeline;
use crate::domain::view::{HistoryEntry, OrderDetails, StepsView};
use crate::orchestrator::Orchestrator;
pub use crate::orchestrator::actors::recent::{BUCKET_SECS, BUCKETS, Point};
use crate::orchestrator::wire::{command_kind, reply_kind};
use crate::persistence::console::{self, OrderFilter, OrderLine, Transition};
use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// One history entry with what it caused.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub at: DateTime<Utc>,
    #[schema(required = true)]
    pub from: Option<OrderStatus>,
    pub status: OrderStatus,
    /// The saga event (`created`, `stock_reserved`, … `admin_override`, `parked`, `resumed`).
    pub event: String,
    pub reason: String,
    /// Milliseconds since the entry before (0 for the first): the time spent in that step.
    pub spent_ms: i64,
    /// The participant's reply that caused it, e.g. `stock.reserved` (`null` for the
    /// creation, a timeout, an operator's or the dev payment call, a park or a resume).
    #[schema(required = true)]
    pub received: Option<&'static str>,
    /// Commands this entry sent to participants, e.g. `stock.reserve`.
    pub commands: Vec<&'static str>,
    /// Events it published on `order.events`, e.g. `order.paid`.
    pub published: Vec<&'static str>,
    /// The step states after it (`null` if the history could not be replayed this far).
    #[schema(required = true)]
    pub steps: Option<StepsView>,
}

/// What an operator may do to the order now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Actions {
    /// Cancel with compensation (`PATCH /api/orders/{id}/status` to `REVERSED`).
    pub cancel: bool,
    /// Submit the manual payment (`POST /api/orders/{id}/pay`; dev endpoints only).
    pub pay: bool,
    /// Resume the parked order (`POST /api/admin/orders/{id}/resume`).
    pub resume: bool,
}

/// One order for an operator.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrderTimeline {
    pub order: OrderDetails,
    pub payment_mode: PaymentMode,
    pub timeline: Vec<TimelineEntry>,
    pub actions: Actions,
}

fn steps_view(saga: &crate::domain::saga::Saga) -> StepsView {
    StepsView {
        reservation: saga.reservation.as_str(),
        payment: saga.payment.as_str(),
        shipment: saga.shipment.as_str(),
    }
}

/// The timeline of `order` (its stored history replayed) and the actions open now.
pub fn order_timeline(
    order: OrderDetails,
    mode: PaymentMode,
    dev_endpoints: bool,
) -> OrderTimeline {
    let steps = timeline::replay(&order.history, mode);
    // The saga as the history leaves it decides what is allowed, as the actor will.
    let saga = steps.last().and_then(|s| s.saga.clone());
    let timeline = steps
        .into_iter()
        .map(|step| TimelineEntry {
            at: step.entry.at,
            from: step.entry.from,
            status: step.entry.status,
            event: step.entry.event,
            reason: step.entry.reason,
            spent_ms: step.spent_ms,
            received: step.event.as_ref().and_then(reply_kind),
            commands: step.commands.into_iter().map(command_kind).collect(),
            published: step
                .published
                .into_iter()
                .map(|e| e.routing_key())
                .collect(),
            steps: step.saga.as_ref().map(steps_view),
        })
        .collect();
    let parked = order.parked_reason.is_some();
    let actions = Actions {
        cancel: !parked
            && saga
                .as_ref()
                .is_some_and(|s| !crate::domain::saga::allowed_overrides(s).is_empty()),
        pay: !parked
            && dev_endpoints
            && order.status == OrderStatus::StockReserved
            && order.steps.payment == "AWAITING_MANUAL",
        resume: parked,
    };
    OrderTimeline {
        order,
        payment_mode: mode,
        timeline,
        actions,
    }
}

impl Orchestrator {
    /// Orders newest first by `filter`, at most `limit`.
    pub async fn operator_orders(
        &self,
        filter: &OrderFilter,
        limit: u64,
    ) -> Result<Vec<OrderLine>, DbErr> {
        console::orders(&self.db, filter, limit).await
    }

    /// The order an Idempotency-Key made, while the key is kept.
    pub async fn order_of_key(&self, key: &str) -> Result<Option<Uuid>, DbErr> {
        console::order_of_key(&self.db, key).await
    }

    /// Orders per status now, and how many are parked.
    pub async fn counts(&self) -> Result<(BTreeMap<&'static str, u64>, u64), DbErr> {
        console::counts(&self.db).await
    }

    /// One order with its timeline; `None` if there is no such order.
    pub async fn order_timeline(
        &self,
        id: Uuid,
        dev_endpoints: bool,
    ) -> Result<Option<OrderTimeline>, DbErr> {
        Ok(crate::persistence::orders::details_and_mode(&self.db, id)
            .await?
            .map(|(order, mode)| order_timeline(order, mode, dev_endpoints)))
    }

    /// Sagas finished by this process per bucket over the last minutes, up to `now`.
    pub fn recent_sagas(&self, now: i64) -> Vec<Point> {
        self.stats().finished.points(now)
    }

    /// History entries after `seq`, in order (one order's, with `order_id`).
    pub async fn transitions_after(
        &self,
        seq: i64,
        order_id: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Transition>, DbErr> {
        console::transitions_after(&self.db, seq, order_id, limit).await
    }

    /// The newest history entry's `seq`.
    pub async fn last_transition(&self) -> Result<i64, DbErr> {
        console::last_transition(&self.db).await
    }

    /// The payment mode new orders get.
    pub fn payment_mode(&self) -> PaymentMode {
        self.settings.payment_mode
    }
}

/// A history entry as the event stream and the console show it.
pub fn stream_type(entry: &HistoryEntry) -> &'static str {
    timeline::stream_type(entry.from, entry.status, &entry.event)
}
