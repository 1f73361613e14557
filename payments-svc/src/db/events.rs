//! Queries on `stripe_webhook_events`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::entities::stripe_webhook_event::{ActiveModel, Column, Entity, EventStatus, Model};
use crate::webhook::IncomingEvent;

/// Records one delivery of `event` and returns its row as it now stands.
///
/// A first delivery inserts a `received` row; a redelivery only bumps
/// `delivery_count` and `last_received_at`. It is a single
/// `INSERT ... ON CONFLICT (event_id) DO UPDATE ... RETURNING`, so concurrent
/// deliveries of the same event serialise on the unique index: the later ones
/// wait for the first transaction and then see what it committed.
pub async fn record_delivery(
    db: &impl ConnectionTrait,
    event: &IncomingEvent,
    now: DateTime<Utc>,
) -> Result<Model, DbErr> {
    let row = ActiveModel {
        id: NotSet,
        event_id: Set(event.id.clone()),
        event_type: Set(event.event_type.clone()),
        livemode: Set(event.livemode),
        api_version: Set(event.api_version.clone()),
        checkout_session_id: Set(event.session.as_ref().map(|s| s.id.clone())),
        status: Set(EventStatus::Received),
        error: Set(None),
        payload: Set(event.payload.clone()),
        delivery_count: Set(1),
        stripe_created_at: Set(event.created),
        received_at: Set(now),
        last_received_at: Set(now),
        processed_at: Set(None),
    };
    let redelivery = OnConflict::column(Column::EventId)
        .value(Column::DeliveryCount, Expr::col((Entity, Column::DeliveryCount)).add(1))
        .value(Column::LastReceivedAt, now)
        .to_owned();
    Entity::insert(row).on_conflict(redelivery).exec_with_returning(db).await
}

/// Settles an event as processed, ignored or failed, with the reason when
/// there is one.
pub async fn settle(
    db: &impl ConnectionTrait,
    id: i64,
    status: EventStatus,
    error: Option<serde_json::Value>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let row = ActiveModel {
        id: Set(id),
        status: Set(status),
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
    pub limit: Option<u64>,
}

/// Events matching `filter`, newest first.
pub async fn list(db: &impl ConnectionTrait, filter: &ListFilter) -> Result<Vec<Model>, DbErr> {
    let mut query = Entity::find().order_by_desc(Column::ReceivedAt).order_by_desc(Column::Id);
    if let Some(status) = filter.status {
        query = query.filter(Column::Status.eq(status));
    }
    if let Some(event_type) = &filter.event_type {
        query = query.filter(Column::EventType.eq(event_type.as_str()));
    }
    if let Some(since) = filter.received_since {
        query = query.filter(Column::ReceivedAt.gte(since));
    }
    query.limit(filter.limit).all(db).await
}
