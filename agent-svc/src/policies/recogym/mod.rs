//! Policies of RecoGym states (`Policy<RecoStateMsg>`). RecoGym's protocol: a policy is trained
//! on the logs of a logging policy (uniform random by default), then serves new users frozen.
//! The logs come from the pipeline (a logging run read back from the RecoGym topics,
//! [`logs::log_from_messages`]) or, in one process, from `recogym::generate_logs`; either way
//! they are a `recogym::Log`, and [`build`] returns the policy already trained on it.
//!
//! `random`, `organic-count` and `user-count` are the `recogym` crate's own agents, `likelihood`
//! and `nn` implement its `Agent` trait here (so they also run in `recogym::ab::run`); all five
//! serve through [`Served`], which keeps one agent per user in flight. `dqn` is the fashion DQN
//! behind an adapter ([`dqn`]).

pub mod dqn;
pub mod likelihood;
pub mod logs;
pub mod nn;

use std::collections::HashMap;

use protocol::RecoStateMsg;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use recogym::{Agent, Context, Log, OrganicCountAgent, OrganicUserCountAgent, OrganicView, RandomAgent};

use self::{dqn::RecoDqn, likelihood::LikelihoodAgent, nn::NnAgent};
use super::{Choice, DqnArgs, Feedback, Policy, PolicyKind};

/// Settings of the RecoGym policies besides the DQN's; flags with environment fallbacks.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct RecoGymPolicyArgs {
    /// L2 penalty of `--policy likelihood` on its weights (1 = scikit-learn's default C = 1).
    #[arg(long, env = "LIKELIHOOD_L2", default_value_t = 1.0)]
    pub likelihood_l2: f64,
    #[command(flatten)]
    pub nn: nn::NnArgs,
    /// How the RecoGym policies (not `dqn`) explore around their choice: `greedy` (as trained),
    /// `epsilon:E` (uniform with probability E; any of them), `softmax:T` (over the model's
    /// logits at temperature T; `likelihood` and `nn`). Every action carries its probability
    /// under the result, so a logging run with exploration can be evaluated off-policy.
    #[arg(long, env = "RECOGYM_EXPLORATION", default_value = "greedy")]
    pub recogym_exploration: Exploration,
}

impl Default for RecoGymPolicyArgs {
    fn default() -> Self {
        Self { likelihood_l2: 1.0, nn: nn::NnArgs::default(), recogym_exploration: Exploration::Greedy }
    }
}

/// How a served RecoGym agent explores around the product it names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Exploration {
    /// The agent's own choice and probabilities.
    Greedy,
    /// With probability `eps` a uniformly drawn product, else the agent's choice.
    Epsilon(f64),
    /// A product drawn from the softmax of the agent's logits divided by the temperature.
    Softmax(f64),
}

impl std::str::FromStr for Exploration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let number = |v: &str, what: &str| -> Result<f64, String> {
            v.parse::<f64>().map_err(|_| format!("{what} '{v}' is not a number"))
        };
        match s.split_once(':') {
            None if s == "greedy" => Ok(Self::Greedy),
            Some(("epsilon", v)) => {
                let eps = number(v, "epsilon")?;
                if (0.0..=1.0).contains(&eps) {
                    Ok(Self::Epsilon(eps))
                } else {
                    Err(format!("epsilon {eps} is not in [0, 1]"))
                }
            }
            Some(("softmax", v)) => {
                let t = number(v, "temperature")?;
                if t > 0.0 && t.is_finite() {
                    Ok(Self::Softmax(t))
                } else {
                    Err(format!("temperature {t} is not positive"))
                }
            }
            _ => Err(format!("'{s}' is not greedy, epsilon:E or softmax:T")),
        }
    }
}

impl std::fmt::Display for Exploration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Greedy => f.write_str("greedy"),
            Self::Epsilon(e) => write!(f, "epsilon:{e}"),
            Self::Softmax(t) => write!(f, "softmax:{t}"),
        }
    }
}

