//! The stack is described once: `deploy/topics.env` (topics, partitions, replication,
//! compatibility), `protocol/schemas/` (generated from the Rust types) and
//! `archiver/schema.cql`. These tests fail when the protocol crate, `docker-compose.yml` or
//! `deploy/local/stack.sh` stop taking their values from there. No stack needed.
//! `STREAMREC_BLESS=1` rewrites the schema files from the types (`make schemas`).

use protocol::topics;
use serde_norway::Value as Yaml;
use streamrec_tests::{repo_root, topics_env};

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

#[test]
fn schema_files_match_the_rust_types() {
    for (subject, schema) in protocol::schema::subjects() {
        let rel = format!("protocol/schemas/{subject}.json");
        let generated = format!("{}\n", serde_json::to_string_pretty(&schema).unwrap_or_default());
        if std::env::var_os("STREAMREC_BLESS").is_some() {
            std::fs::write(repo_root().join(&rel), &generated).unwrap_or_else(|e| panic!("write {rel}: {e}"));
        }
        let on_disk = read(&rel);
        assert_eq!(on_disk, generated, "{rel} is stale: run `make schemas`");
    }
}

/// The keys of `deploy/topics.env` that name topics.
const TOPIC_KEYS: [&str; 6] = [
    "STATE_TOPIC",
    "ACTION_TOPIC",
    "DEAD_LETTER_TOPIC",
    "RECOGYM_STATE_TOPIC",
    "RECOGYM_ACTION_TOPIC",
    "RECOGYM_DEAD_LETTER_TOPIC",
];

#[test]
fn every_topic_is_created_and_every_subject_registered_by_the_init_scripts() {
    let create = read("deploy/init/create-topics.sh");
    for key in TOPIC_KEYS {
        assert!(create.contains(&format!("\"${key}\"")), "deploy/init/create-topics.sh does not create ${key}");
    }
    // Every subject the protocol crate defines has its schema file and is registered.
    let register = read("deploy/init/register-schemas.sh");
    let env = topics_env();
    let registered: Vec<String> = register
        .lines()
        .filter_map(|l| l.trim().strip_prefix("register \"$"))
        .filter_map(|l| l.split_once('-').map(|(key, _)| key.to_string()))
        .filter_map(|key| env.get(&key).map(|topic| topics::value_subject(topic)))
        .collect();
    for (subject, _) in protocol::schema::subjects() {
        assert!(registered.contains(&subject), "deploy/init/register-schemas.sh does not register {subject}");
        assert!(repo_root().join(format!("protocol/schemas/{subject}.json")).exists(), "no schema file for {subject}");
    }
    assert_eq!(registered.len(), protocol::schema::subjects().len(), "{registered:?}");
}

#[test]
fn protocol_constants_match_topics_env() {
    let env = topics_env();
    let expect = [
        ("STATE_TOPIC", topics::STATE_TOPIC.to_string()),
        ("ACTION_TOPIC", topics::ACTION_TOPIC.to_string()),
        ("DEAD_LETTER_TOPIC", topics::DEAD_LETTER_TOPIC.to_string()),
        ("RECOGYM_STATE_TOPIC", topics::RECOGYM_STATE_TOPIC.to_string()),
        ("RECOGYM_ACTION_TOPIC", topics::RECOGYM_ACTION_TOPIC.to_string()),
        ("RECOGYM_DEAD_LETTER_TOPIC", topics::RECOGYM_DEAD_LETTER_TOPIC.to_string()),
        ("TOPIC_PARTITIONS", topics::DEFAULT_PARTITIONS.to_string()),
        ("TOPIC_REPLICATION_FACTOR", topics::REPLICATION_FACTOR.to_string()),
        ("TOPIC_MIN_ISR", topics::MIN_INSYNC_REPLICAS.to_string()),
    ];
    for (key, value) in expect {
        assert_eq!(env.get(key), Some(&value), "deploy/topics.env {key} differs from the protocol crate");
    }
}

fn compose() -> Yaml {
    serde_norway::from_str(&read("docker-compose.yml")).unwrap_or_else(|e| panic!("docker-compose.yml: {e}"))
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let svc = &compose["services"][name];
    assert!(!svc.is_null(), "docker-compose.yml has no service {name}");
    svc
}

/// Everything a service runs or mounts, flattened to text.
fn text_of(v: &Yaml) -> String {
    serde_norway::to_string(v).unwrap_or_default()
}

#[test]
fn compose_init_jobs_use_the_shared_scripts_and_sources() {
    let compose = compose();
    let topics = service(&compose, "init-topics");
    assert_eq!(topics["env_file"].as_str(), Some("./deploy/topics.env"));
    assert!(text_of(&topics["volumes"]).contains("./deploy:/deploy"));
    assert!(text_of(&topics["entrypoint"]).contains("/deploy/init/create-topics.sh"));

    let schemas = service(&compose, "init-schemas");
    assert_eq!(schemas["env_file"].as_str(), Some("./deploy/topics.env"));
    assert!(text_of(&schemas["volumes"]).contains("./protocol/schemas:/schemas"));
    assert!(text_of(&schemas["entrypoint"]).contains("/deploy/init/register-schemas.sh"));

    let cql = service(&compose, "init-cassandra");
    assert!(text_of(&cql["volumes"]).contains("./archiver/schema.cql"));

    for svc in ["env-svc", "agent-svc", "archiver"] {
        assert_eq!(service(&compose, svc)["env_file"].as_str(), Some("./deploy/topics.env"), "{svc}");
    }
}

#[test]
fn neither_compose_nor_the_local_stack_hard_codes_topics() {
    let env = topics_env();
    for rel in ["docker-compose.yml", "deploy/local/stack.sh", ".env.example"] {
        let text = read(rel);
        for key in TOPIC_KEYS {
            let name = &env[key];
            assert!(!text.contains(name.as_str()), "{rel} names topic {name}; take it from deploy/topics.env");
        }
        assert!(!text.contains("partitions 6") && !text.contains("PARTITIONS=6"), "{rel} hard-codes a partition count");
    }
    let stack = read("deploy/local/stack.sh");
    for shared in
        ["deploy/init/create-topics.sh", "deploy/init/register-schemas.sh", "archiver/schema.cql", "deploy/topics.env"]
    {
        assert!(stack.contains(shared), "deploy/local/stack.sh does not use {shared}");
    }
}
