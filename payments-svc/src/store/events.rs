//! Queries on `stripe_webhook_events`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, CaseStatement, Expr, ExprTrait, OnConflict, Query};
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, FromQueryResult,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set,
};

use payments_domain::event::{self as domain, IncomingEvent};

use super::entities::stripe_webhook_event::{ActiveModel, Column, Entity, EventStatus, Model};

/// Records one delivery of `event` and returns its row as it now stands.
/// See [`record_deliveries`].
pub async fn record_delivery(
    db: &impl ConnectionTrait,
    event: &IncomingEvent,
    now: DateTime<Utc>,
) -> Result<Model, DbErr> {
    let mut rows = record_deliveries(db, &[(event, 1)], now).await?;
    rows.pop().ok_or_else(|| DbErr::RecordNotFound(format!("event {} after recording it", event.id)))
}

/// Records `deliveries` (each event with how many times it arrived; each
/// event at most once) and returns their rows as they now stand.
///
/// A first delivery inserts a `received` row; a redelivery only adds to
/// `delivery_count` and sets `last_received_at`, leaving the status as it
/// was, so the returned status says whether the event was already settled.
/// It is one `INSERT ... ON CONFLICT (event_id) DO UPDATE ... RETURNING`, so
/// concurrent deliveries of the same event serialise on the unique index:
/// the later ones wait for the first transaction and then see what it
/// committed.
pub async fn record_deliveries(
    db: &impl ConnectionTrait,
    deliveries: &[(&IncomingEvent, i32)],
    now: DateTime<Utc>,
) -> Result<Vec<Model>, DbErr> {
    let rows = deliveries.iter().map(|(event, count)| ActiveModel {
        id: NotSet,
        event_id: Set(event.id.clone()),
        event_type: Set(event.event_type.clone()),
        livemode: Set(event.livemode),
        api_version: Set(event.api_version.clone()),
        checkout_session_id: Set(event.session.as_ref().map(|s| s.id.clone())),
        status: Set(EventStatus::Received),
        error: Set(None),
        payload: Set(event.payload.clone()),
        conflicting_payload: Set(None),
        delivery_count: Set(*count),
        stripe_created_at: Set(event.created),
        received_at: Set(now),
        last_received_at: Set(now),
        processed_at: Set(None),
        settled_by: Set(None),
    });
    let mut redelivery = OnConflict::column(Column::EventId)
        .value(Column::DeliveryCount, existing(Column::DeliveryCount).add(excluded(Column::DeliveryCount)))
        .value(Column::LastReceivedAt, now)
        .to_owned();
    keep_the_applied_body(&mut redelivery);
    Entity::insert_many(rows).on_conflict(redelivery).exec_with_returning(db).await
}

fn existing(column: Column) -> Expr {
    Expr::col((Entity, column))
}

fn excluded(column: Column) -> Expr {
    Expr::col((Alias::new("excluded"), column))
}

/// The stored event is processed or ignored: a redelivery applies nothing.
fn settled_for_good() -> Expr {
    existing(Column::Status).is_in([EventStatus::Processed, EventStatus::Ignored])
}

/// The row's body columns follow the body that is applied: a redelivery of
/// an event not settled for good (failed) is applied from the new body, so
/// the row takes it. A body that differs from the stored one is kept in
/// `conflicting_payload`: the new one if it is not applied, the old one if
/// it was replaced. Both statements that record deliveries use this, and
/// `batch_pg` spells the same in SQL.
fn keep_the_applied_body(redelivery: &mut OnConflict) {
    let from_the_applied_body = |column: Column| -> Expr {
        CaseStatement::new().case(settled_for_good(), existing(column)).finally(excluded(column)).into()
    };
    for column in [
        Column::EventType,
        Column::Livemode,
        Column::ApiVersion,
        Column::CheckoutSessionId,
        Column::Payload,
        Column::StripeCreatedAt,
    ] {
        redelivery.value(column, from_the_applied_body(column));
    }
    // A pruned payload (empty) cannot be compared: a late redelivery of an
    // event past retention is a plain duplicate.
    let conflicting: Expr = CaseStatement::new()
        .case(existing(Column::Payload).eq(excluded(Column::Payload)), existing(Column::ConflictingPayload))
        .case(existing(Column::Payload).eq(""), existing(Column::ConflictingPayload))
        .case(settled_for_good(), excluded(Column::Payload))
        .finally(existing(Column::Payload))
        .into();
    redelivery.value(Column::ConflictingPayload, conflicting);
}

/// One event of a batch, already planned: how often it arrived, and the
/// status (with its reason) it settles as if this batch applies it.
#[derive(Debug, Clone, Copy)]
pub struct Settled<'a> {
    pub event: &'a IncomingEvent,
    pub deliveries: i32,
    pub status: domain::EventStatus,
    pub error: Option<&'a serde_json::Value>,
}

/// Who settled an event, as [`record_settled`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct SettledRow {
    pub event_id: String,
    pub settled_by: Option<i64>,
}

