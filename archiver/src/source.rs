//! Kafka: which offsets a run copies (from the group's committed offsets up to the high
//! watermarks taken at start), reading and decoding them in batches, and committing.
//!
//! Invariant: a batch holds, per partition, a contiguous run of offsets that starts where the
//! previous batch of that partition ended; the reader never passes a partition's end offset
//! taken at start, so a run copies a fixed snapshot even while producers keep writing.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    kafka::KafkaArgs,
    link::Raw,
    partitions::PartitionsError,
    registry::{DecodeError, Registry},
};
use protocol::{ProtocolError, WriterSchema};
use rdkafka::{
    consumer::{BaseConsumer, CommitMode, Consumer},
    error::KafkaError,
    message::Message,
    Offset, TopicPartitionList,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::rows::{Decoder, Item, Role};

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// Kafka failures.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The client could not be created or the cluster did not answer.
    #[error("kafka {what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The error.
        source: KafkaError,
    },
    /// A topic to archive does not exist.
    #[error("topic {0} does not exist")]
    NoTopic(String),
    /// Reading made no progress for too long.
    #[error("no progress for {0:?} with partitions still short of their end offsets: {1}")]
    Stalled(Duration, String),
    /// The schema registry could not say which schema a record was written with.
    #[error("schema registry unavailable for {waited:?}, looking up schema id {id}: {reason}")]
    Registry {
        /// The schema id looked up.
        id: u32,
        /// How long the lookup was retried.
        waited: Duration,
        /// The last failure.
        reason: String,
    },
}

/// Looks writer schemas up in the registry for the reader's blocking thread, waiting out a
/// registry that cannot be reached (backoff 100 ms doubling to 5 s) for up to `retry_for`.
#[derive(Debug, Clone)]
pub struct SchemaLookup {
    registry: Registry,
    runtime: tokio::runtime::Handle,
    retry_for: Duration,
}

impl SchemaLookup {
    /// Lookups in `registry`, run on `runtime`, retried for `retry_for`.
    pub fn new(registry: Registry, runtime: tokio::runtime::Handle, retry_for: Duration) -> Self {
        Self { registry, runtime, retry_for }
    }

    /// What the registry says of `id`: its schema, or why records framed with it can never be
    /// decoded. `Err` only when the registry could not answer for `retry_for`, or `stop` was
    /// cancelled meanwhile. Blocking: call it from a blocking thread.
    pub fn fetch(&self, id: u32, stop: &CancellationToken) -> Result<Result<WriterSchema, ProtocolError>, SourceError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let error = match self.runtime.block_on(self.registry.writer_schema(id)) {
                Ok(schema) => return Ok(Ok(schema)),
                Err(DecodeError::Record(reason)) => return Ok(Err(reason)),
                Err(e @ DecodeError::Registry(_)) => e,
            };
            let waited = started.elapsed();
            if waited >= self.retry_for || stop.is_cancelled() {
                return Err(SourceError::Registry { id, waited, reason: error.to_string() });
            }
            tracing::warn!(error = %error, id, retry_in = ?pause, "schema registry unavailable, retrying");
            self.runtime.block_on(async {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(pause) => {}
                }
            });
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}

fn kafka(what: &str) -> impl FnOnce(KafkaError) -> SourceError + '_ {
    move |source| SourceError::Kafka { what: what.to_string(), source }
}

/// What one run copies of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// What the topic carries.
    pub role: Role,
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Low watermark at start (older messages are gone).
    pub low: i64,
    /// The group's committed offset at start, if any.
    pub committed: Option<i64>,
    /// First offset this run copies.
    pub start: i64,
    /// High watermark at start: this run copies `start..end`.
    pub end: i64,
}

impl PartitionPlan {
    /// Messages this run copies from the partition.
    pub fn pending(&self) -> u64 {
        u64::try_from(self.end - self.start).unwrap_or(0)
    }

    /// `topic/partition`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }
}

