//! Persistence: one SeaORM connection per store (orders, and each participant's own store:
//! its own schema on PostgreSQL, its own file on SQLite), migrations, and the repositories
//! the actors and participants use.

pub mod console;
pub mod group_commit;
pub mod idempotency;
pub mod orders;
pub mod outbox;
pub mod ownership;

use migration::MigratorTrait;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};
use std::time::Duration;

/// The four databases of the system. Only the orchestrator touches `orders`; each
/// participant touches only its own.
#[derive(Clone, Debug)]
pub struct Stores {
    pub orders: DatabaseConnection,
    pub inventory: DatabaseConnection,
    pub payment: DatabaseConnection,
    pub shipping: DatabaseConnection,
}

/// Which store a connection is for; on PostgreSQL also the schema name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreName {
    Orders,
    Inventory,
    Payment,
    Shipping,
}

impl StoreName {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreName::Orders => "orders",
            StoreName::Inventory => "inventory",
            StoreName::Payment => "payment",
            StoreName::Shipping => "shipping",
        }
    }
}

pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// SQLite: `sqlite://data/orders.db?mode=rwc` becomes `sqlite://data/orders-inventory.db?mode=rwc`
/// for the inventory store. PostgreSQL: the same URL (the schema is set per connection).
fn store_url(base: &str, store: StoreName) -> String {
    if !is_sqlite(base) || store == StoreName::Orders {
        return base.to_owned();
    }
    if base.contains(":memory:") || base.contains("mode=memory") {
        return base.to_owned();
    }
    let (path, query) = match base.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (base, None),
    };
    let stem = path.strip_suffix(".db").unwrap_or(path);
    let mut url = format!("{stem}-{}.db", store.as_str());
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

/// Creates the directory of a SQLite file so the first `cargo run` works on a fresh clone.
fn ensure_sqlite_dir(url: &str) -> std::io::Result<()> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:")
        .split('?')
        .next()
        .unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") {
        return Ok(());
    }
    match std::path::Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

/// Some of the orders' partitions (several replicas): a query's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    /// How many partitions there are.
    pub count: u16,
    /// The ones wanted.
    pub wanted: Vec<u16>,
}

impl Partitions {
    /// The partition of the order id `id` (an SQL expression of type uuid) is one of
    /// `wanted` (the partition as [`crate::domain::partition::partition_of`] computes it).
    pub(crate) fn condition(&self, id: &str) -> sea_orm::sea_query::SimpleExpr {
        let wanted: Vec<String> = self.wanted.iter().map(u16::to_string).collect();
        let wanted = if wanted.is_empty() {
            "-1".to_owned()
        } else {
            wanted.join(", ")
        };
        let count = self.count.max(1);
        sea_orm::sea_query::Expr::cust(format!(
            "((get_byte(uuid_send({id}), 14) * 256 + get_byte(uuid_send({id}), 15)) % {count}) \
             IN ({wanted})"
        ))
    }
}

/// Whether `error` says the database cannot be reached — no connection to be had, one lost
/// mid-statement (a pooled connection is not pinged before use, so a restart or an outage
/// shows up here), or the server shutting down or refusing connections — rather than that
/// the statement itself failed. Callers answer the first with 503 and retry later.
pub fn is_unavailable(error: &DbErr) -> bool {
    use sea_orm::{RuntimeErr, sqlx};
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match e.as_ref() {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // Class 08: connection exception; 57P01–57P03: admin or crash shutdown,
                // cannot connect now.
                sqlx::Error::Database(db) => db
                    .code()
                    .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
                _ => false,
            }
        }
        _ => false,
    }
}

/// Applies `items` as one batch with `apply` (one result per item, in order). If the batch
/// fails and holds more than one item, each is applied again on its own, so that one bad
/// item (a duplicate key, a deadlock victim) cannot fail the others — unless the database
/// is unavailable, when every item gets that error at once instead of each waiting out the
/// pool's timeout. Used by the group commit and by the participants' batches.
pub async fn apply_batch_or_each<T, O>(
    what: &'static str,
    items: &[T],
    apply: impl for<'a> Fn(&'a [T]) -> futures::future::BoxFuture<'a, Result<Vec<O>, DbErr>>,
) -> Vec<Result<O, DbErr>> {
    if items.is_empty() {
        return Vec::new(); // nothing to apply: no transaction to open
    }
    match apply(items).await {
        Ok(results) => results.into_iter().map(Ok).collect(),
        Err(error) if items.len() > 1 && !is_unavailable(&error) => {
            tracing::debug!(%error, size = items.len(), what, "batch failed; applying its items one by one");
            let mut results = Vec::with_capacity(items.len());
            for item in items {
                results.push(match apply(std::slice::from_ref(item)).await {
                    Ok(mut one) => one
                        .pop()
                        .ok_or_else(|| DbErr::Custom(format!("{what}: no result for an item"))),
                    Err(e) => Err(e),
                });
            }
            results
        }
        Err(error) => items.iter().map(|_| Err(error.clone())).collect(),
    }
}

/// One column of a bulk statement on PostgreSQL (`… FROM UNNEST($1::uuid[], $2::text[], …)`):
/// the column's values for every row, as one array parameter. The statement text, and so
/// its prepared plan, stays the same for every batch size.
pub fn pg_array<T: sea_orm::sea_query::ValueType>(
    values: Vec<sea_orm::sea_query::Value>,
) -> sea_orm::sea_query::Value {
    sea_orm::sea_query::Value::Array(T::array_type(), Some(Box::new(values)))
}

