//! What lies in `order.dead-letters`, for operators: listed without being consumed, then
//! replayed to the queue each message was rejected from (the same idempotent consumers
//! take it again) or discarded. The messages stay in the broker's queue until then, so the
//! broker's own tools keep showing them.
//!
//! A dead letter has no broker-side id: it is named by a digest of what it is (queue of
//! origin, routing key, message id, body), stable across listings; identical messages share
//! one and are settled one at a time.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The most messages one listing or one settle-all looks at: the rest wait for the next.
pub const SCAN_LIMIT: usize = 10_000;
/// The most bytes of a body a listing shows.
pub const BODY_SHOWN: usize = 4096;

/// Headers the broker sets on a dead letter (on both buses).
pub const FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
pub const FIRST_DEATH_REASON: &str = "x-first-death-reason";
pub const FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";
/// A replay goes through the default exchange, whose routing key is the queue's name: the
/// key the message was first sent with travels in this header, and consumers see that one.
pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";

/// One dead letter as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: String,
    /// The queue that rejected it, where a replay sends it.
    #[schema(required = true)]
    pub queue: Option<String>,
    /// The exchange it was first published to.
    #[schema(required = true)]
    pub exchange: Option<String>,
    pub routing_key: String,
    /// The broker's reason: `rejected` (a consumer found it poison), `expired`, `maxlen`.
    #[schema(required = true)]
    pub reason: Option<String>,
    #[schema(required = true)]
    pub message_id: Option<String>,
    /// The AMQP `type` property, e.g. `stock.reserved`.
    #[serde(rename = "type")]
    #[schema(required = true)]
    pub kind: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// The body as text (lossy), at most [`BODY_SHOWN`] bytes of it.
    pub body: String,
    pub body_bytes: usize,
}

impl DeadLetter {
    pub fn new(
        routing_key: String,
        message_id: Option<String>,
        kind: Option<String>,
        headers: BTreeMap<String, String>,
        body: &[u8],
    ) -> DeadLetter {
        let queue = headers.get(FIRST_DEATH_QUEUE).cloned();
        let routing_key = headers
            .get(ORIGINAL_ROUTING_KEY)
            .cloned()
            .unwrap_or(routing_key);
        DeadLetter {
            id: id_of(queue.as_deref(), &routing_key, message_id.as_deref(), body),
            exchange: headers.get(FIRST_DEATH_EXCHANGE).cloned(),
            reason: headers.get(FIRST_DEATH_REASON).cloned(),
            queue,
            routing_key,
            message_id,
            kind,
            headers,
            body: String::from_utf8_lossy(&body[..body.len().min(BODY_SHOWN)]).into_owned(),
            body_bytes: body.len(),
        }
    }
}

/// The id of a dead letter: 32 hex digits of a digest of what it is.
pub fn id_of(
    queue: Option<&str>,
    routing_key: &str,
    message_id: Option<&str>,
    body: &[u8],
) -> String {
    let mut digest = Sha256::new();
    for part in [queue.unwrap_or(""), routing_key, message_id.unwrap_or("")] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest.update(body);
    hex::encode(&digest.finalize()[..16])
}

/// A listing: the first dead letters and how many the queue holds.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = DeadLetterList)]
pub struct Listing {
    pub dead_letters: Vec<DeadLetter>,
    pub total: u64,
}

/// What to do with the dead letters chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Back to the queue it was rejected from.
    Replay,
    Discard,
}

/// Which dead letters: one (by id) or all.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    One(&'a str),
    All,
}

impl Which<'_> {
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Which::One(wanted) => *wanted == id,
            Which::All => true,
        }
    }

    pub fn done(&self, settled: usize) -> bool {
        matches!(self, Which::One(_)) && settled > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_names_what_the_message_is_and_the_listing_shows_its_origin() {
        let mut headers = BTreeMap::new();
        headers.insert(FIRST_DEATH_QUEUE.to_owned(), "payment.commands".to_owned());
        headers.insert(FIRST_DEATH_REASON.to_owned(), "rejected".to_owned());
        let a = DeadLetter::new(
            "payment.charge".into(),
            Some("m1".into()),
            None,
            headers.clone(),
            b"{}",
        );
        let again = DeadLetter::new(
            "payment.charge".into(),
            Some("m1".into()),
            None,
            headers.clone(),
            b"{}",
        );
        let other = DeadLetter::new(
            "payment.charge".into(),
            Some("m2".into()),
            None,
            headers,
            b"{}",
        );
        assert_eq!(a.id, again.id);
        assert_ne!(a.id, other.id);
        assert_eq!(a.id.len(), 32);
        assert_eq!(a.queue.as_deref(), Some("payment.commands"));
        assert_eq!(a.reason.as_deref(), Some("rejected"));
        let big = vec![b'x'; BODY_SHOWN + 10];
        let shown = DeadLetter::new("k".into(), None, None, BTreeMap::new(), &big);
        assert_eq!(
            (shown.body.len(), shown.body_bytes),
            (BODY_SHOWN, BODY_SHOWN + 10)
        );
    }
}
