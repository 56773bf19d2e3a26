//! The static part of `reco-gym-v1`: what `RecoEnv1.set_static_params` draws once per
//! environment (`recogym/envs/reco_env_v1.py`). Immutable after construction, so one `World` is
//! shared by every user simulation (`Arc<World>`, `Send + Sync`).

use rand::Rng;
use rand_distr::StandardNormal;

use crate::config::{Config, ConfigError};
use crate::organic::BLOCK;
use crate::rng::{self, Domain};

/// Index of the organic state in [`World::transitions`] rows (Python's magic number `organic = 0`).
pub const ORGANIC: usize = 0;
/// Index of the bandit state (`bandit = 1`).
pub const BANDIT: usize = 1;
/// Index of the absorbing stop state (`stop = 2`).
pub const STOP: usize = 2;

/// Products and the user state machine of one `reco-gym-v1` environment.
///
/// Models, per product `p`: the organic embedding `Gamma[p]` (K values, N(0, 1)) and popularity
/// `mu_organic[p]` (N(0, sigma_mu_organic²)), which drive organic views through
/// `softmax(Gamma omega + mu_organic)`; and the bandit embedding `beta[p]` with offset
/// `mu_bandit[p]`, which drive clicks through `ff(beta omega + mu_bandit)`. `beta` and `mu_bandit`
/// are `Gamma` and `mu_organic` with `number_of_flips` pairs of similar products swapped
/// (`generate_beta`), rows of `beta` scaled to unit norm when `normalize_beta`.
#[derive(Debug, Clone)]
pub struct World {
    config: Config,
    pub(crate) p: usize,
    pub(crate) k: usize,
    /// P×K, row-major.
    gamma: Vec<f64>,
    /// K×P, row-major: `Gamma` transposed so that organic logits are computed column by column.
    pub(crate) gamma_t: Vec<f64>,
    pub(crate) mu_organic: Vec<f64>,
    /// `Gamma` rounded to f32 in blocks of `BLOCK` products, each block K×BLOCK column-major,
    /// zero-padded to whole blocks, for the fast organic sampler.
    pub(crate) gamma_blocks32: Vec<f32>,
    /// `mu_organic` rounded to f32, padded to whole blocks with -inf.
    pub(crate) mu_organic32: Vec<f32>,
    /// `max |mu_organic32|` and `max_p Σ_k |Gamma32[p][k]|`, for its rounding-error bound.
    pub(crate) max_abs_mu32: f64,
    pub(crate) max_abs_gamma_row32: f64,
    /// P×K, row-major.
    beta: Vec<f64>,
    mu_bandit: Vec<f64>,
    flip_index: Vec<u32>,
    transitions: [[f64; 3]; 3],
}

impl World {
    /// Builds the world of `config` from its `random_seed`: `Gamma` (P×K standard normals, row by
    /// row), then `mu_organic`, then `beta`/`mu_bandit` (`RecoEnv1.set_static_params`).
    ///
    /// # Panics
    /// When `config` fails [`Config::validate`]; use [`World::try_new`] to get the error instead.
    pub fn new(config: &Config) -> World {
        match World::try_new(config) {
            Ok(world) => world,
            Err(e) => panic!("invalid recogym config: {e}"),
        }
    }

    /// [`World::new`] that returns the validation error instead of panicking.
    pub fn try_new(config: &Config) -> Result<World, ConfigError> {
        config.validate()?;
        let p = config.num_products as usize;
        let k = config.k;
        let mut rng = rng::stream(config.random_seed, Domain::World, 0);
        let gamma: Vec<f64> = (0..p * k).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
        let mu_organic: Vec<f64> =
            (0..p).map(|_| config.sigma_mu_organic * rng.sample::<f64, _>(StandardNormal)).collect();
        World::with_embeddings(config, gamma, mu_organic)
    }

