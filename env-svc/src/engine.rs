//! The env's bookkeeping, free of I/O: which episodes run, which step each waits on, what to
//! (re-)publish, and what every incoming action means. The transports drive it.
//!
//! Invariant: each step of each episode is accepted exactly once; every other action for it is
//! counted as a duplicate, stale, foreign or invalid, never applied.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use protocol::{ActionMsg, ProductObs, StateMsg, SCHEMA_VERSION};
use rand::seq::SliceRandom;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};

use crate::{
    data::Dataset,
    envs::fashion::{Episode, Transition},
    metrics::Metrics,
};

/// How the engine runs episodes.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Environment and run id carried by every message, e.g. `fashion-v1/3f2a9c`.
    pub env_id: String,
    /// Episodes to play in all; users are visited in a seeded order, cycling when needed.
    pub episodes: usize,
    /// Episodes in flight at once.
    pub concurrency: usize,
    /// Step limit of an episode.
    pub max_steps: u32,
    /// A step whose action has not arrived after this long is published again.
    pub action_timeout: Duration,
    /// Seed of the user order.
    pub seed: u64,
}

/// What an incoming action turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Answered the step its episode waits on; applied.
    Accepted,
    /// Answered a step that was already answered (e.g. after a re-send); ignored.
    Duplicate,
    /// Answered an episode this run no longer plays (finished); ignored.
    Stale,
    /// Belongs to another env or run; ignored.
    Foreign,
    /// Can never be applied (unknown episode of this run, future step, action out of range);
    /// goes to the dead-letter topic with this reason.
    Invalid(String),
}

struct Active {
    episode: Episode,
    /// The state the episode waits an action for, re-published on timeout.
    pending: StateMsg,
    sent_at: Instant,
}

/// The episodes of one run and their accounting.
pub struct Engine {
    cfg: EngineConfig,
    dataset: Arc<Dataset>,
    order: Vec<usize>,
    started: usize,
    active: HashMap<String, Active>,
    run_prefix: String,
    /// Counters, latency histogram and returns of the run.
    pub metrics: Metrics,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("env_id", &self.cfg.env_id).field("active", &self.active.len()).finish()
    }
}

