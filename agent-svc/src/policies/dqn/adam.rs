//! Adam as PyTorch computes it (`torch.optim.Adam` without weight decay or AMSGrad), plus
//! gradient-norm clipping, with one shortcut that changes no result: the embedding's rows at or
//! beyond `active_rows` are skipped.
//!
//! Invariant (the caller's): no token id at or beyond `active_rows` has ever been in a batch.
//! The vocabulary hands out ids in order, so the rows past the words seen so far never had a
//! gradient: their gradient, both moments and therefore Adam's step are exactly zero, and
//! skipping them is exact. On the sample data 314 of 20,002 rows are in use, and the dense
//! update of the whole table would dominate the cost of a learner step.

use tch::{nn::VarStore, Tensor};

/// One trainable variable and its moments.
#[derive(Debug)]
struct Param {
    value: Tensor,
    m: Tensor,
    v: Tensor,
    /// The embedding table: only its first `active_rows` rows are touched.
    row_limited: bool,
}

impl Param {
    /// `t` cut to the rows in use (the whole tensor unless row-limited).
    fn rows(&self, t: &Tensor, active_rows: i64) -> Tensor {
        if self.row_limited && active_rows < t.size()[0] {
            t.narrow(0, 0, active_rows.max(0))
        } else {
            t.shallow_clone()
        }
    }
}

/// Adam over the trainable variables of one [`VarStore`].
#[derive(Debug)]
pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    steps: i32,
    params: Vec<Param>,
}

impl Adam {
    /// Adam with PyTorch's defaults (betas 0.9, 0.999, eps 1e-8) over `vs`'s trainable
    /// variables; the variable named `row_limited` (if any) is updated only on its active rows.
    pub fn new(vs: &VarStore, lr: f64, row_limited: &str) -> Self {
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, value)| Param {
                m: value.zeros_like(),
                v: value.zeros_like(),
                row_limited: name == row_limited,
                value,
            })
            .collect();
        Self { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, steps: 0, params }
    }

    /// Steps taken.
    pub fn steps(&self) -> i32 {
        self.steps
    }

    /// Zeroes the gradients (of the active rows: the others are zero already).
    pub fn zero_grad(&self, active_rows: i64) {
        for p in &self.params {
            let g = p.value.grad();
            if g.defined() {
                let _ = p.rows(&g, active_rows).zero_();
            }
        }
    }

    /// Scales the gradients so that their global L2 norm is at most `max`; returns the norm
    /// before clipping.
    pub fn clip_grad_norm(&self, max: f64, active_rows: i64) -> Result<f64, tch::TchError> {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| (p, p.value.grad()))
                .filter(|(_, g)| g.defined())
                .map(|(p, g)| p.rows(&g, active_rows))
                .collect();
            if grads.is_empty() {
                return Ok(0.0);
            }
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let total = f64::try_from(Tensor::stack(&norms, 0).norm())?;
            let coef = max / (total + 1e-6);
            if coef < 1.0 {
                for g in &grads {
                    let _ = g.shallow_clone().f_mul_scalar_(coef)?;
                }
            }
            Ok(total)
        })
    }

    /// One Adam step from the current gradients.
    pub fn step(&mut self, active_rows: i64) -> Result<(), tch::TchError> {
        self.steps += 1;
        let bc1 = 1.0 - self.beta1.powi(self.steps);
        let bc2_sqrt = (1.0 - self.beta2.powi(self.steps)).sqrt();
        let step_size = self.lr / bc1;
        tch::no_grad(|| {
            for p in &self.params {
                let g = p.value.grad();
                if !g.defined() {
                    continue;
                }
                let (g, mut m, mut v, mut w) = (
                    p.rows(&g, active_rows),
                    p.rows(&p.m, active_rows),
                    p.rows(&p.v, active_rows),
                    p.rows(&p.value, active_rows),
                );
                // m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2 (as lerps: one
                // pass each, one temporary).
                let _ = m.f_lerp_(&g, 1.0 - self.beta1)?;
                let _ = v.f_lerp_(&g.square(), 1.0 - self.beta2)?;
                // w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), the scale folded into the
                // denominator so that the update needs no second temporary.
                let mut denom = v.sqrt();
                let _ = denom.f_div_scalar_(bc2_sqrt)?.f_add_scalar_(self.eps)?.f_div_scalar_(-step_size)?;
                let _ = w.f_addcdiv_(&m, &denom)?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::dqn::net::{batch_ids, Net, NetConfig, NetKind};
    use tch::{
        nn::{self, OptimizerConfig},
        Device, Kind,
    };

    /// Two identical nets, one trained with libtorch's Adam, one with this one.
    fn twins(cfg: &NetConfig) -> (nn::VarStore, Net, nn::VarStore, Net) {
        let (a, b) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
        let (na, nb) = (Net::new(&a.root(), cfg, 6), Net::new(&b.root(), cfg, 6));
        let (va, vb) = (crate::policies::dqn::net::vars(&a), crate::policies::dqn::net::vars(&b));
        crate::policies::dqn::net::assign(&vb, &va).unwrap_or_else(|e| panic!("{e}"));
        (a, na, b, nb)
    }

    #[test]
    fn matches_libtorch_adam_and_skipping_unused_rows_is_exact() {
        tch::manual_seed(3);
        for kind in [NetKind::Mlp, NetKind::Lstm] {
            let cfg =
                NetConfig { kind, embedding_dim: 8, lstm_units: vec![4], hidden: vec![8], ..NetConfig::paper(40, 4) };
            let (a, na, b, nb) = twins(&cfg);
            let mut reference = nn::Adam::default().build(&a, 1e-2).unwrap_or_else(|e| panic!("{e}"));
            let mut ours = Adam::new(&b, 1e-2, "embedding.weight");
            // Ids below 10 only: rows 10.. are never used, and skipped by `ours`.
            let x = batch_ids(&[&[2, 3, 9], &[4, 5], &[7]], Device::Cpu);
            for _ in 0..5 {
                let loss = na.forward(&x).pow_tensor_scalar(2).mean(Kind::Float);
                reference.zero_grad();
                loss.backward();
                reference.clip_grad_norm(0.5);
                reference.step();
                let loss = nb.forward(&x).pow_tensor_scalar(2).mean(Kind::Float);
                ours.zero_grad(10);
                loss.backward();
                ours.clip_grad_norm(0.5, 10).unwrap_or_else(|e| panic!("{e}"));
                ours.step(10).unwrap_or_else(|e| panic!("{e}"));
            }
            let (va, vb) = (a.variables(), b.variables());
            for (name, t) in &va {
                assert!(t.allclose(&vb[name], 1e-5, 1e-6, false), "{kind:?} {name} differs");
            }
            assert_eq!(ours.steps(), 5);
        }
    }
}
