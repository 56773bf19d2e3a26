//! `agent-svc`: the agent service. It reads states from the state topic in a consumer group
//! shared by all replicas, answers each with an action chosen by its policy, and learns from the
//! rewards later states carry. It never reads the dataset.
//!
//! Invariant: a state's offset is committed only after the action answering it is acknowledged
//! (or, for a state that needs no answer, after it was handled), so a crash loses no step; the
//! env ignores the duplicates a restart may produce.

pub mod core;
pub mod link;
pub mod policies;

use std::time::Duration;

use anyhow::Context;
use common::{
    kafka::{KafkaArgs, Topics, TuningArgs},
    link::Raw,
    registry::RegistryArgs,
};
use futures::{future::BoxFuture, stream::FuturesUnordered, StreamExt};
use protocol::{ActionMsg, Codec, StateMsg};
use tokio_util::sync::CancellationToken;

use crate::{
    core::{AgentCore, AgentStats},
    link::AgentLink,
    policies::PolicyKind,
};

/// `agent-svc run`: answer states with actions through Kafka until stopped.
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
    pub agent: AgentArgs,
    /// Consumer group shared by all replicas; the state topic's partitions are split among them.
    #[arg(long, env = "AGENT_GROUP_ID", default_value = "agent")]
    pub group_id: String,
    /// Where a new group starts reading: `latest` (states published from now on) or `earliest`.
    #[arg(long, env = "AGENT_OFFSET_RESET", default_value = "latest")]
    pub offset_reset: String,
    /// Also write the agent's counters as JSON to this file on shutdown.
    #[arg(long, env = "AGENT_SUMMARY_JSON")]
    pub summary_json: Option<std::path::PathBuf>,
}

/// The policy and how it answers; shared by the Kafka and in-memory runs.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Policy that picks the recommended product.
    #[arg(long, env = "AGENT_POLICY", value_enum, default_value_t = PolicyKind::Random)]
    pub policy: PolicyKind,
    /// Exploration rate of epsilon-greedy policies.
    #[arg(long, env = "AGENT_EPSILON", default_value_t = 0.1)]
    pub epsilon: f64,
    /// Seed of the policy's random choices.
    #[arg(long, env = "AGENT_SEED", default_value_t = 0)]
    pub agent_seed: u64,
    /// This replica's id, carried in every action (default: host name and pid).
    #[arg(long, env = "REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Most states answered per batch (one policy call per batch).
    #[arg(long, env = "AGENT_MAX_BATCH", default_value_t = 256)]
    pub max_batch: usize,
    /// States older than this are skipped unanswered (a backlog left by a dead env run).
    #[arg(long, env = "AGENT_MAX_STATE_AGE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_state_age: Duration,
    /// Hyperparameters of `--policy dqn` (all `--dqn-*` flags and `--checkpoint-dir`).
    #[command(flatten)]
    pub dqn: policies::DqnArgs,
}

impl AgentArgs {
    /// The agent these settings describe, or why it cannot be built (only `dqn` can fail: a
    /// bad flag, a checkpoint of another network).
    pub fn try_build(&self) -> anyhow::Result<AgentCore> {
        let replica = self.replica_id.clone().unwrap_or_else(default_replica_id);
        let age_ms = i64::try_from(self.max_state_age.as_millis()).unwrap_or(i64::MAX);
        let policy = policies::build(self.policy, self.epsilon, &self.dqn, self.agent_seed)?;
        Ok(AgentCore::new(policy, self.agent_seed, replica, age_ms))
    }

    /// The agent these settings describe; panics where [`AgentArgs::try_build`] fails.
    pub fn build(&self) -> AgentCore {
        self.try_build().unwrap_or_else(|e| panic!("cannot build the agent: {e:#}"))
    }
}

fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    format!("{}-{}", if host.is_empty() { "agent" } else { &host }, std::process::id())
}

