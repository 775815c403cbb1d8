//! Start-up and shutdown: builds every component from the [`Config`], binds the listener,
//! and runs the HTTP server with the background workers (outbox relays, consumers) until
//! a shutdown signal.

use crate::config::Config;
use crate::faults::Faults;
use crate::http::edge::EdgeSettings;
use crate::http::{self, AppState, HttpSettings};
use crate::messaging::consumer::Disposition;
use crate::messaging::relay::OutboxRelay;
use crate::messaging::topology::{self, EVENTS_EXCHANGE, ORCHESTRATOR_QUEUE};
use crate::messaging::{Bus, replies};
use crate::orchestrator::actors::Orders;
use crate::orchestrator::actors::order_actor::OrderContext;
use crate::orchestrator::actors::retry::RetryPolicy;
use crate::orchestrator::partitions;
use crate::orchestrator::{self, Catalogue, Orchestrator, Refusal, ReplyOutcome};
use crate::participants::inventory::{Inventory, QuoteError};
use crate::participants::runtime::{self, ParticipantSettings};
use crate::persistence::Stores;
use crate::persistence::group_commit::OrderWriter;
use crate::persistence::idempotency::{self, Claims};
use crate::persistence::outbox::{Lane, OutboxFeed};
use crate::persistence::ownership::{self, Ownership, OwnershipSettings, StartupLock};
use crate::tuning::{ORDER_WRITERS, REPLY_CONCURRENCY};
use anyhow::Context;
use futures::future::BoxFuture;
use sea_orm::DbErr;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// Cancelled on shutdown; every background worker watches it.
    shutdown: CancellationToken,
    /// Cancelled as soon as shutdown is asked (a child of `shutdown`): several replicas hand
    /// their partitions over while the HTTP server drains, so the others take over at once.
    handover: CancellationToken,
    workers: JoinSet<()>,
    /// Upper bound for draining on shutdown.
    shutdown_timeout: Duration,
    edge: EdgeSettings,
}

