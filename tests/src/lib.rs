//! Helpers for the end-to-end tests: where the local stack is, the repo root, and unique names
//! so that tests never see each other's topics, groups or keyspaces; service configs built from
//! flags alone; waiting on conditions with a deadline; and the means to hold a run open (a group
//! member that answers nothing, a frozen process) so that a fault lands mid-run by construction.
//!
//! Invariant: what a test runs depends on its flags and the stack's location only. No config is
//! built from the test process's environment (clap's `env = "..."` fallbacks are stripped) and
//! the project's binaries start with a cleared environment.

use std::{collections::BTreeMap, path::PathBuf};

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

/// Prometheus of the running stack (`STACK_PROMETHEUS_PORT`, else 9090).
pub fn prometheus_url() -> String {
    format!("http://127.0.0.1:{}", std::env::var("STACK_PROMETHEUS_PORT").unwrap_or_else(|_| "9090".into()))
}

/// The folder whose `*.json` files list the stack Prometheus's `streamrec` targets.
pub fn prometheus_targets_dir() -> PathBuf {
    let run = std::env::var("STREAMREC_RUN").map_or_else(|_| stack_cache().join("run"), PathBuf::from);
    run.join("prometheus/targets")
}

/// A loopback port free right now (for a child's `--metrics-addr`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
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

/// The `KEY=VALUE` lines of `deploy/topics.env`, the source of truth of the stack's topics.
pub fn topics_env() -> BTreeMap<String, String> {
    let path = repo_root().join("deploy/topics.env");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Partitions per topic as the stack creates them (`deploy/init/create-topics.sh`): the
/// `TOPIC_PARTITIONS` override when set and not empty (`TOPIC_PARTITIONS=12 make stack-up`),
/// else the value of `deploy/topics.env`. Test topics get the same count.
pub fn topic_partitions() -> i32 {
    let value = std::env::var("TOPIC_PARTITIONS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .or_else(|| topics_env().remove("TOPIC_PARTITIONS"))
        .unwrap_or_else(|| panic!("deploy/topics.env has no TOPIC_PARTITIONS"));
    value.trim().parse().unwrap_or_else(|e| panic!("TOPIC_PARTITIONS={value} is not a partition count: {e}"))
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
    ClientConfig, Offset, TopicPartitionList,
};

/// A client config pointing at the stack.
pub fn kafka_config() -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap());
    cfg
}

/// A new compacted one-partition topic, as `deploy/init/create-topics.sh` makes the weights
/// topic; returns its name.
pub async fn create_weights_topic() -> anyhow::Result<String> {
    let name = unique("weights");
    let admin: AdminClient<DefaultClientContext> = kafka_config().create()?;
    let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(3))
        .set("min.insync.replicas", "2")
        .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&[topic], &opts).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("cannot create {t}: {e}"))?;
    }
    let names = [name.clone()];
    tokio::task::spawn_blocking(move || wait_for_metadata(&names, 1)).await??;
    Ok(name)
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
    /// Creates the three topics (the stack's partition count, [`topic_partitions`]; RF 3, min
    /// ISR 2) and returns their names.
    pub async fn create(prefix: &str) -> anyhow::Result<Self> {
        let base = unique(prefix);
        let topics = Self {
            state: format!("{base}_state"),
            action: format!("{base}_action"),
            dead_letter: format!("{base}_dlq"),
        };
        let admin: AdminClient<DefaultClientContext> = kafka_config().create()?;
        let partitions = topic_partitions();
        let new: Vec<NewTopic<'_>> = [&topics.state, &topics.action, &topics.dead_letter]
            .into_iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(3)).set("min.insync.replicas", "2"))
            .collect();
        for result in
            admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await?
        {
            result.map_err(|(t, e)| anyhow::anyhow!("cannot create {t}: {e}"))?;
        }
        // A created topic reaches the brokers' metadata caches one after the other: a client
        // asking another broker right away may be told it does not exist. Wait until every
        // broker knows every partition with a leader.
        let names = [topics.state.clone(), topics.action.clone(), topics.dead_letter.clone()];
        tokio::task::spawn_blocking(move || wait_for_metadata(&names, partitions as usize)).await??;
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

    /// The topics as the services' config names them.
    pub fn service_topics(&self) -> common::kafka::Topics {
        common::kafka::Topics {
            state_topic: self.state.clone(),
            action_topic: self.action.clone(),
            dead_letter_topic: self.dead_letter.clone(),
        }
    }

    /// Registers the state (`S`) and action schemas under these topics' subjects, as the
    /// services do at start, and returns codecs that frame with the ids the registry gave (and
    /// decode against each record's writer schema).
    pub async fn codecs<S: protocol::Message>(
        &self,
    ) -> anyhow::Result<(common::registry::TopicCodec<S>, common::registry::TopicCodec<protocol::ActionMsg>)> {
        registry().step_codecs::<S>(&self.service_topics()).await
    }

    /// Deletes the topics (best effort).
    pub async fn delete(&self) {
        if let Ok(admin) = kafka_config().create::<AdminClient<DefaultClientContext>>() {
            let _ = admin.delete_topics(&[&self.state, &self.action, &self.dead_letter], &AdminOptions::new()).await;
        }
    }
}

