//! The agent interface (`recogym/agents/abstract.py`'s `Agent`: `act`, `train`, `reset`), reduced
//! to what the port needs and kept object-safe.

use serde::{Deserialize, Serialize};

use crate::log::Log;
use crate::user::OrganicView;

/// A recommendation with its logging propensities (Python's action dict `a`, `ps`, `ps-a`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// The recommended product, in `0..num_products`.
    pub product: u32,
    /// Probability with which the agent picked `product`.
    pub ps: f64,
    /// Probability of every product, when the configuration asks for it (`with_ps_all`).
    pub ps_all: Option<Vec<f64>>,
}

/// What an agent knows at a bandit opportunity besides the organic views (Python's
/// `observation.context()` and the `reward` argument of `act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The user being served.
    pub user_id: u64,
    /// The user's clock at this opportunity.
    pub time: u64,
    /// The click outcome of this agent's previous action for this user; `None` at the user's first
    /// opportunity.
    pub last_click: Option<bool>,
}

/// A recommendation policy.
///
/// Contract, which makes parallel runs deterministic: after `reset_user(u)`, what the agent does
/// for user `u` depends only on `u`, the state `train` built, and what it is shown for `u`; every
/// per-user state (counters, last view, random stream) is reset there. Runners clone a trained
/// agent per worker thread, so trained state that is expensive to clone belongs behind an `Arc`.
pub trait Agent {
    /// Starts serving a new user (Python `reset`, which the env calls at every new user).
    fn reset_user(&mut self, user_id: u64);

    /// Picks a product at a bandit opportunity. `organic` holds the user's organic views since the
    /// previous opportunity (possibly none).
    fn act(&mut self, organic: &[OrganicView], ctx: &Context) -> Action;

    /// Learns from logged data (RecoGym's offline training phase). The default ignores it.
    fn train(&mut self, _log: &Log) {}
}

/// `ps_all` of a deterministic choice: 1 for `product`, 0 elsewhere (or `None` when not asked).
pub(crate) fn one_hot(with_ps_all: bool, num_products: u32, product: u32) -> Option<Vec<f64>> {
    with_ps_all.then(|| {
        let mut ps = vec![0.0; num_products as usize];
        ps[product as usize] = 1.0;
        ps
    })
}
