//! The sea-orm-migration CLI: `cargo run -p migration -- up` applies pending
//! migrations to `DATABASE_URL` (`--help` lists the other commands).

#[tokio::main]
async fn main() {
    sea_orm_migration::cli::run_cli(migration::Migrator).await;
}
