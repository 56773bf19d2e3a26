//! The weights topic from the client side: a learner publishes each version of its network as
//! chunks ([`publish`]); a replica follows the topic and takes each version that arrived whole
//! and verified ([`Follower`]). The record format and the verification are
//! `protocol::weights`'s; this module only moves records.
//!
//! A follower reads without a consumer group (it commits nothing): it assigns itself every
//! partition from the beginning, so a replica that starts late reads what compaction kept and
//! finds the latest complete version ([`Follower::catch_up`]), then waits for newer ones
//! ([`Follower::next`]). A record that is not a chunk, and a version that fails its checks, are
//! logged as a warning with the reason and counted ([`Follower::rejected`]); the follower goes
//! on, and its caller keeps what it had.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{anyhow, Context};
use protocol::weights::{Assembler, Chunk, Complete};
use rdkafka::{
    consumer::{BaseConsumer, Consumer},
    message::{Header, Headers, Message, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Offset, TopicPartitionList,
};

use crate::partitions::watermarks;

/// Writes every chunk of a version to `topic`, in order, each acknowledged (as the producer's
/// config asks: the services' producers use `acks=all`) before the next; fails naming the chunk
/// that could not be written.
pub async fn publish(producer: &FutureProducer, topic: &str, chunks: &[Chunk]) -> anyhow::Result<()> {
    for c in chunks {
        let key = c.key();
        let headers = c
            .headers()
            .iter()
            .fold(OwnedHeaders::new(), |h, (name, value)| h.insert(Header { key: name, value: Some(value.as_str()) }));
        producer
            .send(FutureRecord::to(topic).key(&key).payload(&c.bytes).headers(headers), Duration::from_secs(30))
            .await
            .map_err(|(e, _)| {
                anyhow!(
                    "cannot write chunk {} of {} of weights version {} to {topic}: {e}",
                    c.index + 1,
                    c.meta.chunks,
                    c.meta.version
                )
            })?;
    }
    Ok(())
}

/// Follows the weights topic for one model (see the module documentation).
pub struct Follower {
    consumer: BaseConsumer,
    topic: String,
    assembler: Assembler,
    malformed: u64,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("topic", &self.topic).field("assembler", &self.assembler).finish()
    }
}

impl Follower {
    /// A follower of `model`'s versions on `topic` (every partition, from the beginning);
    /// with `shape`, versions of another network are refused. `cfg` holds the bootstrap list.
    pub fn new(mut cfg: ClientConfig, topic: &str, model: &str, shape: Option<&str>) -> anyhow::Result<Self> {
        // No group: nothing is committed, and every follower reads the whole topic.
        cfg.set("group.id", format!("weights-follower-{model}")).set("enable.auto.commit", "false");
        let consumer: BaseConsumer = cfg.create().context("weights follower: cannot create a consumer")?;
        let marks = watermarks(&consumer, topic).with_context(|| format!("weights topic {topic}"))?;
        let mut tpl = TopicPartitionList::new();
        for p in marks.keys() {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .with_context(|| format!("weights topic {topic} partition {p}"))?;
        }
        consumer.assign(&tpl).with_context(|| format!("weights follower: cannot assign {topic}"))?;
        Ok(Self { consumer, topic: topic.to_string(), assembler: Assembler::new(model, shape), malformed: 0 })
    }

    /// Versions refused (corrupted, truncated, inconsistent, of another network) and records
    /// that were no chunk, so far.
    pub fn rejected(&self) -> u64 {
        self.assembler.rejected() + self.malformed
    }

    /// The newest version handed out.
    pub fn served(&self) -> Option<u64> {
        self.assembler.served()
    }

    /// Reads the topic up to its end as it is now and returns the newest version that arrived
    /// whole and verified on the way (`None`: none did). Fails when the end is not reached
    /// `within`.
    pub fn catch_up(&mut self, within: Duration) -> anyhow::Result<Option<Complete>> {
        let marks = watermarks(&self.consumer, &self.topic)?;
        let deadline = std::time::Instant::now() + within;
        let mut newest = None;
        while self.behind(&marks)? {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "weights topic {}: not read to its end ({marks:?}) within {within:?}",
                self.topic
            );
            if let Some(complete) = self.poll_one(Duration::from_millis(100))? {
                newest = Some(complete);
            }
        }
        Ok(newest)
    }

    /// Whether some partition's position is still short of its high watermark in `marks`. The
    /// position, not the last offset read, since compaction leaves gaps in the offsets.
    fn behind(&self, marks: &BTreeMap<i32, crate::partitions::Marks>) -> anyhow::Result<bool> {
        let positions = self.consumer.position().with_context(|| format!("weights topic {}: positions", self.topic))?;
        Ok(marks.iter().any(|(&p, m)| match positions.find_partition(&self.topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(at)) => at < m.high,
            // Nothing fetched yet: behind unless the partition holds nothing.
            _ => m.low < m.high,
        }))
    }

    /// Waits up to `within` for the next version newer than the one served; `None` when none
    /// completed in time.
    pub fn next(&mut self, within: Duration) -> anyhow::Result<Option<Complete>> {
        let deadline = std::time::Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            if let Some(complete) = self.poll_one(left.min(Duration::from_millis(100)))? {
                return Ok(Some(complete));
            }
        }
        Ok(None)
    }

    /// Polls one record; returns the version it completed, if any.
    fn poll_one(&mut self, timeout: Duration) -> anyhow::Result<Option<Complete>> {
        let Some(msg) = self.consumer.poll(timeout) else { return Ok(None) };
        let msg = msg.with_context(|| format!("weights topic {}: read failed", self.topic))?;
        let (partition, offset) = (msg.partition(), msg.offset());
        let parsed = match (msg.key(), msg.payload()) {
            (Some(key), Some(value)) => {
                let headers: Vec<(&str, &[u8])> = match msg.headers() {
                    Some(h) => h.iter().filter_map(|h| h.value.map(|v| (h.key, v))).collect(),
                    None => Vec::new(),
                };
                Chunk::from_record(&String::from_utf8_lossy(key), headers, value).map_err(|e| e.to_string())
            }
            (None, _) => Err("no key".to_string()),
            (_, None) => Err("no value (a tombstone)".to_string()),
        };
        let chunk = match parsed {
            Ok(chunk) => chunk,
            Err(why) => {
                self.malformed += 1;
                tracing::warn!(topic = %self.topic, partition, offset, error = %why, "weights record refused");
                return Ok(None);
            }
        };
        let complete = match self.assembler.offer(chunk) {
            Ok(complete) => complete,
            Err(e) => {
                tracing::warn!(
                    topic = %self.topic,
                    partition,
                    offset,
                    error = %e,
                    serving = ?self.assembler.served(),
                    "weights version refused; the version served stays"
                );
                None
            }
        };
        if let Some(c) = &complete {
            tracing::info!(version = c.meta.version, bytes = c.blob.len(), "weights version arrived and verified");
        }
        Ok(complete)
    }
}
