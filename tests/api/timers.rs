//! The timer scanner's lookup (`orders::due_deadlines`, every 250 ms) on real PostgreSQL:
//! it must find the due sagas through an index even on a table the planner has no
//! statistics for (a fresh database, autovacuum off, no ANALYZE yet), or each scan reads
//! the whole table — a cost that grows with every finished order.

use crate::helpers::migrated_stores;
use chrono::{Duration, Utc};
use order_service::persistence::orders;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

/// Inserts `count` orders straight into the table: finished ones have no deadline.
async fn insert_orders(
    db: &sea_orm::DatabaseConnection,
    count: u32,
    deadline: Option<chrono::DateTime<Utc>>,
) {
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO orders (id, customer_id, currency, total_cents, status, reservation_state,
             payment_state, shipment_state, payment_mode, version, step_deadline_at,
             step_attempts, created_at, updated_at)
         SELECT gen_random_uuid(), 'c', 'EUR', 100, 'CONFIRMED', 'RESERVED', 'CHARGED',
             'SCHEDULED', 'auto', 4, $2, 0, now(), now()
         FROM generate_series(1, $1)",
        [i32::try_from(count).expect("small").into(), deadline.into()],
    ))
    .await
    .expect("inserting orders");
}

#[tokio::test]
async fn postgres_the_deadline_scan_uses_an_index_on_a_table_without_statistics() {
    let (stores, _amqp, _backing) = migrated_stores(false).await;
    let db = &stores.orders;
    // Where autovacuum runs, it must not analyze the table during the test.
    db.execute_unprepared("ALTER TABLE orders SET (autovacuum_enabled = false)")
        .await
        .expect("turning autovacuum off for the table");
    let now = Utc::now();
    insert_orders(db, 20_000, None).await;
    insert_orders(db, 3, Some(now - Duration::seconds(5))).await;
    insert_orders(db, 2, Some(now + Duration::minutes(5))).await;

    let never_analyzed = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT reltuples::float8 AS n FROM pg_class WHERE relname = 'orders'",
        ))
        .await
        .expect("reading pg_class")
        .expect("orders is in pg_class")
        .try_get::<f64>("", "n")
        .expect("reltuples");
    assert!(
        never_analyzed < 0.0,
        "the table must be without statistics for this test, reltuples = {never_analyzed}"
    );

    let due = orders::due_deadlines(db, now, 256, None)
        .await
        .expect("scanning");
    assert_eq!(due.len(), 3, "the three orders past their deadline are due");

    let query = orders::due_deadlines_query(now, 256, None).into_statement(DbBackend::Postgres);
    let explain = Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("EXPLAIN {}", query.sql),
        query.values.map(|v| v.0).unwrap_or_default(),
    );
    let plan: Vec<String> = db
        .query_all_raw(explain)
        .await
        .expect("explaining the scan")
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("plan line"))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("idx_orders_step_deadline_due") && !plan.contains("Seq Scan"),
        "the deadline scan must use the partial index, not read the table:\n{plan}"
    );
}
