//! The env's bookkeeping, free of I/O: which episodes run, which step each waits on, what to
//! (re-)publish, and what every incoming action means. The transports drive it.
//!
//! Invariant: each step of each episode is accepted exactly once; every other action for it is
//! counted as a duplicate, stale, foreign or invalid, never applied. Every state is published
//! until its publication is acknowledged (terminal states included), and re-sent at most
//! `max_resends` times: an episode that needs more ends as failed, with the reason, and no new
//! episode starts after a failure (the run's outcome is already a failure).

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
    /// Re-sends of one state (after an action timeout or a failed publication) before its
    /// episode fails.
    pub max_resends: u32,
}

/// An episode that could not be played to its end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// The episode.
    pub episode_id: String,
    /// The step it was stuck on.
    pub step: u32,
    /// Why it failed.
    pub reason: String,
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
    /// Times `pending` was re-sent.
    resends: u32,
}

/// An episode played to its end whose terminal state is not acknowledged yet.
struct Closing<S> {
    state: S,
    ret: f64,
    resends: u32,
}

/// Failures listed in the summary at most (all are counted).
const MAX_FAILURES_LISTED: usize = 20;

/// The episodes of one run of environment `E` and their accounting.
pub struct Engine<E: Environment> {
    cfg: EngineConfig,
    env: E,
    started: usize,
    exhausted: bool,
    active: HashMap<String, Active<E>>,
    closing: HashMap<String, Closing<E::State>>,
    /// The first failures, with their reasons.
    failures: Vec<Failure>,
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
        Self {
            cfg,
            env,
            started: 0,
            exhausted: false,
            active: HashMap::new(),
            closing: HashMap::new(),
            failures: Vec::new(),
            run_prefix,
            metrics: Metrics::default(),
        }
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

    /// True when every episode has been played to its end (or failed) and every terminal
    /// state is acknowledged.
    pub fn is_done(&self) -> bool {
        self.active.is_empty() && self.closing.is_empty() && self.exhausted
    }

    /// Episodes started so far.
    pub fn started(&self) -> usize {
        self.started
    }

    /// The first episodes that failed, with their reasons (`metrics.failed_episodes` counts all).
    pub fn failures(&self) -> &[Failure] {
        &self.failures
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
                self.closing.insert(id, Closing { state, ret: 0.0, resends: 0 });
            } else {
                self.active.insert(id, Active { episode, pending: state, sent_at: now, ret: 0.0, resends: 0 });
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

        self.metrics.note_policy(&action.policy);
        self.metrics.record_rtt(now.saturating_duration_since(active.sent_at));
        let head = Head { env_id: &self.cfg.env_id, episode_id: &action.episode_id };
        let (state, transition) = self.env.step(&mut active.episode, action.action, head);
        active.ret += transition.reward;
        self.metrics.record_step(&transition);
        let mut out = vec![state.clone()];
        if transition.terminated || transition.truncated {
            if let Some(done) = self.active.remove(&action.episode_id) {
                self.closing.insert(action.episode_id.clone(), Closing { state, ret: done.ret, resends: 0 });
            }
            out.extend(self.fill(now));
        } else {
            active.pending = state;
            active.sent_at = now;
            active.resends = 0;
        }
        (Verdict::Accepted, out)
    }

    /// Takes the outcome of publishing step `step` of `episode_id`: a terminal state that is
    /// acknowledged finishes its episode; a state whose publication failed is re-sent at once
    /// (returned, to publish) while the episode still needs it, within `max_resends`.
    pub fn on_published(
        &mut self,
        episode_id: &str,
        step: u32,
        result: Result<(), String>,
        now: Instant,
    ) -> Vec<E::State> {
        let closing = self.closing.get(episode_id).filter(|c| c.state.step() == step).is_some();
        let error = match result {
            Ok(()) => {
                if closing {
                    if let Some(done) = self.closing.remove(episode_id) {
                        self.metrics.record_episode(done.ret, done.state.step());
                    }
                }
                return Vec::new();
            }
            Err(e) => e,
        };
        self.metrics.publish_errors += 1;
        let reason = format!("publication failed {} times, last: {error}", u64::from(self.cfg.max_resends) + 1);
        if closing {
            let max = self.cfg.max_resends;
            if let Some(c) = self.closing.get_mut(episode_id).filter(|c| c.resends < max) {
                c.resends += 1;
                c.state.mark_resent(common::kafka::now_ms());
                self.metrics.resends += 1;
                return vec![c.state.clone()];
            }
            self.fail(episode_id, step, reason, now);
            return Vec::new();
        }
        let waiting = self.active.get(episode_id).is_some_and(|a| a.pending.step() == step);
        if !waiting {
            return Vec::new(); // an older copy; the episode has moved on
        }
        self.resend_or_fail(episode_id, now, reason).into_iter().collect()
    }