/// Batch statements (participant batches, coalesced stock checks, group commit) join with
/// lists of ids (`IN (…)`, `UNNEST(…)`). A prepared statement's generic plan, chosen while
/// the tables were nearly empty (a hash join over a sequential scan), would stay cached for
/// the connection's life — and without ANALYZE (autovacuum off) nothing replaces it, so
/// every batch would scan the whole, growing table. Sessions that run batches (the
/// participants' stores and the group-commit writer's) therefore keep one generic plan per
/// statement with sequential scans ruled out ([`Plans::Generic`]); the orders store's
/// single-row statements (API reads, idempotency keys) keep PostgreSQL's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plans {
    Cached,
    /// One plan per statement and session, never a sequential scan where an index serves:
    /// planning each execution costs more than running these statements, and every table
    /// they touch is reached by key. A generic plan made on an empty, fresh database would
    /// scan tables for the session's life without `enable_seqscan=off` (BENCHMARKS.md).
    Generic,
}

/// The orders store's pool for the group-commit writer: on PostgreSQL its own sessions
/// (see [`Plans::Generic`]); on SQLite the store's one connection.
pub async fn connect_orders_writer(
    database_url: &str,
    stores: &Stores,
    max_connections: u32,
) -> Result<DatabaseConnection, DbErr> {
    if is_sqlite(database_url) {
        return Ok(stores.orders.clone());
    }
    connect_store(
        database_url,
        StoreName::Orders,
        max_connections,
        Plans::Generic,
    )
    .await
}

async fn connect_store(
    base: &str,
    store: StoreName,
    max_connections: u32,
    plans: Plans,
) -> Result<DatabaseConnection, DbErr> {
    let url = store_url(base, store);
    let mut options = ConnectOptions::new(url.clone());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a connection on every checkout by default: one more round trip (and
        // server wake-up) per transaction. Only a connection idle for a second is checked:
        // under load none is, while after an outage or a restart the pool's idle
        // connections — killed with their server processes — are found dead and replaced
        // before anyone uses them. One that died within the last second fails its first
        // statement instead, which `is_unavailable` classifies like a failed checkout (503,
        // requeue, retry).
        .test_before_acquire_if_idle_for(Duration::from_secs(1));
    if is_sqlite(&url) {
        ensure_sqlite_dir(&url).map_err(|e| DbErr::Custom(format!("creating {url}: {e}")))?;
        // SQLite has one writer: a single connection serializes writes instead of failing
        // them with "database is locked". It must never be recycled, or an in-memory
        // database would vanish.
        options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            // Write-ahead log with synchronous=FULL: a commit is one fsync of the log instead
            // of the rollback journal's several, and still durable when it returns.
            .map_sqlx_sqlite_opts(|opts| {
                opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Full)
            });
    } else {
        options.max_connections(max_connections).min_connections(1);
        match plans {
            Plans::Cached => {}
            Plans::Generic => {
                options.map_sqlx_postgres_opts(|opts| {
                    opts.options([
                        ("plan_cache_mode", "force_generic_plan"),
                        ("enable_seqscan", "off"),
                    ])
                });
            }
        }
        if store != StoreName::Orders {
            // Database-per-service inside one PostgreSQL: each participant in its schema.
            let bootstrap = Database::connect(url.clone()).await?;
            bootstrap
                .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS {}", store.as_str()))
                .await?;
            bootstrap.close().await?;
            options.set_schema_search_path(store.as_str());
        }
    }
    Database::connect(options).await
}

impl Stores {
    pub async fn connect(database_url: &str, max_connections: u32) -> Result<Stores, DbErr> {
        Ok(Stores {
            orders: connect_store(
                database_url,
                StoreName::Orders,
                max_connections,
                Plans::Cached,
            )
            .await?,
            // Participants' stores serve batches (and the coalesced stock check) only.
            inventory: connect_store(
                database_url,
                StoreName::Inventory,
                max_connections,
                Plans::Generic,
            )
            .await?,
            payment: connect_store(
                database_url,
                StoreName::Payment,
                max_connections,
                Plans::Generic,
            )
            .await?,
            shipping: connect_store(
                database_url,
                StoreName::Shipping,
                max_connections,
                Plans::Generic,
            )
            .await?,
        })
    }

    /// Applies every store's pending migrations. Idempotent.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        migration::OrdersMigrator::up(&self.orders, None).await?;
        migration::InventoryMigrator::up(&self.inventory, None).await?;
        migration::PaymentMigrator::up(&self.payment, None).await?;
        migration::ShippingMigrator::up(&self.shipping, None).await?;
        Ok(())
    }

    /// Every store answers a trivial query: what `/health/ready` reports.
    pub async fn ping(&self) -> Result<(), DbErr> {
        for db in [&self.orders, &self.inventory, &self.payment, &self.shipping] {
            db.ping().await?;
        }
        Ok(())
    }

    /// Unsent outbox messages across every store.
    pub async fn outbox_backlog(&self) -> Result<u64, DbErr> {
        let mut total = 0;
        for db in [&self.orders, &self.inventory, &self.payment, &self.shipping] {
            total += outbox::backlog(db).await?;
        }
        Ok(total)
    }

    pub async fn close(self) {
        for db in [self.orders, self.inventory, self.payment, self.shipping] {
            let _ = db.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_participant_stores_live_in_sibling_files() {
        assert_eq!(
            store_url("sqlite://data/orders.db?mode=rwc", StoreName::Payment),
            "sqlite://data/orders-payment.db?mode=rwc"
        );
        assert_eq!(
            store_url("sqlite://data/orders.db?mode=rwc", StoreName::Orders),
            "sqlite://data/orders.db?mode=rwc"
        );
    }

    #[test]
    fn postgres_stores_share_the_url_and_differ_by_schema() {
        let url = "postgres://postgres@127.0.0.1/test";
        assert_eq!(store_url(url, StoreName::Inventory), url);
    }
}
