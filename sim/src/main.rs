//! `streamrec-sim`: env-svc and agent-svc in one process over bounded in-memory channels, for
//! fast experiments and to measure what Kafka costs (`make sim TRANSPORT=memory`), the
//! evaluation on held-out users (`make eval`) and RecoGym's A/B test (`make recogym`).

use std::{path::PathBuf, sync::Arc};

use agent_svc::AgentArgs;
use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use common::{kafka::EnvKind, telemetry::LogFormat};
use env_svc::config::EpisodeArgs;
use fashion::DatasetArgs;

/// Runs env-svc and agent-svc together in one process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Join env and agent with bounded in-memory channels (no broker) and play the episodes.
    Memory {
        #[command(flatten)]
        dataset: DatasetArgs,
        #[command(flatten)]
        episodes: EpisodeArgs,
        #[command(flatten)]
        agent: AgentArgs,
        /// Capacity of each channel, in records.
        #[arg(long, env = "CHANNEL_CAPACITY", default_value_t = 1024)]
        capacity: usize,
        /// Also write the summary as JSON to this file.
        #[arg(long, env = "SUMMARY_JSON")]
        summary_json: Option<PathBuf>,
        /// No progress bars while loading the data.
        #[arg(long, env = "QUIET")]
        quiet: bool,
        #[command(flatten)]
        metrics: common::metrics::MetricsArgs,
    },
    /// Train every policy on the train users for a fixed budget, evaluate each greedily on the
    /// test users, write `report.json` and a PNG of training returns.
    Eval {
        #[command(flatten)]
        dataset: DatasetArgs,
        #[command(flatten)]
        agent: AgentArgs,
        /// Policies to train and evaluate.
        #[arg(
            long,
            env = "EVAL_POLICIES",
            value_delimiter = ',',
            default_value = "random,popularity,cooccurrence,dqn"
        )]
        policies: Vec<agent_svc::policies::PolicyKind>,
        /// Training episodes per policy (the budget).
        #[arg(long, env = "TRAIN_EPISODES", default_value_t = 3000)]
        train_episodes: usize,
        /// Episodes in flight.
        #[arg(long, env = "CONCURRENCY", default_value_t = 64)]
        concurrency: usize,
        /// Seed of the user order and the policies.
        #[arg(long, env = "SEED", default_value_t = 0)]
        seed: u64,
        #[command(flatten)]
        user: env_svc::config::UserModelArgs,
        /// Folder of report.json and training_returns.png.
        #[arg(long, env = "EVAL_OUT", default_value = "target/eval")]
        out: PathBuf,
        /// No progress bars while loading the data.
        #[arg(long, env = "QUIET")]
        quiet: bool,
    },
    /// RecoGym's A/B test through the pipeline (the paper's Table 1 and Fig 4): log users with
    /// the random policy, train each policy on the log, serve the same A/B users with each, over
    /// Kafka and/or in memory; writes ab.json, ab-memory.json, ctr.png and runs.json.
    Recogym(Box<sim::recogym::RecoArgs>),
    /// Off-policy evaluation checked against ground truth on RecoGym: log users with
    /// exploring policies through Kafka, archive them in Cassandra, estimate each target's CTR
    /// from the archive (`agent-svc ope`), then A/B-test each target on fresh users and compare
    /// (docs/OPE.md).
    OpeRecogym(Box<sim::opecheck::OpeCheckArgs>),
    /// A PNG of a run's key curves from Prometheus range queries (steps/s, round trip, reward
    /// rate, model version per replica), for people without Grafana.
    PromReport(sim::promreport::PromReportArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli: Cli = common::cli::parse_with(agent_svc::policies::dqn::preset_defaults);
    // A policy outside the environment's policy set is a command-line error, as clap reports one.
    let (env, mut asked) = match &cli.command {
        Command::Memory { agent, .. } => (EnvKind::Fashion, vec![agent.policy]),
        Command::Eval { policies, .. } => (EnvKind::Fashion, policies.clone()),
        Command::Recogym(args) => (EnvKind::Recogym, args.policies.clone()),
        Command::OpeRecogym(args) => (EnvKind::Recogym, args.reco.policies.clone()),
        Command::PromReport(_) => (EnvKind::Fashion, Vec::new()),
    };
    asked.dedup();
    if let Some(refused) = asked.iter().find_map(|p| p.check_env(env).err()) {
        Cli::command().error(clap::error::ErrorKind::ArgumentConflict, refused).exit();
    }
    common::telemetry::init(cli.log_format);
    match cli.command {
        Command::Memory { dataset, episodes, agent, capacity, summary_json, quiet, metrics } => {
            common::metrics::serve(&metrics, "streamrec-sim", false).await?;
            let ds = tokio::task::spawn_blocking(move || dataset.load(quiet)).await.context("loader panicked")??;
            let outcome =
                sim::run_memory(Arc::new(ds), &episodes, &agent, capacity, common::shutdown::on_signals()).await?;
            println!("{}", outcome.summary);
            println!(
                "  agent: policy {:?}, {} actions, {} learned",
                agent.policy, outcome.agent.actions, outcome.agent.learned
            );
            if let Some(path) = summary_json {
                env_svc::write_json(&path, &outcome.summary)?;
            }
            outcome.summary.ensure_complete()?;
        }
        Command::Eval { dataset, agent, policies, train_episodes, concurrency, seed, user, out, quiet } => {
            let ds =
                Arc::new(tokio::task::spawn_blocking(move || dataset.load(quiet)).await.context("loader panicked")??);
            let model = user.model();
            let cfg = sim::eval::EvalConfig { train_episodes, concurrency, max_steps: 50, seed, user };
            println!(
                "evaluating {} policies ({} users: {model:?}): {train_episodes} training episodes each on {} train users, \
                 then {} test users",
                policies.len(),
                model.env_name(),
                ds.users_in(fashion::Split::Train).len(),
                ds.users_in(fashion::Split::Test).len()
            );
            let mut report = sim::eval::Report::new();
            let mut curves = Vec::new();
            for kind in policies {
                let mut args = agent.clone();
                args.policy = kind;
                args.agent_seed = seed;
                let (r, returns) = sim::eval::evaluate(ds.clone(), args.try_build()?, &cfg).await?;
                let name = format!("{kind:?}").to_lowercase();
                println!(
                    "  {name:<13} reward rate {:.4} [{:.4}, {:.4}]  HR@10 {:.4}  NDCG@10 {:.4}  return {:.3} [{:.3}, {:.3}]  \
                     length {:.2} [{:.2}, {:.2}]  (train {:.1} s, test {:.1} s)",
                    r.reward_rate.mean,
                    r.reward_rate.lo,
                    r.reward_rate.hi,
                    r.hr10.mean,
                    r.ndcg10.mean,
                    r.ret.mean,
                    r.ret.lo,
                    r.ret.hi,
                    r.length.mean,
                    r.length.lo,
                    r.length.hi,
                    r.train_s,
                    r.test_s
                );
                curves.push((name.clone(), returns));
                report.insert(name, r);
            }
            print_table(&report);
            env_svc::write_json(&out.join("report.json"), &report)?;
            let png = out.join("training_returns.png");
            sim::plot::training_returns(&png, &curves, 100)?;
            println!("\nwrote {} and {}", out.join("report.json").display(), png.display());
        }
        Command::Recogym(args) => sim::recogym::run(*args).await?,
        Command::OpeRecogym(args) => {
            sim::opecheck::run(*args).await?;
        }
        Command::PromReport(args) => sim::promreport::run(&args).await?,
    }
    Ok(())
}

