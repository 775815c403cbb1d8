//! Creates the `outbox` table used by the transactional-outbox relay. Every
//! store (Orders, Inventory, Payment, Shipping) has its own copy of this table,
//! so this one migration is registered by all four migrators instead of being
//! duplicated; each migrator records it in its own history table. The `id` is
//! a `BIGINT` identity on PostgreSQL and an `INTEGER PRIMARY KEY AUTOINCREMENT`
//! (a rowid alias) on SQLite, so rows can be inserted without an id on both.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Outbox::Table)
                    .col(big_pk_auto(Outbox::Id))
                    .col(uuid(Outbox::MessageId))
                    .col(text(Outbox::Exchange))
                    .col(text(Outbox::RoutingKey))
                    .col(text(Outbox::Payload))
                    .col(text_null(Outbox::Headers))
                    .col(timestamp_with_time_zone(Outbox::CreatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Outbox::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    MessageId,
    Exchange,
    RoutingKey,
    Payload,
    Headers,
    CreatedAt,
}
