//! Offline evaluation on held-out users, through the same pipeline as training (in-memory
//! transport): every policy trains on the train split for a fixed budget and seed, then plays
//! every test user once, greedily and frozen. Reported per policy, each with a 95% interval
//! over episodes: reward rate (the paper's reward), next-item HR@10 and NDCG@10 over the full
//! catalogue.
//!
//! Invariant: evaluation never learns: the policy is frozen (`set_eval(true)`) and the wrapper
//! drops every feedback after recording it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use agent_svc::{
    core::AgentCore,
    policies::{Feedback, Policy},
};
use env_svc::config::{EpisodeArgs, LoopArgs, UserModelArgs};
use fashion::{Dataset, Split};
use protocol::StateMsg;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Ranking cut-off of HR and NDCG.
pub const K: usize = 10;

/// A mean with its 95% confidence interval (normal approximation over episodes).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Interval {
    /// Mean over episodes.
    pub mean: f64,
    /// Lower bound of the 95% interval.
    pub lo: f64,
    /// Upper bound of the 95% interval.
    pub hi: f64,
}

impl Interval {
    /// Mean and 95% interval of per-episode values (`mean ± 1.96 · s / √n`).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len() as f64;
        if values.is_empty() {
            return Self { mean: 0.0, lo: 0.0, hi: 0.0 };
        }
        let mean = values.iter().sum::<f64>() / n;
        let var =
            if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        let half = 1.96 * (var / n).sqrt();
        Self { mean, lo: mean - half, hi: mean + half }
    }

    /// True when the two intervals do not overlap and `self` is above.
    pub fn beats(&self, other: &Interval) -> bool {
        self.lo > other.hi
    }
}

/// The evaluation of one policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// Rewards per step, per test episode.
    pub reward_rate: Interval,
    /// Share of steps whose next product is in the top 10, per test episode.
    pub hr10: Interval,
    /// NDCG@10 of the next product (one relevant item), per test episode.
    pub ndcg10: Interval,
    /// Return (the sum of rewards) per test episode: what the interactive user model's
    /// multi-step effects show in.
    #[serde(rename = "return")]
    pub ret: Interval,
    /// Steps per test episode.
    pub length: Interval,
    /// Test episodes played.
    pub episodes: usize,
    /// Wall time of the training episodes, the learner's catching up included, seconds.
    pub train_s: f64,
    /// Wall time of the test episodes, seconds.
    pub test_s: f64,
    /// The same metrics on the test steps whose next product is rare in training.
    pub rare: RareSlice,
}

/// A product is rare when the train users' sequences hold it fewer than this many times.
pub const RARE_BELOW: u32 = 5;

/// HR@10 and NDCG@10 restricted to the test steps whose next product appears fewer than
/// [`RARE_BELOW`] times in the train users' sequences: where item-to-item counts know little and
/// what a product's words say should matter. Intervals over the test episodes that have such
/// steps, each episode's rate over its own rare steps.
#[derive(Debug, Clone, Serialize)]
pub struct RareSlice {
    /// The threshold ([`RARE_BELOW`]).
    pub below: u32,
    /// Test steps in the slice.
    pub steps: u64,
    /// Test episodes with at least one.
    pub episodes: usize,
    /// Share of the slice's steps whose next product is in the top 10.
    pub hr10: Interval,
    /// NDCG@10 on the slice's steps.
    pub ndcg10: Interval,
}

#[derive(Debug, Default)]
struct EpisodeScore {
    steps: u32,
    reward: f64,
    hits: f64,
    ndcg: f64,
    rare_steps: u32,
    rare_hits: f64,
    rare_ndcg: f64,
}

#[derive(Debug, Default)]
struct Scores {
    /// Top-10 lists by (episode, step), waiting for the next state to reveal the next product.
    pending: HashMap<(String, u32), Vec<u32>>,
    episodes: HashMap<String, EpisodeScore>,
    /// Per product index: whether it is rare in training (see [`RareSlice`]).
    rare: Vec<bool>,
}

/// Wraps a frozen policy: plays it greedily, and scores its top-10 against the product the next
/// state reveals.
struct Evaluator {
    inner: Box<dyn Policy>,
    scores: Arc<Mutex<Scores>>,
}

