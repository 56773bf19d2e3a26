//! Organic views: a product drawn from `softmax(Gamma omega + mu_organic)`
//! (`RecoEnv1.update_product_view`), the simulator's hot loop at large P (O(P·K) per view).
//!
//! Two samplers with the same distribution, the f64 softmax:
//! - exact: f64 logits and weights, then inverse CDF, as numpy's `choice`;
//! - fast (used unless the inputs are extreme): the same inverse CDF over f32 weights, which
//!   vectorise twice as wide, corrected by rejection. A proposed product `x` is accepted with
//!   probability `(w64[x] / w32[x]) / R`, where `w64` is its exact f64 weight and `R` bounds that
//!   ratio over all products (from a rounding-error bound of the f32 computation). The accepted
//!   draws then follow `w64` exactly, without ever computing the f64 normaliser; `R` exceeds 1 by
//!   about 1e-5, so a proposal is rejected about once in 1e5 views.
//!
//! Both write their loops so that the autovectoriser handles them: `Gamma` stored column by
//! column, one pass per latent dimension, a branch-free `exp` instead of libm's, and sums by
//! blocks of [`BLOCK`] products.

use rand::Rng;

use crate::world::World;

/// Products per block: weights are summed by block so the inverse CDF walks block sums first.
pub(crate) const BLOCK: usize = 8;

/// Above this bound on the f32 logits' error the exact sampler is used (never at sane settings:
/// the default world's bound is about 2e-5).
const MAX_FAST_LOG_ERROR: f64 = 1e-3;

/// Bound on the relative error of [`exp_f32`] on [-80, 0], with a wide margin over the measured
/// 3e-7 (see the test `exp_f32_error_is_within_bound`).
const EXP_F32_REL_ERROR: f64 = 4e-6;

/// Scratch buffers of one user's organic sampler (no allocation per view).
#[derive(Debug, Clone)]
pub(crate) struct OrganicSampler {
    w64: Vec<f64>,
    w32: Vec<f32>,
    block_sums: Vec<f64>,
    omega32: Vec<f32>,
}

impl OrganicSampler {
    pub(crate) fn new(world: &World) -> OrganicSampler {
        OrganicSampler {
            w64: Vec::new(),
            w32: vec![0.0; world.p.div_ceil(BLOCK) * BLOCK],
            block_sums: vec![0.0; world.p.div_ceil(BLOCK)],
            omega32: vec![0.0; world.k],
        }
    }

    /// One organic view of a user with latent vector `omega`.
    pub(crate) fn draw<R: Rng>(&mut self, world: &World, omega: &[f64], rng: &mut R) -> u32 {
        let log_error = f32_log_error_bound(world, omega);
        if log_error <= MAX_FAST_LOG_ERROR {
            self.draw_fast(world, omega, log_error, rng)
        } else {
            self.draw_exact(world, omega, rng)
        }
    }

    /// The exact sampler: f64 weights, inverse CDF.
    pub(crate) fn draw_exact<R: Rng>(&mut self, world: &World, omega: &[f64], rng: &mut R) -> u32 {
        self.w64.resize(world.p, 0.0);
        let total = weights_f64(world, omega, &mut self.w64, &mut self.block_sums);
        inverse_cdf(&self.w64, &self.block_sums, rng.random::<f64>() * total) as u32
    }

    /// The fast sampler: f32 proposal, f64 rejection correction.
    fn draw_fast<R: Rng>(&mut self, world: &World, omega: &[f64], log_error: f64, rng: &mut R) -> u32 {
        for (o32, &o) in self.omega32.iter_mut().zip(omega) {
            *o32 = o as f32;
        }
        let (total, max32) = weights_f32(world, &self.omega32, &mut self.w32, &mut self.block_sums);
        // R >= exp(|logit error|) / (1 - exp error) >= w64[x] / w32[x] for every x.
        let bound = (log_error + 2.0 * EXP_F32_REL_ERROR).exp();
        let shift = f64::from(max32);
        loop {
            let x = inverse_cdf(&self.w32, &self.block_sums, rng.random::<f64>() * total);
            let exact = (world.organic_logit(x, omega) - shift).exp();
            if rng.random::<f64>() * bound * f64::from(self.w32[x]) < exact {
                return x as u32;
            }
        }
    }
}

