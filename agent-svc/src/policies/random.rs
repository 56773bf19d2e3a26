//! Uniform random recommendations: the floor every other policy must beat.

use protocol::StateMsg;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Feedback, Policy};

/// Picks every product with the same probability.
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn act(&mut self, states: &[&StateMsg], rng: &mut ChaCha8Rng) -> Vec<(u32, f64)> {
        states
            .iter()
            .map(|s| {
                let n = s.n_actions.max(1);
                (rng.random_range(0..n), 1.0 / f64::from(n))
            })
            .collect()
    }

    fn learn(&mut self, _feedback: &Feedback<'_>) {}
}