/// Waits until each broker of the stack, asked alone, reports every topic of `names` with
/// `partitions` partitions that all have a leader (30 s at most).
fn wait_for_metadata(names: &[String], partitions: usize) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for broker in bootstrap().split(',') {
        let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", broker).create()?;
        for name in names {
            loop {
                let ready = client.fetch_metadata(Some(name), Duration::from_secs(5)).is_ok_and(|md| {
                    md.topics().first().is_some_and(|t| {
                        t.error().is_none()
                            && t.partitions().len() == partitions
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                });
                if ready {
                    break;
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "broker {broker} does not know topic {name} after 30 s"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// A record read back from a topic: the workspace's one raw-record type.
pub type Record = common::link::Raw;

/// Every record of `topic`, read from the beginning of each partition to its end when the read
/// began ([`common::partitions::read_snapshot`]).
pub fn read_topic(topic: &str) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    common::partitions::read_snapshot(&kafka_config(), topic, None, Duration::from_secs(60), |raw| {
        out.push(raw);
        Ok(())
    })?;
    Ok(out)
}

/// Records currently in `topic` (sum over partitions of high minus low watermark).
pub fn topic_size(topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = kafka_config().create()?;
    Ok(common::partitions::watermarks(&consumer, topic)?.values().map(|m| m.high - m.low).sum())
}

/// The binary `bin` of workspace package `package` next to this test binary
/// (`target/<profile>/<bin>`), the workspace built first with `cargo build --workspace
/// --all-targets` (a no-op when up to date, as after `make test`'s build step) so that tests
/// never run a stale one. Not `cargo build -p <package>`: alone, a package's dependencies are
/// built with other features than in the workspace build, which recompiled them (minutes) and
/// replaced the binaries that build had made.
pub fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--all-targets"])
            .current_dir(repo_root())
            .status();
        assert!(status.is_ok_and(|s| s.success()), "cargo build --workspace --all-targets failed (for {package})");
        *built = true;
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    // target/<profile>/deps/<test binary> -> target/<profile>/<bin>
    let path = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join(bin));
    path.filter(|b| b.exists()).unwrap_or_else(|| repo_root().join("target/debug").join(bin))
}

/// The `archiver` binary, up to date ([`workspace_bin`]).
pub fn archiver_bin() -> PathBuf {
    workspace_bin("archiver", "archiver")
}

/// The `agent-svc` binary, up to date ([`workspace_bin`]).
pub fn agent_bin() -> PathBuf {
    workspace_bin("agent-svc", "agent-svc")
}

/// Variables a program needs to start at all; every other one is withheld from the binaries
/// tests run.
const PASSED_TO_CHILDREN: [&str; 4] = ["PATH", "HOME", "TMPDIR", "LD_LIBRARY_PATH"];

/// A command for `program` (one of the project's binaries) with a cleared environment but for
/// `PATH`, `HOME`, `TMPDIR` and `LD_LIBRARY_PATH`: its flags, and the variables the test sets
/// on it, say everything, so what the developer's shell exports (`DQN_NET`, `EPISODES`,
/// `ARCHIVER_BATCH_SIZE`, `LOG_FORMAT`, ...) never changes what a test runs.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.env_clear();
    for key in PASSED_TO_CHILDREN {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd
}

/// Runs `cmd` to its end, as [`std::process::Command::output`], but kills it (SIGKILL) and
/// panics with what it wrote to stderr when it runs past `within`: a child that hangs fails its
/// test with its log instead of stalling the suite.
pub fn output_within(mut cmd: std::process::Command, within: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(PROBE_EVERY),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = stderr.join().unwrap_or_default();
                panic!("{cmd:?} still ran after {within:?}, killed; its stderr:\n{}", String::from_utf8_lossy(&log));
            }
            Err(e) => panic!("cannot wait for {cmd:?}: {e}"),
        }
    };
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    std::process::Output { status, stdout, stderr }
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
pub fn sample_dataset() -> fashion::Dataset {
    let args = fashion::DatasetArgs { dataset: repo_root().join("data/sample"), ..Default::default() };
    args.load(true).unwrap_or_else(|e| panic!("sample dataset: {e}"))
}

/// States as read back from a topic, each with its record key.
pub type KeyedStates = Vec<(Option<Vec<u8>>, protocol::StateMsg)>;

/// What a run left on its topics: every state with its key, and every decodable action (the
/// action topic may hold injected poison). Each record is decoded against its writer's schema,
/// as the services decode them ([`decode_values`]).
pub fn read_run(topics: &TestTopics) -> anyhow::Result<(KeyedStates, Vec<protocol::ActionMsg>)> {
    let records = read_topic(&topics.state)?;
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.value().to_vec()).collect();
    let mut states = Vec::new();
    for (r, state) in records.into_iter().zip(decode_values::<protocol::StateMsg>(&topics.state, &payloads)?) {
        let state = state.map_err(|e| anyhow::anyhow!("a state on the topic is invalid: {e}"))?;
        states.push((r.key, state.msg));
    }
    let payloads: Vec<Vec<u8>> =
        read_topic(&topics.action)?.into_iter().map(|r| r.payload.unwrap_or_default()).collect();
    let actions = decode_values::<protocol::ActionMsg>(&topics.action, &payloads)?
        .into_iter()
        .filter_map(|d| d.ok().map(|d| d.msg))
        .collect();
    Ok((states, actions))
}

