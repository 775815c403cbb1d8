//! Indexes for the operator console's reads: the parked orders (a partial index, so it
//! holds only the few that need an operator, newest first) and one customer's orders,
//! newest first. Without them both walk the whole orders table.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const PARKED: &str = "idx_orders_parked_created_at";
const CUSTOMER: &str = "idx_orders_customer_created_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(PARKED)
                    .table(Orders::Table)
                    .col(Orders::CreatedAt)
                    .and_where(Expr::col(Orders::ParkedReason).is_not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(CUSTOMER)
                    .table(Orders::Table)
                    .col(Orders::CustomerId)
                    .col(Orders::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [PARKED, CUSTOMER] {
            manager
                .drop_index(Index::drop().name(name).table(Orders::Table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    CustomerId,
    CreatedAt,
    ParkedReason,
}
