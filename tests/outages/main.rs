//! Broker outages: the service survives a RabbitMQ restart by itself.
//!
//! These tests stop and start the REAL local broker (`rabbitmqctl stop_app` / `start_app`),
//! so they live in their own test binary (cargo runs test binaries one after another) and
//! are serialized inside it by [`BROKER`]. An [`Outage`] guard restarts the broker even when
//! a test fails. Each test still uses its own vhost (and database), which survive the
//! restart.

#[path = "../api/broker.rs"]
mod broker;
#[path = "../api/helpers.rs"]
mod helpers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use order_service::messaging::topology::{COMMANDS_EXCHANGE, INVENTORY_QUEUE};
use order_service::messaging::{Bus, IncomingMessage, OutgoingMessage, Subscription};
use reqwest::StatusCode;
use sea_orm::EntityTrait;
use serde_json::Value;
use tokio::time::{Instant, sleep, timeout};
use uuid::Uuid;

use crate::broker::TestVhost;
use crate::helpers::{order_body, spawn_app};

/// Only one test at a time may stop the broker.
static BROKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the broker stays down.
const OUTAGE: Duration = Duration::from_secs(10);

/// Upper bound for things that should happen promptly (a lost connection noticed, a
/// reconnection after the broker is back, a message delivered).
const DEADLINE: Duration = Duration::from_secs(30);

/// While the broker is down, a publish or subscribe must fail within this (the bus waits
/// about a second for a reconnection, then gives up).
const FAIL_FAST: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// Stopping and starting the broker.
// ---------------------------------------------------------------------------------------

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let output = Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {} failed ({}): {} {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        ))
    }
}

/// Starts the RabbitMQ application (a no-op when it runs) and waits until it serves.
fn start_broker() -> Result<(), String> {
    rabbitmqctl(&["start_app"])?;
    rabbitmqctl(&["await_startup", "--timeout", "60"])
}

async fn blocking(f: fn() -> Result<(), String>) -> Result<(), String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("rabbitmqctl task failed: {e}"))?
}

/// The broker is stopped while this lives; dropping it (e.g. on a failed assertion) starts
/// the broker again.
struct Outage {
    stopped_at: Instant,
    running: bool,
}

impl Outage {
    async fn begin() -> Outage {
        // From here on the guard restarts the broker, even if stopping half failed.
        let mut outage = Outage {
            stopped_at: Instant::now(),
            running: false,
        };
        blocking(|| rabbitmqctl(&["stop_app"]))
            .await
            .unwrap_or_else(|e| panic!("stopping the broker: {e}"));
        outage.stopped_at = Instant::now();
        eprintln!("[outage] broker stopped");
        outage
    }

    /// Keeps the broker down until `duration` after it stopped, then starts it.
    async fn end_after(mut self, duration: Duration) {
        tokio::time::sleep_until(self.stopped_at + duration).await;
        blocking(start_broker)
            .await
            .unwrap_or_else(|e| panic!("starting the broker: {e}"));
        self.running = true;
        eprintln!(
            "[outage] broker started again after {:?}",
            self.stopped_at.elapsed()
        );
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.running
            && let Err(error) = start_broker()
        {
            eprintln!("warning: could not restart the broker after a failed test: {error}");
        }
    }
}

