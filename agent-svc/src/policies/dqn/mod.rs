//! `--policy dqn`: a Deep Q-Network over the text of the state (the reference paper's agent),
//! on libtorch through `tch`.
//!
//! Two sides, two threads. The policy side (this module, called from the agent loop) owns an
//! inference copy of the network and the vocabulary: it tokenizes states, answers a whole poll
//! with one forward pass, explores epsilon-greedily and hands transitions to the learner. The
//! learner thread ([`learner`]) owns the trainable network, the target network, Adam and the
//! replay buffer; every `--dqn-sync-every` updates it sends a weight snapshot back, which the
//! policy side applies at its next `act`. Both channels are bounded; the agent loop never waits
//! on the learner (a transition that finds the channel full is dropped and counted).
//!
//! Invariant: `model_version()` is the number of learner updates reflected in the weights that
//! chose the action, and `ps` is the exact probability of the action under the epsilon-greedy
//! policy that chose it.

pub mod adam;
pub mod checkpoint;
pub mod items;
pub mod learner;
pub mod net;
pub mod replay;
pub mod search;
pub mod serving;
pub mod vocab;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc, Mutex, MutexGuard, RwLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context};
use protocol::StateMsg;
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Tensor};

use self::{
    items::{ItemTokens, PairIndex},
    learner::{Hyper, Learner, Shared, Snapshot, ToLearner},
    net::{Head, Net, NetConfig, NetKind},
    replay::Transition,
    search::{Ivf, IvfConfig},
    vocab::Vocab,
};
use super::{epsilon_greedy, Feedback, Policy};

/// DQN hyperparameters and settings; every one is a flag with an environment fallback, and the
/// whole set is logged when the policy starts. The defaults are the reference paper's network
/// and plain DQN training; `--dqn-preset` names the tuned sets the make targets run.
#[derive(Debug, Clone, clap::Args)]
pub struct DqnArgs {
    /// Named settings that replace the defaults of the other `--dqn-*` flags (a flag or
    /// variable given explicitly still wins): `paper` (the defaults), `fashion` (what `make sim`
    /// and `make eval` run on Amazon Fashion) or `recogym` (what `make recogym` runs); the
    /// settings of each are in `docs/DQN.md` and [`DqnPreset::settings`].
    #[arg(long, env = "DQN_PRESET", value_enum, default_value_t = DqnPreset::Paper)]
    pub dqn_preset: DqnPreset,
    /// Q-network: `lstm` (embedding, bidirectional LSTMs, dense layers, as in the paper) or `mlp`
    /// (embedding averaged over the tokens, dense layers).
    #[arg(long, env = "DQN_NET", value_enum, default_value_t = NetKind::Lstm)]
    pub dqn_net: NetKind,
    /// Width of the token embedding.
    #[arg(long, env = "DQN_EMBEDDING_DIM", default_value_t = 64)]
    pub dqn_embedding_dim: i64,
    /// Units of each bidirectional LSTM layer, comma-separated (`lstm` only).
    #[arg(long, env = "DQN_LSTM_UNITS", value_delimiter = ',', default_value = "64,64,32")]
    pub dqn_lstm_units: Vec<i64>,
    /// Widths of the dense ReLU layers before the Q-value output, comma-separated.
    #[arg(long, env = "DQN_HIDDEN", value_delimiter = ',', default_value = "64,32")]
    pub dqn_hidden: Vec<i64>,
    /// Words the vocabulary holds; later new words share one out-of-vocabulary id.
    #[arg(long, env = "DQN_VOCAB_SIZE", default_value_t = 20_000)]
    pub dqn_vocab_size: usize,
    /// Tokens of a state's text the network reads at most (longer texts are cut).
    #[arg(long, env = "DQN_MAX_TOKENS", default_value_t = 32)]
    pub dqn_max_tokens: usize,
    /// Discount of future rewards.
    #[arg(long, env = "DQN_GAMMA", default_value_t = 0.9)]
    pub dqn_gamma: f64,
    /// Adam's learning rate.
    #[arg(long, env = "DQN_LR", default_value_t = 1e-3)]
    pub dqn_lr: f64,
    /// Transitions per gradient step.
    #[arg(long, env = "DQN_BATCH_SIZE", default_value_t = 64)]
    pub dqn_batch_size: usize,
    /// Transitions the replay buffer keeps (the oldest are overwritten).
    #[arg(long, env = "DQN_REPLAY_CAPACITY", default_value_t = 50_000)]
    pub dqn_replay_capacity: usize,
    /// Transitions stored before the first gradient step.
    #[arg(long, env = "DQN_LEARNING_STARTS", default_value_t = 500)]
    pub dqn_learning_starts: usize,
    /// Gradient steps per transition received (fractions accumulate).
    #[arg(long, env = "DQN_TRAIN_RATIO", default_value_t = 1.0)]
    pub dqn_train_ratio: f64,
    /// Gradient steps between target-network updates.
    #[arg(long, env = "DQN_TARGET_EVERY", default_value_t = 200)]
    pub dqn_target_every: u64,
    /// Target update `target = tau * online + (1 - tau) * target`: 1 copies (periodic hard
    /// update), e.g. 0.005 with `--dqn-target-every 1` is a soft update.
    #[arg(long, env = "DQN_TAU", default_value_t = 1.0)]
    pub dqn_tau: f64,
    /// Make the agent wait for the learner when its queue is full instead of dropping
    /// transitions: for offline training and evaluation (`make eval`), where the stream is
    /// faster than the learner; a live service should keep answering and drop.
    #[arg(long, env = "DQN_BACKPRESSURE")]
    pub dqn_backpressure: bool,
    /// What is learned in hindsight from the states that follow, besides the action taken:
    /// `off` nothing; `next` also that the user's next product (shown by the next state) would
    /// have paid reward 1 (the interactive user model: its acceptance probability, and only
    /// after a declined recommendation that did not end the episode); `future` (full feedback)
    /// at the episode's end, each step learns a target for every action: `decay^(k-1)` for a
    /// product the user went on to see `k` steps later (see `--dqn-hindsight-decay`), 0 for all
    /// others, sound only where a recommendation never changes what the user does next (the
    /// replay model; refused elsewhere). Uses only what the stream showed.
    #[arg(long, env = "DQN_HINDSIGHT", value_enum, default_value_t = Hindsight::Off)]
    pub dqn_hindsight: Hindsight,
    /// `future` hindsight: the target of a product first seen `k` steps later is `decay^(k-1)`.
    /// 1 is exactly the env's reward (any later product pays 1); lower values favour what comes
    /// soon, a sharper estimate from few episodes (measured in docs/DQN.md).
    #[arg(long, env = "DQN_HINDSIGHT_DECAY", default_value_t = 0.6)]
    pub dqn_hindsight_decay: f64,
    /// Put the product's own id (its ASIN, as observed in the state) among the tokens the
    /// network reads, so it can tell apart products with similar text.
    #[arg(long, env = "DQN_ID_TOKEN", default_value_t = false, action = clap::ArgAction::Set)]
    pub dqn_id_token: bool,
    /// Add a wide table to the network: a learned Q-value offset for every (state's product,
    /// action) pair, next to the deep part that reads the text (Wide & Deep). It memorises
    /// product-to-product effects. With `--dqn-head dense` it is dense, n_actions² floats per
    /// copy, refused above 4,096 actions; with `--dqn-head tower` it is sparse: a pair gets an
    /// offset once it is trained towards a positive target, up to `--dqn-wide-pairs` pairs.
    #[arg(long, env = "DQN_WIDE", default_value_t = false, action = clap::ArgAction::Set)]
    pub dqn_wide: bool,
    /// How Q-values come out: `dense` (one output per action, the paper's; its weights grow
    /// with the catalogue times the last layer), `tower` (the state's vector against each
    /// item's: an id embedding plus the item's own words, with a bias per item; serves a
    /// catalogue of any size, and items share what their words learn) or `auto` (`dense` up to
    /// 4,096 actions, `tower` above, decided on the first state and logged). See docs/DQN.md.
    #[arg(long, env = "DQN_HEAD", value_enum, default_value_t = Head::Dense)]
    pub dqn_head: Head,
    /// Adam's learning rate for the wide table (`--dqn-wide`, dense or sparse); unset: `--dqn-lr`.
    /// A pair's offset moves by about this rate per sighting (Adam's step size), so a faster
    /// table memorises pairs seen once or twice; at full size 0.03 scored below the default
    /// (docs/RESULTS.md), so the presets leave it unset.
    #[arg(long, env = "DQN_WIDE_LR")]
    pub dqn_wide_lr: Option<f64>,
    /// Most (product, action) pairs the sparse wide table of `--dqn-head tower` holds (4 bytes
    /// each per copy); pairs beyond get no offset.
    #[arg(long, env = "DQN_WIDE_PAIRS", default_value_t = 1_000_000)]
    pub dqn_wide_pairs: i64,
    /// Width of the state and item vectors of `--dqn-head tower`.
    #[arg(long, env = "DQN_TOWER_DIM", default_value_t = 64)]
    pub dqn_tower_dim: i64,
    /// `--dqn-head tower` with full feedback: actions drawn uniformly per batch as each row's
    /// negatives (target 0), instead of scoring every action of the catalogue.
    #[arg(long, env = "DQN_NEGATIVES", default_value_t = 256)]
    pub dqn_negatives: usize,
    /// Weight of each negative in its row's loss, a positive weighing 1.
    #[arg(long, env = "DQN_NEGATIVE_WEIGHT", default_value_t = 1.0)]
    pub dqn_negative_weight: f64,
    /// How the tower head finds a state's best actions: `exact` scores every item (block by
    /// block), `ivf` scores the candidates of an inverted-file index over the item vectors (the
    /// `--dqn-ivf-probe` nearest lists, the state's product's wide pairs and the
    /// `--dqn-ivf-popular` items of largest bias) and re-ranks them exactly, `auto` is `ivf`
    /// above 50,000 actions and `exact` below, decided on the first state and logged. The dense
    /// head always scores every action. See docs/DQN.md ("Candidate search").
    #[arg(long, env = "DQN_SEARCH", value_enum, default_value_t = Search::Auto)]
    pub dqn_search: Search,
    /// `--dqn-search ivf`: lists of the index (k-means centroids); 0 is about 2·sqrt(actions).
    #[arg(long, env = "DQN_IVF_LISTS", default_value_t = 0)]
    pub dqn_ivf_lists: usize,
    /// `--dqn-search ivf`: lists read per state.
    #[arg(long, env = "DQN_IVF_PROBE", default_value_t = 16)]
    pub dqn_ivf_probe: usize,
    /// `--dqn-search ivf`: items of largest bias that are candidates of every state.
    #[arg(long, env = "DQN_IVF_POPULAR", default_value_t = 256)]
    pub dqn_ivf_popular: usize,
    /// `--dqn-search ivf`: weight snapshots between two k-means runs of the index (in a
    /// thread of their own); in between, items keep their lists and the centroids follow them.
    #[arg(long, env = "DQN_IVF_RECLUSTER", default_value_t = 20)]
    pub dqn_ivf_recluster: u32,
    /// Double DQN: the online network picks the next action, the target network values it.
    #[arg(long, env = "DQN_DOUBLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub dqn_double: bool,
    /// Huber loss threshold (delta).
    #[arg(long, env = "DQN_HUBER_DELTA", default_value_t = 1.0)]
    pub dqn_huber_delta: f64,
    /// Largest global gradient norm; 0 disables clipping.
    #[arg(long, env = "DQN_GRAD_CLIP", default_value_t = 10.0)]
    pub dqn_grad_clip: f64,
    /// Exploration rate at the start of the schedule.
    #[arg(long, env = "DQN_EPS_START", default_value_t = 1.0)]
    pub dqn_eps_start: f64,
    /// Exploration rate at the end of the schedule (and after).
    #[arg(long, env = "DQN_EPS_END", default_value_t = 0.05)]
    pub dqn_eps_end: f64,
    /// States acted on over which epsilon falls linearly from start to end.
    #[arg(long, env = "DQN_EPS_DECAY_STEPS", default_value_t = 5_000)]
    pub dqn_eps_decay_steps: u64,
    /// Gradient steps between weight snapshots sent to the inference copy.
    #[arg(long, env = "DQN_SYNC_EVERY", default_value_t = 50)]
    pub dqn_sync_every: u64,
    /// Updates the learner may owe before it skips them (when it is slower than the stream of
    /// transitions times the train ratio); also bounds how long evaluation waits for it.
    #[arg(long, env = "DQN_MAX_OWED", default_value_t = 1_000)]
    pub dqn_max_owed: u64,
    /// Capacity of the channel of transitions to the learner; a full channel drops them.
    #[arg(long, env = "DQN_QUEUE", default_value_t = 4_096)]
    pub dqn_queue: usize,
    /// Gradient steps between checkpoints (0: only on shutdown).
    #[arg(long, env = "DQN_CHECKPOINT_EVERY", default_value_t = 2_000)]
    pub dqn_checkpoint_every: u64,
    /// Folder of the DQN checkpoint (`dqn.ckpt`), loaded at start when present, written every
    /// `--dqn-checkpoint-every` updates and on shutdown; none when unset. One folder per replica:
    /// `{host}` in it is replaced by the host name (a container's id), e.g. `/checkpoints/{host}`
    /// for replicas started by `docker compose up --scale`.
    #[arg(long, env = "CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// What to do with a checkpoint in `--checkpoint-dir` written for another network, action
    /// space or catalogue: `fail` (stop with an error naming both) or `fresh` (rename it to
    /// `dqn.ckpt.replaced-<time>` beside it and start a new network).
    #[arg(long, env = "DQN_CHECKPOINT_MISMATCH", value_enum, default_value_t = CheckpointMismatch::Fail)]
    pub dqn_checkpoint_mismatch: CheckpointMismatch,
    /// libtorch device: `cpu`, `cuda` or `cuda:N` (CUDA needs the full torch install).
    #[arg(long, env = "DQN_DEVICE", default_value = "cpu")]
    pub dqn_device: String,
    /// libtorch intra-op threads, used by each of the two threads that run the network
    /// (inference and learner); 0 leaves libtorch's default (one per core).
    #[arg(long, env = "DQN_THREADS", default_value_t = 1)]
    pub dqn_threads: i32,
}

