//! The participants' runtime: Inventory, Payment and Shipping as consumers of their
//! command queues, each with its outbox relay. They share nothing with the orchestrator but
//! the bus; the service runs them embedded or as the `participants` process.

use crate::faults::Faults;
use crate::messaging::relay::OutboxRelay;
use crate::messaging::{Bus, IncomingMessage, consumer, topology};
use crate::participants::inventory::{self, Inventory};
use crate::participants::payment::Payment;
use crate::participants::shipping::Shipping;
use crate::participants::{CommandHandler, handle_batch};
use crate::persistence::Stores;
use crate::persistence::outbox::OutboxFeed;
use crate::tuning::PARTICIPANT_BATCHING;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The mock gateways' behaviour.
#[derive(Debug, Clone, Default)]
pub struct ParticipantSettings {
    pub payment_decline_rate: f64,
    pub shipping_failure_rate: f64,
    /// Fault injection: command types acked and ignored (a participant that never answers).
    pub faults: Arc<Faults>,
    /// `RELAY_LINGER_MS` of the participants' outbox relays.
    pub relay_linger: Duration,
}

/// Starts Inventory, Payment and Shipping (consumers and outbox relays) as tasks of
/// `workers`. They share nothing with the orchestrator but the bus.
pub fn spawn(
    workers: &mut JoinSet<()>,
    stores: &Stores,
    bus: &Bus,
    settings: ParticipantSettings,
    shutdown: &CancellationToken,
) {
    let feeds: [OutboxFeed; 3] = Default::default();
    let [inventory_feed, payment_feed, shipping_feed] = feeds;
    for (name, db, feed) in [
        ("inventory", &stores.inventory, &inventory_feed),
        ("payment", &stores.payment, &payment_feed),
        ("shipping", &stores.shipping, &shipping_feed),
    ] {
        workers.spawn(
            OutboxRelay::new(name, db.clone(), bus.clone(), feed.clone())
                .busy_linger(settings.relay_linger)
                .run(shutdown.clone()),
        );
    }
    let inventory = Inventory::new(stores.inventory.clone(), inventory_feed);
    let payment = Payment::new(
        stores.payment.clone(),
        payment_feed,
        settings.payment_decline_rate,
    );
    let shipping = Shipping::new(
        stores.shipping.clone(),
        shipping_feed,
        settings.shipping_failure_rate,
    );
    let queue = |name| (bus.clone(), name, shutdown.clone(), settings.faults.clone());
    workers.spawn(consume_commands(
        queue(topology::INVENTORY_QUEUE),
        inventory.clone(),
    ));
    workers.spawn(consume_commands(queue(topology::PAYMENT_QUEUE), payment));
    workers.spawn(consume_commands(queue(topology::SHIPPING_QUEUE), shipping));
    workers.spawn(consume_commands(
        queue(topology::INVENTORY_EVENTS_QUEUE),
        inventory::OrderEvents(inventory),
    ));
}

/// Runs one participant queue in batches; commands listed in `FAULT_DROP_COMMANDS` are
/// acked without effect.
async fn consume_commands<P: CommandHandler>(
    (bus, queue, shutdown, faults): (Bus, &'static str, CancellationToken, Arc<Faults>),
    participant: P,
) {
    consumer::run_batched(bus, queue, PARTICIPANT_BATCHING, shutdown, move |batch| {
        let (participant, faults) = (participant.clone(), faults.clone());
        async move {
            if !faults.drops_commands() {
                return handle_batch(&participant, &batch).await;
            }
            let (kept, positions): (Vec<_>, Vec<_>) = batch
                .iter()
                .enumerate()
                .filter(|(_, m)| !dropping(&faults, m))
                .map(|(i, m)| (m.clone(), i))
                .unzip();
            let mut handled = handle_batch(&participant, &kept).await.into_iter();
            drop(kept);
            let mut out: Vec<_> = (0..batch.len())
                .map(|_| consumer::Disposition::Ack)
                .collect();
            for position in positions {
                if let Some(d) = handled.next() {
                    out[position] = d;
                }
            }
            out
        }
    })
    .await
}

/// Fault injection: a command type configured to be dropped is acked without effect.
fn dropping(faults: &Faults, message: &IncomingMessage) -> bool {
    let drops = faults.drops(&message.routing_key);
    if drops {
        tracing::warn!(routing_key = %message.routing_key, "fault injection: dropping command (FAULT_DROP_COMMANDS)");
    }
    drops
}