    /// Builds a world from given organic embeddings (`gamma`: P×K row-major, `mu_organic`: P) instead
    /// of drawing them; `beta`, `mu_bandit` and the flips are derived as in [`World::new`]. Lets a
    /// test or a fidelity check load the exact matrices a Python `RecoEnv1` drew.
    pub fn with_embeddings(config: &Config, gamma: Vec<f64>, mu_organic: Vec<f64>) -> Result<World, ConfigError> {
        config.validate()?;
        let p = config.num_products as usize;
        let k = config.k;
        if gamma.len() != p * k || mu_organic.len() != p {
            return Err(ConfigError::EmbeddingShape { gamma: gamma.len(), mu_organic: mu_organic.len(), p, k });
        }
        let mut gamma_t = vec![0.0; p * k];
        for (prod, row) in gamma.chunks_exact(k).enumerate() {
            for (dim, &g) in row.iter().enumerate() {
                gamma_t[dim * p + prod] = g;
            }
        }
        let padded = p.div_ceil(BLOCK) * BLOCK;
        let mut gamma_blocks32 = vec![0.0f32; padded * k];
        for (prod, row) in gamma.chunks_exact(k).enumerate() {
            let (block, j) = (prod / BLOCK, prod % BLOCK);
            for (dim, &g) in row.iter().enumerate() {
                gamma_blocks32[block * k * BLOCK + dim * BLOCK + j] = g as f32;
            }
        }
        let mut mu_organic32: Vec<f32> = mu_organic.iter().map(|&m| m as f32).collect();
        mu_organic32.resize(padded, f32::NEG_INFINITY);
        let max_abs_mu32 = mu_organic.iter().fold(0.0f64, |m, &v| m.max(f64::from(v as f32).abs()));
        let max_abs_gamma_row32 = gamma
            .chunks_exact(k)
            .map(|row| row.iter().map(|&g| f64::from(g as f32).abs()).sum::<f64>())
            .fold(0.0, f64::max);
        let flip_index = flip_index(&gamma, p, k, config.number_of_flips as usize);
        let mut beta = Vec::with_capacity(p * k);
        let mut mu_bandit = Vec::with_capacity(p);
        for &partner in &flip_index {
            let partner = partner as usize;
            beta.extend_from_slice(&gamma[partner * k..(partner + 1) * k]);
            mu_bandit.push(mu_organic[partner]);
        }
        if config.normalize_beta {
            // `beta / sqrt((beta ** 2).sum(1))`: unit rows; mu_bandit is left as it is.
            for row in beta.chunks_exact_mut(k) {
                let norm = row.iter().map(|b| b * b).sum::<f64>().sqrt();
                row.iter_mut().for_each(|b| *b /= norm);
            }
        }
        // `set_static_params`: note the bandit row leaves with prob_leave_organic, as in Python.
        let transitions = [
            [
                1.0 - config.prob_organic_to_bandit - config.prob_leave_organic,
                config.prob_organic_to_bandit,
                config.prob_leave_organic,
            ],
            [
                config.prob_bandit_to_organic,
                1.0 - config.prob_bandit_to_organic - config.prob_leave_organic,
                config.prob_leave_organic,
            ],
            [0.0, 0.0, 1.0],
        ];
        Ok(World {
            config: config.clone(),
            p,
            k,
            gamma,
            gamma_t,
            mu_organic,
            gamma_blocks32,
            mu_organic32,
            max_abs_mu32,
            max_abs_gamma_row32,
            beta,
            mu_bandit,
            flip_index,
            transitions,
        })
    }

    /// The configuration this world was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Number of products P.
    pub fn num_products(&self) -> u32 {
        self.config.num_products
    }

    /// Latent dimension K.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Organic embedding `Gamma[product]` (K values).
    pub fn gamma(&self, product: u32) -> &[f64] {
        let p = product as usize;
        &self.gamma[p * self.k..(p + 1) * self.k]
    }

    /// Organic popularity offsets `mu_organic` (P values).
    pub fn mu_organic(&self) -> &[f64] {
        &self.mu_organic
    }

    /// Bandit embedding `beta[product]` (K values), flipped and normalised as configured.
    pub fn beta(&self, product: u32) -> &[f64] {
        let p = product as usize;
        &self.beta[p * self.k..(p + 1) * self.k]
    }

