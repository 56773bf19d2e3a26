//! Configuration of `env-svc run`: every flag has an environment-variable fallback and a doc
//! comment, which is its `--help` text.

use std::{path::PathBuf, time::Duration};

use common::{check::StackArgs, kafka::TuningArgs};

use fashion::{DatasetArgs, Split};

/// `env-svc run`: play episodes against the agent through Kafka.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    // The environment to run (`--env`; `fashion` plays `--dataset`, `recogym` the
    // `--recogym-*` simulator) and where the stack is.
    #[command(flatten)]
    pub stack: StackArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
    #[command(flatten)]
    pub dataset: DatasetArgs,
    #[command(flatten)]
    pub episodes: EpisodeArgs,
    #[command(flatten)]
    pub recogym: RecoGymArgs,
    /// Run id, part of the env id `fashion-v1/<run id>` (`reco-gym-v1/<run id>`) every message
    /// carries (default: random).
    #[arg(long, env = "RUN_ID")]
    pub run_id: Option<String>,
    /// Also write the end-of-run summary as JSON to this file.
    #[arg(long, env = "SUMMARY_JSON")]
    pub summary_json: Option<PathBuf>,
    /// No progress bars while loading the data.
    #[arg(long, env = "QUIET")]
    pub quiet: bool,
    #[command(flatten)]
    pub metrics: common::metrics::MetricsArgs,
}

/// How the engine plays any environment's episodes: how many at once, how long it waits for an
/// action, how often it re-sends a state.
#[derive(Debug, Clone, clap::Args)]
pub struct LoopArgs {
    /// Episodes in flight at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// A step whose action has not arrived after this long is published again (e.g. 2s, 500ms).
    #[arg(long, env = "ACTION_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub action_timeout: Duration,
    /// Re-sends of one state (after an action timeout or a failed publication) before its
    /// episode fails; a run with a failed episode starts no new one and exits non-zero. With
    /// the default timeout, 30 re-sends wait a minute for an agent.
    #[arg(long, env = "MAX_RESENDS", default_value_t = 30)]
    pub max_resends: u32,
}

impl LoopArgs {
    /// The engine's settings for the run `env_id`.
    pub fn engine_config(&self, env_id: String) -> crate::engine::EngineConfig {
        crate::engine::EngineConfig {
            env_id,
            concurrency: self.concurrency.max(1),
            action_timeout: self.action_timeout,
            max_resends: self.max_resends,
        }
    }
}

/// The Amazon Fashion episodes of a run: how many, how long, which users in which order; and
/// how the engine plays them.
#[derive(Debug, Clone, clap::Args)]
pub struct EpisodeArgs {
    /// Episodes to play; users are replayed in a seeded order, cycling when fewer.
    #[arg(long, env = "EPISODES", default_value_t = 200)]
    pub episodes: usize,
    /// Step limit of an episode; a longer sequence is truncated.
    #[arg(long, env = "MAX_STEPS", default_value_t = 50)]
    pub max_steps: u32,
    /// Users whose sequences become episodes.
    #[arg(long, env = "SPLIT", value_enum, default_value_t = Split::Train)]
    pub split: Split,
    /// Seed of the order in which users are replayed (and of the interactive user's choices).
    #[arg(long, env = "SEED", default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub user: UserModelArgs,
    #[command(flatten)]
    pub run: LoopArgs,
}

/// How the fashion user answers recommendations (see `env_svc::envs::fashion`, whose module
/// documentation describes both models).
#[derive(Debug, Clone, clap::Args)]
pub struct UserModelArgs {
    /// `replay` (the paper's: the user's reviews are replayed whatever is recommended; env id
    /// `fashion-v1`) or `interactive` (a recommendation of a product the user reviews later is
    /// accepted with `--accept-prob` and the episode continues from it; one of no later product
    /// makes the user leave with `--leave-prob`; env id `fashion-interactive-v1`).
    #[arg(long, env = "USER_MODEL", value_enum, default_value_t = UserModelKind::Replay)]
    pub user_model: UserModelKind,
    /// `--user-model interactive`: probability that the user accepts a recommended product
    /// they review later in their sequence.
    #[arg(long, env = "ACCEPT_PROB", default_value_t = 0.5, value_parser = probability)]
    pub accept_prob: f64,
    /// `--user-model interactive`: probability that the user leaves after a recommendation of a
    /// product they never review later.
    #[arg(long, env = "LEAVE_PROB", default_value_t = 0.1, value_parser = probability)]
    pub leave_prob: f64,
}

