//! Group commit on PostgreSQL: a whole batch in one statement.
//!
//! [`events::record_settled`] and [`purchases::advance_all`] inside a
//! transaction cost four round trips per batch (BEGIN, two upserts, COMMIT),
//! and under load those round trips, not the rows, were most of a batch's
//! time. Here both upserts, and the insert of the change rows they make,
//! are data-modifying CTEs of one statement, which PostgreSQL runs as its
//! own transaction: all of it or nothing, one round trip. The rows it writes
//! are exactly those of the two upserts and of [`super::feed::publish`]: see their
//! docs for the conflict rules, repeated here in SQL.
//!
//! The statement only takes batches of checkouts, whose changes are simple:
//! a purchase it writes moved up to pending, failed or paid, and is no
//! second payment (that fails the unique index). It takes the feed's lock
//! before its change rows take cursors, as `publish` does. Each change row
//! takes its cause from the purchase upsert's `RETURNING` (`access_cause`,
//! set from the candidate written) rather than from a join of the upserted
//! rows back to the candidates, which cost a batch more than the change rows
//! themselves. The one case it cannot decide, a purchase whose payment
//! already has refunds or disputes recorded (they arrived first), makes it
//! fail on purpose, and the batch goes the per-event way like any other
//! failed batch. Batches with refunds or disputes are applied by the
//! transaction path in [`crate::fulfil::batch`].
//!
//! Columns are bound as arrays and expanded with `unnest`, so the statement
//! text never changes with the batch size: it is built once per process and
//! prepared once per connection, and the payloads are bound straight from
//! the events without another copy.
//!
//! Each group-commit worker sends its statements over a connection of its
//! own ([`Writer`]) rather than one borrowed from the pool per batch: sqlx
//! checks a pooled connection with a round trip when it is taken and
//! another when it is given back, which would make one round trip three.
//!
//! [`events::record_settled`]: super::events::record_settled
//! [`purchases::advance_all`]: super::purchases::advance_all

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::sqlx::{self, ConnectOptions, Connection, PgConnection, PgPool};
use sea_orm::{DbErr, RuntimeErr};

use payments_domain::changes;
use payments_domain::event::EventStatus;
use payments_domain::purchase::{NewPurchase, PurchaseStatus};
use payments_domain::reversals::AccessStatus;

use super::events::{Settled, SettledRow};
use super::feed::FEED_LOCK;

/// A purchase that `event_id` writes at `status` if this batch applies it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub event_id: &'a str,
    pub purchase: &'a NewPurchase,
    pub status: PurchaseStatus,
}

/// A connection left unused this long is pinged before its next batch, so
/// that one dropped while traffic was quiet (a database restart, an idle
/// timeout on the way) is replaced instead of failing that batch.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A group-commit worker's own connection, opened with the pool's options
/// but outside it, so that workers never compete with verify and the
/// per-event path for pooled connections (a deployment needs one
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

    /// Records and settles `batch`, writes the purchases of the events it
    /// applies (each candidate of an event in `batch`) and publishes their
    /// changes, in one statement; returns who settled each event, as
    /// [`events::record_settled`](super::events::record_settled) does, and
    /// how many changes were published.
    ///
    /// `batch` names each event once, in the order its rows are to be
    /// locked; `token` is unique to the call. Of several candidates for one
    /// session among the applied events, the one with the higher status is
    /// written (what applying them in either order would leave). Fails as a
    /// whole, with nothing written, when a purchase would be a second paid
    /// one of a course, or when reversal facts already reach a purchase it
    /// writes: both need the per-event path.
    pub async fn settle_and_fulfil(
        &mut self,
        batch: &[Settled<'_>],
        candidates: &[Candidate<'_>],
        token: i64,
        now: DateTime<Utc>,
    ) -> Result<(Vec<SettledRow>, u64), DbErr> {
        let connection = self.connection().await.map_err(query_error)?;
        let result = settle_and_fulfil(connection, batch, candidates, token, now).await;
        match &result {
            Ok(_) => self.last_used = Instant::now(),
            Err(_) => self.connection = None,
        }
        result.map_err(query_error)
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
            None => self.pool.connect_options().connect().await?,
        };
        Ok(self.connection.insert(connection))
    }
}

