//! The group commit's batch on PostgreSQL as one statement: the fenced updates, the new
//! orders and their items, the history entries, the outbox messages and the idempotency
//! completions are data-modifying CTEs of a single `WITH … SELECT`. A single statement is
//! atomic on its own, so there is no BEGIN and no COMMIT to send: one round trip (and one
//! WAL flush, `synchronous_commit` on) per batch instead of five to seven. At light load a
//! batch holds one write, so this is most of the latency of a saga step's commit.
//!
//! Every CTE reads its rows from `UNNEST` of one array parameter per column, so the
//! statement text is the same for every batch. Each CTE's text sits next to its column
//! list — name, type and the value it takes from a row — and the statement's `UNNEST`
//! arguments, their parameter numbers and the bound arrays are all generated from that list
//! ([`Part`]), so a value cannot end up in another column's parameter. Arrays cannot carry
//! NULLs through the driver, hence the `has_` flags.
//!
//! History entries and messages of fenced writes carry their order id and are inserted
//! only if that order's write stands (`stands`): its fenced update held (`held`), or — for
//! a create that claims its idempotency key with the order — the key was free (`claimed`).
//! Other creates have no fence.

use super::{
    BatchRows, Fence, FencedUpdate, IdempotencyCompletion, OfOrder, OrderRecord, OrderWrite,
    SavedBatch,
};
use crate::domain::saga::OrderStatus;
use crate::domain::view::{HistoryEntry, OrderLine};
use crate::persistence::{outbox, pg_array};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Value;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use std::sync::LazyLock;
use uuid::Uuid;

/// Stands in for an absent timestamp in an array (its `has_` flag says it is absent).
const NO_TIME: DateTime<Utc> = DateTime::<Utc>::UNIX_EPOCH;

/// The partitions the batch may write (the ownership fence): those it holds under an epoch
/// that is still current. Empty when the batch is not fenced by ownership (every row's
/// `part` is then -1).
const OWNED: &str = "owned AS (
    SELECT f.partition FROM {unnest} AS f({columns})
    JOIN partitions AS p ON p.partition = f.partition AND p.epoch = f.epoch
)";
/// A partition held, with its epoch.
type Held = (u16, i64);
const OWNED_COLUMNS: Columns<fn(&Held) -> Value> = &[
    ("partition", Pg::Int4, |&(p, _)| i32::from(p).into()),
    ("epoch", Pg::Int8, |&(_, e)| e.into()),
];

