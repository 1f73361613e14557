use clap::Parser;
use payments_svc::config::{Cli, Command, Settings};
use payments_svc::{operator, startup::Application};
use service_kit::logs::{self, Output};
use service_kit::shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => {
            let _logs = logs::init(cli.args.log_format, Output::Stdout);
            let settings = Settings::try_from(cli.args)?;
            let app = Application::build(&settings).await?;
            app.run_until_stopped(shutdown::signal()).await
        }
        Some(command) => {
            let _logs = logs::init(cli.args.log_format, Output::Stderr);
            operator::run(command, &Settings::try_from(cli.args)?).await
        }
    }
}
