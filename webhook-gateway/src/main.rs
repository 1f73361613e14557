use clap::Parser;
use service_kit::logs::{self, Output};
use service_kit::shutdown;
use webhook_gateway::config::{Cli, Settings};
use webhook_gateway::startup::Application;

/// mimalloc returns freed memory to the system soon after a burst (a flood
/// of large bodies), where glibc's allocator kept most of it: chosen by
/// measurement, see bench/README.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _logs = logs::init(cli.log_format, Output::Stdout);
    let settings = Settings::try_from(cli)?;
    let app = Application::build(&settings).await?;
    app.run_until_stopped(shutdown::signal()).await
}
