//! The order actor: owns one order's saga. Every command for the order (HTTP, participant
//! replies, timers) arrives through its mailbox, so they are applied one at a time without
//! row locks. Each applied event is persisted — new state, history entry and outbox rows in
//! one transaction — before the caller hears back.

use crate::domain::saga::{self, Effect, Event, OrderStatus, Saga, TransitionError};
use crate::domain::view::{HistoryEntry, OrderDetails, OrderLine};
use crate::faults::{self, Faults};
use crate::orchestrator::actors::retry::RetryPolicy;
use crate::orchestrator::actors::waiters::Waiters;
use crate::orchestrator::wire::outbox_messages;
use crate::persistence::group_commit::OrderWriter;
use crate::persistence::orders::{
    self, IdempotencyCompletion, OrderRecord, OrderWrite, SaveError, StepTimer,
};
use crate::persistence::ownership::Ownership;
use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sea_orm::{DatabaseConnection, DbErr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::Instrument;
use uuid::Uuid;

/// What every order actor shares: its store, the outbox relay's wake-up, the step-timer
/// policy and the (test-only) fault injection.
pub struct OrderContext {
    /// The orders store, for loading orders (writes go through `writer`).
    pub db: DatabaseConnection,
    /// Group commit: applies the writes of many actors in one transaction and wakes the
    /// orders outbox relay after commits that wrote messages.
    pub writer: OrderWriter,
    /// When to resend a step nobody answered, and when to give up and compensate.
    pub retry: RetryPolicy,
    /// An actor without a message for this long is passivated (bounded memory).
    pub idle_timeout: Duration,
    /// Panic on purpose when handling an event (chaos tests). None configured in production.
    pub faults: Arc<Faults>,
    pub stats: Arc<ActorStats>,
    /// Clients waiting (long poll) for an order to finish; woken on its terminal transition.
    pub waiters: Waiters,
    /// Which orders this replica serves (all of them when it is the only one).
    pub ownership: Ownership,
}

/// Counters an operator needs to see (restarts, parked orders).
#[derive(Debug, Default)]
pub struct ActorStats {
    pub restarts: AtomicU64,
    pub parked: AtomicU64,
    pub retries: AtomicU64,
    pub timeouts: AtomicU64,
    /// Sagas finished here over the last minutes (the console's charts).
    pub finished: super::recent::RecentSagas,
    /// Woken after every committed history entry of this process, so the event stream's
    /// tailer (its one waiter) reads at once instead of at its next poll; a wake while it is
    /// reading is kept for its next wait.
    pub recorded: tokio::sync::Notify,
}

impl OrderContext {
    /// The timer for a saga whose pending commands were just sent for the `attempts`-th
    /// time; no pending command: no timer.
    fn timer_for(&self, saga: &Saga, attempts: i32) -> StepTimer {
        if saga::pending_commands(saga).is_empty() {
            return StepTimer::default();
        }
        StepTimer {
            deadline: Some(self.retry.deadline_after(attempts)),
            attempts,
        }
    }
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
    /// `Some(request hash)`: the key was not claimed beforehand; the create claims it with
    /// the order and fails with [`OrderError::KeyTaken`] (writing nothing) if it is taken.
    pub claims_key_with_hash: Option<String>,
    /// The status the caller answers with, stored with the key for replays.
    pub answer_status: u16,
    pub trace_context: Option<String>,
}

/// Errors an order actor answers with (never by failing itself).
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrderError {
    #[error("order {0} not found")]
    NotFound(Uuid),
    #[error("order {0} already exists")]
    AlreadyExists(Uuid),
    /// The idempotency key the create was to claim is taken; nothing was written.
    #[error("the idempotency key of order {0} is already taken")]
    KeyTaken(Uuid),
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
    #[error("order {0} is parked: {1}")]
    Parked(Uuid, String),
    /// A resume for an order that is not parked.
    #[error("order {0} is not parked")]
    NotParked(Uuid),
    /// Another replica owns the order's partition (or it is changing owner): nothing was
    /// done here.
    #[error("order {0} is owned by another replica")]
    NotOwner(Uuid),
}

impl From<DbErr> for OrderError {
    fn from(e: DbErr) -> Self {
        OrderError::Storage(e.to_string())
    }
}

/// Requests from callers carry the caller's span, the parent of the actor's span.
pub enum OrderMsg {
    Create(
        Box<NewOrder>,
        tracing::Span,
        RpcReplyPort<Result<OrderDetails, OrderError>>,
    ),
    Apply(Event, tracing::Span, RpcReplyPort<Result<Saga, OrderError>>),
    /// The timer scanner saw the step deadline pass: resend, or give up and compensate.
    DeadlineExpired(RpcReplyPort<Result<(), OrderError>>),
    /// Start-up recovery: resend whatever the saga is waiting for and re-arm its timer.
    Resume(RpcReplyPort<Result<(), OrderError>>),
    /// An operator resumes a parked order: un-park it (recorded in its history), then resend
    /// whatever the saga is waiting for.
    Unpark(String, tracing::Span, RpcReplyPort<Result<(), OrderError>>),
    /// Self-sent: passivate if nothing happened for the idle timeout.
    CheckIdle,
    /// The order's status as this actor holds it (`None` if not loaded); not activity.
    Peek(RpcReplyPort<Option<OrderStatus>>),
}

pub struct OrderActor {
    pub ctx: Arc<OrderContext>,
}

/// The order as this actor knows it. Loaded when first needed: loading lazily keeps
/// spawning cheap (no I/O in the supervisor's mailbox).
enum Loaded {
    NotYet,
    /// Not in the database (or a create of it failed).
    Missing,
    Present(Box<OrderRecord>),
}

impl Loaded {
    fn record(&self) -> Option<&OrderRecord> {
        match self {
            Loaded::Present(order) => Some(order),
            Loaded::NotYet | Loaded::Missing => None,
        }
    }
}

pub struct OrderState {
    id: Uuid,
    order: Loaded,
    /// The transition history, when this actor created the order (it saw every entry);
    /// `None` for an order loaded from the database. Lets a finished saga be handed to
    /// long-polling clients without reading it back.
    history: Option<Vec<HistoryEntry>>,
    /// When the last message other than [`OrderMsg::CheckIdle`] arrived.
    last_active: std::time::Instant,
    /// The pending idle check; aborted when the actor stops, so a finished order's actor is
    /// freed at once instead of living on in a sleeping timer task.
    idle_check: Option<tokio::task::JoinHandle<()>>,
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
            order: Loaded::NotYet,
            history: None,
            last_active: std::time::Instant::now(),
            idle_check: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        schedule_idle_check(&myself, state, self.ctx.idle_timeout);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.idle_check.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let OrderMsg::Peek(reply) = message {
            let _ = reply.send(state.order.record().map(|o| o.saga.status));
            return Ok(());
        }
        if let OrderMsg::CheckIdle = message {
            let idle = state.last_active.elapsed();
            if idle >= self.ctx.idle_timeout {
                // Its state is in the database; the next message loads it again.
                myself.stop(Some("idle".into()));
            } else {
                schedule_idle_check(&myself, state, self.ctx.idle_timeout - idle);
            }
            return Ok(());
        }
        state.last_active = std::time::Instant::now();
        match message {
            OrderMsg::CheckIdle | OrderMsg::Peek(_) => {}
            OrderMsg::Create(new, caller, reply) => {
                let result = self.create(&caller, state, *new).await;
                let _ = reply.send(result);
            }
            OrderMsg::Apply(event, caller, reply) => {
                let result = self.apply(&caller, state, event).await;
                if reply_or_reload(&myself, reply, result) {
                    return Ok(());
                }
            }
            OrderMsg::DeadlineExpired(reply) => {
                let span = tracing::info_span!("order.deadline", order_id = %state.id);
                self.continue_order_trace(state, &span).await;
                let result = self.deadline_expired(state).instrument(span).await;
                if reply_or_reload(&myself, reply, result) {
                    return Ok(());
                }
            }
            OrderMsg::Unpark(reason, caller, reply) => {
                let result = self.unpark(&caller, state, reason).await;
                if reply_or_reload(&myself, reply, result) {
                    return Ok(());
                }
            }
            OrderMsg::Resume(reply) => {
                let span = tracing::info_span!("order.resume", order_id = %state.id);
                self.continue_order_trace(state, &span).await;
                let result = self.resume(state).instrument(span).await;
                if reply_or_reload(&myself, reply, result) {
                    return Ok(());
                }
            }
        }
        let finished = match &state.order {
            Loaded::NotYet => false,
            Loaded::Missing => true,
            Loaded::Present(order) => order.saga.status.is_terminal(),
        };
        if finished {
            // Passivate: nothing more will happen to this order without a new message.
            myself.stop(None);
        }
        Ok(())
    }
}

