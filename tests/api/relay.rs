//! The outbox relay against the real PostgreSQL and RabbitMQ (one database and one vhost):
//! rows handed over are published, confirmed and then deleted; a round that fails is
//! published again until it goes through, and what was confirmed before it is deleted
//! meanwhile; a row no hand-over brought is found by the sweep, also after quiet sweeps
//! have spaced out.

use crate::helpers::{migrated_stores, outbox_rows};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use order_service::messaging::relay::OutboxRelay;
use order_service::messaging::topology::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE, INVENTORY_QUEUE};
use order_service::messaging::{Bus, Subscription};
use order_service::persistence::outbox::{self as store, Lane, NewMessage, OutboxFeed};
use order_service::tuning::RELAY_BATCH;
use sea_orm::{DatabaseConnection, TransactionTrait};
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Upper bound for anything waited on (the relay's retry backoff grows to 5 s).
const DEADLINE: Duration = Duration::from_secs(30);

/// A routing key no queue of the topology binds: on the mandatory commands exchange its
/// publication fails until the test binds a queue for it.
const UNBOUND_KEY: &str = "relay-test.unbound";

fn command(routing_key: &str) -> NewMessage {
    let id = Uuid::new_v4();
    NewMessage::json(
        COMMANDS_EXCHANGE,
        routing_key,
        id,
        &serde_json::json!({ "message_id": id }),
    )
    .expect("serializable")
}

/// Stores the messages in one committed transaction and hands the rows to the feed, as a
/// writer does. Returns the rows' ids.
async fn commit_and_hand_over(
    db: &DatabaseConnection,
    feed: &OutboxFeed,
    messages: &[NewMessage],
) -> Vec<i64> {
    let txn = db.begin().await.expect("begin");
    let rows = store::enqueue(&txn, messages).await.expect("enqueue");
    txn.commit().await.expect("commit");
    let ids = rows.iter().map(|r| r.id).collect();
    feed.push(rows);
    ids
}

async fn outbox_ids(db: &DatabaseConnection) -> Vec<i64> {
    outbox_rows(db)
        .await
        .into_iter()
        .map(|row| row.id)
        .collect()
}

/// Polls the outbox until it holds exactly `expected` (ids, ascending).
async fn wait_for_outbox(db: &DatabaseConnection, expected: &[i64], what: &str) {
    let until = Instant::now() + DEADLINE;
    loop {
        let now = outbox_ids(db).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: after {DEADLINE:?} the outbox holds {} rows (first {:?}), expected {} (first {:?})",
            now.len(),
            now.first(),
            expected.len(),
            expected.first()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receives until every id in `expected` has arrived at least once (the relay delivers at
/// least once), acking everything.
async fn receive_all(sub: &mut Subscription, expected: &HashSet<String>) {
    let mut missing = expected.clone();
    let until = Instant::now() + DEADLINE;
    while !missing.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        let message = timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("{} messages never arrived", missing.len()))
            .expect("the subscription ended");
        if let Some(id) = &message.message_id {
            missing.remove(id);
        }
        message.ack().await.expect("ack");
    }
}

/// Two and a half rounds' worth of rows handed over at once; one row of the second round
/// cannot be routed. The first round is confirmed and deleted while the second fails again
/// and again (the rows after it wait behind it, in order); once its route exists, the rest
/// goes out, every row arrives, and the outbox ends empty.
#[tokio::test]
async fn rabbitmq_a_failed_round_is_retried_and_what_was_confirmed_before_it_is_deleted() {
    let (stores, amqp, _backing) = migrated_stores(false).await;
    let amqp = amqp.expect("a RabbitMQ vhost");
    let db = stores.orders.clone();
    let bus = Bus::connect(Some(&amqp)).await.expect("connecting the bus");
    let mut commands = bus
        .subscribe(INVENTORY_QUEUE, "relay-test", 0)
        .await
        .expect("subscribing");

    let total = 2 * RELAY_BATCH + RELAY_BATCH / 2;
    let poison = RELAY_BATCH + 10;
    let messages: Vec<NewMessage> = (0..total)
        .map(|i| {
            command(if i == poison {
                UNBOUND_KEY
            } else {
                "stock.reserve"
            })
        })
        .collect();
    let feed = OutboxFeed::default();
    // Handed over before the relay starts, so that its first rounds are cut from all of them.
    let ids = commit_and_hand_over(&db, &feed, &messages).await;
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(
        OutboxRelay::new("relay-test", db.clone(), bus.clone(), feed.clone())
            .lane(Lane::AllBut(EVENTS_EXCHANGE))
            .run(shutdown.clone()),
    );

    wait_for_outbox(
        &db,
        &ids[RELAY_BATCH..],
        "while the second round fails, the outbox keeps exactly the rows from it on",
    )
    .await;

    let connection = lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default())
        .await
        .expect("connecting to the vhost");
    let channel = connection.create_channel().await.expect("channel");
    let late = channel
        .queue_declare(
            "relay-test.late".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declaring the late queue");
    channel
        .queue_bind(
            late.name().clone(),
            COMMANDS_EXCHANGE.into(),
            UNBOUND_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("binding the late queue");
    let routed: HashSet<String> = messages
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != poison)
        .map(|(_, m)| m.message_id.to_string())
        .collect();
    receive_all(&mut commands, &routed).await;
    wait_for_outbox(&db, &[], "once its route exists, the rest goes out").await;
    let late = channel
        .queue_declare(
            "relay-test.late".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("inspecting the late queue");
    assert!(
        late.message_count() >= 1,
        "the unroutable row never reached its queue"
    );

    shutdown.cancel();
    timeout(DEADLINE, relay)
        .await
        .expect("the relay stops on shutdown")
        .expect("the relay task");
}

/// A row no hand-over brings (its writer crashed after the commit, or the feed was full)
/// is found by the sweep also when the relay has been quiet for a while and its sweeps
/// have spaced out: within the longest pause (8 s) after the row is old enough to be a
/// straggler (5 s).
#[tokio::test]
async fn postgres_a_quiet_relay_still_publishes_a_row_no_hand_over_brought() {
    let (stores, _amqp, _backing) = migrated_stores(false).await;
    let db = stores.orders.clone();
    let bus = Bus::connect(None).await.expect("the in-process bus");
    let mut commands = bus
        .subscribe(INVENTORY_QUEUE, "relay-test", 0)
        .await
        .expect("subscribing");
    let feed = OutboxFeed::default();
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(
        OutboxRelay::new("relay-test", db.clone(), bus.clone(), feed.clone())
            .lane(Lane::AllBut(EVENTS_EXCHANGE))
            .run(shutdown.clone()),
    );
    // Quiet sweeps at 0, 2 and 6 s: the pause has grown to 8 s.
    tokio::time::sleep(Duration::from_secs(7)).await;

    let message = command("stock.reserve");
    let txn = db.begin().await.expect("begin");
    store::enqueue(&txn, std::slice::from_ref(&message))
        .await
        .expect("enqueue");
    txn.commit().await.expect("commit"); // and not handed over
    let written = Instant::now();

    let delivered = timeout(Duration::from_secs(20), commands.next())
        .await
        .expect("the row was never published")
        .expect("the subscription ended");
    assert_eq!(
        delivered.message_id.as_deref(),
        Some(message.message_id.to_string().as_str())
    );
    let after = written.elapsed();
    assert!(
        after >= Duration::from_secs(5) && after <= Duration::from_secs(5 + 8 + 2),
        "published {after:?} after its commit: a straggler is taken once 5 s old, by a sweep at most 8 s apart"
    );
    delivered.ack().await.expect("ack");
    wait_for_outbox(&db, &[], "the published row is deleted").await;

    shutdown.cancel();
    timeout(DEADLINE, relay)
        .await
        .expect("the relay stops on shutdown")
        .expect("the relay task");
}
