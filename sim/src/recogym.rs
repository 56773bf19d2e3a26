//! `streamrec-sim recogym`: RecoGym's A/B protocol (`recogym/bench_agents.py` `test_agent`) run
//! through the pipeline, the reference paper's RecoGym experiment (Table 1, Fig 4).
//!
//! 1. Logging: users `F..F+M` are served by the uniform random policy (RecoGym's default
//!    logging policy, seeded by the env's `random_seed` as `RandomAgent::from_config` is).
//!    Over Kafka this is a run of env-svc's engine against agent-svc's core on the RecoGym
//!    topics, read back afterwards by env id; in memory it is `recogym::generate_logs` (without
//!    the recommendation RecoGym logs after a user left, which the pipeline never asks for).
//! 2. For each policy: train on that log, then serve users `F+M..F+M+N` (the same users for
//!    every policy), frozen, through the same transport, and count at the env: impressions =
//!    recommendations answered, clicks = rewards paid.
//! 3. CTR and its 95% interval: the `Beta(clicks + 1, impressions - clicks + 1)` posterior's
//!    median and 2.5/97.5% quantiles (`recogym::ab::beta_interval`, as RecoGym reports them).
//!
//! Writes `ab.json` (`{"settings", "agents": {name: {"ctr", "lo", "hi", "users",
//! "impressions"}}}`) for the Kafka run and `ab-memory.json` for the in-process one, a bar chart
//! per file (`ctr.png`, `ctr-memory.png`), and `runs.json` with every run's details (env ids,
//! clicks, timings). The environment and the random streams are per user, so both transports
//! see the same users answered the same way and report the same counts.

use std::{
    collections::BTreeMap,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use agent_svc::{core::AgentCore, policies::PolicyKind, AgentArgs};
use anyhow::Context;
use common::{
    kafka::{EnvKind, KafkaArgs, TopicArgs, Topics, TuningArgs},
    registry::{Registry, RegistryArgs},
};
use env_svc::{
    config::{LoopArgs, RecoGymArgs},
    metrics::Summary,
};
use protocol::RecoStateMsg;
use recogym::{Log, World};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Where the runs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Through the local stack: env and agent in this process, talking only through the
    /// RecoGym topics.
    Kafka,
    /// Bounded in-process channels; the logs come from `recogym::generate_logs`.
    Memory,
}

/// `streamrec-sim recogym`: the settings of the A/B test.
#[derive(Debug, Clone, clap::Args)]
pub struct RecoArgs {
    /// The environment: `--recogym-users` is the number of A/B users (N, the same for every
    /// policy) and `--recogym-first-user` the first training user; the other flags are
    /// RecoGym's `env_1_args`.
    #[command(flatten)]
    pub recogym: RecoGymArgs,
    /// Users logged by the random policy to train on (M): ids `first..first + M`; the A/B users
    /// follow them.
    #[arg(long, env = "RECOGYM_TRAIN_USERS", default_value_t = 5000)]
    pub train_users: u64,
    /// Policies to train and test, in this order.
    #[arg(
        long,
        env = "RECOGYM_POLICIES",
        value_delimiter = ',',
        default_value = "random,organic-count,user-count,likelihood,nn,dqn"
    )]
    pub policies: Vec<PolicyKind>,
    /// Transports to run the whole test over, each on its own.
    #[arg(long, env = "RECOGYM_TRANSPORTS", value_delimiter = ',', default_value = "kafka,memory")]
    pub transports: Vec<Transport>,
    /// Users in flight at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 256)]
    pub concurrency: usize,
    /// A step whose action has not arrived after this long is published again.
    #[arg(long, env = "ACTION_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub action_timeout: Duration,
    /// Capacity of each in-memory channel, in records.
    #[arg(long, env = "CHANNEL_CAPACITY", default_value_t = 1024)]
    pub capacity: usize,
    /// Folder of ab.json, ab-memory.json, the charts and runs.json.
    #[arg(long, env = "RECOGYM_OUT", default_value = "target/recogym")]
    pub out: PathBuf,
    /// The agents' settings (`--policy` is taken from `--policies`; `--agent-seed` seeds the
    /// tested policies, the env's `--recogym-seed` the logging policy).
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    /// The RecoGym topics, unless named otherwise.
    #[command(flatten)]
    pub topics: TopicArgs,
}