fn query_error(error: sqlx::Error) -> DbErr {
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(error)))
}

async fn settle_and_fulfil(
    connection: &mut PgConnection,
    batch: &[Settled<'_>],
    candidates: &[Candidate<'_>],
    token: i64,
    now: DateTime<Utc>,
) -> Result<(Vec<SettledRow>, u64), sqlx::Error> {
    let errors: Vec<Option<String>> =
        batch.iter().map(|item| item.error.map(serde_json::Value::to_string)).collect();
    let query = sqlx::query_as::<_, (String, Option<i64>, i64)>(STATEMENT.as_str())
        .bind(batch.iter().map(|item| item.event.id.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|item| item.event.event_type.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|item| item.event.livemode).collect::<Vec<_>>())
        .bind(batch.iter().map(|item| item.event.api_version.as_deref()).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|item| item.event.session.as_ref().map(|session| session.id.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|item| item.status.as_str()).collect::<Vec<_>>())
        .bind(errors)
        .bind(batch.iter().map(|item| item.event.payload.as_str()).collect::<Vec<_>>())
        .bind(batch.iter().map(|item| item.deliveries).collect::<Vec<_>>())
        .bind(batch.iter().map(|item| item.event.created).collect::<Vec<_>>())
        .bind(now)
        .bind(token)
        .bind(candidates.iter().map(|c| c.event_id).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.purchase.user_id.as_str()).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.purchase.course_id.as_str()).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.purchase.checkout_session_id.as_str()).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.purchase.payment_intent_id.as_deref()).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.purchase.amount_total).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.purchase.currency.as_deref()).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.status.as_str()).collect::<Vec<_>>())
        .bind(candidates.iter().map(|c| c.purchase.source.as_str()).collect::<Vec<_>>())
        .bind(FEED_LOCK);
    let rows = query.fetch_all(connection).await?;
    let published = rows.first().map_or(0, |(_, _, published)| u64::try_from(*published).unwrap_or(0));
    let rows =
        rows.into_iter().map(|(event_id, settled_by, _)| SettledRow { event_id, settled_by }).collect();
    Ok((rows, published))
}

/// The statement, built once.
static STATEMENT: LazyLock<String> = LazyLock::new(statement);