/// A client of the stack's schema registry.
pub fn registry() -> common::registry::Registry {
    common::registry::Registry::new(&common::registry::RegistryArgs { schema_registry_url: registry_url() })
}

/// Decodes values of `topic` against their writer's schemas, looked up in the stack's registry
/// under the topic's subject, as the services decode what they consume: one result per value,
/// in order (`Err`: the value is poison, with the reason). A registry that cannot be reached
/// fails the whole call. Callable from plain and from async tests alike: the lookups run on a
/// runtime of their own, on a thread of their own.
#[allow(clippy::type_complexity)]
pub fn decode_values<T: protocol::Message + Send>(
    topic: &str,
    payloads: &[Vec<u8>],
) -> anyhow::Result<Vec<Result<protocol::Decoded<T>, protocol::ProtocolError>>> {
    use common::registry::{DecodeError, SchemaResolver, TopicCodec};
    std::thread::scope(|scope| {
        let decoding = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let codec = TopicCodec::new(protocol::Codec::<T>::new(0)?, topic, SchemaResolver::registry(registry()));
            runtime.block_on(async {
                let mut out = Vec::with_capacity(payloads.len());
                for payload in payloads {
                    match codec.decode_record(payload).await {
                        Ok(d) => out.push(Ok(d)),
                        Err(DecodeError::Record(e)) => out.push(Err(e)),
                        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot decode {topic}"))),
                    }
                }
                Ok(out)
            })
        });
        decoding.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the decoding thread panicked")))
    })
}

