//! A small client for the Confluent Schema Registry REST API (served by Confluent's registry at
//! the root and by Apicurio under `/apis/ccompat/v7`). Only what the services need: look up or
//! register a subject's schema and read its id, and find the schema a consumed record was
//! written with ([`SchemaResolver`], [`TopicCodec`]).
//!
//! Invariant: a record is refused (poison, [`DecodeError::Record`]) only for what is wrong with
//! the record itself: its frame, an id the registry does not know, an id of another subject, a
//! payload that breaks its writer's schema. A registry that cannot answer is never the record's
//! fault ([`DecodeError::Registry`], retryable).

use std::{
    ops::Deref,
    sync::{Arc, Mutex},
    time::Duration,
};

use protocol::{wire, Codec, Decoded, Message, ProtocolError, WriterSchema, WriterSchemas};
use serde::Deserialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

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
/// Longest wait for one lookup of a writer schema; a registry that hangs is an unreachable one.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a consumed record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record can never be decoded (poison): dead-letter it with this reason.
    #[error(transparent)]
    Record(#[from] ProtocolError),
    /// The registry could not say which schema the record was written with: not the record's
    /// fault; retry, never dead-letter.
    #[error("cannot look up the writer's schema: {0}")]
    Registry(#[from] RegistryError),
}

impl DecodeError {
    /// Whether trying again later can succeed (the registry was unreachable), as opposed to a
    /// record that is poison.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Registry(_))
    }
}

/// `GET /schemas/ids/{id}`.
#[derive(Debug, Deserialize)]
struct SchemaById {
    schema: String,
    /// Absent for Avro, as in Confluent's API.
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
}

