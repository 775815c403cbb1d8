//! The bus against a real RabbitMQ (one fresh vhost per test) and in-process.
//!
//! Each scenario is written once against [`Bus`] and run on both implementations, which is
//! what keeps the in-process bus a faithful stand-in. Waiting is always bounded by
//! [`DEADLINE`]; negative checks ("did not arrive") use a marker message published after
//! the one that must not arrive, since queues are FIFO, instead of sleeping.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures::FutureExt;
use order_service::messaging::topology::{
    COMMANDS_EXCHANGE, DEAD_LETTER_QUEUE, EVENTS_EXCHANGE, INVENTORY_EVENTS_QUEUE, INVENTORY_QUEUE,
    ORCHESTRATOR_QUEUE, PAYMENT_QUEUE, REPLIES_EXCHANGE, SHIPPING_QUEUE,
};
use order_service::messaging::{Bus, BusError, IncomingMessage, OutgoingMessage, Subscription};
use tokio::time::timeout;
use uuid::Uuid;

use crate::broker::TestVhost;

/// Upper bound for anything we wait on; generous so a loaded CI machine does not flake.
const DEADLINE: Duration = Duration::from_secs(15);

fn message(exchange: &str, routing_key: &str) -> OutgoingMessage {
    let message_id = Uuid::new_v4();
    let mut headers = BTreeMap::new();
    headers.insert(
        "traceparent".to_owned(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
    );
    OutgoingMessage {
        exchange: exchange.to_owned(),
        routing_key: routing_key.to_owned(),
        message_id,
        kind: routing_key.to_owned(),
        payload: serde_json::to_vec(&serde_json::json!({ "id": message_id, "key": routing_key }))
            .expect("serializing a literal"),
        headers,
    }
}

async fn subscribe(bus: &Bus, queue: &str, prefetch: u16) -> Subscription {
    bus.subscribe(queue, &format!("test-{queue}"), prefetch)
        .await
        .unwrap_or_else(|e| panic!("subscribe to {queue}: {e}"))
}

async fn publish(bus: &Bus, msg: &OutgoingMessage) {
    bus.publish(msg)
        .await
        .unwrap_or_else(|e| panic!("publish {}: {e}", msg.routing_key));
}

async fn recv(sub: &mut Subscription) -> IncomingMessage {
    timeout(DEADLINE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no message on {} within {DEADLINE:?}", sub.queue()))
        .unwrap_or_else(|| panic!("subscription to {} ended", sub.queue()))
}

fn id(msg: &OutgoingMessage) -> Option<String> {
    Some(msg.message_id.to_string())
}

async fn ack(msg: IncomingMessage) {
    msg.ack().await.expect("ack");
}

/// `got` is `original` as the dead-letter queue hands it back after `queue` rejected it:
/// same id, payload and trace context, and the broker's note of where it died.
fn assert_dead_lettered(got: &IncomingMessage, original: &OutgoingMessage, queue: &str) {
    assert_eq!(got.message_id, id(original));
    assert_eq!(got.payload, original.payload);
    assert_eq!(
        got.headers.get("traceparent"),
        original.headers.get("traceparent")
    );
    assert_eq!(
        got.headers.get("x-first-death-queue").map(String::as_str),
        Some(queue)
    );
}

// ---------------------------------------------------------------------------------------
// Scenarios, run on both buses.
// ---------------------------------------------------------------------------------------

/// Commands reach exactly their participant's queue, with id, type, headers and payload.
async fn routes_commands(bus: &Bus) {
    let mut inventory = subscribe(bus, INVENTORY_QUEUE, 10).await;
    let mut payment = subscribe(bus, PAYMENT_QUEUE, 10).await;

    let reserve = message(COMMANDS_EXCHANGE, "stock.reserve");
    publish(bus, &reserve).await;
    let got = recv(&mut inventory).await;
    assert_eq!(got.routing_key, "stock.reserve");
    assert_eq!(got.message_id, id(&reserve));
    assert_eq!(got.kind.as_deref(), Some("stock.reserve"));
    assert_eq!(
        got.headers.get("traceparent"),
        reserve.headers.get("traceparent")
    );
    assert_eq!(got.payload, reserve.payload);
    assert!(!got.redelivered);
    ack(got).await;

    let charge = message(COMMANDS_EXCHANGE, "payment.charge");
    publish(bus, &charge).await;
    let got = recv(&mut payment).await;
    assert_eq!(got.message_id, id(&charge));
    assert_eq!(got.kind.as_deref(), Some("payment.charge"));
    ack(got).await;

    // Had `payment.charge` also reached inventory, it would come before this marker.
    let marker = message(COMMANDS_EXCHANGE, "stock.release");
    publish(bus, &marker).await;
    let got = recv(&mut inventory).await;
    assert_eq!(
        got.message_id,
        id(&marker),
        "payment.charge leaked into inventory"
    );
    ack(got).await;

    let mut shipping = subscribe(bus, SHIPPING_QUEUE, 10).await;
    let schedule = message(COMMANDS_EXCHANGE, "shipping.schedule");
    publish(bus, &schedule).await;
    let got = recv(&mut shipping).await;
    assert_eq!(got.message_id, id(&schedule));
    ack(got).await;
}

/// `order.confirmed` reaches Inventory's event queue; events nobody binds are dropped
/// without error.
async fn routes_events(bus: &Bus) {
    let mut events = subscribe(bus, INVENTORY_EVENTS_QUEUE, 10).await;
    let created = message(EVENTS_EXCHANGE, "order.created");
    publish(bus, &created).await;
    let confirmed = message(EVENTS_EXCHANGE, "order.confirmed");
    publish(bus, &confirmed).await;
    let got = recv(&mut events).await;
    assert_eq!(
        got.message_id,
        id(&confirmed),
        "order.created must not be routed here"
    );
    assert_eq!(got.routing_key, "order.confirmed");
    assert_eq!(
        got.headers.get("traceparent"),
        confirmed.headers.get("traceparent")
    );
    ack(got).await;
}

/// Replies all go to the orchestrator.
async fn routes_replies(bus: &Bus) {
    let mut replies = subscribe(bus, ORCHESTRATOR_QUEUE, 10).await;
    for key in [
        "stock.reserved",
        "payment.failed",
        "shipping.scheduled.late",
    ] {
        let reply = message(REPLIES_EXCHANGE, key);
        publish(bus, &reply).await;
        let got = recv(&mut replies).await;
        assert_eq!(got.message_id, id(&reply));
        ack(got).await;
    }
}

/// A queue keeps what was published before anyone subscribed.
async fn keeps_messages_until_subscribed(bus: &Bus) {
    let first = message(COMMANDS_EXCHANGE, "stock.reserve");
    let second = message(COMMANDS_EXCHANGE, "stock.release");
    publish(bus, &first).await;
    publish(bus, &second).await;
    let mut inventory = subscribe(bus, INVENTORY_QUEUE, 10).await;
    let got = recv(&mut inventory).await;
    assert_eq!(got.message_id, id(&first));
    ack(got).await;
    let got = recv(&mut inventory).await;
    assert_eq!(got.message_id, id(&second));
    ack(got).await;
}

/// What a dropped subscription left unacknowledged is redelivered to the next one.
async fn redelivers_unacked_after_subscription_dropped(bus: &Bus) {
    let command = message(COMMANDS_EXCHANGE, "payment.refund");
    publish(bus, &command).await;

    let mut first = subscribe(bus, PAYMENT_QUEUE, 10).await;
    let got = recv(&mut first).await;
    assert_eq!(got.message_id, id(&command));
    assert!(!got.redelivered);
    drop(got); // never settled
    drop(first);

    let mut second = subscribe(bus, PAYMENT_QUEUE, 10).await;
    let again = recv(&mut second).await;
    assert_eq!(again.message_id, id(&command));
    assert!(again.redelivered, "a redelivery must be flagged");
    assert_eq!(
        again.headers.get("traceparent"),
        command.headers.get("traceparent")
    );
    ack(again).await;
}

/// Same through an explicit close.
async fn redelivers_unacked_after_subscription_closed(bus: &Bus) {
    let command = message(COMMANDS_EXCHANGE, "shipping.cancel");
    publish(bus, &command).await;

    let mut first = subscribe(bus, SHIPPING_QUEUE, 10).await;
    let got = recv(&mut first).await;
    assert!(!got.redelivered);
    first.close().await;
    // The delivery died with its subscription.
    assert!(got.ack().await.is_err(), "ack after close must fail");

    let mut second = subscribe(bus, SHIPPING_QUEUE, 10).await;
    let again = recv(&mut second).await;
    assert_eq!(again.message_id, id(&command));
    assert!(again.redelivered);
    ack(again).await;
}

/// `requeue` puts the message back for another attempt.
async fn requeue_redelivers(bus: &Bus) {
    let mut inventory = subscribe(bus, INVENTORY_QUEUE, 10).await;
    let command = message(COMMANDS_EXCHANGE, "stock.reserve");
    publish(bus, &command).await;
    let got = recv(&mut inventory).await;
    assert!(!got.redelivered);
    got.requeue().await.expect("requeue");
    let again = recv(&mut inventory).await;
    assert_eq!(again.message_id, id(&command));
    assert!(again.redelivered);
    ack(again).await;
}

/// `dead_letter` moves a poison message to `order.dead-letters`, intact.
async fn dead_letter_lands_in_dead_letter_queue(bus: &Bus) {
    let mut payment = subscribe(bus, PAYMENT_QUEUE, 10).await;
    let mut dead = subscribe(bus, DEAD_LETTER_QUEUE, 10).await;
    let poison = message(COMMANDS_EXCHANGE, "payment.charge");
    publish(bus, &poison).await;
    recv(&mut payment)
        .await
        .dead_letter()
        .await
        .expect("dead_letter");

    let got = recv(&mut dead).await;
    assert_dead_lettered(&got, &poison, PAYMENT_QUEUE);
    assert_eq!(got.routing_key, "payment.charge");
    assert_eq!(got.kind.as_deref(), Some("payment.charge"));
    assert_eq!(
        got.headers.get("x-first-death-reason").map(String::as_str),
        Some("rejected")
    );
    assert_eq!(
        got.headers
            .get("x-first-death-exchange")
            .map(String::as_str),
        Some(COMMANDS_EXCHANGE)
    );
    ack(got).await;
}

/// A batch of 500 arrives completely, in order per routing key (on RabbitMQ messages going
/// the same way travel bundled, so two routing keys may interleave differently).
async fn publish_batch_delivers_everything(bus: &Bus) {
    let batch: Vec<OutgoingMessage> = (0..500)
        .map(|i| {
            message(
                REPLIES_EXCHANGE,
                if i % 2 == 0 {
                    "stock.reserved"
                } else {
                    "payment.charged"
                },
            )
        })
        .collect();
    let mut replies = subscribe(bus, ORCHESTRATOR_QUEUE, 50).await;
    bus.publish_batch(&batch).await.expect("publish_batch");
    let mut got: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for _ in &batch {
        let message = recv(&mut replies).await;
        assert_eq!(message.kind.as_deref(), Some(message.routing_key.as_str()));
        got.entry(message.routing_key.clone())
            .or_default()
            .push(message.message_id.clone());
        ack(message).await;
    }
    let mut expected: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for msg in &batch {
        expected
            .entry(msg.routing_key.clone())
            .or_default()
            .push(id(msg));
    }
    assert_eq!(got, expected);
    bus.publish_batch(&[])
        .await
        .expect("an empty batch is fine");
}

/// Publishing from many tasks at once is safe and loses nothing.
async fn concurrent_publishers(bus: &Bus) {
    let mut replies = subscribe(bus, ORCHESTRATOR_QUEUE, 100).await;
    let mut tasks = Vec::new();
    let mut expected = HashSet::new();
    for _ in 0..16 {
        let msgs: Vec<OutgoingMessage> = (0..25)
            .map(|_| message(REPLIES_EXCHANGE, "stock.reserved"))
            .collect();
        expected.extend(msgs.iter().filter_map(id));
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            for msg in &msgs {
                bus.publish(msg).await?;
            }
            Ok::<(), BusError>(())
        }));
    }
    for task in tasks {
        task.await.expect("publisher task").expect("publish");
    }
    let mut seen = HashSet::new();
    while seen.len() < expected.len() {
        let got = recv(&mut replies).await;
        assert!(seen.insert(got.message_id.clone().expect("message id")));
        ack(got).await;
    }
    assert_eq!(seen, expected);
}

