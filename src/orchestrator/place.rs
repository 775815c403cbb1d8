//! Placing an order, with the idempotency protocol: the same `Idempotency-Key` with the
//! same request gets the first answer again, with another request a mismatch, while the
//! first is still running "in flight"; a request that created nothing gives its key back.

use crate::domain::order::{ValidOrder, total_cents};
use crate::domain::view::OrderLine;
use crate::orchestrator::{NewOrder, Orchestrator, OrderError};
use crate::persistence::idempotency::{self, Claim};
use futures::future::BoxFuture;
use sea_orm::DbErr;
use std::time::Instant;
use uuid::Uuid;

/// Prices an order against the catalogue and checks its stock (Inventory's store).
pub trait Catalogue: Send + Sync + 'static {
    /// The unit price of each line, in order; `Ok(Err(_))` when the order cannot be taken.
    fn quote<'a>(
        &'a self,
        items: &'a [(String, i64)],
    ) -> BoxFuture<'a, Result<Result<Vec<i64>, Refusal>, DbErr>>;
}

/// Why an order cannot be taken as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownSku(String),
    Insufficient {
        sku: String,
        requested: i64,
        available: i64,
    },
    /// The total does not fit in 64-bit cents.
    TotalOverflow,
}

/// A validated order and the idempotency key it came with.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    pub key: String,
    /// Hash of the canonical request: "the same request" means the same hash.
    pub request_hash: String,
    pub order: ValidOrder,
    /// W3C `traceparent` of the caller, carried on the order's messages.
    pub trace_context: Option<String>,
    /// The status the caller answers a new order with, stored with the key so that a
    /// replay repeats it.
    pub answer_status: u16,
}

/// How a placement ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Placed {
    /// This request's order (created now, or by an earlier attempt of the same request
    /// whose answer was lost): `body` is the order as created.
    Created {
        order_id: Uuid,
        status: u16,
        body: String,
    },
    /// The key already holds another request's answer (same request): repeat it.
    Replayed {
        order_id: Option<Uuid>,
        status: u16,
        body: String,
    },
    /// The key was first used with a different request.
    Mismatch,
    /// A request with this key is still running.
    InFlight,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("{limit} orders are in progress (MAX_ORDERS_IN_FLIGHT)")]
    Overloaded { limit: usize },
    #[error("order refused: {0:?}")]
    Refused(Refusal),
    #[error(transparent)]
    Order(OrderError),
    #[error(transparent)]
    Storage(DbErr),
    #[error("serializing the order: {0}")]
    Internal(#[from] serde_json::Error),
}

impl PlaceError {
    /// After a timeout or an unavailable actor the order's write may still be queued and
    /// commit later, filling in the key (and an answer that failed to serialize was
    /// committed already).
    fn may_still_commit(&self) -> bool {
        matches!(
            self,
            PlaceError::Storage(_)
                | PlaceError::Internal(_)
                | PlaceError::Order(
                    OrderError::Conflict(_)
                        | OrderError::Timeout
                        | OrderError::Unavailable(_)
                        | OrderError::Storage(_)
                )
        )
    }
}

impl Orchestrator {
    /// Prices and creates the order, or answers from its idempotency key.
    pub async fn place(&self, request: PlaceOrder) -> Result<Placed, PlaceError> {
        let limit = self.settings.max_orders_in_flight;
        if limit > 0 && self.live_actors() >= limit {
            // Shed load before any work (nothing is claimed or written): the sagas in
            // flight keep the CPU and the database, and the client retries with the key.
            metrics::counter!("orders_rejected_overload_total").increment(1);
            return Err(PlaceError::Overloaded { limit });
        }
        // The id this request's order gets, whichever write creates it: a replay that
        // names it is this request's own order (its first write committed, the answer was
        // lost when the actor crashed, and the retried write found the key taken).
        let own_id = self.new_order_id();
        let started = Instant::now();
        let quote = match self.catalogue.quote(&request.order.items).await {
            Ok(Ok(prices)) => Ok(prices),
            Ok(Err(refusal)) => Err(PlaceError::Refused(refusal)),
            Err(e) => Err(PlaceError::Storage(e)),
        };
        metrics::histogram!("order_create_phase_seconds", "phase" => "stock_check")
            .record(started.elapsed().as_secs_f64());
        if let Ok(prices) = &quote {
            // The usual case, a key not seen before: the order's own write claims the key
            // and creates the order only if the key was free — one write, no claim first.
            let claim = Some(request.request_hash.as_str());
            if let Some(body) = self.create(own_id, &request, prices, claim).await? {
                return Ok(self.created(own_id, &request, body));
            }
        }
        // The key is in use, or the stock check refused the order (a repeated request must
        // still get its first answer): claim the key on its own and decide from its row.
        let started = Instant::now();
        let claim = self.claims.claim(&request.key, &request.request_hash).await;
        metrics::histogram!("order_create_phase_seconds", "phase" => "claim")
            .record(started.elapsed().as_secs_f64());
        match claim.map_err(PlaceError::Storage)? {
            Claim::New => {}
            Claim::Replay { status, body } => {
                let order_id = order_id_of(&body);
                if order_id == Some(own_id) {
                    return Ok(Placed::Created {
                        order_id: own_id,
                        status,
                        body,
                    });
                }
                metrics::counter!("idempotency_replays_total").increment(1);
                return Ok(Placed::Replayed {
                    order_id,
                    status,
                    body,
                });
            }
            Claim::Mismatch => {
                metrics::counter!("idempotency_conflicts_total", "kind" => "mismatch").increment(1);
                return Ok(Placed::Mismatch);
            }
            Claim::InFlight => {
                metrics::counter!("idempotency_conflicts_total", "kind" => "in_flight")
                    .increment(1);
                return Ok(Placed::InFlight);
            }
        }
        let result = match quote {
            // A create without a claim never finds its key taken, and its own order exists
            // only if an attempt committed before its actor crashed; either way the key now
            // holds an answer, which a retry gets: "in flight".
            Ok(prices) => self.create(own_id, &request, &prices, None).await,
            Err(refused) => Err(refused),
        };
        let keep_key = matches!(&result, Err(e) if e.may_still_commit());
        if !matches!(result, Ok(Some(_))) && !keep_key {
            // Nothing was created: give the key back so a corrected retry may use it.
            // (A kept key is completed by the late write, or taken over once abandoned.)
            if let Err(e) = idempotency::release(&self.db, &request.key).await {
                tracing::warn!(error = %e, "could not release idempotency key");
            }
        }
        Ok(match result? {
            Some(body) => self.created(own_id, &request, body),
            None => Placed::InFlight,
        })
    }

