//! Off-policy evaluation: what would a target policy have earned on logged traffic?
//!
//! The input is one [`Row`] per logged decision: the action the logging policy took, the
//! probability it gave that action when it took it (`pscore`), the reward that followed, the
//! target policy's probabilities over every action ([`Dist`]) and a reward model's predictions
//! (for the logged action and in expectation under the target). [`evaluate`] returns four
//! estimates of the target's value per decision, each with a bootstrap interval over episodes:
//!
//! - **IPS**: `mean(w·r)` with `w = π_e(a|x) / π_b(a|x)`; unbiased when the logging policy gave
//!   every action the target takes a positive probability; high variance.
//! - **SNIPS**: `Σ w·r / Σ w`; slightly biased, much steadier.
//! - **DM** (direct method): `mean(Σ_a π_e(a|x) q̂(x, a))`; as good as the reward model.
//! - **DR** (doubly robust): `mean(DM term + w·(r − q̂(x, a)))`; unbiased when either the weights
//!   or the model are right.
//!
//! The formulas are the Open Bandit Pipeline's (`obp.ope`, no clipping) and agree with it to
//! float precision (`scripts/ope_obp.sh`). Rows are resampled by **episode** (the decisions of
//! one user are not independent), seeded, so an interval is reproducible.
//!
//! Nothing is hidden: a row whose propensity is not a probability is refused and counted, the
//! effective sample size `(Σw)² / Σw²` is reported, and [`Evaluation::warnings`] says when the
//! target puts mass where the logging policy never acted or on actions it gave a tiny share of
//! the target's probability (heavy importance weights), so nobody trusts an estimate without
//! support. Pure: no I/O but the chart ([`plot`]).

pub mod plot;

use anyhow::ensure;
use rand::Rng;
use rand_chacha::{rand_core::SeedableRng, ChaCha8Rng};
use serde::Serialize;

/// A policy's probabilities over the actions `0..k`: `uniform` spread evenly over all of them,
/// plus point masses. A greedy policy is one point of mass 1; an epsilon-greedy one is
/// `uniform = eps` plus `1 - eps` on its choice; a softmax over ten products is ten points.
/// Sparse, so a catalogue of 100,000 products costs nothing for the policies that explore
/// uniformly.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dist {
    /// Number of actions.
    pub k: u32,
    /// Mass spread evenly over every action.
    pub uniform: f64,
    /// Extra mass on single actions (an action may appear once).
    pub points: Vec<(u32, f64)>,
}

impl Dist {
    /// Probability 1 on `action`.
    pub fn point(k: u32, action: u32) -> Self {
        Self { k, uniform: 0.0, points: vec![(action, 1.0)] }
    }

    /// Uniform over the `k` actions with probability `eps`, else `greedy`.
    pub fn epsilon_greedy(k: u32, greedy: u32, eps: f64) -> Self {
        Self { k, uniform: eps, points: vec![(greedy, 1.0 - eps)] }
    }

    /// A dense vector of probabilities, one per action.
    pub fn dense(probs: &[f64]) -> Self {
        let points = probs.iter().enumerate().filter(|(_, p)| **p != 0.0).map(|(a, p)| (a as u32, *p)).collect();
        Self { k: probs.len() as u32, uniform: 0.0, points }
    }

    /// `(1 - eps) · self + eps · uniform`.
    pub fn mixed_with_uniform(&self, eps: f64) -> Self {
        Self {
            k: self.k,
            uniform: self.uniform * (1.0 - eps) + eps,
            points: self.points.iter().map(|&(a, p)| (a, p * (1.0 - eps))).collect(),
        }
    }

    /// The probability of `action`.
    pub fn prob(&self, action: u32) -> f64 {
        if action >= self.k {
            return 0.0;
        }
        self.uniform / f64::from(self.k.max(1))
            + self.points.iter().filter(|(a, _)| *a == action).map(|(_, p)| p).sum::<f64>()
    }

