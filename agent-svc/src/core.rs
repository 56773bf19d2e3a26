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
    /// Transitions whose state said the env applied another action than the one this replica
    /// remembers choosing (another replica answered that step first): learned with the action
    /// the env applied.
    pub applied_elsewhere: u64,
    /// Actions re-produced after a failed delivery.
    pub delivery_retries: u64,
    /// States whose action could not be delivered within the retry budget: dead-lettered.
    pub undeliverable: u64,
    /// Why the configured policy stopped serving, when `--policy-fallback` replaced it.
    pub fell_back: Option<String>,
    /// `--learning shared`: weights versions received whole and verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_received: Option<u64>,
    /// `--learning shared`: weights versions and records refused (checksum, truncation,
    /// another network); the replica kept serving what it had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights_rejected: Option<u64>,
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
    /// Serves instead of `policy` once it fails, when the user asked for it.
    fallback: Option<Box<dyn Policy<S>>>,
    rng: ChaCha8Rng,
    replica_id: String,
    max_state_age_ms: i64,
    last: HashMap<String, Last<S>>,
    /// Counters.
    pub stats: AgentStats,
    /// The Prometheus series, when metrics are on.
    prom: Option<Prom>,
}

/// The agent's Prometheus series, labelled with the policy answering and the replica; the
/// counters mirror [`AgentStats`], the one place where what the agent did is counted.
#[derive(Debug)]
struct Prom {
    policy: &'static str,
    batch: metrics::Histogram,
    inference: metrics::Histogram,
    /// When the counters and gauges were last set (every second at most: scrapes are 2 s apart).
    exported: std::time::Instant,
}

impl Prom {
    fn new(policy: &'static str, replica: &str) -> Self {
        let labels = Self::labels(policy, replica);
        Self {
            policy,
            batch: metrics::histogram!("streamrec_agent_batch_size", &labels),
            inference: metrics::histogram!("streamrec_agent_inference_seconds", &labels),
            exported: std::time::Instant::now(),
        }
    }

    fn labels(policy: &'static str, replica: &str) -> [(&'static str, String); 2] {
        [("policy", policy.to_string()), ("replica", replica.to_string())]
    }
}

impl<S> std::fmt::Debug for AgentCore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCore").field("policy", &self.policy.name()).field("replica_id", &self.replica_id).finish()
    }
}

/// How often the counters and gauges are copied into the Prometheus recorder.
const EXPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Episodes remembered at most; older entries go first when the table is full.
const MAX_EPISODES: usize = 100_000;

impl<S: StepState + Clone> AgentCore<S> {
    /// An agent running `policy`, seeded, answering as `replica_id`; states older than
    /// `max_state_age_ms` (e.g. a backlog left by a dead run) are skipped.
    pub fn new(policy: Box<dyn Policy<S>>, seed: u64, replica_id: String, max_state_age_ms: i64) -> Self {
        Self {
            policy,
            fallback: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            replica_id,
            max_state_age_ms,
            last: HashMap::new(),
            stats: AgentStats::default(),
            prom: None,
        }
    }

    /// Mirrors what the agent does into Prometheus from now on (when a recorder is installed).
    pub fn export_to_prometheus(&mut self) {
        if common::metrics::enabled() {
            self.prom = Some(Prom::new(self.policy.name(), &self.replica_id));
            self.export();
        }
    }

    /// Sets the counters and gauges to the agent's figures (done every second while it answers,
    /// and when it stops); `/readyz` learns of the model.
    pub fn export(&self) {
        let Some(p) = &self.prom else { return };
        let labels = Prom::labels(p.policy, &self.replica_id);
        let s = &self.stats;
        metrics::counter!("streamrec_agent_states_total", &labels).absolute(s.states);
        metrics::counter!("streamrec_agent_actions_total", &labels).absolute(s.actions);
        metrics::counter!("streamrec_agent_learned_total", &labels).absolute(s.learned);
        let undecodable = s.dead_letters - s.undeliverable.min(s.dead_letters);
        for (reason, n) in [("undecodable", undecodable), ("undeliverable", s.undeliverable)] {
            let labels = [("replica", self.replica_id.clone()), ("reason", reason.to_string())];
            metrics::counter!("streamrec_agent_dead_letters_total", &labels).absolute(n);
        }
        if let Some(v) = self.policy.model_version() {
            metrics::gauge!("streamrec_agent_model_version", &labels).set(v as f64);
        }
        if let Some(eps) = self.policy.epsilon() {
            metrics::gauge!("streamrec_agent_epsilon", &labels).set(eps);
        }
        if self.policy.has_model() {
            common::metrics::ready(common::metrics::Dependency::Model);
        }
    }

