//! The order lifecycle as one pure function: `(saga, event) -> (saga', effects)`.
//!
//! Nothing here does I/O. The order actor feeds events in (participant replies, timeouts,
//! the dev payment endpoint, admin overrides), persists the resulting [`Saga`] together with
//! the [`Effect`]s in one transaction, and the outbox relay carries the effects out.
//! Every event that is not legal in the current state is a [`TransitionError`] value: the
//! actor logs it and changes nothing (late or duplicated replies end up here).
//!
//! # Transitions
//!
//! Every legal transition. "Publish" names the routing key on `order.events`; "send" names
//! the [`Command`] to a participant. Step states not mentioned are unchanged.
//!
//! | From | Event (condition) | To | Step states after | Effects, in order |
//! |---|---|---|---|---|
//! | *(new order)* | created | `PENDING` | reservation `REQUESTED`, payment `NOT_STARTED`, shipment `NOT_STARTED` | publish `order.created`; send `ReserveStock` |
//! | `PENDING` | `StockReserved` (payment mode auto) | `STOCK_RESERVED` | reservation `RESERVED`, payment `CHARGING` | publish `order.stock_reserved`; send `ChargePayment` (not forced) |
//! | `PENDING` | `StockReserved` (payment mode manual) | `STOCK_RESERVED` | reservation `RESERVED`, payment `AWAITING_MANUAL` | publish `order.stock_reserved` |
//! | `PENDING` | `StockRejected` | `REJECTED` | reservation `REJECTED` | publish `order.rejected` |
//! | `PENDING` | `StepTimedOut` (reservation) | `COMPENSATING` | reservation `RELEASING` | publish `order.failed`; send `ReleaseStock` |
//! | `PENDING` | `AdminOverride` to `REVERSED` | `COMPENSATING` | reservation `RELEASING` | publish `order.cancelled`; send `ReleaseStock` |
//! | `STOCK_RESERVED` | `PaymentSubmitted` (payment `AWAITING_MANUAL`) | `STOCK_RESERVED` | payment `CHARGING` | send `ChargePayment` (with the submitted forced outcome) |
//! | `STOCK_RESERVED` | `PaymentCharged` (payment `CHARGING`) | `PAID` | payment `CHARGED`, shipment `SCHEDULING` | publish `order.paid`; send `ScheduleShipment` |
//! | `STOCK_RESERVED` | `PaymentDeclined` (payment `CHARGING`) | `COMPENSATING` | payment `DECLINED`, reservation `RELEASING` | publish `order.failed`; send `ReleaseStock` |
//! | `STOCK_RESERVED` | `StepTimedOut` (payment; payment `CHARGING`) | `COMPENSATING` | payment `REFUNDING`, reservation `RELEASING` | publish `order.failed`; send `RefundPayment`, `ReleaseStock` |
//! | `STOCK_RESERVED` | `AdminOverride` to `REVERSED` (payment `CHARGING`) | `COMPENSATING` | payment `REFUNDING`, reservation `RELEASING` | publish `order.cancelled`; send `RefundPayment`, `ReleaseStock` |
//! | `STOCK_RESERVED` | `AdminOverride` to `REVERSED` (payment `AWAITING_MANUAL`) | `COMPENSATING` | payment `NOT_STARTED`, reservation `RELEASING` | publish `order.cancelled`; send `ReleaseStock` |
//! | `PAID` | `ShipmentScheduled` | `CONFIRMED` | shipment `SCHEDULED` | publish `order.confirmed` |
//! | `PAID` | `ShipmentFailed` | `COMPENSATING` | shipment `FAILED`, payment `REFUNDING`, reservation `RELEASING` | publish `order.failed`; send `RefundPayment`, `ReleaseStock` |
//! | `PAID` | `StepTimedOut` (shipment) | `COMPENSATING` | shipment `CANCELLING`, payment `REFUNDING`, reservation `RELEASING` | publish `order.failed`; send `CancelShipment`, `RefundPayment`, `ReleaseStock` |
//! | `PAID` | `AdminOverride` to `REVERSED` | `COMPENSATING` | shipment `CANCELLING`, payment `REFUNDING`, reservation `RELEASING` | publish `order.cancelled`; send `CancelShipment`, `RefundPayment`, `ReleaseStock` |
//! | `COMPENSATING` | `StockReleased` (reservation `RELEASING`), another undo still pending | `COMPENSATING` | reservation `RELEASED` | none |
//! | `COMPENSATING` | `StockReleased` (reservation `RELEASING`), nothing else pending | `REVERSED` | reservation `RELEASED` | publish `order.reversed` |
//! | `COMPENSATING` | `PaymentRefunded` (payment `REFUNDING`), another undo still pending | `COMPENSATING` | payment `REFUNDED` | none |
//! | `COMPENSATING` | `PaymentRefunded` (payment `REFUNDING`), nothing else pending | `REVERSED` | payment `REFUNDED` | publish `order.reversed` |
//! | `COMPENSATING` | `ShipmentCancelled` (shipment `CANCELLING`), another undo still pending | `COMPENSATING` | shipment `CANCELLED` | none |
//! | `COMPENSATING` | `ShipmentCancelled` (shipment `CANCELLING`), nothing else pending | `REVERSED` | shipment `CANCELLED` | publish `order.reversed` |
//!
//! "Pending" means reservation `RELEASING`, payment `REFUNDING` or `CHARGING`, or shipment
//! `CANCELLING` or `SCHEDULING`.
//!
//! # Failure reasons
//!
//! Entering `REJECTED` or `COMPENSATING` records `failure_reason`, which is then kept until
//! the end: the participant's reason for `StockRejected`, `PaymentDeclined` and
//! `ShipmentFailed`; "inventory did not answer in time", "payment did not answer in time" or
//! "shipping did not answer in time" for a timeout; `cancelled by admin: <reason>` for an
//! admin cancellation.
//!
//! # Refusals
//!
//! Everything not in the table is refused with a [`TransitionError`] and changes nothing:
//!
//! - `CONFIRMED`, `REJECTED`, `REVERSED` are terminal: any event is `Terminal`, except an
//!   `AdminOverride`, which is `OverrideNotAllowed` with an empty allowed list.
//! - `AdminOverride` to anything but `REVERSED` (including the current status), or while
//!   `COMPENSATING`, is `OverrideNotAllowed`, listing [`allowed_overrides`]: `REVERSED` from
//!   `PENDING`, `STOCK_RESERVED` and `PAID`, nothing otherwise.
//! - Any other event is `NotExpected`: replies and timeouts for a step that is not in flight,
//!   duplicates, late replies after compensation started, `PaymentSubmitted` unless the order
//!   awaits manual payment.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where the order is in its lifecycle. Serialized and stored as `SCREAMING_SNAKE_CASE` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Created; waiting for Inventory to reserve the stock.
    Pending,
    /// Stock held; payment requested (or awaiting the manual payment call).
    StockReserved,
    /// Payment captured; shipment requested.
    Paid,
    /// Shipment scheduled. Terminal.
    Confirmed,
    /// Inventory refused the reservation; nothing to undo. Terminal.
    Rejected,
    /// A step failed (or an admin cancelled): undoing the steps already done.
    Compensating,
    /// Every completed step has been undone. Terminal.
    Reversed,
}

/// State of the Inventory step of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReservationState {
    Requested,
    Reserved,
    Rejected,
    Releasing,
    Released,
}

/// State of the Payment step of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentState {
    NotStarted,
    /// Manual payment mode: waiting for `POST /api/orders/:id/pay`.
    AwaitingManual,
    Charging,
    Charged,
    Declined,
    Refunding,
    Refunded,
}

/// State of the Shipping step of one order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ShipmentState {
    NotStarted,
    Scheduling,
    Scheduled,
    Failed,
    Cancelling,
    Cancelled,
}

/// A saga step, named by timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Reservation,
    Payment,
    Shipment,
}

/// Whether the saga charges by itself after reservation or waits for the dev pay endpoint.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMode {
    #[default]
    Auto,
    Manual,
}

/// A forced outcome for a charge (dev pay endpoint); `None` lets the mock gateway decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentOutcome {
    Approve,
    Decline,
}

/// The whole saga state of one order: what the actor owns and the orders row stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saga {
    pub status: OrderStatus,
    pub reservation: ReservationState,
    pub payment: PaymentState,
    pub shipment: ShipmentState,
    /// Why the order did not (or will not) complete, once known.
    pub failure_reason: Option<String>,
}

/// Everything that can happen to an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    StockReserved,
    StockRejected {
        reason: String,
    },
    PaymentCharged,
    PaymentDeclined {
        reason: String,
    },
    ShipmentScheduled,
    ShipmentFailed {
        reason: String,
    },
    StockReleased,
    PaymentRefunded,
    ShipmentCancelled,
    /// A participant did not answer in time and retries are exhausted.
    StepTimedOut {
        step: Step,
    },
    /// The dev pay endpoint, for an order awaiting manual payment.
    PaymentSubmitted {
        forced: Option<PaymentOutcome>,
    },
    /// `PATCH /api/orders/:id/status`.
    AdminOverride {
        target: OrderStatus,
        reason: String,
    },
}

