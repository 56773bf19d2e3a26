//! Reads a RecoGym logging run back from the pipeline: every state and action of one env id on
//! the RecoGym topics, from the start of the topics (or from a point in time) up to their ends
//! when the read began. The policies then rebuild RecoGym's log from them
//! (`policies::recogym::logs::log_from_messages`) and train before serving.
//!
//! A plain assigned consumer: no group, nothing committed, nothing written. Each record is
//! validated against the schema it was written with, looked up in the registry
//! ([`read_run_checked`]); a record that cannot be decoded is counted and skipped, a registry
//! that cannot be reached fails the read.

use std::time::Duration;

use anyhow::Context;
use common::{
    kafka::{KafkaArgs, Topics},
    registry::{DecodeError, Registry, RegistryArgs, SchemaResolver},
};
use protocol::{topics::value_subject, ActionMsg, Codec, Decoded, Envelope, Message, RecoStateMsg};

/// The messages of one run.
#[derive(Debug, Default)]
pub struct RunMessages {
    /// Its states (re-sent copies included).
    pub states: Vec<RecoStateMsg>,
    /// Its actions (re-answers included).
    pub actions: Vec<ActionMsg>,
    /// Records of other runs read past.
    pub other_runs: u64,
    /// Records of the run that could not be decoded (skipped).
    pub undecodable: u64,
}

/// Reads the states and actions of `env_id` from `topics` (their state and action topics),
/// starting at `since_ms` (milliseconds since the epoch, by record timestamp) or at the
/// beginning, each record checked against the schema it was written with, looked up in the
/// registry of `registry` under its topic's subject.
pub async fn read_run_checked(
    kafka: &KafkaArgs,
    registry: &RegistryArgs,
    topics: &Topics,
    env_id: &str,
    since_ms: Option<i64>,
) -> anyhow::Result<RunMessages> {
    let writers =
        Writers::Registry(SchemaResolver::registry(Registry::new(registry)), tokio::runtime::Handle::current());
    let (kafka, topics, env_id) = (kafka.clone(), topics.clone(), env_id.to_string());
    tokio::task::spawn_blocking(move || read_with(&kafka, &topics, &env_id, since_ms, &writers))
        .await
        .context("log reader panicked")?
}

/// The writer's schema of each record, from the registry (lookups run on the runtime of the
/// handle, from the blocking reader thread).
enum Writers {
    Registry(SchemaResolver, tokio::runtime::Handle),
}

impl Writers {
    fn decode<T: Message>(&self, codec: &Codec<T>, topic: &str, payload: &[u8]) -> Result<Decoded<T>, DecodeError> {
        let Self::Registry(resolver, runtime) = self;
        runtime.block_on(resolver.decode(codec, &value_subject(topic), payload))
    }
}

fn read_with(
    kafka: &KafkaArgs,
    topics: &Topics,
    env_id: &str,
    since_ms: Option<i64>,
    writers: &Writers,
) -> anyhow::Result<RunMessages> {
    let mut out = RunMessages::default();
    // Records carry their env id as `"env_id":"<id>"`: records of other runs are skipped
    // without being parsed.
    let needle = format!("\"env_id\":{}", serde_json::to_string(env_id)?);
    let states: Codec<RecoStateMsg> = Codec::new(0)?;
    let actions: Codec<ActionMsg> = Codec::new(0)?;
    let state_topic = topics.state_topic.as_str();
    read_topic(kafka, state_topic, since_ms, |payload| {
        let decode = || writers.decode(&states, state_topic, payload);
        keep(decode, payload, env_id, &needle, &mut out.states, &mut out.other_runs, &mut out.undecodable)
    })?;
    let action_topic = topics.action_topic.as_str();
    read_topic(kafka, action_topic, since_ms, |payload| {
        let decode = || writers.decode(&actions, action_topic, payload);
        keep(decode, payload, env_id, &needle, &mut out.actions, &mut out.other_runs, &mut out.undecodable)
    })?;
    Ok(out)
}

/// Keeps a record of the run; only records that name its env id are decoded.
fn keep<T: Message + Envelope>(
    decode: impl FnOnce() -> Result<Decoded<T>, DecodeError>,
    payload: &[u8],
    env_id: &str,
    needle: &str,
    into: &mut Vec<T>,
    other: &mut u64,
    bad: &mut u64,
) -> anyhow::Result<()> {
    if !payload.windows(needle.len()).any(|w| w == needle.as_bytes()) {
        *other += 1;
        return Ok(());
    }
    match decode() {
        Ok(d) if d.msg.env_id() == env_id => into.push(d.msg),
        Ok(_) => *other += 1,
        Err(e) if e.is_retryable() => return Err(e).context("failed to read the training logs"),
        Err(_) => *bad += 1,
    }
    Ok(())
}

/// Calls `f` with the value of every record of `topic` from `since_ms` (or the start) up to
/// each partition's end as it was when the read began; stops at the first error of `f`.
fn read_topic(
    kafka: &KafkaArgs,
    topic: &str,
    since_ms: Option<i64>,
    mut f: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    common::partitions::read_snapshot(&kafka.client_config(), topic, since_ms, Duration::from_secs(120), |raw| {
        f(raw.value())
    })
}
