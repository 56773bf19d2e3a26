//! Helpers for the end-to-end tests: where the local stack is, the repo root, and unique names
//! so that tests never see each other's topics, groups or keyspaces.

use std::path::PathBuf;

/// The repository root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Bootstrap brokers of the running stack (`KAFKA_BOOTSTRAP_SERVERS`, else the local defaults).
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .unwrap_or_else(|_| "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094".into())
}

/// Base URL of the Confluent-compatible registry API of the running stack.
pub fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:8081/apis/ccompat/v7".into())
}

/// Cassandra contact point of the running stack.
pub fn cassandra_node() -> String {
    std::env::var("CASSANDRA_NODES").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

/// Folder of the stack's cache (jars, the cqlsh venv), as `deploy/local/stack.sh` computes it.
pub fn stack_cache() -> PathBuf {
    match std::env::var("STREAMREC_CACHE") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/streamrec"),
    }
}

/// The cqlsh that `deploy/local/stack.sh` installs from PyPI.
pub fn cqlsh() -> PathBuf {
    stack_cache().join("venv/bin/cqlsh")
}

/// `prefix` plus a random suffix; valid as a topic, group or keyspace name.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