/// One policy's A/B result, as `ab.json` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AbEntry {
    /// Posterior median of the click-through rate.
    pub ctr: f64,
    /// 2.5% posterior quantile.
    pub lo: f64,
    /// 97.5% posterior quantile.
    pub hi: f64,
    /// A/B users served.
    pub users: u64,
    /// Recommendations answered.
    pub impressions: u64,
}

impl AbEntry {
    /// The entry of `clicks` out of `impressions` over `users` users.
    pub fn of(clicks: u64, impressions: u64, users: u64) -> Self {
        let (ctr, lo, hi) = recogym::ab::beta_interval(clicks, impressions);
        Self { ctr, lo, hi, users, impressions }
    }
}

/// One run (logging or A/B) as `runs.json` records it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// `logging` or the policy name.
    pub policy: String,
    /// The env id of the run's messages.
    pub env_id: String,
    /// Users that finished.
    pub users: u64,
    /// Recommendations answered.
    pub impressions: u64,
    /// Clicks.
    pub clicks: u64,
    /// Training time before the run (reading the logs back included), seconds.
    pub train_s: f64,
    /// The run's wall time, seconds.
    pub run_s: f64,
    /// Steps per second of the run.
    pub steps_per_s: f64,
    /// Re-sent states, duplicates and dead letters at the env.
    pub resends: u64,
    /// Median step round trip, ms.
    pub rtt_p50_ms: f64,
}

/// Everything one transport produced.
#[derive(Debug, Clone)]
pub struct TransportReport {
    /// The transport.
    pub transport: Transport,
    /// Per policy, in test order.
    pub agents: Vec<(String, AbEntry, u64)>,
    /// The logging run and every A/B run.
    pub runs: Vec<RunRecord>,
    /// The training log (to compare transports).
    pub log: Arc<Log>,
}

impl RecoArgs {
    fn config(&self) -> anyhow::Result<recogym::Config> {
        self.recogym.config().context("invalid recogym configuration")
    }

    fn train_range(&self) -> Range<u64> {
        let first = self.recogym.recogym_first_user;
        first..first + self.train_users
    }

    fn ab_range(&self) -> Range<u64> {
        let first = self.recogym.recogym_first_user + self.train_users;
        first..first + self.recogym.recogym_users
    }

    fn run_loop(&self) -> LoopArgs {
        LoopArgs { concurrency: self.concurrency.max(1), action_timeout: self.action_timeout, max_resends: 30 }
    }

    fn topics(&self) -> Topics {
        self.topics.resolve(EnvKind::Recogym)
    }

    /// The `settings` object of ab.json: RecoGym's env parameters plus the protocol's sizes.
    pub fn settings(&self, transport: Transport) -> anyhow::Result<Value> {
        let mut settings = serde_json::to_value(self.config()?)?;
        if let Value::Object(map) = &mut settings {
            map.insert("num_users".into(), json!(self.recogym.recogym_users));
            map.insert("num_offline_users".into(), json!(self.train_users));
            map.insert("num_online_users".into(), json!(self.recogym.recogym_users));
            map.insert("num_organic_offline_users".into(), json!(0));
            map.insert("first_user_id".into(), json!(self.recogym.recogym_first_user));
            map.insert("count_final_impression".into(), json!(false));
            map.insert("transport".into(), json!(format!("{transport:?}").to_lowercase()));
        }
        Ok(settings)
    }
}

/// Plays `users` of `world` against `core` over `transport`; returns the env's summary and the
/// run's env id.
pub(crate) async fn play(
    args: &RecoArgs,
    world: Arc<World>,
    users: Range<u64>,
    core: AgentCore<RecoStateMsg>,
    transport: Transport,
    tag: &str,
) -> anyhow::Result<(Summary, String)> {
    let rargs =
        RecoGymArgs { recogym_first_user: users.start, recogym_users: users.end - users.start, ..args.recogym.clone() };
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let env_id = format!("reco-gym-v1/{tag}-{run_id}");
    let engine = env_svc::recogym_engine_in(world, &rargs, &args.run_loop(), env_id.clone());
    let shutdown = CancellationToken::new();
    let max_batch = args.agent.max_batch;
    let outcome = match transport {
        Transport::Memory => {
            let wiring = crate::memory_wiring(args.capacity)?;
            crate::run_engine(engine, (core, max_batch), wiring, (false, Duration::from_secs(5)), shutdown).await?
        }
        Transport::Kafka => {
            let topics = args.topics();
            let (state_codec, action_codec) =
                Registry::new(&args.registry).step_codecs::<RecoStateMsg>(&topics).await?;
            let group = format!("recogym-sim-{tag}-{run_id}");
            start_group_at_end(&args.kafka, &group, &topics.state_topic).await?;
            let env_link = env_svc::link::KafkaEnvLink::connect(&args.kafka, &args.tuning, topics.clone()).await?;
            let agent_link =
                agent_svc::link::KafkaAgentLink::connect(&args.kafka, &args.tuning, topics, &group, "earliest")?;
            let wiring = crate::Wiring { env_link, agent_link, state_codec, action_codec };
            // The env is done once every user ended: the agent has only terminal states left.
            crate::run_engine(engine, (core, max_batch), wiring, (false, Duration::from_millis(500)), shutdown).await?
        }
    };
    let s = outcome.summary;
    anyhow::ensure!(
        s.episodes == rargs.recogym_users && !s.head.interrupted,
        "{tag}: {} of {} users finished",
        s.episodes,
        rargs.recogym_users
    );
    anyhow::ensure!(s.invalid == 0 && s.decode_errors == 0, "{tag}: bad actions reached the env: {s}");
    Ok((s, env_id))
}

