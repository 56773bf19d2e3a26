//! `agent-svc`: the agent service. It reads states from the state topic in a consumer group
//! shared by all replicas, answers each with an action chosen by its policy, and learns from the
//! rewards later states carry. It never reads the dataset. With `--env recogym` it serves
//! RecoGym states instead, with policies trained first on a logging run read back from the
//! RecoGym topics (`--train-env-id`).
//!
//! Invariant: a state's offset is committed only after the action answering it is acknowledged
//! (or, for a state that needs no answer, after it was handled), so a crash loses no step; the
//! env ignores the duplicates a restart may produce.

pub mod core;
pub mod link;
pub mod policies;
pub mod train_logs;

use std::time::Duration;

use anyhow::Context;
use common::{
    kafka::{EnvKind, KafkaArgs, RecoGymTopics, Topics, TuningArgs},
    link::Raw,
    registry::RegistryArgs,
};
use futures::{future::BoxFuture, stream::FuturesUnordered, StreamExt};
use protocol::{ActionMsg, Codec, RecoStateMsg, StepState};
use tokio_util::sync::CancellationToken;

use crate::{
    core::{AgentCore, AgentStats},
    link::AgentLink,
    policies::{recogym::RecoGymPolicyArgs, PolicyKind},
};

/// `agent-svc run`: answer states with actions through Kafka until stopped.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Environment served: `fashion` (`StateMsg` on the fashion topics) or `recogym`
    /// (`RecoStateMsg` on the RecoGym topics).
    #[arg(long = "env", env = "ENV_KIND", value_enum, default_value_t = EnvKind::Fashion)]
    pub env: EnvKind,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub topics: Topics,
    #[command(flatten)]
    pub recogym_topics: RecoGymTopics,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// RecoGym: the env id of a logging run (e.g. `reco-gym-v1/3f2a9c`) whose states and
    /// actions, read back from the RecoGym topics, the policy is trained on before it serves.
    #[arg(long, env = "AGENT_TRAIN_ENV_ID")]
    pub train_env_id: Option<String>,
    /// RecoGym: read the logging run from records this recent only (e.g. `2h`), instead of
    /// from the start of the topics.
    #[arg(long, env = "AGENT_TRAIN_SINCE", value_parser = humantime::parse_duration)]
    pub train_since: Option<Duration>,
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
    /// Settings of the RecoGym policies `likelihood` and `nn`.
    #[command(flatten)]
    pub recogym: RecoGymPolicyArgs,
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

    /// A RecoGym agent over `products` products, its policy trained on `log` when given
    /// (RecoGym's protocol: train on a logging policy's logs, then serve frozen).
    pub fn try_build_recogym(
        &self,
        products: u32,
        log: Option<&recogym::Log>,
    ) -> anyhow::Result<AgentCore<RecoStateMsg>> {
        let replica = self.replica_id.clone().unwrap_or_else(default_replica_id);
        let age_ms = i64::try_from(self.max_state_age.as_millis()).unwrap_or(i64::MAX);
        if log.is_none() && policies::recogym::needs_logs(self.policy) {
            tracing::warn!(policy = self.policy.name(), "no training logs: the policy serves untrained");
        }
        let policy = policies::recogym::build(self.policy, products, log, &self.recogym, &self.dqn, self.agent_seed)?;
        Ok(AgentCore::new(policy, self.agent_seed, replica, age_ms))
    }

    /// An untrained RecoGym agent, built on the first state it sees (which gives the number of
    /// products); for the policies that need no logs (`random`, `user-count`, `dqn` learning
    /// online).
    pub fn try_build_recogym_untrained(&self) -> anyhow::Result<AgentCore<RecoStateMsg>> {
        let replica = self.replica_id.clone().unwrap_or_else(default_replica_id);
        let age_ms = i64::try_from(self.max_state_age.as_millis()).unwrap_or(i64::MAX);
        let (policy, args, dqn, seed) = (self.policy, self.recogym.clone(), self.dqn.clone(), self.agent_seed);
        let lazy = policies::recogym::Lazy::new(policy.name(), move |products| {
            policies::recogym::build(policy, products, None, &args, &dqn, seed)
        });
        Ok(AgentCore::new(Box::new(lazy), self.agent_seed, replica, age_ms))
    }
}

