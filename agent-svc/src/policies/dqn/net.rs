//! The Q-network: token ids of a state's text in, one Q-value per action out.
//!
//! `lstm` (the reference paper's network): embedding, stacked bidirectional LSTMs (all but the
//! last return sequences; the last returns its two final hidden states, forward then backward,
//! as Keras' `Bidirectional(LSTM(..))` does), dense layers with ReLU, a linear output. `mlp`: the
//! same embedding averaged over the non-padding tokens, then the same dense layers and output.
//!
//! Padding: a batch's rows are padded with [`PAD`] after their tokens (see [`batch_ids`]). Both
//! networks read only a row's own tokens, so a row's Q-values do not depend on the other rows of
//! its batch. The LSTMs run over packed sequences (`_pack_padded_sequence`, `lstm_data`): each
//! direction of each layer reads exactly the row's tokens, the forward state is taken after its
//! last token and the backward one after its first. The MLP averages the non-padding tokens.
//! A row without tokens reads one padding token (a fixed input of its own).
//!
//! `wide` (either network) adds a learned table of Q-value offsets with one row per current
//! product (the state's product index) and one column per action, as the "wide" part of Google's
//! Wide & Deep (Cheng et al., 2016): `Q(s, a) = deep(s)[a] + W[item(s), a]`. The deep part
//! generalises over text; the table memorises product-to-product effects that the deep part's
//! narrow layers cannot hold for every product (measured in docs/DQN.md).
//!
//! `tower` ([`Head::Tower`], either network as the state tower) factorises the output:
//! `Q(s, a) = state(s) · item(a) + bias(a)`, where `state(s)` is the deep part's last layer
//! projected to `tower_dim` and `item(a)` is an id embedding of the item plus a projection of the
//! mean embedding of the item's own text tokens (the same token embedding the state reads; see
//! [`super::items`]). Its parameters grow with the catalogue as `n_actions × (tower_dim + 1)`,
//! not `n_actions × width`, and items share what their words learn. The item tables
//! (`item_id`, `item_bias`) are not autograd leaves of the whole table: a training step gathers
//! the rows it reads ([`ItemRows`]) and Adam updates those rows only, so a step costs the same
//! at 1,500 and at 186,637 items.
//!
//! Invariant: two nets built from the same [`NetConfig`] and action count have the same variables
//! under the same names, so weights move between them by name ([`Net::vars`] order).

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Device, Kind, Tensor};

use super::{
    items::ItemTokens,
    vocab::{Vocab, PAD},
};

/// Which network maps a state's tokens to Q-values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NetKind {
    /// Embedding, stacked bidirectional LSTMs, dense layers (the reference paper's network).
    Lstm,
    /// Embedding averaged over the tokens, dense layers: much cheaper, for small machines and tests.
    Mlp,
}

/// How the network turns what it read of a state into Q-values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// One output unit per action (the paper): `n_actions × width` weights, each action learned
    /// on its own.
    #[default]
    Dense,
    /// Factorised: a state vector against item vectors (id embedding plus the item's text),
    /// plus a bias per item; scales with the catalogue.
    Tower,
    /// `dense` up to [`MAX_WIDE_ACTIONS`] actions (where the dense wide table fits), `tower`
    /// above; decided when the network is built, from the first state's action space
    /// ([`NetConfig::resolved`]), and logged. Never in a checkpoint.
    Auto,
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
    /// How Q-values come out (absent from checkpoints written before the tower: dense).
    #[serde(default)]
    pub head: Head,
    /// Width of the state and item vectors of the tower head.
    #[serde(default)]
    pub tower_dim: i64,
    /// Tower head with `wide`: slots of the sparse wide table (one offset per (state's item,
    /// action) pair seen with a positive target, up to this many; see [`super::items::PairIndex`]).
    #[serde(default)]
    pub wide_pairs: i64,
}

