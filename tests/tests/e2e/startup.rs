//! Starting several replicas at once on a new database.

use crate::helpers::{TestDb, on_both_databases};

on_both_databases!(replicas_starting_together_on_a_new_database_all_come_up);
async fn replicas_starting_together_on_a_new_database_all_come_up(db: TestDb) {
    let settings = payments_svc::config::Settings::local(&db.url);
    let mut replicas = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let settings = settings.clone();
        replicas.spawn(async move { payments_svc::startup::Application::build(&settings).await.map(drop) });
    }

    let started = replicas.join_all().await;

    for (replica, result) in started.iter().enumerate() {
        assert!(result.is_ok(), "replica {replica}: {:?}", result.as_ref().err());
    }
}
