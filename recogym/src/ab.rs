//! In-process A/B test of one agent, the protocol of RecoGym's `test_agent` / `_collect_stats`
//! (`recogym/bench_agents.py`, called by `gather_agent_stats` in `evaluate_agent.py`):
//!
//! 1. train: `agent.train` on the first organic session of `num_organic_offline_users` users and
//!    on the full logs of `num_offline_users` users served by the uniform-random logging policy;
//! 2. evaluate: serve `num_online_users` further users with the trained agent (which no longer
//!    learns) and count every logged recommendation: impressions and clicks;
//! 3. report the posterior `Beta(clicks + 1, impressions - clicks + 1)`: its median as the CTR and
//!    its 2.5 % and 97.5 % quantiles as the 95 % interval (`beta.ppf(q, successes + 1,
//!    failures + 1)`).
//!
//! User ids: organic-only training users `0..K`, training users `K..K+M`, evaluation users
//! `K+M..K+M+N`. (Python restarts the evaluation ids at 0 but its shared RNG has moved on, so they
//! are new users; with per-user streams, new users need new ids.) Users run in parallel; the
//! result does not depend on the number of threads.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use statrs::distribution::{Beta, ContinuousCDF};

use crate::agent::{Action, Agent, Context};
use crate::agents::RandomAgent;
use crate::config::Config;
use crate::log::{generate_logs, generate_organic_logs, simulate_user, AgentPolicy, Policy, Record};
use crate::user::{OrganicView, UserSim};
use crate::world::World;

/// How many users each phase of the test has (`test_agent`'s arguments, same names and defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AbSettings {
    /// Users whose first organic session is given to `train` (K).
    pub num_organic_offline_users: u64,
    /// Users logged by the random policy and given to `train` (M).
    pub num_offline_users: u64,
    /// Users served by the trained agent and counted (N).
    pub num_online_users: u64,
    /// Count the recommendation Python logs after each user left (never a click; one per user),
    /// as RecoGym's CTR does. `false` counts only recommendations the user saw.
    pub count_final_impression: bool,
}

impl Default for AbSettings {
    fn default() -> Self {
        AbSettings {
            num_organic_offline_users: 100,
            num_offline_users: 1000,
            num_online_users: 100,
            count_final_impression: true,
        }
    }
}

/// Outcome of one agent's A/B test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbResult {
    /// Posterior median of the CTR (Python's `Q0_500`); close to `clicks / impressions`.
    pub ctr: f64,
    /// 2.5 % posterior quantile (`Q0_025`).
    pub lo: f64,
    /// 97.5 % posterior quantile (`Q0_975`).
    pub hi: f64,
    /// Evaluation users.
    pub users: u64,
    /// Recommendations counted.
    pub impressions: u64,
    /// Clicks among them.
    pub clicks: u64,
}

/// Runs the A/B protocol for the agent `make_agent` builds from the world's config.
pub fn run<A, F>(world: &World, settings: &AbSettings, make_agent: F) -> AbResult
where
    A: Agent + Clone + Send + Sync,
    F: FnOnce(&Config) -> A,
{
    let mut agent = make_agent(world.config());
    let organic_end = settings.num_organic_offline_users;
    let offline_end = organic_end + settings.num_offline_users;
    let mut log = generate_organic_logs(world, 0..organic_end);
    log.extend(generate_logs(world, organic_end..offline_end, &RandomAgent::from_config(world.config())));
    agent.train(&log);
    drop(log);
    evaluate(world, settings, offline_end, || AgentPolicy(agent.clone()))
}

/// The same test for the oracle, which shows each user the product with the highest click
/// probability at that moment (it reads the latent state, so it bounds what any agent can reach).
pub fn run_oracle(world: &World, settings: &AbSettings) -> AbResult {
    let first = settings.num_organic_offline_users + settings.num_offline_users;
    evaluate(world, settings, first, || Oracle)
}

/// The oracle policy of [`run_oracle`].
struct Oracle;

impl Policy for Oracle {
    fn start_user(&mut self, _user_id: u64) {}

    fn act(&mut self, world: &World, sim: &UserSim, _organic: &[OrganicView], _ctx: &Context) -> Action {
        Action { product: sim.oracle_best_product(world), ps: 1.0, ps_all: None }
    }
}

/// Serves users `first..first + num_online_users` with a policy per worker and counts.
fn evaluate<M, P>(world: &World, settings: &AbSettings, first: u64, make_policy: M) -> AbResult
where
    M: Fn() -> P + Sync + Send,
    P: Policy,
{
    let (impressions, clicks) = (first..first + settings.num_online_users)
        .into_par_iter()
        .map_init(&make_policy, |policy, user_id| {
            let (mut impressions, mut clicks) = (0u64, 0u64);
            simulate_user(world, user_id, policy, |record| {
                if let Record::Bandit { click, after_leaving, .. } = record {
                    if !after_leaving || settings.count_final_impression {
                        impressions += 1;
                        clicks += u64::from(click);
                    }
                }
            });
            (impressions, clicks)
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let (ctr, lo, hi) = beta_interval(clicks, impressions);
    AbResult { ctr, lo, hi, users: settings.num_online_users, impressions, clicks }
}

/// `(median, 2.5 %, 97.5 %)` quantiles of `Beta(clicks + 1, impressions - clicks + 1)`, the
/// posterior of a click rate under a uniform prior, as `scipy.stats.beta.ppf` in `test_agent`.
pub fn beta_interval(clicks: u64, impressions: u64) -> (f64, f64, f64) {
    let failures = impressions.saturating_sub(clicks);
    match Beta::new(clicks as f64 + 1.0, failures as f64 + 1.0) {
        Ok(beta) => (beta.inverse_cdf(0.5), beta.inverse_cdf(0.025), beta.inverse_cdf(0.975)),
        // Unreachable: both shapes are finite and at least 1.
        Err(_) => (f64::NAN, f64::NAN, f64::NAN),
    }
}
