//! `agent-svc learn`: one learner for any number of replicas (`agent-svc run --learning
//! shared`). It reads the steps the replicas already produce from the topics that hold them,
//! trains the DQN, and publishes versioned weights on the weights topic, where every replica
//! takes them (`policies::dqn::serving`).
//!
//! - **Input.** The state topic in a consumer group of its own (`--learner-group-id`, separate
//!   from the replicas'): an episode's states share a partition and arrive in step order, and
//!   each carries the action the env applied and the reward it paid, so the transitions are
//!   rebuilt from it alone ([`join`]). The action topic, same partition numbers (checked at
//!   start: the learner refuses topics whose partition counts differ), is read for the model
//!   version each action was chosen with: the policy lag (versions between the newest one
//!   published and the one that acted), the measure of how off-policy the learning is.
//! - **Output.** Every `--publish-every`, when the learner has made updates since the last
//!   version, the network (checkpoint layout without target weights: shape, vocabulary, item
//!   tokens, wide pairs) goes out as one version, chunked and checksummed
//!   (`protocol::weights`). Versions only increase: a restarted learner starts above the
//!   newest version on the topic.
//! - **Durability.** Every `--checkpoint-every` and on shutdown, the checkpoint is written
//!   (atomically) and only then the offsets committed, each at its partition's position or at
//!   its oldest state still needed to close a transition: a learner killed at any point
//!   resumes from its checkpoint and offsets, learning some transitions twice, losing none.

pub mod join;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use common::{
    check::StackArgs,
    kafka::{describe_topics, TuningArgs},
    registry::{Registry, TopicCodec},
};
use protocol::{
    weights::{split, DEFAULT_CHUNK_BYTES},
    ActionMsg, StateMsg, StepState,
};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    message::Message,
    producer::FutureProducer,
    ClientContext, Offset, TopicPartitionList,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use self::join::{Joined, Joiner};
use crate::policies::{
    dqn::{serving, Dqn, DqnArgs},
    Feedback, Policy,
};

/// Where replicas learn (`--learning`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Learning {
    /// Each replica learns alone from the steps it answers (and checkpoints them itself).
    #[default]
    Local,
    /// Replicas only act, on the weights `agent-svc learn` publishes on the weights topic.
    Shared,
    /// Serve the DQN checkpoint in `--checkpoint-dir` greedily (or exploring at
    /// `--frozen-epsilon`: a logging policy) and learn nothing (evaluation, A/B tests of a fixed
    /// model); refused when there is no checkpoint.
    Frozen,
}

/// The weights topic and the model name on it; the learner and its replicas must agree.
#[derive(Debug, Clone, clap::Args)]
pub struct WeightsArgs {
    /// Compacted topic of the versioned network weights (`deploy/topics.env`).
    #[arg(long, env = "AGENT_WEIGHTS_TOPIC", default_value = protocol::topics::WEIGHTS_TOPIC)]
    pub weights_topic: String,
    /// The model's name on the weights topic; one learner publishes under one name.
    #[arg(long, env = "AGENT_WEIGHTS_MODEL", default_value = "dqn")]
    pub weights_model: String,
}

impl WeightsArgs {
    /// Where a replica's follower reads.
    pub fn source(&self, kafka: &common::kafka::KafkaArgs) -> serving::Source {
        serving::Source {
            kafka: kafka.client_config(),
            topic: self.weights_topic.clone(),
            model: self.weights_model.clone(),
        }
    }
}

