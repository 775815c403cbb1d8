//! An order's saga as a timeline: its stored history replayed through the state machine,
//! so each transition shows what it caused (the commands sent, the events published) and
//! the step states after it — facts the history does not store but the saga determines.
//! A resumption (an operator un-parking the order) resends the pending commands.

use crate::domain::saga::{
    self, Command, Effect, Event, LifecycleEvent, OrderStatus, PaymentMode, Saga,
};
use crate::domain::view::HistoryEntry;

/// The history events that are not saga events.
pub const PARKED: &str = "parked";
pub const RESUMED: &str = "resumed";

/// One history entry with what it caused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub entry: HistoryEntry,
    /// The saga event the entry records (`None` for the creation, a park or a resume, or an
    /// event this code does not know).
    pub event: Option<Event>,
    /// Since the entry before (zero for the first).
    pub spent_ms: i64,
    pub commands: Vec<Command>,
    pub published: Vec<LifecycleEvent>,
    /// The saga after the entry (`None` if the history could not be replayed this far).
    pub saga: Option<Saga>,
}

/// The saga event a history entry records, as far as it matters for what it caused (a
/// participant's reason only changes the failure text).
fn event_of(entry: &HistoryEntry, before: &Saga) -> Option<Event> {
    let reason = entry.reason.clone();
    Some(match entry.event.as_str() {
        "stock_reserved" => Event::StockReserved,
        "stock_rejected" => Event::StockRejected { reason },
        "payment_charged" => Event::PaymentCharged,
        "payment_declined" => Event::PaymentDeclined { reason },
        "shipment_scheduled" => Event::ShipmentScheduled,
        "shipment_failed" => Event::ShipmentFailed { reason },
        "stock_released" => Event::StockReleased,
        "payment_refunded" => Event::PaymentRefunded,
        "shipment_cancelled" => Event::ShipmentCancelled,
        "step_timed_out" => Event::StepTimedOut {
            step: saga::forward_step(before)?,
        },
        "payment_submitted" => Event::PaymentSubmitted { forced: None },
        "admin_override" => Event::AdminOverride {
            target: OrderStatus::Reversed,
            reason,
        },
        _ => return None,
    })
}

/// Replays `history` (oldest first) from the order's creation.
pub fn replay(history: &[HistoryEntry], mode: PaymentMode) -> Vec<Step> {
    let mut saga: Option<Saga> = None;
    let mut previous_at: Option<chrono::DateTime<chrono::Utc>> = None;
    history
        .iter()
        .map(|entry| {
            let mut event = None;
            let (next, effects) = match (&saga, entry.from) {
                (_, None) => {
                    let (started, effects) = saga::start();
                    (Some(started), effects)
                }
                (Some(before), Some(_)) if entry.event == PARKED => (Some(before.clone()), vec![]),
                (Some(before), Some(_)) if entry.event == RESUMED => (
                    Some(before.clone()),
                    saga::pending_commands(before)
                        .into_iter()
                        .map(Effect::Send)
                        .collect(),
                ),
                (Some(before), Some(_)) => {
                    event = event_of(entry, before);
                    match event
                        .as_ref()
                        .and_then(|e| saga::apply(before, e, mode).ok())
                    {
                        Some(transition) => (Some(transition.saga), transition.effects),
                        None => (None, vec![]),
                    }
                }
                (None, Some(_)) => (None, vec![]),
            };
            saga = next;
            let spent_ms = previous_at.map_or(0, |at| (entry.at - at).num_milliseconds());
            previous_at = Some(entry.at);
            Step {
                entry: entry.clone(),
                event,
                spent_ms,
                commands: effects
                    .iter()
                    .filter_map(|e| match e {
                        Effect::Send(c) => Some(*c),
                        Effect::Publish(_) => None,
                    })
                    .collect(),
                published: effects
                    .iter()
                    .filter_map(|e| match e {
                        Effect::Publish(p) => Some(*p),
                        Effect::Send(_) => None,
                    })
                    .collect(),
                saga: saga.clone(),
            }
        })
        .collect()
}

/// The event-stream type of one history entry: the lifecycle event its transition published
/// (`order.created` … `order.reversed`), `order.parked` / `order.resumed`, or `order.step`
/// for a step that changed without a status change (e.g. one undo of several done).
pub fn stream_type(from: Option<OrderStatus>, status: OrderStatus, event: &str) -> &'static str {
    use OrderStatus::*;
    match (from, status, event) {
        (_, _, PARKED) => "order.parked",
        (_, _, RESUMED) => "order.resumed",
        (None, _, _) => "order.created",
        (Some(a), b, _) if a == b => "order.step",
        (_, StockReserved, _) => "order.stock_reserved",
        (_, Paid, _) => "order.paid",
        (_, Confirmed, _) => "order.confirmed",
        (_, Rejected, _) => "order.rejected",
        (_, Compensating, "admin_override") => "order.cancelled",
        (_, Compensating, _) => "order.failed",
        (_, Reversed, _) => "order.reversed",
        (Some(_), Pending, _) => "order.step",
    }
}

