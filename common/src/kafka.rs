//! Kafka connection settings shared by the services, and an inspection of the cluster that the
//! `check` subcommands print.

use std::time::Duration;

use anyhow::Context;
use protocol::topics::EnvSpec;
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

/// The three topics of one run: states, actions and dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Topic of the states env-svc publishes and agent-svc reads.
    pub state_topic: String,
    /// Topic of the actions agent-svc answers with.
    pub action_topic: String,
    /// Topic of records that can never be used.
    pub dead_letter_topic: String,
}

/// Which environment a service runs (`--env`); picks the topics and the state message type.
/// The one list of environments in the stack: a new environment adds a variant and its
/// [`EnvSpec`] here, its messages to `protocol`, and one arm to each service's list
/// (`env_svc::envs`, `agent_svc::envs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EnvKind {
    /// Amazon Fashion review sequences (`fashion_*` topics, `StateMsg`).
    #[default]
    Fashion,
    /// RecoGym's `reco-gym-v1` simulator (`recogym_*` topics, `RecoStateMsg`).
    Recogym,
}

impl EnvKind {
    /// The environment's name and topics, declared beside its messages in `protocol`.
    pub fn spec(self) -> &'static EnvSpec {
        match self {
            EnvKind::Fashion => &protocol::topics::FASHION,
            EnvKind::Recogym => &protocol::topics::RECOGYM,
        }
    }

    /// The name on the command line, e.g. `recogym`.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The environment's own topics (`deploy/topics.env`).
    pub fn topics(self) -> Topics {
        let s = self.spec();
        Topics {
            state_topic: s.state_topic.into(),
            action_topic: s.action_topic.into(),
            dead_letter_topic: s.dead_letter_topic.into(),
        }
    }
}

/// Topic names that replace the environment's own ones (tests use their own). Each topic is,
/// in order: its flag; the environment's variable of `deploy/topics.env` (`STATE_TOPIC`,
/// `ACTION_TOPIC`, `DEAD_LETTER_TOPIC` for `fashion`; the same with a `RECOGYM_` prefix for
/// `recogym`), so that a service given that file (compose's `env_file`) follows it whichever
/// environment it runs; the environment's own name ([`EnvKind::topics`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopicArgs {
    /// Topic of the states env-svc publishes and agent-svc reads [default: $STATE_TOPIC, else
    /// `fashion_state`; with `--env recogym`, $RECOGYM_STATE_TOPIC, else `recogym_state`].
    #[arg(long)]
    pub state_topic: Option<String>,
    /// Topic of the actions agent-svc answers with [default: $ACTION_TOPIC, else
    /// `fashion_action`; with `--env recogym`, $RECOGYM_ACTION_TOPIC, else `recogym_action`].
    #[arg(long)]
    pub action_topic: Option<String>,
    /// Topic of records that can never be used [default: $DEAD_LETTER_TOPIC, else
    /// `fashion_dead_letter`; with `--env recogym`, $RECOGYM_DEAD_LETTER_TOPIC, else
    /// `recogym_dead_letter`].
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
}

impl TopicArgs {
    /// The topics of `env`: the flags given here, else the environment's variables, else its
    /// own names.
    pub fn resolve(&self, env: EnvKind) -> Topics {
        self.resolve_with(env, |var| std::env::var(var).ok().filter(|v| !v.is_empty()))
    }

    /// [`TopicArgs::resolve`] with `lookup` in place of the process environment.
    pub fn resolve_with(&self, env: EnvKind, lookup: impl Fn(&str) -> Option<String>) -> Topics {
        let own = env.topics();
        let prefix = env.spec().topics_env_prefix;
        let pick = |flag: &Option<String>, var: &str, default: String| {
            flag.clone().or_else(|| lookup(&format!("{prefix}{var}"))).unwrap_or(default)
        };
        Topics {
            state_topic: pick(&self.state_topic, "STATE_TOPIC", own.state_topic),
            action_topic: pick(&self.action_topic, "ACTION_TOPIC", own.action_topic),
            dead_letter_topic: pick(&self.dead_letter_topic, "DEAD_LETTER_TOPIC", own.dead_letter_topic),
        }
    }
}

/// How long [`close_consumer`] waits for a group consumer to leave its group.
pub const CONSUMER_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Closes a group consumer (drops it: leave the group, revoke the assignment), waiting at most
/// `within`. librdkafka can block forever in that close when an incremental assignment arrives
/// while it runs (confluentinc/librdkafka#4884, open); a service whose work is already durable
/// (offsets committed explicitly) must still exit, so the close runs on a thread of its own and
/// past `within` the caller goes on with a warning, leaving the group to drop the member after
/// `session.timeout.ms`. Returns whether the close finished.
pub fn close_consumer<C: Send + 'static>(consumer: C, what: &str, within: Duration) -> bool {
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new().name("kafka-close".into()).spawn(move || {
        drop(consumer);
        let _ = done_tx.send(());
    });
    if let Err(e) = spawned {
        // The closure, consumer included, was dropped here: closed on this thread, unbounded.
        tracing::warn!(consumer = what, error = %e, "no thread to close the consumer on: closed inline");
        return true;
    }
    let closed = done_rx.recv_timeout(within).is_ok();
    if !closed {
        tracing::warn!(
            consumer = what,
            waited_s = within.as_secs_f64(),
            "kafka consumer close did not finish (librdkafka#4884); exiting without it: its offsets were committed \
             before, the group drops the member after session.timeout.ms"
        );
    }
    closed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_come_from_the_flag_then_the_environments_variable_then_its_own_name() {
        let nothing = |_: &str| None;
        let none = TopicArgs::default();
        assert_eq!(none.resolve_with(EnvKind::Fashion, nothing).state_topic, "fashion_state");
        assert_eq!(none.resolve_with(EnvKind::Recogym, nothing).dead_letter_topic, "recogym_dead_letter");
        let one = TopicArgs { action_topic: Some("mine".into()), ..TopicArgs::default() };
        let t = one.resolve_with(EnvKind::Recogym, nothing);
        assert_eq!((t.state_topic.as_str(), t.action_topic.as_str()), ("recogym_state", "mine"));
        // topics.env as compose passes it: each environment reads its own variables.
        let file = |var: &str| Some(format!("from-{var}"));
        assert_eq!(none.resolve_with(EnvKind::Fashion, file).state_topic, "from-STATE_TOPIC");
        assert_eq!(none.resolve_with(EnvKind::Recogym, file).state_topic, "from-RECOGYM_STATE_TOPIC");
        assert_eq!(one.resolve_with(EnvKind::Recogym, file).action_topic, "mine");
    }

    /// Drops after `0` has passed.
    struct SlowClose(Duration);

    impl Drop for SlowClose {
        fn drop(&mut self) {
            std::thread::sleep(self.0);
        }
    }

    #[test]
    fn a_close_that_hangs_is_left_behind_after_its_bound() {
        let started = std::time::Instant::now();
        assert!(!close_consumer(SlowClose(Duration::from_secs(30)), "stuck", Duration::from_millis(200)));
        assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
        assert!(close_consumer(SlowClose(Duration::from_millis(10)), "quick", Duration::from_secs(20)));
    }
}
