//! The load: everything a batch touches, and the write counter, in one
//! statement.

use payments_domain::purchase::{NewPurchase, PurchaseSource, PurchaseStatus};
use payments_domain::reversals::{Access, AccessStatus, Reversal, ReversalKind, ReversalStatus};
use payments_domain::write::{Keys, Stored, StoredPurchase};
use sea_orm::sqlx::{self, PgConnection};
use serde::Deserialize;

use super::{KeyArrays, WriteError};

/// One loaded row: which kind, and its columns as JSON.
#[derive(Deserialize)]
#[serde(tag = "k")]
enum Row {
    #[serde(rename = "w")]
    Writes { writes: i64 },
    #[serde(rename = "e")]
    Event { event_id: String, status: String },
    #[serde(rename = "p")]
    Purchase(PurchaseRow),
    #[serde(rename = "f")]
    Fact(FactRow),
}

#[derive(Deserialize)]
struct PurchaseRow {
    id: i64,
    user_id: String,
    course_id: String,
    session: String,
    payment_intent: Option<String>,
    amount_total: Option<i64>,
    currency: Option<String>,
    status: String,
    source: String,
    needs_refund: bool,
    access_status: Option<String>,
    has_access: bool,
    amount_refunded: i64,
    access_cause: Option<String>,
    checkout_created: Option<i64>,
}

#[derive(Deserialize)]
struct FactRow {
    kind: String,
    object_id: String,
    status: String,
    amount: i64,
    currency: Option<String>,
    payment_intent: Option<String>,
    charge: Option<String>,
}

/// Everything `keys` name, and the write counter, as of one snapshot.
pub(super) async fn load(connection: &mut PgConnection, keys: &Keys) -> Result<(i64, Stored), WriteError> {
    let keys = KeyArrays::of(keys);
    let rows: Vec<(String,)> = sqlx::query_as(LOAD)
        .bind(keys.event_ids)
        .bind(keys.sessions)
        .bind(keys.payment_intents)
        .bind(keys.charges)
        .bind(keys.users)
        .bind(keys.courses)
        .bind(keys.checkout_payments)
        .fetch_all(&mut *connection)
        .await?;
    let mut writes = None;
    let mut stored = Stored::default();
    for (json,) in rows {
        match serde_json::from_str::<Row>(&json).map_err(|error| WriteError::Stored(error.to_string()))? {
            Row::Writes { writes: count } => writes = Some(count),
            Row::Event { event_id, status } => {
                stored.events.insert(event_id, parse(&status)?);
            }
            Row::Purchase(row) => stored.purchases.push(stored_purchase(row)?),
            Row::Fact(row) => stored.facts.push(reversal(row)?),
        }
    }
    stored.purchases.sort_by_key(|purchase| purchase.id);
    let writes = writes.ok_or_else(|| WriteError::Stored("purchase_feed has no row".into()))?;
    Ok((writes, stored))
}

fn parse<T: std::str::FromStr<Err = payments_domain::names::UnknownName>>(
    name: &str,
) -> Result<T, WriteError> {
    name.parse().map_err(|error: payments_domain::names::UnknownName| WriteError::Stored(error.to_string()))
}

fn stored_purchase(row: PurchaseRow) -> Result<StoredPurchase, WriteError> {
    let published = match row.access_status {
        Some(status) => Some(Access {
            status: parse::<AccessStatus>(&status)?,
            has_access: row.has_access,
            amount_refunded: row.amount_refunded,
        }),
        None => None,
    };
    Ok(StoredPurchase {
        id: row.id,
        purchase: NewPurchase {
            source: parse::<PurchaseSource>(&row.source)?,
            user_id: row.user_id,
            course_id: row.course_id,
            checkout_session_id: row.session,
            payment_intent_id: row.payment_intent,
            amount_total: row.amount_total,
            currency: row.currency,
            checkout_created: row.checkout_created,
        },
        status: parse::<PurchaseStatus>(&row.status)?,
        needs_refund: row.needs_refund,
        published,
        cause: row.access_cause,
    })
}