/// The statement, with the status names, ranks and change kinds spelled
/// from the Rust enums so that the two cannot disagree.
fn statement() -> String {
    let settled_for_good =
        [EventStatus::Processed, EventStatus::Ignored].map(|status| format!("'{status}'")).join(", ");
    let unless_settled = |column: &str| {
        format!("CASE WHEN e.status IN ({settled_for_good}) THEN e.{column} ELSE excluded.{column} END")
    };
    let (status, error, processed_at, settled_by) = (
        unless_settled("status"),
        unless_settled("error"),
        unless_settled("processed_at"),
        unless_settled("settled_by"),
    );
    // As `events::keep_the_applied_body`: the row follows the applied body,
    // and a differing body is kept for the operator.
    let applied_body: String =
        ["event_type", "livemode", "api_version", "checkout_session_id", "payload", "stripe_created_at"]
            .map(|column| format!(", {column} = {}", unless_settled(column)))
            .concat();
    let conflicting = format!(
        "CASE WHEN e.payload = excluded.payload OR e.payload = '' THEN e.conflicting_payload \
         WHEN e.status IN ({settled_for_good}) THEN excluded.payload ELSE e.payload END"
    );
    let rank = |status: &str| {
        let arms: String =
            PurchaseStatus::ALL.iter().map(|each| format!(" WHEN '{each}' THEN {}", each.rank())).collect();
        format!("(CASE {status}{arms} ELSE 0 END)")
    };
    let (rank_candidate, rank_stored, rank_excluded) =
        (rank("c.status"), rank("p.status"), rank("excluded.status"));
    let paid = PurchaseStatus::Paid;
    let kind_arms: String = PurchaseStatus::ALL
        .iter()
        .filter_map(|each| {
            let status: AccessStatus = each.as_str().parse().ok()?;
            Some(format!(" WHEN '{each}' THEN '{}'", changes::kind_of_checkout(status)?))
        })
        .collect();
    format!(
        "WITH settled AS (
            INSERT INTO stripe_webhook_events AS e (event_id, event_type, livemode, api_version,
                checkout_session_id, status, error, payload, delivery_count, stripe_created_at,
                received_at, last_received_at, processed_at, settled_by)
            SELECT event_id, event_type, livemode, api_version, checkout_session_id, status,
                error::json, payload, delivery_count, stripe_created_at,
                $11::timestamptz, $11::timestamptz, $11::timestamptz, $12::int8
            FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::int4[], $10::int8[])
                AS i(event_id, event_type, livemode, api_version, checkout_session_id, status,
                    error, payload, delivery_count, stripe_created_at)
            ON CONFLICT (event_id) DO UPDATE SET
                delivery_count = e.delivery_count + excluded.delivery_count,
                last_received_at = excluded.last_received_at,
                status = {status}, error = {error}, processed_at = {processed_at},
                settled_by = {settled_by}{applied_body}, conflicting_payload = {conflicting}
            RETURNING event_id, settled_by
        ), chosen AS (
            SELECT DISTINCT ON (c.session_id) c.event_id, c.user_id, c.course_id, c.session_id,
                c.payment_intent_id, c.amount_total, c.currency, c.status, c.source
            FROM unnest($13::text[], $14::text[], $15::text[], $16::text[], $17::text[],
                $18::int8[], $19::text[], $20::text[], $21::text[])
                AS c(event_id, user_id, course_id, session_id, payment_intent_id, amount_total,
                    currency, status, source)
            JOIN settled s ON s.event_id = c.event_id AND s.settled_by = $12::int8
            ORDER BY c.session_id, {rank_candidate} DESC
        ), written AS (
            INSERT INTO course_purchases AS p (user_id, course_id, stripe_checkout_session_id,
                stripe_payment_intent_id, amount_total, currency, status, source, needs_refund,
                created_at, updated_at, access_status, has_access, amount_refunded, access_cause)
            SELECT c.user_id, c.course_id, c.session_id, c.payment_intent_id, c.amount_total,
                c.currency, c.status, c.source, false, $11::timestamptz, $11::timestamptz,
                c.status, c.status = '{paid}', 0, c.event_id
            FROM chosen c
            ORDER BY c.session_id
            ON CONFLICT (stripe_checkout_session_id) DO UPDATE SET
                status = excluded.status, needs_refund = excluded.needs_refund,
                updated_at = excluded.updated_at,
                stripe_payment_intent_id = COALESCE(excluded.stripe_payment_intent_id, p.stripe_payment_intent_id),
                amount_total = COALESCE(excluded.amount_total, p.amount_total),
                currency = COALESCE(excluded.currency, p.currency),
                access_status = excluded.access_status, has_access = excluded.has_access,
                amount_refunded = excluded.amount_refunded, access_cause = excluded.access_cause
            WHERE {rank_stored} < {rank_excluded}
            RETURNING id, stripe_payment_intent_id, status, has_access, access_cause
        ), feed_lock AS MATERIALIZED (
            SELECT pg_advisory_xact_lock($22::int8)
        ), changed AS (
            INSERT INTO purchase_changes (purchase_id, kind, status, has_access, amount_refunded,
                cause_event_id, at)
            SELECT w.id, CASE w.status{kind_arms} END, w.status, w.has_access, 0, w.access_cause,
                $11::timestamptz
            FROM written w
            CROSS JOIN feed_lock
            RETURNING purchase_id
        ), needs_fold AS MATERIALIZED (
            SELECT CAST('purchase of ' || w.stripe_payment_intent_id
                || ' has refunds or disputes: apply per event' AS int) AS refused
            FROM written w
            WHERE EXISTS (SELECT 1 FROM payment_reversals r
                WHERE r.payment_intent_id = w.stripe_payment_intent_id)
        )
        SELECT event_id, settled_by, (SELECT count(*) FROM changed) AS published
        FROM settled
        WHERE (SELECT max(refused) FROM needs_fold) IS NULL"
    )
}