/// Bound on `|l32 - l64| + |rounding of l32 - max32|` for every product, where `l32` is the f32
/// logit computed by [`weights_f32`] from f32-rounded inputs: a sum of K + 1 terms with inputs
/// rounded once costs at most γ(K + 3) times the sum of the terms' magnitudes, bounded by
/// `L = max|mu| + max_p Σ_k |Gamma[p][k]| · max_k |omega_k|`; the subtraction of the maximum adds
/// at most 2uL. So `(K + 6) u L`, u = 2^-24, with 1 % to spare for the higher-order terms.
fn f32_log_error_bound(world: &World, omega: &[f64]) -> f64 {
    let max_omega = omega.iter().fold(0.0f64, |m, &o| m.max(o.abs()));
    let magnitude = world.max_abs_mu32 + world.max_abs_gamma_row32 * max_omega;
    let unit = f64::from(f32::EPSILON) / 2.0;
    1.01 * (world.k as f64 + 6.0) * unit * magnitude
}

/// `exp(logit - max)` of every product into `weights` (f64), block sums into `block_sums`;
/// returns their total.
fn weights_f64(world: &World, omega: &[f64], weights: &mut [f64], block_sums: &mut [f64]) -> f64 {
    // Column by column: each pass is a plain vectorised axpy over all products.
    weights.copy_from_slice(&world.mu_organic);
    for (column, &o) in world.gamma_t.chunks_exact(world.p).zip(omega) {
        for (w, &g) in weights.iter_mut().zip(column) {
            *w += g * o;
        }
    }
    let max = weights.iter().fold(f64::NEG_INFINITY, |m, &w| if w > m { w } else { m });
    // No reduction in this loop, so that it vectorises.
    for w in weights.iter_mut() {
        *w = exp_f64(*w - max);
    }
    sum_blocks(weights, block_sums)
}

/// [`weights_f64`] in f32 (from `World`'s f32 copies of `Gamma` and `mu_organic`); block sums and
/// total in f64. Also returns the f32 maximum logit that was subtracted.
fn weights_f32(world: &World, omega: &[f32], weights: &mut [f32], block_sums: &mut [f64]) -> (f64, f32) {
    let k = world.k;
    // Block by block, from World's block-major copy: the K×BLOCK block of Gamma is contiguous and
    // the running sums stay in registers.
    for ((block, mu), gamma) in weights
        .chunks_exact_mut(BLOCK)
        .zip(world.mu_organic32.chunks_exact(BLOCK))
        .zip(world.gamma_blocks32.chunks_exact(k * BLOCK))
    {
        let mut acc = [0.0f32; BLOCK];
        acc.copy_from_slice(mu);
        for (column, &o) in gamma.chunks_exact(BLOCK).zip(omega) {
            for (a, &g) in acc.iter_mut().zip(column) {
                *a += g * o;
            }
        }
        block.copy_from_slice(&acc);
    }
    let max = weights.iter().fold(f32::NEG_INFINITY, |m, &w| if w > m { w } else { m });
    for w in weights.iter_mut() {
        *w = exp_f32(*w - max);
    }
    // Padding products (mu = -inf) must never be drawn.
    weights[world.p..].iter_mut().for_each(|w| *w = 0.0);
    (sum_blocks(weights, block_sums), max)
}

