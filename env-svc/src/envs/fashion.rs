//! The Amazon Fashion environment, as in the reference paper: an episode replays one user's
//! review sequence. The state is the product the user is at; the action is a product index;
//! the reward is 1 when the recommended product is one the user reviews later.
//!
//! Invariant: an episode over a sequence of `n` products has `min(n - 1, max_steps)` steps; its
//! last transition is `terminated` when the sequence is exhausted and `truncated` (never both)
//! when the step limit cut it first.

use std::sync::Arc;

use protocol::{ProductObs, StateMsg, SCHEMA_VERSION};
use rand::seq::SliceRandom;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};

pub use super::Transition;
use super::{Environment, Head};
use crate::engine::Engine;
use fashion::{Dataset, UserSeq};

/// Builds the fashion engine for a run from its episode settings and the loaded dataset.
pub fn engine_for(
    cfg: &crate::config::EpisodeArgs,
    dataset: Arc<fashion::Dataset>,
    env_id: String,
) -> Engine<FashionEnv> {
    let users: Vec<usize> = {
        let wanted: std::collections::HashSet<&str> =
            dataset.users_in(cfg.split).into_iter().map(|u| u.user_id.as_str()).collect();
        dataset.users.iter().enumerate().filter(|(_, u)| wanted.contains(u.user_id.as_str())).map(|(i, _)| i).collect()
    };
    let env = FashionEnv::new(dataset, users, cfg.episodes, cfg.max_steps, cfg.seed, cfg.split_name());
    Engine::new(cfg.run.engine_config(env_id), env)
}

/// `env-svc run --env fashion`: loads `--dataset` and plays its episodes through Kafka.
pub(crate) async fn play(
    cfg: &crate::config::RunArgs,
    run_id: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<crate::metrics::Summary> {
    use anyhow::Context;
    let (dataset_args, quiet) = (cfg.dataset.clone(), cfg.quiet);
    let dataset = tokio::task::spawn_blocking(move || dataset_args.load(quiet)).await.context("loader panicked")??;
    tracing::info!(products = dataset.products.len(), users = dataset.users.len(), "dataset loaded");
    let engine = engine_for(&cfg.episodes, Arc::new(dataset), format!("fashion-v1/{run_id}"));
    crate::run_engine(engine, cfg, shutdown).await
}

/// The fashion environment of one run: which users are replayed, in which order, how many
/// episodes and with which step limit.
#[derive(Debug)]
pub struct FashionEnv {
    dataset: Arc<Dataset>,
    order: Vec<usize>,
    episodes: usize,
    max_steps: u32,
    split: String,
    /// The catalogue's fingerprint, carried by every state.
    catalog: String,
}

impl FashionEnv {
    /// `episodes` episodes over `users` (indices into `dataset.users`), which are shuffled by
    /// `seed` and cycled when fewer; `split` names them in the summary.
    pub fn new(
        dataset: Arc<Dataset>,
        mut users: Vec<usize>,
        episodes: usize,
        max_steps: u32,
        seed: u64,
        split: &str,
    ) -> Self {
        users.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let catalog = dataset.catalog_fingerprint();
        Self { dataset, order: users, episodes, max_steps, split: split.to_string(), catalog }
    }

    /// The dataset the episodes replay.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The catalogue's fingerprint (see [`Dataset::catalog_fingerprint`]).
    pub fn catalog(&self) -> &str {
        &self.catalog
    }

    /// The state of `episode` after transition `t`, caused by `last_action` (none at step 0).
    fn state_msg(&self, head: Head<'_>, episode: &Episode, t: Transition, last_action: Option<u32>) -> StateMsg {
        let ds = &self.dataset;
        let product = &ds.products[episode.current(ds) as usize];
        StateMsg {
            schema_version: SCHEMA_VERSION,
            env_id: head.env_id.to_string(),
            episode_id: head.episode_id.to_string(),
            step: episode.step_count(),
            user_id: episode.user(ds).user_id.clone(),
            n_actions: ds.n_actions(),
            catalog: Some(self.catalog.clone()),
            observation: ProductObs {
                asin: product.id.clone(),
                index: product.index,
                text: product.text(),
                sizes: product.sizes.clone(),
                colors: product.colors.clone(),
                keywords: product.keywords.clone(),
            },
            last_action,
            reward: t.reward,
            next_item_hit: t.next_item_hit,
            terminated: t.terminated,
            truncated: t.truncated,
            attempt: 0,
            ts_ms: common::kafka::now_ms(),
        }
    }
}

impl Environment for FashionEnv {
    type State = StateMsg;
    type Episode = Episode;

    fn name(&self) -> &'static str {
        "fashion-v1"
    }

    fn n_actions(&self) -> u32 {
        self.dataset.n_actions()
    }

    fn start(&mut self, seq: usize, head: Head<'_>) -> Option<(Episode, StateMsg)> {
        if seq >= self.episodes || self.order.is_empty() {
            return None;
        }
        let episode = Episode::new(self.order[seq % self.order.len()], self.max_steps);
        let first =
            Transition { reward: 0.0, next_item_hit: false, terminated: false, truncated: false, random_reward: None };
        let state = self.state_msg(head, &episode, first, None);
        Some((episode, state))
    }

    fn step(&mut self, episode: &mut Episode, action: u32, head: Head<'_>) -> (StateMsg, Transition) {
        let transition = episode.step(&self.dataset, action);
        (self.state_msg(head, episode, transition, Some(action)), transition)
    }

    fn label(&self) -> String {
        self.split.clone()
    }
}

