//! The candidate step of the tower head at catalogue scale (`--dqn-search ivf`): an inverted-file
//! index over the item vectors, so that acting reads a few thousand items per state instead of
//! all of them, then re-ranks those by their exact Q-value.
//!
//! A tower Q-value is `u·v_a + b_a + w(s, a)`: the state vector against the item's vector, the
//! item's bias and the sparse wide table's offset of the state's product and `a`. The index
//! clusters the augmented item rows `[v_a, b_a]` by k-means (libtorch matrix products on a
//! sample, then every item assigned to its nearest centroid), and keeps the rows grouped by
//! list. A state's candidates are, each scored exactly:
//! - the items of the `probe` lists whose centroids `[c, c_b]` score highest against `[u, 1]`
//!   (the item side's "nearest items by embedding", bias included);
//! - every action the wide table holds an offset for with the state's product (the pairs the
//!   agent was rewarded on: co-occurrence, memorised), scored with their offset;
//! - the `popular` items of largest bias (the learned popularity), whatever their list.
//!
//! The result is exact when `probe` covers every list; otherwise an item outside the probed
//! lists, the pairs and the popular ones is never chosen, which is the cost measured as recall
//! against the exact scan (`scripts/bench_tower.sh`, docs/DQN.md).
//!
//! Refreshing: the item vectors change with every weight snapshot. Re-clustering costs a few
//! hundred ms at 186,637 items, so a refresh keeps each item in its list, re-reads its row and
//! moves each centroid to its members' mean (one pass over the rows); k-means runs again every
//! `recluster_every` refreshes.

use anyhow::Context;
use rand::seq::index::sample;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use tch::{Kind, Tensor};

/// The index's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IvfConfig {
    /// Lists (k-means centroids); 0 chooses about `2 * sqrt(items)`.
    pub lists: usize,
    /// Lists read per state.
    pub probe: usize,
    /// Items of largest bias read per state.
    pub popular: usize,
    /// Refreshes between two k-means runs.
    pub recluster_every: u32,
    /// k-means iterations.
    pub iterations: usize,
    /// Seed of the k-means sample.
    pub seed: u64,
}

impl IvfConfig {
    /// The number of lists for `n` items.
    pub fn lists_for(&self, n: usize) -> usize {
        let lists = if self.lists == 0 { (2.0 * (n as f64).sqrt()).round() as usize } else { self.lists };
        lists.clamp(1, n.max(1))
    }
}

/// The index over one snapshot's item vectors.
#[derive(Debug)]
pub struct Ivf {
    dim: usize,
    /// `[lists, dim + 1]`: each list's mean vector and mean bias.
    centroids: Vec<f32>,
    /// Start of each list's rows in `items`, and the end (`lists + 1` entries).
    starts: Vec<usize>,
    /// The items, list by list.
    items: Vec<i64>,
    /// Row of each item in `items` (and `vecs`, `bias`).
    row_of: Vec<u32>,
    /// Each item's list.
    list_of: Vec<u32>,
    /// `[items, dim]` the vectors, in `items`' order.
    vecs: Vec<f32>,
    /// The biases, in `items`' order.
    bias: Vec<f32>,
    /// The items of largest bias, best first.
    popular: Vec<i64>,
    /// Refreshes since the last k-means.
    refreshes: u32,
    cfg: IvfConfig,
}

/// A state's best items: `(item, Q-value)`, best first.
pub type Ranked = Vec<(i64, f32)>;

impl Ivf {
    /// Clusters the item vectors `v` `[n, dim]` and biases `b` `[n]` (any device, float).
    pub fn build(v: &Tensor, b: &Tensor, cfg: IvfConfig) -> anyhow::Result<Self> {
        let (n, dim) = v.size2().context("item vectors must be [items, dim]")?;
        anyhow::ensure!(n > 0, "an index needs at least one item");
        anyhow::ensure!(cfg.probe > 0, "--dqn-ivf-probe must be at least 1");
        let x = augmented(v, b);
        let lists = cfg.lists_for(n as usize);
        let centroids = kmeans(&x, lists, cfg.iterations, cfg.seed)?;
        let assign = nearest(&x, &centroids)?;
        let mut ivf = Ivf {
            dim: dim as usize,
            centroids: Vec::new(),
            starts: Vec::new(),
            items: Vec::new(),
            row_of: Vec::new(),
            list_of: assign.iter().map(|&l| l as u32).collect(),
            vecs: Vec::new(),
            bias: Vec::new(),
            popular: Vec::new(),
            refreshes: 0,
            cfg,
        };
        ivf.group(lists);
        ivf.read_rows(&x)?;
        Ok(ivf)
    }