/// The fenced updates of transitions and retries (a retry: `transition` false, the timer
/// only). An order whose version has moved on is not updated and so not `held`.
const HELD: &str = "held AS (
    UPDATE orders AS o SET
        step_deadline_at = CASE WHEN v.has_deadline THEN v.deadline END,
        step_attempts = v.attempts,
        version = v.expected + 1,
        status = CASE WHEN v.transition THEN v.status ELSE o.status END,
        reservation_state = CASE WHEN v.transition THEN v.reservation ELSE o.reservation_state END,
        payment_state = CASE WHEN v.transition THEN v.payment ELSE o.payment_state END,
        shipment_state = CASE WHEN v.transition THEN v.shipment ELSE o.shipment_state END,
        failure_reason = CASE WHEN NOT v.transition THEN o.failure_reason
                              WHEN v.has_reason THEN v.reason END,
        updated_at = CASE WHEN v.transition THEN v.at ELSE o.updated_at END
    FROM {unnest} AS v({columns})
    WHERE o.id = v.id AND o.version = v.expected
        AND (v.part < 0 OR v.part IN (SELECT partition FROM owned))
    RETURNING o.id
)";
const HELD_COLUMNS: Columns<fn(&FencedUpdate<'_>) -> Value> = &[
    ("id", Pg::Uuid, |u| u.order_id.into()),
    ("part", Pg::Int4, |u| u.part.into()),
    ("expected", Pg::Int8, |u| u.expected_version.into()),
    ("has_deadline", Pg::Bool, |u| {
        u.timer.deadline.is_some().into()
    }),
    ("deadline", Pg::Timestamptz, |u| {
        u.timer.deadline.unwrap_or(NO_TIME).into()
    }),
    ("attempts", Pg::Int4, |u| u.timer.attempts.into()),
    ("transition", Pg::Bool, |u| u.saga.is_some().into()),
    ("status", Pg::Text, |u| {
        u.saga.map_or("", |(s, _)| s.status.as_str()).into()
    }),
    ("reservation", Pg::Text, |u| {
        u.saga.map_or("", |(s, _)| s.reservation.as_str()).into()
    }),
    ("payment", Pg::Text, |u| {
        u.saga.map_or("", |(s, _)| s.payment.as_str()).into()
    }),
    ("shipment", Pg::Text, |u| {
        u.saga.map_or("", |(s, _)| s.shipment.as_str()).into()
    }),
    ("has_reason", Pg::Bool, |u| {
        u.saga
            .is_some_and(|(s, _)| s.failure_reason.is_some())
            .into()
    }),
    ("reason", Pg::Text, |u| {
        u.saga
            .and_then(|(s, _)| s.failure_reason.clone())
            .unwrap_or_default()
            .into()
    }),
    ("at", Pg::Timestamptz, |u| {
        u.saga.map_or(NO_TIME, |(_, at)| at).into()
    }),
];

/// The keys claimed (answered) by creates that claim theirs with the order; one taken
/// already, or by an earlier row of the batch, is not `claimed` and its order not created.
const CLAIMED: &str = "claimed AS (
    INSERT INTO idempotency_keys (key, request_hash, order_id, response_status, response_body,
        created_at)
    SELECT c.key, c.hash, c.order_id, c.status, c.body, c.at
    FROM {unnest} WITH ORDINALITY AS c({columns}, n)
    WHERE c.part < 0 OR c.part IN (SELECT partition FROM owned)
    ORDER BY c.key, c.n
    ON CONFLICT (key) DO NOTHING
    RETURNING order_id
)";
const CLAIMED_COLUMNS: Columns<fn(&Claim<'_>) -> Value> = &[
    ("key", Pg::Text, |c| c.done.key.clone().into()),
    ("hash", Pg::Text, |c| c.hash.to_owned().into()),
    ("order_id", Pg::Uuid, |c| c.order_id.into()),
    ("status", Pg::Int4, |c| i32::from(c.done.status).into()),
    ("body", Pg::Text, |c| c.done.body.clone().into()),
    ("at", Pg::Timestamptz, |c| c.at.into()),
    ("part", Pg::Int4, |c| c.part.into()),
];

/// The new orders: those that claim their key only if they did (`fenced`), and under an
/// ownership fence only in a partition still held.
const CREATED: &str = "created AS (
    INSERT INTO orders (id, customer_id, currency, total_cents, status, reservation_state,
        payment_state, shipment_state, failure_reason, payment_mode, version,
        step_deadline_at, step_attempts, trace_context, parked_reason, created_at, updated_at)
    SELECT n.id, n.customer_id, n.currency, n.total_cents, n.status, n.reservation, n.payment,
        n.shipment, CASE WHEN n.has_reason THEN n.reason END, n.payment_mode, n.version,
        CASE WHEN n.has_deadline THEN n.deadline END, n.attempts,
        CASE WHEN n.has_trace THEN n.trace END, NULL, n.created_at, n.updated_at
    FROM {unnest} AS n({columns})
    WHERE (NOT n.fenced OR n.id IN (SELECT order_id FROM claimed))
        AND (n.part < 0 OR n.part IN (SELECT partition FROM owned))
    RETURNING id
)";

