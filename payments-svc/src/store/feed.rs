//! The purchase change feed in the database: changes published in the
//! transaction that makes them (a transactional outbox), read back in
//! cursor order, and pruned after their retention.
//!
//! ## Publishing
//! A transaction that writes a purchase or a reversal fact calls
//! [`publish`] with what it touched. `publish` works out every purchase
//! whose [`Access`] that can change (the purchase, the purchases a fact
//! reaches, and their families: the same buyer's other purchases of the
//! course), computes each one's access as verify would, and writes a change
//! row for each whose access differs from what the feed last published of
//! it (kept on the purchase row). So a redelivery, a replay or a verify that
//! finds nothing new writes nothing, and every difference is written once.
//! The group-commit statement on PostgreSQL does the same for checkouts in
//! SQL ([`super::batch_pg`]).
//!
//! ## Why a reader never misses a change
//! A cursor is taken when a change row is inserted, but rows become visible
//! when their transaction commits. If two transactions could take cursors 7
//! and 8 and 8 committed first, a reader could pass 8 before 7 existed and
//! never see 7. So on PostgreSQL every transaction that publishes takes one
//! advisory lock ([`FEED_LOCK`]) before it takes cursors and holds it until
//! it has committed: cursors are handed out in commit order, and a reader
//! that sees a cursor sees every smaller one that will ever exist. SQLite
//! has one writer at a time, which is the same guarantee.
//!
//! A change depends on the purchase and on the facts of its payment, which
//! two transactions may write at once: each could miss the other's row and
//! publish from an incomplete view. Transactions that record facts therefore
//! lock `course_purchases` against writers first ([`lock_for_facts`]), and
//! purchase writers lock the rows they write; whichever comes second sees
//! what the first committed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, Statement, TransactionTrait,
};

use super::entities::{course_purchase, purchase_change, purchase_feed};
use payments_domain::changes::{self, ChangeKind};
use payments_domain::reversals::{Access, DisputeAccess};

use super::signals::FeedSignals;
use super::{lease, reversals};

/// The PostgreSQL advisory lock that orders cursors by commit; see the
/// module doc.
pub const FEED_LOCK: i64 = 0x6665_6564_6f72_6465; // "feedorde"

/// `cause_event_id` of the change that first publishes a purchase recorded
/// before the feed existed.
pub const BACKFILL: &str = "backfill";

/// What a transaction wrote that can change access.
#[derive(Debug, Clone, Copy)]
pub enum Touch<'a> {
    /// The purchase of this checkout session.
    Session(&'a str),
    /// A reversal fact of this payment, or of this charge.
    Payment { payment_intent_id: Option<&'a str>, charge_id: Option<&'a str> },
}

/// A touch and what caused it: the Stripe event id, or `verify`.
#[derive(Debug, Clone, Copy)]
pub struct Touched<'a> {
    pub touch: Touch<'a>,
    pub cause: &'a str,
}

/// One published change with its purchase, as a reader gets it.
#[derive(Debug, Clone)]
pub struct Change {
    pub change: purchase_change::Model,
    pub purchase: course_purchase::Model,
}

