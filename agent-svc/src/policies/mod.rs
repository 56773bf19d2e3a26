//! Policies: how the agent picks a product for a state, and what it learns from rewards.
//! A policy sees only what arrives on the state topic: it never reads the dataset.

mod cooccurrence;
pub mod dqn;
mod popularity;
mod random;

pub use cooccurrence::Cooccurrence;
pub use dqn::{Dqn, DqnArgs};
pub use popularity::Popularity;
pub use random::Random;

use protocol::StateMsg;
use rand_chacha::ChaCha8Rng;

/// Which policy to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    /// Uniform over the action space.
    Random,
    /// The product rewarded most often so far (ties: the product seen most often in states),
    /// epsilon-greedy.
    Popularity,
    /// The product that most often followed the current one in the stream (item-to-item),
    /// epsilon-greedy.
    Cooccurrence,
    /// Deep Q-Network over the state's text on libtorch (the reference paper's agent), with
    /// its own epsilon schedule (`--dqn-*` flags; `--epsilon` does not apply).
    Dqn,
}

/// What the agent learns after an action: the reward it earned and where it led.
#[derive(Debug, Clone, Copy)]
pub struct Feedback<'a> {
    /// The state the action answered.
    pub prev: &'a StateMsg,
    /// Product index of `prev` (shorthand for `prev.observation.index`).
    pub prev_index: u32,
    /// The action taken.
    pub action: u32,
    /// The reward the env paid for it.
    pub reward: f64,
    /// The state the action led to.
    pub next: &'a StateMsg,
}

/// A recommendation policy.
pub trait Policy: Send {
    /// Name carried in every action.
    fn name(&self) -> &'static str;
    /// Chooses an action and its probability under the policy for each state, all at once (a
    /// learned policy batches them through one forward pass).
    fn act(&mut self, states: &[&StateMsg], rng: &mut ChaCha8Rng) -> Vec<(u32, f64)>;
    /// Learns from one transition (`next.terminated` ends bootstrapping; `next.truncated` does not).
    fn learn(&mut self, feedback: &Feedback<'_>);
    /// The `k` best products for each state, best first, without exploration: for evaluation
    /// (HR@k, NDCG@k) and greedy play.
    fn top_k(&mut self, states: &[&StateMsg], k: usize) -> Vec<Vec<u32>>;
    /// Evaluation mode: no exploration and no learning (`true`), or back to training.
    fn set_eval(&mut self, _eval: bool) {}
    /// Writes the policy's state to its checkpoint (atomically), e.g. on shutdown.
    fn save(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Notes a state (every state, terminal ones too), before `act`.
    fn observe(&mut self, _state: &StateMsg) {}
    /// Version of the model that chooses actions, for learned policies.
    fn model_version(&self) -> Option<u64> {
        None
    }
}

/// Builds a policy; `dqn` and `seed` configure the DQN (which fails on bad flags or a
/// checkpoint of another network).
pub fn build(kind: PolicyKind, epsilon: f64, dqn: &DqnArgs, seed: u64) -> anyhow::Result<Box<dyn Policy>> {
    Ok(match kind {
        PolicyKind::Random => Box::new(Random),
        PolicyKind::Popularity => Box::new(Popularity::new(epsilon)),
        PolicyKind::Cooccurrence => Box::new(Cooccurrence::new(epsilon)),
        PolicyKind::Dqn => Box::new(Dqn::new(dqn, seed)?),
    })
}
