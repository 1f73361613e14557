//! The write: what the domain decided, if the write counter is unchanged,
//! in one statement.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use payments_domain::event::EventStatus;
use payments_domain::write::{self, Decision, Keys};
use sea_orm::sqlx::{self, PgConnection};

use super::{KeyArrays, WriteError};
use crate::store::refund_requests::idempotency_key;

/// Writes `decision` if the write counter is still `writes`; the counter
/// after the write, `None` if it wrote nothing.
///
/// `absent` names the keys of a batch decided without a load, as if
/// nothing were stored for any of them; the write then checks that this
/// is so. The facts of its payments and the purchases of its families are
/// looked up in the statement; its events and purchases are inserted with
/// no conflict clause, so that one already stored fails the statement on
/// its unique index with nothing written ([`is_stored_key`]): the
/// insert's own check, where a lookup beside it would search each index
/// twice.
pub(super) async fn save(
    connection: &mut PgConnection,
    decision: &Decision<'_>,
    writes: i64,
    absent: Option<&Keys>,
    now: DateTime<Utc>,
) -> Result<Option<i64>, WriteError> {
    let text = if absent.is_some() { &SAVE_FRESH } else { &SAVE };
    let events = &decision.events;
    let settled = |event: &write::EventWrite<'_>| event.settle.as_ref().map(|(status, _)| *status);
    let purchases = &decision.purchases;
    let published = |write: &write::PurchaseWrite| write.published;
    let facts = &decision.facts;
    let owed = &decision.refunds_owed;
    let changes = &decision.changes;
    let query = sqlx::query_as::<_, (Option<i64>,)>(text.as_str())
        .bind(writes)
        .bind(now)
        .bind(events.iter().map(|e| e.event.id.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.event_type.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.livemode).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.api_version.as_deref()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.session_id()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| settled(e).unwrap_or(EventStatus::Received).as_str()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| {
                    e.settle.as_ref().and_then(|(_, error)| error.as_ref()).map(|f| f.to_json().to_string())
                })
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.event.payload.as_str()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.deliveries).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.created).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.reversed_payment_intent_id()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event.reversed_charge_id()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.purchase.user_id.as_str()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.purchase.course_id.as_str()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.purchase.checkout_session_id.as_str()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.purchase.payment_intent_id.as_deref()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.purchase.amount_total).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.purchase.currency.as_deref()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.status.as_str()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.purchase.source.as_str()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.needs_refund).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| published(p).map(|a| a.status.as_str())).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| published(p).is_some_and(|a| a.has_access)).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| published(p).map_or(0, |a| a.amount_refunded)).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.cause.as_deref()).collect::<Vec<_>>())
        .bind(purchases.iter().map(|p| p.purchase.checkout_created).collect::<Vec<_>>())
        .bind(owed.iter().map(|o| o.checkout_session_id.as_str()).collect::<Vec<_>>())
        .bind(owed.iter().map(|o| o.payment_intent_id.as_str()).collect::<Vec<_>>())
        .bind(owed.iter().map(|o| idempotency_key(&o.checkout_session_id)).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.checkout_session_id.as_str()).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.kind.as_str()).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.access.status.as_str()).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.access.has_access).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.access.amount_refunded).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.cause.as_str()).collect::<Vec<_>>());
    // Last, what only one of the two statements takes.
    let query = match absent {
        None => query
            .bind(facts.iter().map(|f| f.reversal.kind().as_str()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.reversal.object_id.as_str()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.reversal.status.as_str()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.reversal.amount).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.reversal.complete()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.reversal.currency.as_deref()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.reversal.payment_intent_id.as_deref()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.reversal.charge_id.as_deref()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.event_id.as_str()).collect::<Vec<_>>())
            .bind(facts.iter().map(|f| f.created).collect::<Vec<_>>()),
        Some(keys) => {
            let keys = KeyArrays::of(keys);
            query.bind(keys.checkout_payments).bind(keys.users).bind(keys.courses)
        }
    };
    let (raised,) = query.fetch_one(&mut *connection).await?;
    Ok(raised)
}

/// Whether `error` is a fresh write meeting an event or session already
/// stored: the batch is then loaded and decided again.
pub(super) fn is_stored_key(error: &WriteError) -> bool {
    match error {
        WriteError::Database(error) => {
            error.as_database_error().is_some_and(|error| error.is_unique_violation())
        }
        _ => false,
    }
}

