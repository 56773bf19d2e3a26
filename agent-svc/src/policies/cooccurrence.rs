//! Item-to-item co-occurrence: recommend the product that most often followed the current one
//! in the stream (transitions observed between consecutive states of an episode), falling back
//! to the most-seen products. Epsilon-greedy like `popularity`.
//!
//! Invariant: it learns only from what the states show (product a followed product b), never
//! from the dataset, and not from its own actions.

use std::collections::HashMap;

use protocol::StateMsg;
use rand_chacha::ChaCha8Rng;

use super::{epsilon_greedy, Feedback, Policy};

/// Transition counts between products, and how often each product was seen.
#[derive(Debug, Clone)]
pub struct Cooccurrence {
    epsilon: f64,
    next: HashMap<u32, HashMap<u32, u32>>,
    seen: HashMap<u32, u64>,
    frozen: bool,
}

impl Cooccurrence {
    /// A policy that explores uniformly with probability `epsilon`.
    pub fn new(epsilon: f64) -> Self {
        Self { epsilon: epsilon.clamp(0.0, 1.0), next: HashMap::new(), seen: HashMap::new(), frozen: false }
    }

    /// Products ranked for `from`: followers by count, then the most-seen products.
    fn ranked(&self, from: u32, n: u32, k: usize) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::with_capacity(k);
        if let Some(row) = self.next.get(&from) {
            let mut followers: Vec<(u32, u32)> = row.iter().map(|(&j, &c)| (j, c)).filter(|(j, _)| *j < n).collect();
            followers.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            out.extend(followers.into_iter().map(|(j, _)| j).take(k));
        }
        if out.len() < k {
            let mut popular: Vec<(u32, u64)> =
                self.seen.iter().map(|(&j, &c)| (j, c)).filter(|(j, _)| *j < n).collect();
            popular.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            for (j, _) in popular {
                if out.len() >= k {
                    break;
                }
                if !out.contains(&j) {
                    out.push(j);
                }
            }
        }
        let mut j = 0;
        while out.len() < k.min(n as usize) {
            if !out.contains(&j) {
                out.push(j);
            }
            j += 1;
        }
        out
    }
}

impl Policy for Cooccurrence {
    fn name(&self) -> &'static str {
        "cooccurrence"
    }

    fn observe(&mut self, state: &StateMsg) -> anyhow::Result<()> {
        if !self.frozen {
            *self.seen.entry(state.observation.index).or_default() += 1;
        }
        Ok(())
    }

    fn act(&mut self, states: &[&StateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
        let epsilon = if self.frozen { 0.0 } else { self.epsilon };
        Ok(states
            .iter()
            .map(|s| {
                let n = s.n_actions.max(1);
                let best = self.ranked(s.observation.index, n, 1).first().copied().unwrap_or(0);
                epsilon_greedy(best, n, epsilon, rng)
            })
            .collect())
    }

    fn learn(&mut self, feedback: &Feedback<'_>) -> anyhow::Result<()> {
        if !self.frozen {
            let next = feedback.next.observation.index;
            *self.next.entry(feedback.prev_index).or_default().entry(next).or_default() += 1;
        }
        Ok(())
    }

    fn top_k(&mut self, states: &[&StateMsg], k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
        Ok(states.iter().map(|s| self.ranked(s.observation.index, s.n_actions.max(1), k)).collect())
    }

    fn set_eval(&mut self, eval: bool) -> anyhow::Result<()> {
        self.frozen = eval;
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
    fn recommends_the_most_frequent_follower_then_popular_products() -> anyhow::Result<()> {
        let mut p = Cooccurrence::new(0.0);
        let (s1, s2, s3, s4) = (state(1), state(2), state(3), state(4));
        for (a, b) in [(&s1, &s2), (&s1, &s2), (&s1, &s3), (&s4, &s3)] {
            p.observe(b)?;
            p.learn(&Feedback { prev: a, prev_index: a.observation.index, action: 0, reward: 0.0, next: b })?;
        }
        p.observe(&s3)?;
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(p.act(&[&s1], &mut rng)?, vec![(2, 1.0)]);
        assert_eq!(p.top_k(&[&s1], 3)?, vec![vec![2, 3, 0]]);
        // Unknown context: the most-seen products first.
        assert_eq!(p.top_k(&[&state(9)], 2)?, vec![vec![3, 2]]);
        p.set_eval(true)?;
        p.learn(&Feedback { prev: &s1, prev_index: 1, action: 0, reward: 0.0, next: &s4 })?;
        assert_eq!(p.top_k(&[&s1], 1)?, vec![vec![2]], "frozen in evaluation");
        Ok(())
    }
}
