//! Rust side of `scripts/bench_dqn.sh`: learner updates per second and inference latency of the
//! DQN's default network (the paper's: embedding 64, BiLSTM 64, 64, 32, dense 64, 32), with the
//! same work as `scripts/bench_dqn.py` does in PyTorch. Prints one JSON object.
//!
//! An update is the learner's full step on a fixed batch: online forward on the states, online
//! and target forwards on the next states (Double DQN), Huber loss, backward, gradient-norm
//! clipping, Adam (and the periodic target copy). With `--active-vocab N` the token ids come
//! from the first N words and Adam skips the embedding rows past them, as the agent does. Inference is the forward pass of one batch
//! without gradients, timed one call at a time.

use std::time::{Duration, Instant};

use agent_svc::policies::dqn::{
    learner::{Hyper, Learner},
    net::{NetConfig, NetKind},
    replay::Batch,
    DqnArgs,
};
use clap::Parser;
use rand::Rng;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Parser)]
struct Args {
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Seconds of learner updates to time (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Timed inference calls.
    #[arg(long, default_value_t = 300)]
    runs: usize,
    /// States per batch.
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Tokens per state.
    #[arg(long, default_value_t = 32)]
    tokens: i64,
    /// Size of the action space.
    #[arg(long, default_value_t = 1289)]
    n_actions: i64,
    /// Vocabulary size.
    #[arg(long, default_value_t = 20_000)]
    vocab: usize,
    /// Words in use: token ids are drawn from the first this many (default: the whole
    /// vocabulary, the worst case); the learner's Adam skips the embedding rows beyond them.
    #[arg(long)]
    active_vocab: Option<usize>,
    /// Network: the paper's `lstm` or the `mlp` option (same embedding and dense layers).
    #[arg(long, value_enum, default_value_t = NetKind::Lstm)]
    net: NetKind,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let cfg = NetConfig { kind: a.net, ..NetConfig::paper(a.vocab, a.tokens as usize) };
    // The agent's defaults (the paper's settings), with a one-slot replay: `update_on` trains
    // on a fixed batch.
    let hyper = Hyper {
        batch_size: a.batch as usize,
        replay_capacity: 1,
        learning_starts: 1,
        checkpoint_every: 0,
        ..DqnArgs::default().hyper(0)
    };
    let mut learner = Learner::new(&cfg, a.n_actions, &hyper, Device::Cpu)?;
    let active = a.active_vocab.unwrap_or(a.vocab).clamp(1, a.vocab) as i64;
    learner.set_active_rows(active + 2);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let n = (a.batch * a.tokens) as usize;
    let ids = |rng: &mut ChaCha8Rng| -> Vec<i64> { (0..n).map(|_| rng.random_range(2..active + 2)).collect() };
    let obs = Tensor::from_slice(&ids(&mut rng)).view([a.batch, a.tokens]);
    let next_obs = Tensor::from_slice(&ids(&mut rng)).view([a.batch, a.tokens]);
    let actions: Vec<i64> = (0..a.batch).map(|_| rng.random_range(0..a.n_actions)).collect();
    let rewards: Vec<f32> = (0..a.batch).map(|_| f32::from(u8::from(rng.random_bool(0.2)))).collect();
    let terminated: Vec<f32> = (0..a.batch).map(|_| f32::from(u8::from(rng.random_bool(0.1)))).collect();
    // The benchmark's network has no wide table: the product indices are read by nothing.
    let items = Tensor::zeros([a.batch], (Kind::Int64, Device::Cpu));
    let batch = Batch {
        obs: obs.shallow_clone(),
        items: items.shallow_clone(),
        actions: Tensor::from_slice(&actions),
        rewards: Tensor::from_slice(&rewards),
        next_obs,
        next_items: items.shallow_clone(),
        terminated: Tensor::from_slice(&terminated),
        // Ordinary transitions, as the PyTorch side learns them.
        full: None,
    };

    for _ in 0..10 {
        learner.update_on(&batch)?;
    }
    let (start, mut updates) = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs_f64(a.seconds) || updates < 20 {
        learner.update_on(&batch)?;
        updates += 1;
    }
    let update_s = start.elapsed().as_secs_f64();

    for _ in 0..20 {
        let _ = learner.q_values(&obs, &items)?;
    }
    let mut ms: Vec<f64> = (0..a.runs.max(1))
        .map(|_| {
            let t = Instant::now();
            let q = learner.q_values(&obs, &items)?;
            let elapsed = t.elapsed().as_secs_f64() * 1e3;
            debug_assert_eq!(q.size(), [a.batch, a.n_actions]);
            Ok(elapsed)
        })
        .collect::<anyhow::Result<_>>()?;
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    let report = serde_json::json!({
        "impl": "rust",
        "net": format!("{:?}", a.net).to_lowercase(),
        "threads": tch::get_num_threads(),
        "batch": a.batch,
        "tokens": a.tokens,
        "vocab": a.vocab,
        "active_vocab": active,
        "n_actions": a.n_actions,
        "updates": updates,
        "update_seconds": update_s,
        "updates_per_s": updates as f64 / update_s,
        "infer_ms": { "median": pct(0.5), "p99": pct(0.99), "mean": ms.iter().sum::<f64>() / ms.len() as f64, "runs": ms.len() },
    });
    println!("{report}");
    Ok(())
}
