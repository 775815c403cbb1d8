//! The consumer of `orchestrator.replies`: decodes each participant reply and hands it to
//! the orchestrator (the `handler`), inside a span that continues the reply's trace. A
//! reply that cannot be decoded is dead-lettered; the handler decides the rest.

use crate::messaging::consumer::{self, Disposition};
use crate::messaging::messages::{Envelope, ReplyBody};
use crate::messaging::{Bus, IncomingMessage};
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

/// Runs a reply queue (the shared one, or a replica's own) with `concurrency` deliveries at
/// once until `shutdown`.
pub async fn run<F, Fut>(
    bus: Bus,
    queue: &'static str,
    concurrency: u16,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Uuid, ReplyBody) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    consumer::run(bus, queue, concurrency, shutdown, move |message| {
        let handler = handler.clone();
        let span = message.process_span();
        async move {
            match decode(&message) {
                Ok(envelope) => handler(envelope.order_id, envelope.body).await,
                Err(dead) => dead,
            }
        }
        .instrument(span)
    })
    .await
}

fn decode(message: &Arc<IncomingMessage>) -> Result<Envelope<ReplyBody>, Disposition> {
    serde_json::from_slice(&message.payload)
        .map_err(|e| Disposition::DeadLetter(format!("undecodable {}: {e}", message.routing_key)))
}
