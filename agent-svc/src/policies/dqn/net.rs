//! The Q-network: token ids of a state's text in, one Q-value per action out.
//!
//! `lstm` (the reference paper's network): embedding, stacked bidirectional LSTMs (all but the
//! last return sequences; the last returns its two final hidden states, forward then backward,
//! as Keras' `Bidirectional(LSTM(..))` does), dense layers with ReLU, a linear output. `mlp`: the
//! same embedding averaged over the non-padding tokens, then the same dense layers and output.
//!
//! `wide` (either network) adds a learned table of Q-value offsets with one row per current
//! product (the state's product index) and one column per action, as the "wide" part of Google's
//! Wide & Deep (Cheng et al., 2016): `Q(s, a) = deep(s)[a] + W[item(s), a]`. The deep part
//! generalises over text; the table memorises product-to-product effects that the deep part's
//! narrow layers cannot hold for every product (measured in docs/DQN.md).
//!
//! Invariant: two nets built from the same [`NetConfig`] and action count have the same variables
//! under the same names, so weights move between them by name ([`Net::vars`] order).

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, nn::RNN, Device, Kind, Tensor};

use super::vocab::{Vocab, PAD};

/// Which network maps a state's tokens to Q-values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetKind {
    /// Embedding, stacked bidirectional LSTMs, dense layers (the reference paper's network).
    Lstm,
    /// Embedding averaged over the tokens, dense layers: much cheaper, for small machines and tests.
    Mlp,
}

/// The shape of the network; a checkpoint only loads into a net of the same shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Network family.
    pub kind: NetKind,
    /// Words the vocabulary holds (the embedding has two more rows: padding, out of vocabulary).
    pub vocab_size: usize,
    /// Tokens per state at most.
    pub max_tokens: usize,
    /// Width of the token embedding.
    pub embedding_dim: i64,
    /// Units of each bidirectional LSTM layer (`lstm` only; each layer outputs twice as many).
    pub lstm_units: Vec<i64>,
    /// Widths of the dense ReLU layers before the output.
    pub hidden: Vec<i64>,
    /// `mlp` only: also feed the first token's embedding on its own, next to the average (the
    /// product id when `--dqn-id-token` puts it first), so one token is not drowned by the rest.
    #[serde(default)]
    pub lead_token: bool,
    /// A wide table of Q-value offsets indexed by the state's product (`n_actions + 1` rows, the
    /// last for a product index out of range) and action; its size grows with the square of
    /// the action space, so it is refused above [`MAX_WIDE_ACTIONS`].
    #[serde(default)]
    pub wide: bool,
}

/// Largest action space a wide table is built for: 4,096² floats are 64 MiB per copy, and the
/// learner holds five (online, target, Adam's two moments, the inference copy).
pub const MAX_WIDE_ACTIONS: i64 = 4096;

impl NetConfig {
    /// The reference paper's network: embedding 64, BiLSTM 64, 64, 32, dense 64, 32.
    pub fn paper(vocab_size: usize, max_tokens: usize) -> Self {
        Self {
            kind: NetKind::Lstm,
            vocab_size,
            max_tokens,
            embedding_dim: 64,
            lstm_units: vec![64, 64, 32],
            hidden: vec![64, 32],
            lead_token: false,
            wide: false,
        }
    }

    /// Why this configuration cannot build a network, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.vocab_size == 0 || self.max_tokens == 0 || self.embedding_dim <= 0 {
            return Err("vocabulary size, max tokens and embedding width must be positive".into());
        }
        if self.kind == NetKind::Lstm && self.lstm_units.is_empty() {
            return Err("the lstm network needs at least one LSTM layer".into());
        }
        if self.lstm_units.iter().chain(&self.hidden).any(|&u| u <= 0) {
            return Err("layer widths must be positive".into());
        }
        Ok(())
    }
}

