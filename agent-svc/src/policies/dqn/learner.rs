//! The learner: owns the trainable (online) network, the target network, Adam and the replay
//! buffer, and runs on its own thread.
//!
//! Invariant: only the learner thread touches the trainable weights. Everything it receives
//! (transitions, checkpoint and snapshot requests) comes over one bounded channel, and what it
//! sends (weight snapshots) goes over another bounded one, without ever blocking on it: a
//! snapshot the inference side has not taken yet is replaced by the next.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rand::Rng;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use tch::{nn, Device, Reduction, Tensor};

use super::{
    adam::{Adam, Rows},
    checkpoint::{self, Meta},
    items::{ItemTokens, PairIndex},
    net::{self, Net, NetConfig},
    replay::{Batch, Replay, Transition},
    vocab::{Vocab, RESERVED},
};

/// The learning hyperparameters (see `DqnArgs` for their meaning and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Hyper {
    /// Stop reading transitions while `max_owed` updates are owed, so that a full queue makes
    /// the agent wait instead of updates being skipped.
    pub backpressure: bool,
    /// Discount of future rewards.
    pub gamma: f64,
    /// Adam's learning rate.
    pub lr: f64,
    /// Adam's learning rate for the wide table, when not `lr`.
    pub wide_lr: Option<f64>,
    /// Transitions per gradient step.
    pub batch_size: usize,
    /// Transitions the replay buffer keeps.
    pub replay_capacity: usize,
    /// Transitions stored before the first update.
    pub learning_starts: usize,
    /// Updates per transition received.
    pub train_ratio: f64,
    /// Updates between target-network updates.
    pub target_every: u64,
    /// Weight of the online network in a target update (1 = copy).
    pub tau: f64,
    /// Double DQN: the online network picks the next action, the target network values it.
    pub double: bool,
    /// Huber loss threshold.
    pub huber_delta: f64,
    /// Largest global gradient norm (0 = no clipping).
    pub grad_clip: f64,
    /// Updates between weight snapshots for inference.
    pub sync_every: u64,
    /// Updates between checkpoints (0 = only on request).
    pub checkpoint_every: u64,
    /// Seed of the replay sampling.
    pub seed: u64,
    /// Updates the learner may owe (transitions x train ratio not yet trained on) before it
    /// skips them: a learner slower than the stream falls behind by at most this much.
    pub max_owed: f64,
    /// Tower head: actions drawn uniformly per batch as the full-feedback rows' negatives.
    pub negatives: usize,
    /// Tower head: weight of each negative in its row's loss (a positive weighs 1).
    pub negative_weight: f64,
}

/// A copy of the online weights for the inference side.
#[derive(Debug)]
pub struct Snapshot {
    /// Updates reflected in these weights.
    pub version: u64,
    /// The weights, in [`net::vars`] order.
    pub weights: Vec<Tensor>,
}

/// What the learner thread receives.
#[derive(Debug)]
pub enum ToLearner {
    /// A transition to store (and learn from).
    Transition(Transition),
    /// Write a checkpoint now; the reply carries the update count saved, or the error.
    Checkpoint(SyncSender<Result<u64, String>>),
    /// Send the current weights now, through the given channel.
    Snapshot(SyncSender<Snapshot>),
    /// Encode what a serving replica needs (the checkpoint layout without target weights);
    /// the reply carries the update count and the bytes, or the error.
    Serve(SyncSender<Result<(u64, Vec<u8>), String>>),
    /// Reply once no update is owed any more (the learner has caught up).
    Flush(SyncSender<u64>),
}

/// State shared by the policy and its learner thread.
#[derive(Debug)]
pub struct Shared {
    /// The vocabulary (grows on the policy side; read for checkpoints).
    pub vocab: Mutex<Vocab>,
    /// States acted on in training: the epsilon schedule's position.
    pub eps_step: AtomicU64,
    /// Transitions dropped because the learner's channel was full.
    pub dropped: AtomicU64,
    /// Updates skipped because more were owed than `--dqn-max-owed`.
    pub skipped: AtomicU64,
    /// Updates done so far.
    pub updates: AtomicU64,
    /// Why the learner stopped, when it stopped on a failure (an update or a checkpoint that
    /// failed); the policy side turns it into an error of its next call.
    pub failure: Mutex<Option<String>>,
    /// The items' tokens as the stream showed them (the tower head's item side): written by the
    /// policy side, read by the learner.
    pub items: Arc<RwLock<ItemTokens>>,
    /// The sparse wide table's index (tower head): slots taken by the learner, read by the
    /// policy side.
    pub pairs: Arc<RwLock<PairIndex>>,
}

impl Shared {
    /// Records why the learner stops (the first reason is kept).
    pub fn fail(&self, why: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        failure.get_or_insert(why);
    }