/// Named sets of DQN settings (`--dqn-preset`), so that the make targets run settings that live
/// in code, not in three shell strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DqnPreset {
    /// The code's defaults: the paper's network (embedding, three bidirectional LSTMs, dense
    /// layers) trained as a plain DQN (gamma 0.9, no hindsight, no id token, no wide table).
    Paper,
    /// Amazon Fashion as `make sim` and `make eval` run it: an MLP with the wide table, the id
    /// token and full-feedback hindsight, `gamma 0` (a contextual bandit: in the paper's
    /// environment an action never changes the next state), lr 0.003, epsilon over 3,000
    /// states; `--dqn-head auto`: the dense head and table up to 4,096 products, the tower
    /// head and the sparse table above (any catalogue size).
    Fashion,
    /// RecoGym as `make recogym` runs it: an MLP, `gamma 0` (RecoGym's agents are bandits), lr
    /// 0.001, a quarter of an update per transition after 1,000, a replay of 400,000.
    Recogym,
}

impl DqnPreset {
    /// The defaults this preset puts in place: `(argument id, value)`, the id being the
    /// field's name in [`DqnArgs`].
    pub fn settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            DqnPreset::Paper => &[],
            DqnPreset::Fashion => &[
                ("dqn_net", "mlp"),
                ("dqn_hidden", "64"),
                ("dqn_head", "auto"),
                ("dqn_wide", "true"),
                ("dqn_id_token", "true"),
                ("dqn_hindsight", "future"),
                ("dqn_hindsight_decay", "0.6"),
                ("dqn_gamma", "0"),
                ("dqn_lr", "0.003"),
                ("dqn_eps_decay_steps", "3000"),
            ],
            DqnPreset::Recogym => &[
                ("dqn_net", "mlp"),
                ("dqn_gamma", "0"),
                ("dqn_lr", "0.001"),
                ("dqn_train_ratio", "0.25"),
                ("dqn_learning_starts", "1000"),
                ("dqn_replay_capacity", "400000"),
            ],
        }
    }
}