/// A command to a participant. The actor fills in the payload (items, amount) from the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    ReserveStock,
    ReleaseStock,
    ChargePayment { forced: Option<PaymentOutcome> },
    RefundPayment,
    ScheduleShipment,
    CancelShipment,
}

/// A lifecycle event for the `order.events` topic exchange (routing key `order.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleEvent {
    Created,
    StockReserved,
    Paid,
    Confirmed,
    Rejected,
    /// A step failed; compensation starts.
    Failed,
    /// An admin cancelled the order; compensation starts.
    Cancelled,
    Reversed,
}

/// What a transition asks the outside world to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Send(Command),
    Publish(LifecycleEvent),
}

/// The result of a legal event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub saga: Saga,
    pub effects: Vec<Effect>,
    /// Human-readable reason stored in the transition history.
    pub reason: String,
}

/// Why an event was refused. Never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("order is already {status} (terminal); {event} changes nothing")]
    Terminal {
        status: OrderStatus,
        event: &'static str,
    },
    #[error("{event} is not expected while the order is {status}")]
    NotExpected {
        status: OrderStatus,
        event: &'static str,
    },
    #[error("cannot change status from {from} to {to}; allowed: {}", list(allowed))]
    OverrideNotAllowed {
        from: OrderStatus,
        to: OrderStatus,
        allowed: Vec<OrderStatus>,
    },
}

fn list(statuses: &[OrderStatus]) -> String {
    if statuses.is_empty() {
        return "none".to_owned();
    }
    statuses
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 7] = [
        OrderStatus::Pending,
        OrderStatus::StockReserved,
        OrderStatus::Paid,
        OrderStatus::Confirmed,
        OrderStatus::Rejected,
        OrderStatus::Compensating,
        OrderStatus::Reversed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::StockReserved => "STOCK_RESERVED",
            OrderStatus::Paid => "PAID",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Rejected => "REJECTED",
            OrderStatus::Compensating => "COMPENSATING",
            OrderStatus::Reversed => "REVERSED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Confirmed | OrderStatus::Rejected | OrderStatus::Reversed
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text form used in the database and the API for the step states (and the participants'
/// record states).
macro_rules! text_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(<$ty>::$variant => $text),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(<$ty>::$variant),)+ _ => None }
            }
        }
    };
}
pub(crate) use text_enum;

text_enum!(ReservationState {
    Requested => "REQUESTED",
    Reserved => "RESERVED",
    Rejected => "REJECTED",
    Releasing => "RELEASING",
    Released => "RELEASED",
});
text_enum!(PaymentState {
    NotStarted => "NOT_STARTED",
    AwaitingManual => "AWAITING_MANUAL",
    Charging => "CHARGING",
    Charged => "CHARGED",
    Declined => "DECLINED",
    Refunding => "REFUNDING",
    Refunded => "REFUNDED",
});
text_enum!(ShipmentState {
    NotStarted => "NOT_STARTED",
    Scheduling => "SCHEDULING",
    Scheduled => "SCHEDULED",
    Failed => "FAILED",
    Cancelling => "CANCELLING",
    Cancelled => "CANCELLED",
});

impl Event {
    /// Every event's [`name`](Event::name), in declaration order.
    pub const NAMES: [&'static str; 12] = [
        "stock_reserved",
        "stock_rejected",
        "payment_charged",
        "payment_declined",
        "shipment_scheduled",
        "shipment_failed",
        "stock_released",
        "payment_refunded",
        "shipment_cancelled",
        "step_timed_out",
        "payment_submitted",
        "admin_override",
    ];

    /// Stable name, stored in the history and used in logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Event::StockReserved => "stock_reserved",
            Event::StockRejected { .. } => "stock_rejected",
            Event::PaymentCharged => "payment_charged",
            Event::PaymentDeclined { .. } => "payment_declined",
            Event::ShipmentScheduled => "shipment_scheduled",
            Event::ShipmentFailed { .. } => "shipment_failed",
            Event::StockReleased => "stock_released",
            Event::PaymentRefunded => "payment_refunded",
            Event::ShipmentCancelled => "shipment_cancelled",
            Event::StepTimedOut { .. } => "step_timed_out",
            Event::PaymentSubmitted { .. } => "payment_submitted",
            Event::AdminOverride { .. } => "admin_override",
        }
    }
}

impl LifecycleEvent {
    /// Routing key on the `order.events` exchange.
    pub fn routing_key(self) -> &'static str {
        match self {
            LifecycleEvent::Created => "order.created",
            LifecycleEvent::StockReserved => "order.stock_reserved",
            LifecycleEvent::Paid => "order.paid",
            LifecycleEvent::Confirmed => "order.confirmed",
            LifecycleEvent::Rejected => "order.rejected",
            LifecycleEvent::Failed => "order.failed",
            LifecycleEvent::Cancelled => "order.cancelled",
            LifecycleEvent::Reversed => "order.reversed",
        }
    }
}

/// The saga of a freshly created order and what creating it causes.
pub fn start() -> (Saga, Vec<Effect>) {
    (
        Saga {
            status: OrderStatus::Pending,
            reservation: ReservationState::Requested,
            payment: PaymentState::NotStarted,
            shipment: ShipmentState::NotStarted,
            failure_reason: None,
        },
        vec![
            Effect::Publish(LifecycleEvent::Created),
            Effect::Send(Command::ReserveStock),
        ],
    )
}

/// Statuses an admin may move an order to from its current state.
///
/// Only cancelling is offered, and only while nothing has been undone yet: once compensation
/// runs or the order is terminal there is nothing left for an admin to decide.
pub fn allowed_overrides(saga: &Saga) -> Vec<OrderStatus> {
    match saga.status {
        OrderStatus::Pending | OrderStatus::StockReserved | OrderStatus::Paid => {
            vec![OrderStatus::Reversed]
        }
        OrderStatus::Confirmed
        | OrderStatus::Rejected
        | OrderStatus::Compensating
        | OrderStatus::Reversed => Vec::new(),
    }
}

/// Applies one event. `mode` decides whether a reservation triggers the charge.
pub fn apply(saga: &Saga, event: &Event, mode: PaymentMode) -> Result<Transition, TransitionError> {
    // Overrides come first so that even a terminal order answers with the allowed list.
    if let Event::AdminOverride { target, reason } = event {
        return admin_override(saga, *target, reason);
    }
    let next = match saga.status {
        OrderStatus::Pending => on_pending(saga, event, mode),
        OrderStatus::StockReserved => on_stock_reserved(saga, event),
        OrderStatus::Paid => on_paid(saga, event),
        OrderStatus::Compensating => on_compensating(saga, event),
        OrderStatus::Confirmed | OrderStatus::Rejected | OrderStatus::Reversed => {
            return Err(TransitionError::Terminal {
                status: saga.status,
                event: event.name(),
            });
        }
    };
    next.ok_or(TransitionError::NotExpected {
        status: saga.status,
        event: event.name(),
    })
}

const RESERVATION_TIMEOUT: &str = "inventory did not answer in time";
const PAYMENT_TIMEOUT: &str = "payment did not answer in time";
const SHIPMENT_TIMEOUT: &str = "shipping did not answer in time";

// Each `on_*` handler returns `None` for an event it does not expect; `apply` turns that into
// `NotExpected`. Replies and timeouts are only accepted for the step actually in flight, so a
// duplicate or late reply can never move the order twice.

fn on_pending(saga: &Saga, event: &Event, mode: PaymentMode) -> Option<Transition> {
    if saga.reservation != ReservationState::Requested {
        return None;
    }
    match event {
        Event::StockReserved => {
            let mut effects = vec![Effect::Publish(LifecycleEvent::StockReserved)];
            let (payment, reason) = match mode {
                PaymentMode::Auto => {
                    effects.push(Effect::Send(Command::ChargePayment { forced: None }));
                    (PaymentState::Charging, "stock reserved")
                }
                PaymentMode::Manual => (
                    PaymentState::AwaitingManual,
                    "stock reserved; awaiting manual payment",
                ),
            };
            Some(Transition {
                saga: Saga {
                    status: OrderStatus::StockReserved,
                    reservation: ReservationState::Reserved,
                    payment,
                    ..saga.clone()
                },
                effects,
                reason: reason.to_owned(),
            })
        }
        Event::StockRejected { reason } => Some(Transition {
            saga: Saga {
                status: OrderStatus::Rejected,
                reservation: ReservationState::Rejected,
                failure_reason: Some(reason.clone()),
                ..saga.clone()
            },
            effects: vec![Effect::Publish(LifecycleEvent::Rejected)],
            reason: format!("stock rejected: {reason}"),
        }),
        // The reserve may still have happened: release anyway (Inventory tombstones a release
        // that overtakes its reserve).
        Event::StepTimedOut {
            step: Step::Reservation,
        } => Some(compensate(
            Saga {
                reservation: ReservationState::Releasing,
                ..saga.clone()
            },
            LifecycleEvent::Failed,
            RESERVATION_TIMEOUT.to_owned(),
            RESERVATION_TIMEOUT.to_owned(),
        )),
        _ => None,
    }
}

