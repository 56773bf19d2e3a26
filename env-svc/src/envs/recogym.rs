//! The RecoGym environment (`reco-gym-v1`, simulated by the `recogym` crate): an episode is one
//! user, a step is one bandit opportunity, the reward is the click.
//!
//! State `t` carries the organic views since opportunity `t - 1` (since the user arrived, at
//! step 0) and the click of the action answered at `t - 1`; the last state says the user left
//! (`terminated`) and is not answered. A user who leaves before any opportunity has a single,
//! terminal state 0. Invariant: an episode depends only on the world, the user id and the actions
//! applied, so the same users answered the same way replay the same states, over any transport
//! and at any concurrency.

use std::sync::Arc;

use protocol::{OrganicView, RecoStateMsg, SCHEMA_VERSION};
use recogym::{Step, UserSim, World};

use anyhow::Context;

use super::{Environment, Head, Transition};
use crate::engine::Engine;

/// Builds the RecoGym engine for a run: the users and world `recogym` describe, played as
/// `run` says.
pub fn recogym_engine(
    recogym: &crate::config::RecoGymArgs,
    run: &crate::config::LoopArgs,
    env_id: String,
) -> anyhow::Result<Engine<RecoGymEnv>> {
    let config = recogym.config().context("invalid recogym configuration")?;
    let world = Arc::new(recogym::World::try_new(&config).context("invalid recogym configuration")?);
    Ok(recogym_engine_in(world, recogym, run, env_id))
}

/// [`recogym_engine`] over an existing world (drawn once, shared by several runs).
pub fn recogym_engine_in(
    world: Arc<recogym::World>,
    recogym: &crate::config::RecoGymArgs,
    run: &crate::config::LoopArgs,
    env_id: String,
) -> Engine<RecoGymEnv> {
    let engine_cfg = run.engine_config(env_id);
    let env = RecoGymEnv::new(world, recogym.recogym_first_user, recogym.recogym_users, recogym.recogym_max_steps);
    Engine::new(engine_cfg, env)
}