/// The defaults of the `--dqn-preset` found in `matches` (in it or a subcommand's), for
/// [`common::cli::parse_with`]: none when no command has the flag.
pub fn preset_defaults(matches: &clap::ArgMatches) -> Vec<(&'static str, &'static str)> {
    let mut m = Some(matches);
    while let Some(here) = m {
        if let Ok(Some(preset)) = here.try_get_one::<DqnPreset>("dqn_preset") {
            return preset.settings().to_vec();
        }
        m = here.subcommand().map(|(_, sub)| sub);
    }
    Vec::new()
}

impl Default for DqnArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            dqn: DqnArgs,
        }
        // The defaults live in the attributes above; parsing no arguments yields them. No `DQN_*`
        // variable of the caller's environment may leak into what is called the defaults.
        common::cli::parse_flags::<Wrap>(["dqn"]).dqn
    }
}

impl DqnArgs {
    /// The network these flags describe.
    pub fn net_config(&self) -> NetConfig {
        NetConfig {
            kind: self.dqn_net,
            vocab_size: self.dqn_vocab_size,
            max_tokens: self.dqn_max_tokens,
            embedding_dim: self.dqn_embedding_dim,
            // The MLP has no LSTM layers: keep its shape free of the unused flag.
            lstm_units: if self.dqn_net == NetKind::Lstm { self.dqn_lstm_units.clone() } else { Vec::new() },
            hidden: self.dqn_hidden.clone(),
            lead_token: self.dqn_id_token && self.dqn_net == NetKind::Mlp,
            wide: self.dqn_wide,
            head: self.dqn_head,
            tower_dim: if self.dqn_head != Head::Dense { self.dqn_tower_dim } else { 0 },
            wide_pairs: if self.dqn_head != Head::Dense && self.dqn_wide { self.dqn_wide_pairs } else { 0 },
        }
    }

    /// The learner's hyperparameters these flags describe.
    pub fn hyper(&self, seed: u64) -> Hyper {
        Hyper {
            gamma: self.dqn_gamma,
            lr: self.dqn_lr,
            wide_lr: self.dqn_wide_lr,
            batch_size: self.dqn_batch_size.max(1),
            replay_capacity: self.dqn_replay_capacity.max(1),
            learning_starts: self.dqn_learning_starts,
            train_ratio: self.dqn_train_ratio,
            target_every: self.dqn_target_every.max(1),
            tau: self.dqn_tau,
            double: self.dqn_double,
            huber_delta: self.dqn_huber_delta,
            grad_clip: self.dqn_grad_clip,
            sync_every: self.dqn_sync_every.max(1),
            checkpoint_every: self.dqn_checkpoint_every,
            seed,
            max_owed: self.dqn_max_owed as f64,
            backpressure: self.dqn_backpressure,
            negatives: self.dqn_negatives,
            negative_weight: self.dqn_negative_weight,
        }
    }

    /// The libtorch device named by `--dqn-device`, if it is usable.
    pub fn device(&self) -> anyhow::Result<Device> {
        let name = self.dqn_device.trim().to_ascii_lowercase();
        let device = match name.as_str() {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            other => match other.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => Device::Cuda(i),
                None => anyhow::bail!("--dqn-device {other}: expected cpu, cuda or cuda:N"),
            },
        };
        if let Device::Cuda(i) = device {
            let count = tch::Cuda::device_count();
            anyhow::ensure!(
                i64::try_from(i).unwrap_or(i64::MAX) < count,
                "--dqn-device {name}: libtorch sees {count} CUDA device(s); the minimal libtorch install is CPU-only \
                 (see docs/DQN.md for the CUDA build)"
            );
        }
        Ok(device)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.net_config().validate().map_err(|e| anyhow!("dqn network: {e}"))?;
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        anyhow::ensure!(unit(self.dqn_gamma), "--dqn-gamma must be in [0, 1]");
        anyhow::ensure!(unit(self.dqn_eps_start) && unit(self.dqn_eps_end), "--dqn-eps-start/end must be in [0, 1]");
        anyhow::ensure!(self.dqn_tau > 0.0 && self.dqn_tau <= 1.0, "--dqn-tau must be in (0, 1]");
        anyhow::ensure!(
            self.dqn_lr > 0.0 && self.dqn_huber_delta > 0.0,
            "--dqn-lr and --dqn-huber-delta must be positive"
        );
        anyhow::ensure!(
            self.dqn_train_ratio >= 0.0 && self.dqn_grad_clip >= 0.0,
            "--dqn-train-ratio and --dqn-grad-clip must be >= 0"
        );
        anyhow::ensure!(self.dqn_queue > 0, "--dqn-queue must be positive");
        anyhow::ensure!(unit(self.dqn_hindsight_decay), "--dqn-hindsight-decay must be in [0, 1]");
        anyhow::ensure!(self.dqn_negative_weight >= 0.0, "--dqn-negative-weight must be >= 0");
        if let Some(lr) = self.dqn_wide_lr {
            anyhow::ensure!(lr > 0.0, "--dqn-wide-lr must be positive");
            anyhow::ensure!(self.dqn_wide, "--dqn-wide-lr is the wide table's: it needs --dqn-wide true");
        }
        Ok(())
    }

    /// Epsilon after `step` states acted on: linear from start to end over the decay steps.
    pub fn epsilon(&self, step: u64) -> f64 {
        if step >= self.dqn_eps_decay_steps {
            return self.dqn_eps_end;
        }
        let frac = step as f64 / self.dqn_eps_decay_steps as f64;
        self.dqn_eps_start + (self.dqn_eps_end - self.dqn_eps_start) * frac
    }
}

/// What to do with a checkpoint that does not fit (see `--dqn-checkpoint-mismatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckpointMismatch {
    /// Stop with an error that names the checkpoint's network, action space or catalogue and
    /// the one asked for.
    Fail,
    /// Set the checkpoint aside (renamed, not deleted) and start a new network.
    Fresh,
}

/// What the DQN learns in hindsight (see `--dqn-hindsight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hindsight {
    /// Only the transition of the action taken.
    Off,
    /// Also the next product, relabelled with the reward recommending it would have earned
    /// (replay: 1; the interactive user model: its acceptance probability, after a declined
    /// recommendation that did not end the episode; see [`Relabel`]).
    Next,
    /// Full feedback at the episode's end: the reward of every action at every step.
    Future,
}

/// How the tower head finds a state's best actions (see `--dqn-search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Search {
    /// Every action scored.
    Exact,
    /// The candidates of an inverted-file index, re-ranked exactly.
    Ivf,
    /// `ivf` above [`IVF_ABOVE`] actions (with the tower head), `exact` below.
    Auto,
}

/// Above this many actions `--dqn-search auto` is `ivf`.
pub const IVF_ABOVE: i64 = 50_000;

impl Search {
    /// `auto` resolved for a head and action count.
    pub fn resolved(self, head: Head, n_actions: i64) -> Search {
        match self {
            _ if head != Head::Tower => Search::Exact,
            Search::Auto if n_actions > IVF_ABOVE => Search::Ivf,
            Search::Auto => Search::Exact,
            other => other,
        }
    }
}

/// Sets libtorch's intra-op thread count (process-wide); 0 leaves libtorch's default.
pub fn pin_threads(n: i32) {
    if n > 0 && tch::get_num_threads() != n {
        tch::set_num_threads(n);
    }
}

/// The full-feedback transitions of a finished episode. `steps` holds each step with the
/// product shown next; the products shown after step `t` (from `t + 1` on) are those the user
/// reviewed later: a product first seen `k` steps after `t` gets the target `decay^(k-1)`.
fn full_feedback(steps: Vec<(Transition, i64)>, decay: f64) -> Vec<Transition> {
    let shown: Vec<i64> = steps.iter().map(|(_, next)| *next).collect();
    steps
        .into_iter()
        .enumerate()
        .map(|(t, (step, _))| {
            let mut positives: Vec<(i64, f32)> = Vec::new();
            let mut weight = 1.0;
            for &product in &shown[t..] {
                if !positives.iter().any(|&(p, _)| p == product) {
                    positives.push((product, weight as f32));
                }
                weight *= decay;
            }
            Transition { positives: Some(positives), ..step }
        })
        .collect()
}

