use clap::Parser;
use webhook_gateway::config::{Cli, Settings};
use webhook_gateway::{shutdown, startup::Application, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let settings = Settings::try_from(cli)?;
    let app = Application::build(&settings).await?;
    app.run_until_stopped(shutdown::signal()).await
}