/// Parses `args` (the program name first) into `T` as the services' `main` does (a
/// `--dqn-preset` applied), except that no argument falls back on an environment variable
/// (see [`common::cli::try_parse_flags`]).
pub fn try_parse_flags<T: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<T, clap::Error> {
    common::cli::try_parse_flags_with(args, agent_svc::policies::dqn::preset_defaults)
}

/// [`try_parse_flags`], panicking with clap's message on bad flags.
pub fn parse_flags<T: clap::Parser>(args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>) -> T {
    try_parse_flags(args).unwrap_or_else(|e| panic!("bad flags: {e}"))
}

/// `program`, then `flags`, then the stack's location (`--bootstrap-servers`,
/// `--schema-registry-url`) unless `flags` already set it.
///
/// Topics not named in `flags` are named after the environment (`--env`), so that resolving
/// them never falls back on the process's `STATE_TOPIC` or `RECOGYM_STATE_TOPIC` either.
fn service_args(program: &str, flags: &[impl AsRef<str>]) -> Vec<String> {
    let mut args = vec![program.to_string()];
    args.extend(flags.iter().map(|f| f.as_ref().to_string()));
    let env = match args.iter().position(|a| a == "--env").and_then(|i| args.get(i + 1)) {
        Some(kind) if kind == "recogym" => common::kafka::EnvKind::Recogym,
        _ => common::kafka::EnvKind::Fashion,
    };
    let own = env.topics();
    for (flag, value) in [
        ("--bootstrap-servers", bootstrap()),
        ("--schema-registry-url", registry_url()),
        ("--state-topic", own.state_topic),
        ("--action-topic", own.action_topic),
        ("--dead-letter-topic", own.dead_letter_topic),
    ] {
        if !args.iter().any(|a| a == flag || a.starts_with(&format!("{flag}="))) {
            args.extend([flag.to_string(), value]);
        }
    }
    args
}

/// The config of `env-svc run` with `flags`, pointed at the stack; nothing from the environment.
pub fn env_run_args(flags: &[impl AsRef<str>]) -> env_svc::config::RunArgs {
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: env_svc::config::RunArgs,
    }
    parse_flags::<Cli>(service_args("env-svc", flags)).run
}

/// The config of `agent-svc run` with `flags`, pointed at the stack; nothing from the
/// environment.
pub fn agent_run_args(flags: &[impl AsRef<str>]) -> agent_svc::RunArgs {
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: agent_svc::RunArgs,
    }
    parse_flags::<Cli>(service_args("agent-svc", flags)).run
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
    use tokio_util::sync::CancellationToken;
    let sample = repo_root().join("data/sample").display().to_string();
    let mut env_args = vec!["--dataset".to_string(), sample, "--episodes".into(), episodes.to_string()];
    env_args.push("--quiet".into());
    env_args.extend(topics.flags());
    env_args.extend(extra.iter().map(|s| s.to_string()));
    let env = env_run_args(&env_args);
    let mut agent_args = vec!["--policy".to_string(), policy.into(), "--group-id".into(), unique("agents")];
    agent_args.extend(["--offset-reset".into(), "earliest".into()]);
    agent_args.extend(topics.flags());
    let agent = agent_run_args(&agent_args);

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
    use tokio_util::sync::CancellationToken;
    let group = unique("rgagents");
    let kafka = common::kafka::KafkaArgs { bootstrap_servers: bootstrap() };
    sim::recogym::start_group_at_end(&kafka, &group, &topics.state)
        .await
        .unwrap_or_else(|e| panic!("cannot position {group}: {e:#}"));
    let mut env_args = vec!["--env".to_string(), "recogym".into()];
    env_args.extend(topics.flags());
    env_args.extend(env_flags.iter().map(|s| s.to_string()));
    let env = env_run_args(&env_args);
    let mut agent_args = vec!["--env".to_string(), "recogym".into(), "--group-id".into(), group];
    agent_args.extend(topics.flags());
    agent_args.extend(agent_flags.iter().map(|s| s.to_string()));
    let agent = agent_run_args(&agent_args);

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