/// Mistakes are errors, and they do not break the bus for later publishes.
async fn rejects_unroutable_and_unknown(bus: &Bus) {
    let typo = message(COMMANDS_EXCHANGE, "stok.reserve");
    match bus.publish(&typo).await {
        Err(BusError::Unroutable { message_id, .. }) => assert_eq!(message_id, typo.message_id),
        other => panic!("an unroutable command must fail, got {other:?}"),
    }
    // In a pipelined batch the error must name the culprit, not a neighbour.
    let mut batch: Vec<OutgoingMessage> = (0..60)
        .map(|_| message(REPLIES_EXCHANGE, "stock.reserved"))
        .collect();
    let culprit = message(COMMANDS_EXCHANGE, "nobody.listens");
    batch.insert(30, culprit.clone());
    match bus.publish_batch(&batch).await {
        Err(BusError::Unroutable {
            message_id,
            routing_key,
            ..
        }) => {
            assert_eq!(message_id, culprit.message_id);
            assert_eq!(routing_key, "nobody.listens");
        }
        other => panic!("a batch with an unroutable command must fail, got {other:?}"),
    }
    let nowhere = message("order.nowhere", "stock.reserve");
    assert!(matches!(
        bus.publish(&nowhere).await,
        Err(BusError::UnknownExchange(_))
    ));
    assert!(matches!(
        bus.subscribe("no.such.queue", "t", 1).await,
        Err(BusError::UnknownQueue(_))
    ));

    let mut inventory = subscribe(bus, INVENTORY_QUEUE, 10).await;
    let fine = message(COMMANDS_EXCHANGE, "stock.reserve");
    publish(bus, &fine).await;
    let got = recv(&mut inventory).await;
    assert_eq!(got.message_id, id(&fine));
    ack(got).await;
}

