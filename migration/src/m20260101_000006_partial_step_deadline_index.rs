//! Narrows the orders' step-deadline index to the orders the timer scanner can find:
//! those with a deadline and not parked. Finished orders (nearly all of them) have no
//! deadline, so the index holds only the sagas in flight, stays small however large the
//! table grows, and costs nothing when a saga ends.
//!
//! Why: the scanner asks every 250 ms for due deadlines. On a table the planner has no
//! statistics for (autovacuum off, no ANALYZE yet) it read the whole table with the full
//! index, a cost that grows with the table; the partial index is chosen either way.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const OLD: &str = "idx_orders_step_deadline_at";
const NEW: &str = "idx_orders_step_deadline_due";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(NEW)
                    .table(Orders::Table)
                    .col(Orders::StepDeadlineAt)
                    .and_where(Expr::col(Orders::StepDeadlineAt).is_not_null())
                    .and_where(Expr::col(Orders::ParkedReason).is_null())
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(Index::drop().name(OLD).table(Orders::Table).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(OLD)
                    .table(Orders::Table)
                    .col(Orders::StepDeadlineAt)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(Index::drop().name(NEW).table(Orders::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    StepDeadlineAt,
    ParkedReason,
}
