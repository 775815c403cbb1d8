//! The messaging topology — exchanges, queues and bindings — as plain data.
//!
//! The names here are the product contract shared with Inventory, Payment and Shipping, so
//! they live in one place. Both the RabbitMQ bus (which declares them on connect) and the
//! in-process bus (which routes with them) read the same [`EXCHANGES`], [`QUEUES`] and
//! [`BINDINGS`], so the two cannot drift apart. Routing follows AMQP semantics:
//! [`topic_matches`] for topic exchanges, every binding for fanout exchanges.

/// Commands from the orchestrator to the participants (`stock.*`, `payment.*`, `shipping.*`).
pub const COMMANDS_EXCHANGE: &str = "order.commands";
/// Replies from the participants to the orchestrator.
pub const REPLIES_EXCHANGE: &str = "order.replies";
/// Replies for one replica (several replicas): routed to the queue it consumes
/// ([`replica_reply_queue`]). Not `mandatory`: a reply for a replica whose queue is gone is
/// dropped (its orders' new owners resent their commands).
pub const REPLICA_REPLIES_EXCHANGE: &str = "order.replies.replicas";
/// Order lifecycle events (`order.<event>`) for any subscriber.
pub const EVENTS_EXCHANGE: &str = "order.events";
/// Dead-letter exchange: every work queue sends rejected (poison) messages here.
pub const DLX_EXCHANGE: &str = "order.dlx";

/// Inventory's command queue (`stock.*`).
pub const INVENTORY_QUEUE: &str = "inventory.commands";
/// Payment's command queue (`payment.*`).
pub const PAYMENT_QUEUE: &str = "payment.commands";
/// Shipping's command queue (`shipping.*`).
pub const SHIPPING_QUEUE: &str = "shipping.commands";
/// The orchestrator's reply queue: every reply on [`REPLIES_EXCHANGE`] (when one process owns
/// every order; with several replicas, see [`replica_reply_queue`]).
pub const ORCHESTRATOR_QUEUE: &str = "orchestrator.replies";
/// Inventory's subscription to `order.confirmed` (it marks reserved stock as sold).
pub const INVENTORY_EVENTS_QUEUE: &str = "inventory.order-events";
/// Where dead-lettered messages end up, for inspection and manual replay.
pub const DEAD_LETTER_QUEUE: &str = "order.dead-letters";

/// How an exchange routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routing key matched against binding patterns with [`topic_matches`].
    Topic,
    /// Every bound queue gets every message; the routing key is ignored.
    Fanout,
}

impl ExchangeType {
    /// The AMQP name of the exchange type.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
        }
    }
}

/// A durable exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExchangeSpec {
    pub name: &'static str,
    pub kind: ExchangeType,
    /// Whether a publish that reaches no queue is an error (AMQP `mandatory`).
    ///
    /// Commands and replies always have exactly one intended consumer, so a message that
    /// routes nowhere is a bug (a typo in a routing key) and must not vanish silently; the
    /// outbox keeps it and retries instead. Events are broadcast to whoever cares, and an
    /// event nobody subscribes to (e.g. `order.created` today) is normal, so it is dropped
    /// exactly as RabbitMQ drops it.
    pub mandatory: bool,
    /// Whether messages with the same routing key published together may travel as one
    /// AMQP message (a bundle, see `messaging::bundle`), which consumers of this service
    /// unpack. Commands and replies: yes, they are internal to the saga and many go the
    /// same way at once under load. Events: no, any subscriber reads them one by one.
    pub bundles: bool,
}

/// A durable queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSpec {
    pub name: &'static str,
    /// Exchange that receives messages rejected without requeue (`x-dead-letter-exchange`).
    /// `None` only for the dead-letter queue itself, so that a dead letter cannot loop.
    pub dead_letter_exchange: Option<&'static str>,
}

/// A binding of a queue to an exchange. The pattern is ignored by fanout exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingSpec {
    pub exchange: &'static str,
    pub queue: &'static str,
    pub pattern: &'static str,
}