/// Closing the bus ends subscriptions and refuses further work.
async fn close_ends_everything(bus: &Bus) {
    let mut inventory = subscribe(bus, INVENTORY_QUEUE, 10).await;
    assert!(bus.is_connected());
    bus.close().await;
    assert!(!bus.is_connected());
    let end = timeout(DEADLINE, inventory.next())
        .await
        .expect("subscription must end promptly on close");
    assert!(end.is_none());
    assert!(
        bus.publish(&message(COMMANDS_EXCHANGE, "stock.reserve"))
            .await
            .is_err()
    );
    assert!(bus.subscribe(INVENTORY_QUEUE, "late", 1).await.is_err());
}

// ---------------------------------------------------------------------------------------
// Both buses.
// ---------------------------------------------------------------------------------------

macro_rules! on_both_buses {
    ($($scenario:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let vhost = super::TestVhost::create();
                    let bus = super::rabbitmq(&vhost).await;
                    super::$scenario(&bus).await;
                    bus.close().await;
                }
            )*
        }
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let bus = super::Bus::connect(None).await.expect("in-process bus");
                    super::$scenario(&bus).await;
                    bus.close().await;
                }
            )*
        }
    };
}

on_both_buses!(
    routes_commands,
    routes_events,
    routes_replies,
    keeps_messages_until_subscribed,
    redelivers_unacked_after_subscription_dropped,
    redelivers_unacked_after_subscription_closed,
    requeue_redelivers,
    dead_letter_lands_in_dead_letter_queue,
    publish_batch_delivers_everything,
    concurrent_publishers,
    rejects_unroutable_and_unknown,
    close_ends_everything,
);