/// A Q-network whose variables live in the [`nn::VarStore`] it was built in.
#[derive(Debug)]
pub struct Net {
    kind: NetKind,
    embedding: nn::Embedding,
    lstms: Vec<nn::LSTM>,
    hidden: Vec<nn::Linear>,
    out: nn::Linear,
    lead_token: bool,
    wide: Option<Tensor>,
    n_actions: i64,
}

impl Net {
    /// Builds the network's variables under `p`.
    pub fn new(p: &nn::Path<'_>, cfg: &NetConfig, n_actions: i64) -> Self {
        let emb_cfg = nn::EmbeddingConfig { padding_idx: PAD, ..Default::default() };
        let embedding =
            nn::embedding(p / "embedding", Vocab::embedding_rows(cfg.vocab_size), cfg.embedding_dim, emb_cfg);
        // As PyTorch's `Embedding(padding_idx=0)`: the padding row starts at zero (and gets no gradient).
        tch::no_grad(|| {
            let _ = embedding.ws.get(PAD).zero_();
        });
        let lead_token = cfg.lead_token && cfg.kind == NetKind::Mlp;
        let mut width = if lead_token { 2 * cfg.embedding_dim } else { cfg.embedding_dim };
        let mut lstms = Vec::new();
        if cfg.kind == NetKind::Lstm {
            for (i, &units) in cfg.lstm_units.iter().enumerate() {
                // PyTorch's (and Keras-like) uniform init rather than tch's Kaiming default.
                let bound = 1.0 / (units as f64).sqrt();
                let init = nn::Init::Uniform { lo: -bound, up: bound };
                let rnn_cfg = nn::RNNConfig {
                    bidirectional: true,
                    batch_first: true,
                    w_ih_init: init,
                    w_hh_init: init,
                    b_ih_init: Some(init),
                    b_hh_init: Some(init),
                    ..Default::default()
                };
                lstms.push(nn::lstm(p / format!("lstm{i}"), width, units, rnn_cfg));
                width = 2 * units;
            }
        }
        let mut hidden = Vec::new();
        for (i, &units) in cfg.hidden.iter().enumerate() {
            hidden.push(nn::linear(p / format!("dense{i}"), width, units, Default::default()));
            width = units;
        }
        // The output weights start at zero, so every Q-value starts equal to its bias: a randomly
        // initialised output adds noise to all n_actions values, and full-feedback rows (which
        // regress every action at once) remove that noise fastest by silencing the hidden ReLUs
        // for good (measured: the Q-values became the same for every state).
        let out_cfg = nn::LinearConfig { ws_init: nn::Init::Const(0.0), ..Default::default() };
        let out = nn::linear(p / "q", width, n_actions, out_cfg);
        // Zero: the table starts neutral and only learns what the deep part misses.
        let wide = cfg.wide.then(|| p.var("wide", &[n_actions + 1, n_actions], nn::Init::Const(0.0)));
        Self { kind: cfg.kind, embedding, lstms, hidden, out, lead_token, wide, n_actions }
    }

    /// Q-values `[batch, n_actions]` for token ids `[batch, tokens]` (int64, padded with 0) and,
    /// for the wide table, the states' product indices `[batch]` (int64; an index outside
    /// `0..n_actions` reads the table's spare row). Without `items` the table adds nothing.
    pub fn forward(&self, ids: &Tensor, items: Option<&Tensor>) -> Tensor {
        let q = self.deep(ids);
        match (&self.wide, items) {
            (Some(table), Some(items)) => q + table.index_select(0, &self.wide_rows(items)),
            _ => q,
        }
    }

    /// The wide table's rows for product indices `items`: the index itself, or the spare row
    /// `n_actions` for an index outside `0..n_actions`.
    pub fn wide_rows(&self, items: &Tensor) -> Tensor {
        let n = self.n_actions;
        items.where_scalarother(&items.ge(0).logical_and(&items.lt(n)), n)
    }