fn on_stock_reserved(saga: &Saga, event: &Event) -> Option<Transition> {
    match (event, saga.payment) {
        (Event::PaymentSubmitted { forced }, PaymentState::AwaitingManual) => Some(Transition {
            saga: Saga {
                payment: PaymentState::Charging,
                ..saga.clone()
            },
            effects: vec![Effect::Send(Command::ChargePayment { forced: *forced })],
            reason: "manual payment submitted".to_owned(),
        }),
        (Event::PaymentCharged, PaymentState::Charging) => Some(Transition {
            saga: Saga {
                status: OrderStatus::Paid,
                payment: PaymentState::Charged,
                shipment: ShipmentState::Scheduling,
                ..saga.clone()
            },
            effects: vec![
                Effect::Publish(LifecycleEvent::Paid),
                Effect::Send(Command::ScheduleShipment),
            ],
            reason: "payment charged".to_owned(),
        }),
        // Nothing was captured, so only the reservation needs undoing.
        (Event::PaymentDeclined { reason }, PaymentState::Charging) => Some(compensate(
            Saga {
                reservation: ReservationState::Releasing,
                payment: PaymentState::Declined,
                ..saga.clone()
            },
            LifecycleEvent::Failed,
            reason.clone(),
            format!("payment declined: {reason}"),
        )),
        // The charge may have happened: refund anyway (Payment voids a refund that overtakes
        // its charge).
        (
            Event::StepTimedOut {
                step: Step::Payment,
            },
            PaymentState::Charging,
        ) => Some(compensate(
            Saga {
                reservation: ReservationState::Releasing,
                payment: PaymentState::Refunding,
                ..saga.clone()
            },
            LifecycleEvent::Failed,
            PAYMENT_TIMEOUT.to_owned(),
            PAYMENT_TIMEOUT.to_owned(),
        )),
        _ => None,
    }
}

fn on_paid(saga: &Saga, event: &Event) -> Option<Transition> {
    if saga.shipment != ShipmentState::Scheduling {
        return None;
    }
    match event {
        Event::ShipmentScheduled => Some(Transition {
            saga: Saga {
                status: OrderStatus::Confirmed,
                shipment: ShipmentState::Scheduled,
                ..saga.clone()
            },
            effects: vec![Effect::Publish(LifecycleEvent::Confirmed)],
            reason: "shipment scheduled".to_owned(),
        }),
        // Shipping refused, so there is no shipment to cancel.
        Event::ShipmentFailed { reason } => Some(compensate(
            Saga {
                reservation: ReservationState::Releasing,
                payment: PaymentState::Refunding,
                shipment: ShipmentState::Failed,
                ..saga.clone()
            },
            LifecycleEvent::Failed,
            reason.clone(),
            format!("shipment failed: {reason}"),
        )),
        Event::StepTimedOut {
            step: Step::Shipment,
        } => Some(undo_paid(
            saga,
            LifecycleEvent::Failed,
            SHIPMENT_TIMEOUT.to_owned(),
        )),
        _ => None,
    }
}

fn on_compensating(saga: &Saga, event: &Event) -> Option<Transition> {
    let (next, ack) = match event {
        Event::StockReleased if saga.reservation == ReservationState::Releasing => (
            Saga {
                reservation: ReservationState::Released,
                ..saga.clone()
            },
            "stock released",
        ),
        Event::PaymentRefunded if saga.payment == PaymentState::Refunding => (
            Saga {
                payment: PaymentState::Refunded,
                ..saga.clone()
            },
            "payment refunded",
        ),
        Event::ShipmentCancelled if saga.shipment == ShipmentState::Cancelling => (
            Saga {
                shipment: ShipmentState::Cancelled,
                ..saga.clone()
            },
            "shipment cancelled",
        ),
        _ => return None,
    };
    if still_in_flight(&next) {
        return Some(Transition {
            saga: next,
            effects: Vec::new(),
            reason: ack.to_owned(),
        });
    }
    Some(Transition {
        saga: Saga {
            status: OrderStatus::Reversed,
            ..next
        },
        effects: vec![Effect::Publish(LifecycleEvent::Reversed)],
        reason: format!("{ack}; compensation complete"),
    })
}

fn admin_override(
    saga: &Saga,
    target: OrderStatus,
    reason: &str,
) -> Result<Transition, TransitionError> {
    let why = format!("cancelled by admin: {reason}");
    let cancelled = match (saga.status, target) {
        (OrderStatus::Pending, OrderStatus::Reversed) => compensate(
            Saga {
                reservation: ReservationState::Releasing,
                ..saga.clone()
            },
            LifecycleEvent::Cancelled,
            why.clone(),
            why,
        ),
        (OrderStatus::StockReserved, OrderStatus::Reversed) => {
            let payment = match saga.payment {
                PaymentState::Charging => PaymentState::Refunding,
                // Never charged: nothing to refund.
                PaymentState::AwaitingManual => PaymentState::NotStarted,
                other => other,
            };
            compensate(
                Saga {
                    reservation: ReservationState::Releasing,
                    payment,
                    ..saga.clone()
                },
                LifecycleEvent::Cancelled,
                why.clone(),
                why,
            )
        }
        (OrderStatus::Paid, OrderStatus::Reversed) => {
            undo_paid(saga, LifecycleEvent::Cancelled, why)
        }
        _ => {
            return Err(TransitionError::OverrideNotAllowed {
                from: saga.status,
                to: target,
                allowed: allowed_overrides(saga),
            });
        }
    };
    Ok(cancelled)
}

/// Undoes everything a paid order may have done; the shipment may have been scheduled
/// already, so it is cancelled too.
fn undo_paid(saga: &Saga, announce: LifecycleEvent, why: String) -> Transition {
    compensate(
        Saga {
            reservation: ReservationState::Releasing,
            payment: PaymentState::Refunding,
            shipment: ShipmentState::Cancelling,
            ..saga.clone()
        },
        announce,
        why.clone(),
        why,
    )
}

/// Enters COMPENSATING. `undo` already carries the step states; the commands follow from
/// them so the two can never disagree. Order: newest step first, stock last.
fn compensate(undo: Saga, announce: LifecycleEvent, failure: String, reason: String) -> Transition {
    let mut effects = vec![Effect::Publish(announce)];
    if undo.shipment == ShipmentState::Cancelling {
        effects.push(Effect::Send(Command::CancelShipment));
    }
    if undo.payment == PaymentState::Refunding {
        effects.push(Effect::Send(Command::RefundPayment));
    }
    if undo.reservation == ReservationState::Releasing {
        effects.push(Effect::Send(Command::ReleaseStock));
    }
    Transition {
        saga: Saga {
            status: OrderStatus::Compensating,
            failure_reason: Some(failure),
            ..undo
        },
        effects,
        reason,
    }
}

/// The commands whose answers the saga is waiting for — what a timeout resends.
/// Compensation first (as [`compensate`] orders them), then the forward step.
pub fn pending_commands(saga: &Saga) -> Vec<Command> {
    if saga.status.is_terminal() {
        return Vec::new();
    }
    let mut commands = Vec::new();
    if saga.shipment == ShipmentState::Cancelling {
        commands.push(Command::CancelShipment);
    }
    if saga.payment == PaymentState::Refunding {
        commands.push(Command::RefundPayment);
    }
    if saga.reservation == ReservationState::Releasing {
        commands.push(Command::ReleaseStock);
    }
    if saga.reservation == ReservationState::Requested {
        commands.push(Command::ReserveStock);
    }
    if saga.payment == PaymentState::Charging {
        commands.push(Command::ChargePayment { forced: None });
    }
    if saga.shipment == ShipmentState::Scheduling {
        commands.push(Command::ScheduleShipment);
    }
    commands
}

/// The forward step a timeout would give up on, if the saga is waiting for one
/// (compensation is never given up: it is retried until it completes).
pub fn forward_step(saga: &Saga) -> Option<Step> {
    match saga.status {
        OrderStatus::Pending if saga.reservation == ReservationState::Requested => {
            Some(Step::Reservation)
        }
        OrderStatus::StockReserved if saga.payment == PaymentState::Charging => Some(Step::Payment),
        OrderStatus::Paid if saga.shipment == ShipmentState::Scheduling => Some(Step::Shipment),
        _ => None,
    }
}

