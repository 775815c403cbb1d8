//! The order supervisor: spawns one [`OrderActor`] per order id on demand, keeps the
//! registry of live actors, and restarts an actor that panicked (bounded per order).
//!
//! Spawning goes through the supervisor's mailbox so two callers can never create two
//! actors for one order; lookups of live actors read the registry directly.

use crate::orchestrator::actors::order_actor::{OrderActor, OrderContext, OrderMsg};
use crate::persistence::orders;
use dashmap::DashMap;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Restarts allowed per order within [`RESTART_WINDOW`] before the supervisor gives up.
pub const MAX_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

pub type Registry = Arc<DashMap<Uuid, ActorRef<OrderMsg>>>;

pub enum SupervisorMsg {
    /// The live actor for this order, spawned if needed.
    GetOrSpawn(Uuid, RpcReplyPort<Result<ActorRef<OrderMsg>, String>>),
}

pub struct OrderSupervisor {
    pub ctx: Arc<OrderContext>,
    pub registry: Registry,
}

pub struct SupervisorState {
    /// Which order each child actor serves, to clean the registry when it stops.
    children: HashMap<ActorId, Uuid>,
    /// Recent restart times per order, for the crash-loop bound.
    restarts: HashMap<Uuid, Vec<Instant>>,
}

impl Actor for OrderSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState {
            children: HashMap::new(),
            restarts: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::GetOrSpawn(id, reply) => {
                let result = match self.registry.get(&id) {
                    Some(existing) => Ok(existing.clone()),
                    None => self.spawn_child(&myself, state, id).await,
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    // Overridden: the default stops the supervisor whenever a child stops.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(id) = state.children.remove(&cell.get_id()) {
                    self.registry
                        .remove_if(&id, |_, actor| actor.get_id() == cell.get_id());
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(id) = state.children.remove(&cell.get_id()) else {
                    return Ok(());
                };
                self.registry
                    .remove_if(&id, |_, actor| actor.get_id() == cell.get_id());
                let now = Instant::now();
                let recent = state.restarts.entry(id).or_default();
                recent.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
                if recent.len() >= MAX_RESTARTS {
                    state.restarts.remove(&id);
                    let reason = format!(
                        "order actor failed {MAX_RESTARTS} times within {}s; last error: {error}",
                        RESTART_WINDOW.as_secs()
                    );
                    tracing::error!(order_id = %id, %reason, "crash loop: parking the order");
                    self.ctx.stats.parked.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = orders::park(&self.ctx.db, id, &reason).await {
                        tracing::error!(order_id = %id, error = %e, "could not park the order");
                    }
                    return Ok(());
                }
                recent.push(now);
                self.ctx.stats.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(order_id = %id, %error, "order actor failed; restarting from the database");
                if let Err(e) = self.spawn_child(&myself, state, id).await {
                    tracing::error!(order_id = %id, error = %e, "could not restart order actor");
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl OrderSupervisor {
    async fn spawn_child(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        id: Uuid,
    ) -> Result<ActorRef<OrderMsg>, String> {
        let actor = OrderActor {
            ctx: self.ctx.clone(),
        };
        let (child, _handle) = Actor::spawn_linked(None, actor, id, myself.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        state.children.insert(child.get_id(), id);
        self.registry.insert(id, child.clone());
        Ok(child)
    }
}