/// Where to start in a partition: the committed offset, unless retention already deleted it
/// (then the oldest message left) or it is past the end (a re-created topic: from the start).
pub fn start_offset(low: i64, high: i64, committed: Option<i64>) -> i64 {
    match committed {
        Some(c) if c >= low && c <= high => c,
        _ => low,
    }
}

/// A batch of decoded records and, per partition, the last offset in it.
#[derive(Debug, Default)]
pub struct Batch {
    /// The records, in the order read.
    pub items: Vec<Item>,
    /// Last offset per (topic, partition) in this batch.
    pub last: BTreeMap<(Arc<str>, i32), i64>,
}

/// The archiver's consumer and what this run copies.
pub struct Source {
    consumer: BaseConsumer,
    plans: Vec<PartitionPlan>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("plans", &self.plans).finish_non_exhaustive()
    }
}

impl Source {
    /// Connects as `group` and plans the copy of `topics` (blocking: call from a blocking task).
    pub fn open(kafka_args: &KafkaArgs, group: &str, topics: &[(Role, String)]) -> Result<Self, SourceError> {
        let consumer: BaseConsumer = kafka_args
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("max.partition.fetch.bytes", "4194304")
            .set("fetch.wait.max.ms", "100")
            .create()
            .map_err(kafka("cannot create a consumer"))?;
        let mut plans = Vec::new();
        for (role, topic) in topics {
            let marks = common::partitions::watermarks(&consumer, topic).map_err(|e| match e {
                PartitionsError::NoTopic(t) => SourceError::NoTopic(t),
                PartitionsError::Kafka { what, source, .. } => kafka(what)(source),
            })?;
            let name: Arc<str> = Arc::from(topic.as_str());
            let mut tpl = TopicPartitionList::new();
            for p in marks.keys() {
                tpl.add_partition(topic, *p);
            }
            let committed = consumer.committed_offsets(tpl, METADATA_TIMEOUT).map_err(kafka("committed offsets"))?;
            for (&partition, m) in &marks {
                let (low, high) = (m.low, m.high);
                let c = committed.find_partition(topic, partition).and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
                let start = start_offset(low, high, c);
                if let Some(c) = c.filter(|c| *c < low) {
                    tracing::warn!(
                        topic,
                        partition,
                        committed = c,
                        low,
                        lost = low - c,
                        "messages expired from kafka before they were archived"
                    );
                }
                plans.push(PartitionPlan {
                    role: *role,
                    topic: name.clone(),
                    partition,
                    low,
                    committed: c,
                    start,
                    end: high,
                });
            }
        }
        plans.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(Self { consumer, plans })
    }

    /// The plan of every partition.
    pub fn plans(&self) -> &[PartitionPlan] {
        &self.plans
    }

