//! The write path on PostgreSQL in two statements: one loads what a batch
//! touches, the other writes what the domain decided.
//!
//! A transaction around load, decision and write would hold the write lock
//! across four round trips (begin, load, write, commit) for every batch,
//! and round trips, not rows, are most of a batch's time under load. So
//! the two statements run on their own, and the write is optimistic: the
//! load also reads `purchase_feed.writes`, and the write statement first
//! raises it from exactly that value. When another writer committed in
//! between, the raise matches no row, every insert of the statement (each
//! joined to the raise) writes nothing, and the batch is loaded and decided
//! again. Raising the counter takes its row's lock until the statement
//! commits, so writers still commit one at a time, and the change rows
//! take their cursors under that lock, in commit order.
//!
//! Every array is bound whole and expanded with `unnest`, so the texts
//! never change with the batch's size: each is prepared once per
//! connection. Nothing here decides: the statements carry the domain's
//! [`Decision`] into rows.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use payments_domain::event::EventStatus;
use payments_domain::purchase::{NewPurchase, PurchaseSource, PurchaseStatus};
use payments_domain::reversals::{Access, AccessStatus, Reversal, ReversalKind, ReversalStatus};
use payments_domain::rules::Policy;
use payments_domain::write::{self, Decision, Input, Keys, Stored, StoredPurchase};
use sea_orm::sqlx::{self, ConnectOptions, Connection, PgConnection, PgPool};
use serde::Deserialize;

use super::refund_requests::idempotency_key;

/// Attempts before a batch gives up on finding the state unchanged; each
/// one loses only to a batch that committed meanwhile.
const ATTEMPTS: usize = 20;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A stored value the domain does not know: a newer version's, or a
    /// damaged row.
    #[error("stored value: {0}")]
    Stored(String),
    #[error("other writers committed before this batch {ATTEMPTS} times in a row")]
    Contended,
}

/// Loads, decides and writes `inputs`, again while another writer
/// committed in between; the decision written.
pub async fn apply<'a>(
    connection: &mut PgConnection,
    inputs: &[Input<'a>],
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<Decision<'a>, WriteError> {
    let keys = write::keys(inputs, policy);
    for _ in 0..ATTEMPTS {
        let (writes, stored) = load(connection, &keys).await?;
        let decision = write::decide(inputs, &stored, policy);
        if save(connection, &decision, writes, now).await? {
            return Ok(decision);
        }
    }
    Err(WriteError::Contended)
}

/// A connection left unused this long is pinged before its next batch, so
/// that one dropped while traffic was quiet (a database restart, an idle
/// timeout on the way) is replaced instead of failing that batch.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A group-commit worker's own connection, opened with the pool's options
/// but outside it: sqlx checks a pooled connection with a round trip when it
/// is taken, which would add a third to a batch's two, and workers then
/// never compete with verify for pooled connections (a deployment needs one
/// connection per worker on top of the pool).
///
/// Opened on the first batch; after a failed statement it is closed, since
/// the connection itself may be what failed, and the next batch opens a new
/// one.
#[derive(Debug)]
pub struct Writer {
    pool: PgPool,
    connection: Option<PgConnection>,
    last_used: Instant,
}

