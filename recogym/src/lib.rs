//! A pure-Rust port of the RecoGym 0.1.3.0 simulator, environment `reco-gym-v1`
//! (`recogym/envs/reco_env_v1.py` and `abstract.py`), with its reference agents, its logs and its
//! A/B protocol (`bench_agents.test_agent`).
//!
//! - [`World`]: the products (organic and bandit embeddings, flips), drawn once from the seed and
//!   shared immutably.
//! - [`UserSim`]: one user's timeline, organic ⇄ bandit ⇄ stop, stepped like gym's reset/step.
//! - [`Agent`] with [`RandomAgent`], [`OrganicCountAgent`], [`OrganicUserCountAgent`].
//! - [`generate_logs`] and [`ab::run`].
//!
//! The one intended deviation from Python: every user (and every agent, per user) draws from its
//! own random stream derived from `(random_seed, user_id)` instead of one shared `RandomState`, so
//! results do not depend on how many users run at once or in which order. Distributions are
//! unchanged; individual draws differ from Python's. The library does no I/O.
//!
//! ```
//! use recogym::{Agent, Config, Context, RandomAgent, World};
//!
//! let world = World::new(&Config { num_products: 100, ..Config::default() });
//! let mut agent = RandomAgent::from_config(world.config());
//! agent.reset_user(7);
//! let mut user = world.user(7);
//! let mut step = user.reset(&world);
//! let mut clicks = 0;
//! while !step.done {
//!     let ctx = Context { user_id: 7, time: step.time, last_click: None };
//!     let action = agent.act(&step.organic, &ctx);
//!     step = user.step(&world, action.product);
//!     clicks += u32::from(step.click);
//! }
//! ```

pub mod ab;
mod agent;
mod agents;
mod config;
mod log;
mod organic;
mod rng;
mod user;
mod world;

pub use agent::{Action, Agent, Context};
pub use agents::{OrganicCountAgent, OrganicUserCountAgent, RandomAgent};
pub use config::{Config, ConfigError};
pub use log::{generate_logs, generate_organic_logs, Event, Log, LogRow};
pub use user::{OrganicView, Step, UserSim, UserState};
pub use world::{ff, World};

#[cfg(test)]
mod tests;
