//! Payment: a mock gateway that declines a configurable fraction of charges, and refunds.
//! One payment record per order (primary key): a repeated charge answers with the first
//! outcome, a repeated refund refunds once, and a refund that arrives before its charge
//! voids the order so the late charge is declined instead of taking money.

use crate::domain::saga::{PaymentOutcome, text_enum};
use crate::messaging::IncomingMessage;
use crate::messaging::messages::{CommandBody, Envelope, ReplyBody};
use crate::participants::{
    Applied, CommandHandler, Known, Txn, decode, order_keyed_store, reply, roll, stored_status,
};
use crate::persistence::outbox::{NewMessage, OutboxFeed};
use chrono::Utc;
use entity::payments;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use std::collections::BTreeMap;
use uuid::Uuid;

/// State of a payment record (`payments.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Charged,
    Declined,
    Refunded,
    /// A refund arrived before any charge: no charge may succeed for this order any more.
    Voided,
}

text_enum!(PaymentStatus {
    Charged => "CHARGED",
    Declined => "DECLINED",
    Refunded => "REFUNDED",
    Voided => "VOIDED",
});

#[derive(Clone)]
pub struct Payment {
    db: DatabaseConnection,
    outbox_feed: OutboxFeed,
    /// Fraction of charges the mock gateway declines.
    decline_rate: f64,
}

impl Payment {
    pub fn new(db: DatabaseConnection, outbox_feed: OutboxFeed, decline_rate: f64) -> Self {
        Payment {
            db,
            outbox_feed,
            decline_rate,
        }
    }

    #[tracing::instrument(name = "payment.charge", skip_all, fields(order_id = %order_id))]
    async fn charge(
        &self,
        known: &mut Known<payments::Model>,
        order_id: Uuid,
        amount_cents: i64,
        currency: String,
        forced: Option<PaymentOutcome>,
        headers: &BTreeMap<String, String>,
    ) -> Result<NewMessage, DbErr> {
        if let Some(existing) = known.get(order_id) {
            let answer = match stored_status(&existing.status, PaymentStatus::parse)? {
                PaymentStatus::Charged => ReplyBody::PaymentCharged {
                    amount_cents: existing.amount_cents,
                },
                PaymentStatus::Voided | PaymentStatus::Refunded => ReplyBody::PaymentDeclined {
                    reason: "payment was voided".into(),
                },
                PaymentStatus::Declined => ReplyBody::PaymentDeclined {
                    reason: existing.reason.clone().unwrap_or_else(|| "declined".into()),
                },
            };
            return reply(order_id, answer, headers);
        }
        let declined = match forced {
            Some(PaymentOutcome::Approve) => false,
            Some(PaymentOutcome::Decline) => true,
            None => roll(self.decline_rate),
        };
        let (status, reason, answer) = if declined {
            let reason = "card declined by the payment gateway".to_owned();
            (
                PaymentStatus::Declined,
                Some(reason.clone()),
                ReplyBody::PaymentDeclined { reason },
            )
        } else {
            (
                PaymentStatus::Charged,
                None,
                ReplyBody::PaymentCharged { amount_cents },
            )
        };
        known.create(
            order_id,
            payment(order_id, status, amount_cents, &currency, reason),
        );
        tracing::info!(status = status.as_str(), amount_cents, "charge decided");
        reply(order_id, answer, headers)
    }

    #[tracing::instrument(name = "payment.refund", skip_all, fields(order_id = %order_id))]
    async fn refund(
        &self,
        txn: Txn<'_>,
        known: &mut Known<payments::Model>,
        order_id: Uuid,
        headers: &BTreeMap<String, String>,
    ) -> Result<NewMessage, DbErr> {
        let current = match known.get(order_id) {
            Some(p) => Some((
                stored_status(&p.status, PaymentStatus::parse)?,
                p.amount_cents,
            )),
            None => None,
        };
        let refunded = match current {
            Some((PaymentStatus::Charged, amount_cents)) => {
                let now = Utc::now();
                let stored = known.change(order_id, |p| {
                    p.status = PaymentStatus::Refunded.as_str().to_owned();
                    p.updated_at = now;
                });
                if stored {
                    let moved = payments::Entity::update_many()
                        .col_expr(
                            payments::Column::Status,
                            PaymentStatus::Refunded.as_str().into(),
                        )
                        .col_expr(payments::Column::UpdatedAt, now.into())
                        .filter(payments::Column::OrderId.eq(order_id))
                        .filter(payments::Column::Status.eq(PaymentStatus::Charged.as_str()))
                        .exec(txn.get()?)
                        .await?;
                    if moved.rows_affected != 1 {
                        return Err(DbErr::Custom(format!(
                            "payment {order_id} changed concurrently; retrying"
                        )));
                    }
                }
                amount_cents
            }
            Some((PaymentStatus::Refunded, amount_cents)) => amount_cents,
            Some(_) => 0,
            None => {
                let void = payment(
                    order_id,
                    PaymentStatus::Voided,
                    0,
                    "",
                    Some("refunded before any charge".into()),
                );
                known.create(order_id, void);
                0
            }
        };
        let answer = ReplyBody::PaymentRefunded {
            amount_cents: refunded,
        };
        reply(order_id, answer, headers)
    }

    /// (order id, status, amount) of every payment record, for invariant checks.
    pub async fn all(&self) -> Result<Vec<(Uuid, PaymentStatus, i64)>, DbErr> {
        payments::Entity::find()
            .all(&self.db)
            .await?
            .into_iter()
            .map(|p| {
                Ok((
                    p.order_id,
                    stored_status(&p.status, PaymentStatus::parse)?,
                    p.amount_cents,
                ))
            })
            .collect()
    }
}

/// A new payment record (inserted when its batch ends).
fn payment(
    order_id: Uuid,
    status: PaymentStatus,
    amount_cents: i64,
    currency: &str,
    reason: Option<String>,
) -> payments::Model {
    let now = Utc::now();
    payments::Model {
        order_id,
        status: status.as_str().to_owned(),
        amount_cents,
        currency: currency.to_owned(),
        reason,
        created_at: now,
        updated_at: now,
    }
}

order_keyed_store!(Payment, payments);

impl CommandHandler for Payment {
    type Store = Payment;

    fn participant(&self) -> &Payment {
        self
    }

    /// Applies one delivery from `payment.commands`.
    async fn apply(
        &self,
        txn: Txn<'_>,
        known: &mut Known<payments::Model>,
        _deferred: &mut (),
        message: &IncomingMessage,
    ) -> Result<Applied, DbErr> {
        let envelope: Envelope<CommandBody> = match decode(message) {
            Ok(e) => e,
            Err(poison) => return Ok(poison),
        };
        let order_id = envelope.order_id;
        let answer = match envelope.body {
            CommandBody::ChargePayment {
                amount_cents,
                currency,
                forced,
            } => {
                self.charge(
                    known,
                    order_id,
                    amount_cents,
                    currency,
                    forced,
                    &message.headers,
                )
                .await?
            }
            CommandBody::RefundPayment {} => {
                self.refund(txn, known, order_id, &message.headers).await?
            }
            other => {
                return Ok(Applied::Poison(format!(
                    "{} is not a payment command",
                    other.kind()
                )));
            }
        };
        Ok(Applied::Replies(vec![answer]))
    }
}
