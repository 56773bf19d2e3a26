//! One user's timeline in `reco-gym-v1`: the part of `AbstractEnv`/`RecoEnv1` that changes per user
//! (`reset`, `step`, `update_state`, `update_product_view`, `draw_click`,
//! `generate_organic_sessions`). Invariant: the trajectory depends only on the world, the user id
//! and the actions passed to [`UserSim::step`], since all draws come from the user's own stream.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::organic::OrganicSampler;
use crate::rng::{self, Domain};
use crate::world::{ff, World, BANDIT, ORGANIC, STOP};

/// One organic page view (a row `z = organic` of RecoGym's sessions): the user looked at
/// `product` at `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrganicView {
    /// The user's clock when the view happened (one tick per state transition, from 0).
    pub time: u64,
    /// The product viewed, in `0..num_products`.
    pub product: u32,
}

/// What the environment returns from [`UserSim::reset`] and [`UserSim::step`] (the observation,
/// reward and done of Python's `step`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Step {
    /// From `step`: whether the user clicked the recommended product. Always `false` from `reset`
    /// (Python returns reward `None` there).
    pub click: bool,
    /// The organic views since the previous bandit opportunity (since the start, from `reset`), in
    /// time order. Empty when the user went from one bandit opportunity straight to the next or
    /// left. Never empty after a click, which always sends the user back to organic browsing.
    pub organic: Vec<OrganicView>,
    /// The user left. No further `step`; a logger still asks the agent once more (see
    /// [`crate::generate_logs`]).
    pub done: bool,
    /// The user's clock now: the time of the next bandit opportunity when `!done` (the context
    /// time of Python's observation, and the `t` of the bandit row that follows).
    pub time: u64,
}

/// Where a user is in the (organic, bandit, stop) chain; exposed only to oracle/debug code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserState {
    /// Browsing organically.
    Organic,
    /// Waiting for a recommendation.
    Bandit,
    /// Left.
    Stop,
}

impl UserState {
    fn index(self) -> usize {
        match self {
            UserState::Organic => ORGANIC,
            UserState::Bandit => BANDIT,
            UserState::Stop => STOP,
        }
    }
}

/// One user's simulation. Created by [`World::user`]; drive it with [`UserSim::reset`] once, then
/// [`UserSim::step`] until a step says `done`.
///
/// What an agent may see: [`UserSim::user_id`], [`UserSim::time`] and the returned [`Step`]s. The
/// latent state (omega, the Markov state, click probabilities) is reachable only through the
/// `debug_*`/`oracle_*` accessors, which exist for tests and the oracle baseline.
#[derive(Debug, Clone)]
pub struct UserSim {
    user_id: u64,
    seed: u64,
    rng: ChaCha8Rng,
    omega: Vec<f64>,
    state: UserState,
    started: bool,
    time: u64,
    organic: OrganicSampler,
}

impl World {
    /// A new user with id `user_id`; its random stream is derived from `(random_seed, user_id)`.
    pub fn user(&self, user_id: u64) -> UserSim {
        let seed = self.config().random_seed;
        UserSim {
            user_id,
            seed,
            rng: rng::stream(seed, Domain::User, user_id),
            omega: vec![0.0; self.k()],
            state: UserState::Organic,
            started: false,
            time: 0,
            organic: OrganicSampler::new(self),
        }
    }
}

impl UserSim {
    /// The user's id (Python's `current_user_id`).
    pub fn user_id(&self) -> u64 {
        self.user_id
    }

    /// The user's clock (Python's `current_time`): 0 at reset, +1 per state transition.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Whether the user has left (or was never reset).
    pub fn is_done(&self) -> bool {
        !self.started || self.state == UserState::Stop
    }

