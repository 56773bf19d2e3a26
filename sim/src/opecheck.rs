//! `streamrec-sim ope-recogym`: off-policy evaluation checked against ground truth on RecoGym,
//! where the truth is an A/B test.
//!
//! 1. Logging: when a target (or a logging policy) learns from logs, `--train-users` users are
//!    first served by the uniform random policy: the training run, "last week's traffic", the
//!    only log anything is trained on (as `make recogym` trains its agents on a random run).
//!    Then, for each logging policy (`--loggings`, e.g. `random` and
//!    `organic-count@epsilon:0.2`), other users are served through Kafka by that policy
//!    (env-svc's engine against agent-svc's core on the RecoGym topics, as `streamrec-sim
//!    recogym` does).
//! 2. Archive: `archiver::run_once --env recogym` copies the topics into Cassandra.
//! 3. Truth: each target (`--policies`), trained on the training run, serves fresh users (the
//!    same for every target) through Kafka; its CTR, clicks / impressions counted at the env, is
//!    the value the estimators aim at.
//! 4. Estimate: for each logging run and each target, `agent-svc ope --train-env-id <training
//!    run>` reads both runs back from Cassandra, trains the target on the training run and
//!    estimates its CTR on the logging run (IPS, SNIPS, DM, DR with bootstrap intervals).
//!
//! A target trained on the very log that evaluates it is judged on the clicks it was fitted to:
//! measured at 5,000 users under organic-count@epsilon:0.2 logging, that made DR overestimate
//! likelihood by 12% and nn by 16%, outside every interval; hence the separate training run.
//!
//! Writes `ope-recogym.json` (every estimate, its error and interval width against the A/B CTR),
//! one PNG per (logging, target) with the truth as a dashed line, and the export files of the
//! OBP cross-check (`scripts/ope_obp.sh`); prints the table.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Instant};

use agent_svc::{
    ope::{OpeArgs, OpeReport},
    policies::{recogym::Exploration, PolicyKind},
};
use anyhow::Context;
use common::kafka::EnvKind;
use recogym::World;
use serde::Serialize;
use serde_json::json;

use crate::recogym::{play, AbEntry, RecoArgs, Transport};

/// A logging policy: a policy with how it explores, written `policy[@exploration]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logging {
    /// The policy.
    pub policy: PolicyKind,
    /// How it explores.
    pub explore: Exploration,
}

impl std::str::FromStr for Logging {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use clap::ValueEnum;
        let (p, e) = s.split_once('@').unwrap_or((s, "greedy"));
        Ok(Self { policy: PolicyKind::from_str(p, false)?, explore: e.parse()? })
    }
}

impl std::fmt::Display for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.explore {
            Exploration::Greedy => f.write_str(self.policy.name()),
            e => write!(f, "{}@{e}", self.policy.name()),
        }
    }
}

/// `streamrec-sim ope-recogym`: the A/B settings (`--train-users` logged users per logging
/// policy, `--recogym-users` A/B users, `--policies` the targets), the logging policies, the
/// archive and the estimators.
#[derive(Debug, Clone, clap::Args)]
pub struct OpeCheckArgs {
    #[command(flatten)]
    pub reco: RecoArgs,
    /// Logging policies, each `policy[@greedy|epsilon:E|softmax:T]`; each logs its own
    /// `--train-users` users.
    #[arg(long, env = "OPE_LOGGINGS", value_delimiter = ',', default_value = "random,organic-count@epsilon:0.2")]
    pub loggings: Vec<Logging>,
    #[command(flatten)]
    pub cassandra: archiver::CassandraArgs,
    /// Consumer group of the archive run.
    #[arg(long, env = "OPE_ARCHIVER_GROUP", default_value = "archiver")]
    pub archiver_group: String,
    /// Bootstrap replicates.
    #[arg(long, env = "OPE_BOOTSTRAP", default_value_t = 1000)]
    pub bootstrap: usize,
    /// Folder of the JSON, the PNGs and the exports.
    #[arg(long, env = "OPE_OUT", default_value = "target/ope")]
    pub ope_out: PathBuf,
}

/// One (logging, target) line of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    /// The logging policy.
    pub logging: String,
    /// The logging run's env id.
    pub logging_env_id: String,
    /// The run the target was trained on (none when it learns nothing).
    pub train_env_id: Option<String>,
    /// The target.
    pub target: String,
    /// The A/B test of the target on fresh users.
    pub ab: AbEntry,
    /// clicks / impressions of the A/B test: the truth.
    pub truth: f64,
    /// Per estimator: value, interval, relative error, interval width, coverage.
    pub estimators: BTreeMap<String, serde_json::Value>,
    /// The evaluation's full report.
    pub report: OpeReport,
}