/// Sums of `weights` by blocks (in f64) into `block_sums`, and their total.
fn sum_blocks<T: Copy + Into<f64>>(weights: &[T], block_sums: &mut [f64]) -> f64 {
    for (block, sum) in weights.chunks(BLOCK).zip(block_sums.iter_mut()) {
        *sum = match <&[T; BLOCK]>::try_from(block) {
            Ok(&[a, b, c, d, e, f, g, h]) => {
                ((a.into() + b.into()) + (c.into() + d.into())) + ((e.into() + f.into()) + (g.into() + h.into()))
            }
            Err(_) => block.iter().map(|&w| w.into()).sum(),
        };
    }
    block_sums.iter().sum()
}

/// The product whose cumulative weight interval contains `target` (`0 <= target < total`):
/// block sums first, then the block. Rounding that leaves `target` past the end gives the last
/// product with positive weight.
fn inverse_cdf<T: Copy + Into<f64>>(weights: &[T], block_sums: &[f64], mut target: f64) -> usize {
    for (b, &block_sum) in block_sums.iter().enumerate() {
        if target < block_sum {
            let start = b * BLOCK;
            let block = &weights[start..(start + BLOCK).min(weights.len())];
            for (j, &w) in block.iter().enumerate() {
                let w = w.into();
                if target < w {
                    return start + j;
                }
                target -= w;
            }
            if let Some(j) = block.iter().rposition(|&w| w.into() > 0.0) {
                return start + j;
            }
        }
        target -= block_sum;
    }
    weights.iter().rposition(|&w| w.into() > 0.0).unwrap_or(0)
}

/// 1 / i! for i = 0..=11.
const INV_FACTORIAL: [f64; 12] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5_040.0,
    1.0 / 40_320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
];

/// `exp(x)` for `x <= 0` (below -708 it returns exp(-708) instead of a denormal or 0), about 1e-14
/// relative, branch- and call-free so that loops over it vectorise. Cody–Waite reduction
/// `x = n ln 2 + r` with |r| <= ln 2 / 2, a degree-11 Taylor polynomial for `exp(r)` (Estrin's
/// scheme, for short dependency chains), and `2^n` built from its exponent bits (`n` is read
/// from the mantissa of `x log2(e) + 1.5·2^52`, so no float-to-int conversion is needed).
#[inline(always)]
pub(crate) fn exp_f64(x: f64) -> f64 {
    const LN2_HI: f64 = 6.931_471_803_691_238e-1;
    const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52: adding it rounds to an integer.
    let x = if x < -708.0 { -708.0 } else { x };
    let shifted = x * std::f64::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let r4 = r2 * r2;
    let c = |i: usize| INV_FACTORIAL[i];
    let q0 = (c(0) + c(1) * r) + (c(2) + c(3) * r) * r2;
    let q1 = (c(4) + c(5) * r) + (c(6) + c(7) * r) * r2;
    let q2 = (c(8) + c(9) * r) + (c(10) + c(11) * r) * r2;
    let poly = q0 + (q1 + q2 * r4) * r4;
    // The low bits of `shifted` hold n (two's complement); 2^n has biased exponent n + 1023.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    poly * f64::from_bits(n_bits.wrapping_add(1023) << 52)
}