/// Items scored per block by [`Net::best`] (a `[64, 8192]` block of floats is 2 MiB).
pub const BEST_BLOCK: i64 = 8192;

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
            head: Head::Dense,
            tower_dim: 0,
            wide_pairs: 0,
        }
    }

    /// This configuration for an action space of `n_actions`: `auto` becomes `dense` or `tower`,
    /// and the fields the chosen head does not use are cleared (so that checkpoints compare
    /// what matters).
    pub fn resolved(&self, n_actions: i64) -> Self {
        let head = match self.head {
            Head::Auto if n_actions <= MAX_WIDE_ACTIONS => Head::Dense,
            Head::Auto => Head::Tower,
            h => h,
        };
        let tower = head == Head::Tower;
        Self {
            head,
            tower_dim: if tower { self.tower_dim } else { 0 },
            wide_pairs: if tower && self.wide { self.wide_pairs } else { 0 },
            ..self.clone()
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
        if self.head != Head::Dense && self.tower_dim <= 0 {
            return Err("the tower head needs a positive --dqn-tower-dim".into());
        }
        if self.head != Head::Dense && self.wide && self.wide_pairs <= 0 {
            return Err("the tower head's wide table needs a positive --dqn-wide-pairs".into());
        }
        Ok(())
    }
}

/// A Q-network whose variables live in the [`nn::VarStore`] it was built in.
#[derive(Debug)]
pub struct Net {
    kind: NetKind,
    embedding: nn::Embedding,
    lstms: Vec<BiLstm>,
    hidden: Vec<nn::Linear>,
    out: nn::Linear,
    lead_token: bool,
    wide: Option<Tensor>,
    tower: Option<Tower>,
    /// Tower head with `wide`: the sparse wide table, `[wide_pairs + 1]` (the last slot, for a
    /// pair without one, stays 0).
    pairs: Option<Tensor>,
    n_actions: i64,
}

/// The slots of the sparse wide table one step reads (see [`ItemRows`]).
#[derive(Debug)]
pub struct PairRows {
    /// The distinct slots read, `[u]` int64 (the spare slot included when a pair has none).
    pub index: Tensor,
    /// `[u]` their offsets (requires grad when training).
    pub leaf: Tensor,
    /// `[batch, k]` each candidate's offset: its slot's, or 0 for a pair without one.
    pub offsets: Tensor,
}

/// The item side of the tower head: `n_actions + 1` rows each (the last for an index out of
/// range), not trainable as whole tables (see [`ItemRows`]).
#[derive(Debug)]
struct Tower {
    /// `[n_actions + 1, tower_dim]` id embeddings.
    id: Tensor,
    /// `[n_actions + 1]` biases.
    bias: Tensor,
    /// The mean embedding of an item's tokens to `tower_dim`.
    text: nn::Linear,
}

/// The rows of the item tables one training step reads, gathered as leaves of their own so the
/// gradient is `[rows, tower_dim]`, not the whole table's; Adam writes them back
/// ([`super::adam::Adam::step`]).
#[derive(Debug)]
pub struct ItemRows {
    /// The distinct item indices, `[u]` int64 (each in `0..=n_actions`).
    pub index: Tensor,
    /// Those items as a Rust list, in the same order.
    pub items: Vec<i64>,
    /// `[u, tower_dim]` their id rows (requires grad).
    pub id: Tensor,
    /// `[u]` their biases (requires grad).
    pub bias: Tensor,
}

impl Net {
    /// Builds the network's variables under `p` (an `auto` head resolved for `n_actions`).
    pub fn new(p: &nn::Path<'_>, cfg: &NetConfig, n_actions: i64) -> Self {
        let cfg = &cfg.resolved(n_actions);
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
                lstms.push(BiLstm::new(&(p / format!("lstm{i}")), width, units));
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
        let (out, tower) = match cfg.head {
            Head::Dense | Head::Auto => (nn::linear(p / "q", width, n_actions, out_cfg), None),
            Head::Tower => {
                // The state's projection starts random and the id rows small: the first
                // gradients reach both sides (a zero side would give the other none).
                let out = nn::linear(p / "state_out", width, cfg.tower_dim, Default::default());
                let text_cfg = nn::LinearConfig { bias: false, ..Default::default() };
                let text = nn::linear(p / "item_text", cfg.embedding_dim, cfg.tower_dim, text_cfg);
                let id = p.zeros_no_train("item_id", &[n_actions + 1, cfg.tower_dim]);
                tch::no_grad(|| {
                    let _ = id.shallow_clone().normal_(0.0, 0.01);
                });
                let bias = p.zeros_no_train("item_bias", &[n_actions + 1]);
                (out, Some(Tower { id, bias, text }))
            }
        };
        // Zero: the table starts neutral and only learns what the deep part misses.
        let (wide, pairs) = match (cfg.wide, cfg.head) {
            (false, _) => (None, None),
            (true, Head::Dense | Head::Auto) => {
                (Some(p.var("wide", &[n_actions + 1, n_actions], nn::Init::Const(0.0))), None)
            }
            (true, Head::Tower) => (None, Some(p.zeros_no_train("wide_pairs", &[cfg.wide_pairs.max(0) + 1]))),
        };
        Self { kind: cfg.kind, embedding, lstms, hidden, out, lead_token, wide, tower, pairs, n_actions }
    }