/// `agent-svc learn`: train the DQN from the topics and publish its weights until stopped.
#[derive(Debug, Clone, clap::Args)]
pub struct LearnArgs {
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// The DQN's settings; `--checkpoint-dir` is required (checkpoint and offsets go together).
    #[command(flatten)]
    pub dqn: DqnArgs,
    /// Seed of the learner's random choices (replay sampling, initial weights).
    #[arg(long, env = "AGENT_SEED", default_value_t = 0)]
    pub agent_seed: u64,
    /// The learner's consumer group (never the replicas').
    #[arg(long, env = "AGENT_LEARNER_GROUP_ID", default_value = "agent-learner")]
    pub learner_group_id: String,
    /// Where a new learner group starts reading: `latest` or `earliest`.
    #[arg(long, env = "AGENT_LEARNER_OFFSET_RESET", default_value = "latest")]
    pub learner_offset_reset: String,
    /// How often a new version is published (when the learner made updates since the last),
    /// counted from the end of the last publish: the stream is read in between.
    #[arg(long, env = "AGENT_PUBLISH_EVERY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub publish_every: Duration,
    /// How often the checkpoint is written and the offsets committed after it.
    #[arg(long, env = "AGENT_LEARNER_CHECKPOINT_EVERY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub learner_checkpoint_every: Duration,
    /// Read the step topics up to their end as of the start (from the group's committed
    /// offsets), train on all of it, publish, checkpoint, commit and exit: offline training on
    /// what was logged.
    #[arg(long, env = "AGENT_LEARNER_UNTIL_CAUGHT_UP")]
    pub until_caught_up: bool,
    /// With `--until-caught-up`: read everything into memory first, then train from memory
    /// (the baseline `make bench` measures reading from Kafka against).
    #[arg(long, env = "AGENT_LEARNER_PRELOAD")]
    pub preload: bool,
    /// First learn from every state of this run (env id, e.g. `fashion-v1/3f2a9c`) that the
    /// archiver copied into Cassandra (`--cassandra-nodes`, `--keyspace`), then join the live
    /// stream: a new model trained on everything ever logged.
    #[arg(long, env = "AGENT_LEARNER_FROM_ARCHIVE")]
    pub from_archive: Option<String>,
    /// Where the archive is (with `--from-archive`).
    #[command(flatten)]
    pub cassandra: archiver::CassandraArgs,
    /// Episodes whose open state is older than this (by its timestamp, against the newest
    /// state read) are forgotten: an env that died mid-episode must not pin offsets forever.
    #[arg(long, env = "AGENT_LEARNER_MAX_OPEN_AGE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_open_age: Duration,
    /// Also write the learner's counters as JSON to this file on shutdown.
    #[arg(long, env = "AGENT_SUMMARY_JSON")]
    pub summary_json: Option<PathBuf>,
    #[command(flatten)]
    pub metrics: common::metrics::MetricsArgs,
}

/// What the learner did, for logs and its summary.
#[derive(Debug, Default, Clone, Serialize)]
pub struct LearnStats {
    /// States read and decoded.
    pub states: u64,
    /// Transitions rebuilt and handed to the DQN.
    pub transitions: u64,
    /// Re-sent or re-read steps ignored.
    pub duplicates: u64,
    /// Steps whose predecessor was never read (nothing learned from them).
    pub gaps: u64,
    /// States that closed a transition but carried no applied action (an old env build).
    pub no_action: u64,
    /// Episodes forgotten unfinished (`--max-open-age`).
    pub evicted: u64,
    /// Records that could not be decoded (skipped; the replicas dead-letter bad states).
    pub undecodable: u64,
    /// Actions read.
    pub actions: u64,
    /// Versions published.
    pub versions: u64,
    /// The newest version published.
    pub version: Option<u64>,
    /// Policy lag in learner updates (a version is the update count it was published at):
    /// the newest version published when an action was read, less the version that chose it;
    /// median over the actions that carried a version.
    pub policy_lag_updates_p50: Option<u64>,
    /// See `policy_lag_updates_p50`: the 99th percentile.
    pub policy_lag_updates_p99: Option<u64>,
    /// Checkpoints written (each followed by an offset commit).
    pub checkpoints: u64,
    /// `--from-archive`: archived states read back.
    pub archive_states: u64,
    /// `--from-archive`: transitions rebuilt from them and learned.
    pub archive_transitions: u64,
    /// Learner updates done (the checkpoint's count included, after a resume).
    pub updates: u64,
    /// Updates skipped because the learner could not keep up with the stream (never with
    /// `--dqn-backpressure`).
    pub skipped_updates: u64,
    /// From the first transition handed to the DQN to its last owed update done.
    pub train_seconds: f64,
    /// `updates` over `train_seconds` (meaningful for a learner that started from scratch).
    pub updates_per_s: f64,
    /// (version, replica) pairs measured for the staleness: a version this learner published,
    /// first served (it or a newer one) by a replica already seen serving an older one.
    pub staleness_measured: u64,
    /// From a version's publication (its last chunk acknowledged) to the first action of each
    /// replica on it or a newer one, read from the action topic: median, ms.
    pub staleness_ms_p50: Option<i64>,
    /// See `staleness_ms_p50`: the 99th percentile.
    pub staleness_ms_p99: Option<i64>,
    /// Actions (or version pairs) left out of the staleness and the policy lag: written before
    /// this learner started (a backlog on the topic, whose version numbers may be another
    /// model's, e.g. a replica that learned alone), or before the version they name was
    /// published here.
    pub actions_not_measured: u64,
}