fn reversal(row: FactRow) -> Result<Reversal, WriteError> {
    let kind = parse::<ReversalKind>(&row.kind)?;
    let status =
        ReversalStatus::parse(kind, &row.status).map_err(|error| WriteError::Stored(error.to_string()))?;
    Ok(Reversal {
        object_id: row.object_id,
        status,
        amount: row.amount,
        currency: row.currency,
        payment_intent_id: row.payment_intent,
        charge_id: row.charge,
    })
}

/// The load: the write counter; the batch's stored events; the purchases of
/// its sessions, of the payments its facts name (a charge through the
/// facts that tie it to one) and of its new purchases' buyers and courses,
/// with every purchase of those buyers' courses; and every fact of all of
/// those payments. One statement, so one snapshot. Each lookup is a lateral
/// subquery fenced with `OFFSET 0`, so it stays an index lookup per key
/// whatever the planner believes of a table's size: right after a start on
/// empty tables it has no statistics, and would rather scan and hash.
pub(super) const LOAD: &str = "
WITH ties AS (
    SELECT DISTINCT r.payment_intent_id AS pi FROM unnest($4::text[]) AS k(charge)
    CROSS JOIN LATERAL (SELECT payment_intent_id FROM payment_reversals
        WHERE charge_id = k.charge AND payment_intent_id IS NOT NULL OFFSET 0) r
), pis AS (
    SELECT unnest($3::text[]) AS pi UNION SELECT pi FROM ties
), families AS (
    SELECT p.user_id, p.course_id FROM unnest($2::text[]) AS k(session)
        CROSS JOIN LATERAL (SELECT user_id, course_id FROM course_purchases
            WHERE stripe_checkout_session_id = k.session OFFSET 0) p
    UNION SELECT p.user_id, p.course_id FROM pis
        CROSS JOIN LATERAL (SELECT user_id, course_id FROM course_purchases
            WHERE stripe_payment_intent_id = pis.pi OFFSET 0) p
    UNION SELECT * FROM unnest($5::text[], $6::text[])
), ps AS MATERIALIZED (
    SELECT p.* FROM families f
    CROSS JOIN LATERAL (SELECT * FROM course_purchases
        WHERE user_id = f.user_id AND course_id = f.course_id OFFSET 0) p
), fact_pis AS (
    SELECT pi FROM pis
    UNION SELECT unnest($7::text[])
    UNION SELECT stripe_payment_intent_id FROM ps WHERE stripe_payment_intent_id IS NOT NULL
), named AS MATERIALIZED (
    SELECT r.* FROM fact_pis
    CROSS JOIN LATERAL (SELECT * FROM payment_reversals WHERE payment_intent_id = fact_pis.pi OFFSET 0) r
), facts AS (
    SELECT * FROM named
    UNION SELECT r.* FROM (SELECT DISTINCT charge_id FROM named WHERE charge_id IS NOT NULL) c
    CROSS JOIN LATERAL (SELECT * FROM payment_reversals
        WHERE charge_id = c.charge_id AND payment_intent_id IS NULL OFFSET 0) r
)
SELECT json_build_object('k', 'w', 'writes', writes)::text FROM purchase_feed
UNION ALL
SELECT json_build_object('k', 'e', 'event_id', e.event_id, 'status', e.status)::text
FROM unnest($1::text[]) AS k(event_id)
CROSS JOIN LATERAL (SELECT event_id, status FROM stripe_webhook_events
    WHERE event_id = k.event_id OFFSET 0) e
UNION ALL
SELECT json_build_object('k', 'p', 'id', id, 'user_id', user_id, 'course_id', course_id,
    'session', stripe_checkout_session_id, 'payment_intent', stripe_payment_intent_id,
    'amount_total', amount_total, 'currency', currency, 'status', status, 'source', source,
    'needs_refund', needs_refund, 'access_status', access_status, 'has_access', has_access,
    'amount_refunded', amount_refunded, 'access_cause', access_cause,
    'checkout_created', checkout_created)::text
FROM ps
UNION ALL
SELECT json_build_object('k', 'f', 'kind', kind, 'object_id', object_id, 'status', status,
    'amount', amount, 'currency', currency, 'payment_intent', payment_intent_id,
    'charge', charge_id)::text
FROM facts";