/// The orders whose write stands.
const STANDS: &str = "stands AS (
    SELECT id FROM held UNION ALL SELECT id FROM created
)";
const CREATED_COLUMNS: Columns<fn(&OfOrder<'_, OrderRecord>) -> Value> = &[
    ("id", Pg::Uuid, |n| n.row.id.into()),
    ("customer_id", Pg::Text, |n| {
        n.row.customer_id.clone().into()
    }),
    ("currency", Pg::Text, |n| n.row.currency.clone().into()),
    ("total_cents", Pg::Int8, |n| n.row.total_cents.into()),
    ("status", Pg::Text, |n| n.row.saga.status.as_str().into()),
    ("reservation", Pg::Text, |n| {
        n.row.saga.reservation.as_str().into()
    }),
    ("payment", Pg::Text, |n| n.row.saga.payment.as_str().into()),
    ("shipment", Pg::Text, |n| {
        n.row.saga.shipment.as_str().into()
    }),
    ("has_reason", Pg::Bool, |n| {
        n.row.saga.failure_reason.is_some().into()
    }),
    ("reason", Pg::Text, |n| {
        n.row.saga.failure_reason.clone().unwrap_or_default().into()
    }),
    ("payment_mode", Pg::Text, |n| {
        super::payment_mode_str(n.row.payment_mode).into()
    }),
    ("version", Pg::Int8, |n| n.row.version.into()),
    ("has_deadline", Pg::Bool, |n| {
        n.row.timer.deadline.is_some().into()
    }),
    ("deadline", Pg::Timestamptz, |n| {
        n.row.timer.deadline.unwrap_or(NO_TIME).into()
    }),
    ("attempts", Pg::Int4, |n| n.row.timer.attempts.into()),
    ("has_trace", Pg::Bool, |n| {
        n.row.trace_context.is_some().into()
    }),
    ("trace", Pg::Text, |n| {
        n.row.trace_context.clone().unwrap_or_default().into()
    }),
    ("created_at", Pg::Timestamptz, |n| n.row.created_at.into()),
    ("updated_at", Pg::Timestamptz, |n| n.row.updated_at.into()),
    ("fenced", Pg::Bool, |n| n.fenced.into()),
    ("part", Pg::Int4, |n| n.part.into()),
];

/// The items of the orders created.
const ITEMS: &str = "items AS (
    INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents)
    SELECT i.order_id, i.line_no, i.sku, i.quantity, i.unit_price_cents
    FROM {unnest} AS i({columns})
    WHERE i.order_id IN (SELECT id FROM created)
)";
const ITEMS_COLUMNS: Columns<fn(&Line<'_>) -> Value> = &[
    ("order_id", Pg::Uuid, |i| i.order_id.into()),
    ("line_no", Pg::Int4, |i| {
        i32::try_from(i.line_no).unwrap_or(i32::MAX).into()
    }),
    ("sku", Pg::Text, |i| i.line.sku.clone().into()),
    ("quantity", Pg::Int4, |i| {
        i32::try_from(i.line.quantity).unwrap_or(i32::MAX).into()
    }),
    ("unit_price_cents", Pg::Int8, |i| {
        i.line.unit_price_cents.into()
    }),
];

/// The history entries of the writes that stand, in the batch's order.
const HISTORY: &str = "history AS (
    INSERT INTO order_transitions (order_id, from_status, to_status, event, reason, at, epoch)
    SELECT h.order_id, CASE WHEN h.has_from THEN h.from_status END, h.to_status, h.event,
        h.reason, h.at, CASE WHEN h.has_epoch THEN h.epoch END
    FROM {unnest} WITH ORDINALITY AS h({columns}, n)
    WHERE NOT h.fenced OR h.order_id IN (SELECT id FROM stands)
    ORDER BY h.n
)";
const HISTORY_COLUMNS: Columns<fn(&OfOrder<'_, HistoryEntry>) -> Value> = &[
    ("order_id", Pg::Uuid, |h| h.order_id.into()),
    ("fenced", Pg::Bool, |h| h.fenced.into()),
    ("has_from", Pg::Bool, |h| h.row.from.is_some().into()),
    ("from_status", Pg::Text, |h| {
        h.row.from.map_or("", OrderStatus::as_str).into()
    }),
    ("to_status", Pg::Text, |h| h.row.status.as_str().into()),
    ("event", Pg::Text, |h| h.row.event.clone().into()),
    ("reason", Pg::Text, |h| h.row.reason.clone().into()),
    ("at", Pg::Timestamptz, |h| h.row.at.into()),
    ("has_epoch", Pg::Bool, |h| h.epoch.is_some().into()),
    ("epoch", Pg::Int8, |h| h.epoch.unwrap_or_default().into()),
];

