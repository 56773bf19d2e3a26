//! `OrganicCount` of `recogym/agents/organic_count.py`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::agent::{one_hot, Action, Agent, Context};
use crate::config::Config;
use crate::log::Log;
use crate::user::OrganicView;

/// Recommends the product most often co-viewed with the user's last organic view.
///
/// As in Python, the counts are global, learnt only in `train`: for every organic session (the
/// views of one observation) with per-product view counts `B`, `co_counts += B Bᵀ`, so the
/// diagonal counts squared views. `act` remembers the last product the user viewed (kept across
/// observations without views) and recommends `argmax co_counts[last, :]`, the lowest product id
/// among ties, hence product 0 for a row never seen in training; `ps = 1`, `ps_all` one-hot.
/// Nothing is learnt while acting.
#[derive(Debug, Clone)]
pub struct OrganicCountAgent {
    num_products: u32,
    with_ps_all: bool,
    /// Sparse rows of `co_counts` (absent entries are 0), shared between clones.
    co_counts: Arc<Vec<HashMap<u32, u64>>>,
    /// `argmax` of each row, recomputed after training (act is then O(1)).
    best: Arc<Vec<u32>>,
    last_product_viewed: Option<u32>,
}

impl OrganicCountAgent {
    /// An untrained agent over `num_products` products.
    pub fn new(num_products: u32, with_ps_all: bool) -> OrganicCountAgent {
        OrganicCountAgent {
            num_products,
            with_ps_all,
            co_counts: Arc::new(vec![HashMap::new(); num_products as usize]),
            best: Arc::new(vec![0; num_products as usize]),
            last_product_viewed: None,
        }
    }

    /// The agent RecoGym builds from the environment's arguments.
    pub fn from_config(config: &Config) -> OrganicCountAgent {
        OrganicCountAgent::new(config.num_products, config.with_ps_all)
    }

    /// `co_counts[row][col]`.
    pub fn co_count(&self, row: u32, col: u32) -> u64 {
        self.co_counts.get(row as usize).and_then(|r| r.get(&col)).copied().unwrap_or(0)
    }

    /// The product recommended after a view of `product`.
    pub fn recommendation_after(&self, product: u32) -> u32 {
        self.best.get(product as usize).copied().unwrap_or(0)
    }
}

impl Agent for OrganicCountAgent {
    fn reset_user(&mut self, _user_id: u64) {
        self.last_product_viewed = None;
    }

    fn act(&mut self, organic: &[OrganicView], _ctx: &Context) -> Action {
        if let Some(view) = organic.last() {
            self.last_product_viewed = Some(view.product);
        }
        let product = self.last_product_viewed.map_or(0, |last| self.recommendation_after(last));
        Action { product, ps: 1.0, ps_all: one_hot(self.with_ps_all, self.num_products, product) }
    }

    fn train(&mut self, log: &Log) {
        let co_counts = Arc::make_mut(&mut self.co_counts);
        let mut counts: Vec<(u32, u64)> = Vec::new();
        for session in log.organic_sessions() {
            counts.clear();
            let mut views: Vec<u32> =
                session.iter().filter_map(|row| row.v).filter(|&v| v < self.num_products).collect();
            views.sort_unstable();
            for group in views.chunk_by(|a, b| a == b) {
                counts.push((group[0], group.len() as u64));
            }
            for &(i, bi) in &counts {
                let row = &mut co_counts[i as usize];
                for &(j, bj) in &counts {
                    *row.entry(j).or_insert(0) += bi * bj;
                }
            }
        }
        let best = co_counts
            .iter()
            .map(|row| {
                // Lowest column among the maxima; an empty row is all zeros, whose argmax is 0.
                row.iter()
                    .fold(
                        (0u32, 0u64),
                        |(bc, bv), (&c, &v)| if v > bv || (v == bv && c < bc) { (c, v) } else { (bc, bv) },
                    )
                    .0
            })
            .collect();
        self.best = Arc::new(best);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Event, LogRow};

    fn organic(u: u64, t: u64, v: u32) -> LogRow {
        LogRow { t, u, z: Event::Organic, v: Some(v), a: None, c: None, ps: None, ps_all: None }
    }

    fn bandit(u: u64, t: u64) -> LogRow {
        LogRow { t, u, z: Event::Bandit, v: None, a: Some(0), c: Some(false), ps: Some(1.0), ps_all: None }
    }

    fn ctx() -> Context {
        Context { user_id: 0, time: 0, last_click: None }
    }

    /// Sessions [1, 2, 2], then [3], then (new user) [2, 3, 3, 3]: co_counts = Σ B Bᵀ.
    #[test]
    fn co_counts_follow_python_outer_products() {
        let log = Log {
            rows: vec![
                organic(0, 0, 1),
                organic(0, 1, 2),
                organic(0, 2, 2),
                bandit(0, 3),
                organic(0, 4, 3),
                bandit(0, 5),
                organic(1, 0, 2),
                organic(1, 1, 3),
                organic(1, 2, 3),
                organic(1, 3, 3),
                bandit(1, 4),
            ],
        };
        let mut agent = OrganicCountAgent::new(5, false);
        agent.train(&log);
        assert_eq!(agent.co_count(1, 1), 1);
        assert_eq!(agent.co_count(1, 2), 2);
        assert_eq!(agent.co_count(2, 2), 4 + 1);
        assert_eq!(agent.co_count(2, 3), 3);
        assert_eq!(agent.co_count(3, 3), 1 + 9);
        assert_eq!(agent.co_count(1, 3), 0);
        // Row 1: (1:1, 2:2) → 2. Row 2: (1:2, 2:5, 3:3) → 2. Row 3: (2:3, 3:10) → 3.
        assert_eq!(agent.recommendation_after(1), 2);
        assert_eq!(agent.recommendation_after(2), 2);
        assert_eq!(agent.recommendation_after(3), 3);
        // Unseen product: all-zero row, numpy argmax → 0.
        assert_eq!(agent.recommendation_after(4), 0);
    }

    #[test]
    fn acts_on_last_view_and_keeps_it_across_empty_observations() {
        let log = Log { rows: vec![organic(0, 0, 4), organic(0, 1, 1), organic(0, 2, 1)] };
        let mut agent = OrganicCountAgent::new(5, true);
        agent.train(&log);
        agent.reset_user(9);
        let views = [OrganicView { time: 0, product: 3 }, OrganicView { time: 1, product: 4 }];
        let action = agent.act(&views, &ctx());
        // Row 4: (4:1, 1:2) → 1.
        assert_eq!(action.product, 1);
        assert_eq!(action.ps, 1.0);
        assert_eq!(action.ps_all, Some(vec![0.0, 1.0, 0.0, 0.0, 0.0]));
        assert_eq!(agent.act(&[], &ctx()).product, 1);
    }

    #[test]
    fn ties_go_to_the_lowest_product() {
        let log = Log { rows: vec![organic(0, 0, 3), organic(0, 1, 2)] };
        let mut agent = OrganicCountAgent::new(4, false);
        agent.train(&log);
        assert_eq!(agent.recommendation_after(3), 2);
        assert_eq!(agent.recommendation_after(2), 2);
    }
}