/// Arms the next idle check (a timer task holding a reference to the actor).
fn schedule_idle_check(myself: &ActorRef<OrderMsg>, state: &mut OrderState, after: Duration) {
    let cell = myself.clone();
    state.idle_check = Some(tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = cell.cast(OrderMsg::CheckIdle);
    }));
}

/// Sends the answer; after a storage error or a version conflict the in-memory state may
/// no longer match the database, so the actor stops and the next message reloads it.
/// Returns whether it stopped.
fn reply_or_reload<T>(
    myself: &ActorRef<OrderMsg>,
    reply: RpcReplyPort<Result<T, OrderError>>,
    result: Result<T, OrderError>,
) -> bool {
    let stale = matches!(
        result,
        Err(OrderError::Storage(_) | OrderError::Conflict(_) | OrderError::NotOwner(_))
    );
    let _ = reply.send(result);
    if stale {
        myself.stop(Some("reloading after a storage error".into()));
    }
    stale
}

impl OrderActor {
    /// The order, loaded if not yet.
    async fn ensure_loaded<'s>(
        &self,
        id: Uuid,
        order: &'s mut Loaded,
    ) -> Result<&'s mut OrderRecord, OrderError> {
        if let Loaded::NotYet = order {
            *order = match orders::load(&self.ctx.db, id).await? {
                Some(record) => Loaded::Present(Box::new(record)),
                None => Loaded::Missing,
            };
        }
        match order {
            Loaded::Present(record) => Ok(record),
            Loaded::NotYet | Loaded::Missing => Err(OrderError::NotFound(id)),
        }
    }

    /// Timers and start-up recovery have no caller to continue: their `span` continues the
    /// order's own trace, stored with it at creation.
    async fn continue_order_trace(&self, state: &mut OrderState, span: &tracing::Span) {
        // A failed load is reported by the handling that follows.
        if let Ok(order) = self.ensure_loaded(state.id, &mut state.order).await {
            crate::telemetry::trace_context::adopt_parent(span, order.trace_context.as_deref());
        }
    }

    #[tracing::instrument(name = "order.create", parent = caller, skip_all, fields(order_id = %state.id))]
    async fn create(
        &self,
        caller: &tracing::Span,
        state: &mut OrderState,
        new: NewOrder,
    ) -> Result<OrderDetails, OrderError> {
        if let Loaded::Present(_) = state.order {
            return Err(OrderError::AlreadyExists(state.id));
        }
        // A fresh actor for a new id has nothing to load: ids are generated by the service,
        // and the primary key rejects a duplicate anyway (answered as AlreadyExists). Until
        // the write succeeds the order does not exist.
        state.order = Loaded::Missing;
        let (saga, effects) = saga::start();
        let now = stored_now();
        let record = OrderRecord {
            id: new.id,
            customer_id: new.customer_id,
            currency: new.currency,
            total_cents: new.total_cents,
            items: new.items,
            saga,
            payment_mode: new.payment_mode,
            version: 1,
            // This span's context when spans are exported (timers and recovery continue
            // the order's trace from it), else the caller's header, passed on unchanged.
            trace_context: crate::telemetry::trace_context::current_traceparent()
                .or(new.trace_context),
            timer: StepTimer::default(),
            parked_reason: None,
            created_at: now,
            updated_at: now,
        };
        let entry = HistoryEntry {
            from: None,
            status: OrderStatus::Pending,
            event: "order_created".into(),
            reason: "order accepted; reserving stock".into(),
            at: now,
        };
        let mut record = record;
        record.timer = self.ctx.timer_for(&record.saga, 0);
        let details = record.details(vec![entry.clone()]);
        let messages = outbox_messages(&record, &effects, self.ctx.ownership.reply_to())?;
        let body = serde_json::to_string(&details)
            .map_err(|e| OrderError::Storage(format!("serializing response: {e}")))?;
        let idempotency = new.idempotency_key.map(|key| IdempotencyCompletion {
            key,
            status: new.answer_status,
            body,
            claims_with_hash: new.claims_key_with_hash,
        });
        let id = record.id;
        let write = OrderWrite::Create {
            order: Box::new(record.clone()),
            entry,
            messages,
            idempotency,
        };
        self.ctx.writer.write(write).await.map_err(|e| match e {
            SaveError::Db(db) if is_duplicate_key(&db) => OrderError::AlreadyExists(id),
            other => saved_error(other),
        })?;
        self.ctx.stats.recorded.notify_one();
        if self.ctx.faults.should_panic(id, faults::ORDER_CREATED) {
            // After the commit, before the answer: the caller's retry meets its own order.
            panic!("fault injection: panicking on order_created (FAULT_ACTOR_PANIC)");
        }
        metrics::counter!("orders_created_total").increment(1);
        tracing::info!(
            status = "PENDING",
            total_cents = record.total_cents,
            "order created"
        );
        state.order = Loaded::Present(Box::new(record));
        state.history = Some(details.history.clone());
        Ok(details)
    }

    #[tracing::instrument(name = "order.apply", parent = caller, skip_all, fields(order_id = %state.id, event = event.name()))]
    async fn apply(
        &self,
        caller: &tracing::Span,
        state: &mut OrderState,
        event: Event,
    ) -> Result<Saga, OrderError> {
        let order = self.ensure_loaded(state.id, &mut state.order).await?;
        if let Some(reason) = &order.parked_reason {
            return Err(OrderError::Parked(order.id, reason.clone()));
        }
        let transition = match saga::apply(&order.saga, &event, order.payment_mode) {
            Ok(t) => t,
            Err(refused) => {
                metrics::counter!("order_events_refused_total", "event" => event.name())
                    .increment(1);
                tracing::info!(status = %order.saga.status, %refused, "event refused; nothing changed");
                return Err(refused.into());
            }
        };
        // Only after the transition check: an event the saga refuses (a late duplicate, one
        // for a finished order) must not crash the actor, or it could park a finished order.
        if self.ctx.faults.should_panic(order.id, event.name()) {
            panic!(
                "fault injection: panicking on {} (FAULT_ACTOR_PANIC)",
                event.name()
            );
        }
        let now = stored_now();
        let entry = HistoryEntry {
            from: Some(order.saga.status),
            status: transition.saga.status,
            event: event.name().to_owned(),
            reason: transition.reason.clone(),
            at: now,
        };
        // Effects describe the order after the transition (e.g. the failure reason).
        let mut next = order.clone();
        next.saga = transition.saga.clone();
        let messages = outbox_messages(&next, &transition.effects, self.ctx.ownership.reply_to())?;
        // New commands start a new step (fresh timer); an ack that leaves other answers
        // pending keeps the running timer; nothing pending clears it.
        let sent = transition
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Send(_)));
        next.timer = if sent || saga::pending_commands(&transition.saga).is_empty() {
            self.ctx.timer_for(&transition.saga, 0)
        } else {
            order.timer
        };
        let entry_copy = entry.clone();
        let write = OrderWrite::Transition {
            order_id: order.id,
            expected_version: order.version,
            saga: transition.saga.clone(),
            timer: next.timer,
            entry,
            messages,
        };
        let version = self.ctx.writer.write(write).await.map_err(saved_error)?;
        self.ctx.stats.recorded.notify_one();
        record_transition(order, &transition.saga, &event, now, &self.ctx.stats);
        tracing::info!(from = %order.saga.status, to = %transition.saga.status, reason = %transition.reason, "transition");
        next.version = version;
        next.updated_at = now;
        *order = next;
        if let Some(history) = state.history.as_mut() {
            history.push(entry_copy);
        }
        if order.saga.status.is_terminal() {
            let history = &state.history;
            self.ctx.waiters.finish(order.id, || {
                history.as_ref().map(|h| order.details(h.clone()))
            });
        }
        Ok(order.saga.clone())
    }
}