    /// Takes a new snapshot's vectors and biases (the same items): each item stays in its list
    /// and the centroids move to their members' means. See [`Ivf::recluster_due`].
    pub fn refresh(&mut self, v: &Tensor, b: &Tensor) -> anyhow::Result<()> {
        let (n, _) = v.size2().context("item vectors must be [items, dim]")?;
        anyhow::ensure!(
            n as usize == self.list_of.len(),
            "a refresh must keep the items ({n} vs {})",
            self.list_of.len()
        );
        self.refreshes += 1;
        self.read_rows(&augmented(v, b))
    }

    /// Whether `recluster_every` refreshes have passed since k-means ran: time to build a new
    /// index (the caller does, off its hot path, and swaps it in).
    pub fn recluster_due(&self) -> bool {
        self.refreshes >= self.cfg.recluster_every.max(1)
    }

    /// The settings of the next k-means run (another sample).
    pub fn next_config(&self) -> IvfConfig {
        IvfConfig { seed: self.cfg.seed.wrapping_add(1), ..self.cfg }
    }

    /// Reads `probe` lists per state from now on.
    pub fn set_probe(&mut self, probe: usize) {
        self.cfg.probe = probe.max(1);
    }

    /// Items in the index.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the index holds no item (never: [`Ivf::build`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of lists.
    pub fn lists(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Average items a state reads from its probed lists (the lists' mean size times `probe`).
    pub fn mean_probed(&self) -> f64 {
        self.len() as f64 / self.lists().max(1) as f64 * self.cfg.probe.min(self.lists()) as f64
    }

    /// Each state's `k` best items among its candidates, from state vectors `u` `[states, dim]`
    /// and each state's wide offsets `offsets[row]` (`(action, offset)`; actions outside the
    /// index are ignored; an empty `offsets`: no state has any, another length is an error).
    pub fn search(&self, u: &Tensor, offsets: &[Vec<(i64, f32)>], k: usize) -> anyhow::Result<Vec<Ranked>> {
        let (states, dim) = u.size2().context("state vectors must be [states, dim]")?;
        anyhow::ensure!(dim as usize == self.dim, "state vectors of width {dim}, items of {}", self.dim);
        let u = Vec::<f32>::try_from(u.to_kind(Kind::Float).to_device(tch::Device::Cpu).contiguous().view([-1]))
            .context("state vectors")?;
        anyhow::ensure!(
            offsets.is_empty() || offsets.len() == states as usize,
            "{} lists of wide offsets for {states} states",
            offsets.len()
        );
        let none = Vec::new();
        Ok((0..states as usize)
            .map(|r| {
                self.search_one(
                    &u[r * self.dim..(r + 1) * self.dim],
                    if offsets.is_empty() { &none } else { &offsets[r] },
                    k,
                )
            })
            .collect())
    }

    fn search_one(&self, u: &[f32], offsets: &[(i64, f32)], k: usize) -> Ranked {
        let mut top = Top::new(k);
        if k == 0 {
            return top.into_ranked();
        }
        let d = self.dim;
        // The lists whose centroids score highest against [u, 1].
        let mut scored: Vec<(f32, usize)> = (0..self.lists())
            .map(|l| {
                let c = &self.centroids[l * (d + 1)..(l + 1) * (d + 1)];
                (dot(u, &c[..d]) + c[d], l)
            })
            .collect();
        let probe = self.cfg.probe.min(scored.len());
        if probe < scored.len() {
            scored.select_nth_unstable_by(probe - 1, |a, b| b.0.total_cmp(&a.0));
            scored.truncate(probe);
        }
        let mut probed = vec![false; self.lists()];
        let mut paired: Vec<i64> = offsets.iter().map(|o| o.0).collect();
        paired.sort_unstable();
        for &(_, l) in &scored {
            probed[l] = true;
            for row in self.starts[l]..self.starts[l + 1] {
                let q = dot(u, &self.vecs[row * d..(row + 1) * d]) + self.bias[row];
                // A paired item is scored below, with its offset.
                if top.admits(q) && paired.binary_search(&self.items[row]).is_err() {
                    top.push(self.items[row], q);
                }
            }
        }
        let exact = |item: i64| -> Option<f32> {
            let row = *self.row_of.get(usize::try_from(item).ok()?)? as usize;
            Some(dot(u, &self.vecs[row * d..(row + 1) * d]) + self.bias[row])
        };
        let mut seen_pair = Vec::with_capacity(offsets.len());
        for &(item, offset) in offsets {
            if let (Some(q), Err(at)) = (exact(item), seen_pair.binary_search(&item)) {
                seen_pair.insert(at, item);
                top.push(item, q + offset);
            }
        }
        for &item in self.popular.iter().take(self.cfg.popular) {
            let list = self.list_of[item as usize] as usize;
            if !probed[list] && paired.binary_search(&item).is_err() {
                if let Some(q) = exact(item) {
                    top.push(item, q);
                }
            }
        }
        top.into_ranked()
    }

    /// Orders the items list by list (a counting sort of `list_of`).
    fn group(&mut self, lists: usize) {
        let mut starts = vec![0usize; lists + 1];
        for &l in &self.list_of {
            starts[l as usize + 1] += 1;
        }
        for l in 0..lists {
            starts[l + 1] += starts[l];
        }
        let mut next = starts.clone();
        let mut items = vec![0i64; self.list_of.len()];
        let mut row_of = vec![0u32; self.list_of.len()];
        for (item, &l) in self.list_of.iter().enumerate() {
            let row = next[l as usize];
            next[l as usize] += 1;
            items[row] = item as i64;
            row_of[item] = row as u32;
        }
        self.starts = starts;
        self.items = items;
        self.row_of = row_of;
    }

    /// Reads the rows of `x` `[n, dim + 1]` in list order, the centroids as their lists' means
    /// (an empty list's centroid scores -inf, so it is never probed) and the popular items.
    fn read_rows(&mut self, x: &Tensor) -> anyhow::Result<()> {
        let d = self.dim;
        let order = Tensor::from_slice(&self.items);
        let rows = Vec::<f32>::try_from(x.index_select(0, &order).view([-1])).context("item rows")?;
        let n = self.items.len();
        self.vecs = Vec::with_capacity(n * d);
        self.bias = Vec::with_capacity(n);
        for row in rows.chunks_exact(d + 1) {
            self.vecs.extend_from_slice(&row[..d]);
            self.bias.push(row[d]);
        }
        let lists = self.lists();
        self.centroids = vec![0.0; lists * (d + 1)];
        for l in 0..lists {
            let (from, to) = (self.starts[l], self.starts[l + 1]);
            let c = &mut self.centroids[l * (d + 1)..(l + 1) * (d + 1)];
            if from == to {
                c[d] = f32::NEG_INFINITY;
                continue;
            }
            for row in from..to {
                for (ci, vi) in c[..d].iter_mut().zip(&self.vecs[row * d..(row + 1) * d]) {
                    *ci += vi;
                }
                c[d] += self.bias[row];
            }
            let size = (to - from) as f32;
            c.iter_mut().for_each(|ci| *ci /= size);
        }
        let mut by_bias: Vec<usize> = (0..n).collect();
        let keep = self.cfg.popular.min(n);
        if keep > 0 && keep < n {
            by_bias.select_nth_unstable_by(keep - 1, |&a, &b| self.bias[b].total_cmp(&self.bias[a]));
        }
        by_bias.truncate(keep);
        by_bias.sort_unstable_by(|&a, &b| self.bias[b].total_cmp(&self.bias[a]));
        self.popular = by_bias.into_iter().map(|row| self.items[row]).collect();
        Ok(())
    }
}

/// The rows `[v, b]` `[n, dim + 1]` on the CPU.
fn augmented(v: &Tensor, b: &Tensor) -> Tensor {
    Tensor::cat(&[v.to_kind(Kind::Float), b.to_kind(Kind::Float).view([-1, 1])], 1)
        .to_device(tch::Device::Cpu)
        .contiguous()
}

/// k-means (Lloyd's) of the rows of `x` `[n, dim]` into `lists` centroids, trained on a sample
/// of at most 32 rows per centroid; starts from sampled rows; an emptied centroid stays put.
fn kmeans(x: &Tensor, lists: usize, iterations: usize, seed: u64) -> anyhow::Result<Tensor> {
    let n = x.size()[0] as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let m = n.min(lists * 32).max(lists);
    let rows: Vec<i64> = sample(&mut rng, n, m).into_iter().map(|i| i as i64).collect();
    let train = x.index_select(0, &Tensor::from_slice(&rows));
    let mut c = train.narrow(0, 0, lists as i64).copy();
    let ones = Tensor::ones([m as i64], (Kind::Float, x.device()));
    for _ in 0..iterations {
        let assign = Tensor::from_slice(&nearest(&train, &c)?);
        let sums = Tensor::zeros_like(&c).index_add(0, &assign, &train);
        let counts = Tensor::zeros([lists as i64], (Kind::Float, x.device())).index_add(0, &assign, &ones);
        let moved = sums / counts.clamp_min(1.0).unsqueeze(1);
        c = moved.where_self(&counts.gt(0.0).unsqueeze(1), &c);
    }
    Ok(c)
}

/// The nearest centroid (Euclidean) of each row of `x`, block by block.
fn nearest(x: &Tensor, c: &Tensor) -> anyhow::Result<Vec<i64>> {
    const BLOCK: i64 = 16_384;
    let n = x.size()[0];
    let c_sq = c.square().sum_dim_intlist(1, false, Kind::Float);
    let mut out = Vec::with_capacity(n as usize);
    let mut start = 0;
    while start < n {
        let len = BLOCK.min(n - start);
        // |x - c|² = |x|² - 2 x·c + |c|²; |x|² does not change the argmin.
        let d = x.narrow(0, start, len).mm(&c.tr()) * -2.0 + &c_sq;
        out.extend(Vec::<i64>::try_from(d.argmin(1, false)).context("k-means assignment")?);
        start += len;
    }
    Ok(out)
}

/// `a · b`, eight lanes at a time (so the compiler vectorises it).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The `k` best `(item, value)` seen, best first.
struct Top {
    k: usize,
    best: Vec<(i64, f32)>,
}

impl Top {
    fn new(k: usize) -> Self {
        Top { k, best: Vec::with_capacity(k + 1) }
    }

    /// Whether `q` would enter.
    fn admits(&self, q: f32) -> bool {
        self.best.len() < self.k || self.best.last().is_some_and(|&(_, worst)| q > worst)
    }

    fn push(&mut self, item: i64, q: f32) {
        if !self.admits(q) {
            return;
        }
        let at = self.best.partition_point(|&(_, v)| v >= q);
        self.best.insert(at, (item, q));
        self.best.truncate(self.k);
    }

    fn into_ranked(self) -> Ranked {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(lists: usize, probe: usize, popular: usize) -> IvfConfig {
        IvfConfig { lists, probe, popular, recluster_every: 2, iterations: 8, seed: 7 }
    }

    /// `n` items in `groups` clusters of width 0.05 around random centres, dim 8.
    fn clustered(n: i64, groups: i64) -> (Tensor, Tensor) {
        let _guard = super::super::net::torch_rng_guard();
        tch::manual_seed(3);
        let centres = Tensor::randn([groups, 8], (Kind::Float, tch::Device::Cpu));
        let which = Tensor::arange(n, (Kind::Int64, tch::Device::Cpu)).remainder(groups);
        let v = centres.index_select(0, &which) + Tensor::randn([n, 8], (Kind::Float, tch::Device::Cpu)) * 0.05;
        let b = Tensor::randn([n], (Kind::Float, tch::Device::Cpu)) * 0.1;
        (v, b)
    }

    fn exact(u: &Tensor, v: &Tensor, b: &Tensor, offsets: &[Vec<(i64, f32)>], k: i64) -> Vec<Vec<i64>> {
        let q = b.addmm(u, &v.tr());
        for (r, list) in offsets.iter().enumerate() {
            for &(a, o) in list {
                let mut cell = q.get(r as i64).get(a);
                cell += f64::from(o);
            }
        }
        Vec::<Vec<i64>>::try_from(q.topk(k, 1, true, true).1).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn probing_every_list_is_the_exact_top_k_offsets_included() {
        let (v, b) = clustered(600, 12);
        let ivf = Ivf::build(&v, &b, cfg(12, 12, 0)).unwrap_or_else(|e| panic!("{e}"));
        let u = {
            let _guard = super::super::net::torch_rng_guard();
            tch::manual_seed(5);
            Tensor::randn([6, 8], (Kind::Float, tch::Device::Cpu))
        };
        let offsets = vec![vec![(3, 50.0f32)], vec![(599, -50.0), (10, 0.5)], vec![], vec![(7, 1.0)], vec![], vec![]];
        let got = ivf.search(&u, &offsets, 5).unwrap_or_else(|e| panic!("{e}"));
        let want = exact(&u, &v, &b, &offsets, 5);
        let got_items: Vec<Vec<i64>> = got.iter().map(|r| r.iter().map(|x| x.0).collect()).collect();
        assert_eq!(got_items, want);
        assert_eq!(got[0][0].0, 3, "a large offset wins wherever its item's list is");
        assert!(got.iter().all(|r| r.windows(2).all(|w| w[0].1 >= w[1].1)), "best first");
    }

    #[test]
    fn few_probed_lists_find_clustered_best_items_and_pairs_and_popular_items_are_candidates() {
        let (v, b) = clustered(2_000, 20);
        let ivf = Ivf::build(&v, &b, cfg(20, 5, 0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ivf.lists(), 20);
        assert!((ivf.mean_probed() - 500.0).abs() < 1e-9);
        // States pointing at items' cluster centres: their best items lie in the probed lists.
        let u = v.narrow(0, 0, 50) * 3.0;
        let none = vec![Vec::new(); 50];
        let got = ivf.search(&u, &none, 1).unwrap_or_else(|e| panic!("{e}"));
        let want = exact(&u, &v, &b, &none, 1);
        let hits = got.iter().zip(&want).filter(|(g, w)| g[0].0 == w[0]).count();
        assert!(hits >= 45, "recall@1 {hits}/50 with 5 of 20 lists probed on clustered items");
        // An item outside the probed lists is a candidate through a pair of the state's product.
        let probed_best = got[0][0].0;
        let far = (0..2_000)
            .find(|&i| ivf.list_of[i as usize] != ivf.list_of[probed_best as usize])
            .unwrap_or_else(|| panic!("every item in one list"));
        let pair = ivf.search(&u.narrow(0, 0, 1), &[vec![(far, 1e6)]], 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pair[0][0].0, far);
        // ... or through its bias. A zero state scores each item by its bias and probes the list
        // of largest mean bias: lift one list's biases to 1 and one item elsewhere to 5.
        let state = Tensor::zeros([1, 8], (Kind::Float, tch::Device::Cpu));
        for popular in [0, 1] {
            let mut ivf =
                Ivf::build(&v, &b, IvfConfig { probe: 1, ..cfg(20, 1, popular) }).unwrap_or_else(|e| panic!("{e}"));
            let lifted = ivf.list_of[0];
            let biggest_other =
                (0..20u32).filter(|&l| l != lifted).max_by_key(|&l| ivf.list_of.iter().filter(|&&x| x == l).count());
            let star = ivf
                .list_of
                .iter()
                .position(|&l| Some(l) == biggest_other)
                .unwrap_or_else(|| panic!("no item in a second list")) as i64;
            let mut b2 = Vec::<f32>::try_from(&b).unwrap_or_else(|e| panic!("{e}"));
            for (i, l) in ivf.list_of.iter().enumerate() {
                if *l == lifted {
                    b2[i] = 1.0;
                }
            }
            b2[star as usize] = 5.0;
            ivf.refresh(&v, &Tensor::from_slice(&b2)).unwrap_or_else(|e| panic!("{e}"));
            let top = ivf.search(&state, &none[..1], 1).unwrap_or_else(|e| panic!("{e}"));
            if popular == 1 {
                assert_eq!(top[0][0].0, star, "the item of largest bias is a candidate of every state");
            } else {
                assert_eq!(ivf.list_of[top[0][0].0 as usize], lifted, "without it only the probed list counts");
            }
        }
    }

    #[test]
    fn a_refresh_reads_the_new_rows_and_keeps_the_lists() {
        let (v, b) = clustered(500, 5);
        let mut ivf = Ivf::build(&v, &b, cfg(5, 5, 0)).unwrap_or_else(|e| panic!("{e}"));
        let lists = ivf.list_of.clone();
        let b2 = &b - Tensor::arange(500, (Kind::Float, tch::Device::Cpu));
        ivf.refresh(&v, &b2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ivf.list_of, lists);
        assert!(!ivf.recluster_due());
        ivf.refresh(&v, &b2).unwrap_or_else(|e| panic!("{e}"));
        assert!(ivf.recluster_due(), "k-means is due after recluster_every refreshes");
        assert_eq!(ivf.list_of, lists, "a refresh never re-clusters by itself");
        let u = Tensor::zeros([1, 8], (Kind::Float, tch::Device::Cpu));
        let got = ivf.search(&u, &[Vec::new()], 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got[0][0].0, exact(&u, &v, &b2, &[Vec::new()], 1)[0][0], "the new biases count");
        assert!(ivf.refresh(&v.narrow(0, 0, 10), &b2.narrow(0, 0, 10)).is_err(), "another item count is refused");
    }
}