// ---------------------------------------------------------------------------- waiting

/// How often a condition is probed again.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// Probes `probe` until it returns `Some`, and returns that; panics naming `what` when `within`
/// has passed first. Blocks the calling thread between probes.
pub fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(PROBE_EVERY);
    }
}

/// [`wait_for`] for an async probe; yields to the runtime between probes.
pub async fn wait_for_async<T, F>(what: &str, within: Duration, mut probe: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

// ---------------------------------------------------------------------------- processes

/// Sends `signal` (a name such as `STOP`, `CONT`, `KILL`) to process `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args([format!("-{signal}"), pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

/// Whether every thread of `pid` is stopped; an error once the process has exited.
fn all_threads_stopped(pid: u32) -> anyhow::Result<bool> {
    let tasks =
        std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| anyhow::anyhow!("process {pid} is gone: {e}"))?;
    for task in tasks {
        let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
        // The state is the first field after the command name, which is in parentheses.
        match stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) {
            Some("T" | "t") => {}
            Some("Z" | "X") | None => anyhow::bail!("process {pid} has exited"),
            Some(_) => return Ok(false),
        }
    }
    Ok(true)
}

/// Stops process `pid` (SIGSTOP) and waits until every thread of it is stopped, so that from
/// the return on it reads, writes and commits nothing until [`thaw`]. An error when the process
/// has already exited: a frozen process is one that was still running.
pub fn freeze(pid: u32) -> anyhow::Result<()> {
    send_signal(pid, "STOP")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !all_threads_stopped(pid)? {
        anyhow::ensure!(std::time::Instant::now() < deadline, "process {pid} did not stop within 10 s of SIGSTOP");
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Whether process `pid` has exited (gone, or a zombie nobody has reaped yet).
pub fn has_exited(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    matches!(stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()), None | Some("Z" | "X"))
}

/// Lets a process stopped by [`freeze`] go on (SIGCONT).
pub fn thaw(pid: u32) -> anyhow::Result<()> {
    send_signal(pid, "CONT")
}

// ---------------------------------------------------------------------------- consumer groups

/// The state and member count of consumer group `group` as its coordinator reports them.
pub fn group_state(group: &str) -> anyhow::Result<(String, usize)> {
    let client: BaseConsumer = kafka_config().create()?;
    let list = client.fetch_group_list(Some(group), Duration::from_secs(10))?;
    Ok(list
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map(|g| (g.state().to_string(), g.members().len()))
        .unwrap_or_default())
}

/// Waits until `group` is stable with exactly `members` members.
pub fn wait_for_stable_group(group: &str, members: usize, within: Duration) {
    wait_for(&format!("group {group} stable with {members} members"), within, || {
        group_state(group).ok().filter(|(state, n)| state == "Stable" && *n == members).map(|_| ())
    });
}

/// A member of a consumer group that the test holds: it takes its share of `topic`'s partitions
/// like any member (same protocol, `cooperative-sticky`, as the services) and answers nothing,
/// commits nothing. Whatever is published to the partitions it holds waits until it is
/// released, which is how a test keeps a run open until its fault is in place: a run whose
/// episodes must all be answered cannot end while one of them sits on the gate's partitions.
/// Dropping the gate releases it: its consumer leaves the group and the others take over.
#[derive(Debug)]
pub struct GroupGate {
    group: String,
    topic: String,
    held: std::sync::Arc<std::sync::Mutex<Vec<i32>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    member: Option<std::thread::JoinHandle<()>>,
}

impl GroupGate {
    /// Joins `group` on `topic`; the member's thread polls (which keeps it in the group) until
    /// the gate is dropped.
    pub fn join(group: &str, topic: &str) -> anyhow::Result<Self> {
        use std::sync::{atomic::Ordering, Arc, Mutex};
        let consumer: BaseConsumer = kafka_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .create()?;
        consumer.subscribe(&[topic])?;
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let member = {
            let (held, stop, topic) = (held.clone(), stop.clone(), topic.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // Records are dropped unread: nothing is answered, nothing committed.
                    let _ = consumer.poll(Duration::from_millis(100));
                    let mut now: Vec<i32> = consumer
                        .assignment()
                        .map(|tpl| {
                            tpl.elements().iter().filter(|e| e.topic() == topic).map(|e| e.partition()).collect()
                        })
                        .unwrap_or_default();
                    now.sort_unstable();
                    *held.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = now;
                }
                // Dropping the consumer closes it: it leaves the group.
                drop(consumer);
            })
        };
        Ok(Self { group: group.to_string(), topic: topic.to_string(), held, stop, member: Some(member) })
    }

    /// The partitions the gate holds now.
    pub fn held(&self) -> Vec<i32> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Waits until the group is stable with `members` members and the gate holds its final
    /// share: at least one partition, and no more than a balanced share. From then on, while
    /// nobody joins or leaves, the gate's partitions stay its own.
    pub fn wait_for_share(&self, members: usize, within: Duration) -> Vec<i32> {
        let partitions = usize::try_from(topic_partitions()).unwrap_or(0);
        let most = partitions.div_ceil(members.max(1));
        wait_for(&format!("a share of {} for the gate in group {}", self.topic, self.group), within, || {
            let held = self.held();
            let stable = group_state(&self.group).is_ok_and(|(s, n)| s == "Stable" && n == members);
            (stable && !held.is_empty() && held.len() <= most).then_some(held)
        })
    }

    /// A partition the gate holds that has a record, if any: while the gate holds it, that
    /// record stays unanswered.
    pub fn holding_a_record(&self) -> Option<i32> {
        let marks = high_watermarks(&self.topic).ok()?;
        self.held().into_iter().find(|p| marks.get(p).is_some_and(|&high| high > 0))
    }

    /// Leaves the group (waits until the member has left); the other members take over.
    pub fn release(mut self) {
        self.stop_member();
    }

    fn stop_member(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(member) = self.member.take() {
            let _ = member.join();
        }
    }
}