/// What the tower head serves a batch with: the network, every item's vector and bias, and each
/// state's wide pairs `(action, slot)`.
type TowerParts<'a> = (&'a Net, &'a (Tensor, Tensor), Vec<Vec<(i64, i64)>>, Option<&'a Ivf>);

/// Episodes whose steps `--dqn-hindsight future` holds at most, waiting for their end.
const MAX_OPEN_EPISODES: usize = 100_000;

/// The network that chooses actions, and the learner behind it.
struct Live {
    n_actions: u32,
    /// Fingerprint of the catalogue the network was built for.
    catalog: Option<String>,
    /// Owns the inference copy's variables (`net` and `vars` share them).
    _vs: nn::VarStore,
    net: Net,
    vars: Vec<Tensor>,
    version: u64,
    /// Tower head: every item's vector and bias under the current weights, computed on first
    /// use after each snapshot (so an item's words join at the next snapshot after they were
    /// first seen).
    items_cache: Option<(Tensor, Tensor)>,
    /// `--dqn-search ivf`: the index over `items_cache`, refreshed with it.
    index: Option<Ivf>,
    /// A k-means run for the next index, in a thread of its own.
    index_job: Option<JoinHandle<anyhow::Result<Ivf>>>,
    inbox_tx: Option<SyncSender<ToLearner>>,
    snapshot_rx: Receiver<Snapshot>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        // Hanging up stops the learner; wait for it so libtorch is idle when the process exits.
        self.inbox_tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A k-means run in progress is of no use any more; only wait for it to end.
        if let Some(job) = self.index_job.take() {
            let _ = job.join();
        }
    }
}

/// What the DQN reads of a state, whatever its environment: the words of its text, the item it
/// points at (the wide table's row, the product `--dqn-hindsight` relabels) and what identifies
/// its action space. Each environment's state implements it; no state is dressed up as another.
pub trait DqnState {
    /// The episode the state belongs to.
    fn episode_id(&self) -> &str;
    /// The step within the episode.
    fn step(&self) -> u32;
    /// Size of the action space.
    fn n_actions(&self) -> u32;
    /// Fingerprint of the catalogue the actions index; `None` when the size alone says it.
    fn catalog(&self) -> Option<&str>;
    /// The item the state points at (fashion: the current product; RecoGym: the last view).
    fn item(&self) -> u32;
    /// The words the network reads, separated by spaces.
    fn text(&self) -> std::borrow::Cow<'_, str>;
    /// The item's own id, put first among the words with `--dqn-id-token`; `None` where the
    /// state has no item of its own.
    fn id_token(&self) -> Option<&str>;
    /// Whether the state's words describe its item (fashion: the current product's own text),
    /// so the tower head may take them as the item's words.
    fn describes_item(&self) -> bool;
    /// The episode reached its natural end (no bootstrapping past it).
    fn terminated(&self) -> bool;
    /// A step limit cut the episode (bootstrapping goes on).
    fn truncated(&self) -> bool;
    /// Whether what the user does next depends on the recommendations (fashion's interactive
    /// user model, RecoGym), which makes `--dqn-hindsight future` unsound: refused.
    fn steered(&self) -> bool;
    /// What `--dqn-hindsight next` may learn from this state about the step that led to it.
    fn relabel(&self) -> Relabel;
}

/// What `--dqn-hindsight next` may learn from a state about the step that led to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Relabel {
    /// Recommending the item this state points at would have earned this reward (in
    /// expectation) and led to this same state.
    Reward(f32),
    /// Sound in this environment, but not for this step: the action took the user somewhere
    /// else than the relabelled one would have, or ended the episode where it would not have.
    NotHere,
    /// The environment offers no sound relabelling.
    Unsound,
}

impl DqnState for StateMsg {
    fn episode_id(&self) -> &str {
        &self.episode_id
    }
    fn step(&self) -> u32 {
        self.step
    }
    fn n_actions(&self) -> u32 {
        self.n_actions
    }
    fn catalog(&self) -> Option<&str> {
        self.catalog.as_deref()
    }
    fn item(&self) -> u32 {
        self.observation.index
    }
    fn text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(&self.observation.text)
    }
    fn id_token(&self) -> Option<&str> {
        Some(&self.observation.asin)
    }
    fn describes_item(&self) -> bool {
        true
    }
    fn terminated(&self) -> bool {
        self.terminated
    }
    fn truncated(&self) -> bool {
        self.truncated
    }
    fn steered(&self) -> bool {
        StateMsg::steered(self)
    }
    fn relabel(&self) -> Relabel {
        match (self.steered(), self.accept_prob) {
            // Replay: the next product is reviewed later whatever was recommended.
            (false, _) => Relabel::Reward(1.0),
            // Interactive: a declined recommendation that did not end the episode left the user
            // at the next product, where recommending it would have taken them; it is accepted
            // with probability `accept_prob` (env-svc's fashion module documents the model).
            (true, Some(p)) if self.reward == 0.0 && !self.terminated => Relabel::Reward(p as f32),
            (true, Some(_)) => Relabel::NotHere,
            (true, None) => Relabel::Unsound,
        }
    }
}

/// The DQN policy over states of type `S` (see the module documentation).
pub struct Dqn<S = StateMsg> {
    args: DqnArgs,
    net_cfg: NetConfig,
    device: Device,
    seed: u64,
    checkpoint: Option<PathBuf>,
    resume: Option<checkpoint::Checkpoint>,
    shared: Arc<Shared>,
    live: Option<Live>,
    /// `--dqn-search` resolved on the first state.
    search: Search,
    eval: bool,
    /// Steps of the episodes in flight with the product each led to, for full feedback at
    /// their end (`--dqn-hindsight future`).
    episodes: HashMap<String, Vec<(Transition, i64)>>,
    /// `--learning shared`: the versions a learner publishes, in place of a learner thread.
    serving: Option<Arc<serving::Inbox>>,
    /// Hand every transition to the learner thread, waiting for room in its queue rather than
    /// dropping it (`agent-svc learn`, whose stream is its buffer).
    never_drop: bool,
    /// `--learning frozen`: evaluation mode for good, and no checkpoint written.
    frozen: bool,
    /// `--frozen-epsilon`: the exploration rate of a frozen DQN (0: greedy).
    frozen_epsilon: f64,
    _state: std::marker::PhantomData<fn(&S)>,
}

impl<S> Drop for Dqn<S> {
    fn drop(&mut self) {
        if let Some(inbox) = &self.serving {
            inbox.stop();
        }
    }
}

impl<S: DqnState> std::fmt::Debug for Dqn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dqn")
            .field("net", &self.net_cfg)
            .field("device", &self.device)
            .field("version", &self.model_version())
            .finish_non_exhaustive()
    }
}