/// `env-svc run --env recogym`: draws the `--recogym-*` world and plays its users through Kafka.
pub(crate) async fn play(
    cfg: &crate::config::RunArgs,
    run_id: &str,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<crate::metrics::Summary> {
    let engine = recogym_engine(&cfg.recogym, &cfg.episodes.run, format!("reco-gym-v1/{run_id}"))?;
    tracing::info!(settings = ?engine.env().world().config(), "recogym world drawn");
    crate::run_engine(engine, cfg, shutdown).await
}

/// The users of one RecoGym run over one world.
#[derive(Debug)]
pub struct RecoGymEnv {
    world: Arc<World>,
    first_user: u64,
    users: u64,
    max_steps: Option<u32>,
}

/// One user in flight.
#[derive(Debug)]
pub struct RecoEpisode {
    user_id: u64,
    sim: UserSim,
    step: u32,
}

impl RecoGymEnv {
    /// Plays users `first_user..first_user + users` of `world`; `max_steps` truncates longer
    /// users (RecoGym itself has no limit: `None`).
    pub fn new(world: Arc<World>, first_user: u64, users: u64, max_steps: Option<u32>) -> Self {
        Self { world, first_user, users, max_steps }
    }

    /// The world the users live in.
    pub fn world(&self) -> &World {
        &self.world
    }

    fn state_msg(
        &self,
        head: Head<'_>,
        ep: &RecoEpisode,
        step: &Step,
        last_action: Option<u32>,
        t: Transition,
    ) -> RecoStateMsg {
        RecoStateMsg {
            schema_version: SCHEMA_VERSION,
            env_id: head.env_id.to_string(),
            episode_id: head.episode_id.to_string(),
            step: ep.step,
            user_id: ep.user_id,
            n_actions: self.world.num_products(),
            time: step.time,
            organic: step.organic.iter().map(|v| OrganicView { t: v.time, product: v.product }).collect(),
            last_action,
            reward: t.reward,
            terminated: t.terminated,
            truncated: t.truncated,
            ps_all: self.world.config().with_ps_all,
            attempt: 0,
            ts_ms: common::kafka::now_ms(),
        }
    }
}

impl Environment for RecoGymEnv {
    type State = RecoStateMsg;
    type Episode = RecoEpisode;

    fn name(&self) -> &'static str {
        "reco-gym-v1"
    }

    fn n_actions(&self) -> u32 {
        self.world.num_products()
    }

    fn start(&mut self, seq: usize, head: Head<'_>) -> Option<(RecoEpisode, RecoStateMsg)> {
        let seq = u64::try_from(seq).ok().filter(|&s| s < self.users)?;
        let user_id = self.first_user + seq;
        let mut sim = self.world.user(user_id);
        let first = sim.reset(&self.world);
        let episode = RecoEpisode { user_id, sim, step: 0 };
        let t = Transition {
            reward: 0.0,
            next_item_hit: false,
            terminated: first.done,
            truncated: false,
            random_reward: None,
        };
        let state = self.state_msg(head, &episode, &first, None, t);
        Some((episode, state))
    }

    fn step(&mut self, ep: &mut RecoEpisode, action: u32, head: Head<'_>) -> (RecoStateMsg, Transition) {
        let next = ep.sim.step(&self.world, action);
        ep.step += 1;
        let terminated = next.done;
        let truncated = !terminated && self.max_steps.is_some_and(|m| ep.step >= m);
        let reward = f64::from(u8::from(next.click));
        let t = Transition { reward, next_item_hit: false, terminated, truncated, random_reward: None };
        (self.state_msg(head, ep, &next, Some(action), t), t)
    }

    fn label(&self) -> String {
        format!("users {}..{}", self.first_user, self.first_user + self.users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(users: u64, max_steps: Option<u32>) -> RecoGymEnv {
        let world = World::new(&recogym::Config { num_products: 5, ..recogym::Config::default() });
        RecoGymEnv::new(Arc::new(world), 100, users, max_steps)
    }

    const HEAD: Head<'static> = Head { env_id: "reco-gym-v1/t", episode_id: "ep" };

    /// Plays one user with action `a`; returns its states.
    fn play(env: &mut RecoGymEnv, seq: usize, a: u32) -> Vec<RecoStateMsg> {
        let Some((mut ep, first)) = env.start(seq, HEAD) else { return Vec::new() };
        let mut states = vec![first];
        while !states.last().is_some_and(|s| s.terminated || s.truncated) {
            states.push(env.step(&mut ep, a, HEAD).0);
        }
        states
    }

    #[test]
    fn a_user_is_an_episode_that_replays_exactly_the_simulator() {
        let mut e = env(3, None);
        let states = play(&mut e, 1, 2);
        assert!(states.len() > 1);
        // The same user driven by hand through the simulator: same views, clicks and end.
        let world = e.world();
        let mut sim = world.user(101);
        let mut step = sim.reset(world);
        for (t, s) in states.iter().enumerate() {
            assert_eq!((s.step, s.user_id, s.n_actions, s.time), (t as u32, 101, 5, step.time));
            let views: Vec<(u64, u32)> = s.organic.iter().map(|v| (v.t, v.product)).collect();
            let expect: Vec<(u64, u32)> = step.organic.iter().map(|v| (v.time, v.product)).collect();
            assert_eq!(views, expect, "step {t}");
            assert_eq!(s.reward, f64::from(u8::from(step.click)));
            assert_eq!(s.last_action, (t > 0).then_some(2));
            assert_eq!(s.terminated, step.done);
            assert!(!s.truncated);
            if !step.done {
                step = sim.step(world, 2);
            }
        }
        assert!(e.start(3, HEAD).is_none(), "three users only");
    }

    #[test]
    fn step_limit_truncates_and_never_also_terminates() {
        let mut e = env(50, Some(3));
        for seq in 0..50 {
            let states = play(&mut e, seq, 0);
            let last = states.last().unwrap_or_else(|| panic!("user {seq} has no state"));
            assert!(!(last.terminated && last.truncated));
            assert!(last.step <= 3);
            if last.truncated {
                assert_eq!(last.step, 3);
            }
        }
    }
}