/// Commits, for the new consumer group `group`, the current end of every partition of `topic`:
/// the agent that joins the group then reads exactly what is published from now on, and no
/// earlier run's backlog.
pub async fn start_group_at_end(kafka: &KafkaArgs, group: &str, topic: &str) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let (kafka, group, topic) = (kafka.clone(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer: BaseConsumer = kafka
            .client_config()
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .create()
            .context("failed to create a kafka client")?;
        let tpl = common::partitions::at_end(&consumer, &topic)?;
        consumer.commit(&tpl, CommitMode::Sync).with_context(|| format!("failed to position group {group}"))
    })
    .await
    .context("group positioning panicked")?
}

/// The training log of `transport`: a logging run read back from the topics, or
/// `recogym::generate_logs`. Returns it with the logging run's record.
async fn training_log(args: &RecoArgs, world: Arc<World>, transport: Transport) -> anyhow::Result<(Log, RunRecord)> {
    let config = world.config().clone();
    let users = args.train_range();
    let started = Instant::now();
    match transport {
        Transport::Memory => {
            let w = world.clone();
            let log = tokio::task::spawn_blocking(move || {
                let mut log = recogym::generate_logs(&w, users, &recogym::RandomAgent::from_config(&config));
                agent_svc::policies::recogym::logs::strip_after_leaving(&mut log);
                log
            })
            .await
            .context("log generation panicked")?;
            let bandit: Vec<&recogym::LogRow> = log.rows.iter().filter(|r| r.z == recogym::Event::Bandit).collect();
            let clicks = bandit.iter().filter(|r| r.c == Some(true)).count() as u64;
            let run_s = started.elapsed().as_secs_f64();
            let record = RunRecord {
                policy: "logging".into(),
                env_id: "recogym::generate_logs".into(),
                users: args.train_users,
                impressions: bandit.len() as u64,
                clicks,
                train_s: 0.0,
                run_s,
                steps_per_s: bandit.len() as f64 / run_s.max(1e-9),
                resends: 0,
                rtt_p50_ms: 0.0,
            };
            Ok((log, record))
        }
        Transport::Kafka => {
            // The logging policy: uniform random seeded by the env's seed, as RecoGym's.
            let mut logger = args.agent.clone();
            logger.policy = PolicyKind::Random;
            logger.agent_seed = config.random_seed;
            let core = logger.try_build_recogym(None)?;
            let since_ms = common::kafka::now_ms() - 5_000;
            let (summary, env_id) = play(args, world, users, core, Transport::Kafka, "logging").await?;
            let run_s = started.elapsed().as_secs_f64();
            let read = Instant::now();
            let (kafka, registry, topics) = (&args.kafka, &args.registry, &args.topics());
            let run = agent_svc::train_logs::read_run_checked(kafka, registry, topics, &env_id, Some(since_ms)).await?;
            let log = agent_svc::policies::recogym::logs::log_from_messages(&run.states, &run.actions);
            let mut record = record_of("logging", &env_id, &summary, 0.0);
            record.run_s = run_s;
            tracing::info!(seconds = read.elapsed().as_secs_f64(), rows = log.rows.len(), "logging run read back");
            Ok((log, record))
        }
    }
}

fn record_of(policy: &str, env_id: &str, s: &Summary, train_s: f64) -> RunRecord {
    RunRecord {
        policy: policy.into(),
        env_id: env_id.into(),
        users: s.episodes,
        impressions: s.steps,
        clicks: s.reward_sum.round() as u64,
        train_s,
        run_s: s.elapsed_s,
        steps_per_s: s.steps_per_s,
        resends: s.resends,
        rtt_p50_ms: s.rtt_ms.p50,
    }
}

