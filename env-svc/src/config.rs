//! Configuration of `env-svc run`: every flag has an environment-variable fallback and a doc
//! comment, which is its `--help` text.

use std::{path::PathBuf, time::Duration};

use common::{
    kafka::{KafkaArgs, TuningArgs},
    registry::RegistryArgs,
};

use crate::{
    data::{DatasetArgs, Split},
    link::Topics,
};

/// `env-svc run`: play episodes against the agent through Kafka.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub topics: Topics,
    #[command(flatten)]
    pub dataset: DatasetArgs,
    #[command(flatten)]
    pub episodes: EpisodeArgs,
    /// Run id, part of the env id `fashion-v1/<run id>` every message carries (default: random).
    #[arg(long, env = "RUN_ID")]
    pub run_id: Option<String>,
    /// Also write the end-of-run summary as JSON to this file.
    #[arg(long, env = "SUMMARY_JSON")]
    pub summary_json: Option<PathBuf>,
    /// No progress bars while loading the data.
    #[arg(long, env = "QUIET")]
    pub quiet: bool,
}

/// How many episodes, how they run and which users they replay.
#[derive(Debug, Clone, clap::Args)]
pub struct EpisodeArgs {
    /// Episodes to play; users are replayed in a seeded order, cycling when fewer.
    #[arg(long, env = "EPISODES", default_value_t = 200)]
    pub episodes: usize,
    /// Episodes in flight at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Step limit of an episode; a longer sequence is truncated.
    #[arg(long, env = "MAX_STEPS", default_value_t = 50)]
    pub max_steps: u32,
    /// A step whose action has not arrived after this long is published again (e.g. 2s, 500ms).
    #[arg(long, env = "ACTION_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub action_timeout: Duration,
    /// Users whose sequences become episodes.
    #[arg(long, env = "SPLIT", value_enum, default_value_t = Split::Train)]
    pub split: Split,
    /// Seed of the order in which users are replayed.
    #[arg(long, env = "SEED", default_value_t = 0)]
    pub seed: u64,
}

impl EpisodeArgs {
    /// The split as the summary names it.
    pub fn split_name(&self) -> &'static str {
        match self.split {
            Split::Train => "train",
            Split::Test => "test",
            Split::All => "all",
        }
    }
}
