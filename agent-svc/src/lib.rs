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
pub mod envs;
pub mod learn;
pub mod link;
pub mod ope;
pub mod policies;
pub mod train_logs;

use std::time::Duration;

use anyhow::Context;
use common::{
    check::StackArgs,
    kafka::{KafkaArgs, Topics, TuningArgs},
    link::Raw,
    offsets::Ticket,
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
    // The environment served (`--env`: `StateMsg` on the fashion topics, or `RecoStateMsg` on
    // the RecoGym ones) and where the stack is.
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
    /// `local`: each replica learns alone from the steps it answers; `shared`: replicas only
    /// act, on the versions `agent-svc learn` publishes on the weights topic; `frozen`: serve
    /// the checkpoint in `--checkpoint-dir` greedily (or exploring at `--frozen-epsilon`),
    /// learning nothing (`shared` and `frozen`: `--policy dqn`).
    #[arg(long, env = "AGENT_LEARNING", value_enum, default_value_t = learn::Learning::Local)]
    pub learning: learn::Learning,
    #[command(flatten)]
    pub weights: learn::WeightsArgs,
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
    #[command(flatten)]
    pub metrics: common::metrics::MetricsArgs,
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
    /// Policy that serves in place of `--policy` if it cannot start or fails while serving
    /// (`random`); by default none: the agent stops with a non-zero exit and the reason. With a
    /// fallback, actions carry the name of the policy that really answered, and the summary
    /// says why the fallback served.
    #[arg(long, env = "AGENT_POLICY_FALLBACK", value_enum)]
    pub policy_fallback: Option<Fallback>,
    /// Tries to deliver an action (the first produce and the re-produces after a failed
    /// delivery, with exponential backoff) before the state is dead-lettered as undeliverable
    /// and its offset resolved. Each try lasts up to `--message-timeout-ms`.
    #[arg(long, env = "AGENT_DELIVERY_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub delivery_attempts: u32,
    /// `--learning frozen`: explore uniformly with this probability instead of serving the
    /// checkpoint greedily (a logging policy for off-policy evaluation: every product keeps a
    /// propensity of at least this over the number of products, logged with each action).
    #[arg(long, env = "AGENT_FROZEN_EPSILON", default_value_t = 0.0)]
    pub frozen_epsilon: f64,
    /// Hyperparameters of `--policy dqn` (all `--dqn-*` flags and `--checkpoint-dir`).
    #[command(flatten)]
    pub dqn: policies::DqnArgs,
    /// Settings of the RecoGym policies `likelihood` and `nn`.
    #[command(flatten)]
    pub recogym: RecoGymPolicyArgs,
}

/// A policy that may serve in place of a failed one (`--policy-fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fallback {
    /// Uniform over the action space.
    Random,
}

impl AgentArgs {
    /// The agent these settings describe, or why it cannot be built (only `dqn` can fail: a
    /// bad flag, a checkpoint of another network).
    pub fn try_build(&self) -> anyhow::Result<AgentCore> {
        self.core_of(policies::build(self.policy, self.epsilon, &self.dqn, self.agent_seed))
    }

    /// The agent of a replica of `--learning shared`: the DQN serving the versions `inbox`
    /// receives from the weights topic.
    pub fn try_build_serving(&self, inbox: std::sync::Arc<policies::dqn::serving::Inbox>) -> anyhow::Result<AgentCore> {
        anyhow::ensure!(
            self.policy == PolicyKind::Dqn,
            "--learning shared serves the weights of a DQN learner: it needs --policy dqn, not {}",
            self.policy.name()
        );
        let dqn = policies::dqn::Dqn::serving(&self.dqn, self.agent_seed, inbox);
        self.core_of(dqn.map(|d| Box::new(d) as Box<dyn policies::Policy>))
    }

