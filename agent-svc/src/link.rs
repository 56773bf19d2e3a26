//! The agent's side of a transport: batches of states in, actions out, and the positions of the
//! states whose actions are durable. Kafka (`KafkaAgentLink`, one consumer group shared by all
//! replicas) or in-process bounded channels (`MemoryAgentLink`).
//!
//! Invariant (Kafka): a state's offset is stored for commit only once every state before it in
//! its partition is resolved (answered durably, dead-lettered durably, or needing no answer),
//! and a partition revoked by a rebalance first commits what is resolved, then forgets what is
//! in flight, so its new owner re-reads exactly the unresolved states.

use std::{
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::Context;
use common::{
    kafka::{KafkaArgs, Topics, TuningArgs},
    link::{dead_letter_kafka, Delivery, Raw},
    offsets::{OffsetTracker, Ticket},
};
use futures::FutureExt;
use rdkafka::{
    client::ClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    producer::{FutureProducer, FutureRecord, Producer},
    Offset, TopicPartitionList,
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
    fn begin(&mut self, raw: &Raw) -> Ticket;
    /// Marks a record's effect durable (or the record resolved for good, e.g. dead-lettered);
    /// its position may now be committed. A ticket of a partition revoked since is ignored.
    fn done(&mut self, ticket: &Ticket);
    /// Name of the transport.
    fn name(&self) -> &'static str;
}

/// The state consumer's context: on a revocation it commits the offsets stored so far and
/// forgets the revoked partitions' records in flight (their new owner re-reads them).
/// Runs inside librdkafka's rebalance callback: it only takes a short lock and commits
/// synchronously, as librdkafka allows there, and never awaits or spawns.
#[derive(Debug, Clone, Default)]
pub struct RebalanceContext {
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl RebalanceContext {
    fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        // The tracker holds plain sets; a panic elsewhere cannot leave it inconsistent.
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The gauge of the lag of the partitions a replica owns.
const LAG_GAUGE: &str = "streamrec_agent_consumer_lag_messages";

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        common::metrics::record_consumer_lag(&statistics, LAG_GAUGE);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else { return };
        if tpl.count() == 0 {
            return;
        }
        common::metrics::clear_consumer_lag(tpl, LAG_GAUGE);
        // Commit what is resolved while the partitions are still ours ...
        let committed = consumer.commit_consumer_state(CommitMode::Sync);
        // ... then forget what is not: the new owner re-reads it from the committed offset.
        let mut tracker = self.tracker();
        let dropped: usize = tpl.elements().iter().map(|e| tracker.revoke(e.topic(), e.partition())).sum();
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match committed {
            Ok(()) => tracing::info!(
                ?partitions,
                in_flight_dropped = dropped,
                "partitions revoked; resolved offsets committed"
            ),
            // Nothing stored yet is a normal answer; anything else is worth a warning: the new
            // owner then re-reads from the last commit that went through (at least once).
            Err(e) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {
                tracing::info!(?partitions, in_flight_dropped = dropped, "partitions revoked; nothing new to commit")
            }
            Err(e) => {
                tracing::warn!(?partitions, in_flight_dropped = dropped, error = %e, "partitions revoked; commit failed")
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions assigned");
            common::metrics::ready(common::metrics::Dependency::Kafka);
        }
    }
}

/// Kafka: a consumer in the agents' group on the state topic, with offsets stored only once the
/// answering action is acknowledged (auto-commit then commits what was stored), and an
/// idempotent `acks=all` producer for actions and dead letters.
pub struct KafkaAgentLink {
    consumer: StreamConsumer<RebalanceContext>,
    producer: FutureProducer,
    topics: Topics,
    context: RebalanceContext,
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
        let context = RebalanceContext::default();
        let mut cfg = kafka.consumer_config(group, tuning);
        cfg.set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", offset_reset);
        common::metrics::enable_kafka_statistics(&mut cfg);
        let consumer: StreamConsumer<RebalanceContext> =
            cfg.create_with_context(context.clone()).context("failed to create the state consumer")?;
        consumer.subscribe(&[&topics.state_topic]).context("failed to subscribe to the state topic")?;
        let producer: FutureProducer =
            kafka.producer_config(tuning).create().context("failed to create the action producer")?;
        Ok(Self { consumer, producer, topics, context })
    }

    /// States read whose answer is not durable yet, over the partitions owned.
    pub fn in_flight(&self) -> usize {
        self.context.tracker().in_flight()
    }

    /// Flushes the producer, commits the stored offsets synchronously and leaves the group
    /// (on shutdown; see [`common::kafka::close_consumer`]).
    pub fn close(self) {
        if let Err(e) = self.producer.flush(Duration::from_secs(10)) {
            tracing::warn!(error = %e, "action producer flush incomplete");
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(e) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final commit failed; the states after the last commit will be re-read")
            }
        }
        common::kafka::close_consumer(self.consumer, "state consumer", common::kafka::CONSUMER_CLOSE_TIMEOUT);
    }
}

impl AgentLink for KafkaAgentLink {
    async fn next_batch(&mut self, max: usize) -> anyhow::Result<Vec<Raw>> {
        let first = loop {
            match self.consumer.recv().await {
                Ok(m) => break Raw::from_message(&m),
                Err(e) => {
                    tracing::warn!(error = %e, "state consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < max {
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => batch.push(Raw::from_message(&m)),
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

    fn begin(&mut self, raw: &Raw) -> Ticket {
        self.context.tracker().begin(&raw.topic, raw.partition, raw.offset)
    }

    fn done(&mut self, ticket: &Ticket) {
        let next = self.context.tracker().complete(ticket);
        if let Some(next) = next {
            let mut tpl = TopicPartitionList::new();
            let stored = tpl
                .add_partition_offset(&ticket.topic, ticket.partition, Offset::Offset(next))
                .and_then(|()| self.consumer.store_offsets(&tpl));
            // Fails for a partition revoked between the two lines above: its new owner
            // re-reads the record (at least once).
            if let Err(e) = stored {
                tracing::debug!(error = %e, partition = ticket.partition, "offset not stored");
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
    /// Records begun and not done, as in Kafka (nothing is committed in memory).
    tracker: OffsetTracker,
    /// Dead letters written so far, with their reasons.
    pub dead_letters: Arc<Mutex<Vec<(Raw, String)>>>,
}

impl MemoryAgentLink {
    /// A link that reads states from `state_rx` and sends actions on `action_tx`.
    pub fn new(state_rx: mpsc::Receiver<Raw>, action_tx: mpsc::Sender<Raw>) -> Self {
        Self { state_rx, action_tx, seq: 0, tracker: OffsetTracker::default(), dead_letters: Arc::default() }
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
        let raw =
            Raw { key: Some(key.into_bytes()), ..Raw::in_memory(protocol::topics::ACTION_TOPIC, payload, self.seq) };
        Box::pin(async move { tx.send(raw).await.map_err(|_| "env side of the memory link is closed".to_string()) })
    }

    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery {
        if let Ok(mut dead) = self.dead_letters.lock() {
            dead.push((raw.clone(), reason.to_string()));
        }
        Box::pin(async { Ok(()) })
    }

    fn begin(&mut self, raw: &Raw) -> Ticket {
        self.seq += 1;
        self.tracker.begin(&raw.topic, raw.partition, raw.offset)
    }

    fn done(&mut self, ticket: &Ticket) {
        self.tracker.complete(ticket);
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

impl MemoryAgentLink {
    /// States read whose answer is not resolved yet (0 after a clean run).
    pub fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }
}
