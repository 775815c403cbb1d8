//! The order actor: owns one order's saga. Every command for the order (HTTP, participant
//! replies, timers) arrives through its mailbox, so they are applied one at a time without
//! row locks. Each applied event is persisted — new state, history entry and outbox rows in
//! one transaction — before the caller hears back.

use crate::domain::saga::{
    self, Command, Effect, Event, LifecycleEvent, OrderStatus, Saga, TransitionError,
};
use crate::messaging::messages::{
    CommandBody, Envelope, LineItem, OrderEventBody, OrderEventPayload,
};
use crate::messaging::topology::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE};
use crate::persistence::orders::{
    self, HistoryEntry, IdempotencyCompletion, OrderDetails, OrderLine, OrderRecord, SaveError,
};
use crate::persistence::outbox::NewMessage;
use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::{DatabaseConnection, DbErr};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// What every order actor shares: its store and the outbox relay's wake-up.
pub struct OrderContext {
    pub db: DatabaseConnection,
    /// Wakes the orders outbox relay after a commit, so messages leave without polling delay.
    pub outbox_wake: Arc<Notify>,
}

/// A validated, priced order ready to be created.
#[derive(Debug, Clone)]
pub struct NewOrder {
    pub id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub items: Vec<OrderLine>,
    pub total_cents: i64,
    pub payment_mode: saga::PaymentMode,
    pub idempotency_key: Option<String>,
    pub trace_context: Option<String>,
}

/// Errors an order actor answers with (never by failing itself).
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrderError {
    #[error("order {0} not found")]
    NotFound(Uuid),
    #[error("order {0} already exists")]
    AlreadyExists(Uuid),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("order {0} was modified concurrently; retry")]
    Conflict(Uuid),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("the order actor did not answer in time")]
    Timeout,
    #[error("the order actor is unavailable: {0}")]
    Unavailable(String),
}

impl From<DbErr> for OrderError {
    fn from(e: DbErr) -> Self {
        OrderError::Storage(e.to_string())
    }
}

pub enum OrderMsg {
    Create(
        Box<NewOrder>,
        RpcReplyPort<Result<OrderDetails, OrderError>>,
    ),
    Apply(Event, RpcReplyPort<Result<Saga, OrderError>>),
}

pub struct OrderActor {
    pub ctx: Arc<OrderContext>,
}

pub struct OrderState {
    id: Uuid,
    /// `None` until first needed: loading lazily keeps spawning cheap (no I/O in the
    /// supervisor's mailbox).
    order: Option<OrderRecord>,
    loaded: bool,
}

impl Actor for OrderActor {
    type Msg = OrderMsg;
    type State = OrderState;
    type Arguments = Uuid;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        id: Uuid,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(OrderState {
            id,
            order: None,
            loaded: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            OrderMsg::Create(new, reply) => {
                let result = self.create(state, *new).await;
                let _ = reply.send(result);
            }
            OrderMsg::Apply(event, reply) => {
                let result = self.apply(state, event).await;
                let storage_failed = matches!(
                    result,
                    Err(OrderError::Storage(_) | OrderError::Conflict(_))
                );
                let _ = reply.send(result);
                if storage_failed {
                    // The in-memory state may no longer match the database: start over
                    // from the database with the next message.
                    myself.stop(Some("storage error".into()));
                    return Ok(());
                }
            }
        }
        let finished = state
            .order
            .as_ref()
            .is_some_and(|o| o.saga.status.is_terminal());
        if finished || (state.loaded && state.order.is_none()) {
            // Passivate: nothing more will happen to this order without a new message.
            myself.stop(None);
        }
        Ok(())
    }
}

impl OrderActor {
    async fn ensure_loaded(&self, state: &mut OrderState) -> Result<(), OrderError> {
        if !state.loaded {
            state.order = orders::load(&self.ctx.db, state.id).await?;
            state.loaded = true;
        }
        Ok(())
    }

    #[tracing::instrument(name = "order.create", skip_all, fields(order_id = %state.id))]
    async fn create(
        &self,
        state: &mut OrderState,
        new: NewOrder,
    ) -> Result<OrderDetails, OrderError> {
        self.ensure_loaded(state).await?;
        if state.order.is_some() {
            return Err(OrderError::AlreadyExists(state.id));
        }
        let (saga, effects) = saga::start();
        let now = Utc::now();
        let record = OrderRecord {
            id: new.id,
            customer_id: new.customer_id,
            currency: new.currency,
            total_cents: new.total_cents,
            items: new.items,
            saga,
            payment_mode: new.payment_mode,
            version: 1,
            trace_context: new.trace_context,
            created_at: now,
            updated_at: now,
        };
        let entry = HistoryEntry {
            from: None,
            status: OrderStatus::Pending.as_str().to_owned(),
            event: "order_created".into(),
            reason: "order accepted; reserving stock".into(),
            at: now,
        };
        let details = record.details(vec![entry.clone()]);
        let messages = outbox_messages(&record, &effects)?;
        let body = serde_json::to_string(&details)
            .map_err(|e| OrderError::Storage(format!("serializing response: {e}")))?;
        let completion = new
            .idempotency_key
            .as_deref()
            .map(|key| IdempotencyCompletion {
                key,
                status: 201,
                body: &body,
            });
        orders::create(&self.ctx.db, &record, &entry, &messages, completion).await?;
        self.ctx.outbox_wake.notify_one();
        tracing::info!(
            status = "PENDING",
            total_cents = record.total_cents,
            "order created"
        );
        state.order = Some(record);
        Ok(details)
    }

