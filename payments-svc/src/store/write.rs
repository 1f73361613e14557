//! Persisting the domain's decisions: the one write path's storage half.
//!
//! [`apply`] runs [`payments_domain::write`] inside one transaction: it
//! takes the write lock first, loads what the inputs' [`Keys`] name, asks
//! the domain what to write and writes exactly that. Nothing here decides:
//! no status ranks, no access, no change detection. The only conditions in
//! its SQL are concurrency guards (`ON CONFLICT DO NOTHING` for rows a
//! retried transaction may find written) and which body an event row keeps.
//!
//! ## One writer at a time
//! The decision depends on what is stored, so nothing may change it between
//! the load and the commit. Every writer raises `purchase_feed.writes`, the
//! count of committed writes, which takes that row's lock (on SQLite, the
//! database's write lock) until it commits. A transaction here raises it
//! first, then loads; on PostgreSQL [`super::write_pg`] instead loads and
//! writes in two statements and writes only if the count is still the one
//! it loaded. Writers therefore commit one at a time, across replicas too,
//! which is also what orders the change feed's cursors by commit: a reader
//! that sees a cursor sees every smaller one that will ever exist.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use payments_domain::event::EventStatus as DomainEventStatus;
use payments_domain::rules::Policy;
use payments_domain::write::{self, Decision, EventWrite, Input, Keys, Stored, StoredPurchase};
use sea_orm::sea_query::{Alias, CaseStatement, Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};

use super::entities::{course_purchase, payment_reversal, purchase_change, stripe_webhook_event};
use super::signals::FeedSignals;
use super::{refund_requests, reversals, write_pg};

/// Applies `inputs` in one transaction and, once it has committed, tells
/// the application's watchers of the changes it published. Returns what
/// was decided (each event's outcome among it).
pub async fn apply<'a>(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    inputs: &[Input<'a>],
    policy: Policy,
) -> Result<Decision<'a>, DbErr> {
    let decision = if db.get_database_backend() == DbBackend::Postgres {
        let mut connection = db.get_postgres_connection_pool().acquire().await.map_err(pool_error)?;
        write_pg::apply(&mut connection, inputs, policy, Utc::now()).await.map_err(write_pg::db_error)?
    } else {
        let txn = db.begin().await?;
        let decision = apply_in(&txn, inputs, policy, Utc::now()).await?;
        txn.commit().await?;
        decision
    };
    if !decision.changes.is_empty() {
        signals.announce();
    }
    Ok(decision)
}

/// [`apply`] inside the caller's transaction, which must not have written
/// yet; the caller commits and announces.
pub async fn apply_in<'a>(
    txn: &DatabaseTransaction,
    inputs: &[Input<'a>],
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<Decision<'a>, DbErr> {
    lock(txn).await?;
    let stored = load(txn, &write::keys(inputs, policy)).await?;
    let decision = write::decide(inputs, &stored, policy);
    save(txn, &decision, now).await?;
    Ok(decision)
}

/// Raises the write count, which keeps other writers out until the
/// transaction ends; see the module doc.
async fn lock(txn: &DatabaseTransaction) -> Result<(), DbErr> {
    txn.execute_unprepared("UPDATE purchase_feed SET writes = writes + 1").await.map(drop)
}

fn pool_error(error: sea_orm::sqlx::Error) -> DbErr {
    DbErr::Conn(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(error)))
}

/// Everything stored of what `keys` name.
async fn load(txn: &DatabaseTransaction, keys: &Keys) -> Result<Stored, DbErr> {
    let events = load_events(txn, &keys.event_ids).await?;
    let mut payments: BTreeSet<String> = keys.payment_intents.clone();
    let charges: Vec<&str> = keys.charges.iter().map(String::as_str).collect();
    payments
        .extend(reversals::payments_of_charges(txn, &charges).await?.into_iter().map(|(_, payment)| payment));
    let purchases = load_families(txn, &keys.sessions, &payments, &keys.families).await?;
    payments.extend(keys.checkout_payments.iter().cloned());
    payments.extend(purchases.iter().filter_map(|p| p.stripe_payment_intent_id.clone()));
    let payments: Vec<&str> = payments.iter().map(String::as_str).collect();
    let facts: Vec<payment_reversal::Model> =
        reversals::for_payments(txn, &payments).await?.into_values().flatten().collect();
    Ok(Stored {
        events,
        purchases: purchases.into_iter().map(stored_purchase).collect::<Result<_, _>>()?,
        facts: reversals::as_reversals(&facts)?,
    })
}

async fn load_events(
    txn: &DatabaseTransaction,
    ids: &BTreeSet<String>,
) -> Result<HashMap<String, DomainEventStatus>, DbErr> {
    use stripe_webhook_event::{Column, Entity, EventStatus};
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, EventStatus)> = Entity::find()
        .select_only()
        .columns([Column::EventId, Column::Status])
        .filter(Column::EventId.is_in(ids.iter().map(String::as_str)))
        .into_tuple()
        .all(txn)
        .await?;
    Ok(rows.into_iter().map(|(id, status)| (id, status.into())).collect())
}