async fn rabbitmq(vhost: &TestVhost) -> Bus {
    let bus = Bus::connect(Some(&vhost.amqp_url))
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", vhost.name));
    assert_eq!(bus.kind(), "rabbitmq");
    assert!(bus.is_connected());
    bus
}

// ---------------------------------------------------------------------------------------
// Specific to one bus.
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn rabbitmq_topology_declaration_is_idempotent() {
    let vhost = TestVhost::create();
    let first = rabbitmq(&vhost).await;
    // A second service instance declares the same topology over the existing one.
    let second = rabbitmq(&vhost).await;
    let mut inventory = subscribe(&second, INVENTORY_QUEUE, 1).await;
    let command = message(COMMANDS_EXCHANGE, "stock.reserve");
    publish(&first, &command).await;
    let got = recv(&mut inventory).await;
    assert_eq!(got.message_id, id(&command));
    ack(got).await;
    first.close().await;
    second.close().await;
}

/// Messages in the queue, as the broker counts them (one per AMQP message).
async fn queue_depth(vhost: &TestVhost, queue: &str) -> u32 {
    let connection = lapin::Connection::connect(&vhost.amqp_url, Default::default())
        .await
        .expect("connect to the test vhost");
    let channel = connection.create_channel().await.expect("channel");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .expect("the queue exists");
    let _ = connection.close(200, "OK".into()).await;
    declared.message_count()
}

