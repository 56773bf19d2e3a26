//! `OrganicUserEventCounterAgent` of `recogym/agents/organic_user_count.py` (without its optional
//! `weight_history_function`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::agent::{one_hot, Action, Agent, Context};
use crate::config::Config;
use crate::rng::{self, Domain};
use crate::user::OrganicView;

/// Recommends from the current user's own organic view counts (per user, reset at each user).
///
/// With the Python defaults (`select_randomly`, `exploit_explore`, `epsilon = 0`) it draws a
/// product with probability proportional to how often this user viewed it. With
/// `select_randomly = false` it recommends the user's most viewed product (lowest id among ties),
/// `ps = 1`. See the field docs for the other switches.
#[derive(Debug, Clone)]
pub struct OrganicUserCountAgent {
    num_products: u32,
    seed: u64,
    with_ps_all: bool,
    /// Draw the action from the view distribution (`true`) or take its argmax.
    pub select_randomly: bool,
    /// Exploration probability (`exploit_explore`) or additive smoothing (otherwise).
    pub epsilon: f64,
    /// With probability `epsilon`, explore: spread the choice uniformly over the products the user
    /// has not viewed; `ps` is then `epsilon * proba[a]`, else `(1 - epsilon) * proba[a]`.
    pub exploit_explore: bool,
    /// Without `exploit_explore`: favour the least viewed products (`1 - proba`, renormalised).
    pub reverse_pop: bool,
    views: Vec<f64>,
    proba: Vec<f64>,
    rng: ChaCha8Rng,
}

impl OrganicUserCountAgent {
    /// The agent with `organic_user_count_args`' defaults.
    pub fn new(num_products: u32, seed: u64, with_ps_all: bool) -> OrganicUserCountAgent {
        OrganicUserCountAgent {
            num_products,
            seed,
            with_ps_all,
            select_randomly: true,
            epsilon: 0.0,
            exploit_explore: true,
            reverse_pop: false,
            views: vec![0.0; num_products as usize],
            proba: vec![0.0; num_products as usize],
            rng: rng::stream(seed, Domain::OrganicUserCountAgent, 0),
        }
    }

    /// The agent RecoGym builds from the environment's arguments and the agent's defaults.
    pub fn from_config(config: &Config) -> OrganicUserCountAgent {
        OrganicUserCountAgent::new(config.num_products, config.random_seed, config.with_ps_all)
    }

    /// `features / sum(features)`, or uniform where Python would divide by zero (no usable view).
    fn normalise(&mut self) {
        let total: f64 = self.proba.iter().sum();
        if total > 0.0 && total.is_finite() {
            self.proba.iter_mut().for_each(|p| *p /= total);
        } else {
            let uniform = 1.0 / self.proba.len() as f64;
            self.proba.iter_mut().for_each(|p| *p = uniform);
        }
    }

    fn draw(&mut self) -> u32 {
        let mut target = self.rng.random::<f64>();
        for (product, &p) in self.proba.iter().enumerate() {
            if target < p {
                return product as u32;
            }
            target -= p;
        }
        self.proba.iter().rposition(|&p| p > 0.0).unwrap_or(0) as u32
    }
}

impl Agent for OrganicUserCountAgent {
    fn reset_user(&mut self, user_id: u64) {
        self.views.iter_mut().for_each(|v| *v = 0.0);
        self.rng = rng::stream(self.seed, Domain::OrganicUserCountAgent, user_id);
    }

    fn act(&mut self, organic: &[OrganicView], _ctx: &Context) -> Action {
        for view in organic {
            if let Some(count) = self.views.get_mut(view.product as usize) {
                *count += 1.0;
            }
        }
        let mut explore = false;
        if self.exploit_explore {
            // Python draws `rng.choice([True, False], p=[epsilon, 1 - epsilon])` at every act.
            explore = self.rng.random::<f64>() < self.epsilon;
            for (p, &v) in self.proba.iter_mut().zip(&self.views) {
                *p = if explore { f64::from(u8::from(v == 0.0)) } else { v };
            }
            self.normalise();
        } else {
            for (p, &v) in self.proba.iter_mut().zip(&self.views) {
                *p = self.epsilon + v;
            }
            self.normalise();
            if self.reverse_pop {
                self.proba.iter_mut().for_each(|p| *p = 1.0 - *p);
                self.normalise();
            }
        }
        if self.select_randomly {
            let product = self.draw();
            let p = self.proba[product as usize];
            let ps = match (self.exploit_explore, explore) {
                (true, true) => self.epsilon * p,
                (true, false) => (1.0 - self.epsilon) * p,
                (false, _) => p,
            };
            Action { product, ps, ps_all: self.with_ps_all.then(|| self.proba.clone()) }
        } else {
            let mut product = 0;
            for (i, &p) in self.proba.iter().enumerate() {
                if p > self.proba[product] {
                    product = i;
                }
            }
            let product = product as u32;
            Action { product, ps: 1.0, ps_all: one_hot(self.with_ps_all, self.num_products, product) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(products: &[u32]) -> Vec<OrganicView> {
        products.iter().enumerate().map(|(t, &product)| OrganicView { time: t as u64, product }).collect()
    }

    #[test]
    fn argmax_mode_picks_the_users_most_viewed_product() {
        let mut agent = OrganicUserCountAgent::new(6, 1, false);
        agent.select_randomly = false;
        agent.reset_user(3);
        let ctx = Context { user_id: 3, time: 0, last_click: None };
        assert_eq!(agent.act(&views(&[5, 2, 5, 2, 1]), &ctx).product, 2);
        assert_eq!(agent.act(&views(&[5]), &ctx).product, 5);
        agent.reset_user(4);
        assert_eq!(agent.act(&views(&[1]), &ctx).product, 1);
    }

    #[test]
    fn random_mode_draws_in_proportion_to_views() {
        let mut agent = OrganicUserCountAgent::new(4, 1, true);
        agent.reset_user(0);
        let ctx = Context { user_id: 0, time: 0, last_click: None };
        let first = agent.act(&views(&[1, 3, 3, 3]), &ctx);
        assert_eq!(first.ps_all, Some(vec![0.0, 0.25, 0.0, 0.75]));
        let mut hits = [0u32; 4];
        for _ in 0..4000 {
            let action = agent.act(&[], &ctx);
            assert_eq!(action.ps, if action.product == 1 { 0.25 } else { 0.75 });
            hits[action.product as usize] += 1;
        }
        assert_eq!(hits[0] + hits[2], 0);
        assert!((f64::from(hits[3]) / 4000.0 - 0.75).abs() < 0.03, "{hits:?}");
    }
}
