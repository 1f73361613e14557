use clap::Parser;
use payments_svc::config::{Cli, Command};
use payments_svc::{operator, shutdown, startup::Application, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => {
            telemetry::init(cli.settings.log_format, telemetry::Output::Stdout);
            let app = Application::build(&cli.settings).await?;
            app.run_until_stopped(shutdown::signal()).await
        }
        Some(command) => {
            telemetry::init(cli.settings.log_format, telemetry::Output::Stderr);
            operator::run(command, &cli.settings).await
        }
    }
}
