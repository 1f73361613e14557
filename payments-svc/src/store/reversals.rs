//! Queries on `payment_reversals`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, Condition, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

use super::entities::course_purchase;
use super::entities::payment_reversal::{ActiveModel, Column, Entity, Model};
use payments_domain::reversals::{self, Access, Checkout, DisputeAccess, Reversal, ReversalStatus};

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
        kind: Set(fact.reversal.kind().into()),
        object_id: Set(fact.reversal.object_id.clone()),
        status: Set(fact.reversal.status.as_str().to_owned()),
        amount: Set(fact.reversal.amount),
        complete: Set(fact.reversal.complete()),
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
    let mut facts = for_payments(db, &[payment_intent_id]).await?;
    Ok(facts.remove(payment_intent_id).unwrap_or_default())
}

/// [`for_payment`] for each of `payment_intent_ids`, in two queries.
pub async fn for_payments(
    db: &impl ConnectionTrait,
    payment_intent_ids: &[&str],
) -> Result<HashMap<String, Vec<Model>>, DbErr> {
    if payment_intent_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let named = Entity::find()
        .filter(Column::PaymentIntentId.is_in(payment_intent_ids.iter().copied()))
        .all(db)
        .await?;
    let mut payment_of_charge: HashMap<String, String> = HashMap::new();
    for fact in &named {
        if let (Some(charge), Some(payment)) = (&fact.charge_id, &fact.payment_intent_id) {
            payment_of_charge.insert(charge.clone(), payment.clone());
        }
    }
    let by_charge_only = if payment_of_charge.is_empty() {
        Vec::new()
    } else {
        Entity::find()
            .filter(Column::PaymentIntentId.is_null())
            .filter(Column::ChargeId.is_in(payment_of_charge.keys().cloned()))
            .all(db)
            .await?
    };
    let mut facts: HashMap<String, Vec<Model>> = HashMap::new();
    for fact in named {
        let payment = fact.payment_intent_id.clone().unwrap_or_default();
        facts.entry(payment).or_default().push(fact);
    }
    for fact in by_charge_only {
        let payment = fact.charge_id.as_ref().and_then(|charge| payment_of_charge.get(charge));
        if let Some(payment) = payment {
            facts.entry(payment.clone()).or_default().push(fact);
        }
    }
    Ok(facts)
}

/// Each of `charge_ids` that a fact ties to a payment, with that payment.
pub async fn payments_of_charges(
    db: &impl ConnectionTrait,
    charge_ids: &[&str],
) -> Result<Vec<(String, String)>, DbErr> {
    if charge_ids.is_empty() {
        return Ok(Vec::new());
    }
    let facts = Entity::find()
        .filter(Column::ChargeId.is_in(charge_ids.iter().copied()))
        .filter(Column::PaymentIntentId.is_not_null())
        .all(db)
        .await?;
    let tied: BTreeSet<(String, String)> =
        facts.into_iter().filter_map(|fact| Some((fact.charge_id?, fact.payment_intent_id?))).collect();
    Ok(tied.into_iter().collect())
}

/// Facts that reach no purchase (yet), newest first: reversals of payments
/// that are no course purchase, or of purchases not recorded here. A fact
/// that names only a charge reaches a purchase through another fact that
/// ties that charge to a recorded payment intent.
///
/// Written as `NOT EXISTS`, each an index lookup per fact, walking the
/// facts newest first (by index) until the limit is reached: a `NOT IN
/// (subquery)` is hashed only while the subquery's rows fit in `work_mem`,
/// and beyond that PostgreSQL compares every fact with every purchase. The
/// `OFFSET 0` (which changes nothing in an `EXISTS`) keeps each lookup per
/// fact: PostgreSQL would otherwise hash the whole purchases table, which
/// costs the same whatever the limit.
pub async fn unmatched(db: &impl ConnectionTrait, limit: u64) -> Result<Vec<Model>, DbErr> {
    unmatched_query(db.get_database_backend(), limit).all(db).await
}

