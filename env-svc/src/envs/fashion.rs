//! The Amazon Fashion environment. An episode follows one user's review sequence; the state is
//! the product the user is at; the action is a product index. Two user models (`--user-model`),
//! told apart by the env id every state carries:
//!
//! **`replay`** (env id `fashion-v1`, the default; the reference paper's environment). The user
//! moves to the next product of their sequence whatever is recommended. Reward 1 when the
//! recommended product is one the user reviews later in the sequence, else 0. An action never
//! changes the next state, so the problem is a contextual bandit: a discount `gamma > 0` cannot
//! add anything, and hindsight relabelling ("any later product would have paid") is exact.
//! Invariant: an episode over a sequence of `n` products has `min(n - 1, max_steps)` steps; its
//! last transition is `terminated` when the sequence is exhausted and `truncated` (never both)
//! when the step limit cut it first.
//!
//! **`interactive`** (env id `fashion-interactive-v1`): recommendations steer the user. At
//! position `p` of the sequence, recommended product `a`:
//! - `a` is reviewed later (first at position `j > p`): with probability `accept`
//!   (`--accept-prob`, 0.5) the user accepts it now: reward 1, the user moves to `a` (position
//!   `j`), and the reviews between are gone. Otherwise reward 0 and the user moves to `p + 1`.
//! - `a` is never reviewed later: reward 0; the user moves to `p + 1` and then leaves with
//!   probability `leave` (`--leave-prob`, 0.1): the episode ends there (`terminated`).
//! - The episode also ends (`terminated`) at the sequence's last product, and is `truncated` at
//!   the step limit, as in `replay`.
//!
//! Reasoning. The reward is explicit and immediate: 1 per accepted recommendation, so an
//! episode's return counts them. The products ahead are a budget: accepting a product far
//! ahead pays 1 now and throws away the chances in between, while the next product keeps them
//! all; a recommendation of nothing the user wants risks the rest of the episode. So what is
//! best now (any later product, accepted with the same probability) is not what is best for
//! the return (the nearest later product, and no risky guesses), which is what a discount
//! `gamma > 0` can learn and `gamma 0` cannot. Relabelling a step with the products seen later
//! is unsound here (what follows depends on the action); one relabelling stays sound, and each
//! state publishes `accept` (`accept_prob`) for it: after a declined recommendation (reward 0)
//! that did not end the episode, the user is at the next product of the sequence, exactly
//! where recommending that product would have taken them, with expected reward `accept`. The
//! user's coins come from a generator seeded by the run's seed and the episode's number, so a
//! run is reproducible. The random baseline's expected reward per step is `accept × (distinct later
//! products) / n_actions`.

use std::sync::Arc;

use protocol::{ProductObs, StateMsg, SCHEMA_VERSION};
use rand::{seq::SliceRandom, Rng};
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};

pub use super::Transition;
use super::{Environment, Head};
use crate::engine::Engine;
use fashion::{Dataset, UserSeq};

/// Builds the fashion engine for a run from its episode settings and the loaded dataset.
pub fn engine_for(
    cfg: &crate::config::EpisodeArgs,
    dataset: Arc<fashion::Dataset>,
    run_id: &str,
) -> Engine<FashionEnv> {
    let users: Vec<usize> = {
        let wanted: std::collections::HashSet<&str> =
            dataset.users_in(cfg.split).into_iter().map(|u| u.user_id.as_str()).collect();
        dataset.users.iter().enumerate().filter(|(_, u)| wanted.contains(u.user_id.as_str())).map(|(i, _)| i).collect()
    };
    let env = FashionEnv::new(dataset, users, cfg.episodes, cfg.max_steps, cfg.seed, cfg.split_name())
        .with_user_model(cfg.user.model());
    let env_id = format!("{}/{run_id}", env.name());
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
    let engine = engine_for(&cfg.episodes, Arc::new(dataset), run_id);
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
    user_model: UserModel,
    seed: u64,
}