/// The user models of `--user-model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UserModelKind {
    /// The user's reviews are replayed whatever the agent does (the paper's environment).
    Replay,
    /// Recommendations change where the user goes next.
    Interactive,
}

impl UserModelArgs {
    /// The user model these flags describe.
    pub fn model(&self) -> crate::envs::fashion::UserModel {
        use crate::envs::fashion::UserModel;
        match self.user_model {
            UserModelKind::Replay => UserModel::Replay,
            UserModelKind::Interactive => UserModel::Interactive { accept: self.accept_prob, leave: self.leave_prob },
        }
    }
}

impl Default for UserModelArgs {
    fn default() -> Self {
        Self { user_model: UserModelKind::Replay, accept_prob: 0.5, leave_prob: 0.1 }
    }
}

/// A probability: a number in [0, 1].
fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in [0, 1]"))
    }
}

impl EpisodeArgs {
    /// The split as the summary names it.
    pub fn split_name(&self) -> &'static str {
        match self.split {
            Split::Train => "train",
            Split::Test => "test",
            Split::All => "all",
        }
    }
}

/// The RecoGym environment of `--env recogym`: which users, and RecoGym's `env_1_args`
/// (`reco-gym-v1`); the defaults are RecoGym's. One user is one episode.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct RecoGymArgs {
    /// Number of products (`num_products`), the action space.
    #[arg(long, env = "RECOGYM_PRODUCTS", default_value_t = 10)]
    pub recogym_products: u32,
    /// Users to play, one episode each (`num_users`).
    #[arg(long, env = "RECOGYM_USERS", default_value_t = 100)]
    pub recogym_users: u64,
    /// Id of the first user: the run plays users `first..first + users`. Runs that should see
    /// the same users (an A/B test) use the same range; a training run uses another.
    #[arg(long, env = "RECOGYM_FIRST_USER", default_value_t = 0)]
    pub recogym_first_user: u64,
    /// `random_seed`: draws the world (products) and every user's random stream.
    #[arg(long, env = "RECOGYM_SEED", default_value_t = 42)]
    pub recogym_seed: u64,
    /// `K`: latent dimension of users and products.
    #[arg(long = "recogym-k", env = "RECOGYM_K", default_value_t = 5)]
    pub recogym_k: usize,
    /// `sigma_omega_initial`: spread of a new user's latent vector.
    #[arg(long, env = "RECOGYM_SIGMA_OMEGA_INITIAL", default_value_t = 1.0)]
    pub recogym_sigma_omega_initial: f64,
    /// `sigma_omega`: step of the user's latent random walk.
    #[arg(long, env = "RECOGYM_SIGMA_OMEGA", default_value_t = 0.1)]
    pub recogym_sigma_omega: f64,
    /// `number_of_flips`: product pairs whose click model is swapped with a similar product's.
    #[arg(long, env = "RECOGYM_NUMBER_OF_FLIPS", default_value_t = 0)]
    pub recogym_number_of_flips: u32,
    /// `sigma_mu_organic`: spread of the products' organic popularity.
    #[arg(long, env = "RECOGYM_SIGMA_MU_ORGANIC", default_value_t = 3.0)]
    pub recogym_sigma_mu_organic: f64,
    /// `change_omega_for_bandits`: the latent vector also moves on bandit steps.
    #[arg(long, env = "RECOGYM_CHANGE_OMEGA_FOR_BANDITS", default_value_t = false, action = clap::ArgAction::Set)]
    pub recogym_change_omega_for_bandits: bool,
    /// `normalize_beta`: scale the products' click embeddings to unit norm.
    #[arg(long, env = "RECOGYM_NORMALIZE_BETA", default_value_t = false, action = clap::ArgAction::Set)]
    pub recogym_normalize_beta: bool,
    /// `prob_leave_bandit` (RecoGym 0.1.3.0 does not read it; kept for the settings).
    #[arg(long, env = "RECOGYM_PROB_LEAVE_BANDIT", default_value_t = 0.01)]
    pub recogym_prob_leave_bandit: f64,
    /// `prob_leave_organic`: probability of leaving after a step.
    #[arg(long, env = "RECOGYM_PROB_LEAVE_ORGANIC", default_value_t = 0.01)]
    pub recogym_prob_leave_organic: f64,
    /// `prob_bandit_to_organic`: from a recommendation back to organic browsing.
    #[arg(long, env = "RECOGYM_PROB_BANDIT_TO_ORGANIC", default_value_t = 0.05)]
    pub recogym_prob_bandit_to_organic: f64,
    /// `prob_organic_to_bandit`: from an organic view to a recommendation opportunity.
    #[arg(long, env = "RECOGYM_PROB_ORGANIC_TO_BANDIT", default_value_t = 0.25)]
    pub recogym_prob_organic_to_bandit: f64,
    /// `with_ps_all`: states ask agents for the probability of every action (`ps_all`).
    #[arg(long, env = "RECOGYM_WITH_PS_ALL", default_value_t = false, action = clap::ArgAction::Set)]
    pub recogym_with_ps_all: bool,
    /// Step limit per user (none by default, as in RecoGym); a longer user is truncated.
    #[arg(long, env = "RECOGYM_MAX_STEPS")]
    pub recogym_max_steps: Option<u32>,
}

