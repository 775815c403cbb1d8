//! Several replicas on one database: the `partitions` table holds, per partition of the
//! orders, its fencing epoch (bumped by every replica that acquires it) and its current
//! owner, for forwarding; `order_transitions.epoch` records the epoch each transition was
//! committed under. Ownership itself is a PostgreSQL advisory lock per partition, not a row:
//! the server releases it when the owner's session ends.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Partitions::Table)
                    .col(integer(Partitions::Partition).primary_key())
                    .col(big_integer(Partitions::Epoch).default(0))
                    .col(text_null(Partitions::Owner))
                    .col(text_null(Partitions::OwnerUrl))
                    .col(timestamp_with_time_zone_null(Partitions::AcquiredAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(OrderTransitions::Table)
                    .add_column(big_integer_null(OrderTransitions::Epoch))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(OrderTransitions::Table)
                    .drop_column(OrderTransitions::Epoch)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Partitions::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Partitions {
    Table,
    Partition,
    Epoch,
    Owner,
    OwnerUrl,
    AcquiredAt,
}

#[derive(DeriveIden)]
enum OrderTransitions {
    Table,
    Epoch,
}