/// Whether some participant still owes the saga an answer.
fn still_in_flight(saga: &Saga) -> bool {
    saga.reservation == ReservationState::Releasing
        || matches!(
            saga.payment,
            PaymentState::Refunding | PaymentState::Charging
        )
        || matches!(
            saga.shipment,
            ShipmentState::Cancelling | ShipmentState::Scheduling
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event of each kind. The match stops compiling when a variant is added: list it
    /// here too, and its name in `Event::NAMES`.
    fn one_event_of_each_kind() -> Vec<Event> {
        let reason = String::new;
        let events = vec![
            Event::StockReserved,
            Event::StockRejected { reason: reason() },
            Event::PaymentCharged,
            Event::PaymentDeclined { reason: reason() },
            Event::ShipmentScheduled,
            Event::ShipmentFailed { reason: reason() },
            Event::StockReleased,
            Event::PaymentRefunded,
            Event::ShipmentCancelled,
            Event::StepTimedOut {
                step: Step::Payment,
            },
            Event::PaymentSubmitted { forced: None },
            Event::AdminOverride {
                target: OrderStatus::Reversed,
                reason: reason(),
            },
        ];
        for event in &events {
            match event {
                Event::StockReserved
                | Event::StockRejected { .. }
                | Event::PaymentCharged
                | Event::PaymentDeclined { .. }
                | Event::ShipmentScheduled
                | Event::ShipmentFailed { .. }
                | Event::StockReleased
                | Event::PaymentRefunded
                | Event::ShipmentCancelled
                | Event::StepTimedOut { .. }
                | Event::PaymentSubmitted { .. }
                | Event::AdminOverride { .. } => {}
            }
        }
        events
    }

    #[test]
    fn the_event_names_are_those_of_every_kind_of_event() {
        let names: Vec<_> = one_event_of_each_kind().iter().map(Event::name).collect();
        assert_eq!(names, Event::NAMES);
    }

    #[test]
    fn pending_commands_follow_the_step_states_and_forward_steps_time_out() {
        let (new, _) = start();
        assert_eq!(pending_commands(&new), vec![Command::ReserveStock]);
        assert_eq!(forward_step(&new), Some(Step::Reservation));
        let paid = apply(&new, &Event::StockReserved, PaymentMode::Auto)
            .and_then(|t| apply(&t.saga, &Event::PaymentCharged, PaymentMode::Auto))
            .expect("legal path")
            .saga;
        assert_eq!(pending_commands(&paid), vec![Command::ScheduleShipment]);
        let failed = apply(
            &paid,
            &Event::StepTimedOut {
                step: Step::Shipment,
            },
            PaymentMode::Auto,
        )
        .expect("timeout compensates")
        .saga;
        assert_eq!(
            pending_commands(&failed),
            vec![
                Command::CancelShipment,
                Command::RefundPayment,
                Command::ReleaseStock
            ]
        );
        assert_eq!(forward_step(&failed), None, "compensation never gives up");
        let manual = apply(&new, &Event::StockReserved, PaymentMode::Manual)
            .expect("legal")
            .saga;
        assert!(
            pending_commands(&manual).is_empty(),
            "waiting for a person, not a participant"
        );
        assert_eq!(forward_step(&manual), None);
    }

    type S = OrderStatus;
    type R = ReservationState;
    type P = PaymentState;
    type Sh = ShipmentState;
    type L = LifecycleEvent;
    type C = Command;

    const OUT_OF_STOCK: &str = "out of stock";
    const CARD_DECLINED: &str = "card declined";
    const NO_CARRIER: &str = "no carrier";
    const ADMIN: &str = "cancelled by admin: customer asked";
    // Spelled out rather than reusing the module's constants, so a typo there fails here.
    const INVENTORY_LATE: &str = "inventory did not answer in time";
    const PAYMENT_LATE: &str = "payment did not answer in time";
    const SHIPPING_LATE: &str = "shipping did not answer in time";

    // ---- builders -------------------------------------------------------------------------

    fn saga(status: S, reservation: R, payment: P, shipment: Sh, failure: Option<&str>) -> Saga {
        Saga {
            status,
            reservation,
            payment,
            shipment,
            failure_reason: failure.map(str::to_owned),
        }
    }

    fn publish(event: L) -> Effect {
        Effect::Publish(event)
    }

    fn send(command: C) -> Effect {
        Effect::Send(command)
    }

    fn stock_rejected() -> Event {
        Event::StockRejected {
            reason: OUT_OF_STOCK.to_owned(),
        }
    }

    fn payment_declined() -> Event {
        Event::PaymentDeclined {
            reason: CARD_DECLINED.to_owned(),
        }
    }

    fn shipment_failed() -> Event {
        Event::ShipmentFailed {
            reason: NO_CARRIER.to_owned(),
        }
    }

    fn timeout(step: Step) -> Event {
        Event::StepTimedOut { step }
    }

    fn submit(forced: Option<PaymentOutcome>) -> Event {
        Event::PaymentSubmitted { forced }
    }

    fn admin(target: S) -> Event {
        Event::AdminOverride {
            target,
            reason: "customer asked".to_owned(),
        }
    }

    /// Applies an event that must be legal.
    fn step(saga: &Saga, event: Event, mode: PaymentMode) -> Transition {
        match apply(saga, &event, mode) {
            Ok(transition) => transition,
            Err(error) => panic!("given {saga:?}, {event:?} was refused: {error}"),
        }
    }

    // ---- representative sagas per status --------------------------------------------------

    fn pending() -> Saga {
        saga(
            S::Pending,
            R::Requested,
            P::NotStarted,
            Sh::NotStarted,
            None,
        )
    }
    fn reserved_charging() -> Saga {
        saga(
            S::StockReserved,
            R::Reserved,
            P::Charging,
            Sh::NotStarted,
            None,
        )
    }
    fn reserved_awaiting_manual() -> Saga {
        saga(
            S::StockReserved,
            R::Reserved,
            P::AwaitingManual,
            Sh::NotStarted,
            None,
        )
    }
    fn paid() -> Saga {
        saga(S::Paid, R::Reserved, P::Charged, Sh::Scheduling, None)
    }
    fn confirmed() -> Saga {
        saga(S::Confirmed, R::Reserved, P::Charged, Sh::Scheduled, None)
    }
    fn rejected() -> Saga {
        saga(
            S::Rejected,
            R::Rejected,
            P::NotStarted,
            Sh::NotStarted,
            Some(OUT_OF_STOCK),
        )
    }
    /// After a decline: only the release is pending.
    fn compensating_release() -> Saga {
        let failure = Some(CARD_DECLINED);
        saga(
            S::Compensating,
            R::Releasing,
            P::Declined,
            Sh::NotStarted,
            failure,
        )
    }
    /// After a shipping failure: release and refund pending.
    fn compensating_release_refund() -> Saga {
        let failure = Some(NO_CARRIER);
        saga(
            S::Compensating,
            R::Releasing,
            P::Refunding,
            Sh::Failed,
            failure,
        )
    }
    /// After a shipping timeout: release, refund and cancel pending.
    fn compensating_all() -> Saga {
        let failure = Some(SHIPPING_LATE);
        saga(
            S::Compensating,
            R::Releasing,
            P::Refunding,
            Sh::Cancelling,
            failure,
        )
    }
    /// After a shipping failure, stock already released: only the refund pending.
    fn compensating_refund() -> Saga {
        let failure = Some(NO_CARRIER);
        saga(
            S::Compensating,
            R::Released,
            P::Refunding,
            Sh::Failed,
            failure,
        )
    }
    /// After a shipping timeout, release and refund done: only the cancel pending.
    fn compensating_cancel() -> Saga {
        let failure = Some(SHIPPING_LATE);
        saga(
            S::Compensating,
            R::Released,
            P::Refunded,
            Sh::Cancelling,
            failure,
        )
    }
    fn reversed() -> Saga {
        let failure = Some(SHIPPING_LATE);
        saga(
            S::Reversed,
            R::Released,
            P::Refunded,
            Sh::Cancelled,
            failure,
        )
    }

    // ---- the exhaustive table -------------------------------------------------------------

    type Expected = Result<(Saga, Vec<Effect>, &'static str), TransitionError>;
    type Row = (Event, Expected);

    /// Every event the table must cover, in the order each table lists them.
    fn all_events() -> Vec<Event> {
        vec![
            Event::StockReserved,
            stock_rejected(),
            Event::PaymentCharged,
            payment_declined(),
            Event::ShipmentScheduled,
            shipment_failed(),
            Event::StockReleased,
            Event::PaymentRefunded,
            Event::ShipmentCancelled,
            timeout(Step::Reservation),
            timeout(Step::Payment),
            timeout(Step::Shipment),
            submit(None),
            submit(Some(PaymentOutcome::Decline)),
            admin(S::Pending),
            admin(S::StockReserved),
            admin(S::Paid),
            admin(S::Confirmed),
            admin(S::Rejected),
            admin(S::Compensating),
            admin(S::Reversed),
        ]
    }

    fn ok(saga: Saga, effects: Vec<Effect>, reason: &'static str) -> Expected {
        Ok((saga, effects, reason))
    }
    fn not_expected(status: S, event: &'static str) -> Expected {
        Err(TransitionError::NotExpected { status, event })
    }
    fn terminal(status: S, event: &'static str) -> Expected {
        Err(TransitionError::Terminal { status, event })
    }
    fn refused(from: S, to: S, allowed: &[S]) -> Expected {
        Err(TransitionError::OverrideNotAllowed {
            from,
            to,
            allowed: allowed.to_vec(),
        })
    }

    fn pending_table(mode: PaymentMode) -> Vec<Row> {
        let ne = |event| not_expected(S::Pending, event);
        let no = |to| refused(S::Pending, to, &[S::Reversed]);
        vec![
            (
                Event::StockReserved,
                match mode {
                    PaymentMode::Auto => ok(
                        saga(
                            S::StockReserved,
                            R::Reserved,
                            P::Charging,
                            Sh::NotStarted,
                            None,
                        ),
                        vec![
                            publish(L::StockReserved),
                            send(C::ChargePayment { forced: None }),
                        ],
                        "stock reserved",
                    ),
                    PaymentMode::Manual => ok(
                        saga(
                            S::StockReserved,
                            R::Reserved,
                            P::AwaitingManual,
                            Sh::NotStarted,
                            None,
                        ),
                        vec![publish(L::StockReserved)],
                        "stock reserved; awaiting manual payment",
                    ),
                },
            ),
            (
                stock_rejected(),
                ok(
                    saga(
                        S::Rejected,
                        R::Rejected,
                        P::NotStarted,
                        Sh::NotStarted,
                        Some(OUT_OF_STOCK),
                    ),
                    vec![publish(L::Rejected)],
                    "stock rejected: out of stock",
                ),
            ),
            (Event::PaymentCharged, ne("payment_charged")),
            (payment_declined(), ne("payment_declined")),
            (Event::ShipmentScheduled, ne("shipment_scheduled")),
            (shipment_failed(), ne("shipment_failed")),
            (Event::StockReleased, ne("stock_released")),
            (Event::PaymentRefunded, ne("payment_refunded")),
            (Event::ShipmentCancelled, ne("shipment_cancelled")),
            (
                timeout(Step::Reservation),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::NotStarted,
                        Sh::NotStarted,
                        Some(INVENTORY_LATE),
                    ),
                    vec![publish(L::Failed), send(C::ReleaseStock)],
                    "inventory did not answer in time",
                ),
            ),
            (timeout(Step::Payment), ne("step_timed_out")),
            (timeout(Step::Shipment), ne("step_timed_out")),
            (submit(None), ne("payment_submitted")),
            (
                submit(Some(PaymentOutcome::Decline)),
                ne("payment_submitted"),
            ),
            (admin(S::Pending), no(S::Pending)),
            (admin(S::StockReserved), no(S::StockReserved)),
            (admin(S::Paid), no(S::Paid)),
            (admin(S::Confirmed), no(S::Confirmed)),
            (admin(S::Rejected), no(S::Rejected)),
            (admin(S::Compensating), no(S::Compensating)),
            (
                admin(S::Reversed),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::NotStarted,
                        Sh::NotStarted,
                        Some(ADMIN),
                    ),
                    vec![publish(L::Cancelled), send(C::ReleaseStock)],
                    ADMIN,
                ),
            ),
        ]
    }

    fn reserved_charging_table() -> Vec<Row> {
        let ne = |event| not_expected(S::StockReserved, event);
        let no = |to| refused(S::StockReserved, to, &[S::Reversed]);
        vec![
            (Event::StockReserved, ne("stock_reserved")),
            (stock_rejected(), ne("stock_rejected")),
            (
                Event::PaymentCharged,
                ok(
                    saga(S::Paid, R::Reserved, P::Charged, Sh::Scheduling, None),
                    vec![publish(L::Paid), send(C::ScheduleShipment)],
                    "payment charged",
                ),
            ),
            (
                payment_declined(),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::Declined,
                        Sh::NotStarted,
                        Some(CARD_DECLINED),
                    ),
                    vec![publish(L::Failed), send(C::ReleaseStock)],
                    "payment declined: card declined",
                ),
            ),
            (Event::ShipmentScheduled, ne("shipment_scheduled")),
            (shipment_failed(), ne("shipment_failed")),
            (Event::StockReleased, ne("stock_released")),
            (Event::PaymentRefunded, ne("payment_refunded")),
            (Event::ShipmentCancelled, ne("shipment_cancelled")),
            (timeout(Step::Reservation), ne("step_timed_out")),
            (
                timeout(Step::Payment),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::Refunding,
                        Sh::NotStarted,
                        Some(PAYMENT_LATE),
                    ),
                    vec![
                        publish(L::Failed),
                        send(C::RefundPayment),
                        send(C::ReleaseStock),
                    ],
                    "payment did not answer in time",
                ),
            ),
            (timeout(Step::Shipment), ne("step_timed_out")),
            (submit(None), ne("payment_submitted")),
            (
                submit(Some(PaymentOutcome::Decline)),
                ne("payment_submitted"),
            ),
            (admin(S::Pending), no(S::Pending)),
            (admin(S::StockReserved), no(S::StockReserved)),
            (admin(S::Paid), no(S::Paid)),
            (admin(S::Confirmed), no(S::Confirmed)),
            (admin(S::Rejected), no(S::Rejected)),
            (admin(S::Compensating), no(S::Compensating)),
            (
                admin(S::Reversed),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::Refunding,
                        Sh::NotStarted,
                        Some(ADMIN),
                    ),
                    vec![
                        publish(L::Cancelled),
                        send(C::RefundPayment),
                        send(C::ReleaseStock),
                    ],
                    ADMIN,
                ),
            ),
        ]
    }

    fn reserved_awaiting_manual_table() -> Vec<Row> {
        let ne = |event| not_expected(S::StockReserved, event);
        let no = |to| refused(S::StockReserved, to, &[S::Reversed]);
        let charging = saga(
            S::StockReserved,
            R::Reserved,
            P::Charging,
            Sh::NotStarted,
            None,
        );
        vec![
            (Event::StockReserved, ne("stock_reserved")),
            (stock_rejected(), ne("stock_rejected")),
            (Event::PaymentCharged, ne("payment_charged")),
            (payment_declined(), ne("payment_declined")),
            (Event::ShipmentScheduled, ne("shipment_scheduled")),
            (shipment_failed(), ne("shipment_failed")),
            (Event::StockReleased, ne("stock_released")),
            (Event::PaymentRefunded, ne("payment_refunded")),
            (Event::ShipmentCancelled, ne("shipment_cancelled")),
            (timeout(Step::Reservation), ne("step_timed_out")),
            (timeout(Step::Payment), ne("step_timed_out")),
            (timeout(Step::Shipment), ne("step_timed_out")),
            (
                submit(None),
                ok(
                    charging.clone(),
                    vec![send(C::ChargePayment { forced: None })],
                    "manual payment submitted",
                ),
            ),
            (
                submit(Some(PaymentOutcome::Decline)),
                ok(
                    charging,
                    vec![send(C::ChargePayment {
                        forced: Some(PaymentOutcome::Decline),
                    })],
                    "manual payment submitted",
                ),
            ),
            (admin(S::Pending), no(S::Pending)),
            (admin(S::StockReserved), no(S::StockReserved)),
            (admin(S::Paid), no(S::Paid)),
            (admin(S::Confirmed), no(S::Confirmed)),
            (admin(S::Rejected), no(S::Rejected)),
            (admin(S::Compensating), no(S::Compensating)),
            (
                admin(S::Reversed),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::NotStarted,
                        Sh::NotStarted,
                        Some(ADMIN),
                    ),
                    vec![publish(L::Cancelled), send(C::ReleaseStock)],
                    ADMIN,
                ),
            ),
        ]
    }

    fn paid_table() -> Vec<Row> {
        let ne = |event| not_expected(S::Paid, event);
        let no = |to| refused(S::Paid, to, &[S::Reversed]);
        let undo_all = vec![
            send(C::CancelShipment),
            send(C::RefundPayment),
            send(C::ReleaseStock),
        ];
        vec![
            (Event::StockReserved, ne("stock_reserved")),
            (stock_rejected(), ne("stock_rejected")),
            (Event::PaymentCharged, ne("payment_charged")),
            (payment_declined(), ne("payment_declined")),
            (
                Event::ShipmentScheduled,
                ok(
                    saga(S::Confirmed, R::Reserved, P::Charged, Sh::Scheduled, None),
                    vec![publish(L::Confirmed)],
                    "shipment scheduled",
                ),
            ),
            (
                shipment_failed(),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::Refunding,
                        Sh::Failed,
                        Some(NO_CARRIER),
                    ),
                    vec![
                        publish(L::Failed),
                        send(C::RefundPayment),
                        send(C::ReleaseStock),
                    ],
                    "shipment failed: no carrier",
                ),
            ),
            (Event::StockReleased, ne("stock_released")),
            (Event::PaymentRefunded, ne("payment_refunded")),
            (Event::ShipmentCancelled, ne("shipment_cancelled")),
            (timeout(Step::Reservation), ne("step_timed_out")),
            (timeout(Step::Payment), ne("step_timed_out")),
            (
                timeout(Step::Shipment),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::Refunding,
                        Sh::Cancelling,
                        Some(SHIPPING_LATE),
                    ),
                    [vec![publish(L::Failed)], undo_all.clone()].concat(),
                    "shipping did not answer in time",
                ),
            ),
            (submit(None), ne("payment_submitted")),
            (
                submit(Some(PaymentOutcome::Decline)),
                ne("payment_submitted"),
            ),
            (admin(S::Pending), no(S::Pending)),
            (admin(S::StockReserved), no(S::StockReserved)),
            (admin(S::Paid), no(S::Paid)),
            (admin(S::Confirmed), no(S::Confirmed)),
            (admin(S::Rejected), no(S::Rejected)),
            (admin(S::Compensating), no(S::Compensating)),
            (
                admin(S::Reversed),
                ok(
                    saga(
                        S::Compensating,
                        R::Releasing,
                        P::Refunding,
                        Sh::Cancelling,
                        Some(ADMIN),
                    ),
                    [vec![publish(L::Cancelled)], undo_all].concat(),
                    ADMIN,
                ),
            ),
        ]
    }

    /// CONFIRMED, REJECTED and REVERSED refuse everything the same way.
    fn terminal_table(status: S) -> Vec<Row> {
        let t = |event| terminal(status, event);
        let no = |to| refused(status, to, &[]);
        vec![
            (Event::StockReserved, t("stock_reserved")),
            (stock_rejected(), t("stock_rejected")),
            (Event::PaymentCharged, t("payment_charged")),
            (payment_declined(), t("payment_declined")),
            (Event::ShipmentScheduled, t("shipment_scheduled")),
            (shipment_failed(), t("shipment_failed")),
            (Event::StockReleased, t("stock_released")),
            (Event::PaymentRefunded, t("payment_refunded")),
            (Event::ShipmentCancelled, t("shipment_cancelled")),
            (timeout(Step::Reservation), t("step_timed_out")),
            (timeout(Step::Payment), t("step_timed_out")),
            (timeout(Step::Shipment), t("step_timed_out")),
            (submit(None), t("payment_submitted")),
            (
                submit(Some(PaymentOutcome::Decline)),
                t("payment_submitted"),
            ),
            (admin(S::Pending), no(S::Pending)),
            (admin(S::StockReserved), no(S::StockReserved)),
            (admin(S::Paid), no(S::Paid)),
            (admin(S::Confirmed), no(S::Confirmed)),
            (admin(S::Rejected), no(S::Rejected)),
            (admin(S::Compensating), no(S::Compensating)),
            (admin(S::Reversed), no(S::Reversed)),
        ]
    }

    /// One COMPENSATING table: the outcomes of the three undo acknowledgements are given
    /// (release, refund, cancel); everything else is refused.
    fn compensating_table(release: Expected, refund: Expected, cancel: Expected) -> Vec<Row> {
        let ne = |event| not_expected(S::Compensating, event);
        let no = |to| refused(S::Compensating, to, &[]);
        vec![
            (Event::StockReserved, ne("stock_reserved")),
            (stock_rejected(), ne("stock_rejected")),
            (Event::PaymentCharged, ne("payment_charged")),
            (payment_declined(), ne("payment_declined")),
            (Event::ShipmentScheduled, ne("shipment_scheduled")),
            (shipment_failed(), ne("shipment_failed")),
            (Event::StockReleased, release),
            (Event::PaymentRefunded, refund),
            (Event::ShipmentCancelled, cancel),
            (timeout(Step::Reservation), ne("step_timed_out")),
            (timeout(Step::Payment), ne("step_timed_out")),
            (timeout(Step::Shipment), ne("step_timed_out")),
            (submit(None), ne("payment_submitted")),
            (
                submit(Some(PaymentOutcome::Decline)),
                ne("payment_submitted"),
            ),
            (admin(S::Pending), no(S::Pending)),
            (admin(S::StockReserved), no(S::StockReserved)),
            (admin(S::Paid), no(S::Paid)),
            (admin(S::Confirmed), no(S::Confirmed)),
            (admin(S::Rejected), no(S::Rejected)),
            (admin(S::Compensating), no(S::Compensating)),
            (admin(S::Reversed), no(S::Reversed)),
        ]
    }

    fn compensating_release_table() -> Vec<Row> {
        let ne = |event| not_expected(S::Compensating, event);
        compensating_table(
            ok(
                saga(
                    S::Reversed,
                    R::Released,
                    P::Declined,
                    Sh::NotStarted,
                    Some(CARD_DECLINED),
                ),
                vec![publish(L::Reversed)],
                "stock released; compensation complete",
            ),
            ne("payment_refunded"),
            ne("shipment_cancelled"),
        )
    }

    fn compensating_release_refund_table() -> Vec<Row> {
        let ne = |event| not_expected(S::Compensating, event);
        compensating_table(
            ok(
                saga(
                    S::Compensating,
                    R::Released,
                    P::Refunding,
                    Sh::Failed,
                    Some(NO_CARRIER),
                ),
                vec![],
                "stock released",
            ),
            ok(
                saga(
                    S::Compensating,
                    R::Releasing,
                    P::Refunded,
                    Sh::Failed,
                    Some(NO_CARRIER),
                ),
                vec![],
                "payment refunded",
            ),
            ne("shipment_cancelled"),
        )
    }

    fn compensating_all_table() -> Vec<Row> {
        let failure = Some(SHIPPING_LATE);
        compensating_table(
            ok(
                saga(
                    S::Compensating,
                    R::Released,
                    P::Refunding,
                    Sh::Cancelling,
                    failure,
                ),
                vec![],
                "stock released",
            ),
            ok(
                saga(
                    S::Compensating,
                    R::Releasing,
                    P::Refunded,
                    Sh::Cancelling,
                    failure,
                ),
                vec![],
                "payment refunded",
            ),
            ok(
                saga(
                    S::Compensating,
                    R::Releasing,
                    P::Refunding,
                    Sh::Cancelled,
                    failure,
                ),
                vec![],
                "shipment cancelled",
            ),
        )
    }

    fn compensating_refund_table() -> Vec<Row> {
        let ne = |event| not_expected(S::Compensating, event);
        compensating_table(
            ne("stock_released"),
            ok(
                saga(
                    S::Reversed,
                    R::Released,
                    P::Refunded,
                    Sh::Failed,
                    Some(NO_CARRIER),
                ),
                vec![publish(L::Reversed)],
                "payment refunded; compensation complete",
            ),
            ne("shipment_cancelled"),
        )
    }

    fn compensating_cancel_table() -> Vec<Row> {
        let ne = |event| not_expected(S::Compensating, event);
        compensating_table(
            ne("stock_released"),
            ne("payment_refunded"),
            ok(
                saga(
                    S::Reversed,
                    R::Released,
                    P::Refunded,
                    Sh::Cancelled,
                    Some(SHIPPING_LATE),
                ),
                vec![publish(L::Reversed)],
                "shipment cancelled; compensation complete",
            ),
        )
    }

    /// (name, given saga, modes to run it in, expectations).
    fn the_table() -> Vec<(&'static str, Saga, Vec<PaymentMode>, Vec<Row>)> {
        use PaymentMode::{Auto, Manual};
        // Outside PENDING the mode must not matter, so those run in both modes unchanged.
        let both = || vec![Auto, Manual];
        vec![
            ("pending (auto)", pending(), vec![Auto], pending_table(Auto)),
            (
                "pending (manual)",
                pending(),
                vec![Manual],
                pending_table(Manual),
            ),
            (
                "stock reserved, charging",
                reserved_charging(),
                both(),
                reserved_charging_table(),
            ),
            (
                "stock reserved, awaiting manual payment",
                reserved_awaiting_manual(),
                both(),
                reserved_awaiting_manual_table(),
            ),
            ("paid", paid(), both(), paid_table()),
            (
                "confirmed",
                confirmed(),
                both(),
                terminal_table(S::Confirmed),
            ),
            ("rejected", rejected(), both(), terminal_table(S::Rejected)),
            (
                "compensating, release pending",
                compensating_release(),
                both(),
                compensating_release_table(),
            ),
            (
                "compensating, release and refund pending",
                compensating_release_refund(),
                both(),
                compensating_release_refund_table(),
            ),
            (
                "compensating, release, refund and cancel pending",
                compensating_all(),
                both(),
                compensating_all_table(),
            ),
            (
                "compensating, refund pending",
                compensating_refund(),
                both(),
                compensating_refund_table(),
            ),
            (
                "compensating, cancel pending",
                compensating_cancel(),
                both(),
                compensating_cancel_table(),
            ),
            ("reversed", reversed(), both(), terminal_table(S::Reversed)),
        ]
    }

    #[test]
    fn every_status_and_event_pair_has_exactly_the_specified_outcome() {
        let mut checked = 0;
        for (name, given, modes, rows) in the_table() {
            let events: Vec<Event> = rows.iter().map(|(event, _)| event.clone()).collect();
            assert_eq!(
                events,
                all_events(),
                "table for {name} must list every event"
            );
            for mode in modes {
                for (event, expected) in &rows {
                    let before = given.clone();
                    let actual = apply(&given, event, mode).map(|t| (t.saga, t.effects, t.reason));
                    let expected = expected
                        .clone()
                        .map(|(saga, effects, reason)| (saga, effects, reason.to_owned()));
                    assert_eq!(actual, expected, "given {name} ({mode:?}), when {event:?}");
                    assert_eq!(given, before, "the input saga is never changed");
                    checked += 1;
                }
            }
        }
        // 13 tables x 21 events; all but the two PENDING ones run in both modes.
        assert_eq!(checked, 21 * (2 + 11 * 2));
    }

    #[test]
    fn the_table_covers_every_status_and_every_event_variant() {
        for status in OrderStatus::ALL {
            assert!(
                the_table()
                    .iter()
                    .any(|(_, saga, _, _)| saga.status == status),
                "no table for {status}"
            );
        }
        // No wildcard: adding an Event variant breaks this until the table lists it.
        let variant = |event: &Event| match event {
            Event::StockReserved => 0,
            Event::StockRejected { .. } => 1,
            Event::PaymentCharged => 2,
            Event::PaymentDeclined { .. } => 3,
            Event::ShipmentScheduled => 4,
            Event::ShipmentFailed { .. } => 5,
            Event::StockReleased => 6,
            Event::PaymentRefunded => 7,
            Event::ShipmentCancelled => 8,
            Event::StepTimedOut { .. } => 9,
            Event::PaymentSubmitted { .. } => 10,
            Event::AdminOverride { .. } => 11,
        };
        let mut seen: Vec<usize> = all_events().iter().map(variant).collect();
        seen.dedup();
        assert_eq!(seen, (0..12).collect::<Vec<_>>());
        let targets: Vec<S> = all_events()
            .into_iter()
            .filter_map(|event| match event {
                Event::AdminOverride { target, .. } => Some(target),
                _ => None,
            })
            .collect();
        assert_eq!(targets, OrderStatus::ALL.to_vec());
    }

    // ---- paths ----------------------------------------------------------------------------

    #[test]
    fn a_happy_order_goes_from_start_to_confirmed_with_the_expected_effects() {
        // Given a new order
        let (created, mut effects) = start();
        assert_eq!(created, pending());

        // When inventory, payment and shipping all succeed
        let mut statuses = vec![created.status];
        let mut saga = created;
        for event in [
            Event::StockReserved,
            Event::PaymentCharged,
            Event::ShipmentScheduled,
        ] {
            let transition = step(&saga, event, PaymentMode::Auto);
            saga = transition.saga;
            statuses.push(saga.status);
            effects.extend(transition.effects);
        }

        // Then it is confirmed, each step done, and every step was requested and announced
        assert_eq!(
            statuses,
            [S::Pending, S::StockReserved, S::Paid, S::Confirmed]
        );
        assert_eq!(
            saga,
            saga_of(S::Confirmed, R::Reserved, P::Charged, Sh::Scheduled)
        );
        assert_eq!(
            effects,
            [
                publish(L::Created),
                send(C::ReserveStock),
                publish(L::StockReserved),
                send(C::ChargePayment { forced: None }),
                publish(L::Paid),
                send(C::ScheduleShipment),
                publish(L::Confirmed),
            ]
        );
    }

    fn saga_of(status: S, reservation: R, payment: P, shipment: Sh) -> Saga {
        saga(status, reservation, payment, shipment, None)
    }

    #[test]
    fn a_declined_payment_releases_the_stock_and_ends_reversed() {
        // Given an order whose stock is reserved and payment is charging
        let reserved = step(&pending(), Event::StockReserved, PaymentMode::Auto).saga;

        // When the payment is declined
        let failed = step(&reserved, payment_declined(), PaymentMode::Auto);

        // Then only the stock is released (nothing was charged)
        assert_eq!(failed.saga.status, S::Compensating);
        assert_eq!(failed.saga.payment, P::Declined);
        assert_eq!(failed.effects, [publish(L::Failed), send(C::ReleaseStock)]);
        assert_eq!(failed.reason, "payment declined: card declined");

        // And when inventory confirms the release, the order is reversed
        let done = step(&failed.saga, Event::StockReleased, PaymentMode::Auto);
        assert_eq!(
            done.saga,
            saga(
                S::Reversed,
                R::Released,
                P::Declined,
                Sh::NotStarted,
                Some(CARD_DECLINED)
            )
        );
        assert_eq!(done.effects, [publish(L::Reversed)]);
    }

    #[test]
    fn a_shipping_failure_refunds_and_releases_and_reverses_only_after_both_acks_in_either_order() {
        let orders = [
            [Event::PaymentRefunded, Event::StockReleased],
            [Event::StockReleased, Event::PaymentRefunded],
        ];
        for acks in orders {
            // Given a paid order whose shipment failed
            let failed = step(&paid(), shipment_failed(), PaymentMode::Auto);
            assert_eq!(
                failed.effects,
                [
                    publish(L::Failed),
                    send(C::RefundPayment),
                    send(C::ReleaseStock)
                ]
            );

            // When the first undo is acknowledged, it is still compensating, silently
            let [first, second] = acks.clone();
            let half = step(&failed.saga, first, PaymentMode::Auto);
            assert_eq!(half.saga.status, S::Compensating, "after {acks:?}");
            assert_eq!(half.effects, []);

            // Then only the second ack reverses it
            let done = step(&half.saga, second, PaymentMode::Auto);
            assert_eq!(
                done.saga,
                saga(
                    S::Reversed,
                    R::Released,
                    P::Refunded,
                    Sh::Failed,
                    Some(NO_CARRIER)
                )
            );
            assert_eq!(done.effects, [publish(L::Reversed)]);
        }
    }

    #[test]
    fn a_shipping_timeout_reverses_only_after_cancel_refund_and_release_in_any_order() {
        use Event::{PaymentRefunded as Rf, ShipmentCancelled as Cn, StockReleased as Rl};
        let orders = [
            [Rl, Rf, Cn],
            [Rl, Cn, Rf],
            [Rf, Rl, Cn],
            [Rf, Cn, Rl],
            [Cn, Rl, Rf],
            [Cn, Rf, Rl],
        ];
        for acks in orders {
            // Given a paid order whose shipment request timed out
            let mut saga = step(&paid(), timeout(Step::Shipment), PaymentMode::Auto).saga;
            // When the three undos are acknowledged in this order
            let mut statuses = Vec::new();
            for ack in acks.clone() {
                saga = step(&saga, ack, PaymentMode::Auto).saga;
                statuses.push(saga.status);
            }
            // Then it is reversed exactly at the last one
            assert_eq!(
                statuses,
                [S::Compensating, S::Compensating, S::Reversed],
                "{acks:?}"
            );
            assert_eq!(saga, reversed());
        }
    }

    #[test]
    fn a_reservation_timeout_releases_the_stock_and_a_late_reservation_is_refused() {
        // Given a pending order whose reservation timed out
        let timed_out = step(&pending(), timeout(Step::Reservation), PaymentMode::Auto);
        assert_eq!(
            timed_out.effects,
            [publish(L::Failed), send(C::ReleaseStock)]
        );

        // When inventory's late reservation arrives, it is refused
        assert_eq!(
            apply(&timed_out.saga, &Event::StockReserved, PaymentMode::Auto),
            Err(TransitionError::NotExpected {
                status: S::Compensating,
                event: "stock_reserved",
            })
        );

        // Then the release alone completes the compensation
        let done = step(&timed_out.saga, Event::StockReleased, PaymentMode::Auto);
        assert_eq!(done.saga.status, S::Reversed);
        assert_eq!(
            done.saga.failure_reason.as_deref(),
            Some("inventory did not answer in time")
        );
    }

    #[test]
    fn in_manual_mode_the_charge_waits_for_the_payment_submission_and_carries_its_forced_outcome() {
        // Given an order in manual payment mode whose stock was just reserved
        let reserved = step(&pending(), Event::StockReserved, PaymentMode::Manual);
        assert_eq!(reserved.saga, reserved_awaiting_manual());
        assert_eq!(
            reserved.effects,
            [publish(L::StockReserved)],
            "no charge yet"
        );

        // And a payment reply or a payment timeout now is unexpected (nothing was charged)
        for event in [Event::PaymentCharged, timeout(Step::Payment)] {
            let refused = apply(&reserved.saga, &event, PaymentMode::Manual);
            assert!(
                matches!(refused, Err(TransitionError::NotExpected { .. })),
                "{event:?}"
            );
        }

        // When the dev endpoint submits a forced approval
        let forced = Some(PaymentOutcome::Approve);
        let submitted = step(&reserved.saga, submit(forced), PaymentMode::Manual);

        // Then the charge is sent with that outcome, and a second submission is refused
        assert_eq!(submitted.saga, reserved_charging());
        assert_eq!(submitted.effects, [send(C::ChargePayment { forced })]);
        assert_eq!(
            apply(&submitted.saga, &submit(None), PaymentMode::Manual),
            Err(TransitionError::NotExpected {
                status: S::StockReserved,
                event: "payment_submitted",
            })
        );

        // And the rest of the saga is as in auto mode
        let paid_now = step(&submitted.saga, Event::PaymentCharged, PaymentMode::Manual);
        assert_eq!(paid_now.saga, paid());
    }

    #[test]
    fn a_duplicate_reply_is_refused_and_changes_nothing() {
        let mode = PaymentMode::Auto;
        let cases = [
            (pending(), Event::StockReserved),
            (reserved_charging(), Event::PaymentCharged),
            (paid(), Event::ShipmentScheduled),
            (compensating_release_refund(), Event::StockReleased),
            (compensating_all(), Event::ShipmentCancelled),
        ];
        for (given, reply) in cases {
            // Given the reply has been applied once
            let once = step(&given, reply.clone(), mode).saga;
            let snapshot = once.clone();

            // When it arrives again
            let again = apply(&once, &reply, mode);

            // Then it is refused (NotExpected, or Terminal if the first one finished the
            // order) and the saga is untouched
            let expected = if once.status.is_terminal() {
                TransitionError::Terminal {
                    status: once.status,
                    event: reply.name(),
                }
            } else {
                TransitionError::NotExpected {
                    status: once.status,
                    event: reply.name(),
                }
            };
            assert_eq!(again, Err(expected), "duplicate {reply:?}");
            assert_eq!(once, snapshot);
        }
    }

    #[test]
    fn a_reply_is_only_accepted_for_the_step_in_flight() {
        // Given sagas whose status says a step is in flight but whose step state says it is
        // not (a corrupted row), when the reply arrives, then it is refused rather than applied.
        let cases = [
            (
                saga_of(S::Pending, R::Reserved, P::NotStarted, Sh::NotStarted),
                Event::StockReserved,
            ),
            (
                saga_of(S::StockReserved, R::Reserved, P::Charged, Sh::NotStarted),
                Event::PaymentCharged,
            ),
            (
                saga_of(S::Paid, R::Reserved, P::Charged, Sh::Scheduled),
                Event::ShipmentScheduled,
            ),
        ];
        for (given, reply) in cases {
            assert_eq!(
                apply(&given, &reply, PaymentMode::Auto),
                Err(TransitionError::NotExpected {
                    status: given.status,
                    event: reply.name(),
                })
            );
        }
    }

    #[test]
    fn terminal_orders_refuse_every_event() {
        for given in [confirmed(), rejected(), reversed()] {
            for event in all_events() {
                let outcome = apply(&given, &event, PaymentMode::Auto);
                match &event {
                    Event::AdminOverride { target, .. } => assert_eq!(
                        outcome,
                        Err(TransitionError::OverrideNotAllowed {
                            from: given.status,
                            to: *target,
                            allowed: vec![],
                        })
                    ),
                    _ => assert_eq!(
                        outcome,
                        Err(TransitionError::Terminal {
                            status: given.status,
                            event: event.name(),
                        })
                    ),
                }
            }
        }
    }

    #[test]
    fn admin_overrides_offer_reversed_only_before_compensation_starts() {
        let cases = [
            (pending(), vec![S::Reversed]),
            (reserved_charging(), vec![S::Reversed]),
            (reserved_awaiting_manual(), vec![S::Reversed]),
            (paid(), vec![S::Reversed]),
            (confirmed(), vec![]),
            (rejected(), vec![]),
            (compensating_release(), vec![]),
            (compensating_all(), vec![]),
            (reversed(), vec![]),
        ];
        for (given, allowed) in cases {
            assert_eq!(allowed_overrides(&given), allowed, "from {}", given.status);
        }

        // Given a paid order, when an admin asks for CONFIRMED, then the refusal lists REVERSED
        let refusal = apply(&paid(), &admin(S::Confirmed), PaymentMode::Auto);
        let Err(error) = refusal else {
            panic!("override to CONFIRMED must be refused");
        };
        assert_eq!(
            error.to_string(),
            "cannot change status from PAID to CONFIRMED; allowed: REVERSED"
        );

        // And a terminal order says that nothing is allowed
        let refusal = apply(&confirmed(), &admin(S::Reversed), PaymentMode::Auto);
        let Err(error) = refusal else {
            panic!("override of a confirmed order must be refused");
        };
        assert_eq!(
            error.to_string(),
            "cannot change status from CONFIRMED to REVERSED; allowed: none"
        );

        // And an override to the current status is refused too
        assert_eq!(
            apply(&paid(), &admin(S::Paid), PaymentMode::Auto),
            Err(TransitionError::OverrideNotAllowed {
                from: S::Paid,
                to: S::Paid,
                allowed: vec![S::Reversed],
            })
        );
    }

    #[test]
    fn failure_reason_is_recorded_when_the_order_fails_and_kept_until_reversed() {
        let cases = [
            (pending(), stock_rejected(), OUT_OF_STOCK),
            (
                pending(),
                timeout(Step::Reservation),
                "inventory did not answer in time",
            ),
            (pending(), admin(S::Reversed), ADMIN),
            (reserved_charging(), payment_declined(), CARD_DECLINED),
            (
                reserved_charging(),
                timeout(Step::Payment),
                "payment did not answer in time",
            ),
            (reserved_awaiting_manual(), admin(S::Reversed), ADMIN),
            (paid(), shipment_failed(), NO_CARRIER),
            (
                paid(),
                timeout(Step::Shipment),
                "shipping did not answer in time",
            ),
            (paid(), admin(S::Reversed), ADMIN),
        ];
        for (given, failure, expected) in cases {
            // Given an order that fails this way
            let mut saga = step(&given, failure.clone(), PaymentMode::Auto).saga;
            assert_eq!(
                saga.failure_reason.as_deref(),
                Some(expected),
                "{failure:?}"
            );

            // When every pending undo is acknowledged
            for ack in [
                Event::ShipmentCancelled,
                Event::PaymentRefunded,
                Event::StockReleased,
            ] {
                if let Ok(next) = apply(&saga, &ack, PaymentMode::Auto) {
                    saga = next.saga;
                }
            }

            // Then the order has ended and still says why
            assert!(
                saga.status.is_terminal(),
                "{failure:?} ended as {}",
                saga.status
            );
            assert_eq!(
                saga.failure_reason.as_deref(),
                Some(expected),
                "{failure:?}"
            );
        }
    }

    #[test]
    fn a_successful_order_has_no_failure_reason() {
        let mut saga = start().0;
        for event in [
            Event::StockReserved,
            Event::PaymentCharged,
            Event::ShipmentScheduled,
        ] {
            saga = step(&saga, event, PaymentMode::Auto).saga;
            assert_eq!(saga.failure_reason, None);
        }
    }

    // ---- text forms -----------------------------------------------------------------------

    #[test]
    fn every_status_and_step_state_round_trips_through_its_text_form() {
        // The database stores `as_str`, serde writes JSON: both must be the same text.
        fn same_as_serde<T: Serialize>(value: &T, text: &str) {
            let json = serde_json::to_string(value).map_err(|e| e.to_string());
            assert_eq!(json, Ok(format!("\"{text}\"")));
        }
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
            same_as_serde(&s, s.as_str());
        }
        for s in [
            R::Requested,
            R::Reserved,
            R::Rejected,
            R::Releasing,
            R::Released,
        ] {
            assert_eq!(ReservationState::parse(s.as_str()), Some(s));
            same_as_serde(&s, s.as_str());
        }
        for s in [
            P::NotStarted,
            P::AwaitingManual,
            P::Charging,
            P::Charged,
            P::Declined,
            P::Refunding,
            P::Refunded,
        ] {
            assert_eq!(PaymentState::parse(s.as_str()), Some(s));
            same_as_serde(&s, s.as_str());
        }
        for s in [
            Sh::NotStarted,
            Sh::Scheduling,
            Sh::Scheduled,
            Sh::Failed,
            Sh::Cancelling,
            Sh::Cancelled,
        ] {
            assert_eq!(ShipmentState::parse(s.as_str()), Some(s));
            same_as_serde(&s, s.as_str());
        }
    }

    #[test]
    fn unknown_text_parses_to_none() {
        assert_eq!(OrderStatus::parse("pending"), None);
        assert_eq!(OrderStatus::parse(""), None);
        assert_eq!(ReservationState::parse("RESERVE"), None);
        assert_eq!(PaymentState::parse("PAID"), None);
        assert_eq!(ShipmentState::parse("SHIPPED"), None);
    }
}
