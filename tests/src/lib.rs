//! Helpers for the end-to-end tests: where the local stack is, the repo root, and unique names
//! so that tests never see each other's topics, groups or keyspaces.

use std::path::PathBuf;

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Bootstrap brokers of the running stack (`KAFKA_BOOTSTRAP_SERVERS`, else the local defaults).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094".into())
}

/// Base URL of the Confluent-compatible registry API of the running stack.
pub fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

/// Cassandra contact point of the running stack.
pub fn cassandra_node() -> String {
    std::env::var("CASSANDRA_NODES").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

/// Folder of the stack's cache (jars, the cqlsh venv), as `deploy/local/stack.sh` computes it.
pub fn stack_cache() -> PathBuf {
    match std::env::var("STREAMREC_CACHE") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/streamrec"),
    }
}

/// The cqlsh that `deploy/local/stack.sh` installs from PyPI.
pub fn cqlsh() -> PathBuf {
    stack_cache().join("venv/bin/cqlsh")
}

/// `prefix` plus a random suffix; valid as a topic, group or keyspace name.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    ClientConfig, Message, Offset, TopicPartitionList,
};

/// A client config pointing at the stack.
pub fn kafka_config() -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap());
    cfg
}

/// Topics of one test: state, action and dead-letter, with a shared random suffix.
#[derive(Debug, Clone)]
pub struct TestTopics {
    /// States.
    pub state: String,
    /// Actions.
    pub action: String,
    /// Dead letters.
    pub dead_letter: String,
}

impl TestTopics {
    /// Creates the three topics (6 partitions, RF 3, min ISR 2) and returns their names.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let base = unique(prefix);
        let topics = Self {
            state: format!("{base}_state"),
            action: format!("{base}_action"),
            dead_letter: format!("{base}_dlq"),
        };
        let admin: AdminClient<DefaultClientContext> = kafka_config().create()?;
        let new: Vec<NewTopic<'_>> = [&topics.state, &topics.action, &topics.dead_letter]
            .into_iter()
            .map(|t| NewTopic::new(t, 6, TopicReplication::Fixed(3)).set("min.insync.replicas", "2"))
            .collect();
        for result in
            admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await?
        {
            result.map_err(|(t, e)| anyhow::anyhow!("cannot create {t}: {e}"))?;
        }
        Ok(topics)
    }

    /// The flags that point a service at these topics.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--state-topic".into(),
            self.state.clone(),
            "--action-topic".into(),
            self.action.clone(),
            "--dead-letter-topic".into(),
            self.dead_letter.clone(),
        ]
    }

    /// The flags that point a service's RecoGym topics (`--env recogym`) at these topics.
    pub fn recogym_flags(&self) -> Vec<String> {
        vec![
            "--recogym-state-topic".into(),
            self.state.clone(),
            "--recogym-action-topic".into(),
            self.action.clone(),
            "--recogym-dead-letter-topic".into(),
            self.dead_letter.clone(),
        ]
    }

    /// Deletes the topics (best effort).
    pub async fn delete(&self) {
        if let Ok(admin) = kafka_config().create::<AdminClient<DefaultClientContext>>() {
            let _ = admin.delete_topics(&[&self.state, &self.action, &self.dead_letter], &AdminOptions::new()).await;
        }
    }
}

/// A record read back from a topic: key, value and headers.
#[derive(Debug, Clone)]
pub struct Record {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers as (name, UTF-8 value).
    pub headers: Vec<(String, String)>,
}

/// Every record of `topic`, read from the beginning of each partition to its current end.
pub fn read_topic(topic: &str) -> anyhow::Result<Vec<Record>> {
    use rdkafka::message::Headers;
    let consumer: BaseConsumer =
        kafka_config().set("group.id", unique("reader")).set("enable.auto.commit", "false").create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(30))?;
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))?;
            remaining += high - low;
        }
    }
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < remaining {
        anyhow::ensure!(std::time::Instant::now() < deadline, "read {} of {remaining} records of {topic}", out.len());
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            // A dead broker shows up as transient transport errors; librdkafka fails over.
            let Ok(m) = m else { continue };
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    Ok(out)
}

/// Records currently in `topic` (sum over partitions of high minus low watermark).
pub fn topic_size(topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = kafka_config().create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let partitions = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(30))?;
        total += high - low;
    }
    Ok(total)
}

/// The `archiver` binary next to this test binary (`target/debug/archiver`), built first with
/// `cargo build -p archiver` (a no-op when up to date) so that tests never run a stale one.
pub fn archiver_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "archiver", "--bin", "archiver"])
                .current_dir(repo_root())
                .status();
            assert!(status.is_ok_and(|s| s.success()), "cargo build -p archiver failed");
            let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
            // target/<profile>/deps/<test binary> -> target/<profile>/archiver
            let bin = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("archiver"));
            bin.filter(|b| b.exists()).unwrap_or_else(|| repo_root().join("target/debug/archiver"))
        })
        .clone()
}

