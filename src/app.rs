//! Start-up and shutdown: builds every component from the [`Config`], binds the listener,
//! and runs the HTTP server with the background workers (outbox relays, consumers) until
//! a shutdown signal.

use crate::actors::Orders;
use crate::actors::order_actor::OrderContext;
use crate::config::Config;
use crate::http::{self, AppState, HttpSettings};
use crate::messaging::relay::OutboxRelay;
use crate::messaging::{Bus, consumer, replies, topology};
use crate::participants::inventory::Inventory;
use crate::participants::payment::Payment;
use crate::participants::shipping::Shipping;
use crate::persistence::Stores;
use anyhow::Context;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Deliveries handled at once per queue (also the AMQP prefetch).
const CONSUMER_CONCURRENCY: u16 = 64;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Cancelled on shutdown; every background worker watches it.
    shutdown: CancellationToken,
    workers: JoinSet<()>,
}

impl Application {
    /// Connects, migrates (if configured), seeds, and starts the workers. The HTTP server
    /// starts with [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let stores = Stores::connect(&config.database_url, config.db_max_connections)
            .await
            .context("connecting to the database")?;
        if config.migrate_on_start {
            stores.migrate().await.context("applying migrations")?;
        }
        let bus = Bus::connect(config.amqp_url.as_deref())
            .await
            .context("connecting to the message broker")?;
        let orders_wake = Arc::new(Notify::new());
        // The API reads stock through its own handle; the participant's consumer has another.
        let inventory = Inventory::new(stores.inventory.clone(), Arc::new(Notify::new()));
        if config.seed_demo_catalogue && inventory.seed_demo_catalogue().await? {
            tracing::info!("seeded the demo catalogue");
        }
        let orders = Orders::start(OrderContext {
            db: stores.orders.clone(),
            outbox_wake: orders_wake.clone(),
        })
        .await?;

        let shutdown = CancellationToken::new();
        let mut workers = JoinSet::new();
        let relay =
            |name, db, wake| OutboxRelay::new(name, db, bus.clone(), wake).run(shutdown.clone());
        workers.spawn(relay("orders", stores.orders.clone(), orders_wake));
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
                ParticipantSettings {
                    payment_decline_rate: config.payment_decline_rate,
                    shipping_failure_rate: config.shipping_failure_rate,
                },
                &shutdown,
            );
        }

        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        let state = AppState {
            orders,
            stores,
            inventory,
            bus,
            settings: Arc::new(HttpSettings {
                admin_token: config.admin_token.clone(),
                dev_endpoints: config.dev_endpoints,
                payment_mode: config.payment_mode,
                idempotency_retention: chrono::Duration::from_std(config.idempotency_retention())
                    .unwrap_or(chrono::Duration::hours(24)),
                body_limit_bytes: config.body_limit_bytes,
            }),
        };
        Ok(Application {
            listener,
            state,
            shutdown,
            workers,
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
        } = self;
        let router = http::router(state.clone());
        tracing::info!(addr = %listener.local_addr()?, bus = state.bus.kind(), "order service listening");
        let stop = shutdown.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = signal => {}
                    _ = stop.cancelled() => {}
                }
            })
            .await
            .context("HTTP server")?;
        tracing::info!("shutting down");
        shutdown.cancel();
        while workers.join_next().await.is_some() {}
        state.orders.stop();
        state.bus.close().await;
        state.stores.close().await;
        Ok(())
    }
}

/// The mock gateways' behaviour.
#[derive(Debug, Clone, Copy)]
pub struct ParticipantSettings {
    pub payment_decline_rate: f64,
    pub shipping_failure_rate: f64,
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
    let wakes: [Arc<Notify>; 3] = Default::default();
    let [inventory_wake, payment_wake, shipping_wake] = wakes;
    for (name, db, wake) in [
        ("inventory", &stores.inventory, &inventory_wake),
        ("payment", &stores.payment, &payment_wake),
        ("shipping", &stores.shipping, &shipping_wake),
    ] {
        workers.spawn(
            OutboxRelay::new(name, db.clone(), bus.clone(), wake.clone()).run(shutdown.clone()),
        );
    }
    let inventory = Inventory::new(stores.inventory.clone(), inventory_wake);
    let inv = inventory.clone();
    workers.spawn(consumer::run(
        bus.clone(),
        topology::INVENTORY_QUEUE,
        CONSUMER_CONCURRENCY,
        shutdown.clone(),
        move |m| {
            let inv = inv.clone();
            async move { inv.on_command(m).await }
        },
    ));
    workers.spawn(consumer::run(
        bus.clone(),
        topology::INVENTORY_EVENTS_QUEUE,
        CONSUMER_CONCURRENCY,
        shutdown.clone(),
        move |m| {
            let inv = inventory.clone();
            async move { inv.on_order_event(m).await }
        },
    ));
    let payment = Payment::new(
        stores.payment.clone(),
        payment_wake,
        settings.payment_decline_rate,
    );
    workers.spawn(consumer::run(
        bus.clone(),
        topology::PAYMENT_QUEUE,
        CONSUMER_CONCURRENCY,
        shutdown.clone(),
        move |m| {
            let payment = payment.clone();
            async move { payment.on_command(m).await }
        },
    ));
    let shipping = Shipping::new(
        stores.shipping.clone(),
        shipping_wake,
        settings.shipping_failure_rate,
    );
    workers.spawn(consumer::run(
        bus.clone(),
        topology::SHIPPING_QUEUE,
        CONSUMER_CONCURRENCY,
        shutdown.clone(),
        move |m| {
            let shipping = shipping.clone();
            async move { shipping.on_command(m).await }
        },
    ));
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