impl RecoGymArgs {
    /// RecoGym's configuration (`env_1_args`) these flags describe, validated.
    pub fn config(&self) -> Result<recogym::Config, recogym::ConfigError> {
        let config = recogym::Config {
            num_products: self.recogym_products,
            num_users: self.recogym_users,
            random_seed: self.recogym_seed,
            k: self.recogym_k,
            sigma_omega_initial: self.recogym_sigma_omega_initial,
            sigma_omega: self.recogym_sigma_omega,
            number_of_flips: self.recogym_number_of_flips,
            sigma_mu_organic: self.recogym_sigma_mu_organic,
            change_omega_for_bandits: self.recogym_change_omega_for_bandits,
            normalize_beta: self.recogym_normalize_beta,
            prob_leave_bandit: self.recogym_prob_leave_bandit,
            prob_leave_organic: self.recogym_prob_leave_organic,
            prob_bandit_to_organic: self.recogym_prob_bandit_to_organic,
            prob_organic_to_bandit: self.recogym_prob_organic_to_bandit,
            with_ps_all: self.recogym_with_ps_all,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        recogym: RecoGymArgs,
    }

    #[test]
    fn recogym_defaults_are_recogyms_env_1_args() {
        let cli = common::cli::parse_flags::<Cli>(["env-svc"]);
        let expect = recogym::Config::default();
        assert_eq!(cli.recogym.config().ok(), Some(recogym::Config { num_users: 100, ..expect }));
        assert_eq!(cli.recogym.recogym_max_steps, None);
    }

    #[test]
    fn recogym_flags_reach_the_config_and_bad_ones_are_refused() {
        let cli = common::cli::parse_flags::<Cli>([
            "env-svc",
            "--recogym-products",
            "7",
            "--recogym-k",
            "3",
            "--recogym-with-ps-all",
            "true",
        ]);
        let config = cli.recogym.config().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((config.num_products, config.k, config.with_ps_all), (7, 3, true));
        let cli = common::cli::parse_flags::<Cli>(["env-svc", "--recogym-prob-organic-to-bandit", "0.999"]);
        assert!(cli.recogym.config().is_err());
    }
}