    /// Fails unless this is a probability distribution over `0..k` (within 1e-9).
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(self.k > 0, "a distribution over no action");
        ensure!(self.uniform.is_finite() && self.uniform >= 0.0, "uniform mass {} is not a probability", self.uniform);
        let mut total = self.uniform;
        for &(a, p) in &self.points {
            ensure!(a < self.k, "action {a} outside 0..{}", self.k);
            ensure!(p.is_finite() && p >= 0.0, "mass {p} of action {a} is not a probability");
            total += p;
        }
        ensure!((total - 1.0).abs() < 1e-9, "the probabilities sum to {total}, not 1");
        Ok(())
    }

    /// `Σ_a π(a) q(a)`, with `q_mean` the mean of `q` over all `k` actions (for the uniform part).
    pub fn expect(&self, q: impl Fn(u32) -> f64, q_mean: f64) -> f64 {
        self.uniform * q_mean + self.points.iter().map(|&(a, p)| p * q(a)).sum::<f64>()
    }

    /// The probability of every action, `k` values.
    pub fn to_dense(&self) -> Vec<f64> {
        let mut all = vec![self.uniform / f64::from(self.k.max(1)); self.k as usize];
        for &(a, p) in &self.points {
            if let Some(slot) = all.get_mut(a as usize) {
                *slot += p;
            }
        }
        all
    }

    /// Mass on actions outside `seen` (sorted, distinct).
    pub fn mass_outside(&self, seen: &[u32]) -> f64 {
        let unseen = f64::from(self.k).max(1.0) - seen.len() as f64;
        let spread = self.uniform * unseen.max(0.0) / f64::from(self.k.max(1));
        spread + self.points.iter().filter(|(a, _)| seen.binary_search(a).is_err()).map(|(_, p)| p).sum::<f64>()
    }
}

/// One logged decision, with what the target policy and the reward model say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The episode (user) it belongs to, `0..episodes`: the unit of the bootstrap.
    pub episode: usize,
    /// The action the logging policy took.
    pub action: u32,
    /// The logging policy's probability of that action, recorded when it acted.
    pub pscore: f64,
    /// The reward that followed.
    pub reward: f64,
    /// The target policy's probabilities in this context.
    pub target: Dist,
    /// The reward model's prediction for the logged action, `q̂(x, a)`.
    pub q_logged: f64,
    /// The reward model's prediction under the target, `Σ_a π_e(a|x) q̂(x, a)`.
    pub q_target: f64,
}

/// The four estimators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Estimator {
    /// Inverse propensity scoring.
    Ips,
    /// Self-normalised IPS.
    Snips,
    /// Direct method (the reward model).
    Dm,
    /// Doubly robust.
    Dr,
}

impl Estimator {
    /// Every estimator, in report order.
    pub const ALL: [Estimator; 4] = [Estimator::Ips, Estimator::Snips, Estimator::Dm, Estimator::Dr];

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Ips => "ips",
            Estimator::Snips => "snips",
            Estimator::Dm => "dm",
            Estimator::Dr => "dr",
        }
    }

    /// The key OBP gives it in `estimate_policy_values`.
    pub fn obp_name(self) -> &'static str {
        match self {
            Estimator::Ips => "ipw",
            Estimator::Snips => "snipw",
            Estimator::Dm => "dm",
            Estimator::Dr => "dr",
        }
    }
}

/// Settings of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Bootstrap replicates (episodes drawn with replacement).
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// Coverage of the intervals, e.g. 0.95.
    pub confidence: f64,
    /// A row whose importance weight exceeds this is "heavy" (warned): the logging policy gave
    /// the action less than `1 / max_weight` of the target's probability. A weight, not a
    /// propensity: over 97,694 products a uniformly explored action has a propensity of 5e-6
    /// and is no problem when the target explores the same way (weight about 1).
    pub max_weight: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self { bootstrap: 1000, seed: 1, confidence: 0.95, max_weight: 100.0 }
    }
}

