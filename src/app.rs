//! Start-up and shutdown: builds every component from the [`Config`], binds the listener,
//! and runs the HTTP server with the background workers (outbox relays, consumers) until
//! a shutdown signal.

use crate::actors::Orders;
use crate::actors::order_actor::OrderContext;
use crate::actors::timers;
use crate::config::Config;
use crate::http::edge::EdgeSettings;
use crate::http::{self, AppState, HttpSettings};
use crate::messaging::relay::OutboxRelay;
use crate::messaging::{Bus, IncomingMessage, consumer, replies, topology};
use crate::participants::inventory::Inventory;
use crate::participants::payment::Payment;
use crate::participants::shipping::Shipping;
use crate::participants::{self, CommandHandler, inventory};
use crate::persistence::Stores;
use crate::persistence::group_commit::OrderWriter;
use crate::persistence::idempotency;
use crate::persistence::idempotency::Claims;
use crate::persistence::outbox::{Lane, OutboxFeed};
use anyhow::Context;
use sea_orm::DatabaseConnection;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Deliveries handled at once per queue (also the AMQP prefetch).
const CONSUMER_CONCURRENCY: u16 = 64;

/// Group-commit writer tasks of the orders store (see `persistence::group_commit`). One:
/// while its batch commits, the next one gathers every write that arrives meanwhile. Two
/// made batches half as big for more commits in all (closed loop c=64, interleaved runs:
/// 596 and 629 sagas/s with two, 666 and 709/s with one, at 15% less CPU per saga).
const ORDER_WRITERS: usize = 1;

/// Participant queues: every delivery already waiting (up to 128) is applied in one
/// transaction, so one commit and one hold of a hot stock row serve many orders. One batch
/// at a time: while it commits, the next one gathers everything that arrives meanwhile.
/// Two at a time made batches half as big and had them queue for the same stock row
/// (measured at closed-loop c=64: 323 sagas/s with two, 404/s with one).
const PARTICIPANT_BATCHING: consumer::Batching = consumer::Batching {
    prefetch: 256,
    max_batch: 128,
    in_flight: 1,
};

pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Cancelled on shutdown; every background worker watches it.
    shutdown: CancellationToken,
    workers: JoinSet<()>,
    /// Upper bound for draining on shutdown.
    shutdown_timeout: Duration,
    edge: EdgeSettings,
}

impl Application {
    /// Connects, migrates (if configured), seeds, and starts the workers. The HTTP server
    /// starts with [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let (stores, bus, inventory) = connect(&config).await?;
        // SQLite has one writer connection: a create lane would only queue for it.
        let create_lane = !crate::persistence::is_sqlite(&config.database_url);
        let writer_db = crate::persistence::connect_orders_writer(
            &config.database_url,
            &stores,
            u32::try_from(ORDER_WRITERS + usize::from(create_lane)).unwrap_or(1),
        )
        .await
        .context("connecting the orders writer")?;
        // Lifecycle events get their own relay: commands never wait for their confirms.
        let (orders_feed, events_feed) = OutboxFeed::with_events_lane();
        let orders = Orders::start(OrderContext {
            db: stores.orders.clone(),
            writer: OrderWriter::start(writer_db, orders_feed.clone(), ORDER_WRITERS, create_lane),
            step_timeout: config.step_timeout(),
            max_retries: config.step_max_retries,
            idle_timeout: Duration::from_secs(config.actor_idle_secs),
            panic_fault: config.actor_panic_fault()?,
            panicked: Default::default(),
            stats: Default::default(),
            watchers: Default::default(),
        })
        .await?;

