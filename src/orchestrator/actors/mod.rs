//! The actors: the [`supervisor::OrderSupervisor`] and one [`order_actor::OrderActor`] per
//! order. [`Orders`] is the handle the rest of the service uses to reach them.

pub mod order_actor;
pub mod supervisor;

use crate::domain::saga::{Event, OrderStatus, Saga};
use crate::domain::view::OrderDetails;
use order_actor::{ActorStats, NewOrder, OrderContext, OrderError, OrderMsg};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use supervisor::{OrderSupervisor, Registry, SupervisorMsg};
use uuid::Uuid;

/// How long a caller waits for an order actor to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts when the actor stopped between lookup and send (passivation race).
const ATTEMPTS: usize = 5;

/// How a long poll ended.
#[derive(Debug)]
pub enum Waited<T> {
    /// The actor that finished the order handed it over.
    Finished(Arc<OrderDetails>),
    /// The last check's answer (terminal, not found, or the wait ran out).
    Checked(T),
}

/// Cheap, cloneable handle to the order actors.
#[derive(Clone)]
pub struct Orders {
    supervisor: ActorRef<SupervisorMsg>,
    registry: Registry,
    stats: Arc<ActorStats>,
    watchers: order_actor::Watchers,
}

impl Orders {
    pub async fn start(ctx: OrderContext) -> anyhow::Result<Orders> {
        let registry: Registry = Arc::default();
        let stats = ctx.stats.clone();
        let watchers = ctx.watchers.clone();
        let (supervisor, _handle) = Actor::spawn(
            None,
            OrderSupervisor {
                ctx: Arc::new(ctx),
                registry: registry.clone(),
            },
            (),
        )
        .await?;
        Ok(Orders {
            supervisor,
            registry,
            stats,
            watchers,
        })
    }

    /// Number of order actors currently alive (not passivated).
    pub fn live_actors(&self) -> usize {
        self.registry.len()
    }

    async fn actor(&self, id: Uuid) -> Result<ActorRef<OrderMsg>, OrderError> {
        if let Some(actor) = self.registry.get(&id) {
            return Ok(actor.clone());
        }
        match self
            .supervisor
            .call(
                |port| SupervisorMsg::GetOrSpawn(id, port),
                Some(CALL_TIMEOUT),
            )
            .await
        {
            Ok(CallResult::Success(Ok(actor))) => Ok(actor),
            Ok(CallResult::Success(Err(e))) => Err(OrderError::Unavailable(e)),
            Ok(CallResult::Timeout) => Err(OrderError::Timeout),
            Ok(CallResult::SenderError) | Err(_) => {
                Err(OrderError::Unavailable("order supervisor stopped".into()))
            }
        }
    }

    /// Sends a request to the order's actor and waits for its answer. Retries when the
    /// actor stopped in between (it passivated or crashed): the next one reloads the order.
    async fn ask<T: Send + 'static>(
        &self,
        id: Uuid,
        build: impl Fn(ractor::RpcReplyPort<Result<T, OrderError>>) -> OrderMsg,
    ) -> Result<T, OrderError> {
        for _ in 0..ATTEMPTS {
            let actor = self.actor(id).await?;
            match actor.call(&build, Some(CALL_TIMEOUT)).await {
                Ok(CallResult::Success(result)) => return result,
                Ok(CallResult::Timeout) => return Err(OrderError::Timeout),
                Ok(CallResult::SenderError) | Err(_) => {
                    self.registry
                        .remove_if(&id, |_, live| live.get_id() == actor.get_id());
                }
            }
        }
        Err(OrderError::Unavailable(format!(
            "order {id} actor stopped repeatedly"
        )))
    }

    #[tracing::instrument(skip_all, fields(order_id = %order.id))]
    pub async fn create(&self, order: NewOrder) -> Result<OrderDetails, OrderError> {
        let id = order.id;
        // The actor's span is this one's child, although it runs in the actor's task.
        let caller = tracing::Span::current();
        self.ask(id, |port| {
            OrderMsg::Create(Box::new(order.clone()), caller.clone(), port)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(order_id = %id, event = event.name()))]
    pub async fn apply(&self, id: Uuid, event: Event) -> Result<Saga, OrderError> {
        let caller = tracing::Span::current();
        self.ask(id, |port| {
            OrderMsg::Apply(event.clone(), caller.clone(), port)
        })
        .await
    }

    /// Tells the order its step deadline passed (from the timer scanner).
    pub async fn deadline_expired(&self, id: Uuid) -> Result<(), OrderError> {
        self.ask(id, OrderMsg::DeadlineExpired).await
    }

    /// Resumes a non-terminal order after a restart.
    pub async fn resume(&self, id: Uuid) -> Result<(), OrderError> {
        self.ask(id, OrderMsg::Resume).await
    }

    /// Waits until the order is terminal or `timeout` passes. `check` says whether it is
    /// (reading the database); it runs once after registering, so a terminal transition in
    /// between is not missed, and again every second, because another replica's actor
    /// does not wake us. When the actor that finished the order knew its whole history,
    /// the waiter gets the final order from it, without a read.
    pub async fn wait_terminal<F, Fut, T>(
        &self,
        id: Uuid,
        timeout: Duration,
        mut check: F,
    ) -> Waited<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = (bool, T)>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let cleanup = |watchers: &order_actor::Watchers| {
            watchers.remove_if(&id, |_, w| Arc::strong_count(w) <= 2);
        };
        loop {
            let watch = self.watchers.entry(id).or_default().clone();
            let notified = watch.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (done, value) = check().await;
            let now = tokio::time::Instant::now();
            if done || now >= deadline {
                cleanup(&self.watchers);
                return Waited::Checked(value);
            }
            let pause = (deadline - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(pause, notified).await;
            if let Some(details) = watch.finished.get() {
                cleanup(&self.watchers);
                return Waited::Finished(details.clone());
            }
        }
    }

    /// The status of an order whose actor is in memory, from the actor (no database read);
    /// `None` when no actor holds the order (then ask the database).
    pub async fn live_status(&self, id: Uuid) -> Option<OrderStatus> {
        let actor = self.registry.get(&id).map(|a| a.clone())?;
        match actor.call(OrderMsg::Peek, Some(CALL_TIMEOUT)).await {
            Ok(CallResult::Success(status)) => status,
            _ => None,
        }
    }

    pub fn stats(&self) -> &ActorStats {
        &self.stats
    }

    /// Stops the supervisor and with it every order actor.
    pub fn stop(&self) {
        self.supervisor.stop(None);
    }
}
