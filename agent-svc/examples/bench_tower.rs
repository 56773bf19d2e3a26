//! Rust side of `scripts/bench_tower.sh`: the DQN of `--dqn-preset fashion` (the tower head with
//! the sparse wide table) at the full catalogue's size, the same work as `scripts/bench_tower.py`
//! does in PyTorch. Prints one JSON object.
//!
//! Setup: `--n-actions` items (186,637: every product of the 2018 metadata), each with
//! `--item-tokens` token ids of its own text; a replay buffer of full-feedback transitions with
//! `--positives` positives each; `--pairs` pairs already in the sparse wide table.
//! - Learner: `Learner::update`, the agent's own step: sample a batch of 64, candidates (the
//!   row's action and positives, `--negatives` shared negatives), Huber loss, backward, clipping,
//!   Adam on the dense weights and on the gathered item and pair rows.
//! - Inference: what the policy side does per batch of 64 states to act: the state tower, then
//!   the catalogue scored block by block against the cached item matrix with the pairs'
//!   offsets, keeping each block's best (`Net::best`); timed one call at a time. Also timed:
//!   the whole `[64, n]` matrix and its argmax (what top-k evaluation computes), and the item
//!   matrix's rebuild (once per weight snapshot).
//! - Candidate search (`--dqn-search ivf`): the index's k-means build and per-snapshot refresh,
//!   the same batch answered from the index's candidates, and the index's recall@1 and
//!   recall@10 against the exact scan over `--recall-batches` batches of states. The vectors
//!   are the bench's: random words trained for a few seconds, with little of the structure a
//!   trained agent's have, so the recall here is a floor; `make eval` measures the quality
//!   the index costs on real episodes.
//! - Memory: the process's peak RSS (VmHWM) with the learner (online, target, Adam) and an
//!   inference copy alive, as in agent-svc.

use std::time::{Duration, Instant};

use agent_svc::policies::dqn::{
    items::ItemTokens,
    learner::{Hyper, Learner},
    net::{self, Head, Net, NetConfig, NetKind},
    replay::Transition,
    search::{Ivf, IvfConfig},
    DqnArgs,
};
use clap::Parser;
use rand::Rng;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use tch::{nn, Device};

#[derive(Debug, Parser)]
struct Args {
    /// libtorch intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: i32,
    /// Seconds of learner updates to time (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Timed inference calls.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// States per batch (training and inference).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Tokens per state.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Tokens of each item's own text.
    #[arg(long, default_value_t = 16)]
    item_tokens: usize,
    /// Size of the action space.
    #[arg(long, default_value_t = 186_637)]
    n_actions: i64,
    /// Vocabulary size (all of it in use).
    #[arg(long, default_value_t = 20_000)]
    vocab: usize,
    /// Width of the state and item vectors.
    #[arg(long, default_value_t = 64)]
    tower_dim: i64,
    /// Positives per full-feedback transition.
    #[arg(long, default_value_t = 10)]
    positives: usize,
    /// Shared negatives per batch.
    #[arg(long, default_value_t = 256)]
    negatives: usize,
    /// Slots of the sparse wide table.
    #[arg(long, default_value_t = 1_000_000)]
    wide_pairs: i64,
    /// Pairs already in the sparse wide table when the timing starts.
    #[arg(long, default_value_t = 200_000)]
    pairs: usize,
    /// Lists of the candidate index (0: about 2·sqrt(items), as the agent's default).
    #[arg(long, default_value_t = 0)]
    ivf_lists: usize,
    /// Lists the candidate index reads per state; a comma-separated list times each (the
    /// first is the agent's default and heads the report).
    #[arg(long, value_delimiter = ',', default_value = "16,4,8,32,64")]
    ivf_probe: Vec<usize>,
    /// Items of largest bias that are candidates of every state.
    #[arg(long, default_value_t = 256)]
    ivf_popular: usize,
    /// Batches of states over which the index's recall against the exact scan is counted.
    #[arg(long, default_value_t = 8)]
    recall_batches: usize,
}