/// [`exp_f64`] in f32 for `x <= 0`, clamped at -80 (so every weight stays a positive normal f32):
/// degree-6 polynomial, relative error below [`EXP_F32_REL_ERROR`].
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 355/512, exact in few bits: n * LN2_HI is exact.
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = if x < -80.0 { -80.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let q0 = (1.0 + r) + (0.5 + r * (1.0 / 6.0)) * r2;
    let q1 = ((1.0 / 24.0) + r * (1.0 / 120.0)) + (1.0 / 720.0) * r2;
    let poly = q0 + q1 * (r2 * r2);
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    poly * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::rng::{self, Domain};
    use rand_distr::StandardNormal;

    #[test]
    fn exp_f64_matches_libm() {
        let mut x = 0.0;
        while x > -708.0 {
            let (fast, libm) = (exp_f64(x), x.exp());
            assert!(((fast - libm) / libm).abs() < 1e-14, "exp({x}): {fast} vs {libm}");
            x -= 0.013_7;
        }
        assert_eq!(exp_f64(0.0), 1.0);
        assert!(exp_f64(-1e6) > 0.0 && exp_f64(-1e6) < 1e-300);
        assert!(exp_f64(f64::NEG_INFINITY) > 0.0);
    }

    #[test]
    fn exp_f32_error_is_within_bound() {
        let mut worst = 0.0f64;
        for i in 0..=800_000 {
            let x = -(i as f32) * 1e-4;
            let exact = f64::from(x).exp();
            worst = worst.max(((f64::from(exp_f32(x)) - exact) / exact).abs());
        }
        assert!(worst < EXP_F32_REL_ERROR / 4.0, "worst relative error {worst}");
        assert!(exp_f32(-1000.0) >= f32::MIN_POSITIVE);
    }

    /// The fast sampler's acceptance bound really bounds w64 / w32 for every product, for many
    /// users of a large world with spread-out popularity.
    #[test]
    fn rejection_bound_holds() {
        let config = Config { num_products: 500, sigma_mu_organic: 6.0, ..Config::default() };
        let world = World::new(&config);
        let mut sampler = OrganicSampler::new(&world);
        let mut rng = rng::stream(1, Domain::User, 0);
        let mut worst = 0.0f64;
        for _ in 0..200 {
            let omega: Vec<f64> = (0..world.k).map(|_| 2.0 * rng.sample::<f64, _>(StandardNormal)).collect();
            let log_error = f32_log_error_bound(&world, &omega);
            assert!(log_error < MAX_FAST_LOG_ERROR);
            let bound = (log_error + 2.0 * EXP_F32_REL_ERROR).exp();
            for (o32, &o) in sampler.omega32.iter_mut().zip(&omega) {
                *o32 = o as f32;
            }
            let (_, max32) = weights_f32(&world, &sampler.omega32, &mut sampler.w32, &mut sampler.block_sums);
            for (x, &w32) in sampler.w32[..world.p].iter().enumerate() {
                let exact = (world.organic_logit(x, &omega) - f64::from(max32)).exp();
                let ratio = exact / f64::from(w32);
                assert!(ratio <= bound, "product {x}: ratio {ratio} > bound {bound}");
                worst = worst.max((ratio - 1.0).abs());
            }
        }
        assert!(worst > 0.0 && worst < 1e-4, "worst ratio deviation {worst}");
    }

    /// Both samplers draw from the exact softmax: frequencies within 5 standard errors.
    #[test]
    fn samplers_follow_the_softmax() {
        let config = Config { num_products: 13, sigma_mu_organic: 1.0, ..Config::default() };
        let world = World::new(&config);
        let omega = [0.3, -1.2, 0.8, 0.0, 0.5];
        let logits: Vec<f64> = (0..13).map(|x| world.organic_logit(x, &omega)).collect();
        let z: f64 = logits.iter().map(|l| l.exp()).sum();
        let probs: Vec<f64> = logits.iter().map(|l| l.exp() / z).collect();
        let mut sampler = OrganicSampler::new(&world);
        let mut rng = rng::stream(2, Domain::User, 0);
        let n = 200_000;
        for fast in [true, false] {
            let mut counts = [0u32; 13];
            for _ in 0..n {
                let x = if fast {
                    sampler.draw(&world, &omega, &mut rng)
                } else {
                    sampler.draw_exact(&world, &omega, &mut rng)
                };
                counts[x as usize] += 1;
            }
            for (x, (&c, &p)) in counts.iter().zip(&probs).enumerate() {
                let se = (p * (1.0 - p) / f64::from(n)).sqrt();
                let freq = f64::from(c) / f64::from(n);
                assert!((freq - p).abs() < 5.0 * se + 1e-9, "fast={fast} product {x}: {freq} vs {p}");
            }
        }
    }
}