/// A fresh vhost and bus with `n` messages to `exchange`/`routing_key` published in one
/// batch (so, on RabbitMQ, as one bundle).
async fn bundle_published(
    n: usize,
    exchange: &str,
    routing_key: &str,
) -> (TestVhost, Bus, Vec<OutgoingMessage>) {
    let vhost = TestVhost::create();
    let bus = rabbitmq(&vhost).await;
    let batch: Vec<OutgoingMessage> = (0..n).map(|_| message(exchange, routing_key)).collect();
    bus.publish_batch(&batch).await.expect("publish_batch");
    (vhost, bus, batch)
}

/// Twenty commands published together going the same way are one AMQP message for the
/// broker; the consumer still gets twenty messages, each with its own id, headers and
/// payload, in order.
#[tokio::test]
async fn rabbitmq_a_batch_going_one_way_travels_as_one_bundle() {
    let (vhost, bus, batch) = bundle_published(20, COMMANDS_EXCHANGE, "stock.reserve").await;
    assert_eq!(queue_depth(&vhost, INVENTORY_QUEUE).await, 1);
    let mut inventory = subscribe(&bus, INVENTORY_QUEUE, 1).await;
    for expected in &batch {
        let got = recv(&mut inventory).await;
        assert_eq!(got.message_id, id(expected));
        assert_eq!(got.routing_key, "stock.reserve");
        assert_eq!(got.kind.as_deref(), Some("stock.reserve"));
        assert_eq!(got.payload, expected.payload);
        assert_eq!(got.headers, expected.headers);
        assert!(!got.redelivered);
        ack(got).await;
    }
    bus.close().await;
    assert_eq!(
        queue_depth(&vhost, INVENTORY_QUEUE).await,
        0,
        "the bundle was acked"
    );
}

/// A bundle is settled with the broker once all its parts are: if one part is requeued,
/// the whole bundle comes back (the parts already handled are duplicates to their
/// consumer, which recognises them).
#[tokio::test]
async fn rabbitmq_requeueing_one_part_redelivers_the_whole_bundle() {
    let (vhost, bus, batch) = bundle_published(3, REPLIES_EXCHANGE, "payment.charged").await;
    let mut replies = subscribe(&bus, ORCHESTRATOR_QUEUE, 1).await;
    let first = recv(&mut replies).await;
    let second = recv(&mut replies).await;
    let third = recv(&mut replies).await;
    ack(first).await;
    second.requeue().await.expect("requeue");
    ack(third).await;
    for expected in &batch {
        let again = recv(&mut replies).await;
        assert_eq!(again.message_id, id(expected));
        assert!(again.redelivered, "redelivered as a whole");
        ack(again).await;
    }
    bus.close().await;
    assert_eq!(queue_depth(&vhost, ORCHESTRATOR_QUEUE).await, 0);
}

