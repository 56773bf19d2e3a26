//! Reading a topic by partition, one way for every caller (env-svc's action reader, agent-svc's
//! training reads, `streamrec-sim`, the archiver, the tests): a topic's partitions and their
//! watermarks, the positions "from now on", and bounded snapshots, which read every record up
//! to the ends the read started with and then stop, however much is written meanwhile.
//! Records come out as the one raw-record type, [`Raw`].

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::KafkaError,
    message::{BorrowedMessage, Headers, Message},
    ClientConfig, Offset, TopicPartitionList,
};

pub use crate::link::Raw;

/// How long a metadata, watermark or offset lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a topic's partitions could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PartitionsError {
    /// The topic is not in the cluster's metadata (or has no partition).
    #[error("topic {0} does not exist; run `make stack-up`")]
    NoTopic(String),
    /// A lookup failed.
    #[error("{what} of {topic} failed: {source}")]
    Kafka {
        /// What was looked up.
        what: &'static str,
        /// The topic.
        topic: String,
        /// librdkafka's error.
        source: KafkaError,
    },
}

fn kafka<'a>(what: &'static str, topic: &'a str) -> impl FnOnce(KafkaError) -> PartitionsError + 'a {
    move |source| PartitionsError::Kafka { what, topic: topic.to_string(), source }
}

/// The low and high watermark of a partition: its first offset still held, and the offset the
/// next record will get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marks {
    /// First offset still in the partition.
    pub low: i64,
    /// Offset of the next record written.
    pub high: i64,
}

/// The watermarks of every partition of `topic`, by partition.
pub fn watermarks<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
) -> Result<BTreeMap<i32, Marks>, PartitionsError> {
    let md = consumer.fetch_metadata(Some(topic), LOOKUP_TIMEOUT).map_err(kafka("metadata", topic))?;
    let t = md.topics().first().filter(|t| t.error().is_none() && !t.partitions().is_empty());
    let t = t.ok_or_else(|| PartitionsError::NoTopic(topic.to_string()))?;
    let mut marks = BTreeMap::new();
    for p in t.partitions() {
        let (low, high) =
            consumer.fetch_watermarks(topic, p.id(), LOOKUP_TIMEOUT).map_err(kafka("watermarks", topic))?;
        marks.insert(p.id(), Marks { low, high });
    }
    Ok(marks)
}

/// Every partition of `topic` at its current end: a reader assigned to it sees only what is
/// written from now on; a group that commits it starts there.
pub fn at_end<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
) -> Result<TopicPartitionList, PartitionsError> {
    let mut tpl = TopicPartitionList::new();
    for (p, m) in watermarks(consumer, topic)? {
        tpl.add_partition_offset(topic, p, Offset::Offset(m.high)).map_err(kafka("position", topic))?;
    }
    Ok(tpl)
}

/// What a bounded snapshot of one partition reads: offsets `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First offset read.
    pub start: i64,
    /// The high watermark when the read started: the read stops before it.
    pub end: i64,
}

/// The spans of a snapshot of `topic`: from the beginning (or the first record at or after
/// `since_ms`, Unix milliseconds) to the current end, for the partitions that hold anything.
pub fn snapshot_spans<C: ConsumerContext + 'static>(
    consumer: &impl Consumer<C>,
    topic: &str,
    since_ms: Option<i64>,
) -> Result<BTreeMap<i32, Span>, PartitionsError> {
    let marks = watermarks(consumer, topic)?;
    let mut by_time = BTreeMap::new();
    if let Some(ms) = since_ms {
        let mut tpl = TopicPartitionList::new();
        for p in marks.keys() {
            tpl.add_partition_offset(topic, *p, Offset::Offset(ms)).map_err(kafka("time lookup", topic))?;
        }
        for e in consumer.offsets_for_times(tpl, LOOKUP_TIMEOUT).map_err(kafka("time lookup", topic))?.elements() {
            by_time.insert(e.partition(), e.offset());
        }
    }
    Ok(marks.into_iter().filter_map(|(p, m)| span(m, by_time.get(&p).copied()).map(|s| (p, s))).collect())
}

/// What a snapshot reads of a partition with watermarks `m`, given the offset a time lookup
/// found (`None`: no lookup, read from the start); `None` when there is nothing to read.
fn span(m: Marks, by_time: Option<Offset>) -> Option<Span> {
    let start = match by_time {
        Some(Offset::Offset(o)) => o.max(m.low),
        Some(_) => m.high, // nothing at or after the time
        None => m.low,
    };
    (start < m.high).then_some(Span { start, end: m.high })
}

impl Raw {
    /// The record `m`, owned: key, value, position, time and headers (values as UTF-8, lossy).
    pub fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Raw {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            headers,
        }
    }
}

/// Reads a snapshot of `topic` ([`snapshot_spans`]) with a consumer made from `config` (no
/// group offsets are used or committed), calling `each` with every record in partition order.
/// Fails when `each` does, or when no record arrives for `stall` while some are still due.
pub fn read_snapshot(
    config: &ClientConfig,
    topic: &str,
    since_ms: Option<i64>,
    stall: Duration,
    mut each: impl FnMut(Raw) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut config = config.clone();
    if config.get("group.id").is_none() {
        // Assigned partitions need no group, but librdkafka wants an id for a consumer.
        config.set("group.id", format!("snapshot-{}-{}", std::process::id(), crate::kafka::now_ms()));
    }
    let consumer: BaseConsumer = config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create a reader of {topic}: {e}"))?;
    let mut due = snapshot_spans(&consumer, topic, since_ms)?;
    if due.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (p, span) in &due {
        tpl.add_partition_offset(topic, *p, Offset::Offset(span.start))?;
    }
    consumer.assign(&tpl).map_err(|e| anyhow::anyhow!("cannot assign the partitions of {topic}: {e}"))?;
    let mut last_progress = std::time::Instant::now();
    while !due.is_empty() {
        anyhow::ensure!(
            last_progress.elapsed() < stall,
            "reading {topic}: no record for {stall:?} with {} partition(s) not read to their end",
            due.len()
        );
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else { continue };
        // A dead broker shows up as transient transport errors; librdkafka fails over.
        let Ok(m) = polled.inspect_err(|e| tracing::debug!(error = %e, topic, "snapshot reader error")) else {
            continue;
        };
        last_progress = std::time::Instant::now();
        let Some(end) = due.get(&m.partition()).map(|s| s.end) else { continue };
        if m.offset() < end {
            each(Raw::from_message(&m))?;
        }
        if m.offset() + 1 >= end {
            due.remove(&m.partition());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_reads_from_the_start_or_the_time_to_the_end_it_saw() {
        let m = Marks { low: 10, high: 20 };
        assert_eq!(span(m, None), Some(Span { start: 10, end: 20 }));
        assert_eq!(span(m, Some(Offset::Offset(15))), Some(Span { start: 15, end: 20 }));
        // A time before what the partition still holds starts at what it holds.
        assert_eq!(span(m, Some(Offset::Offset(3))), Some(Span { start: 10, end: 20 }));
        // Nothing at or after the time, or an empty partition: nothing to read.
        assert_eq!(span(m, Some(Offset::End)), None);
        assert_eq!(span(Marks { low: 5, high: 5 }, None), None);
    }
}
