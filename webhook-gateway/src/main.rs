use clap::Parser;
use service_kit::logs::{self, Output};
use service_kit::shutdown;
use service_kit::traces::Traces;
use webhook_gateway::config::{Cli, Command, Settings};
use webhook_gateway::healthcheck;
use webhook_gateway::startup::Application;

/// jemalloc returns freed memory to the system soon after a burst (a flood
/// of large bodies), where glibc's allocator kept most of it: chosen by
/// measurement, see bench/README.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck(args)) = cli.command {
        return healthcheck::run(args).await;
    }
    let traces = Traces::from_env("webhook-gateway")?;
    let logs = logs::init(cli.log_format, Output::Stdout, traces.as_ref());
    let settings = Settings::try_from(cli)?;
    let app = Application::build(&settings).await?;
    let stopped = app.run_until_stopped(shutdown::signal()).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    drop(logs);
    stopped
}