/// A poison part dead-letters its bundle; read from the dead-letter queue, the parts carry
/// the broker's `x-first-death-*` headers and their own.
#[tokio::test]
async fn rabbitmq_a_poison_part_dead_letters_its_bundle() {
    let (_vhost, bus, batch) = bundle_published(2, COMMANDS_EXCHANGE, "shipping.schedule").await;
    let mut shipping = subscribe(&bus, SHIPPING_QUEUE, 1).await;
    ack(recv(&mut shipping).await).await;
    recv(&mut shipping)
        .await
        .dead_letter()
        .await
        .expect("dead_letter");
    let mut dead = subscribe(&bus, DEAD_LETTER_QUEUE, 1).await;
    for expected in &batch {
        let got = recv(&mut dead).await;
        assert_dead_lettered(&got, expected, SHIPPING_QUEUE);
        ack(got).await;
    }
    bus.close().await;
}

#[tokio::test]
async fn rabbitmq_connect_failure_is_an_error_without_credentials() {
    let error = Bus::connect(Some("amqp://guest:s3cret@127.0.0.1:1/%2f"))
        .await
        .expect_err("nothing listens on port 1");
    let text = error.to_string();
    assert!(matches!(error, BusError::Connect { .. }), "{text}");
    assert!(!text.contains("s3cret"), "credentials leaked: {text}");
}

#[tokio::test]
async fn in_process_kind_and_single_subscriber() {
    let bus = Bus::connect(None).await.expect("in-process bus");
    assert_eq!(bus.kind(), "in-process");
    assert!(bus.is_connected());
    let first = subscribe(&bus, INVENTORY_QUEUE, 1).await;
    assert!(matches!(
        bus.subscribe(INVENTORY_QUEUE, "second", 1).await,
        Err(BusError::QueueBusy(_))
    ));
    drop(first);
    let _again = subscribe(&bus, INVENTORY_QUEUE, 1).await;
}

#[tokio::test]
async fn in_process_respects_prefetch() {
    let bus = Bus::connect(None).await.expect("in-process bus");
    let mut inventory = subscribe(&bus, INVENTORY_QUEUE, 1).await;
    let first = message(COMMANDS_EXCHANGE, "stock.reserve");
    let second = message(COMMANDS_EXCHANGE, "stock.release");
    publish(&bus, &first).await;
    publish(&bus, &second).await;
    let got = recv(&mut inventory).await;
    assert_eq!(got.message_id, id(&first));
    // The in-process bus is synchronous: with the one prefetch slot taken, the next
    // delivery is not ready now, and becomes ready as soon as the slot is freed.
    assert!(
        inventory.next().now_or_never().is_none(),
        "prefetch 1 exceeded"
    );
    ack(got).await;
    let got = recv(&mut inventory).await;
    assert_eq!(got.message_id, id(&second));
    ack(got).await;
}

#[tokio::test]
async fn in_process_dead_letter_of_a_dead_letter_is_dropped() {
    let bus = Bus::connect(None).await.expect("in-process bus");
    let mut payment = subscribe(&bus, PAYMENT_QUEUE, 10).await;
    let mut dead = subscribe(&bus, DEAD_LETTER_QUEUE, 10).await;
    publish(&bus, &message(COMMANDS_EXCHANGE, "payment.charge")).await;
    recv(&mut payment)
        .await
        .dead_letter()
        .await
        .expect("dead_letter");
    // Rejecting from the dead-letter queue (which has no DLX) discards, as RabbitMQ does.
    recv(&mut dead)
        .await
        .dead_letter()
        .await
        .expect("dead_letter");
    assert!(dead.next().now_or_never().is_none());
}
