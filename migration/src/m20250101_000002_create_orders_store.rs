//! Creates the Orders store's own tables: `orders`, `order_items`,
//! `order_transitions` and `idempotency_keys`, with their secondary indexes
//! (orders by status and age, by age and by step deadline; transitions by order;
//! idempotency keys by age for expiry). Statuses are TEXT, UUIDs use the
//! backend's UUID type, timestamps are `timestamp with time zone` and money is
//! `BIGINT` cents. `down` drops the tables (and with them their indexes).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .col(pk_uuid(Orders::Id))
                    .col(text(Orders::CustomerId))
                    .col(text(Orders::Currency))
                    .col(big_integer(Orders::TotalCents))
                    .col(text(Orders::Status))
                    .col(text(Orders::ReservationState))
                    .col(text(Orders::PaymentState))
                    .col(text(Orders::ShipmentState))
                    .col(text_null(Orders::FailureReason))
                    .col(text(Orders::PaymentMode))
                    .col(big_integer(Orders::Version))
                    .col(timestamp_with_time_zone_null(Orders::StepDeadlineAt))
                    .col(integer(Orders::StepAttempts))
                    .col(text_null(Orders::TraceContext))
                    .col(text_null(Orders::ParkedReason))
                    .col(timestamp_with_time_zone(Orders::CreatedAt))
                    .col(timestamp_with_time_zone(Orders::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_status_created_at")
                    .table(Orders::Table)
                    .col(Orders::Status)
                    .col(Orders::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_created_at")
                    .table(Orders::Table)
                    .col(Orders::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_step_deadline_at")
                    .table(Orders::Table)
                    .col(Orders::StepDeadlineAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OrderItems::Table)
                    .col(uuid(OrderItems::OrderId))
                    .col(integer(OrderItems::LineNo))
                    .col(text(OrderItems::Sku))
                    .col(integer(OrderItems::Quantity))
                    .col(big_integer(OrderItems::UnitPriceCents))
                    .primary_key(
                        Index::create()
                            .name("pk_order_items")
                            .col(OrderItems::OrderId)
                            .col(OrderItems::LineNo),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OrderTransitions::Table)
                    .col(big_pk_auto(OrderTransitions::Id))
                    .col(uuid(OrderTransitions::OrderId))
                    .col(text_null(OrderTransitions::FromStatus))
                    .col(text(OrderTransitions::ToStatus))
                    .col(text(OrderTransitions::Event))
                    .col(text(OrderTransitions::Reason))
                    .col(timestamp_with_time_zone(OrderTransitions::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_order_transitions_order_id_id")
                    .table(OrderTransitions::Table)
                    .col(OrderTransitions::OrderId)
                    .col(OrderTransitions::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(text(IdempotencyKeys::Key).primary_key())
                    .col(text(IdempotencyKeys::RequestHash))
                    .col(uuid_null(IdempotencyKeys::OrderId))
                    .col(integer_null(IdempotencyKeys::ResponseStatus))
                    .col(text_null(IdempotencyKeys::ResponseBody))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_idempotency_keys_created_at")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            IdempotencyKeys::Table.into_iden(),
            OrderTransitions::Table.into_iden(),
            OrderItems::Table.into_iden(),
            Orders::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    CustomerId,
    Currency,
    TotalCents,
    Status,
    ReservationState,
    PaymentState,
    ShipmentState,
    FailureReason,
    PaymentMode,
    Version,
    StepDeadlineAt,
    StepAttempts,
    TraceContext,
    ParkedReason,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum OrderItems {
    Table,
    OrderId,
    LineNo,
    Sku,
    Quantity,
    UnitPriceCents,
}

#[derive(DeriveIden)]
enum OrderTransitions {
    Table,
    Id,
    OrderId,
    FromStatus,
    ToStatus,
    Event,
    Reason,
    At,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Key,
    RequestHash,
    OrderId,
    ResponseStatus,
    ResponseBody,
    CreatedAt,
}