/// An agent served through [`Served`]: a `recogym` agent, with its logits when it has a model
/// that gives them (for `softmax` exploration).
pub trait ServedAgent: Agent + Clone + Send {
    /// The logit of every product for what the agent has been shown of the current user so far
    /// (after its last `act`); `None` when the agent has no such scores.
    fn logits(&self) -> Option<Vec<f64>> {
        None
    }
}

impl ServedAgent for RandomAgent {}
impl ServedAgent for OrganicCountAgent {}
impl ServedAgent for OrganicUserCountAgent {}

/// The policies of RecoGym states.
pub const POLICIES: &[PolicyKind] = &[
    PolicyKind::Random,
    PolicyKind::Dqn,
    PolicyKind::OrganicCount,
    PolicyKind::UserCount,
    PolicyKind::Likelihood,
    PolicyKind::Nn,
];

/// The agent of `agent-svc run --env recogym`: with `--train-env-id`, its policy trained first
/// on that logging run, read back from `topics`; without, built on the first state it sees.
pub(crate) async fn core_for_run(
    cfg: &crate::RunArgs,
    topics: &common::kafka::Topics,
) -> anyhow::Result<crate::core::AgentCore<RecoStateMsg>> {
    use anyhow::Context as _;
    let Some(env_id) = &cfg.train_env_id else { return cfg.agent.try_build_recogym(None) };
    let since_ms = cfg.train_since.map(|d| common::kafka::now_ms() - d.as_millis() as i64);
    let log = crate::read_training_log(&cfg.stack.kafka, &cfg.stack.registry, topics, env_id, since_ms).await?;
    let products = logs::products_in(&log);
    anyhow::ensure!(products > 0, "the logging run {env_id} has no message on {}", topics.state_topic);
    let agent = cfg.agent.clone();
    tokio::task::spawn_blocking(move || agent.try_build_recogym(Some((&log, products))))
        .await
        .context("training panicked")?
}

/// Whether `kind` learns only from logs (and so needs them before it can serve well).
pub fn needs_logs(kind: PolicyKind) -> bool {
    matches!(kind, PolicyKind::OrganicCount | PolicyKind::Likelihood | PolicyKind::Nn)
}

/// Builds a RecoGym policy over `products` products, trained on `log` when given; `seed` seeds
/// the random choices (the random policy draws user `u`'s actions from `(seed, u)`, as
/// `recogym::RandomAgent` does, so the same seed logs the same actions in any process).
pub fn build(
    kind: PolicyKind,
    products: u32,
    log: Option<&Log>,
    args: &RecoGymPolicyArgs,
    dqn: &DqnArgs,
    seed: u64,
) -> anyhow::Result<Box<dyn Policy<RecoStateMsg>>> {
    anyhow::ensure!(products > 0, "a recogym policy needs at least one product");
    fn served<A: ServedAgent + 'static>(
        name: &'static str,
        mut agent: A,
        log: Option<&Log>,
        explore: Exploration,
        seed: u64,
    ) -> Box<dyn Policy<RecoStateMsg>> {
        if let Some(log) = log {
            agent.train(log);
        }
        Box::new(Served::new(name, agent).exploring(explore, seed))
    }
    let name = kind.name();
    let explore = args.recogym_exploration;
    if let Exploration::Softmax(_) = explore {
        anyhow::ensure!(
            matches!(kind, PolicyKind::Likelihood | PolicyKind::Nn),
            "--recogym-exploration {explore} needs a policy with logits (likelihood, nn), not {name}"
        );
    }
    anyhow::ensure!(
        kind != PolicyKind::Dqn || explore == Exploration::Greedy,
        "--recogym-exploration {explore} does not apply to dqn, which explores by its own --dqn-epsilon flags"
    );
    Ok(match kind {
        PolicyKind::Random => served(name, RandomAgent::new(products, seed, true), None, explore, seed),
        PolicyKind::OrganicCount => served(name, OrganicCountAgent::new(products, true), log, explore, seed),
        PolicyKind::UserCount => {
            let mut agent = OrganicUserCountAgent::new(products, seed, true);
            agent.select_randomly = false;
            served(name, agent, None, explore, seed)
        }
        PolicyKind::Likelihood => served(name, LikelihoodAgent::new(products, args.likelihood_l2), log, explore, seed),
        PolicyKind::Nn => served(name, NnAgent::new(products, args.nn.clone(), seed), log, explore, seed),
        PolicyKind::Dqn => {
            let mut policy = RecoDqn::new(dqn, seed)?;
            if let Some(log) = log {
                policy.train(log, products)?;
            }
            Box::new(policy)
        }
        PolicyKind::Popularity | PolicyKind::Cooccurrence => {
            anyhow::bail!("policy {name} runs on the fashion environment only")
        }
    })
}

