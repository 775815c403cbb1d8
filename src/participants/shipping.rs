//! Shipping: schedules shipments (a configurable fraction fails) and cancels them. One
//! shipment record per order (primary key); a cancel that arrives before the schedule
//! leaves a tombstone so the late schedule fails instead of shipping a dead order.

use crate::messaging::IncomingMessage;
use crate::messaging::consumer::Disposition;
use crate::messaging::messages::{CommandBody, Envelope, ReplyBody};
use crate::participants::{decode, reply, roll, settle};
use crate::persistence::outbox;
use chrono::Utc;
use entity::shipments;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, TransactionTrait,
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

    /// Handles one delivery from `shipping.commands`.
    pub async fn on_command(&self, message: Arc<IncomingMessage>) -> Disposition {
        let envelope: Envelope<CommandBody> = match decode(&message) {
            Ok(e) => e,
            Err(poison) => return poison,
        };
        let order_id = envelope.order_id;
        let result = match envelope.body {
            CommandBody::ScheduleShipment { .. } => self.schedule(order_id, &message.headers).await,
            CommandBody::CancelShipment {} => self.cancel(order_id, &message.headers).await,
            other => {
                return Disposition::DeadLetter(format!(
                    "{} is not a shipping command",
                    other.kind()
                ));
            }
        };
        if result.is_ok() {
            self.outbox_wake.notify_one();
        }
        settle(result)
    }

    #[tracing::instrument(name = "shipping.schedule", skip_all, fields(order_id = %order_id))]
    async fn schedule(
        &self,
        order_id: Uuid,
        headers: &BTreeMap<String, String>,
    ) -> Result<(), DbErr> {
        if let Some(existing) = shipments::Entity::find_by_id(order_id)
            .one(&self.db)
            .await?
        {
            let answer = match (existing.status.as_str(), existing.tracking_number) {
                (SCHEDULED, Some(tracking_number)) => {
                    ReplyBody::ShipmentScheduled { tracking_number }
                }
                _ => ReplyBody::ShipmentFailed {
                    reason: existing.reason.unwrap_or_else(|| "shipment failed".into()),
                },
            };
            return outbox::enqueue(&self.db, &[reply(order_id, answer, headers)?]).await;
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
        let txn = self.db.begin().await?;
        insert_shipment(&txn, order_id, status, tracking, reason).await?;
        outbox::enqueue(&txn, &[reply(order_id, answer, headers)?]).await?;
        txn.commit().await?;
        tracing::info!(status, "shipment decided");
        Ok(())
    }

    #[tracing::instrument(name = "shipping.cancel", skip_all, fields(order_id = %order_id))]
    async fn cancel(
        &self,
        order_id: Uuid,
        headers: &BTreeMap<String, String>,
    ) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        match shipments::Entity::find_by_id(order_id).one(&txn).await? {
            Some(s) if s.status == SCHEDULED => {
                shipments::Entity::update_many()
                    .col_expr(shipments::Column::Status, CANCELLED.into())
                    .col_expr(shipments::Column::UpdatedAt, Utc::now().into())
                    .filter(shipments::Column::OrderId.eq(order_id))
                    .exec(&txn)
                    .await?;
            }
            Some(_) => {}
            None => {
                insert_shipment(
                    &txn,
                    order_id,
                    CANCELLED,
                    None,
                    Some("cancelled before scheduling".into()),
                )
                .await?;
            }
        }
        outbox::enqueue(
            &txn,
            &[reply(order_id, ReplyBody::ShipmentCancelled {}, headers)?],
        )
        .await?;
        txn.commit().await
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
