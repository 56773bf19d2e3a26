//! The most-rewarded product so far, epsilon-greedy. Before any reward it recommends the product
//! seen most often in states, which on review data is already a strong guess.
//!
//! Invariant: `best` is always an argmax of (rewards, sightings) over the products seen so far,
//! maintained in O(1) per update because both counts only grow.

use protocol::StateMsg;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{epsilon_greedy, Feedback, Policy};

/// Counts rewards and sightings per product.
#[derive(Debug, Clone)]
pub struct Popularity {
    epsilon: f64,
    rewards: Vec<f64>,
    seen: Vec<u64>,
    best: Option<u32>,
    frozen: bool,
}

impl Popularity {
    /// A policy that explores uniformly with probability `epsilon`.
    pub fn new(epsilon: f64) -> Self {
        Self { epsilon: epsilon.clamp(0.0, 1.0), rewards: Vec::new(), seen: Vec::new(), best: None, frozen: false }
    }

    fn grow(&mut self, index: usize) {
        if index >= self.rewards.len() {
            self.rewards.resize(index + 1, 0.0);
            self.seen.resize(index + 1, 0);
        }
    }

    fn key(&self, i: u32) -> (f64, u64) {
        (self.rewards[i as usize], self.seen[i as usize])
    }

    fn promote(&mut self, i: u32) {
        let better = match self.best {
            None => true,
            Some(b) => self.key(i).partial_cmp(&self.key(b)).is_some_and(|o| o.is_gt()),
        };
        if better {
            self.best = Some(i);
        }
    }
}

impl Policy for Popularity {
    fn name(&self) -> &'static str {
        "popularity"
    }

    fn observe(&mut self, state: &StateMsg) -> anyhow::Result<()> {
        if self.frozen {
            return Ok(());
        }
        let i = state.observation.index;
        self.grow(i as usize);
        self.seen[i as usize] += 1;
        self.promote(i);
        Ok(())
    }

    fn act(&mut self, states: &[&StateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
        Ok(states
            .iter()
            .map(|s| {
                let n = s.n_actions.max(1);
                let epsilon = if self.frozen { 0.0 } else { self.epsilon };
                match self.best.filter(|b| *b < n) {
                    Some(best) => epsilon_greedy(best, n, epsilon, rng),
                    None => (rng.random_range(0..n), 1.0 / f64::from(n)),
                }
            })
            .collect())
    }

    fn top_k(&mut self, states: &[&StateMsg], k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
        // Rank once per batch: the order does not depend on the state.
        let mut order: Vec<u32> = (0..self.rewards.len() as u32).collect();
        order.sort_by(|&a, &b| {
            self.key(b).partial_cmp(&self.key(a)).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b))
        });
        Ok(states
            .iter()
            .map(|s| {
                let mut top: Vec<u32> = order.iter().copied().filter(|&i| i < s.n_actions).take(k).collect();
                // Fill with unseen products when fewer than k were ever seen.
                top.extend((0..s.n_actions).filter(|i| *i as usize >= self.rewards.len()).take(k - top.len()));
                top
            })
            .collect())
    }

    fn set_eval(&mut self, eval: bool) -> anyhow::Result<()> {
        self.frozen = eval;
        Ok(())
    }

    fn learn(&mut self, feedback: &Feedback<'_>) -> anyhow::Result<()> {
        if !self.frozen {
            self.grow(feedback.action as usize);
            self.rewards[feedback.action as usize] += feedback.reward;
            self.promote(feedback.action);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::messages::examples;
    use rand_chacha::rand_core::SeedableRng;

    fn state(index: u32) -> StateMsg {
        let mut s = examples::state();
        s.n_actions = 10;
        s.observation.index = index;
        s
    }

    #[test]
    fn greedy_choice_follows_rewards_over_sightings() -> anyhow::Result<()> {
        let mut p = Popularity::new(0.0);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..3 {
            p.observe(&state(2))?;
        }
        p.observe(&state(5))?;
        assert_eq!(p.act(&[&state(0)], &mut rng)?, vec![(2, 1.0)], "most seen before any reward");
        let next = state(1);
        p.learn(&Feedback { prev: &next, prev_index: 0, action: 5, reward: 1.0, next: &next })?;
        assert_eq!(p.act(&[&state(0)], &mut rng)?[0].0, 5, "a rewarded product beats a merely seen one");
        Ok(())
    }

    #[test]
    fn propensities_match_epsilon_greedy() -> anyhow::Result<()> {
        let mut p = Popularity::new(0.2);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        p.observe(&state(3))?;
        let s0 = state(0);
        let picks = p.act(&vec![&s0; 2000], &mut rng)?;
        let greedy = picks.iter().filter(|(a, _)| *a == 3).count() as f64 / 2000.0;
        assert!((greedy - 0.82).abs() < 0.04, "greedy share {greedy}");
        for (a, ps) in picks {
            let expected = if a == 3 { 0.82 } else { 0.02 };
            assert!((ps - expected).abs() < 1e-12);
        }
        Ok(())
    }
}
