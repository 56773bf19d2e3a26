//! `recogym`: A/B tests and a throughput benchmark of the Rust port of RecoGym's `reco-gym-v1`.
//! Results go to stdout; nothing else is printed there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use recogym::ab::{self, AbResult, AbSettings};
use recogym::{Agent, Config, Context, OrganicCountAgent, OrganicUserCountAgent, RandomAgent, World};
use serde_json::{json, Value};

/// Rust port of the RecoGym 0.1.3.0 simulator (reco-gym-v1).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A/B test agents with RecoGym's protocol (test_agent): train on logged users, then count
    /// clicks of new users served by the agent; CTR = Beta posterior median with 95 % interval.
    Ab(AbArgs),
    /// Throughput: N users served by the random agent on one thread, reported as JSON.
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum AgentName {
    /// Uniform random recommendations (RandomAgent).
    Random,
    /// Most co-viewed with the last viewed product, global counts (OrganicCount).
    OrganicCount,
    /// Drawn from the user's own view counts (OrganicUserEventCounterAgent).
    OrganicUserCount,
    /// Best product given the user's latent state: an upper bound, not an agent.
    Oracle,
}

impl AgentName {
    fn key(self) -> &'static str {
        match self {
            AgentName::Random => "random",
            AgentName::OrganicCount => "organic-count",
            AgentName::OrganicUserCount => "organic-user-count",
            AgentName::Oracle => "oracle",
        }
    }
}

#[derive(Debug, clap::Args)]
struct AbArgs {
    /// Agent to test; repeat for several (default: random and organic-count).
    #[arg(long = "agent", value_enum)]
    agents: Vec<AgentName>,
    /// Number of products (num_products).
    #[arg(long, env = "RECOGYM_PRODUCTS", default_value_t = 10)]
    products: u32,
    /// Evaluation users (num_online_users).
    #[arg(long, env = "RECOGYM_USERS", default_value_t = 2000)]
    users: u64,
    /// Training users logged by the random policy (num_offline_users).
    #[arg(long, env = "RECOGYM_TRAIN_USERS", default_value_t = 1000)]
    train_users: u64,
    /// Organic-only training users before them (num_organic_offline_users).
    #[arg(long, env = "RECOGYM_ORGANIC_TRAIN_USERS", default_value_t = 100)]
    organic_train_users: u64,
    /// Environment random_seed.
    #[arg(long, env = "RECOGYM_SEED", default_value_t = 42)]
    seed: u64,
    /// Other env_1_args override as KEY=VALUE (VALUE in JSON), e.g. number_of_flips=5; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Count only recommendations users saw, not the one RecoGym logs after each user left.
    #[arg(long)]
    no_final_impression: bool,
    /// Worker threads (default: all cores); results do not depend on it.
    #[arg(long, env = "RECOGYM_THREADS")]
    threads: Option<usize>,
    /// Use these product embeddings instead of drawing them from the seed: JSON {"num_products",
    /// "K", "gamma": P rows of K, "mu_organic": P values} (e.g. what Python RecoGym drew, as
    /// written by scripts/recogym_py/ab.py --dump-world). Flips and normalize_beta still apply.
    #[arg(long, value_name = "FILE")]
    world: Option<PathBuf>,
    /// Print the JSON result on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON result to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Number of products (num_products).
    #[arg(long, env = "RECOGYM_PRODUCTS", default_value_t = 10)]
    products: u32,
    /// Users to simulate.
    #[arg(long, env = "RECOGYM_USERS", default_value_t = 10_000)]
    users: u64,
    /// Environment random_seed.
    #[arg(long, env = "RECOGYM_SEED", default_value_t = 42)]
    seed: u64,
    /// Also run the same users on this many threads and report that separately.
    #[arg(long)]
    threads: Option<usize>,
    /// Product embeddings to use instead of drawing them (as `ab --world`).
    #[arg(long, value_name = "FILE")]
    world: Option<PathBuf>,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Ab(args) => run_ab(args),
        Command::Bench(args) => run_bench(args),
    }
}

/// `Config` with `--products`, `--seed` and the `--env KEY=VALUE` overrides applied.
fn build_config(products: u32, seed: u64, overrides: &[String]) -> Result<Config> {
    let mut value = serde_json::to_value(Config { num_products: products, random_seed: seed, ..Config::default() })?;
    let Value::Object(fields) = &mut value else { bail!("config does not serialise to an object") };
    for item in overrides {
        let (key, raw) = item.split_once('=').with_context(|| format!("--env {item}: expected KEY=VALUE"))?;
        if !fields.contains_key(key) {
            bail!("--env {item}: unknown parameter {key}, expected one of {:?}", fields.keys().collect::<Vec<_>>());
        }
        let parsed = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        fields.insert(key.to_owned(), parsed);
    }
    let config: Config = serde_json::from_value(value).context("failed to apply --env overrides")?;
    config.validate().context("invalid configuration")?;
    Ok(config)
}

/// Product embeddings read from a file (`--world`).
#[derive(Debug, serde::Deserialize)]
struct WorldFile {
    num_products: u32,
    #[serde(rename = "K")]
    k: usize,
    gamma: Vec<Vec<f64>>,
    mu_organic: Vec<f64>,
}

fn load_world(config: &Config, path: &std::path::Path) -> Result<World> {
    let text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    let file: WorldFile = serde_json::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))?;
    if file.num_products != config.num_products || file.k != config.k {
        bail!(
            "{}: world has num_products {} and K {}, the configuration {} and {}",
            path.display(),
            file.num_products,
            file.k,
            config.num_products,
            config.k
        );
    }
    let gamma: Vec<f64> = file.gamma.into_iter().flatten().collect();
    World::with_embeddings(config, gamma, file.mu_organic).with_context(|| format!("{}: bad world", path.display()))
}

fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(threads.unwrap_or(0)).build().context("failed to start worker threads")
}

fn run_ab(args: AbArgs) -> Result<()> {
    let config = build_config(args.products, args.seed, &args.env)?;
    let settings = AbSettings {
        num_organic_offline_users: args.organic_train_users,
        num_offline_users: args.train_users,
        num_online_users: args.users,
        count_final_impression: !args.no_final_impression,
    };
    let mut names = args.agents.clone();
    if names.is_empty() {
        names = vec![AgentName::Random, AgentName::OrganicCount];
    }
    names.dedup();
    let pool = thread_pool(args.threads)?;
    let started = Instant::now();
    let world = match &args.world {
        Some(path) => load_world(&config, path)?,
        None => World::try_new(&config).context("invalid configuration")?,
    };
    let mut results: Vec<(AgentName, AbResult)> = Vec::new();
    for &name in &names {
        let agent_started = Instant::now();
        let result = pool.install(|| match name {
            AgentName::Random => ab::run(&world, &settings, RandomAgent::from_config),
            AgentName::OrganicCount => ab::run(&world, &settings, OrganicCountAgent::from_config),
            AgentName::OrganicUserCount => ab::run(&world, &settings, OrganicUserCountAgent::from_config),
            AgentName::Oracle => ab::run_oracle(&world, &settings),
        });
        eprintln!(
            "recogym ab: {}: {} clicks of {} impressions in {:.2}s",
            name.key(),
            result.clicks,
            result.impressions,
            agent_started.elapsed().as_secs_f64()
        );
        results.push((name, result));
    }
    let seconds = started.elapsed().as_secs_f64();

    let agents: BTreeMap<&str, Value> = results
        .iter()
        .map(|(name, r)| {
            let entry = json!({"ctr": r.ctr, "lo": r.lo, "hi": r.hi, "users": r.users, "impressions": r.impressions});
            (name.key(), entry)
        })
        .collect();
    let report = json!({"settings": config, "agents": agents, "seconds": seconds});
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        std::fs::write(path, format!("{text}\n")).with_context(|| format!("failed to write {}", path.display()))?;
    }
    if args.json {
        println!("{text}");
    } else {
        println!(
            "reco-gym-v1: {} products, seed {}, {} + {} training users, {} test users",
            config.num_products,
            config.random_seed,
            settings.num_organic_offline_users,
            settings.num_offline_users,
            settings.num_online_users
        );
        println!("{:<20} {:>9} {:>9} {:>9} {:>12} {:>9}", "agent", "ctr %", "lo %", "hi %", "impressions", "clicks");
        for (name, r) in &results {
            println!(
                "{:<20} {:>9.4} {:>9.4} {:>9.4} {:>12} {:>9}",
                name.key(),
                100.0 * r.ctr,
                100.0 * r.lo,
                100.0 * r.hi,
                r.impressions,
                r.clicks
            );
        }
    }
    Ok(())
}

/// Bandit steps and organic views of users `range`, served by the random agent.
fn simulate_range(world: &World, range: std::ops::Range<u64>) -> (u64, u64) {
    let mut agent = RandomAgent::from_config(world.config());
    let (mut bandit_steps, mut organic_views) = (0u64, 0u64);
    for user_id in range {
        agent.reset_user(user_id);
        let mut sim = world.user(user_id);
        let mut step = sim.reset(world);
        let mut last_click = None;
        organic_views += step.organic.len() as u64;
        while !step.done {
            let action = agent.act(&step.organic, &Context { user_id, time: step.time, last_click });
            step = sim.step(world, action.product);
            last_click = Some(step.click);
            bandit_steps += 1;
            organic_views += step.organic.len() as u64;
        }
    }
    (bandit_steps, organic_views)
}

fn run_bench(args: BenchArgs) -> Result<()> {
    let config = Config { num_products: args.products, random_seed: args.seed, ..Config::default() };
    let world = match &args.world {
        Some(path) => load_world(&config, path)?,
        None => World::try_new(&config).context("invalid configuration")?,
    };
    let started = Instant::now();
    let (bandit_steps, organic_views) = simulate_range(&world, 0..args.users);
    let seconds = started.elapsed().as_secs_f64();
    let mut report = json!({
        "products": args.products,
        "users": args.users,
        "bandit_steps": bandit_steps,
        "organic_views": organic_views,
        "seconds": seconds,
        "bandit_steps_per_s": bandit_steps as f64 / seconds,
    });
    if let Some(threads) = args.threads {
        let pool = thread_pool(Some(threads))?;
        let started = Instant::now();
        let chunk = 256;
        let (steps, views) = pool.install(|| {
            use rayon::prelude::*;
            (0..args.users.div_ceil(chunk))
                .into_par_iter()
                .map(|c| simulate_range(&world, c * chunk..((c + 1) * chunk).min(args.users)))
                .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        });
        let parallel_seconds = started.elapsed().as_secs_f64();
        if (steps, views) != (bandit_steps, organic_views) {
            bail!(
                "parallel run differs from the sequential one: ({steps}, {views}) vs ({bandit_steps}, {organic_views})"
            );
        }
        report["threads"] = json!(pool.current_num_threads());
        report["parallel_seconds"] = json!(parallel_seconds);
        report["parallel_bandit_steps_per_s"] = json!(bandit_steps as f64 / parallel_seconds);
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
