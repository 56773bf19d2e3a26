//! `--policy nn`: the reference paper's "simple neural network", a 3-layer network over the
//! user's organic view counts, fitted on the logs as a click model and played greedily.
//!
//! Input: the user's view counts so far, as shares of their views (`counts / total`, zeros
//! before any view), P values. Network: `Linear(P, h1) → ReLU → Linear(h1, h2) → ReLU →
//! Linear(h2, P)`, one click logit per action. Training: on every logged recommendation, binary
//! cross-entropy between the logit of the action taken and the click (the other outputs get no
//! gradient from that row), Adam, mini-batches, a fixed number of epochs; seeded, on one
//! libtorch thread (so the weights do not depend on the machine's thread count). Trained with
//! libtorch (`tch`), then copied into plain `f32` matrices: acting is a few hundred
//! multiply-adds per state, on any thread, with no libtorch call.

use std::sync::Arc;

use anyhow::Context as _;
use recogym::{Action, Agent, Context, Log, OrganicView};
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

use super::logs::{train_rows, TrainRows};
use super::{one_hot, UserCounts};

/// Hyperparameters of `--policy nn`; each is a flag with an environment fallback.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct NnArgs {
    /// Widths of the two hidden ReLU layers of `--policy nn`, comma-separated.
    #[arg(long, env = "NN_HIDDEN", value_delimiter = ',', default_value = "64,64")]
    pub nn_hidden: Vec<i64>,
    /// Passes over the training rows.
    #[arg(long, env = "NN_EPOCHS", default_value_t = 10)]
    pub nn_epochs: usize,
    /// Rows per gradient step.
    #[arg(long, env = "NN_BATCH_SIZE", default_value_t = 1024)]
    pub nn_batch_size: i64,
    /// Adam's learning rate.
    #[arg(long, env = "NN_LR", default_value_t = 1e-3)]
    pub nn_lr: f64,
}

impl Default for NnArgs {
    fn default() -> Self {
        Self { nn_hidden: vec![64, 64], nn_epochs: 10, nn_batch_size: 1024, nn_lr: 1e-3 }
    }
}

/// One dense layer, `out × in` row-major weights.
#[derive(Debug, Clone, PartialEq)]
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    inputs: usize,
}

impl Dense {
    fn forward(&self, x: &[f32], relu: bool) -> Vec<f32> {
        self.b
            .iter()
            .enumerate()
            .map(|(o, b)| {
                let z =
                    b + self.w[o * self.inputs..(o + 1) * self.inputs].iter().zip(x).map(|(w, x)| w * x).sum::<f32>();
                if relu {
                    z.max(0.0)
                } else {
                    z
                }
            })
            .collect()
    }
}

/// The trained network, as plain matrices.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    layers: Vec<Dense>,
}

impl Mlp {
    /// The click logits of every action for view counts `counts`.
    pub fn logits(&self, counts: &[f64]) -> Vec<f32> {
        let mut x = features(counts);
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, i < last);
        }
        x
    }

    /// The action with the highest logit (the lowest among ties).
    pub fn best(&self, counts: &[f64]) -> u32 {
        let mut best = (0usize, f32::NEG_INFINITY);
        for (a, z) in self.logits(counts).into_iter().enumerate() {
            if z > best.1 {
                best = (a, z);
            }
        }
        best.0 as u32
    }
}

/// The network's input: each product's share of the user's views.
fn features(counts: &[f64]) -> Vec<f32> {
    let total: f64 = counts.iter().sum();
    counts.iter().map(|c| if total > 0.0 { (c / total) as f32 } else { 0.0 }).collect()
}

