//! The environment's parameters: RecoGym's `env_1_args` (`recogym/envs/reco_env_v1.py`, which
//! extends `env_args` of `recogym/envs/abstract.py`). Field names are the Python keys, so a
//! `Config` serialises to the same JSON object as the Python dict.

use serde::{Deserialize, Serialize};

/// Parameters of the `reco-gym-v1` environment, a port of `env_1_args`.
///
/// `Default` gives the Python defaults except `random_seed`, which Python draws at import time
/// (`np.random.randint(2 ** 31 - 1)`); here it is the fixed value 42 so that a default run is
/// reproducible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Number of products P (organic catalogue and action space).
    pub num_products: u32,
    /// Number of users; not read by the environment itself (callers size their runs with it).
    pub num_users: u64,
    /// Seed of the world (product embeddings) and of every user's and agent's RNG stream.
    pub random_seed: u64,
    /// Latent dimension of users (omega) and products (Gamma, beta).
    #[serde(rename = "K")]
    pub k: usize,
    /// Standard deviation of a new user's omega ~ N(0, sigma_omega_initial² I).
    pub sigma_omega_initial: f64,
    /// Standard deviation of omega's random-walk step at each organic transition.
    pub sigma_omega: f64,
    /// Number of product pairs whose bandit embedding is swapped with the most similar product.
    pub number_of_flips: u32,
    /// Standard deviation of the products' organic popularity offsets mu_organic.
    pub sigma_mu_organic: f64,
    /// Whether omega also drifts on bandit transitions (and click probabilities are recomputed).
    pub change_omega_for_bandits: bool,
    /// Whether each row of beta is scaled to unit L2 norm.
    pub normalize_beta: bool,
    /// Documented as the bandit → stop probability, but RecoGym 0.1.3.0 never reads it: the bandit
    /// row of its transition matrix uses `prob_leave_organic` (reproduced here).
    pub prob_leave_bandit: f64,
    /// Probability of leaving (stop) after an organic view, and (as in Python) after a bandit step.
    pub prob_leave_organic: f64,
    /// Probability of going from a bandit step back to organic browsing.
    pub prob_bandit_to_organic: f64,
    /// Probability of going from an organic view to a bandit opportunity.
    pub prob_organic_to_bandit: f64,
    /// Whether actions carry the full propensity vector `ps_all` (the Python `ps-a`).
    pub with_ps_all: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            num_products: 10,
            num_users: 100,
            random_seed: 42,
            k: 5,
            sigma_omega_initial: 1.0,
            sigma_omega: 0.1,
            number_of_flips: 0,
            sigma_mu_organic: 3.0,
            change_omega_for_bandits: false,
            normalize_beta: false,
            prob_leave_bandit: 0.01,
            prob_leave_organic: 0.01,
            prob_bandit_to_organic: 0.05,
            prob_organic_to_bandit: 0.25,
            with_ps_all: false,
        }
    }
}

/// A parameter combination the simulator cannot run (Python would fail later, inside numpy).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// There must be at least one product.
    #[error("num_products must be at least 1")]
    NoProducts,
    /// The latent dimension must be at least 1.
    #[error("K must be at least 1")]
    NoLatentDimension,
    /// A probability or standard deviation is negative, NaN or infinite.
    #[error("{name} must be finite and non-negative, got {value}")]
    Negative {
        /// The Python name of the parameter.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// The probabilities leaving one state add up to more than 1.
    #[error("transition probabilities out of the {state} state sum to {sum} > 1")]
    TransitionsOverOne {
        /// `organic` or `bandit`.
        state: &'static str,
        /// The sum of the leaving probabilities.
        sum: f64,
    },
    /// Embeddings given to `World::with_embeddings` do not have P×K and P values.
    #[error("embeddings must be P×K = {p}×{k} and P = {p} values, got {gamma} and {mu_organic}")]
    EmbeddingShape {
        /// Values given for Gamma.
        gamma: usize,
        /// Values given for mu_organic.
        mu_organic: usize,
        /// num_products.
        p: usize,
        /// K.
        k: usize,
    },
}

impl Config {
    /// Checks what `World::try_new` needs: at least one product and latent dimension, finite
    /// non-negative probabilities and deviations, and rows of the transition matrix that sum to
    /// at most one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.num_products == 0 {
            return Err(ConfigError::NoProducts);
        }
        if self.k == 0 {
            return Err(ConfigError::NoLatentDimension);
        }
        let non_negative = [
            ("sigma_omega_initial", self.sigma_omega_initial),
            ("sigma_omega", self.sigma_omega),
            ("sigma_mu_organic", self.sigma_mu_organic),
            ("prob_leave_bandit", self.prob_leave_bandit),
            ("prob_leave_organic", self.prob_leave_organic),
            ("prob_bandit_to_organic", self.prob_bandit_to_organic),
            ("prob_organic_to_bandit", self.prob_organic_to_bandit),
        ];
        for (name, value) in non_negative {
            if !value.is_finite() || value < 0.0 {
                return Err(ConfigError::Negative { name, value });
            }
        }
        let organic = self.prob_organic_to_bandit + self.prob_leave_organic;
        if organic > 1.0 {
            return Err(ConfigError::TransitionsOverOne { state: "organic", sum: organic });
        }
        let bandit = self.prob_bandit_to_organic + self.prob_leave_organic;
        if bandit > 1.0 {
            return Err(ConfigError::TransitionsOverOne { state: "bandit", sum: bandit });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are `env_1_args` of RecoGym 0.1.3.0 (`{**env_args, K: 5, ...}`).
    #[test]
    fn defaults_equal_env_1_args() {
        let json = serde_json::to_value(Config::default()).unwrap_or_default();
        let expected = serde_json::json!({
            "num_products": 10,
            "num_users": 100,
            "random_seed": 42,
            "prob_leave_bandit": 0.01,
            "prob_leave_organic": 0.01,
            "prob_bandit_to_organic": 0.05,
            "prob_organic_to_bandit": 0.25,
            "normalize_beta": false,
            "with_ps_all": false,
            "K": 5,
            "sigma_omega_initial": 1.0,
            "sigma_omega": 0.1,
            "number_of_flips": 0,
            "sigma_mu_organic": 3.0,
            "change_omega_for_bandits": false,
        });
        assert_eq!(json, expected);
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn partial_json_fills_defaults() {
        let cfg: Config = serde_json::from_str(r#"{"num_products": 1000, "K": 3}"#).unwrap_or_default();
        assert_eq!(cfg.num_products, 1000);
        assert_eq!(cfg.k, 3);
        assert_eq!(cfg.sigma_mu_organic, 3.0);
    }

    #[test]
    fn validate_rejects_impossible_configs() {
        let cfg = Config { num_products: 0, ..Config::default() };
        assert_eq!(cfg.validate(), Err(ConfigError::NoProducts));
        let cfg = Config { prob_organic_to_bandit: 0.995, ..Config::default() };
        assert!(matches!(cfg.validate(), Err(ConfigError::TransitionsOverOne { state: "organic", .. })));
        let cfg = Config { sigma_omega: f64::NAN, ..Config::default() };
        assert!(matches!(cfg.validate(), Err(ConfigError::Negative { name: "sigma_omega", .. })));
    }
}
