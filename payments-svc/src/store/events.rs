//! Queries on `stripe_webhook_events`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Query};
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
