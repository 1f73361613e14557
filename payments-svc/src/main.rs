use clap::Parser;
use payments_svc::{config::Settings, shutdown, startup::Application, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    telemetry::init(settings.log_format);
    let app = Application::build(&settings).await?;
    app.run_until_stopped(shutdown::signal()).await
}
