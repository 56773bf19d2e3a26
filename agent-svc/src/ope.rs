//! `agent-svc ope`: off-policy evaluation of a target policy on an archived run.
//!
//! Reads the run's episodes back from Cassandra (`archiver::readback::for_each_episode`: each
//! step's first state and the action the env applied, with the propensity the logging policy
//! recorded), rebuilds one logged decision per answered step (context, action, propensity, and
//! the reward the next state reports), asks the target policy for its probabilities over every
//! action in that context through the same code that serves it (`Policy::act_full` with
//! `ps_all` for RecoGym; `top_k` and the serving epsilon for fashion), fits a reward model with
//! two-fold cross-fitting by episode (each decision's prediction comes from the model fitted on
//! the other fold), and hands everything to the `ope` crate's estimators.
//!
//! It is a subcommand of agent-svc, not of the archiver, because its target is an agent: the
//! policies, their training from logs and the DQN (libtorch) live here, and the archiver stays
//! free of them.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::{Instant, SystemTime},
};

use anyhow::Context as _;
use archiver::readback::{ArchivedEpisode, EpisodeFilter};
use common::kafka::EnvKind;
use ope::{Dist, Row};
use protocol::{ActionMsg, RecoStateMsg, StateMsg};
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use serde::Serialize;

use crate::policies::{
    self,
    recogym::{likelihood, logs, UserCounts},
    Feedback, Policy, PolicyKind,
};
use crate::AgentArgs;

/// `agent-svc ope`: the archived run, the target policy and the estimators' settings.
#[derive(Debug, Clone, clap::Args)]
pub struct OpeArgs {
    /// Environment of the archived run: `fashion` or `recogym`.
    #[arg(long = "env", env = "ENV_KIND", value_enum, default_value_t = EnvKind::Fashion)]
    pub env: EnvKind,
    /// The archived run (its env id, e.g. `reco-gym-v1/logging-1a2b3c4d`).
    #[arg(long, env = "OPE_ENV_ID")]
    pub env_id: String,
    /// Only episodes that started at or after this time (RFC 3339, e.g. `2026-12-01T00:00:00Z`).
    #[arg(long, env = "OPE_SINCE")]
    pub since: Option<humantime::Timestamp>,
    /// Only episodes that started before this time.
    #[arg(long, env = "OPE_UNTIL")]
    pub until: Option<humantime::Timestamp>,
    /// RecoGym: the archived run the target is trained on (RecoGym's protocol: train on a
    /// logging run's logs); default: the evaluated run itself, which makes the estimates of a
    /// target that learns optimistic (warned).
    #[arg(long, env = "OPE_TRAIN_ENV_ID")]
    pub train_env_id: Option<String>,
    /// Bootstrap replicates (episodes drawn with replacement).
    #[arg(long, env = "OPE_BOOTSTRAP", default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, env = "OPE_SEED", default_value_t = 1)]
    pub ope_seed: u64,
    /// Coverage of the intervals.
    #[arg(long, env = "OPE_CONFIDENCE", default_value_t = 0.95)]
    pub confidence: f64,
    /// An importance weight above this (the logging policy gave the action less than 1/this of
    /// the target's probability) is warned about, with the share of the weight such rows carry.
    #[arg(long, env = "OPE_MAX_WEIGHT", default_value_t = 100.0)]
    pub max_weight: f64,
    /// Fashion (replay user model only): also compute the target's true value on the same
    /// states from the dataset (`--dataset` and its flags: the data the run replayed), exactly:
    /// a recommendation pays 1 when the user reviews the product later.
    #[arg(long, env = "OPE_TRUTH")]
    pub truth: bool,
    /// Write the report as JSON here.
    #[arg(long, env = "OPE_JSON")]
    pub json: Option<PathBuf>,
    /// Draw the estimates with their intervals next to the logged value here (PNG).
    #[arg(long, env = "OPE_PNG")]
    pub png: Option<PathBuf>,
    /// Write the logged actions, rewards, propensities, the target's probabilities and the
    /// reward model's predictions for every action here (JSON), for the cross-check against the
    /// Open Bandit Pipeline (`scripts/ope_obp.sh`). Dense: refused above 20 million cells.
    #[arg(long, env = "OPE_EXPORT")]
    pub export: Option<PathBuf>,
    /// The target policy (`--policy`) and its settings, as `agent-svc run` takes them.
    #[command(flatten)]
    pub agent: AgentArgs,
    #[command(flatten)]
    pub cassandra: archiver::CassandraArgs,
    /// The dataset of `--truth`.
    #[command(flatten)]
    pub dataset: fashion::DatasetArgs,
}

