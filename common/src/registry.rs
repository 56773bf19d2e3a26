//! A small client for the Confluent Schema Registry REST API (served by Confluent's registry at
//! the root and by Apicurio under `/apis/ccompat/v7`). Only what the services need: look up or
//! register a subject's schema and read its id.

use serde::Deserialize;
use serde_json::Value;

/// Where the registry is; flattened into every service's config.
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Base URL of the Confluent-compatible schema registry API.
    #[arg(long, env = "SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:8081/apis/ccompat/v7")]
    pub schema_registry_url: String,
}

/// Failures talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry could not be reached or answered garbage.
    #[error("schema registry at {url} unreachable: {source}")]
    Http {
        /// The URL called.
        url: String,
        /// What reqwest reported.
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("schema registry refused {url}: HTTP {status}: {body}")]
    Status {
        /// The URL called.
        url: String,
        /// HTTP status code.
        status: u16,
        /// Response body, usually `{"error_code":..,"message":..}`.
        body: String,
    },
}

/// One registered version of a subject.
#[derive(Debug, Clone, Deserialize)]
pub struct SchemaVersion {
    /// Global schema id, the one written into the wire format.
    pub id: u32,
    /// Version within the subject.
    pub version: u32,
    /// The schema as the registry stored it (a JSON document in a string).
    pub schema: String,
}

/// A registry client bound to one base URL.
#[derive(Debug, Clone)]
pub struct Registry {
    base: String,
    http: reqwest::Client,
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

impl Registry {
    /// A client for the registry at `args.schema_registry_url`.
    pub fn new(args: &RegistryArgs) -> Self {
        Self { base: args.schema_registry_url.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    async fn call(&self, req: reqwest::RequestBuilder, url: String) -> Result<Value, RegistryError> {
        let resp = req.send().await.map_err(|source| RegistryError::Http { url: url.clone(), source })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(RegistryError::Status { url, status: status.as_u16(), body });
        }
        resp.json().await.map_err(|source| RegistryError::Http { url, source })
    }

    /// All subjects.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let url = format!("{}/subjects", self.base);
        let v = self.call(self.http.get(&url), url).await?;
        Ok(serde_json::from_value(v).unwrap_or_default())
    }

    /// The latest version of a subject.
    pub async fn latest(&self, subject: &str) -> Result<SchemaVersion, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions/latest", self.base);
        let v = self.call(self.http.get(&url), url.clone()).await?;
        serde_json::from_value(v.clone()).map_err(|e| RegistryError::Status {
            url,
            status: 200,
            body: format!("{e}: {v}"),
        })
    }

    /// Registers `schema` under `subject` (a no-op returning the same id if it is already
    /// there) and returns its global id.
    pub async fn register(&self, subject: &str, schema: &Value) -> Result<u32, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let body = serde_json::json!({"schemaType": "JSON", "schema": schema.to_string()});
        let req = self.http.post(&url).header("Content-Type", CONTENT_TYPE).json(&body);
        let v = self.call(req, url.clone()).await?;
        v["id"].as_u64().and_then(|id| u32::try_from(id).ok()).ok_or(RegistryError::Status {
            url,
            status: 200,
            body: v.to_string(),
        })
    }
}

impl Registry {
    /// Registers the schemas of both step subjects of `topics` (idempotent: an identical schema
    /// keeps its id; an incompatible one is refused by the registry) and returns the codecs that
    /// frame with their ids: states of type `S` (`StateMsg` or `RecoStateMsg`), actions.
    pub async fn step_codecs<S>(
        &self,
        topics: &crate::kafka::Topics,
    ) -> anyhow::Result<(protocol::Codec<S>, protocol::Codec<protocol::ActionMsg>)>
    where
        S: protocol::Message,
    {
        use anyhow::Context;
        use protocol::{schema::schema_of, topics::value_subject, ActionMsg};
        let state_id = self
            .register(&value_subject(&topics.state_topic), &schema_of::<S>())
            .await
            .context("failed to register the state schema")?;
        let action_id = self
            .register(&value_subject(&topics.action_topic), &schema_of::<ActionMsg>())
            .await
            .context("failed to register the action schema")?;
        Ok((protocol::Codec::new(state_id)?, protocol::Codec::new(action_id)?))
    }
}
