//! The env's side of a transport: publish states, receive actions, dead-letter what cannot be
//! used. Two implementations: Kafka (`KafkaEnvLink`) and in-process bounded channels
//! (`MemoryEnvLink`); the run loop in `lib.rs` is the same for both.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context;
pub use common::kafka::Topics;
use common::{
    kafka::{KafkaArgs, TuningArgs},
    link::{dead_letter_kafka, Delivery, Raw},
};
use rdkafka::{
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::mpsc;

/// The env's view of a transport.
pub trait EnvLink: Send {
    /// Publishes a state; the returned future resolves once it is durable.
    fn publish(&self, key: String, payload: Vec<u8>) -> Delivery;
    /// The next action record; errors only when the transport is gone for good.
    fn next_action(&mut self) -> impl Future<Output = anyhow::Result<Raw>> + Send;
    /// Sends a record that can never be used to the dead-letter destination, with the reason.
    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery;
    /// Name of the transport, for the summary.
    fn name(&self) -> &'static str;
}

/// Kafka: an idempotent `acks=all` producer for states and dead letters, and a consumer that
/// reads every partition of the action topic from where it stood when the run started.
pub struct KafkaEnvLink {
    producer: FutureProducer,
    consumer: StreamConsumer,
    topics: Topics,
}

impl std::fmt::Debug for KafkaEnvLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaEnvLink").field("topics", &self.topics).finish_non_exhaustive()
    }
}

impl KafkaEnvLink {
    /// Connects and positions the action consumer at the current end of every partition, so
    /// that no action produced after this call is missed. The env commits no offsets: its
    /// episodes live in memory and end with the process (see docs/DESIGN.md).
    pub async fn connect(kafka: &KafkaArgs, tuning: &TuningArgs, topics: Topics) -> anyhow::Result<Self> {
        let producer: FutureProducer =
            kafka.producer_config(tuning).create().context("failed to create the state producer")?;
        let consumer: StreamConsumer = kafka
            .consumer_config("env-svc", tuning)
            .set("enable.auto.commit", "false")
            .create()
            .context("failed to create the action consumer")?;
        let (consumer, topic) = (Arc::new(consumer), topics.action_topic.clone());
        let c = consumer.clone();
        let tpl = tokio::task::spawn_blocking(move || common::partitions::at_end(&*c, &topic))
            .await
            .context("metadata task failed")??;
        consumer.assign(&tpl).context("failed to assign the action partitions")?;
        let consumer = Arc::into_inner(consumer).context("consumer still shared")?;
        Ok(Self { producer, consumer, topics })
    }

    /// Waits until every queued record is acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}

impl EnvLink for KafkaEnvLink {
    fn publish(&self, key: String, payload: Vec<u8>) -> Delivery {
        let (producer, topic) = (self.producer.clone(), self.topics.state_topic.clone());
        Box::pin(async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            producer.send(record, Duration::from_secs(120)).await.map(|_| ()).map_err(|(e, _)| e.to_string())
        })
    }

    async fn next_action(&mut self) -> anyhow::Result<Raw> {
        loop {
            match self.consumer.recv().await {
                Ok(m) => return Ok(Raw::from_message(&m)),
                // Broker failures surface here and are retried by librdkafka; keep reading.
                Err(e) => {
                    tracing::warn!(error = %e, "action consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery {
        dead_letter_kafka(&self.producer, &self.topics.dead_letter_topic, raw, reason)
    }

    fn name(&self) -> &'static str {
        "kafka"
    }
}

/// In-process transport over bounded channels; dead letters are kept in memory for inspection.
#[derive(Debug)]
pub struct MemoryEnvLink {
    state_tx: mpsc::Sender<Raw>,
    action_rx: mpsc::Receiver<Raw>,
    seq: Arc<AtomicI64>,
    /// Dead letters written so far, with their reasons.
    pub dead_letters: Arc<Mutex<Vec<(Raw, String)>>>,
}

impl MemoryEnvLink {
    /// A link that sends states on `state_tx` and reads actions from `action_rx`.
    pub fn new(state_tx: mpsc::Sender<Raw>, action_rx: mpsc::Receiver<Raw>) -> Self {
        Self { state_tx, action_rx, seq: Arc::default(), dead_letters: Arc::default() }
    }
}

impl EnvLink for MemoryEnvLink {
    fn publish(&self, key: String, payload: Vec<u8>) -> Delivery {
        let raw = Raw {
            key: Some(key.into_bytes()),
            ..Raw::in_memory(protocol::topics::STATE_TOPIC, payload, self.seq.fetch_add(1, Ordering::Relaxed))
        };
        let tx = self.state_tx.clone();
        Box::pin(async move { tx.send(raw).await.map_err(|_| "agent side of the memory link is closed".to_string()) })
    }

    async fn next_action(&mut self) -> anyhow::Result<Raw> {
        self.action_rx.recv().await.context("agent side of the memory link is closed")
    }

    fn dead_letter(&self, raw: &Raw, reason: &str) -> Delivery {
        if let Ok(mut dead) = self.dead_letters.lock() {
            dead.push((raw.clone(), reason.to_string()));
        }
        Box::pin(async { Ok(()) })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
