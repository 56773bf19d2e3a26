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
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use tch::{nn, Device, Reduction, Tensor};

use super::{
    adam::{Adam, Rows},
    checkpoint::{self, Meta},
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
    /// Updates done so far.
    pub updates: AtomicU64,
    /// Why the learner stopped, when it stopped on a failure (an update or a checkpoint that
    /// failed); the policy side turns it into an error of its next call.
    pub failure: Mutex<Option<String>>,
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
}

impl Learner {
    /// A learner with freshly initialised networks (the target a copy of the online one).
    pub fn new(net_cfg: &NetConfig, n_actions: i64, hp: &Hyper, device: Device) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !net_cfg.wide || n_actions <= net::MAX_WIDE_ACTIONS,
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
        let opt = Adam::new(&online_vs, hp.lr, "embedding.weight", "wide");
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
        })
    }

    /// Records the fingerprint of the catalogue the actions index (saved in checkpoints).
    pub fn set_catalog(&mut self, catalog: Option<String>) {
        self.catalog = catalog;
    }

    /// Replaces both networks' weights and the update count with a checkpoint's.
    pub fn restore(&mut self, ckpt: &checkpoint::Checkpoint) -> anyhow::Result<()> {
        ckpt.load_into(&mut self.online_vs, Some(&mut self.target_vs))?;
        self.updates = ckpt.meta.updates;
        Ok(())
    }

    /// Declares that token ids below `rows` are the only ones handed out so far (the words
    /// known plus the reserved ids), so Adam may skip the embedding's other rows. Never lower
    /// than an id already stored; by default every row is active.
    pub fn set_active_rows(&mut self, rows: i64) {
        self.active_rows = rows.clamp(RESERVED as i64, Vocab::embedding_rows(self.net_cfg.vocab_size));
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
    pub fn q_values(&self, ids: &Tensor, items: &Tensor) -> Tensor {
        tch::no_grad(|| self.online.forward(ids, Some(items)))
    }

    /// One gradient step on a batch sampled from the replay buffer; returns the loss.
    pub fn update(&mut self) -> anyhow::Result<f64> {
        let slots = self.replay.sample_indices(self.hp.batch_size, &mut self.rng);
        anyhow::ensure!(!slots.is_empty(), "the replay buffer is empty");
        let batch = self.replay.batch(&slots, self.n_actions, self.device);
        self.update_on(&batch)
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
        let rows = Rows { active: self.active_rows, lazy: lazy.as_ref() };
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

    /// Writes a checkpoint with the given vocabulary and epsilon position.
    pub fn save(
        &self,
        path: &std::path::Path,
        vocab: Vec<String>,
        eps_step: u64,
    ) -> Result<(), checkpoint::CheckpointError> {
        let meta = Meta {
            format: checkpoint::FORMAT,
            net: self.net_cfg.clone(),
            n_actions: self.n_actions,
            catalog: self.catalog.clone(),
            updates: self.updates,
            eps_step,
            vocab,
            saved_at_ms: common::kafka::now_ms(),
        };
        checkpoint::save(path, &meta, &self.online_vs, &self.target_vs)
    }
}

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
    let (mut loss_sum, mut loss_n, mut skipped) = (0.0, 0u64, 0u64);
    let mut last_log = Instant::now();
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
            if learner.hp.backpressure && learner.ready() && owed >= learner.hp.max_owed.max(1.0) {
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
                            skipped += (owed - max_owed).ceil() as u64;
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
        if last_log.elapsed() >= Duration::from_secs(10) && loss_n > 0 {
            tracing::info!(
                updates = learner.updates(),
                td_loss = loss_sum / loss_n as f64,
                replay = learner.replay().len(),
                dropped = shared.dropped.load(Ordering::Relaxed),
                skipped,
                "dqn learner"
            );
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
        let q = learner.q_values(&Tensor::from_slice(&[2i64, 3]).view([2, 1]), &Tensor::from_slice(&[0i64, 0]));
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
        let q = learner.q_values(&Tensor::from_slice(&[2i64, 3]).view([2, 1]), &Tensor::from_slice(&[0i64, 0]));
        let q = Vec::<f32>::try_from(q.view([-1])).unwrap_or_else(|e| panic!("{e}"));
        let want = [0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 1.0, 0.0];
        assert!(q.iter().zip(want).all(|(q, w)| (q - w).abs() < 0.1), "Q {q:?} vs {want:?}");
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
            for _ in 0..300 {
                learner.update().unwrap_or_else(|e| panic!("{e}"));
            }
            let q = learner.q_values(&Tensor::from_slice(&[5i64, 5]).view([2, 1]), &Tensor::from_slice(&[1i64, 2]));
            best.push(Vec::<i64>::try_from(q.argmax(1, false)).unwrap_or_else(|e| panic!("{e}")));
        }
        assert_eq!(best[0][0], best[0][1], "without the table both products look alike");
        assert_eq!(best[1], [2, 0], "with it each product gets its own best action");
        let too_big = NetConfig { wide: true, ..NetConfig::paper(10, 4) };
        let err = Learner::new(&too_big, net::MAX_WIDE_ACTIONS + 1, &hp, Device::Cpu).err();
        assert!(err.is_some_and(|e| e.to_string().contains("--dqn-wide")), "refused above the limit");
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