/// A value with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    /// Point estimate on all rows.
    pub value: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
}

impl Interval {
    /// Whether `x` lies in `[lo, hi]`.
    pub fn covers(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }

    /// `hi - lo`.
    pub fn width(&self) -> f64 {
        self.hi - self.lo
    }
}

/// One estimator's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// Which estimator.
    pub estimator: Estimator,
    /// Its value and interval.
    #[serde(flatten)]
    pub interval: Interval,
}

/// How well the data supports the target policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Support {
    /// Kish's effective sample size of the importance weights, `(Σw)² / Σw²`.
    pub ess: f64,
    /// `ess / rows`.
    pub ess_fraction: f64,
    /// The largest importance weight.
    pub max_weight: f64,
    /// Mean importance weight (1 in expectation when the target is supported).
    pub mean_weight: f64,
    /// Rows where the target took the logged action at all (`w > 0`).
    pub rows_matching: u64,
    /// Mean target mass on actions the logging policy never took anywhere in the data.
    pub mass_never_logged: f64,
    /// Actions the logging policy took at least once.
    pub actions_logged: u64,
    /// Rows whose importance weight exceeds [`Config::max_weight`].
    pub heavy_rows: u64,
    /// The share of the total importance weight those rows carry (0 when there are none).
    pub heavy_weight_share: f64,
}

/// Everything [`evaluate`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Rows used.
    pub rows: u64,
    /// Episodes they came from.
    pub episodes: u64,
    /// Rows refused: a propensity that is not in (0, 1], or a reward that is not finite.
    pub refused_rows: u64,
    /// The logging policy's observed value: the mean reward of the rows, with its interval.
    pub logged: Interval,
    /// One per estimator, in [`Estimator::ALL`] order.
    pub estimates: Vec<Estimate>,
    /// Support diagnostics.
    pub support: Support,
    /// Reasons not to trust some estimate, in words; empty when none.
    pub warnings: Vec<String>,
    /// The settings.
    pub config: Config,
}

impl Evaluation {
    /// The estimate of `estimator`.
    pub fn get(&self, estimator: Estimator) -> Interval {
        self.estimates
            .iter()
            .find(|e| e.estimator == estimator)
            .map_or(Interval { value: f64::NAN, lo: f64::NAN, hi: f64::NAN }, |e| e.interval)
    }
}

/// Sums of one episode's rows: enough to compute every estimate of any resample.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    n: f64,
    reward: f64,
    wr: f64,
    w: f64,
    dm: f64,
    dr: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.n += o.n;
        self.reward += o.reward;
        self.wr += o.wr;
        self.w += o.w;
        self.dm += o.dm;
        self.dr += o.dr;
    }

    /// logged mean, IPS, SNIPS, DM, DR.
    fn values(&self) -> [f64; 5] {
        let n = self.n.max(1.0);
        let snips = if self.w > 0.0 { self.wr / self.w } else { f64::NAN };
        [self.reward / n, self.wr / n, snips, self.dm / n, self.dr / n]
    }
}

/// Whether a row can be used: a propensity in (0, 1] and finite numbers.
fn usable(r: &Row) -> bool {
    r.pscore > 0.0
        && r.pscore <= 1.0 + 1e-12
        && r.reward.is_finite()
        && r.q_logged.is_finite()
        && r.q_target.is_finite()
}

/// The importance weight of a row.
pub fn weight(r: &Row) -> f64 {
    r.target.prob(r.action) / r.pscore
}

