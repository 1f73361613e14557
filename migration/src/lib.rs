//! Schema migrations for payments-svc.
//!
//! Migrations never import the service's entity structs, so an old migration
//! means the same thing forever. Every migration runs on SQLite (the embedded
//! default) and PostgreSQL (production), inside a transaction on both.

pub use sea_orm_migration::prelude::*;

mod m20261127_000001_create_stripe_webhook_events;
mod m20261127_000002_create_course_purchases;
mod m20261127_000003_keep_payloads_inline;
mod m20261201_000004_create_payment_reversals;
mod m20261201_000005_create_refund_requests;
mod m20261201_000006_create_purchase_changes;
mod m20261202_000007_keep_conflicting_bodies;
mod m20261202_000008_keep_the_access_cause;
mod m20261203_000009_second_payments_decided_by_the_rules;
mod m20261203_000010_count_the_writes;
mod m20261203_000011_index_purchases_by_payment_intent;
mod m20261204_000012_index_reversals_by_recording;
mod m20261204_000013_index_events_by_arrival;
mod m20261204_000014_index_events_by_status;
mod m20261204_000015_retention_without_a_walk;
mod m20261204_000016_events_name_the_payment_they_reverse;
mod m20261204_000017_purchases_know_when_checkout_began;
mod m20261204_000018_feeds_start_from_their_own_origin;
mod m20261204_000019_create_sync_checkpoints;

/// All migrations, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_create_stripe_webhook_events::Migration),
            Box::new(m20261127_000002_create_course_purchases::Migration),
            Box::new(m20261127_000003_keep_payloads_inline::Migration),
            Box::new(m20261201_000004_create_payment_reversals::Migration),
            Box::new(m20261201_000005_create_refund_requests::Migration),
            Box::new(m20261201_000006_create_purchase_changes::Migration),
            Box::new(m20261202_000007_keep_conflicting_bodies::Migration),
            Box::new(m20261202_000008_keep_the_access_cause::Migration),
            Box::new(m20261203_000009_second_payments_decided_by_the_rules::Migration),
            Box::new(m20261203_000010_count_the_writes::Migration),
            Box::new(m20261203_000011_index_purchases_by_payment_intent::Migration),
            Box::new(m20261204_000012_index_reversals_by_recording::Migration),
            Box::new(m20261204_000013_index_events_by_arrival::Migration),
            Box::new(m20261204_000014_index_events_by_status::Migration),
            Box::new(m20261204_000015_retention_without_a_walk::Migration),
            Box::new(m20261204_000016_events_name_the_payment_they_reverse::Migration),
            Box::new(m20261204_000017_purchases_know_when_checkout_began::Migration),
            Box::new(m20261204_000018_feeds_start_from_their_own_origin::Migration),
            Box::new(m20261204_000019_create_sync_checkpoints::Migration),
        ]
    }
}
