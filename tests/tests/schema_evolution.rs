//! Schema evolution through the real stack: the fashion state schema as it was
//! (`protocol/schemas/history/fashion_state-value.v2.json`) and as it is (three more optional
//! fields) are registered as two versions of one subject with BACKWARD compatibility; records
//! framed with either id are read by a consumer built before the fields existed and by one built
//! after, each record validated against the schema its frame names. Records framed with an id
//! the registry does not know, or with the id of another subject, are refused with that reason,
//! and a registry that cannot be reached is a retryable failure, never a refusal. The agent's
//! training-log reader decodes the same way.

use std::time::{Duration, Instant};

use common::{
    kafka::KafkaArgs,
    registry::{DecodeError, Registry, RegistryArgs, SchemaResolver, TopicCodec},
};
use protocol::{
    messages::examples, schema::schema_of, topics::value_subject, wire, ActionMsg, Codec, Decoded, ProductObs,
    ProtocolError, RecoStateMsg, StateMsg,
};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use streamrec_tests::{bootstrap, kafka_config, read_topic, registry, registry_url, repo_root, TestTopics};
use tokio_util::sync::CancellationToken;

/// `StateMsg` as it was before `last_action` and `catalog`: the reader of an agent built then
/// (with this build's convention: the schema is closed, serde ignores unknown fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
struct OldStateMsg {
    schema_version: u32,
    env_id: String,
    episode_id: String,
    step: u32,
    user_id: String,
    n_actions: u32,
    observation: ProductObs,
    reward: f64,
    next_item_hit: bool,
    terminated: bool,
    truncated: bool,
    #[serde(default)]
    attempt: u32,
    ts_ms: i64,
}

/// An id no registry of the stack hands out.
const UNKNOWN_ID: u32 = 2_000_000_000;

fn old_schema() -> serde_json::Value {
    let path = repo_root().join("protocol/schemas/history/fashion_state-value.v2.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Sets the compatibility level of `subject`, as `deploy/init/register-schemas.sh` does.
async fn set_compatibility(subject: &str, level: &str) {
    let url = format!("{}/config/{subject}", registry_url());
    let body = serde_json::json!({ "compatibility": level });
    reqwest::Client::new()
        .put(&url)
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .json(&body)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
}

/// The version numbers registered under `subject`.
async fn versions(subject: &str) -> Vec<u64> {
    let url = format!("{}/subjects/{subject}/versions", registry_url());
    let got: serde_json::Value = reqwest::get(&url)
        .await
        .and_then(|r| r.error_for_status())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    got.as_array().map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect()).unwrap_or_default()
}

fn json<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_else(|e| panic!("{e}"))
}

fn old_state(step: u32) -> OldStateMsg {
    let s = examples::state();
    OldStateMsg {
        schema_version: 2,
        env_id: s.env_id,
        episode_id: format!("ep-old-{step}"),
        step,
        user_id: s.user_id,
        n_actions: s.n_actions,
        observation: s.observation,
        reward: 0.0,
        next_item_hit: false,
        terminated: false,
        truncated: false,
        attempt: 0,
        ts_ms: s.ts_ms,
    }
}

fn new_state(step: u32) -> StateMsg {
    let mut s = examples::state();
    (s.episode_id, s.step) = (format!("ep-new-{step}"), step);
    // Step 0 has no previous action; every state names its catalogue.
    (s.last_action, s.catalog) = ((step > 0).then_some(step + 100), Some(format!("{:016x}", 0xfeed_u64 + 1)));
    // The interactive user model's states carry its acceptance probability.
    s.accept_prob = Some(0.5);
    s
}

