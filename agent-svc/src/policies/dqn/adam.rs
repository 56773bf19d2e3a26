//! Adam as PyTorch computes it (`torch.optim.Adam` without weight decay or AMSGrad), plus
//! gradient-norm clipping, with one shortcut that changes no result and one lazy variable.
//!
//! - The embedding's rows at or beyond `active` are skipped. Invariant (the caller's): no token
//!   id at or beyond `active` has ever been in a batch. The vocabulary hands out ids in order,
//!   so the rows past the words seen so far never had a gradient: their gradient, both moments
//!   and therefore Adam's step are exactly zero, and skipping them is exact. On the sample data
//!   314 of 20,002 rows are in use, and the dense update of the whole table would dominate the
//!   cost of a learner step.
//! - The wide table (`--dqn-wide`, one row per product) is updated lazily, as PyTorch's
//!   `SparseAdam` and TensorFlow Addons' `LazyAdam` do: only the rows of the batch's products
//!   have their moments and weights updated; the other rows' moments do not decay meanwhile.
//!   A batch touches at most 64 of its rows, and the dense update of n_actions² floats would
//!   cost more than the rest of the step. Invariant (the caller's): the table's gradient is
//!   zero outside the rows it names.
//! - The tower head's item tables (`item_id`, `item_bias`, one row per product) are not trainable
//!   as whole tables: a step gathers the rows it reads as small leaves ([`ItemRows`]), and Adam
//!   updates exactly those rows from the leaves' gradients, lazily as above. The gradient of a
//!   step is then `[rows, dim]`, never `[n_actions, dim]`.

use tch::{nn::VarStore, Tensor};

use super::net::{ItemRows, PairRows};

/// How a variable's rows are updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Update {
    /// Every element, every step.
    Dense,
    /// The first `active` rows only (the embedding).
    Prefix,
    /// The rows named by the step only (the wide table).
    Lazy,
    /// The rows a step gathered as leaves of their own (the tower's item tables).
    Gathered,
}

/// The tower's item tables, by variable name.
const GATHERED: [&str; 3] = ["item_bias", "item_id", "wide_pairs"];

/// The rows the current gradient can be non-zero in, for the row-sparse variables.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    /// Embedding rows in use: `0..active`.
    pub active: i64,
    /// Distinct rows of the wide table in the batch (`None`: the table got no gradient).
    pub lazy: Option<&'a Tensor>,
    /// The item rows the step gathered (the tower head), whose leaves hold the gradient.
    pub gathered: Option<&'a ItemRows>,
    /// The slots of the sparse wide table the step gathered (the tower head).
    pub pairs: Option<&'a PairRows>,
}

impl<'a> Rows<'a> {
    /// The rows of `p` this step updates and the gradient on them, for the row-sparse kinds.
    fn sparse(&self, name: &str, update: Update, value_grad: &Tensor) -> Option<(&'a Tensor, Tensor)> {
        match update {
            Update::Lazy => self.lazy.map(|r| (r, value_grad.index_select(0, r))),
            Update::Gathered if name == "wide_pairs" => self.pairs.map(|p| (&p.index, p.leaf.grad())),
            Update::Gathered => self.gathered.map(|g| {
                let leaf = if name == "item_id" { &g.id } else { &g.bias };
                (&g.index, leaf.grad())
            }),
            Update::Dense | Update::Prefix => None,
        }
    }
}

/// One trainable variable and its moments.
#[derive(Debug)]
struct Param {
    name: String,
    value: Tensor,
    m: Tensor,
    v: Tensor,
    update: Update,
    /// This variable's learning rate: the optimiser's, unless [`Adam::set_lr`] gave it another.
    lr: f64,
}

impl Param {
    /// `t` cut to the rows in use (the whole tensor unless row-limited); a view, written in place.
    fn rows(&self, t: &Tensor, rows: Rows<'_>) -> Tensor {
        if self.update == Update::Prefix && rows.active < t.size()[0] {
            t.narrow(0, 0, rows.active.max(0))
        } else {
            t.shallow_clone()
        }
    }
}

