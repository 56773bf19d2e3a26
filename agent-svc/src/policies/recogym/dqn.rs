//! `--policy dqn` on RecoGym: the DQN ([`Dqn`]) unchanged, reading a [`RecoView`] of each
//! RecoGym state (its [`DqnState`]): the text is the user's organic views so far, one token per
//! view (`"p3 p3 p7"`, the most recent `--dqn-max-tokens`), the item the last view.
//!
//! Why this is sound: the DQN reads a bag (MLP: the mean of token embeddings, i.e. an embedding
//! of the user's view shares) or a sequence (LSTM) of tokens, which is exactly the information
//! RecoGym gives an agent; the Q-value of an action is its expected click (plus, with
//! `--dqn-gamma > 0`, later clicks). Two fashion options are forced off because they would be
//! wrong here: the product id token (there is no current product) and hindsight relabelling
//! (a RecoGym click does not follow from the views that come after it). Trained offline on the
//! logs (every logged recommendation is one transition, replayed through the learner with
//! back-pressure, so none is dropped), then frozen and greedy, as RecoGym's protocol wants.

use std::collections::{HashMap, VecDeque};

use protocol::RecoStateMsg;
use rand_chacha::ChaCha8Rng;
use recogym::{Event, Log};

use super::one_hot;
use crate::policies::{
    dqn::{Dqn, DqnArgs, DqnState, Hindsight, Relabel},
    Choice, Feedback, Policy,
};

/// Episodes the adapter remembers at most (their views so far).
const MAX_EPISODES: usize = 100_000;

/// What the DQN reads of a RecoGym state: the user's views so far, and the state's place.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoView {
    episode_id: String,
    step: u32,
    n_actions: u32,
    /// The views, oldest first, one `p<product>` token each.
    text: String,
    /// The last view (0 when none yet).
    last: u32,
    terminated: bool,
    truncated: bool,
}

impl RecoView {
    /// The view of `s` whose user viewed `views` (oldest first).
    fn new(s: &RecoStateMsg, views: &VecDeque<u32>) -> Self {
        let text: Vec<String> = views.iter().map(|p| format!("p{p}")).collect();
        Self {
            episode_id: s.episode_id.clone(),
            step: s.step,
            n_actions: s.n_actions,
            text: text.join(" "),
            last: views.back().copied().unwrap_or(0),
            terminated: s.terminated,
            truncated: s.truncated,
        }
    }
}

impl DqnState for RecoView {
    fn episode_id(&self) -> &str {
        &self.episode_id
    }
    fn step(&self) -> u32 {
        self.step
    }
    fn n_actions(&self) -> u32 {
        self.n_actions
    }
    /// RecoGym's products are numbered 0..n: the count is the whole catalogue.
    fn catalog(&self) -> Option<&str> {
        None
    }
    fn item(&self) -> u32 {
        self.last
    }
    fn text(&self) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(&self.text)
    }
    /// A view has no product of its own.
    fn id_token(&self) -> Option<&str> {
        None
    }
    fn describes_item(&self) -> bool {
        // The words are the user's views, not the item's own: items are known by id alone.
        false
    }
    fn terminated(&self) -> bool {
        self.terminated
    }
    fn truncated(&self) -> bool {
        self.truncated
    }
    fn steered(&self) -> bool {
        // A click, and so what follows, depends on the recommendation.
        true
    }
    fn relabel(&self) -> Relabel {
        // What another recommendation would have earned is not observed.
        Relabel::Unsound
    }
}

#[derive(Debug, Default)]
struct Episode {
    views: VecDeque<u32>,
    prev: Option<RecoView>,
    cur: Option<RecoView>,
}

/// The DQN serving RecoGym states.
#[derive(Debug)]
pub struct RecoDqn {
    inner: Dqn<RecoView>,
    max_tokens: usize,
    episodes: HashMap<String, Episode>,
}

impl RecoDqn {
    /// The DQN of `args` with the RecoGym settings forced (no id token, no hindsight, learner
    /// back-pressure).
    pub fn new(args: &DqnArgs, seed: u64) -> anyhow::Result<Self> {
        let mut args = args.clone();
        args.dqn_id_token = false;
        args.dqn_hindsight = Hindsight::Off;
        args.dqn_backpressure = true;
        let max_tokens = args.dqn_max_tokens.max(1);
        Ok(Self { inner: Dqn::new(&args, seed)?, max_tokens, episodes: HashMap::new() })
    }

    fn push_views(views: &mut VecDeque<u32>, products: impl IntoIterator<Item = u32>, max: usize) {
        for p in products {
            if views.len() == max {
                views.pop_front();
            }
            views.push_back(p);
        }
    }

    /// Learns from the logs: every recommendation of every user is a transition from the
    /// user's views before it to their views before the next one (terminal after the last),
    /// then the network is frozen and greedy.
    pub fn train(&mut self, log: &Log, products: u32) -> anyhow::Result<()> {
        let proto = RecoStateMsg { n_actions: products, ..protocol::messages::examples::reco_state() };
        // The network is built on first sight of a state (which gives the action space).
        self.inner.top_k(&[&RecoView::new(&proto, &VecDeque::new())], 1)?;
        let mut fed = 0u64;
        for user in log.rows.chunk_by(|a, b| a.u == b.u) {
            let mut views = VecDeque::new();
            // (state before the recommendation, action, click)
            let mut pending: Option<(RecoView, u32, bool)> = None;
            let mut step = 0;
            let state_at = |views: &VecDeque<u32>, step: u32, terminated: bool| {
                let s = RecoStateMsg { step, terminated, episode_id: format!("log-{}", user[0].u), ..proto.clone() };
                RecoView::new(&s, views)
            };
            for row in user {
                match (row.z, row.v, row.a, row.c) {
                    (Event::Organic, Some(v), _, _) => Self::push_views(&mut views, [v], self.max_tokens),
                    (Event::Bandit, _, Some(a), Some(c)) if a < products => {
                        let state = state_at(&views, step, false);
                        if let Some((prev, pa, pc)) = pending.take() {
                            self.learn_one(&prev, pa, pc, &state)?;
                            fed += 1;
                        }
                        pending = Some((state, a, c));
                        step += 1;
                    }
                    _ => {}
                }
            }
            if let Some((prev, a, c)) = pending {
                self.learn_one(&prev, a, c, &state_at(&views, step, true))?;
                fed += 1;
            }
        }
        tracing::info!(transitions = fed, "dqn trained on the logs");
        self.inner.set_eval(true)
    }

