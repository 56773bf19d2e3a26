//! One process, both services: env-svc's run loop and agent-svc's run loop as two tasks joined
//! by a transport. `memory` joins them with bounded channels (no broker), `kafka` with the same
//! Kafka links the services use; the code in between is identical, so the difference in speed
//! is what Kafka costs. A tap can record every record crossing the agent's link for checks.

use std::sync::{Arc, Mutex};

pub mod eval;
pub mod plot;

use agent_svc::{
    core::{AgentCore, AgentStats},
    link::AgentLink,
    AgentArgs,
};
use anyhow::Context;
use common::link::{Delivery, Raw};
use env_svc::{config::EpisodeArgs, data::Dataset, link::EnvLink, metrics::Summary};
use protocol::{ActionMsg, Codec, StateMsg};
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

/// Wraps an agent link and records what crosses it.
#[derive(Debug)]
pub struct Tap<L> {
    inner: L,
    /// What was recorded.
    pub recording: Arc<Mutex<Recording>>,
}

impl<L> Tap<L> {
    /// Taps `inner`.
    pub fn new(inner: L) -> Self {
        Self { inner, recording: Arc::default() }
    }
}

impl<L: AgentLink> AgentLink for Tap<L> {
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Raw>> {
        let batch = self.inner.next_batch(max).await?;
        if let Ok(mut r) = self.recording.lock() {
            r.states.extend(batch.iter().cloned());
        }
        Ok(batch)
    }
    fn publish(&self, key: String, payload: Vec<u8>) -> Delivery {
        if let Ok(mut r) = self.recording.lock() {
            r.actions.push((key.clone(), payload.clone()));
        }
        self.inner.publish(key, payload)
    }
    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery {
        self.inner.dead_letter(raw, reason)
    }
    fn begin(&mut self, raw: &Raw) {
        self.inner.begin(raw);
    }
    fn done(&mut self, raw: &Raw) {
        self.inner.done(raw);
    }
    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// The outcome of an in-process run.
#[derive(Debug)]
pub struct Outcome {
    /// The env's summary.
    pub summary: Summary,
    /// The agent's counters.
    pub agent: AgentStats,
    /// The agent itself after the run (its policy trained by the run).
    pub core: AgentCore,
    /// What crossed the agent's link.
    pub recording: Recording,
}

/// The two ends of a transport and the codecs both sides use.
#[derive(Debug)]
pub struct Wiring<E, A> {
    /// The env's end.
    pub env_link: E,
    /// The agent's end.
    pub agent_link: A,
    /// Codec of states, framed with the state subject's schema id.
    pub state_codec: Codec<StateMsg>,
    /// Codec of actions, framed with the action subject's schema id.
    pub action_codec: Codec<ActionMsg>,
}

/// Runs env and `core` (answering batches of at most `max_batch` states) over `wiring` until
/// every episode ended; returns the agent with the rest of the outcome.
pub async fn run_linked<E: EnvLink, A: AgentLink + 'static>(
    dataset: Arc<Dataset>,
    episodes: &EpisodeArgs,
    (mut core, max_batch): (AgentCore, usize),
    env_id: String,
    wiring: Wiring<E, A>,
    shutdown: CancellationToken,
) -> anyhow::Result<Outcome> {
    let Wiring { mut env_link, agent_link, state_codec, action_codec } = wiring;
    let (state_codec, action_codec) = (Arc::new(state_codec), Arc::new(action_codec));
    let mut tap = Tap::new(agent_link);
    let recording = tap.recording.clone();
    let stop_agent = shutdown.child_token();
    let agent_stop = stop_agent.clone();
    let (agent_state_codec, agent_action_codec) = (Arc::clone(&state_codec), Arc::clone(&action_codec));
    let agent_task = tokio::spawn(async move {
        let stats =
            agent_svc::drive(&mut core, &mut tap, &agent_state_codec, &agent_action_codec, max_batch, agent_stop).await;
        stats.map(|s| (s, core))
    });
    let mut engine = env_svc::engine_for(episodes, dataset, env_id);
    let summary =
        env_svc::drive(&mut engine, &mut env_link, &state_codec, &action_codec, episodes.split_name(), shutdown).await;
    // Closing the env's end lets the agent drain what is still in flight (the last terminal
    // states) and stop on its own; a transport that does not close is stopped after a grace.
    drop(env_link);
    let mut agent_task = agent_task;
    let (agent, core) = match tokio::time::timeout(std::time::Duration::from_secs(5), &mut agent_task).await {
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
    let (state_tx, state_rx) = mpsc::channel(capacity.max(1));
    let (action_tx, action_rx) = mpsc::channel(capacity.max(1));
    let env_link = env_svc::link::MemoryEnvLink::new(state_tx, action_rx);
    let agent_link = agent_svc::link::MemoryAgentLink::new(state_rx, action_tx);
    // No registry in memory: ids 1 and 2 stand for the two subjects.
    let wiring = Wiring { env_link, agent_link, state_codec: Codec::new(1)?, action_codec: Codec::new(2)? };
    let env_id = format!("fashion-v1/mem-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    run_linked(dataset, episodes, agent, env_id, wiring, shutdown).await
}
