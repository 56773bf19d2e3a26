//! The agent's logic, free of I/O: turn a batch of states into actions, and feed the rewards
//! the states carry back to the policy.
//!
//! Invariant: each (episode, step) is learned from at most once, and a re-sent state is answered
//! with the action already chosen for it, so re-sends never skew learning or answers.

use std::collections::HashMap;

use protocol::{ActionMsg, StateMsg, StepState, SCHEMA_VERSION};
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use serde::Serialize;

use crate::policies::{Choice, Feedback, Policy};

/// What the agent did, for logs and its summary.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AgentStats {
    /// States received and decoded.
    pub states: u64,
    /// Actions produced (re-answers included).
    pub actions: u64,
    /// Re-sent states answered again with their earlier action.
    pub reanswered: u64,
    /// Transitions the policy learned from.
    pub learned: u64,
    /// Rewards earned by this replica's actions.
    pub reward_sum: f64,
    /// Terminal states (no answer expected).
    pub terminal: u64,
    /// States older than the age limit, skipped unanswered.
    pub skipped_old: u64,
    /// Re-delivered states of steps older than the episode's last answered one, skipped.
    pub redelivered_old: u64,
    /// Records that could not be decoded (dead-lettered).
    pub dead_letters: u64,
}

#[derive(Debug, Clone)]
struct Last<S> {
    step: u32,
    choice: Choice,
    prev: S,
    at_ms: i64,
}

/// The agent: a policy plus the memory of its last action per episode. `S` is the state
/// message of the environment it serves (`StateMsg` by default, `RecoStateMsg` for RecoGym).
pub struct AgentCore<S = StateMsg> {
    policy: Box<dyn Policy<S>>,
    rng: ChaCha8Rng,
    replica_id: String,
    max_state_age_ms: i64,
    last: HashMap<String, Last<S>>,
    /// Counters.
    pub stats: AgentStats,
}

impl<S> std::fmt::Debug for AgentCore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCore").field("policy", &self.policy.name()).field("replica_id", &self.replica_id).finish()
    }
}

/// Episodes remembered at most; older entries go first when the table is full.
const MAX_EPISODES: usize = 100_000;

impl<S: StepState + Clone> AgentCore<S> {
    /// An agent running `policy`, seeded, answering as `replica_id`; states older than
    /// `max_state_age_ms` (e.g. a backlog left by a dead run) are skipped.
    pub fn new(policy: Box<dyn Policy<S>>, seed: u64, replica_id: String, max_state_age_ms: i64) -> Self {
        Self {
            policy,
            rng: ChaCha8Rng::seed_from_u64(seed),
            replica_id,
            max_state_age_ms,
            last: HashMap::new(),
            stats: AgentStats::default(),
        }
    }

    /// The policy, e.g. to evaluate or checkpoint it after a run.
    pub fn policy_mut(&mut self) -> &mut dyn Policy<S> {
        self.policy.as_mut()
    }

    /// Gives up the agent and keeps its policy (e.g. to evaluate it after training).
    pub fn into_policy(self) -> Box<dyn Policy<S>> {
        self.policy
    }

    /// Name of the policy.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    /// Answers a batch of states: `Some(action)` per state that needs one, `None` for terminal
    /// or too old states.
    pub fn handle(&mut self, states: &[S], now_ms: i64) -> Vec<Option<ActionMsg>> {
        let mut out: Vec<Option<ActionMsg>> = vec![None; states.len()];
        let mut to_act = Vec::new();
        // Copies of one step within a batch (re-sends that queued up) share one choice.
        let mut queued: HashMap<(&str, u32), usize> = HashMap::new();
        let mut copies = Vec::new();
        for (i, state) in states.iter().enumerate() {
            self.stats.states += 1;
            if now_ms - state.ts_ms() > self.max_state_age_ms {
                self.stats.skipped_old += 1;
                continue;
            }
            let terminal = state.terminated() || state.truncated();
            if let Some(&first) = queued.get(&(state.episode_id(), state.step())) {
                if !terminal {
                    copies.push((i, first));
                }
                continue;
            }
            let last = self.last.get(state.episode_id());
            // A step older than the one last answered comes back after a rebalance or a broker
            // failover (re-read from the committed offset): the env has moved past it, so it is
            // neither answered again nor allowed to overwrite the newer memory.
            if last.is_some_and(|l| state.step() < l.step) {
                self.stats.redelivered_old += 1;
                continue;
            }
            if let Some(choice) = last.filter(|l| l.step == state.step()).map(|l| l.choice.clone()) {
                if !terminal {
                    self.stats.reanswered += 1;
                    out[i] = Some(self.action_msg(state, choice));
                }
                continue;
            }
            let last = last.filter(|l| l.step + 1 == state.step()).cloned();
            self.policy.observe(state);
            if let Some(l) = last {
                let prev_index = l.prev.product_index();
                self.policy.learn(&Feedback {
                    prev: &l.prev,
                    prev_index,
                    action: l.choice.action,
                    reward: state.reward(),
                    next: state,
                });
                self.stats.learned += 1;
                self.stats.reward_sum += state.reward();
            }
            if terminal {
                self.stats.terminal += 1;
                // Remembered as finished, so that re-delivered older steps stay unanswered.
                let choice = Choice { action: 0, ps: 0.0, ps_all: None };
                let done = Last { step: state.step(), choice, prev: state.clone(), at_ms: now_ms };
                self.last.insert(state.episode_id().to_string(), done);
            } else {
                queued.insert((state.episode_id(), state.step()), i);
                to_act.push(i);
            }
        }
        let refs: Vec<&S> = to_act.iter().map(|&i| &states[i]).collect();
        let choices = self.policy.act_full(&refs, &mut self.rng);
        for (&i, choice) in to_act.iter().zip(choices) {
            let state = &states[i];
            out[i] = Some(self.action_msg(state, choice.clone()));
            let last = Last { step: state.step(), choice, prev: state.clone(), at_ms: now_ms };
            self.last.insert(state.episode_id().to_string(), last);
        }
        for (i, first) in copies {
            self.stats.reanswered += 1;
            out[i] = out[first].clone();
        }
        self.stats.actions += out.iter().filter(|a| a.is_some()).count() as u64;
        self.prune(now_ms);
        out
    }