/// Runs the whole test over one transport.
pub async fn run_transport(
    args: &RecoArgs,
    world: Arc<World>,
    transport: Transport,
) -> anyhow::Result<TransportReport> {
    let products = world.num_products();
    let (log, logging) = training_log(args, world.clone(), transport).await?;
    println!(
        "  [{transport:?}] logging: {} users, {} impressions, {} clicks in {:.1} s ({} log rows)",
        logging.users,
        logging.impressions,
        logging.clicks,
        logging.run_s,
        log.rows.len()
    );
    let log = Arc::new(log);
    let mut report = TransportReport { transport, agents: Vec::new(), runs: vec![logging], log: log.clone() };
    for &kind in &args.policies {
        let started = Instant::now();
        let mut agent = args.agent.clone();
        agent.policy = kind;
        let train_log = log.clone();
        let core = tokio::task::spawn_blocking(move || agent.try_build_recogym(Some((&train_log, products))))
            .await
            .context("training panicked")??;
        let train_s = started.elapsed().as_secs_f64();
        let (summary, env_id) = play(args, world.clone(), args.ab_range(), core, transport, kind.name()).await?;
        let record = record_of(kind.name(), &env_id, &summary, train_s);
        let entry = AbEntry::of(record.clicks, record.impressions, record.users);
        println!(
            "  [{transport:?}] {:<14} CTR {:.4} [{:.4}, {:.4}]  {} clicks / {} impressions  (train {:.1} s, run {:.1} s, {:.0} steps/s)",
            kind.name(),
            entry.ctr,
            entry.lo,
            entry.hi,
            record.clicks,
            record.impressions,
            train_s,
            record.run_s,
            record.steps_per_s
        );
        report.agents.push((kind.name().to_string(), entry, record.clicks));
        report.runs.push(record);
    }
    Ok(report)
}

/// The `ab.json` document of one transport.
pub fn ab_json(args: &RecoArgs, report: &TransportReport) -> anyhow::Result<Value> {
    let agents: BTreeMap<&str, &AbEntry> = report.agents.iter().map(|(n, e, _)| (n.as_str(), e)).collect();
    Ok(json!({"settings": args.settings(report.transport)?, "agents": agents}))
}

/// Prints the table of one transport.
pub fn print_table(report: &TransportReport) {
    println!("\n{:?}: CTR with 95% interval (Beta posterior), A/B users", report.transport);
    println!(
        "{:<14} {:>8} {:>8} {:>8} {:>12} {:>8} {:>7} {:>9} {:>9}",
        "agent", "ctr", "lo", "hi", "impressions", "clicks", "users", "train s", "run s"
    );
    for ((name, e, clicks), run) in report.agents.iter().zip(report.runs.iter().skip(1)) {
        println!(
            "{name:<14} {:>8.4} {:>8.4} {:>8.4} {:>12} {:>8} {:>7} {:>9.1} {:>9.1}",
            e.ctr, e.lo, e.hi, e.impressions, clicks, e.users, run.train_s, run.run_s
        );
    }
}

