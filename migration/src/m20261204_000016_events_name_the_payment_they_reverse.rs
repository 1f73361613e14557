//! `stripe_webhook_events.reversed_payment_intent_id` and
//! `reversed_charge_id`: the payment a refund or dispute event names, each
//! with a partial index of the rows that have one.
//!
//! `payments-svc purchases show` lists every event about a payment, among
//! them the second Event object Stripe sends for a change already recorded
//! (`refund.created` and `charge.refunded` for one refund). It found those
//! by reading the payload of every refund and dispute event: 1.95 s at ten
//! million events, growing with the table. Now each such event names its
//! payment in columns the write path fills, and the lookup is an index
//! scan. Other events leave them NULL, so the partial indexes cost
//! checkouts nothing.
//!
//! Existing refund and dispute events are filled in from their payloads
//! (stored payloads are the JSON the gateway parsed; pruned ones are empty
//! and skipped). On a large live table this touches one row in ten or so;
//! build the indexes beforehand without blocking writes (see
//! docs/operating.md) and the migration finds them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The refund and dispute event types, as the rules read them.
const REVERSAL_TYPES: &str = "(event_type IN ('charge.refunded', 'refund.created', 'refund.updated', \
     'refund.failed', 'charge.refund.updated') OR event_type LIKE 'charge.dispute.%')";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let postgres = manager.get_database_backend() == DbBackend::Postgres;
        for column in ["reversed_payment_intent_id", "reversed_charge_id"] {
            // PostgreSQL: the columns may have been added beforehand, with
            // their indexes built concurrently (docs/operating.md).
            let if_new = if postgres { "IF NOT EXISTS " } else { "" };
            db.execute_unprepared(&format!(
                "ALTER TABLE stripe_webhook_events ADD COLUMN {if_new}{column} varchar NULL"
            ))
            .await?;
        }
        for (index, column) in [
            ("idx_stripe_webhook_events_reversed_payment_intent_id", "reversed_payment_intent_id"),
            ("idx_stripe_webhook_events_reversed_charge_id", "reversed_charge_id"),
        ] {
            db.execute_unprepared(&format!(
                "CREATE INDEX IF NOT EXISTS {index} ON stripe_webhook_events ({column}) WHERE {column} IS NOT NULL"
            ))
            .await?;
        }
        // A charge's own id is the charge; a refund or dispute names its charge.
        let backfill = if postgres {
            format!(
                "UPDATE stripe_webhook_events SET
                    reversed_payment_intent_id = payload::jsonb #>> '{{data,object,payment_intent}}',
                    reversed_charge_id = CASE WHEN event_type = 'charge.refunded'
                        THEN payload::jsonb #>> '{{data,object,id}}'
                        ELSE payload::jsonb #>> '{{data,object,charge}}' END
                 WHERE payload <> '' AND {REVERSAL_TYPES}"
            )
        } else {
            format!(
                "UPDATE stripe_webhook_events SET
                    reversed_payment_intent_id = json_extract(payload, '$.data.object.payment_intent'),
                    reversed_charge_id = CASE WHEN event_type = 'charge.refunded'
                        THEN json_extract(payload, '$.data.object.id')
                        ELSE json_extract(payload, '$.data.object.charge') END
                 WHERE payload <> '' AND {REVERSAL_TYPES}"
            )
        };
        db.execute_unprepared(&backfill).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for index in [
            "idx_stripe_webhook_events_reversed_payment_intent_id",
            "idx_stripe_webhook_events_reversed_charge_id",
        ] {
            manager.drop_index(Index::drop().name(index).table(Events::Table).to_owned()).await?;
        }
        for column in [Events::ReversedPaymentIntentId, Events::ReversedChargeId] {
            manager.alter_table(Table::alter().table(Events::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum Events {
    #[sea_orm(iden = "stripe_webhook_events")]
    Table,
    ReversedPaymentIntentId,
    ReversedChargeId,
}
