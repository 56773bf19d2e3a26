//! `agent-svc` binary: parses config, starts logging and runs a subcommand from the library.

use clap::{Parser, Subcommand};
use common::{
    kafka::{EnvKind, KafkaArgs, RecoGymTopics, Topics},
    registry::RegistryArgs,
    telemetry::LogFormat,
};
use protocol::topics::value_subject;

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
    /// Print what this service sees of the stack (brokers, topics, schema subjects) as JSON;
    /// exit non-zero when a topic or subject it needs is missing.
    Check {
        /// Environment whose topics and subjects to check.
        #[arg(long = "env", env = "ENV_KIND", value_enum, default_value_t = EnvKind::Fashion)]
        env: EnvKind,
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        topics: Topics,
        #[command(flatten)]
        recogym_topics: RecoGymTopics,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::telemetry::init(cli.log_format);
    match cli.command {
        Command::Run(args) => {
            let stats = agent_svc::run(*args, common::shutdown::on_signals()).await?;
            println!("{}", serde_json::to_string(&stats)?);
        }
        Command::Check { env, kafka, registry, topics, recogym_topics } => {
            let t = topics.of(env, &recogym_topics);
            let subjects = [value_subject(&t.state_topic), value_subject(&t.action_topic)];
            let names = [t.state_topic.as_str(), t.action_topic.as_str(), t.dead_letter_topic.as_str()];
            let report = common::check::report(&kafka, &registry, &names, &subjects).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}