/// The offsets `group` has committed on `topic`, per partition (partitions without one left out).
pub fn committed_offsets(group: &str, topic: &str) -> anyhow::Result<std::collections::BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = kafka_config().set("group.id", group).create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().first().map(|t| t.partitions()).unwrap_or_default() {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(30))?;
    Ok(committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

/// The repo's sample dataset (`data/sample`) with the default preprocessing.
pub fn sample_dataset() -> env_svc::data::Dataset {
    let args = env_svc::data::DatasetArgs { dataset: repo_root().join("data/sample"), ..Default::default() };
    args.load(true).unwrap_or_else(|e| panic!("sample dataset: {e}"))
}

/// States as read back from a topic, each with its record key.
pub type KeyedStates = Vec<(Option<Vec<u8>>, protocol::StateMsg)>;

/// What a run left on its topics: every state with its key, and every decodable action (the
/// action topic may hold injected poison).
pub fn read_run(topics: &TestTopics) -> anyhow::Result<(KeyedStates, Vec<protocol::ActionMsg>)> {
    let states_codec: protocol::Codec<protocol::StateMsg> = protocol::Codec::new(0)?;
    let actions_codec: protocol::Codec<protocol::ActionMsg> = protocol::Codec::new(0)?;
    let mut states = Vec::new();
    for r in read_topic(&topics.state)? {
        let state =
            states_codec.decode(&r.payload).map_err(|e| anyhow::anyhow!("a state on the topic is invalid: {e}"))?;
        states.push((r.key, state.msg));
    }
    let actions = read_topic(&topics.action)?
        .into_iter()
        .filter_map(|r| actions_codec.decode(&r.payload).ok().map(|d| d.msg))
        .collect();
    Ok((states, actions))
}

#[derive(Debug, clap::Parser)]
struct EnvCli {
    #[command(flatten)]
    run: env_svc::config::RunArgs,
}

#[derive(Debug, clap::Parser)]
struct AgentCli {
    #[command(flatten)]
    run: agent_svc::RunArgs,
}

/// Runs env-svc (`episodes` episodes on the sample, plus `extra` flags) and an agent-svc with
/// `policy` in this process over `topics`, the agent in a fresh group reading from the start;
/// returns the env's summary once every episode ended.
pub async fn simulate_over_kafka(
    topics: &TestTopics,
    episodes: usize,
    policy: &str,
    extra: &[&str],
) -> env_svc::metrics::Summary {
    use clap::Parser;
    use tokio_util::sync::CancellationToken;
    let sample = repo_root().join("data/sample").display().to_string();
    let mut env_args =
        vec!["env-svc".to_string(), "--dataset".into(), sample, "--episodes".into(), episodes.to_string()];
    env_args.push("--quiet".into());
    env_args.extend(topics.flags());
    env_args.extend(extra.iter().map(|s| s.to_string()));
    let env = EnvCli::parse_from(env_args).run;
    let mut agent_args =
        vec!["agent-svc".to_string(), "--policy".into(), policy.into(), "--group-id".into(), unique("agents")];
    agent_args.extend(["--offset-reset".into(), "earliest".into()]);
    agent_args.extend(topics.flags());
    let agent = AgentCli::parse_from(agent_args).run;

    let stop_agent = CancellationToken::new();
    let agent_task = tokio::spawn(agent_svc::run(agent, stop_agent.clone()));
    let summary = tokio::time::timeout(Duration::from_secs(300), env_svc::run(env, CancellationToken::new()))
        .await
        .unwrap_or_else(|_| panic!("the run did not finish within 300 s"))
        .unwrap_or_else(|e| panic!("env run failed: {e:#}"));
    stop_agent.cancel();
    agent_task.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("agent failed: {e:#}"));
    summary
}

/// Runs env-svc `--env recogym` (with `env_flags`) and an agent-svc `--env recogym` (with
/// `agent_flags`) in this process over `topics`, the agent in a fresh group positioned at the
/// current end of the state topic (so it answers this run only); returns the env's summary once
/// every user finished.
pub async fn simulate_recogym_over_kafka(
    topics: &TestTopics,
    env_flags: &[&str],
    agent_flags: &[&str],
) -> env_svc::metrics::Summary {
    use clap::Parser;
    use tokio_util::sync::CancellationToken;
    let group = unique("rgagents");
    let kafka = common::kafka::KafkaArgs { bootstrap_servers: bootstrap() };
    sim::recogym::start_group_at_end(&kafka, &group, &topics.state)
        .await
        .unwrap_or_else(|e| panic!("cannot position {group}: {e:#}"));
    let mut env_args = vec!["env-svc".to_string(), "--env".into(), "recogym".into()];
    env_args.extend(topics.recogym_flags());
    env_args.extend(env_flags.iter().map(|s| s.to_string()));
    let env = EnvCli::parse_from(env_args).run;
    let mut agent_args = vec!["agent-svc".to_string(), "--env".into(), "recogym".into(), "--group-id".into(), group];
    agent_args.extend(topics.recogym_flags());
    agent_args.extend(agent_flags.iter().map(|s| s.to_string()));
    let agent = AgentCli::parse_from(agent_args).run;

    let stop_agent = CancellationToken::new();
    let agent_task = tokio::spawn(agent_svc::run(agent, stop_agent.clone()));
    let summary = tokio::time::timeout(Duration::from_secs(300), env_svc::run(env, CancellationToken::new()))
        .await
        .unwrap_or_else(|_| panic!("the run did not finish within 300 s"))
        .unwrap_or_else(|e| panic!("env run failed: {e:#}"));
    stop_agent.cancel();
    agent_task.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("agent failed: {e:#}"));
    summary
}
