//! `check`: what a service sees of the stack it is about to use (brokers, its topics, its
//! schema subjects), as one JSON object. Fails with a clear error when something is missing.

use anyhow::Context;
use serde_json::{json, Value};

use crate::{
    kafka::{describe_topics, KafkaArgs},
    registry::{Registry, RegistryArgs},
};

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