    /// Bandit offsets `mu_bandit` (P values): `mu_organic` permuted by the flips.
    pub fn mu_bandit(&self) -> &[f64] {
        &self.mu_bandit
    }

    /// The flip permutation of `generate_beta`: `beta[p] = Gamma[flip_index[p]]` (before
    /// normalisation) and `mu_bandit[p] = mu_organic[flip_index[p]]`. An involution; the identity
    /// when `number_of_flips` is 0.
    pub fn flip_index(&self) -> &[u32] {
        &self.flip_index
    }

    /// The 3×3 Markov matrix over (organic, bandit, stop) of `set_static_params`, rows summing to 1.
    pub fn transitions(&self) -> &[[f64; 3]; 3] {
        &self.transitions
    }

    /// Bandit score `beta[product] · omega + mu_bandit[product]`, the argument of [`ff`].
    pub(crate) fn bandit_score(&self, product: usize, omega: &[f64]) -> f64 {
        let row = &self.beta[product * self.k..(product + 1) * self.k];
        self.mu_bandit[product] + row.iter().zip(omega).map(|(b, o)| b * o).sum::<f64>()
    }

    /// Organic logit `Gamma[product] · omega + mu_organic[product]`, in f64.
    pub(crate) fn organic_logit(&self, product: usize, omega: &[f64]) -> f64 {
        let row = &self.gamma[product * self.k..(product + 1) * self.k];
        self.mu_organic[product] + row.iter().zip(omega).map(|(g, o)| g * o).sum::<f64>()
    }
}

/// The click-probability curve `ff` of `reco_env_v1.py`:
/// `sig(5 sig(2 sig(0.3 x) - 2) - 6)`, increasing in `x`, with range (0.004478, 0.029312)
/// (`sig(5 sig(-2) - 6)` and `sig(-3.5)`).
pub fn ff(x: f64) -> f64 {
    sig(5.0 * sig(2.0 * sig(0.3 * x) - 2.0) - 6.0)
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `generate_beta`'s flips: walk the off-diagonal entries of `Gamma Gammaᵀ` from the largest down
/// and swap each pair of products neither of which was swapped before, until `flips` pairs are
/// swapped. Python also walks the zeroed diagonal and the negative entries, but a diagonal entry
/// only "swaps" a product with itself (counting as a flip, changing nothing) and once the walk
/// reaches the zeros every product is used, so only positive pairs can change the permutation.
fn flip_index(gamma: &[f64], p: usize, k: usize, flips: usize) -> Vec<u32> {
    let mut index: Vec<u32> = (0..p as u32).collect();
    if flips == 0 {
        return index;
    }
    let row = |i: usize| &gamma[i * k..(i + 1) * k];
    let mut pairs: Vec<(f64, u32, u32)> = Vec::new();
    for i in 0..p {
        for j in i + 1..p {
            let cov: f64 = row(i).iter().zip(row(j)).map(|(a, b)| a * b).sum();
            if cov > 0.0 {
                pairs.push((cov, i as u32, j as u32));
            }
        }
    }
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut used = vec![false; p];
    let mut done = 0;
    for (_, i, j) in pairs {
        if done == flips {
            break;
        }
        let (iu, ju) = (i as usize, j as usize);
        if !used[iu] && !used[ju] {
            index[iu] = j;
            index[ju] = i;
            used[iu] = true;
            used[ju] = true;
            done += 1;
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of recogym's numba `ff` (float64), printed by Python.
    #[test]
    fn ff_matches_python() {
        for (x, expected) in [
            (-10.0, 0.004_714_599_838_556_593),
            (0.0, 0.009_421_517_836_464_272),
            (1.5, 0.011_808_900_798_081_823),
            (10.0, 0.026_122_821_650_616_208),
        ] {
            assert!((ff(x) - expected).abs() < 1e-15, "ff({x}) = {} != {expected}", ff(x));
        }
        assert!(ff(-1e9) > 0.004_47 && ff(-1e9) < 0.004_48 && ff(1e9) > 0.029_3 && ff(1e9) < 0.029_4);
    }
}