    /// Re-sends the state `episode_id` waits on, or fails the episode when it was re-sent
    /// `max_resends` times already.
    fn resend_or_fail(&mut self, episode_id: &str, now: Instant, reason: String) -> Option<E::State> {
        let max = self.cfg.max_resends;
        let active = self.active.get_mut(episode_id)?;
        if active.resends >= max {
            let step = active.pending.step();
            self.fail(episode_id, step, reason, now);
            return None;
        }
        active.resends += 1;
        active.pending.mark_resent(common::kafka::now_ms());
        active.sent_at = now;
        self.metrics.resends += 1;
        Some(active.pending.clone())
    }

    /// Ends an episode as failed; no new episode starts after it.
    fn fail(&mut self, episode_id: &str, step: u32, reason: String, _now: Instant) {
        self.active.remove(episode_id);
        self.closing.remove(episode_id);
        self.metrics.failed_episodes += 1;
        if !self.exhausted {
            tracing::error!(episode_id, step, %reason, "episode failed; no new episode starts, and the run will exit non-zero");
        }
        self.exhausted = true;
        if self.failures.len() < MAX_FAILURES_LISTED {
            self.failures.push(Failure { episode_id: episode_id.to_string(), step, reason });
        }
    }

    /// States whose action is overdue, marked as another attempt; their clocks restart. An
    /// episode whose state was re-sent `max_resends` times already fails instead.
    pub fn resends(&mut self, now: Instant) -> Vec<E::State> {
        let timeout = self.cfg.action_timeout;
        let overdue: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.sent_at) >= timeout)
            .map(|(id, _)| id.clone())
            .collect();
        let reason = format!(
            "no action after {} re-sends, {:?} apart (is an agent serving this topic?)",
            self.cfg.max_resends, timeout
        );
        overdue.into_iter().filter_map(|id| self.resend_or_fail(&id, now, reason.clone())).collect()
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
        EngineConfig { env_id: env_id.into(), concurrency, action_timeout: Duration::from_millis(100), max_resends: 2 }
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

    /// Plays every episode of `e` answering `action`, each step also answered a second time
    /// and every publication acknowledged; returns the terminal states seen.
    fn play_out<E: Environment>(e: &mut Engine<E>, action: u32) -> usize {
        let t0 = Instant::now();
        let mut queue = e.fill(t0);
        let mut terminal = 0;
        while let Some(state) = queue.pop() {
            assert!(e.on_published(state.episode_id(), state.step(), Ok(()), t0).is_empty());
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

    #[test]
    fn an_unanswered_episode_fails_after_its_resends_and_no_new_one_starts() {
        let mut e = engine(5, 2);
        let t0 = Instant::now();
        let first = e.fill(t0);
        assert_eq!(first.len(), 2);
        let mut now = t0;
        let mut resent = 0;
        for _ in 0..2 {
            now += Duration::from_millis(150);
            resent += e.resends(now).len();
        }
        assert_eq!(resent, 4, "two re-sends of each episode (max_resends 2)");
        now += Duration::from_millis(150);
        assert!(e.resends(now).is_empty(), "the third timeout fails the episodes instead");
        assert_eq!(e.metrics.failed_episodes, 2);
        assert!(e.is_done(), "no new episode started after the failure: the run ends");
        assert_eq!(e.started(), 2);
        let f = &e.failures()[0];
        assert!(f.reason.contains("no action after 2 re-sends"), "{f:?}");
    }

    #[test]
    fn a_terminal_state_is_published_again_until_acknowledged() {
        let mut e = engine(1, 1);
        let t0 = Instant::now();
        let mut s = e.fill(t0).remove(0);
        while !(s.terminated || s.truncated) {
            assert!(e.on_published(&s.episode_id, s.step, Ok(()), t0).is_empty());
            s = e.on_action(&answer(&s, 0), t0).1.remove(0);
        }
        assert!(!e.is_done(), "the terminal state is not acknowledged yet");
        assert_eq!(e.metrics.episodes, 0, "an episode ends when its terminal state is durable");
        let again = e.on_published(&s.episode_id, s.step, Err("timed out".into()), t0);
        assert_eq!(again.len(), 1, "a failed terminal publication is re-sent");
        assert_eq!((again[0].step, again[0].attempt, again[0].terminated || again[0].truncated), (s.step, 1, true));
        assert!(e.on_published(&s.episode_id, s.step, Ok(()), t0).is_empty());
        assert!(e.is_done());
        assert_eq!((e.metrics.episodes, e.metrics.failed_episodes, e.metrics.publish_errors), (1, 0, 1));
    }

    #[test]
    fn a_failed_publication_is_resent_at_once_within_the_budget() {
        let mut e = engine(1, 1);
        let t0 = Instant::now();
        let s = e.fill(t0).remove(0);
        for attempt in 1..=2 {
            let again = e.on_published(&s.episode_id, s.step, Err("not enough replicas".into()), t0);
            assert_eq!(again.iter().map(|a| a.attempt).collect::<Vec<_>>(), vec![attempt]);
        }
        assert!(e.on_published(&s.episode_id, s.step, Err("not enough replicas".into()), t0).is_empty());
        assert_eq!(e.metrics.failed_episodes, 1);
        assert!(e.failures()[0].reason.contains("publication failed 3 times, last: not enough replicas"));
        assert!(e.is_done());
    }
}