    /// The agent of `--learning frozen`: the DQN of the checkpoint in `--checkpoint-dir`, in
    /// evaluation mode (greedy, learning nothing, writing nothing).
    pub fn try_build_frozen(&self) -> anyhow::Result<AgentCore> {
        anyhow::ensure!(
            self.policy == PolicyKind::Dqn,
            "--learning frozen serves a DQN checkpoint: it needs --policy dqn, not {}",
            self.policy.name()
        );
        let mut dqn = policies::dqn::Dqn::new(&self.dqn, self.agent_seed)?;
        anyhow::ensure!(
            dqn.resumed(),
            "--learning frozen found no checkpoint in --checkpoint-dir {}",
            self.dqn.checkpoint_dir.as_deref().map_or("(none given)".into(), |d| d.display().to_string())
        );
        dqn.freeze(self.frozen_epsilon)?;
        self.core_of(Ok(Box::new(dqn)))
    }

    /// The agent around `policy`, or, when it cannot start, the fallback asked for (or the error).
    fn core_of(&self, policy: anyhow::Result<Box<dyn policies::Policy>>) -> anyhow::Result<AgentCore> {
        let replica = self.replica_id.clone().unwrap_or_else(default_replica_id);
        let age_ms = i64::try_from(self.max_state_age.as_millis()).unwrap_or(i64::MAX);
        let core = match policy {
            Ok(policy) => AgentCore::new(policy, self.agent_seed, replica, age_ms),
            Err(e) if self.policy_fallback.is_some() => {
                tracing::error!(
                    policy = self.policy.name(),
                    error = format!("{e:#}"),
                    "policy cannot start; the fallback asked for by --policy-fallback serves under its own name"
                );
                let mut core = AgentCore::new(Box::new(policies::Random), self.agent_seed, replica, age_ms);
                core.stats.fell_back =
                    Some(format!("{} cannot start: {e:#}; random served instead", self.policy.name()));
                return Ok(core);
            }
            Err(e) => return Err(e.context(format!("policy {} cannot start", self.policy.name()))),
        };
        Ok(match self.policy_fallback {
            Some(Fallback::Random) => core.with_fallback(Box::new(policies::Random)),
            None => core,
        })
    }

    /// The agent these settings describe; panics where [`AgentArgs::try_build`] fails.
    pub fn build(&self) -> AgentCore {
        self.try_build().unwrap_or_else(|e| panic!("cannot build the agent: {e:#}"))
    }

    /// The RecoGym agent these settings describe. With `trained_on = Some((log, products))` its
    /// policy is trained on the log of a logging run over `products` products first (RecoGym's
    /// protocol: train on a logging policy's logs, then serve frozen); with `None` it is built
    /// on the first state it sees, which gives the number of products (the policies that need
    /// no logs: `random`, `user-count`, `dqn` learning online).
    pub fn try_build_recogym(
        &self,
        trained_on: Option<(&recogym::Log, u32)>,
    ) -> anyhow::Result<AgentCore<RecoStateMsg>> {
        let replica = self.replica_id.clone().unwrap_or_else(default_replica_id);
        let age_ms = i64::try_from(self.max_state_age.as_millis()).unwrap_or(i64::MAX);
        let policy: Box<dyn policies::Policy<RecoStateMsg>> = match trained_on {
            Some((log, products)) => {
                policies::recogym::build(self.policy, products, Some(log), &self.recogym, &self.dqn, self.agent_seed)
                    .with_context(|| format!("policy {} cannot start", self.policy.name()))?
            }
            None => {
                anyhow::ensure!(
                    !policies::recogym::needs_logs(self.policy),
                    "--policy {} learns from logs only: give --train-env-id",
                    self.policy.name()
                );
                let (policy, args, dqn, seed) = (self.policy, self.recogym.clone(), self.dqn.clone(), self.agent_seed);
                Box::new(policies::recogym::Lazy::new(policy.name(), move |products| {
                    policies::recogym::build(policy, products, None, &args, &dqn, seed)
                }))
            }
        };
        Ok(self.recogym_fallback(AgentCore::new(policy, self.agent_seed, replica, age_ms)))
    }