/// The user's organic view counts so far (RecoGym's `CountFeatureProvider`).
#[derive(Debug, Clone, PartialEq)]
pub struct UserCounts {
    counts: Vec<f64>,
}

impl UserCounts {
    /// Zero counts over `products` products.
    pub fn new(products: u32) -> Self {
        Self { counts: vec![0.0; products as usize] }
    }

    /// Back to zero (a new user).
    pub fn reset(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0.0);
    }

    /// Counts `views` (views of unknown products are ignored).
    pub fn add(&mut self, views: &[OrganicView]) {
        for v in views {
            if let Some(c) = self.counts.get_mut(v.product as usize) {
                *c += 1.0;
            }
        }
    }

    /// The counts, one per product.
    pub fn counts(&self) -> &[f64] {
        &self.counts
    }
}

/// Probability 1 on `product`, 0 elsewhere.
pub fn one_hot(products: u32, product: u32) -> Vec<f64> {
    let mut all = vec![0.0; products as usize];
    if let Some(p) = all.get_mut(product as usize) {
        *p = 1.0;
    }
    all
}

/// The views of a state, as the `recogym` crate's agents take them.
pub fn views_of(state: &RecoStateMsg) -> Vec<OrganicView> {
    state.organic.iter().map(|v| OrganicView { time: v.t, product: v.product }).collect()
}

/// Builds a RecoGym policy for a number of products.
type MakePolicy = Box<dyn FnOnce(u32) -> anyhow::Result<Box<dyn Policy<RecoStateMsg>>> + Send>;

/// Builds the policy on the first state it sees (whose `n_actions` gives the number of
/// products). A policy that cannot be built is an error of that first call, and of every call
/// after it: nothing else answers in its place.
pub struct Lazy {
    name: &'static str,
    make: Option<MakePolicy>,
    inner: Option<Box<dyn Policy<RecoStateMsg>>>,
    failed: Option<String>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy").field("name", &self.name).field("built", &self.inner.is_some()).finish()
    }
}

impl Lazy {
    /// A policy named `name` that `make(products)` builds on first use.
    pub fn new(
        name: &'static str,
        make: impl FnOnce(u32) -> anyhow::Result<Box<dyn Policy<RecoStateMsg>>> + Send + 'static,
    ) -> Self {
        Self { name, make: Some(Box::new(make)), inner: None, failed: None }
    }

    fn inner(&mut self, products: u32) -> anyhow::Result<&mut Box<dyn Policy<RecoStateMsg>>> {
        if let Some(make) = self.make.take() {
            match make(products) {
                Ok(p) => self.inner = Some(p),
                Err(e) => self.failed = Some(format!("{e:#}")),
            }
        }
        let (name, failed) = (self.name, &self.failed);
        self.inner.as_mut().ok_or_else(|| match failed {
            Some(why) => anyhow::anyhow!("policy {name} cannot start: {why}"),
            None => anyhow::anyhow!("policy {name} is built on the first state and has seen none"),
        })
    }
}