/// Logs the learner's assignments (`make sim` and the tests wait for the first one).
struct Assignments;

/// The gauge of the learner's lag on the step topics.
const LAG_GAUGE: &str = "streamrec_learner_consumer_lag_messages";

impl ClientContext for Assignments {
    fn stats(&self, statistics: rdkafka::Statistics) {
        common::metrics::record_consumer_lag(&statistics, LAG_GAUGE);
    }
}

impl ConsumerContext for Assignments {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions: Vec<String> =
                    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect();
                tracing::info!(?partitions, "learner partitions assigned");
                common::metrics::ready(common::metrics::Dependency::Kafka);
            }
            Rebalance::Revoke(tpl) => common::metrics::clear_consumer_lag(tpl, LAG_GAUGE),
            Rebalance::Error(_) => {}
        }
    }
}

/// Transitions queued to the learner thread at most (`--dqn-queue` caps it lower).
const LEARNER_QUEUE: usize = 256;

/// Policy lags kept at most for the percentiles (the oldest go first).
const MAX_LAGS: usize = 1_000_000;

/// One record as read: where it was, and its value.
struct Record {
    topic: String,
    partition: i32,
    offset: i64,
    value: Vec<u8>,
}

/// Runs the learner until `shutdown` (or, with `--until-caught-up`, until it read the topics
/// to their end as of its start); returns its counters.
pub async fn learn(cfg: LearnArgs, shutdown: CancellationToken) -> anyhow::Result<LearnStats> {
    common::metrics::serve(&cfg.metrics, "agent-learner", false).await?;
    anyhow::ensure!(
        cfg.stack.env == common::kafka::EnvKind::Fashion,
        "agent-svc learn serves --env fashion only (RecoGym's agents train on a logging run: --train-env-id)"
    );
    anyhow::ensure!(
        cfg.dqn.checkpoint_dir.is_some(),
        "agent-svc learn needs --checkpoint-dir: a restarted learner resumes from its checkpoint and the offsets \
         committed after it"
    );
    anyhow::ensure!(
        !cfg.preload || cfg.until_caught_up,
        "--preload reads the topics to their end: it needs --until-caught-up"
    );
    let topics = cfg.stack.topics();
    check_copartitioned(&cfg.stack.kafka, &topics.state_topic, &topics.action_topic)?;
    let (state_codec, action_codec) = Registry::new(&cfg.stack.registry).step_codecs::<StateMsg>(&topics).await?;
    common::metrics::ready(common::metrics::Dependency::Registry);
    // Every transition reaches the replay buffer. By default the learner thread takes them as
    // fast as they come and skips (counts) the updates it cannot keep up with, so it follows a
    // stream faster than it trains (Ape-X's learner); `--dqn-backpressure` makes it read only
    // as fast as it trains, every update done (the stream is then the buffer).
    // A short queue to the learner thread: the topic is the buffer, and a request for the
    // weights (which waits behind the queued transitions) is answered within a second or two.
    let dqn_args = DqnArgs { dqn_queue: cfg.dqn.dqn_queue.min(LEARNER_QUEUE), ..cfg.dqn.clone() };
    let mut dqn = Dqn::<StateMsg>::new(&dqn_args, cfg.agent_seed)?;
    dqn.never_drop();
    let floor = newest_published(&cfg)?;
    let mut l = Loop {
        stats: LearnStats { version: floor, ..LearnStats::default() },
        joiner: Joiner::default(),
        positions: HashMap::new(),
        lags: Vec::new(),
        newest_ts: 0,
        published_updates: None,
        published_at: BTreeMap::new(),
        served_upto: HashMap::new(),
        staleness_ms: Vec::new(),
        train_started: None,
        started_ms: common::kafka::now_ms(),
    };
    let producer: FutureProducer =
        cfg.stack.kafka.producer_config(&cfg.tuning).create().context("learner: cannot create a producer")?;
    let mut consumer_cfg = cfg.stack.kafka.consumer_config(&cfg.learner_group_id, &cfg.tuning);
    consumer_cfg.set("enable.auto.commit", "false").set("auto.offset.reset", &cfg.learner_offset_reset);
    common::metrics::enable_kafka_statistics(&mut consumer_cfg);
    let consumer: StreamConsumer<Assignments> =
        consumer_cfg.create_with_context(Assignments).context("learner: cannot create a consumer")?;
    // The archive first, then the stream (subscribed only after it: a consumer left unpolled
    // through a long archive pass would be dropped from its group).
    let mut stopped = false;
    if let Some(env_id) = &cfg.from_archive {
        stopped = !l.learn_archive(&cfg, env_id, &mut dqn, &shutdown).await?;
    }
    let step_topics = [topics.state_topic.as_str(), topics.action_topic.as_str()];
    let mut targets =
        if cfg.until_caught_up { Some(ends(&consumer, &step_topics, &cfg.learner_offset_reset)?) } else { None };
    if stopped {
        targets = Some(HashMap::new());
    } else if targets.as_ref().is_some_and(HashMap::is_empty) {
        // Nothing to read: joining the group only to leave it at once is what can hang a
        // consumer's close (see `close_consumer`).
        tracing::info!(group = %cfg.learner_group_id, "learner: the step topics hold nothing to read");
    } else {
        consumer.subscribe(&step_topics).context("learner: cannot subscribe to the step topics")?;
    }
    tracing::info!(
        group = %cfg.learner_group_id, weights_topic = %cfg.weights.weights_topic, model = %cfg.weights.weights_model,
        newest_on_topic = floor, ?cfg.publish_every, ?cfg.learner_checkpoint_every, until_caught_up = cfg.until_caught_up,
        preload = cfg.preload, "learner starts"
    );
    let mut publish = tokio::time::interval(cfg.publish_every);
    let mut checkpoint = tokio::time::interval(cfg.learner_checkpoint_every);
    publish.tick().await;
    checkpoint.tick().await;
    let codecs = (&state_codec, &action_codec, topics.state_topic.as_str());
    let mut preloaded: Vec<Record> = Vec::new();
    let result: anyhow::Result<()> = async {
        while !targets.as_ref().is_some_and(HashMap::is_empty) {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                // Each period counts from the end of the last publish or checkpoint: a publish
                // that takes longer than --publish-every (35 MB of weights over 97,694
                // products took 1.3-3.7 s against 2 s) must not make the next one due at once,
                // or the biased select never reaches the stream again.
                _ = publish.tick(), if !cfg.preload => {
                    l.publish(&cfg, &dqn, &producer).await?;
                    publish.reset();
                }
                _ = checkpoint.tick(), if !cfg.preload => {
                    l.checkpoint(&cfg, &mut dqn, &consumer, &topics.state_topic)?;
                    checkpoint.reset();
                }
                msg = consumer.recv() => {
                    let msg = msg.context("learner: read failed")?;
                    let record = Record {
                        topic: msg.topic().to_string(),
                        partition: msg.partition(),
                        offset: msg.offset(),
                        value: msg.payload().unwrap_or_default().to_vec(),
                    };
                    if let Some(t) = targets.as_mut() {
                        let key = (record.topic.clone(), record.partition);
                        if t.get(&key).is_some_and(|&end| record.offset + 1 >= end) {
                            t.remove(&key);
                        }
                    }
                    if cfg.preload {
                        preloaded.push(record);
                    } else if !l.on_record(&mut dqn, record, codecs, &shutdown).await? {
                        return Ok(());
                    }
                }
            }
        }
        if cfg.preload {
            tracing::info!(records = preloaded.len(), "learner preloaded the topics; training from memory");
            for record in preloaded.drain(..) {
                if !l.on_record(&mut dqn, record, codecs, &shutdown).await? {
                    break;
                }
            }
        }
        Ok(())
    }
    .await;
    // Whatever stopped the loop, keep what was learned: the updates owed, then publish,
    // checkpoint and commit.
    let closing = async {
        let flushed = tokio::task::block_in_place(|| dqn.flush(Duration::from_secs(600)))
            .context("learner: the dqn did not finish its owed updates")?;
        // No transition this time: the network was never built, the checkpoint's count stands.
        let updates = flushed.max(dqn.model_version().unwrap_or(0));
        (l.stats.updates, l.stats.skipped_updates) = (updates, dqn.skipped());
        if let Some(started) = l.train_started {
            l.stats.train_seconds = started.elapsed().as_secs_f64();
            l.stats.updates_per_s = updates as f64 / l.stats.train_seconds.max(1e-9);
        }
        l.publish(&cfg, &dqn, &producer).await?;
        l.checkpoint(&cfg, &mut dqn, &consumer, &topics.state_topic)
    }
    .await;
    common::kafka::close_consumer(consumer, "learner", common::kafka::CONSUMER_CLOSE_TIMEOUT);
    result?;
    closing?;
    l.finish_percentiles();
    if let Some(path) = &cfg.summary_json {
        std::fs::write(path, serde_json::to_vec_pretty(&l.stats)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    tracing::info!(stats = ?l.stats, "learner stopped");
    Ok(l.stats)
}

/// Where `--until-caught-up` stops: each partition's high watermark as of now, for the
/// partitions with something to read from where the group starts (its committed offset, else
/// the `reset` end).
fn ends(
    consumer: &StreamConsumer<Assignments>,
    topics: &[&str],
    reset: &str,
) -> anyhow::Result<HashMap<(String, i32), i64>> {
    let mut out = HashMap::new();
    for topic in topics {
        let marks = common::partitions::watermarks(consumer, topic)?;
        let mut tpl = TopicPartitionList::new();
        for p in marks.keys() {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(30))
            .with_context(|| format!("learner: committed offsets of {topic}"))?;
        for (p, m) in marks {
            let start = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ if reset == "earliest" => m.low,
                _ => m.high,
            };
            if start < m.high {
                out.insert(((*topic).to_string(), p), m.high);
            }
        }
    }
    Ok(out)
}

