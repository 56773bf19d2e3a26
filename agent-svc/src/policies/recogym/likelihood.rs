//! RecoGym's likelihood agent (the `LikelihoodAgent` of RecoGym's Getting Started notebook, the
//! paper's "log likelihood" model): logistic regression of the click on the outer product of the
//! user's organic view counts and the one-hot action, i.e. one weight vector per action over the
//! counts plus a shared intercept (scikit-learn's `LogisticRegression` with its default L2
//! penalty, C = 1); at A/B time the action with the highest click probability (greedy, `ps = 1`).
//!
//! The fit is exact Newton on the penalised log-likelihood: the Hessian is block-diagonal over
//! actions (P blocks of P×P) bordered by the intercept, so each step costs O(N·P² + P⁴) (the
//! intercept by a Schur complement); a handful of steps converge. Meant for the small catalogues
//! RecoGym experiments use (P up to a few hundred).

use std::sync::Arc;

use recogym::{Action, Agent, Context, Log, OrganicView};

use super::logs::{train_rows, TrainRows};
use super::{one_hot, UserCounts};

/// Weights of a fitted model: `w[a * P + j]` multiplies count `j` when the action is `a`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    products: usize,
    w: Vec<f64>,
    b: f64,
}

impl Logistic {
    /// The logit of a click for action `a` given the counts `x`.
    pub fn logit(&self, x: &[f64], a: usize) -> f64 {
        self.b + self.w[a * self.products..(a + 1) * self.products].iter().zip(x).map(|(w, x)| w * x).sum::<f64>()
    }

    /// The action with the highest logit (the lowest among ties).
    pub fn best(&self, x: &[f64]) -> u32 {
        let mut best = (0, f64::NEG_INFINITY);
        for a in 0..self.products {
            let z = self.logit(x, a);
            if z > best.1 {
                best = (a, z);
            }
        }
        best.0 as u32
    }
}

fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// Penalised negative log-likelihood.
fn loss(m: &Logistic, rows: &TrainRows, l2: f64) -> f64 {
    let nll: f64 = (0..rows.len())
        .map(|i| {
            let z = m.logit(rows.x(i), rows.actions[i] as usize);
            softplus(z) - if rows.clicks[i] { z } else { 0.0 }
        })
        .sum();
    nll + 0.5 * l2 * m.w.iter().map(|w| w * w).sum::<f64>()
}

/// Solves `a x = b` for a symmetric positive definite `a` (n×n, row-major) by Cholesky; `None`
/// when `a` is not positive definite.
fn cholesky_solve(a: &[f64], n: usize, rhs: &[&[f64]]) -> Option<Vec<Vec<f64>>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Some(
        rhs.iter()
            .map(|b| {
                let mut y = vec![0.0; n];
                for i in 0..n {
                    y[i] = (b[i] - (0..i).map(|k| l[i * n + k] * y[k]).sum::<f64>()) / l[i * n + i];
                }
                let mut x = vec![0.0; n];
                for i in (0..n).rev() {
                    x[i] = (y[i] - (i + 1..n).map(|k| l[k * n + i] * x[k]).sum::<f64>()) / l[i * n + i];
                }
                x
            })
            .collect(),
    )
}