/// One element of `GET /schemas/ids/{id}/versions`.
#[derive(Debug, Deserialize)]
struct SubjectVersion {
    subject: String,
}

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

    /// GETs `path` for a writer-schema lookup: `Ok(None)` when the registry answers 404.
    async fn get_lookup<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, RegistryError> {
        let url = format!("{}/{path}", self.base);
        match self.call(self.http.get(&url).timeout(LOOKUP_TIMEOUT), url.clone()).await {
            Ok(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| RegistryError::Status {
                url,
                status: 200,
                body: format!("{e}: {v}"),
            }),
            Err(RegistryError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The schema registered as global id `id`, compiled, with every subject it is registered
    /// under (`GET /schemas/ids/{id}` and `GET /schemas/ids/{id}/versions`). An id the registry
    /// does not know, or a schema that is not a usable JSON Schema, is the record's fault
    /// ([`DecodeError::Record`]); a registry that cannot answer is not ([`DecodeError::Registry`]).
    /// Not cached: see [`SchemaResolver`].
    pub async fn writer_schema(&self, id: u32) -> Result<WriterSchema, DecodeError> {
        let unknown = || DecodeError::Record(ProtocolError::UnknownSchemaId(id));
        let found: SchemaById = self.get_lookup(&format!("schemas/ids/{id}")).await?.ok_or_else(unknown)?;
        let versions: Vec<SubjectVersion> =
            self.get_lookup(&format!("schemas/ids/{id}/versions")).await?.ok_or_else(unknown)?;
        let invalid = |reason: String| DecodeError::Record(ProtocolError::InvalidWriterSchema { id, reason });
        let kind = found.schema_type.as_deref().unwrap_or("AVRO");
        if !kind.eq_ignore_ascii_case("JSON") {
            return Err(invalid(format!("a {kind} schema, not JSON")));
        }
        let schema: Value = serde_json::from_str(&found.schema).map_err(|e| invalid(e.to_string()))?;
        let mut subjects: Vec<String> = versions.into_iter().map(|v| v.subject).collect();
        subjects.sort();
        subjects.dedup();
        Ok(WriterSchema::compile(id, subjects, &schema)?)
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
    /// frame with their ids: states of type `S` (`StateMsg` or `RecoStateMsg`), actions. Both
    /// decode consumed records against their writer's schema, looked up in this registry
    /// (one cache for both, which already holds the two ids just registered).
    pub async fn step_codecs<S>(
        &self,
        topics: &crate::kafka::Topics,
    ) -> anyhow::Result<(TopicCodec<S>, TopicCodec<protocol::ActionMsg>)>
    where
        S: protocol::Message,
    {
        use anyhow::Context;
        use protocol::{schema::schema_of, topics::value_subject, ActionMsg};
        let (state_subject, action_subject) = (value_subject(&topics.state_topic), value_subject(&topics.action_topic));
        let state_id =
            self.register(&state_subject, &schema_of::<S>()).await.context("failed to register the state schema")?;
        let action_id = self
            .register(&action_subject, &schema_of::<ActionMsg>())
            .await
            .context("failed to register the action schema")?;
        let writers = SchemaResolver::registry(self.clone());
        // The registry gave these ids to exactly these schemas: no need to ask for them again.
        writers.learn(WriterSchema::local::<S>(state_id, &state_subject)?);
        writers.learn(WriterSchema::local::<ActionMsg>(action_id, &action_subject)?);
        Ok((
            TopicCodec::new(Codec::new(state_id)?, &topics.state_topic, writers.clone()),
            TopicCodec::new(Codec::new(action_id)?, &topics.action_topic, writers),
        ))
    }
}

/// Codecs for a transport without a registry (the in-memory one): states of type `S` framed
/// with id 1 and actions with id 2, under the subjects of the default topics. They know these
/// two ids only, each as this build's own schema (writer and reader are the same build), so a
/// record framed with any other id is refused as unknown.
pub fn local_step_codecs<S: Message>() -> Result<(TopicCodec<S>, TopicCodec<protocol::ActionMsg>), ProtocolError> {
    use protocol::topics::{value_subject, ACTION_TOPIC, STATE_TOPIC};
    let (state_id, action_id) = (1, 2);
    let writers = SchemaResolver::local(WriterSchemas::of([
        WriterSchema::local::<S>(state_id, &value_subject(STATE_TOPIC))?,
        WriterSchema::local::<protocol::ActionMsg>(action_id, &value_subject(ACTION_TOPIC))?,
    ]));
    Ok((
        TopicCodec::new(Codec::new(state_id)?, STATE_TOPIC, writers.clone()),
        TopicCodec::new(Codec::new(action_id)?, ACTION_TOPIC, writers),
    ))
}

/// Finds the schema each consumed record was written with, by the id in its frame, and keeps
/// every schema found (a registry never changes the schema of an id). Cloning shares the cache.
#[derive(Debug, Clone)]
pub struct SchemaResolver {
    /// `None`: knows only the schemas it was given (no registry).
    registry: Option<Registry>,
    cache: Arc<Mutex<WriterSchemas>>,
}

impl SchemaResolver {
    /// Looks unknown ids up in `registry`.
    pub fn registry(registry: Registry) -> Self {
        Self { registry: Some(registry), cache: Arc::default() }
    }

    /// Knows `schemas` and nothing else: for transports without a registry (the in-memory
    /// one), where every other id is unknown.
    pub fn local(schemas: WriterSchemas) -> Self {
        Self { registry: None, cache: Arc::new(Mutex::new(schemas)) }
    }

    /// Whether unknown ids are looked up in a registry.
    pub fn has_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// Adds a schema to the cache (one this process registered itself, say).
    pub fn learn(&self, schema: WriterSchema) -> Arc<WriterSchema> {
        lock(&self.cache).insert(schema)
    }

    /// The writer's schema of a record framed with `id` on a topic of `subject`: from the
    /// cache, else from the registry. A cached schema registered for other subjects is looked
    /// up again before the record is refused, since the same schema may have been registered
    /// under the topic's subject since (the id stays the same).
    pub async fn writer_schema(&self, id: u32, subject: &str) -> Result<Arc<WriterSchema>, DecodeError> {
        let cached = lock(&self.cache).get(id);
        if let Some(schema) = cached {
            match schema.check_subject(subject) {
                Ok(()) => return Ok(schema),
                Err(e) if self.registry.is_none() => return Err(e.into()),
                Err(_) => {} // asked again below
            }
        }
        let Some(registry) = &self.registry else { return Err(ProtocolError::UnknownSchemaId(id).into()) };
        let schema = self.learn(registry.writer_schema(id).await?);
        schema.check_subject(subject)?;
        Ok(schema)
    }

    /// Decodes a record of a topic whose subject is `subject` with `codec`, against the schema
    /// its frame names (see [`Codec::decode_written`]).
    pub async fn decode<T: Message>(
        &self,
        codec: &Codec<T>,
        subject: &str,
        bytes: &[u8],
    ) -> Result<Decoded<T>, DecodeError> {
        let (id, _) = wire::unframe(bytes).map_err(ProtocolError::from)?;
        let writer = self.writer_schema(id, subject).await?;
        Ok(codec.decode_written(bytes, &writer)?)
    }
}

fn lock(cache: &Mutex<WriterSchemas>) -> std::sync::MutexGuard<'_, WriterSchemas> {
    // The cache is only ever inserted into: a panic elsewhere cannot leave it half-written.
    cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A [`Codec`] bound to its topic: encodes as the codec does (it derefs to it) and decodes
/// consumed records against their writer's schema, which must be registered under the topic's
/// subject (`<topic>-value`).
#[derive(Debug)]
pub struct TopicCodec<T> {
    codec: Codec<T>,
    subject: String,
    writers: SchemaResolver,
}

impl<T> Deref for TopicCodec<T> {
    type Target = Codec<T>;

    fn deref(&self) -> &Codec<T> {
        &self.codec
    }
}

/// First and longest pause between lookups while the registry cannot be reached.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

impl<T: Message> TopicCodec<T> {
    /// `codec` for records of `topic`, with writer schemas from `writers`.
    pub fn new(codec: Codec<T>, topic: &str, writers: SchemaResolver) -> Self {
        Self { codec, subject: protocol::topics::value_subject(topic), writers }
    }

    /// The topic's subject, `<topic>-value`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Where writer schemas come from.
    pub fn writers(&self) -> &SchemaResolver {
        &self.writers
    }

    /// Decodes a consumed record against its writer's schema; one attempt.
    pub async fn decode_record(&self, bytes: &[u8]) -> Result<Decoded<T>, DecodeError> {
        self.writers.decode(&self.codec, &self.subject, bytes).await
    }

    /// [`Self::decode_record`], waiting out a registry that cannot be reached: retries with
    /// backoff (100 ms doubling to 5 s) until it answers or `stop` is cancelled. So the result
    /// is either the message, a poison record ([`DecodeError::Record`]), or, only once `stop`
    /// is cancelled, [`DecodeError::Registry`]: leave that record unprocessed and uncommitted.
    pub async fn decode_record_or_wait(
        &self,
        bytes: &[u8],
        stop: &CancellationToken,
    ) -> Result<Decoded<T>, DecodeError> {
        let mut pause = RETRY_BACKOFF.0;
        loop {
            match self.decode_record(bytes).await {
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, subject = %self.subject, retry_in = ?pause, "schema registry unavailable");
                    tokio::select! {
                        () = stop.cancelled() => return Err(e),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(RETRY_BACKOFF.1);
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::{messages::examples, ActionMsg, StateMsg};

    use super::*;

    /// The in-memory layout: ids 1 (states of `s`) and 2 (actions of `a`), no registry.
    fn local() -> (TopicCodec<StateMsg>, TopicCodec<ActionMsg>) {
        let schemas = [WriterSchema::local::<StateMsg>(1, "s-value"), WriterSchema::local::<ActionMsg>(2, "a-value")];
        let writers =
            SchemaResolver::local(WriterSchemas::of(schemas.into_iter().map(|s| s.unwrap_or_else(|e| panic!("{e}")))));
        let (states, actions) = (Codec::new(1), Codec::new(2));
        let states = TopicCodec::new(states.unwrap_or_else(|e| panic!("{e}")), "s", writers.clone());
        (states, TopicCodec::new(actions.unwrap_or_else(|e| panic!("{e}")), "a", writers))
    }

    #[tokio::test]
    async fn a_local_resolver_knows_its_ids_only_and_checks_their_subjects() {
        let (states, actions) = local();
        assert!(!states.writers().has_registry());
        assert_eq!((states.subject(), actions.subject()), ("s-value", "a-value"));
        let msg = examples::state();
        let bytes = states.encode(&msg).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(states.decode_record(&bytes).await.ok().map(|d| d.msg), Some(msg.clone()));

        let unknown = wire::frame(7, &serde_json::to_vec(&msg).unwrap_or_default());
        let err = states.decode_record(&unknown).await.err();
        assert!(matches!(&err, Some(DecodeError::Record(ProtocolError::UnknownSchemaId(7)))), "{err:?}");
        assert!(!err.is_some_and(|e| e.is_retryable()), "an unknown id is the record's fault");

        // A state framed as a state, read from the action topic: id 1 is not an action subject's.
        let err = actions.decode_record(&bytes).await.err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("schema id 1 belongs to subject s-value, not a-value"));
    }

    #[tokio::test]
    async fn waiting_on_a_poison_record_returns_at_once() {
        let (states, _) = local();
        let stop = CancellationToken::new();
        let err = states.decode_record_or_wait(b"\0\0\0\0\x01{", &stop).await.err();
        assert!(matches!(err, Some(DecodeError::Record(ProtocolError::Json(_)))), "{err:?}");
    }

    #[test]
    fn only_registry_failures_are_retryable() {
        let registry =
            DecodeError::Registry(RegistryError::Status { url: "u".into(), status: 503, body: String::new() });
        assert!(registry.is_retryable());
        assert!(!DecodeError::Record(ProtocolError::UnknownSchemaId(3)).is_retryable());
    }
}
