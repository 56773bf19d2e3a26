//! The Amazon Fashion environment, as in the reference paper: an episode replays one user's
//! review sequence. The state is the product the user is at; the action is a product index;
//! the reward is 1 when the recommended product is one the user reviews later.
//!
//! Invariant: an episode over a sequence of `n` products has `min(n - 1, max_steps)` steps; its
//! last transition is `terminated` when the sequence is exhausted and `truncated` (never both)
//! when the step limit cut it first.

use crate::data::{Dataset, UserSeq};

/// Outcome of one action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// 1.0 when the action is among the user's later products, else 0.0.
    pub reward: f64,
    /// The action is exactly the user's next product.
    pub next_item_hit: bool,
    /// The user's sequence is exhausted: no later product exists.
    pub terminated: bool,
    /// The step limit was reached before the sequence ended.
    pub truncated: bool,
}

/// One user's episode.
#[derive(Debug, Clone)]
pub struct Episode {
    user: usize,
    pos: usize,
    step: u32,
    max_steps: u32,
    /// Sum of rewards so far.
    pub ret: f64,
    /// Next-item hits so far.
    pub hits: u32,
}

impl Episode {
    /// Starts an episode on `dataset.users[user]`, which must have at least two products.
    pub fn new(user: usize, max_steps: u32) -> Self {
        Self { user, pos: 0, step: 0, max_steps: max_steps.max(1), ret: 0.0, hits: 0 }
    }

    /// The user this episode replays.
    pub fn user<'d>(&self, dataset: &'d Dataset) -> &'d UserSeq {
        &dataset.users[self.user]
    }

    /// Index of the product the user is at.
    pub fn current(&self, dataset: &Dataset) -> u32 {
        self.user(dataset).items[self.pos]
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u32 {
        self.step
    }

    /// Applies an action and moves the user to their next product.
    pub fn step(&mut self, dataset: &Dataset, action: u32) -> Transition {
        let items = &self.user(dataset).items;
        let later = &items[self.pos + 1..];
        let reward = if later.contains(&action) { 1.0 } else { 0.0 };
        let next_item_hit = later.first() == Some(&action);
        self.pos += 1;
        self.step += 1;
        self.ret += reward;
        self.hits += u32::from(next_item_hit);
        let terminated = self.pos + 1 >= items.len();
        let truncated = !terminated && self.step >= self.max_steps;
        Transition { reward, next_item_hit, terminated, truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::dataset_with_users;

    #[test]
    fn reward_for_any_later_product_hit_only_for_the_next() {
        let ds = dataset_with_users(10, &[&[1, 2, 3, 4]]);
        let mut ep = Episode::new(0, 50);
        assert_eq!(ep.current(&ds), 1);
        let t = ep.step(&ds, 4);
        assert_eq!((t.reward, t.next_item_hit, t.terminated, t.truncated), (1.0, false, false, false));
        assert_eq!(ep.current(&ds), 2);
        let t = ep.step(&ds, 3);
        assert_eq!((t.reward, t.next_item_hit), (1.0, true));
        let t = ep.step(&ds, 1);
        assert_eq!((t.reward, t.terminated, t.truncated), (0.0, true, false), "1 is in the past, not later");
        assert_eq!((ep.ret, ep.hits, ep.step_count()), (2.0, 1, 3));
    }

    #[test]
    fn step_limit_truncates_and_never_also_terminates() {
        let ds = dataset_with_users(10, &[&[1, 2, 3, 4, 5], &[1, 2, 3]]);
        let mut ep = Episode::new(0, 2);
        assert!(!ep.step(&ds, 0).truncated);
        let t = ep.step(&ds, 0);
        assert!(t.truncated && !t.terminated);
        // A sequence that ends exactly at the limit terminates.
        let mut ep = Episode::new(1, 2);
        ep.step(&ds, 0);
        let t = ep.step(&ds, 0);
        assert!(t.terminated && !t.truncated);
    }
}
