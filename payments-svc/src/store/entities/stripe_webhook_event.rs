//! One row per distinct Stripe event id (`event_id` is UNIQUE).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "stripe_webhook_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub event_id: String,
    pub event_type: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub checkout_session_id: Option<String>,
    pub status: EventStatus,
    /// Why the event was ignored or failed, as JSON `{"code", "message", ...}`.
    pub error: Option<Json>,
    /// The exact body Stripe signed, as applied.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// Another body received under this id, when one differed: the newer
    /// one if the event was settled, the older one if a failed event was
    /// applied again from a new body.
    #[sea_orm(column_type = "Text", nullable)]
    pub conflicting_payload: Option<String>,
    /// How many times Stripe delivered this event id to us.
    pub delivery_count: i32,
    /// Stripe's `created`, in Unix seconds.
    pub stripe_created_at: i64,
    pub received_at: DateTimeUtc,
    pub last_received_at: DateTimeUtc,
    /// When the event settled as processed, ignored or failed.
    pub processed_at: Option<DateTimeUtc>,
    /// The random token of the group-commit batch that settled the event
    /// (none when the per-event path did): how a batch tells the events it
    /// applied from ones already settled, even with other replicas at work.
    pub settled_by: Option<i64>,
    /// The payment intent a refund or dispute event names (none for other
    /// events): how `purchases show` finds every event about a payment
    /// without reading payloads.
    pub reversed_payment_intent_id: Option<String>,
    /// The charge a refund or dispute event names.
    pub reversed_charge_id: Option<String>,
}

/// Where an event stands. Only `Processed` and `Ignored` are settled for good:
/// a redelivery of a `Failed` event is applied again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum EventStatus {
    /// Being applied by the transaction that inserted it; never committed as such.
    #[sea_orm(string_value = "received")]
    Received,
    #[sea_orm(string_value = "processed")]
    Processed,
    #[sea_orm(string_value = "ignored")]
    Ignored,
    #[sea_orm(string_value = "failed")]
    Failed,
}

super::mapped!(EventStatus <=> payments_domain::event::EventStatus { Received, Processed, Ignored, Failed });

impl EventStatus {
    /// See [`payments_domain::event::EventStatus::is_settled`].
    pub fn is_settled(self) -> bool {
        payments_domain::event::EventStatus::from(self).is_settled()
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
