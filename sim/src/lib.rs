//! One process, both services: env-svc's run loop and agent-svc's run loop as two tasks joined
//! by a transport. `memory` joins them with bounded channels (no broker), `kafka` with the same
//! Kafka links the services use; the code in between is identical, so the difference in speed
//! is what Kafka costs. A tap can record every record crossing the agent's link for checks.
//! Any environment of env-svc runs this way ([`run_engine`]); [`recogym`] is RecoGym's A/B test.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

pub mod eval;
pub mod opecheck;
pub mod plot;
pub mod promreport;
pub mod recogym;

use agent_svc::{
    core::{AgentCore, AgentStats},
    link::AgentLink,
    AgentArgs,
};
use anyhow::Context;
use common::link::{Delivery, Raw};
use common::registry::TopicCodec;
use env_svc::{config::EpisodeArgs, engine::Engine, envs::Environment, link::EnvLink, metrics::Summary};
use fashion::Dataset;
use protocol::{ActionMsg, StateMsg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Records crossing the agent's link: state records in, action records out.
#[derive(Debug, Default)]
pub struct Recording {
    /// State records as the agent received them.
    pub states: Vec<Raw>,
    /// Action records as the agent published them: (key, payload).
    pub actions: Vec<(String, Vec<u8>)>,
}

/// Wraps an agent link and records what crosses it (unless told not to).
#[derive(Debug)]
pub struct Tap<L> {
    inner: L,
    on: bool,
    /// What was recorded.
    pub recording: Arc<Mutex<Recording>>,
}

impl<L> Tap<L> {
    /// Taps `inner`.
    pub fn new(inner: L) -> Self {
        Self { inner, on: true, recording: Arc::default() }
    }

    /// Passes `inner` through without recording (long runs).
    pub fn passthrough(inner: L) -> Self {
        Self { inner, on: false, recording: Arc::default() }
    }
}

impl<L: AgentLink> AgentLink for Tap<L> {
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Raw>> {
        let batch = self.inner.next_batch(max).await?;
        if self.on {
            if let Ok(mut r) = self.recording.lock() {
                r.states.extend(batch.iter().cloned());
            }
        }
        Ok(batch)
    }
    fn publish(&self, key: String, payload: Vec<u8>) -> Delivery {
        if self.on {
            if let Ok(mut r) = self.recording.lock() {
                r.actions.push((key.clone(), payload.clone()));
            }
        }
        self.inner.publish(key, payload)
    }
    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery {
        self.inner.dead_letter(raw, reason)
    }
    fn begin(&mut self, raw: &Raw) -> common::offsets::Ticket {
        self.inner.begin(raw)
    }
    fn done(&mut self, ticket: &common::offsets::Ticket) {
        self.inner.done(ticket);
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// The outcome of an in-process run; `S` is the environment's state message.
#[derive(Debug)]
pub struct Outcome<S = StateMsg> {
    /// The env's summary.
    pub summary: Summary,
    /// The agent's counters.
    pub agent: AgentStats,
    /// The agent itself after the run (its policy trained by the run).
    pub core: AgentCore<S>,
    /// What crossed the agent's link.
    pub recording: Recording,
}

/// The two ends of a transport and the codecs both sides use.
#[derive(Debug)]
pub struct Wiring<E, A, S = StateMsg> {
    /// The env's end.
    pub env_link: E,
    /// The agent's end.
    pub agent_link: A,
    /// Codec of states, framed with the state subject's schema id.
    pub state_codec: TopicCodec<S>,
    /// Codec of actions, framed with the action subject's schema id.
    pub action_codec: TopicCodec<ActionMsg>,
}

/// The codecs of the in-memory transport: states of type `S`, actions
/// ([`common::registry::local_step_codecs`]: no registry in memory, ids 1 and 2 stand for the
/// two subjects, and any other id is unknown).
pub fn memory_codecs<S: protocol::Message>() -> anyhow::Result<(TopicCodec<S>, TopicCodec<ActionMsg>)> {
    Ok(common::registry::local_step_codecs()?)
}

/// Both ends of a bounded in-memory transport of `capacity` records each way, with the
/// [`memory_codecs`].
pub fn memory_wiring<S: protocol::Message>(
    capacity: usize,
) -> anyhow::Result<Wiring<env_svc::link::MemoryEnvLink, agent_svc::link::MemoryAgentLink, S>> {
    let (state_tx, state_rx) = mpsc::channel(capacity.max(1));
    let (action_tx, action_rx) = mpsc::channel(capacity.max(1));
    let (state_codec, action_codec) = memory_codecs()?;
    Ok(Wiring {
        env_link: env_svc::link::MemoryEnvLink::new(state_tx, action_rx),
        agent_link: agent_svc::link::MemoryAgentLink::new(state_rx, action_tx),
        state_codec,
        action_codec,
    })
}

/// Runs `engine`'s episodes against `core` (answering batches of at most `max_batch` states)
/// over `wiring` until every episode ended; returns the agent with the rest of the outcome.
/// `record` keeps a copy of every record crossing the agent's link (for checks; costly on long
/// runs). Once the env is done, the agent gets `grace` to finish on its own (a memory link
/// closes; a Kafka link does not, and the agent is then stopped).
pub async fn run_engine<En, E, A>(
    mut engine: Engine<En>,
    (mut core, max_batch): (AgentCore<En::State>, usize),
    wiring: Wiring<E, A, En::State>,
    (record, grace): (bool, Duration),
    shutdown: CancellationToken,
) -> anyhow::Result<Outcome<En::State>>
where
    En: Environment,
    E: EnvLink,
    A: AgentLink + 'static,
{
    let Wiring { mut env_link, agent_link, state_codec, action_codec } = wiring;
    // Both ends mirror into Prometheus when this process serves metrics (`--metrics-addr`).
    let env_id = engine.env_id().to_string();
    engine.metrics.export_to_prometheus(&env_id);
    core.export_to_prometheus();
    let (state_codec, action_codec) = (Arc::new(state_codec), Arc::new(action_codec));
    let mut tap = if record { Tap::new(agent_link) } else { Tap::passthrough(agent_link) };
    let recording = tap.recording.clone();
    let stop_agent = shutdown.child_token();
    let agent_stop = stop_agent.clone();
    let (agent_state_codec, agent_action_codec) = (Arc::clone(&state_codec), Arc::clone(&action_codec));
    let agent_task = tokio::spawn(async move {
        let delivery = agent_svc::DeliveryPolicy::new(5);
        let stats = agent_svc::drive(
            &mut core,
            &mut tap,
            &agent_state_codec,
            &agent_action_codec,
            max_batch,
            delivery,
            agent_stop,
        )
        .await;
        stats.map(|s| (s, core))
    });
    let mut agent_task = agent_task;
    let summary = {
        let env_run = env_svc::drive(&mut engine, &mut env_link, &state_codec, &action_codec, shutdown);
        tokio::pin!(env_run);
        tokio::select! {
            summary = &mut env_run => summary,
            // The agent ended first: a failed policy, or a link that broke. The env would only
            // re-send into the void: stop with the agent's reason.
            joined = &mut agent_task => {
                let ended = joined.context("agent task panicked")?;
                return Err(match ended {
                    Err(e) => e.context("the agent stopped before the env finished"),
                    Ok(_) => anyhow::anyhow!("the agent stopped before the env finished"),
                });
            }
        }
    };
    // Closing the env's end lets the agent drain what is still in flight (the last terminal
    // states) and stop on its own; a transport that does not close is stopped after the grace.
    drop(env_link);
    let (agent, core) = match tokio::time::timeout(grace, &mut agent_task).await {
        Ok(joined) => joined,
        Err(_) => {
            stop_agent.cancel();
            agent_task.await
        }
    }
    .context("agent task panicked")??;
    let recording = std::mem::take(&mut *recording.lock().map_err(|_| anyhow::anyhow!("tap poisoned"))?);
    Ok(Outcome { summary: summary?, agent, core, recording })
}

/// Runs env and `core` (answering batches of at most `max_batch` states) over `wiring` until
/// every episode ended (env id `<the user model's env name>/<run_id>`); returns the agent with
/// the rest of the outcome.
pub async fn run_linked<E: EnvLink, A: AgentLink + 'static>(
    dataset: Arc<Dataset>,
    episodes: &EpisodeArgs,
    agent: (AgentCore, usize),
    run_id: &str,
    wiring: Wiring<E, A>,
    shutdown: CancellationToken,
) -> anyhow::Result<Outcome> {
    let engine = env_svc::engine_for(episodes, dataset, run_id);
    run_engine(engine, agent, wiring, (true, Duration::from_secs(5)), shutdown).await
}

/// Runs env and the agent `agent` describes, joined by bounded channels of `capacity` records.
pub async fn run_memory(
    dataset: Arc<Dataset>,
    episodes: &EpisodeArgs,
    agent: &AgentArgs,
    capacity: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<Outcome> {
    run_memory_with(dataset, episodes, (agent.try_build()?, agent.max_batch), capacity, shutdown).await
}

/// Runs env and a given agent, joined by bounded channels of `capacity` records each.
pub async fn run_memory_with(
    dataset: Arc<Dataset>,
    episodes: &EpisodeArgs,
    agent: (AgentCore, usize),
    capacity: usize,
    shutdown: CancellationToken,
) -> anyhow::Result<Outcome> {
    let wiring = memory_wiring(capacity)?;
    let run_id = format!("mem-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    run_linked(dataset, episodes, agent, &run_id, wiring, shutdown).await
}