/// Every exchange of the topology.
pub const EXCHANGES: &[ExchangeSpec] = &[
    ExchangeSpec {
        name: COMMANDS_EXCHANGE,
        kind: ExchangeType::Topic,
        mandatory: true,
        bundles: true,
    },
    ExchangeSpec {
        name: REPLIES_EXCHANGE,
        kind: ExchangeType::Topic,
        mandatory: true,
        bundles: true,
    },
    ExchangeSpec {
        name: REPLICA_REPLIES_EXCHANGE,
        kind: ExchangeType::Topic,
        mandatory: false,
        bundles: true,
    },
    ExchangeSpec {
        name: EVENTS_EXCHANGE,
        kind: ExchangeType::Topic,
        mandatory: false,
        bundles: false,
    },
    ExchangeSpec {
        name: DLX_EXCHANGE,
        kind: ExchangeType::Fanout,
        mandatory: true,
        bundles: false,
    },
];

/// Every queue of the topology.
pub const QUEUES: &[QueueSpec] = &[
    QueueSpec {
        name: INVENTORY_QUEUE,
        dead_letter_exchange: Some(DLX_EXCHANGE),
    },
    QueueSpec {
        name: PAYMENT_QUEUE,
        dead_letter_exchange: Some(DLX_EXCHANGE),
    },
    QueueSpec {
        name: SHIPPING_QUEUE,
        dead_letter_exchange: Some(DLX_EXCHANGE),
    },
    QueueSpec {
        name: ORCHESTRATOR_QUEUE,
        dead_letter_exchange: Some(DLX_EXCHANGE),
    },
    QueueSpec {
        name: INVENTORY_EVENTS_QUEUE,
        dead_letter_exchange: Some(DLX_EXCHANGE),
    },
    QueueSpec {
        name: DEAD_LETTER_QUEUE,
        dead_letter_exchange: None,
    },
];

/// Every binding of the topology.
pub const BINDINGS: &[BindingSpec] = &[
    BindingSpec {
        exchange: COMMANDS_EXCHANGE,
        queue: INVENTORY_QUEUE,
        pattern: "stock.*",
    },
    BindingSpec {
        exchange: COMMANDS_EXCHANGE,
        queue: PAYMENT_QUEUE,
        pattern: "payment.*",
    },
    BindingSpec {
        exchange: COMMANDS_EXCHANGE,
        queue: SHIPPING_QUEUE,
        pattern: "shipping.*",
    },
    BindingSpec {
        exchange: REPLIES_EXCHANGE,
        queue: ORCHESTRATOR_QUEUE,
        pattern: "#",
    },
    BindingSpec {
        exchange: EVENTS_EXCHANGE,
        queue: INVENTORY_EVENTS_QUEUE,
        pattern: "order.confirmed",
    },
    BindingSpec {
        exchange: DLX_EXCHANGE,
        queue: DEAD_LETTER_QUEUE,
        pattern: "",
    },
];

/// Prefix of the replicas' reply queues.
const REPLICA_QUEUE_PREFIX: &str = "orchestrator.replies.";

/// The reply queues of replicas made so far (one per process, in practice).
static REPLICA_QUEUES: std::sync::Mutex<Vec<&'static (QueueSpec, BindingSpec)>> =
    std::sync::Mutex::new(Vec::new());

/// How long RabbitMQ keeps a replica's reply queue without a consumer (`x-expires`): a
/// replica gone for good leaves no queue behind; a restarted one finds its own.
pub const REPLICA_QUEUE_EXPIRES_MS: u32 = 3_600_000;

/// A replica's name as one routing-key word: letters, digits, `-` and `_` kept, anything
/// else `_`.
pub fn replica_word(replica_id: &str) -> String {
    let word: String = replica_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if word.is_empty() {
        "_".to_owned()
    } else {
        word
    }
}

