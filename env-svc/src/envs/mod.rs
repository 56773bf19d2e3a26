//! Environments, one module each. An environment is pure: it turns actions into transitions and
//! knows nothing of transports. The engine (`crate::engine`) runs any [`Environment`]: it owns
//! the episodes in flight, the verdicts on incoming actions, re-sends and accounting; an
//! environment only starts episodes and steps them.
//!
//! A new environment is a module here (its [`Environment`], its engine builder and its `play`),
//! one arm in [`play`], its flags flattened into `crate::config::RunArgs`, and its messages
//! and [`protocol::topics::EnvSpec`] in `protocol`.

pub mod fashion;
pub mod recogym;

use common::kafka::EnvKind;
use protocol::{Message, StepState};
use tokio_util::sync::CancellationToken;

/// `env-svc run`: builds the environment `--env` names and plays its episodes through Kafka.
/// The one list of environments on the env side.
pub(crate) async fn play(
    cfg: &crate::config::RunArgs,
    run_id: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<crate::metrics::Summary> {
    match cfg.stack.env {
        EnvKind::Fashion => fashion::play(cfg, run_id, shutdown).await,
        EnvKind::Recogym => recogym::play(cfg, run_id, shutdown).await,
    }
}

/// Outcome of one action.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transition {
    /// The reward paid for the action (fashion: 1.0 when the product is among the user's later
    /// ones; RecoGym: 1.0 on a click).
    pub reward: f64,
    /// The action is exactly the user's next product (fashion; always false in RecoGym).
    pub next_item_hit: bool,
    /// The episode reached its natural end.
    pub terminated: bool,
    /// A step limit cut the episode before its natural end (never together with `terminated`).
    pub truncated: bool,
    /// The reward a uniformly random action would have earned here, in expectation, when the
    /// environment knows it (fashion: the share of the catalogue the user reviews later): the
    /// baseline the summary and the progress lines compare the policy with.
    pub random_reward: Option<f64>,
}

/// The identity every state message of an episode carries.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Environment and run, e.g. `fashion-v1/3f2a9c`.
    pub env_id: &'a str,
    /// The episode, and the Kafka key of its messages.
    pub episode_id: &'a str,
}

/// What the engine needs of an environment.
///
/// Contract: `start` is called with `seq = 0, 1, 2, ...` until it returns `None`; `step` is
/// called only on an episode whose last state was neither terminated nor truncated, with an
/// action in `0..n_actions()`. A first state may already be terminal (an episode without any
/// step, e.g. a RecoGym user who leaves before any recommendation): it is published and the
/// episode ends there.
pub trait Environment: Send {
    /// The state message this environment publishes.
    type State: StepState + Message + Clone + Send + Sync + 'static;
    /// One episode in flight.
    type Episode: Send;
    /// Name in run ids and summaries, e.g. `fashion-v1`.
    fn name(&self) -> &'static str;
    /// Size of the action space.
    fn n_actions(&self) -> u32;
    /// Starts the run's `seq`-th episode; returns it with its first state, or `None` when the
    /// run has no more episodes.
    fn start(&mut self, seq: usize, head: Head<'_>) -> Option<(Self::Episode, Self::State)>;
    /// Applies `action` to `episode`; returns the next state and the transition.
    fn step(&mut self, episode: &mut Self::Episode, action: u32, head: Head<'_>) -> (Self::State, Transition);
    /// What the summary calls the episodes of this run, e.g. `train` or `users 0..5000`.
    fn label(&self) -> String;
}