/// The purchases of `sessions` and `payments`, and every purchase of their
/// buyers' courses and of `families`, oldest first.
async fn load_families(
    txn: &DatabaseTransaction,
    sessions: &BTreeSet<String>,
    payments: &BTreeSet<String>,
    families: &BTreeSet<(String, String)>,
) -> Result<Vec<course_purchase::Model>, DbErr> {
    use course_purchase::{Column, Entity};
    let mut families: BTreeSet<(String, String)> = families.clone();
    if !sessions.is_empty() || !payments.is_empty() {
        let direct: Vec<(String, String)> = Entity::find()
            .select_only()
            .columns([Column::UserId, Column::CourseId])
            .filter(
                Condition::any()
                    .add(Column::StripeCheckoutSessionId.is_in(sessions.iter().map(String::as_str)))
                    .add(Column::StripePaymentIntentId.is_in(payments.iter().map(String::as_str))),
            )
            .into_tuple()
            .all(txn)
            .await?;
        families.extend(direct);
    }
    if families.is_empty() {
        return Ok(Vec::new());
    }
    let any_family = families.iter().fold(Condition::any(), |any, (user, course)| {
        any.add(
            Condition::all().add(Column::UserId.eq(user.as_str())).add(Column::CourseId.eq(course.as_str())),
        )
    });
    Entity::find().filter(any_family).order_by_asc(Column::Id).all(txn).await
}

fn stored_purchase(row: course_purchase::Model) -> Result<StoredPurchase, DbErr> {
    let published = row.access_status.map(|status| payments_domain::reversals::Access {
        status: status.into(),
        has_access: row.has_access,
        amount_refunded: row.amount_refunded,
    });
    Ok(StoredPurchase {
        id: row.id,
        purchase: payments_domain::purchase::NewPurchase {
            source: row.source.into(),
            user_id: row.user_id,
            course_id: row.course_id,
            checkout_session_id: row.stripe_checkout_session_id,
            payment_intent_id: row.stripe_payment_intent_id,
            amount_total: row.amount_total,
            currency: row.currency,
            checkout_created: row.checkout_created,
        },
        status: row.status.into(),
        needs_refund: row.needs_refund,
        published,
        cause: row.access_cause,
    })
}

/// Writes `decision` as it is.
async fn save(txn: &DatabaseTransaction, decision: &Decision<'_>, now: DateTime<Utc>) -> Result<(), DbErr> {
    save_events(txn, &decision.events, now).await?;
    let ids = save_purchases(txn, decision, now).await?;
    let facts: Vec<reversals::Fact<'_>> = decision
        .facts
        .iter()
        .map(|fact| reversals::Fact {
            reversal: &fact.reversal,
            event_id: &fact.event_id,
            created: fact.created,
        })
        .collect();
    reversals::record(txn, &facts, now).await?;
    for owed in &decision.refunds_owed {
        refund_requests::owe(txn, &owed.checkout_session_id, &owed.payment_intent_id, now).await?;
    }
    save_changes(txn, decision, &ids, now).await
}

