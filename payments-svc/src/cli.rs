//! The command line: the service's flags, and the operator commands.

use clap::Parser;

use crate::config::Args;
use crate::ops::Command;

/// The gRPC service that owns purchases and applies Stripe events. Without a
/// subcommand it serves with the flags below; each operator command takes
/// its own (see its `--help`), so the service's flags are refused beside
/// one rather than silently ignored.
#[derive(Debug, Parser)]
#[command(
    name = "payments-svc",
    version,
    about,
    after_help = service_kit::traces::ENVIRONMENT_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub args: Args,
    #[command(subcommand)]
    pub command: Option<Command>,
}