/// Fits the model on `rows` with L2 penalty `l2` on the weights (not the intercept); `None`
/// without rows.
pub fn fit(rows: &TrainRows, l2: f64) -> Option<Logistic> {
    let (p, n) = (rows.products, rows.len());
    if n == 0 || p == 0 {
        return None;
    }
    let l2 = l2.max(1e-12);
    let clicks = rows.clicks.iter().filter(|&&c| c).count() as f64;
    let rate = ((clicks + 0.5) / (n as f64 + 1.0)).clamp(1e-9, 1.0 - 1e-9);
    let mut m = Logistic { products: p, w: vec![0.0; p * p], b: (rate / (1.0 - rate)).ln() };
    let mut current = loss(&m, rows, l2);
    for _ in 0..100 {
        // Gradient and Hessian blocks.
        let mut g = vec![0.0; p * p];
        let mut gb = 0.0;
        let mut blocks = vec![0.0; p * p * p];
        let mut c = vec![0.0; p * p];
        let mut d = 0.0;
        for i in 0..n {
            let (x, a) = (rows.x(i), rows.actions[i] as usize);
            let prob = sigmoid(m.logit(x, a));
            let (r, s) = (prob - f64::from(u8::from(rows.clicks[i])), prob * (1.0 - prob));
            gb += r;
            d += s;
            let block = &mut blocks[a * p * p..(a + 1) * p * p];
            for j in 0..p {
                g[a * p + j] += r * x[j];
                c[a * p + j] += s * x[j];
                if x[j] != 0.0 {
                    for k in 0..p {
                        block[j * p + k] += s * x[j] * x[k];
                    }
                }
            }
        }
        let mut u = vec![0.0; p * p];
        let mut v = vec![0.0; p * p];
        for a in 0..p {
            for j in 0..p {
                g[a * p + j] += l2 * m.w[a * p + j];
                blocks[a * p * p + j * p + j] += l2;
            }
            let solved = cholesky_solve(
                &blocks[a * p * p..(a + 1) * p * p],
                p,
                &[&g[a * p..(a + 1) * p], &c[a * p..(a + 1) * p]],
            )?;
            u[a * p..(a + 1) * p].copy_from_slice(&solved[0]);
            v[a * p..(a + 1) * p].copy_from_slice(&solved[1]);
        }
        let cu: f64 = c.iter().zip(&u).map(|(c, u)| c * u).sum();
        let cv: f64 = c.iter().zip(&v).map(|(c, v)| c * v).sum();
        let db = (gb - cu) / (d - cv).max(1e-12);
        let dw: Vec<f64> = u.iter().zip(&v).map(|(u, v)| u - v * db).collect();
        // Newton step, halved while it does not lower the loss.
        let mut step = 1.0;
        let mut next = m.clone();
        let mut improved = false;
        for _ in 0..30 {
            next.b = m.b - step * db;
            for (w, (old, dw)) in next.w.iter_mut().zip(m.w.iter().zip(&dw)) {
                *w = old - step * dw;
            }
            let value = loss(&next, rows, l2);
            if value <= current {
                improved = value < current;
                current = value;
                break;
            }
            step /= 2.0;
        }
        let size = dw.iter().fold(db.abs(), |acc, d| acc.max(d.abs())) * step;
        m = next;
        if !improved || size < 1e-10 * (1.0 + m.b.abs()) {
            break;
        }
    }
    Some(m)
}

/// The likelihood agent: fitted once by `train`, then greedy on the user's view counts.
#[derive(Debug, Clone)]
pub struct LikelihoodAgent {
    products: u32,
    l2: f64,
    model: Option<Arc<Logistic>>,
    user: UserCounts,
}

impl LikelihoodAgent {
    /// An untrained agent over `products` products with L2 penalty `l2` (1 = scikit-learn's C = 1).
    pub fn new(products: u32, l2: f64) -> Self {
        Self { products, l2, model: None, user: UserCounts::new(products) }
    }

    /// The fitted model, once trained.
    pub fn model(&self) -> Option<&Logistic> {
        self.model.as_deref()
    }
}

impl super::ServedAgent for LikelihoodAgent {
    fn logits(&self) -> Option<Vec<f64>> {
        let m = self.model.as_ref()?;
        Some((0..self.products as usize).map(|a| m.logit(self.user.counts(), a)).collect())
    }
}

impl Agent for LikelihoodAgent {
    fn reset_user(&mut self, _user_id: u64) {
        self.user.reset();
    }

    fn act(&mut self, organic: &[OrganicView], _ctx: &Context) -> Action {
        self.user.add(organic);
        let product = self.model.as_ref().map_or(0, |m| m.best(self.user.counts()));
        Action { product, ps: 1.0, ps_all: Some(one_hot(self.products, product)) }
    }

    fn train(&mut self, log: &Log) {
        let rows = train_rows(log, self.products);
        self.model = fit(&rows, self.l2).map(Arc::new);
        if self.model.is_none() {
            tracing::warn!(rows = rows.len(), "likelihood: nothing to fit; recommending product 0");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::recogym::tests::toy_log;

    #[test]
    fn newton_matches_the_closed_form_of_one_feature() {
        // One product, one action, counts all 1: logit = w + b, penalty on w only. The optimum
        // puts the click rate into b + w with w = 0 at l2 → infinity, and b + w = logit(rate)
        // for any l2: check the fitted probability equals the empirical rate.
        let rows = TrainRows {
            products: 1,
            counts: vec![1.0; 40],
            actions: vec![0; 40],
            clicks: (0..40).map(|i| i % 4 == 0).collect(),
        };
        let m = fit(&rows, 1.0).unwrap_or_else(|| panic!("no fit"));
        assert!((sigmoid(m.logit(&[1.0], 0)) - 0.25).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn fits_a_toy_log_and_prefers_the_product_that_gets_clicked() {
        let mut agent = LikelihoodAgent::new(4, 1.0);
        agent.train(&toy_log());
        let ctx = Context { user_id: 1000, time: 0, last_click: None };
        // Toy users who viewed product p click recommendations of p (and nothing else).
        for p in 0..4u32 {
            agent.reset_user(1000);
            let views = [OrganicView { time: 0, product: p }, OrganicView { time: 1, product: p }];
            let a = agent.act(&views, &ctx);
            assert_eq!((a.product, a.ps), (p, 1.0), "viewer of {p}");
        }
    }
}
