//! End-to-end check of the four store migrators: each one is run `up` against
//! its own fresh database (an in-memory SQLite, and a throwaway PostgreSQL
//! database on 127.0.0.1:5432 with one schema per store selected via
//! `search_path`), one row is written to and read back from every entity of the
//! store through sea-orm, `outbox` and `order_transitions` rows are inserted
//! twice without an id to prove auto-increment, and then the migrator is run
//! `down` and the store's tables are checked to be gone.

use chrono::{DateTime, SubsecRound, Utc};
use entity::{
    idempotency_keys, order_items, order_transitions, orders, outbox, payments, reservations,
    shipments, stock,
};
use migration::{
    InventoryMigrator, MigratorTrait, OrdersMigrator, PaymentMigrator, SchemaManager,
    ShippingMigrator,
};
use sea_orm::{
    ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait,
    Set,
};
use uuid::Uuid;

/// Current time truncated to microseconds, the precision PostgreSQL keeps.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

async fn sqlite() -> DatabaseConnection {
    let mut opts = ConnectOptions::new("sqlite::memory:");
    opts.max_connections(1).min_connections(1);
    Database::connect(opts).await.expect("connect sqlite")
}

async fn assert_tables(db: &DatabaseConnection, tables: &[&str], present: bool) {
    let manager = SchemaManager::new(db);
    for table in tables {
        assert_eq!(
            manager.has_table(*table).await.expect("has_table"),
            present,
            "table {table} present?"
        );
    }
}

