//! Creates the Inventory store's own tables: `stock` (one row per SKU with its
//! price and available/reserved/sold counters) and `reservations` (one per
//! order, with the reserved lines as JSON text). Statuses are TEXT, quantities
//! and money are `BIGINT`, timestamps are `timestamp with time zone`. `down`
//! drops both tables.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Stock::Table)
                    .col(text(Stock::Sku).primary_key())
                    .col(text(Stock::Name))
                    .col(big_integer(Stock::PriceCents))
                    .col(big_integer(Stock::Available))
                    .col(big_integer(Stock::Reserved))
                    .col(big_integer(Stock::Sold))
                    .col(timestamp_with_time_zone(Stock::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Reservations::Table)
                    .col(pk_uuid(Reservations::OrderId))
                    .col(text(Reservations::Status))
                    .col(text(Reservations::Items))
                    .col(text_null(Reservations::Reason))
                    .col(timestamp_with_time_zone(Reservations::CreatedAt))
                    .col(timestamp_with_time_zone(Reservations::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Reservations::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Stock::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Stock {
    Table,
    Sku,
    Name,
    PriceCents,
    Available,
    Reserved,
    Sold,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Reservations {
    Table,
    OrderId,
    Status,
    Items,
    Reason,
    CreatedAt,
    UpdatedAt,
}
