//! Kafka connection settings shared by the services, and an inspection of the cluster that the
//! `check` subcommands print.

use std::time::Duration;

use anyhow::Context;
use rdkafka::{
    admin::AdminClient,
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    ClientConfig,
};
use serde::Serialize;

/// Where the brokers are; flattened into every service's config.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Comma-separated bootstrap brokers.
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
    )]
    pub bootstrap_servers: String,
}

impl KafkaArgs {
    /// A client config with the bootstrap list set; callers add their own settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap_servers);
        cfg
    }
}

/// What a topic looks like from the cluster's metadata.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopicView {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: usize,
    /// Replicas of partition 0.
    pub replication_factor: usize,
    /// Partitions whose in-sync replica set is smaller than their replica set.
    pub under_replicated: usize,
}

/// Broker ids and the named topics as the cluster reports them; absent topics are errors.
pub fn describe_topics(
    args: &KafkaArgs,
    topics: &[&str],
) -> anyhow::Result<(Vec<i32>, Vec<TopicView>)> {
    let consumer: BaseConsumer = args
        .client_config()
        .create()
        .context("failed to create a kafka client")?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .with_context(|| format!("failed to fetch metadata from {}", args.bootstrap_servers))?;
    let brokers = md.brokers().iter().map(|b| b.id()).collect();
    let mut views = Vec::new();
    for name in topics {
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == *name)
            .with_context(|| format!("topic {name} does not exist; run `make stack-up`"))?;
        let parts = topic.partitions();
        views.push(TopicView {
            name: (*name).to_string(),
            partitions: parts.len(),
            replication_factor: parts.first().map_or(0, |p| p.replicas().len()),
            under_replicated: parts
                .iter()
                .filter(|p| p.isr().len() < p.replicas().len())
                .count(),
        });
    }
    Ok((brokers, views))
}

/// An admin client for topic management in tests and tools.
pub fn admin(args: &KafkaArgs) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    args.client_config()
        .create()
        .context("failed to create a kafka admin client")
}
