//! `--learning shared`: the replica side of one learner for many replicas. A replica trains
//! nothing; a follower thread reads the weights topic (`common::weights::Follower`), decodes
//! each version that arrived whole and verified (the checkpoint layout without target weights:
//! shape, vocabulary, item tokens, wide pairs, online weights), checks it against the network
//! the replica's flags describe, loads it into tensors off the serving path and leaves it in
//! the [`Inbox`]; the policy takes the newest one between two batches and swaps it in whole.
//!
//! Invariant: a replica serves either nothing learned yet (uniform actions, version 0) or
//! exactly one published version: weights, vocabulary, item tokens and wide pairs all of that
//! version, swapped together, never a mix and never a version older than one it served. A
//! version refused (checksum, truncation, another network) is counted and logged, and the
//! replica keeps serving what it had. A follower that cannot read the topic at all stops the
//! replica with the reason at its next batch.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;
use common::weights::Follower;
use tch::{nn, Device, Tensor};

use super::{
    checkpoint,
    items::ItemTokens,
    net::{self, Net, NetConfig},
};

/// One published version, decoded and loaded, ready to be swapped in.
pub struct Served {
    /// The version (the learner's update count, or above it after a learner restart).
    pub version: u64,
    /// The network's shape (resolved for `n_actions`).
    pub net_cfg: NetConfig,
    /// Size of the action space.
    pub n_actions: i64,
    /// Fingerprint of the catalogue.
    pub catalog: Option<String>,
    /// The learner's epsilon position (transitions it learned from).
    pub eps_step: u64,
    /// The vocabulary's words in id order.
    pub vocab: Vec<String>,
    /// Every item's tokens.
    pub items: ItemTokens,
    /// The sparse wide table's pairs in slot order.
    pub wide_pairs: Vec<(i64, i64)>,
    /// The online weights, in [`net::vars`] order.
    pub weights: Vec<Tensor>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("version", &self.version).field("n_actions", &self.n_actions).finish()
    }
}

/// Where the follower thread leaves the newest version for the policy (latest wins), with its
/// counters.
#[derive(Debug, Default)]
pub struct Inbox {
    newest: Mutex<Option<Served>>,
    /// Versions decoded and handed to the policy.
    pub received: AtomicU64,
    /// Versions and records refused.
    pub rejected: AtomicU64,
    failure: Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Inbox {
    /// The newest version not taken yet.
    pub fn take(&self) -> Option<Served> {
        self.newest.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put(&self, served: Served) {
        self.received.fetch_add(1, Ordering::Relaxed);
        *self.newest.lock().unwrap_or_else(|p| p.into_inner()) = Some(served);
    }

    /// Why the follower stopped, if it failed.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Asks the follower thread to end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Decodes and loads one version; fails when it is not a serving checkpoint or holds another
/// network than `wanted` (the replica's flags).
pub fn decode(version: u64, blob: &[u8], wanted: &NetConfig, device: Device) -> anyhow::Result<Served> {
    let origin = std::path::PathBuf::from(format!("weights version {version}"));
    let ckpt = checkpoint::decode(blob, &origin)?;
    let n_actions = ckpt.meta.n_actions;
    let net_cfg = wanted.resolved(n_actions);
    ckpt.check(&net_cfg, None)?;
    let mut vs = nn::VarStore::new(device);
    let _net = Net::new(&vs.root(), &net_cfg, n_actions);
    ckpt.load_into(&mut vs, None)?;
    let meta = ckpt.meta;
    Ok(Served {
        version,
        net_cfg,
        n_actions,
        catalog: meta.catalog,
        eps_step: meta.eps_step,
        vocab: meta.vocab,
        items: ItemTokens::from_vecs(meta.items),
        wide_pairs: meta.wide_pairs,
        weights: net::snapshot(&net::vars(&vs)),
    })
}

/// Where a replica's follower reads.
#[derive(Debug, Clone)]
pub struct Source {
    /// Kafka client settings (bootstrap list, security).
    pub kafka: rdkafka::ClientConfig,
    /// The weights topic.
    pub topic: String,
    /// The model name the learner publishes under.
    pub model: String,
}

/// Starts the follower thread: it catches up with the topic (the newest complete version, for
/// a replica that starts late), then hands over each newer version as it completes, until
/// [`Inbox::stop`].
pub fn follow(source: Source, wanted: NetConfig, device: Device, inbox: Arc<Inbox>) -> anyhow::Result<JoinHandle<()>> {
    let thread_inbox = Arc::clone(&inbox);
    std::thread::Builder::new()
        .name("dqn-weights".into())
        .spawn(move || {
            if let Err(e) = follow_loop(&source, &wanted, device, &thread_inbox) {
                let why = format!("{e:#}");
                tracing::error!(topic = %source.topic, error = %why, "weights follower stops");
                thread_inbox.failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
            }
        })
        .context("failed to start the weights follower thread")
}

fn follow_loop(source: &Source, wanted: &NetConfig, device: Device, inbox: &Inbox) -> anyhow::Result<()> {
    let mut follower = Follower::new(source.kafka.clone(), &source.topic, &source.model, None)?;
    let mut refused = 0u64;
    // A late replica starts from the newest complete version kept by compaction.
    let mut complete = follower.catch_up(Duration::from_secs(120))?;
    loop {
        if let Some(c) = complete.take() {
            refused += u64::from(!offer(c, wanted, device, inbox));
        }
        inbox.rejected.store(follower.rejected() + refused, Ordering::Relaxed);
        if inbox.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        complete = follower.next(Duration::from_millis(200))?;
    }
}

/// Decodes a complete version into the inbox; false when it is refused (logged).
fn offer(complete: protocol::weights::Complete, wanted: &NetConfig, device: Device, inbox: &Inbox) -> bool {
    let version = complete.meta.version;
    match decode(version, &complete.blob, wanted, device) {
        Ok(served) => {
            tracing::info!(version, bytes = complete.blob.len(), "weights version arrived and verified");
            inbox.put(served);
            true
        }
        Err(e) => {
            tracing::warn!(version, error = format!("{e:#}"), "weights version refused; serving what was served");
            false
        }
    }
}
