//! Prometheus metrics through the `metrics` facade. One recorder per process (installed
//! once, shared by every app a test process builds); `GET /metrics` renders it.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` histograms, base
//! units) and every label has a small, fixed set of values — never an order id.

use crate::messaging::Bus;
use crate::persistence::Stores;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets (seconds): 0.5 ms … 60 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Installs the recorder on first call and returns the handle to render it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let recorder = match builder.set_buckets(BUCKETS) {
                Ok(b) => b.build_recorder(),
                // Only fails for an empty bucket list, which BUCKETS is not.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Histogram samples wait in buffers until the recorder's upkeep (or a scrape) folds them
/// into the buckets: without it, a service nobody scrapes grows by every sample it records
/// (measured: ~200 bytes per order). A plain thread, because the recorder outlives any one
/// Tokio runtime (tests build several).
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                handle.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread; histograms grow until scraped");
    }
}

fn describe() {
    describe_counter!(
        "http_requests_total",
        "HTTP requests by method, route and status."
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by method and route."
    );
    describe_gauge!(
        "http_connections_open",
        "HTTP connections accepted and not yet closed."
    );
    describe_gauge!(
        "http_connections_max",
        "HTTP connections served at once: HTTP_MAX_CONNECTIONS, or half the open-files \
         limit when that is lower. Further connections wait in the listen backlog."
    );
    describe_counter!(
        "http_connections_timed_out_total",
        "HTTP connections closed by an edge timeout, by phase (header = first request head, \
         idle = next request head on a kept-alive connection, body = request body, answered 408)."
    );
    describe_counter!(
        "http_accept_errors_total",
        "Failed accepts of HTTP connections (EMFILE, ENFILE, ENOBUFS back off up to 1 s)."
    );
    describe_counter!("orders_created_total", "Orders created.");
    describe_counter!(
        "orders_rejected_overload_total",
        "New orders refused with 503 because MAX_ORDERS_IN_FLIGHT orders were in progress."
    );
    describe_counter!(
        "order_transitions_total",
        "Applied saga events by status left, status entered and event."
    );
    describe_counter!(
        "order_events_refused_total",
        "Events the state machine refused (duplicates, late replies), by event."
    );
    describe_histogram!(
        "saga_duration_seconds",
        Unit::Seconds,
        "Order creation to terminal status, by outcome."
    );
    describe_histogram!(
        "saga_step_duration_seconds",
        Unit::Seconds,
        "Time an order spent waiting on a saga step (reservation, payment, shipment, compensation)."
    );
    describe_gauge!("order_actors_live", "Order actors alive (not passivated).");
    describe_counter!(
        "order_actor_restarts_total",
        "Order actors restarted by the supervisor after a panic."
    );
    describe_counter!("orders_parked_total", "Orders parked after a crash loop.");
    describe_counter!(
        "order_actor_failures_after_end_total",
        "Crash loops of order actors on orders already finished: not parked (expected 0)."
    );
    describe_counter!(
        "saga_step_retries_total",
        "Resends of pending commands after a step timeout."
    );
    describe_counter!(
        "saga_step_timeouts_total",
        "Forward steps given up after their retries (compensation started)."
    );
    describe_gauge!("outbox_backlog", "Unsent outbox messages, by store.");
    describe_counter!(
        "outbox_messages_published_total",
        "Outbox messages published and confirmed, by store."
    );
    describe_histogram!(
        "outbox_publish_duration_seconds",
        Unit::Seconds,
        "Publishing one outbox batch until the broker confirmed it, by store."
    );
    describe_histogram!(
        "order_create_phase_seconds",
        Unit::Seconds,
        "Phases of POST /api/orders: stock_check, claim (the separate idempotency claim, \
         only for a key in use or a refused order), create_and_commit (order actor \
         created, order and key committed)."
    );
    describe_histogram!(
        "order_writer_commit_seconds",
        Unit::Seconds,
        "One group commit of the orders store (all writes waiting at that moment)."
    );
    describe_counter!(
        "participant_statement_fallbacks_total",
        "Participant batches whose one-statement try failed and that were applied in a \
         transaction instead (expected 0)."
    );
    describe_counter!("broker_reconnects_total", "Reconnections to RabbitMQ.");
    describe_gauge!("broker_up", "1 when the broker connection is usable.");
    describe_counter!(
        "database_reconnects_total",
        "Times the database became reachable again after an outage."
    );
    describe_gauge!("database_up", "1 when every database store answers.");
    describe_counter!(
        "idempotency_replays_total",
        "Create requests answered by replaying a stored response."
    );
    describe_counter!(
        "idempotency_conflicts_total",
        "Idempotency-Key reuse refused, by kind (mismatch = 422, in_flight = 409)."
    );
    describe_counter!(
        "messages_dead_lettered_total",
        "Deliveries sent to the dead-letter queue, by queue."
    );
    describe_counter!(
        "dead_letters_settled_total",
        "Dead letters an operator replayed or discarded, by action."
    );
    describe_gauge!(
        "event_stream_subscribers",
        "Clients following GET /api/events now."
    );
    describe_counter!(
        "console_logins_total",
        "Console logins, by outcome (ok, refused)."
    );
    describe_counter!(
        "event_stream_cut_off_total",
        "Event stream subscribers disconnected for falling too far behind."
    );
}

/// Samples what no request path sees: database and broker reachability (counting the
/// database coming back as a reconnect), the broker's reconnects, each outbox's backlog.
pub async fn watch_dependencies(stores: Stores, bus: Bus, shutdown: CancellationToken) {
    let mut database_was_up = true;
    loop {
        let database_up = tokio::time::timeout(Duration::from_secs(2), stores.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if database_up && !database_was_up {
            metrics::counter!("database_reconnects_total").increment(1);
            tracing::info!("database reachable again");
        } else if !database_up && database_was_up {
            tracing::warn!("database unreachable");
        }
        database_was_up = database_up;
        metrics::gauge!("database_up").set(f64::from(u8::from(database_up)));
        metrics::gauge!("broker_up").set(f64::from(u8::from(bus.is_connected())));
        metrics::counter!("broker_reconnects_total").absolute(bus.reconnects());
        if !crate::pause::sleep_or_shutdown(&shutdown, Duration::from_secs(2)).await {
            return;
        }
    }
}
