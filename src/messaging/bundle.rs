//! Bundles: several messages with the same exchange, routing key and type, published
//! together, travel as one AMQP message.
//!
//! Under load the outbox relays publish dozens of commands and replies at once, most of
//! them going the same way (`stock.reserve`, `payment.charged`, …). The broker's cost, and
//! the client's, is per AMQP message — routing, persisting, confirming, delivering and
//! acknowledging — far more than per byte, so one message carrying many saves most of it.
//! Only exchanges whose [`ExchangeSpec::bundles`] says so are bundled (commands and
//! replies, which only this service consumes); events stay one message each.
//!
//! A bundle has content type [`CONTENT_TYPE`], the routing key and `type` of its parts, and
//! a JSON array body of `{"message_id", "headers", "payload"}` objects, `payload` being each
//! part's JSON body unchanged. The RabbitMQ bus unpacks it on delivery: consumers see the
//! parts as ordinary deliveries, and the bundle is settled with the broker once every part
//! is settled — acked if all were acked, requeued if any was requeued (the parts already
//! applied are recognised as duplicates on redelivery), dead-lettered (whole, for
//! inspection) if any was poison.
//!
//! Order: within one routing key, parts keep their publishing order; across routing keys a
//! batch may be reordered. Consumers never relied on that (they dedupe and tolerate
//! redelivery, which reorders anyway).

use super::bus::OutgoingMessage;
use super::topology::ExchangeSpec;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// Content type of a bundle.
pub const CONTENT_TYPE: &str = "application/vnd.order-service.bundle+json";

/// Most parts in one bundle (bounds the message size and what one delivery holds).
pub const MAX_PARTS: usize = 128;

/// One part of a bundle on the wire.
#[derive(Serialize, Deserialize)]
pub(crate) struct Part<'a> {
    pub message_id: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(borrow)]
    pub payload: &'a RawValue,
}

/// What a publish batch sends, in order: single messages and bundles.
#[derive(Debug)]
pub(crate) enum Wire<'a> {
    Single(&'static ExchangeSpec, &'a OutgoingMessage),
    /// The parts, each with its payload already checked to be JSON.
    Bundle(
        &'static ExchangeSpec,
        Vec<(&'a OutgoingMessage, &'a RawValue)>,
    ),
}

/// Groups a publish batch: messages of a bundling exchange with the same routing key and
/// type form bundles (of at most [`MAX_PARTS`], at the place of their first part); the
/// others, and messages whose payload is not JSON, go alone.
pub(crate) fn plan<'a>(batch: &[(&'static ExchangeSpec, &'a OutgoingMessage)]) -> Vec<Wire<'a>> {
    let mut wire: Vec<Wire<'a>> = Vec::new();
    // (exchange, routing key, type) → index in `wire` of the bundle being filled.
    let mut open: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for &(spec, msg) in batch {
        let json = spec
            .bundles
            .then(|| serde_json::from_slice::<&RawValue>(&msg.payload).ok())
            .flatten();
        let Some(json) = json else {
            wire.push(Wire::Single(spec, msg));
            continue;
        };
        let key = (spec.name, msg.routing_key.as_str(), msg.kind.as_str());
        if let Some(&at) = open.get(&key)
            && let Wire::Bundle(_, parts) = &mut wire[at]
            && parts.len() < MAX_PARTS
        {
            parts.push((msg, json));
            continue;
        }
        open.insert(key, wire.len());
        wire.push(Wire::Bundle(spec, vec![(msg, json)]));
    }
    wire.into_iter()
        .map(|w| match w {
            Wire::Bundle(spec, parts) if parts.len() == 1 => Wire::Single(spec, parts[0].0),
            other => other,
        })
        .collect()
}

/// The AMQP message carrying `parts` (all of one exchange, routing key and type, with
/// their JSON payloads, as [`plan`] makes them).
pub(crate) fn encode(
    parts: &[(&OutgoingMessage, &RawValue)],
) -> Result<OutgoingMessage, serde_json::Error> {
    let first = parts.first().map(|(m, _)| *m);
    let wire_parts: Vec<Part> = parts
        .iter()
        .map(|(m, json)| Part {
            message_id: m.message_id.to_string(),
            headers: m.headers.clone(),
            payload: json,
        })
        .collect();
    let mut headers = BTreeMap::new();
    headers.insert("x-bundle-parts".to_owned(), parts.len().to_string());
    Ok(OutgoingMessage {
        exchange: first.map(|m| m.exchange.clone()).unwrap_or_default(),
        routing_key: first.map(|m| m.routing_key.clone()).unwrap_or_default(),
        message_id: Uuid::now_v7(),
        kind: first.map(|m| m.kind.clone()).unwrap_or_default(),
        payload: serde_json::to_vec(&wire_parts)?,
        headers,
    })
}