impl<S: DqnState> Dqn<S> {
    /// A DQN policy; loads the checkpoint in `--checkpoint-dir` when there is one (and refuses
    /// one written for another network, unless `--dqn-checkpoint-mismatch fresh`). The networks
    /// are built on the first state, which gives the size of the action space and the catalogue.
    pub fn new(args: &DqnArgs, seed: u64) -> anyhow::Result<Self> {
        args.validate()?;
        let device = args.device()?;
        pin_threads(args.dqn_threads);
        let net_cfg = args.net_config();
        let checkpoint = args
            .checkpoint_dir
            .as_deref()
            .map(|dir| checkpoint::file_in(&checkpoint::expand_dir(dir, &crate::host_name())));
        let mut resume = match &checkpoint {
            Some(path) => checkpoint::load(path)?,
            None => None,
        };
        // An `auto` head is decided on the first state: its checkpoint is checked then.
        if let Some(ckpt) = resume.as_ref().filter(|_| net_cfg.head != Head::Auto) {
            if let Err(e) = ckpt.check(&net_cfg, None) {
                Self::mismatch(args.dqn_checkpoint_mismatch, ckpt, e)?;
                resume = None;
            }
        }
        let mut vocab = Vocab::new(args.dqn_vocab_size);
        let mut eps_step = 0;
        if let Some(ckpt) = &resume {
            vocab = Vocab::from_words(args.dqn_vocab_size, ckpt.meta.vocab.clone());
            eps_step = ckpt.meta.eps_step;
            tracing::info!(
                path = %ckpt.path.display(), updates = ckpt.meta.updates, eps_step, words = vocab.len(),
                n_actions = ckpt.meta.n_actions, "dqn resumes from its checkpoint"
            );
        }
        tracing::info!(?args, threads = tch::get_num_threads(), "dqn hyperparameters");
        let shared = Arc::new(Shared {
            vocab: Mutex::new(vocab),
            eps_step: AtomicU64::new(eps_step),
            dropped: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            failure: Mutex::new(None),
            items: Arc::new(RwLock::new(ItemTokens::default())),
            pairs: Arc::new(RwLock::new(PairIndex::default())),
        });
        Ok(Self {
            args: args.clone(),
            net_cfg,
            device,
            seed,
            checkpoint,
            resume,
            shared,
            live: None,
            search: Search::Exact,
            eval: false,
            episodes: HashMap::new(),
            serving: None,
            never_drop: false,
            frozen: false,
            frozen_epsilon: 0.0,
            _state: std::marker::PhantomData,
        })
    }

    /// A replica of `--learning shared`: it trains nothing and serves the versions the
    /// learner publishes, which `inbox` receives (see [`serving`]); before the first one it
    /// answers uniformly at random with model version 0. No checkpoint is read or written.
    pub fn serving(args: &DqnArgs, seed: u64, inbox: Arc<serving::Inbox>) -> anyhow::Result<Self> {
        let args = DqnArgs { checkpoint_dir: None, ..args.clone() };
        let mut dqn = Self::new(&args, seed)?;
        dqn.serving = Some(inbox);
        Ok(dqn)
    }

    /// `--learning shared`: takes the newest version the follower left, if any, and swaps it in
    /// whole (weights, vocabulary, item tokens, wide pairs); fails when the follower stopped.
    fn take_served(&mut self) -> anyhow::Result<()> {
        let Some(inbox) = self.serving.clone() else { return Ok(()) };
        if let Some(why) = inbox.failure() {
            anyhow::bail!("the weights follower stopped: {why}");
        }
        let Some(served) = inbox.take() else { return Ok(()) };
        let rebuild = self
            .live
            .as_ref()
            .is_none_or(|l| i64::from(l.n_actions) != served.n_actions || self.net_cfg != served.net_cfg);
        if rebuild {
            let vs = nn::VarStore::new(self.device);
            let net = Net::new(&vs.root(), &served.net_cfg, served.n_actions);
            let vars = net::vars(&vs);
            let (_, snapshot_rx) = mpsc::sync_channel(1);
            self.net_cfg = served.net_cfg.clone();
            self.search = self.args.dqn_search.resolved(self.net_cfg.head, served.n_actions);
            self.live = Some(Live {
                n_actions: u32::try_from(served.n_actions).context("weights: action count out of range")?,
                catalog: served.catalog.clone(),
                _vs: vs,
                net,
                vars,
                version: 0,
                items_cache: None,
                index: None,
                index_job: None,
                inbox_tx: None,
                snapshot_rx,
                thread: None,
            });
            tracing::info!(n_actions = served.n_actions, catalog = served.catalog, head = ?self.net_cfg.head, search = ?self.search, "dqn serving network built");
        }
        let live = self.live.as_mut().context("the serving network was just built")?;
        net::assign(&live.vars, &served.weights).context("weights version not applied")?;
        let capacity = usize::try_from(self.net_cfg.wide_pairs).unwrap_or(0);
        *self.shared.vocab.lock().unwrap_or_else(|p| p.into_inner()) =
            Vocab::from_words(self.args.dqn_vocab_size, served.vocab);
        *self.shared.items.write().unwrap_or_else(|p| p.into_inner()) = served.items;
        *self.shared.pairs.write().unwrap_or_else(|p| p.into_inner()) =
            PairIndex::from_pairs(capacity, &served.wide_pairs);
        self.shared.eps_step.fetch_max(served.eps_step, Ordering::Relaxed);
        self.shared.updates.store(served.version, Ordering::Relaxed);
        live.catalog = served.catalog;
        live.version = served.version;
        live.items_cache = None;
        tracing::debug!(version = served.version, "dqn serves a new weights version");
        Ok(())
    }

    /// A checkpoint that does not fit: the error, or (with `fresh`) the checkpoint set aside.
    fn mismatch(
        policy: CheckpointMismatch,
        ckpt: &checkpoint::Checkpoint,
        e: checkpoint::CheckpointError,
    ) -> anyhow::Result<()> {
        match policy {
            CheckpointMismatch::Fail => Err(e.into()),
            CheckpointMismatch::Fresh => {
                let aside = ckpt.set_aside()?;
                tracing::warn!(
                    reason = %e, set_aside = %aside.display(),
                    "dqn checkpoint does not fit; starting a new network (--dqn-checkpoint-mismatch fresh)"
                );
                Ok(())
            }
        }
    }

    /// The text the network reads for a state: its metadata text, after its product id when
    /// `--dqn-id-token` is on.
    fn text_of(&self, s: &S) -> String {
        match s.id_token().filter(|_| self.args.dqn_id_token) {
            Some(id) => format!("{id} {}", s.text()),
            None => s.text().into_owned(),
        }
    }

    fn vocab(&self) -> MutexGuard<'_, Vocab> {
        // A panic while holding the lock cannot leave the vocabulary half-updated in a way that
        // matters (ids are appended one at a time), so a poisoned lock is used as is.
        self.shared.vocab.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Builds the inference copy and starts the learner for an action space of `n` actions
    /// indexing the catalogue with fingerprint `catalog`.
    fn start(&mut self, n: u32, catalog: Option<&str>) -> anyhow::Result<()> {
        let n_actions = i64::from(n);
        if self.net_cfg.head == Head::Auto {
            self.net_cfg = self.net_cfg.resolved(n_actions);
            tracing::info!(
                head = ?self.net_cfg.head,
                n_actions,
                limit = net::MAX_WIDE_ACTIONS,
                "dqn head auto: dense up to the limit, tower above"
            );
        }
        self.search = self.args.dqn_search.resolved(self.net_cfg.head, n_actions);
        if self.args.dqn_search == Search::Auto && self.net_cfg.head == Head::Tower {
            tracing::info!(search = ?self.search, n_actions, limit = IVF_ABOVE, "dqn search auto: exact up to the limit, ivf above");
        } else if self.args.dqn_search == Search::Ivf && self.search != Search::Ivf {
            tracing::warn!(
                head = ?self.net_cfg.head,
                n_actions,
                "dqn search: --dqn-search ivf asked, but the dense head scores every action; exact runs"
            );
        }
        tch::manual_seed(i64::from_le_bytes(self.seed.to_le_bytes()));
        let mut learner = Learner::new(&self.net_cfg, n_actions, &self.args.hyper(self.seed), self.device)?;
        learner.set_catalog(catalog.map(str::to_string));
        learner.set_items(Arc::clone(&self.shared.items));
        if let Some(ckpt) = self.resume.take() {
            match ckpt.check(&self.net_cfg, Some(n_actions)).and_then(|()| ckpt.check_catalog(catalog)) {
                Ok(()) => learner.restore(&ckpt)?,
                Err(e) => {
                    Self::mismatch(self.args.dqn_checkpoint_mismatch, &ckpt, e)?;
                    // Nothing of the set-aside checkpoint carries over.
                    *self.vocab() = Vocab::new(self.args.dqn_vocab_size);
                    self.shared.eps_step.store(0, Ordering::Relaxed);
                }
            }
        }
        learner.set_pairs(Arc::clone(&self.shared.pairs));
        let vs = nn::VarStore::new(self.device);
        let net = Net::new(&vs.root(), &self.net_cfg, n_actions);
        let vars = net::vars(&vs);
        let first = learner.snapshot();
        net::assign(&vars, &first.weights).context("failed to copy the learner's weights")?;
        self.shared.updates.store(first.version, Ordering::Relaxed);
        let (inbox_tx, inbox_rx) = mpsc::sync_channel(self.args.dqn_queue.max(1));
        let (snapshot_tx, snapshot_rx) = mpsc::sync_channel(1);
        let (shared, path) = (Arc::clone(&self.shared), self.checkpoint.clone());
        let thread = std::thread::Builder::new()
            .name("dqn-learner".into())
            .spawn(move || learner::run(learner, inbox_rx, snapshot_tx, shared, path))
            .context("failed to start the learner thread")?;
        tracing::info!(n_actions, catalog, version = first.version, "dqn network built");
        self.live = Some(Live {
            n_actions: n,
            catalog: catalog.map(str::to_string),
            _vs: vs,
            net,
            vars,
            version: first.version,
            items_cache: None,
            index: None,
            index_job: None,
            inbox_tx: Some(inbox_tx),
            snapshot_rx,
            thread: Some(thread),
        });
        Ok(())
    }