/// One user's episode.
#[derive(Debug, Clone)]
pub struct Episode {
    user: usize,
    pos: usize,
    step: u32,
    max_steps: u32,
    /// Sum of rewards so far.
    pub ret: f64,
    /// Next-item hits so far.
    pub hits: u32,
}

impl Episode {
    /// Starts an episode on `dataset.users[user]`, which must have at least two products.
    pub fn new(user: usize, max_steps: u32) -> Self {
        Self { user, pos: 0, step: 0, max_steps: max_steps.max(1), ret: 0.0, hits: 0 }
    }

    /// The user this episode replays.
    pub fn user<'d>(&self, dataset: &'d Dataset) -> &'d UserSeq {
        &dataset.users[self.user]
    }

    /// Index of the product the user is at.
    pub fn current(&self, dataset: &Dataset) -> u32 {
        self.user(dataset).items[self.pos]
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u32 {
        self.step
    }

    /// Applies an action and moves the user to their next product.
    pub fn step(&mut self, dataset: &Dataset, action: u32) -> Transition {
        let items = &self.user(dataset).items;
        let later = &items[self.pos + 1..];
        let reward = if later.contains(&action) { 1.0 } else { 0.0 };
        let next_item_hit = later.first() == Some(&action);
        // A uniformly random action pays when it lands on one of the distinct later products.
        let distinct = later.iter().collect::<std::collections::HashSet<_>>().len();
        let random_reward = Some(distinct as f64 / f64::from(dataset.n_actions().max(1)));
        self.pos += 1;
        self.step += 1;
        self.ret += reward;
        self.hits += u32::from(next_item_hit);
        let terminated = self.pos + 1 >= items.len();
        let truncated = !terminated && self.step >= self.max_steps;
        Transition { reward, next_item_hit, terminated, truncated, random_reward }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::dataset_with_users;

    #[test]
    fn reward_for_any_later_product_hit_only_for_the_next() {
        let ds = dataset_with_users(10, &[&[1, 2, 3, 4]]);
        let mut ep = Episode::new(0, 50);
        assert_eq!(ep.current(&ds), 1);
        let t = ep.step(&ds, 4);
        assert_eq!((t.reward, t.next_item_hit, t.terminated, t.truncated), (1.0, false, false, false));
        assert_eq!(ep.current(&ds), 2);
        let t = ep.step(&ds, 3);
        assert_eq!((t.reward, t.next_item_hit), (1.0, true));
        let t = ep.step(&ds, 1);
        assert_eq!((t.reward, t.terminated, t.truncated), (0.0, true, false), "1 is in the past, not later");
        assert_eq!((ep.ret, ep.hits, ep.step_count()), (2.0, 1, 3));
        // What random earns: the share of the 10 products still ahead, each counted once.
        let ds = dataset_with_users(10, &[&[1, 2, 2, 5]]);
        let mut ep = Episode::new(0, 50);
        assert_eq!(ep.step(&ds, 0).random_reward, Some(0.2), "2 and 5 are ahead");
        assert_eq!(ep.step(&ds, 0).random_reward, Some(0.2));
        assert_eq!(ep.step(&ds, 0).random_reward, Some(0.1));
    }

    #[test]
    fn step_limit_truncates_and_never_also_terminates() {
        let ds = dataset_with_users(10, &[&[1, 2, 3, 4, 5], &[1, 2, 3]]);
        let mut ep = Episode::new(0, 2);
        assert!(!ep.step(&ds, 0).truncated);
        let t = ep.step(&ds, 0);
        assert!(t.truncated && !t.terminated);
        // A sequence that ends exactly at the limit terminates.
        let mut ep = Episode::new(1, 2);
        ep.step(&ds, 0);
        let t = ep.step(&ds, 0);
        assert!(t.terminated && !t.truncated);
    }
}