impl Engine {
    /// An engine over `users` (indices into `dataset.users`); they are shuffled by the seed.
    pub fn new(cfg: EngineConfig, dataset: Arc<Dataset>, mut users: Vec<usize>) -> Self {
        users.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed));
        let run_prefix = format!("{}#", cfg.env_id);
        Self { cfg, dataset, order: users, started: 0, active: HashMap::new(), run_prefix, metrics: Metrics::default() }
    }

    /// The env and run id of every message.
    pub fn env_id(&self) -> &str {
        &self.cfg.env_id
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Episodes still running.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// True when every episode has been played to its end.
    pub fn is_done(&self) -> bool {
        self.active.is_empty() && (self.started >= self.cfg.episodes || self.order.is_empty())
    }

    /// Starts episodes until `concurrency` run; returns their first states to publish.
    pub fn fill(&mut self, now: Instant) -> Vec<StateMsg> {
        let mut out = Vec::new();
        while self.active.len() < self.cfg.concurrency && self.started < self.cfg.episodes && !self.order.is_empty() {
            let user = self.order[self.started % self.order.len()];
            let id = format!("{}{:06}", self.run_prefix, self.started);
            self.started += 1;
            let episode = Episode::new(user, self.cfg.max_steps);
            let first = Transition { reward: 0.0, next_item_hit: false, terminated: false, truncated: false };
            let state = self.state_msg(&id, &episode, first);
            out.push(state.clone());
            self.active.insert(id, Active { episode, pending: state, sent_at: now });
        }
        out
    }

    /// Applies an action; returns its verdict and the states to publish (the next state, and
    /// when the episode ended, the first states of the episodes that replace it).
    pub fn on_action(&mut self, action: &ActionMsg, now: Instant) -> (Verdict, Vec<StateMsg>) {
        if action.env_id != self.cfg.env_id {
            self.metrics.foreign += 1;
            return (Verdict::Foreign, Vec::new());
        }
        let Some(active) = self.active.get_mut(&action.episode_id) else {
            if action.episode_id.starts_with(&self.run_prefix) && self.is_ours(&action.episode_id) {
                self.metrics.stale += 1;
                return (Verdict::Stale, Vec::new());
            }
            self.metrics.invalid += 1;
            return (Verdict::Invalid(format!("unknown episode {} of this run", action.episode_id)), Vec::new());
        };
        let waiting = active.pending.step;
        if action.step < waiting {
            self.metrics.duplicates += 1;
            return (Verdict::Duplicate, Vec::new());
        }
        if action.step > waiting {
            self.metrics.invalid += 1;
            return (
                Verdict::Invalid(format!("step {} answered but episode waits on step {waiting}", action.step)),
                Vec::new(),
            );
        }
        let n_actions = self.dataset.n_actions();
        if action.action >= n_actions {
            self.metrics.invalid += 1;
            return (Verdict::Invalid(format!("action {} outside 0..{n_actions}", action.action)), Vec::new());
        }

        self.metrics.record_rtt(now.saturating_duration_since(active.sent_at));
        let transition = active.episode.step(&self.dataset, action.action);
        self.metrics.record_step(&transition);
        let id = action.episode_id.clone();
        let episode = active.episode.clone();
        let state = self.state_msg(&id, &episode, transition);
        let mut out = vec![state.clone()];
        if transition.terminated || transition.truncated {
            self.active.remove(&id);
            self.metrics.record_episode(episode.ret, episode.step_count());
            out.extend(self.fill(now));
        } else if let Some(active) = self.active.get_mut(&id) {
            active.pending = state;
            active.sent_at = now;
        }
        (Verdict::Accepted, out)
    }

    /// States whose action is overdue, marked as another attempt; their clocks restart.
    pub fn resends(&mut self, now: Instant) -> Vec<StateMsg> {
        let timeout = self.cfg.action_timeout;
        let mut out = Vec::new();
        for active in self.active.values_mut() {
            if now.saturating_duration_since(active.sent_at) >= timeout {
                active.pending.attempt += 1;
                active.pending.ts_ms = common::kafka::now_ms();
                active.sent_at = now;
                out.push(active.pending.clone());
            }
        }
        self.metrics.resends += out.len() as u64;
        out
    }

    /// An episode id this run handed out (`<env_id>#<sequence>` with sequence < started).
    fn is_ours(&self, episode_id: &str) -> bool {
        episode_id[self.run_prefix.len()..].parse::<usize>().is_ok_and(|n| n < self.started)
    }

    fn state_msg(&self, id: &str, episode: &Episode, t: Transition) -> StateMsg {
        let ds = &self.dataset;
        let product = &ds.products[episode.current(ds) as usize];
        StateMsg {
            schema_version: SCHEMA_VERSION,
            env_id: self.cfg.env_id.clone(),
            episode_id: id.to_string(),
            step: episode.step_count(),
            user_id: episode.user(ds).user_id.clone(),
            n_actions: ds.n_actions(),
            observation: ProductObs {
                asin: product.id.clone(),
                index: product.index,
                text: product.text(),
                sizes: product.sizes.clone(),
                colors: product.colors.clone(),
                keywords: product.keywords.clone(),
            },
            reward: t.reward,
            next_item_hit: t.next_item_hit,
            terminated: t.terminated,
            truncated: t.truncated,
            attempt: 0,
            ts_ms: common::kafka::now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::dataset_with_users;

    fn engine(episodes: usize, concurrency: usize) -> Engine {
        let ds = Arc::new(dataset_with_users(8, &[&[1, 2, 3], &[4, 5, 6, 7]]));
        let cfg = EngineConfig {
            env_id: "fashion-v1/t".into(),
            episodes,
            concurrency,
            max_steps: 50,
            action_timeout: Duration::from_millis(100),
            seed: 1,
        };
        Engine::new(cfg, ds, vec![0, 1])
    }

    fn answer(state: &StateMsg, action: u32) -> ActionMsg {
        let mut a = protocol::messages::examples::action();
        a.env_id = state.env_id.clone();
        a.episode_id = state.episode_id.clone();
        a.step = state.step;
        a.action = action;
        a
    }

    #[test]
    fn plays_every_episode_to_the_end_and_accepts_each_step_once() {
        let mut e = engine(5, 2);
        let t0 = Instant::now();
        let mut queue = e.fill(t0);
        assert_eq!(queue.len(), 2);
        let mut terminal = 0;
        while let Some(state) = queue.pop() {
            if state.terminated || state.truncated {
                terminal += 1;
                continue;
            }
            let (v, next) = e.on_action(&answer(&state, 0), t0);
            assert_eq!(v, Verdict::Accepted);
            // Answering the same step again changes nothing: a duplicate while the episode runs,
            // stale once its last step was answered.
            let ended = next.first().is_some_and(|s| s.terminated || s.truncated);
            let again = e.on_action(&answer(&state, 0), t0).0;
            assert_eq!(again, if ended { Verdict::Stale } else { Verdict::Duplicate });
            queue.extend(next);
        }
        assert!(e.is_done());
        assert_eq!(terminal, 5);
        assert_eq!(e.metrics.episodes, 5);
        assert_eq!(e.metrics.duplicates + e.metrics.stale, e.metrics.steps);
        assert_eq!(e.metrics.stale, 5);
    }

    #[test]
    fn classifies_foreign_stale_and_invalid_actions() {
        let mut e = engine(1, 1);
        let now = Instant::now();
        let state = e.fill(now).remove(0);
        let mut foreign = answer(&state, 0);
        foreign.env_id = "fashion-v1/other".into();
        assert_eq!(e.on_action(&foreign, now).0, Verdict::Foreign);
        assert!(matches!(e.on_action(&answer(&state, 99), now).0, Verdict::Invalid(r) if r.contains("outside 0..8")));
        let mut future = answer(&state, 0);
        future.step = 5;
        assert!(matches!(e.on_action(&future, now).0, Verdict::Invalid(_)));
        let mut unknown = answer(&state, 0);
        unknown.episode_id = "fashion-v1/t#999999".into();
        assert!(matches!(e.on_action(&unknown, now).0, Verdict::Invalid(_)));
        // Play the episode out, then answer it again: stale.
        let mut s = state.clone();
        while !(s.terminated || s.truncated) {
            s = e.on_action(&answer(&s, 0), now).1.remove(0);
        }
        assert_eq!(e.on_action(&answer(&state, 0), now).0, Verdict::Stale);
    }

    #[test]
    fn overdue_steps_are_resent_with_a_higher_attempt() {
        let mut e = engine(1, 1);
        let t0 = Instant::now();
        let first = e.fill(t0).remove(0);
        assert!(e.resends(t0 + Duration::from_millis(50)).is_empty());
        let again = e.resends(t0 + Duration::from_millis(150));
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].step, again[0].attempt), (first.step, 1));
        assert_eq!(e.metrics.resends, 1);
        // The answer to either copy is accepted once.
        assert_eq!(e.on_action(&answer(&first, 0), t0).0, Verdict::Accepted);
        assert_eq!(e.on_action(&answer(&again[0], 0), t0).0, Verdict::Duplicate);
    }
}
