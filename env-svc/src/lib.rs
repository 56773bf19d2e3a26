//! `env-svc`: the environment service. It turns users into episodes (Amazon Fashion review
//! sequences, or RecoGym's simulated users), publishes every state, waits for the agent's action,
//! and pays the reward; it talks to the agent only through a transport (Kafka, or bounded
//! in-process channels for experiments). One engine and one run loop serve every environment.
//!
//! Invariant: the run loop never crashes on input. A record that cannot be decoded or applied
//! is dead-lettered with its reason and counted; the run goes on.

pub mod checker;
pub mod config;
pub mod engine;
pub mod envs;
pub mod link;
pub mod metrics;
#[doc(hidden)]
pub mod testing;

pub use envs::{
    fashion::engine_for,
    recogym::{recogym_engine, recogym_engine_in},
};

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{stream::FuturesUnordered, StreamExt};
use protocol::{ActionMsg, Codec};
use tokio_util::sync::CancellationToken;

use crate::{
    engine::{Engine, Verdict},
    envs::Environment,
    link::EnvLink,
    metrics::{Summary, SummaryHead},
};

/// A publication in flight: the step it carries (none for a dead letter) and its outcome.
type Publication = futures::future::BoxFuture<'static, (Option<(String, u32)>, Result<(), String>)>;

/// Encodes and publishes `states`, each tracked by its episode and step.
fn publish<S: protocol::Message + protocol::StepState, L: EnvLink>(
    link: &L,
    codec: &Codec<S>,
    states: Vec<S>,
    deliveries: &mut FuturesUnordered<Publication>,
) -> anyhow::Result<()> {
    for state in states {
        let payload = codec.encode(&state).context("env produced a state that breaks its schema")?;
        let step = (state.episode_id().to_string(), state.step());
        let delivery = link.publish(step.0.clone(), payload);
        deliveries.push(Box::pin(async move { (Some(step), delivery.await) }));
    }
    Ok(())
}

/// Plays every episode of `engine` over `link` until done or `shutdown`; returns the summary.
///
/// Every state is published until acknowledged: a failed publication is re-sent at once and an
/// unanswered state after `--action-timeout`, each within the episode's re-send budget; an
/// episode that spends it fails (see [`Summary::ensure_complete`]).
pub async fn drive<E: Environment, L: EnvLink>(
    engine: &mut Engine<E>,
    link: &mut L,
    state_codec: &Codec<E::State>,
    action_codec: &common::registry::TopicCodec<ActionMsg>,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let mut deliveries: FuturesUnordered<Publication> = FuturesUnordered::new();
    publish(link, state_codec, engine.fill(Instant::now()), &mut deliveries)?;
    let tick_every = (engine.config().action_timeout / 4).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut interrupted = false;
    let mut progress = Progress::new();
    let mut dead_letter_failures = 0u64;

    while !engine.is_done() {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => { interrupted = true; break; }
            Some((step, result)) = deliveries.next(), if !deliveries.is_empty() => {
                match step {
                    Some((episode_id, step)) => {
                        if let Err(e) = &result {
                            tracing::warn!(error = %e, episode_id, step, "state publication failed; re-sending it");
                        }
                        let again = engine.on_published(&episode_id, step, result, Instant::now());
                        publish(link, state_codec, again, &mut deliveries)?;
                    }
                    None => if let Err(e) = result {
                        // The action stays unapplied either way; a dead letter that cannot be
                        // written is a loss of evidence, so the run reports it and fails.
                        dead_letter_failures += 1;
                        tracing::error!(error = %e, "dead letter not written");
                    },
                }
            }
            raw = link.next_action() => {
                let raw = raw?;
                let now = Instant::now();
                let reason = match action_codec.decode_record_or_wait(raw.value(), &shutdown).await {
                    // Only when shut down while the registry could not be reached: the action is
                    // neither applied nor dead-lettered.
                    Err(e) if e.is_retryable() => { interrupted = true; break; }
                    Err(e) => { engine.metrics.decode_errors += 1; Some(e.to_string()) }
                    Ok(decoded) => match engine.on_action(&decoded.msg, now) {
                        (Verdict::Invalid(reason), _) => Some(reason),
                        (_, next) => { publish(link, state_codec, next, &mut deliveries)?; None }
                    },
                };
                if let Some(reason) = reason {
                    tracing::warn!(partition = raw.partition, offset = raw.offset, %reason, "action dead-lettered");
                    engine.metrics.dead_letters += 1;
                    let delivery = link.dead_letter(&raw, &reason);
                    deliveries.push(Box::pin(async move { (None, delivery.await) }));
                }
                progress.update(engine);
            }
            _ = tick.tick() => {
                let again = engine.resends(Instant::now());
                if !again.is_empty() {
                    tracing::debug!(count = again.len(), "re-sending overdue steps");
                }
                publish(link, state_codec, again, &mut deliveries)?;
            }
        }
    }
    // What is left in flight: dead letters, and (when interrupted) states of unfinished
    // episodes. Wait for them so that the summary's counts are final.
    let drain = async {
        while let Some((step, result)) = deliveries.next().await {
            if let Err(e) = result {
                match step {
                    Some(_) => engine.metrics.publish_errors += 1,
                    None => dead_letter_failures += 1,
                }
                tracing::warn!(error = %e, "publication failed while stopping");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
        tracing::warn!("some publications were still unacknowledged after 30 s");
    }
    anyhow::ensure!(
        dead_letter_failures == 0,
        "{dead_letter_failures} dead letter(s) could not be written to the dead-letter topic"
    );
    let head = SummaryHead {
        env_id: engine.env_id().to_string(),
        transport: link.name().into(),
        split: engine.env().label(),
        interrupted,
    };
    engine.metrics.export(engine.active());
    let mut summary = engine.metrics.summary(head, started.elapsed());
    summary.failures = engine.failures().to_vec();
    Ok(summary)
}

/// Logs progress every few seconds (a log line, not a bar: the service runs in containers) and
/// mirrors the counters into Prometheus every second.
struct Progress {
    last: Instant,
    exported: Instant,
}

/// How often the counters are copied into the Prometheus recorder (scrapes are seconds apart).
const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// How often a progress line is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn new() -> Self {
        Self { last: Instant::now(), exported: Instant::now() }
    }

    fn update<E: Environment>(&mut self, engine: &Engine<E>) {
        if self.exported.elapsed() >= EXPORT_EVERY {
            self.exported = Instant::now();
            engine.metrics.export(engine.active());
        }
        if self.last.elapsed() >= LOG_EVERY {
            self.last = Instant::now();
            let m = &engine.metrics;
            // The recent reward rate next to what random earns on the same steps: learning shows
            // as the first pulling away from the second.
            let (recent, random) = m.recent_rates().unwrap_or((0.0, None));
            tracing::info!(
                episodes = m.episodes,
                steps = m.steps,
                active = engine.active(),
                resends = m.resends,
                reward_rate_recent = format!("{recent:.4}"),
                random_rate_recent = random.map(|r| format!("{r:.6}")),
                recent_steps = metrics::RECENT_STEPS.min(m.steps as usize),
                "progress"
            );
        }
    }
}