    /// The live network for `states`, built on first use from the first state's action space
    /// and catalogue. Fails when it cannot be built, when the learner stopped on a failure, or
    /// when a state belongs to another action space or catalogue than the network's.
    fn ensure_live(&mut self, states: &[&S]) -> anyhow::Result<&mut Live> {
        if let Some(why) = self.shared.failure() {
            anyhow::bail!("the dqn learner stopped: {why}");
        }
        if self.serving.is_some() {
            self.take_served()?;
        } else if self.live.is_none() {
            if let Some(first) = states.first() {
                self.start(first.n_actions(), first.catalog()).context("dqn cannot start")?;
            }
        }
        let live = self.live.as_mut().context("dqn has no network yet: it is built on the first state")?;
        match self.args.dqn_hindsight {
            Hindsight::Off => {}
            Hindsight::Next => {
                if let Some(s) = states.iter().find(|s| s.relabel() == Relabel::Unsound) {
                    anyhow::bail!(
                        "state {}#{} comes from an environment that offers no sound relabelling (its \
                         recommendations change what the user does next, and it publishes no acceptance \
                         probability), so --dqn-hindsight next would learn from outcomes the actions caused; \
                         use --dqn-hindsight off",
                        s.episode_id(),
                        s.step(),
                    );
                }
            }
            Hindsight::Future => {
                if let Some(s) = states.iter().find(|s| s.steered()) {
                    anyhow::bail!(
                        "state {}#{} comes from an environment where the recommendations change what the user \
                         does next, so --dqn-hindsight future (relabelling a step with the products seen later) \
                         would learn from outcomes the actions caused; use --dqn-hindsight next where the \
                         environment allows it (fashion's interactive user model) or off",
                        s.episode_id(),
                        s.step(),
                    );
                }
            }
        }
        if let Some(s) =
            states.iter().find(|s| s.n_actions() != live.n_actions || s.catalog() != live.catalog.as_deref())
        {
            anyhow::bail!(
                "state {}#{} is of an action space of {} products (catalogue {}), but this agent's network serves {} \
                 (catalogue {}); one agent group serves one catalogue",
                s.episode_id(),
                s.step(),
                s.n_actions(),
                s.catalog().unwrap_or("none"),
                live.n_actions,
                live.catalog.as_deref().unwrap_or("none"),
            );
        }
        // Apply the newest snapshot the learner sent, if any (and newer than what is served:
        // `refresh` may have gone ahead of the periodic snapshots).
        if let Some(s) = live.snapshot_rx.try_iter().last().filter(|s| s.version > live.version) {
            net::assign(&live.vars, &s.weights).context("dqn snapshot not applied")?;
            live.version = s.version;
            live.items_cache = None;
        }
        Ok(live)
    }

    /// The token rows of `states` as one padded batch; in training, the vocabulary grows and
    /// the items the states describe are recorded (the tower head's item words).
    fn encode(&mut self, states: &[&S]) -> Tensor {
        // A serving replica reads with the learner's vocabulary as published, never its own.
        let (max_tokens, grow) = (self.args.dqn_max_tokens, !self.eval && self.serving.is_none());
        let texts: Vec<String> = states.iter().map(|s| self.text_of(s)).collect();
        let rows: Vec<Vec<i64>> = {
            let mut vocab = self.vocab();
            texts.iter().map(|t| vocab.encode(t, max_tokens, grow)).collect()
        };
        if grow {
            self.record_items(states.iter().copied().zip(&rows));
        }
        let refs: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
        net::batch_ids(&refs, self.device)
    }

