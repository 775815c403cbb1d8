//! The group commit's batch on PostgreSQL as one statement: the fenced updates, the new
//! orders and their items, the history entries, the outbox messages and the idempotency
//! completions are data-modifying CTEs of a single `WITH … SELECT`. A single statement is
//! atomic on its own, so there is no BEGIN and no COMMIT to send: one round trip (and one
//! WAL flush, `synchronous_commit` on) per batch instead of five to seven. At light load a
//! batch holds one write, so this is most of the latency of a saga step's commit.
//!
//! Every column travels as one array parameter, so the statement text is the same for
//! every batch. Arrays cannot carry NULLs through the driver, hence the `has_` flags.
//! History entries and messages of fenced writes carry their order id and are inserted
//! only if that order's write stands (`stands`): its fenced update held (`held`), or — for
//! a create that claims its idempotency key with the order — the key was free (`claimed`).
//! Other creates have no fence.

use super::{BatchRows, FencedUpdate, OrderWrite, SavedBatch};
use crate::persistence::pg_array;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::Value;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use uuid::Uuid;

const SAVE_BATCH: &str = r#"WITH held AS (
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
    FROM UNNEST($1::uuid[], $2::int8[], $3::bool[], $4::timestamptz[], $5::int4[], $6::bool[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::bool[], $12::text[],
                $13::timestamptz[])
        AS v(id, expected, has_deadline, deadline, attempts, transition, status, reservation,
             payment, shipment, has_reason, reason, at)
    WHERE o.id = v.id AND o.version = v.expected
    RETURNING o.id
), claimed AS (
    INSERT INTO idempotency_keys (key, request_hash, order_id, response_status, response_body,
        created_at)
    SELECT c.key, c.hash, c.order_id, c.status, c.body, c.at
    FROM UNNEST($59::text[], $60::text[], $61::uuid[], $62::int4[], $63::text[],
                $64::timestamptz[]) WITH ORDINALITY AS c(key, hash, order_id, status, body, at, n)
    ORDER BY c.key, c.n
    ON CONFLICT (key) DO NOTHING
    RETURNING order_id
), stands AS (
    SELECT id FROM held UNION ALL SELECT order_id FROM claimed
), created AS (
    INSERT INTO orders (id, customer_id, currency, total_cents, status, reservation_state,
        payment_state, shipment_state, failure_reason, payment_mode, version,
        step_deadline_at, step_attempts, trace_context, parked_reason, created_at, updated_at)
    SELECT n.id, n.customer_id, n.currency, n.total_cents, n.status, n.reservation, n.payment,
        n.shipment, CASE WHEN n.has_reason THEN n.reason END, n.payment_mode, n.version,
        CASE WHEN n.has_deadline THEN n.deadline END, n.attempts,
        CASE WHEN n.has_trace THEN n.trace END, NULL, n.created_at, n.updated_at
    FROM UNNEST($14::uuid[], $15::text[], $16::text[], $17::int8[], $18::text[], $19::text[],
                $20::text[], $21::text[], $22::bool[], $23::text[], $24::text[], $25::int8[],
                $26::bool[], $27::timestamptz[], $28::int4[], $29::bool[], $30::text[],
                $31::timestamptz[], $32::timestamptz[], $65::bool[])
        AS n(id, customer_id, currency, total_cents, status, reservation, payment, shipment,
             has_reason, reason, payment_mode, version, has_deadline, deadline, attempts,
             has_trace, trace, created_at, updated_at, fenced)
    WHERE NOT n.fenced OR n.id IN (SELECT order_id FROM claimed)
    RETURNING id
), items AS (
    INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents)
    SELECT i.order_id, i.line_no, i.sku, i.quantity, i.unit_price_cents
    FROM UNNEST($33::uuid[], $34::int4[], $35::text[], $36::int4[], $37::int8[])
        AS i(order_id, line_no, sku, quantity, unit_price_cents)
    WHERE i.order_id IN (SELECT id FROM created)
), history AS (
    INSERT INTO order_transitions (order_id, from_status, to_status, event, reason, at)
    SELECT h.order_id, CASE WHEN h.has_from THEN h.from_status END, h.to_status, h.event,
        h.reason, h.at
    FROM UNNEST($38::uuid[], $39::bool[], $40::bool[], $41::text[], $42::text[], $43::text[],
                $44::text[], $45::timestamptz[]) WITH ORDINALITY
        AS h(order_id, fenced, has_from, from_status, to_status, event, reason, at, n)
    WHERE NOT h.fenced OR h.order_id IN (SELECT id FROM stands)
    ORDER BY h.n
), messages AS (
    INSERT INTO outbox (message_id, exchange, routing_key, payload, headers, created_at)
    SELECT m.message_id, m.exchange, m.routing_key, m.payload,
        CASE WHEN m.has_headers THEN m.headers END, m.created_at
    FROM UNNEST($46::uuid[], $47::bool[], $48::uuid[], $49::text[], $50::text[], $51::text[],
                $52::bool[], $53::text[], $54::timestamptz[]) WITH ORDINALITY
        AS m(owner, fenced, message_id, exchange, routing_key, payload, has_headers, headers,
             created_at, n)
    WHERE NOT m.fenced OR m.owner IN (SELECT id FROM stands)
    ORDER BY m.n
    RETURNING id, message_id
), completed AS (
    UPDATE idempotency_keys AS k
    SET order_id = c.order_id, response_status = c.status, response_body = c.body
    FROM UNNEST($55::text[], $56::uuid[], $57::int4[], $58::text[]) AS c(key, order_id, status, body)
    WHERE k.key = c.key
)
SELECT id AS order_id, NULL::int8 AS outbox_id FROM stands
UNION ALL
SELECT message_id, id FROM messages"#;