/// The parts of a bundle body; `None` if it is not a well-formed, non-empty bundle (then
/// it is delivered as it is, and its consumer dead-letters it as undecodable).
pub(crate) fn decode(body: &[u8]) -> Option<Vec<Part<'_>>> {
    serde_json::from_slice::<Vec<Part>>(body)
        .ok()
        .filter(|parts| !parts.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messaging::topology::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE, exchange};

    fn msg(exchange: &str, key: &str, payload: &[u8]) -> OutgoingMessage {
        OutgoingMessage {
            exchange: exchange.into(),
            routing_key: key.into(),
            message_id: Uuid::now_v7(),
            kind: key.into(),
            payload: payload.to_vec(),
            headers: BTreeMap::from([("traceparent".to_owned(), format!("tp-{key}"))]),
        }
    }

    fn spec(name: &str) -> &'static ExchangeSpec {
        exchange(name).expect("topology exchange")
    }

    #[test]
    fn same_way_commands_bundle_and_events_and_non_json_go_alone() {
        let r1 = msg(COMMANDS_EXCHANGE, "stock.reserve", br#"{"n":1}"#);
        let c1 = msg(COMMANDS_EXCHANGE, "payment.charge", br#"{"n":2}"#);
        let e1 = msg(EVENTS_EXCHANGE, "order.created", br#"{"n":3}"#);
        let r2 = msg(COMMANDS_EXCHANGE, "stock.reserve", br#"{"n":4}"#);
        let e2 = msg(EVENTS_EXCHANGE, "order.created", br#"{"n":5}"#);
        let odd = msg(COMMANDS_EXCHANGE, "stock.reserve", b"not json");
        let batch: Vec<_> = [&r1, &c1, &e1, &r2, &e2, &odd]
            .into_iter()
            .map(|m| (spec(&m.exchange), m))
            .collect();
        let ids = |w: &Wire| match w {
            Wire::Single(_, m) => vec![m.message_id],
            Wire::Bundle(_, parts) => parts.iter().map(|(m, _)| m.message_id).collect(),
        };
        let plan = plan(&batch);
        let got: Vec<Vec<Uuid>> = plan.iter().map(ids).collect();
        assert_eq!(
            got,
            vec![
                vec![r1.message_id, r2.message_id],
                vec![c1.message_id],
                vec![e1.message_id],
                vec![e2.message_id],
                vec![odd.message_id],
            ]
        );
        assert!(matches!(plan[0], Wire::Bundle(..)));
        assert!(plan[1..].iter().all(|w| matches!(w, Wire::Single(..))));
    }

    #[test]
    fn bundles_are_capped() {
        let msgs: Vec<_> = (0..MAX_PARTS + 3)
            .map(|_| msg(COMMANDS_EXCHANGE, "stock.reserve", b"{}"))
            .collect();
        let batch: Vec<_> = msgs.iter().map(|m| (spec(COMMANDS_EXCHANGE), m)).collect();
        let sizes: Vec<usize> = plan(&batch)
            .iter()
            .map(|w| match w {
                Wire::Single(..) => 1,
                Wire::Bundle(_, p) => p.len(),
            })
            .collect();
        assert_eq!(sizes, vec![MAX_PARTS, 3]);
    }

    #[test]
    fn a_bundle_round_trips_ids_headers_and_payloads_byte_for_byte() {
        let a = msg(
            COMMANDS_EXCHANGE,
            "stock.reserve",
            br#"{"b": [1, 2], "a":"x"}"#,
        );
        let b = msg(COMMANDS_EXCHANGE, "stock.reserve", br#"{}"#);
        fn json(m: &OutgoingMessage) -> &RawValue {
            serde_json::from_slice(&m.payload).expect("JSON payload")
        }
        let bundle = encode(&[(&a, json(&a)), (&b, json(&b))]).expect("encodes");
        assert_eq!(bundle.routing_key, "stock.reserve");
        assert_eq!(bundle.kind, "stock.reserve");
        let parts = decode(&bundle.payload).expect("decodes");
        assert_eq!(parts.len(), 2);
        for (part, original) in parts.iter().zip([&a, &b]) {
            assert_eq!(part.message_id, original.message_id.to_string());
            assert_eq!(part.headers, original.headers);
            assert_eq!(part.payload.get().as_bytes(), original.payload.as_slice());
        }
    }

    #[test]
    fn malformed_or_empty_bundles_are_not_unpacked() {
        assert!(decode(b"[]").is_none());
        assert!(decode(b"{\"message_id\":\"x\"}").is_none());
        assert!(decode(b"[{\"headers\":{}}]").is_none());
    }
}
