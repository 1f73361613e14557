use clap::Parser;
use payments_svc::cli::Cli;
use payments_svc::config::Settings;
use payments_svc::ops::Command;
use payments_svc::{ops, startup::Application};
use service_kit::logs::{self, Output};
use service_kit::shutdown;
use service_kit::traces::Traces;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Serve) => {
            let traces = Traces::from_env("payments-svc")?;
            let logs = logs::init(cli.args.log_format, Output::Stdout, traces.as_ref());
            let settings = Settings::try_from(cli.args)?;
            let app = Application::build(&settings).await?;
            let stopped = app.run_until_stopped(shutdown::signal()).await;
            if let Some(traces) = traces {
                traces.shutdown().await;
            }
            drop(logs);
            stopped
        }
        Some(command) => {
            let _logs = logs::init(cli.args.log_format, Output::Stderr, None);
            ops::run(command, &Settings::try_from(cli.args)?).await
        }
    }
}