/// Runs the whole check; returns the comparisons (also written to `ope-recogym.json`).
pub async fn run(args: OpeCheckArgs) -> anyhow::Result<Vec<Comparison>> {
    let reco = &args.reco;
    let config = reco.recogym.config().context("invalid recogym configuration")?;
    let world = Arc::new(World::try_new(&config).context("invalid recogym configuration")?);
    let products = world.num_products();
    std::fs::create_dir_all(&args.ope_out).with_context(|| format!("failed to create {}", args.ope_out.display()))?;
    anyhow::ensure!(!args.loggings.is_empty() && !reco.policies.is_empty(), "nothing to run");
    let first = reco.recogym.recogym_first_user;
    let m = reco.train_users;
    // A target (or a logging policy) that learns is trained on a run of its own, as `make
    // recogym` trains on a random run: "last week's traffic". Training a target on the very log
    // that evaluates it would reward it for the clicks the log happened to get.
    let needs_training = reco
        .policies
        .iter()
        .chain(args.loggings.iter().map(|l| &l.policy))
        .any(|&p| agent_svc::policies::recogym::needs_logs(p));
    let blocks = args.loggings.len() as u64 + u64::from(needs_training);
    let ab_users = first + m * blocks..first + m * blocks + reco.recogym.recogym_users;
    println!(
        "OPE on RecoGym: {products} products, seed {}, {m} logged users per logging policy ({}){}, targets {}, {} A/B users (ids {ab_users:?})",
        config.random_seed,
        args.loggings.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        if needs_training { format!(", {m} more logged by random to train on") } else { String::new() },
        reco.policies.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
        ab_users.end - ab_users.start
    );

    // 1. The training run (when something learns), then the logging runs.
    let mut train: Option<(Arc<recogym::Log>, String)> = None;
    if needs_training {
        let mut agent = reco.agent.clone();
        agent.policy = PolicyKind::Random;
        agent.recogym.recogym_exploration = Exploration::Greedy;
        agent.agent_seed = config.random_seed + 1000;
        let core = agent.try_build_recogym(None)?;
        let env_id = log_users(reco, &world, first..first + m, core, "training run (random)", "train").await?;
        let since_ms = common::kafka::now_ms() - 3_600_000;
        let run = agent_svc::train_logs::read_run_checked(
            &reco.kafka,
            &reco.registry,
            &reco.topics.resolve(EnvKind::Recogym),
            &env_id,
            Some(since_ms),
        )
        .await?;
        let log = agent_svc::policies::recogym::logs::log_from_messages(&run.states, &run.actions);
        train = Some((Arc::new(log), env_id));
    }
    let mut runs: Vec<(Logging, String)> = Vec::new();
    for (j, logging) in args.loggings.iter().enumerate() {
        let block = j as u64 + u64::from(needs_training);
        let users = first + m * block..first + m * (block + 1);
        let mut agent = reco.agent.clone();
        agent.policy = logging.policy;
        agent.recogym.recogym_exploration = logging.explore;
        agent.agent_seed = config.random_seed + j as u64;
        let log =
            agent_svc::policies::recogym::needs_logs(logging.policy).then(|| train.as_ref().map(|(l, _)| l.clone()));
        let core = agent.try_build_recogym(log.flatten().as_deref().map(|l| (l, products)))?;
        let env_id = log_users(reco, &world, users, core, &format!("logging {logging}"), "logging").await?;
        runs.push((logging.clone(), env_id));
    }

    // 2. Archive.
    let archive = archiver::RunArgs {
        kafka: reco.kafka.clone(),
        env: EnvKind::Recogym,
        topics: reco.topics.clone(),
        registry: reco.registry.clone(),
        cassandra: args.cassandra.clone(),
        group_id: args.archiver_group.clone(),
        concurrency: 64,
        batch_size: 5000,
        ttl: None,
        retry_for: humantime::Duration::from(std::time::Duration::from_secs(60)),
        summary_json: None,
        no_progress: true,
        abort_before_commit: None,
    };
    let started = Instant::now();
    let summary = archiver::run_once(&archive, &tokio_util::sync::CancellationToken::new()).await;
    anyhow::ensure!(
        summary.outcome == archiver::Outcome::Ok,
        "archiving failed: {}",
        summary.error.as_deref().unwrap_or("(no reason given)")
    );
    println!(
        "  archived {} messages into {} in {:.1} s",
        summary.messages.values().sum::<u64>(),
        args.cassandra.keyspace,
        started.elapsed().as_secs_f64()
    );

    // 3. The truth: each target, trained on the training run, A/B-tested on fresh users.
    let mut truths = BTreeMap::new();
    for &target in &reco.policies {
        let mut agent = reco.agent.clone();
        agent.policy = target;
        agent.recogym.recogym_exploration = Exploration::Greedy;
        let log = train.as_ref().map(|(l, _)| l.clone());
        let core = tokio::task::spawn_blocking(move || agent.try_build_recogym(log.as_deref().map(|l| (l, products))))
            .await
            .context("training panicked")??;
        let (s, ab_env) = play(reco, world.clone(), ab_users.clone(), core, Transport::Kafka, target.name()).await?;
        let clicks = s.reward_sum.round() as u64;
        let ab = AbEntry::of(clicks, s.steps, s.episodes);
        let truth = clicks as f64 / s.steps.max(1) as f64;
        println!("  A/B {} ({ab_env}): CTR {truth:.5} [{:.5}, {:.5}]", target.name(), ab.lo, ab.hi);
        truths.insert(target.name(), (ab, truth));
    }

    // 4. The estimates of each target (trained the same way, read back from the archive) on
    // each logging run, against its A/B CTR.
    let mut out = Vec::new();
    for (logging, env_id) in &runs {
        let slug = logging.to_string().replace(['@', ':'], "-");
        for &target in &reco.policies {
            let mut agent = reco.agent.clone();
            agent.policy = target;
            agent.recogym.recogym_exploration = Exploration::Greedy;
            let ope_args = OpeArgs {
                env: EnvKind::Recogym,
                env_id: env_id.clone(),
                since: None,
                until: None,
                train_env_id: train.as_ref().map(|(_, id)| id.clone()),
                bootstrap: args.bootstrap,
                ope_seed: 1,
                confidence: 0.95,
                max_weight: 100.0,
                truth: false,
                json: None,
                png: None,
                export: Some(args.ope_out.join(format!("{slug}.{}.export.json", target.name()))),
                agent,
                cassandra: args.cassandra.clone(),
                dataset: default_dataset(),
            };
            let report = agent_svc::ope::run(ope_args).await?;
            let (ab, truth) = truths[target.name()];
            let mut estimators = BTreeMap::new();
            for e in &report.evaluation.estimates {
                let i = e.interval;
                estimators.insert(
                    e.estimator.name().to_string(),
                    json!({"value": i.value, "lo": i.lo, "hi": i.hi, "width": i.width(),
                           "rel_error": (i.value - truth) / truth, "covers": i.covers(truth)}),
                );
            }
            let png = args.ope_out.join(format!("{slug}.{}.png", target.name()));
            let title = format!("{} logged by {logging}: estimates vs A/B CTR", target.name());
            ope::plot::estimates_png(&png, &title, &report.evaluation, Some(truth))?;
            out.push(Comparison {
                logging: logging.to_string(),
                logging_env_id: env_id.clone(),
                train_env_id: train.as_ref().map(|(_, id)| id.clone()),
                target: target.name().into(),
                ab,
                truth,
                estimators,
                report,
            });
        }
    }
    print_table(&out);
    env_svc::write_json(&args.ope_out.join("ope-recogym.json"), &serde_json::to_value(&out)?)?;
    println!("\nwrote {}/ope-recogym.json and a PNG per line", args.ope_out.display());
    Ok(out)
}