fn print_table(report: &sim::eval::Report) {
    println!(
        "\npolicy         reward rate [95% CI]        HR@10 [95% CI]              NDCG@10 [95% CI]            episodes"
    );
    for (name, r) in report {
        let cell = |i: &sim::eval::Interval| format!("{:.4} [{:.4}, {:.4}]", i.mean, i.lo, i.hi);
        println!(
            "{name:<14} {:<27} {:<27} {:<27} {}",
            cell(&r.reward_rate),
            cell(&r.hr10),
            cell(&r.ndcg10),
            r.episodes
        );
    }
    if let Some(r) = report.values().next() {
        println!(
            "\nrare targets: the {} test steps (in {} episodes) whose next product appears fewer than {} times in training",
            r.rare.steps, r.rare.episodes, r.rare.below
        );
        println!("policy         HR@10 [95% CI]              NDCG@10 [95% CI]");
        for (name, r) in report {
            let cell = |i: &sim::eval::Interval| format!("{:.4} [{:.4}, {:.4}]", i.mean, i.lo, i.hi);
            println!("{name:<14} {:<27} {:<27}", cell(&r.rare.hr10), cell(&r.rare.ndcg10));
        }
    }
    let beats = |a: &str, b: &str| match (report.get(a), report.get(b)) {
        (Some(x), Some(y)) => Some(x.reward_rate.beats(&y.reward_rate)),
        _ => None,
    };
    for (a, b) in [("dqn", "random"), ("dqn", "popularity"), ("dqn", "cooccurrence")] {
        if let Some(v) = beats(a, b) {
            println!("{a} beats {b} on reward rate with non-overlapping intervals: {}", if v { "yes" } else { "no" });
        }
    }
}
