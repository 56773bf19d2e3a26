//! Kafka connection settings shared by the services, and an inspection of the cluster that the
//! `check` subcommands print.

use std::time::Duration;

use anyhow::Context;
use rdkafka::{
    admin::AdminClient,
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};
use serde::Serialize;

/// Where the brokers are; flattened into every service's config.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Comma-separated bootstrap brokers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094")]
    pub bootstrap_servers: String,
}

impl KafkaArgs {
    /// A client config with the bootstrap list set; callers add their own settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        cfg
    }
}

/// What a topic looks like from the cluster's metadata.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopicView {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: usize,
    /// Replicas of partition 0.
    pub replication_factor: usize,
    /// Partitions whose in-sync replica set is smaller than their replica set.
    pub under_replicated: usize,
}

/// Broker ids and the named topics as the cluster reports them; absent topics are errors.
pub fn describe_topics(args: &KafkaArgs, topics: &[&str]) -> anyhow::Result<(Vec<i32>, Vec<TopicView>)> {
    let consumer: BaseConsumer = args.client_config().create().context("failed to create a kafka client")?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("failed to fetch metadata from {}", args.bootstrap_servers))?;
    let brokers = md.brokers().iter().map(|b| b.id()).collect();
    let mut views = Vec::new();
    for name in topics {
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == *name)
            .with_context(|| format!("topic {name} does not exist; run `make stack-up`"))?;
        let parts = topic.partitions();
        views.push(TopicView {
            name: (*name).to_string(),
            partitions: parts.len(),
            replication_factor: parts.first().map_or(0, |p| p.replicas().len()),
            under_replicated: parts.iter().filter(|p| p.isr().len() < p.replicas().len()).count(),
        });
    }
    Ok((brokers, views))
}

/// An admin client for topic management in tests and tools.
pub fn admin(args: &KafkaArgs) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    args.client_config().create().context("failed to create a kafka admin client")
}

/// Client tuning shared by the services' producers and consumers; flattened into their configs.
#[derive(Debug, Clone, clap::Args)]
pub struct TuningArgs {
    /// Producer `linger.ms`: how long a record may wait for others to share its batch. 0 sends
    /// at once (lowest step latency); a few ms trade latency for fewer requests under load.
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = 0)]
    pub linger_ms: u32,
    /// Consumer `fetch.wait.max.ms`: how long a broker may park a fetch that has no data yet.
    /// A parked fetch returns as soon as a record arrives, so this is no latency floor; low
    /// values only add empty fetch round trips (CPU), which made steps slower when measured.
    #[arg(long, env = "KAFKA_FETCH_WAIT_MAX_MS", default_value_t = 500)]
    pub fetch_wait_max_ms: u32,
    /// Producer `message.timeout.ms`: how long librdkafka retries a record before it reports
    /// the delivery as failed (the services then re-produce or re-send it themselves, within
    /// their own bounds).
    #[arg(long, env = "KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 120_000)]
    pub message_timeout_ms: u32,
}

impl Default for TuningArgs {
    fn default() -> Self {
        Self { linger_ms: 0, fetch_wait_max_ms: 500, message_timeout_ms: 120_000 }
    }
}

impl KafkaArgs {
    /// An idempotent `acks=all` producer config: no acknowledged record is lost or duplicated
    /// by producer retries, and every record is on `min.insync.replicas` brokers when acked.
    pub fn producer_config(&self, tuning: &TuningArgs) -> ClientConfig {
        let mut cfg = self.client_config();
        cfg.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", tuning.linger_ms.to_string())
            .set("socket.nagle.disable", "true")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", tuning.message_timeout_ms.to_string());
        cfg
    }

    /// A consumer config tuned for latency; offsets are stored by the caller (never auto-stored).
    pub fn consumer_config(&self, group: &str, tuning: &TuningArgs) -> ClientConfig {
        let mut cfg = self.client_config();
        cfg.set("group.id", group)
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", tuning.fetch_wait_max_ms.to_string())
            .set("fetch.min.bytes", "1")
            .set("socket.nagle.disable", "true")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "cooperative-sticky");
        cfg
    }
}

/// Milliseconds since the Unix epoch, for message timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Topic names of one run; defaults from the protocol crate, overridable (tests use their own).
#[derive(Debug, Clone, clap::Args)]
pub struct Topics {
    /// Topic of the states env-svc publishes and agent-svc reads.
    #[arg(long, env = "STATE_TOPIC", default_value = protocol::topics::STATE_TOPIC)]
    pub state_topic: String,
    /// Topic of the actions agent-svc answers with.
    #[arg(long, env = "ACTION_TOPIC", default_value = protocol::topics::ACTION_TOPIC)]
    pub action_topic: String,
    /// Topic of records that can never be used.
    #[arg(long, env = "DEAD_LETTER_TOPIC", default_value = protocol::topics::DEAD_LETTER_TOPIC)]
    pub dead_letter_topic: String,
}

/// Which environment a service runs (`--env`); picks the topics and the state message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EnvKind {
    /// Amazon Fashion review sequences (`fashion_*` topics, `StateMsg`).
    #[default]
    Fashion,
    /// RecoGym's `reco-gym-v1` simulator (`recogym_*` topics, `RecoStateMsg`).
    Recogym,
}

/// Topic names of the RecoGym environment; defaults from the protocol crate, overridable.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoGymTopics {
    /// Topic of the RecoGym states (`--env recogym`).
    #[arg(long, env = "RECOGYM_STATE_TOPIC", default_value = protocol::topics::RECOGYM_STATE_TOPIC)]
    pub recogym_state_topic: String,
    /// Topic of the actions answering RecoGym states (`--env recogym`).
    #[arg(long, env = "RECOGYM_ACTION_TOPIC", default_value = protocol::topics::RECOGYM_ACTION_TOPIC)]
    pub recogym_action_topic: String,
    /// Topic of RecoGym records that can never be used (`--env recogym`).
    #[arg(long, env = "RECOGYM_DEAD_LETTER_TOPIC", default_value = protocol::topics::RECOGYM_DEAD_LETTER_TOPIC)]
    pub recogym_dead_letter_topic: String,
}

impl Default for RecoGymTopics {
    fn default() -> Self {
        Self {
            recogym_state_topic: protocol::topics::RECOGYM_STATE_TOPIC.into(),
            recogym_action_topic: protocol::topics::RECOGYM_ACTION_TOPIC.into(),
            recogym_dead_letter_topic: protocol::topics::RECOGYM_DEAD_LETTER_TOPIC.into(),
        }
    }
}

impl RecoGymTopics {
    /// The three topics as the links take them.
    pub fn topics(&self) -> Topics {
        Topics {
            state_topic: self.recogym_state_topic.clone(),
            action_topic: self.recogym_action_topic.clone(),
            dead_letter_topic: self.recogym_dead_letter_topic.clone(),
        }
    }
}

impl Topics {
    /// The topics of `env`: these for the fashion environment, `recogym`'s for RecoGym.
    pub fn of(&self, env: EnvKind, recogym: &RecoGymTopics) -> Topics {
        match env {
            EnvKind::Fashion => self.clone(),
            EnvKind::Recogym => recogym.topics(),
        }
    }
}