    /// Serves `fallback` in place of the policy once the policy fails (`--policy-fallback`);
    /// without one, a failing policy fails [`AgentCore::handle`].
    pub fn with_fallback(mut self, fallback: Box<dyn Policy<S>>) -> Self {
        self.fallback = Some(fallback);
        self
    }

    /// The policy failed: switch to the fallback when there is one (loudly, once), else fail.
    fn recover(&mut self, e: anyhow::Error) -> anyhow::Result<()> {
        let Some(fallback) = self.fallback.take() else {
            return Err(e.context(format!("policy {} failed", self.policy.name())));
        };
        let why = format!("{e:#}");
        tracing::error!(
            failed = self.policy.name(), serving = fallback.name(), error = %why,
            "policy failed; the fallback asked for by --policy-fallback serves from now on, under its own name"
        );
        self.stats.fell_back =
            Some(format!("{} failed: {why}; {} served instead", self.policy.name(), fallback.name()));
        self.policy = fallback;
        if self.prom.is_some() {
            self.prom = Some(Prom::new(self.policy.name(), &self.replica_id));
        }
        Ok(())
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
    /// or too old states. Fails when the policy fails and no fallback was asked for.
    pub fn handle(&mut self, states: &[S], now_ms: i64) -> anyhow::Result<Vec<Option<ActionMsg>>> {
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
            if let Err(e) = self.policy.observe(state) {
                self.recover(e)?;
            }
            if let Some(l) = last {
                // The reward is the one of the action the env applied: after a takeover or a
                // re-send race, another replica's answer may have been applied instead of ours.
                let action = state.last_action().unwrap_or(l.choice.action);
                if action != l.choice.action {
                    self.stats.applied_elsewhere += 1;
                }
                let feedback = Feedback {
                    prev: &l.prev,
                    prev_index: l.prev.product_index(),
                    action,
                    reward: state.reward(),
                    next: state,
                };
                if let Err(e) = self.policy.learn(&feedback) {
                    self.recover(e)?;
                }
                self.stats.learned += u64::from(self.policy.learns());
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
        let inference_started = std::time::Instant::now();
        let choices = match self.policy.act_full(&refs, &mut self.rng) {
            Ok(c) => c,
            Err(e) => {
                self.recover(e)?;
                self.policy.act_full(&refs, &mut self.rng)?
            }
        };
        anyhow::ensure!(
            choices.len() == refs.len(),
            "policy {} answered {} of {} states",
            self.policy.name(),
            choices.len(),
            refs.len()
        );
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
        if let Some(p) = self.prom.as_mut() {
            p.batch.record(states.len() as f64);
            if !refs.is_empty() {
                p.inference.record(inference_started.elapsed().as_secs_f64());
            }
            if p.exported.elapsed() >= EXPORT_EVERY {
                p.exported = std::time::Instant::now();
                self.export();
            }
        }
        self.prune(now_ms);
        Ok(out)
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
    use anyhow::Context;
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
    fn answers_live_states_and_not_terminal_or_old_ones() -> anyhow::Result<()> {
        let mut core = AgentCore::new(Box::new(Random), 1, "r0".into(), 60_000);
        let mut terminal = state("e1", 3, 1, 1.0);
        terminal.terminated = true;
        let mut old = state("e2", 0, 1, 0.0);
        old.ts_ms = -100_000;
        let out = core.handle(&[state("e0", 0, 4, 0.0), terminal, old], 2_000)?;
        let a = out[0].as_ref().unwrap_or_else(|| panic!("live state unanswered"));
        assert_eq!(
            (a.episode_id.as_str(), a.step, a.policy.as_str(), a.replica_id.as_str()),
            ("e0", 0, "random", "r0")
        );
        assert!(a.action < 20 && (a.ps - 0.05).abs() < 1e-12);
        assert!(out[1].is_none() && out[2].is_none());
        assert_eq!((core.stats.terminal, core.stats.skipped_old), (1, 1));
        Ok(())
    }

    #[test]
    fn resent_state_gets_the_same_action_and_is_learned_once() -> anyhow::Result<()> {
        let mut core = AgentCore::new(Box::new(Popularity::new(0.0)), 1, "r0".into(), 60_000);
        let first = core.handle(&[state("e", 0, 4, 0.0)], 1_000)?[0].clone();
        let mut resent = state("e", 0, 4, 0.0);
        resent.attempt = 1;
        let again = core.handle(&[resent], 1_000)?[0].clone();
        assert_eq!(first.map(|a| a.action), again.map(|a| a.action));
        // Copies of one step in the same batch get one choice.
        let batch: Vec<StateMsg> = (0..20).map(|_| state("f", 0, 4, 0.0)).collect();
        let answers: Vec<u32> = core.handle(&batch, 1_000)?.into_iter().flatten().map(|a| a.action).collect();
        assert_eq!(answers.len(), 20);
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
        core.handle(&[state("e", 1, 5, 1.0)], 1_000)?;
        core.handle(&[state("e", 1, 5, 1.0)], 1_000)?;
        assert_eq!((core.stats.learned, core.stats.reanswered), (1, 21));
        // Step 0 of `e` re-delivered after step 1 was answered: skipped, memory kept.
        let old = core.handle(&[state("e", 0, 4, 0.0)], 1_000)?;
        assert!(old[0].is_none());
        assert_eq!(core.stats.redelivered_old, 1);
        let again = core.handle(&[state("e", 1, 5, 1.0)], 1_000)?[0].clone();
        assert!(again.is_some(), "step 1 is still re-answered after the old copy");
        assert_eq!(core.stats.learned, 1);
        assert_eq!(core.stats.reward_sum, 1.0);
        Ok(())
    }

    /// Records what it is asked to learn; fails every call once `fail` is set.
    #[derive(Default)]
    struct Recorder {
        learned: std::sync::Arc<std::sync::Mutex<Vec<(u32, f64)>>>,
        fail: bool,
    }

    impl Policy for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn act(&mut self, states: &[&StateMsg], _rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
            anyhow::ensure!(!self.fail, "the network is gone");
            Ok(states.iter().map(|_| (3, 1.0)).collect())
        }
        fn learn(&mut self, fb: &Feedback<'_>) -> anyhow::Result<()> {
            self.learned.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((fb.action, fb.reward));
            Ok(())
        }
        fn top_k(&mut self, states: &[&StateMsg], _k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
            Ok(vec![Vec::new(); states.len()])
        }
    }

    #[test]
    fn the_reward_is_credited_to_the_action_the_env_applied() -> anyhow::Result<()> {
        let recorder = Recorder::default();
        let learned = recorder.learned.clone();
        let mut core = AgentCore::new(Box::new(recorder), 1, "r0".into(), 60_000);
        assert_eq!(core.handle(&[state("e", 0, 4, 0.0)], 1_000)?[0].as_ref().map(|a| a.action), Some(3));
        // Another replica's answer (7) was applied to step 0 before ours arrived.
        let mut next = state("e", 1, 5, 1.0);
        next.last_action = Some(7);
        core.handle(&[next], 1_000)?;
        // A state from an env that does not send `last_action`: our own answer is credited.
        let mut old_env = state("e", 2, 6, 0.0);
        old_env.last_action = None;
        core.handle(&[old_env], 1_000)?;
        assert_eq!(core.stats.applied_elsewhere, 1);
        let learned = learned.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        assert_eq!(learned, vec![(7, 1.0), (3, 0.0)], "step 0 credited to 7, step 1 to our own 3");
        Ok(())
    }

    #[test]
    fn a_failing_policy_fails_the_batch_unless_a_fallback_was_asked_for() -> anyhow::Result<()> {
        let broken = || Box::new(Recorder { fail: true, ..Recorder::default() });
        let mut core = AgentCore::new(broken(), 1, "r0".into(), 60_000);
        let e = core.handle(&[state("e", 0, 4, 0.0)], 1_000).err().context("a failing policy answered")?;
        assert!(format!("{e:#}").contains("policy recorder failed: the network is gone"), "{e:#}");

        let mut core = AgentCore::new(broken(), 1, "r0".into(), 60_000).with_fallback(Box::new(Random));
        let out = core.handle(&[state("e", 0, 4, 0.0)], 1_000)?;
        let a = out[0].as_ref().context("the fallback did not answer")?;
        assert_eq!(a.policy, "random", "actions carry the policy that really answered");
        let why = core.stats.fell_back.clone().context("the fallback is not reported")?;
        assert!(why.contains("recorder failed: the network is gone; random served instead"), "{why}");
        assert_eq!(core.policy_name(), "random");
        Ok(())
    }
}