impl OrderActor {
    async fn deadline_expired(&self, state: &mut OrderState) -> Result<(), OrderError> {
        let order = self.ensure_loaded(state.id, &mut state.order).await?;
        let due = order.timer.deadline.is_some_and(|d| d <= Utc::now());
        if order.parked_reason.is_some() || !due {
            return Ok(()); // a stale scan: someone answered meanwhile
        }
        let attempts = order.timer.attempts;
        if let Some(step) = saga::forward_step(&order.saga)
            && self.ctx.retry.gives_up(attempts)
        {
            self.ctx.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                ?step,
                attempts,
                "participant did not answer; giving up and compensating"
            );
            return self
                .apply(
                    &tracing::Span::current(),
                    state,
                    Event::StepTimedOut { step },
                )
                .await
                .map(|_| ());
        }
        self.resend(state, attempts.saturating_add(1)).await
    }

    #[tracing::instrument(name = "order.unpark", parent = caller, skip_all, fields(order_id = %state.id))]
    async fn unpark(
        &self,
        caller: &tracing::Span,
        state: &mut OrderState,
        reason: String,
    ) -> Result<(), OrderError> {
        let order = self.ensure_loaded(state.id, &mut state.order).await?;
        if order.parked_reason.is_none() {
            return Err(OrderError::NotParked(order.id));
        }
        let entry = HistoryEntry {
            from: Some(order.saga.status),
            status: order.saga.status,
            event: orders::RESUMED.to_owned(),
            reason,
            at: stored_now(),
        };
        let fence = self
            .ctx
            .ownership
            .partition_of(order.id)
            .map(|p| (p, self.ctx.ownership.epoch(p)));
        let fence = match fence {
            None => None,
            Some((p, Some(epoch))) => Some((p, epoch)),
            Some((_, None)) => return Err(OrderError::NotOwner(order.id)),
        };
        if !orders::unpark(&self.ctx.db, order.id, order.version, fence, &entry).await? {
            return Err(OrderError::Conflict(order.id));
        }
        tracing::warn!(status = %order.saga.status, reason = %entry.reason, "parked order resumed by an operator");
        order.parked_reason = None;
        order.version += 1;
        order.updated_at = entry.at;
        if let Some(history) = state.history.as_mut() {
            history.push(entry);
        }
        // A fresh step: the attempts that led to the crash loop are not held against it.
        self.resend(state, 0).await
    }

    async fn resume(&self, state: &mut OrderState) -> Result<(), OrderError> {
        let order = self.ensure_loaded(state.id, &mut state.order).await?;
        if order.parked_reason.is_some() || order.saga.status.is_terminal() {
            return Ok(());
        }
        let attempts = order.timer.attempts;
        self.resend(state, attempts).await
    }

    /// Resends every pending command (participants dedupe) and re-arms the timer.
    async fn resend(&self, state: &mut OrderState, attempts: i32) -> Result<(), OrderError> {
        let order = self.ensure_loaded(state.id, &mut state.order).await?;
        let pending = saga::pending_commands(&order.saga);
        let effects: Vec<Effect> = pending.iter().map(|c| Effect::Send(*c)).collect();
        let messages = outbox_messages(order, &effects, self.ctx.ownership.reply_to())?;
        let timer = self.ctx.timer_for(&order.saga, attempts);
        let resent = !messages.is_empty();
        let write = OrderWrite::Retry {
            order_id: order.id,
            expected_version: order.version,
            timer,
            messages,
        };
        let version = self.ctx.writer.write(write).await.map_err(saved_error)?;
        if resent {
            self.ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(status = %order.saga.status, attempts, commands = ?pending, "resending pending commands");
        }
        order.version = version;
        order.timer = timer;
        Ok(())
    }
}

