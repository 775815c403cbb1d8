//! The orchestrator: every use case of an order, behind one entry point, [`Orchestrator`].
//!
//! - place an order, with the whole idempotency protocol ([`place`]);
//! - apply a participant's reply ([`Orchestrator::apply_reply`]);
//! - resend or time out a step, resume after a restart ([`timers`]);
//! - the admin override and the manual payment;
//! - read an order, wait for it to finish, list orders.
//!
//! Each order is owned by one actor ([`actors`]), which applies the pure state machine
//! (`domain::saga`) and persists every transition with the messages it causes (the
//! commands and events of [`wire`]) in one write. The adapters (HTTP, the reply consumer)
//! only translate to and from these calls.

pub mod actors;
pub mod operator;
pub mod partitions;
pub mod place;
pub mod timers;
pub mod wire;

pub use actors::order_actor::{ActorStats, NewOrder, OrderError};
pub use place::{Catalogue, PlaceError, PlaceOrder, Placed, Refusal};

use crate::domain::saga::{Event, OrderStatus, PaymentMode, PaymentOutcome};
use crate::domain::view::{OrderDetails, OrderSummary};
use crate::messaging::messages::ReplyBody;
use crate::persistence::idempotency::Claims;
use crate::persistence::orders;
use crate::persistence::ownership::Ownership;
use actors::{Orders, Waited};
use sea_orm::{DatabaseConnection, DbErr};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Cheap, cloneable handle to the use cases.
#[derive(Clone)]
pub struct Orchestrator {
    orders: Orders,
    /// The orders store, for reads (every write goes through an order's actor).
    db: DatabaseConnection,
    claims: Claims,
    catalogue: Arc<dyn Catalogue>,
    settings: Settings,
}

/// What the use cases need from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `PAYMENT_MODE` of new orders.
    pub payment_mode: PaymentMode,
    /// `MAX_ORDERS_IN_FLIGHT` (0: no limit).
    pub max_orders_in_flight: usize,
}

/// What became of a participant's reply.
#[derive(Debug)]
pub enum ReplyOutcome {
    /// The order moved on.
    Applied,
    /// A duplicate or late reply the saga refused; nothing changed (the actor logged it).
    Ignored,
    /// No such order.
    UnknownOrder,
    /// Not applied now (storage or actor unavailable); deliver it again.
    Retry(String),
    /// Another replica owns the order: nothing was done here.
    NotOwner,
    /// The order is parked: an operator must resume it first (the reply is kept aside).
    Parked(String),
}

impl Orchestrator {
    pub fn new(
        orders: Orders,
        db: DatabaseConnection,
        claims: Claims,
        catalogue: Arc<dyn Catalogue>,
        settings: Settings,
    ) -> Orchestrator {
        Orchestrator {
            orders,
            db,
            claims,
            catalogue,
            settings,
        }
    }

    /// A fresh order id in a partition this replica serves, so that the order it names is
    /// created here, without a hop. Any id when it serves none (the create then fails with
    /// [`OrderError::NotOwner`] and is forwarded).
    pub fn new_order_id(&self) -> Uuid {
        let ownership = self.orders.ownership();
        // With R replicas one try in R succeeds; the bound only matters when none does.
        let mut id = Uuid::now_v7();
        for _ in 0..4096 {
            if ownership.serves(id) {
                break;
            }
            id = Uuid::now_v7();
        }
        id
    }

    /// Which orders this replica serves, and who owns the others.
    pub fn ownership(&self) -> &Ownership {
        self.orders.ownership()
    }

    /// Applies a participant's reply to its order.
    pub async fn apply_reply(&self, order_id: Uuid, reply: ReplyBody) -> ReplyOutcome {
        match self.orders.apply(order_id, wire::event_of(reply)).await {
            Ok(_) => ReplyOutcome::Applied,
            Err(OrderError::Transition(_)) => ReplyOutcome::Ignored,
            Err(OrderError::NotFound(_)) => ReplyOutcome::UnknownOrder,
            Err(OrderError::NotOwner(_)) => ReplyOutcome::NotOwner,
            Err(e @ OrderError::Parked(..)) => ReplyOutcome::Parked(e.to_string()),
            Err(e) => ReplyOutcome::Retry(e.to_string()),
        }
    }