/// The four estimates of the target's value per decision, their intervals, the logged value and
/// the support diagnostics. Fails on no usable row or an invalid target distribution (naming
/// the row); refuses (and counts) rows whose propensity is not a probability.
pub fn evaluate(rows: &[Row], config: &Config) -> anyhow::Result<Evaluation> {
    ensure!(config.bootstrap >= 2, "the bootstrap needs at least 2 replicates, not {}", config.bootstrap);
    ensure!(config.confidence > 0.0 && config.confidence < 1.0, "confidence {} is not in (0, 1)", config.confidence);
    let episodes = rows.iter().map(|r| r.episode + 1).max().unwrap_or(0);
    let mut per_episode = vec![Sums::default(); episodes];
    let mut seen: Vec<u32> = Vec::new();
    let (mut used, mut refused) = (0u64, 0u64);
    let (mut sw, mut sw2, mut max_w, mut matching, mut heavy, mut heavy_w, mut outside) =
        (0.0, 0.0, 0.0_f64, 0u64, 0u64, 0.0, 0.0);
    for (i, r) in rows.iter().enumerate() {
        if !usable(r) {
            refused += 1;
            continue;
        }
        r.target.check().map_err(|e| anyhow::anyhow!("row {i} (episode {}): target: {e}", r.episode))?;
        seen.push(r.action);
        let w = weight(r);
        let s = &mut per_episode[r.episode];
        s.n += 1.0;
        s.reward += r.reward;
        s.wr += w * r.reward;
        s.w += w;
        s.dm += r.q_target;
        s.dr += r.q_target + w * (r.reward - r.q_logged);
        used += 1;
        sw += w;
        sw2 += w * w;
        max_w = max_w.max(w);
        if w > 0.0 {
            matching += 1;
        }
        if w > config.max_weight {
            heavy += 1;
            heavy_w += w;
        }
    }
    ensure!(used > 0, "no usable logged decision ({refused} refused: propensity not in (0, 1] or a reward not finite)");
    seen.sort_unstable();
    seen.dedup();
    for r in rows.iter().filter(|r| usable(r)) {
        outside += r.target.mass_outside(&seen);
    }
    let live: Vec<Sums> = per_episode.into_iter().filter(|s| s.n > 0.0).collect();
    let mut total = Sums::default();
    live.iter().for_each(|s| total.add(s));
    let point = total.values();

    // Bootstrap over episodes.
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut draws: Vec<[f64; 5]> = Vec::with_capacity(config.bootstrap);
    for _ in 0..config.bootstrap {
        let mut s = Sums::default();
        for _ in 0..live.len() {
            s.add(&live[rng.random_range(0..live.len())]);
        }
        draws.push(s.values());
    }
    let interval = |j: usize| {
        let mut v: Vec<f64> = draws.iter().map(|d| d[j]).filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let alpha = (1.0 - config.confidence) / 2.0;
        Interval { value: point[j], lo: quantile(&v, alpha), hi: quantile(&v, 1.0 - alpha) }
    };
    let n = used as f64;
    let ess = if sw2 > 0.0 { sw * sw / sw2 } else { 0.0 };
    let support = Support {
        ess,
        ess_fraction: ess / n,
        max_weight: max_w,
        mean_weight: sw / n,
        rows_matching: matching,
        mass_never_logged: outside / n,
        actions_logged: seen.len() as u64,
        heavy_rows: heavy,
        heavy_weight_share: if sw > 0.0 { heavy_w / sw } else { 0.0 },
    };
    let warnings = warnings(&support, used, refused, config);
    Ok(Evaluation {
        rows: used,
        episodes: live.len() as u64,
        refused_rows: refused,
        logged: interval(0),
        estimates: Estimator::ALL
            .iter()
            .enumerate()
            .map(|(j, &e)| Estimate { estimator: e, interval: interval(j + 1) })
            .collect(),
        support,
        warnings,
        config: config.clone(),
    })
}