/// Fails unless the state and action topics have the same partition count (an episode's
/// state and action records then share a partition number).
fn check_copartitioned(kafka: &common::kafka::KafkaArgs, states: &str, actions: &str) -> anyhow::Result<()> {
    let (_, views) = describe_topics(kafka, &[states, actions])?;
    let count = |name: &str| views.iter().find(|v| v.name == name).map_or(0, |v| v.partitions);
    let (s, a) = (count(states), count(actions));
    anyhow::ensure!(
        s == a,
        "the state topic {states} has {s} partitions but the action topic {actions} has {a}: the learner reads an \
         episode's states and actions by partition number, so both topics need the same count"
    );
    Ok(())
}

/// The newest version of the model on the weights topic, so a restarted learner publishes
/// above it.
fn newest_published(cfg: &LearnArgs) -> anyhow::Result<Option<u64>> {
    let source = cfg.weights.source(&cfg.stack.kafka);
    let mut follower = common::weights::Follower::new(source.kafka, &source.topic, &source.model, None)?;
    let newest = tokio::task::block_in_place(|| follower.catch_up(Duration::from_secs(120)))?;
    Ok(newest.map(|c| c.meta.version))
}

struct Loop {
    stats: LearnStats,
    joiner: Joiner,
    /// Next offset to read, per (topic, partition).
    positions: HashMap<(String, i32), i64>,
    lags: Vec<u64>,
    newest_ts: i64,
    /// The learner's update count at the last publication.
    published_updates: Option<u64>,
    /// When each version this process published was acknowledged, Unix ms.
    published_at: BTreeMap<u64, i64>,
    /// Per replica, the newest version seen in its actions.
    served_upto: HashMap<String, u64>,
    /// Publication to a replica's first action on that version or a newer one, ms.
    staleness_ms: Vec<i64>,
    /// When the first transition was handed to the DQN.
    train_started: Option<std::time::Instant>,
    /// When this learner started, Unix ms: older actions are not measured against it.
    started_ms: i64,
}

