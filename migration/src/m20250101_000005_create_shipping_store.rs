//! Creates the Shipping store's own table, `shipments`: one row per order with
//! its TEXT status, an optional carrier tracking number, an optional failure
//! reason and `timestamp with time zone` timestamps. `down` drops the table.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Shipments::Table)
                    .col(pk_uuid(Shipments::OrderId))
                    .col(text(Shipments::Status))
                    .col(text_null(Shipments::TrackingNumber))
                    .col(text_null(Shipments::Reason))
                    .col(timestamp_with_time_zone(Shipments::CreatedAt))
                    .col(timestamp_with_time_zone(Shipments::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Shipments::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Shipments {
    Table,
    OrderId,
    Status,
    TrackingNumber,
    Reason,
    CreatedAt,
    UpdatedAt,
}