/// What the test expects of a record, by episode id: which id framed it and what it carries.
fn expected_new_fields(episode_id: &str) -> (Option<u32>, Option<String>) {
    match episode_id.strip_prefix("ep-new-").and_then(|s| s.parse::<u32>().ok()) {
        Some(step) => ((step > 0).then_some(step + 100), Some(format!("{:016x}", 0xfeed_u64 + 1))),
        None => (None, None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_new_readers_read_both_versions_and_foreign_ids_are_refused() {
    let topics = TestTopics::create("schemaevo").await.unwrap_or_else(|e| panic!("{e}"));
    let (subject, action_subject) = (value_subject(&topics.state), value_subject(&topics.action));
    let registry = registry();

    // The subject's history: the old schema first, then the new one, under BACKWARD.
    set_compatibility(&subject, "BACKWARD").await;
    let old_id = registry.register(&subject, &old_schema()).await.unwrap_or_else(|e| panic!("old schema: {e}"));
    let new_id = registry
        .register(&subject, &schema_of::<StateMsg>())
        .await
        .unwrap_or_else(|e| panic!("the registry must accept the new version under BACKWARD: {e}"));
    assert_ne!(old_id, new_id);
    assert_eq!(versions(&subject).await, [1, 2], "two versions of {subject}");
    let latest = registry.latest(&subject).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((latest.id, latest.version), (new_id, 2));
    // Another subject's schema, for a record framed with an id that is not the topic's.
    let action_id =
        registry.register(&action_subject, &schema_of::<ActionMsg>()).await.unwrap_or_else(|e| panic!("{e}"));

    // Records framed with each id, and the two that must be refused.
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for step in 0..3 {
        let old = old_state(step);
        records.push((old.episode_id.clone(), wire::frame(old_id, &json(&old))));
        let new = new_state(step);
        records.push((new.episode_id.clone(), wire::frame(new_id, &json(&new))));
    }
    // A state without the new fields is valid under the new schema too.
    let mut plain = examples::state();
    plain.episode_id = "ep-plain".into();
    records.push((plain.episode_id.clone(), wire::frame(new_id, &json(&plain))));
    let readable = records.len();
    records.push(("ep-unknown".into(), wire::frame(UNKNOWN_ID, &json(&old_state(9)))));
    records.push(("ep-foreign".into(), wire::frame(action_id, &json(&new_state(9)))));

    let producer: FutureProducer = kafka_config().set("acks", "all").create().unwrap_or_else(|e| panic!("{e}"));
    for (key, payload) in &records {
        producer
            .send(FutureRecord::to(&topics.state).key(key).payload(payload), Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    let topic = topics.state.clone();
    let consumed = tokio::task::spawn_blocking(move || read_topic(&topic))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(consumed.len(), records.len());

    // Two consumers, each with its own cache of writer schemas, as two builds of the agent.
    let old_reader: TopicCodec<OldStateMsg> = TopicCodec::new(
        Codec::new(old_id).unwrap_or_else(|e| panic!("{e}")),
        &topics.state,
        SchemaResolver::registry(registry.clone()),
    );
    let new_reader: TopicCodec<StateMsg> = TopicCodec::new(
        Codec::new(new_id).unwrap_or_else(|e| panic!("{e}")),
        &topics.state,
        SchemaResolver::registry(registry.clone()),
    );
    let (mut old_read, mut new_read) = (0, 0);
    for r in &consumed {
        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
        let (id, _) = wire::unframe(r.value()).unwrap_or_else(|e| panic!("{e}"));
        let as_old = old_reader.decode_record(r.value()).await;
        let as_new = new_reader.decode_record(r.value()).await;
        match key.as_str() {
            "ep-unknown" => {
                for e in [as_old.err(), as_new.err()] {
                    assert!(
                        matches!(&e, Some(DecodeError::Record(ProtocolError::UnknownSchemaId(UNKNOWN_ID)))),
                        "{e:?}"
                    );
                    assert_eq!(e.map(|e| e.to_string()), Some(format!("unknown schema id {UNKNOWN_ID}")));
                }
            }
            "ep-foreign" => {
                for e in [as_old.err(), as_new.err()] {
                    let reason = e.as_ref().map(ToString::to_string).unwrap_or_default();
                    assert!(matches!(&e, Some(DecodeError::Record(ProtocolError::ForeignSchemaId { .. }))), "{e:?}");
                    assert!(!e.as_ref().is_some_and(DecodeError::is_retryable));
                    assert!(reason.starts_with(&format!("schema id {action_id} belongs to subject ")), "{reason}");
                    assert!(reason.contains(&action_subject) || reason.contains("more)"), "{reason}");
                    assert!(reason.ends_with(&format!(", not {subject}")), "{reason}");
                }
            }
            _ => {
                let old: Decoded<OldStateMsg> =
                    as_old.unwrap_or_else(|e| panic!("the old reader must read {key} (id {id}): {e}"));
                let new: Decoded<StateMsg> =
                    as_new.unwrap_or_else(|e| panic!("the new reader must read {key} (id {id}): {e}"));
                assert_eq!((old.schema_id, new.schema_id), (id, id));
                assert_eq!((old.msg.episode_id.as_str(), new.msg.episode_id.as_str()), (key.as_str(), key.as_str()));
                assert_eq!((old.msg.step, old.msg.n_actions), (new.msg.step, new.msg.n_actions));
                assert_eq!((new.msg.last_action, new.msg.catalog), expected_new_fields(&key), "{key}");
                old_read += 1;
                new_read += 1;
            }
        }
    }
    assert_eq!((old_read, new_read), (readable, readable), "both readers read every record");
    // Why the writer's schema matters: against its own (closed) schema only, the old reader
    // would refuse the new records it has just read.
    let new_record = consumed.iter().find(|r| r.key.as_deref() == Some(b"ep-new-1".as_slice()));
    let refused = new_record.map(|r| Codec::<OldStateMsg>::new(0).map(|c| c.decode(r.value()).is_err()));
    assert!(matches!(refused, Some(Ok(true))), "{refused:?}");
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_training_log_reader_checks_each_record_against_its_writer_schema() {
    let topics = TestTopics::create("trainlog").await.unwrap_or_else(|e| panic!("{e}"));
    let (states, actions) = topics.codecs::<RecoStateMsg>().await.unwrap_or_else(|e| panic!("{e:#}"));
    let env_id = "reco-gym-v1/trainlog";
    let state = |step: u32, env: &str| {
        let mut s = examples::reco_state();
        (s.env_id, s.step) = (env.to_string(), step);
        s
    };
    let mut action = examples::action();
    action.env_id = env_id.into();
    let unknown = wire::frame(UNKNOWN_ID, &json(&state(2, env_id)));
    let records = [
        (&topics.state, states.encode(&state(0, env_id)).unwrap_or_else(|e| panic!("{e}"))),
        (&topics.state, states.encode(&state(1, env_id)).unwrap_or_else(|e| panic!("{e}"))),
        (&topics.state, unknown),
        (&topics.state, states.encode(&state(0, "reco-gym-v1/other")).unwrap_or_else(|e| panic!("{e}"))),
        (&topics.action, actions.encode(&action).unwrap_or_else(|e| panic!("{e}"))),
    ];
    let producer: FutureProducer = kafka_config().set("acks", "all").create().unwrap_or_else(|e| panic!("{e}"));
    for (topic, payload) in &records {
        producer
            .send(FutureRecord::to(topic.as_str()).key("ep").payload(payload), Duration::from_secs(30))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
    }
    let kafka = KafkaArgs { bootstrap_servers: bootstrap() };
    let registry = RegistryArgs { schema_registry_url: registry_url() };
    let run = agent_svc::train_logs::read_run_checked(&kafka, &registry, &topics.service_topics(), env_id, None)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let steps: Vec<u32> = run.states.iter().map(|s| s.step).collect();
    assert_eq!((steps, run.actions.len(), run.undecodable, run.other_runs), (vec![0, 1], 1, 1, 1), "{run:?}");
    topics.delete().await;
}

#[tokio::test]
async fn a_registry_that_cannot_be_reached_is_retryable_never_poison() {
    // Nothing listens on port 9 of the loopback: every lookup fails to connect.
    let nowhere = Registry::new(&RegistryArgs { schema_registry_url: "http://127.0.0.1:9/apis/ccompat/v7".into() });
    let codec: TopicCodec<StateMsg> =
        TopicCodec::new(Codec::new(5).unwrap_or_else(|e| panic!("{e}")), "anything", SchemaResolver::registry(nowhere));
    let bytes = codec.encode(&examples::state()).unwrap_or_else(|e| panic!("{e}"));
    let err = codec.decode_record(&bytes).await.err();
    assert!(matches!(&err, Some(DecodeError::Registry(_))), "{err:?}");
    assert!(err.as_ref().is_some_and(DecodeError::is_retryable));

    // Waiting for the registry: retried until stopped, then still the registry's failure.
    let stop = CancellationToken::new();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.cancel();
        })
    };
    let started = Instant::now();
    let err = codec.decode_record_or_wait(&bytes, &stop).await.err();
    assert!(started.elapsed() >= Duration::from_millis(450), "it waited: {:?}", started.elapsed());
    assert!(err.as_ref().is_some_and(DecodeError::is_retryable), "{err:?}");
    stopper.await.unwrap_or_else(|e| panic!("{e}"));

    // The frame is checked first: bytes that are no frame are poison whatever the registry.
    let err = codec.decode_record(b"{}").await.err();
    assert!(matches!(err, Some(DecodeError::Record(ProtocolError::Wire(_)))), "{err:?}");
}
