//! Queries on `payment_reversals`.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Set,
};

use super::entities::course_purchase;
use super::entities::payment_reversal::{ActiveModel, Column, Entity, Model};
use crate::reversals::{self, Access, AccessStatus, Checkout, DisputeAccess, Reversal};

/// A fact and the event that reported it.
#[derive(Debug, Clone, Copy)]
pub struct Fact<'a> {
    pub reversal: &'a Reversal,
    pub event_id: &'a str,
    /// The event's `created`, in Unix seconds.
    pub created: i64,
}

/// Records `facts`. A fact already recorded (the same object, status and
/// amount, from this or another event) is left as it is: two Event objects
/// for one change count once.
pub async fn record(db: &impl ConnectionTrait, facts: &[Fact<'_>], now: DateTime<Utc>) -> Result<(), DbErr> {
    if facts.is_empty() {
        return Ok(());
    }
    let rows = facts.iter().map(|fact| ActiveModel {
        id: NotSet,
        kind: Set(fact.reversal.kind),
        object_id: Set(fact.reversal.object_id.clone()),
        status: Set(fact.reversal.status.clone()),
        amount: Set(fact.reversal.amount),
        complete: Set(fact.reversal.complete),
        currency: Set(fact.reversal.currency.clone()),
        payment_intent_id: Set(fact.reversal.payment_intent_id.clone()),
        charge_id: Set(fact.reversal.charge_id.clone()),
        event_id: Set(fact.event_id.to_owned()),
        stripe_created_at: Set(fact.created),
        recorded_at: Set(now),
    });
    let same_change =
        OnConflict::columns([Column::ObjectId, Column::Status, Column::Amount]).do_nothing().to_owned();
    Entity::insert_many(rows).on_conflict(same_change).try_insert().exec_without_returning(db).await.map(drop)
}

/// Every fact that reaches the payment `payment_intent_id`: those that name
/// it, and those that name only a charge another fact ties to it.
pub async fn for_payment(db: &impl ConnectionTrait, payment_intent_id: &str) -> Result<Vec<Model>, DbErr> {
    let mut facts = Entity::find().filter(Column::PaymentIntentId.eq(payment_intent_id)).all(db).await?;
    let charges: BTreeSet<String> = facts.iter().filter_map(|fact| fact.charge_id.clone()).collect();
    if !charges.is_empty() {
        let by_charge_only = Entity::find()
            .filter(Column::PaymentIntentId.is_null())
            .filter(Column::ChargeId.is_in(charges))
            .all(db)
            .await?;
        facts.extend(by_charge_only);
    }
    Ok(facts)
}

/// Facts that reach no purchase (yet), newest first: reversals of payments
/// that are no course purchase, or of purchases not recorded here. A fact
/// that names only a charge reaches a purchase through another fact that
/// ties that charge to a recorded payment intent.
pub async fn unmatched(db: &impl ConnectionTrait, limit: u64) -> Result<Vec<Model>, DbErr> {
    let recorded = || {
        course_purchase::Entity::find()
            .select_only()
            .column(course_purchase::Column::StripePaymentIntentId)
            .filter(course_purchase::Column::StripePaymentIntentId.is_not_null())
            .into_query()
    };
    let tied_charges = Entity::find()
        .select_only()
        .column(Column::ChargeId)
        .filter(Column::ChargeId.is_not_null())
        .filter(Column::PaymentIntentId.in_subquery(recorded()))
        .into_query();
    let unknown_payment = Condition::all()
        .add(Column::PaymentIntentId.is_not_null())
        .add(Column::PaymentIntentId.not_in_subquery(recorded()));
    let unknown_charge = Condition::all().add(Column::PaymentIntentId.is_null()).add(
        Condition::any().add(Column::ChargeId.is_null()).add(Column::ChargeId.not_in_subquery(tied_charges)),
    );
    Entity::find()
        .filter(Condition::any().add(unknown_payment).add(unknown_charge))
        .order_by_desc(Column::RecordedAt)
        .order_by_desc(Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// The facts as the rules see them.
pub fn as_reversals(facts: &[Model]) -> Vec<Reversal> {
    facts
        .iter()
        .map(|fact| Reversal {
            kind: fact.kind,
            object_id: fact.object_id.clone(),
            status: fact.status.clone(),
            amount: fact.amount,
            complete: fact.complete,
            currency: fact.currency.clone(),
            payment_intent_id: fact.payment_intent_id.clone(),
            charge_id: fact.charge_id.clone(),
        })
        .collect()
}

/// `purchase`'s access, its checkout outcome and every reversal of its
/// payment counted. A second payment for a course (`needs_refund`) grants
/// the course once no other purchase of it does any more (the first was
/// refunded or lost a dispute): a buyer who pays again after that is a
/// buyer again, not a duplicate.
pub async fn access_of(
    db: &impl ConnectionTrait,
    purchase: &course_purchase::Model,
    dispute_access: DisputeAccess,
) -> Result<Access, DbErr> {
    let mut access = own_access(db, purchase, dispute_access).await?;
    if purchase.needs_refund && access.status == AccessStatus::Paid {
        access.has_access = !another_grants(db, purchase, dispute_access).await?;
    }
    Ok(access)
}

/// Whether a first purchase of the same course by the same buyer grants it.
async fn another_grants(
    db: &impl ConnectionTrait,
    purchase: &course_purchase::Model,
    dispute_access: DisputeAccess,
) -> Result<bool, DbErr> {
    let siblings = course_purchase::Entity::find()
        .filter(course_purchase::Column::UserId.eq(purchase.user_id.as_str()))
        .filter(course_purchase::Column::CourseId.eq(purchase.course_id.as_str()))
        .filter(course_purchase::Column::NeedsRefund.eq(false))
        .all(db)
        .await?;
    for sibling in siblings.iter().filter(|sibling| sibling.id != purchase.id) {
        if own_access(db, sibling, dispute_access).await?.has_access {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The fold for `purchase` alone.
async fn own_access(
    db: &impl ConnectionTrait,
    purchase: &course_purchase::Model,
    dispute_access: DisputeAccess,
) -> Result<Access, DbErr> {
    let facts = match &purchase.stripe_payment_intent_id {
        Some(payment_intent_id) => for_payment(db, payment_intent_id).await?,
        None => Vec::new(),
    };
    let checkout = Checkout {
        status: purchase.status,
        amount_total: purchase.amount_total,
        needs_refund: purchase.needs_refund,
    };
    Ok(reversals::access(checkout, &as_reversals(&facts), dispute_access))
}