    fn created(&self, order_id: Uuid, request: &PlaceOrder, body: String) -> Placed {
        Placed::Created {
            order_id,
            status: request.answer_status,
            body,
        }
    }

    /// Creates the order under `id`, the request's own. `claims_with_hash`: `Some(hash)`
    /// when the order's write is to claim the key; `None`: it is claimed already.
    /// `Ok(None)`: nothing was written now and the key holds the answer — it was taken,
    /// or an earlier attempt of this request already created the order.
    async fn create(
        &self,
        id: Uuid,
        request: &PlaceOrder,
        prices: &[i64],
        claims_with_hash: Option<&str>,
    ) -> Result<Option<String>, PlaceError> {
        let valid = &request.order;
        let items: Vec<OrderLine> = valid
            .items
            .iter()
            .zip(prices)
            .map(|((sku, quantity), price)| OrderLine {
                sku: sku.clone(),
                quantity: *quantity,
                unit_price_cents: *price,
            })
            .collect();
        let total = total_cents(items.iter().map(|l| (l.quantity, l.unit_price_cents)))
            .ok_or(PlaceError::Refused(Refusal::TotalOverflow))?;
        let order = NewOrder {
            id,
            customer_id: valid.customer_id.clone(),
            currency: valid.currency.clone(),
            items,
            total_cents: total,
            payment_mode: self.settings.payment_mode,
            idempotency_key: Some(request.key.clone()),
            claims_key_with_hash: claims_with_hash.map(str::to_owned),
            answer_status: request.answer_status,
            trace_context: request.trace_context.clone(),
        };
        let started = Instant::now();
        let Some(details) = created_or_taken(self.orders.create(order).await, id)? else {
            return Ok(None);
        };
        metrics::histogram!("order_create_phase_seconds", "phase" => "create_and_commit")
            .record(started.elapsed().as_secs_f64());
        Ok(Some(serde_json::to_string(&details)?))
    }
}

fn created_or_taken<T>(
    answer: Result<T, OrderError>,
    own_id: Uuid,
) -> Result<Option<T>, PlaceError> {
    match answer {
        Ok(details) => Ok(Some(details)),
        Err(OrderError::KeyTaken(_)) => Ok(None),
        Err(OrderError::AlreadyExists(id)) if id == own_id => Ok(None),
        Err(other) => Err(PlaceError::Order(other)),
    }
}

/// The order id in a stored answer.
fn order_id_of(body: &str) -> Option<Uuid> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()?
        .get("id")?
        .as_str()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_order_under_the_requests_own_id_is_answered_from_the_key() {
        let own = Uuid::now_v7();
        assert!(matches!(
            created_or_taken::<()>(Err(OrderError::AlreadyExists(own)), own),
            Ok(None)
        ));
        assert!(matches!(
            created_or_taken::<()>(Err(OrderError::KeyTaken(own)), own),
            Ok(None)
        ));
    }

    #[test]
    fn an_existing_order_under_another_id_stays_a_conflict() {
        let (own, other) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(matches!(
            created_or_taken::<()>(Err(OrderError::AlreadyExists(other)), own),
            Err(PlaceError::Order(OrderError::AlreadyExists(id))) if id == other
        ));
    }

    #[test]
    fn only_failures_that_may_still_commit_keep_the_key() {
        let id = Uuid::now_v7();
        assert!(PlaceError::Order(OrderError::Timeout).may_still_commit());
        assert!(PlaceError::Order(OrderError::Conflict(id)).may_still_commit());
        assert!(!PlaceError::Refused(Refusal::TotalOverflow).may_still_commit());
        assert!(!PlaceError::Order(OrderError::AlreadyExists(id)).may_still_commit());
    }
}
