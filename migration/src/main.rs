//! Command-line entry point of the `migration` crate: runs sea-orm-migration's
//! standard CLI (`up`, `down`, `status`, `fresh`, `refresh`, `reset`) for the
//! Orders store's migrator, taking the connection from `DATABASE_URL` and, for
//! PostgreSQL, the schema from `DATABASE_SCHEMA`.

use sea_orm_migration::prelude::*;

#[tokio::main]
async fn main() {
    cli::run_cli(migration::OrdersMigrator).await;
}