    /// Why the learner stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Messages handled at most between two updates.
const MAX_DRAIN: usize = 1_024;

/// DQN targets `r + gamma * (1 - terminated) * Q_target(s', a')`, where `a'` is the online
/// network's argmax (Double DQN, when `next_q_online` is given) or the target's own.
pub fn td_targets(
    rewards: &Tensor,
    terminated: &Tensor,
    next_q_online: Option<&Tensor>,
    next_q_target: &Tensor,
    gamma: f64,
) -> Tensor {
    let next_value = match next_q_online {
        Some(online) => next_q_target.gather(1, &online.argmax(1, true), false).squeeze_dim(1),
        None => next_q_target.amax(1, false),
    };
    rewards + (1.0 - terminated) * next_value * gamma
}

/// The trainable side of the DQN.
#[derive(Debug)]
pub struct Learner {
    hp: Hyper,
    net_cfg: NetConfig,
    n_actions: i64,
    device: Device,
    online_vs: nn::VarStore,
    online: Net,
    online_vars: Vec<Tensor>,
    target_vs: nn::VarStore,
    target: Net,
    target_vars: Vec<Tensor>,
    opt: Adam,
    /// Embedding rows in use (ids handed out so far); the others are skipped by Adam.
    active_rows: i64,
    replay: Replay,
    rng: ChaCha8Rng,
    updates: u64,
    /// Fingerprint of the catalogue the learner trains on, written into checkpoints.
    catalog: Option<String>,
    /// The items' tokens (tower head), shared with the policy side.
    items: Arc<RwLock<ItemTokens>>,
    /// The sparse wide table's index (tower head), shared with the policy side.
    pairs: Arc<RwLock<PairIndex>>,
}

impl Learner {
    /// A learner with freshly initialised networks (the target a copy of the online one).
    pub fn new(net_cfg: &NetConfig, n_actions: i64, hp: &Hyper, device: Device) -> anyhow::Result<Self> {
        let net_cfg = &net_cfg.resolved(n_actions);
        anyhow::ensure!(
            !net_cfg.wide || net_cfg.head == net::Head::Tower || n_actions <= net::MAX_WIDE_ACTIONS,
            "--dqn-wide needs an action space of at most {} products (its table has one row per \
             product and one column per action); this one has {n_actions}",
            net::MAX_WIDE_ACTIONS
        );
        let online_vs = nn::VarStore::new(device);
        let online = Net::new(&online_vs.root(), net_cfg, n_actions);
        let target_vs = nn::VarStore::new(device);
        let target = Net::new(&target_vs.root(), net_cfg, n_actions);
        let (online_vars, target_vars) = (net::vars(&online_vs), net::vars(&target_vs));
        net::assign(&target_vars, &online_vars).context("failed to copy the online network into the target")?;
        let mut opt = Adam::new(&online_vs, hp.lr, "embedding.weight", "wide");
        if let Some(lr) = hp.wide_lr {
            anyhow::ensure!(
                opt.set_lr(&["wide", "wide_pairs"], lr) > 0,
                "--dqn-wide-lr: the network has no wide table (--dqn-wide true)"
            );
        }
        Ok(Self {
            hp: hp.clone(),
            net_cfg: net_cfg.clone(),
            n_actions,
            device,
            online_vs,
            online,
            online_vars,
            target_vs,
            target,
            target_vars,
            opt,
            active_rows: Vocab::embedding_rows(net_cfg.vocab_size),
            replay: Replay::new(hp.replay_capacity, net_cfg.max_tokens),
            rng: ChaCha8Rng::seed_from_u64(hp.seed),
            updates: 0,
            catalog: None,
            items: Arc::default(),
            pairs: Arc::new(RwLock::new(PairIndex::new(usize::try_from(net_cfg.wide_pairs).unwrap_or(0)))),
        })
    }

    /// Keeps the sparse wide table's index in `pairs` (the policy side reads it there); what
    /// this learner's index holds (a restored checkpoint's pairs) moves there.
    pub fn set_pairs(&mut self, pairs: Arc<RwLock<PairIndex>>) {
        let mine = self.pairs.read().unwrap_or_else(|p| p.into_inner()).clone();
        *pairs.write().unwrap_or_else(|p| p.into_inner()) = mine;
        self.pairs = pairs;
    }

    /// Reads the items' tokens from `items` (the policy side records them there).
    pub fn set_items(&mut self, items: Arc<RwLock<ItemTokens>>) {
        self.items = items;
    }

    /// Records the fingerprint of the catalogue the actions index (saved in checkpoints).
    pub fn set_catalog(&mut self, catalog: Option<String>) {
        self.catalog = catalog;
    }

    /// Replaces both networks' weights and the update count with a checkpoint's.
    pub fn restore(&mut self, ckpt: &checkpoint::Checkpoint) -> anyhow::Result<()> {
        ckpt.load_into(&mut self.online_vs, Some(&mut self.target_vs))?;
        self.updates = ckpt.meta.updates;
        let capacity = usize::try_from(self.net_cfg.wide_pairs).unwrap_or(0);
        *self.pairs.write().unwrap_or_else(|p| p.into_inner()) = PairIndex::from_pairs(capacity, &ckpt.meta.wide_pairs);
        if !ckpt.meta.items.is_empty() {
            *self.items.write().unwrap_or_else(|p| p.into_inner()) = ItemTokens::from_vecs(ckpt.meta.items.clone());
        }
        Ok(())
    }

    /// Declares that token ids below `rows` are the only ones handed out so far (the words
    /// known plus the reserved ids), so Adam may skip the embedding's other rows. Never lower
    /// than an id already stored; by default every row is active.
    pub fn set_active_rows(&mut self, rows: i64) {
        self.active_rows = rows.clamp(RESERVED as i64, Vocab::embedding_rows(self.net_cfg.vocab_size));
    }

    /// The sparse wide table's slots taken and its capacity (`None`: no sparse table).
    pub fn wide_pairs(&self) -> Option<(usize, usize)> {
        let index = self.pairs.read().unwrap_or_else(|p| p.into_inner());
        (index.capacity() > 0 && self.online.has_pairs()).then(|| (index.len(), index.capacity()))
    }