impl Drop for GroupGate {
    fn drop(&mut self) {
        self.stop_member();
    }
}

// ---------------------------------------------------------------------------- reading as it grows

/// The high watermark of every partition of `topic`, by partition.
pub fn high_watermarks(topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let consumer: BaseConsumer = kafka_config().create()?;
    Ok(common::partitions::watermarks(&consumer, topic)?.into_iter().map(|(p, m)| (p, m.high)).collect())
}

/// A record of a [`TopicTail`].
pub type TailRecord = common::link::Raw;

/// Reads a topic while it grows: every record of every partition from the beginning, each
/// partition in order.
pub struct TopicTail {
    consumer: BaseConsumer,
}

impl std::fmt::Debug for TopicTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicTail").finish_non_exhaustive()
    }
}

impl TopicTail {
    /// Starts at the beginning of every partition of `topic`.
    pub fn new(topic: &str) -> anyhow::Result<Self> {
        let consumer: BaseConsumer =
            kafka_config().set("group.id", unique("tail")).set("enable.auto.commit", "false").create()?;
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
        let mut tpl = TopicPartitionList::new();
        for p in md.topics().first().map(|t| t.partitions()).unwrap_or_default() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer })
    }

    /// The records that arrived since the last call: waits up to `wait` for the first one, then
    /// takes whatever else is there without waiting.
    pub fn drain(&self, wait: Duration) -> Vec<TailRecord> {
        let mut out = Vec::new();
        let mut timeout = wait;
        // Bounded: transport errors (a dead broker) are events too, and must not spin forever.
        for _ in 0..100_000 {
            let Some(polled) = self.consumer.poll(timeout) else { break };
            timeout = Duration::ZERO;
            if let Ok(m) = polled {
                out.push(common::link::Raw::from_message(&m));
            }
        }
        out
    }
}