    /// `core` with the RecoGym fallback policy asked for, if any.
    fn recogym_fallback(&self, core: AgentCore<RecoStateMsg>) -> AgentCore<RecoStateMsg> {
        match self.policy_fallback {
            Some(Fallback::Random) => {
                let (args, dqn, seed) = (self.recogym.clone(), self.dqn.clone(), self.agent_seed);
                let random = policies::recogym::Lazy::new("random", move |products| {
                    policies::recogym::build(PolicyKind::Random, products, None, &args, &dqn, seed)
                });
                core.with_fallback(Box::new(random))
            }
            None => core,
        }
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

/// How the agent loop delivers what it produces: the tries an action gets before its state is
/// dead-lettered, and the backoff between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Tries per action (the first produce included), and then per dead letter.
    pub attempts: u32,
    /// Wait before the first re-produce; doubled for each further one.
    pub first_backoff: Duration,
    /// Longest wait between two tries.
    pub max_backoff: Duration,
}

impl DeliveryPolicy {
    /// `attempts` tries, 200 ms backoff doubling up to 10 s.
    pub fn new(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }

    fn backoff(&self, failed_tries: u32) -> Duration {
        let factor = 1u32 << failed_tries.saturating_sub(1).min(16);
        self.first_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What the loop owes for one state read: its action, or (once the action is given up) the
/// state's dead letter; the state's offset is resolved when this is durable.
struct Outbound {
    raw: Raw,
    ticket: Ticket,
    what: Payload,
    /// Failed tries of `what` so far.
    failures: u32,
}

enum Payload {
    Action { key: String, bytes: Vec<u8> },
    DeadLetter { reason: String },
}

enum Event {
    /// A delivery finished, durably or not.
    Delivered(Outbound, Result<(), String>),
    /// A backoff ended: produce again.
    Retry(Outbound),
}

type Pending = BoxFuture<'static, Event>;

fn send<L: AgentLink>(link: &L, out: Outbound) -> Pending {
    let delivery = match &out.what {
        Payload::Action { key, bytes } => link.publish(key.clone(), bytes.clone()),
        Payload::DeadLetter { reason } => link.dead_letter(&out.raw, reason),
    };
    Box::pin(async move {
        let result = delivery.await;
        Event::Delivered(out, result)
    })
}

fn retry_after(out: Outbound, wait: Duration) -> Pending {
    Box::pin(async move {
        tokio::time::sleep(wait).await;
        Event::Retry(out)
    })
}

/// Answers states over `link` until `shutdown` or the link closes; returns the counters.
///
/// Every state read ends resolved: answered (its action acknowledged), or, when the action
/// cannot be delivered within `delivery.attempts` tries, dead-lettered with the reason; a
/// record that cannot be decoded is dead-lettered too. A dead letter that cannot be written
/// within its tries either stops the loop with an error (its offset stays uncommitted, so the
/// state is read again after a restart): nothing is dropped silently.
pub async fn drive<S, L>(
    core: &mut AgentCore<S>,
    link: &mut L,
    state_codec: &common::registry::TopicCodec<S>,
    action_codec: &Codec<ActionMsg>,
    max_batch: usize,
    delivery: DeliveryPolicy,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentStats>
where
    S: StepState + protocol::Message + Clone,
    L: AgentLink,
{
    let mut pending: FuturesUnordered<Pending> = FuturesUnordered::new();
    let max_in_flight = max_batch.max(1) * 8;
    let mut last_log = std::time::Instant::now();
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(event) = pending.next(), if !pending.is_empty() => {
                    if let Some(next) = on_event(core, link, event, delivery)? {
                        pending.push(next);
                    }
                }
                batch = link.next_batch(max_batch), if pending.len() < max_in_flight => {
                    let Ok(batch) = batch else { break };
                    let mut states = Vec::with_capacity(batch.len());
                    let mut sources = Vec::with_capacity(batch.len());
                    for raw in batch {
                        let ticket = link.begin(&raw);
                        match state_codec.decode_record_or_wait(raw.value(), &shutdown).await {
                            Ok(d) => { states.push(d.msg); sources.push((raw, ticket)); }
                            // Only when shut down while the registry could not be reached: the
                            // state is neither answered nor dead-lettered; its offset stays
                            // uncommitted and it is read again after a restart.
                            Err(e) if e.is_retryable() => {
                                tracing::warn!(partition = raw.partition, offset = raw.offset, error = %e, "state left unread: schema registry unavailable");
                            }
                            Err(e) => {
                                core.stats.dead_letters += 1;
                                tracing::warn!(partition = raw.partition, offset = raw.offset, error = %e, "state dead-lettered");
                                let what = Payload::DeadLetter { reason: e.to_string() };
                                pending.push(send(link, Outbound { raw, ticket, what, failures: 0 }));
                            }
                        }
                    }
                    // Policies may run a network forward pass: keep it off the async workers.
                    let answers = tokio::task::block_in_place(|| core.handle(&states, common::kafka::now_ms()))?;
                    for ((raw, ticket), answer) in sources.into_iter().zip(answers) {
                        match answer {
                            None => link.done(&ticket),
                            Some(action) => {
                                let bytes = action_codec.encode(&action).context("agent produced an action that breaks its schema")?;
                                let what = Payload::Action { key: action.episode_id, bytes };
                                pending.push(send(link, Outbound { raw, ticket, what, failures: 0 }));
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
        Ok(())
    }
    .await;
    // Finish what is in flight so that its offsets can be committed; no new tries start now
    // (what does not complete stays uncommitted and is read again after a restart).
    let mut unresolved = 0usize;
    let drain = async {
        while let Some(event) = pending.next().await {
            match event {
                Event::Delivered(out, Ok(())) => link.done(&out.ticket),
                Event::Delivered(..) | Event::Retry(_) => unresolved += 1,
            }
        }
    };
    let drained = tokio::time::timeout(Duration::from_secs(10), drain).await.is_ok();
    if unresolved > 0 || !drained {
        tracing::warn!(unresolved, drained, "stopping with states unresolved: they are read again after a restart");
    }
    result?;
    // A learned policy writes its checkpoint, so a restarted agent resumes where it stopped.
    tokio::task::block_in_place(|| core.policy_mut().save()).context("checkpoint on shutdown failed")?;
    Ok(core.stats.clone())
}

/// Handles a finished delivery or backoff; returns the next try to start, if any.
fn on_event<S, L: AgentLink>(
    core: &mut AgentCore<S>,
    link: &mut L,
    event: Event,
    delivery: DeliveryPolicy,
) -> anyhow::Result<Option<Pending>> {
    let mut out = match event {
        Event::Retry(out) => return Ok(Some(send(link, out))),
        Event::Delivered(out, Ok(())) => {
            link.done(&out.ticket);
            return Ok(None);
        }
        Event::Delivered(mut out, Err(e)) => {
            out.failures += 1;
            let (partition, offset, tries) = (out.raw.partition, out.raw.offset, out.failures);
            if out.failures < delivery.attempts {
                core.stats.delivery_retries += 1;
                let wait = delivery.backoff(out.failures);
                let what = if matches!(out.what, Payload::Action { .. }) { "action" } else { "dead letter" };
                tracing::warn!(error = %e, partition, offset, tries, ?wait, what, "delivery failed; producing again");
                return Ok(Some(retry_after(out, wait)));
            }
            if let Payload::DeadLetter { reason } = &out.what {
                anyhow::bail!(
                    "cannot resolve state {}/{partition}@{offset}: its dead letter ({reason}) failed {tries} times, last: {e}",
                    out.raw.topic
                );
            }
            core.stats.undeliverable += 1;
            core.stats.dead_letters += 1;
            let reason = format!("action not delivered after {tries} tries: {e}");
            tracing::error!(partition, offset, %reason, "state dead-lettered as undeliverable");
            out.what = Payload::DeadLetter { reason };
            out.failures = 0;
            out
        }
    };
    out.failures = 0;
    Ok(Some(send(link, out)))
}

/// `agent-svc run`: joins the group and answers until SIGTERM; returns the counters. With
/// `--env recogym` and `--train-env-id`, first reads that run back and trains the policy.
pub async fn run(cfg: RunArgs, shutdown: CancellationToken) -> anyhow::Result<AgentStats> {
    common::metrics::serve(&cfg.metrics, "agent-svc", true).await?;
    let topics = cfg.stack.topics();
    let stats = envs::serve(&cfg, &topics, shutdown).await?;
    if let Some(path) = &cfg.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&stats)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(stats)
}

/// Reads a logging run back from the RecoGym topics and rebuilds RecoGym's log from it.
pub async fn read_training_log(
    kafka: &KafkaArgs,
    registry: &RegistryArgs,
    topics: &Topics,
    env_id: &str,
    since_ms: Option<i64>,
) -> anyhow::Result<recogym::Log> {
    let started = std::time::Instant::now();
    let run = train_logs::read_run_checked(kafka, registry, topics, env_id, since_ms).await?;
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
pub(crate) async fn serve<S>(
    mut core: AgentCore<S>,
    cfg: &RunArgs,
    topics: &Topics,
    shutdown: CancellationToken,
) -> anyhow::Result<AgentStats>
where
    S: StepState + protocol::Message + Clone,
{
    use common::registry::Registry;
    let (state_codec, action_codec) = Registry::new(&cfg.stack.registry).step_codecs::<S>(topics).await?;
    common::metrics::ready(common::metrics::Dependency::Registry);
    core.export_to_prometheus();
    let mut link =
        link::KafkaAgentLink::connect(&cfg.stack.kafka, &cfg.tuning, topics.clone(), &cfg.group_id, &cfg.offset_reset)?;
    tracing::info!(policy = core.policy_name(), group = %cfg.group_id, env = ?cfg.stack.env, ?cfg.agent, "agent starts");
    let delivery = DeliveryPolicy::new(cfg.agent.delivery_attempts);
    let stats = drive(&mut core, &mut link, &state_codec, &action_codec, cfg.agent.max_batch, delivery, shutdown).await;
    core.export();
    link.close();
    let stats = stats?;
    tracing::info!(?stats, "agent stopped");
    Ok(stats)
}

#[cfg(test)]
mod delivery_tests {
    use std::{
        collections::VecDeque,
        sync::{Arc, Mutex},
    };

    use common::offsets::OffsetTracker;
    use protocol::messages::examples;

    use super::*;
    use crate::{core::AgentCore, link::AgentLink, policies::Random};

    /// A link whose deliveries fail as told; it serves its batches, then waits until every
    /// record it handed out is resolved and ends.
    struct Flaky {
        batches: VecDeque<Vec<Raw>>,
        tracker: OffsetTracker,
        action_failures: Arc<Mutex<u32>>,
        dead_letters_fail: bool,
        published: Arc<Mutex<Vec<String>>>,
        dead: Arc<Mutex<Vec<String>>>,
    }

    impl Flaky {
        fn new(states: usize, action_failures: u32, dead_letters_fail: bool) -> Self {
            let codec = Codec::<StateMsg>::new(1).unwrap_or_else(|e| panic!("{e}"));
            let raws = (0..states)
                .map(|i| {
                    let mut s = examples::state();
                    (s.episode_id, s.n_actions, s.ts_ms) = (format!("ep{i}"), 10, common::kafka::now_ms());
                    let payload = codec.encode(&s).unwrap_or_else(|e| panic!("{e}"));
                    Raw::in_memory("s", payload, i as i64)
                })
                .collect();
            Self {
                batches: VecDeque::from([raws]),
                tracker: OffsetTracker::default(),
                action_failures: Arc::new(Mutex::new(action_failures)),
                dead_letters_fail,
                published: Arc::default(),
                dead: Arc::default(),
            }
        }
    }

    use protocol::StateMsg;

    impl AgentLink for Flaky {
        async fn next_batch(&mut self, _max: usize) -> anyhow::Result<Vec<Raw>> {
            if let Some(b) = self.batches.pop_front() {
                return Ok(b);
            }
            // Keep the loop alive (deliveries resolve meanwhile) until nothing is in flight.
            while self.tracker.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            anyhow::bail!("no more states")
        }

        fn publish(&self, key: String, _payload: Vec<u8>) -> common::link::Delivery {
            let (failures, published) = (self.action_failures.clone(), self.published.clone());
            Box::pin(async move {
                let mut left = failures.lock().map_err(|e| e.to_string())?;
                if *left > 0 {
                    *left -= 1;
                    return Err("Local: Message timed out".into());
                }
                published.lock().map_err(|e| e.to_string())?.push(key);
                Ok(())
            })
        }

        fn dead_letter(&self, _raw: &Raw, reason: &str) -> common::link::Delivery {
            let (fail, dead, reason) = (self.dead_letters_fail, self.dead.clone(), reason.to_string());
            Box::pin(async move {
                if fail {
                    return Err("Broker: Not enough in-sync replicas".into());
                }
                dead.lock().map_err(|e| e.to_string())?.push(reason);
                Ok(())
            })
        }

        fn begin(&mut self, raw: &Raw) -> Ticket {
            self.tracker.begin(&raw.topic, raw.partition, raw.offset)
        }

        fn done(&mut self, ticket: &Ticket) {
            self.tracker.complete(ticket);
        }

        fn name(&self) -> &'static str {
            "flaky"
        }
    }

    fn fast(attempts: u32) -> DeliveryPolicy {
        DeliveryPolicy { attempts, first_backoff: Duration::from_millis(1), max_backoff: Duration::from_millis(4) }
    }

    async fn run(link: &mut Flaky, attempts: u32) -> anyhow::Result<core::AgentStats> {
        let mut core = AgentCore::new(Box::new(Random), 0, "r".into(), i64::MAX);
        let (states, actions) = common::registry::local_step_codecs()?;
        drive(&mut core, link, &states, &actions, 16, fast(attempts), CancellationToken::new()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_action_is_produced_again_and_its_state_resolved() -> anyhow::Result<()> {
        let mut link = Flaky::new(3, 4, false);
        let stats = run(&mut link, 5).await?;
        assert_eq!(stats.delivery_retries, 4, "four failed tries, each produced again");
        assert_eq!(link.published.lock().map_err(|e| anyhow::anyhow!("{e}"))?.len(), 3, "every state answered");
        assert!(link.dead.lock().map_err(|e| anyhow::anyhow!("{e}"))?.is_empty(), "nothing given up");
        assert_eq!(link.tracker.in_flight(), 0, "every offset resolved");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_undeliverable_action_dead_letters_its_state_and_resolves_it() -> anyhow::Result<()> {
        let mut link = Flaky::new(2, u32::MAX, false);
        let stats = run(&mut link, 3).await?;
        assert_eq!((stats.undeliverable, stats.dead_letters, stats.delivery_retries), (2, 2, 4));
        let dead = link.dead.lock().map_err(|e| anyhow::anyhow!("{e}"))?.clone();
        assert_eq!(dead.len(), 2);
        assert!(dead[0].contains("action not delivered after 3 tries: Local: Message timed out"), "{dead:?}");
        assert_eq!(link.tracker.in_flight(), 0, "dead-lettered states are resolved");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_that_cannot_be_resolved_stops_the_agent_with_the_reason() -> anyhow::Result<()> {
        let mut link = Flaky::new(1, u32::MAX, true);
        let e = run(&mut link, 2).await.err().context("the agent went on with an unresolvable state")?;
        let msg = format!("{e:#}");
        assert!(msg.contains("cannot resolve state s/0@0") && msg.contains("Not enough in-sync replicas"), "{msg}");
        assert_eq!(link.tracker.in_flight(), 1, "its offset stays uncommitted: read again after a restart");
        Ok(())
    }
}
