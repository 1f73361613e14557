-- Fills a migrated payments-svc database on PostgreSQL with :n purchases
-- and what comes with them: one checkout event and one change per purchase; a refund event,
-- fact and change for every tenth; every hundredth a second payment owed a
-- refund; every thousandth event failed; unmatched refund facts for a
-- hundredth. Times grow with the row number, as the service writes them,
-- over the last 120 days: past both retentions (30 days for changes, 90 for
-- payloads), so the prunes have work. psql -v n=1000000 -f fill.sql
\set ON_ERROR_STOP on
BEGIN;
INSERT INTO course_purchases (user_id, course_id, stripe_checkout_session_id, stripe_payment_intent_id,
    amount_total, currency, status, source, needs_refund, created_at, updated_at, access_status, has_access,
    amount_refunded, access_cause)
SELECT 'u_' || g, 'c_' || (g % 500), 'cs_test_' || g, 'pi_' || g, 4900, 'usd',
    'paid', 'webhook', g % 100 = 0,
    now() - ((:n - g)::float8 / :n) * interval '120 days', now() - ((:n - g)::float8 / :n) * interval '120 days',
    CASE WHEN g % 10 = 0 THEN 'refunded' ELSE 'paid' END,
    g % 10 <> 0 AND g % 100 <> 0, CASE WHEN g % 10 = 0 THEN 4900 ELSE 0 END, 'evt_' || g
FROM generate_series(1, :n) g;

INSERT INTO stripe_webhook_events (event_id, event_type, livemode, status, error, payload, stripe_created_at,
    received_at, last_received_at, checkout_session_id)
SELECT 'evt_' || g, 'checkout.session.completed', false,
    CASE WHEN g % 1000 = 0 THEN 'failed' ELSE 'processed' END,
    CASE WHEN g % 1000 = 0 THEN '{"code": "missing_metadata", "message": "no courseId"}'::json END,
    '{"id": "evt_' || g || '", "object": "event"}', 1764000000 + g,
    now() - ((:n - g)::float8 / :n) * interval '120 days', now() - ((:n - g)::float8 / :n) * interval '120 days', 'cs_test_' || g
FROM generate_series(1, :n) g;
INSERT INTO stripe_webhook_events (event_id, event_type, livemode, status, payload, stripe_created_at,
    received_at, last_received_at, reversed_payment_intent_id, reversed_charge_id)
SELECT 'evt_r' || g, 'charge.refunded', false, 'processed', '{"object": "event"}', 1764000000 + g,
    now() - ((:n - g)::float8 / :n) * interval '120 days', now() - ((:n - g)::float8 / :n) * interval '120 days',
    'pi_' || g, 'ch_' || g
FROM generate_series(10, :n, 10) g;

INSERT INTO payment_reversals (kind, object_id, status, amount, complete, currency, payment_intent_id,
    charge_id, event_id, stripe_created_at, recorded_at)
SELECT 'refund', 're_' || g, 'succeeded', 4900, true, 'usd', 'pi_' || g, 'ch_' || g, 'evt_r' || g,
    1764000000 + g, now() - ((:n - g)::float8 / :n) * interval '120 days'
FROM generate_series(10, :n, 10) g;
INSERT INTO payment_reversals (kind, object_id, status, amount, complete, currency, payment_intent_id,
    charge_id, event_id, stripe_created_at, recorded_at)
SELECT 'refund', 're_x' || g, 'succeeded', 1000, true, 'usd', 'pi_elsewhere_' || g, 'ch_x' || g,
    'evt_x' || g, 1764000000 + g, now() - ((:n - g)::float8 / :n) * interval '120 days'
FROM generate_series(100, :n, 100) g;

INSERT INTO purchase_changes (purchase_id, kind, status, has_access, amount_refunded, cause_event_id, at)
SELECT id, 'granted', 'paid', true, 0, 'evt_' || id, created_at FROM course_purchases ORDER BY id;
INSERT INTO purchase_changes (purchase_id, kind, status, has_access, amount_refunded, cause_event_id, at)
SELECT id, 'refunded', 'refunded', false, 4900, 'evt_r' || id, created_at FROM course_purchases
WHERE id % 10 = 0 ORDER BY id;
COMMIT;
ANALYZE;
