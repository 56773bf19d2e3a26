//! The env's bookkeeping, free of I/O: which episodes run, which step each waits on, what to
//! (re-)publish, and what every incoming action means. The transports drive it.
//!
//! Invariant: each step of each episode is accepted exactly once; every other action for it is
//! counted as a duplicate, stale, foreign or invalid, never applied.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use protocol::{ActionMsg, Envelope, StepState};

use crate::{
    envs::{Environment, Head},
    metrics::Metrics,
};

/// How the engine runs episodes, whatever the environment.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Environment and run id carried by every message, e.g. `fashion-v1/3f2a9c`.
    pub env_id: String,
    /// Episodes in flight at once.
    pub concurrency: usize,
    /// A step whose action has not arrived after this long is published again.
    pub action_timeout: Duration,
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

struct Active<E: Environment> {
    episode: E::Episode,
    /// The state the episode waits an action for, re-published on timeout.
    pending: E::State,
    sent_at: Instant,
    /// Sum of the rewards paid so far.
    ret: f64,
}

/// The episodes of one run of environment `E` and their accounting.
pub struct Engine<E: Environment> {
    cfg: EngineConfig,
    env: E,
    started: usize,
    exhausted: bool,
    active: HashMap<String, Active<E>>,
    run_prefix: String,
    /// Counters, latency histogram and returns of the run.
    pub metrics: Metrics,
}

impl<E: Environment> std::fmt::Debug for Engine<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("env", &self.env.name())
            .field("env_id", &self.cfg.env_id)
            .field("active", &self.active.len())
            .finish()
    }
}

impl<E: Environment> Engine<E> {
    /// An engine running `env`'s episodes.
    pub fn new(cfg: EngineConfig, env: E) -> Self {
        let run_prefix = format!("{}#", cfg.env_id);
        Self { cfg, env, started: 0, exhausted: false, active: HashMap::new(), run_prefix, metrics: Metrics::default() }
    }