    fn learn_one(&mut self, prev: &RecoView, action: u32, click: bool, next: &RecoView) -> anyhow::Result<()> {
        let reward = f64::from(u8::from(click));
        self.inner.learn(&Feedback { prev, prev_index: prev.last, action, reward, next })
    }

    fn current(&self, s: &RecoStateMsg) -> RecoView {
        match self.episodes.get(&s.episode_id).and_then(|e| e.cur.as_ref()) {
            Some(cur) if cur.step == s.step => cur.clone(),
            // Not observed (called outside the agent core): this step's views only.
            _ => {
                let mut views = VecDeque::new();
                Self::push_views(&mut views, s.organic.iter().map(|v| v.product), self.max_tokens);
                RecoView::new(s, &views)
            }
        }
    }
}

impl Policy<RecoStateMsg> for RecoDqn {
    fn name(&self) -> &'static str {
        "dqn"
    }

    fn observe(&mut self, s: &RecoStateMsg) -> anyhow::Result<()> {
        if self.episodes.len() >= MAX_EPISODES && !self.episodes.contains_key(&s.episode_id) {
            tracing::warn!(open = self.episodes.len(), "dqn forgets the views of unfinished users");
            self.episodes.clear();
        }
        let max = self.max_tokens;
        let ep = self.episodes.entry(s.episode_id.clone()).or_default();
        Self::push_views(&mut ep.views, s.organic.iter().map(|v| v.product), max);
        ep.prev = ep.cur.take();
        ep.cur = Some(RecoView::new(s, &ep.views));
        if s.terminated || s.truncated {
            // Kept until `learn` saw the last transition; dropped at the next call otherwise.
            ep.views.clear();
        }
        Ok(())
    }

    fn act(&mut self, states: &[&RecoStateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>> {
        let views: Vec<RecoView> = states.iter().map(|s| self.current(s)).collect();
        let refs: Vec<&RecoView> = views.iter().collect();
        self.inner.act(&refs, rng)
    }

    fn act_full(&mut self, states: &[&RecoStateMsg], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<Choice>> {
        let chosen = self.act(states, rng)?;
        let eps = self.inner.epsilon();
        let mut out = Vec::with_capacity(chosen.len());
        for ((action, ps), s) in chosen.into_iter().zip(states) {
            let ps_all = if s.ps_all {
                // Epsilon-greedy: eps / n everywhere, plus 1 - eps on the greedy action.
                let n = s.n_actions.max(1);
                let greedy =
                    if eps == 0.0 { action } else { self.top_k(&[s], 1)?[0].first().copied().unwrap_or(action) };
                let mut all = one_hot(n, greedy);
                all.iter_mut().for_each(|p| *p = *p * (1.0 - eps) + eps / f64::from(n));
                Some(all)
            } else {
                None
            };
            out.push(Choice { action, ps, ps_all });
        }
        Ok(out)
    }

    fn learn(&mut self, fb: &Feedback<'_, RecoStateMsg>) -> anyhow::Result<()> {
        let ended = fb.next.terminated || fb.next.truncated;
        if let Some(ep) = self.episodes.get(&fb.next.episode_id) {
            if let (Some(prev), Some(next)) = (&ep.prev, &ep.cur) {
                let (prev, next) = (prev.clone(), next.clone());
                self.inner.learn(&Feedback {
                    prev: &prev,
                    prev_index: prev.last,
                    action: fb.action,
                    reward: fb.reward,
                    next: &next,
                })?;
            }
        }
        if ended {
            self.episodes.remove(&fb.next.episode_id);
        }
        Ok(())
    }

    fn top_k(&mut self, states: &[&RecoStateMsg], k: usize) -> anyhow::Result<Vec<Vec<u32>>> {
        let views: Vec<RecoView> = states.iter().map(|s| self.current(s)).collect();
        let refs: Vec<&RecoView> = views.iter().collect();
        self.inner.top_k(&refs, k)
    }

    fn set_eval(&mut self, eval: bool) -> anyhow::Result<()> {
        self.inner.set_eval(eval)
    }

    fn save(&mut self) -> anyhow::Result<()> {
        self.inner.save()
    }

    fn model_version(&self) -> Option<u64> {
        self.inner.model_version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recogym_state_reads_as_its_users_views() {
        let s = protocol::messages::examples::reco_state();
        let views: VecDeque<u32> = [7, 3, 3].into_iter().collect();
        let v = RecoView::new(&s, &views);
        assert_eq!((v.text().as_ref(), v.id_token()), ("p7 p3 p3", None));
        assert_eq!((v.item(), v.n_actions(), v.step(), v.catalog()), (3, s.n_actions, s.step, None));
        let mut capped = VecDeque::new();
        RecoDqn::push_views(&mut capped, [1, 2, 3, 4], 3);
        assert_eq!(capped, VecDeque::from(vec![2, 3, 4]), "the most recent views are kept");
    }
}
