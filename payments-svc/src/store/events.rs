//! Queries on `stripe_webhook_events`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::entities::stripe_webhook_event::{Column, Entity, EventStatus, Model};

pub async fn find(db: &impl ConnectionTrait, event_id: &str) -> Result<Option<Model>, DbErr> {
    find_query(event_id).one(db).await
}

/// [`find`]'s query, for the plan test.
pub fn find_query(event_id: &str) -> sea_orm::Select<Entity> {
    Entity::find().filter(Column::EventId.eq(event_id))
}

/// Which events [`list`] returns.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<EventStatus>,
    pub event_type: Option<String>,
    pub received_since: Option<DateTime<Utc>>,
    pub received_before: Option<DateTime<Utc>>,
    pub limit: Option<u64>,
}

/// Events matching `filter`, newest first.
pub async fn list(db: &impl ConnectionTrait, filter: &ListFilter) -> Result<Vec<Model>, DbErr> {
    list_query(filter).all(db).await
}

/// [`list`]'s query, for the plan test.
pub fn list_query(filter: &ListFilter) -> sea_orm::Select<Entity> {
    let query = Entity::find().order_by_desc(Column::ReceivedAt).order_by_desc(Column::Id);
    filtered(query, filter).limit(filter.limit)
}

/// Events matching `filter` with a row id above `after_id`, in row order
/// (the order they were first received), at most `filter.limit`: a page of
/// a walk through many of them.
pub async fn page(
    db: &impl ConnectionTrait,
    filter: &ListFilter,
    after_id: i64,
) -> Result<Vec<Model>, DbErr> {
    page_query(filter, after_id).all(db).await
}

/// [`page`]'s query, for the plan test.
pub fn page_query(filter: &ListFilter, after_id: i64) -> sea_orm::Select<Entity> {
    let query = Entity::find().filter(Column::Id.gt(after_id)).order_by_asc(Column::Id);
    filtered(query, filter).limit(filter.limit)
}

fn filtered(mut query: sea_orm::Select<Entity>, filter: &ListFilter) -> sea_orm::Select<Entity> {
    if let Some(before) = filter.received_before {
        query = query.filter(Column::ReceivedAt.lt(before));
    }
    if let Some(status) = filter.status {
        query = query.filter(Column::Status.eq(status));
    }
    if let Some(event_type) = &filter.event_type {
        query = query.filter(Column::EventType.eq(event_type.as_str()));
    }
    if let Some(since) = filter.received_since {
        query = query.filter(Column::ReceivedAt.gte(since));
    }
    query
}

/// Every event that touched a payment, oldest first: the checkout events of
/// `session_id`, the events in `event_ids` (those that recorded its
/// reversals), and every refund or dispute event that names one of
/// `mentions` (its payment intent or charges: a second Event object for a
/// change already recorded, say), each found by index.
pub async fn touching(
    db: &impl ConnectionTrait,
    session_id: &str,
    event_ids: &[String],
    mentions: &[String],
) -> Result<Vec<Model>, DbErr> {
    touching_query(session_id, event_ids, mentions).all(db).await
}

/// [`touching`]'s query, for the plan test.
pub fn touching_query(
    session_id: &str,
    event_ids: &[String],
    mentions: &[String],
) -> sea_orm::Select<Entity> {
    let mentions = || mentions.iter().map(String::as_str);
    let touched = Condition::any()
        .add(Column::CheckoutSessionId.eq(session_id))
        .add(Column::EventId.is_in(event_ids.iter().map(String::as_str)))
        .add(Column::ReversedPaymentIntentId.is_in(mentions()))
        .add(Column::ReversedChargeId.is_in(mentions()));
    Entity::find().filter(touched).order_by_asc(Column::ReceivedAt).order_by_asc(Column::Id)
}

/// Events whose payload retention drops: settled for good (a failed event is
/// kept whole until it is resolved), received before `cutoff`, and still
/// holding a payload.
fn prunable(cutoff: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(Column::Status.is_in([EventStatus::Processed, EventStatus::Ignored]))
        .add(Column::ReceivedAt.lt(cutoff))
        .add(Column::Payload.ne(""))
}

/// A place in arrival order: `received_at`, then the row id.
pub type Position = (DateTime<Utc>, i64);

/// The events after `from` in arrival order, or all when `None`.
fn after(from: Option<Position>) -> Condition {
    let Some((received_at, id)) = from else { return Condition::all() };
    Condition::all().add(
        Expr::tuple([Expr::col(Column::ReceivedAt), Expr::col(Column::Id)])
            .gt(Expr::tuple([Expr::value(received_at), Expr::value(id)])),
    )
}

/// How many events [`prune_payloads`] would reach from `from`.
pub async fn count_prunable(
    db: &impl ConnectionTrait,
    cutoff: DateTime<Utc>,
    from: Option<Position>,
) -> Result<u64, DbErr> {
    count_prunable_query(cutoff, from).count(db).await
}

