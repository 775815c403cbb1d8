//! The orders write path (`orders::save_batch`, behind the group commit's one-by-one
//! fallback) as one table of cases, run on PostgreSQL (one statement) and SQLite (a
//! transaction of plain statements) alike. Each case sets the scene with a few batches,
//! applies its batch, and checks each write's outcome against the table; what the stores
//! then hold — each order as `load` and `details` read it (items, history in order), the
//! outbox rows and the idempotency keys — must match a model that applied only the writes
//! the table says stand. Every case gets a database of its own.

use crate::group_commit::{
    claiming, create, details, message, migrated_writer, reject, stored_key,
};
use crate::helpers::outbox_rows;
use order_service::domain::view::HistoryEntry;
use order_service::persistence::apply_batch_or_each;
use order_service::persistence::orders::{self, OrderRecord, OrderWrite, SaveError, StepTimer};
use sea_orm::DatabaseConnection;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One write of a case; orders are named by a letter.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// Creates the order (no idempotency key).
    Create(char),
    /// Creates the order, claiming the key with it.
    CreateClaiming(char, &'static str),
    /// Creates another order under the id of an existing one.
    CreateDuplicate(char),
    /// Rejects the order (a transition with a history entry), fenced at the version.
    Reject(char, i64),
    /// Resends the order's pending step (new timer, no history entry), fenced at the version.
    Retry(char, i64),
}

/// What a write should come to.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// It stands; the order's new version.
    Version(i64),
    /// Its version fence failed: it changed nothing.
    Conflict,
    /// Its key was taken: it changed nothing.
    KeyTaken,
    /// The database refused it: alone, it changed nothing; in a batch, it failed the batch
    /// as a whole, and the group commit applied the other writes one by one.
    Failed,
}

use Op::*;
use Outcome::*;

struct Case {
    name: &'static str,
    /// Batches that set the scene; every write of them stands.
    before: &'static [&'static [Op]],
    batch: &'static [(Op, Outcome)],
}

const CASES: &[Case] = &[
    Case {
        name: "a create without a key",
        before: &[],
        batch: &[(Create('a'), Version(1))],
    },
    Case {
        name: "a create claiming a free key",
        before: &[],
        batch: &[(CreateClaiming('a', "k1"), Version(1))],
    },
    Case {
        name: "a create claiming a taken key",
        before: &[&[CreateClaiming('a', "k1")]],
        batch: &[(CreateClaiming('b', "k1"), KeyTaken)],
    },
    Case {
        name: "a create under an existing id",
        before: &[&[Create('a')]],
        batch: &[(CreateDuplicate('a'), Failed)],
    },
    Case {
        name: "a transition at the expected version",
        before: &[&[Create('a')]],
        batch: &[(Reject('a', 1), Version(2))],
    },
    Case {
        name: "a transition at a stale version",
        before: &[&[Create('a')]],
        batch: &[(Reject('a', 0), Conflict)],
    },
    Case {
        name: "a retry at the expected version",
        before: &[&[Create('a')]],
        batch: &[(Retry('a', 1), Version(2))],
    },
    Case {
        name: "a retry at a stale version",
        before: &[&[Create('a')], &[Reject('a', 1)]],
        batch: &[(Retry('a', 1), Conflict)],
    },
    Case {
        name: "transitions in successive batches keep their history order",
        before: &[&[Create('a')], &[Reject('a', 1)]],
        batch: &[(Reject('a', 2), Version(3))],
    },
    Case {
        name: "a batch with a conflict and a taken key: the other writes commit",
        before: &[&[
            Create('a'),
            Create('b'),
            Create('c'),
            CreateClaiming('f', "k1"),
        ]],
        batch: &[
            (Reject('a', 1), Version(2)),
            (Reject('b', 0), Conflict),
            (Retry('c', 1), Version(2)),
            (Create('d'), Version(1)),
            (CreateClaiming('e', "k2"), Version(1)),
            (CreateClaiming('g', "k1"), KeyTaken),
        ],
    },
    Case {
        name: "a batch with a failing write: the other writes commit one by one",
        before: &[&[Create('a'), Create('b')]],
        batch: &[
            (Reject('a', 1), Version(2)),
            (CreateDuplicate('b'), Failed),
            (Create('c'), Version(1)),
            (CreateClaiming('d', "k1"), Version(1)),
        ],
    },
];