/// Publishes every change `touched` makes, inside the caller's transaction
/// (see the module doc); returns how many. The caller announces them with
/// [`FeedSignals::announce`] once it has committed.
pub async fn publish(
    db: &impl ConnectionTrait,
    touched: &[Touched<'_>],
    dispute_access: DisputeAccess,
    now: DateTime<Utc>,
) -> Result<usize, DbErr> {
    if touched.is_empty() {
        return Ok(0);
    }
    lock_feed(db).await?;
    let (purchases, causes) = resolve(db, touched).await?;
    let family = reversals::with_families(db, &purchases, dispute_access).await?;
    let family_cause = |purchase: &course_purchase::Model| {
        causes.get(&purchase.id).copied().or_else(|| {
            purchases
                .iter()
                .find(|p| p.user_id == purchase.user_id && p.course_id == purchase.course_id)
                .and_then(|p| causes.get(&p.id).copied())
        })
    };
    let mut published = 0;
    for (purchase, access) in &family {
        let Some(kind) = changes::kind(last_published(purchase), *access) else { continue };
        let cause = family_cause(purchase).unwrap_or(BACKFILL);
        write_change(db, purchase.id, kind, *access, cause, now).await?;
        published += 1;
    }
    Ok(published)
}

/// The purchases `touched` names directly, each with the cause of the first
/// touch that named it.
async fn resolve<'a>(
    db: &impl ConnectionTrait,
    touched: &[Touched<'a>],
) -> Result<(Vec<course_purchase::Model>, HashMap<i64, &'a str>), DbErr> {
    use course_purchase::Column;
    let charges: Vec<&str> = touched
        .iter()
        .filter_map(|t| match t.touch {
            Touch::Payment { payment_intent_id: None, charge_id } => charge_id,
            _ => None,
        })
        .collect();
    let payment_of_charge: HashMap<String, String> =
        reversals::payments_of_charges(db, &charges).await?.into_iter().collect();
    let named: Vec<(Touch<'_>, Option<&str>, &str)> = touched
        .iter()
        .map(|t| {
            let payment = match t.touch {
                Touch::Session(_) => None,
                Touch::Payment { payment_intent_id: Some(pi), .. } => Some(pi),
                Touch::Payment { payment_intent_id: None, charge_id } => {
                    charge_id.and_then(|charge| payment_of_charge.get(charge)).map(String::as_str)
                }
            };
            (t.touch, payment, t.cause)
        })
        .collect();
    let sessions: Vec<&str> = named
        .iter()
        .filter_map(|(touch, ..)| match touch {
            Touch::Session(session) => Some(*session),
            Touch::Payment { .. } => None,
        })
        .collect();
    let payments: Vec<&str> = named.iter().filter_map(|(_, payment, _)| *payment).collect();
    if sessions.is_empty() && payments.is_empty() {
        return Ok((Vec::new(), HashMap::new()));
    }
    let purchases = course_purchase::Entity::find()
        .filter(
            Condition::any()
                .add(Column::StripeCheckoutSessionId.is_in(sessions))
                .add(Column::StripePaymentIntentId.is_in(payments)),
        )
        .order_by_asc(Column::Id)
        .all(db)
        .await?;
    let mut causes = HashMap::new();
    for (touch, payment, cause) in &named {
        for purchase in &purchases {
            let reached = match touch {
                Touch::Session(session) => purchase.stripe_checkout_session_id == *session,
                Touch::Payment { .. } => purchase.stripe_payment_intent_id.as_deref() == *payment,
            };
            if reached {
                causes.entry(purchase.id).or_insert(*cause);
            }
        }
    }
    Ok((purchases, causes))
}

/// What the feed last published of `purchase`, if anything.
fn last_published(purchase: &course_purchase::Model) -> Option<Access> {
    let status = purchase.access_status?.into();
    Some(Access { status, has_access: purchase.has_access, amount_refunded: purchase.amount_refunded })
}

async fn write_change(
    db: &impl ConnectionTrait,
    purchase_id: i64,
    kind: ChangeKind,
    access: Access,
    cause: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    purchase_change::Entity::insert(purchase_change::ActiveModel {
        cursor: NotSet,
        purchase_id: Set(purchase_id),
        kind: Set(kind.into()),
        status: Set(access.status.into()),
        has_access: Set(access.has_access),
        amount_refunded: Set(access.amount_refunded),
        cause_event_id: Set(cause.to_owned()),
        at: Set(now),
    })
    .exec_without_returning(db)
    .await?;
    course_purchase::Entity::update_many()
        .col_expr(
            course_purchase::Column::AccessStatus,
            Expr::value(course_purchase::AccessStatus::from(access.status)),
        )
        .col_expr(course_purchase::Column::HasAccess, Expr::value(access.has_access))
        .col_expr(course_purchase::Column::AmountRefunded, Expr::value(access.amount_refunded))
        .col_expr(course_purchase::Column::AccessCause, Expr::value(cause))
        .filter(course_purchase::Column::Id.eq(purchase_id))
        .exec(db)
        .await
        .map(drop)
}

/// Takes [`FEED_LOCK`] on PostgreSQL, held until the transaction ends.
async fn lock_feed(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_advisory_xact_lock($1)",
        [FEED_LOCK.into()],
    ))
    .await
    .map(drop)
}

/// On PostgreSQL, locks `course_purchases` against writers (and other
/// callers of this) until the transaction ends. A transaction that records
/// reversal facts calls it first, before anything else; see the module doc.
pub async fn lock_for_facts(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    db.execute_unprepared("LOCK TABLE course_purchases IN SHARE ROW EXCLUSIVE MODE").await.map(drop)
}

