//! `RandomAgent` of `recogym/agents/random_agent.py`, which is also what `generate_logs` logs with
//! when no agent is given (`AbstractEnv.step_offline`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::agent::{Action, Agent, Context};
use crate::config::Config;
use crate::rng::{self, Domain};
use crate::user::OrganicView;

/// Recommends a product uniformly at random: `ps = 1/P`, `ps_all` uniform when asked.
#[derive(Debug, Clone)]
pub struct RandomAgent {
    num_products: u32,
    seed: u64,
    with_ps_all: bool,
    rng: ChaCha8Rng,
}

impl RandomAgent {
    /// A random agent over `num_products` products; its stream for user `u` is derived from
    /// `(seed, u)`.
    pub fn new(num_products: u32, seed: u64, with_ps_all: bool) -> RandomAgent {
        RandomAgent { num_products, seed, with_ps_all, rng: rng::stream(seed, Domain::RandomAgent, 0) }
    }

    /// The agent RecoGym builds from the environment's arguments (`num_products`, `random_seed`,
    /// `with_ps_all`), and RecoGym's default logging policy.
    pub fn from_config(config: &Config) -> RandomAgent {
        RandomAgent::new(config.num_products, config.random_seed, config.with_ps_all)
    }
}

impl Agent for RandomAgent {
    fn reset_user(&mut self, user_id: u64) {
        self.rng = rng::stream(self.seed, Domain::RandomAgent, user_id);
    }

    fn act(&mut self, _organic: &[OrganicView], _ctx: &Context) -> Action {
        let p = self.num_products;
        Action {
            product: self.rng.random_range(0..p),
            ps: 1.0 / f64::from(p),
            ps_all: self.with_ps_all.then(|| vec![1.0 / f64::from(p); p as usize]),
        }
    }
}
