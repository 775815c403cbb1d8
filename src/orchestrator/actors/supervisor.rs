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
    restarts: RestartLog,
}

/// Recent restart times per order, for the crash-loop bound. Bounded: an order's entry goes
/// when its actor stops normally, when the order is parked, and once all its restarts are
/// older than [`RESTART_WINDOW`].
#[derive(Debug, Default)]
struct RestartLog {
    by_order: HashMap<Uuid, Vec<Instant>>,
}

impl RestartLog {
    /// Records that `id`'s actor failed at `now`. Returns whether it failed [`MAX_RESTARTS`]
    /// times within the window before: a crash loop, not to be restarted (then the entry
    /// goes too).
    fn crash_loop(&mut self, id: Uuid, now: Instant) -> bool {
        self.by_order.retain(|_, times| {
            times.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            !times.is_empty()
        });
        let recent = self.by_order.entry(id).or_default();
        if recent.len() >= MAX_RESTARTS {
            self.by_order.remove(&id);
            return true;
        }
        recent.push(now);
        false
    }

    /// The order's actor stopped normally: its earlier failures are over.
    fn forget(&mut self, id: Uuid) {
        self.by_order.remove(&id);
    }
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
            restarts: RestartLog::default(),
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
                    state.restarts.forget(id);
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(id) = state.children.remove(&cell.get_id()) else {
                    return Ok(());
                };
                self.registry
                    .remove_if(&id, |_, actor| actor.get_id() == cell.get_id());
                if state.restarts.crash_loop(id, Instant::now()) {
                    if self.has_ended(id).await {
                        // Nothing is left to do for it: neither park nor restart it; the
                        // next message for it gets a fresh actor.
                        metrics::counter!("order_actor_failures_after_end_total").increment(1);
                        tracing::error!(order_id = %id, %error, "order actor keeps failing on a finished order; not parking it");
                        return Ok(());
                    }
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
    /// Whether the order is terminal (read from the database); parking a finished order
    /// would make a crash loop on a late message look like a stuck order.
    async fn has_ended(&self, id: Uuid) -> bool {
        match orders::load(&self.ctx.db, id).await {
            Ok(order) => order.is_some_and(|o| o.saga.status.is_terminal()),
            Err(e) => {
                tracing::warn!(order_id = %id, error = %e, "could not read the crash-looping order");
                false
            }
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_log_does_not_grow_with_orders_restarted_long_ago() {
        let mut log = RestartLog::default();
        let start = Instant::now();
        // Every second ten orders fail once each, for three windows.
        for second in 0..3 * RESTART_WINDOW.as_secs() {
            let now = start + Duration::from_secs(second);
            for _ in 0..10 {
                assert!(!log.crash_loop(Uuid::now_v7(), now));
            }
            assert!(
                log.by_order.len() <= 10 * RESTART_WINDOW.as_secs() as usize,
                "{} entries at {second}s",
                log.by_order.len()
            );
        }
        // One failure later than a window after the last ones leaves only its own entry.
        let later = start + 4 * RESTART_WINDOW;
        assert!(!log.crash_loop(Uuid::now_v7(), later));
        assert_eq!(log.by_order.len(), 1);
    }

    #[test]
    fn an_actor_that_stops_normally_takes_its_entry_along() {
        let mut log = RestartLog::default();
        let now = Instant::now();
        let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            assert!(!log.crash_loop(*id, now));
        }
        for id in &ids {
            log.forget(*id);
        }
        assert_eq!(log.by_order.len(), 0);
    }

    #[test]
    fn the_failure_after_max_restarts_in_the_window_is_a_crash_loop() {
        let mut log = RestartLog::default();
        let (id, start) = (Uuid::now_v7(), Instant::now());
        let second = Duration::from_secs(1);
        for i in 0..MAX_RESTARTS as u32 {
            assert!(!log.crash_loop(id, start + i * second), "restart {i}");
        }
        assert!(log.crash_loop(id, start + MAX_RESTARTS as u32 * second));
        assert_eq!(log.by_order.len(), 0, "a parked order's entry goes");
        // Failures spread wider than the window never add up to a crash loop.
        for i in 0..3 * MAX_RESTARTS as u32 {
            assert!(!log.crash_loop(id, start + i * RESTART_WINDOW));
        }
    }
}
