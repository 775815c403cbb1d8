//! Several replicas of the real binary on one database and one vhost (issue 22): partition
//! ownership spread and handed over through kill -9, SIGTERM and a fresh start; a load spread
//! over the replicas through those changes; a paused owner fenced out after the takeover;
//! requests for an order owned elsewhere forwarded to its owner. The orders store's tables
//! (`partitions`, `order_transitions`) are read through its own connection.

use crate::helpers::{ADMIN_TOKEN, free_port, order_body, provision, settled_report};
use crate::process::ServiceProcess;
use order_service::domain::partition::partition_of;
use order_service::persistence::Stores;
use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

const PARTITIONS: u16 = 32;
/// How long the replicas get to settle their ownership after a change.
const SETTLE: Duration = Duration::from_secs(20);

/// One replica process and the id it was started with.
struct Replica {
    id: String,
    process: ServiceProcess,
}

impl Replica {
    /// Starts replica `id` on a fresh port, advertising that port, and waits until ready.
    async fn start(
        client: &reqwest::Client,
        database_url: &str,
        amqp_url: &str,
        id: &str,
        extra: &[(&'static str, &str)],
    ) -> Replica {
        let mut replica = Replica::spawn(database_url, amqp_url, id, extra);
        replica.process.wait_ready(client).await;
        replica
    }

    /// Starts replica `id` without waiting for it.
    fn spawn(
        database_url: &str,
        amqp_url: &str,
        id: &str,
        extra: &[(&'static str, &str)],
    ) -> Replica {
        let port = free_port();
        let advertise = format!("http://127.0.0.1:{port}");
        let partitions = PARTITIONS.to_string();
        let mut env: Vec<(&'static str, &str)> = vec![
            ("REPLICA_ID", id),
            ("ADVERTISE_URL", &advertise),
            ("PARTITIONS", &partitions),
        ];
        env.extend_from_slice(extra);
        let process = ServiceProcess::start_on(port, database_url, amqp_url, &env);
        Replica {
            id: id.to_owned(),
            process,
        }
    }

    fn base(&self) -> &str {
        &self.process.base
    }
}

/// What one replica's `/health/ready` says about ownership.
#[derive(Debug, Clone)]
struct Ownership {
    replica_id: String,
    partitions: u64,
    owned: BTreeSet<u16>,
    members: Option<u64>,
}

async fn ownership(client: &reqwest::Client, base: &str) -> Result<Ownership, String> {
    let response = client
        .get(format!("{base}/health/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("unreachable: {e}"))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| format!("{status}, body not JSON: {e}"))?;
    let o = &body["ownership"];
    let owned = o["owned"]
        .as_array()
        .ok_or_else(|| format!("{status}, no ownership.owned: {body}"))?
        .iter()
        .map(|p| {
            p.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| format!("partition {p} is not a number: {body}"))
        })
        .collect::<Result<BTreeSet<u16>, String>>()?;
    Ok(Ownership {
        replica_id: o["replica_id"].as_str().unwrap_or_default().to_owned(),
        partitions: o["partitions"].as_u64().unwrap_or_default(),
        owned,
        members: o["members"].as_u64(),
    })
}

/// Everything wrong with the live replicas' ownership: each partition owned by exactly one,
/// the spread within ±1, each replica reporting its own id, P and the member count.
fn balance_problems(views: &[(String, Result<Ownership, String>)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut owners: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
    let mut counts = Vec::new();
    for (id, view) in views {
        match view {
            Err(e) => problems.push(format!("{id}: {e}")),
            Ok(o) => {
                if o.replica_id != *id {
                    problems.push(format!("{id} reports replica_id {:?}", o.replica_id));
                }
                if o.partitions != u64::from(PARTITIONS) {
                    problems.push(format!("{id} reports {} partitions", o.partitions));
                }
                if o.members != Some(views.len() as u64) {
                    problems.push(format!(
                        "{id} reports members {:?}, live {}",
                        o.members,
                        views.len()
                    ));
                }
                for p in &o.owned {
                    owners.entry(*p).or_default().push(id);
                }
                counts.push(o.owned.len());
            }
        }
    }
    for p in 0..PARTITIONS {
        match owners.get(&p).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!("partition {p} has no owner")),
            Some([_]) => {}
            Some(many) => problems.push(format!("partition {p} owned by {many:?}")),
        }
    }
    if let (Some(min), Some(max)) = (counts.iter().min(), counts.iter().max())
        && max - min > 1
    {
        problems.push(format!("spread {counts:?} is not within ±1"));
    }
    problems
}

fn describe(views: &[(String, Result<Ownership, String>)]) -> String {
    views
        .iter()
        .map(|(id, view)| match view {
            Ok(o) => format!(
                "{id}: {} owned {:?} (members {:?})",
                o.owned.len(),
                o.owned,
                o.members
            ),
            Err(e) => format!("{id}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls every live replica until their ownership is balanced (at most [`SETTLE`]) and
/// returns it, replica id → owned partitions; fails with what was observed last.
async fn wait_balanced(
    client: &reqwest::Client,
    live: &[&Replica],
    after: &str,
) -> BTreeMap<String, BTreeSet<u16>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut views = Vec::new();
        for replica in live {
            views.push((replica.id.clone(), ownership(client, replica.base()).await));
        }
        let problems = balance_problems(&views);
        if problems.is_empty() {
            return views
                .into_iter()
                .filter_map(|(id, view)| view.ok().map(|o| (id, o.owned)))
                .collect();
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = live
                .iter()
                .map(|r| format!("--- {} log tail:\n{}", r.id, r.process.log_tail(15)))
                .collect();
            panic!(
                "ownership not balanced {SETTLE:?} after {after}:\n{}\nobserved:\n{}\n{}",
                problems.join("\n"),
                describe(&views),
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `partitions` table: partition → (owner, epoch).
async fn partition_rows(db: &DatabaseConnection) -> BTreeMap<u16, (Option<String>, i64)> {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT partition, owner, epoch FROM partitions ORDER BY partition",
        ))
        .await
        .expect("reading partitions");
    rows.iter()
        .map(|row| {
            let partition: i32 = row.try_get("", "partition").expect("partition");
            let owner: Option<String> = row.try_get("", "owner").expect("owner");
            let epoch: i64 = row.try_get("", "epoch").expect("epoch");
            (
                u16::try_from(partition).expect("partition in range"),
                (owner, epoch),
            )
        })
        .collect()
}

/// Checks that `partitions.owner` agrees with what the replicas' health says
/// (retried for 5 s: the row and the health answer are not updated in one step).
async fn check_owners_in_postgres(
    db: &DatabaseConnection,
    health: &BTreeMap<String, BTreeSet<u16>>,
    after: &str,
) {
    let expected: BTreeMap<u16, Option<String>> = health
        .iter()
        .flat_map(|(id, owned)| owned.iter().map(|p| (*p, Some(id.clone()))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rows = partition_rows(db).await;
        let actual: BTreeMap<u16, Option<String>> = rows
            .iter()
            .map(|(p, (owner, _))| (*p, owner.clone()))
            .collect();
        if actual == expected {
            return;
        }
        if Instant::now() > deadline {
            let differences: Vec<String> = (0..PARTITIONS)
                .filter(|p| actual.get(p) != expected.get(p))
                .map(|p| {
                    format!(
                        "partition {p}: health says {:?}, partitions says {:?}",
                        expected.get(&p),
                        actual.get(&p)
                    )
                })
                .collect();
            panic!(
                "after {after}, partitions disagrees with /health/ready:\n{}",
                differences.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_balanced`], then the same ownership in PostgreSQL and in `partitions_owned`.
async fn check_ownership(
    client: &reqwest::Client,
    db: &DatabaseConnection,
    live: &[&Replica],
    after: &str,
) -> BTreeMap<String, BTreeSet<u16>> {
    let health = wait_balanced(client, live, after).await;
    check_owners_in_postgres(db, &health, after).await;
    for replica in live {
        let gauge = replica
            .process
            .metric(client, "partitions_owned", &[])
            .await;
        let owned = health.get(&replica.id).map_or(0, BTreeSet::len);
        assert_eq!(
            gauge, owned as f64,
            "after {after}: {}'s partitions_owned gauge against its health answer",
            replica.id
        );
    }
    eprintln!(
        "balanced after {after}: {:?}",
        health
            .iter()
            .map(|(id, owned)| (id.as_str(), owned.len()))
            .collect::<Vec<_>>()
    );
    health
}

async fn connect_orders_store(database_url: &str) -> Stores {
    Stores::connect(database_url, 2)
        .await
        .expect("test store connections")
}

#[tokio::test]
async fn each_partition_has_exactly_one_live_owner_after_start_kill_9_sigterm_and_join() {
    let (database_url, amqp_url, _backing) = provision(false).await;
    let amqp_url = amqp_url.expect("RabbitMQ");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let start = |id: &'static str| Replica::start(&client, &database_url, &amqp_url, id, &[]);

    let mut r1 = start("r1").await;
    let stores = connect_orders_store(&database_url).await;
    let db = &stores.orders;
    check_ownership(&client, db, &[&r1], "r1 started").await;
    let mut r2 = start("r2").await;
    check_ownership(&client, db, &[&r1, &r2], "r2 started").await;
    let r3 = start("r3").await;
    check_ownership(&client, db, &[&r1, &r2, &r3], "r3 started").await;

    r1.process.kill9();
    check_ownership(&client, db, &[&r2, &r3], "kill -9 of r1").await;

    let exit = r2.process.terminate().await;
    assert_eq!(
        exit.code(),
        Some(0),
        "r2 after SIGTERM: {exit}; log tail:\n{}",
        r2.process.log_tail(30)
    );
    check_ownership(&client, db, &[&r3], "SIGTERM of r2").await;

    let r4 = start("r4").await;
    check_ownership(&client, db, &[&r3, &r4], "r4 started").await;
    stores.close().await;
}

// ---------------------------------------------------------------------------------------
// Load over the replicas.
// ---------------------------------------------------------------------------------------

/// The replicas a load balancer sends requests to, taken in turn.
struct Rotation {
    bases: Mutex<Vec<String>>,
    turn: AtomicUsize,
}

impl Rotation {
    fn new(bases: &[&str]) -> Rotation {
        Rotation {
            bases: Mutex::new(bases.iter().map(|b| (*b).to_owned()).collect()),
            turn: AtomicUsize::new(0),
        }
    }

    /// The next replica in turn, another than `avoid` when there is one.
    fn pick(&self, avoid: Option<&str>) -> String {
        let bases = self.bases.lock().expect("rotation").clone();
        assert!(!bases.is_empty(), "no replica left in the rotation");
        let first = self.turn.fetch_add(1, Ordering::Relaxed);
        (0..bases.len())
            .map(|i| &bases[(first + i) % bases.len()])
            .find(|b| Some(b.as_str()) != avoid)
            .unwrap_or(&bases[first % bases.len()])
            .clone()
    }

    fn add(&self, base: &str) {
        self.bases.lock().expect("rotation").push(base.to_owned());
    }

    fn remove(&self, base: &str) {
        self.bases.lock().expect("rotation").retain(|b| b != base);
    }
}

/// How a create request ended, after the retries a load balancer and client would make.
#[derive(Debug, Clone)]
struct Created {
    /// The order id, or `None` for a 409 insufficient-stock.
    id: Option<String>,
    /// The replica that gave the answer.
    served_by: String,
}

/// What the clients saw and retried, for the failure messages and the report.
#[derive(Default)]
struct Observed {
    retried: Mutex<BTreeMap<String, usize>>,
}

impl Observed {
    fn note(&self, what: String) {
        *self
            .retried
            .lock()
            .expect("observed")
            .entry(what)
            .or_default() += 1;
    }

    fn summary(&self) -> String {
        format!("{:#?}", self.retried.lock().expect("observed"))
    }
}

/// Creates the order for `key` on a replica of the rotation (another than `avoid` if
/// possible). A request that fails at the connection level (the replica was just killed
/// or paused), a 503 and a key still claimed by a request that died are retried on the next
/// replica with the same key, as a load balancer and a well-behaved client would.
async fn create_via(
    client: &reqwest::Client,
    rotation: &Rotation,
    observed: &Observed,
    key: &str,
    body: &Value,
    avoid: Option<&str>,
) -> Created {
    let deadline = Instant::now() + Duration::from_secs(45);
    let mut avoid = avoid.map(str::to_owned);
    let mut history = Vec::new();
    loop {
        let base = rotation.pick(avoid.as_deref());
        let outcome = crate::process::post(client, &base, key, body).await;
        let retry = match outcome {
            Err(e) => {
                let kind = if e.is_connect() {
                    "connect"
                } else if e.is_timeout() {
                    "timeout"
                } else {
                    "request"
                };
                format!("{kind} error")
            }
            Ok((StatusCode::CREATED, order)) => {
                let id = order["id"].as_str().map(str::to_owned);
                assert!(
                    id.is_some(),
                    "{key}: 201 without an id from {base}: {order}"
                );
                return Created {
                    id,
                    served_by: base,
                };
            }
            Ok((StatusCode::CONFLICT, problem))
                if problem["type"] == "/problems/insufficient-stock" =>
            {
                return Created {
                    id: None,
                    served_by: base,
                };
            }
            Ok((StatusCode::CONFLICT, problem))
                if problem["type"] == "/problems/idempotency-key-in-flight" =>
            {
                "409 key in flight".to_owned()
            }
            Ok((status, problem)) if status.is_server_error() => {
                format!("{status} {}", problem["type"])
            }
            Ok((status, body)) => panic!("{key} on {base}: unexpected {status}: {body}"),
        };
        observed.note(retry.clone());
        history.push(format!("{base}: {retry}"));
        assert!(
            Instant::now() < deadline,
            "{key}: no answer in 45 s; attempts: {history:#?}"
        );
        avoid = Some(base);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn is_terminal(order: &Value) -> bool {
    matches!(
        order["status"].as_str(),
        Some("CONFIRMED" | "REVERSED" | "REJECTED")
    )
}

/// Waits until every order is terminal, asking the replicas of the rotation in turn with a
/// long poll (`?wait_ms=`); a replica that fails is skipped for the next one.
async fn wait_all_terminal(client: &reqwest::Client, rotation: &Rotation, ids: &[String]) {
    use futures::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(90);
    futures::stream::iter(ids)
        .for_each_concurrent(32, |id| async move {
            let mut last;
            loop {
                let base = rotation.pick(None);
                let answer = client
                    .get(format!("{base}/api/orders/{id}?wait_ms=2000"))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let order: Value = r.json().await.expect("order JSON");
                        if is_terminal(&order) {
                            return;
                        }
                        last = format!("{base}: {order}");
                    }
                    Ok(r) => {
                        last = format!(
                            "{base}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )
                    }
                    Err(e) => last = format!("{base}: {e}"),
                }
                assert!(
                    Instant::now() < deadline,
                    "order {id} not terminal after 90 s; last answer {last}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
}

/// One row of `order_transitions`.
#[derive(Debug, Clone)]
struct Transition {
    id: i64,
    from: Option<String>,
    to: String,
    event: String,
    epoch: Option<i64>,
}

/// Every order's transitions in id order, and every order's status.
async fn histories(
    db: &DatabaseConnection,
) -> (BTreeMap<Uuid, Vec<Transition>>, BTreeMap<Uuid, String>) {
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id, order_id, from_status, to_status, event, epoch \
             FROM order_transitions ORDER BY order_id, id",
        ))
        .await
        .expect("reading order_transitions");
    let mut chains: BTreeMap<Uuid, Vec<Transition>> = BTreeMap::new();
    for row in &rows {
        let order: Uuid = row.try_get("", "order_id").expect("order_id");
        chains.entry(order).or_default().push(Transition {
            id: row.try_get("", "id").expect("id"),
            from: row.try_get("", "from_status").expect("from_status"),
            to: row.try_get("", "to_status").expect("to_status"),
            event: row.try_get("", "event").expect("event"),
            epoch: row.try_get("", "epoch").expect("epoch"),
        });
    }
    let statuses = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id, status FROM orders",
        ))
        .await
        .expect("reading orders")
        .iter()
        .map(|row| {
            (
                row.try_get::<Uuid>("", "id").expect("id"),
                row.try_get::<String>("", "status").expect("status"),
            )
        })
        .collect();
    (chains, statuses)
}

/// Everything wrong with the orders' transition chains: the first entry not a creation
/// (from NULL), an entry not starting where the previous one ended, a transition applied
/// twice, an epoch missing or going down, a chain not ending in the order's status.
fn chain_problems(
    chains: &BTreeMap<Uuid, Vec<Transition>>,
    statuses: &BTreeMap<Uuid, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (order, status) in statuses {
        let Some(chain) = chains.get(order) else {
            problems.push(format!("{order}: no transitions"));
            continue;
        };
        let show = || format!("{chain:?}");
        if chain[0].from.is_some() {
            problems.push(format!(
                "{order}: first transition not a creation: {}",
                show()
            ));
        }
        let mut seen = BTreeSet::new();
        for pair in chain.windows(2) {
            if pair[1].from.as_ref() != Some(&pair[0].to) {
                problems.push(format!(
                    "{order}: transition {} starts from {:?}, the previous ended in {}: {}",
                    pair[1].id,
                    pair[1].from,
                    pair[0].to,
                    show()
                ));
            }
            if let (Some(before), Some(after)) = (pair[0].epoch, pair[1].epoch)
                && after < before
            {
                problems.push(format!(
                    "{order}: epoch went down from {before} to {after} at transition {}: {}",
                    pair[1].id,
                    show()
                ));
            }
        }
        for t in chain {
            if !seen.insert((t.from.clone(), t.to.clone(), t.event.clone())) {
                problems.push(format!("{order}: transition applied twice: {}", show()));
            }
            if t.epoch.is_none() {
                problems.push(format!("{order}: transition {} without an epoch", t.id));
            }
        }
        if chain.last().map(|t| &t.to) != Some(status) {
            problems.push(format!(
                "{order}: chain ends elsewhere than its status {status}: {}",
                show()
            ));
        }
    }
    for order in chains.keys().filter(|o| !statuses.contains_key(o)) {
        problems.push(format!(
            "{order}: transitions of an order that does not exist"
        ));
    }
    problems
}

/// Checks the chains, the invariants (given the initial stock) and that the orders in the
/// database are exactly `ids`.
async fn check_outcome(stores: &Stores, ids: &BTreeSet<String>, initial: &[(&str, i64)]) {
    let initial: BTreeMap<String, i64> =
        initial.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect();
    let report = settled_report(stores, &initial).await;
    assert!(
        report.holds(),
        "invariants: {:#?}, in flight {}, parked {}",
        report.violations,
        report.in_flight,
        report.parked
    );
    let (chains, statuses) = histories(&stores.orders).await;
    let in_database: BTreeSet<String> = statuses.keys().map(Uuid::to_string).collect();
    assert_eq!(
        &in_database,
        ids,
        "the orders in the database are exactly those the clients were given \
         (only in the database: {:?}; only answered: {:?})",
        in_database.difference(ids).collect::<Vec<_>>(),
        ids.difference(&in_database).collect::<Vec<_>>()
    );
    let problems = chain_problems(&chains, &statuses);
    assert!(
        problems.is_empty(),
        "{} broken chains, first ones:\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
}

/// The ids of the orders a load created, after checking that a key re-sent to another
/// replica answered the same order and that no two keys answered the same order.
fn one_order_per_key(results: &[(String, Created, Option<Created>)]) -> BTreeSet<String> {
    let mut by_id: HashMap<&str, &str> = HashMap::new();
    for (key, created, replay) in results {
        if let Some(replay) = replay {
            assert_eq!(
                replay.id, created.id,
                "{key}: re-sent to {} it answered another order than {} did",
                replay.served_by, created.served_by
            );
        }
        if let Some(id) = &created.id
            && let Some(other) = by_id.insert(id, key)
        {
            panic!("keys {other} and {key} answered the same order {id}");
        }
    }
    by_id.keys().map(|id| (*id).to_owned()).collect()
}

/// Shared state of a running load.
struct Load {
    rotation: Rotation,
    observed: Observed,
    next: AtomicUsize,
    answered: AtomicUsize,
    stop: AtomicBool,
    results: Mutex<Vec<(String, Created, Option<Created>)>>,
}

impl Load {
    fn new(bases: &[&str]) -> Load {
        Load {
            rotation: Rotation::new(bases),
            observed: Observed::default(),
            next: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            results: Mutex::new(Vec::new()),
        }
    }

    /// One client: creates orders `prefix-<n>` until `limit` are taken or the load stops;
    /// every fourth key is sent again to another replica. Orders from `gate.0` on wait
    /// until `gate.1` is set.
    async fn client(
        &self,
        client: &reqwest::Client,
        prefix: &str,
        limit: usize,
        gate: Option<(usize, &AtomicBool)>,
    ) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            if i >= limit || self.stop.load(Ordering::SeqCst) {
                return;
            }
            if let Some((from, open)) = gate
                && i >= from
            {
                while !open.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let key = format!("{prefix}-{i}");
            let body = order_body(&[("R-1", 1 + (i % 2) as i64), ("R-2", 1)]);
            let created =
                create_via(client, &self.rotation, &self.observed, &key, &body, None).await;
            let replay = if i.is_multiple_of(4) && created.id.is_some() {
                let other = Some(created.served_by.as_str());
                Some(create_via(client, &self.rotation, &self.observed, &key, &body, other).await)
            } else {
                None
            };
            self.results
                .lock()
                .expect("results")
                .push((key, created, replay));
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn clients(
        &self,
        client: &reqwest::Client,
        prefix: &str,
        count: usize,
        limit: usize,
        gate: Option<(usize, &AtomicBool)>,
    ) {
        futures::future::join_all((0..count).map(|_| self.client(client, prefix, limit, gate)))
            .await;
    }

    async fn answered_at_least(&self, n: usize) {
        while self.answered.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Answers per replica, for the report.
    fn served(&self) -> BTreeMap<String, usize> {
        let mut served = BTreeMap::new();
        for (_, created, _) in self.results.lock().expect("results").iter() {
            *served.entry(created.served_by.clone()).or_default() += 1;
        }
        served
    }
}

async fn put_stock(client: &reqwest::Client, base: &str, initial: &[(&str, i64)]) {
    for (sku, available) in initial {
        let r = client
            .put(format!("{base}/api/inventory/{sku}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"available": available, "price_cents": 1_000}))
            .send()
            .await
            .expect("PUT stock");
        assert_eq!(r.status(), StatusCode::OK, "PUT stock {sku}");
    }
}

#[tokio::test]
async fn load_over_three_replicas_survives_kill_9_sigterm_and_a_join_with_exact_outcomes() {
    let (database_url, amqp_url, _backing) = provision(false).await;
    let amqp_url = amqp_url.expect("RabbitMQ");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client");
    let settings: &[(&'static str, &str)] = &[
        ("PAYMENT_DECLINE_RATE", "0.2"),
        ("SHIPPING_FAILURE_RATE", "0.1"),
        ("STEP_TIMEOUT_MS", "3000"),
        // Claims of requests killed mid-way are taken over by their retry after 2 s.
        ("IDEMPOTENCY_CLAIM_TIMEOUT_SECS", "2"),
    ];
    let start = |id: &'static str| Replica::start(&client, &database_url, &amqp_url, id, settings);
    let mut r1 = start("r1").await;
    let mut r2 = start("r2").await;
    let r3 = start("r3").await;
    let stores = connect_orders_store(&database_url).await;
    check_ownership(&client, &stores.orders, &[&r1, &r2, &r3], "start-up").await;
    let initial = [("R-1", 480), ("R-2", 400)];
    put_stock(&client, r3.base(), &initial).await;

    // 360 orders from 24 clients: r1 is killed at 80 answers, r2 gets SIGTERM at 150, and
    // the orders from 220 on wait until the fresh r4 is in the rotation.
    let load = Load::new(&[r1.base(), r2.base(), r3.base()]);
    let joined = AtomicBool::new(false);
    let mut r4: Option<Replica> = None;
    let chaos = async {
        load.answered_at_least(80).await;
        r1.process.kill9();
        load.rotation.remove(r1.base());
        eprintln!(
            "r1 killed at {} answers",
            load.answered.load(Ordering::SeqCst)
        );
        check_ownership(&client, &stores.orders, &[&r2, &r3], "kill -9 of r1").await;

        load.answered_at_least(150).await;
        load.rotation.remove(r2.base());
        let exit = r2.process.terminate().await;
        assert_eq!(
            exit.code(),
            Some(0),
            "r2 after SIGTERM under load: {exit}; log tail:\n{}",
            r2.process.log_tail(30)
        );
        eprintln!(
            "r2 stopped at {} answers",
            load.answered.load(Ordering::SeqCst)
        );
        check_ownership(&client, &stores.orders, &[&r3], "SIGTERM of r2").await;

        let fresh = start("r4").await;
        load.rotation.add(fresh.base());
        joined.store(true, Ordering::SeqCst);
        eprintln!(
            "r4 joined at {} answers",
            load.answered.load(Ordering::SeqCst)
        );
        check_ownership(&client, &stores.orders, &[&r3, &fresh], "r4 started").await;
        r4 = Some(fresh);
    };
    tokio::join!(
        load.clients(&client, "replicas", 24, 360, Some((220, &joined))),
        chaos
    );
    let r4 = r4.expect("r4 started");
    eprintln!(
        "answers per replica: {:?}; retried: {}",
        load.served(),
        load.observed.summary()
    );

    let results = load.results.lock().expect("results").clone();
    assert_eq!(results.len(), 360, "every request answered");
    let ids = one_order_per_key(&results);
    assert!(
        load.served().get(r4.base()).is_some_and(|n| *n > 0),
        "the fresh replica took part in the load: {:?}",
        load.served()
    );
    let id_list: Vec<String> = ids.iter().cloned().collect();
    wait_all_terminal(&client, &load.rotation, &id_list).await;
    check_outcome(&stores, &ids, &initial).await;
    check_ownership(&client, &stores.orders, &[&r3, &r4], "the load").await;
    stores.close().await;
}

/// A partition's fence after the takeover: the epoch b got, and the time (µs) from which
/// nothing may commit under an older one.
type Fence = (i64, i64);

/// A time in PostgreSQL's clock, in microseconds since the Unix epoch.
const MICROS: &str = "(extract(epoch FROM clock_timestamp()) * 1000000)::int8";

/// Microseconds since the Unix epoch of `column`, in SQL.
fn micros_of(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000000)::int8")
}

/// PostgreSQL's clock now, in microseconds since the Unix epoch.
async fn database_now(db: &DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT {MICROS} AS now"),
        ))
        .await
        .expect("clock_timestamp")
        .expect("one row");
    row.try_get("", "now").expect("now")
}

/// Each partition's `acquired_at`, in microseconds since the Unix epoch.
async fn acquired_at(db: &DatabaseConnection) -> BTreeMap<u16, i64> {
    db.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        format!(
            "SELECT partition, {} AS acquired FROM partitions WHERE acquired_at IS NOT NULL",
            micros_of("acquired_at")
        ),
    ))
    .await
    .expect("reading partitions.acquired_at")
    .iter()
    .map(|row| {
        let partition: i32 = row.try_get("", "partition").expect("partition");
        let acquired: i64 = row.try_get("", "acquired").expect("acquired");
        (
            u16::try_from(partition).expect("partition in range"),
            acquired,
        )
    })
    .collect()
}

/// Replicas `a` and `b` on a fresh database and vhost, started in that order and balanced,
/// with a client that gives up after `timeout`.
struct Pair {
    client: reqwest::Client,
    a: Replica,
    b: Replica,
    stores: Stores,
    /// Who owned what once balanced.
    owners: BTreeMap<String, BTreeSet<u16>>,
    /// Dropped last: the replicas stop before their database goes.
    _backing: crate::helpers::Backing,
}

impl Pair {
    async fn start(timeout: Duration, settings: &[(&'static str, &str)]) -> Pair {
        let (database_url, amqp_url, backing) = provision(false).await;
        let amqp_url = amqp_url.expect("RabbitMQ");
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("client");
        let a = Replica::start(&client, &database_url, &amqp_url, "a", settings).await;
        let b = Replica::start(&client, &database_url, &amqp_url, "b", settings).await;
        let stores = connect_orders_store(&database_url).await;
        let owners = check_ownership(&client, &stores.orders, &[&a, &b], "start-up").await;
        Pair {
            client,
            a,
            b,
            stores,
            owners,
            _backing: backing,
        }
    }
}

#[tokio::test]
async fn a_paused_owner_loses_its_partitions_and_commits_nothing_under_its_stale_epoch() {
    // Requests to the paused replica hang: the client gives up after 4 s and retries
    // elsewhere.
    let pair = Pair::start(
        Duration::from_secs(4),
        &[
            ("OWNERSHIP_LEASE_MS", "2000"),
            ("PAYMENT_DECLINE_RATE", "0.2"),
            ("STEP_TIMEOUT_MS", "3000"),
            ("IDEMPOTENCY_CLAIM_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let (client, a, b, stores, before) =
        (&pair.client, &pair.a, &pair.b, &pair.stores, &pair.owners);
    let db = &stores.orders;
    let a_owned = before.get("a").cloned().unwrap_or_default();
    let initial = [("R-1", 100_000), ("R-2", 100_000)];
    put_stock(client, b.base(), &initial).await;

    let load = Load::new(&[a.base(), b.base()]);
    let mut takeover: Option<(i64, BTreeMap<u16, Fence>)> = None;
    let scenario = async {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        a.process.signal("STOP");
        load.rotation.remove(a.base());
        let stopped = Instant::now();
        eprintln!(
            "a stopped at {} answers",
            load.answered.load(Ordering::SeqCst)
        );
        // b takes every partition once a's lease ran out.
        let deadline = stopped + Duration::from_secs(15);
        loop {
            let view = ownership(client, b.base()).await;
            if matches!(&view, Ok(o) if o.owned.len() == usize::from(PARTITIONS)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "b did not take a's partitions within 15 s of SIGSTOP (lease 2 s): {view:?}\n\
                 b's log tail:\n{}",
                b.process.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let t = database_now(db).await;
        eprintln!("b owns everything {:?} after SIGSTOP", stopped.elapsed());
        let rows = partition_rows(db).await;
        let acquired = acquired_at(db).await;
        // Per partition: the epoch b got, and from when on nothing older may commit (b's
        // acquired_at, or T if that is earlier or missing).
        let mut fences = BTreeMap::new();
        for p in &a_owned {
            let (owner, epoch) = rows.get(p).cloned().unwrap_or_default();
            assert_eq!(
                owner.as_deref(),
                Some("b"),
                "partition {p} after the takeover: {rows:?}"
            );
            let since = acquired.get(p).map_or(t, |at| (*at).min(t));
            fences.insert(*p, (epoch, since));
        }
        takeover = Some((t, fences));

        tokio::time::sleep(Duration::from_secs(2)).await;
        a.process.signal("CONT");
        load.rotation.add(a.base());
        check_ownership(client, db, &[a, b], "SIGCONT of a").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        load.stop.store(true, Ordering::SeqCst);
    };
    tokio::join!(
        load.clients(client, "paused", 8, usize::MAX, None),
        scenario
    );
    let (t, fences) = takeover.expect("the takeover happened");
    eprintln!(
        "answers per replica: {:?}; retried: {}",
        load.served(),
        load.observed.summary()
    );

    let results = load.results.lock().expect("results").clone();
    let ids = one_order_per_key(&results);
    let id_list: Vec<String> = ids.iter().cloned().collect();
    wait_all_terminal(client, &load.rotation, &id_list).await;

    // Nothing committed under a stale epoch after the takeover in a's former partitions.
    let rows = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT id, order_id, to_status, epoch, at::text AS at, {} AS at_us \
                 FROM order_transitions ORDER BY id",
                micros_of("at")
            ),
        ))
        .await
        .expect("reading the transitions");
    let mut stale = Vec::new();
    for row in &rows {
        let order: Uuid = row.try_get("", "order_id").expect("order_id");
        let partition = partition_of(order, PARTITIONS);
        let Some((fence, since)) = fences.get(&partition) else {
            continue;
        };
        let at_us: i64 = row.try_get("", "at_us").expect("at_us");
        let epoch: Option<i64> = row.try_get("", "epoch").expect("epoch");
        if at_us > *since && epoch.is_none_or(|e| e < *fence) {
            let id: i64 = row.try_get("", "id").expect("id");
            let to: String = row.try_get("", "to_status").expect("to_status");
            let at: String = row.try_get("", "at").expect("at");
            stale.push(format!(
                "transition {id} of {order} (partition {partition}, to {to}, at {at}) under \
                 epoch {epoch:?}; b took the partition over at epoch {fence}, at {since} µs"
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "committed under a stale epoch after the takeover (b owned everything at {t} µs):\n{}",
        stale.join("\n")
    );
    check_outcome(stores, &ids, &initial).await;
    let lost = a
        .process
        .metric(
            client,
            "partition_ownership_changes_total",
            &[("change", "lost")],
        )
        .await;
    assert!(
        lost >= 1.0,
        "a's partition_ownership_changes_total{{change=\"lost\"}} is {lost}"
    );
    eprintln!(
        "a: writes_fenced_total {}",
        a.process.metric(client, "writes_fenced_total", &[]).await
    );
    pair.stores.close().await;
}

#[tokio::test]
async fn a_replica_forwards_reads_payments_and_overrides_to_the_owner() {
    let pair = Pair::start(
        Duration::from_secs(15),
        &[
            ("PAYMENT_MODE", "manual"),
            ("DEV_ENDPOINTS", "true"),
            ("PAYMENT_DECLINE_RATE", "0"),
        ],
    )
    .await;
    let (client, a, b, owners) = (&pair.client, &pair.a, &pair.b, &pair.owners);
    let b_owned = owners.get("b").cloned().unwrap_or_default();
    put_stock(client, a.base(), &[("R-1", 1_000)]).await;

    // Orders created on b (a replica gives the orders it creates ids in its own partitions)
    // until two of them live in b's partitions.
    let mut theirs = Vec::new();
    for i in 0..64 {
        let (status, order) = crate::process::post(
            client,
            b.base(),
            &format!("forward-{i}"),
            &order_body(&[("R-1", 1)]),
        )
        .await
        .expect("POST on b");
        assert_eq!(status, StatusCode::CREATED, "{order}");
        let id: Uuid = order["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("order id");
        if b_owned.contains(&partition_of(id, PARTITIONS)) {
            theirs.push(id);
            if theirs.len() == 2 {
                break;
            }
        }
    }
    let [paid, cancelled] = theirs[..] else {
        panic!("64 orders and not two in b's partitions {b_owned:?}: {theirs:?}");
    };
    let forwarded_before = a
        .process
        .metric(client, "requests_forwarded_total", &[])
        .await;

    let get_on_a = |id: Uuid, wait_ms: u64| {
        let client = &client;
        let base = a.base().to_owned();
        async move {
            let r = client
                .get(format!("{base}/api/orders/{id}?wait_ms={wait_ms}"))
                .send()
                .await
                .expect("GET on a");
            let status = r.status();
            let body: Value = r.json().await.expect("order JSON");
            assert_eq!(status, StatusCode::OK, "GET {id}?wait_ms on a: {body}");
            body
        }
    };
    // Both wait for their manual payment once the stock is reserved.
    for id in [paid, cancelled] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let order = get_on_a(id, 200).await;
            assert_eq!(order["id"], id.to_string(), "{order}");
            if order["status"] == "STOCK_RESERVED" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} not STOCK_RESERVED in 15 s: {order}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let r = client
        .post(format!("{}/api/orders/{paid}/pay", a.base()))
        .json(&json!({"outcome": "approve"}))
        .send()
        .await
        .expect("pay on a");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::ACCEPTED, "pay {paid} on a: {text}");
    let order = get_on_a(paid, 15_000).await;
    assert_eq!(order["status"], "CONFIRMED", "{order}");

    let r = client
        .patch(format!("{}/api/orders/{cancelled}/status", a.base()))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"status": "REVERSED", "reason": "forwarding test"}))
        .send()
        .await
        .expect("PATCH on a");
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "PATCH {cancelled} on a: {text}");
    let order = get_on_a(cancelled, 15_000).await;
    assert_eq!(order["status"], "REVERSED", "{order}");

    let forwarded_after = a
        .process
        .metric(client, "requests_forwarded_total", &[])
        .await;
    assert!(
        forwarded_after > forwarded_before,
        "a's requests_forwarded_total went from {forwarded_before} to {forwarded_after}"
    );
    // Still b's: the requests above were forwarded, not served by a taking the orders over.
    let b_now = ownership(client, b.base()).await.expect("b's ownership");
    for id in [paid, cancelled] {
        assert!(
            b_now.owned.contains(&partition_of(id, PARTITIONS)),
            "{id} moved away from b during the test: {b_now:?}"
        );
    }
    pair.stores.close().await;
}

/// Three replicas started at the same moment on a fresh database all come up (they take
/// turns to create the schemas, migrate and seed) and share the partitions.
#[tokio::test]
async fn replicas_started_together_on_a_fresh_database_all_come_up() {
    let (database_url, amqp_url, _backing) = provision(false).await;
    let amqp_url = amqp_url.expect("RabbitMQ");
    let client = reqwest::Client::new();
    let mut replicas: Vec<Replica> = ["t1", "t2", "t3"]
        .into_iter()
        .map(|id| Replica::spawn(&database_url, &amqp_url, id, &[]))
        .collect();
    for replica in &mut replicas {
        replica.process.wait_ready(&client).await;
    }
    let stores = connect_orders_store(&database_url).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    check_ownership(&client, &stores.orders, &all, "three at once").await;
}