/// The current time at the precision the database keeps (microseconds), so an order
/// served from an actor's memory reads exactly as the same order read back from storage.
fn stored_now() -> chrono::DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

fn saved_error(e: SaveError) -> OrderError {
    match e {
        SaveError::Conflict(id) => OrderError::Conflict(id),
        SaveError::KeyTaken(id) => OrderError::KeyTaken(id),
        SaveError::Fenced(id) => OrderError::NotOwner(id),
        SaveError::Db(db) => OrderError::Storage(db.to_string()),
    }
}

fn is_duplicate_key(e: &DbErr) -> bool {
    matches!(
        e.sql_err(),
        Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
    )
}

/// Transition metrics: the event, how long the order waited on the step it leaves, and
/// the whole saga's duration once terminal.
fn record_transition(
    before: &OrderRecord,
    after: &Saga,
    event: &Event,
    now: chrono::DateTime<Utc>,
    stats: &ActorStats,
) {
    let (from, to) = (before.saga.status, after.status);
    metrics::counter!(
        "order_transitions_total",
        "from" => from.as_str(),
        "to" => to.as_str(),
        "event" => event.name()
    )
    .increment(1);
    let step = match from {
        OrderStatus::Pending => Some("reservation"),
        OrderStatus::StockReserved => Some("payment"),
        OrderStatus::Paid => Some("shipment"),
        OrderStatus::Compensating => Some("compensation"),
        _ => None,
    };
    if let (Some(step), Ok(waited)) = (step, (now - before.updated_at).to_std()) {
        metrics::histogram!("saga_step_duration_seconds", "step" => step)
            .record(waited.as_secs_f64());
    }
    if to.is_terminal()
        && let Ok(total) = (now - before.created_at).to_std()
    {
        metrics::histogram!("saga_duration_seconds", "outcome" => to.as_str())
            .record(total.as_secs_f64());
        stats
            .finished
            .record(now.timestamp(), total.as_secs_f64() * 1000.0);
    }
}
