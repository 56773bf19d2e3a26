//! The environments agent-svc serves, one arm each: the policy set of each (the policies that
//! read its state message) and how its agent is built for a run. The one list of environments
//! on the agent side: a new environment adds an arm to [`policy_set`] and to [`serve`], and its
//! policies in its own module under `crate::policies`.

use std::sync::{atomic::Ordering, Arc};

use common::kafka::{EnvKind, Topics};
use tokio_util::sync::CancellationToken;

use crate::{
    core::AgentStats,
    learn::Learning,
    policies::{self, PolicyKind},
    RunArgs,
};

/// The policies that serve `env`.
pub fn policy_set(env: EnvKind) -> &'static [PolicyKind] {
    match env {
        EnvKind::Fashion => policies::FASHION_POLICIES,
        EnvKind::Recogym => policies::recogym::POLICIES,
    }
}

/// `agent-svc run`: builds the agent of `--env` and serves its states on `topics` until stopped.
pub(crate) async fn serve(cfg: &RunArgs, topics: &Topics, shutdown: CancellationToken) -> anyhow::Result<AgentStats> {
    anyhow::ensure!(
        cfg.agent.frozen_epsilon == 0.0 || cfg.learning == Learning::Frozen,
        "--frozen-epsilon {} is the exploration of --learning frozen, and this agent runs --learning {}",
        cfg.agent.frozen_epsilon,
        format!("{:?}", cfg.learning).to_lowercase()
    );
    match cfg.stack.env {
        EnvKind::Fashion if cfg.learning == Learning::Shared => {
            let (inbox, follower) = crate::learn::start_follower(cfg)?;
            let served =
                async { crate::serve(cfg.agent.try_build_serving(Arc::clone(&inbox))?, cfg, topics, shutdown).await }
                    .await;
            inbox.stop();
            let _ = tokio::task::spawn_blocking(move || follower.join()).await;
            let mut stats = served?;
            stats.weights_received = Some(inbox.received.load(Ordering::Relaxed));
            stats.weights_rejected = Some(inbox.rejected.load(Ordering::Relaxed));
            Ok(stats)
        }
        EnvKind::Fashion if cfg.learning == Learning::Frozen => {
            crate::serve(cfg.agent.try_build_frozen()?, cfg, topics, shutdown).await
        }
        EnvKind::Fashion => crate::serve(cfg.agent.try_build()?, cfg, topics, shutdown).await,
        EnvKind::Recogym => {
            anyhow::ensure!(
                cfg.learning == Learning::Local,
                "--learning shared and frozen serve --env fashion only: RecoGym's agents train on a logging run (--train-env-id)"
            );
            let core = policies::recogym::core_for_run(cfg, topics).await?;
            crate::serve(core, cfg, topics, shutdown).await
        }
    }
}
