//! The values of the step topics: `fashion_state` ([`StateMsg`]) and `recogym_state`
//! ([`RecoStateMsg`]) for states, `fashion_action` and `recogym_action` ([`ActionMsg`], one type for
//! both environments) for actions.
//!
//! Invariant: every message carries `schema_version`, `env_id`, `episode_id` and `step`, and its
//! Kafka key is `episode_id`, so all steps of one episode stay in order on one partition.
//! Field constraints written here (`length`, `range`) end up in the JSON Schema and are enforced
//! by [`crate::Codec`] before a message is produced.
//!
//! The schemas are closed (`#[schemars(deny_unknown_fields)]`: `additionalProperties: false`), so
//! a producer cannot write a field the schema does not name; serde itself ignores unknown fields,
//! so a reader built before an optional field was added still reads records that carry it, once
//! they validated against their writer's schema ([`crate::writer`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Version of the message layout; bumped on every change to the types in this module (4: the
/// optional `accept_prob` of [`StateMsg`]; 3: its optional `last_action` and `catalog`; 2: the
/// optional `ps_all` of [`ActionMsg`]).
pub const SCHEMA_VERSION: u32 = 4;

/// Fields every message carries; lets transports and the archiver treat both topics alike.
pub trait Envelope {
    /// Identifies the environment (and its run) the episode belongs to.
    fn env_id(&self) -> &str;
    /// The episode, and the Kafka key of the message.
    fn episode_id(&self) -> &str;
    /// The step within the episode, from 0.
    fn step(&self) -> u32;
}

/// What the services need of a state message whatever its environment: the engine re-sends it,
/// the agent answers it, learns from the reward it carries and stops at its terminal flags.
pub trait StepState: Envelope {
    /// Size of the action space: actions are `0..n_actions`.
    fn n_actions(&self) -> u32;
    /// Reward of the action answered to the previous step (0 at step 0).
    fn reward(&self) -> f64;
    /// The episode reached its natural end.
    fn terminated(&self) -> bool;
    /// The episode was cut by a step limit.
    fn truncated(&self) -> bool;
    /// Milliseconds since the Unix epoch when the env produced (or re-sent) the message.
    fn ts_ms(&self) -> i64;
    /// Marks the message as re-published after an action timeout: one more attempt, new time.
    fn mark_resent(&mut self, ts_ms: i64);
    /// The product the state points at, for policies that key on it (fashion: the current
    /// product; RecoGym: the last organic view it carries, 0 when it carries none).
    fn product_index(&self) -> u32;
    /// The action the env applied at the previous step, which `reward` pays (None at step 0,
    /// and in fashion states written before the field existed).
    fn last_action(&self) -> Option<u32>;
}

/// The product a user is looking at: the observation of the Amazon Fashion environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
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

/// The name part of the env id (`<name>/<run>`) of fashion states whose user is replayed (the
/// paper's environment: recommendations never change what the user does next).
pub const FASHION_REPLAY_ENV: &str = "fashion-v1";
/// The name part of the env id of fashion states of the interactive user model, whose next
/// products depend on the recommendations (`env-svc --user-model interactive`).
pub const FASHION_INTERACTIVE_ENV: &str = "fashion-interactive-v1";

impl StateMsg {
    /// The environment's name: the env id before its `/`.
    pub fn env_name(&self) -> &str {
        self.env_id.split_once('/').map_or(self.env_id.as_str(), |(name, _)| name)
    }

    /// Whether the user's next products depend on the recommendations (the interactive user
    /// model), so that relabelling a step with the products seen later is unsound.
    pub fn steered(&self) -> bool {
        self.env_name() == FASHION_INTERACTIVE_ENV
    }
}

/// One step of an episode, published by `env-svc` to `fashion_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
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
    /// Fingerprint of the action space, so that an agent can tell two catalogues of the same
    /// size apart: hex xxh3-64 of the product ids joined in index order (16 lowercase hex
    /// digits); absent from states written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{16}$"))]
    pub catalog: Option<String>,
    /// The interactive user model's probability of accepting a recommended product the user
    /// reviews later (`env-svc --accept-prob`); absent under the replay model. Published so that
    /// an agent can learn soundly from the product the user went on to: recommending it would
    /// have earned `accept_prob` in expectation and led to this same state (docs/DQN.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub accept_prob: Option<f64>,
    /// The current product.
    pub observation: ProductObs,
    /// The action the env applied at the previous step, whose reward `reward` reports (None at
    /// step 0): lets an agent replica that takes over an episode credit the reward to the action
    /// the env really applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<u32>,
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

/// The agent's answer to a step, published by `agent-svc` to `fashion_action` or
/// `recogym_action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
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
    /// Probability the policy gave every action, `n_actions` values (RecoGym's `ps-a`); only
    /// when the state asked for it (`RecoStateMsg::ps_all`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(range(min = 0.0, max = 1.0)))]
    pub ps_all: Option<Vec<f64>>,
    /// Milliseconds since the Unix epoch when the agent produced the message.
    pub ts_ms: i64,
}

