//! Creates the Payment store's own table, `payments`: one row per order with
//! its TEXT status, the amount in `BIGINT` cents and its currency, an optional
//! decline/refund reason and `timestamp with time zone` timestamps. `down`
//! drops the table.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Payments::Table)
                    .col(pk_uuid(Payments::OrderId))
                    .col(text(Payments::Status))
                    .col(big_integer(Payments::AmountCents))
                    .col(text(Payments::Currency))
                    .col(text_null(Payments::Reason))
                    .col(timestamp_with_time_zone(Payments::CreatedAt))
                    .col(timestamp_with_time_zone(Payments::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Payments::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    OrderId,
    Status,
    AmountCents,
    Currency,
    Reason,
    CreatedAt,
    UpdatedAt,
}