/// [`count_prunable`]'s query, for the plan test.
pub fn count_prunable_query(cutoff: DateTime<Utc>, from: Option<Position>) -> sea_orm::Select<Entity> {
    Entity::find().filter(prunable(cutoff)).filter(after(from))
}

/// The next at most `chunk` prunable events after `from`, in arrival order
/// (their ids and arrival times), read through the `(received_at, id)`
/// index from `from`: a pass that starts at the retention mark never steps
/// over the payloads dropped before it.
pub fn prunable_query(cutoff: DateTime<Utc>, from: Option<Position>, chunk: u64) -> sea_orm::Select<Entity> {
    Entity::find()
        .select_only()
        .column(Column::Id)
        .column(Column::ReceivedAt)
        .filter(prunable(cutoff))
        .filter(after(from))
        .order_by_asc(Column::ReceivedAt)
        .order_by_asc(Column::Id)
        .limit(chunk)
}

/// Drops the payloads (the conflicting one too) of the next at most `chunk`
/// prunable events after `from`, keeping their rows: the id and outcome are
/// small and are what recognises a late redelivery.
pub async fn prune_payloads(
    db: &impl ConnectionTrait,
    cutoff: DateTime<Utc>,
    from: Option<Position>,
    chunk: u64,
) -> Result<Pruned, DbErr> {
    let next: Vec<(i64, DateTime<Utc>)> = prunable_query(cutoff, from, chunk).into_tuple().all(db).await?;
    let Some(&(last_id, last_received)) = next.last() else {
        return Ok(Pruned { looked_at: 0, dropped: 0, last: None });
    };
    let dropped = Entity::update_many()
        .col_expr(Column::Payload, Expr::value(""))
        .col_expr(Column::ConflictingPayload, Expr::value(Option::<String>::None))
        .filter(Column::Id.is_in(next.iter().map(|(id, _)| *id)))
        // Settled again meanwhile (a replay) is settled still; anything else waits.
        .filter(prunable(cutoff))
        .exec(db)
        .await?
        .rows_affected;
    Ok(Pruned { looked_at: next.len() as u64, dropped, last: Some((last_received, last_id)) })
}

/// What one chunk of [`prune_payloads`] did.
#[derive(Debug)]
pub struct Pruned {
    /// Prunable events it found: fewer than asked for means the pass is done.
    pub looked_at: u64,
    /// Payloads it dropped.
    pub dropped: u64,
    /// Where the events it found end.
    pub last: Option<Position>,
}

/// When the oldest failed event was received: payload retention's mark
/// must not pass it, since its payload is kept until it is resolved.
pub async fn oldest_failed(db: &impl ConnectionTrait) -> Result<Option<DateTime<Utc>>, DbErr> {
    oldest_failed_query().into_tuple().one(db).await
}

/// [`oldest_failed`]'s query, for the plan test.
pub fn oldest_failed_query() -> sea_orm::Select<Entity> {
    Entity::find()
        .select_only()
        .column(Column::ReceivedAt)
        .filter(Column::Status.eq(EventStatus::Failed))
        .order_by_asc(Column::ReceivedAt)
        .limit(1)
}

/// The retention mark of event payloads, in `retention_marks`.
const PAYLOADS_MARK: &str = "event_payloads";

#[derive(sea_orm::DeriveIden)]
enum RetentionMarks {
    Table,
    Name,
    PrunedBefore,
}

/// Where the next pass of payload retention starts: at its mark, before
/// which every settled event holds no payload. `None` before the first pass.
pub async fn next_pass_from(db: &impl ConnectionTrait) -> Result<Option<Position>, DbErr> {
    Ok(payloads_pruned_before(db).await?.map(|mark| (mark, i64::MIN)))
}

async fn payloads_pruned_before(db: &impl ConnectionTrait) -> Result<Option<DateTime<Utc>>, DbErr> {
    let select = Query::select()
        .column(RetentionMarks::PrunedBefore)
        .from(RetentionMarks::Table)
        .and_where(Expr::col(RetentionMarks::Name).eq(PAYLOADS_MARK))
        .to_owned();
    let row = db.query_one_raw(db.get_database_backend().build(&select)).await?;
    row.map(|row| row.try_get_by_index::<DateTime<Utc>>(0)).transpose()
}

/// Records where payload retention's pass left off.
pub async fn set_payloads_pruned_before(db: &impl ConnectionTrait, mark: DateTime<Utc>) -> Result<(), DbErr> {
    let upsert = Query::insert()
        .into_table(RetentionMarks::Table)
        .columns([RetentionMarks::Name, RetentionMarks::PrunedBefore])
        .values_panic([PAYLOADS_MARK.into(), mark.into()])
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(RetentionMarks::Name)
                .update_column(RetentionMarks::PrunedBefore)
                .to_owned(),
        )
        .to_owned();
    db.execute_raw(db.get_database_backend().build(&upsert)).await?;
    Ok(())
}