/// The outbox messages of the writes that stand, in the batch's order (their ids keep
/// commit order for the relay).
const MESSAGES: &str = "messages AS (
    INSERT INTO outbox (message_id, exchange, routing_key, payload, headers, created_at)
    SELECT m.message_id, m.exchange, m.routing_key, m.payload,
        CASE WHEN m.has_headers THEN m.headers END, m.created_at
    FROM {unnest} WITH ORDINALITY AS m({columns}, n)
    WHERE NOT m.fenced OR m.owner IN (SELECT id FROM stands)
    ORDER BY m.n
    RETURNING id, message_id
)";
const MESSAGES_COLUMNS: Columns<fn(&Message<'_>) -> Value> = &[
    ("owner", Pg::Uuid, |m| m.of.order_id.into()),
    ("fenced", Pg::Bool, |m| m.of.fenced.into()),
    ("message_id", Pg::Uuid, |m| m.of.row.message_id.into()),
    ("exchange", Pg::Text, |m| m.of.row.exchange.into()),
    ("routing_key", Pg::Text, |m| {
        m.of.row.routing_key.clone().into()
    }),
    ("payload", Pg::Text, |m| m.of.row.payload.clone().into()),
    ("has_headers", Pg::Bool, |m| m.headers.is_some().into()),
    ("headers", Pg::Text, |m| {
        m.headers.clone().unwrap_or_default().into()
    }),
    ("created_at", Pg::Timestamptz, |m| m.created_at.into()),
];

/// The responses of keys claimed before the write (the fallback protocol).
const COMPLETED: &str = "completed AS (
    UPDATE idempotency_keys AS k
    SET order_id = c.order_id, response_status = c.status, response_body = c.body
    FROM {unnest} AS c({columns})
    WHERE k.key = c.key AND c.order_id IN (SELECT id FROM created)
)";
const COMPLETED_COLUMNS: Columns<fn(&Completion<'_>) -> Value> = &[
    ("key", Pg::Text, |(_, done)| done.key.clone().into()),
    ("order_id", Pg::Uuid, |&(order_id, _)| order_id.into()),
    ("status", Pg::Int4, |(_, done)| {
        i32::from(done.status).into()
    }),
    ("body", Pg::Text, |(_, done)| done.body.clone().into()),
];

/// What the statement returns: the orders whose write stands (`outbox_id` NULL) and the
/// outbox rows inserted.
const RESULT: &str = "SELECT id AS order_id, NULL::int8 AS outbox_id FROM stands
UNION ALL
SELECT message_id, id FROM messages";