/// The write of a batch decided from a load: an event or purchase stored
/// under the same key is updated as decided.
pub(super) static SAVE: LazyLock<String> = LazyLock::new(|| statement(false));

/// The write of a batch decided without a load, which names no payment or
/// charge (so has no facts): nothing may be stored for its keys. Its
/// payments' facts and its families are looked up; an event or purchase
/// already stored fails the statement on its unique index.
pub(super) static SAVE_FRESH: LazyLock<String> = LazyLock::new(|| statement(true));

/// The write: raises the counter from the value the load read (and, for a
/// batch decided without a load, only if nothing is stored for its
/// payments and families: what a load would have found), then, joined
/// to that raise so that nothing is written when it matched no row, the
/// event rows (a row given the status `received` is one settled before:
/// only its deliveries count, and a body that differs is kept aside), the
/// purchases as decided, the new facts, the refunds owed, and the change
/// rows in publishing order; the counter as raised.
///
/// `fresh` is a batch decided without a load: the raise also makes
/// [`ABSENT`]'s lookups, and there are no facts and no conflict clauses.
/// A loaded batch meets rows stored under its keys in the conflict clauses
/// and inserts its new [`FACTS`].
fn statement(fresh: bool) -> String {
    let (absent, events_on_conflict, purchases_on_conflict, facts) =
        if fresh { (ABSENT, "", "", "") } else { ("", EVENTS_ON_CONFLICT, PURCHASES_ON_CONFLICT, FACTS) };
    format!(
        "
WITH raised AS (
    UPDATE purchase_feed SET writes = writes + 1 WHERE writes = $1{absent}
    RETURNING writes
), events AS (
    INSERT INTO stripe_webhook_events AS e (event_id, event_type, livemode, api_version,
        checkout_session_id, status, error, payload, conflicting_payload, delivery_count,
        stripe_created_at, received_at, last_received_at, processed_at, settled_by,
        reversed_payment_intent_id, reversed_charge_id)
    SELECT i.event_id, i.event_type, i.livemode, i.api_version, i.session, i.status,
        i.error::json, i.payload, NULL, i.deliveries, i.created, $2, $2, $2, NULL, i.pi, i.charge
    FROM unnest($3::text[], $4::text[], $5::bool[], $6::text[], $7::text[], $8::text[],
        $9::text[], $10::text[], $11::int4[], $12::int8[], $13::text[], $14::text[])
        AS i(event_id, event_type, livemode, api_version, session, status, error, payload,
            deliveries, created, pi, charge)
    CROSS JOIN raised
{events_on_conflict}), purchases AS (
    INSERT INTO course_purchases AS p (user_id, course_id, stripe_checkout_session_id,
        stripe_payment_intent_id, amount_total, currency, status, source, needs_refund,
        created_at, updated_at, access_status, has_access, amount_refunded, access_cause,
        checkout_created)
    SELECT c.user_id, c.course_id, c.session, c.pi, c.amount_total, c.currency, c.status,
        c.source, c.needs_refund, $2, $2, c.access_status, c.has_access, c.amount_refunded, c.cause,
        c.checkout_created
    FROM unnest($15::text[], $16::text[], $17::text[], $18::text[], $19::int8[], $20::text[],
        $21::text[], $22::text[], $23::bool[], $24::text[], $25::bool[], $26::int8[], $27::text[],
        $28::int8[])
        AS c(user_id, course_id, session, pi, amount_total, currency, status, source,
            needs_refund, access_status, has_access, amount_refunded, cause, checkout_created)
    CROSS JOIN raised
    ORDER BY c.session
{purchases_on_conflict}    RETURNING id, stripe_checkout_session_id
{facts}), owed AS (
    INSERT INTO refund_requests (checkout_session_id, payment_intent_id, idempotency_key, status,
        stripe_refund_id, attempts, next_attempt_at, claimed_until, last_error, created_at, updated_at)
    SELECT o.session, o.pi, o.key, 'pending', NULL, 0, $2, NULL, NULL, $2, $2
    FROM unnest($29::text[], $30::text[], $31::text[]) AS o(session, pi, key)
    CROSS JOIN raised
    ON CONFLICT (checkout_session_id) DO NOTHING
), changes AS (
    INSERT INTO purchase_changes (purchase_id, kind, status, has_access, amount_refunded,
        cause_event_id, at)
    SELECT p.id, c.kind, c.status, c.has_access, c.amount_refunded, c.cause, $2
    FROM unnest($32::text[], $33::text[], $34::text[], $35::bool[], $36::int8[], $37::text[])
        WITH ORDINALITY AS c(session, kind, status, has_access, amount_refunded, cause, n)
    JOIN purchases p ON p.stripe_checkout_session_id = c.session
    ORDER BY c.n
)
SELECT (SELECT writes FROM raised)"
    )
}

