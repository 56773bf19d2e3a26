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

    fn act(&mut self, states: &[&StateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
        Ok(states
            .iter()
            .map(|s| {
                let n = s.n_actions.max(1);
                (rng.random_range(0..n), 1.0 / f64::from(n))
            })
            .collect())
    }

    fn learn(&mut self, _feedback: &Feedback<'_>) -> anyhow::Result<()> {
        Ok(())
    }

    /// `k` distinct products drawn uniformly, seeded by the episode and step so that an
    /// evaluation is reproducible.
    fn top_k(&mut self, states: &[&StateMsg], k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
        use rand_chacha::rand_core::SeedableRng;
        Ok(states
            .iter()
            .map(|s| {
                let seed = s.episode_id.bytes().fold(u64::from(s.step), |h, b| h.rotate_left(5) ^ u64::from(b));
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let n = s.n_actions.max(1) as usize;
                rand::seq::index::sample(&mut rng, n, k.min(n)).into_iter().map(|i| i as u32).collect()
            })
            .collect())
    }
}