/// The statement's parts in its order, each with its rows.
#[allow(clippy::too_many_arguments)] // one per part, in the statement's order
fn parts(
    owned: &[Held],
    updates: &[FencedUpdate<'_>],
    claims: &[Claim<'_>],
    new_orders: &[OfOrder<'_, OrderRecord>],
    lines: &[Line<'_>],
    history: &[OfOrder<'_, HistoryEntry>],
    messages: &[Message<'_>],
    completions: &[Completion<'_>],
) -> [Part; 9] {
    [
        Part::of(OWNED, OWNED_COLUMNS, owned),
        Part::of(HELD, HELD_COLUMNS, updates),
        Part::of(CLAIMED, CLAIMED_COLUMNS, claims),
        Part::of(CREATED, CREATED_COLUMNS, new_orders),
        Part::of(STANDS, &[], &[()]), // reads only the CTEs before it
        Part::of(ITEMS, ITEMS_COLUMNS, lines),
        Part::of(HISTORY, HISTORY_COLUMNS, history),
        Part::of(MESSAGES, MESSAGES_COLUMNS, messages),
        Part::of(COMPLETED, COMPLETED_COLUMNS, completions),
    ]
}

/// The statement, rendered once from the parts (no rows needed for its text).
static SAVE_BATCH: LazyLock<String> =
    LazyLock::new(|| statement(&parts(&[], &[], &[], &[], &[], &[], &[], &[])));

/// The columns of a part's rows, each with its name in the statement, its type, and its
/// value in a row (`F`: `fn(&Row) -> Value`).
type Columns<F> = &'static [Column<F>];
type Column<F> = (&'static str, Pg, F);
type ValueIn<R> = fn(&R) -> Value;

/// The PostgreSQL types of the columns.
#[derive(Clone, Copy, Debug)]
enum Pg {
    Uuid,
    Text,
    Int4,
    Int8,
    Bool,
    Timestamptz,
}

impl Pg {
    fn name(self) -> &'static str {
        match self {
            Pg::Uuid => "uuid",
            Pg::Text => "text",
            Pg::Int4 => "int4",
            Pg::Int8 => "int8",
            Pg::Bool => "bool",
            Pg::Timestamptz => "timestamptz",
        }
    }

    /// A column's values as one array parameter.
    fn array(self, values: Vec<Value>) -> Value {
        match self {
            Pg::Uuid => pg_array::<Uuid>(values),
            Pg::Text => pg_array::<String>(values),
            Pg::Int4 => pg_array::<i32>(values),
            Pg::Int8 => pg_array::<i64>(values),
            Pg::Bool => pg_array::<bool>(values),
            Pg::Timestamptz => pg_array::<DateTime<Utc>>(values),
        }
    }
}

/// One CTE of the statement: its text, where `{unnest}` stands for the `UNNEST` of its
/// columns' parameters and `{columns}` for their names; and those columns' arrays.
struct Part {
    sql: &'static str,
    columns: Vec<(&'static str, Pg)>,
    arrays: Vec<Value>,
}

impl Part {
    fn of<R>(sql: &'static str, columns: &[Column<ValueIn<R>>], rows: &[R]) -> Part {
        Part {
            sql,
            columns: columns.iter().map(|&(name, pg, _)| (name, pg)).collect(),
            arrays: columns
                .iter()
                .map(|&(_, pg, value)| pg.array(rows.iter().map(value).collect()))
                .collect(),
        }
    }
}

/// The statement's text: the parts as CTEs, their parameters numbered in order.
fn statement(parts: &[Part]) -> String {
    let mut parameters = 0;
    let ctes: Vec<String> = parts
        .iter()
        .map(|part| {
            let unnest: Vec<String> = part
                .columns
                .iter()
                .map(|(_, pg)| {
                    parameters += 1;
                    format!("${parameters}::{}[]", pg.name())
                })
                .collect();
            let names: Vec<&str> = part.columns.iter().map(|&(name, _)| name).collect();
            part.sql
                .replace("{unnest}", &format!("UNNEST({})", unnest.join(", ")))
                .replace("{columns}", &names.join(", "))
        })
        .collect();
    format!("WITH {}\n{RESULT}", ctes.join(", "))
}

/// A key this batch claims with its order, answered.
struct Claim<'a> {
    order_id: Uuid,
    /// The order's partition under an ownership fence, else -1.
    part: i32,
    done: &'a IdempotencyCompletion,
    hash: &'a str,
    at: DateTime<Utc>,
}

/// The response of a key claimed before the write, and its order.
type Completion<'a> = (Uuid, &'a IdempotencyCompletion);

/// An item of a new order.
struct Line<'a> {
    order_id: Uuid,
    line_no: usize,
    line: &'a OrderLine,
}

/// An outbox message with its `headers` column.
struct Message<'a> {
    of: &'a OfOrder<'a, outbox::NewMessage>,
    headers: Option<String>,
    created_at: DateTime<Utc>,
}

/// [`super::save_batch`] on PostgreSQL.
pub(super) async fn save_batch<C: ConnectionTrait>(
    db: &C,
    writes: &[OrderWrite],
    fence: Option<&Fence>,
) -> Result<SavedBatch, DbErr> {
    let now = Utc::now();
    // The fence is matched by order id (`held`), so a batch carries at most one write per
    // order — as it does: an actor awaits each write before it makes the next.
    debug_assert!(
        {
            let mut ids: Vec<Uuid> = writes.iter().map(OrderWrite::order_id).collect();
            ids.sort_unstable();
            ids.windows(2).all(|w| w[0] != w[1])
        },
        "two writes for one order in a batch"
    );
    let rows = BatchRows::of(writes, fence);
    let claims: Vec<Claim> = rows
        .claims
        .iter()
        .map(|&(order_id, done, hash)| Claim {
            order_id,
            part: fence.map_or(-1, |f| i32::from(f.partition(order_id))),
            done,
            hash,
            at: now,
        })
        .collect();
    let lines: Vec<Line> = rows
        .new_orders
        .iter()
        .flat_map(|new| {
            let order_id = new.row.id;
            (new.row.items.iter().enumerate()).map(move |(line_no, line)| Line {
                order_id,
                line_no,
                line,
            })
        })
        .collect();
    let messages: Vec<Message> = rows
        .messages
        .iter()
        .map(|of| Message {
            of,
            headers: of.row.headers_column(),
            created_at: now,
        })
        .collect();
    let owned = fence.map_or(&[][..], |f| f.held.as_slice());
    let values: Vec<Value> = parts(
        owned,
        &rows.updates,
        &claims,
        &rows.new_orders,
        &lines,
        &rows.history,
        &messages,
        &rows.completions,
    )
    .into_iter()
    .flat_map(|part| part.arrays)
    .collect();

    let returned = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            SAVE_BATCH.as_str(),
            values,
        ))
        .await?;
    let (held, outbox_ids) = outbox::orders_and_outbox_ids(returned)?;

    let outbox_rows = outbox::stored_rows(
        messages.into_iter().map(|m| (m.of.row, m.headers)),
        &outbox_ids,
        now,
    );
    Ok(SavedBatch {
        results: super::results(writes, &held),
        outbox_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameters are `$1` to `$n` in the text's order, one per bound array, and every
    /// listed column is used by its CTE.
    #[test]
    fn every_column_has_its_parameter_and_is_used() {
        let parts = parts(&[], &[], &[], &[], &[], &[], &[], &[]);
        let bound: usize = parts.iter().map(|p| p.arrays.len()).sum();
        let mut numbers = Vec::new();
        let mut rest = SAVE_BATCH.as_str();
        while let Some(at) = rest.find('$') {
            rest = &rest[at + 1..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            numbers.push(digits.parse::<usize>().expect("a parameter number"));
        }
        assert_eq!(numbers, (1..=bound).collect::<Vec<_>>());
        for part in &parts {
            let alias = part
                .sql
                .split("({columns}")
                .next()
                .and_then(|s| s.chars().last());
            for (name, _) in &part.columns {
                let alias = alias.expect("a part with columns has an alias");
                assert!(
                    part.sql.contains(&format!("{alias}.{name}")),
                    "{name} is not used in {}",
                    part.sql
                );
            }
        }
    }
}