/// Every type [`stream_type`] can give, for filters to check against.
pub const STREAM_TYPES: [&str; 11] = [
    "order.created",
    "order.stock_reserved",
    "order.paid",
    "order.confirmed",
    "order.rejected",
    "order.failed",
    "order.cancelled",
    "order.reversed",
    "order.parked",
    "order.resumed",
    "order.step",
];

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn entry(
        from: Option<OrderStatus>,
        status: OrderStatus,
        event: &str,
        at_ms: i64,
    ) -> HistoryEntry {
        HistoryEntry {
            from,
            status,
            event: event.into(),
            reason: "r".into(),
            at: Utc.timestamp_millis_opt(1_800_000_000_000 + at_ms).unwrap(),
        }
    }

    use OrderStatus::*;

    #[test]
    fn a_confirmed_order_shows_each_command_and_event_and_the_time_between() {
        let history = [
            entry(None, Pending, "created", 0),
            entry(Some(Pending), StockReserved, "stock_reserved", 40),
            entry(Some(StockReserved), Paid, "payment_charged", 100),
            entry(Some(Paid), Confirmed, "shipment_scheduled", 130),
        ];
        let steps = replay(&history, PaymentMode::Auto);
        let commands: Vec<_> = steps.iter().map(|s| s.commands.clone()).collect();
        assert_eq!(
            commands,
            [
                vec![Command::ReserveStock],
                vec![Command::ChargePayment { forced: None }],
                vec![Command::ScheduleShipment],
                vec![],
            ]
        );
        let published: Vec<_> = steps.iter().map(|s| s.published.clone()).collect();
        assert_eq!(
            published,
            [
                vec![LifecycleEvent::Created],
                vec![LifecycleEvent::StockReserved],
                vec![LifecycleEvent::Paid],
                vec![LifecycleEvent::Confirmed],
            ]
        );
        let spent: Vec<_> = steps.iter().map(|s| s.spent_ms).collect();
        assert_eq!(spent, [0, 40, 60, 30]);
        let last = steps.last().and_then(|s| s.saga.clone()).expect("replayed");
        assert_eq!(last.status, Confirmed);
        assert_eq!(last.shipment, saga::ShipmentState::Scheduled);
    }

    #[test]
    fn a_cancel_a_park_and_a_resume_show_the_compensation_and_the_resent_commands() {
        let history = [
            entry(None, Pending, "created", 0),
            entry(Some(Pending), StockReserved, "stock_reserved", 10),
            entry(Some(StockReserved), Paid, "payment_charged", 20),
            entry(Some(Paid), Compensating, "admin_override", 30),
            entry(Some(Compensating), Compensating, PARKED, 40),
            entry(Some(Compensating), Compensating, RESUMED, 50),
            entry(Some(Compensating), Compensating, "shipment_cancelled", 60),
            entry(Some(Compensating), Compensating, "payment_refunded", 70),
            entry(Some(Compensating), Reversed, "stock_released", 80),
        ];
        let steps = replay(&history, PaymentMode::Auto);
        assert_eq!(
            steps[3].commands,
            [
                Command::CancelShipment,
                Command::RefundPayment,
                Command::ReleaseStock
            ]
        );
        assert_eq!(steps[3].published, [LifecycleEvent::Cancelled]);
        assert!(steps[4].commands.is_empty(), "parking sends nothing");
        assert_eq!(
            steps[5].commands, steps[3].commands,
            "resuming resends what is pending"
        );
        assert_eq!(steps[8].published, [LifecycleEvent::Reversed]);
        assert!(steps.iter().all(|s| s.saga.is_some()));
        let types: Vec<_> = history
            .iter()
            .map(|e| stream_type(e.from, e.status, &e.event))
            .collect();
        assert_eq!(
            types,
            [
                "order.created",
                "order.stock_reserved",
                "order.paid",
                "order.cancelled",
                "order.parked",
                "order.resumed",
                "order.step",
                "order.step",
                "order.reversed",
            ]
        );
    }

    #[test]
    fn an_unknown_event_stops_the_replay_without_a_panic() {
        let history = [
            entry(None, Pending, "created", 0),
            entry(Some(Pending), StockReserved, "teleported", 10),
            entry(Some(StockReserved), Paid, "payment_charged", 20),
        ];
        let steps = replay(&history, PaymentMode::Auto);
        assert!(steps[0].saga.is_some());
        assert!(steps[1].saga.is_none() && steps[2].saga.is_none());
        assert!(steps[2].commands.is_empty());
    }

    #[test]
    fn every_stream_type_is_listed() {
        let statuses = [
            Pending,
            StockReserved,
            Paid,
            Confirmed,
            Rejected,
            Compensating,
            Reversed,
        ];
        for from in std::iter::once(None).chain(statuses.map(Some)) {
            for to in statuses {
                for event in [
                    "created",
                    "admin_override",
                    PARKED,
                    RESUMED,
                    "stock_released",
                ] {
                    let t = stream_type(from, to, event);
                    assert!(STREAM_TYPES.contains(&t), "{t}");
                }
            }
        }
    }
}