    /// Gradient steps done.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The replay buffer.
    pub fn replay(&self) -> &Replay {
        &self.replay
    }

    /// Stores a transition.
    pub fn push(&mut self, t: &Transition) {
        self.replay.push(t);
    }

    /// Whether enough transitions are stored to start learning.
    pub fn ready(&self) -> bool {
        self.replay.len() >= self.hp.learning_starts.max(1)
    }

    /// Online Q-values for token ids (no gradient), e.g. for checks.
    /// With the tower's sparse wide table, each state's pairs are added as the policy side
    /// adds them.
    pub fn q_values(&self, ids: &Tensor, items: &Tensor) -> anyhow::Result<Tensor> {
        let tokens = self.items.read().unwrap_or_else(|p| p.into_inner());
        let mut q = tch::no_grad(|| self.online.q_all(ids, Some(items), &tokens));
        if self.online.has_pairs() {
            let index = self.pairs.read().unwrap_or_else(|p| p.into_inner());
            let lists: Vec<&[(i64, i64)]> =
                Vec::<i64>::try_from(items)?.into_iter().map(|i| index.of_item(i)).collect();
            tch::no_grad(|| self.online.add_pair_offsets(&mut q, &lists));
        }
        Ok(q)
    }

    /// One gradient step on a batch sampled from the replay buffer; returns the loss.
    pub fn update(&mut self) -> anyhow::Result<f64> {
        let slots = self.replay.sample_indices(self.hp.batch_size, &mut self.rng);
        anyhow::ensure!(!slots.is_empty(), "the replay buffer is empty");
        if self.online.is_tower() {
            let negatives: Vec<i64> =
                (0..self.hp.negatives).map(|_| self.rng.random_range(0..self.n_actions.max(1))).collect();
            let batch = self.replay.candidates(&slots, &negatives, self.hp.negative_weight as f32, self.device);
            return self.update_tower(&batch);
        }
        let batch = self.replay.batch(&slots, self.n_actions, self.device);
        self.update_on(&batch)
    }

    /// One gradient step of the tower head on `c`: each row's candidates against their targets
    /// (Huber, weighted within the row, rows weighing the same), then the target update when
    /// due. With `gamma > 0` the next state's value is the best of the batch's candidates under
    /// the target network (Double DQN: the online network's pick among them), not of the whole
    /// catalogue: a sampled maximum, which costs one small product instead of a pass over every
    /// item per update.
    pub fn update_tower(&mut self, c: &super::replay::Candidates) -> anyhow::Result<f64> {
        let items = Arc::clone(&self.items);
        let tokens = items.read().unwrap_or_else(|p| p.into_inner());
        let b = &c.states;
        let u = self.online.state_vec(&b.obs);
        let rows = self.online.gather_items(&c.cands, true)?;
        let row_cands: Vec<i64> = c
            .cands
            .chunks(usize::try_from(c.k).unwrap_or(1).max(1))
            .flat_map(|r| r[..c.per_row as usize].to_vec())
            .collect();
        let q = self.online.q_candidates(&u, &rows, &row_cands, c.per_row, &c.shared, &tokens)?;
        // The sparse wide table: a pair trained towards a positive target takes a slot.
        let pair_rows = if self.online.has_pairs() {
            let targets = Vec::<f32>::try_from(c.targets.reshape([-1]))?;
            let weights = Vec::<f32>::try_from(c.weights.reshape([-1]))?;
            let mut index = self.pairs.write().unwrap_or_else(|p| p.into_inner());
            let k = usize::try_from(c.k).unwrap_or(1).max(1);
            let slots: Vec<Option<i64>> = c
                .cands
                .iter()
                .enumerate()
                .map(|(j, &a)| {
                    let item = c.row_items[j / k];
                    if targets[j] > 0.0 && weights[j] > 0.0 {
                        index.slot_or_take(item, a)
                    } else {
                        index.slot(item, a)
                    }
                })
                .collect();
            Some(self.online.gather_pairs(&slots, c.k, true)?)
        } else {
            None
        };
        let q = match &pair_rows {
            Some(p) => q + &p.offsets,
            None => q,
        };
        let target = tch::no_grad(|| -> anyhow::Result<Tensor> {
            if self.hp.gamma == 0.0 {
                return Ok(c.targets.shallow_clone());
            }
            let t_rows = self.target.gather_items(&c.cands, false)?;
            let (t_u, pool) = (self.target.state_vec(&b.next_obs), t_rows.items.len() as i64);
            // Every row's pool is the same: the batch's distinct candidates.
            let all: Vec<i64> = (0..b.obs.size()[0]).flat_map(|_| t_rows.items.iter().copied()).collect();
            // The next states' wide offsets against the pool (slots as they are: none taken).
            let with_pairs = |q: Tensor, net: &Net| -> anyhow::Result<Tensor> {
                if !net.has_pairs() {
                    return Ok(q);
                }
                let index = self.pairs.read().unwrap_or_else(|p| p.into_inner());
                let per_row = t_rows.items.len().max(1);
                let slots: Vec<Option<i64>> =
                    all.iter().enumerate().map(|(j, &a)| index.slot(c.next_row_items[j / per_row], a)).collect();
                Ok(q + net.gather_pairs(&slots, pool, false)?.offsets)
            };
            let next_t =
                with_pairs(self.target.q_candidates(&t_u, &t_rows, &[], 0, &t_rows.items, &tokens)?, &self.target)?;
            let next_value = if self.hp.double {
                let o_rows = self.online.gather_items(&c.cands, false)?;
                let next_o = self.online.q_candidates(
                    &self.online.state_vec(&b.next_obs),
                    &o_rows,
                    &[],
                    0,
                    &o_rows.items,
                    &tokens,
                )?;
                let next_o = with_pairs(next_o, &self.online)?;
                next_t.gather(1, &next_o.argmax(1, true), false).squeeze_dim(1)
            } else {
                next_t.amax(1, false)
            };
            let bootstrap: Tensor = (1.0 - &b.terminated) * next_value * self.hp.gamma;
            Ok(&c.targets + bootstrap.unsqueeze(1))
        })?;
        drop(tokens);
        let per = q.huber_loss(&target, Reduction::None, self.hp.huber_delta) * &c.weights;
        let per_row = per.sum_dim_intlist(1, false, None) / c.weights.sum_dim_intlist(1, false, None).clamp_min(1e-6);
        let loss = per_row.mean(None);
        let grad_rows = Rows { active: self.active_rows, lazy: None, gathered: Some(&rows), pairs: pair_rows.as_ref() };
        self.opt.zero_grad(grad_rows);
        loss.backward();
        if self.hp.grad_clip > 0.0 {
            self.opt.clip_grad_norm(self.hp.grad_clip, grad_rows)?;
        }
        self.opt.step(grad_rows)?;
        self.updates += 1;
        if self.updates % self.hp.target_every.max(1) == 0 {
            net::blend(&self.target_vars, &self.online_vars, self.hp.tau).context("target update failed")?;
        }
        Ok(f64::try_from(&loss)?)
    }

