//! The run's counters and the summary env-svc prints at the end (text and JSON), and their
//! Prometheus mirror (`--metrics-addr`): the one place where an event of the run is counted.
//!
//! Invariant: `steps` counts accepted actions only, so `steps` equals the sum of episode lengths
//! whatever the transport re-delivered.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::envs::Transition;

/// Counters of one run.
#[derive(Debug)]
pub struct Metrics {
    /// Episodes played to their end.
    pub episodes: u64,
    /// Actions accepted (one per step).
    pub steps: u64,
    /// Sum of rewards.
    pub reward_sum: f64,
    /// Next-item hits.
    pub hits: u64,
    /// Sum of episode returns, and their count, for the mean.
    pub return_sum: f64,
    /// States published again after an action timeout.
    pub resends: u64,
    /// Actions for a step already answered.
    pub duplicates: u64,
    /// Actions for an episode already finished.
    pub stale: u64,
    /// Actions of another env or run.
    pub foreign: u64,
    /// Actions that can never apply (also dead-lettered).
    pub invalid: u64,
    /// Records written to the dead-letter topic (invalid actions and undecodable records).
    pub dead_letters: u64,
    /// Records that could not be decoded (bad framing, JSON or schema).
    pub decode_errors: u64,
    /// Publications that failed (each is re-sent within the episode's re-send budget).
    pub publish_errors: u64,
    /// Episodes that could not be played to their end (re-send budget spent).
    pub failed_episodes: u64,
    /// Returns per finished episode, in finishing order.
    pub returns: Vec<f64>,
    /// Episodes that ended at their first state, without a step (RecoGym users who left before
    /// any recommendation).
    pub zero_step_episodes: u64,
    /// Sum of what a uniformly random action would have earned, over the steps where the
    /// environment knows it.
    pub random_reward_sum: f64,
    /// The steps where the environment knows it.
    pub random_steps: u64,
    /// The last [`RECENT_STEPS`] steps: (reward, random's expected reward).
    recent: std::collections::VecDeque<(f64, Option<f64>)>,
    rtt_us: Histogram<u64>,
    /// The Prometheus series of the run, when metrics are on.
    prom: Option<Prom>,
}

/// The run's Prometheus series, labelled with its env id and the policy answering it (the
/// policy named by the accepted actions; a new set when it changes).
#[derive(Debug)]
struct Prom {
    env_id: String,
    policy: String,
    rtt: metrics::Histogram,
    ret: metrics::Histogram,
}

impl Prom {
    fn new(env_id: &str, policy: &str) -> Self {
        let labels = [("env_id", env_id.to_string()), ("policy", policy.to_string())];
        Self {
            env_id: env_id.to_string(),
            policy: policy.to_string(),
            rtt: metrics::histogram!("streamrec_env_step_round_trip_seconds", &labels),
            ret: metrics::histogram!("streamrec_env_episode_return", &labels),
        }
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [("env_id", self.env_id.clone()), ("policy", self.policy.clone())]
    }
}

/// Steps the progress lines average over.
pub const RECENT_STEPS: usize = 2_000;

impl Default for Metrics {
    fn default() -> Self {
        Self {
            episodes: 0,
            steps: 0,
            reward_sum: 0.0,
            hits: 0,
            return_sum: 0.0,
            resends: 0,
            duplicates: 0,
            stale: 0,
            foreign: 0,
            invalid: 0,
            dead_letters: 0,
            decode_errors: 0,
            publish_errors: 0,
            failed_episodes: 0,
            returns: Vec::new(),
            zero_step_episodes: 0,
            random_reward_sum: 0.0,
            random_steps: 0,
            recent: std::collections::VecDeque::with_capacity(RECENT_STEPS),
            rtt_us: rtt_histogram(),
            prom: None,
        }
    }
}