impl Application {
    /// Connects, migrates (if configured), seeds, and starts the workers. The HTTP server
    /// starts with [`Application::run_until_stopped`].
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let faults = Arc::new(Faults::from_config(&config)?);
        // Bound first: the replicas forward to this port (`ADVERTISE_URL`'s default).
        let listener = http::edge::bind(config.listen_addr)
            .with_context(|| format!("binding {}", config.listen_addr))?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let reply_queue = own_reply_queue(&config);
        let (stores, bus, inventory) = connect(&config, reply_queue).await?;
        let shutdown = CancellationToken::new();
        let handover = shutdown.child_token();
        let mut workers = JoinSet::new();
        let orchestrator = start_orchestrator(
            &config,
            port,
            reply_queue,
            &handover,
            faults.clone(),
            &stores,
            &bus,
            &inventory,
            &mut workers,
            &shutdown,
        )
        .await?;
        if config.embedded_participants {
            runtime::spawn(
                &mut workers,
                &stores,
                &bus,
                participant_settings(&config, faults),
                &shutdown,
            );
        }
        workers.spawn(crate::metrics::watch_dependencies(
            stores.clone(),
            bus.clone(),
            shutdown.clone(),
        ));
        let state = AppState {
            metrics: crate::metrics::install(),
            events: http::events::EventHub::new(orchestrator.clone(), handover.clone()),
            orchestrator,
            stores,
            inventory,
            bus,
            settings: Arc::new(HttpSettings {
                admin_token: config.admin_token.clone(),
                dev_endpoints: config.dev_endpoints,
                body_limit_bytes: config.body_limit_bytes,
            }),
            forwarder: http::forward::Forwarder::new().context("the forwarding client")?,
        };
        Ok(Application {
            listener,
            state,
            shutdown,
            handover,
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
            handover,
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
            handover.cancel();
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
        state.orchestrator.stop();
        state.bus.close().await;
        state.stores.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The order actors and the use cases, with their workers: the orders' outbox relays,
/// the reply consumers, the step-timer scanner, start-up recovery and the key sweeper; with
/// several replicas also the partition ownership and each acquired partition's recovery.
#[allow(clippy::too_many_arguments)] // each is one part of the assembly
async fn start_orchestrator(
    config: &Config,
    port: u16,
    reply_queue: crate::messaging::amqp::ReplyQueue,
    handover: &CancellationToken,
    faults: Arc<Faults>,
    stores: &Stores,
    bus: &Bus,
    inventory: &Inventory,
    workers: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Orchestrator> {
    // SQLite has one writer connection: a create lane would only queue for it.
    let create_lane = !crate::persistence::is_sqlite(&config.database_url);
    let writer_db = crate::persistence::connect_orders_writer(
        &config.database_url,
        stores,
        u32::try_from(ORDER_WRITERS + usize::from(create_lane)).unwrap_or(1),
    )
    .await
    .context("connecting the orders writer")?;
    let (ownership, changes) = if config.partitioned() {
        let replica_id = config.replica_id();
        let settings = OwnershipSettings {
            reply_to: topology::replica_word(&replica_id),
            replica_id,
            advertise_url: config.advertise_url(port),
            partitions: config.partitions,
            lease: Duration::from_millis(config.ownership_lease_ms),
        };
        tracing::info!(
            replica = settings.replica_id,
            url = settings.advertise_url,
            partitions = settings.partitions,
            "partitioned among replicas"
        );
        let (ownership, changes, engine) = ownership::start(
            &config.database_url,
            settings,
            handover.clone(),
            shutdown.clone(),
        )
        .await
        .context("starting partition ownership")?;
        workers.spawn(async move {
            let _ = engine.await;
        });
        (ownership, Some(changes))
    } else {
        (Ownership::single(), None)
    };
    // Lifecycle events get their own relay: commands never wait for their confirms.
    let (orders_feed, events_feed) = OutboxFeed::with_events_lane(EVENTS_EXCHANGE);
    let orders = Orders::start(OrderContext {
        db: stores.orders.clone(),
        writer: OrderWriter::start(
            writer_db,
            orders_feed.clone(),
            ORDER_WRITERS,
            create_lane,
            ownership.clone(),
        ),
        retry: RetryPolicy::new(config.step_timeout(), config.step_max_retries),
        idle_timeout: Duration::from_secs(config.actor_idle_secs),
        faults,
        stats: Default::default(),
        waiters: Default::default(),
        ownership: ownership.clone(),
    })
    .await?;
    for (name, feed, lane) in [
        ("orders", orders_feed, Lane::AllBut(EVENTS_EXCHANGE)),
        (
            "orders-events",
            events_feed,
            Lane::Exchange(EVENTS_EXCHANGE),
        ),
    ] {
        let relay = OutboxRelay::new(name, stores.orders.clone(), bus.clone(), feed);
        let relay = relay
            .lane(lane)
            .busy_linger(config.relay_linger())
            .swept_by(ownership.clone());
        workers.spawn(relay.run(shutdown.clone()));
    }
    let claims = Claims::start(
        stores.orders.clone(),
        chrono::Duration::from_std(config.idempotency_retention())
            .unwrap_or(chrono::Duration::hours(24)),
        chrono::Duration::seconds(
            i64::try_from(config.idempotency_claim_timeout_secs).unwrap_or(60),
        ),
    );
    let orchestrator = Orchestrator::new(
        orders,
        stores.orders.clone(),
        claims,
        Arc::new(inventory.clone()),
        orchestrator::Settings {
            payment_mode: config.payment_mode,
            max_orders_in_flight: config.max_orders_in_flight,
        },
    );
    // The shared reply queue: every reply, or with several replicas those that name no
    // replica (sent before; one for another replica's order goes back to the queue).
    workers.spawn(consume_replies(
        orchestrator.clone(),
        bus.clone(),
        ORCHESTRATOR_QUEUE,
        NotOwned::Requeue,
        shutdown.clone(),
    ));
    // This replica's own reply queue (several replicas). A reply there for an order it no
    // longer owns is dropped: the order's new owner resent the command when it took over.
    if let Some((queue, _)) = reply_queue {
        workers.spawn(consume_replies(
            orchestrator.clone(),
            bus.clone(),
            queue.name,
            NotOwned::Drop,
            shutdown.clone(),
        ));
    }
    workers.spawn(orchestrator.clone().run_timers(shutdown.clone()));
    match changes {
        // Each acquired partition's in-flight orders resumed (see orchestrator::partitions).
        Some(changes) => {
            workers.spawn(partitions::run(orchestrator.clone(), changes));
        }
        None => {
            // In the background: the API is available while old orders catch up.
            let orchestrator = orchestrator.clone();
            workers.spawn(async move {
                if let Err(error) = orchestrator.recover(None).await {
                    tracing::error!(%error, "start-up recovery failed; the timer scanner will catch up");
                }
            });
        }
    }
    workers.spawn(idempotency::run_sweeper(
        stores.orders.clone(),
        config.idempotency_retention(),
        shutdown.clone(),
    ));
    Ok(orchestrator)
}

/// This replica's reply queue, with several replicas.
fn own_reply_queue(config: &Config) -> crate::messaging::amqp::ReplyQueue {
    config
        .partitioned()
        .then(|| topology::replica_reply_queue(&topology::replica_word(&config.replica_id())))
}

/// What becomes of a reply for an order another replica owns.
#[derive(Clone, Copy)]
enum NotOwned {
    /// Back to the queue, for its owner (the shared queue, which every replica consumes).
    Requeue,
    /// Dropped (this replica's own queue: the owner resent the command when it took over).
    Drop,
}

/// Applies the replies of one queue until `stop`.
async fn consume_replies(
    orchestrator: Orchestrator,
    bus: Bus,
    queue: &'static str,
    not_owned: NotOwned,
    stop: CancellationToken,
) {
    replies::run(
        bus,
        queue,
        REPLY_CONCURRENCY,
        stop,
        move |order_id, reply| {
            let orchestrator = orchestrator.clone();
            async move {
                let outcome = orchestrator.apply_reply(order_id, reply).await;
                disposition(order_id, outcome, not_owned)
            }
        },
    )
    .await
}

/// A reply's outcome as the broker sees it: refused duplicates and late replies are done
/// with; a reply for an unknown or a parked order is kept aside (an operator can replay it).
fn disposition(order_id: uuid::Uuid, outcome: ReplyOutcome, not_owned: NotOwned) -> Disposition {
    match outcome {
        ReplyOutcome::NotOwner => match not_owned {
            NotOwned::Requeue => Disposition::Retry("order owned by another replica".into()),
            NotOwned::Drop => {
                metrics::counter!("replies_dropped_not_owner_total").increment(1);
                tracing::debug!(order_id = %order_id, "reply for an order owned elsewhere now; dropped");
                Disposition::Ack
            }
        },
        ReplyOutcome::Applied | ReplyOutcome::Ignored => Disposition::Ack,
        ReplyOutcome::UnknownOrder => {
            Disposition::DeadLetter(format!("reply for unknown order {order_id}"))
        }
        ReplyOutcome::Parked(why) => Disposition::DeadLetter(why),
        ReplyOutcome::Retry(why) => Disposition::Retry(why),
    }
}

/// The catalogue that orders are priced against is Inventory's.
impl Catalogue for Inventory {
    fn quote<'a>(
        &'a self,
        items: &'a [(String, i64)],
    ) -> BoxFuture<'a, Result<Result<Vec<i64>, Refusal>, DbErr>> {
        Box::pin(async move {
            match Inventory::quote(self, items).await {
                Ok(prices) => Ok(Ok(prices)),
                Err(QuoteError::UnknownSku(sku)) => Ok(Err(Refusal::UnknownSku(sku))),
                Err(QuoteError::Insufficient {
                    sku,
                    requested,
                    available,
                }) => Ok(Err(Refusal::Insufficient {
                    sku,
                    requested,
                    available,
                })),
                Err(QuoteError::Db(e)) => Err(e),
            }
        })
    }
}

/// Connects the stores (migrating them if configured) and the bus (or starts it connecting
/// in the background, see [`Bus::start`]), and seeds the demo catalogue into an empty
/// inventory. The inventory handle is the API's, for reading stock.
async fn connect(
    config: &Config,
    reply_queue: crate::messaging::amqp::ReplyQueue,
) -> anyhow::Result<(Stores, Bus, Inventory)> {
    // Replicas starting together set the database up one after another.
    let startup = StartupLock::acquire(&config.database_url)
        .await
        .context("connecting to the database")?;
    let stores = Stores::connect(&config.database_url, config.db_max_connections)
        .await
        .context("connecting to the database")?;
    if config.migrate_on_start {
        stores.migrate().await.context("applying migrations")?;
    }
    // An unreachable broker is waited for in the background (orchestrated start-ups bring
    // it up in any order); a malformed URL or refused credentials fail here.
    let bus = Bus::start(config.amqp_url.as_deref(), reply_queue)
        .await
        .context("connecting to the message broker")?;
    let inventory = Inventory::new(stores.inventory.clone(), OutboxFeed::default());
    if config.seed_demo_catalogue && inventory.seed_demo_catalogue().await? {
        tracing::info!("seeded the demo catalogue");
    }
    startup.release().await;
    Ok((stores, bus, inventory))
}

fn participant_settings(config: &Config, faults: Arc<Faults>) -> ParticipantSettings {
    ParticipantSettings {
        payment_decline_rate: config.payment_decline_rate,
        shipping_failure_rate: config.shipping_failure_rate,
        faults,
        relay_linger: config.relay_linger(),
    }
}

/// The participants as their own service: consumers and outbox relays, plus the health
/// endpoints, until `signal`.
pub async fn run_participants(
    config: Config,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let faults = Arc::new(Faults::from_config(&config)?);
    let (stores, bus, _inventory) = connect(&config, None).await?;
    let shutdown = CancellationToken::new();
    let mut workers = JoinSet::new();
    runtime::spawn(
        &mut workers,
        &stores,
        &bus,
        participant_settings(&config, faults),
        &shutdown,
    );
    let health = http::health::participants_router(stores.clone(), bus.clone());
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
