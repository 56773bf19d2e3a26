//! Policies: how the agent picks a product for a state, and what it learns from rewards.
//! A policy sees only what arrives on the state topic: it never reads the dataset.

mod popularity;
mod random;

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
}

/// What the agent learns after an action: the reward it earned and where it led.
#[derive(Debug, Clone, Copy)]
pub struct Feedback<'a> {
    /// The state the action answered.
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
    /// Learns from one transition.
    fn learn(&mut self, feedback: &Feedback<'_>);
    /// Notes a state (every state, terminal ones too), before `act`.
    fn observe(&mut self, _state: &StateMsg) {}
    /// Version of the model that chooses actions, for learned policies.
    fn model_version(&self) -> Option<u64> {
        None
    }
}

/// Builds a policy.
pub fn build(kind: PolicyKind, epsilon: f64) -> Box<dyn Policy> {
    match kind {
        PolicyKind::Random => Box::new(Random),
        PolicyKind::Popularity => Box::new(Popularity::new(epsilon)),
    }
}
