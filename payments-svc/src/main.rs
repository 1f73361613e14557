use clap::Parser;
use payments_svc::config::{Cli, Command};
use payments_svc::{operator, startup::Application};
use service_kit::logs::{self, Output};
use service_kit::shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => {
            let _logs = logs::init(cli.settings.log_format, Output::Stdout);
            let app = Application::build(&cli.settings).await?;
            app.run_until_stopped(shutdown::signal()).await
        }
        Some(command) => {
            let _logs = logs::init(cli.settings.log_format, Output::Stderr);
            operator::run(command, &cli.settings).await
        }
    }
}