    /// One gradient step on `batch` (Huber loss of Q(s, a) against the DQN target, Adam), then
    /// the target update when due; returns the loss. A batch with full-feedback rows learns
    /// every action of those rows (reward of the action plus the same bootstrapped value: the
    /// next state does not depend on the action there); each row weighs the same in the loss.
    pub fn update_on(&mut self, b: &Batch) -> anyhow::Result<f64> {
        let q = self.online.forward(&b.obs, Some(&b.items));
        let target = tch::no_grad(|| {
            let next_q_target = self.target.forward(&b.next_obs, Some(&b.next_items));
            let next_q_online = self.hp.double.then(|| self.online.forward(&b.next_obs, Some(&b.next_items)));
            td_targets(&b.rewards, &b.terminated, next_q_online.as_ref(), &next_q_target, self.hp.gamma)
        });
        let loss = match &b.full {
            None => {
                let q_sa = q.gather(1, &b.actions.unsqueeze(1), false).squeeze_dim(1);
                q_sa.huber_loss(&target, Reduction::Mean, self.hp.huber_delta)
            }
            Some((rewards, mask)) => {
                let bootstrap = (&target - &b.rewards).unsqueeze(1);
                let per_action = q.huber_loss(&(rewards + bootstrap), Reduction::None, self.hp.huber_delta) * mask;
                let per_row = per_action.sum_dim_intlist(1, false, None) / mask.sum_dim_intlist(1, false, None);
                per_row.mean(None)
            }
        };
        // The wide table's rows this batch reads (its gradient is zero elsewhere).
        let lazy = self.net_cfg.wide.then(|| self.online.wide_rows(&b.items).internal_unique(true, false).0);
        let rows = Rows { active: self.active_rows, lazy: lazy.as_ref(), gathered: None, pairs: None };
        self.opt.zero_grad(rows);
        loss.backward();
        if self.hp.grad_clip > 0.0 {
            self.opt.clip_grad_norm(self.hp.grad_clip, rows)?;
        }
        self.opt.step(rows)?;
        self.updates += 1;
        if self.updates % self.hp.target_every.max(1) == 0 {
            net::blend(&self.target_vars, &self.online_vars, self.hp.tau).context("target update failed")?;
        }
        Ok(f64::try_from(&loss)?)
    }

    /// A copy of the online weights.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot { version: self.updates, weights: net::snapshot(&self.online_vars) }
    }

    /// Everything but the weights, for a checkpoint or a serving copy.
    fn meta(&self, vocab: Vec<String>, eps_step: u64) -> Meta {
        Meta {
            format: checkpoint::FORMAT,
            net: self.net_cfg.clone(),
            n_actions: self.n_actions,
            catalog: self.catalog.clone(),
            updates: self.updates,
            eps_step,
            vocab,
            wide_pairs: self.pairs.read().unwrap_or_else(|p| p.into_inner()).pairs(),
            items: self.items.read().unwrap_or_else(|p| p.into_inner()).to_vecs(),
            saved_at_ms: common::kafka::now_ms(),
        }
    }

    /// Writes a checkpoint with the given vocabulary and epsilon position.
    pub fn save(
        &self,
        path: &std::path::Path,
        vocab: Vec<String>,
        eps_step: u64,
    ) -> Result<(), checkpoint::CheckpointError> {
        checkpoint::save(path, &self.meta(vocab, eps_step), &self.online_vs, &self.target_vs)
    }

    /// What a serving replica needs, in the checkpoint layout without target weights.
    pub fn serving_bytes(&self, vocab: Vec<String>, eps_step: u64) -> Result<Vec<u8>, checkpoint::CheckpointError> {
        let origin = std::path::PathBuf::from(format!("serving copy of update {}", self.updates));
        checkpoint::encode(&self.meta(vocab, eps_step), &self.online_vs, None, &origin)
    }
}

/// How often the learner thread sets its Prometheus gauges.
const EXPORT_EVERY: Duration = Duration::from_secs(2);