    /// The env and run id of every message.
    pub fn env_id(&self) -> &str {
        &self.cfg.env_id
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The environment.
    pub fn env(&self) -> &E {
        &self.env
    }

    /// Episodes still running.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// True when every episode has been played to its end.
    pub fn is_done(&self) -> bool {
        self.active.is_empty() && self.exhausted
    }

    /// Starts episodes until `concurrency` run; returns their first states to publish. An
    /// episode whose first state is already terminal is published and finished at once.
    pub fn fill(&mut self, now: Instant) -> Vec<E::State> {
        let mut out = Vec::new();
        while self.active.len() < self.cfg.concurrency.max(1) && !self.exhausted {
            let id = format!("{}{:06}", self.run_prefix, self.started);
            let head = Head { env_id: &self.cfg.env_id, episode_id: &id };
            let Some((episode, state)) = self.env.start(self.started, head) else {
                self.exhausted = true;
                break;
            };
            self.started += 1;
            out.push(state.clone());
            if state.terminated() || state.truncated() {
                self.metrics.record_episode(0.0, 0);
            } else {
                self.active.insert(id, Active { episode, pending: state, sent_at: now, ret: 0.0 });
            }
        }
        out
    }

    /// Applies an action; returns its verdict and the states to publish (the next state, and
    /// when the episode ended, the first states of the episodes that replace it).
    pub fn on_action(&mut self, action: &ActionMsg, now: Instant) -> (Verdict, Vec<E::State>) {
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
        let waiting = active.pending.step();
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
        let n_actions = self.env.n_actions();
        if action.action >= n_actions {
            self.metrics.invalid += 1;
            return (Verdict::Invalid(format!("action {} outside 0..{n_actions}", action.action)), Vec::new());
        }

        self.metrics.record_rtt(now.saturating_duration_since(active.sent_at));
        let head = Head { env_id: &self.cfg.env_id, episode_id: &action.episode_id };
        let (state, transition) = self.env.step(&mut active.episode, action.action, head);
        active.ret += transition.reward;
        self.metrics.record_step(&transition);
        let mut out = vec![state.clone()];
        if transition.terminated || transition.truncated {
            if let Some(done) = self.active.remove(&action.episode_id) {
                self.metrics.record_episode(done.ret, state.step());
            }
            out.extend(self.fill(now));
        } else {
            active.pending = state;
            active.sent_at = now;
        }
        (Verdict::Accepted, out)
    }

    /// States whose action is overdue, marked as another attempt; their clocks restart.
    pub fn resends(&mut self, now: Instant) -> Vec<E::State> {
        let timeout = self.cfg.action_timeout;
        let mut out = Vec::new();
        for active in self.active.values_mut() {
            if now.saturating_duration_since(active.sent_at) >= timeout {
                active.pending.mark_resent(common::kafka::now_ms());
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        envs::{fashion::FashionEnv, recogym::RecoGymEnv},
        testing::dataset_with_users,
    };

    fn config(env_id: &str, concurrency: usize) -> EngineConfig {
        EngineConfig { env_id: env_id.into(), concurrency, action_timeout: Duration::from_millis(100) }
    }

    fn engine(episodes: usize, concurrency: usize) -> Engine<FashionEnv> {
        let ds = Arc::new(dataset_with_users(8, &[&[1, 2, 3], &[4, 5, 6, 7]]));
        let env = FashionEnv::new(ds, vec![0, 1], episodes, 50, 1, "train");
        Engine::new(config("fashion-v1/t", concurrency), env)
    }

    fn recogym_engine(users: u64, concurrency: usize) -> Engine<RecoGymEnv> {
        let world = recogym::World::new(&recogym::Config { num_products: 4, ..recogym::Config::default() });
        Engine::new(config("reco-gym-v1/t", concurrency), RecoGymEnv::new(Arc::new(world), 0, users, None))
    }

    fn answer<S: Envelope>(state: &S, action: u32) -> ActionMsg {
        let mut a = protocol::messages::examples::action();
        a.env_id = state.env_id().to_string();
        a.episode_id = state.episode_id().to_string();
        a.step = state.step();
        a.action = action;
        a
    }

    /// Plays every episode of `e` answering `action`, each step also answered a second time;
    /// returns the terminal states seen.
    fn play_out<E: Environment>(e: &mut Engine<E>, action: u32) -> usize {
        let t0 = Instant::now();
        let mut queue = e.fill(t0);
        let mut terminal = 0;
        while let Some(state) = queue.pop() {
            if state.terminated() || state.truncated() {
                terminal += 1;
                continue;
            }
            let (v, next) = e.on_action(&answer(&state, action), t0);
            assert_eq!(v, Verdict::Accepted);
            // Answering the same step again changes nothing: a duplicate while the episode runs,
            // stale once its last step was answered.
            let ended = next.first().is_some_and(|s| s.terminated() || s.truncated());
            let again = e.on_action(&answer(&state, action), t0).0;
            assert_eq!(again, if ended { Verdict::Stale } else { Verdict::Duplicate });
            queue.extend(next);
        }
        assert!(e.is_done());
        terminal
    }

    #[test]
    fn plays_every_episode_to_the_end_and_accepts_each_step_once() {
        let mut e = engine(5, 2);
        assert_eq!(e.fill(Instant::now()).len(), 2);
        let mut e = engine(5, 2);
        assert_eq!(play_out(&mut e, 0), 5);
        assert_eq!(e.metrics.episodes, 5);
        assert_eq!(e.metrics.duplicates + e.metrics.stale, e.metrics.steps);
        assert_eq!(e.metrics.stale, 5);
    }

    #[test]
    fn the_same_engine_plays_recogym_users_to_the_end() {
        let mut e = recogym_engine(40, 8);
        assert_eq!(play_out(&mut e, 1), 40, "one episode per user, each ending once");
        let m = &e.metrics;
        assert_eq!(m.episodes, 40);
        assert!(m.steps > 40, "users see several recommendations: {}", m.steps);
        // Users who leave before any recommendation end without a step, and are not stale.
        assert_eq!(m.stale, m.episodes - m.zero_step_episodes);
        assert_eq!(m.duplicates + m.stale, m.steps);
        assert!(m.reward_sum > 0.0 && m.reward_sum < m.steps as f64);
        assert_eq!(m.returns.iter().sum::<f64>(), m.reward_sum);
    }

    #[test]
    fn recogym_out_of_range_actions_are_invalid_and_the_user_waits() {
        let mut e = recogym_engine(200, 200);
        let now = Instant::now();
        let states = e.fill(now);
        let live = states.iter().find(|s| !s.terminated).unwrap_or_else(|| panic!("no live user"));
        assert!(matches!(e.on_action(&answer(live, 4), now).0, Verdict::Invalid(r) if r.contains("outside 0..4")));
        assert_eq!(e.on_action(&answer(live, 3), now).0, Verdict::Accepted);
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