    /// The deep part: text tokens to Q-values.
    fn deep(&self, ids: &Tensor) -> Tensor {
        let emb = self.embedding.forward(ids);
        let mut x = match self.kind {
            NetKind::Lstm => {
                let mut seq = emb;
                let last = self.lstms.len() - 1;
                let mut pooled = None;
                for (i, lstm) in self.lstms.iter().enumerate() {
                    let (out, state) = lstm.seq(&seq);
                    if i == last {
                        // h: [2, batch, units] (forward, backward) -> [batch, 2 * units].
                        let h = state.h();
                        let batch = h.size()[1];
                        pooled = Some(h.transpose(0, 1).reshape([batch, -1]));
                    } else {
                        seq = out;
                    }
                }
                pooled.unwrap_or(seq)
            }
            NetKind::Mlp => {
                let mask = ids.ne(PAD).to_kind(Kind::Float).unsqueeze(-1);
                let count = mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0);
                let mean = (&emb * &mask).sum_dim_intlist(1, false, Kind::Float) / count;
                if self.lead_token {
                    Tensor::cat(&[mean, emb.select(1, 0)], 1)
                } else {
                    mean
                }
            }
        };
        for layer in &self.hidden {
            x = layer.forward(&x).relu();
        }
        self.out.forward(&x)
    }
}

/// The variables of `vs` in name order: the order weight snapshots travel in.
pub fn vars(vs: &nn::VarStore) -> Vec<Tensor> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().map(|(_, t)| t).collect()
}

/// Deep copies of `vars`, detached (a weight snapshot another thread may own).
pub fn snapshot(vars: &[Tensor]) -> Vec<Tensor> {
    tch::no_grad(|| vars.iter().map(|t| t.detach().copy()).collect())
}

/// Copies `src` into `dst` in place (same order and shapes), on `dst`'s device.
pub fn assign(dst: &[Tensor], src: &[Tensor]) -> Result<(), tch::TchError> {
    if dst.len() != src.len() {
        return Err(tch::TchError::Shape(format!("{} variables, snapshot has {}", dst.len(), src.len())));
    }
    tch::no_grad(|| {
        for (d, s) in dst.iter().zip(src) {
            let mut d = d.shallow_clone();
            d.f_copy_(s)?;
        }
        Ok(())
    })
}

/// `dst = tau * src + (1 - tau) * dst`, in place: a soft target update (`tau = 1` copies).
pub fn blend(dst: &[Tensor], src: &[Tensor], tau: f64) -> Result<(), tch::TchError> {
    if tau >= 1.0 {
        return assign(dst, src);
    }
    tch::no_grad(|| {
        for (d, s) in dst.iter().zip(src) {
            let mut d = d.shallow_clone();
            let _ = d.f_mul_(&Tensor::from(1.0 - tau))?;
            let _ = d.f_add_(&(s * tau))?;
        }
        Ok(())
    })
}

