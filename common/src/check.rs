//! `check`: what a service sees of the stack it is about to use (brokers, its topics, its
//! schema subjects), as one JSON object. Fails with a clear error when something is missing.

use anyhow::Context;
use serde_json::{json, Value};

use crate::{
    kafka::{describe_topics, EnvKind, KafkaArgs, TopicArgs, Topics},
    registry::{Registry, RegistryArgs},
};

/// Where a service finds the stack, and which environment's topics it uses: flattened into
/// every service's `run`, and the whole of its `check`.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Environment: `fashion` (Amazon Fashion review sequences, `StateMsg`) or `recogym`
    /// (RecoGym's `reco-gym-v1` simulator, `RecoStateMsg`); picks the topics and the state type.
    #[arg(long = "env", env = "ENV_KIND", value_enum, default_value_t = EnvKind::Fashion)]
    pub env: EnvKind,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
}

impl StackArgs {
    /// The environment's topics, with the names given by flag or variable in place.
    pub fn topics(&self) -> Topics {
        self.topics.resolve(self.env)
    }

    /// `check`: the report of the environment's three topics and its two subjects (states,
    /// actions).
    pub async fn check(&self) -> anyhow::Result<Value> {
        let t = self.topics();
        let subjects =
            [protocol::topics::value_subject(&t.state_topic), protocol::topics::value_subject(&t.action_topic)];
        let names = [t.state_topic.as_str(), t.action_topic.as_str(), t.dead_letter_topic.as_str()];
        report(&self.kafka, &self.registry, &names, &subjects).await
    }
}

/// Inspects the brokers, `topics` and `subjects`; errors name the first missing piece.
pub async fn report(
    kafka: &KafkaArgs,
    registry: &RegistryArgs,
    topics: &[&str],
    subjects: &[String],
) -> anyhow::Result<Value> {
    let (kafka, owned_topics) = (kafka.clone(), topics.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    let (brokers, views) = tokio::task::spawn_blocking(move || {
        let names: Vec<&str> = owned_topics.iter().map(String::as_str).collect();
        describe_topics(&kafka, &names)
    })
    .await
    .context("metadata task panicked")??;
    let registry = Registry::new(registry);
    let mut registered = Vec::new();
    for subject in subjects {
        let v = registry
            .latest(subject)
            .await
            .with_context(|| format!("subject {subject} is not registered; run `make stack-up`"))?;
        registered.push(json!({"subject": subject, "id": v.id, "version": v.version}));
    }
    Ok(json!({"brokers": brokers, "topics": views, "subjects": registered}))
}
