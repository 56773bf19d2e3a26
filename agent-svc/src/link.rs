//! The agent's side of a transport: batches of states in, actions out, and the positions of the
//! states whose actions are durable. Kafka (`KafkaAgentLink`, one consumer group shared by all
//! replicas) or in-process bounded channels (`MemoryAgentLink`).

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use common::{
    kafka::{KafkaArgs, Topics, TuningArgs},
    link::{dead_letter_kafka, Delivery, Raw},
    offsets::OffsetTracker,
};
use futures::FutureExt;
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord, Producer},
    Message, Offset, TopicPartitionList,
};
use tokio::sync::mpsc;

/// The agent's view of a transport.
pub trait AgentLink: Send {
    /// Waits for at least one state record, then returns every record already available, up
    /// to `max`: one batch per poll.
    fn next_batch(&mut self, max: usize) -> impl Future<Output = anyhow::Result<Vec<Raw>>> + Send;
    /// Publishes an action; the future resolves once it is durable.
    fn publish(&self, key: String, payload: Vec<u8>) -> Delivery;
    /// Sends an unusable record to the dead-letter destination with the reason.
    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery;
    /// Marks a record read whose effect is not durable yet.
    fn begin(&mut self, raw: &Raw);
    /// Marks a record's effect durable; its position may now be committed.
    fn done(&mut self, raw: &Raw);
    /// Name of the transport.
    fn name(&self) -> &'static str;
}

/// Kafka: a consumer in the agents' group on the state topic, with offsets stored only once the
/// answering action is acknowledged (auto-commit then commits what was stored), and an
/// idempotent `acks=all` producer for actions and dead letters.
pub struct KafkaAgentLink {
    consumer: StreamConsumer,
    producer: FutureProducer,
    topics: Topics,
    tracker: OffsetTracker,
}

impl std::fmt::Debug for KafkaAgentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAgentLink").field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl KafkaAgentLink {
    /// Joins `group` on the state topic. `offset_reset` applies when the group has no committed
    /// offset: `latest` (default) ignores states published before the group first existed.
    pub fn connect(
        kafka: &KafkaArgs,
        tuning: &TuningArgs,
        topics: Topics,
        group: &str,
        offset_reset: &str,
    ) -> anyhow::Result<Self> {
        let consumer: StreamConsumer = kafka
            .consumer_config(group, tuning)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", offset_reset)
            .create()
            .context("failed to create the state consumer")?;
        consumer.subscribe(&[&topics.state_topic]).context("failed to subscribe to the state topic")?;
        let producer: FutureProducer =
            kafka.producer_config(tuning).create().context("failed to create the action producer")?;
        Ok(Self { consumer, producer, topics, tracker: OffsetTracker::default() })
    }

    /// Flushes the producer and commits the stored offsets synchronously (on shutdown).
    pub fn close(&self) {
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "action producer flush incomplete");
        }
        if let Err(e) = self.consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            tracing::debug!(error = %e, "final commit skipped");
        }
    }

    fn to_raw(m: &rdkafka::message::BorrowedMessage<'_>) -> Raw {
        Raw {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
        }
    }
}

impl AgentLink for KafkaAgentLink {
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Raw>> {
        let first = loop {
            match self.consumer.recv().await {
                Ok(m) => break Self::to_raw(&m),
                Err(e) => {
                    tracing::warn!(error = %e, "state consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(Self::to_raw(&m)),
                _ => break,
            }
        }
        Ok(batch)
    }

    fn publish(&self, key: String, payload: Vec<u8>) -> Delivery {
        let (producer, topic) = (self.producer.clone(), self.topics.action_topic.clone());
        Box::pin(async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer.send(record, Duration::from_secs(120)).await.map(|_| ()).map_err(|(e, _)| e.to_string())
        })
    }

    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery {
        dead_letter_kafka(&self.producer, &self.topics.dead_letter_topic, raw, reason)
    }

    fn begin(&mut self, raw: &Raw) {
        self.tracker.begin(&raw.topic, raw.partition, raw.offset);
    }

    fn done(&mut self, raw: &Raw) {
        if let Some(next) = self.tracker.complete(&raw.topic, raw.partition, raw.offset) {
            let mut tpl = TopicPartitionList::new();
            let stored = tpl
                .add_partition_offset(&raw.topic, raw.partition, Offset::Offset(next))
                .and_then(|()| self.consumer.store_offsets(&tpl));
            // Fails for a partition revoked meanwhile: its new owner re-reads the record.
            if let Err(e) = stored {
                tracing::debug!(error = %e, partition = raw.partition, "offset not stored");
            }
        }
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}

/// In-process transport over bounded channels; dead letters are kept in memory.
#[derive(Debug)]
pub struct MemoryAgentLink {
    state_rx: mpsc::Receiver<Raw>,
    action_tx: mpsc::Sender<Raw>,
    seq: i64,
    /// Dead letters written so far, with their reasons.
    pub dead_letters: Arc<Mutex<Vec<(Raw, String)>>>,
}

impl MemoryAgentLink {
    /// A link that reads states from `state_rx` and sends actions on `action_tx`.
    pub fn new(state_rx: mpsc::Receiver<Raw>, action_tx: mpsc::Sender<Raw>) -> Self {
        Self { state_rx, action_tx, seq: 0, dead_letters: Arc::default() }
    }
}

impl AgentLink for MemoryAgentLink {
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Raw>> {
        let first = self.state_rx.recv().await.context("env side of the memory link is closed")?;
        let mut batch = vec![first];
        while batch.len() < max {
            match self.state_rx.try_recv() {
                Ok(raw) => batch.push(raw),
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    fn publish(&self, key: String, payload: Vec<u8>) -> Delivery {
        let tx = self.action_tx.clone();
        let raw = Raw {
            key: Some(key.into_bytes()),
            payload,
            topic: protocol::topics::ACTION_TOPIC.into(),
            partition: 0,
            offset: self.seq,
        };
        Box::pin(async move { tx.send(raw).await.map_err(|_| "env side of the memory link is closed".to_string()) })
    }

    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery {
        if let Ok(mut dead) = self.dead_letters.lock() {
            dead.push((raw.clone(), reason.to_string()));
        }
        Box::pin(async { Ok(()) })
    }

    fn begin(&mut self, _raw: &Raw) {
        self.seq += 1;
    }

    fn done(&mut self, _raw: &Raw) {}

    fn name(&self) -> &'static str {
        "memory"
    }
}
