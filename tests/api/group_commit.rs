//! The group commit's batch write (`orders::save_batch`) against the real databases: on
//! PostgreSQL it is one statement of CTEs, on SQLite a transaction of plain statements;
//! both must keep the version fence — a stale write changes nothing (no state, no history,
//! no outbox message) while the rest of its batch commits — and store what they are given
//! (NULL deadline and headers, a retry's timer without touching the saga). A create that
//! claims its idempotency key with the order is fenced by the key: if it is taken, nothing
//! of that order is written.

use crate::helpers::{Backing, outbox_rows, provision};
use chrono::{SubsecRound, Utc};
use entity::{idempotency_keys, order_items, order_transitions};
use order_service::domain::saga::{self, OrderStatus, PaymentMode};
use order_service::domain::view::{HistoryEntry, OrderDetails, OrderLine};
use order_service::persistence::group_commit::OrderWriter;
use order_service::persistence::idempotency::{self, ABANDONED_AFTER, Claim};
use order_service::persistence::orders::{
    self, OrderRecord, OrderWrite, SaveError, SavedBatch, StepTimer,
};
use order_service::persistence::outbox::{NewMessage, OutboxFeed};
use order_service::persistence::{Stores, connect_orders_writer};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    TransactionTrait,
};
use std::time::Duration;
use uuid::Uuid;

pub(super) fn message(routing_key: &str) -> NewMessage {
    let id = Uuid::new_v4();
    let mut message = NewMessage::json(
        "order.commands",
        routing_key,
        id,
        &serde_json::json!({ "message_id": id }),
    )
    .expect("serializable");
    message.headers.insert("x-test".into(), routing_key.into());
    message
}

pub(super) fn create(sku: &str, routing_key: &str) -> (OrderRecord, OrderWrite) {
    // Microseconds, as the databases keep them, so that a record read back compares equal.
    let now = Utc::now().trunc_subsecs(6);
    let (saga, _) = saga::start();
    let order = OrderRecord {
        id: Uuid::new_v4(),
        customer_id: "customer-1".into(),
        currency: "USD".into(),
        total_cents: 1234,
        items: vec![OrderLine {
            sku: sku.into(),
            quantity: 2,
            unit_price_cents: 617,
        }],
        saga,
        payment_mode: PaymentMode::Auto,
        version: 1,
        trace_context: None,
        timer: StepTimer {
            deadline: Some(now),
            attempts: 0,
        },
        parked_reason: None,
        created_at: now,
        updated_at: now,
    };
    let write = OrderWrite::Create {
        order: Box::new(order.clone()),
        entry: HistoryEntry {
            from: None,
            status: OrderStatus::Pending,
            event: "created".into(),
            reason: String::new(),
            at: now,
        },
        messages: vec![message(routing_key)],
        idempotency: None,
    };
    (order, write)
}

pub(super) fn reject(order: &OrderRecord, expected_version: i64, routing_key: &str) -> OrderWrite {
    let mut saga = order.saga.clone();
    saga.status = OrderStatus::Rejected;
    saga.failure_reason = Some("out of stock".into());
    OrderWrite::Transition {
        order_id: order.id,
        expected_version,
        saga,
        timer: StepTimer::default(),
        entry: HistoryEntry {
            from: Some(OrderStatus::Pending),
            status: OrderStatus::Rejected,
            event: "stock_rejected".into(),
            reason: "out of stock".into(),
            at: Utc::now().trunc_subsecs(6),
        },
        messages: vec![message(routing_key)],
    }
}

pub(super) async fn details(db: &DatabaseConnection, id: Uuid) -> OrderDetails {
    orders::details(db, id)
        .await
        .expect("reading the order")
        .expect("the order exists")
}

/// A migrated orders store of its own (kept while the [`Backing`] lives) and the group
/// commit's connection to it.
pub(super) async fn migrated_writer(embedded: bool) -> (DatabaseConnection, Backing) {
    let (_stores, db, backing) = migrated_stores_and_writer(embedded).await;
    (db, backing)
}