    fn action_msg(&self, state: &S, choice: Choice) -> ActionMsg {
        ActionMsg {
            schema_version: SCHEMA_VERSION,
            env_id: state.env_id().to_string(),
            episode_id: state.episode_id().to_string(),
            step: state.step(),
            action: choice.action,
            ps: choice.ps.clamp(0.0, 1.0),
            policy: self.policy.name().into(),
            replica_id: self.replica_id.clone(),
            model_version: self.policy.model_version(),
            ps_all: choice.ps_all.map(|all| all.into_iter().map(|p| p.clamp(0.0, 1.0)).collect()),
            ts_ms: common::kafka::now_ms(),
        }
    }

    /// Forgets the oldest episodes when too many are remembered (episodes abandoned by a dead
    /// env never send their terminal state).
    fn prune(&mut self, now_ms: i64) {
        if self.last.len() > MAX_EPISODES {
            let cutoff = now_ms - 600_000;
            self.last.retain(|_, l| l.at_ms >= cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::{Popularity, Random};
    use protocol::messages::examples;

    fn state(ep: &str, step: u32, index: u32, reward: f64) -> StateMsg {
        let mut s = examples::state();
        s.episode_id = ep.into();
        s.step = step;
        s.n_actions = 20;
        s.observation.index = index;
        s.reward = reward;
        s.ts_ms = 1_000;
        s
    }

    #[test]
    fn answers_live_states_and_not_terminal_or_old_ones() {
        let mut core = AgentCore::new(Box::new(Random), 1, "r0".into(), 60_000);
        let mut terminal = state("e1", 3, 1, 1.0);
        terminal.terminated = true;
        let mut old = state("e2", 0, 1, 0.0);
        old.ts_ms = -100_000;
        let out = core.handle(&[state("e0", 0, 4, 0.0), terminal, old], 2_000);
        let a = out[0].as_ref().unwrap_or_else(|| panic!("live state unanswered"));
        assert_eq!(
            (a.episode_id.as_str(), a.step, a.policy.as_str(), a.replica_id.as_str()),
            ("e0", 0, "random", "r0")
        );
        assert!(a.action < 20 && (a.ps - 0.05).abs() < 1e-12);
        assert!(out[1].is_none() && out[2].is_none());
        assert_eq!((core.stats.terminal, core.stats.skipped_old), (1, 1));
    }

    #[test]
    fn resent_state_gets_the_same_action_and_is_learned_once() {
        let mut core = AgentCore::new(Box::new(Popularity::new(0.0)), 1, "r0".into(), 60_000);
        let first = core.handle(&[state("e", 0, 4, 0.0)], 1_000)[0].clone();
        let mut resent = state("e", 0, 4, 0.0);
        resent.attempt = 1;
        let again = core.handle(&[resent], 1_000)[0].clone();
        assert_eq!(first.map(|a| a.action), again.map(|a| a.action));
        // Copies of one step in the same batch get one choice.
        let batch: Vec<StateMsg> = (0..20).map(|_| state("f", 0, 4, 0.0)).collect();
        let answers: Vec<u32> = core.handle(&batch, 1_000).into_iter().flatten().map(|a| a.action).collect();
        assert_eq!(answers.len(), 20);
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
        core.handle(&[state("e", 1, 5, 1.0)], 1_000);
        core.handle(&[state("e", 1, 5, 1.0)], 1_000);
        assert_eq!((core.stats.learned, core.stats.reanswered), (1, 21));
        // Step 0 of `e` re-delivered after step 1 was answered: skipped, memory kept.
        let old = core.handle(&[state("e", 0, 4, 0.0)], 1_000);
        assert!(old[0].is_none());
        assert_eq!(core.stats.redelivered_old, 1);
        let again = core.handle(&[state("e", 1, 5, 1.0)], 1_000)[0].clone();
        assert!(again.is_some(), "step 1 is still re-answered after the old copy");
        assert_eq!(core.stats.learned, 1);
        assert_eq!(core.stats.reward_sum, 1.0);
    }
}