    /// The tower head's inputs for `states`: the network, every item's vector and bias (the
    /// cache of the current snapshot, rebuilt when missing), each state's wide pairs and, with
    /// `ivf`, the index over the cache (built on first use, refreshed with the cache).
    fn tower_parts<'a>(
        live: &'a mut Live,
        shared: &Shared,
        states: &[&S],
        ivf: Option<IvfConfig>,
    ) -> anyhow::Result<TowerParts<'a>> {
        if live.items_cache.is_none() {
            let tokens = shared.items.read().unwrap_or_else(|p| p.into_inner());
            live.items_cache = Some(tch::no_grad(|| live.net.item_matrix(&tokens))?);
            drop(tokens);
            if let Some(cfg) = ivf {
                Self::update_index(live, cfg)?;
            }
        }
        let net = &live.net;
        let cache = live.items_cache.as_ref().context("the item matrix was just built")?;
        let pairs = if net.has_pairs() {
            let index = shared.pairs.read().unwrap_or_else(|p| p.into_inner());
            states.iter().map(|s| index.of_item(i64::from(s.item())).to_vec()).collect()
        } else {
            Vec::new()
        };
        Ok((net, cache, pairs, live.index.as_ref()))
    }

    /// Brings the index up to the new item matrix: built on first use (on this thread: nothing
    /// can be served before), otherwise refreshed in place; a finished k-means run replaces it
    /// first, and one is started in a thread of its own when due.
    fn update_index(live: &mut Live, cfg: IvfConfig) -> anyhow::Result<()> {
        let (v, b) = live.items_cache.as_ref().context("the index needs the item matrix")?;
        if live.index_job.as_ref().is_some_and(|j| j.is_finished()) {
            if let Some(job) = live.index_job.take() {
                let built = job.join().map_err(|_| anyhow!("the dqn index thread panicked"))?;
                live.index = Some(built.context("dqn index k-means")?);
            }
        }
        match live.index.as_mut() {
            Some(index) => {
                index.refresh(v, b).context("dqn index refresh")?;
                if index.recluster_due() && live.index_job.is_none() {
                    // The bias is a view of the served variables, which the next snapshot
                    // overwrites: the thread gets copies.
                    let (v, b, next) = (v.copy(), b.copy(), index.next_config());
                    let job = std::thread::Builder::new()
                        .name("dqn-index".into())
                        .spawn(move || tch::no_grad(|| Ivf::build(&v, &b, next)))
                        .context("failed to start the dqn index thread")?;
                    live.index_job = Some(job);
                }
            }
            None => {
                let started = Instant::now();
                let index = tch::no_grad(|| Ivf::build(v, b, cfg)).context("dqn index")?;
                tracing::info!(
                    items = index.len(),
                    lists = index.lists(),
                    probe = cfg.probe,
                    popular = cfg.popular,
                    probed_items = index.mean_probed().round(),
                    ms = started.elapsed().as_millis() as u64,
                    "dqn search ivf: index built"
                );
                live.index = Some(index);
            }
        }
        Ok(())
    }

    /// The index settings, when the search is `ivf`.
    fn ivf_config(&self) -> Option<IvfConfig> {
        (self.search == Search::Ivf).then_some(IvfConfig {
            lists: self.args.dqn_ivf_lists,
            probe: self.args.dqn_ivf_probe,
            popular: self.args.dqn_ivf_popular,
            recluster_every: self.args.dqn_ivf_recluster,
            iterations: 8,
            seed: self.seed,
        })
    }

    /// Each state's `k` best actions from the index, the wide offsets included.
    fn ivf_top_k(&mut self, states: &[&S], k: usize) -> anyhow::Result<Vec<Vec<i64>>> {
        let ids = self.encode(states);
        let (shared, ivf) = (Arc::clone(&self.shared), self.ivf_config());
        let live = self.live.as_mut().context("dqn has no network yet")?;
        let (net, _, pairs, index) = Self::tower_parts(live, &shared, states, ivf)?;
        let index = index.context("--dqn-search ivf has no index")?;
        let offsets = net.pair_values(&pairs)?;
        let u = tch::no_grad(|| net.state_vec(&ids));
        let ranked = index.search(&u, &offsets, k)?;
        Ok(ranked.into_iter().map(|r| r.into_iter().map(|(a, _)| a).collect()).collect())
    }

    /// Q-values `[states, n_actions]` of the inference copy; the live net must exist.
    fn q_values(&mut self, states: &[&S]) -> anyhow::Result<Tensor> {
        let ids = self.encode(states);
        let (shared, ivf) = (Arc::clone(&self.shared), self.ivf_config());
        let live = self.live.as_mut().context("dqn has no network yet")?;
        if live.net.is_tower() {
            let (net, (v, b), pairs, _) = Self::tower_parts(live, &shared, states, ivf)?;
            let mut q = tch::no_grad(|| net.scores(&net.state_vec(&ids), v, b));
            let lists: Vec<&[(i64, i64)]> = pairs.iter().map(Vec::as_slice).collect();
            tch::no_grad(|| net.add_pair_offsets(&mut q, &lists));
            return Ok(q);
        }
        let items: Vec<i64> = states.iter().map(|s| i64::from(s.item())).collect();
        let items = Tensor::from_slice(&items).to_device(self.device);
        Ok(tch::no_grad(|| live.net.forward(&ids, Some(&items))))
    }

    /// Each state's greedy action. The tower head scores the catalogue block by block
    /// ([`Net::best`]) instead of writing the whole `[states, n_actions]` matrix.
    fn greedy(&mut self, states: &[&S]) -> anyhow::Result<Vec<i64>> {
        let tower = self.live.as_ref().is_some_and(|l| l.net.is_tower());
        if !tower {
            return Vec::<i64>::try_from(self.q_values(states)?.argmax(1, false)).context("dqn argmax");
        }
        if self.search == Search::Ivf {
            let best = self.ivf_top_k(states, 1)?;
            return best.into_iter().map(|r| r.first().copied().context("the index ranked no item")).collect();
        }
        let ids = self.encode(states);
        let (shared, ivf) = (Arc::clone(&self.shared), self.ivf_config());
        let live = self.live.as_mut().context("dqn has no network yet")?;
        let (net, (v, b), pairs, _) = Self::tower_parts(live, &shared, states, ivf)?;
        let lists: Vec<&[(i64, i64)]> = pairs.iter().map(Vec::as_slice).collect();
        let best = tch::no_grad(|| net.best(&net.state_vec(&ids), v, b, &lists));
        Vec::<i64>::try_from(best).context("dqn best items")
    }

    /// Waits until the learner owes no update (or `timeout` passes); returns its update count.
    /// For tests and offline runs: the agent loop never calls it.
    pub fn flush(&mut self, timeout: Duration) -> anyhow::Result<u64> {
        let Some(tx) = self.live.as_ref().and_then(|l| l.inbox_tx.clone()) else { return Ok(0) };
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        tx.send(ToLearner::Flush(reply_tx)).map_err(|_| anyhow!("the dqn learner stopped"))?;
        reply_rx.recv_timeout(timeout).context("the dqn learner did not catch up in time")
    }

    /// Makes the inference copy current with the learner now (instead of at the next sync).
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        let Some(live) = self.live.as_mut() else { return Ok(()) };
        let Some(tx) = live.inbox_tx.clone() else { return Ok(()) };
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        tx.send(ToLearner::Snapshot(reply_tx)).map_err(|_| anyhow!("the dqn learner stopped"))?;
        let s = reply_rx.recv_timeout(Duration::from_secs(60)).context("the dqn learner did not answer")?;
        net::assign(&live.vars, &s.weights)?;
        live.version = s.version;
        live.items_cache = None;
        Ok(())
    }

    /// What a serving replica needs of the learner's current network: its update count, the
    /// network's shape identity and the bytes ([`checkpoint::encode`] without target weights);
    /// `None` before the first transition built the network. For `agent-svc learn`.
    pub fn serving_copy(&self) -> anyhow::Result<Option<(u64, String, Vec<u8>)>> {
        let Some(live) = self.live.as_ref() else { return Ok(None) };
        let tx = self.learner_tx()?;
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        tx.send(ToLearner::Serve(reply_tx)).map_err(|_| anyhow!("the dqn learner stopped"))?;
        let (updates, bytes) = reply_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the dqn learner did not encode its weights in time")?
            .map_err(|e| anyhow!("the dqn learner could not encode its weights: {e}"))?;
        Ok(Some((updates, self.shape_id(live.n_actions), bytes)))
    }

    /// The network's shape identity on the weights topic: the resolved configuration and the
    /// action space, hashed (a replica decodes and checks the configuration itself).
    fn shape_id(&self, n_actions: u32) -> String {
        let cfg = serde_json::to_string(&self.net_cfg.resolved(i64::from(n_actions))).unwrap_or_default();
        format!("{n_actions}-{:016x}", xxhash_rust::xxh3::xxh3_64(cfg.as_bytes()))
    }

    /// `--learning frozen`: serves the loaded checkpoint, learns nothing and writes no
    /// checkpoint; greedily, or exploring uniformly with probability `epsilon` (a logging
    /// policy for off-policy evaluation: every product keeps a propensity of at least
    /// `epsilon / n_actions`).
    pub fn freeze(&mut self, epsilon: f64) -> anyhow::Result<()> {
        anyhow::ensure!((0.0..=1.0).contains(&epsilon), "a frozen DQN's epsilon must be in [0, 1], not {epsilon}");
        self.frozen = true;
        self.frozen_epsilon = epsilon;
        Policy::<S>::set_eval(self, true)
    }

    /// Whether the networks are built (on the first state seen): before, [`Policy::save`]
    /// has nothing to write.
    pub fn built(&self) -> bool {
        self.live.is_some()
    }

    /// Whether a checkpoint was found at start (and fits the flags).
    pub fn resumed(&self) -> bool {
        self.resume.is_some()
    }

    /// Never drops a transition: [`Policy::learn`] waits for room in the learner's queue. The
    /// learner thread still skips (and counts) the updates it cannot catch up with, unless
    /// `--dqn-backpressure` ties its intake to its updates. For `agent-svc learn`.
    pub fn never_drop(&mut self) {
        self.never_drop = true;
    }

    /// Advances the epsilon schedule by `n` steps acted on elsewhere (the learner counts the
    /// replicas' steps it learns from, and publishes the position with its weights).
    pub fn count_steps(&self, n: u64) {
        self.shared.eps_step.fetch_add(n, Ordering::Relaxed);
    }

    /// Updates the learner skipped, owing more than `--dqn-max-owed`.
    pub fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// Transitions dropped because the learner's channel was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Current exploration rate (0 in evaluation mode; `--frozen-epsilon` when frozen).
    pub fn epsilon(&self) -> f64 {
        if self.frozen {
            self.frozen_epsilon
        } else if self.eval {
            0.0
        } else {
            self.args.epsilon(self.shared.eps_step.load(Ordering::Relaxed))
        }
    }

    /// Records the tokens of the items that `states` describe (the tower head's item side).
    fn record_items<'a>(&self, states: impl Iterator<Item = (&'a S, &'a Vec<i64>)>)
    where
        S: 'a,
    {
        if self.net_cfg.head != Head::Tower {
            return;
        }
        let mut items = self.shared.items.write().unwrap_or_else(|p| p.into_inner());
        for (s, tokens) in states.filter(|(s, _)| s.describes_item()) {
            items.set(i64::from(s.item()), tokens);
        }
    }

    /// What the learner stores for `fb`.
    fn transition(&self, fb: &Feedback<'_, S>) -> Transition {
        let max_tokens = self.args.dqn_max_tokens;
        let (prev, next) = (self.text_of(fb.prev), self.text_of(fb.next));
        let (obs, next_obs) = {
            let mut vocab = self.vocab();
            (vocab.encode(&prev, max_tokens, true), vocab.encode(&next, max_tokens, true))
        };
        self.record_items([(fb.prev, &obs), (fb.next, &next_obs)].into_iter());
        Transition {
            obs,
            item: i64::from(fb.prev.item()),
            action: i64::from(fb.action),
            reward: fb.reward as f32,
            next_obs,
            next_item: i64::from(fb.next.item()),
            // Truncation (the step limit) is no end of the episode: keep bootstrapping.
            terminated: fb.next.terminated(),
            positives: None,
        }
    }

    /// The learner's channel, or why the learner is gone.
    fn learner_tx(&self) -> anyhow::Result<SyncSender<ToLearner>> {
        let stopped = || match self.shared.failure() {
            Some(why) => anyhow!("the dqn learner stopped: {why}"),
            None => anyhow!("the dqn learner stopped"),
        };
        self.live.as_ref().and_then(|l| l.inbox_tx.clone()).ok_or_else(stopped)
    }
}