/// Serves `users` through Kafka with `core` and prints what it logged; returns the run's env id.
async fn log_users(
    reco: &RecoArgs,
    world: &Arc<World>,
    users: std::ops::Range<u64>,
    core: agent_svc::core::AgentCore<protocol::RecoStateMsg>,
    what: &str,
    tag: &str,
) -> anyhow::Result<String> {
    let started = Instant::now();
    let (summary, env_id) = play(reco, world.clone(), users, core, Transport::Kafka, tag).await?;
    println!(
        "  {what}: {} users, {} impressions, {} clicks in {:.1} s ({env_id})",
        summary.episodes,
        summary.steps,
        summary.reward_sum,
        started.elapsed().as_secs_f64()
    );
    Ok(env_id)
}

/// The dataset flags' defaults (unused on RecoGym).
fn default_dataset() -> fashion::DatasetArgs {
    #[derive(Debug, clap::Parser)]
    struct D {
        #[command(flatten)]
        d: fashion::DatasetArgs,
    }
    common::cli::parse_flags::<D>(["d"]).d
}

/// The comparison table: each estimator's error and interval width against the A/B CTR.
pub fn print_table(rows: &[Comparison]) {
    println!(
        "\n{:<28} {:<14} {:>9} {:<6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>6}",
        "logging", "target", "A/B CTR", "est.", "value", "lo", "hi", "width", "error", "covers"
    );
    for c in rows {
        for (name, v) in &c.estimators {
            let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<28} {:<14} {:>9.5} {:<6} {:>9.5} {:>9.5} {:>9.5} {:>9.5} {:>+7.1}% {:>6}",
                c.logging,
                c.target,
                c.truth,
                name,
                f("value"),
                f("lo"),
                f("hi"),
                f("width"),
                100.0 * f("rel_error"),
                if v["covers"].as_bool() == Some(true) { "yes" } else { "no" }
            );
        }
    }
}
