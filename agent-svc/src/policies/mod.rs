//! Policies: how the agent picks a product for a state, and what it learns from rewards.
//! A policy sees only what arrives on the state topic: it never reads the dataset or the
//! simulator. [`Policy`] is generic over the state message: `Policy` alone (the default) is a
//! policy of Amazon Fashion states (`StateMsg`), `Policy<RecoStateMsg>` one of RecoGym states
//! (see [`recogym`]).

mod cooccurrence;
pub mod dqn;
mod popularity;
mod random;
pub mod recogym;

pub use cooccurrence::Cooccurrence;
pub use dqn::{Dqn, DqnArgs};
pub use popularity::Popularity;
pub use random::Random;

use common::kafka::EnvKind;
use protocol::StateMsg;
use rand_chacha::ChaCha8Rng;

/// Which policy to run. Each runs on one environment (`--env`): `random` and `dqn` on both;
/// `popularity` and `cooccurrence` on `fashion`; `organic-count`, `user-count`, `likelihood`
/// and `nn` on `recogym`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyKind {
    /// Uniform over the action space.
    Random,
    /// The product rewarded most often so far (ties: the product seen most often in states),
    /// epsilon-greedy (fashion).
    Popularity,
    /// The product that most often followed the current one in the stream (item-to-item),
    /// epsilon-greedy (fashion).
    Cooccurrence,
    /// Deep Q-Network over the state's text on libtorch (the reference paper's agent), with
    /// its own epsilon schedule (`--dqn-*` flags; `--epsilon` does not apply). On RecoGym the
    /// text is the user's organic views, one token per view.
    Dqn,
    /// RecoGym's `OrganicCount`: the product most often co-viewed with the user's last organic
    /// view, counted over the organic sessions of the training logs (recogym).
    OrganicCount,
    /// The user's own most viewed product so far (RecoGym's `OrganicUserEventCounterAgent`,
    /// greedy); needs no training (recogym).
    UserCount,
    /// RecoGym's likelihood agent: logistic regression of the click on the user's organic view
    /// counts crossed with the action, fitted on the training logs; greedy (recogym).
    Likelihood,
    /// A 3-layer neural network from the user's organic view counts to the click probability
    /// of each action, fitted on the training logs; greedy (recogym).
    Nn,
}

impl PolicyKind {
    /// The name used on the command line and in actions, e.g. `organic-count`.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Random => "random",
            PolicyKind::Popularity => "popularity",
            PolicyKind::Cooccurrence => "cooccurrence",
            PolicyKind::Dqn => "dqn",
            PolicyKind::OrganicCount => "organic-count",
            PolicyKind::UserCount => "user-count",
            PolicyKind::Likelihood => "likelihood",
            PolicyKind::Nn => "nn",
        }
    }

    /// The environments this policy serves: those whose policy set
    /// ([`crate::envs::policy_set`]) holds it.
    pub fn envs(self) -> Vec<EnvKind> {
        use clap::ValueEnum;
        EnvKind::value_variants().iter().copied().filter(|&env| crate::envs::policy_set(env).contains(&self)).collect()
    }

    /// The policies of `env`'s policy set, by name.
    pub fn of_env(env: EnvKind) -> Vec<&'static str> {
        crate::envs::policy_set(env).iter().map(|k| k.name()).collect()
    }

    /// Refuses a policy that does not serve `env`, naming the ones that do.
    pub fn check_env(self, env: EnvKind) -> Result<(), String> {
        if crate::envs::policy_set(env).contains(&self) {
            return Ok(());
        }
        Err(format!(
            "policy {} does not serve --env {}; its policies are: {}",
            self.name(),
            env.name(),
            Self::of_env(env).join(", ")
        ))
    }
}

/// The policies of Amazon Fashion states (`StateMsg`).
pub const FASHION_POLICIES: &[PolicyKind] =
    &[PolicyKind::Random, PolicyKind::Popularity, PolicyKind::Cooccurrence, PolicyKind::Dqn];

/// What the agent learns after an action: the reward it earned and where it led. `S` is the
/// state message of the environment (`StateMsg` by default).
#[derive(Debug)]
pub struct Feedback<'a, S = StateMsg> {
    /// The state the action answered.
    pub prev: &'a S,
    /// Product index of `prev` (shorthand for `prev.product_index()`).
    pub prev_index: u32,
    /// The action taken.
    pub action: u32,
    /// The reward the env paid for it.
    pub reward: f64,
    /// The state the action led to.
    pub next: &'a S,
}

// Not derived: a derive would ask `S: Copy`, but only references to `S` are held.
impl<S> Clone for Feedback<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Feedback<'_, S> {}

/// One answer of a policy: the action, its probability, and (when the state asked for it) the
/// probability of every action.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The action.
    pub action: u32,
    /// Its probability under the policy (propensity).
    pub ps: f64,
    /// Probability of every action, when asked for and known.
    pub ps_all: Option<Vec<f64>>,
}