/// The `q`-quantile of sorted values (linear interpolation); NaN when there are none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The reasons not to trust an estimate, in words.
fn warnings(s: &Support, rows: u64, refused: u64, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if refused > 0 {
        out.push(format!(
            "{refused} logged decisions refused (propensity not in (0, 1] or a reward not finite): they are not in any estimate"
        ));
    }
    if s.mass_never_logged > 0.01 {
        out.push(format!(
            "the target puts {:.1}% of its mass on actions the logging policy never took ({} of the actions were ever logged): IPS, SNIPS and DR cannot see that part, and DM only extrapolates there",
            100.0 * s.mass_never_logged,
            s.actions_logged
        ));
    }
    if s.rows_matching == 0 {
        out.push(
            "the target never takes a logged action: IPS is 0 and SNIPS undefined whatever the target is worth".into(),
        );
    } else if s.ess_fraction < 0.01 {
        out.push(format!(
            "effective sample size {:.0} of {rows} rows ({:.2}%): IPS, SNIPS and DR rest on few decisions",
            s.ess,
            100.0 * s.ess_fraction
        ));
    }
    if s.heavy_rows > 0 {
        out.push(format!(
            "{} rows with an importance weight above {} (the logging policy gave the action less than 1/{} of the target's probability; largest weight {:.0}); they carry {:.1}% of the importance weight: IPS and DR {} them",
            s.heavy_rows,
            config.max_weight,
            config.max_weight,
            s.max_weight,
            100.0 * s.heavy_weight_share,
            if s.heavy_weight_share >= 0.5 { "are dominated by" } else { "are sensitive to" }
        ));
    }
    if s.rows_matching > 0 && (s.mean_weight - 1.0).abs() > 0.1 && s.ess_fraction >= 0.01 {
        out.push(format!(
            "mean importance weight {:.3}, not about 1: the logged propensities may not be the ones the logging policy used, or the target is poorly supported",
            s.mean_weight
        ));
    }
    out
}

/// A plain-text table of an evaluation: one line per estimator, the logged value, the support.
/// `truth`, when known, adds each estimate's error and whether its interval covers it.
pub fn table(ev: &Evaluation, truth: Option<f64>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>10} {:>10} {:>9}{}",
        "estimator",
        "value",
        "lo",
        "hi",
        "width",
        if truth.is_some() { "  rel.error  covers" } else { "" }
    );
    let mut line = |name: &str, i: &Interval| {
        let _ = write!(out, "{name:<10} {:>10.5} {:>10.5} {:>10.5} {:>9.5}", i.value, i.lo, i.hi, i.width());
        if let Some(t) = truth {
            let _ =
                write!(out, "  {:>+9.1}%  {:>6}", 100.0 * (i.value - t) / t, if i.covers(t) { "yes" } else { "no" });
        }
        out.push('\n');
    };
    line("logged", &ev.logged);
    for e in &ev.estimates {
        line(e.estimator.name(), &e.interval);
    }
    let s = &ev.support;
    let _ = writeln!(
        out,
        "rows {} from {} episodes ({} refused); ESS {:.0} ({:.1}%); max weight {:.1}; mean weight {:.3}; target mass on never-logged actions {:.2}%",
        ev.rows,
        ev.episodes,
        ev.refused_rows,
        s.ess,
        100.0 * s.ess_fraction,
        s.max_weight,
        s.mean_weight,
        100.0 * s.mass_never_logged
    );
    if let Some(t) = truth {
        let _ = writeln!(out, "truth {t:.5}");
    }
    for w in &ev.warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
    out
}

/// Mean binary log loss of predictions `p` against outcomes `y` (probabilities clamped to
/// [1e-12, 1 - 1e-12]): how good a reward model is on held-out rows.
pub fn log_loss(p: &[f64], y: &[f64]) -> f64 {
    let n = p.len().min(y.len()).max(1) as f64;
    p.iter()
        .zip(y)
        .map(|(&p, &y)| {
            let p = p.clamp(1e-12, 1.0 - 1e-12);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum::<f64>()
        / n
}

#[cfg(test)]
mod tests;