/// What the reward model is and how well it predicts held-out decisions.
#[derive(Debug, Clone, Serialize)]
pub struct RewardModel {
    /// What it is, in words.
    pub kind: String,
    /// Mean log loss of its cross-fitted predictions of the logged rewards.
    pub heldout_log_loss: f64,
    /// The same for a constant at the training fold's mean reward: the model must beat it to
    /// be worth anything.
    pub baseline_log_loss: f64,
}

/// How the archived steps became logged decisions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tuples {
    /// Episodes read.
    pub episodes: u64,
    /// Logged decisions built (one per answered step).
    pub decisions: u64,
    /// Decisions evaluated (the test fold for targets trained on the archive).
    pub evaluated: u64,
    /// Steps whose next state is missing (an unfinished episode): no reward, not used.
    pub no_next_state: u64,
    /// Steps without an action row, or whose first action is not the one the next state says
    /// the env applied: not used.
    pub action_mismatch: u64,
}

/// The report of one evaluation (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct OpeReport {
    /// Environment.
    pub env: String,
    /// The evaluated run.
    pub env_id: String,
    /// The target policy, with how it explores.
    pub target: String,
    /// The logging policies found in the run's actions, with their decision counts.
    pub logging: HashMap<String, u64>,
    /// How the tuples were built.
    pub tuples: Tuples,
    /// The reward model.
    pub reward_model: RewardModel,
    /// The estimates.
    pub evaluation: ope::Evaluation,
    /// The target's true value on the same states, when known (`--truth`).
    pub truth: Option<f64>,
    /// Seconds: reading the archive, training the target, the whole evaluation.
    pub read_s: f64,
    /// Seconds training the target.
    pub train_s: f64,
    /// Seconds in all.
    pub total_s: f64,
}

/// One decision before the target and the reward model are applied.
struct Decision {
    episode: usize,
    fold: usize,
    action: u32,
    pscore: f64,
    reward: f64,
    target: Dist,
    /// RecoGym: the user's view counts; fashion: empty.
    counts: Vec<f64>,
    /// Fashion: the current product; RecoGym: 0.
    product: u32,
    /// Fashion: user and step, for the truth.
    user: String,
    step: u32,
}

/// The L2 penalties the RecoGym reward model chooses from.
const REWARD_L2_GRID: [f64; 5] = [1.0, 10.0, 100.0, 1000.0, 10000.0];

fn fold_of(episode_id: &str) -> usize {
    (xxhash_rust::xxh3::xxh3_64(episode_id.as_bytes()) & 1) as usize
}

