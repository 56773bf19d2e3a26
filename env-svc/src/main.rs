//! `env-svc` binary: parses config, starts logging and runs a subcommand from the library.

use clap::{Parser, Subcommand};
use common::telemetry::LogFormat;
use env_svc::config::RunArgs;
use fashion::cli;

/// The recommendation environment: turns users (Amazon Fashion review sequences, or RecoGym's
/// simulated users) into episodes and talks to the agent only through Kafka.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Play episodes against agent-svc through Kafka and print the summary.
    Run(Box<RunArgs>),
    /// Write a synthetic dataset in the exact 2018 Amazon Fashion format.
    Generate(cli::GenerateArgs),
    /// Load and preprocess a dataset, print its statistics (and time and peak memory).
    Inspect(cli::InspectArgs),
    /// Print what this service sees of the stack (brokers, topics, schema subjects) as JSON;
    /// exit non-zero when a topic or subject it needs is missing.
    Check(common::check::StackArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::telemetry::init(cli.log_format);
    match cli.command {
        Command::Run(args) => {
            let summary = env_svc::run(*args, common::shutdown::on_signals()).await?;
            println!("{summary}");
            summary.ensure_complete()?;
        }
        Command::Generate(args) => cli::run_generate(&args)?,
        Command::Inspect(args) => cli::run_inspect(&args)?,
        Command::Check(stack) => println!("{}", serde_json::to_string_pretty(&stack.check().await?)?),
    }
    Ok(())
}