impl Loop {
    /// `--from-archive`: learns from every archived state of run `env_id`, before the stream;
    /// false when `shutdown` came first (what was learned is kept; the stream is not joined).
    async fn learn_archive(
        &mut self,
        cfg: &LearnArgs,
        env_id: &str,
        dqn: &mut Dqn<StateMsg>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let started = std::time::Instant::now();
        let session = archiver::connect(&cfg.cassandra).await?;
        let before = self.stats.transitions;
        let keyspace = &cfg.cassandra.keyspace;
        let scan = archiver::readback::for_each_state(&session, keyspace, env_id, |s| self.on_state(dqn, s, -1, 0));
        let states = tokio::select! {
            biased;
            () = shutdown.cancelled() => None,
            read = scan => Some(read.with_context(|| format!("learner: reading run {env_id} back from the archive"))?),
        };
        let Some(states) = states else {
            self.stats.archive_transitions = self.stats.transitions - before;
            tracing::warn!(
                env_id,
                transitions = self.stats.archive_transitions,
                "learner stopped during the archive pass: what it learned is kept, the stream is not joined"
            );
            return Ok(false);
        };
        anyhow::ensure!(states > 0, "the archive (keyspace {keyspace}) holds no state of run {env_id}");
        self.stats.archive_states = states;
        self.stats.archive_transitions = self.stats.transitions - before;
        // Episodes the archive left open are not continued from the stream.
        self.joiner = Joiner::default();
        tracing::info!(
            env_id,
            states,
            transitions = self.stats.archive_transitions,
            seconds = started.elapsed().as_secs_f64(),
            "learner learned the archived run; joining the stream"
        );
        Ok(true)
    }