fn default_replica_id() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// This machine's host name (`/etc/hostname`; in a container, the container's id), or `agent`.
pub(crate) fn host_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() {
        "agent".into()
    } else {
        host
    }
}

/// Answers states over `link` until `shutdown` or the link closes; returns the counters.
pub async fn drive<S, L>(
    core: &mut AgentCore<S>,
    link: &mut L,
    state_codec: &Codec<S>,
    action_codec: &Codec<ActionMsg>,
    max_batch: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentStats>
where
    S: StepState + protocol::Message + Clone,
    L: AgentLink,
{
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

/// `agent-svc run`: joins the group and answers until SIGTERM; returns the counters. With
/// `--env recogym` and `--train-env-id`, first reads that run back and trains the policy.
pub async fn run(cfg: RunArgs, shutdown: CancellationToken) -> anyhow::Result<AgentStats> {
    let topics = cfg.topics.of(cfg.env, &cfg.recogym_topics);
    let stats = match cfg.env {
        EnvKind::Fashion => {
            let core = cfg.agent.try_build()?;
            serve(core, &cfg, &topics, shutdown).await?
        }
        EnvKind::Recogym => {
            let core = match &cfg.train_env_id {
                Some(env_id) => {
                    let since_ms = cfg.train_since.map(|d| common::kafka::now_ms() - d.as_millis() as i64);
                    let log = read_training_log(&cfg.kafka, &topics, env_id, since_ms).await?;
                    let products = policies::recogym::logs::products_in(&log);
                    anyhow::ensure!(products > 0, "the logging run {env_id} has no message on {}", topics.state_topic);
                    let agent = cfg.agent.clone();
                    tokio::task::spawn_blocking(move || agent.try_build_recogym(products, Some(&log)))
                        .await
                        .context("training panicked")??
                }
                None => {
                    anyhow::ensure!(
                        !policies::recogym::needs_logs(cfg.agent.policy),
                        "--policy {} learns from logs only: give --train-env-id",
                        cfg.agent.policy.name()
                    );
                    cfg.agent.try_build_recogym_untrained()?
                }
            };
            serve(core, &cfg, &topics, shutdown).await?
        }
    };
    if let Some(path) = &cfg.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(stats)
}

/// Reads a logging run back from the RecoGym topics and rebuilds RecoGym's log from it.
pub async fn read_training_log(
    kafka: &KafkaArgs,
    topics: &Topics,
    env_id: &str,
    since_ms: Option<i64>,
) -> anyhow::Result<recogym::Log> {
    let started = std::time::Instant::now();
    let (kafka, topics, id) = (kafka.clone(), topics.clone(), env_id.to_string());
    let run = tokio::task::spawn_blocking(move || train_logs::read_run(&kafka, &topics, &id, since_ms))
        .await
        .context("log reader panicked")??;
    let log = policies::recogym::logs::log_from_messages(&run.states, &run.actions);
    tracing::info!(
        env_id,
        states = run.states.len(),
        actions = run.actions.len(),
        other_runs = run.other_runs,
        undecodable = run.undecodable,
        rows = log.rows.len(),
        seconds = started.elapsed().as_secs_f64(),
        "training logs read back"
    );
    Ok(log)
}

/// Joins the group on `topics` and answers with `core` until SIGTERM.
async fn serve<S>(
    mut core: AgentCore<S>,
    cfg: &RunArgs,
    topics: &Topics,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentStats>
where
    S: StepState + protocol::Message + Clone,
{
    use common::registry::Registry;
    let (state_codec, action_codec) = Registry::new(&cfg.registry).step_codecs::<S>(topics).await?;
    let mut link =
        link::KafkaAgentLink::connect(&cfg.kafka, &cfg.tuning, topics.clone(), &cfg.group_id, &cfg.offset_reset)?;
    tracing::info!(policy = core.policy_name(), group = %cfg.group_id, env = ?cfg.env, ?cfg.agent, "agent starts");
    let stats = drive(&mut core, &mut link, &state_codec, &action_codec, cfg.agent.max_batch, shutdown).await?;
    link.close();
    tracing::info!(?stats, "agent stopped");
    Ok(stats)
}
