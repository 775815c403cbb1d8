//! Shipping: schedules shipments (a configurable fraction fails) and cancels them. One
//! shipment record per order (primary key); a cancel that arrives before the schedule
//! leaves a tombstone so the late schedule fails instead of shipping a dead order.

use crate::messaging::IncomingMessage;
use crate::messaging::messages::{CommandBody, Envelope, ReplyBody};
use crate::participants::{Applied, CommandHandler, decode, reply, roll};
use crate::persistence::outbox::NewMessage;
use chrono::Utc;
use entity::shipments;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

pub const SCHEDULED: &str = "SCHEDULED";
pub const FAILED: &str = "FAILED";
pub const CANCELLED: &str = "CANCELLED";

#[derive(Clone)]
pub struct Shipping {
    db: DatabaseConnection,
    outbox_wake: Arc<Notify>,
    /// Fraction of shipments that fail.
    failure_rate: f64,
}

impl Shipping {
    pub fn new(db: DatabaseConnection, outbox_wake: Arc<Notify>, failure_rate: f64) -> Self {
        Shipping {
            db,
            outbox_wake,
            failure_rate,
        }
    }

    #[tracing::instrument(name = "shipping.schedule", skip_all, fields(order_id = %order_id))]
    async fn schedule(
        &self,
        txn: &DatabaseTransaction,
        order_id: Uuid,
        headers: &BTreeMap<String, String>,
    ) -> Result<NewMessage, DbErr> {
        if let Some(existing) = shipments::Entity::find_by_id(order_id).one(txn).await? {
            let answer = match (existing.status.as_str(), existing.tracking_number) {
                (SCHEDULED, Some(tracking_number)) => {
                    ReplyBody::ShipmentScheduled { tracking_number }
                }
                _ => ReplyBody::ShipmentFailed {
                    reason: existing.reason.unwrap_or_else(|| "shipment failed".into()),
                },
            };
            return reply(order_id, answer, headers);
        }
        let (status, tracking, reason, answer) = if roll(self.failure_rate) {
            let reason = "no carrier available for this shipment".to_owned();
            (
                FAILED,
                None,
                Some(reason.clone()),
                ReplyBody::ShipmentFailed { reason },
            )
        } else {
            let tracking = format!("TRK-{}", &Uuid::new_v4().simple().to_string()[..12]);
            (
                SCHEDULED,
                Some(tracking.clone()),
                None,
                ReplyBody::ShipmentScheduled {
                    tracking_number: tracking,
                },
            )
        };
        insert_shipment(txn, order_id, status, tracking, reason).await?;
        tracing::info!(status, "shipment decided");
        reply(order_id, answer, headers)
    }

    #[tracing::instrument(name = "shipping.cancel", skip_all, fields(order_id = %order_id))]
    async fn cancel(
        &self,
        txn: &DatabaseTransaction,
        order_id: Uuid,
        headers: &BTreeMap<String, String>,
    ) -> Result<NewMessage, DbErr> {
        match shipments::Entity::find_by_id(order_id).one(txn).await? {
            Some(s) if s.status == SCHEDULED => {
                shipments::Entity::update_many()
                    .col_expr(shipments::Column::Status, CANCELLED.into())
                    .col_expr(shipments::Column::UpdatedAt, Utc::now().into())
                    .filter(shipments::Column::OrderId.eq(order_id))
                    .exec(txn)
                    .await?;
            }
            Some(_) => {}
            None => {
                insert_shipment(
                    txn,
                    order_id,
                    CANCELLED,
                    None,
                    Some("cancelled before scheduling".into()),
                )
                .await?;
            }
        }
        reply(order_id, ReplyBody::ShipmentCancelled {}, headers)
    }

    /// (order id, status) of every shipment record, for invariant checks.
    pub async fn all(&self) -> Result<Vec<(Uuid, String)>, DbErr> {
        Ok(shipments::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|s| (s.order_id, s.status))
            .collect())
    }
}

async fn insert_shipment<C: ConnectionTrait>(
    db: &C,
    order_id: Uuid,
    status: &str,
    tracking_number: Option<String>,
    reason: Option<String>,
) -> Result<(), DbErr> {
    let now = Utc::now();
    shipments::Entity::insert(shipments::ActiveModel {
        order_id: Set(order_id),
        status: Set(status.to_owned()),
        tracking_number: Set(tracking_number),
        reason: Set(reason),
        created_at: Set(now),
        updated_at: Set(now),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

impl CommandHandler for Shipping {
    fn store(&self) -> &DatabaseConnection {
        &self.db
    }

    fn outbox_wake(&self) -> &Notify {
        &self.outbox_wake
    }

    /// Applies one delivery from `shipping.commands`.
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        message: &IncomingMessage,
    ) -> Result<Applied, DbErr> {
        let envelope: Envelope<CommandBody> = match decode(message) {
            Ok(e) => e,
            Err(poison) => return Ok(poison),
        };
        let order_id = envelope.order_id;
        let answer = match envelope.body {
            CommandBody::ScheduleShipment { .. } => {
                self.schedule(txn, order_id, &message.headers).await?
            }
            CommandBody::CancelShipment {} => self.cancel(txn, order_id, &message.headers).await?,
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