/// With several replicas each has its own reply queue (`orchestrator.replies.<word>`, bound to
/// `<word>.#` on [`REPLICA_REPLIES_EXCHANGE`]): a command names the replica that sent it (its
/// order's owner) in [`REPLY_TO_HEADER`], and the reply goes there, bundled with the other
/// replies for that replica. After a partition changes owner, the new owner resends the
/// pending commands of its orders, so a reply that reaches a replica no longer owning its
/// order can be dropped.
pub fn replica_reply_queue(word: &str) -> &'static (QueueSpec, BindingSpec) {
    let name = format!("{REPLICA_QUEUE_PREFIX}{word}");
    let mut made = REPLICA_QUEUES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(found) = made.iter().find(|(q, _)| q.name == name) {
        return found;
    }
    let name: &'static str = Box::leak(name.into_boxed_str());
    let pattern: &'static str = Box::leak(format!("{word}.#").into_boxed_str());
    let spec: &'static (QueueSpec, BindingSpec) = Box::leak(Box::new((
        QueueSpec {
            name,
            dead_letter_exchange: Some(DLX_EXCHANGE),
        },
        BindingSpec {
            exchange: REPLICA_REPLIES_EXCHANGE,
            queue: name,
            pattern,
        },
    )));
    made.push(spec);
    spec
}

/// The header of a command that names the replica its reply goes to (several replicas).
pub const REPLY_TO_HEADER: &str = "x-reply-to";

/// The exchange and routing key of a reply of type `kind`, for the replica `reply_to` (when
/// the command named one).
pub fn reply_route(kind: &str, reply_to: Option<&str>) -> (&'static str, String) {
    match reply_to {
        Some(word) => (
            REPLICA_REPLIES_EXCHANGE,
            format!("{}.{kind}", replica_word(word)),
        ),
        None => (REPLIES_EXCHANGE, kind.to_owned()),
    }
}

/// The exchange named `name`, if it is part of the topology.
pub fn exchange(name: &str) -> Option<&'static ExchangeSpec> {
    EXCHANGES.iter().find(|e| e.name == name)
}

/// The queue named `name`, if it is part of the topology.
pub fn queue(name: &str) -> Option<&'static QueueSpec> {
    QUEUES.iter().find(|q| q.name == name).or_else(|| {
        let made = REPLICA_QUEUES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        made.iter().find(|(q, _)| q.name == name).map(|(q, _)| q)
    })
}

/// The queues a message published to `exchange` with `routing_key` reaches, each once, in
/// declaration order. Empty for an unknown exchange or when no binding matches.
pub fn route(exchange_name: &str, routing_key: &str) -> Vec<&'static str> {
    let Some(spec) = exchange(exchange_name) else {
        return Vec::new();
    };
    let mut queues: Vec<&'static str> = Vec::new();
    for binding in BINDINGS.iter().filter(|b| b.exchange == spec.name) {
        let hit = match spec.kind {
            ExchangeType::Fanout => true,
            ExchangeType::Topic => topic_matches(binding.pattern, routing_key),
        };
        // A queue bound twice still receives one copy, as in RabbitMQ.
        if hit && !queues.contains(&binding.queue) {
            queues.push(binding.queue);
        }
    }
    queues
}

/// AMQP topic matching: words are separated by `.`, `*` matches exactly one word and `#`
/// matches zero or more words. An empty key has zero words (as in RabbitMQ).
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let pattern = words(pattern);
    let key = words(routing_key);
    matches_words(&pattern, &key)
}

fn words(s: &str) -> Vec<&str> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split('.').collect()
    }
}

