//! `streamrec-sim`: env-svc and agent-svc in one process over bounded in-memory channels, for
//! fast experiments and to measure what Kafka costs (`make sim TRANSPORT=memory`).

use std::{path::PathBuf, sync::Arc};

use agent_svc::AgentArgs;
use anyhow::Context;
use clap::{Parser, Subcommand};
use common::telemetry::LogFormat;
use env_svc::{config::EpisodeArgs, data::DatasetArgs};

/// Runs env-svc and agent-svc together in one process.
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
    /// Join env and agent with bounded in-memory channels (no broker) and play the episodes.
    Memory {
        #[command(flatten)]
        dataset: DatasetArgs,
        #[command(flatten)]
        episodes: EpisodeArgs,
        #[command(flatten)]
        agent: AgentArgs,
        /// Capacity of each channel, in records.
        #[arg(long, env = "CHANNEL_CAPACITY", default_value_t = 1024)]
        capacity: usize,
        /// Also write the summary as JSON to this file.
        #[arg(long, env = "SUMMARY_JSON")]
        summary_json: Option<PathBuf>,
        /// No progress bars while loading the data.
        #[arg(long, env = "QUIET")]
        quiet: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::telemetry::init(cli.log_format);
    match cli.command {
        Command::Memory { dataset, episodes, agent, capacity, summary_json, quiet } => {
            let ds = tokio::task::spawn_blocking(move || dataset.load(quiet)).await.context("loader panicked")??;
            let outcome =
                sim::run_memory(Arc::new(ds), &episodes, &agent, capacity, common::shutdown::on_signals()).await?;
            println!("{}", outcome.summary);
            println!(
                "  agent: policy {:?}, {} actions, {} learned",
                agent.policy, outcome.agent.actions, outcome.agent.learned
            );
            if let Some(path) = summary_json {
                env_svc::write_json(&path, &outcome.summary)?;
            }
        }
    }
    Ok(())
}