/// Trains the network on `rows`; deterministic for a seed.
pub fn fit(rows: &TrainRows, args: &NnArgs, seed: u64) -> anyhow::Result<Mlp> {
    let (p, n) = (rows.products as i64, rows.len());
    anyhow::ensure!(n > 0 && p > 0, "nn: no training rows");
    anyhow::ensure!(args.nn_hidden.len() == 2, "nn: --nn-hidden needs two widths (a 3-layer network)");
    anyhow::ensure!(args.nn_batch_size > 0 && args.nn_lr > 0.0, "nn: batch size and learning rate must be positive");
    // One libtorch thread (as the DQN runs by default): the same seed then gives the same
    // weights in every process, whatever ran before.
    crate::policies::dqn::pin_threads(1);
    tch::manual_seed(i64::from_le_bytes(seed.to_le_bytes()));
    let x: Vec<f32> = (0..n).flat_map(|i| features(rows.x(i))).collect();
    let x = Tensor::from_slice(&x).view([n as i64, p]);
    let actions: Vec<i64> = rows.actions.iter().map(|&a| i64::from(a)).collect();
    let actions = Tensor::from_slice(&actions);
    let clicks: Vec<f32> = rows.clicks.iter().map(|&c| f32::from(u8::from(c))).collect();
    let clicks = Tensor::from_slice(&clicks);

    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let (h1, h2) = (args.nn_hidden[0], args.nn_hidden[1]);
    let dims = [(p, h1), (h1, h2), (h2, p)];
    let linears: Vec<nn::Linear> = dims
        .iter()
        .enumerate()
        .map(|(i, &(i_, o))| nn::linear(&root / format!("l{i}"), i_, o, Default::default()))
        .collect();
    let mut opt = nn::Adam::default().build(&vs, args.nn_lr).context("nn: cannot build the optimiser")?;
    let forward = |x: &Tensor| -> Tensor {
        let h = linears[0].forward(x).relu();
        let h = linears[1].forward(&h).relu();
        linears[2].forward(&h)
    };
    for epoch in 0..args.nn_epochs {
        let order = Tensor::randperm(n as i64, (Kind::Int64, Device::Cpu));
        let mut total = 0.0;
        let mut batches = 0;
        for start in (0..n as i64).step_by(args.nn_batch_size as usize) {
            let idx = order.narrow(0, start, args.nn_batch_size.min(n as i64 - start));
            let logits = forward(&x.index_select(0, &idx));
            let taken = logits.gather(1, &actions.index_select(0, &idx).unsqueeze(1), false).squeeze_dim(1);
            let loss = taken.binary_cross_entropy_with_logits::<Tensor>(
                &clicks.index_select(0, &idx),
                None,
                None,
                Reduction::Mean,
            );
            opt.backward_step(&loss);
            total += loss.double_value(&[]);
            batches += 1;
        }
        tracing::debug!(epoch, loss = total / f64::from(batches.max(1)), "nn epoch");
    }
    let layers = linears
        .iter()
        .zip(dims)
        .map(|(l, (inputs, _))| {
            let w = Vec::<f32>::try_from(l.ws.detach().to_kind(Kind::Float).flatten(0, -1))?;
            let b = match &l.bs {
                Some(b) => Vec::<f32>::try_from(b.detach().to_kind(Kind::Float))?,
                None => vec![0.0; w.len() / inputs as usize],
            };
            Ok(Dense { w, b, inputs: inputs as usize })
        })
        .collect::<Result<Vec<Dense>, tch::TchError>>()
        .context("nn: cannot read the trained weights")?;
    Ok(Mlp { layers })
}

/// The network agent: fitted once by `train`, then greedy on the user's view counts.
#[derive(Debug, Clone)]
pub struct NnAgent {
    products: u32,
    args: NnArgs,
    seed: u64,
    model: Option<Arc<Mlp>>,
    user: UserCounts,
}

impl NnAgent {
    /// An untrained agent over `products` products.
    pub fn new(products: u32, args: NnArgs, seed: u64) -> Self {
        Self { products, args, seed, model: None, user: UserCounts::new(products) }
    }

    /// The trained network, once trained.
    pub fn model(&self) -> Option<&Mlp> {
        self.model.as_deref()
    }
}

impl super::ServedAgent for NnAgent {
    fn logits(&self) -> Option<Vec<f64>> {
        let m = self.model.as_ref()?;
        Some(m.logits(self.user.counts()).into_iter().map(f64::from).collect())
    }
}

impl Agent for NnAgent {
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
        match fit(&rows, &self.args, self.seed) {
            Ok(m) => self.model = Some(Arc::new(m)),
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), rows = rows.len(), "nn not trained; recommending product 0")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::recogym::tests::toy_log;

    #[test]
    fn fits_a_toy_log_and_prefers_the_product_that_gets_clicked() {
        let _rng = crate::policies::dqn::net::torch_rng_guard();
        let args = NnArgs { nn_epochs: 60, nn_lr: 1e-2, nn_batch_size: 64, ..NnArgs::default() };
        let mut agent = NnAgent::new(4, args, 7);
        agent.train(&toy_log());
        assert!(agent.model().is_some());
        let ctx = Context { user_id: 1000, time: 0, last_click: None };
        for p in 0..4u32 {
            agent.reset_user(1000);
            let views = [OrganicView { time: 0, product: p }, OrganicView { time: 1, product: p }];
            assert_eq!(agent.act(&views, &ctx).product, p, "viewer of {p}");
        }
    }

    #[test]
    fn the_copied_network_computes_what_libtorch_computed() {
        let dense = Dense { w: vec![1.0, -1.0, 0.5, 2.0], b: vec![0.0, 1.0], inputs: 2 };
        assert_eq!(dense.forward(&[1.0, 3.0], true), vec![0.0, 7.5]);
        assert_eq!(dense.forward(&[1.0, 3.0], false), vec![-2.0, 7.5]);
        assert_eq!(features(&[1.0, 3.0]), vec![0.25, 0.75]);
        assert_eq!(features(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}