    /// Handles one record of either topic; false when the loop must stop (shut down while
    /// the schema registry could not be reached: the record stays uncommitted).
    async fn on_record(
        &mut self,
        dqn: &mut Dqn<StateMsg>,
        r: Record,
        (states, actions, state_topic): (&TopicCodec<StateMsg>, &TopicCodec<ActionMsg>, &str),
        shutdown: &CancellationToken,
    ) -> anyhow::Result<bool> {
        let Record { topic, partition, offset, value } = r;
        let result = if topic == state_topic {
            states.decode_record_or_wait(&value, shutdown).await.map(|d| Either::State(d.msg))
        } else {
            actions.decode_record_or_wait(&value, shutdown).await.map(|d| Either::Action(d.msg))
        };
        match result {
            Ok(Either::State(s)) => self.on_state(dqn, s, partition, offset)?,
            Ok(Either::Action(a)) => self.on_action(&a),
            Err(e) if e.is_retryable() => return Ok(false),
            Err(e) => {
                // The replicas read the same records and dead-letter the undecodable ones.
                self.stats.undecodable += 1;
                tracing::warn!(topic, partition, offset, error = %e, "learner skips an undecodable record");
            }
        }
        self.positions.insert((topic, partition), offset + 1);
        Ok(true)
    }

    fn on_state(
        &mut self,
        dqn: &mut Dqn<StateMsg>,
        state: StateMsg,
        partition: i32,
        offset: i64,
    ) -> anyhow::Result<()> {
        self.stats.states += 1;
        self.newest_ts = self.newest_ts.max(state.ts_ms);
        match self.joiner.push(state.clone(), partition, offset) {
            Joined::Transition { prev } => {
                let Some(action) = state.last_action else {
                    self.stats.no_action += 1;
                    return Ok(());
                };
                let prev: &StateMsg = &prev;
                let fb =
                    Feedback { prev, prev_index: prev.product_index(), action, reward: state.reward, next: &state };
                // With backpressure the DQN waits for its learner thread: off the async workers.
                self.train_started.get_or_insert_with(std::time::Instant::now);
                tokio::task::block_in_place(|| dqn.learn(&fb))?;
                dqn.count_steps(1);
                self.stats.transitions += 1;
            }
            Joined::Duplicate => self.stats.duplicates += 1,
            Joined::Gap => self.stats.gaps += 1,
            Joined::Opened => {}
        }
        Ok(())
    }