/// Inserts two `outbox` rows without an id and checks they read back with
/// distinct, increasing ids.
async fn check_outbox(db: &DatabaseConnection) {
    let mut ids = Vec::new();
    for n in 0..2 {
        let row = outbox::ActiveModel {
            message_id: Set(Uuid::new_v4()),
            exchange: Set("orders.events".to_owned()),
            routing_key: Set(format!("order.created.{n}")),
            payload: Set(r#"{"n":1}"#.to_owned()),
            headers: Set(if n == 0 {
                None
            } else {
                Some(r#"{"traceparent":"00-abc-def-01"}"#.to_owned())
            }),
            created_at: Set(now()),
            ..Default::default()
        }
        .insert(db)
        .await
        .expect("insert outbox");
        let back = outbox::Entity::find_by_id(row.id)
            .one(db)
            .await
            .expect("select outbox")
            .expect("outbox row exists");
        assert_eq!(back, row);
        ids.push(row.id);
    }
    assert!(ids[1] > ids[0], "outbox ids must auto-increment: {ids:?}");
}

async fn check_orders_store(db: &DatabaseConnection) {
    OrdersMigrator::up(db, None).await.expect("orders up");
    // A second `up` is a no-op.
    OrdersMigrator::up(db, None).await.expect("orders up again");
    assert_tables(
        db,
        &[
            "orders",
            "order_items",
            "order_transitions",
            "idempotency_keys",
            "outbox",
            "seaql_migrations_orders",
        ],
        true,
    )
    .await;

    let order_id = Uuid::new_v4();
    let t = now();
    let order = orders::ActiveModel {
        id: Set(order_id),
        customer_id: Set("cust-1".to_owned()),
        currency: Set("EUR".to_owned()),
        total_cents: Set(12_345_678_901),
        status: Set("PENDING".to_owned()),
        reservation_state: Set("PENDING".to_owned()),
        payment_state: Set("NONE".to_owned()),
        shipment_state: Set("NONE".to_owned()),
        failure_reason: Set(None),
        payment_mode: Set("auto".to_owned()),
        version: Set(1),
        step_deadline_at: Set(Some(t)),
        step_attempts: Set(0),
        parked_reason: Set(None),
        trace_context: Set(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )),
        created_at: Set(t),
        updated_at: Set(t),
    }
    .insert(db)
    .await
    .expect("insert order");
    let back = orders::Entity::find_by_id(order_id)
        .one(db)
        .await
        .expect("select order")
        .expect("order exists");
    assert_eq!(back, order);

    let item = order_items::ActiveModel {
        order_id: Set(order_id),
        line_no: Set(1),
        sku: Set("SKU-1".to_owned()),
        quantity: Set(3),
        unit_price_cents: Set(999),
    }
    .insert(db)
    .await
    .expect("insert order item");
    let back = order_items::Entity::find_by_id((order_id, 1))
        .one(db)
        .await
        .expect("select order item")
        .expect("order item exists");
    assert_eq!(back, item);

    let mut transition_ids = Vec::new();
    for (from, to) in [(None, "PENDING"), (Some("PENDING"), "RESERVING")] {
        let tr = order_transitions::ActiveModel {
            order_id: Set(order_id),
            from_status: Set(from.map(str::to_owned)),
            to_status: Set(to.to_owned()),
            event: Set("test".to_owned()),
            reason: Set("because".to_owned()),
            at: Set(now()),
            ..Default::default()
        }
        .insert(db)
        .await
        .expect("insert transition");
        let back = order_transitions::Entity::find_by_id(tr.id)
            .one(db)
            .await
            .expect("select transition")
            .expect("transition exists");
        assert_eq!(back, tr);
        transition_ids.push(tr.id);
    }
    assert!(
        transition_ids[1] > transition_ids[0],
        "transition ids must auto-increment: {transition_ids:?}"
    );

    let key = idempotency_keys::ActiveModel {
        key: Set("idem-1".to_owned()),
        request_hash: Set("abcdef".to_owned()),
        order_id: Set(Some(order_id)),
        response_status: Set(Some(201)),
        response_body: Set(Some("{}".to_owned())),
        created_at: Set(now()),
    }
    .insert(db)
    .await
    .expect("insert idempotency key");
    let back = idempotency_keys::Entity::find_by_id("idem-1".to_owned())
        .one(db)
        .await
        .expect("select idempotency key")
        .expect("idempotency key exists");
    assert_eq!(back, key);

    check_outbox(db).await;

    OrdersMigrator::down(db, None).await.expect("orders down");
    assert_tables(
        db,
        &[
            "orders",
            "order_items",
            "order_transitions",
            "idempotency_keys",
            "outbox",
        ],
        false,
    )
    .await;
    // The store can be rebuilt after a full rollback.
    OrdersMigrator::up(db, None)
        .await
        .expect("orders up after down");
    OrdersMigrator::down(db, None)
        .await
        .expect("orders down again");
}

async fn check_inventory_store(db: &DatabaseConnection) {
    InventoryMigrator::up(db, None).await.expect("inventory up");
    assert_tables(
        db,
        &[
            "stock",
            "reservations",
            "outbox",
            "seaql_migrations_inventory",
        ],
        true,
    )
    .await;

    let row = stock::ActiveModel {
        sku: Set("SKU-1".to_owned()),
        name: Set("Widget".to_owned()),
        price_cents: Set(999),
        available: Set(10),
        reserved: Set(2),
        sold: Set(1),
        updated_at: Set(now()),
    }
    .insert(db)
    .await
    .expect("insert stock");
    let back = stock::Entity::find_by_id("SKU-1".to_owned())
        .one(db)
        .await
        .expect("select stock")
        .expect("stock exists");
    assert_eq!(back, row);

    let order_id = Uuid::new_v4();
    let t = now();
    let row = reservations::ActiveModel {
        order_id: Set(order_id),
        status: Set("RESERVED".to_owned()),
        items: Set(r#"[{"sku":"SKU-1","quantity":2}]"#.to_owned()),
        reason: Set(None),
        created_at: Set(t),
        updated_at: Set(t),
    }
    .insert(db)
    .await
    .expect("insert reservation");
    let back = reservations::Entity::find_by_id(order_id)
        .one(db)
        .await
        .expect("select reservation")
        .expect("reservation exists");
    assert_eq!(back, row);

    check_outbox(db).await;

    InventoryMigrator::down(db, None)
        .await
        .expect("inventory down");
    assert_tables(db, &["stock", "reservations", "outbox"], false).await;
}

async fn check_payment_store(db: &DatabaseConnection) {
    PaymentMigrator::up(db, None).await.expect("payment up");
    assert_tables(
        db,
        &["payments", "outbox", "seaql_migrations_payment"],
        true,
    )
    .await;

    let order_id = Uuid::new_v4();
    let t = now();
    let row = payments::ActiveModel {
        order_id: Set(order_id),
        status: Set("CAPTURED".to_owned()),
        amount_cents: Set(2997),
        currency: Set("EUR".to_owned()),
        reason: Set(Some("ok".to_owned())),
        created_at: Set(t),
        updated_at: Set(t),
    }
    .insert(db)
    .await
    .expect("insert payment");
    let back = payments::Entity::find_by_id(order_id)
        .one(db)
        .await
        .expect("select payment")
        .expect("payment exists");
    assert_eq!(back, row);

    check_outbox(db).await;

    PaymentMigrator::down(db, None).await.expect("payment down");
    assert_tables(db, &["payments", "outbox"], false).await;
}

async fn check_shipping_store(db: &DatabaseConnection) {
    ShippingMigrator::up(db, None).await.expect("shipping up");
    assert_tables(
        db,
        &["shipments", "outbox", "seaql_migrations_shipping"],
        true,
    )
    .await;

    let order_id = Uuid::new_v4();
    let t = now();
    let row = shipments::ActiveModel {
        order_id: Set(order_id),
        status: Set("SHIPPED".to_owned()),
        tracking_number: Set(Some("TRK-1".to_owned())),
        reason: Set(None),
        created_at: Set(t),
        updated_at: Set(t),
    }
    .insert(db)
    .await
    .expect("insert shipment");
    let back = shipments::Entity::find_by_id(order_id)
        .one(db)
        .await
        .expect("select shipment")
        .expect("shipment exists");
    assert_eq!(back, row);

    check_outbox(db).await;

    ShippingMigrator::down(db, None)
        .await
        .expect("shipping down");
    assert_tables(db, &["shipments", "outbox"], false).await;
}

/// Every store gets its own fresh in-memory SQLite database, as each store is
/// its own file in production.
#[tokio::test]
async fn all_stores_on_sqlite() {
    check_orders_store(&sqlite().await).await;
    check_inventory_store(&sqlite().await).await;
    check_payment_store(&sqlite().await).await;
    check_shipping_store(&sqlite().await).await;
}

/// Same checks on PostgreSQL, one schema per store, in a throwaway database
/// (created here, dropped at the end). `MIGRATION_TEST_PG_ADMIN_URL` overrides the
/// server to use; it must allow `CREATE DATABASE`.
#[tokio::test]
async fn all_stores_on_postgres() {
    let server = std::env::var("MIGRATION_TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let server = server.trim_end_matches('/').to_owned();
    let name = format!("migration_test_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(format!("{server}/postgres"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {server} ({e}); start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
            )
        });
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create throwaway database");
    let url = format!("{server}/{name}");
    let stores = ["orders", "inventory", "payment", "shipping"];
    {
        let db = Database::connect(url.as_str())
            .await
            .expect("connect throwaway database");
        for schema in stores {
            db.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .expect("create schema");
        }
        db.close().await.expect("close");
    }
    let connect = async |schema: &str| {
        let mut opts = ConnectOptions::new(url.as_str());
        opts.set_schema_search_path(schema);
        Database::connect(opts).await.expect("connect schema")
    };
    check_orders_store(&connect("orders").await).await;
    check_inventory_store(&connect("inventory").await).await;
    check_payment_store(&connect("payment").await).await;
    check_shipping_store(&connect("shipping").await).await;
    // WITH (FORCE) closes the pools above, which are still open.
    admin
        .execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop throwaway database");
}