/// What the stores should hold: the writes that stood, applied in order.
#[derive(Default)]
struct Model {
    orders: BTreeMap<char, OrderRecord>,
    history: BTreeMap<char, Vec<HistoryEntry>>,
    /// Routing keys and headers of the outbox rows, in commit order.
    outbox: Vec<(String, Option<String>)>,
    /// Claimed keys and their orders.
    keys: BTreeMap<&'static str, char>,
}

impl Model {
    /// The write `op` stands for, given the orders so far.
    fn write(&self, op: Op) -> OrderWrite {
        let order = |name: char| {
            self.orders
                .get(&name)
                .unwrap_or_else(|| panic!("order {name} is created first"))
        };
        match op {
            Create(name) => create("SKU-1", &format!("{name}.created")).1,
            CreateClaiming(name, key) => {
                let write = create("SKU-1", &format!("{name}.created")).1;
                claiming(write, key, &format!("hash-{name}"))
            }
            CreateDuplicate(name) => {
                let mut write = create("SKU-2", &format!("{name}.duplicate")).1;
                if let OrderWrite::Create { order: new, .. } = &mut write {
                    new.id = order(name).id;
                }
                write
            }
            Reject(name, expected) => reject(order(name), expected, &format!("{name}.rejected")),
            Retry(name, expected) => {
                let mut resent = message(&format!("{name}.retry"));
                resent.headers.clear();
                OrderWrite::Retry {
                    order_id: order(name).id,
                    expected_version: expected,
                    timer: StepTimer {
                        deadline: None,
                        attempts: order(name).timer.attempts + 1,
                    },
                    messages: vec![resent],
                }
            }
        }
    }

    /// Records `write` (of `op`) as standing at `version`.
    fn stood(&mut self, op: Op, write: &OrderWrite, version: i64) {
        let name = match op {
            Create(name) | CreateClaiming(name, _) | CreateDuplicate(name) => name,
            Reject(name, _) | Retry(name, _) => name,
        };
        if let CreateClaiming(_, key) = op {
            self.keys.insert(key, name);
        }
        let messages = match write {
            OrderWrite::Create {
                order,
                entry,
                messages,
                ..
            } => {
                self.orders.insert(name, (**order).clone());
                self.history.insert(name, vec![entry.clone()]);
                messages
            }
            OrderWrite::Transition {
                saga,
                timer,
                entry,
                messages,
                ..
            } => {
                let order = self
                    .orders
                    .get_mut(&name)
                    .expect("a transition of an order");
                order.saga = saga.clone();
                order.timer = *timer;
                order.updated_at = entry.at;
                self.history.entry(name).or_default().push(entry.clone());
                messages
            }
            OrderWrite::Retry {
                timer, messages, ..
            } => {
                let order = self.orders.get_mut(&name).expect("a retry of an order");
                order.timer = *timer;
                messages
            }
        };
        if let Some(order) = self.orders.get_mut(&name) {
            order.version = version;
        }
        self.outbox.extend(
            messages
                .iter()
                .map(|m| (m.routing_key.clone(), m.headers_column())),
        );
    }
}

/// Applies `writes` as the group commit does (the batch, or each write alone if the batch
/// fails); returns each write's outcome and the routing keys handed to the relay.
async fn apply(
    db: &DatabaseConnection,
    writes: &[OrderWrite],
) -> (
    Vec<Result<Result<i64, SaveError>, sea_orm::DbErr>>,
    Vec<String>,
) {
    let handed = Arc::new(Mutex::new(Vec::new()));
    let results = apply_batch_or_each("test", writes, |writes| {
        let (db, handed) = (db.clone(), handed.clone());
        Box::pin(async move {
            let saved = orders::save_batch(&db, writes).await?;
            let keys = saved.outbox_rows.iter().map(|r| r.routing_key.clone());
            handed.lock().expect("not poisoned").extend(keys);
            Ok(saved.results)
        })
    })
    .await;
    let handed = handed.lock().expect("not poisoned").clone();
    (results, handed)
}