    /// Sets the learner's Prometheus counters to its figures (with each publication and
    /// checkpoint; the DQN's own gauges come from its learner thread).
    fn export(&self) {
        if !common::metrics::enabled() {
            return;
        }
        let s = &self.stats;
        metrics::counter!("streamrec_learner_states_total").absolute(s.states);
        metrics::counter!("streamrec_learner_transitions_total").absolute(s.transitions);
        metrics::counter!("streamrec_learner_actions_total").absolute(s.actions);
        metrics::counter!("streamrec_learner_weights_published_total").absolute(s.versions);
        metrics::counter!("streamrec_learner_checkpoints_total").absolute(s.checkpoints);
        if let Some(v) = s.version {
            metrics::gauge!("streamrec_learner_weights_version").set(v as f64);
        }
        metrics::gauge!("streamrec_learner_open_episodes").set(self.joiner.open() as f64);
    }

    fn on_action(&mut self, action: &ActionMsg) {
        self.stats.actions += 1;
        if action.model_version.is_some() && action.ts_ms < self.started_ms {
            // Not served on anything this process published.
            self.stats.actions_not_measured += 1;
            return;
        }
        if let Some(v) = action.model_version {
            match self.served_upto.get_mut(&action.replica_id) {
                // First sight of a replica: when it took what it serves is unknown.
                None => {
                    self.served_upto.insert(action.replica_id.clone(), v);
                }
                Some(upto) if v > *upto => {
                    for (_, &at) in self.published_at.range(*upto + 1..=v) {
                        if action.ts_ms < at {
                            self.stats.actions_not_measured += 1;
                            continue;
                        }
                        self.staleness_ms.push(action.ts_ms - at);
                        if common::metrics::enabled() {
                            let seconds = (action.ts_ms - at) as f64 / 1000.0;
                            metrics::histogram!("streamrec_learner_weights_staleness_seconds").record(seconds);
                        }
                    }
                    *upto = v;
                }
                Some(_) => {}
            }
        }
        if let (Some(served), Some(newest)) = (action.model_version, self.stats.version) {
            if self.lags.len() >= MAX_LAGS {
                self.lags.drain(..MAX_LAGS / 2);
            }
            self.lags.push(newest.saturating_sub(served));
        }
    }

    /// Publishes the learner's network as a new version when it changed since the last one.
    async fn publish(&mut self, cfg: &LearnArgs, dqn: &Dqn<StateMsg>, producer: &FutureProducer) -> anyhow::Result<()> {
        let Some((updates, shape, blob)) = tokio::task::block_in_place(|| dqn.serving_copy())? else { return Ok(()) };
        if updates == 0 || self.published_updates == Some(updates) {
            return Ok(());
        }
        let version = self.stats.version.map_or(updates, |v| updates.max(v + 1));
        let chunks = split(&cfg.weights.weights_model, version, &shape, &blob, DEFAULT_CHUNK_BYTES)?;
        let started = std::time::Instant::now();
        common::weights::publish(producer, &cfg.weights.weights_topic, &chunks).await?;
        tracing::info!(
            version,
            updates,
            bytes = blob.len(),
            chunks = chunks.len(),
            ms = started.elapsed().as_millis() as u64,
            transitions = self.stats.transitions,
            open = self.joiner.open(),
            "weights version published"
        );
        (self.stats.version, self.published_updates) = (Some(version), Some(updates));
        self.published_at.insert(version, common::kafka::now_ms());
        self.stats.versions += 1;
        self.export();
        Ok(())
    }