/// One array parameter per column of a group of rows.
#[derive(Default)]
struct Columns(Vec<Vec<Value>>);

impl Columns {
    fn with(n: usize) -> Self {
        Columns(vec![Vec::new(); n])
    }

    fn push(&mut self, row: impl IntoIterator<Item = Value>) {
        for (column, value) in self.0.iter_mut().zip(row) {
            column.push(value);
        }
    }
}

/// [`super::save_batch`] on PostgreSQL.
pub(super) async fn save_batch<C: ConnectionTrait>(
    db: &C,
    writes: &[OrderWrite],
) -> Result<SavedBatch, DbErr> {
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
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
    let rows = BatchRows::of(writes);
    let mut created = Columns::with(19);
    let mut created_fenced = Vec::with_capacity(rows.new_orders.len());
    let mut items = Columns::with(5);
    for new in &rows.new_orders {
        let order = new.row;
        created_fenced.push(new.fenced.into());
        let saga = &order.saga;
        created.push([
            order.id.into(),
            order.customer_id.clone().into(),
            order.currency.clone().into(),
            order.total_cents.into(),
            saga.status.as_str().into(),
            saga.reservation.as_str().into(),
            saga.payment.as_str().into(),
            saga.shipment.as_str().into(),
            saga.failure_reason.is_some().into(),
            saga.failure_reason.clone().unwrap_or_default().into(),
            super::payment_mode_str(order.payment_mode).into(),
            order.version.into(),
            order.timer.deadline.is_some().into(),
            order.timer.deadline.unwrap_or(epoch).into(),
            order.timer.attempts.into(),
            order.trace_context.is_some().into(),
            order.trace_context.clone().unwrap_or_default().into(),
            order.created_at.into(),
            order.updated_at.into(),
        ]);
        for (line_no, line) in order.items.iter().enumerate() {
            items.push([
                order.id.into(),
                i32::try_from(line_no).unwrap_or(i32::MAX).into(),
                line.sku.clone().into(),
                i32::try_from(line.quantity).unwrap_or(i32::MAX).into(),
                line.unit_price_cents.into(),
            ]);
        }
    }
    let mut history = Columns::with(8);
    for h in &rows.history {
        let entry = h.row;
        history.push([
            h.order_id.into(),
            h.fenced.into(),
            entry.from.is_some().into(),
            entry
                .from
                .map_or("", crate::domain::saga::OrderStatus::as_str)
                .into(),
            entry.status.as_str().into(),
            entry.event.clone().into(),
            entry.reason.clone().into(),
            entry.at.into(),
        ]);
    }
    let mut completions = Columns::with(4);
    for &(order_id, done) in &rows.completions {
        completions.push([
            done.key.clone().into(),
            order_id.into(),
            i32::from(done.status).into(),
            done.body.clone().into(),
        ]);
    }
    let mut claims = Columns::with(6);
    for &(order_id, done, hash) in &rows.claims {
        claims.push([
            done.key.clone().into(),
            hash.to_owned().into(),
            order_id.into(),
            i32::from(done.status).into(),
            done.body.clone().into(),
            now.into(),
        ]);
    }
    let messages = &rows.messages;
    let mut outbox_columns = Columns::with(9);
    let headers: Vec<Option<String>> = messages.iter().map(|m| m.row.headers_column()).collect();
    for (m, headers) in messages.iter().zip(&headers) {
        outbox_columns.push([
            m.order_id.into(),
            m.fenced.into(),
            m.row.message_id.into(),
            m.row.exchange.into(),
            m.row.routing_key.clone().into(),
            m.row.payload.clone().into(),
            headers.is_some().into(),
            headers.clone().unwrap_or_default().into(),
            now.into(),
        ]);
    }

    let mut values = FencedUpdate::columns(&rows.updates);
    let typed = |columns: Columns, types: &[fn(Vec<Value>) -> Value]| {
        columns
            .0
            .into_iter()
            .zip(types)
            .map(|(column, array)| array(column))
            .collect::<Vec<_>>()
    };
    use pg_array as a;
    values.extend(typed(
        created,
        &[
            a::<Uuid>,
            a::<String>,
            a::<String>,
            a::<i64>,
            a::<String>,
            a::<String>,
            a::<String>,
            a::<String>,
            a::<bool>,
            a::<String>,
            a::<String>,
            a::<i64>,
            a::<bool>,
            a::<DateTime<Utc>>,
            a::<i32>,
            a::<bool>,
            a::<String>,
            a::<DateTime<Utc>>,
            a::<DateTime<Utc>>,
        ],
    ));
    values.extend(typed(
        items,
        &[a::<Uuid>, a::<i32>, a::<String>, a::<i32>, a::<i64>],
    ));
    values.extend(typed(
        history,
        &[
            a::<Uuid>,
            a::<bool>,
            a::<bool>,
            a::<String>,
            a::<String>,
            a::<String>,
            a::<String>,
            a::<DateTime<Utc>>,
        ],
    ));
    values.extend(typed(
        outbox_columns,
        &[
            a::<Uuid>,
            a::<bool>,
            a::<Uuid>,
            a::<String>,
            a::<String>,
            a::<String>,
            a::<bool>,
            a::<String>,
            a::<DateTime<Utc>>,
        ],
    ));
    values.extend(typed(
        completions,
        &[a::<String>, a::<Uuid>, a::<i32>, a::<String>],
    ));
    values.extend(typed(
        claims,
        &[
            a::<String>,
            a::<String>,
            a::<Uuid>,
            a::<i32>,
            a::<String>,
            a::<DateTime<Utc>>,
        ],
    ));
    values.push(a::<bool>(created_fenced));

    let returned = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            SAVE_BATCH,
            values,
        ))
        .await?;
    let (held, outbox_ids) = crate::persistence::outbox::orders_and_outbox_ids(returned)?;

    let outbox_rows = crate::persistence::outbox::stored_rows(
        messages.iter().map(|m| m.row).zip(headers),
        &outbox_ids,
        now,
    );
    Ok(SavedBatch {
        results: super::results(writes, &held),
        outbox_rows,
    })
}