async fn run(case: &Case, embedded: bool) {
    let name = case.name;
    let (db, _backing) = migrated_writer(embedded).await;
    let mut model = Model::default();
    for batch in case.before {
        let writes: Vec<OrderWrite> = batch.iter().map(|&op| model.write(op)).collect();
        let saved = orders::save_batch(&db, &writes)
            .await
            .unwrap_or_else(|e| panic!("{name}: setting the scene: {e}"));
        for ((op, write), result) in batch.iter().zip(&writes).zip(saved.results) {
            let version = result.unwrap_or_else(|e| panic!("{name}: setting the scene: {e}"));
            model.stood(*op, write, version);
        }
    }

    let writes: Vec<OrderWrite> = case.batch.iter().map(|&(op, _)| model.write(op)).collect();
    if case.batch.iter().any(|(_, o)| matches!(o, Failed)) {
        assert!(
            orders::save_batch(&db, &writes).await.is_err(),
            "{name}: a write the database refuses fails its batch as a whole"
        );
    }
    let outbox_before = model.outbox.len();
    let (results, handed) = apply(&db, &writes).await;
    for (((op, expected), write), result) in case.batch.iter().zip(&writes).zip(results) {
        match (expected, result) {
            (Version(v), Ok(Ok(version))) if *v == version => model.stood(*op, write, version),
            (Conflict, Ok(Err(SaveError::Conflict(id))))
            | (KeyTaken, Ok(Err(SaveError::KeyTaken(id))))
                if id == write.order_id() => {}
            (Failed, Err(_)) => {}
            (expected, result) => panic!("{name}: {op:?} should be {expected:?}, is {result:?}"),
        }
    }
    let stood: Vec<&str> = model.outbox[outbox_before..]
        .iter()
        .map(|(key, _)| key.as_str())
        .collect();
    assert_eq!(handed, stood, "{name}: the rows handed to the relay");

    for (order, record) in &model.orders {
        let loaded = orders::load(&db, record.id).await.expect("loading");
        assert_eq!(
            loaded.as_ref(),
            Some(record),
            "{name}: order {order} as loaded"
        );
        let details = details(&db, record.id).await;
        assert_eq!(details.items.len(), record.items.len(), "{name}: {order}");
        assert_eq!(
            details.history, model.history[order],
            "{name}: order {order}'s history, in order"
        );
    }
    for (&(op, _), write) in case.batch.iter().zip(&writes) {
        let stands = model.orders.values().any(|o| o.id == write.order_id());
        if !stands {
            assert!(
                orders::load(&db, write.order_id())
                    .await
                    .expect("loading")
                    .is_none(),
                "{name}: {op:?} left no order"
            );
        }
    }
    let outbox: Vec<(String, Option<String>)> = outbox_rows(&db)
        .await
        .into_iter()
        .map(|row| (row.routing_key, row.headers))
        .collect();
    assert_eq!(outbox, model.outbox, "{name}: the outbox, in commit order");
    for (key, order) in &model.keys {
        let stored = stored_key(&db, key).await;
        assert_eq!(
            stored.order_id,
            Some(model.orders[order].id),
            "{name}: {key}"
        );
        assert_eq!(
            stored.request_hash,
            format!("hash-{order}"),
            "{name}: {key}"
        );
        assert_eq!(stored.response_status, Some(201), "{name}: {key}");
    }
}

#[tokio::test]
async fn postgres_the_write_path_cases() {
    for case in CASES {
        run(case, false).await;
    }
}

#[tokio::test]
async fn sqlite_the_write_path_cases() {
    for case in CASES {
        run(case, true).await;
    }
}