fn ms(t: &humantime::Timestamp) -> i64 {
    let t: SystemTime = (*t).into();
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

async fn read(
    session: &scylla::client::session::Session,
    args: &OpeArgs,
    env_id: &str,
) -> anyhow::Result<Vec<ArchivedEpisode>> {
    let filter = EpisodeFilter {
        env_id: env_id.to_string(),
        since_ms: args.since.as_ref().map(ms),
        until_ms: args.until.as_ref().map(ms),
    };
    let mut episodes = Vec::new();
    let counts = archiver::readback::for_each_episode(session, &args.cassandra.keyspace, &filter, |e| {
        episodes.push(e);
        Ok(())
    })
    .await
    .with_context(|| format!("cannot read run {env_id} from {}.steps", args.cassandra.keyspace))?;
    tracing::info!(env_id, ?counts, "archived run read back");
    anyhow::ensure!(!episodes.is_empty(), "the archive holds no episode of run {env_id} in the time range asked");
    Ok(episodes)
}

/// The logged decisions of one episode: `(step index, action, pscore, reward)` per answered
/// step whose action the next state confirms; counts what it leaves out.
fn logged<S>(
    steps: &[(S, Option<ActionMsg>)],
    last_action: impl Fn(&S) -> Option<u32>,
    reward: impl Fn(&S) -> f64,
    tuples: &mut Tuples,
    logging: &mut HashMap<String, u64>,
) -> Vec<(usize, u32, f64, f64)> {
    let mut out = Vec::new();
    for t in 0..steps.len() {
        let (_, action) = &steps[t];
        let Some(next) = steps.get(t + 1).map(|s| &s.0) else {
            if action.is_some() {
                tuples.no_next_state += 1;
            }
            continue;
        };
        match (action, last_action(next)) {
            (Some(a), Some(applied)) if a.action == applied => {
                *logging.entry(a.policy.clone()).or_default() += 1;
                out.push((t, a.action, a.ps, reward(next)));
            }
            _ => tuples.action_mismatch += 1,
        }
    }
    tuples.decisions += out.len() as u64;
    out
}

/// Runs the evaluation, prints the table, writes the files asked for.
pub async fn run(args: OpeArgs) -> anyhow::Result<OpeReport> {
    let started = Instant::now();
    let session = archiver::connect(&args.cassandra).await?;
    let episodes = read(&session, &args, &args.env_id).await?;
    let read_s = started.elapsed().as_secs_f64();
    let mut report = match args.env {
        EnvKind::Recogym => recogym(&session, &args, episodes).await?,
        EnvKind::Fashion => fashion(&args, episodes)?,
    };
    report.read_s = read_s;
    report.total_s = started.elapsed().as_secs_f64();
    print(&report);
    if let Some(path) = &args.json {
        archiver::write_json_atomically(path, &report)?;
    }
    if let Some(path) = &args.png {
        let title = format!("{} on {} ({} decisions)", report.target, report.env_id, report.evaluation.rows);
        ope::plot::estimates_png(path, &title, &report.evaluation, report.truth)?;
    }
    Ok(report)
}

fn print(r: &OpeReport) {
    println!("off-policy evaluation of {} on {} ({})", r.target, r.env_id, r.env);
    let mut logging: Vec<_> = r.logging.iter().collect();
    logging.sort();
    println!(
        "logging policy: {}; {} episodes, {} decisions, {} evaluated ({} steps without a next state, {} without a matching action)",
        logging.iter().map(|(p, n)| format!("{p} ({n})")).collect::<Vec<_>>().join(", "),
        r.tuples.episodes,
        r.tuples.decisions,
        r.tuples.evaluated,
        r.tuples.no_next_state,
        r.tuples.action_mismatch
    );
    println!(
        "reward model: {}; held-out log loss {:.5} (constant: {:.5})",
        r.reward_model.kind, r.reward_model.heldout_log_loss, r.reward_model.baseline_log_loss
    );
    print!("{}", ope::table(&r.evaluation, r.truth));
    println!("read {:.1} s, train {:.1} s, total {:.1} s", r.read_s, r.train_s, r.total_s);
}

fn config(args: &OpeArgs) -> ope::Config {
    ope::Config {
        bootstrap: args.bootstrap,
        seed: args.ope_seed,
        confidence: args.confidence,
        max_weight: args.max_weight,
    }
}

async fn recogym(
    session: &scylla::client::session::Session,
    args: &OpeArgs,
    episodes: Vec<ArchivedEpisode>,
) -> anyhow::Result<OpeReport> {
    let episodes: Vec<Vec<(RecoStateMsg, Option<ActionMsg>)>> =
        episodes.into_iter().map(ArchivedEpisode::into_steps::<RecoStateMsg>).collect::<anyhow::Result<_>>()?;
    let products = episodes.iter().flatten().map(|(s, _)| s.n_actions).max().unwrap_or(0);
    anyhow::ensure!(products > 0, "run {} has no state", args.env_id);
    // The target, trained as `agent-svc run --train-env-id` trains it, on the archived log.
    let train_started = Instant::now();
    let train_log = match &args.train_env_id {
        Some(id) if id != &args.env_id => {
            let other: Vec<Vec<(RecoStateMsg, Option<ActionMsg>)>> = read(session, args, id)
                .await?
                .into_iter()
                .map(ArchivedEpisode::into_steps::<RecoStateMsg>)
                .collect::<anyhow::Result<_>>()?;
            log_of(&other)
        }
        _ => log_of(&episodes),
    };
    let agent = &args.agent;
    let kind = agent.policy;
    kind.check_env(EnvKind::Recogym).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(kind != PolicyKind::Dqn, "ope on recogym evaluates the recogym agents, not dqn");
    let log = policies::recogym::needs_logs(kind).then_some(&train_log);
    let mut target = policies::recogym::build(kind, products, log, &agent.recogym, &agent.dqn, agent.agent_seed)?;
    let train_s = train_started.elapsed().as_secs_f64();
    let target_name = format!("{} ({})", kind.name(), agent.recogym.recogym_exploration);

    let mut tuples = Tuples { episodes: episodes.len() as u64, ..Tuples::default() };
    let mut logging = HashMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(agent.agent_seed);
    let mut decisions = Vec::new();
    for (e, steps) in episodes.iter().enumerate() {
        let fold = fold_of(&steps[0].0.episode_id);
        let kept = logged(&steps[..], |s| s.last_action, |s| s.reward, &mut tuples, &mut logging);
        let mut kept = kept.into_iter().peekable();
        let mut counts = UserCounts::new(products);
        // Every state through the target in order, as serving does; a decision at each kept step.
        for (t, (state, _)) in steps.iter().enumerate() {
            counts.add(&policies::recogym::views_of(state));
            target.observe(state)?;
            if state.terminated || state.truncated {
                continue;
            }
            let mut asked = state.clone();
            asked.ps_all = true;
            let choice = target.act_full(&[&asked], &mut rng)?.remove(0);
            let all = choice.ps_all.ok_or_else(|| anyhow::anyhow!("policy {} gave no probabilities", kind.name()))?;
            if let Some(&(_, action, pscore, reward)) = kept.peek().filter(|k| k.0 == t) {
                kept.next();
                decisions.push(Decision {
                    episode: e,
                    fold,
                    action,
                    pscore,
                    reward,
                    target: Dist::dense(&all),
                    counts: counts.counts().to_vec(),
                    product: 0,
                    user: String::new(),
                    step: state.step,
                });
            }
        }
    }
    tuples.evaluated = decisions.len() as u64;
    // Reward model: the likelihood agent's logistic regression (view counts x action), fitted
    // per fold; its L2 penalty is the one of a small grid whose cross-fitted predictions have
    // the lowest log loss (the agent's own penalty overfits a few thousand clicks).
    let fit_fold = |f: usize, l2: f64| -> anyhow::Result<likelihood::Logistic> {
        let mut rows = logs::TrainRows { products: products as usize, ..Default::default() };
        for d in decisions.iter().filter(|d| d.fold == f) {
            rows.counts.extend_from_slice(&d.counts);
            rows.actions.push(d.action);
            rows.clicks.push(d.reward > 0.5);
        }
        likelihood::fit(&rows, l2)
            .ok_or_else(|| anyhow::anyhow!("the reward model could not be fitted on fold {f} ({} rows)", rows.len()))
    };
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    let y: Vec<f64> = decisions.iter().map(|d| d.reward).collect();
    let mut best: Option<(f64, f64, [likelihood::Logistic; 2])> = None;
    for l2 in REWARD_L2_GRID {
        let models = [fit_fold(0, l2)?, fit_fold(1, l2)?];
        let p: Vec<f64> =
            decisions.iter().map(|d| sigmoid(models[1 - d.fold].logit(&d.counts, d.action as usize))).collect();
        let loss = ope::log_loss(&p, &y);
        tracing::debug!(l2, loss, "reward model penalty tried");
        if best.as_ref().is_none_or(|b| loss < b.1) {
            best = Some((l2, loss, models));
        }
    }
    let (l2, _, models) = best.ok_or_else(|| anyhow::anyhow!("no reward model penalty tried"))?;
    let q_all: Vec<Vec<f64>> = decisions
        .iter()
        .map(|d| (0..products as usize).map(|a| sigmoid(models[1 - d.fold].logit(&d.counts, a))).collect())
        .collect();
    let rows: Vec<Row> = decisions
        .iter()
        .zip(&q_all)
        .map(|(d, q)| {
            let q_mean = q.iter().sum::<f64>() / q.len() as f64;
            Row {
                episode: d.episode,
                action: d.action,
                pscore: d.pscore,
                reward: d.reward,
                q_logged: q[d.action as usize],
                q_target: d.target.expect(|a| q[a as usize], q_mean),
                target: d.target.clone(),
            }
        })
        .collect();
    let reward_model = model_quality(
        &format!("logistic regression of the click on view counts x action (the likelihood agent's), L2 {l2} (of {REWARD_L2_GRID:?}), 2-fold cross-fitted by episode"),
        &decisions.iter().map(|d| d.fold).collect::<Vec<_>>(),
        &rows,
        &decisions,
    );
    let mut evaluation = ope::evaluate(&rows, &config(args))?;
    if log.is_some() && args.train_env_id.as_ref().is_none_or(|id| id == &args.env_id) {
        evaluation.warnings.push(format!(
            "{} learnt from the evaluated run itself, so it is judged on the clicks it was fitted to: the estimates are optimistic (+4% to +16% on RecoGym, docs/OPE.md); train it on another run with --train-env-id",
            kind.name()
        ));
    }
    if let Some(path) = &args.export {
        export(path, args, &target_name, &rows, &q_all, &evaluation)?;
    }
    Ok(OpeReport {
        env: EnvKind::Recogym.name().into(),
        env_id: args.env_id.clone(),
        target: target_name,
        logging,
        tuples,
        reward_model,
        evaluation,
        truth: None,
        read_s: 0.0,
        train_s,
        total_s: 0.0,
    })
}

/// The RecoGym log of an archived run (`env_id`), as a target trains on it.
pub async fn archived_recogym_log(
    session: &scylla::client::session::Session,
    keyspace: &str,
    env_id: &str,
) -> anyhow::Result<recogym::Log> {
    let filter = EpisodeFilter { env_id: env_id.to_string(), since_ms: None, until_ms: None };
    let mut episodes = Vec::new();
    archiver::readback::for_each_episode(session, keyspace, &filter, |e| {
        episodes.push(e.into_steps::<RecoStateMsg>()?);
        Ok(())
    })
    .await?;
    anyhow::ensure!(!episodes.is_empty(), "the archive holds no episode of run {env_id}");
    Ok(log_of(&episodes))
}

/// The RecoGym log of archived episodes, built by the function that builds it from the topics.
fn log_of(episodes: &[Vec<(RecoStateMsg, Option<ActionMsg>)>]) -> recogym::Log {
    let states = episodes.iter().flatten().map(|(s, _)| s);
    let actions = episodes.iter().flatten().filter_map(|(_, a)| a.as_ref());
    logs::log_from_messages(states, actions)
}

/// Held-out log loss of the cross-fitted predictions against a constant at the other fold's
/// mean reward; `folds[i]` is the fold of `rows[i]`.
fn model_quality(kind: &str, folds: &[usize], rows: &[Row], decisions: &[Decision]) -> RewardModel {
    // Each fold's mean reward over all its decisions (evaluated or not: a fashion baseline is
    // evaluated on fold 1 only, and its constant comes from fold 0).
    let mut fold_mean = [0.0; 2];
    for (f, mean) in fold_mean.iter_mut().enumerate() {
        let r: Vec<f64> = decisions.iter().filter(|d| d.fold == f).map(|d| d.reward).collect();
        *mean = r.iter().sum::<f64>() / r.len().max(1) as f64;
    }
    let y: Vec<f64> = rows.iter().map(|r| r.reward).collect();
    let p: Vec<f64> = rows.iter().map(|r| r.q_logged).collect();
    let c: Vec<f64> = folds.iter().map(|&f| fold_mean[1 - f]).collect();
    RewardModel { kind: kind.into(), heldout_log_loss: ope::log_loss(&p, &y), baseline_log_loss: ope::log_loss(&c, &y) }
}

/// The dense export the OBP cross-check reads.
fn export(
    path: &std::path::Path,
    args: &OpeArgs,
    target: &str,
    rows: &[Row],
    q_all: &[Vec<f64>],
    ev: &ope::Evaluation,
) -> anyhow::Result<()> {
    let k = rows.first().map_or(0, |r| r.target.k as usize);
    anyhow::ensure!(
        rows.len().saturating_mul(k) <= 20_000_000,
        "--export: {} decisions x {k} actions is too large to write densely",
        rows.len()
    );
    anyhow::ensure!(
        ev.refused_rows == 0,
        "--export: {} rows were refused; the export would not match",
        ev.refused_rows
    );
    let estimates: HashMap<&str, f64> =
        ev.estimates.iter().map(|e| (e.estimator.obp_name(), e.interval.value)).collect();
    let doc = serde_json::json!({
        "env_id": args.env_id,
        "target": target,
        "n": rows.len(),
        "k": k,
        "action": rows.iter().map(|r| r.action).collect::<Vec<_>>(),
        "reward": rows.iter().map(|r| r.reward).collect::<Vec<_>>(),
        "pscore": rows.iter().map(|r| r.pscore).collect::<Vec<_>>(),
        "action_dist": rows.iter().map(|r| r.target.to_dense()).collect::<Vec<_>>(),
        "q_hat": q_all,
        "estimates": estimates,
    });
    archiver::write_json_atomically(path, &doc)
}

/// Per-(product, action) reward rates shrunk towards per-action rates, shrunk towards the mean:
/// the fashion reward model.
#[derive(Debug, Default)]
struct PairModel {
    mean: f64,
    action: HashMap<u32, (f64, f64)>,
    pair: HashMap<(u32, u32), (f64, f64)>,
    /// Mean over all actions of the per-action estimate.
    action_mean: f64,
    /// Per product: the pairs seen with it.
    by_product: HashMap<u32, Vec<u32>>,
}

/// Prior strength of the shrinkage, in decisions.
const SHRINK: f64 = 5.0;

impl PairModel {
    fn fit<'a>(rows: impl Iterator<Item = &'a Decision>, k: u32) -> Self {
        let mut m = PairModel::default();
        let (mut n, mut sum) = (0.0, 0.0);
        for d in rows {
            n += 1.0;
            sum += d.reward;
            let a = m.action.entry(d.action).or_default();
            (a.0, a.1) = (a.0 + d.reward, a.1 + 1.0);
            let p = m.pair.entry((d.product, d.action)).or_default();
            (p.0, p.1) = (p.0 + d.reward, p.1 + 1.0);
        }
        m.mean = if n > 0.0 { sum / n } else { 0.0 };
        for &(c, a) in m.pair.keys() {
            m.by_product.entry(c).or_default().push(a);
        }
        let seen: f64 = m.action.keys().map(|&a| m.of_action(a) - m.mean).sum();
        m.action_mean = m.mean + seen / f64::from(k.max(1));
        m
    }

    fn of_action(&self, a: u32) -> f64 {
        self.action.get(&a).map_or(self.mean, |&(r, n)| (r + SHRINK * self.mean) / (n + SHRINK))
    }

    fn predict(&self, c: u32, a: u32) -> f64 {
        let prior = self.of_action(a);
        self.pair.get(&(c, a)).map_or(prior, |&(r, n)| (r + SHRINK * prior) / (n + SHRINK))
    }

    /// Mean prediction over all `k` actions in context `c`.
    fn mean_over_actions(&self, c: u32, k: u32) -> f64 {
        let extra: f64 = self
            .by_product
            .get(&c)
            .map_or(0.0, |acts| acts.iter().map(|&a| self.predict(c, a) - self.of_action(a)).sum());
        self.action_mean + extra / f64::from(k.max(1))
    }
}