/// Answers states over `link` until `shutdown` or the link closes; returns the counters.
pub async fn drive<L: AgentLink>(
    core: &mut AgentCore,
    link: &mut L,
    state_codec: &Codec<StateMsg>,
    action_codec: &Codec<ActionMsg>,
    max_batch: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentStats> {
    type Pending = BoxFuture<'static, (Raw, Result<(), String>)>;
    let mut deliveries: FuturesUnordered<Pending> = FuturesUnordered::new();
    let max_in_flight = max_batch.max(1) * 8;
    let mut last_log = std::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some((raw, result)) = deliveries.next(), if !deliveries.is_empty() => {
                match result {
                    Ok(()) => link.done(&raw),
                    // The offset stays uncommitted: the state is re-read after a restart or
                    // rebalance, and the env re-sends it after its timeout meanwhile.
                    Err(e) => tracing::warn!(error = %e, partition = raw.partition, offset = raw.offset, "action not delivered"),
                }
            }
            batch = link.next_batch(max_batch), if deliveries.len() < max_in_flight => {
                let Ok(batch) = batch else { break };
                let mut states = Vec::with_capacity(batch.len());
                let mut sources = Vec::with_capacity(batch.len());
                for raw in batch {
                    link.begin(&raw);
                    match state_codec.decode(&raw.payload) {
                        Ok(d) => { states.push(d.msg); sources.push(raw); }
                        Err(e) => {
                            core.stats.dead_letters += 1;
                            tracing::warn!(partition = raw.partition, offset = raw.offset, error = %e, "state dead-lettered");
                            let dead = link.dead_letter(&raw, &e.to_string());
                            deliveries.push(Box::pin(async move { let r = dead.await; (raw, r) }));
                        }
                    }
                }
                // Policies may run a network forward pass: keep it off the async workers.
                let answers = tokio::task::block_in_place(|| core.handle(&states, common::kafka::now_ms()));
                for (raw, answer) in sources.into_iter().zip(answers) {
                    match answer {
                        None => link.done(&raw),
                        Some(action) => {
                            let payload = action_codec.encode(&action).context("agent produced an action that breaks its schema")?;
                            let delivery = link.publish(action.episode_id, payload);
                            deliveries.push(Box::pin(async move { let r = delivery.await; (raw, r) }));
                        }
                    }
                }
                if last_log.elapsed() >= Duration::from_secs(10) {
                    last_log = std::time::Instant::now();
                    let s = &core.stats;
                    tracing::info!(states = s.states, actions = s.actions, learned = s.learned, reward_sum = s.reward_sum, "progress");
                }
            }
        }
    }
    // Finish what is in flight so that its offsets can be committed.
    let drain = async {
        while let Some((raw, result)) = deliveries.next().await {
            if result.is_ok() {
                link.done(&raw);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
    // A learned policy writes its checkpoint, so a restarted agent resumes where it stopped.
    if let Err(e) = tokio::task::block_in_place(|| core.policy_mut().save()) {
        tracing::error!(error = %e, "checkpoint on shutdown failed");
    }
    Ok(core.stats.clone())
}

/// `agent-svc run`: joins the group and answers until SIGTERM; returns the counters.
pub async fn run(cfg: RunArgs, shutdown: CancellationToken) -> anyhow::Result<AgentStats> {
    use common::registry::Registry;

    let (state_codec, action_codec) = Registry::new(&cfg.registry).step_codecs(&cfg.topics).await?;
    let mut link =
        link::KafkaAgentLink::connect(&cfg.kafka, &cfg.tuning, cfg.topics.clone(), &cfg.group_id, &cfg.offset_reset)?;
    let mut core = cfg.agent.try_build()?;
    tracing::info!(policy = core.policy_name(), group = %cfg.group_id, ?cfg.agent, "agent starts");
    let stats = drive(&mut core, &mut link, &state_codec, &action_codec, cfg.agent.max_batch, shutdown).await?;
    link.close();
    tracing::info!(?stats, "agent stopped");
    if let Some(path) = &cfg.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(stats)
}