/// Event rows: those settled now take their status, reason and the body
/// applied; those settled before only count their deliveries. A replay
/// (no delivery) leaves the last delivery's time as it was.
async fn save_events(
    txn: &DatabaseTransaction,
    events: &[EventWrite<'_>],
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let mut groups: BTreeMap<(bool, bool), Vec<&EventWrite<'_>>> = BTreeMap::new();
    for event in events {
        groups.entry((event.settle.is_some(), event.deliveries > 0)).or_default().push(event);
    }
    for ((settles, delivered), group) in groups {
        if !settles && !delivered {
            continue;
        }
        save_event_group(txn, &group, settles, delivered, now).await?;
    }
    Ok(())
}

async fn save_event_group(
    txn: &DatabaseTransaction,
    group: &[&EventWrite<'_>],
    settles: bool,
    delivered: bool,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    use stripe_webhook_event::{ActiveModel, Column, Entity, EventStatus};
    let rows = group.iter().map(|write| {
        let (status, error) = match &write.settle {
            Some((status, error)) => ((*status).into(), error.as_ref().map(|failure| failure.to_json())),
            None => (EventStatus::Received, None),
        };
        let event = write.event;
        ActiveModel {
            id: NotSet,
            event_id: Set(event.id.clone()),
            event_type: Set(event.event_type.clone()),
            livemode: Set(event.livemode),
            api_version: Set(event.api_version.clone()),
            checkout_session_id: Set(event.session.as_ref().map(|s| s.id.clone())),
            status: Set(status),
            error: Set(error),
            payload: Set(event.payload.clone()),
            conflicting_payload: Set(None),
            delivery_count: Set(write.deliveries),
            stripe_created_at: Set(event.created),
            received_at: Set(now),
            last_received_at: Set(now),
            processed_at: Set(Some(now)),
            settled_by: Set(None),
            reversed_payment_intent_id: Set(event.reversed_payment_intent_id().map(str::to_owned)),
            reversed_charge_id: Set(event.reversed_charge_id().map(str::to_owned)),
        }
    });
    let existing = |column: Column| Expr::col((Entity, column));
    let excluded = |column: Column| Expr::col((Alias::new("excluded"), column));
    let mut on_conflict = OnConflict::column(Column::EventId)
        .value(Column::DeliveryCount, existing(Column::DeliveryCount).add(excluded(Column::DeliveryCount)))
        .to_owned();
    if delivered {
        on_conflict.value(Column::LastReceivedAt, now);
    }
    // A pruned payload (empty) cannot be compared; otherwise a body that
    // differs is kept: the stored one when the new one is applied, the new
    // one when it is not.
    let same_body = Condition::any()
        .add(existing(Column::Payload).eq(excluded(Column::Payload)))
        .add(existing(Column::Payload).eq(""));
    let other_body = if settles { existing(Column::Payload) } else { excluded(Column::Payload) };
    let conflicting: Expr =
        CaseStatement::new().case(same_body, existing(Column::ConflictingPayload)).finally(other_body).into();
    on_conflict.value(Column::ConflictingPayload, conflicting);
    if settles {
        for column in [
            Column::Status,
            Column::Error,
            Column::ProcessedAt,
            Column::SettledBy,
            Column::EventType,
            Column::Livemode,
            Column::ApiVersion,
            Column::CheckoutSessionId,
            Column::Payload,
            Column::StripeCreatedAt,
            Column::ReversedPaymentIntentId,
            Column::ReversedChargeId,
        ] {
            on_conflict.value(column, excluded(column));
        }
    }
    Entity::insert_many(rows).on_conflict(on_conflict).exec_without_returning(txn).await.map(drop)
}

/// Purchase rows as decided; returns the id of each by session.
async fn save_purchases(
    txn: &DatabaseTransaction,
    decision: &Decision<'_>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, i64>, DbErr> {
    use course_purchase::{ActiveModel, Column, Entity};
    let mut ids: HashMap<String, i64> = HashMap::new();
    if decision.purchases.is_empty() {
        return Ok(ids);
    }
    let rows = decision.purchases.iter().map(|write| ActiveModel {
        id: NotSet,
        user_id: Set(write.purchase.user_id.clone()),
        course_id: Set(write.purchase.course_id.clone()),
        stripe_checkout_session_id: Set(write.purchase.checkout_session_id.clone()),
        stripe_payment_intent_id: Set(write.purchase.payment_intent_id.clone()),
        amount_total: Set(write.purchase.amount_total),
        currency: Set(write.purchase.currency.clone()),
        status: Set(write.status.into()),
        source: Set(write.purchase.source.into()),
        needs_refund: Set(write.needs_refund),
        created_at: Set(now),
        updated_at: Set(now),
        access_status: Set(write.published.map(|access| access.status.into())),
        has_access: Set(write.published.is_some_and(|access| access.has_access)),
        amount_refunded: Set(write.published.map_or(0, |access| access.amount_refunded)),
        access_cause: Set(write.cause.clone()),
        checkout_created: Set(write.purchase.checkout_created),
    });
    let as_decided = OnConflict::column(Column::StripeCheckoutSessionId)
        .update_columns([
            Column::StripePaymentIntentId,
            Column::AmountTotal,
            Column::Currency,
            Column::Status,
            Column::NeedsRefund,
            Column::UpdatedAt,
            Column::AccessStatus,
            Column::HasAccess,
            Column::AmountRefunded,
            Column::AccessCause,
            Column::CheckoutCreated,
        ])
        .to_owned();
    let written = Entity::insert_many(rows).on_conflict(as_decided).exec_with_returning(txn).await?;
    ids.extend(written.into_iter().map(|row| (row.stripe_checkout_session_id, row.id)));
    Ok(ids)
}

/// The change rows, in the order they were published.
async fn save_changes(
    txn: &DatabaseTransaction,
    decision: &Decision<'_>,
    ids: &HashMap<String, i64>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    use purchase_change::{ActiveModel, Entity};
    if decision.changes.is_empty() {
        return Ok(());
    }
    let rows = decision
        .changes
        .iter()
        .map(|change| {
            let purchase_id = ids.get(&change.checkout_session_id).copied().ok_or_else(|| {
                DbErr::RecordNotFound(format!("purchase {} of a change", change.checkout_session_id))
            })?;
            Ok(ActiveModel {
                cursor: NotSet,
                purchase_id: Set(purchase_id),
                kind: Set(change.kind.into()),
                status: Set(change.access.status.into()),
                has_access: Set(change.access.has_access),
                amount_refunded: Set(change.access.amount_refunded),
                cause_event_id: Set(change.cause.clone()),
                at: Set(now),
            })
        })
        .collect::<Result<Vec<_>, DbErr>>()?;
    Entity::insert_many(rows).exec_without_returning(txn).await.map(drop)
}