        let shutdown = CancellationToken::new();
        let mut workers = JoinSet::new();
        for (name, feed, lane) in [
            ("orders", orders_feed, Lane::Saga),
            ("orders-events", events_feed, Lane::Events),
        ] {
            let relay = OutboxRelay::new(name, stores.orders.clone(), bus.clone(), feed);
            let relay = relay.lane(lane).busy_linger(config.relay_linger());
            workers.spawn(relay.run(shutdown.clone()));
        }
        {
            let orders = orders.clone();
            workers.spawn(consumer::run(
                bus.clone(),
                topology::ORCHESTRATOR_QUEUE,
                CONSUMER_CONCURRENCY,
                shutdown.clone(),
                move |m| replies::on_reply(orders.clone(), m),
            ));
        }
        if config.embedded_participants {
            spawn_participants(
                &mut workers,
                &stores,
                &bus,
                ParticipantSettings::from(&config),
                &shutdown,
            );
        }

        workers.spawn(timers::run(
            orders.clone(),
            stores.orders.clone(),
            shutdown.clone(),
        ));
        {
            // In the background: the API is available while old orders catch up.
            let (orders, db) = (orders.clone(), stores.orders.clone());
            workers.spawn(async move {
                if let Err(error) = timers::recover(&orders, &db).await {
                    tracing::error!(%error, "start-up recovery failed; the timer scanner will catch up");
                }
            });
        }
        workers.spawn(monitor(stores.clone(), bus.clone(), shutdown.clone()));
        workers.spawn(sweep_idempotency_keys(
            stores.orders.clone(),
            config.idempotency_retention(),
            shutdown.clone(),
        ));

