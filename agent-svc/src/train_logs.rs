//! Reads a RecoGym logging run back from the pipeline: every state and action of one env id on
//! the RecoGym topics, from the start of the topics (or from a point in time) up to their ends
//! when the read began. The policies then rebuild RecoGym's log from them
//! (`policies::recogym::logs::log_from_messages`) and train before serving.
//!
//! A plain assigned consumer: no group, nothing committed, nothing written. Each record is
//! validated against the schema it was written with, looked up in the registry
//! ([`read_run_checked`]); a record that cannot be decoded is counted and skipped, a registry
//! that cannot be reached fails the read.

use std::{collections::HashMap, time::Duration};

use anyhow::Context;
use common::{
    kafka::{KafkaArgs, Topics},
    registry::{DecodeError, Registry, RegistryArgs, SchemaResolver},
};
use protocol::{topics::value_subject, ActionMsg, Codec, Decoded, Envelope, Message, RecoStateMsg};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    Message as _, Offset, TopicPartitionList,
};

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
    let timeout = Duration::from_secs(30);
    let group = format!("agent-train-{}-{}", std::process::id(), common::kafka::now_ms());
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("failed to create the log reader")?;
    let md =
        consumer.fetch_metadata(Some(topic), timeout).with_context(|| format!("failed to read metadata of {topic}"))?;
    let partitions = md.topics().first().map(|t| t.partitions().len()).unwrap_or(0) as i32;
    anyhow::ensure!(partitions > 0, "topic {topic} does not exist; run `make stack-up`");
    let mut starts = HashMap::new();
    if let Some(ms) = since_ms {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Offset(ms))?;
        }
        for e in consumer.offsets_for_times(tpl, timeout).context("failed to look up offsets by time")?.elements() {
            starts.insert(e.partition(), e.offset());
        }
    }
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .with_context(|| format!("failed to read the end of {topic}/{p}"))?;
        let start = match starts.get(&p) {
            Some(Offset::Offset(o)) => (*o).max(low),
            Some(_) => high, // nothing at or after the time
            None => low,
        };
        if start < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
            ends.insert(p, high);
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl).context("failed to assign the log partitions")?;
    let mut last_progress = std::time::Instant::now();
    while !ends.is_empty() {
        anyhow::ensure!(
            last_progress.elapsed() < Duration::from_secs(120),
            "reading {topic}: no progress for 120 s with {} partitions left",
            ends.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(500)) else { continue };
        let Ok(m) = m.inspect_err(|e| tracing::warn!(error = %e, topic, "log reader error")) else { continue };
        last_progress = std::time::Instant::now();
        let Some(&end) = ends.get(&m.partition()) else { continue };
        if m.offset() < end {
            f(m.payload().unwrap_or_default())?;
        }
        if m.offset() + 1 >= end {
            ends.remove(&m.partition());
        }
    }
    Ok(())
}