impl Writer {
    /// A writer connecting as `pool` does.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, connection: None, last_used: Instant::now() }
    }

    /// [`apply`] over the writer's connection.
    pub async fn apply<'a>(
        &mut self,
        inputs: &[Input<'a>],
        policy: Policy,
        now: DateTime<Utc>,
    ) -> Result<Decision<'a>, WriteError> {
        let connection = self.connection().await?;
        let result = apply(connection, inputs, policy, now).await;
        match &result {
            Ok(_) => self.last_used = Instant::now(),
            Err(_) => self.connection = None,
        }
        result
    }

    /// The open connection, pinged first if it has been idle; else a new one.
    async fn connection(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let idle = self.last_used.elapsed() > IDLE_CHECK;
        let open = match self.connection.take() {
            Some(mut connection) if idle => connection.ping().await.ok().map(|()| connection),
            open => open,
        };
        let connection = match open {
            Some(connection) => connection,
            None => {
                let mut connection = self.pool.connect_options().connect().await?;
                // The statements' plans do not depend on their arrays'
                // contents: plan them once, not on every batch.
                sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut connection).await?;
                connection
            }
        };
        Ok(self.connection.insert(connection))
    }
}

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
async fn load(connection: &mut PgConnection, keys: &Keys) -> Result<(i64, Stored), WriteError> {
    fn strings(set: &std::collections::BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }
    let (users, courses): (Vec<&str>, Vec<&str>) =
        keys.families.iter().map(|(user, course)| (user.as_str(), course.as_str())).unzip();
    let rows: Vec<(String,)> = sqlx::query_as(LOAD)
        .bind(strings(&keys.event_ids))
        .bind(strings(&keys.sessions))
        .bind(strings(&keys.payment_intents))
        .bind(strings(&keys.charges))
        .bind(users)
        .bind(courses)
        .bind(strings(&keys.checkout_payments))
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
const LOAD: &str = "
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
    'amount_refunded', amount_refunded, 'access_cause', access_cause)::text
FROM ps
UNION ALL
SELECT json_build_object('k', 'f', 'kind', kind, 'object_id', object_id, 'status', status,
    'amount', amount, 'currency', currency, 'payment_intent', payment_intent_id,
    'charge', charge_id)::text
FROM facts";

/// Writes `decision` if the write counter is still `writes`; whether it did.
async fn save(
    connection: &mut PgConnection,
    decision: &Decision<'_>,
    writes: i64,
    now: DateTime<Utc>,
) -> Result<bool, WriteError> {
    let events = &decision.events;
    let settled = |event: &write::EventWrite<'_>| event.settle.as_ref().map(|(status, _)| *status);
    let purchases = &decision.purchases;
    let published = |write: &write::PurchaseWrite| write.published;
    let facts = &decision.facts;
    let owed = &decision.refunds_owed;
    let changes = &decision.changes;
    let query = sqlx::query_as::<_, (i64,)>(SAVE)
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
        .bind(facts.iter().map(|f| f.reversal.kind().as_str()).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.reversal.object_id.as_str()).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.reversal.status.as_str()).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.reversal.amount).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.reversal.complete()).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.reversal.currency.as_deref()).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.reversal.payment_intent_id.as_deref()).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.reversal.charge_id.as_deref()).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.event_id.as_str()).collect::<Vec<_>>())
        .bind(facts.iter().map(|f| f.created).collect::<Vec<_>>())
        .bind(owed.iter().map(|o| o.checkout_session_id.as_str()).collect::<Vec<_>>())
        .bind(owed.iter().map(|o| o.payment_intent_id.as_str()).collect::<Vec<_>>())
        .bind(owed.iter().map(|o| idempotency_key(&o.checkout_session_id)).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.checkout_session_id.as_str()).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.kind.as_str()).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.access.status.as_str()).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.access.has_access).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.access.amount_refunded).collect::<Vec<_>>())
        .bind(changes.iter().map(|c| c.cause.as_str()).collect::<Vec<_>>());
    let (applied,) = query.fetch_one(&mut *connection).await?;
    Ok(applied > 0)
}

