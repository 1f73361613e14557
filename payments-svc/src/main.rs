use clap::Parser;
use payments_svc::cli::Cli;
use payments_svc::ops::{self, Command};
use payments_svc::startup;
use service_kit::logs::{self, Output};

/// jemalloc gives back to the system, within seconds, the memory that a
/// burst of change-feed watchers or a flood of events took, where glibc's
/// allocator kept it: chosen by measurement, see bench/README.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None => startup::serve(cli.args).await,
        Some(Command::Serve(args)) => startup::serve(*args).await,
        Some(command) => {
            let _logs = logs::init(cli.args.log_format, Output::Stderr, None);
            ops::run(command).await
        }
    }
}