/// `env-svc run`: builds the environment (loads the data, or draws the RecoGym world),
/// registers the schemas, plays every episode through Kafka and returns the summary (also
/// written to `--summary-json`).
pub async fn run(cfg: config::RunArgs, shutdown: CancellationToken) -> anyhow::Result<Summary> {
    common::metrics::serve(&cfg.metrics, "env-svc", false).await?;
    let run_id = cfg.run_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..8].to_string());
    let summary = envs::play(&cfg, &run_id, shutdown).await?;
    if let Some(path) = &cfg.summary_json {
        write_json(path, &summary)?;
    }
    // A run is a job: its final figures reach Prometheus before it exits (a scrape is 2 s apart).
    common::metrics::await_next_scrape(Duration::from_secs(5)).await;
    Ok(summary)
}

/// Plays `engine`'s episodes through Kafka on the topics of `cfg.stack.env`.
pub(crate) async fn run_engine<E: Environment>(
    mut engine: Engine<E>,
    cfg: &config::RunArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    use common::registry::Registry;
    let topics = cfg.stack.topics();
    let (state_codec, action_codec) = Registry::new(&cfg.stack.registry).step_codecs::<E::State>(&topics).await?;
    common::metrics::ready(common::metrics::Dependency::Registry);
    let mut link = link::KafkaEnvLink::connect(&cfg.stack.kafka, &cfg.tuning, topics.clone()).await?;
    common::metrics::ready(common::metrics::Dependency::Kafka);
    let env_id = engine.env_id().to_string();
    engine.metrics.export_to_prometheus(&env_id);
    tracing::info!(
        env_id = engine.env_id(),
        episodes = %engine.env().label(),
        concurrency = engine.config().concurrency,
        state_topic = %topics.state_topic,
        "run starts"
    );
    let summary = drive(&mut engine, &mut link, &state_codec, &action_codec, shutdown).await?;
    link.flush(Duration::from_secs(10));
    Ok(summary)
}

/// Writes `value` as pretty JSON, creating parent folders.
pub fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::*;
    use crate::{engine::EngineConfig, envs::fashion::FashionEnv, link::MemoryEnvLink, testing::dataset_with_users};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_no_agent_the_run_ends_failed_instead_of_waiting_forever() -> anyhow::Result<()> {
        let ds = Arc::new(dataset_with_users(8, &[&[1, 2, 3], &[4, 5, 6, 7]]));
        let env = FashionEnv::new(ds, vec![0, 1], 10, 50, 1, "train");
        let cfg = EngineConfig {
            env_id: "fashion-v1/t".into(),
            concurrency: 2,
            action_timeout: Duration::from_millis(20),
            max_resends: 3,
        };
        let mut engine = Engine::new(cfg, env);
        // The agent's end is held open but never answers.
        let (state_tx, mut state_rx) = mpsc::channel(64);
        let (_action_tx, action_rx) = mpsc::channel(64);
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while state_rx.recv().await.is_some() {
                n += 1;
            }
            n
        });
        let mut link = MemoryEnvLink::new(state_tx, action_rx);
        let (states, actions) = common::registry::local_step_codecs()?;
        let run = drive(&mut engine, &mut link, &states, &actions, CancellationToken::new());
        let summary = tokio::time::timeout(Duration::from_secs(30), run).await.context("the env waited forever")??;
        drop(link);
        assert_eq!((summary.episodes, summary.failed_episodes, summary.resends), (0, 2, 6), "{summary}");
        assert_eq!(reader.await?, 8, "two first states, each published 1 + 3 times");
        let e = summary.ensure_complete().err().context("a failed run reported success")?;
        assert!(e.to_string().contains("2 episode(s) of run fashion-v1/t failed"), "{e}");
        assert!(summary.to_string().contains("FAILED episodes"), "{summary}");
        Ok(())
    }
}