    #[tracing::instrument(name = "order.apply", skip_all, fields(order_id = %state.id, event = event.name()))]
    async fn apply(&self, state: &mut OrderState, event: Event) -> Result<Saga, OrderError> {
        self.ensure_loaded(state).await?;
        let Some(order) = state.order.as_mut() else {
            return Err(OrderError::NotFound(state.id));
        };
        let transition = match saga::apply(&order.saga, &event, order.payment_mode) {
            Ok(t) => t,
            Err(refused) => {
                tracing::info!(status = %order.saga.status, %refused, "event refused; nothing changed");
                return Err(refused.into());
            }
        };
        let now = Utc::now();
        let entry = HistoryEntry {
            from: Some(order.saga.status.as_str().to_owned()),
            status: transition.saga.status.as_str().to_owned(),
            event: event.name().to_owned(),
            reason: transition.reason.clone(),
            at: now,
        };
        // Effects describe the order after the transition (e.g. the failure reason).
        let mut next = order.clone();
        next.saga = transition.saga.clone();
        let messages = outbox_messages(&next, &transition.effects)?;
        let version = orders::save_transition(
            &self.ctx.db,
            order.id,
            order.version,
            &transition.saga,
            &entry,
            &messages,
        )
        .await
        .map_err(|e| match e {
            SaveError::Conflict(id) => OrderError::Conflict(id),
            SaveError::Db(db) => OrderError::Storage(db.to_string()),
        })?;
        if !messages.is_empty() {
            self.ctx.outbox_wake.notify_one();
        }
        tracing::info!(from = %order.saga.status, to = %transition.saga.status, reason = %transition.reason, "transition");
        next.version = version;
        next.updated_at = now;
        *order = next;
        Ok(order.saga.clone())
    }
}

fn line_items(order: &OrderRecord) -> Vec<LineItem> {
    order
        .items
        .iter()
        .map(|l| LineItem {
            sku: l.sku.clone(),
            quantity: l.quantity,
        })
        .collect()
}

/// Turns the state machine's effects into outbox rows, filling payloads from the order.
fn outbox_messages(order: &OrderRecord, effects: &[Effect]) -> Result<Vec<NewMessage>, OrderError> {
    let mut out = Vec::with_capacity(effects.len());
    for effect in effects {
        let mut message = match *effect {
            Effect::Send(command) => {
                let body = match command {
                    Command::ReserveStock => CommandBody::ReserveStock {
                        items: line_items(order),
                    },
                    Command::ReleaseStock => CommandBody::ReleaseStock {},
                    Command::ChargePayment { forced } => CommandBody::ChargePayment {
                        amount_cents: order.total_cents,
                        currency: order.currency.clone(),
                        forced,
                    },
                    Command::RefundPayment => CommandBody::RefundPayment {},
                    Command::ScheduleShipment => CommandBody::ScheduleShipment {
                        items: line_items(order),
                    },
                    Command::CancelShipment => CommandBody::CancelShipment {},
                };
                let kind = body.kind();
                let envelope = Envelope::new(order.id, body);
                NewMessage::json(COMMANDS_EXCHANGE, kind, envelope.message_id, &envelope)?
            }
            Effect::Publish(event) => {
                let envelope = Envelope::new(order.id, lifecycle_body(order, event));
                NewMessage::json(
                    EVENTS_EXCHANGE,
                    event.routing_key(),
                    envelope.message_id,
                    &envelope,
                )?
            }
        };
        if let Some(traceparent) = &order.trace_context {
            message
                .headers
                .insert("traceparent".into(), traceparent.clone());
        }
        out.push(message);
    }
    Ok(out)
}

fn lifecycle_body(order: &OrderRecord, event: LifecycleEvent) -> OrderEventBody {
    OrderEventBody {
        kind: event.routing_key().to_owned(),
        payload: OrderEventPayload {
            status: order.saga.status.as_str().to_owned(),
            customer_id: order.customer_id.clone(),
            total_cents: order.total_cents,
            currency: order.currency.clone(),
            items: line_items(order),
            reason: order.saga.failure_reason.clone(),
        },
    }
}
