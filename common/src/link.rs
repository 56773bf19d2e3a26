//! What a transport moves: raw records with their key and position, and the dead-letter helper
//! both services use. The Kafka and in-memory transports of `env-svc` and `agent-svc` carry
//! exactly these, so all decoding, validation and dead-lettering is shared code.

use std::time::Duration;

use futures::future::BoxFuture;
use protocol::topics::dead_letter as dlq;
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};

/// A record as a transport or a reader delivers it: key, value, where it came from, when it was
/// written and its headers. The one raw-record type of the workspace: the links, the snapshot
/// reads of [`crate::partitions`], the archiver and the tests all carry this.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Raw {
    /// Record key (the episode id for step messages).
    pub key: Option<Vec<u8>>,
    /// Record value, in the Confluent wire format when well-formed; `None` for a null value.
    pub payload: Option<Vec<u8>>,
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from (0 in memory).
    pub partition: i32,
    /// Offset in its partition (a sequence number in memory).
    pub offset: i64,
    /// The record's Kafka timestamp, Unix milliseconds (none in memory).
    pub timestamp_ms: Option<i64>,
    /// Headers, values as UTF-8 (lossy).
    pub headers: Vec<(String, String)>,
}

impl Raw {
    /// A record of the in-memory transport: a value and its sequence number, nothing else.
    pub fn in_memory(topic: &str, payload: Vec<u8>, offset: i64) -> Self {
        Raw { payload: Some(payload), topic: topic.to_string(), offset, ..Raw::default() }
    }

    /// The value's bytes; empty for a null value.
    pub fn value(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }
}

/// A pending delivery: resolves once the record is durably written (or failed for good).
pub type Delivery = BoxFuture<'static, Result<(), String>>;

/// Writes `raw` to the dead-letter topic: the original value byte for byte, the original key,
/// and the reason and source position in `dlq.*` headers.
pub fn dead_letter_kafka(producer: &FutureProducer, dlq_topic: &str, raw: &Raw, reason: &str) -> Delivery {
    let (producer, topic, raw, reason) = (producer.clone(), dlq_topic.to_string(), raw.clone(), reason.to_string());
    Box::pin(async move {
        let (partition, offset) = (raw.partition.to_string(), raw.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header { key: dlq::REASON, value: Some(reason.as_str()) })
            .insert(Header { key: dlq::SOURCE_TOPIC, value: Some(raw.topic.as_str()) })
            .insert(Header { key: dlq::SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: dlq::SOURCE_OFFSET, value: Some(offset.as_str()) });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(payload) = raw.payload.as_deref() {
            record = record.payload(payload);
        }
        if let Some(key) = raw.key.as_deref() {
            record = record.key(key);
        }
        producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e.to_string())
    })
}