/// Changes after `after`, oldest first, at most `limit`, with their
/// purchases as stored now.
pub async fn read(db: &impl ConnectionTrait, after: i64, limit: u64) -> Result<Vec<Change>, DbErr> {
    let changes = purchase_change::Entity::find()
        .filter(purchase_change::Column::Cursor.gt(after))
        .order_by_asc(purchase_change::Column::Cursor)
        .limit(limit)
        .all(db)
        .await?;
    let ids: BTreeSet<i64> = changes.iter().map(|change| change.purchase_id).collect();
    let purchases: BTreeMap<i64, course_purchase::Model> = course_purchase::Entity::find()
        .filter(course_purchase::Column::Id.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|purchase| (purchase.id, purchase))
        .collect();
    changes
        .into_iter()
        .map(|change| {
            let purchase = purchases.get(&change.purchase_id).cloned().ok_or_else(|| {
                DbErr::RecordNotFound(format!("purchase {} of a change", change.purchase_id))
            })?;
            Ok(Change { change, purchase })
        })
        .collect()
}

/// The newest cursor retention removed (0 while none was), and the oldest
/// cursor still kept.
pub async fn horizon(db: &impl ConnectionTrait) -> Result<(i64, Option<i64>), DbErr> {
    let pruned = purchase_feed::Entity::find().one(db).await?.map_or(0, |feed| feed.pruned_through);
    let oldest = purchase_change::Entity::find()
        .order_by_asc(purchase_change::Column::Cursor)
        .one(db)
        .await?
        .map(|change| change.cursor);
    Ok((pruned, oldest))
}

/// The newest cursor published so far, 0 if none.
pub async fn head(db: &impl ConnectionTrait) -> Result<i64, DbErr> {
    let newest =
        purchase_change::Entity::find().order_by_desc(purchase_change::Column::Cursor).one(db).await?;
    Ok(newest.map_or(0, |change| change.cursor))
}

/// Removes up to `chunk` of the oldest changes, those committed before
/// `cutoff`, and moves the horizon past them, in one transaction; returns
/// how many.
/// On PostgreSQL one replica prunes at a time: if another holds the prune
/// lock, this returns 0.
pub async fn prune(db: &DatabaseConnection, cutoff: DateTime<Utc>, chunk: u64) -> Result<u64, DbErr> {
    let txn = db.begin().await?;
    if db.get_database_backend() == DbBackend::Postgres && !lease::try_lock(&txn, PRUNE_LOCK).await? {
        return Ok(0);
    }
    // Oldest first by the primary key (the table's one index): changes are
    // committed in cursor order, so those past the cutoff are a prefix.
    let oldest = purchase_change::Entity::find()
        .order_by_asc(purchase_change::Column::Cursor)
        .limit(chunk)
        .all(&txn)
        .await?;
    let expired = oldest.iter().take_while(|change| change.at < cutoff).last();
    let Some(through) = expired.map(|change| change.cursor) else {
        return Ok(0);
    };
    let removed = purchase_change::Entity::delete_many()
        .filter(purchase_change::Column::Cursor.lte(through))
        .exec(&txn)
        .await?
        .rows_affected;
    purchase_feed::Entity::update_many()
        .col_expr(purchase_feed::Column::PrunedThrough, Expr::value(through))
        .filter(purchase_feed::Column::PrunedThrough.lt(through))
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(removed)
}

/// The PostgreSQL advisory lock one pruning replica holds.
const PRUNE_LOCK: i64 = 0x6665_6564_7072_756e; // "feedprun"

/// Publishes, once, up to `chunk` purchases recorded before the feed existed
/// (nothing published of them yet), with [`BACKFILL`] as their cause;
/// returns how many purchases it looked at.
pub async fn backfill(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    dispute_access: DisputeAccess,
    chunk: u64,
) -> Result<usize, DbErr> {
    let txn = db.begin().await?;
    let unpublished = course_purchase::Entity::find()
        .filter(course_purchase::Column::AccessStatus.is_null())
        .order_by_asc(course_purchase::Column::Id)
        .limit(chunk)
        .all(&txn)
        .await?;
    let touched: Vec<Touched<'_>> = unpublished
        .iter()
        .map(|p| Touched { touch: Touch::Session(&p.stripe_checkout_session_id), cause: BACKFILL })
        .collect();
    let published = publish(&txn, &touched, dispute_access, Utc::now()).await?;
    txn.commit().await?;
    if published > 0 {
        signals.announce();
    }
    Ok(unpublished.len())
}
