//! The values of `fashion_state` and `fashion_action`.
//!
//! Invariant: every message carries `schema_version`, `env_id`, `episode_id` and `step`, and its
//! Kafka key is `episode_id`, so all steps of one episode stay in order on one partition.
//! Field constraints written here (`length`, `range`) end up in the JSON Schema and are enforced
//! by [`crate::Codec`] before a message is produced.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version of the message layout; bumped on every change to the types in this module.
pub const SCHEMA_VERSION: u32 = 1;

/// Fields every message carries; lets transports and the archiver treat both topics alike.
pub trait Envelope {
    /// Identifies the environment (and its run) the episode belongs to.
    fn env_id(&self) -> &str;
    /// The episode, and the Kafka key of the message.
    fn episode_id(&self) -> &str;
    /// The step within the episode, from 0.
    fn step(&self) -> u32;
}

/// The product a user is looking at: the observation of the Amazon Fashion environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductObs {
    /// Amazon product id.
    #[schemars(length(min = 1, max = 64))]
    pub asin: String,
    /// Index of the product in the action space, `0..n_actions`.
    pub index: u32,
    /// Metadata text (sizes, colours, review keywords) the agent may tokenise.
    #[schemars(length(max = 8192))]
    pub text: String,
    /// Sizes offered, from the reviews' `style` field.
    #[serde(default)]
    pub sizes: Vec<String>,
    /// Colours offered, from the reviews' `style` field.
    #[serde(default)]
    pub colors: Vec<String>,
    /// Keywords extracted from the product's reviews.
    #[serde(default)]
    pub keywords: Vec<String>,
}

/// One step of an episode, published by `env-svc` to `fashion_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateMsg {
    /// Always [`SCHEMA_VERSION`] for messages written by this build.
    #[schemars(range(min = 1))]
    pub schema_version: u32,
    /// Environment and run, e.g. `fashion-v1/3f2a`.
    #[schemars(length(min = 1, max = 128))]
    pub env_id: String,
    /// Episode id; also the Kafka key.
    #[schemars(length(min = 1, max = 128))]
    pub episode_id: String,
    /// Step within the episode, from 0.
    pub step: u32,
    /// The user whose review sequence this episode replays.
    #[schemars(length(min = 1, max = 128))]
    pub user_id: String,
    /// Size of the action space: actions are product indices `0..n_actions`.
    #[schemars(range(min = 1))]
    pub n_actions: u32,
    /// The current product.
    pub observation: ProductObs,
    /// Reward for the action answered to the previous step (0 at step 0).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub reward: f64,
    /// Whether the previous action was exactly the user's next product.
    pub next_item_hit: bool,
    /// The episode reached its natural end (the user's sequence is exhausted).
    pub terminated: bool,
    /// The episode was cut by the step limit; the agent may still bootstrap from this state.
    pub truncated: bool,
    /// How many times this step was re-published after an action timeout (0 on first send).
    #[serde(default)]
    pub attempt: u32,
    /// Milliseconds since the Unix epoch when the env produced the message.
    pub ts_ms: i64,
}

/// The agent's answer to a step, published by `agent-svc` to `fashion_action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionMsg {
    /// Always [`SCHEMA_VERSION`] for messages written by this build.
    #[schemars(range(min = 1))]
    pub schema_version: u32,
    /// Copied from the state answered.
    #[schemars(length(min = 1, max = 128))]
    pub env_id: String,
    /// Copied from the state answered; also the Kafka key.
    #[schemars(length(min = 1, max = 128))]
    pub episode_id: String,
    /// The step answered.
    pub step: u32,
    /// The recommended product index, `0..n_actions` of the state answered.
    pub action: u32,
    /// Probability the policy gave this action (propensity), for off-policy evaluation.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ps: f64,
    /// Name of the policy that chose the action, e.g. `random`, `dqn`.
    #[schemars(length(min = 1, max = 64))]
    pub policy: String,
    /// Which agent replica answered.
    #[schemars(length(min = 1, max = 128))]
    pub replica_id: String,
    /// Version of the model that chose the action, for learned policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<u64>,
    /// Milliseconds since the Unix epoch when the agent produced the message.
    pub ts_ms: i64,
}

macro_rules! impl_envelope {
    ($($t:ty),*) => {$(
        impl Envelope for $t {
            fn env_id(&self) -> &str { &self.env_id }
            fn episode_id(&self) -> &str { &self.episode_id }
            fn step(&self) -> u32 { self.step }
        }
    )*};
}
impl_envelope!(StateMsg, ActionMsg);

/// Example messages for tests, docs and benchmarks; valid against their schemas.
pub mod examples {
    use super::*;

    /// A valid first step of an episode.
    pub fn state() -> StateMsg {
        StateMsg {
            schema_version: SCHEMA_VERSION,
            env_id: "fashion-v1/example".into(),
            episode_id: "ep-0001".into(),
            step: 0,
            user_id: "A1B2C3".into(),
            n_actions: 1024,
            observation: ProductObs {
                asin: "B00ABCDEF1".into(),
                index: 17,
                text: "size small medium color black dress fabric".into(),
                sizes: vec!["Small".into(), "Medium".into()],
                colors: vec!["Black".into()],
                keywords: vec!["dress".into(), "fabric".into()],
            },
            reward: 0.0,
            next_item_hit: false,
            terminated: false,
            truncated: false,
            attempt: 0,
            ts_ms: 1_700_000_000_000,
        }
    }

    /// A valid answer to [`state`].
    pub fn action() -> ActionMsg {
        ActionMsg {
            schema_version: SCHEMA_VERSION,
            env_id: "fashion-v1/example".into(),
            episode_id: "ep-0001".into(),
            step: 0,
            action: 42,
            ps: 1.0 / 1024.0,
            policy: "random".into(),
            replica_id: "agent-0".into(),
            model_version: None,
            ts_ms: 1_700_000_000_005,
        }
    }
}