fn fashion(args: &OpeArgs, episodes: Vec<ArchivedEpisode>) -> anyhow::Result<OpeReport> {
    let episodes: Vec<Vec<(StateMsg, Option<ActionMsg>)>> =
        episodes.into_iter().map(ArchivedEpisode::into_steps::<StateMsg>).collect::<anyhow::Result<_>>()?;
    let k = episodes.iter().flatten().map(|(s, _)| s.n_actions).max().unwrap_or(0);
    let agent = &args.agent;
    let kind = agent.policy;
    kind.check_env(EnvKind::Fashion).map_err(anyhow::Error::msg)?;
    let mut tuples = Tuples { episodes: episodes.len() as u64, ..Tuples::default() };
    let mut logging = HashMap::new();
    let mut decisions = Vec::new();
    for (e, steps) in episodes.iter().enumerate() {
        let fold = fold_of(&steps[0].0.episode_id);
        for (t, action, pscore, reward) in
            logged(&steps[..], |s| s.last_action, |s| s.reward, &mut tuples, &mut logging)
        {
            let s = &steps[t].0;
            decisions.push(Decision {
                episode: e,
                fold,
                action,
                pscore,
                reward,
                target: Dist::point(1, 0),
                counts: Vec::new(),
                product: s.observation.index,
                user: s.user_id.clone(),
                step: s.step,
            });
        }
    }
    // The target. Baselines learn from the archive's fold 0 and are evaluated on fold 1; a DQN
    // is a checkpoint (`--checkpoint-dir`), evaluated on every decision.
    let train_started = Instant::now();
    let (mut policy, eps, evaluate_fold): (Option<Box<dyn Policy>>, f64, Option<usize>) = match kind {
        PolicyKind::Random => (None, 1.0, None),
        PolicyKind::Popularity | PolicyKind::Cooccurrence => {
            let mut p = policies::build(kind, agent.epsilon, &agent.dqn, agent.agent_seed)?;
            for steps in episodes.iter().filter(|s| fold_of(&s[0].0.episode_id) == 0) {
                for w in steps.windows(2) {
                    let (prev, next) = (&w[0].0, &w[1].0);
                    p.observe(prev)?;
                    if let Some(action) = next.last_action {
                        let feedback =
                            Feedback { prev, prev_index: prev.observation.index, action, reward: next.reward, next };
                        p.learn(&feedback)?;
                    }
                }
            }
            p.set_eval(true)?;
            (Some(p), agent.epsilon, Some(1))
        }
        PolicyKind::Dqn => {
            let mut dqn = policies::Dqn::<StateMsg>::new(&agent.dqn, agent.agent_seed)?;
            anyhow::ensure!(
                dqn.resumed(),
                "ope --policy dqn evaluates a checkpoint and found none in --checkpoint-dir {}",
                agent.dqn.checkpoint_dir.as_deref().map_or("(none given)".into(), |d| d.display().to_string())
            );
            dqn.freeze(0.0)?;
            (Some(Box::new(dqn)), 0.0, None)
        }
        _ => anyhow::bail!("policy {} does not serve fashion", kind.name()),
    };
    let train_s = train_started.elapsed().as_secs_f64();
    let target_name = match kind {
        PolicyKind::Random => "random (uniform)".to_string(),
        PolicyKind::Dqn => "dqn (checkpoint, greedy)".to_string(),
        _ => format!("{} (epsilon {eps}, trained on the archive's fold 0)", kind.name()),
    };
    let state_of: HashMap<(usize, u32), &StateMsg> =
        episodes.iter().enumerate().flat_map(|(e, steps)| steps.iter().map(move |(s, _)| ((e, s.step), s))).collect();
    let eval: Vec<usize> =
        (0..decisions.len()).filter(|&i| evaluate_fold.is_none_or(|f| decisions[i].fold == f)).collect();
    for batch in eval.chunks(256) {
        let states: Vec<&StateMsg> =
            batch.iter().map(|&i| state_of[&(decisions[i].episode, decisions[i].step)]).collect();
        let greedy: Vec<Option<u32>> = match policy.as_mut() {
            None => vec![None; states.len()],
            Some(p) => p.top_k(&states, 1)?.into_iter().map(|top| top.first().copied()).collect(),
        };
        for (&i, g) in batch.iter().zip(greedy) {
            let n = states[0].n_actions;
            decisions[i].target = match g {
                Some(g) => Dist::epsilon_greedy(n, g, eps),
                None if kind == PolicyKind::Random => Dist { k: n, uniform: 1.0, points: Vec::new() },
                None => anyhow::bail!("policy {} ranked no product for a state", kind.name()),
            };
        }
    }
    // Reward model, cross-fitted by episode.
    let models = [
        PairModel::fit(decisions.iter().filter(|d| d.fold == 0), k),
        PairModel::fit(decisions.iter().filter(|d| d.fold == 1), k),
    ];
    let evaluated: Vec<&Decision> = eval.iter().map(|&i| &decisions[i]).collect();
    let rows: Vec<Row> = evaluated
        .iter()
        .map(|d| {
            let m = &models[1 - d.fold];
            Row {
                episode: d.episode,
                action: d.action,
                pscore: d.pscore,
                reward: d.reward,
                q_logged: m.predict(d.product, d.action),
                q_target: d.target.expect(|a| m.predict(d.product, a), m.mean_over_actions(d.product, d.target.k)),
                target: d.target.clone(),
            }
        })
        .collect();
    tuples.evaluated = rows.len() as u64;
    let reward_model = model_quality(
        "reward rate per (current product, action), shrunk to the action's rate and the mean, 2-fold cross-fitted by episode",
        &evaluated.iter().map(|d| d.fold).collect::<Vec<_>>(),
        &rows,
        &decisions,
    );
    let truth = if args.truth { Some(fashion_truth(args, &episodes, &evaluated)?) } else { None };
    let evaluation = ope::evaluate(&rows, &config(args))?;
    anyhow::ensure!(args.export.is_none(), "--export is for recogym runs (dense over every action)");
    Ok(OpeReport {
        env: EnvKind::Fashion.name().into(),
        env_id: args.env_id.clone(),
        target: target_name,
        logging,
        tuples,
        reward_model,
        evaluation,
        truth,
        read_s: 0.0,
        train_s,
        total_s: 0.0,
    })
}

