//! `env-svc`: the environment. It publishes states to `fashion_state` and reads the agent's
//! actions from `fashion_action`. This build carries the service's frame (config, logs,
//! `check`); the step loop on the Amazon Fashion data arrives with the step-loop issue.

use clap::{Parser, Subcommand};
use common::{kafka::KafkaArgs, registry::RegistryArgs, telemetry::LogFormat};
use protocol::topics::{value_subject, ACTION_TOPIC, DEAD_LETTER_TOPIC, STATE_TOPIC};

/// The recommendation environment: turns user review sequences into episodes and talks to the
/// agent only through Kafka.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    registry: RegistryArgs,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print what this service sees of the stack (brokers, topics, schema subjects) as JSON;
    /// exit non-zero when a topic or subject it needs is missing.
    Check,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::telemetry::init(cli.log_format);
    match cli.command {
        Command::Check => {
            let subjects = [value_subject(STATE_TOPIC), value_subject(ACTION_TOPIC)];
            let topics = [STATE_TOPIC, ACTION_TOPIC, DEAD_LETTER_TOPIC];
            let report =
                common::check::report(&cli.kafka, &cli.registry, &topics, &subjects).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}