    /// Starts the user (Python `reset(user_id)` then `step(None)`): draws omega ~
    /// N(0, sigma_omega_initial²) and returns the first organic session, which has at least one
    /// view, ending at the first bandit opportunity or the user's departure.
    ///
    /// Calling it again restarts the same user from scratch: same omega, same random stream.
    pub fn reset(&mut self, world: &World) -> Step {
        self.rng = rng::stream(self.seed, Domain::User, self.user_id);
        let sigma = world.config().sigma_omega_initial;
        for o in self.omega.iter_mut() {
            *o = sigma * self.rng.sample::<f64, _>(StandardNormal);
        }
        self.state = UserState::Organic;
        self.time = 0;
        self.started = true;
        let organic = self.organic_session(world);
        Step { click: false, organic, done: self.state == UserState::Stop, time: self.time }
    }

    /// Shows `action` at the current bandit opportunity (Python `step(action_id)`): draws the click
    /// with probability `ff(beta[action] · omega + mu_bandit[action])`, moves the chain one step,
    /// sends the user to organic browsing if they clicked (even if the chain said stop), and
    /// returns the click and the organic views up to the next opportunity or departure.
    ///
    /// # Panics
    /// When the user is not at a bandit opportunity (before `reset`, or after a `done` step), or
    /// when `action >= num_products`: both are caller bugs, like indexing out of bounds.
    pub fn step(&mut self, world: &World, action: u32) -> Step {
        if !self.started || self.state != UserState::Bandit {
            panic!(
                "recogym user {}: step called {}",
                self.user_id,
                if self.started { "after done" } else { "before reset" }
            );
        }
        if action >= world.num_products() {
            panic!("recogym user {}: action {action} out of range 0..{}", self.user_id, world.num_products());
        }
        let click = self.rng.random::<f64>() < ff(world.bandit_score(action as usize, &self.omega));
        self.update_state(world);
        if click {
            self.state = UserState::Organic;
        }
        let organic = self.organic_session(world);
        Step { click, organic, done: self.state == UserState::Stop, time: self.time }
    }

    /// `generate_organic_sessions`: views while the state is organic (none otherwise).
    fn organic_session(&mut self, world: &World) -> Vec<OrganicView> {
        let mut views = Vec::new();
        while self.state == UserState::Organic {
            // `update_product_view`.
            let product = self.organic.draw(world, &self.omega, &mut self.rng);
            views.push(OrganicView { time: self.time, product });
            self.update_state(world);
        }
        views
    }

    /// `update_state`: one Markov transition, one clock tick, and the omega random walk
    /// `omega ~ N(omega, sigma_omega²)` when the new state is organic (or always, with
    /// `change_omega_for_bandits`). Python scales sigma_omega by the time delta, which the default
    /// time generator makes 1.
    fn update_state(&mut self, world: &World) {
        let row = &world.transitions()[self.state.index()];
        let u = self.rng.random::<f64>();
        // `rng.choice(3, p=row)`: the first state whose cumulative probability exceeds u.
        self.state = if u < row[ORGANIC] {
            UserState::Organic
        } else if u < row[ORGANIC] + row[BANDIT] {
            UserState::Bandit
        } else {
            UserState::Stop
        };
        self.time += 1;
        let config = world.config();
        if config.change_omega_for_bandits || self.state == UserState::Organic {
            for o in self.omega.iter_mut() {
                *o += config.sigma_omega * self.rng.sample::<f64, _>(StandardNormal);
            }
        }
    }

    /// Oracle/debug: the latent user vector omega. Not observable by agents.
    pub fn debug_omega(&self) -> &[f64] {
        &self.omega
    }

    /// Oracle/debug: the Markov state. Not observable by agents.
    pub fn debug_state(&self) -> UserState {
        self.state
    }

    /// Oracle/debug: the probability that the user clicks `product` if shown it now.
    pub fn oracle_click_probability(&self, world: &World, product: u32) -> f64 {
        ff(world.bandit_score(product as usize, &self.omega))
    }

    /// Oracle/debug: the product with the highest click probability now (lowest id among ties).
    pub fn oracle_best_product(&self, world: &World) -> u32 {
        // ff is increasing, so the best score is the best click probability.
        let mut best = (0, f64::NEG_INFINITY);
        for product in 0..world.num_products() as usize {
            let score = world.bandit_score(product, &self.omega);
            if score > best.1 {
                best = (product, score);
            }
        }
        best.0 as u32
    }
}