/// Adam over the trainable variables of one [`VarStore`].
#[derive(Debug)]
pub struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    steps: i32,
    params: Vec<Param>,
}

impl Adam {
    /// Adam with PyTorch's defaults (betas 0.9, 0.999, eps 1e-8) over `vs`'s trainable
    /// variables; the variable named `row_limited` (if any) is updated only on its active rows,
    /// the one named `lazy` (if any) only on the rows each step names.
    pub fn new(vs: &VarStore, lr: f64, row_limited: &str, lazy: &str) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, t)| t.requires_grad() || GATHERED.contains(&name.as_str()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, value)| Param {
                m: value.zeros_like(),
                v: value.zeros_like(),
                update: if name == row_limited {
                    Update::Prefix
                } else if name == lazy {
                    Update::Lazy
                } else if GATHERED.contains(&name.as_str()) {
                    Update::Gathered
                } else {
                    Update::Dense
                },
                name,
                value,
                lr,
            })
            .collect();
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, steps: 0, params }
    }

    /// Gives the variables named in `names` a learning rate of their own (Wide & Deep trains
    /// its wide part faster than its deep one); returns how many variables took it.
    pub fn set_lr(&mut self, names: &[&str], lr: f64) -> usize {
        let mut n = 0;
        for p in self.params.iter_mut().filter(|p| names.contains(&p.name.as_str())) {
            p.lr = lr;
            n += 1;
        }
        n
    }

    /// Steps taken.
    pub fn steps(&self) -> i32 {
        self.steps
    }

    /// Zeroes the gradients (of the active rows: the others are zero already; a lazy variable's
    /// gradient is zeroed by the step that applied it).
    pub fn zero_grad(&self, rows: Rows<'_>) {
        for p in self.params.iter().filter(|p| matches!(p.update, Update::Dense | Update::Prefix)) {
            let g = p.value.grad();
            if g.defined() {
                let _ = p.rows(&g, rows).zero_();
            }
        }
    }

    /// The gradients that can be non-zero, each cut to its rows (copies for a lazy variable,
    /// the leaves' own for gathered rows), with the rows they are of for the row-sparse kinds.
    fn grads(&self, rows: Rows<'_>) -> Vec<(&Param, Tensor, Option<Tensor>)> {
        self.params
            .iter()
            .filter_map(|p| match p.update {
                Update::Lazy | Update::Gathered => {
                    let g = if p.update == Update::Lazy { p.value.grad() } else { Tensor::new() };
                    if p.update == Update::Lazy && !g.defined() {
                        return None;
                    }
                    let (r, g) = rows.sparse(&p.name, p.update, &g)?;
                    g.defined().then(|| (p, g, Some(r.shallow_clone())))
                }
                Update::Dense | Update::Prefix => {
                    let g = p.value.grad();
                    g.defined().then(|| (p, p.rows(&g, rows), None))
                }
            })
            .collect()
    }

    /// Scales the gradients so that their global L2 norm is at most `max`; returns the norm
    /// before clipping.
    pub fn clip_grad_norm(&self, max: f64, rows: Rows<'_>) -> Result<f64, tch::TchError> {
        tch::no_grad(|| {
            let grads = self.grads(rows);
            if grads.is_empty() {
                return Ok(0.0);
            }
            let norms: Vec<Tensor> = grads.iter().map(|(_, g, _)| g.norm()).collect();
            let total = f64::try_from(Tensor::stack(&norms, 0).norm())?;
            let coef = max / (total + 1e-6);
            if coef < 1.0 {
                for (p, g, r) in &grads {
                    // In place: a dense, prefix or gathered gradient is the gradient itself.
                    let _ = g.shallow_clone().f_mul_scalar_(coef)?;
                    if let (Update::Lazy, Some(r)) = (p.update, r) {
                        let _ = p.value.grad().f_index_copy_(0, r, g)?;
                    }
                }
            }
            Ok(total)
        })
    }

    /// One Adam step from the current gradients.
    pub fn step(&mut self, rows: Rows<'_>) -> Result<(), tch::TchError> {
        self.steps += 1;
        let bc1 = 1.0 - self.beta1.powi(self.steps);
        let bc2_sqrt = (1.0 - self.beta2.powi(self.steps)).sqrt();
        tch::no_grad(|| {
            for (p, g, sparse) in self.grads(rows) {
                let step_size = p.lr / bc1;
                let lazy = sparse.as_ref();
                let (mut m, mut v, mut w) = match lazy {
                    Some(r) => (p.m.index_select(0, r), p.v.index_select(0, r), p.value.index_select(0, r)),
                    None => (p.rows(&p.m, rows), p.rows(&p.v, rows), p.rows(&p.value, rows)),
                };
                // m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2 (as lerps: one
                // pass each, one temporary).
                let _ = m.f_lerp_(&g, 1.0 - self.beta1)?;
                let _ = v.f_lerp_(&g.square(), 1.0 - self.beta2)?;
                // w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), the scale folded into the
                // denominator so that the update needs no second temporary.
                let mut denom = v.sqrt();
                let _ = denom.f_div_scalar_(bc2_sqrt)?.f_add_scalar_(self.eps)?.f_div_scalar_(-step_size)?;
                let _ = w.f_addcdiv_(&m, &denom)?;
                if let Some(r) = lazy {
                    // Write the rows back, and clear their gradient for the next backward pass.
                    let (mut pm, mut pv, mut pw) = (p.m.shallow_clone(), p.v.shallow_clone(), p.value.shallow_clone());
                    let _ = pm.f_index_copy_(0, r, &m)?;
                    let _ = pv.f_index_copy_(0, r, &v)?;
                    let _ = pw.f_index_copy_(0, r, &w)?;
                    if p.update == Update::Lazy {
                        let _ = p.value.grad().f_index_fill_(0, r, 0.0)?;
                    }
                }
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
        let _rng = crate::policies::dqn::net::torch_rng_guard();
        tch::manual_seed(3);
        for kind in [NetKind::Mlp, NetKind::Lstm] {
            let cfg =
                NetConfig { kind, embedding_dim: 8, lstm_units: vec![4], hidden: vec![8], ..NetConfig::paper(40, 4) };
            let (a, na, b, nb) = twins(&cfg);
            let mut reference = nn::Adam::default().build(&a, 1e-2).unwrap_or_else(|e| panic!("{e}"));
            let mut ours = Adam::new(&b, 1e-2, "embedding.weight", "");
            // Ids below 10 only: rows 10.. are never used, and skipped by `ours`.
            let x = batch_ids(&[&[2, 3, 9], &[4, 5], &[7]], Device::Cpu);
            for _ in 0..5 {
                let loss = na.forward(&x, None).pow_tensor_scalar(2).mean(Kind::Float);
                reference.zero_grad();
                loss.backward();
                reference.clip_grad_norm(0.5);
                reference.step();
                let loss = nb.forward(&x, None).pow_tensor_scalar(2).mean(Kind::Float);
                ours.zero_grad(Rows { active: 10, lazy: None, gathered: None, pairs: None });
                loss.backward();
                ours.clip_grad_norm(0.5, Rows { active: 10, lazy: None, gathered: None, pairs: None })
                    .unwrap_or_else(|e| panic!("{e}"));
                ours.step(Rows { active: 10, lazy: None, gathered: None, pairs: None })
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            let (va, vb) = (a.variables(), b.variables());
            for (name, t) in &va {
                assert!(t.allclose(&vb[name], 1e-5, 1e-6, false), "{kind:?} {name} differs");
            }
            assert_eq!(ours.steps(), 5);
        }
    }

    #[test]
    fn a_variable_with_a_learning_rate_of_its_own_moves_by_it() {
        // Adam's first step moves every element with a gradient by exactly its learning rate.
        let vs = nn::VarStore::new(Device::Cpu);
        let (a, b) = (vs.root().zeros("wide", &[3]), vs.root().zeros("other", &[3]));
        let mut opt = Adam::new(&vs, 1e-3, "", "");
        assert_eq!(opt.set_lr(&["wide", "wide_pairs"], 0.05), 1, "one of the two names is a variable here");
        let rows = Rows { active: 0, lazy: None, gathered: None, pairs: None };
        opt.zero_grad(rows);
        (&a + &b).sum(Kind::Float).backward();
        opt.step(rows).unwrap_or_else(|e| panic!("{e}"));
        let moved = |t: &Tensor| f64::try_from(t.abs().max()).unwrap_or_else(|e| panic!("{e}"));
        assert!((moved(&a) - 0.05).abs() < 1e-6 && (moved(&b) - 1e-3).abs() < 1e-7, "{} {}", moved(&a), moved(&b));
    }

    #[test]
    fn the_lazy_table_is_adam_on_the_rows_named_and_leaves_the_others() {
        let _rng = crate::policies::dqn::net::torch_rng_guard();
        tch::manual_seed(4);
        let cfg =
            NetConfig { kind: NetKind::Mlp, embedding_dim: 4, hidden: vec![4], wide: true, ..NetConfig::paper(10, 4) };
        let (a, na, b, nb) = twins(&cfg);
        let mut reference = nn::Adam::default().build(&a, 1e-2).unwrap_or_else(|e| panic!("{e}"));
        let mut ours = Adam::new(&b, 1e-2, "embedding.weight", "wide");
        // Six actions: the table has 7 rows. A batch naming every row: lazy is plain Adam.
        let x = batch_ids(&[&[2], &[3], &[4], &[2], &[3], &[4], &[5]], Device::Cpu);
        let all = Tensor::arange(7, (Kind::Int64, Device::Cpu));
        let rows = Rows { active: 12, lazy: Some(&all), gathered: None, pairs: None };
        for _ in 0..4 {
            let loss = (na.forward(&x, Some(&all)) - 1.0).square().mean(Kind::Float);
            reference.zero_grad();
            loss.backward();
            reference.clip_grad_norm(0.5);
            reference.step();
            let loss = (nb.forward(&x, Some(&all)) - 1.0).square().mean(Kind::Float);
            ours.zero_grad(rows);
            loss.backward();
            ours.clip_grad_norm(0.5, rows).unwrap_or_else(|e| panic!("{e}"));
            ours.step(rows).unwrap_or_else(|e| panic!("{e}"));
        }
        let (va, vb) = (a.variables(), b.variables());
        for (name, t) in &va {
            assert!(t.allclose(&vb[name], 1e-5, 1e-6, false), "{name} differs");
        }
        // A batch of product 1 only: row 1 moves, every other row stays as it was.
        let before = vb["wide"].copy();
        let one = Tensor::from_slice(&[1i64, 1]);
        let x = batch_ids(&[&[2], &[3]], Device::Cpu);
        let rows = Rows { active: 12, lazy: Some(&Tensor::from_slice(&[1i64])), gathered: None, pairs: None };
        let loss = (nb.forward(&x, Some(&one)) - 1.0).square().mean(Kind::Float);
        ours.zero_grad(rows);
        loss.backward();
        ours.step(rows).unwrap_or_else(|e| panic!("{e}"));
        let moved = (vb["wide"].copy() - before).abs().sum_dim_intlist(1, false, Kind::Float);
        let moved = Vec::<f32>::try_from(moved).unwrap_or_else(|e| panic!("{e}"));
        assert!(moved[1] > 0.0, "{moved:?}");
        assert!(moved.iter().enumerate().all(|(i, &d)| i == 1 || d == 0.0), "{moved:?}");
        let grad = vb["wide"].grad();
        assert_eq!(f64::try_from(grad.abs().sum(Kind::Float)).unwrap_or(1.0), 0.0, "gradient cleared");
    }
}