        let listener = http::edge::bind(config.listen_addr)
            .with_context(|| format!("binding {}", config.listen_addr))?;
        let claims = Claims::start(
            stores.orders.clone(),
            chrono::Duration::from_std(config.idempotency_retention())
                .unwrap_or(chrono::Duration::hours(24)),
            chrono::Duration::seconds(
                i64::try_from(config.idempotency_claim_timeout_secs).unwrap_or(60),
            ),
        );
        let state = AppState {
            metrics: crate::metrics::install(),
            claims,
            orders,
            stores,
            inventory,
            bus,
            settings: Arc::new(HttpSettings {
                admin_token: config.admin_token.clone(),
                dev_endpoints: config.dev_endpoints,
                payment_mode: config.payment_mode,
                body_limit_bytes: config.body_limit_bytes,
                max_orders_in_flight: config.max_orders_in_flight,
            }),
        };
        Ok(Application {
            listener,
            state,
            shutdown,
            workers,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            edge: EdgeSettings::from(&config),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves until `signal` resolves, then drains in-flight requests, stops the workers
    /// and the actors, and closes the connections.
    pub async fn run_until_stopped(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            shutdown,
            mut workers,
            shutdown_timeout,
            edge,
        } = self;
        let router = http::router(state.clone());
        tracing::info!(addr = %listener.local_addr()?, bus = state.bus.kind(), "order service listening");
        let stop = shutdown.clone();
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let server = http::edge::serve(listener, router, edge, async move {
            tokio::select! {
                _ = signal => {}
                _ = stop.cancelled() => {}
            }
            tracing::info!("shutdown requested: no new connections; draining");
            let _ = signalled_tx.send(());
        });
        // The server drains in-flight requests; the deadline starts once shutdown is asked.
        let mut server = std::pin::pin!(server);
        let mut signalled = std::pin::pin!(signalled_rx);
        let served = tokio::select! {
            result = &mut server => Some(result),
            _ = &mut signalled => None,
        };
        let drained = async {
            if served.is_none() {
                let _ = (&mut server).await;
            }
            // Workers finish what they hold: consumers their in-flight deliveries, relays a
            // last outbox flush.
            shutdown.cancel();
            while workers.join_next().await.is_some() {}
        };
        if tokio::time::timeout(shutdown_timeout, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                ?shutdown_timeout,
                "shutdown deadline reached; exiting with work left (it resumes on restart)"
            );
        }
        if let Some(Err(e)) = served {
            return Err(anyhow::Error::new(e).context("HTTP server"));
        }
        state.orders.stop();
        state.bus.close().await;
        state.stores.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Samples what no request path sees: database and broker reachability (counting the
/// database coming back as a reconnect), the broker's reconnects, each outbox's backlog.
async fn monitor(stores: Stores, bus: Bus, shutdown: CancellationToken) {
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

/// Connects the stores (migrating them if configured) and the bus (or starts it connecting
/// in the background, see [`Bus::start`]), and seeds the demo catalogue into an empty
/// inventory. The inventory handle is the API's, for reading stock.
async fn connect(config: &Config) -> anyhow::Result<(Stores, Bus, Inventory)> {
    let stores = Stores::connect(&config.database_url, config.db_max_connections)
        .await
        .context("connecting to the database")?;
    if config.migrate_on_start {
        stores.migrate().await.context("applying migrations")?;
    }
    // An unreachable broker is waited for in the background (orchestrated start-ups bring
    // it up in any order); a malformed URL or refused credentials fail here.
    let bus = Bus::start(config.amqp_url.as_deref())
        .await
        .context("connecting to the message broker")?;
    let inventory = Inventory::new(stores.inventory.clone(), OutboxFeed::default());
    if config.seed_demo_catalogue && inventory.seed_demo_catalogue().await? {
        tracing::info!("seeded the demo catalogue");
    }
    Ok((stores, bus, inventory))
}

impl From<&Config> for ParticipantSettings {
    fn from(config: &Config) -> Self {
        ParticipantSettings {
            payment_decline_rate: config.payment_decline_rate,
            shipping_failure_rate: config.shipping_failure_rate,
            drop_commands: config.fault_drop_commands.clone(),
            relay_linger: config.relay_linger(),
        }
    }
}

/// The participants as their own service: consumers and outbox relays, plus the health
/// endpoints, until `signal`.
pub async fn run_participants(
    config: Config,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stores, bus, _inventory) = connect(&config).await?;
    let shutdown = CancellationToken::new();
    let mut workers = JoinSet::new();
    spawn_participants(
        &mut workers,
        &stores,
        &bus,
        ParticipantSettings::from(&config),
        &shutdown,
    );
    let health = {
        let (stores, bus) = (stores.clone(), bus.clone());
        axum::Router::new()
            .route(
                "/health/live",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route(
                "/health/ready",
                axum::routing::get(move || {
                    let (stores, bus) = (stores.clone(), bus.clone());
                    async move {
                        let broker = crate::http::health::broker_check(&bus);
                        let database = match stores.ping().await {
                            Ok(()) => "ok".to_owned(),
                            Err(e) => format!("unavailable: {e}"),
                        };
                        let ready = broker == "ok" && database == "ok";
                        let status = if ready {
                            axum::http::StatusCode::OK
                        } else {
                            axum::http::StatusCode::SERVICE_UNAVAILABLE
                        };
                        let body = serde_json::json!({
                            "status": if ready { "ready" } else { "unavailable" },
                            "checks": { "database": database, "broker": broker },
                        });
                        (status, axum::Json(body))
                    }
                }),
            )
    };
    let listener = http::edge::bind(config.listen_addr)
        .with_context(|| format!("binding {}", config.listen_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "participants running");
    http::edge::serve(listener, health, EdgeSettings::from(&config), signal)
        .await
        .context("health server")?;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(config.shutdown_timeout_secs), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    bus.close().await;
    stores.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Deletes idempotency keys past their retention, every half retention (at most hourly).
async fn sweep_idempotency_keys(
    db: DatabaseConnection,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let every = (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::hours(24));
    loop {
        if !crate::pause::sleep_or_shutdown(&shutdown, every).await {
            return;
        }
        match idempotency::sweep_expired(&db, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired idempotency keys swept"),
            Err(error) => tracing::warn!(%error, "idempotency key sweep failed"),
        }
    }
}

/// The mock gateways' behaviour.
#[derive(Debug, Clone, Default)]
pub struct ParticipantSettings {
    pub payment_decline_rate: f64,
    pub shipping_failure_rate: f64,
    /// Fault injection: command types acked and ignored (a participant that never answers).
    pub drop_commands: Vec<String>,
    /// `RELAY_LINGER_MS` of the participants' outbox relays.
    pub relay_linger: Duration,
}

/// Starts Inventory, Payment and Shipping (consumers and outbox relays) as tasks of
/// `workers`. They share nothing with the orchestrator but the bus.
pub fn spawn_participants(
    workers: &mut JoinSet<()>,
    stores: &Stores,
    bus: &Bus,
    settings: ParticipantSettings,
    shutdown: &CancellationToken,
) {
    let feeds: [OutboxFeed; 3] = Default::default();
    let [inventory_feed, payment_feed, shipping_feed] = feeds;
    for (name, db, feed) in [
        ("inventory", &stores.inventory, &inventory_feed),
        ("payment", &stores.payment, &payment_feed),
        ("shipping", &stores.shipping, &shipping_feed),
    ] {
        workers.spawn(
            OutboxRelay::new(name, db.clone(), bus.clone(), feed.clone())
                .busy_linger(settings.relay_linger)
                .run(shutdown.clone()),
        );
    }
    let drop_commands: Arc<[String]> = settings.drop_commands.clone().into();
    let inventory = Inventory::new(stores.inventory.clone(), inventory_feed);
    let payment = Payment::new(
        stores.payment.clone(),
        payment_feed,
        settings.payment_decline_rate,
    );
    let shipping = Shipping::new(
        stores.shipping.clone(),
        shipping_feed,
        settings.shipping_failure_rate,
    );
    let queue = |name| (bus.clone(), name, shutdown.clone(), drop_commands.clone());
    workers.spawn(consume_commands(
        queue(topology::INVENTORY_QUEUE),
        inventory.clone(),
    ));
    workers.spawn(consume_commands(queue(topology::PAYMENT_QUEUE), payment));
    workers.spawn(consume_commands(queue(topology::SHIPPING_QUEUE), shipping));
    workers.spawn(consume_commands(
        queue(topology::INVENTORY_EVENTS_QUEUE),
        inventory::OrderEvents(inventory),
    ));
}

/// Runs one participant queue in batches; commands listed in `FAULT_DROP_COMMANDS` are
/// acked without effect.
async fn consume_commands<P: CommandHandler>(
    (bus, queue, shutdown, dropped): (Bus, &'static str, CancellationToken, Arc<[String]>),
    participant: P,
) {
    consumer::run_batched(bus, queue, PARTICIPANT_BATCHING, shutdown, move |batch| {
        let (participant, dropped) = (participant.clone(), dropped.clone());
        async move {
            if dropped.is_empty() {
                return participants::handle_batch(&participant, &batch).await;
            }
            let (kept, positions): (Vec<_>, Vec<_>) = batch
                .iter()
                .enumerate()
                .filter(|(_, m)| dropping(&dropped, m).is_none())
                .map(|(i, m)| (m.clone(), i))
                .unzip();
            let mut handled = participants::handle_batch(&participant, &kept)
                .await
                .into_iter();
            drop(kept);
            let mut out: Vec<_> = (0..batch.len())
                .map(|_| consumer::Disposition::Ack)
                .collect();
            for position in positions {
                if let Some(d) = handled.next() {
                    out[position] = d;
                }
            }
            out
        }
    })
    .await
}

/// Fault injection: a command type configured to be dropped is acked without effect.
fn dropping(drop_commands: &[String], message: &IncomingMessage) -> Option<consumer::Disposition> {
    drop_commands.contains(&message.routing_key).then(|| {
        tracing::warn!(routing_key = %message.routing_key, "fault injection: dropping command (FAULT_DROP_COMMANDS)");
        consumer::Disposition::Ack
    })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