    /// Reads every planned partition from its start to its end in batches of `batch_size`,
    /// decodes and sends them; stops early when `stop` is cancelled or the receiver is gone
    /// (blocking: run in a blocking task). Returns whether every partition reached its end.
    pub fn read(
        &self,
        decoder: &mut Decoder,
        schemas: &SchemaLookup,
        batch_size: usize,
        batch_tx: &mpsc::Sender<Batch>,
        stop: &CancellationToken,
        stall_after: Duration,
    ) -> Result<bool, SourceError> {
        let mut remaining: HashMap<(Arc<str>, i32), (i64, Role)> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in self.plans.iter().filter(|p| p.pending() > 0) {
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.start))
                .map_err(kafka("assign offsets"))?;
            remaining.insert((p.topic.clone(), p.partition), (p.end, p.role));
        }
        if remaining.is_empty() {
            return Ok(true);
        }
        self.consumer.assign(&tpl).map_err(kafka("assign"))?;
        let topics: HashMap<String, Arc<str>> =
            self.plans.iter().map(|p| (p.topic.to_string(), p.topic.clone())).collect();
        let mut batch = Batch::default();
        let mut last_progress = Instant::now();
        let mut errors_logged = 0_u32;
        while !remaining.is_empty() {
            if stop.is_cancelled() {
                return Ok(false);
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let Some(topic) = topics.get(m.topic()) else { continue };
                    let key = (topic.clone(), m.partition());
                    let Some(&(end, role)) = remaining.get(&key) else { continue };
                    let offset = m.offset();
                    if offset >= end {
                        self.finish(&mut remaining, &key);
                        continue;
                    }
                    last_progress = Instant::now();
                    let raw = Raw::from_message(&m);
                    if let Some(id) = decoder.missing_schema(role, raw.payload.as_deref()) {
                        match schemas.fetch(id, stop) {
                            Ok(found) => decoder.learn(id, found),
                            Err(_) if stop.is_cancelled() => return Ok(false),
                            Err(e) => return Err(e),
                        }
                        // Time spent waiting on the registry is no stall of Kafka.
                        last_progress = Instant::now();
                    }
                    batch.items.push(decoder.decode(role, topic, raw));
                    batch.last.insert(key.clone(), offset);
                    if offset + 1 >= end {
                        self.finish(&mut remaining, &key);
                    }
                    if batch.items.len() >= batch_size && !send(batch_tx, &mut batch) {
                        return Ok(false);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) | None => {
                    // At the end of a partition, or idle: close the partitions whose position
                    // passed their end (a gap before it, e.g. transaction markers). A partial
                    // batch waits: everything up to the snapshot exists, so it fills or ends.
                    if let Ok(pos) = self.consumer.position() {
                        for e in pos.elements() {
                            let key = (Arc::<str>::from(e.topic()), e.partition());
                            if let (Offset::Offset(o), Some(&(end, _))) = (e.offset(), remaining.get(&key)) {
                                if o >= end {
                                    self.finish(&mut remaining, &key);
                                }
                            }
                        }
                    }
                    if last_progress.elapsed() > stall_after {
                        let mut left: Vec<String> = remaining.keys().map(|(t, p)| format!("{t}/{p}")).collect();
                        left.sort();
                        return Err(SourceError::Stalled(stall_after, left.join(", ")));
                    }
                }
                Some(Err(e)) => {
                    // Transport errors (a broker restarting) are retried by librdkafka.
                    errors_logged += 1;
                    if errors_logged <= 5 || errors_logged % 100 == 0 {
                        tracing::warn!(error = %e, "kafka consumer error, reading goes on");
                    }
                }
            }
        }
        Ok(batch.items.is_empty() || send(batch_tx, &mut batch))
    }

    fn finish(&self, remaining: &mut HashMap<(Arc<str>, i32), (i64, Role)>, key: &(Arc<str>, i32)) {
        if remaining.remove(key).is_some() {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&key.0, key.1);
            // Stop fetching what lies past the snapshot; failure only costs bandwidth.
            let _ = self.consumer.pause(&tpl);
        }
    }

    /// Commits `next` offsets (last copied + 1) synchronously for the group.
    pub fn commit(&self, next: &BTreeMap<(Arc<str>, i32), i64>) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).map_err(kafka("commit offsets"))?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %e, attempt, "offset commit failed, retrying");
                    std::thread::sleep(Duration::from_millis(200 << attempt));
                }
                Err(e) => return Err(SourceError::Kafka { what: "offset commit".into(), source: e }),
            }
        }
    }
}

fn send(tx: &mpsc::Sender<Batch>, batch: &mut Batch) -> bool {
    tx.blocking_send(std::mem::take(batch)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_is_the_committed_offset_within_the_watermarks() {
        assert_eq!(start_offset(0, 100, None), 0, "a new group copies everything");
        assert_eq!(start_offset(0, 100, Some(40)), 40);
        assert_eq!(start_offset(0, 100, Some(100)), 100, "up to date: nothing to copy");
        assert_eq!(start_offset(50, 100, Some(40)), 50, "expired messages are skipped");
        assert_eq!(start_offset(0, 10, Some(40)), 0, "a re-created topic is copied from its start");
    }
}
