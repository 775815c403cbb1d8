//! Shipping: schedules shipments (a configurable fraction fails) and cancels them. One
//! shipment record per order (primary key); a cancel that arrives before the schedule
//! leaves a tombstone so the late schedule fails instead of shipping a dead order.

use crate::domain::saga::text_enum;
use crate::messaging::IncomingMessage;
use crate::messaging::messages::{CommandBody, Envelope, ReplyBody};
use crate::participants::{
    Applied, CommandHandler, Known, Txn, decode, order_keyed_store, reply, roll, stored_status,
};
use crate::persistence::outbox::{NewMessage, OutboxFeed};
use chrono::Utc;
use entity::shipments;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use std::collections::BTreeMap;
use uuid::Uuid;

/// State of a shipment record (`shipments.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipmentStatus {
    Scheduled,
    Failed,
    /// Cancelled after scheduling, or a tombstone: cancelled before any schedule.
    Cancelled,
}

text_enum!(ShipmentStatus {
    Scheduled => "SCHEDULED",
    Failed => "FAILED",
    Cancelled => "CANCELLED",
});

#[derive(Clone)]
pub struct Shipping {
    db: DatabaseConnection,
    outbox_feed: OutboxFeed,
    /// Fraction of shipments that fail.
    failure_rate: f64,
}

impl Shipping {
    pub fn new(db: DatabaseConnection, outbox_feed: OutboxFeed, failure_rate: f64) -> Self {
        Shipping {
            db,
            outbox_feed,
            failure_rate,
        }
    }

    #[tracing::instrument(name = "shipping.schedule", skip_all, fields(order_id = %order_id))]
    async fn schedule(
        &self,
        known: &mut Known<shipments::Model>,
        order_id: Uuid,
        headers: &BTreeMap<String, String>,
    ) -> Result<NewMessage, DbErr> {
        if let Some(existing) = known.get(order_id) {
            let status = stored_status(&existing.status, ShipmentStatus::parse)?;
            let answer = match (status, existing.tracking_number.clone()) {
                (ShipmentStatus::Scheduled, Some(tracking_number)) => {
                    ReplyBody::ShipmentScheduled { tracking_number }
                }
                _ => ReplyBody::ShipmentFailed {
                    reason: existing
                        .reason
                        .clone()
                        .unwrap_or_else(|| "shipment failed".into()),
                },
            };
            return reply(order_id, answer, headers);
        }
        let (status, tracking, reason, answer) = if roll(self.failure_rate) {
            let reason = "no carrier available for this shipment".to_owned();
            (
                ShipmentStatus::Failed,
                None,
                Some(reason.clone()),
                ReplyBody::ShipmentFailed { reason },
            )
        } else {
            let tracking = format!("TRK-{}", &Uuid::new_v4().simple().to_string()[..12]);
            (
                ShipmentStatus::Scheduled,
                Some(tracking.clone()),
                None,
                ReplyBody::ShipmentScheduled {
                    tracking_number: tracking,
                },
            )
        };
        known.create(order_id, shipment(order_id, status, tracking, reason));
        tracing::info!(status = status.as_str(), "shipment decided");
        reply(order_id, answer, headers)
    }

    #[tracing::instrument(name = "shipping.cancel", skip_all, fields(order_id = %order_id))]
    async fn cancel(
        &self,
        txn: Txn<'_>,
        known: &mut Known<shipments::Model>,
        order_id: Uuid,
        headers: &BTreeMap<String, String>,
    ) -> Result<NewMessage, DbErr> {
        let scheduled = match known.get(order_id) {
            Some(s) => {
                Some(stored_status(&s.status, ShipmentStatus::parse)? == ShipmentStatus::Scheduled)
            }
            None => None,
        };
        match scheduled {
            Some(true) => {
                let now = Utc::now();
                let stored = known.change(order_id, |s| {
                    s.status = ShipmentStatus::Cancelled.as_str().to_owned();
                    s.updated_at = now;
                });
                if stored {
                    shipments::Entity::update_many()
                        .col_expr(
                            shipments::Column::Status,
                            ShipmentStatus::Cancelled.as_str().into(),
                        )
                        .col_expr(shipments::Column::UpdatedAt, now.into())
                        .filter(shipments::Column::OrderId.eq(order_id))
                        .exec(txn.get()?)
                        .await?;
                }
            }
            Some(false) => {}
            None => {
                let tombstone = shipment(
                    order_id,
                    ShipmentStatus::Cancelled,
                    None,
                    Some("cancelled before scheduling".into()),
                );
                known.create(order_id, tombstone);
            }
        }
        reply(order_id, ReplyBody::ShipmentCancelled {}, headers)
    }

    /// (order id, status) of every shipment record, for invariant checks.
    pub async fn all(&self) -> Result<Vec<(Uuid, ShipmentStatus)>, DbErr> {
        shipments::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|s| Ok((s.order_id, stored_status(&s.status, ShipmentStatus::parse)?)))
            .collect()
    }
}

/// A new shipment record (inserted when its batch ends).
fn shipment(
    order_id: Uuid,
    status: ShipmentStatus,
    tracking_number: Option<String>,
    reason: Option<String>,
) -> shipments::Model {
    let now = Utc::now();
    shipments::Model {
        order_id,
        status: status.as_str().to_owned(),
        tracking_number,
        reason,
        created_at: now,
        updated_at: now,
    }
}

order_keyed_store!(Shipping, shipments);

impl CommandHandler for Shipping {
    type Store = Shipping;

    fn participant(&self) -> &Shipping {
        self
    }

    /// Applies one delivery from `shipping.commands`.
    async fn apply(
        &self,
        txn: Txn<'_>,
        known: &mut Known<shipments::Model>,
        _deferred: &mut (),
        message: &IncomingMessage,
    ) -> Result<Applied, DbErr> {
        let envelope: Envelope<CommandBody> = match decode(message) {
            Ok(e) => e,
            Err(poison) => return Ok(poison),
        };
        let order_id = envelope.order_id;
        let answer = match envelope.body {
            CommandBody::ScheduleShipment { .. } => {
                self.schedule(known, order_id, &message.headers).await?
            }
            CommandBody::CancelShipment {} => {
                self.cancel(txn, known, order_id, &message.headers).await?
            }
            other => {
                return Ok(Applied::Poison(format!(
                    "{} is not a shipping command",
                    other.kind()
                )));
            }
        };
        Ok(Applied::Replies(vec![answer]))
    }
}