/// The query of [`unmatched`] on `backend` (also planned by the plan test).
pub fn unmatched_query(backend: DbBackend, limit: u64) -> sea_orm::Select<Entity> {
    // PostgreSQL only (SQLite takes no OFFSET without a LIMIT, and looks
    // each fact up by index anyway).
    let per_fact = if backend == DbBackend::Postgres { " OFFSET 0" } else { "" };
    let unknown_payment =
        Condition::all().add(Column::PaymentIntentId.is_not_null()).add(Expr::cust(format!(
            "NOT EXISTS (SELECT 1 FROM course_purchases p \
         WHERE p.stripe_payment_intent_id = payment_reversals.payment_intent_id{per_fact})"
        )));
    let unknown_charge = Condition::all().add(Column::PaymentIntentId.is_null()).add(
        Condition::any().add(Column::ChargeId.is_null()).add(Expr::cust(format!(
            "NOT EXISTS (SELECT 1 FROM payment_reversals t \
             JOIN course_purchases p ON p.stripe_payment_intent_id = t.payment_intent_id \
             WHERE t.charge_id = payment_reversals.charge_id{per_fact})"
        ))),
    );
    Entity::find()
        .filter(Condition::any().add(unknown_payment).add(unknown_charge))
        .order_by_desc(Column::RecordedAt)
        .order_by_desc(Column::Id)
        .limit(limit)
}

/// The facts as the rules see them; a stored status that is not one of its
/// kind's is an error that names it.
pub fn as_reversals(facts: &[Model]) -> Result<Vec<Reversal>, DbErr> {
    facts
        .iter()
        .map(|fact| {
            let status = ReversalStatus::parse(fact.kind.into(), &fact.status)
                .map_err(|unknown| DbErr::Type(format!("payment_reversals {}: {unknown}", fact.id)))?;
            Ok(Reversal {
                object_id: fact.object_id.clone(),
                status,
                amount: fact.amount,
                currency: fact.currency.clone(),
                payment_intent_id: fact.payment_intent_id.clone(),
                charge_id: fact.charge_id.clone(),
            })
        })
        .collect()
}

/// `purchase`'s access, its checkout outcome and every reversal of its
/// payment counted, and its family's (see [`reversals::family`]).
pub async fn access_of(
    db: &impl ConnectionTrait,
    purchase: &course_purchase::Model,
    dispute_access: DisputeAccess,
) -> Result<Access, DbErr> {
    let family = with_families(db, std::slice::from_ref(purchase), dispute_access).await?;
    family
        .into_iter()
        .find(|(member, _)| member.id == purchase.id)
        .map(|(_, access)| access)
        .ok_or_else(|| DbErr::RecordNotFound(format!("purchase {}", purchase.stripe_checkout_session_id)))
}

/// Every purchase of the courses `purchases` are of, by the same buyers
/// (each purchase's family), as stored now, with its access.
pub async fn with_families(
    db: &impl ConnectionTrait,
    purchases: &[course_purchase::Model],
    dispute_access: DisputeAccess,
) -> Result<Vec<(course_purchase::Model, Access)>, DbErr> {
    use course_purchase::Column as Purchase;
    if purchases.is_empty() {
        return Ok(Vec::new());
    }
    let pairs: BTreeSet<(&str, &str)> =
        purchases.iter().map(|p| (p.user_id.as_str(), p.course_id.as_str())).collect();
    let any_pair = pairs.iter().fold(Condition::any(), |any, (user, course)| {
        any.add(Condition::all().add(Purchase::UserId.eq(*user)).add(Purchase::CourseId.eq(*course)))
    });
    let members = course_purchase::Entity::find().filter(any_pair).order_by_asc(Purchase::Id).all(db).await?;
    let payments: Vec<&str> = members.iter().filter_map(|p| p.stripe_payment_intent_id.as_deref()).collect();
    let facts = for_payments(db, &payments).await?;
    let mut families: BTreeMap<(&str, &str), Vec<&course_purchase::Model>> = BTreeMap::new();
    for member in &members {
        families.entry((member.user_id.as_str(), member.course_id.as_str())).or_default().push(member);
    }
    let mut accesses: HashMap<i64, Access> = HashMap::new();
    for family in families.values() {
        let counted: Vec<(Checkout, Vec<Reversal>)> = family
            .iter()
            .map(|member| {
                let reached = member.stripe_payment_intent_id.as_ref().and_then(|pi| facts.get(pi));
                Ok((
                    checkout_of(member),
                    reached.map(|facts| as_reversals(facts)).transpose()?.unwrap_or_default(),
                ))
            })
            .collect::<Result<_, DbErr>>()?;
        let inputs: Vec<(Checkout, &[Reversal])> =
            counted.iter().map(|(checkout, facts)| (*checkout, facts.as_slice())).collect();
        for (member, access) in family.iter().zip(reversals::family(&inputs, dispute_access)) {
            accesses.insert(member.id, access);
        }
    }
    Ok(members
        .into_iter()
        .filter_map(|member| Some((accesses.remove(&member.id)?, member)))
        .map(|(a, m)| (m, a))
        .collect())
}

fn checkout_of(purchase: &course_purchase::Model) -> Checkout {
    Checkout {
        status: purchase.status.into(),
        amount_total: purchase.amount_total,
        needs_refund: purchase.needs_refund,
    }
}