    /// Writes the checkpoint, then commits each partition at its position or at its oldest
    /// state still needed, whichever is lower.
    fn checkpoint(
        &mut self,
        cfg: &LearnArgs,
        dqn: &mut Dqn<StateMsg>,
        consumer: &StreamConsumer<Assignments>,
        state_topic: &str,
    ) -> anyhow::Result<()> {
        let max_age = i64::try_from(cfg.max_open_age.as_millis()).unwrap_or(i64::MAX);
        let evicted = self.joiner.evict_older_than(self.newest_ts.saturating_sub(max_age));
        if evicted > 0 {
            tracing::warn!(evicted, "learner forgets unfinished episodes older than --max-open-age");
        }
        self.stats.evicted = self.joiner.evicted;
        tokio::task::block_in_place(|| dqn.save()).context("learner checkpoint failed")?;
        let safe = self.joiner.safe_offsets();
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), &position) in &self.positions {
            let at = match safe.get(partition).filter(|_| topic == state_topic) {
                Some(&held) => held.min(position),
                None => position,
            };
            tpl.add_partition_offset(topic, *partition, Offset::Offset(at))
                .with_context(|| format!("learner: offset of {topic}/{partition}"))?;
        }
        if tpl.count() > 0 {
            consumer.commit(&tpl, CommitMode::Sync).context("learner: offset commit failed")?;
        }
        if dqn.built() {
            self.stats.checkpoints += 1;
            tracing::info!(
                transitions = self.stats.transitions,
                open = self.joiner.open(),
                partitions = tpl.count(),
                "learner checkpoint written, offsets committed"
            );
        } else {
            tracing::info!(partitions = tpl.count(), "learner has no network yet: no checkpoint, offsets committed");
        }
        self.export();
        Ok(())
    }

    fn finish_percentiles(&mut self) {
        self.lags.sort_unstable();
        (self.stats.policy_lag_updates_p50, self.stats.policy_lag_updates_p99) =
            (percentile(&self.lags, 0.5), percentile(&self.lags, 0.99));
        self.staleness_ms.sort_unstable();
        self.stats.staleness_measured = self.staleness_ms.len() as u64;
        (self.stats.staleness_ms_p50, self.stats.staleness_ms_p99) =
            (percentile(&self.staleness_ms, 0.5), percentile(&self.staleness_ms, 0.99));
    }
}

enum Either {
    State(StateMsg),
    Action(ActionMsg),
}

/// The `q` quantile of `sorted` (nearest rank); `None` when empty.
fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    sorted.get(((sorted.len().max(1) - 1) as f64 * q).round() as usize).copied()
}

/// `agent-svc run --learning shared`: starts the weights follower for `cfg`'s replica.
pub fn start_follower(cfg: &crate::RunArgs) -> anyhow::Result<(Arc<serving::Inbox>, std::thread::JoinHandle<()>)> {
    let inbox = Arc::new(serving::Inbox::default());
    let device = cfg.agent.dqn.device()?;
    let source = cfg.weights.source(&cfg.stack.kafka);
    let thread = serving::follow(source, cfg.agent.dqn.net_config(), device, Arc::clone(&inbox))?;
    Ok((inbox, thread))
}

#[cfg(test)]
mod staleness_tests {
    use super::*;

    fn action(replica: &str, version: u64, ts_ms: i64) -> ActionMsg {
        ActionMsg {
            schema_version: protocol::SCHEMA_VERSION,
            env_id: "fashion-v1/test".into(),
            episode_id: "fashion-v1/test#0".into(),
            step: 0,
            action: 0,
            ps: 1.0,
            policy: "dqn".into(),
            replica_id: replica.into(),
            model_version: Some(version),
            ps_all: None,
            ts_ms,
        }
    }

    fn learner(started_ms: i64, published: &[(u64, i64)]) -> Loop {
        Loop {
            stats: LearnStats::default(),
            joiner: Joiner::default(),
            positions: HashMap::new(),
            lags: Vec::new(),
            newest_ts: 0,
            published_updates: None,
            published_at: published.iter().copied().collect(),
            served_upto: HashMap::new(),
            staleness_ms: Vec::new(),
            train_started: None,
            started_ms,
        }
    }

    #[test]
    fn staleness_counts_only_actions_served_on_what_this_learner_published() {
        // Versions 10 and 11 published at t = 1,000 and 2,000; the learner started at 500.
        let mut l = learner(500, &[(10, 1_000), (11, 2_000)]);
        // A backlog action of another model whose counter reached 11 long before: not measured.
        l.on_action(&action("replica-1", 11, 100));
        // This run's replica: first seen on 9, then on 11 at 2,300 (10 and 11 measured).
        l.on_action(&action("replica-1", 9, 600));
        l.on_action(&action("replica-1", 11, 2_300));
        assert_eq!(l.staleness_ms, vec![1_300, 300]);
        // A replica naming version 12 before it was published here: another model's number.
        l.published_at.insert(12, 5_000);
        l.on_action(&action("replica-1", 12, 4_000));
        assert_eq!(l.staleness_ms, vec![1_300, 300], "no negative staleness");
        assert_eq!(l.stats.actions, 4);
        assert_eq!(l.stats.actions_not_measured, 2);
    }
}
