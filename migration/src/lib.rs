//! Schema migrations for the four per-service stores of the order orchestration
//! service (database-per-service). Each store has its own migrator:
//! [`OrdersMigrator`], [`InventoryMigrator`], [`PaymentMigrator`] and
//! [`ShippingMigrator`]. In PostgreSQL each store lives in its own schema
//! selected via `search_path`, in SQLite each store is its own database file,
//! so table names are unqualified; every migrator still keeps its history in a
//! distinct table (`seaql_migrations_<store>`) so that two stores sharing one
//! schema could never confuse each other's history. The `outbox` table exists in
//! every store and is created by one shared migration that all four register.

pub use sea_orm_migration::prelude::*;

mod m20250101_000001_create_outbox;
mod m20250101_000002_create_orders_store;
mod m20250101_000003_create_inventory_store;
mod m20250101_000004_create_payment_store;
mod m20250101_000005_create_shipping_store;
mod m20260101_000006_partial_step_deadline_index;
mod m20261204_000007_partitions;
mod m20261205_000008_console_indexes;

/// Migrator for the Orders store: `orders`, `order_items`,
/// `order_transitions`, `idempotency_keys` and `outbox`.
pub struct OrdersMigrator;

#[async_trait::async_trait]
impl MigratorTrait for OrdersMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_create_outbox::Migration),
            Box::new(m20250101_000002_create_orders_store::Migration),
            Box::new(m20260101_000006_partial_step_deadline_index::Migration),
            Box::new(m20261204_000007_partitions::Migration),
            Box::new(m20261205_000008_console_indexes::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_orders".into_iden()
    }
}

/// Migrator for the Inventory store: `stock`, `reservations` and `outbox`.
pub struct InventoryMigrator;

#[async_trait::async_trait]
impl MigratorTrait for InventoryMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_create_outbox::Migration),
            Box::new(m20250101_000003_create_inventory_store::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_inventory".into_iden()
    }
}

/// Migrator for the Payment store: `payments` and `outbox`.
pub struct PaymentMigrator;

#[async_trait::async_trait]
impl MigratorTrait for PaymentMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_create_outbox::Migration),
            Box::new(m20250101_000004_create_payment_store::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_payment".into_iden()
    }
}

/// Migrator for the Shipping store: `shipments` and `outbox`.
pub struct ShippingMigrator;

#[async_trait::async_trait]
impl MigratorTrait for ShippingMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_create_outbox::Migration),
            Box::new(m20250101_000005_create_shipping_store::Migration),
        ]
    }

    fn migration_table_name() -> DynIden {
        "seaql_migrations_shipping".into_iden()
    }
}
