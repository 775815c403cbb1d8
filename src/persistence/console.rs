//! Reads for operators (the console and the event stream): orders by filter with a cursor,
//! counts per status, and the transition history as one stream in commit-id order.

use crate::domain::saga::OrderStatus;
use crate::domain::view::HistoryEntry;
use crate::persistence::orders::parse_status as status;
use chrono::{DateTime, Utc};
use entity::{idempotency_keys, order_transitions, orders};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Which orders an operator lists.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub customer: Option<String>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
    pub parked: bool,
    /// Only these ids (a search by order id or Idempotency-Key).
    pub ids: Option<Vec<Uuid>>,
    /// Strictly after this one in newest-first order (the cursor of the page before).
    pub before: Option<(DateTime<Utc>, Uuid)>,
}

/// One line of the operator's order list.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[schema(as = OperatorOrder)]
pub struct OrderLine {
    pub id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: String,
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    /// Why the order is parked (crash loop), if it is.
    #[schema(required = true)]
    pub parked_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Newest first (creation time, then id), at most `limit`.
pub async fn orders<C: ConnectionTrait>(
    db: &C,
    filter: &OrderFilter,
    limit: u64,
) -> Result<Vec<OrderLine>, DbErr> {
    let mut query = orders::Entity::find();
    if let Some(status) = filter.status {
        query = query.filter(orders::Column::Status.eq(status.as_str()));
    }
    if let Some(customer) = &filter.customer {
        query = query.filter(orders::Column::CustomerId.eq(customer.as_str()));
    }
    if let Some(from) = filter.from {
        query = query.filter(orders::Column::CreatedAt.gte(from));
    }
    if let Some(to) = filter.to {
        query = query.filter(orders::Column::CreatedAt.lt(to));
    }
    if filter.parked {
        query = query.filter(orders::Column::ParkedReason.is_not_null());
    }
    if let Some(ids) = &filter.ids {
        query = query.filter(orders::Column::Id.is_in(ids.iter().copied()));
    }
    if let Some((at, id)) = filter.before {
        query = query.filter(
            Condition::any().add(orders::Column::CreatedAt.lt(at)).add(
                Condition::all()
                    .add(orders::Column::CreatedAt.eq(at))
                    .add(orders::Column::Id.lt(id)),
            ),
        );
    }
    let rows = query
        .order_by_desc(orders::Column::CreatedAt)
        .order_by_desc(orders::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(OrderLine {
                id: row.id,
                status: status(&row.status)?,
                customer_id: row.customer_id,
                total_cents: row.total_cents,
                currency: row.currency,
                failure_reason: row.failure_reason,
                parked_reason: row.parked_reason,
                created_at: row.created_at,
                updated_at: row.updated_at,
            })
        })
        .collect()
}

/// The order an Idempotency-Key created, if the key is still kept.
pub async fn order_of_key<C: ConnectionTrait>(db: &C, key: &str) -> Result<Option<Uuid>, DbErr> {
    Ok(idempotency_keys::Entity::find_by_id(key.to_owned())
        .one(db)
        .await?
        .and_then(|row| row.order_id))
}

/// How many orders are in each status now (every status present, zero or not), and how
/// many are parked.
pub async fn counts<C: ConnectionTrait>(
    db: &C,
) -> Result<(BTreeMap<&'static str, u64>, u64), DbErr> {
    let mut by_status: BTreeMap<&'static str, u64> =
        OrderStatus::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let rows: Vec<(String, i64)> = orders::Entity::find()
        .select_only()
        .column(orders::Column::Status)
        .column_as(orders::Column::Id.count(), "n")
        .group_by(orders::Column::Status)
        .into_tuple()
        .all(db)
        .await?;
    for (text, n) in rows {
        *by_status.entry(status(&text)?.as_str()).or_default() += u64::try_from(n).unwrap_or(0);
    }
    let parked = orders::Entity::find()
        .filter(orders::Column::ParkedReason.is_not_null())
        .count(db)
        .await?;
    Ok((by_status, parked))
}

/// One history entry as the event stream carries it: `seq` is its row id, increasing in
/// insertion order.
#[derive(Debug, Clone)]
pub struct Transition {
    pub seq: i64,
    pub order_id: Uuid,
    pub entry: HistoryEntry,
}

/// History entries with `seq > after`, in `seq` order, at most `limit`; only one order's
/// when `order_id` is given.
pub async fn transitions_after<C: ConnectionTrait>(
    db: &C,
    after: i64,
    order_id: Option<Uuid>,
    limit: u64,
) -> Result<Vec<Transition>, DbErr> {
    let mut query =
        order_transitions::Entity::find().filter(order_transitions::Column::Id.gt(after));
    if let Some(id) = order_id {
        query = query.filter(order_transitions::Column::OrderId.eq(id));
    }
    query
        .order_by_asc(order_transitions::Column::Id)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(|t| {
            Ok(Transition {
                seq: t.id,
                order_id: t.order_id,
                entry: HistoryEntry {
                    from: t.from_status.as_deref().map(status).transpose()?,
                    status: status(&t.to_status)?,
                    event: t.event,
                    reason: t.reason,
                    at: t.at,
                },
            })
        })
        .collect()
}

/// The newest history entry's `seq` (0 when there is none).
pub async fn last_transition<C: ConnectionTrait>(db: &C) -> Result<i64, DbErr> {
    let last: Option<Option<i64>> = order_transitions::Entity::find()
        .select_only()
        .column_as(order_transitions::Column::Id.max(), "last")
        .into_tuple()
        .one(db)
        .await?;
    Ok(last.flatten().unwrap_or(0))
}
