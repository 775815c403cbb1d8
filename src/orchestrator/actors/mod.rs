//! The actors: the [`supervisor::OrderSupervisor`] and one [`order_actor::OrderActor`] per
//! order. [`Orders`] is the handle the rest of the service uses to reach them.

pub mod order_actor;
pub mod recent;
pub mod retry;
pub mod supervisor;
pub mod waiters;

use crate::domain::saga::{Event, OrderStatus, Saga};
use crate::domain::view::OrderDetails;
use crate::persistence::ownership::Ownership;
use order_actor::{ActorStats, NewOrder, OrderContext, OrderError, OrderMsg};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use supervisor::{OrderSupervisor, Registry, SupervisorMsg};
use uuid::Uuid;
pub use waiters::Waited;
use waiters::Waiters;

/// How long a caller waits for an order actor to answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts when the actor stopped between lookup and send (passivation race).
const ATTEMPTS: usize = 5;

/// Cheap, cloneable handle to the order actors.
#[derive(Clone)]
pub struct Orders {
    supervisor: ActorRef<SupervisorMsg>,
    registry: Registry,
    stats: Arc<ActorStats>,
    waiters: Waiters,
    ownership: Ownership,
}

impl Orders {
    pub async fn start(ctx: OrderContext) -> anyhow::Result<Orders> {
        let registry: Registry = Arc::default();
        let stats = ctx.stats.clone();
        let waiters = ctx.waiters.clone();
        let ownership = ctx.ownership.clone();
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
            waiters,
            ownership,
        })
    }

    /// Number of order actors currently alive (not passivated).
    pub fn live_actors(&self) -> usize {
        self.registry.len()
    }

    /// Which orders this replica serves.
    pub fn ownership(&self) -> &Ownership {
        &self.ownership
    }

    async fn actor(&self, id: Uuid) -> Result<ActorRef<OrderMsg>, OrderError> {
        // Another replica's order gets no actor here (its writes would be fenced anyway).
        if !self.ownership.serves(id) {
            return Err(OrderError::NotOwner(id));
        }
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

    /// Un-parks a parked order and resends what its saga waits for (an operator's call).
    #[tracing::instrument(skip_all, fields(order_id = %id))]
    pub async fn unpark(&self, id: Uuid, reason: String) -> Result<(), OrderError> {
        let caller = tracing::Span::current();
        self.ask(id, |port| {
            OrderMsg::Unpark(reason.clone(), caller.clone(), port)
        })
        .await
    }

    /// Resumes a non-terminal order after a restart.
    pub async fn resume(&self, id: Uuid) -> Result<(), OrderError> {
        self.ask(id, OrderMsg::Resume).await
    }

    /// Waits until the order is terminal or `timeout` passes ([`Waiters::wait`]). When
    /// the actor that finished the order knew its whole history, the waiter gets the final
    /// order from it, without a read.
    pub async fn wait_terminal<F, Fut, T>(&self, id: Uuid, timeout: Duration, check: F) -> Waited<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = (bool, T)>,
    {
        self.waiters.wait(id, timeout, check).await
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

    /// Stops the actors of the orders in `partition` (handed over or lost), each once it has
    /// finished the message in hand; returns how many there were.
    pub async fn stop_partition(&self, partition: u16) -> usize {
        let actors: Vec<ActorRef<OrderMsg>> = self
            .registry
            .iter()
            .filter(|entry| self.ownership.partition_of(*entry.key()) == Some(partition))
            .map(|entry| entry.value().clone())
            .collect();
        let count = actors.len();
        futures::future::join_all(actors.into_iter().map(|actor| async move {
            let reason = Some("partition handed over".to_owned());
            let _ = actor.stop_and_wait(reason, Some(CALL_TIMEOUT)).await;
        }))
        .await;
        count
    }

    /// Stops the supervisor and with it every order actor.
    pub fn stop(&self) {
        self.supervisor.stop(None);
    }
}