fn peak_rss_mib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM line in /proc/self/status"))?
        .parse()?;
    Ok(kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let cfg = NetConfig {
        kind: NetKind::Mlp,
        hidden: vec![64],
        lead_token: true,
        wide: true,
        head: Head::Tower,
        tower_dim: a.tower_dim,
        wide_pairs: a.wide_pairs,
        ..NetConfig::paper(a.vocab, a.tokens)
    };
    // The agent's defaults with the `fashion` preset's gamma and learning rate.
    let hyper = Hyper {
        gamma: 0.0,
        lr: 3e-3,
        batch_size: a.batch,
        learning_starts: 1,
        checkpoint_every: 0,
        negatives: a.negatives,
        ..DqnArgs::default().hyper(0)
    };
    let n = a.n_actions;
    let word = |rng: &mut ChaCha8Rng| rng.random_range(2..a.vocab as i64 + 2);
    let mut items = ItemTokens::default();
    for i in 0..n {
        let t: Vec<i64> = (0..a.item_tokens).map(|_| word(&mut rng)).collect();
        items.set(i, &t);
    }
    let items = std::sync::Arc::new(std::sync::RwLock::new(items));
    let mut learner = Learner::new(&cfg, n, &hyper, Device::Cpu)?;
    learner.set_items(std::sync::Arc::clone(&items));
    let pairs = std::sync::Arc::new(std::sync::RwLock::new(agent_svc::policies::dqn::items::PairIndex::new(
        a.wide_pairs as usize,
    )));
    {
        let mut p = pairs.write().unwrap_or_else(|e| e.into_inner());
        for _ in 0..a.pairs {
            p.slot_or_take(rng.random_range(0..n), rng.random_range(0..n));
        }
    }
    learner.set_pairs(std::sync::Arc::clone(&pairs));
    // Full-feedback transitions, as `--dqn-hindsight future` sends them.
    for _ in 0..2_000 {
        let obs: Vec<i64> = (0..a.tokens).map(|_| word(&mut rng)).collect();
        let positives: Vec<(i64, f32)> =
            (0..a.positives).map(|k| (rng.random_range(0..n), 0.6f32.powi(k as i32))).collect();
        learner.push(&Transition {
            obs: obs.clone(),
            item: rng.random_range(0..n),
            action: rng.random_range(0..n),
            reward: 0.0,
            next_obs: obs,
            next_item: rng.random_range(0..n),
            terminated: false,
            positives: Some(positives),
        });
    }
    for _ in 0..10 {
        learner.update()?;
    }
    let (start, mut updates) = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs_f64(a.seconds) || updates < 20 {
        learner.update()?;
        updates += 1;
    }
    let update_s = start.elapsed().as_secs_f64();

    // The inference copy, as the policy side holds it.
    let vs = nn::VarStore::new(Device::Cpu);
    let copy = Net::new(&vs.root(), &cfg, n);
    net::assign(&net::vars(&vs), &learner.snapshot().weights)?;
    let tokens = items.read().unwrap_or_else(|e| e.into_inner());
    let rebuild = Instant::now();
    let (v, b) = tch::no_grad(|| copy.item_matrix(&tokens))?;
    let rebuild_ms = rebuild.elapsed().as_secs_f64() * 1e3;
    let rows: Vec<Vec<i64>> = (0..a.batch).map(|_| (0..a.tokens).map(|_| word(&mut rng)).collect()).collect();
    let refs: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
    let ids = net::batch_ids(&refs, Device::Cpu);
    let states: Vec<i64> = (0..a.batch).map(|_| rng.random_range(0..n)).collect();
    let full = || -> anyhow::Result<Vec<i64>> {
        let mut q = tch::no_grad(|| copy.scores(&copy.state_vec(&ids), &v, &b));
        let index = pairs.read().unwrap_or_else(|e| e.into_inner());
        let lists: Vec<&[(i64, i64)]> = states.iter().map(|&s| index.of_item(s)).collect();
        tch::no_grad(|| copy.add_pair_offsets(&mut q, &lists));
        Ok(Vec::<i64>::try_from(q.argmax(1, false))?)
    };
    let blocked = || -> anyhow::Result<Vec<i64>> {
        let index = pairs.read().unwrap_or_else(|e| e.into_inner());
        let lists: Vec<&[(i64, i64)]> = states.iter().map(|&s| index.of_item(s)).collect();
        Ok(Vec::<i64>::try_from(tch::no_grad(|| copy.best(&copy.state_vec(&ids), &v, &b, &lists)))?)
    };
    anyhow::ensure!(full()? == blocked()?, "the blocked best items differ from the full matrix's argmax");
    let time = |f: &dyn Fn() -> anyhow::Result<Vec<i64>>| -> anyhow::Result<Vec<f64>> {
        for _ in 0..10 {
            f()?;
        }
        let mut ms: Vec<f64> = Vec::with_capacity(a.runs);
        for _ in 0..a.runs.max(1) {
            let t = Instant::now();
            f()?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        Ok(ms)
    };
    let (ms, full_ms) = (time(&blocked)?, time(&full)?);

    let ivf_cfg = IvfConfig {
        lists: a.ivf_lists,
        probe: *a.ivf_probe.first().ok_or_else(|| anyhow::anyhow!("--ivf-probe needs at least one value"))?,
        popular: a.ivf_popular,
        recluster_every: 20,
        iterations: 8,
        seed: 0,
    };
    let t = Instant::now();
    let mut index = tch::no_grad(|| Ivf::build(&v, &b, ivf_cfg))?;
    let ivf_build_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    index.refresh(&v, &b)?;
    let ivf_refresh_ms = t.elapsed().as_secs_f64() * 1e3;
    // The recall batches and their exact top 10 (the whole matrix with the offsets).
    let mut recall_sets = Vec::new();
    for _ in 0..a.recall_batches.max(1) {
        let rows: Vec<Vec<i64>> = (0..a.batch).map(|_| (0..a.tokens).map(|_| word(&mut rng)).collect()).collect();
        let refs: Vec<&[i64]> = rows.iter().map(Vec::as_slice).collect();
        let ids = net::batch_ids(&refs, Device::Cpu);
        let states: Vec<i64> = (0..a.batch).map(|_| rng.random_range(0..n)).collect();
        let mut q = tch::no_grad(|| copy.scores(&copy.state_vec(&ids), &v, &b));
        {
            let index = pairs.read().unwrap_or_else(|e| e.into_inner());
            let lists: Vec<&[(i64, i64)]> = states.iter().map(|&s| index.of_item(s)).collect();
            tch::no_grad(|| copy.add_pair_offsets(&mut q, &lists));
        }
        let exact = Vec::<Vec<i64>>::try_from(q.topk(10, 1, true, true).1)?;
        recall_sets.push((ids, states, exact));
    }
    let mut sweep = Vec::new();
    for &probe in &a.ivf_probe {
        index.set_probe(probe);
        let searched = |ids: &tch::Tensor, states: &[i64], k: usize| -> anyhow::Result<Vec<Vec<i64>>> {
            let lists: Vec<Vec<(i64, i64)>> = {
                let index = pairs.read().unwrap_or_else(|e| e.into_inner());
                states.iter().map(|&s| index.of_item(s).to_vec()).collect()
            };
            let offsets = copy.pair_values(&lists)?;
            let u = tch::no_grad(|| copy.state_vec(ids));
            Ok(index.search(&u, &offsets, k)?.into_iter().map(|r| r.into_iter().map(|x| x.0).collect()).collect())
        };
        let ivf_best =
            || -> anyhow::Result<Vec<i64>> { Ok(searched(&ids, &states, 1)?.into_iter().flatten().collect()) };
        let ivf_ms = time(&ivf_best)?;
        let (mut hits1, mut hits10, mut rows_seen) = (0usize, 0usize, 0usize);
        for (ids, states, exact) in &recall_sets {
            let approx = searched(ids, states, 10)?;
            for (e, x) in exact.iter().zip(&approx) {
                hits1 += usize::from(e.first() == x.first());
                hits10 += e.iter().filter(|i| x.contains(i)).count();
                rows_seen += 1;
            }
        }
        sweep.push((
            probe,
            index.mean_probed(),
            ivf_ms,
            hits1 as f64 / rows_seen as f64,
            hits10 as f64 / (10 * rows_seen) as f64,
            rows_seen,
        ));
    }
    let pct = |ms: &[f64], p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    let report = serde_json::json!({
        "impl": "rust",
        "threads": tch::get_num_threads(),
        "n_actions": n,
        "batch": a.batch,
        "tower_dim": a.tower_dim,
        "negatives": a.negatives,
        "positives": a.positives,
        "pairs": a.pairs,
        "updates": updates,
        "update_seconds": update_s,
        "updates_per_s": updates as f64 / update_s,
        "item_matrix_rebuild_ms": rebuild_ms,
        "infer_ms": { "median": pct(&ms, 0.5), "p99": pct(&ms, 0.99), "max": pct(&ms, 1.0), "runs": ms.len() },
        "infer_full_matrix_ms": { "median": pct(&full_ms, 0.5), "p99": pct(&full_ms, 0.99), "runs": full_ms.len() },
        "ivf": {
            "lists": index.lists(),
            "popular": a.ivf_popular,
            "build_ms": ivf_build_ms,
            "refresh_ms": ivf_refresh_ms,
            "probes": sweep.iter().map(|(probe, probed, ms, r1, r10, states)| serde_json::json!({
                "probe": probe,
                "probed_items_per_state": probed,
                "infer_ms": { "median": pct(ms, 0.5), "p99": pct(ms, 0.99), "max": pct(ms, 1.0), "runs": ms.len() },
                "recall_at_1": r1,
                "recall_at_10": r10,
                "recall_states": states,
            })).collect::<Vec<_>>(),
        },
        "peak_rss_mib": peak_rss_mib()?,
    });
    println!("{report}");
    Ok(())
}