impl Policy<RecoStateMsg> for Lazy {
    fn name(&self) -> &'static str {
        self.name
    }

    fn observe(&mut self, state: &RecoStateMsg) -> anyhow::Result<()> {
        self.inner(state.n_actions)?.observe(state)
    }

    fn act(&mut self, states: &[&RecoStateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
        Ok(self.act_full(states, rng)?.into_iter().map(|c| (c.action, c.ps)).collect())
    }

    fn act_full(&mut self, states: &[&RecoStateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<Choice>> {
        let Some(first) = states.first() else { return Ok(Vec::new()) };
        self.inner(first.n_actions)?.act_full(states, rng)
    }

    fn learn(&mut self, feedback: &Feedback<'_, RecoStateMsg>) -> anyhow::Result<()> {
        self.inner(feedback.prev.n_actions)?.learn(feedback)
    }

    fn top_k(&mut self, states: &[&RecoStateMsg], k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
        let Some(first) = states.first() else { return Ok(Vec::new()) };
        self.inner(first.n_actions)?.top_k(states, k)
    }

    fn set_eval(&mut self, eval: bool) -> anyhow::Result<()> {
        self.inner.as_mut().map_or(Ok(()), |p| p.set_eval(eval))
    }

    fn save(&mut self) -> anyhow::Result<()> {
        self.inner.as_mut().map_or(Ok(()), |p| p.save())
    }

    fn model_version(&self) -> Option<u64> {
        self.inner.as_ref().and_then(|p| p.model_version())
    }
}

/// Users remembered at most; beyond, the table is cleared (users abandoned by a dead env run
/// never send their terminal state).
const MAX_USERS: usize = 100_000;

/// A `recogym` agent serving the pipeline: each user in flight gets its own copy of the trained
/// agent (reset for that user: the agent's per-user state and random stream), fed that user's
/// states in order, dropped at the user's terminal state. Learns nothing while serving.
#[derive(Debug)]
pub struct Served<A> {
    name: &'static str,
    trained: A,
    users: HashMap<String, A>,
    explore: Exploration,
    seed: u64,
}

impl<A: ServedAgent> Served<A> {
    /// Serves copies of `trained` under the policy name `name`, as the agent chooses.
    pub fn new(name: &'static str, trained: A) -> Self {
        Self { name, trained, users: HashMap::new(), explore: Exploration::Greedy, seed: 0 }
    }

    /// The same, exploring as `explore` says; the draw of each step comes from `(seed, episode,
    /// step)` alone, so a run is the same whatever the order in which users are served.
    pub fn exploring(self, explore: Exploration, seed: u64) -> Self {
        Self { explore, seed, ..self }
    }

    fn choose(&mut self, s: &RecoStateMsg) -> anyhow::Result<Choice> {
        if self.users.len() >= MAX_USERS && !self.users.contains_key(&s.episode_id) {
            tracing::warn!(open = self.users.len(), policy = self.name, "forgetting the state of unfinished users");
            self.users.clear();
        }
        let trained = &self.trained;
        let agent = self.users.entry(s.episode_id.clone()).or_insert_with(|| {
            let mut agent = trained.clone();
            agent.reset_user(s.user_id);
            agent
        });
        let ctx = Context { user_id: s.user_id, time: s.time, last_click: (s.step > 0).then_some(s.reward > 0.5) };
        let action = agent.act(&views_of(s), &ctx);
        let n = s.n_actions.max(1);
        let (product, all) = match self.explore {
            Exploration::Greedy => {
                return Ok(Choice { action: action.product, ps: action.ps, ps_all: action.ps_all.filter(|_| s.ps_all) })
            }
            Exploration::Epsilon(eps) => {
                let own = action.ps_all.clone().unwrap_or_else(|| one_hot(n, action.product));
                let all: Vec<f64> = own.iter().map(|p| (1.0 - eps) * p + eps / f64::from(n)).collect();
                let mut rng = step_rng(self.seed, s);
                let product =
                    if eps > 0.0 && rng.random::<f64>() < eps { rng.random_range(0..n) } else { action.product };
                (product, all)
            }
            Exploration::Softmax(t) => {
                let logits = agent.logits().ok_or_else(|| {
                    anyhow::anyhow!("policy {} has no logits to explore by softmax (not trained?)", self.name)
                })?;
                let all = softmax(&logits, t);
                let u: f64 = step_rng(self.seed, s).random();
                (draw(&all, u), all)
            }
        };
        let ps = all.get(product as usize).copied().unwrap_or(0.0);
        Ok(Choice { action: product, ps, ps_all: s.ps_all.then_some(all) })
    }
}

/// The random stream of one step of one episode: exploration draws from it.
fn step_rng(seed: u64, s: &RecoStateMsg) -> ChaCha8Rng {
    use rand_chacha::rand_core::SeedableRng;
    let key = format!("{seed}/{}/{}", s.episode_id, s.step);
    ChaCha8Rng::seed_from_u64(xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// `softmax(logits / t)`.
pub fn softmax(logits: &[f64], t: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|z| ((z - max) / t).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

/// The action whose cumulative probability first passes `u` (the last one when rounding leaves
/// `u` above the total).
fn draw(probs: &[f64], u: f64) -> u32 {
    let mut acc = 0.0;
    for (a, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return a as u32;
        }
    }
    probs.len().saturating_sub(1) as u32
}

impl<A: ServedAgent> Policy<RecoStateMsg> for Served<A> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn observe(&mut self, state: &RecoStateMsg) -> anyhow::Result<()> {
        if state.terminated || state.truncated {
            self.users.remove(&state.episode_id);
        }
        Ok(())
    }

    fn act(&mut self, states: &[&RecoStateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
        Ok(self.act_full(states, rng)?.into_iter().map(|c| (c.action, c.ps)).collect())
    }

    fn act_full(&mut self, states: &[&RecoStateMsg], _rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<Choice>> {
        states.iter().map(|s| self.choose(s)).collect()
    }

    /// RecoGym's agents learn from logs only (`build`), not while serving.
    fn learn(&mut self, _feedback: &Feedback<'_, RecoStateMsg>) -> anyhow::Result<()> {
        Ok(())
    }

    /// No ranking: these agents only name their one recommendation (which changes their
    /// per-user state), so no list is returned.
    fn top_k(&mut self, states: &[&RecoStateMsg], _k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
        Ok(vec![Vec::new(); states.len()])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use protocol::messages::examples;
    use rand_chacha::rand_core::SeedableRng;
    use recogym::{Event, LogRow};

    use super::*;

    /// 200 users over 4 products: user `u` views product `u % 4` three times, then is shown
    /// every product in turn (twice) and clicks exactly the product it viewed.
    pub(crate) fn toy_log() -> Log {
        let mut rows = Vec::new();
        for u in 0..200u64 {
            let p = (u % 4) as u32;
            let mut t = 0;
            for _ in 0..3 {
                rows.push(LogRow { t, u, z: Event::Organic, v: Some(p), a: None, c: None, ps: None, ps_all: None });
                t += 1;
            }
            for a in (0..8).map(|i| i % 4) {
                rows.push(LogRow {
                    t,
                    u,
                    z: Event::Bandit,
                    v: None,
                    a: Some(a),
                    c: Some(a == p),
                    ps: Some(0.25),
                    ps_all: None,
                });
                t += 1;
            }
        }
        Log { rows }
    }

    /// DQN settings from flags, defaults for the rest.
    pub(crate) fn dqn_args(flags: &[&str]) -> DqnArgs {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            dqn: DqnArgs,
        }
        common::cli::parse_flags::<Cli>(std::iter::once("agent").chain(flags.iter().copied())).dqn
    }

    fn state(ep: &str, user: u64, step: u32, views: &[u32]) -> RecoStateMsg {
        let mut s = examples::reco_state();
        (s.episode_id, s.user_id, s.step, s.n_actions) = (ep.into(), user, step, 6);
        s.organic = views.iter().map(|&product| protocol::OrganicView { t: 0, product }).collect();
        s
    }

    fn answer(policy: &mut dyn Policy<RecoStateMsg>, s: &RecoStateMsg) -> Choice {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        policy.observe(s).unwrap_or_else(|e| panic!("{e:#}"));
        policy.act_full(&[s], &mut rng).unwrap_or_else(|e| panic!("{e:#}")).remove(0)
    }

    #[test]
    fn user_count_picks_each_users_most_viewed_product_so_far() {
        let none = RecoGymPolicyArgs::default();
        let dqn = dqn_args(&[]);
        let mut p = build(PolicyKind::UserCount, 6, None, &none, &dqn, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer(p.as_mut(), &state("a", 1, 0, &[5, 2, 5])).action, 5);
        // Another user in flight has counts of its own.
        assert_eq!(answer(p.as_mut(), &state("b", 2, 0, &[1])).action, 1);
        // The first user's counts carry over its steps: 2 is now viewed three times.
        let c = answer(p.as_mut(), &state("a", 1, 1, &[2, 2]));
        assert_eq!((c.action, c.ps, c.ps_all), (2, 1.0, None), "ps_all only when asked");
    }

    #[test]
    fn organic_count_trained_on_logs_recommends_the_most_co_viewed() {
        let none = RecoGymPolicyArgs::default();
        let dqn = dqn_args(&[]);
        // Sessions: [1, 3, 3] twice, [4, 1]: after a view of 1, product 3 is co-viewed most.
        let rows = [(0, 1), (0, 3), (0, 3), (1, 1), (1, 3), (1, 3), (2, 4), (2, 1)]
            .into_iter()
            .enumerate()
            .map(|(t, (u, v))| LogRow {
                t: t as u64,
                u,
                z: Event::Organic,
                v: Some(v),
                a: None,
                c: None,
                ps: None,
                ps_all: None,
            })
            .collect();
        let log = Log { rows };
        let mut p = build(PolicyKind::OrganicCount, 6, Some(&log), &none, &dqn, 0).unwrap_or_else(|e| panic!("{e}"));
        let mut s = state("a", 1, 0, &[4, 1]);
        s.ps_all = true;
        let c = answer(p.as_mut(), &s);
        assert_eq!((c.action, c.ps), (3, 1.0));
        assert_eq!(c.ps_all, Some(vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0]));
    }

    #[test]
    fn random_is_uniform_and_draws_per_user_as_recogyms_random_agent() {
        let none = RecoGymPolicyArgs::default();
        let dqn = dqn_args(&[]);
        let mut p = build(PolicyKind::Random, 6, None, &none, &dqn, 42).unwrap_or_else(|e| panic!("{e}"));
        let mut reference = RandomAgent::new(6, 42, false);
        reference.reset_user(9);
        let ctx = Context { user_id: 9, time: 0, last_click: None };
        for step in 0..20 {
            let mut s = state("u9", 9, step, &[]);
            s.ps_all = true;
            let c = answer(p.as_mut(), &s);
            assert_eq!(c.action, reference.act(&[], &ctx).product);
            assert!((c.ps - 1.0 / 6.0).abs() < 1e-12);
            assert_eq!(c.ps_all.map(|a| a.len()), Some(6));
        }
    }

    /// Serves `steps` steps of distinct episodes of user 1 (who viewed product 2) over 4
    /// products under `explore`, and returns the choices.
    fn explored(kind: PolicyKind, explore: Exploration, steps: u32) -> Vec<Choice> {
        let args = RecoGymPolicyArgs { recogym_exploration: explore, ..RecoGymPolicyArgs::default() };
        let log = toy_log();
        let mut p = build(kind, 4, Some(&log), &args, &dqn_args(&[]), 7).unwrap_or_else(|e| panic!("{e:#}"));
        (0..steps)
            .map(|i| {
                let mut s = state(&format!("e{i}"), 1, 0, &[2, 2]);
                (s.n_actions, s.ps_all) = (4, true);
                answer(p.as_mut(), &s)
            })
            .collect()
    }

    /// How often each of 4 products was chosen, as fractions.
    fn frequencies(choices: &[Choice]) -> Vec<f64> {
        let mut n = [0usize; 4];
        choices.iter().for_each(|c| n[c.action as usize] += 1);
        n.iter().map(|&k| k as f64 / choices.len() as f64).collect()
    }

    #[test]
    fn epsilon_exploration_logs_the_probability_it_draws_with() {
        let greedy = explored(PolicyKind::OrganicCount, Exploration::Greedy, 1)[0].action;
        let choices = explored(PolicyKind::OrganicCount, Exploration::Epsilon(0.2), 4000);
        let expected: Vec<f64> = (0..4).map(|a| if a == greedy { 0.8 + 0.05 } else { 0.05 }).collect();
        for c in &choices {
            let all = c.ps_all.as_ref().unwrap_or_else(|| panic!("ps_all was asked for"));
            assert!(all.iter().zip(&expected).all(|(p, e)| (p - e).abs() < 1e-12), "{all:?}");
            assert!((c.ps - expected[c.action as usize]).abs() < 1e-12, "ps is the chosen action's");
        }
        // 4000 draws: the standard error of a frequency is at most 0.008; 5 of them is 0.04.
        for (f, e) in frequencies(&choices).iter().zip(&expected) {
            assert!((f - e).abs() < 0.04, "frequency {f} against probability {e}");
        }
        // The draw of a step depends on (seed, episode, step) alone: serving again, in another
        // policy instance, gives the same actions.
        let again = explored(PolicyKind::OrganicCount, Exploration::Epsilon(0.2), 4000);
        assert!(choices.iter().zip(&again).all(|(a, b)| a.action == b.action));
    }

    #[test]
    fn softmax_exploration_draws_from_the_models_logits() {
        let choices = explored(PolicyKind::Likelihood, Exploration::Softmax(0.5), 4000);
        let all = choices[0].ps_all.clone().unwrap_or_else(|| panic!("ps_all was asked for"));
        assert!((all.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(all.iter().all(|&p| p > 0.0), "softmax gives every product some mass: {all:?}");
        // The same user and views in every episode: the same distribution each time.
        assert!(choices.iter().all(|c| c.ps_all.as_ref() == Some(&all) && c.ps == all[c.action as usize]));
        // A cooler softmax is sharper around the same favourite.
        let cool =
            explored(PolicyKind::Likelihood, Exploration::Softmax(0.05), 1)[0].ps_all.clone().unwrap_or_default();
        let top = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        assert!(top(&cool) > top(&all), "{cool:?} vs {all:?}");
        for (f, p) in frequencies(&choices).iter().zip(&all) {
            assert!((f - p).abs() < 0.04, "frequency {f} against probability {p}");
        }
    }

    #[test]
    fn softmax_needs_logits_and_dqn_explores_its_own_way() {
        let dqn = dqn_args(&[]);
        let soft = RecoGymPolicyArgs { recogym_exploration: Exploration::Softmax(1.0), ..RecoGymPolicyArgs::default() };
        let err = build(PolicyKind::OrganicCount, 4, None, &soft, &dqn, 0).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("logits")), "{err:?}");
        let eps = RecoGymPolicyArgs { recogym_exploration: Exploration::Epsilon(0.1), ..RecoGymPolicyArgs::default() };
        assert!(build(PolicyKind::Dqn, 4, None, &eps, &dqn, 0).is_err());
        for bad in ["epsilon:1.5", "softmax:0", "softmax:x", "boltzmann:1", "epsilon"] {
            assert!(bad.parse::<Exploration>().is_err(), "{bad} should be refused");
        }
        for good in ["greedy", "epsilon:0.2", "softmax:0.5"] {
            assert_eq!(good.parse::<Exploration>().map(|e| e.to_string()).as_deref(), Ok(good));
        }
    }

    #[test]
    fn fashion_only_policies_are_refused() {
        let none = RecoGymPolicyArgs::default();
        let dqn = dqn_args(&[]);
        assert!(build(PolicyKind::Popularity, 6, None, &none, &dqn, 0).is_err());
        assert!(crate::policies::build(PolicyKind::Likelihood, 0.1, &dqn, 0).is_err());
    }
}
