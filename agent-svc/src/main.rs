//! `agent-svc` binary: parses config, starts logging and runs a subcommand from the library.

use clap::{CommandFactory, Parser, Subcommand};
use common::telemetry::LogFormat;

/// The recommendation agent: answers states with recommended products and learns from the
/// rewards; talks to the environment only through Kafka.
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
    /// Answer states with actions through Kafka until SIGTERM or SIGINT.
    Run(Box<agent_svc::RunArgs>),
    /// Train the DQN from the state and action topics and publish its weights for the
    /// replicas of `run --learning shared`, until SIGTERM or SIGINT.
    Learn(Box<agent_svc::learn::LearnArgs>),
    /// Estimate what a target policy (`--policy`) would have earned on an archived run
    /// (`--env-id`): IPS, SNIPS, the direct method and doubly robust, with bootstrap intervals
    /// over episodes, the effective sample size and support warnings (docs/OPE.md).
    Ope(Box<agent_svc::ope::OpeArgs>),
    /// Print what this service sees of the stack (brokers, topics, schema subjects) as JSON;
    /// exit non-zero when a topic or subject it needs is missing.
    Check(common::check::StackArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = common::cli::parse_with(agent_svc::policies::dqn::preset_defaults);
    if let Command::Run(args) = &cli.command {
        if let Err(refused) = args.agent.policy.check_env(args.stack.env) {
            Cli::command().error(clap::error::ErrorKind::ArgumentConflict, refused).exit();
        }
    }
    common::telemetry::init(cli.log_format);
    match cli.command {
        Command::Run(args) => {
            let stats = agent_svc::run(*args, common::shutdown::on_signals()).await?;
            println!("{}", serde_json::to_string(&stats)?);
        }
        Command::Learn(args) => {
            let stats = agent_svc::learn::learn(*args, common::shutdown::on_signals()).await?;
            println!("{}", serde_json::to_string(&stats)?);
        }
        Command::Ope(args) => {
            agent_svc::ope::run(*args).await?;
        }
        Command::Check(stack) => println!("{}", serde_json::to_string_pretty(&stack.check().await?)?),
    }
    Ok(())
}
