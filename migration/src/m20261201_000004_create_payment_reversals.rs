//! `payment_reversals`: the facts of money going back (refunds, disputes,
//! refunded charges), one row per distinct change. A purchase's access is a
//! fold over its checkout outcome and these facts, so the order in which
//! Stripe delivers them never matters, and a reversal that arrives before
//! its purchase simply waits here for it.
//!
//! A row is keyed by the Stripe object, its status and its amount: two Event
//! objects for one change count once, and each refund or dispute keeps every
//! status it was seen in. Rows reach a purchase through `payment_intent`, or
//! through `charge` when another row ties that charge to a payment intent.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PaymentReversals::Table)
                    .col(big_pk_auto(PaymentReversals::Id))
                    .col(string_len(PaymentReversals::Kind, 16))
                    .col(string(PaymentReversals::ObjectId))
                    .col(string_len(PaymentReversals::Status, 32))
                    .col(big_integer(PaymentReversals::Amount))
                    .col(boolean(PaymentReversals::Complete).default(false))
                    .col(string_len_null(PaymentReversals::Currency, 3))
                    .col(string_null(PaymentReversals::PaymentIntentId))
                    .col(string_null(PaymentReversals::ChargeId))
                    .col(string(PaymentReversals::EventId))
                    .col(big_integer(PaymentReversals::StripeCreatedAt))
                    .col(timestamp_with_time_zone(PaymentReversals::RecordedAt))
                    .to_owned(),
            )
            .await?;
        for (name, columns) in [
            (
                "ux_payment_reversals_change",
                &[PaymentReversals::ObjectId, PaymentReversals::Status, PaymentReversals::Amount][..],
            ),
            ("idx_payment_reversals_payment_intent_id", &[PaymentReversals::PaymentIntentId][..]),
            ("idx_payment_reversals_charge_id", &[PaymentReversals::ChargeId][..]),
        ] {
            let mut index = Index::create();
            index.name(name).table(PaymentReversals::Table);
            for column in columns {
                index.col(column.clone());
            }
            if name.starts_with("ux_") {
                index.unique();
            }
            manager.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(PaymentReversals::Table).to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden, Clone)]
enum PaymentReversals {
    Table,
    Id,
    /// `refund`, `dispute` or `charge` (a `charge.refunded` snapshot).
    Kind,
    /// `re_...`, `dp_...` or `ch_...`.
    ObjectId,
    /// The object's status as this change reported it (for a charge:
    /// `refunded` or `partially_refunded`).
    Status,
    /// The refund's or dispute's amount; for a charge, `amount_refunded`.
    Amount,
    /// For a charge: Stripe's `refunded` (refunded in full).
    Complete,
    Currency,
    PaymentIntentId,
    ChargeId,
    /// The first event that reported this change.
    EventId,
    StripeCreatedAt,
    RecordedAt,
}