/// The write: raises the counter from the value the load read, then, joined
/// to that raise so that nothing is written when it matched no row, the
/// event rows (a row given the status `received` is one settled before:
/// only its deliveries count, and a body that differs is kept aside), the
/// purchases as decided, the new facts, the refunds owed, and the change
/// rows in publishing order.
const SAVE: &str = "
WITH raised AS (
    UPDATE purchase_feed SET writes = writes + 1 WHERE writes = $1 RETURNING writes
), events AS (
    INSERT INTO stripe_webhook_events AS e (event_id, event_type, livemode, api_version,
        checkout_session_id, status, error, payload, conflicting_payload, delivery_count,
        stripe_created_at, received_at, last_received_at, processed_at, settled_by)
    SELECT i.event_id, i.event_type, i.livemode, i.api_version, i.session, i.status,
        i.error::json, i.payload, NULL, i.deliveries, i.created, $2, $2, $2, NULL
    FROM unnest($3::text[], $4::text[], $5::bool[], $6::text[], $7::text[], $8::text[],
        $9::text[], $10::text[], $11::int4[], $12::int8[])
        AS i(event_id, event_type, livemode, api_version, session, status, error, payload,
            deliveries, created)
    CROSS JOIN raised
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
            ELSE excluded.stripe_created_at END
), purchases AS (
    INSERT INTO course_purchases AS p (user_id, course_id, stripe_checkout_session_id,
        stripe_payment_intent_id, amount_total, currency, status, source, needs_refund,
        created_at, updated_at, access_status, has_access, amount_refunded, access_cause)
    SELECT c.user_id, c.course_id, c.session, c.pi, c.amount_total, c.currency, c.status,
        c.source, c.needs_refund, $2, $2, c.access_status, c.has_access, c.amount_refunded, c.cause
    FROM unnest($13::text[], $14::text[], $15::text[], $16::text[], $17::int8[], $18::text[],
        $19::text[], $20::text[], $21::bool[], $22::text[], $23::bool[], $24::int8[], $25::text[])
        AS c(user_id, course_id, session, pi, amount_total, currency, status, source,
            needs_refund, access_status, has_access, amount_refunded, cause)
    CROSS JOIN raised
    ORDER BY c.session
    ON CONFLICT (stripe_checkout_session_id) DO UPDATE SET
        stripe_payment_intent_id = excluded.stripe_payment_intent_id,
        amount_total = excluded.amount_total, currency = excluded.currency,
        status = excluded.status, needs_refund = excluded.needs_refund,
        updated_at = excluded.updated_at, access_status = excluded.access_status,
        has_access = excluded.has_access, amount_refunded = excluded.amount_refunded,
        access_cause = excluded.access_cause
    RETURNING id, stripe_checkout_session_id
), facts AS (
    INSERT INTO payment_reversals (kind, object_id, status, amount, complete, currency,
        payment_intent_id, charge_id, event_id, stripe_created_at, recorded_at)
    SELECT f.kind, f.object_id, f.status, f.amount, f.complete, f.currency, f.pi, f.charge,
        f.event_id, f.created, $2
    FROM unnest($26::text[], $27::text[], $28::text[], $29::int8[], $30::bool[], $31::text[],
        $32::text[], $33::text[], $34::text[], $35::int8[])
        AS f(kind, object_id, status, amount, complete, currency, pi, charge, event_id, created)
    CROSS JOIN raised
    ON CONFLICT (object_id, status, amount) DO NOTHING
), owed AS (
    INSERT INTO refund_requests (checkout_session_id, payment_intent_id, idempotency_key, status,
        stripe_refund_id, attempts, next_attempt_at, claimed_until, last_error, created_at, updated_at)
    SELECT o.session, o.pi, o.key, 'pending', NULL, 0, $2, NULL, NULL, $2, $2
    FROM unnest($36::text[], $37::text[], $38::text[]) AS o(session, pi, key)
    CROSS JOIN raised
    ON CONFLICT (checkout_session_id) DO NOTHING
), changes AS (
    INSERT INTO purchase_changes (purchase_id, kind, status, has_access, amount_refunded,
        cause_event_id, at)
    SELECT p.id, c.kind, c.status, c.has_access, c.amount_refunded, c.cause, $2
    FROM unnest($39::text[], $40::text[], $41::text[], $42::bool[], $43::int8[], $44::text[])
        WITH ORDINALITY AS c(session, kind, status, has_access, amount_refunded, cause, n)
    JOIN purchases p ON p.stripe_checkout_session_id = c.session
    ORDER BY c.n
)
SELECT count(*) FROM raised";

/// A sqlx error as sea-orm reports it, for callers that speak [`sea_orm::DbErr`].
pub fn db_error(error: WriteError) -> sea_orm::DbErr {
    match error {
        WriteError::Database(error) => {
            sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(error)))
        }
        WriteError::Stored(message) => sea_orm::DbErr::Type(message),
        WriteError::Contended => sea_orm::DbErr::Custom(WriteError::Contended.to_string()),
    }
}