/// [`migrated_writer`], with the stores' own connections too.
async fn migrated_stores_and_writer(embedded: bool) -> (Stores, DatabaseConnection, Backing) {
    let (url, _amqp, backing) = provision(embedded).await;
    let stores = Stores::connect(&url, 2).await.expect("connecting");
    stores.migrate().await.expect("migrating");
    let db = connect_orders_writer(&url, &stores, 2)
        .await
        .expect("connecting the writer");
    (stores, db, backing)
}

/// The routing keys of the outbox rows a batch hands to the relay, in order.
fn handed_over(saved: &SavedBatch) -> Vec<&str> {
    saved
        .outbox_rows
        .iter()
        .map(|r| r.routing_key.as_str())
        .collect()
}

async fn outbox_keys(db: &DatabaseConnection) -> Vec<String> {
    outbox_rows(db)
        .await
        .into_iter()
        .map(|row| row.routing_key)
        .collect()
}

async fn a_stale_write_changes_nothing_and_the_rest_of_its_batch_commits(embedded: bool) {
    let (db, _backing) = migrated_writer(embedded).await;

    let (a, create_a) = create("CB-001", "a.created");
    let (b, create_b) = create("CB-002", "b.created");
    let (c, create_c) = create("CB-003", "c.created");
    let saved = orders::save_batch(&db, &[create_a, create_b, create_c])
        .await
        .expect("first batch");
    assert!(
        saved.results.iter().all(|r| matches!(r, Ok(1))),
        "{saved:?}"
    );
    let first_ids: Vec<i64> = saved.outbox_rows.iter().map(|r| r.id).collect();
    assert_eq!(first_ids.len(), 3);

    // A's transition is at the right version; B's carries a stale one; C's retry (timer
    // only, a message without headers) is at the right version.
    let mut resent = message("c.retry");
    resent.headers.clear();
    let retry_c = OrderWrite::Retry {
        order_id: c.id,
        expected_version: 1,
        timer: StepTimer {
            deadline: None,
            attempts: 1,
        },
        messages: vec![resent],
    };
    let saved = orders::save_batch(
        &db,
        &[
            reject(&a, 1, "a.rejected"),
            reject(&b, 0, "b.stale"),
            retry_c,
        ],
    )
    .await
    .expect("second batch");
    assert!(matches!(saved.results[0], Ok(2)), "{:?}", saved.results);
    assert!(
        matches!(saved.results[1], Err(SaveError::Conflict(id)) if id == b.id),
        "{:?}",
        saved.results
    );
    assert!(matches!(saved.results[2], Ok(2)), "{:?}", saved.results);
    assert_eq!(handed_over(&saved), ["a.rejected", "c.retry"]);
    let row = &saved.outbox_rows[0];
    assert!(row.id > first_ids[2], "outbox ids keep commit order");
    assert!(
        saved.outbox_rows[1].id > row.id,
        "outbox ids keep commit order"
    );
    assert_eq!(row.headers.as_deref(), Some(r#"{"x-test":"a.rejected"}"#));
    assert_eq!(saved.outbox_rows[1].headers, None);

    // A retry moves the timer and the version, nothing else.
    let c_now = orders::load(&db, c.id)
        .await
        .expect("read")
        .expect("C exists");
    assert_eq!(c_now.version, 2);
    assert_eq!(c_now.saga, c.saga);
    assert_eq!(c_now.timer.deadline, None);
    assert_eq!(c_now.timer.attempts, 1);
    let c_history = details(&db, c.id).await;
    assert_eq!(
        c_history.history.len(),
        1,
        "a retry writes no history entry"
    );

    let a_now = details(&db, a.id).await;
    assert_eq!(a_now.status, OrderStatus::Rejected);
    assert_eq!(a_now.version, 2);
    assert_eq!(a_now.failure_reason.as_deref(), Some("out of stock"));
    assert_eq!(a_now.items.len(), 1);
    let events: Vec<&str> = a_now.history.iter().map(|h| h.event.as_str()).collect();
    assert_eq!(events, ["created", "stock_rejected"]);
    assert_eq!(a_now.history[1].from, Some(OrderStatus::Pending));

    let b_now = details(&db, b.id).await;
    assert_eq!(b_now.status, OrderStatus::Pending);
    assert_eq!(b_now.version, 1);
    assert_eq!(b_now.failure_reason, None);
    assert_eq!(
        b_now.history.len(),
        1,
        "no history entry for the stale write"
    );

    assert_eq!(
        outbox_keys(&db).await,
        [
            "a.created",
            "b.created",
            "c.created",
            "a.rejected",
            "c.retry"
        ],
        "no outbox message for the stale write"
    );
}

#[tokio::test]
async fn postgres_a_stale_write_changes_nothing_and_the_rest_of_its_batch_commits() {
    a_stale_write_changes_nothing_and_the_rest_of_its_batch_commits(false).await;
}

#[tokio::test]
async fn sqlite_a_stale_write_changes_nothing_and_the_rest_of_its_batch_commits() {
    a_stale_write_changes_nothing_and_the_rest_of_its_batch_commits(true).await;
}

/// `write` (a create) answering `key` in its write: claiming the key there if
/// `claims_with_hash` is given, otherwise completing a key claimed beforehand.
fn answering(write: OrderWrite, key: &str, claims_with_hash: Option<&str>) -> OrderWrite {
    let OrderWrite::Create {
        order,
        entry,
        messages,
        ..
    } = write
    else {
        unreachable!("only creates answer keys")
    };
    let body = serde_json::json!({ "id": order.id }).to_string();
    OrderWrite::Create {
        order,
        entry,
        messages,
        idempotency: Some(orders::IdempotencyCompletion {
            key: key.into(),
            status: 201,
            body,
            claims_with_hash: claims_with_hash.map(str::to_owned),
        }),
    }
}

pub(super) fn claiming(write: OrderWrite, key: &str, hash: &str) -> OrderWrite {
    answering(write, key, Some(hash))
}

pub(super) async fn stored_key(db: &DatabaseConnection, key: &str) -> idempotency_keys::Model {
    idempotency_keys::Entity::find_by_id(key.to_owned())
        .one(db)
        .await
        .expect("reading the key")
        .expect("the key exists")
}

async fn a_create_whose_key_is_taken_writes_nothing_and_the_rest_of_its_batch_commits(
    embedded: bool,
) {
    let (db, _backing) = migrated_writer(embedded).await;

    let (first, create_first) = create("CB-001", "first.created");
    let saved = orders::save_batch(&db, &[claiming(create_first, "k-taken", "hash-1")])
        .await
        .expect("first batch");
    assert!(matches!(saved.results[..], [Ok(1)]), "{saved:?}");

    // X claims the taken key; Y and Z claim one new key in the same batch (the first
    // wins); W has no key; the first order's transition (fenced, at the right version)
    // stands beside them.
    let (x, create_x) = create("CB-002", "x.created");
    let (y, create_y) = create("CB-003", "y.created");
    let (z, create_z) = create("CB-004", "z.created");
    let (w, create_w) = create("CB-005", "w.created");
    let saved = orders::save_batch(
        &db,
        &[
            claiming(create_x, "k-taken", "hash-x"),
            claiming(create_y, "k-new", "hash-y"),
            claiming(create_z, "k-new", "hash-z"),
            create_w,
            reject(&first, 1, "first.rejected"),
        ],
    )
    .await
    .expect("second batch");
    assert!(
        matches!(saved.results[0], Err(SaveError::KeyTaken(id)) if id == x.id),
        "{:?}",
        saved.results
    );
    assert!(matches!(saved.results[1], Ok(1)), "{:?}", saved.results);
    assert!(
        matches!(saved.results[2], Err(SaveError::KeyTaken(id)) if id == z.id),
        "{:?}",
        saved.results
    );
    assert!(matches!(saved.results[3], Ok(1)), "{:?}", saved.results);
    assert!(matches!(saved.results[4], Ok(2)), "{:?}", saved.results);
    assert_eq!(
        handed_over(&saved),
        ["y.created", "w.created", "first.rejected"]
    );

    for refused in [x.id, z.id] {
        assert!(
            orders::details(&db, refused)
                .await
                .expect("reading")
                .is_none(),
            "no order for a create whose key was taken"
        );
        let lines = order_items::Entity::find()
            .filter(order_items::Column::OrderId.eq(refused))
            .count(&db)
            .await
            .expect("counting items");
        assert_eq!(lines, 0, "no items for a create whose key was taken");
        let history = order_transitions::Entity::find()
            .filter(order_transitions::Column::OrderId.eq(refused))
            .count(&db)
            .await
            .expect("counting history");
        assert_eq!(history, 0, "no history for a create whose key was taken");
    }
    for stood in [y.id, w.id] {
        let order = details(&db, stood).await;
        assert_eq!(order.items.len(), 1);
        assert_eq!(order.history.len(), 1);
    }
    assert_eq!(
        outbox_keys(&db).await,
        ["first.created", "y.created", "w.created", "first.rejected"],
        "no outbox message for a create whose key was taken"
    );

    assert_eq!(details(&db, first.id).await.status, OrderStatus::Rejected);
    let taken = stored_key(&db, "k-taken").await;
    assert_eq!(taken.order_id, Some(first.id), "the taken key is untouched");
    assert_eq!(taken.request_hash, "hash-1");
    let new = stored_key(&db, "k-new").await;
    assert_eq!(new.order_id, Some(y.id));
    assert_eq!(new.request_hash, "hash-y");
    assert_eq!(new.response_status, Some(201));
    assert_eq!(
        new.response_body.as_deref(),
        Some(serde_json::json!({ "id": y.id }).to_string().as_str()),
        "the key is stored answered, with the order"
    );
}

#[tokio::test]
async fn postgres_a_create_whose_key_is_taken_writes_nothing_and_the_rest_of_its_batch_commits() {
    a_create_whose_key_is_taken_writes_nothing_and_the_rest_of_its_batch_commits(false).await;
}

#[tokio::test]
async fn sqlite_a_create_whose_key_is_taken_writes_nothing_and_the_rest_of_its_batch_commits() {
    a_create_whose_key_is_taken_writes_nothing_and_the_rest_of_its_batch_commits(true).await;
}

/// The fallback protocol claims a key first and completes it with the order's write; a
/// concurrent request with the same key takes the fast path, claiming it in its own write.
/// In one batch, the completion must fill in the claimed key and the claimant must find it
/// taken, whichever comes first in the batch.
async fn a_claimant_of_a_key_claimed_beforehand_is_refused_beside_its_completion(embedded: bool) {
    let (db, _backing) = migrated_writer(embedded).await;
    let retention = chrono::Duration::hours(24);
    for (key, claimant_first) in [("k-before", true), ("k-after", false)] {
        let claimed = idempotency::claim(&db, key, "hash-1", retention, ABANDONED_AFTER)
            .await
            .expect("claiming");
        assert_eq!(claimed, Claim::New);

        let (completing, create_completing) = create("CB-001", "completing.created");
        let (claimant, create_claimant) = create("CB-002", "claimant.created");
        let completion = answering(create_completing, key, None);
        let claim = claiming(create_claimant, key, "hash-1");
        let batch = if claimant_first {
            [claim, completion]
        } else {
            [completion, claim]
        };
        let saved = orders::save_batch(&db, &batch).await.expect("the batch");
        let (claim_result, completion_result) = if claimant_first {
            (&saved.results[0], &saved.results[1])
        } else {
            (&saved.results[1], &saved.results[0])
        };
        assert!(
            matches!(claim_result, Err(SaveError::KeyTaken(id)) if *id == claimant.id),
            "{key}: {:?}",
            saved.results
        );
        assert!(
            matches!(completion_result, Ok(1)),
            "{key}: {:?}",
            saved.results
        );
        assert_eq!(handed_over(&saved), ["completing.created"], "{key}");
        assert!(
            orders::details(&db, claimant.id)
                .await
                .expect("reading")
                .is_none(),
            "{key}: no order for the claimant"
        );
        assert_eq!(details(&db, completing.id).await.items.len(), 1, "{key}");

        let stored = stored_key(&db, key).await;
        assert_eq!(stored.order_id, Some(completing.id), "{key}");
        assert_eq!(stored.request_hash, "hash-1", "{key}");
        assert_eq!(stored.response_status, Some(201), "{key}");
        assert_eq!(
            stored.response_body.as_deref(),
            Some(
                serde_json::json!({ "id": completing.id })
                    .to_string()
                    .as_str()
            ),
            "{key}: the claimed key is answered with the completing order"
        );
    }
    assert_eq!(
        outbox_keys(&db).await,
        ["completing.created", "completing.created"],
        "no outbox message for a claimant"
    );
}

#[tokio::test]
async fn postgres_a_claimant_of_a_key_claimed_beforehand_is_refused_beside_its_completion() {
    a_claimant_of_a_key_claimed_beforehand_is_refused_beside_its_completion(false).await;
}

#[tokio::test]
async fn sqlite_a_claimant_of_a_key_claimed_beforehand_is_refused_beside_its_completion() {
    a_claimant_of_a_key_claimed_beforehand_is_refused_beside_its_completion(true).await;
}

/// The task's result once it has finished; fails with `what` if it has not within 10 s
/// (a generous bound: only a task that cannot finish reaches it).
async fn finished<T>(task: tokio::task::JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .expect("the task ran to its end")
}

/// On PostgreSQL new orders have a writer (and connection) of their own, so that a create
/// never waits for a batch of transitions. A transition held up by a row lock shows it: with
/// the create lane, a create commits while that transition waits; with one shared writer,
/// the create waits behind it.
#[tokio::test]
async fn postgres_a_create_does_not_wait_for_a_transition_batch_held_up_by_a_lock() {
    let (stores, db, _backing) = migrated_stores_and_writer(false).await;
    for create_lane in [true, false] {
        let (held, create_held) = create("CB-001", "held.created");
        orders::save_batch(&db, &[create_held])
            .await
            .expect("creating the order whose row gets locked");
        let writer = OrderWriter::start(
            db.clone(),
            OutboxFeed::default(),
            1,
            create_lane,
            order_service::persistence::ownership::Ownership::single(),
        );

        let lock = stores.orders.begin().await.expect("beginning");
        lock.execute_unprepared(&format!(
            "SELECT 1 FROM orders WHERE id = '{}' FOR UPDATE",
            held.id
        ))
        .await
        .expect("locking the order's row");
        let transition = tokio::spawn({
            let writer = writer.clone();
            let write = reject(&held, 1, "held.rejected");
            async move { writer.write(write).await }
        });
        // Give the writer time to take the transition into a batch (if the create came
        // first, the lane-less case would still batch them together: same outcome).
        tokio::time::sleep(Duration::from_millis(300)).await;

        let (_, create_new) = create("CB-002", "new.created");
        let new = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write(create_new).await }
        });
        if create_lane {
            let created = finished(
                new,
                "with the create lane, the create commits while the transition waits",
            )
            .await;
            assert!(matches!(created, Ok(1)), "{created:?}");
            assert!(
                !transition.is_finished(),
                "the transition still waits for the lock"
            );
            lock.rollback().await.expect("releasing the lock");
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(
                !new.is_finished(),
                "without the create lane, the create waits behind the held-up transition"
            );
            lock.rollback().await.expect("releasing the lock");
            let created = finished(new, "the create commits once the lock is released").await;
            assert!(matches!(created, Ok(1)), "{created:?}");
        }
        let moved = finished(
            transition,
            "the transition commits once the lock is released",
        )
        .await;
        assert!(matches!(moved, Ok(2)), "{moved:?}");
        assert_eq!(details(&db, held.id).await.status, OrderStatus::Rejected);
    }
}
