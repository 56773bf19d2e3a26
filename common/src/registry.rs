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
    #[error("schema registry at {url} unreachable: {}", Causes(error))]
    Http {
        /// The URL called.
        url: String,
        /// What reqwest reported; its causes are in this error's message (not a `source`, so
        /// that a chain printer does not print them twice).
        error: reqwest::Error,
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
/// How many times a request that got no answer is sent before the registry counts as unreachable.
const SEND_ATTEMPTS: u32 = 3;

/// An error with every cause under it, `a: b: c` (reqwest's own message names only the URL).
struct Causes<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

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

    /// Sends `req`. A request that fails before any answer (a refused connection, or a pooled
    /// keep-alive connection that the registry closed as it was reused) is sent again, up to
    /// [`SEND_ATTEMPTS`] times in all: every call of this client is idempotent (lookups, and a
    /// registration that returns the same id for the same schema). A timeout is not resent: a
    /// registry that hangs is an unreachable one.
    async fn call(&self, req: reqwest::RequestBuilder, url: String) -> Result<Value, RegistryError> {
        let mut attempt = 1;
        let mut next = req;
        let resp = loop {
            let spare = next.try_clone();
            match next.send().await {
                Ok(resp) => break resp,
                Err(source) if attempt < SEND_ATTEMPTS && !source.is_timeout() && source.status().is_none() => {
                    let Some(spare) = spare else { return Err(RegistryError::Http { url, error: source }) };
                    tracing::warn!(url, attempt, error = %Causes(&source), "registry request failed before an answer; sending it again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                    next = spare;
                }
                Err(source) => return Err(RegistryError::Http { url, error: source }),
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(RegistryError::Status { url, status: status.as_u16(), body });
        }
        resp.json().await.map_err(|error| RegistryError::Http { url, error })
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

    /// A loopback server that closes the first `drops` connections unanswered, then answers
    /// every request with `{"subjects": 1}`; returns its base URL and a count of connections.
    async fn flaky_server(drops: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://{}", listener.local_addr().unwrap_or_else(|e| panic!("{e}")));
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                if count.fetch_add(1, Ordering::SeqCst) < drops {
                    drop(conn);
                    continue;
                }
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let body = r#"["a","b"]"#;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = conn.write_all(format!("{head}{body}").as_bytes()).await;
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_connection_closed_unanswered_is_sent_again_and_then_reported_with_its_causes() {
        use std::sync::atomic::Ordering;
        // Closed once, then answered: the call succeeds on its second connection.
        let (url, seen) = flaky_server(1).await;
        let registry = Registry::new(&RegistryArgs { schema_registry_url: url });
        let subjects = registry.subjects().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((subjects, seen.load(Ordering::SeqCst)), (vec!["a".to_string(), "b".to_string()], 2));

        // Closed every time: unreachable after SEND_ATTEMPTS connections, and the message says why.
        let (url, seen) = flaky_server(usize::MAX).await;
        let registry = Registry::new(&RegistryArgs { schema_registry_url: url.clone() });
        let err = registry.subjects().await.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(seen.load(Ordering::SeqCst), SEND_ATTEMPTS as usize);
        assert!(
            err.starts_with(&format!("schema registry at {url}/subjects unreachable: error sending request")),
            "{err}"
        );
        assert!(err.matches(": ").count() >= 2, "the causes under reqwest's message are named: {err}");
    }
}