/// The lookups of a batch decided without a load: no fact of a payment it
/// may create, and no purchase of its families.
const ABSENT: &str = "
    AND NOT EXISTS (SELECT 1 FROM unnest($38::text[]) AS k(pi)
        CROSS JOIN LATERAL (SELECT 1 FROM payment_reversals WHERE payment_intent_id = k.pi OFFSET 0) r)
    AND NOT EXISTS (SELECT 1 FROM unnest($39::text[], $40::text[]) AS k(user_id, course_id)
        CROSS JOIN LATERAL (SELECT 1 FROM course_purchases
            WHERE user_id = k.user_id AND course_id = k.course_id OFFSET 0) p)";

/// The new facts (a loaded batch's: only refunds and disputes, which name
/// their payment, make them).
const FACTS: &str = "
), facts AS (
    INSERT INTO payment_reversals (kind, object_id, status, amount, complete, currency,
        payment_intent_id, charge_id, event_id, stripe_created_at, recorded_at)
    SELECT f.kind, f.object_id, f.status, f.amount, f.complete, f.currency, f.pi, f.charge,
        f.event_id, f.created, $2
    FROM unnest($38::text[], $39::text[], $40::text[], $41::int8[], $42::bool[], $43::text[],
        $44::text[], $45::text[], $46::text[], $47::int8[])
        AS f(kind, object_id, status, amount, complete, currency, pi, charge, event_id, created)
    CROSS JOIN raised
    ON CONFLICT (object_id, status, amount) DO NOTHING
";

/// A stored event met again.
const EVENTS_ON_CONFLICT: &str = "
    ON CONFLICT (event_id) DO UPDATE SET
        delivery_count = e.delivery_count + excluded.delivery_count,
        last_received_at = CASE WHEN excluded.delivery_count > 0 THEN excluded.last_received_at
            ELSE e.last_received_at END,
        conflicting_payload = CASE WHEN e.payload = excluded.payload OR e.payload = '' THEN e.conflicting_payload
            WHEN excluded.status = 'received' THEN excluded.payload ELSE e.payload END,
        status = CASE WHEN excluded.status = 'received' THEN e.status ELSE excluded.status END,
        error = CASE WHEN excluded.status = 'received' THEN e.error ELSE excluded.error END,
        processed_at = CASE WHEN excluded.status = 'received' THEN e.processed_at ELSE excluded.processed_at END,
        event_type = CASE WHEN excluded.status = 'received' THEN e.event_type ELSE excluded.event_type END,
        livemode = CASE WHEN excluded.status = 'received' THEN e.livemode ELSE excluded.livemode END,
        api_version = CASE WHEN excluded.status = 'received' THEN e.api_version ELSE excluded.api_version END,
        checkout_session_id = CASE WHEN excluded.status = 'received' THEN e.checkout_session_id
            ELSE excluded.checkout_session_id END,
        payload = CASE WHEN excluded.status = 'received' THEN e.payload ELSE excluded.payload END,
        stripe_created_at = CASE WHEN excluded.status = 'received' THEN e.stripe_created_at
            ELSE excluded.stripe_created_at END,
        reversed_payment_intent_id = CASE WHEN excluded.status = 'received' THEN e.reversed_payment_intent_id
            ELSE excluded.reversed_payment_intent_id END,
        reversed_charge_id = CASE WHEN excluded.status = 'received' THEN e.reversed_charge_id
            ELSE excluded.reversed_charge_id END
";

/// A stored purchase decided again.
const PURCHASES_ON_CONFLICT: &str = "
    ON CONFLICT (stripe_checkout_session_id) DO UPDATE SET
        stripe_payment_intent_id = excluded.stripe_payment_intent_id,
        amount_total = excluded.amount_total, currency = excluded.currency,
        status = excluded.status, needs_refund = excluded.needs_refund,
        updated_at = excluded.updated_at, access_status = excluded.access_status,
        has_access = excluded.has_access, amount_refunded = excluded.amount_refunded,
        access_cause = excluded.access_cause, checkout_created = excluded.checkout_created
";
