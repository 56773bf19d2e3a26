//! Smoke tests against the real local stack (`make stack-up`): Kafka with `acks=all` and a
//! consumer group, the registry's two subjects, Cassandra through the driver and cqlsh.
//! Each test uses its own topic, group or keyspace.

use std::{collections::BTreeMap, time::Duration};

use common::registry::{Registry, RegistryArgs, SchemaResolver, TopicCodec};
use protocol::{messages::examples, schema::schema_of, topics, Codec, StateMsg};
use rdkafka::{
    admin::{AdminOptions, NewTopic, TopicReplication},
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    ClientConfig, Message, TopicPartitionList,
};
use scylla::client::session_builder::SessionBuilder;
use streamrec_tests::{bootstrap, cassandra_node, cqlsh, registry_url, unique};

const DEADLINE: Duration = Duration::from_secs(60);

fn config() -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", bootstrap());
    cfg
}

#[tokio::test]
async fn acks_all_message_reaches_a_consumer_group_and_offsets_commit() {
    let topic = unique("smoke");
    let admin: rdkafka::admin::AdminClient<_> = config().create().unwrap_or_else(|e| panic!("admin: {e}"));
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(3)).set("min.insync.replicas", "2")],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap_or_else(|e| panic!("create topic: {e}"));
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    // The topic's subject gets the state schema, as the services register theirs.
    let registry = Registry::new(&RegistryArgs { schema_registry_url: registry_url() });
    let id = registry
        .register(&topics::value_subject(&topic), &schema_of::<StateMsg>())
        .await
        .unwrap_or_else(|e| panic!("register: {e}"));
    let codec: TopicCodec<StateMsg> =
        TopicCodec::new(Codec::new(id).unwrap_or_else(|e| panic!("{e}")), &topic, SchemaResolver::registry(registry));
    let producer: FutureProducer = config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap_or_else(|e| panic!("producer: {e}"));
    let mut sent = Vec::new();
    for i in 0..12u32 {
        let mut msg = examples::state();
        msg.episode_id = format!("ep-{}", i % 4);
        msg.step = i / 4;
        let payload = codec.encode(&msg).unwrap_or_else(|e| panic!("{e}"));
        let record = FutureRecord::to(&topic).key(&msg.episode_id).payload(&payload);
        let delivery = producer.send(record, DEADLINE).await.unwrap_or_else(|(e, _)| panic!("send: {e}"));
        assert!(delivery.offset >= 0);
        sent.push(msg);
    }

    let group = unique("smoke_group");
    let consumer: StreamConsumer = config()
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    consumer.subscribe(&[&topic]).unwrap_or_else(|e| panic!("subscribe: {e}"));
    let mut got: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut received = 0;
    while received < sent.len() {
        let m = tokio::time::timeout(DEADLINE, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {received} of {} messages arrived", sent.len()))
            .unwrap_or_else(|e| panic!("recv: {e}"));
        let decoded =
            codec.decode_record(m.payload().unwrap_or_default()).await.unwrap_or_else(|e| panic!("decode: {e}"));
        assert_eq!(m.key(), Some(decoded.msg.episode_id.as_bytes()), "the key is the episode id");
        got.entry(decoded.msg.episode_id.clone()).or_default().push(decoded.msg.step);
        received += 1;
    }
    for steps in got.values() {
        assert_eq!(steps, &[0, 1, 2], "one episode's steps arrive in order");
    }
    consumer.commit_consumer_state(CommitMode::Sync).unwrap_or_else(|e| panic!("commit: {e}"));
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition(&topic, p);
    }
    let committed = consumer.committed_offsets(tpl, DEADLINE).unwrap_or_else(|e| panic!("committed: {e}"));
    let total: i64 = committed.elements().iter().filter_map(|e| e.offset().to_raw()).filter(|o| *o > 0).sum();
    assert_eq!(total, sent.len() as i64, "the group committed every message");

    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
}

#[tokio::test]
async fn registry_serves_both_schemas_with_backward_compatibility() {
    let registry = Registry::new(&RegistryArgs { schema_registry_url: registry_url() });
    let http = reqwest::Client::new();
    for (subject, generated) in protocol::schema::subjects() {
        let latest = registry.latest(&subject).await.unwrap_or_else(|e| panic!("{subject}: {e}"));
        let served: serde_json::Value =
            serde_json::from_str(&latest.schema).unwrap_or_else(|e| panic!("{subject} schema is not json: {e}"));
        assert_eq!(served, generated, "{subject} differs from the protocol crate's schema");
        // Registering the same schema again is idempotent: same id.
        assert_eq!(registry.register(&subject, &generated).await.ok(), Some(latest.id));
        let config: serde_json::Value = http
            .get(format!("{}/config/{subject}", registry_url()))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("config of {subject}: {e}"))
            .json()
            .await
            .unwrap_or_default();
        assert_eq!(config["compatibilityLevel"], "BACKWARD", "{subject}: {config}");
    }
    assert_eq!(topics::value_subject(topics::STATE_TOPIC), "fashion_state-value");
}

#[tokio::test]
async fn cassandra_row_written_by_the_driver_is_read_by_driver_and_cqlsh() {
    let session =
        SessionBuilder::new().known_node(cassandra_node()).build().await.unwrap_or_else(|e| panic!("connect: {e}"));
    let ks = unique("smoke_ks");
    let ddl = [
        format!("CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        format!("CREATE TABLE {ks}.steps (episode_id text, step int, action int, PRIMARY KEY (episode_id, step))"),
    ];
    for stmt in &ddl {
        session.query_unpaged(stmt.as_str(), &[]).await.unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    let insert = session
        .prepare(format!("INSERT INTO {ks}.steps (episode_id, step, action) VALUES (?, ?, ?)"))
        .await
        .unwrap_or_else(|e| panic!("prepare: {e}"));
    session.execute_unpaged(&insert, ("ep-cql", 3_i32, 4242_i32)).await.unwrap_or_else(|e| panic!("insert: {e}"));

    let rows = session
        .query_unpaged(format!("SELECT step, action FROM {ks}.steps WHERE episode_id = 'ep-cql'"), &[])
        .await
        .unwrap_or_else(|e| panic!("select: {e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("rows: {e}"));
    let read: Vec<(i32, i32)> = rows.rows().unwrap_or_else(|e| panic!("{e}")).filter_map(Result::ok).collect();
    assert_eq!(read, vec![(3, 4242)]);

    let (host, port) =
        cassandra_node().rsplit_once(':').map(|(h, p)| (h.to_string(), p.to_string())).unwrap_or_default();
    let out = std::process::Command::new(cqlsh())
        .args([&host, &port, "-e", &format!("SELECT action FROM {ks}.steps WHERE episode_id = 'ep-cql' AND step = 3")])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cqlsh().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cqlsh failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("4242") && stdout.contains("(1 rows)"), "cqlsh printed: {stdout}");

    session.query_unpaged(format!("DROP KEYSPACE {ks}"), &[]).await.unwrap_or_else(|e| panic!("drop: {e}"));
}