    /// The admin override: cancel (with compensation) or another allowed status change.
    pub async fn override_status(
        &self,
        id: Uuid,
        target: OrderStatus,
        reason: String,
    ) -> Result<(), OrderError> {
        tracing::info!(%target, %reason, "admin status override");
        self.orders
            .apply(id, Event::AdminOverride { target, reason })
            .await
            .map(|_| ())
    }

    /// An operator resumes a parked order: un-parked (a `resumed` history entry with
    /// `reason`), its pending commands resent, its timer re-armed.
    pub async fn resume_parked(&self, id: Uuid, reason: String) -> Result<(), OrderError> {
        self.orders.unpark(id, reason).await
    }

    /// The manual payment of an order waiting in `PAYMENT_MODE=manual` (dev).
    pub async fn pay(&self, id: Uuid, forced: Option<PaymentOutcome>) -> Result<(), OrderError> {
        self.orders
            .apply(id, Event::PaymentSubmitted { forced })
            .await
            .map(|_| ())
    }

    /// The order as stored now, with its history.
    pub async fn order(&self, id: Uuid) -> Result<Option<OrderDetails>, DbErr> {
        orders::details(&self.db, id).await
    }

    /// The order once it is terminal, or as it is when `timeout` passes. Shared: the order
    /// its actor handed over is answered to every waiter without a copy.
    pub async fn order_when_finished(
        &self,
        id: Uuid,
        timeout: Duration,
    ) -> Result<Option<Arc<OrderDetails>>, DbErr> {
        let (db, actors) = (&self.db, &self.orders);
        // The check reads only the status; the whole order is read once, at the end, and
        // not at all when the actor that finished it hands it over.
        let waited = self
            .orders
            .wait_terminal(id, timeout, || async move {
                // A live actor knows the status; only an order without one is read.
                let status = match actors.live_status(id).await {
                    Some(status) => Ok(Some(status)),
                    None => orders::status(db, id).await,
                };
                match status {
                    Ok(Some(status)) => (status.is_terminal(), Ok(true)),
                    Ok(None) => (true, Ok(false)),
                    Err(e) => (true, Err(e)),
                }
            })
            .await;
        match waited {
            Waited::Finished(details) => Ok(Some(details)),
            Waited::Checked(Ok(true)) => Ok(self.order(id).await?.map(Arc::new)),
            Waited::Checked(Ok(false)) => Ok(None),
            Waited::Checked(Err(e)) => Err(e),
        }
    }

    /// The newest orders first, optionally of one status.
    pub async fn list(
        &self,
        status: Option<OrderStatus>,
        limit: u64,
    ) -> Result<Vec<OrderSummary>, DbErr> {
        orders::list(&self.db, status, limit).await
    }

    /// Runs the step-timer scanner until `shutdown` (see [`timers`]).
    pub async fn run_timers(self, shutdown: tokio_util::sync::CancellationToken) {
        timers::run(self.orders, self.db, shutdown).await
    }

    /// Resumes every non-terminal order (start-up recovery), or those of one partition
    /// (just acquired). Returns how many.
    pub async fn recover(&self, partition: Option<u16>) -> anyhow::Result<usize> {
        timers::recover(&self.orders, &self.db, partition).await
    }

    /// Stops the actors of the orders in `partition` (it was handed over or lost).
    pub async fn stop_partition(&self, partition: u16) -> usize {
        self.orders.stop_partition(partition).await
    }

    /// Order actors in memory now.
    pub fn live_actors(&self) -> usize {
        self.orders.live_actors()
    }

    pub fn stats(&self) -> &ActorStats {
        self.orders.stats()
    }

    /// Stops every order actor.
    pub fn stop(&self) {
        self.orders.stop();
    }
}