fn matches_words(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        // `#` may swallow any number of words; try every split. Patterns are short static
        // strings, so the backtracking cost is irrelevant.
        Some((&"#", rest)) => (0..=key.len()).any(|i| matches_words(rest, &key[i..])),
        Some((&"*", rest)) => !key.is_empty() && matches_words(rest, &key[1..]),
        Some((word, rest)) => key.first() == Some(word) && matches_words(rest, &key[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_exactly_one_word() {
        assert!(topic_matches("stock.*", "stock.reserve"));
        assert!(!topic_matches("stock.*", "stock"));
        assert!(!topic_matches("stock.*", "stock.reserve.now"));
        assert!(!topic_matches("stock.*", "payment.charge"));
        assert!(topic_matches("*.reserve", "stock.reserve"));
        assert!(topic_matches("*", "stock"));
        assert!(!topic_matches("*", ""));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#", "a"));
        assert!(topic_matches("#", "a.b.c"));
        assert!(topic_matches("order.#", "order"));
        assert!(topic_matches("order.#", "order.confirmed"));
        assert!(topic_matches("order.#", "order.confirmed.late"));
        assert!(!topic_matches("order.#", "orders.confirmed"));
        assert!(topic_matches("#.confirmed", "order.confirmed"));
        assert!(topic_matches("#.confirmed", "confirmed"));
        assert!(topic_matches("a.#.z", "a.z"));
        assert!(topic_matches("a.#.z", "a.b.c.z"));
        assert!(!topic_matches("a.#.z", "a.b.c"));
        assert!(topic_matches("#.*", "a"));
        assert!(!topic_matches("#.*", ""));
        assert!(topic_matches("*.#.*", "a.b"));
        assert!(!topic_matches("*.#.*", "a"));
    }

    #[test]
    fn literal_words_must_match_exactly() {
        assert!(topic_matches("order.confirmed", "order.confirmed"));
        assert!(!topic_matches("order.confirmed", "order.cancelled"));
        assert!(!topic_matches("order.confirmed", "order.confirmed.x"));
        assert!(!topic_matches("order", "order.confirmed"));
        assert!(topic_matches("", ""));
        assert!(!topic_matches("", "a"));
    }

    #[test]
    fn commands_route_to_their_participant() {
        assert_eq!(
            route(COMMANDS_EXCHANGE, "stock.reserve"),
            vec![INVENTORY_QUEUE]
        );
        assert_eq!(
            route(COMMANDS_EXCHANGE, "payment.charge"),
            vec![PAYMENT_QUEUE]
        );
        assert_eq!(
            route(COMMANDS_EXCHANGE, "shipping.schedule"),
            vec![SHIPPING_QUEUE]
        );
        assert!(route(COMMANDS_EXCHANGE, "stok.reserve").is_empty());
        for kind in crate::messaging::messages::CommandBody::KINDS {
            assert_eq!(route(COMMANDS_EXCHANGE, kind).len(), 1, "{kind}");
        }
    }

    #[test]
    fn replies_events_and_dead_letters_route() {
        assert_eq!(
            route(REPLIES_EXCHANGE, "stock.reserved"),
            vec![ORCHESTRATOR_QUEUE]
        );
        assert_eq!(
            route(EVENTS_EXCHANGE, "order.confirmed"),
            vec![INVENTORY_EVENTS_QUEUE]
        );
        assert!(route(EVENTS_EXCHANGE, "order.created").is_empty());
        // Fanout ignores the routing key.
        assert_eq!(
            route(DLX_EXCHANGE, "anything.at.all"),
            vec![DEAD_LETTER_QUEUE]
        );
        assert!(route("no.such.exchange", "x").is_empty());
    }

    #[test]
    fn a_replicas_replies_reach_only_its_queue() {
        let (exchange, key) = reply_route("stock.reserved", Some("order-service-1"));
        let (mine, binding) = replica_reply_queue("order-service-1");
        assert_eq!(mine.name, "orchestrator.replies.order-service-1");
        assert_eq!(binding.exchange, exchange);
        assert!(topic_matches(binding.pattern, &key));
        let (other, theirs) = replica_reply_queue("order-service-2");
        assert!(!topic_matches(theirs.pattern, &key));
        // Not to the shared queue as well (it would be handled twice).
        assert!(route(exchange, &key).is_empty());
        assert_eq!(queue("orchestrator.replies.order-service-2"), Some(other));
        assert!(std::ptr::eq(
            replica_reply_queue("order-service-1").0.name,
            mine.name
        ));
        assert_eq!(queue("orchestrator.replies.nobody"), None);
        assert_eq!(
            reply_route("stock.reserved", None),
            (REPLIES_EXCHANGE, "stock.reserved".to_owned())
        );
        // A host name with dots is one word.
        assert_eq!(replica_word("web-1.example.com"), "web-1_example_com");
        assert_eq!(replica_word(""), "_");
    }

    #[test]
    fn topology_is_consistent() {
        for binding in BINDINGS {
            assert!(exchange(binding.exchange).is_some(), "{binding:?}");
            assert!(queue(binding.queue).is_some(), "{binding:?}");
        }
        for q in QUEUES {
            if let Some(dlx) = q.dead_letter_exchange {
                assert!(exchange(dlx).is_some(), "{q:?}");
                assert_ne!(q.name, DEAD_LETTER_QUEUE);
            }
            assert!(
                BINDINGS.iter().any(|b| b.queue == q.name),
                "queue {} is not bound to anything",
                q.name
            );
        }
    }
}