impl<S: DqnState> Policy<S> for Dqn<S> {
    fn name(&self) -> &'static str {
        "dqn"
    }

    fn act(&mut self, states: &[&S], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        if self.serving.is_some() {
            self.take_served()?;
            if self.live.is_none() {
                // No version published yet: uniform, as a fresh network's choices would be.
                return Ok(states.iter().map(|s| epsilon_greedy(0, s.n_actions(), 1.0, rng)).collect());
            }
        }
        let n = self.ensure_live(states)?.n_actions;
        let eps = self.epsilon();
        if !self.eval {
            self.shared.eps_step.fetch_add(states.len() as u64, Ordering::Relaxed);
        }
        // One forward pass for the whole poll, unless every action is drawn uniformly anyway.
        let greedy: Vec<i64> = if eps < 1.0 { self.greedy(states)? } else { vec![0; states.len()] };
        Ok(greedy.into_iter().map(|g| epsilon_greedy(u32::try_from(g).unwrap_or(0), n, eps, rng)).collect())
    }

    fn learn(&mut self, fb: &Feedback<'_, S>) -> anyhow::Result<()> {
        // A serving replica learns nothing itself: the learner reads the same steps from the
        // topics.
        if self.eval || self.serving.is_some() {
            return Ok(());
        }
        let n_actions = self.ensure_live(&[fb.prev, fb.next])?.n_actions;
        anyhow::ensure!(fb.action < n_actions, "action {} outside the network's 0..{n_actions}", fb.action);
        let tx = self.learner_tx()?;
        let t = self.transition(fb);
        let next = fb.next.item();
        let batch: Vec<Transition> = match self.args.dqn_hindsight {
            Hindsight::Off => vec![t],
            Hindsight::Next => {
                let relabelled = match fb.next.relabel() {
                    Relabel::Reward(reward) if next != fb.action && next < n_actions => {
                        Some(Transition { action: i64::from(next), reward, ..t.clone() })
                    }
                    Relabel::Reward(_) | Relabel::NotHere => None,
                    Relabel::Unsound => {
                        anyhow::bail!("--dqn-hindsight next on a state that offers no sound relabelling")
                    }
                };
                std::iter::once(t).chain(relabelled).collect()
            }
            Hindsight::Future => {
                if self.episodes.len() >= MAX_OPEN_EPISODES && !self.episodes.contains_key(fb.next.episode_id()) {
                    // Episodes that never ended (e.g. cut by a restart) would pile up: forget them.
                    tracing::warn!(open = self.episodes.len(), "dqn forgets the steps of unfinished episodes");
                    self.episodes.clear();
                }
                self.episodes.entry(fb.next.episode_id().to_string()).or_default().push((t, i64::from(next)));
                if fb.next.terminated() || fb.next.truncated() {
                    let steps = self.episodes.remove(fb.next.episode_id()).unwrap_or_default();
                    full_feedback(steps, self.args.dqn_hindsight_decay)
                } else {
                    Vec::new()
                }
            }
        };
        for t in batch {
            if self.args.dqn_backpressure || self.never_drop {
                if tx.send(ToLearner::Transition(t)).is_err() {
                    let why = self.shared.failure().unwrap_or_else(|| "its thread ended".into());
                    anyhow::bail!("the dqn learner stopped: {why}");
                }
                continue;
            }
            match tx.try_send(ToLearner::Transition(t)) {
                Ok(()) => {}
                // Dropping under load is the documented behaviour of a live service
                // (`--dqn-backpressure` waits instead); counted and logged.
                Err(TrySendError::Full(_)) => {
                    let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(dropped, "dqn learner busy: transitions dropped");
                    }
                }
                Err(TrySendError::Disconnected(_)) => {
                    let why = self.shared.failure().unwrap_or_else(|| "its thread ended".into());
                    anyhow::bail!("the dqn learner stopped: {why}");
                }
            }
        }
        Ok(())
    }

    fn top_k(&mut self, states: &[&S], k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.ensure_live(states)?.n_actions;
        if k == 0 {
            return Ok(vec![Vec::new(); states.len()]);
        }
        if self.search == Search::Ivf {
            let ranked = self.ivf_top_k(states, k)?;
            return Ok(ranked.into_iter().map(|r| r.into_iter().map(|a| a as u32).collect()).collect());
        }
        let (_, idx) = self.q_values(states)?.topk(i64::from(n).min(k as i64), 1, true, true);
        let ranked = Vec::<Vec<i64>>::try_from(idx).context("dqn top-k")?;
        Ok(ranked.into_iter().map(|r| r.into_iter().map(|a| a as u32).collect()).collect())
    }

    fn set_eval(&mut self, eval: bool) -> anyhow::Result<()> {
        self.eval = eval;
        if eval && self.live.is_some() {
            // Evaluate what the training budget paid for: let the learner finish the updates it
            // owes (at most --dqn-max-owed), then take its newest weights, not the last periodic
            // snapshot.
            let owed_from = self.shared.updates.load(Ordering::Relaxed);
            let updates =
                self.flush(Duration::from_secs(600)).context("dqn learner did not catch up for evaluation")?;
            tracing::info!(updates, caught_up = updates - owed_from.min(updates), "dqn learner caught up");
            self.refresh().context("dqn cannot take the learner's newest weights for evaluation")?;
        }
        Ok(())
    }

    fn save(&mut self) -> anyhow::Result<()> {
        // A frozen policy serves its checkpoint as it was loaded: nothing to write.
        if self.frozen {
            return Ok(());
        }
        if let Some(why) = self.shared.failure() {
            anyhow::bail!("the dqn learner stopped ({why}); checkpoint left as it was");
        }
        let (Some(_), Some(live)) = (&self.checkpoint, &self.live) else { return Ok(()) };
        let Some(tx) = live.inbox_tx.clone() else { return Ok(()) };
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        tx.send(ToLearner::Checkpoint(reply_tx)).map_err(|_| anyhow!("the dqn learner stopped"))?;
        let updates = reply_rx
            .recv_timeout(Duration::from_secs(60))
            .context("the dqn learner did not write its checkpoint in time")?
            .map_err(|e| anyhow!(e))?;
        tracing::info!(updates, dropped = self.dropped(), "dqn checkpoint saved");
        Ok(())
    }

    fn learns(&self) -> bool {
        self.serving.is_none() && !self.eval
    }

    fn model_version(&self) -> Option<u64> {
        Some(
            self.live.as_ref().map(|l| l.version).unwrap_or_else(|| self.resume.as_ref().map_or(0, |c| c.meta.updates)),
        )
    }

    fn epsilon(&self) -> Option<f64> {
        Some(Dqn::epsilon(self))
    }

    fn has_model(&self) -> bool {
        self.serving.is_none() || self.live.is_some()
    }
}

#[cfg(test)]
mod tests;