/// 1 µs .. 1 h with 3 significant digits.
#[allow(clippy::expect_used)] // constant, valid bounds: this cannot fail
fn rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Metrics {
    /// Mirrors the run into Prometheus from now on (when a recorder is installed).
    pub fn export_to_prometheus(&mut self, env_id: &str) {
        if common::metrics::enabled() {
            self.prom = Some(Prom::new(env_id, "unknown"));
        }
    }

    /// The policy that answered an accepted action: the label of the run's series.
    pub fn note_policy(&mut self, policy: &str) {
        if let Some(p) = self.prom.as_mut().filter(|p| p.policy != policy) {
            *p = Prom::new(&p.env_id, policy);
        }
    }

    /// Sets the Prometheus counters and gauges to the run's figures (`open`: episodes in
    /// flight). Called with the progress line, and at the end.
    pub fn export(&self, open: usize) {
        let Some(p) = &self.prom else { return };
        let labels = p.labels();
        let counters = [
            ("streamrec_env_steps_total", self.steps),
            ("streamrec_env_episodes_total", self.episodes),
            ("streamrec_env_failed_episodes_total", self.failed_episodes),
            ("streamrec_env_next_item_hits_total", self.hits),
            ("streamrec_env_resends_total", self.resends),
            ("streamrec_env_duplicate_actions_total", self.duplicates),
            ("streamrec_env_publish_errors_total", self.publish_errors),
        ];
        for (name, value) in counters {
            metrics::counter!(name, &labels).absolute(value);
        }
        // Dead letters by reason; actions ignored (neither applied nor dead-lettered) by reason.
        let reasons = [("invalid_action", self.invalid), ("undecodable", self.decode_errors)];
        for (reason, value) in reasons {
            metrics::counter!("streamrec_env_dead_letters_total", "env_id" => p.env_id.clone(), "reason" => reason)
                .absolute(value);
        }
        for (reason, value) in [("stale", self.stale), ("foreign", self.foreign)] {
            metrics::counter!("streamrec_env_ignored_actions_total", "env_id" => p.env_id.clone(), "reason" => reason)
                .absolute(value);
        }
        // Rewards are fractional (RecoGym clicks are 0/1, the replay's hits too, but a reward
        // model need not be): a gauge of the sum, its rate the reward per second.
        metrics::gauge!("streamrec_env_reward_sum", &labels).set(self.reward_sum);
        metrics::gauge!("streamrec_env_open_episodes", &labels).set(open as f64);
        if let Some((recent, _)) = self.recent_rates() {
            metrics::gauge!("streamrec_env_reward_rate_recent", &labels).set(recent);
        }
    }

    /// Records the time from (re-)publishing a step to accepting its action.
    pub fn record_rtt(&mut self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.rtt_us.record(us.min(self.rtt_us.high()));
        if let Some(p) = &self.prom {
            p.rtt.record(rtt.as_secs_f64());
        }
    }

    /// Records an accepted step.
    pub fn record_step(&mut self, t: &Transition) {
        self.steps += 1;
        self.reward_sum += t.reward;
        self.hits += u64::from(t.next_item_hit);
        if let Some(r) = t.random_reward {
            self.random_reward_sum += r;
            self.random_steps += 1;
        }
        if self.recent.len() == RECENT_STEPS {
            self.recent.pop_front();
        }
        self.recent.push_back((t.reward, t.random_reward));
    }

    /// Reward rate of the last [`RECENT_STEPS`] steps, and what a uniformly random policy would
    /// have earned on them (when the environment knows it for every one); none before a step.
    pub fn recent_rates(&self) -> Option<(f64, Option<f64>)> {
        let n = self.recent.len();
        if n == 0 {
            return None;
        }
        let rate = self.recent.iter().map(|(r, _)| r).sum::<f64>() / n as f64;
        let random: Option<f64> = self.recent.iter().map(|(_, r)| *r).sum();
        Some((rate, random.map(|sum| sum / n as f64)))
    }

    /// Records a finished episode.
    pub fn record_episode(&mut self, ret: f64, steps: u32) {
        if let Some(p) = &self.prom {
            p.ret.record(ret);
        }
        self.episodes += 1;
        self.zero_step_episodes += u64::from(steps == 0);
        self.return_sum += ret;
        self.returns.push(ret);
    }

    /// The summary of the run so far.
    pub fn summary(&self, head: SummaryHead, elapsed: Duration) -> Summary {
        let steps = self.steps.max(1) as f64;
        let ms = |q: f64| {
            if self.steps == 0 {
                0.0
            } else {
                self.rtt_us.value_at_quantile(q) as f64 / 1000.0
            }
        };
        Summary {
            head,
            episodes: self.episodes,
            steps: self.steps,
            mean_return: if self.episodes == 0 { 0.0 } else { self.return_sum / self.episodes as f64 },
            reward_sum: self.reward_sum,
            reward_rate: self.reward_sum / steps,
            random_reward_rate: (self.random_steps == self.steps && self.steps > 0)
                .then(|| self.random_reward_sum / steps),
            next_item_hit_rate: self.hits as f64 / steps,
            rtt_ms: Rtt { p50: ms(0.5), p99: ms(0.99), max: ms(1.0), mean: self.rtt_us.mean() / 1000.0 },
            resends: self.resends,
            duplicates: self.duplicates,
            stale: self.stale,
            foreign: self.foreign,
            invalid: self.invalid,
            dead_letters: self.dead_letters,
            decode_errors: self.decode_errors,
            publish_errors: self.publish_errors,
            failed_episodes: self.failed_episodes,
            failures: Vec::new(),
            elapsed_s: elapsed.as_secs_f64(),
            steps_per_s: self.steps as f64 / elapsed.as_secs_f64().max(1e-9),
            returns: self.returns.clone(),
        }
    }
}