/// `streamrec-sim recogym`: runs every transport, writes the files, prints the tables.
pub async fn run(args: RecoArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let world = Arc::new(World::try_new(&config).context("invalid recogym configuration")?);
    anyhow::ensure!(!args.transports.is_empty() && !args.policies.is_empty(), "nothing to run");
    std::fs::create_dir_all(&args.out).with_context(|| format!("failed to create {}", args.out.display()))?;
    println!(
        "RecoGym A/B: {} products, seed {}, {} training users (ids {:?}), {} A/B users (ids {:?}), policies {}",
        config.num_products,
        config.random_seed,
        args.train_users,
        args.train_range(),
        args.recogym.recogym_users,
        args.ab_range(),
        args.policies.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    );
    let mut reports = Vec::new();
    for &transport in &args.transports {
        let started = Instant::now();
        let report = run_transport(&args, world.clone(), transport).await?;
        println!("  [{transport:?}] done in {:.1} s", started.elapsed().as_secs_f64());
        reports.push(report);
    }
    let mut runs = serde_json::Map::new();
    for report in &reports {
        let (json_name, png_name) = match report.transport {
            Transport::Kafka => ("ab.json", "ctr.png"),
            Transport::Memory => ("ab-memory.json", "ctr-memory.png"),
        };
        env_svc::write_json(&args.out.join(json_name), &ab_json(&args, report)?)?;
        let bars: Vec<(String, f64, f64, f64)> =
            report.agents.iter().map(|(n, e, _)| (n.clone(), e.ctr, e.lo, e.hi)).collect();
        let title = format!(
            "RecoGym CTR by agent ({:?}; {} products, {} A/B users; 95% intervals)",
            report.transport, config.num_products, args.recogym.recogym_users
        );
        crate::plot::ctr_bars(&args.out.join(png_name), &title, &bars)?;
        runs.insert(format!("{:?}", report.transport).to_lowercase(), serde_json::to_value(&report.runs)?);
        print_table(report);
    }
    if let [a, b] = reports.as_slice() {
        let same_logs = same_rows(&a.log, &b.log);
        let same_counts = a.agents.iter().zip(&b.agents).all(|(x, y)| x.1.impressions == y.1.impressions && x.2 == y.2);
        println!(
            "\n{:?} and {:?}: same training log: {same_logs}; same impressions and clicks per agent: {same_counts}",
            a.transport, b.transport
        );
        runs.insert("same_training_log".into(), json!(same_logs));
        runs.insert("same_counts".into(), json!(same_counts));
    }
    env_svc::write_json(&args.out.join("runs.json"), &Value::Object(runs))?;
    println!("\nwrote {}", written(&args.out, &reports).join(", "));
    Ok(())
}

/// Whether two logs hold the same events (propensity vectors aside: only in-process logs
/// carry them).
fn same_rows(a: &Log, b: &Log) -> bool {
    a.rows.len() == b.rows.len()
        && a.rows.iter().zip(&b.rows).all(|(x, y)| (x.t, x.u, x.z, x.v, x.a, x.c) == (y.t, y.u, y.z, y.v, y.a, y.c))
}

fn written(out: &Path, reports: &[TransportReport]) -> Vec<String> {
    let mut files = Vec::new();
    for r in reports {
        let names: &[&str] = match r.transport {
            Transport::Kafka => &["ab.json", "ctr.png"],
            Transport::Memory => &["ab-memory.json", "ctr-memory.png"],
        };
        files.extend(names.iter().map(|n| out.join(n).display().to_string()));
    }
    files.push(out.join("runs.json").display().to_string());
    files
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: RecoArgs,
    }

    /// The in-process pipeline (engine, agent core, memory links) gives exactly the counts of
    /// the `recogym` crate's own A/B test for the same users, and the settings are RecoGym's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pipeline_in_memory_counts_what_recogyms_ab_test_counts() {
        let cli = common::cli::parse_flags::<Cli>([
            "sim",
            "--recogym-products",
            "6",
            "--recogym-users",
            "60",
            "--train-users",
            "80",
            "--policies",
            "organic-count,user-count",
            "--transports",
            "memory",
        ]);
        let args = cli.args;
        let config = args.config().unwrap_or_else(|e| panic!("{e}"));
        let world = Arc::new(World::new(&config));
        let report = run_transport(&args, world.clone(), Transport::Memory).await.unwrap_or_else(|e| panic!("{e:#}"));
        let settings = recogym::ab::AbSettings {
            num_organic_offline_users: 0,
            num_offline_users: 80,
            num_online_users: 60,
            count_final_impression: false,
        };
        let organic = recogym::ab::run(&world, &settings, recogym::OrganicCountAgent::from_config);
        let users = recogym::ab::run(&world, &settings, |c| {
            let mut agent = recogym::OrganicUserCountAgent::from_config(c);
            agent.select_randomly = false;
            agent
        });
        let ours: Vec<(u64, u64)> = report.agents.iter().map(|(_, e, clicks)| (*clicks, e.impressions)).collect();
        assert_eq!(ours, vec![(organic.clicks, organic.impressions), (users.clicks, users.impressions)]);
        assert_eq!(report.agents[0].1, AbEntry::of(organic.clicks, organic.impressions, 60));

        let json = ab_json(&args, &report).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["settings"]["num_products"], 6);
        assert_eq!(json["settings"]["K"], 5);
        let entry = &json["agents"]["organic-count"];
        let keys: Vec<&str> = entry.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        assert_eq!(keys, ["ctr", "hi", "impressions", "lo", "users"]);
        assert!(entry["lo"].as_f64() < entry["ctr"].as_f64() && entry["ctr"].as_f64() < entry["hi"].as_f64());
    }
}