impl Policy for Evaluator {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn act(&mut self, states: &[&StateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
        let tops = self.inner.top_k(states, K)?;
        let mut scores = self.scores.lock().map_err(|_| anyhow::anyhow!("evaluation scores poisoned"))?;
        for (s, top) in states.iter().zip(tops) {
            scores.pending.insert((s.episode_id.clone(), s.step), top);
        }
        drop(scores);
        self.inner.act(states, rng)
    }

    fn observe(&mut self, state: &StateMsg) -> anyhow::Result<()> {
        let mut scores = self.scores.lock().map_err(|_| anyhow::anyhow!("evaluation scores poisoned"))?;
        let Some(prev) = state.step.checked_sub(1) else { return Ok(()) };
        if let Some(top) = scores.pending.remove(&(state.episode_id.clone(), prev)) {
            let rank = top.iter().position(|&p| p == state.observation.index);
            let rare = scores.rare.get(state.observation.index as usize).copied().ok_or_else(|| {
                anyhow::anyhow!("product {} is outside the evaluated catalogue", state.observation.index)
            })?;
            let e = scores.episodes.entry(state.episode_id.clone()).or_default();
            e.steps += 1;
            e.reward += state.reward;
            let gain = rank.map_or(0.0, |r| 1.0 / ((r as f64) + 2.0).log2());
            let hit = if rank.is_some() { 1.0 } else { 0.0 };
            e.hits += hit;
            e.ndcg += gain;
            if rare {
                e.rare_steps += 1;
                e.rare_hits += hit;
                e.rare_ndcg += gain;
            }
        }
        Ok(())
    }

    fn learn(&mut self, _feedback: &Feedback<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    fn top_k(&mut self, states: &[&StateMsg], k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
        self.inner.top_k(states, k)
    }
}

/// What an evaluation needs besides the dataset.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Training episodes per policy (the budget), on train users.
    pub train_episodes: usize,
    /// Episodes in flight during training and evaluation.
    pub concurrency: usize,
    /// Step limit of an episode.
    pub max_steps: u32,
    /// Seed of user order and policies.
    pub seed: u64,
    /// The user model of training and test episodes.
    pub user: UserModelArgs,
}

fn episodes(split: Split, episodes: usize, cfg: &EvalConfig) -> EpisodeArgs {
    EpisodeArgs {
        episodes,
        max_steps: cfg.max_steps,
        split,
        seed: cfg.seed,
        user: cfg.user.clone(),
        run: LoopArgs {
            concurrency: cfg.concurrency,
            action_timeout: Duration::from_secs(60),
            // In memory nothing is lost: a re-send means the agent is stuck, and ten minutes tell.
            max_resends: 10,
        },
    }
}

/// Trains `core` on the train split, then evaluates it on every test user; returns the report
/// and the training returns (per episode, in finishing order).
pub async fn evaluate(
    dataset: Arc<Dataset>,
    core: AgentCore,
    cfg: &EvalConfig,
) -> anyhow::Result<(PolicyReport, Vec<f64>)> {
    let name = core.policy_name();
    let started = std::time::Instant::now();
    let (mut policy, returns) = if cfg.train_episodes > 0 {
        let train = episodes(Split::Train, cfg.train_episodes, cfg);
        let trained =
            crate::run_memory_with(dataset.clone(), &train, (core, 256), 1024, CancellationToken::new()).await?;
        (trained.core.into_policy(), trained.summary.returns)
    } else {
        (core.into_policy(), Vec::new())
    };
    policy.set_eval(true)?;
    let train_s = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let scores = Arc::new(Mutex::new(Scores { rare: rare_products(&dataset), ..Scores::default() }));
    let evaluator = Evaluator { inner: policy, scores: scores.clone() };
    let test_users = dataset.users_in(Split::Test).len();
    let core = AgentCore::new(Box::new(evaluator), cfg.seed, format!("eval-{name}"), i64::MAX);
    let test = episodes(Split::Test, test_users, cfg);
    let outcome = crate::run_memory_with(dataset, &test, (core, 256), 1024, CancellationToken::new()).await?;
    anyhow::ensure!(outcome.summary.episodes as usize == test_users, "{name}: not every test episode finished");
    let test_s = started.elapsed().as_secs_f64();
    let scores = scores.lock().map_err(|_| anyhow::anyhow!("scores poisoned"))?;
    let per: Vec<&EpisodeScore> = scores.episodes.values().filter(|e| e.steps > 0).collect();
    let rate = |f: fn(&EpisodeScore) -> f64| -> Vec<f64> { per.iter().map(|e| f(e) / f64::from(e.steps)).collect() };
    let rare: Vec<&&EpisodeScore> = per.iter().filter(|e| e.rare_steps > 0).collect();
    let rare_rate =
        |f: fn(&EpisodeScore) -> f64| -> Vec<f64> { rare.iter().map(|e| f(e) / f64::from(e.rare_steps)).collect() };
    let report = PolicyReport {
        reward_rate: Interval::of(&rate(|e| e.reward)),
        hr10: Interval::of(&rate(|e| e.hits)),
        ndcg10: Interval::of(&rate(|e| e.ndcg)),
        ret: Interval::of(&per.iter().map(|e| e.reward).collect::<Vec<_>>()),
        length: Interval::of(&per.iter().map(|e| f64::from(e.steps)).collect::<Vec<_>>()),
        episodes: per.len(),
        train_s,
        test_s,
        rare: RareSlice {
            below: RARE_BELOW,
            steps: rare.iter().map(|e| u64::from(e.rare_steps)).sum(),
            episodes: rare.len(),
            hr10: Interval::of(&rare_rate(|e| e.rare_hits)),
            ndcg10: Interval::of(&rare_rate(|e| e.rare_ndcg)),
        },
    };
    Ok((report, returns))
}

/// Per product index: whether the train users' sequences hold it fewer than [`RARE_BELOW`]
/// times.
fn rare_products(dataset: &Dataset) -> Vec<bool> {
    let mut counts = vec![0u32; dataset.products.len()];
    for user in dataset.users_in(Split::Train) {
        for &p in &user.items {
            if let Some(c) = counts.get_mut(p as usize) {
                *c += 1;
            }
        }
    }
    counts.into_iter().map(|c| c < RARE_BELOW).collect()
}

/// The whole report: policy name to its evaluation.
pub type Report = BTreeMap<String, PolicyReport>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_mean_plus_minus_1_96_standard_errors() {
        let i = Interval::of(&[1.0, 2.0, 3.0, 4.0]);
        assert!((i.mean - 2.5).abs() < 1e-12);
        let se = (1.666_666_666_666_666_7_f64 / 4.0).sqrt();
        assert!((i.hi - (2.5 + 1.96 * se)).abs() < 1e-9 && (i.lo - (2.5 - 1.96 * se)).abs() < 1e-9);
        assert!(Interval { mean: 0.5, lo: 0.4, hi: 0.6 }.beats(&Interval { mean: 0.2, lo: 0.1, hi: 0.3 }));
        assert!(!Interval { mean: 0.5, lo: 0.25, hi: 0.6 }.beats(&Interval { mean: 0.2, lo: 0.1, hi: 0.3 }));
    }
}