/// The learner thread's loop; returns when the policy side hangs up.
pub fn run(
    mut learner: Learner,
    inbox_rx: Receiver<ToLearner>,
    snapshot_tx: SyncSender<Snapshot>,
    shared: Arc<Shared>,
    checkpoint_path: Option<PathBuf>,
) {
    let mut owed = 0.0_f64;
    let mut pending: Option<Snapshot> = None;
    let mut flushes: Vec<SyncSender<u64>> = Vec::new();
    // Updates skipped, fractional: a train ratio below 1 owes a fraction per transition.
    let (mut loss_sum, mut loss_n, mut skipped) = (0.0, 0u64, 0.0_f64);
    let mut last_log = Instant::now();
    // The same figures for Prometheus, more often (no-ops without a recorder).
    let (mut export_sum, mut export_n, mut last_export) = (0.0, 0u64, Instant::now());
    let mut warned_full = false;
    let save = |learner: &Learner| -> Result<u64, String> {
        let Some(path) = &checkpoint_path else { return Ok(learner.updates()) };
        let words = shared.vocab.lock().map_err(|_| "vocabulary lock poisoned".to_string())?.words().to_vec();
        learner.save(path, words, shared.eps_step.load(Ordering::Relaxed)).map_err(|e| e.to_string())?;
        tracing::info!(path = %path.display(), updates = learner.updates(), "dqn checkpoint written");
        Ok(learner.updates())
    };
    'outer: loop {
        // Handle what arrived; wait for more only when no update is owed.
        for _ in 0..MAX_DRAIN {
            // With backpressure, read a transition only when the updates it brings fit under
            // `max_owed`: none is ever skipped, whatever `--dqn-train-ratio`.
            let max_owed = learner.hp.max_owed.max(learner.hp.train_ratio).max(1.0);
            if learner.hp.backpressure && learner.ready() && owed + learner.hp.train_ratio > max_owed {
                break;
            }
            let busy = owed >= 1.0 && learner.ready();
            let msg = if busy {
                match inbox_rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => break 'outer,
                }
            } else if pending.is_some() {
                // Retry the snapshot the inference side has not taken yet.
                match inbox_rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break 'outer,
                }
            } else {
                match inbox_rx.recv() {
                    Ok(m) => m,
                    Err(_) => break 'outer,
                }
            };
            match msg {
                ToLearner::Transition(t) => {
                    learner.push(&t);
                    if learner.ready() {
                        owed += learner.hp.train_ratio;
                        let max_owed = learner.hp.max_owed.max(1.0);
                        if owed > max_owed {
                            skipped += owed - max_owed;
                            shared.skipped.store(skipped.round() as u64, Ordering::Relaxed);
                            owed = max_owed;
                        }
                    }
                }
                ToLearner::Checkpoint(reply_tx) => {
                    let _ = reply_tx.send(save(&learner));
                }
                ToLearner::Snapshot(reply_tx) => {
                    let _ = reply_tx.send(learner.snapshot());
                }
                ToLearner::Serve(reply_tx) => {
                    let serving = shared
                        .vocab
                        .lock()
                        .map_err(|_| "vocabulary lock poisoned".to_string())
                        .map(|v| v.words().to_vec())
                        .and_then(|words| {
                            let eps = shared.eps_step.load(Ordering::Relaxed);
                            learner.serving_bytes(words, eps).map_err(|e| e.to_string())
                        });
                    let _ = reply_tx.send(serving.map(|bytes| (learner.updates(), bytes)));
                }
                ToLearner::Flush(reply_tx) => flushes.push(reply_tx),
            }
            if owed < 1.0 || !learner.ready() {
                for f in flushes.drain(..) {
                    let _ = f.send(learner.updates());
                }
            }
        }
        if owed >= 1.0 && learner.ready() {
            // Every id in the replay buffer was handed out before now: below this bound.
            if let Ok(vocab) = shared.vocab.lock() {
                learner.set_active_rows((vocab.len() + RESERVED) as i64);
            }
            match learner.update() {
                Ok(loss) => {
                    loss_sum += loss;
                    loss_n += 1;
                    export_sum += loss;
                    export_n += 1;
                }
                Err(e) => {
                    let why = format!("dqn update {} failed: {e:#}", learner.updates() + 1);
                    tracing::error!(error = %why, "dqn learner stops");
                    shared.fail(why);
                    break 'outer;
                }
            }
            owed -= 1.0;
            let updates = learner.updates();
            shared.updates.store(updates, Ordering::Relaxed);
            if updates % learner.hp.sync_every.max(1) == 0 {
                pending = Some(learner.snapshot());
            }
            if learner.hp.checkpoint_every > 0 && updates % learner.hp.checkpoint_every == 0 {
                if let Err(e) = save(&learner) {
                    let why = format!("dqn checkpoint at update {updates} failed: {e}");
                    tracing::error!(error = %why, "dqn learner stops");
                    shared.fail(why);
                    break 'outer;
                }
            }
            if owed < 1.0 {
                for f in flushes.drain(..) {
                    let _ = f.send(updates);
                }
            }
        }
        if let Some(s) = pending.take() {
            match snapshot_tx.try_send(s) {
                Ok(()) => {}
                Err(TrySendError::Full(s)) => pending = Some(s),
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
        if last_export.elapsed() >= EXPORT_EVERY && export_n > 0 {
            // The learner's Prometheus gauges (mean TD loss over the last window).
            metrics::gauge!("streamrec_dqn_td_loss").set(export_sum / export_n as f64);
            metrics::gauge!("streamrec_dqn_replay_transitions").set(learner.replay().len() as f64);
            metrics::counter!("streamrec_dqn_updates_total").absolute(learner.updates());
            metrics::counter!("streamrec_dqn_skipped_updates_total").absolute(skipped.round() as u64);
            metrics::counter!("streamrec_dqn_dropped_transitions_total")
                .absolute(shared.dropped.load(Ordering::Relaxed));
            (export_sum, export_n, last_export) = (0.0, 0, Instant::now());
        }
        if last_log.elapsed() >= Duration::from_secs(10) && loss_n > 0 {
            let pairs = learner.wide_pairs();
            tracing::info!(
                updates = learner.updates(),
                td_loss = loss_sum / loss_n as f64,
                replay = learner.replay().len(),
                dropped = shared.dropped.load(Ordering::Relaxed),
                skipped = skipped.round() as u64,
                wide_pairs = pairs.map(|(taken, _)| taken),
                "dqn learner"
            );
            if let Some((taken, capacity)) = pairs.filter(|&(t, c)| t >= c && !warned_full) {
                // Documented behaviour of the bounded table: new pairs get no offset from here on.
                tracing::warn!(
                    taken,
                    capacity,
                    "dqn sparse wide table full: new pairs get no offset (--dqn-wide-pairs)"
                );
                warned_full = true;
            }
            (loss_sum, loss_n, last_log) = (0.0, 0, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::dqn::net::NetKind;
    use tch::Kind;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn hyper() -> Hyper {
        Hyper {
            gamma: 0.9,
            lr: 1e-2,
            wide_lr: None,
            batch_size: 8,
            replay_capacity: 100,
            learning_starts: 1,
            train_ratio: 1.0,
            target_every: 10,
            tau: 1.0,
            double: true,
            huber_delta: 1.0,
            grad_clip: 10.0,
            sync_every: 1,
            checkpoint_every: 0,
            seed: 0,
            max_owed: 1_000.0,
            backpressure: false,
            negatives: 16,
            negative_weight: 1.0,
        }
    }

    #[test]
    fn double_dqn_targets_mask_bootstrap_on_termination_only() {
        // Three transitions: plain, terminated, truncated (truncation is not termination: the
        // env marks it in the state, the learner still bootstraps, so its flag here is 0).
        let rewards = t(&[1.0, 1.0, 0.0]);
        let terminated = t(&[0.0, 1.0, 0.0]);
        let next_online = Tensor::from_slice(&[0.0f32, 5.0, 1.0, 9.0, 0.0, 0.0, 2.0, 0.0, 3.0]).view([3, 3]);
        let next_target = Tensor::from_slice(&[7.0f32, 2.0, 4.0, 1.0, 1.0, 1.0, 6.0, 8.0, 4.0]).view([3, 3]);
        let double = td_targets(&rewards, &terminated, Some(&next_online), &next_target, 0.5);
        // Online argmax: 1, 0, 2 -> target values 2, (masked), 4.
        assert_eq!(Vec::<f32>::try_from(&double).unwrap_or_else(|e| panic!("{e}")), [2.0, 1.0, 2.0]);
        let vanilla = td_targets(&rewards, &terminated, None, &next_target, 0.5);
        // Target max: 7, (masked), 8.
        assert_eq!(Vec::<f32>::try_from(&vanilla).unwrap_or_else(|e| panic!("{e}")), [4.5, 1.0, 4.0]);
    }

    #[test]
    fn huber_loss_decreases_on_a_toy_problem() {
        let _rng = net::torch_rng_guard();
        tch::manual_seed(0);
        let cfg = NetConfig { kind: NetKind::Mlp, embedding_dim: 8, hidden: vec![16], ..NetConfig::paper(10, 4) };
        let hp = Hyper { gamma: 0.0, ..hyper() };
        let mut learner = Learner::new(&cfg, 4, &hp, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        // Token 2 pays 1 for action 1, token 3 pays 1 for action 2; everything terminates.
        for i in 0..64 {
            let (tok, a) = (2 + i % 2, (i / 2) % 4);
            let r = if (tok == 2 && a == 1) || (tok == 3 && a == 2) { 1.0 } else { 0.0 };
            learner.push(&Transition {
                obs: vec![tok],
                item: 0,
                action: a,
                reward: r,
                next_obs: vec![tok],
                next_item: 0,
                terminated: true,
                positives: None,
            });
        }
        let first: f64 = (0..5).map(|_| learner.update().unwrap_or_else(|e| panic!("{e}"))).sum::<f64>() / 5.0;
        for _ in 0..300 {
            learner.update().unwrap_or_else(|e| panic!("{e}"));
        }
        let last: f64 = (0..5).map(|_| learner.update().unwrap_or_else(|e| panic!("{e}"))).sum::<f64>() / 5.0;
        assert!(last < first * 0.1, "loss {first} -> {last}");
        let q = learner
            .q_values(&Tensor::from_slice(&[2i64, 3]).view([2, 1]), &Tensor::from_slice(&[0i64, 0]))
            .unwrap_or_else(|e| panic!("{e}"));
        let best = Vec::<i64>::try_from(q.argmax(1, false)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(best, [1, 2]);
        assert_eq!(learner.updates(), 310);
    }

    #[test]
    fn full_feedback_rows_teach_every_action_from_one_transition_each() {
        let _rng = net::torch_rng_guard();
        tch::manual_seed(0);
        let cfg = NetConfig { kind: NetKind::Mlp, embedding_dim: 8, hidden: vec![16], ..NetConfig::paper(10, 4) };
        let hp = Hyper { gamma: 0.0, ..hyper() };
        let mut learner = Learner::new(&cfg, 4, &hp, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        // One transition per token; the actions taken (0) earned nothing, but in hindsight
        // actions 1 and 3 (token 2) and 2 (token 3) would have paid 1, 0.5 and 1.
        for (tok, positives) in [(2, vec![(1, 1.0), (3, 0.5)]), (3, vec![(2, 1.0)])] {
            let positives = Some(positives);
            learner.push(&Transition {
                obs: vec![tok],
                item: 0,
                action: 0,
                reward: 0.0,
                next_obs: vec![tok],
                next_item: 0,
                terminated: true,
                positives,
            });
        }
        for _ in 0..400 {
            learner.update().unwrap_or_else(|e| panic!("{e}"));
        }
        let q = learner
            .q_values(&Tensor::from_slice(&[2i64, 3]).view([2, 1]), &Tensor::from_slice(&[0i64, 0]))
            .unwrap_or_else(|e| panic!("{e}"));
        let q = Vec::<f32>::try_from(q.view([-1])).unwrap_or_else(|e| panic!("{e}"));
        let want = [0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 0.0];
        assert!(q.iter().zip(want).all(|(q, w)| (q - w).abs() < 0.1), "Q {q:?} vs {want:?}");
    }

    /// One text for every state; product 1 is followed by action 2, product 2 by action 0.
    fn push_two_products_one_text(learner: &mut Learner) {
        for (item, good) in [(1, 2), (2, 0)] {
            learner.push(&Transition {
                obs: vec![5],
                item,
                action: 3,
                reward: 0.0,
                next_obs: vec![5],
                next_item: item,
                terminated: true,
                positives: Some(vec![(good, 1.0)]),
            });
        }
    }

    /// The argmax of the two products' states after `updates` updates.
    fn best_of_two_products(learner: &mut Learner, updates: usize) -> Vec<i64> {
        for _ in 0..updates {
            learner.update().unwrap_or_else(|e| panic!("{e}"));
        }
        let q = learner.q_values(&Tensor::from_slice(&[5i64, 5]).view([2, 1]), &Tensor::from_slice(&[1i64, 2]));
        Vec::<i64>::try_from(q.unwrap_or_else(|e| panic!("{e}")).argmax(1, false)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_wide_table_learns_what_the_text_cannot_tell_apart() {
        let _rng = net::torch_rng_guard();
        tch::manual_seed(0);
        // Every state has the same text; only the product index tells product 1 (next: action
        // 2) from product 2 (next: action 0). The deep part alone cannot separate them.
        let deep = NetConfig { kind: NetKind::Mlp, embedding_dim: 8, hidden: vec![16], ..NetConfig::paper(10, 4) };
        let hp = Hyper { gamma: 0.0, lr: 0.01, ..hyper() };
        let mut best = Vec::new();
        for cfg in [deep.clone(), NetConfig { wide: true, ..deep }] {
            let mut learner = Learner::new(&cfg, 4, &hp, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
            push_two_products_one_text(&mut learner);
            best.push(best_of_two_products(&mut learner, 300));
        }
        assert_eq!(best[0][0], best[0][1], "without the table both products look alike");
        assert_eq!(best[1], [2, 0], "with it each product gets its own best action");
        let too_big = NetConfig { wide: true, ..NetConfig::paper(10, 4) };
        let err = Learner::new(&too_big, net::MAX_WIDE_ACTIONS + 1, &hp, Device::Cpu).err();
        assert!(err.is_some_and(|e| e.to_string().contains("--dqn-wide")), "refused above the limit");
    }

    /// A learner of the tower head over `n` items whose words are known: item `i` reads
    /// `words[i]`.
    fn tower_learner(n: i64, words: &[&[i64]], hp: &Hyper) -> Learner {
        tower_learner_with(n, words, hp, None)
    }

    /// [`tower_learner`], with the sparse wide table of `wide_pairs` slots when given.
    fn tower_learner_with(n: i64, words: &[&[i64]], hp: &Hyper, wide_pairs: Option<i64>) -> Learner {
        let cfg = NetConfig {
            kind: NetKind::Mlp,
            embedding_dim: 8,
            hidden: vec![16],
            head: net::Head::Tower,
            tower_dim: 8,
            wide: wide_pairs.is_some(),
            wide_pairs: wide_pairs.unwrap_or(0),
            ..NetConfig::paper(300, 4)
        };
        let mut learner = Learner::new(&cfg, n, hp, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let items = Arc::new(RwLock::new(ItemTokens::default()));
        for (i, w) in words.iter().enumerate() {
            items.write().unwrap_or_else(|p| p.into_inner()).set(i as i64, w);
        }
        learner.set_items(items);
        learner
    }

    #[test]
    fn the_tower_learns_full_feedback_from_sampled_negatives_and_its_two_paths_agree() {
        let _rng = net::torch_rng_guard();
        tch::manual_seed(0);
        let hp = Hyper { gamma: 0.0, lr: 0.02, negatives: 6, ..hyper() };
        // Eight items; the state "token 2" is followed by item 1, "token 3" by item 5.
        let words: Vec<&[i64]> = vec![&[10], &[11], &[12], &[13], &[14], &[15], &[16], &[17]];
        let mut learner = tower_learner(8, &words, &hp);
        for (tok, good) in [(2, 1), (3, 5)] {
            learner.push(&Transition {
                obs: vec![tok],
                item: 0,
                action: 7,
                reward: 0.0,
                next_obs: vec![tok],
                next_item: 0,
                terminated: true,
                positives: Some(vec![(good, 1.0)]),
            });
        }
        for _ in 0..400 {
            learner.update().unwrap_or_else(|e| panic!("{e}"));
        }
        let ids = Tensor::from_slice(&[2i64, 3]).view([2, 1]);
        let q = learner.q_values(&ids, &Tensor::from_slice(&[0i64, 0])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.size(), [2, 8]);
        let best = Vec::<i64>::try_from(q.argmax(1, false)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(best, [1, 5]);
        // The training path (candidates) and the serving path (the whole catalogue) agree.
        let tokens = learner.items.read().unwrap_or_else(|p| p.into_inner()).clone();
        let rows = learner.online.gather_items(&[1, 5, 7, 1, 5, 7], false).unwrap_or_else(|e| panic!("{e}"));
        let u = tch::no_grad(|| learner.online.state_vec(&ids));
        let some = tch::no_grad(|| learner.online.q_candidates(&u, &rows, &[1, 5, 1, 5], 2, &[7], &tokens))
            .unwrap_or_else(|e| panic!("{e}"));
        let want = q.index_select(1, &Tensor::from_slice(&[1i64, 5, 7]));
        assert!(some.allclose(&want, 1e-5, 1e-5, false), "{some} vs {want}");
    }

    #[test]
    fn the_tower_scores_items_never_rewarded_by_the_words_they_share() {
        let _rng = net::torch_rng_guard();
        tch::manual_seed(2);
        let hp = Hyper { gamma: 0.0, lr: 0.02, negatives: 8, ..hyper() };
        // 200 items: 0..20 say "red" (token 5), the others "blue" (token 6), each also its own
        // word. After the state "token 2" only red items 0..10 were ever rewarded; red items
        // 10..20 never were (they are at most drawn now and then as negatives).
        let own: Vec<Vec<i64>> = (0..200).map(|i| vec![if i < 20 { 5 } else { 6 }, 7 + i]).collect();
        let words: Vec<&[i64]> = own.iter().map(Vec::as_slice).collect();
        let mut learner = tower_learner(200, &words, &hp);
        for good in 0..10 {
            learner.push(&Transition {
                obs: vec![2],
                item: 199,
                action: 199,
                reward: 0.0,
                next_obs: vec![2],
                next_item: 199,
                terminated: true,
                positives: Some(vec![(good, 1.0)]),
            });
        }
        for _ in 0..300 {
            learner.update().unwrap_or_else(|e| panic!("{e}"));
        }
        let q = learner
            .q_values(&Tensor::from_slice(&[2i64]).view([1, 1]), &Tensor::from_slice(&[199i64]))
            .unwrap_or_else(|e| panic!("{e}"));
        let q = Vec::<f32>::try_from(q.view([-1])).unwrap_or_else(|e| panic!("{e}"));
        let mean = |r: std::ops::Range<usize>| q[r.clone()].iter().sum::<f32>() / r.len() as f32;
        let (unrewarded_red, blue) = (mean(10..20), mean(20..200));
        assert!(
            unrewarded_red > blue + 0.1,
            "red items never rewarded ({unrewarded_red}) score above blue ones ({blue}) by what their word learned"
        );
    }

    #[test]
    fn the_towers_sparse_wide_table_learns_what_the_text_cannot_tell_apart_in_bounded_memory() {
        let _rng = net::torch_rng_guard();
        tch::manual_seed(0);
        // As the dense table's test: one text, product 1 is followed by action 2, product 2 by
        // action 0; the state tower alone cannot tell them apart.
        let hp = Hyper { gamma: 0.0, lr: 0.02, negatives: 3, ..hyper() };
        let words: Vec<&[i64]> = vec![&[10], &[11], &[12], &[13]];
        let mut best = Vec::new();
        for wide in [None, Some(2)] {
            let mut learner = tower_learner_with(4, &words, &hp, wide);
            push_two_products_one_text(&mut learner);
            best.push(best_of_two_products(&mut learner, 300));
            if wide.is_some() {
                let index = learner.pairs.read().unwrap_or_else(|p| p.into_inner());
                assert_eq!((index.len(), index.slot(1, 2).is_some(), index.slot(2, 0).is_some()), (2, true, true));
            }
        }
        assert_eq!(best[0][0], best[0][1], "without the table both products look alike");
        assert_eq!(best[1], [2, 0], "with it each product gets its own best action");
    }

    #[test]
    fn target_network_follows_every_target_every_updates() {
        let _rng = net::torch_rng_guard();
        tch::manual_seed(1);
        let cfg = NetConfig { kind: NetKind::Mlp, embedding_dim: 4, hidden: vec![], ..NetConfig::paper(10, 2) };
        let hp = Hyper { target_every: 3, double: false, ..hyper() };
        let mut learner = Learner::new(&cfg, 2, &hp, Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        learner.push(&Transition {
            obs: vec![2],
            item: 0,
            action: 0,
            reward: 1.0,
            next_obs: vec![2],
            next_item: 0,
            terminated: false,
            positives: None,
        });
        let same = |l: &Learner| l.online_vars.iter().zip(&l.target_vars).all(|(a, b)| a.equal(b));
        assert!(same(&learner));
        for i in 1..=3 {
            learner.update().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(same(&learner), i == 3, "after {i} updates");
        }
        assert_eq!(learner.online_vars[0].kind(), Kind::Float);
    }
}
