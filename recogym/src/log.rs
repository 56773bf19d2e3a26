//! RecoGym's logs (`AbstractEnv.generate_logs`): one row per organic view and per recommendation,
//! users one after another, each user's rows in time order.

use std::ops::Range;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::agent::{Action, Agent, Context};
use crate::user::{OrganicView, UserSim};
use crate::world::World;

/// The event type of a row (column `z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// An organic page view: `v` is set.
    Organic,
    /// A recommendation: `a`, `c` and `ps` are set.
    Bandit,
}

/// One row of a RecoGym log, with the Python column names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// The user's clock.
    pub t: u64,
    /// The user id.
    pub u: u64,
    /// Organic view or recommendation.
    pub z: Event,
    /// Organic rows: the product viewed.
    pub v: Option<u32>,
    /// Bandit rows: the product recommended.
    pub a: Option<u32>,
    /// Bandit rows: whether it was clicked.
    pub c: Option<bool>,
    /// Bandit rows: the logging policy's probability of `a`.
    pub ps: Option<f64>,
    /// Bandit rows with `with_ps_all`: the logging policy's probability of every product.
    #[serde(rename = "ps-a")]
    pub ps_all: Option<Vec<f64>>,
}

impl LogRow {
    fn organic(u: u64, view: &OrganicView) -> LogRow {
        LogRow { t: view.time, u, z: Event::Organic, v: Some(view.product), a: None, c: None, ps: None, ps_all: None }
    }

    fn bandit(u: u64, t: u64, action: Action, click: bool) -> LogRow {
        LogRow {
            t,
            u,
            z: Event::Bandit,
            v: None,
            a: Some(action.product),
            c: Some(click),
            ps: Some(action.ps),
            ps_all: action.ps_all,
        }
    }
}

/// A log: rows of users in increasing id order, each user's rows in time order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// The rows.
    pub rows: Vec<LogRow>,
}

impl Log {
    /// Appends another log's rows.
    pub fn extend(&mut self, other: Log) {
        self.rows.extend(other.rows);
    }

    /// The organic sessions of the log: each maximal run of consecutive organic rows of one user,
    /// i.e. the organic views one observation carried (what RecoGym's training loop passes to
    /// `agent.train` one observation at a time).
    pub fn organic_sessions(&self) -> impl Iterator<Item = &[LogRow]> + '_ {
        self.rows
            .chunk_by(|a, b| a.u == b.u && a.z == Event::Organic && b.z == Event::Organic)
            .filter(|run| run.first().is_some_and(|row| row.z == Event::Organic))
    }
}

/// One event of a simulated user, handed to a sink by [`simulate_user`].
pub(crate) enum Record<'a> {
    /// Organic views since the previous opportunity.
    Organic(&'a [OrganicView]),
    /// A recommendation at `time` and its outcome. `after_leaving` marks the extra recommendation
    /// Python's loggers ask for once the user is done; it never clicks.
    Bandit { time: u64, action: Action, click: bool, after_leaving: bool },
}

/// What chooses actions in [`simulate_user`]: an [`Agent`], or the oracle, which also reads the
/// user's latent state.
pub(crate) trait Policy {
    /// A new user starts.
    fn start_user(&mut self, user_id: u64);
    /// The action at a bandit opportunity.
    fn act(&mut self, world: &World, sim: &UserSim, organic: &[OrganicView], ctx: &Context) -> Action;
}

/// An agent as a [`Policy`]: it sees only the organic views and the context.
pub(crate) struct AgentPolicy<A>(pub(crate) A);

impl<A: Agent> Policy for AgentPolicy<A> {
    fn start_user(&mut self, user_id: u64) {
        self.0.reset_user(user_id);
    }

    fn act(&mut self, _world: &World, _sim: &UserSim, organic: &[OrganicView], ctx: &Context) -> Action {
        self.0.act(organic, ctx)
    }
}

/// Runs one user to the end with `policy`, the event order of `generate_logs`: organic views of an
/// observation, then the action taken on it, then the views the step returned, and so on. Like
/// Python's `step_offline`, the policy is asked once more when the user is done; that action is
/// reported with `after_leaving` and no click and is not applied.
pub(crate) fn simulate_user<P, S>(world: &World, user_id: u64, policy: &mut P, mut sink: S)
where
    P: Policy,
    S: FnMut(Record<'_>),
{
    policy.start_user(user_id);
    let mut sim = world.user(user_id);
    let mut step = sim.reset(world);
    let mut last_click = None;
    loop {
        sink(Record::Organic(&step.organic));
        let ctx = Context { user_id, time: step.time, last_click };
        let action = policy.act(world, &sim, &step.organic, &ctx);
        if step.done {
            sink(Record::Bandit { time: step.time, action, click: false, after_leaving: true });
            return;
        }
        let next = sim.step(world, action.product);
        sink(Record::Bandit { time: step.time, action, click: next.click, after_leaving: false });
        last_click = Some(next.click);
        step = next;
    }
}

/// Logs `users` served by `agent` (Python `generate_logs(num_offline_users, agent)`), run in
/// parallel; each worker clones `agent` and calls `reset_user` for each of its users.
///
/// As in Python, each user's log ends with the recommendation the agent makes on the last
/// observation after the user left, logged with `c = false` (Python `step_offline` at `done`).
/// RecoGym's default logging agent is uniform random with `ps = 1/P`:
/// [`crate::RandomAgent::from_config`].
pub fn generate_logs<A>(world: &World, users: Range<u64>, agent: &A) -> Log
where
    A: Agent + Clone + Send + Sync,
{
    let per_user: Vec<Vec<LogRow>> = users
        .into_par_iter()
        .map_init(
            || AgentPolicy(agent.clone()),
            |policy, user_id| {
                let mut rows = Vec::new();
                simulate_user(world, user_id, policy, |record| match record {
                    Record::Organic(views) => rows.extend(views.iter().map(|v| LogRow::organic(user_id, v))),
                    Record::Bandit { time, action, click, .. } => {
                        rows.push(LogRow::bandit(user_id, time, action, click))
                    }
                });
                rows
            },
        )
        .collect();
    Log { rows: per_user.into_iter().flatten().collect() }
}

/// Logs the first organic session of each of `users` and nothing else (Python `generate_logs`'
/// `num_organic_offline_users`).
pub fn generate_organic_logs(world: &World, users: Range<u64>) -> Log {
    let per_user: Vec<Vec<LogRow>> = users
        .into_par_iter()
        .map(|user_id| {
            let step = world.user(user_id).reset(world);
            step.organic.iter().map(|v| LogRow::organic(user_id, v)).collect()
        })
        .collect();
    Log { rows: per_user.into_iter().flatten().collect() }
}