/// Polls `condition` every 50 ms until it holds; panics after `deadline`.
async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting until {what}"
        );
        sleep(Duration::from_millis(50)).await;
    }
    eprintln!("[outage] {what} after {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------
// Bus level.
// ---------------------------------------------------------------------------------------

fn command() -> OutgoingMessage {
    let message_id = Uuid::new_v4();
    OutgoingMessage {
        exchange: COMMANDS_EXCHANGE.to_owned(),
        routing_key: "stock.reserve".to_owned(),
        message_id,
        kind: "stock.reserve".to_owned(),
        payload: serde_json::to_vec(&serde_json::json!({ "id": message_id }))
            .expect("serializing a literal"),
        headers: BTreeMap::new(),
    }
}

async fn recv(sub: &mut Subscription) -> IncomingMessage {
    timeout(DEADLINE, sub.next())
        .await
        .unwrap_or_else(|_| panic!("no message on {} within {DEADLINE:?}", sub.queue()))
        .unwrap_or_else(|| panic!("subscription to {} ended", sub.queue()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bus_reconnects_after_a_broker_restart() {
    let _serial = BROKER.lock().await;
    blocking(start_broker)
        .await
        .expect("the broker runs before the test");
    let vhost = TestVhost::create();
    let bus = Bus::connect(Some(&vhost.amqp_url))
        .await
        .expect("bus connects");
    assert!(bus.is_connected());
    assert_eq!(bus.reconnects(), 0);

    let mut subscription = bus
        .subscribe(INVENTORY_QUEUE, "outage-before", 10)
        .await
        .expect("subscribe");
    let unacked = command();
    bus.publish(&unacked)
        .await
        .expect("publish before the outage");
    let delivery = recv(&mut subscription).await;
    assert_eq!(delivery.message_id, Some(unacked.message_id.to_string()));
    // Left unacknowledged on purpose: the broker must deliver it again after the restart.

    let outage = Outage::begin().await;

    let ended = timeout(DEADLINE, subscription.next())
        .await
        .expect("the subscription ends when the connection is lost");
    assert!(ended.is_none(), "no delivery expected during the outage");
    wait_until("the bus reports disconnected", DEADLINE, || {
        !bus.is_connected()
    })
    .await;

    let started = Instant::now();
    let published = timeout(FAIL_FAST, bus.publish(&command()))
        .await
        .expect("publish while disconnected does not hang");
    let error = published.expect_err("publish while disconnected fails");
    eprintln!(
        "[outage] publish failed after {:?}: {error}",
        started.elapsed()
    );
    let batch = timeout(FAIL_FAST, bus.publish_batch(&[command(), command()]))
        .await
        .expect("publish_batch while disconnected does not hang");
    assert!(batch.is_err(), "publish_batch while disconnected fails");
    let subscribed = timeout(
        FAIL_FAST,
        bus.subscribe(INVENTORY_QUEUE, "outage-during", 10),
    )
    .await
    .expect("subscribe while disconnected does not hang");
    assert!(subscribed.is_err(), "subscribe while disconnected fails");
    // Settling a delivery of the dead channel is an error (not a panic, not a hang).
    let settled = timeout(FAIL_FAST, delivery.ack())
        .await
        .expect("acking a stale delivery does not hang");
    let error = settled.expect_err("acking a delivery of a dead channel fails");
    eprintln!("[outage] stale ack: {error}");
    assert!(!bus.is_connected());
    assert_eq!(bus.reconnects(), 0);

    outage.end_after(OUTAGE).await;

    wait_until("the bus reports connected again", DEADLINE, || {
        bus.is_connected()
    })
    .await;
    assert!(bus.reconnects() >= 1, "reconnects: {}", bus.reconnects());

    let mut subscription = bus
        .subscribe(INVENTORY_QUEUE, "outage-after", 10)
        .await
        .expect("subscribe on the reconnected bus");
    let after = command();
    timeout(DEADLINE, bus.publish(&after))
        .await
        .expect("publish after the outage does not hang")
        .expect("publish after the outage succeeds");
    let mut seen = HashSet::new();
    while !seen.contains(&after.message_id.to_string()) {
        let delivery = recv(&mut subscription).await;
        seen.extend(delivery.message_id.clone());
        delivery.ack().await.expect("ack on the new connection");
    }
    assert!(
        seen.contains(&unacked.message_id.to_string()),
        "the delivery left unacknowledged before the outage is delivered again: {seen:?}"
    );
    bus.close().await;
    assert!(!bus.is_connected());
}

// ---------------------------------------------------------------------------------------
// Service level.
// ---------------------------------------------------------------------------------------

const ORDERS: usize = 100;
/// Pace of order creation: 100 orders over ~25 s, so that many fall into the outage.
const ORDER_EVERY: Duration = Duration::from_millis(250);
/// When the broker stops, counted from the first order.
const OUTAGE_AFTER: Duration = Duration::from_secs(5);
const SKUS: [(&str, i64, i64); 2] = [("OUTAGE-A", 1_000, 1_500), ("OUTAGE-B", 1_000, 700)];

/// What one POST /api/orders answered.
#[derive(Debug)]
enum Created {
    Order {
        id: String,
        items: Vec<(String, i64)>,
    },
    Unavailable,
}

async fn create_one(client: &reqwest::Client, url: &str, n: usize) -> Created {
    let items = vec![
        (SKUS[0].0.to_owned(), 1 + (n % 3) as i64),
        (SKUS[1].0.to_owned(), 1 + (n % 2) as i64),
    ];
    let body = order_body(&[(&items[0].0, items[0].1), (&items[1].0, items[1].1)]);
    let response = client
        .post(url)
        .header("Idempotency-Key", Uuid::new_v4().to_string())
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /api/orders #{n} did not answer in time: {e}"));
    let status = response.status();
    let retry_after = response
        .headers()
        .contains_key(reqwest::header::RETRY_AFTER);
    let text = response.text().await.unwrap_or_default();
    match status {
        StatusCode::CREATED => {
            let order: Value = serde_json::from_str(&text).expect("JSON order");
            Created::Order {
                id: order["id"].as_str().expect("order id").to_owned(),
                items,
            }
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            assert!(retry_after, "503 without Retry-After: {text}");
            Created::Unavailable
        }
        other => panic!("POST /api/orders #{n} answered {other}: {text}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_created_during_a_broker_outage_all_complete() {
    let _serial = BROKER.lock().await;
    blocking(start_broker)
        .await
        .expect("the broker runs before the test");
    let app = spawn_app().await;
    for (sku, available, price) in SKUS {
        app.put_stock(sku, available, price).await;
    }
    let ready_url = app.url("/health/ready");
    let probe = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let ready = probe.get(&ready_url).send().await.expect("GET ready");
    assert_eq!(ready.status(), StatusCode::OK, "ready before the outage");

    // Readiness, sampled all along: (broker down?, status).
    let broker_down = Arc::new(AtomicBool::new(false));
    let sampling = Arc::new(AtomicBool::new(true));
    let readiness = {
        let (probe, url, down, sampling) = (
            probe.clone(),
            ready_url.clone(),
            broker_down.clone(),
            sampling.clone(),
        );
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while sampling.load(Ordering::Acquire) {
                let status = probe.get(&url).send().await.map(|r| r.status());
                samples.push((down.load(Ordering::Acquire), status.ok()));
                sleep(Duration::from_millis(200)).await;
            }
            samples
        })
    };

    // The load: ORDERS creations at a steady pace, each in its own task.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("http client");
    let orders_url = app.url("/api/orders");
    let load_started = Instant::now();
    let load = {
        let (client, url) = (client.clone(), orders_url.clone());
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(ORDERS);
            let mut pace = tokio::time::interval(ORDER_EVERY);
            for n in 0..ORDERS {
                pace.tick().await;
                let (client, url) = (client.clone(), url.clone());
                tasks.push(tokio::spawn(
                    async move { create_one(&client, &url, n).await },
                ));
            }
            let mut results = Vec::with_capacity(ORDERS);
            for task in tasks {
                results.push(task.await.expect("order creation task"));
            }
            results
        })
    };

    tokio::time::sleep_until(load_started + OUTAGE_AFTER).await;
    let outage = Outage::begin().await;
    broker_down.store(true, Ordering::Release);
    outage.end_after(OUTAGE).await;
    broker_down.store(false, Ordering::Release);
    let restarted_at = Instant::now();

    let results = load.await.expect("load task");
    eprintln!(
        "[outage] {} creations answered within {:?}",
        results.len(),
        load_started.elapsed()
    );
    let mut orders: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    let mut unavailable = 0;
    for result in results {
        match result {
            Created::Order { id, items } => {
                orders.insert(id, items);
            }
            Created::Unavailable => unavailable += 1,
        }
    }
    eprintln!(
        "[outage] {} orders created, {unavailable} answered 503",
        orders.len()
    );
    assert!(
        orders.len() >= ORDERS / 2,
        "most creations succeed (the outbox decouples them from the broker): {} of {ORDERS}",
        orders.len()
    );

    // Every created order reaches a terminal state without any operator action.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: HashSet<String> = orders.keys().cloned().collect();
    let mut statuses: HashMap<String, String> = HashMap::new();
    while !pending.is_empty() {
        for id in pending.clone() {
            let order = app.get_order(&id).await;
            let status = order["status"].as_str().unwrap_or_default().to_owned();
            if matches!(status.as_str(), "CONFIRMED" | "REVERSED" | "REJECTED") {
                pending.remove(&id);
                statuses.insert(id, status);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} orders not terminal 60 s after the load, e.g. {:?}",
            pending.len(),
            pending.iter().take(3).collect::<Vec<_>>()
        );
        if !pending.is_empty() {
            sleep(Duration::from_millis(250)).await;
        }
    }
    eprintln!(
        "[outage] every order terminal {:?} after the broker restarted",
        restarted_at.elapsed()
    );

    // Ready again once reconnected.
    wait_ready(&probe, &ready_url).await;
    sampling.store(false, Ordering::Release);
    let samples = readiness.await.expect("readiness sampler");
    let during: Vec<_> = samples.iter().filter(|(down, _)| *down).collect();
    assert!(
        during
            .iter()
            .any(|(_, status)| *status == Some(StatusCode::SERVICE_UNAVAILABLE)),
        "/health/ready answered 503 during the outage: {during:?}"
    );
    assert!(
        samples.iter().all(|(_, status)| status.is_some()),
        "/health/ready always answered: {samples:?}"
    );

    app.wait_until_quiet().await;
    let initial: Vec<(&str, i64)> = SKUS.iter().map(|(s, q, _)| (*s, *q)).collect();
    let report = app.invariants(&initial).await;
    assert!(
        report.holds(),
        "invariants after the outage: {:#?}",
        report.violations
    );
    eprintln!("[outage] orders by status: {:?}", report.orders_by_status);

    // With nothing declining and ample stock, every order is confirmed.
    let confirmed: Vec<&String> = statuses
        .iter()
        .filter(|(_, s)| s.as_str() == "CONFIRMED")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        confirmed.len(),
        orders.len(),
        "every order confirmed: {:?}",
        report.orders_by_status
    );

    // No order was charged twice: one payment row per order (its primary key), each
    // CHARGED exactly once, and the stock sold is exactly the confirmed quantities.
    let payments = entity::payments::Entity::find()
        .all(&app.stores.payment)
        .await
        .expect("payments");
    assert_eq!(payments.len(), confirmed.len(), "one payment per order");
    for payment in &payments {
        let id = payment.order_id.to_string();
        assert_eq!(payment.status, "CHARGED", "payment of {id}");
        assert!(
            orders.contains_key(&id),
            "payment for an unknown order {id}"
        );
    }
    let mut sold: BTreeMap<String, i64> = BTreeMap::new();
    for id in &confirmed {
        for (sku, quantity) in &orders[*id] {
            *sold.entry(sku.clone()).or_default() += quantity;
        }
    }
    for (sku, available, _) in SKUS {
        let stock = app.stock(sku).await;
        let expected = sold.get(sku).copied().unwrap_or(0);
        assert_eq!(stock["sold"].as_i64(), Some(expected), "{sku}: {stock}");
        assert_eq!(stock["reserved"].as_i64(), Some(0), "{sku}: {stock}");
        assert_eq!(
            stock["available"].as_i64(),
            Some(available - expected),
            "{sku}: {stock}"
        );
    }
}

async fn wait_ready(probe: &reqwest::Client, url: &str) {
    let started = Instant::now();
    loop {
        if let Ok(response) = probe.get(url).send().await
            && response.status() == StatusCode::OK
        {
            eprintln!("[outage] ready again after {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "/health/ready is not 200 {DEADLINE:?} after the orders completed"
        );
        sleep(Duration::from_millis(100)).await;
    }
}