/// Records and settles a batch of events in one statement, returning who
/// settled each. A new event is inserted already settled. A known one gets its
/// deliveries added and, unless it was settled for good (processed or
/// ignored), the new status, error, `processed_at` and `settled_by`. So a
/// returned row whose `settled_by` is `token` was applied by this call, and
/// any other was already settled: `token` must be unique to the call (a
/// random one per batch). Each event at most once.
///
/// Only those two columns come back: returning whole rows would send every
/// ~5 KB payload back from the database just to be dropped.
pub async fn record_settled(
    db: &impl ConnectionTrait,
    batch: &[Settled<'_>],
    token: i64,
    now: DateTime<Utc>,
) -> Result<Vec<SettledRow>, DbErr> {
    let rows = batch.iter().map(|item| ActiveModel {
        id: NotSet,
        event_id: Set(item.event.id.clone()),
        event_type: Set(item.event.event_type.clone()),
        livemode: Set(item.event.livemode),
        api_version: Set(item.event.api_version.clone()),
        checkout_session_id: Set(item.event.session.as_ref().map(|s| s.id.clone())),
        status: Set(item.status.into()),
        error: Set(item.error.cloned()),
        payload: Set(item.event.payload.clone()),
        conflicting_payload: Set(None),
        delivery_count: Set(item.deliveries),
        stripe_created_at: Set(item.event.created),
        received_at: Set(now),
        last_received_at: Set(now),
        processed_at: Set(Some(now)),
        settled_by: Set(Some(token)),
    });
    let unless_settled = |column: Column| -> Expr {
        CaseStatement::new().case(settled_for_good(), existing(column)).finally(excluded(column)).into()
    };
    let mut redelivery = OnConflict::column(Column::EventId)
        .value(Column::DeliveryCount, existing(Column::DeliveryCount).add(excluded(Column::DeliveryCount)))
        .value(Column::LastReceivedAt, now)
        .value(Column::Status, unless_settled(Column::Status))
        .value(Column::Error, unless_settled(Column::Error))
        .value(Column::ProcessedAt, unless_settled(Column::ProcessedAt))
        .value(Column::SettledBy, unless_settled(Column::SettledBy))
        .to_owned();
    keep_the_applied_body(&mut redelivery);
    let mut statement = Entity::insert_many(rows).on_conflict(redelivery).into_query();
    statement.returning(Query::returning().columns([Column::EventId, Column::SettledBy]));
    let rows = db.query_all(&statement).await?;
    rows.iter().map(|row| SettledRow::from_query_result(row, "")).collect()
}

/// Settles an event as processed, ignored or failed, with the reason when
/// there is one.
pub async fn settle(
    db: &impl ConnectionTrait,
    id: i64,
    status: domain::EventStatus,
    error: Option<serde_json::Value>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let row = ActiveModel {
        id: Set(id),
        status: Set(status.into()),
        error: Set(error),
        processed_at: Set(Some(now)),
        ..Default::default()
    };
    Entity::update(row).exec(db).await.map(drop)
}

pub async fn find(db: &impl ConnectionTrait, event_id: &str) -> Result<Option<Model>, DbErr> {
    Entity::find().filter(Column::EventId.eq(event_id)).one(db).await
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
    let query = Entity::find().order_by_desc(Column::ReceivedAt).order_by_desc(Column::Id);
    filtered(query, filter).limit(filter.limit).all(db).await
}

/// Events matching `filter` with a row id above `after_id`, in row order
/// (the order they were first received), at most `filter.limit`: a page of
/// a walk through many of them.
pub async fn page(
    db: &impl ConnectionTrait,
    filter: &ListFilter,
    after_id: i64,
) -> Result<Vec<Model>, DbErr> {
    let query = Entity::find().filter(Column::Id.gt(after_id)).order_by_asc(Column::Id);
    filtered(query, filter).limit(filter.limit).all(db).await
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
/// reversals), and any other refund or dispute event whose payload names
/// one of `mentions` (its payment intent or charge: a second Event object
/// for a change already recorded). That last part reads payloads, so it
/// is for operators, not for the request path.
pub async fn touching(
    db: &impl ConnectionTrait,
    session_id: &str,
    event_ids: &[String],
    mentions: &[String],
) -> Result<Vec<Model>, DbErr> {
    let mut touched = Condition::any()
        .add(Column::CheckoutSessionId.eq(session_id))
        .add(Column::EventId.is_in(event_ids.iter().map(String::as_str)));
    for id in mentions {
        let reversal_types = Condition::any()
            .add(Column::EventType.eq("charge.refunded"))
            .add(Column::EventType.starts_with("refund."))
            .add(Column::EventType.starts_with("charge.refund."))
            .add(Column::EventType.starts_with("charge.dispute."));
        touched = touched
            .add(Condition::all().add(reversal_types).add(Column::Payload.contains(format!("\"{id}\""))));
    }
    Entity::find().filter(touched).order_by_asc(Column::ReceivedAt).order_by_asc(Column::Id).all(db).await
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

/// How many events [`prune_payloads`] would reach.
pub async fn count_prunable(db: &impl ConnectionTrait, cutoff: DateTime<Utc>) -> Result<u64, DbErr> {
    Entity::find().filter(prunable(cutoff)).count(db).await
}

/// Drops the payloads (the conflicting one too) of at most `chunk` prunable
/// events, oldest first, keeping their rows: the id and outcome are small
/// and are what recognises a late redelivery. Returns how many.
pub async fn prune_payloads(
    db: &impl ConnectionTrait,
    cutoff: DateTime<Utc>,
    chunk: u64,
) -> Result<u64, DbErr> {
    let oldest = Query::select()
        .column(Column::Id)
        .from(Entity)
        .cond_where(prunable(cutoff))
        .order_by(Column::Id, sea_orm::Order::Asc)
        .limit(chunk)
        .to_owned();
    let pruned = Entity::update_many()
        .col_expr(Column::Payload, Expr::value(""))
        .col_expr(Column::ConflictingPayload, Expr::value(Option::<String>::None))
        .filter(Column::Id.in_subquery(oldest))
        .exec(db)
        .await?;
    Ok(pruned.rows_affected)
}