/// A recommendation policy over states of type `S` (`StateMsg` by default).
///
/// Every call that can fail returns the failure: a policy that cannot serve (a network that
/// cannot be built, a learner that died) stops the agent loudly instead of answering with
/// something else. Only an explicit fallback (`--policy-fallback`) serves another policy, and
/// its actions then carry that policy's name.
pub trait Policy<S = StateMsg>: Send {
    /// Name carried in every action.
    fn name(&self) -> &'static str;
    /// Chooses an action and its probability under the policy for each state, all at once (a
    /// learned policy batches them through one forward pass).
    fn act(&mut self, states: &[&S], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<(u32, f64)>>;
    /// [`Policy::act`] with the probability of every action where the policy knows it and the
    /// state asks for it (RecoGym's `ps-a`); by default none.
    fn act_full(&mut self, states: &[&S], rng: &mut ChaCha8Rng) -> anyhow::Result<Vec<Choice>> {
        Ok(self.act(states, rng)?.into_iter().map(|(action, ps)| Choice { action, ps, ps_all: None }).collect())
    }
    /// Learns from one transition (`next.terminated` ends bootstrapping; `next.truncated` does not).
    fn learn(&mut self, feedback: &Feedback<'_, S>) -> anyhow::Result<()>;
    /// Whether [`Policy::learn`] learns anything here (a replica serving a shared learner's
    /// weights does not: the learner reads the same steps from the topics).
    fn learns(&self) -> bool {
        true
    }
    /// The `k` best products for each state, best first, without exploration: for evaluation
    /// (HR@k, NDCG@k) and greedy play.
    fn top_k(&mut self, states: &[&S], k: usize) -> anyhow::Result<Vec<Vec<u32>>>;
    /// Evaluation mode: no exploration and no learning (`true`), or back to training.
    fn set_eval(&mut self, _eval: bool) -> anyhow::Result<()> {
        Ok(())
    }
    /// Writes the policy's state to its checkpoint (atomically), e.g. on shutdown.
    fn save(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Notes a state (every state, terminal ones too), before `act`.
    fn observe(&mut self, _state: &S) -> anyhow::Result<()> {
        Ok(())
    }
    /// Version of the model that chooses actions, for learned policies.
    fn model_version(&self) -> Option<u64> {
        None
    }
    /// The exploration rate now, for policies that explore by an epsilon that changes.
    fn epsilon(&self) -> Option<f64> {
        None
    }
    /// Whether it has a model to answer with (a replica of a shared learner: once the first
    /// version arrived); `/readyz` waits for it.
    fn has_model(&self) -> bool {
        true
    }
}

/// Picks the action for one state epsilon-greedily (every exploring policy does it here): explore uniformly with probability `eps`,
/// else take `greedy`; returns the action and its probability under that policy.
pub fn epsilon_greedy<R: rand::Rng>(greedy: u32, n: u32, eps: f64, rng: &mut R) -> (u32, f64) {
    let n = n.max(1);
    let explore = eps / f64::from(n);
    let action = if eps > 0.0 && rng.random::<f64>() < eps { rng.random_range(0..n) } else { greedy.min(n - 1) };
    (action, if action == greedy { 1.0 - eps + explore } else { explore })
}

/// Builds a fashion policy; `dqn` and `seed` configure the DQN (which fails on bad flags or a
/// checkpoint of another network). RecoGym-only policies are refused.
pub fn build(kind: PolicyKind, epsilon: f64, dqn: &DqnArgs, seed: u64) -> anyhow::Result<Box<dyn Policy>> {
    Ok(match kind {
        PolicyKind::Random => Box::new(Random),
        PolicyKind::Popularity => Box::new(Popularity::new(epsilon)),
        PolicyKind::Cooccurrence => Box::new(Cooccurrence::new(epsilon)),
        PolicyKind::Dqn => Box::new(Dqn::<StateMsg>::new(dqn, seed)?),
        PolicyKind::OrganicCount | PolicyKind::UserCount | PolicyKind::Likelihood | PolicyKind::Nn => {
            anyhow::bail!("policy {} runs on RecoGym only (--env recogym)", kind.name())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_environment_has_its_policy_set_and_refuses_the_others() {
        assert_eq!(PolicyKind::of_env(EnvKind::Fashion), ["random", "popularity", "cooccurrence", "dqn"]);
        assert_eq!(
            PolicyKind::of_env(EnvKind::Recogym),
            ["random", "dqn", "organic-count", "user-count", "likelihood", "nn"]
        );
        assert!(PolicyKind::Dqn.check_env(EnvKind::Recogym).is_ok());
        let refused = PolicyKind::Popularity.check_env(EnvKind::Recogym).err().unwrap_or_default();
        assert!(
            refused.contains("popularity does not serve --env recogym") && refused.contains("organic-count"),
            "{refused}"
        );
        assert!(PolicyKind::Nn.check_env(EnvKind::Fashion).is_err());
        // No policy is left out of every set.
        use clap::ValueEnum;
        let orphans: Vec<_> = PolicyKind::value_variants().iter().filter(|k| k.envs().is_empty()).collect();
        assert!(orphans.is_empty(), "{orphans:?}");
        assert_eq!(PolicyKind::Dqn.envs(), [EnvKind::Fashion, EnvKind::Recogym]);
    }
}
