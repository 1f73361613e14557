//! The purchase change feed in the database: changes published in the
//! transaction that makes them (a transactional outbox), read back in
//! cursor order, and pruned after their retention.
//!
//! ## Publishing
//! Change rows are written by the one write path ([`super::write`]), in the
//! transaction that makes the change, under the lock that orders cursors by
//! commit: a reader that sees a cursor sees every smaller one that will
//! ever exist. The domain decides what a change is
//! ([`payments_domain::changes`]).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use payments_domain::rules::Policy;
use payments_domain::write::{BACKFILL, Input};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use super::entities::{course_purchase, purchase_change, purchase_feed};
use super::signals::FeedSignals;
use super::{lease, write};

/// One published change with its purchase, as a reader gets it.
#[derive(Debug, Clone)]
pub struct Change {
    pub change: purchase_change::Model,
    pub purchase: course_purchase::Model,
}

/// [`read`]'s first query: the changes after `after`, oldest first.
pub fn changes_query(after: i64, limit: u64) -> sea_orm::Select<purchase_change::Entity> {
    purchase_change::Entity::find()
        .filter(purchase_change::Column::Cursor.gt(after))
        .order_by_asc(purchase_change::Column::Cursor)
        .limit(limit)
}

/// [`read`]'s second query: the purchases of those changes.
pub fn purchases_query(ids: impl IntoIterator<Item = i64>) -> sea_orm::Select<course_purchase::Entity> {
    course_purchase::Entity::find().filter(course_purchase::Column::Id.is_in(ids))
}

/// Changes after `after`, oldest first, at most `limit`, with their
/// purchases as stored now.
pub async fn read(db: &impl ConnectionTrait, after: i64, limit: u64) -> Result<Vec<Change>, DbErr> {
    let changes = changes_query(after, limit).all(db).await?;
    if changes.is_empty() {
        // A caught-up reader's look costs one query, not two.
        return Ok(Vec::new());
    }
    let ids: BTreeSet<i64> = changes.iter().map(|change| change.purchase_id).collect();
    let purchases: BTreeMap<i64, course_purchase::Model> =
        purchases_query(ids).all(db).await?.into_iter().map(|purchase| (purchase.id, purchase)).collect();
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

/// Where the feed's kept changes begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// The newest cursor retention removed (this history's origin while
    /// none was).
    pub pruned_through: i64,
    /// The oldest cursor still kept.
    pub oldest: Option<i64>,
    /// Where this history of the feed starts: every cursor it hands out is
    /// above it, and below it plus [`HISTORY_SPAN`]; a cursor outside is
    /// from another history.
    pub origin: i64,
}

/// Where the feed's kept changes begin, and where its history starts.
pub async fn horizon(db: &impl ConnectionTrait) -> Result<Horizon, DbErr> {
    let feed = purchase_feed::Entity::find().one(db).await?;
    let oldest = purchase_change::Entity::find()
        .order_by_asc(purchase_change::Column::Cursor)
        .one(db)
        .await?
        .map(|change| change.cursor);
    Ok(Horizon {
        pruned_through: feed.as_ref().map_or(0, |feed| feed.pruned_through),
        oldest,
        origin: feed.map_or(0, |feed| feed.origin),
    })
}

/// The newest cursor retention removed, 0 while none was.
async fn pruned_through(db: &impl ConnectionTrait) -> Result<i64, DbErr> {
    Ok(purchase_feed::Entity::find().one(db).await?.map_or(0, |feed| feed.pruned_through))
}

/// How many cursors one history of the feed may hand out: histories start
/// at multiples of it (see the migration that added `purchase_feed.origin`).
pub const HISTORY_SPAN: i64 = 1 << 32;
/// The highest origin a history may have: no history hands out a cursor
/// above it plus [`HISTORY_SPAN`].
pub const HIGHEST_ORIGIN: i64 = 1 << 52;

/// Whether `cursor` can only have come from another history of a feed
/// that starts after `origin`: below this one's range, or above it and
/// within another's. One beyond every history's is no history's.
pub fn from_another_history(cursor: i64, origin: i64) -> bool {
    cursor < origin || (cursor > origin + HISTORY_SPAN && cursor <= HIGHEST_ORIGIN + HISTORY_SPAN)
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
    // committed in cursor order, so those past the cutoff are a prefix. The
    // read starts past the horizon: the entries of rows just deleted stay
    // in the index until a vacuum, and a read from the start would step
    // over all of them again for every chunk (minutes for a pass over
    // millions).
    let pruned = pruned_through(&txn).await?;
    let oldest = purchase_change::Entity::find()
        .filter(purchase_change::Column::Cursor.gt(pruned))
        .order_by_asc(purchase_change::Column::Cursor)
        .limit(chunk)
        .all(&txn)
        .await?;
    let expired = oldest.iter().take_while(|change| change.at < cutoff).last();
    let Some(through) = expired.map(|change| change.cursor) else {
        return Ok(0);
    };
    let removed = purchase_change::Entity::delete_many()
        .filter(purchase_change::Column::Cursor.gt(pruned))
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

/// The sessions of up to `chunk` purchases the feed has not published,
/// oldest first (through a partial index that holds those alone); for the
/// plan test too.
pub fn unpublished_query(chunk: u64) -> sea_orm::Select<course_purchase::Entity> {
    course_purchase::Entity::find()
        .select_only()
        .column(course_purchase::Column::StripeCheckoutSessionId)
        .filter(course_purchase::Column::AccessStatus.is_null())
        .order_by_asc(course_purchase::Column::Id)
        .limit(chunk)
}

/// The PostgreSQL advisory lock one pruning replica holds.
const PRUNE_LOCK: i64 = 0x6665_6564_7072_756e; // "feedprun"

/// Publishes, once, up to `chunk` purchases recorded before the feed existed
/// (nothing published of them yet), through the write path with
/// [`BACKFILL`] as their cause; returns how many purchases it looked at.
pub async fn backfill(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    policy: Policy,
    chunk: u64,
) -> Result<usize, DbErr> {
    let unpublished: Vec<String> = unpublished_query(chunk).into_tuple().all(db).await?;
    let inputs: Vec<Input<'_>> =
        unpublished.iter().map(|session_id| Input::Touch { session_id, cause: BACKFILL }).collect();
    if !inputs.is_empty() {
        write::apply(db, signals, &inputs, policy).await?;
    }
    Ok(unpublished.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_outside_this_history_and_inside_another_is_another_histories() {
        let origin = 7 * HISTORY_SPAN;
        for mine in [origin, origin + 1, origin + HISTORY_SPAN] {
            assert!(!from_another_history(mine, origin), "{mine}");
        }
        for theirs in [1, origin - 1, origin + HISTORY_SPAN + 1, HIGHEST_ORIGIN + 5] {
            assert!(from_another_history(theirs, origin), "{theirs}");
        }
        for nobodys in [HIGHEST_ORIGIN + HISTORY_SPAN + 1, i64::MAX] {
            assert!(!from_another_history(nobodys, origin), "{nobodys}: beyond every history, not another's");
        }
        assert!(
            from_another_history(HISTORY_SPAN + 1, 0),
            "an old feed (origin 0) meets a rebuilt one's cursor"
        );
    }
}