/// What identifies a run in its summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryHead {
    /// Environment and run id.
    pub env_id: String,
    /// `kafka` or `memory`.
    pub transport: String,
    /// Users the episodes were drawn from: `train`, `test` or `all` (fashion), `users A..B`
    /// (RecoGym).
    pub split: String,
    /// The run stopped on a signal before every episode finished.
    pub interrupted: bool,
}

/// Step round trip, publication to accepted action, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rtt {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The end-of-run summary, written by `--summary-json` and printed as text.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Run identity.
    #[serde(flatten)]
    pub head: SummaryHead,
    /// Episodes finished.
    pub episodes: u64,
    /// Steps, i.e. actions accepted.
    pub steps: u64,
    /// Mean return per finished episode.
    pub mean_return: f64,
    /// Sum of the rewards paid (RecoGym: clicks).
    pub reward_sum: f64,
    /// Rewards per step (the paper's reward).
    pub reward_rate: f64,
    /// What a uniformly random policy would have earned per step on the same steps, in
    /// expectation (absent where the environment does not know it, e.g. RecoGym).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_reward_rate: Option<f64>,
    /// Actions that were exactly the user's next product, per step.
    pub next_item_hit_rate: f64,
    /// Step round trip.
    pub rtt_ms: Rtt,
    /// States re-published after an action timeout.
    pub resends: u64,
    /// Duplicate actions ignored.
    pub duplicates: u64,
    /// Actions for finished episodes ignored.
    pub stale: u64,
    /// Actions of other runs ignored.
    pub foreign: u64,
    /// Actions that could never apply.
    pub invalid: u64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Records that failed decoding.
    pub decode_errors: u64,
    /// Publications that failed (and were re-sent, within the re-send budget).
    pub publish_errors: u64,
    /// Episodes that failed: their re-send budget (`--max-resends`) was spent without an
    /// action or an acknowledged publication. A run with any is a failed run (non-zero exit).
    pub failed_episodes: u64,
    /// The first failed episodes, with the reason of each.
    pub failures: Vec<crate::engine::Failure>,
    /// Wall time of the run.
    pub elapsed_s: f64,
    /// Steps per second of wall time.
    pub steps_per_s: f64,
    /// Return of every finished episode, in finishing order.
    pub returns: Vec<f64>,
}

impl Summary {
    /// Fails when the run failed: an episode could not be played to its end. The error names
    /// how many and the first reasons.
    pub fn ensure_complete(&self) -> anyhow::Result<()> {
        if self.failed_episodes == 0 {
            return Ok(());
        }
        let first: Vec<String> = self
            .failures
            .iter()
            .take(3)
            .map(|f| format!("{} at step {}: {}", f.episode_id, f.step, f.reason))
            .collect();
        anyhow::bail!(
            "{} episode(s) of run {} failed ({} finished); first: {}",
            self.failed_episodes,
            self.head.env_id,
            self.episodes,
            first.join("; ")
        )
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "run {} over {} ({} users){}",
            self.head.env_id,
            self.head.transport,
            self.head.split,
            if self.head.interrupted { ", interrupted" } else { "" }
        )?;
        writeln!(f, "  episodes          {:>10}", self.episodes)?;
        writeln!(
            f,
            "  steps             {:>10}   {:.0} steps/s over {:.2} s",
            self.steps, self.steps_per_s, self.elapsed_s
        )?;
        writeln!(f, "  mean return       {:>10.3}", self.mean_return)?;
        match self.random_reward_rate {
            Some(random) if random > 0.0 => writeln!(
                f,
                "  reward rate       {:>10.4}   ({:.2}x a uniformly random policy on the same steps: {:.6})",
                self.reward_rate,
                self.reward_rate / random,
                random
            )?,
            _ => writeln!(f, "  reward rate       {:>10.4}", self.reward_rate)?,
        }
        writeln!(f, "  next-item hits    {:>10.4}", self.next_item_hit_rate)?;
        writeln!(
            f,
            "  step round trip   p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
            self.rtt_ms.p50, self.rtt_ms.p99, self.rtt_ms.max
        )?;
        if self.failed_episodes > 0 {
            writeln!(f, "  FAILED episodes   {:>10}   (re-send budget spent; see failures)", self.failed_episodes)?;
        }
        write!(
            f,
            "  re-sends {}   duplicates {}   stale {}   foreign {}   invalid {}   dead letters {}   decode errors {}",
            self.resends,
            self.duplicates,
            self.stale,
            self.foreign,
            self.invalid,
            self.dead_letters,
            self.decode_errors
        )
    }
}