/// How the user answers recommendations (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UserModel {
    /// The user's sequence is replayed whatever is recommended (the paper's).
    Replay,
    /// Accepted with probability `accept` when reviewed later; the user leaves with probability
    /// `leave` after a recommendation of nothing they review later.
    Interactive {
        /// Probability of accepting a product reviewed later.
        accept: f64,
        /// Probability of leaving after a recommendation of no later product.
        leave: f64,
    },
}

impl UserModel {
    /// The env id's name part for this model.
    pub fn env_name(self) -> &'static str {
        match self {
            UserModel::Replay => protocol::FASHION_REPLAY_ENV,
            UserModel::Interactive { .. } => protocol::FASHION_INTERACTIVE_ENV,
        }
    }

    /// The acceptance probability every state of this model publishes (`None`: replay).
    pub fn accept_prob(self) -> Option<f64> {
        match self {
            UserModel::Replay => None,
            UserModel::Interactive { accept, .. } => Some(accept),
        }
    }
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
        let user_model = UserModel::Replay;
        Self { dataset, order: users, episodes, max_steps, split: split.to_string(), catalog, user_model, seed }
    }

    /// The same environment with another user model.
    pub fn with_user_model(mut self, user_model: UserModel) -> Self {
        self.user_model = user_model;
        self
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
            accept_prob: self.user_model.accept_prob(),
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
        self.user_model.env_name()
    }

    fn n_actions(&self) -> u32 {
        self.dataset.n_actions()
    }

    fn start(&mut self, seq: usize, head: Head<'_>) -> Option<(Episode, StateMsg)> {
        if seq >= self.episodes || self.order.is_empty() {
            return None;
        }
        let user = self.order[seq % self.order.len()];
        // The user's coins: one generator per episode, from the run's seed and the episode's number.
        let coins = ChaCha8Rng::seed_from_u64(self.seed ^ (seq as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let episode = Episode::new(user, self.max_steps).with_user_model(self.user_model, coins);
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
    user_model: UserModel,
    coins: ChaCha8Rng,
    /// The user left (interactive model).
    pub left: bool,
    /// Sum of rewards so far.
    pub ret: f64,
    /// Next-item hits so far.
    pub hits: u32,
}

impl Episode {
    /// Starts an episode on `dataset.users[user]`, which must have at least two products.
    pub fn new(user: usize, max_steps: u32) -> Self {
        let coins = ChaCha8Rng::seed_from_u64(0);
        Self {
            user,
            pos: 0,
            step: 0,
            max_steps: max_steps.max(1),
            user_model: UserModel::Replay,
            coins,
            left: false,
            ret: 0.0,
            hits: 0,
        }
    }

    /// The same episode under `user_model`, whose random choices `coins` draws.
    pub fn with_user_model(mut self, user_model: UserModel, coins: ChaCha8Rng) -> Self {
        (self.user_model, self.coins) = (user_model, coins);
        self
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

    /// Applies an action and moves the user on, as the user model says.
    pub fn step(&mut self, dataset: &Dataset, action: u32) -> Transition {
        let items = &dataset.users[self.user].items;
        let later = &items[self.pos + 1..];
        let ahead = later.iter().position(|&p| p == action);
        let next_item_hit = ahead == Some(0);
        // A uniformly random action lands on one of the distinct later products with this chance.
        let distinct = later.iter().collect::<std::collections::HashSet<_>>().len();
        let land = distinct as f64 / f64::from(dataset.n_actions().max(1));
        let (reward, random_reward) = match self.user_model {
            UserModel::Replay => {
                self.pos += 1;
                (if ahead.is_some() { 1.0 } else { 0.0 }, land)
            }
            UserModel::Interactive { accept, leave } => {
                let reward = match ahead {
                    Some(j) if self.coins.random_bool(accept) => {
                        self.pos += 1 + j;
                        1.0
                    }
                    Some(_) => {
                        self.pos += 1;
                        0.0
                    }
                    None => {
                        self.pos += 1;
                        self.left = self.coins.random_bool(leave);
                        0.0
                    }
                };
                (reward, accept * land)
            }
        };
        self.step += 1;
        self.ret += reward;
        self.hits += u32::from(next_item_hit);
        let terminated = self.left || self.pos + 1 >= items.len();
        let truncated = !terminated && self.step >= self.max_steps;
        Transition { reward, next_item_hit, terminated, truncated, random_reward: Some(random_reward) }
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

    fn interactive(accept: f64, leave: f64, seed: u64) -> Episode {
        Episode::new(0, 50).with_user_model(UserModel::Interactive { accept, leave }, ChaCha8Rng::seed_from_u64(seed))
    }

    #[test]
    fn an_accepted_recommendation_moves_the_user_to_it_and_the_skipped_reviews_are_gone() {
        let ds = dataset_with_users(10, &[&[1, 2, 3, 4, 5, 6]]);
        let mut ep = interactive(1.0, 0.0, 0);
        let t = ep.step(&ds, 4);
        assert_eq!((t.reward, t.next_item_hit, t.terminated), (1.0, false, false));
        assert_eq!(ep.current(&ds), 4, "the user went to the recommended product; 2 and 3 are skipped");
        assert_eq!(t.random_reward, Some(0.5), "accept x 5 later products / 10");
        let t = ep.step(&ds, 2);
        assert_eq!((t.reward, ep.current(&ds)), (0.0, 5), "2 was skipped: no later product, on to the next");
        let t = ep.step(&ds, 6);
        assert_eq!((t.reward, t.next_item_hit, t.terminated), (1.0, true, true), "the last product ends it");
        assert_eq!((ep.ret, ep.step_count(), ep.left), (2.0, 3, false));

        // Declined (accept 0): the user goes on to the next product, without reward.
        let mut ep = interactive(0.0, 0.0, 0);
        let t = ep.step(&ds, 4);
        assert_eq!((t.reward, ep.current(&ds)), (0.0, 2));
    }

    #[test]
    fn a_recommendation_of_no_later_product_may_make_the_user_leave() {
        let ds = dataset_with_users(10, &[&[1, 2, 3, 4, 5, 6]]);
        let mut ep = interactive(1.0, 1.0, 0);
        let t = ep.step(&ds, 9);
        assert_eq!((t.reward, t.terminated, t.truncated, ep.left), (0.0, true, false, true));
        assert_eq!(ep.current(&ds), 2, "the user reviewed the next product, then left");
        // A later product never makes the user leave.
        let mut ep = interactive(0.0, 1.0, 0);
        assert!(!ep.step(&ds, 5).terminated);
        // Leaving with probability 0.3: about 30% of such steps end the episode, reproducibly.
        let left =
            |seed: u64| (0..2_000u64).filter(|&s| interactive(0.5, 0.3, seed + s).step(&ds, 9).terminated).count();
        assert_eq!(left(7), left(7));
        assert!((500..700).contains(&left(7)), "{}", left(7));
    }

    #[test]
    fn the_user_model_names_the_env_and_replay_is_the_papers() {
        let ds = Arc::new(dataset_with_users(10, &[&[1, 2, 3]]));
        let mut env = FashionEnv::new(ds.clone(), vec![0], 1, 50, 0, "all");
        assert_eq!(env.name(), "fashion-v1");
        let head = Head { env_id: "fashion-v1/t", episode_id: "e" };
        let first = |env: &mut FashionEnv| env.start(0, head).map(|(_, s)| s.accept_prob);
        assert_eq!(first(&mut env), Some(None), "replay states publish no acceptance probability");
        let mut env = env.with_user_model(UserModel::Interactive { accept: 0.25, leave: 0.1 });
        assert_eq!(env.name(), "fashion-interactive-v1");
        assert_eq!(first(&mut env), Some(Some(0.25)), "every interactive state publishes it, for relabelling");
        // Replay pays any later product and never jumps: the paper's environment.
        let mut ep = Episode::new(0, 50);
        assert_eq!((ep.step(&ds, 3).reward, ep.current(&ds)), (1.0, 2));
    }
}