/// Token ids of several states as one `[batch, tokens]` tensor, padded with 0 to the longest
/// (at least one column), like Keras' `TextVectorization` without a fixed length.
pub fn batch_ids(rows: &[&[i64]], device: Device) -> Tensor {
    let width = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
    let mut flat = vec![PAD; rows.len() * width];
    for (i, r) in rows.iter().enumerate() {
        flat[i * width..i * width + r.len()].copy_from_slice(r);
    }
    Tensor::from_slice(&flat).view([rows.len() as i64, width as i64]).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Tensor {
        batch_ids(&[&[2, 3, 4], &[5], &[]], Device::Cpu)
    }

    #[test]
    fn both_nets_output_one_q_value_per_action() {
        let mlp = NetConfig { kind: NetKind::Mlp, ..NetConfig::paper(100, 8) };
        for cfg in [NetConfig::paper(100, 8), mlp.clone(), NetConfig { lead_token: true, ..mlp }] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = Net::new(&vs.root(), &cfg, 1289);
            let q = net.forward(&ids(), None);
            assert_eq!(q.size(), [3, 1289], "{:?}", cfg.kind);
            assert_eq!(q.kind(), Kind::Float);
            let dense0: i64 =
                vs.variables().iter().filter(|(n, _)| n.starts_with("dense0.weight")).map(|(_, t)| t.size()[1]).sum();
            let want = if cfg.lead_token { 128 } else { 64 };
            assert_eq!(dense0, want, "{cfg:?}: the lead token doubles the input");
        }
    }

    #[test]
    fn the_wide_table_adds_the_row_of_the_states_product() {
        let cfg = NetConfig { kind: NetKind::Mlp, wide: true, ..NetConfig::paper(50, 4) };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), &cfg, 5);
        let table = vs.variables()["wide"].shallow_clone();
        assert_eq!(table.size(), [6, 5], "one row per product and a spare row");
        tch::no_grad(|| {
            table.shallow_clone().copy_(&Tensor::arange(30, (Kind::Float, Device::Cpu)).view([6, 5]));
        });
        let x = batch_ids(&[&[2], &[2], &[2], &[2]], Device::Cpu);
        let deep = net.forward(&x, None);
        let items = Tensor::from_slice(&[0i64, 3, 5, -1]);
        let offset = net.forward(&x, Some(&items)) - &deep;
        let rows: Vec<f32> = Vec::try_from(offset.select(1, 1)).unwrap_or_else(|e| panic!("{e}"));
        // Rows 0 and 3; index 5 and -1 are outside 0..5 and read the spare row (row 5).
        assert_eq!(rows, [1.0, 16.0, 26.0, 26.0]);
    }

    #[test]
    fn lstm_net_has_the_papers_layer_sizes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = Net::new(&vs.root(), &NetConfig::paper(230, 8), 10);
        let count = |prefix: &str| -> i64 {
            vs.variables().iter().filter(|(n, _)| n.starts_with(prefix)).map(|(_, t)| t.numel() as i64).sum()
        };
        // Keras' summary in the paper: 66,048, 98,816 and 41,216 parameters; PyTorch's LSTM has
        // two bias vectors where Keras has one, hence the extra 2 * 4 * units per layer.
        assert_eq!(count("lstm0"), 66_048 + 2 * 4 * 64);
        assert_eq!(count("lstm1"), 98_816 + 2 * 4 * 64);
        assert_eq!(count("lstm2"), 41_216 + 2 * 4 * 32);
        assert_eq!(count("dense0"), 4_160);
        assert_eq!(count("embedding"), 232 * 64);
    }

    #[test]
    fn pads_to_the_longest_row() {
        let t = ids();
        assert_eq!(t.size(), [3, 3]);
        assert_eq!(Vec::<i64>::try_from(t.view([-1])).unwrap_or_else(|e| panic!("{e}")), [2, 3, 4, 5, 0, 0, 0, 0, 0]);
        assert_eq!(batch_ids(&[&[], &[]], Device::Cpu).size(), [2, 1]);
    }

    #[test]
    fn snapshots_move_weights_between_nets_and_blend_mixes_them() {
        let cfg = NetConfig { kind: NetKind::Mlp, ..NetConfig::paper(50, 4) };
        let (a, b) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
        let (na, nb) = (Net::new(&a.root(), &cfg, 5), Net::new(&b.root(), &cfg, 5));
        let x = ids();
        assert!(!na.forward(&x, None).allclose(&nb.forward(&x, None), 1e-6, 1e-6, false));
        assign(&vars(&b), &snapshot(&vars(&a))).unwrap_or_else(|e| panic!("{e}"));
        assert!(na.forward(&x, None).allclose(&nb.forward(&x, None), 1e-6, 1e-6, false));
        let (va, vb) = (vars(&a), vars(&b));
        let before = vb[0].copy();
        tch::no_grad(|| {
            let _ = va[0].shallow_clone().fill_(1.0);
        });
        blend(&vb, &va, 0.25).unwrap_or_else(|e| panic!("{e}"));
        let expected = before * 0.75 + 0.25;
        assert!(vb[0].allclose(&expected, 1e-6, 1e-6, false));
    }
}