/// The target's exact value on the evaluated states under the replay user model: a product
/// pays 1 when the user reviews it later. Fails when the dataset is not the one the run
/// replayed (a user unknown, or a logged reward the dataset does not give).
fn fashion_truth(
    args: &OpeArgs,
    episodes: &[Vec<(StateMsg, Option<ActionMsg>)>],
    evaluated: &[&Decision],
) -> anyhow::Result<f64> {
    if let Some((s, _)) = episodes.first().and_then(|e| e.first()) {
        anyhow::ensure!(!s.steered(), "--truth needs the replay user model; run {} is {}", s.env_id, s.env_name());
    }
    let dataset = args.dataset.load(true).context("--truth: cannot load the dataset")?;
    let users: HashMap<&str, &[u32]> = dataset.users.iter().map(|u| (u.user_id.as_str(), u.items.as_slice())).collect();
    let mut total = 0.0;
    let mut wrong = 0u64;
    for d in evaluated {
        let items = users.get(d.user.as_str()).ok_or_else(|| {
            anyhow::anyhow!("--truth: user {} is not in the dataset {}", d.user, args.dataset.dataset.display())
        })?;
        let later: HashSet<u32> = items.get(d.step as usize + 1..).unwrap_or(&[]).iter().copied().collect();
        if (d.reward > 0.5) != later.contains(&d.action) {
            wrong += 1;
        }
        let k = d.target.k;
        let reachable = later.iter().filter(|&&a| a < k).count() as f64;
        total += d.target.uniform * reachable / f64::from(k.max(1))
            + d.target.points.iter().filter(|(a, _)| later.contains(a)).map(|(_, p)| p).sum::<f64>();
    }
    anyhow::ensure!(
        wrong == 0,
        "--truth: {wrong} of {} logged rewards disagree with the dataset: it is not the data the run replayed",
        evaluated.len()
    );
    Ok(total / evaluated.len().max(1) as f64)
}