    /// Q-values `[batch, n_actions]` for token ids `[batch, tokens]` (int64, padded with 0) and,
    /// for the wide table, the states' product indices `[batch]` (int64; an index outside
    /// `0..n_actions` reads the table's spare row). Without `items` the table adds nothing.
    /// The tower head reads no item text here (see [`Net::q_all`]).
    pub fn forward(&self, ids: &Tensor, items: Option<&Tensor>) -> Tensor {
        self.q_all(ids, items, &ItemTokens::default())
    }

    /// [`Net::forward`] with the items' text known so far (the tower head's item side).
    pub fn q_all(&self, ids: &Tensor, items: Option<&Tensor>, tokens: &ItemTokens) -> Tensor {
        if let Some(tower) = &self.tower {
            let (v, b) = self.matrix_of(tower, tokens);
            return self.scores(&self.state_vec(ids), &v, &b);
        }
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

    /// The LSTMs' summary `[batch, 2 * units]` of token ids `ids` and their embeddings `emb`:
    /// the last layer's forward state after each row's last token, then its backward state
    /// after the row's first token, each direction of each layer reading only the row's tokens.
    fn read_sequences(&self, ids: &Tensor, emb: &Tensor) -> Tensor {
        let batch = ids.size()[0];
        let units = self.lstms.last().map_or(0, |l| l.units);
        if batch == 0 {
            return Tensor::zeros([0, 2 * units], (emb.kind(), emb.device()));
        }
        // Packing wants the rows longest first (lengths on the CPU, as libtorch requires).
        let (lengths, order) = true_lengths(ids).to_device(Device::Cpu).sort_stable(true, 0, true);
        let sorted = emb.index_select(0, &order.to_device(emb.device()));
        let (mut data, batch_sizes) = sorted.internal_pack_padded_sequence(&lengths, true);
        let mut last = None;
        for lstm in &self.lstms {
            let (out, h) = lstm.run(&data, &batch_sizes, batch);
            (data, last) = (out, Some(h));
        }
        // `NetConfig::validate` asks for at least one layer; without any, the summary is empty.
        let h = last.unwrap_or_else(|| Tensor::zeros([2, batch, units], (emb.kind(), emb.device())));
        // h: [2, batch, units] (forward, backward), longest first -> [batch, 2 * units], in order.
        let pooled = h.transpose(0, 1).reshape([batch, -1]);
        pooled.index_select(0, &order.argsort(0, false).to_device(pooled.device()))
    }

    /// The tower head's state vectors `[batch, tower_dim]` (with the dense head: its Q-values).
    pub fn state_vec(&self, ids: &Tensor) -> Tensor {
        self.deep(ids)
    }

    /// Whether the head is the tower.
    pub fn is_tower(&self) -> bool {
        self.tower.is_some()
    }

    /// Size of the action space.
    pub fn n_actions(&self) -> i64 {
        self.n_actions
    }

    /// The vectors `[k, tower_dim]` of `items` from their id rows `[k, tower_dim]`: the id row
    /// plus the projected mean embedding of the item's tokens (zero for an item without).
    fn item_vecs(&self, tower: &Tower, id_rows: &Tensor, items: &[i64], tokens: &ItemTokens) -> Tensor {
        let (flat, offsets) = tokens.bags(items, id_rows.device());
        let (text, _, _, _) =
            Tensor::embedding_bag(&self.embedding.ws, &flat, &offsets, false, 1, false, None::<Tensor>, false);
        id_rows + tower.text.forward(&text)
    }

    /// The tower head's item side, or an error naming `what` needed it.
    fn tower(&self, what: &str) -> anyhow::Result<&Tower> {
        self.tower.as_ref().ok_or_else(|| anyhow::anyhow!("{what} needs the tower head"))
    }

    /// The whole catalogue's item vectors `[n_actions, tower_dim]` and biases `[n_actions]`
    /// (the inference copy computes them once per weight snapshot).
    pub fn item_matrix(&self, tokens: &ItemTokens) -> anyhow::Result<(Tensor, Tensor)> {
        Ok(self.matrix_of(self.tower("the item matrix")?, tokens))
    }

    fn matrix_of(&self, tower: &Tower, tokens: &ItemTokens) -> (Tensor, Tensor) {
        let all: Vec<i64> = (0..self.n_actions).collect();
        let v = self.item_vecs(tower, &tower.id.narrow(0, 0, self.n_actions), &all, tokens);
        (v, tower.bias.narrow(0, 0, self.n_actions))
    }

    /// Q-values `[batch, k]` of state vectors `u` against item vectors `v` `[k, tower_dim]` and
    /// biases `b` `[k]`: one matrix product.
    pub fn scores(&self, u: &Tensor, v: &Tensor, b: &Tensor) -> Tensor {
        // One pass over the `[batch, k]` output (`b + u vᵀ`), not a product and then a sum.
        b.addmm(u, &v.tr())
    }

    /// Each state's best item `[batch]` (int64): the argmax over all `k` items of `u vᵀ + b`
    /// plus each row's wide offsets (`pairs[row]`: `(action, slot)`), computed block by block
    /// ([`BEST_BLOCK`] items) so that the `[batch, k]` matrix is never written out: each block
    /// stays in cache and only its maximum survives. The same argmax as [`Net::scores`] with
    /// [`Net::add_pair_offsets`] (up to ties).
    pub fn best(&self, u: &Tensor, v: &Tensor, b: &Tensor, pairs: &[&[(i64, i64)]]) -> Tensor {
        let (k, batch, device) = (v.size()[0], u.size()[0], u.device());
        // The offsets, as (row, action, value), sorted by action so each block takes a run.
        let mut offsets: Vec<(i64, i64, i64)> = Vec::new();
        if self.pairs.is_some() {
            for (r, list) in pairs.iter().enumerate() {
                offsets.extend(list.iter().filter(|(a, _)| (0..k).contains(a)).map(|&(a, s)| (a, r as i64, s)));
            }
            offsets.sort_unstable();
        }
        let mut best_val = Tensor::full([batch], f64::NEG_INFINITY, (Kind::Float, device));
        let mut best_idx = Tensor::zeros([batch], (Kind::Int64, device));
        let (mut start, mut next_offset) = (0, 0);
        while start < k {
            let len = BEST_BLOCK.min(k - start);
            let mut q = b.narrow(0, start, len).addmm(u, &v.narrow(0, start, len).tr());
            let run = offsets[next_offset..].iter().take_while(|(a, _, _)| *a < start + len).count();
            if run > 0 {
                let here = &offsets[next_offset..next_offset + run];
                next_offset += run;
                let rows: Vec<i64> = here.iter().map(|o| o.1).collect();
                let cols: Vec<i64> = here.iter().map(|o| o.0 - start).collect();
                let slots: Vec<i64> = here.iter().map(|o| o.2).collect();
                if let Some(table) = &self.pairs {
                    let values = table.index_select(0, &Tensor::from_slice(&slots).to_device(device));
                    let index = [
                        Some(Tensor::from_slice(&rows).to_device(device)),
                        Some(Tensor::from_slice(&cols).to_device(device)),
                    ];
                    let _ = q.index_put_(&index, &values, true);
                }
            }
            let (m, a) = q.max_dim(1, false);
            let better = m.gt_tensor(&best_val);
            best_val = m.where_self(&better, &best_val);
            best_idx = (a + start).where_self(&better, &best_idx);
            start += len;
        }
        best_idx
    }

    /// The rows of the item tables for `items` (any order, repeats allowed; an index outside
    /// `0..n_actions` reads the spare row), gathered as leaves that require grad when `grad`.
    pub fn gather_items(&self, items: &[i64], grad: bool) -> anyhow::Result<ItemRows> {
        let tower = self.tower("gathering item rows")?;
        let n = self.n_actions;
        let mut distinct: Vec<i64> = items.iter().map(|&i| if (0..n).contains(&i) { i } else { n }).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let index = Tensor::from_slice(&distinct).to_device(tower.id.device());
        let id = tower.id.index_select(0, &index).detach().set_requires_grad(grad);
        let bias = tower.bias.index_select(0, &index).detach().set_requires_grad(grad);
        Ok(ItemRows { index, items: distinct, id, bias })
    }

    /// Q-values `[batch, p + shared]` of each state for its own `p` candidates (`row_cands`,
    /// `[batch * p]` row after row) and then for the candidates every row `shared` (one matrix
    /// product), from state vectors `u` and the gathered `rows` (which hold every candidate;
    /// an index outside `0..n_actions` reads the spare row).
    pub fn q_candidates(
        &self,
        u: &Tensor,
        rows: &ItemRows,
        row_cands: &[i64],
        p: i64,
        shared: &[i64],
        tokens: &ItemTokens,
    ) -> anyhow::Result<Tensor> {
        let tower = self.tower("scoring candidates")?;
        let n = self.n_actions;
        let v = self.item_vecs(tower, &rows.id, &rows.items, tokens);
        // Position of each candidate among the distinct rows.
        let at = |cands: &[i64]| -> anyhow::Result<Tensor> {
            let at = positions(&rows.items, cands.iter().map(|&c| if (0..n).contains(&c) { c } else { n }))?;
            Ok(Tensor::from_slice(&at).to_device(u.device()))
        };
        let batch = u.size()[0];
        let mut parts = Vec::with_capacity(2);
        if p > 0 {
            let at = at(row_cands)?;
            let vc = v.index_select(0, &at).view([batch, p, -1]);
            let bc = rows.bias.index_select(0, &at).view([batch, p]);
            parts.push((u.unsqueeze(1) * vc).sum_dim_intlist(-1, false, None) + bc);
        }
        if !shared.is_empty() {
            let at = at(shared)?;
            parts.push(self.scores(u, &v.index_select(0, &at), &rows.bias.index_select(0, &at)));
        }
        Ok(Tensor::cat(&parts, 1))
    }

    /// Whether the tower head has its sparse wide table.
    pub fn has_pairs(&self) -> bool {
        self.pairs.is_some()
    }

    /// The wide offsets of candidates given by their slots `[batch * k]` (`None`: the pair has
    /// no slot, offset 0), as leaves that require grad when `grad`. Fails without the table.
    pub fn gather_pairs(&self, slots: &[Option<i64>], k: i64, grad: bool) -> anyhow::Result<PairRows> {
        let table = self.pairs.as_ref().ok_or_else(|| anyhow::anyhow!("no sparse wide table to gather from"))?;
        let spare = table.size()[0] - 1;
        let mut distinct: Vec<i64> = slots.iter().map(|s| s.unwrap_or(spare)).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let at = positions(&distinct, slots.iter().map(|s| s.unwrap_or(spare)))?;
        let mask: Vec<f32> = slots.iter().map(|s| if s.is_some() { 1.0 } else { 0.0 }).collect();
        let device = table.device();
        let index = Tensor::from_slice(&distinct).to_device(device);
        let leaf = table.index_select(0, &index).detach().set_requires_grad(grad);
        let rows = slots.len() as i64 / k.max(1);
        let at = Tensor::from_slice(&at).to_device(device);
        // The mask keeps the spare slot out of every gradient: it stays 0.
        let mask = Tensor::from_slice(&mask).to_device(device);
        let offsets = (leaf.index_select(0, &at) * mask).view([rows, k]);
        Ok(PairRows { index, leaf, offsets })
    }

    /// The wide offsets of each row's pairs (`pairs[row]`: `(action, slot)`) as
    /// `(action, offset)`, read in one gather; empty rows without the table.
    pub fn pair_values(&self, pairs: &[Vec<(i64, i64)>]) -> anyhow::Result<Vec<Vec<(i64, f32)>>> {
        let Some(table) = &self.pairs else { return Ok(vec![Vec::new(); pairs.len()]) };
        let slots: Vec<i64> = pairs.iter().flatten().map(|&(_, s)| s).collect();
        let values = Vec::<f32>::try_from(
            table.index_select(0, &Tensor::from_slice(&slots).to_device(table.device())).to_device(Device::Cpu),
        )?;
        anyhow::ensure!(values.len() == slots.len(), "{} offsets read for {} slots", values.len(), slots.len());
        let mut at = 0;
        let mut next = |a: i64| {
            at += 1;
            (a, values[at - 1])
        };
        Ok(pairs.iter().map(|row| row.iter().map(|&(a, _)| next(a)).collect()).collect())
    }

    /// Adds to `q` `[batch, n_actions]` (in place) the wide offsets of each row's pairs:
    /// `pairs[row]` lists `(action, slot)`.
    pub fn add_pair_offsets(&self, q: &mut Tensor, pairs: &[&[(i64, i64)]]) {
        let Some(table) = &self.pairs else { return };
        let (mut rows, mut cols, mut slots) = (Vec::new(), Vec::new(), Vec::new());
        for (r, list) in pairs.iter().enumerate() {
            for &(a, s) in list.iter().filter(|(a, _)| (0..self.n_actions).contains(a)) {
                rows.push(r as i64);
                cols.push(a);
                slots.push(s);
            }
        }
        if slots.is_empty() {
            return;
        }
        let device = q.device();
        let values = table.index_select(0, &Tensor::from_slice(&slots).to_device(device));
        let index =
            [Some(Tensor::from_slice(&rows).to_device(device)), Some(Tensor::from_slice(&cols).to_device(device))];
        let _ = q.index_put_(&index, &values, true);
    }

    /// The deep part: text tokens to Q-values (the tower head: to the state vector).
    fn deep(&self, ids: &Tensor) -> Tensor {
        let emb = self.embedding.forward(ids);
        let mut x = match self.kind {
            NetKind::Lstm => self.read_sequences(ids, &emb),
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

/// The position of each of `keys` in `sorted`; a key missing from it is an error (the caller
/// gathered `sorted` from the same keys, so a miss is a bug, never a row to read instead).
fn positions(sorted: &[i64], keys: impl Iterator<Item = i64>) -> anyhow::Result<Vec<i64>> {
    keys.map(|k| {
        sorted.binary_search(&k).map(|p| p as i64).map_err(|_| anyhow::anyhow!("{k} is not among the gathered rows"))
    })
    .collect()
}

/// Each row's length `[batch]` (int64): the position after its last token that is not [`PAD`],
/// at least 1 (a row without tokens reads one padding token).
fn true_lengths(ids: &Tensor) -> Tensor {
    let width = ids.size()[1];
    let positions = Tensor::arange_start(1, width + 1, (Kind::Int64, ids.device()));
    (ids.ne(PAD) * positions).amax(1, false).clamp_min(1)
}

/// One bidirectional LSTM layer over packed sequences. Its variables are those `nn::lstm` makes
/// for one bidirectional layer (same names, shapes, order and initialisation), so weights and
/// checkpoints of the padded version load unchanged.
#[derive(Debug)]
struct BiLstm {
    /// `w_ih, w_hh, b_ih, b_hh` of the forward direction, then of the backward one.
    weights: Vec<Tensor>,
    units: i64,
}

impl BiLstm {
    fn new(p: &nn::Path<'_>, inputs: i64, units: i64) -> Self {
        // PyTorch's (and Keras-like) uniform init rather than tch's Kaiming default.
        let bound = 1.0 / (units as f64).sqrt();
        let init = nn::Init::Uniform { lo: -bound, up: bound };
        let gates = 4 * units;
        let mut weights = Vec::with_capacity(8);
        for suffix in ["", "_reverse"] {
            weights.push(p.var(&format!("weight_ih_l0{suffix}"), &[gates, inputs], init));
            weights.push(p.var(&format!("weight_hh_l0{suffix}"), &[gates, units], init));
            weights.push(p.var(&format!("bias_ih_l0{suffix}"), &[gates], init));
            weights.push(p.var(&format!("bias_hh_l0{suffix}"), &[gates], init));
        }
        Self { weights, units }
    }

    /// Runs over the packed sequences `data` (`[tokens, inputs]`, time-major as
    /// `_pack_padded_sequence` lays them out, with its `batch_sizes`) of `batch` rows from zero
    /// states; returns the packed outputs `[tokens, 2 * units]` (forward ‖ backward) and the
    /// final hidden states `[2, batch, units]` (forward, backward; rows longest first).
    fn run(&self, data: &Tensor, batch_sizes: &Tensor, batch: i64) -> (Tensor, Tensor) {
        let zeros = Tensor::zeros([2, batch, self.units], (data.kind(), data.device()));
        let weights: Vec<&Tensor> = self.weights.iter().collect();
        let (out, h, _c) = Tensor::lstm_data(data, batch_sizes, &[&zeros, &zeros], &weights, true, 1, 0.0, true, true);
        (out, h)
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

/// Serialises the unit tests that seed or draw from libtorch's process-global generator
/// (`tch::manual_seed`, building a network): cargo runs a binary's tests on several threads, and
/// one test's draws would shift another's seeded sequence. Every such test holds the guard for
/// its whole run; a test that panicked while holding it does not fail the others.
#[cfg(test)]
pub(crate) fn torch_rng_guard() -> std::sync::MutexGuard<'static, ()> {
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TORCH_RNG.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Tensor {
        batch_ids(&[&[2, 3, 4], &[5], &[]], Device::Cpu)
    }

    /// The three deep parts: the paper's LSTM (small), the MLP, the MLP with its lead token.
    fn configs() -> [NetConfig; 3] {
        let lstm = NetConfig { embedding_dim: 8, lstm_units: vec![6, 5], hidden: vec![7], ..NetConfig::paper(30, 8) };
        let mlp = NetConfig { kind: NetKind::Mlp, lstm_units: Vec::new(), ..lstm.clone() };
        [lstm, mlp.clone(), NetConfig { lead_token: true, ..mlp }]
    }

    /// A net whose every weight is drawn at random, the output layer and the padding row too
    /// (which `Net::new` zeroes), so that whatever the net reads shows in its Q-values.
    fn scrambled(cfg: &NetConfig) -> (nn::VarStore, Net) {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), cfg, 4);
        tch::no_grad(|| {
            for (_, v) in vs.variables() {
                let _ = v.shallow_clone().uniform_(-0.5, 0.5);
            }
        });
        (vs, net)
    }

    /// Rows of several lengths, the short ones first, an empty one last.
    const ROWS: [&[i64]; 5] = [&[2, 3], &[4], &[5, 6, 7, 8, 9, 10, 11, 12], &[13, 2, 14], &[]];

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        f64::try_from((a - b).abs().max()).unwrap_or(f64::INFINITY)
    }

    #[test]
    fn a_rows_q_values_ignore_the_other_rows_of_its_batch_in_inference() {
        let _rng = torch_rng_guard();
        tch::manual_seed(11);
        for cfg in configs() {
            let (_vs, net) = scrambled(&cfg);
            let together = tch::no_grad(|| net.forward(&batch_ids(&ROWS, Device::Cpu), None));
            for (i, row) in ROWS.iter().enumerate() {
                let alone = tch::no_grad(|| net.forward(&batch_ids(&[row], Device::Cpu), None));
                let d = max_diff(&alone.get(0), &together.get(i as i64));
                assert!(
                    d <= 1e-6,
                    "{:?} lead {}: row {i} {row:?} alone and in its batch differ by {d}",
                    cfg.kind,
                    cfg.lead_token
                );
            }
        }
    }

    #[test]
    fn a_rows_q_values_and_gradients_ignore_the_other_rows_of_its_batch_in_training() {
        let _rng = torch_rng_guard();
        tch::manual_seed(12);
        for cfg in configs() {
            let (vs, net) = scrambled(&cfg);
            let weights = vars(&vs);
            // The learner's forward: gradients on.
            let together = net.forward(&batch_ids(&ROWS, Device::Cpu), None);
            assert!(together.requires_grad());
            for (i, row) in ROWS.iter().enumerate() {
                let alone = net.forward(&batch_ids(&[row], Device::Cpu), None);
                let d = max_diff(&alone.get(0), &together.get(i as i64));
                assert!(
                    d <= 1e-6,
                    "{:?} lead {}: row {i} {row:?} alone and in its batch differ by {d}",
                    cfg.kind,
                    cfg.lead_token
                );
                // The same row's loss gives the same gradients, whatever shares its batch.
                let grads_alone =
                    Tensor::run_backward(&[alone.get(0).square().sum(Kind::Float)], &weights, false, false);
                let grads_together =
                    Tensor::run_backward(&[together.get(i as i64).square().sum(Kind::Float)], &weights, true, false);
                for (k, (a, b)) in grads_alone.iter().zip(&grads_together).enumerate() {
                    let d = max_diff(a, b);
                    assert!(
                        d <= 1e-6,
                        "{:?} lead {}: row {i}, gradient of variable {k} differs by {d}",
                        cfg.kind,
                        cfg.lead_token
                    );
                }
            }
        }
    }

    #[test]
    fn the_packed_lstm_is_tchs_lstm_on_rows_without_padding() {
        let _rng = torch_rng_guard();
        tch::manual_seed(13);
        let (ours_vs, theirs_vs) = (nn::VarStore::new(Device::Cpu), nn::VarStore::new(Device::Cpu));
        let ours = BiLstm::new(&(ours_vs.root() / "lstm0"), 5, 3);
        let rnn_cfg = nn::RNNConfig { bidirectional: true, batch_first: true, ..Default::default() };
        let theirs = nn::lstm(theirs_vs.root() / "lstm0", 5, 3, rnn_cfg);
        // Same variables, names and shapes: checkpoints of the padded version load as they are.
        let shapes = |vs: &nn::VarStore| -> Vec<(String, Vec<i64>)> {
            let mut v: Vec<(String, Vec<i64>)> = vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
            v.sort();
            v
        };
        assert_eq!(shapes(&ours_vs), shapes(&theirs_vs));
        assign(&vars(&theirs_vs), &vars(&ours_vs)).unwrap_or_else(|e| panic!("{e}"));
        let x = Tensor::randn([2, 4, 5], (Kind::Float, Device::Cpu));
        let (want_out, want_state) = nn::RNN::seq(&theirs, &x);
        let lengths = Tensor::from_slice(&[4i64, 4]);
        let (data, batch_sizes) = x.internal_pack_padded_sequence(&lengths, true);
        let (out, h) = tch::no_grad(|| ours.run(&data, &batch_sizes, 2));
        let (out, _) = Tensor::internal_pad_packed_sequence(&out, &batch_sizes, true, 0.0, 4);
        assert!(max_diff(&out, &want_out) <= 1e-6, "outputs differ by {}", max_diff(&out, &want_out));
        assert!(max_diff(&h, &want_state.h()) <= 1e-6, "final states differ by {}", max_diff(&h, &want_state.h()));
    }

    #[test]
    fn both_nets_output_one_q_value_per_action() {
        let _rng = torch_rng_guard();
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
        let _rng = torch_rng_guard();
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
        // Rows 0 and 3; index 5 and -1 are outside 0..5 and read the spare row (row 5). Within
        // rounding: `(deep + table) - deep` is `table` only up to the last bit of `deep`.
        let want = [1.0, 16.0, 26.0, 26.0];
        assert!(rows.iter().zip(want).all(|(r, w)| (r - w).abs() < 1e-5), "{rows:?} vs {want:?}");
    }

    #[test]
    fn the_blocked_best_item_is_the_argmax_of_the_whole_matrix_with_its_offsets() {
        let _rng = torch_rng_guard();
        tch::manual_seed(21);
        let n = 2 * BEST_BLOCK + 1_234;
        let cfg = NetConfig {
            kind: NetKind::Mlp,
            embedding_dim: 8,
            hidden: vec![8],
            head: Head::Tower,
            tower_dim: 8,
            wide: true,
            wide_pairs: 50,
            ..NetConfig::paper(30, 4)
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Net::new(&vs.root(), &cfg, n);
        tch::no_grad(|| {
            for (_, t) in vs.variables() {
                let _ = t.shallow_clone().uniform_(-0.5, 0.5);
            }
        });
        let (v, b) = tch::no_grad(|| net.item_matrix(&ItemTokens::default())).unwrap_or_else(|e| panic!("{e}"));
        let u = net.state_vec(&batch_ids(&ROWS, Device::Cpu)).detach();
        let q = tch::no_grad(|| net.scores(&u, &v, &b));
        let plain = Vec::<i64>::try_from(q.argmax(1, false)).unwrap_or_default();
        // Offsets that move the answer: a large one on another item of row 0, in the last block,
        // and a large negative one on row 1's own best item.
        let table = net
            .pairs
            .as_ref()
            .map(Tensor::shallow_clone)
            .unwrap_or_else(|| Tensor::zeros([1], (Kind::Float, Device::Cpu)));
        tch::no_grad(|| {
            table.narrow(0, 0, 2).copy_(&Tensor::from_slice(&[100.0f32, -100.0]));
        });
        let row0: &[(i64, i64)] = &[(n - 7, 0)];
        let row1: &[(i64, i64)] = &[(plain[1], 1)];
        let lists: Vec<&[(i64, i64)]> = vec![row0, row1, &[], &[], &[]];
        let mut full = q.copy();
        net.add_pair_offsets(&mut full, &lists);
        let want = Vec::<i64>::try_from(full.argmax(1, false)).unwrap_or_default();
        let got = Vec::<i64>::try_from(tch::no_grad(|| net.best(&u, &v, &b, &lists))).unwrap_or_default();
        assert_eq!(got, want);
        assert_eq!(got[0], n - 7);
        assert_ne!(got[1], plain[1]);
        assert_eq!(got[2..], plain[2..]);
    }

    #[test]
    fn lstm_net_has_the_papers_layer_sizes() {
        let _rng = torch_rng_guard();
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
        let _rng = torch_rng_guard();
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