/// One organic page view of a RecoGym user: `product` viewed at the user's clock `t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct OrganicView {
    /// The user's clock when the view happened (one tick per transition of the user's chain).
    pub t: u64,
    /// The product viewed, `0..n_actions`.
    pub product: u32,
}

/// One bandit opportunity of a RecoGym user (`reco-gym-v1`), published by `env-svc` to
/// `recogym_state`. An episode is one user; step `t` is the user's `t`-th opportunity to be
/// shown a recommendation; the last state (terminated) says the user left and is not answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RecoStateMsg {
    /// Always [`SCHEMA_VERSION`] for messages written by this build.
    #[schemars(range(min = 1))]
    pub schema_version: u32,
    /// Environment and run, e.g. `reco-gym-v1/3f2a`.
    #[schemars(length(min = 1, max = 128))]
    pub env_id: String,
    /// Episode id; also the Kafka key.
    #[schemars(length(min = 1, max = 128))]
    pub episode_id: String,
    /// Step within the episode (bandit opportunities so far), from 0.
    pub step: u32,
    /// The simulated user (RecoGym's `u`); one user per episode.
    pub user_id: u64,
    /// Number of products: actions are product indices `0..n_actions`.
    #[schemars(range(min = 1))]
    pub n_actions: u32,
    /// The user's clock at this opportunity (the `t` of the recommendation that answers it).
    pub time: u64,
    /// The organic views since the previous opportunity (since the user arrived, at step 0), in
    /// time order; possibly none.
    #[schemars(length(max = 100000))]
    pub organic: Vec<OrganicView>,
    /// The action applied at the previous step, whose click `reward` reports (none at step 0).
    #[serde(default)]
    pub last_action: Option<u32>,
    /// 1 when the user clicked the previous recommendation, else 0 (0 at step 0).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub reward: f64,
    /// The user left: no action expected.
    pub terminated: bool,
    /// The episode was cut by the env's step limit.
    pub truncated: bool,
    /// Whether the answer must carry the probability of every action (`with_ps_all`).
    #[serde(default)]
    pub ps_all: bool,
    /// How many times this step was re-published after an action timeout (0 on first send).
    #[serde(default)]
    pub attempt: u32,
    /// Milliseconds since the Unix epoch when the env produced the message.
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
impl_envelope!(StateMsg, ActionMsg, RecoStateMsg);

impl StepState for StateMsg {
    fn n_actions(&self) -> u32 {
        self.n_actions
    }
    fn reward(&self) -> f64 {
        self.reward
    }
    fn terminated(&self) -> bool {
        self.terminated
    }
    fn truncated(&self) -> bool {
        self.truncated
    }
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn mark_resent(&mut self, ts_ms: i64) {
        self.attempt += 1;
        self.ts_ms = ts_ms;
    }
    fn product_index(&self) -> u32 {
        self.observation.index
    }
    fn last_action(&self) -> Option<u32> {
        self.last_action
    }
}

impl StepState for RecoStateMsg {
    fn n_actions(&self) -> u32 {
        self.n_actions
    }
    fn reward(&self) -> f64 {
        self.reward
    }
    fn terminated(&self) -> bool {
        self.terminated
    }
    fn truncated(&self) -> bool {
        self.truncated
    }
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn mark_resent(&mut self, ts_ms: i64) {
        self.attempt += 1;
        self.ts_ms = ts_ms;
    }
    fn product_index(&self) -> u32 {
        self.organic.last().map_or(0, |v| v.product)
    }
    fn last_action(&self) -> Option<u32> {
        self.last_action
    }
}

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
            catalog: None,
            accept_prob: None,
            observation: ProductObs {
                asin: "B00ABCDEF1".into(),
                index: 17,
                text: "size small medium color black dress fabric".into(),
                sizes: vec!["Small".into(), "Medium".into()],
                colors: vec!["Black".into()],
                keywords: vec!["dress".into(), "fabric".into()],
            },
            last_action: None,
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
            ps_all: None,
            ts_ms: 1_700_000_000_005,
        }
    }

    /// A valid RecoGym state: user 7's second opportunity, after two organic views.
    pub fn reco_state() -> RecoStateMsg {
        RecoStateMsg {
            schema_version: SCHEMA_VERSION,
            env_id: "reco-gym-v1/example".into(),
            episode_id: "reco-gym-v1/example#000007".into(),
            step: 1,
            user_id: 7,
            n_actions: 10,
            time: 6,
            organic: vec![OrganicView { t: 4, product: 3 }, OrganicView { t: 5, product: 3 }],
            last_action: Some(2),
            reward: 1.0,
            terminated: false,
            truncated: false,
            ps_all: false,
            attempt: 0,
            ts_ms: 1_700_000_000_000,
        }
    }
}
