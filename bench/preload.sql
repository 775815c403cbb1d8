-- Fills a benchmark database with :n finished (CONFIRMED) orders and everything that goes
-- with them in every store, so that a load can be repeated on grown tables:
--
--   psql -h 127.0.0.1 -U postgres -d <db> -v n=1000000 -f bench/preload.sql
--
-- Rows are consistent with each other (the invariant check holds): each order has one item
-- of the SKU PRELOAD-001 (a SKU of its own, so the benchmark SKU's counters are untouched),
-- four history entries, an idempotency key, a CONSUMED reservation, a CHARGED payment and a
-- SCHEDULED shipment. All are older than the service's start and terminal, so recovery and
-- the timer scanner ignore them; the idempotency keys are within the retention (24 h).
-- Ends with VACUUM ANALYZE, as autovacuum would after a bulk load (it is off on the
-- benchmark machine).
\set ON_ERROR_STOP on
\timing on

BEGIN;
-- Ids are time-ordered like the service's own (UUID v7: the creation time in milliseconds,
-- then random bits), so the tables' physical order follows the id as it does in
-- production; random (v4) ids would make every read in id order a random read.
CREATE TEMP TABLE preload ON COMMIT DROP AS
SELECT (lpad(to_hex((extract(epoch FROM t) * 1000)::bigint), 12, '0') || '7'
        || substr(md5(random()::text), 1, 3) || to_hex(8 + floor(random() * 4)::int)
        || substr(md5(random()::text), 1, 15))::uuid AS id, g, t
FROM (SELECT g, now() - interval '3 hours' + g * interval '5 milliseconds' AS t
      FROM generate_series(1, :n) AS g) AS timed;

INSERT INTO public.orders (id, customer_id, currency, total_cents, status, reservation_state,
    payment_state, shipment_state, failure_reason, payment_mode, version, step_deadline_at,
    step_attempts, trace_context, parked_reason, created_at, updated_at)
SELECT id, 'preload-' || (g % 10000), 'EUR', 1200, 'CONFIRMED', 'RESERVED', 'CHARGED',
       'SCHEDULED', NULL, 'auto', 4, NULL, 0, NULL, NULL, t, t + interval '40 milliseconds'
FROM preload;

INSERT INTO public.order_items (order_id, line_no, sku, quantity, unit_price_cents)
SELECT id, 0, 'PRELOAD-001', 1, 1200 FROM preload;

INSERT INTO public.order_transitions (order_id, from_status, to_status, event, reason, at)
SELECT id, f, s, e, r, t + k * interval '10 milliseconds'
FROM preload,
     (VALUES (0, NULL, 'PENDING', 'order_created', 'order accepted; reserving stock'),
             (1, 'PENDING', 'STOCK_RESERVED', 'stock_reserved', 'stock reserved'),
             (2, 'STOCK_RESERVED', 'PAID', 'payment_charged', 'payment charged'),
             (3, 'PAID', 'CONFIRMED', 'shipment_scheduled', 'shipment scheduled'))
       AS h(k, f, s, e, r)
ORDER BY t, k;

INSERT INTO public.idempotency_keys (key, request_hash, order_id, response_status,
    response_body, created_at)
SELECT 'preload-' || id, md5(id::text), id, 201, '{"id":"' || id || '"}',
       now() - interval '1 hour'
FROM preload;

INSERT INTO inventory.reservations (order_id, status, items, reason, created_at, updated_at)
SELECT id, 'CONSUMED', '[{"sku":"PRELOAD-001","quantity":1}]', NULL, t, t FROM preload;

INSERT INTO inventory.stock (sku, name, price_cents, available, reserved, sold, updated_at)
VALUES ('PRELOAD-001', 'Preloaded history', 1200, 0, 0, :n, now())
ON CONFLICT (sku) DO UPDATE SET sold = inventory.stock.sold + :n;

INSERT INTO payment.payments (order_id, status, amount_cents, currency, reason, created_at,
    updated_at)
SELECT id, 'CHARGED', 1200, 'EUR', NULL, t, t FROM preload;

INSERT INTO shipping.shipments (order_id, status, tracking_number, reason, created_at,
    updated_at)
SELECT id, 'SCHEDULED', 'TRK-' || left(md5(id::text), 12), NULL, t, t FROM preload;
COMMIT;

VACUUM ANALYZE;
