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

/// Every environment's topics as `deploy/topics.env` names them: `(key, topic)`, the key being
/// the environment's prefix and `STATE_TOPIC`, `ACTION_TOPIC` or `DEAD_LETTER_TOPIC`.
fn env_topics() -> Vec<(String, &'static str)> {
    use clap::ValueEnum;
    common::kafka::EnvKind::value_variants()
        .iter()
        .flat_map(|env| {
            let s = env.spec();
            let p = s.topics_env_prefix;
            [
                (format!("{p}STATE_TOPIC"), s.state_topic),
                (format!("{p}ACTION_TOPIC"), s.action_topic),
                (format!("{p}DEAD_LETTER_TOPIC"), s.dead_letter_topic),
            ]
        })
        .collect()
}

/// What an init script prints with `--list`, one line each.
fn listed(script: &str) -> Vec<String> {
    let out = std::process::Command::new("sh")
        .arg(repo_root().join(script))
        .arg("--list")
        .env_remove("TOPICS_ENV")
        .env_remove("SCHEMA_DIR")
        .output()
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(out.status.success(), "{script} --list: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn every_topic_is_created_and_every_subject_registered_by_the_init_scripts() {
    // The init scripts take every *_TOPIC of topics.env: each environment's three and the
    // weights topic, no other.
    let mut created = listed("deploy/init/create-topics.sh");
    let mut expected: Vec<String> = env_topics().into_iter().map(|(_, t)| t.to_string()).collect();
    expected.push(topics::WEIGHTS_TOPIC.to_string());
    created.sort();
    expected.sort();
    assert_eq!(created, expected, "deploy/init/create-topics.sh creates every environment's topics");

    // Every subject the protocol crate defines has its schema file and is registered, and only those.
    let registered: Vec<(String, String)> = listed("deploy/init/register-schemas.sh")
        .iter()
        .filter_map(|l| l.split_once(' ').map(|(s, f)| (s.to_string(), f.to_string())))
        .collect();
    let mut subjects: Vec<String> = registered.iter().map(|(s, _)| s.clone()).collect();
    let mut defined: Vec<String> = protocol::schema::subjects().into_iter().map(|(s, _)| s).collect();
    subjects.sort();
    defined.sort();
    assert_eq!(subjects, defined, "deploy/init/register-schemas.sh registers the protocol's subjects");
    for (subject, file) in &registered {
        assert!(std::path::Path::new(file).exists(), "no schema file {file} for {subject}");
    }
}

#[test]
fn protocol_constants_match_topics_env() {
    let env = topics_env();
    let mut expect: Vec<(String, String)> = env_topics().into_iter().map(|(k, t)| (k, t.to_string())).collect();
    expect.extend([
        ("AGENT_WEIGHTS_TOPIC".into(), topics::WEIGHTS_TOPIC.to_string()),
        ("TOPIC_PARTITIONS".into(), topics::DEFAULT_PARTITIONS.to_string()),
        ("TOPIC_REPLICATION_FACTOR".into(), topics::REPLICATION_FACTOR.to_string()),
        ("TOPIC_MIN_ISR".into(), topics::MIN_INSYNC_REPLICAS.to_string()),
    ]);
    for (key, value) in &expect {
        assert_eq!(env.get(key), Some(value), "deploy/topics.env {key} differs from the protocol crate");
    }
    // No topic in topics.env that no environment (or the weights' constant) declares.
    let mut declared: Vec<String> = env_topics().into_iter().map(|(k, _)| k).collect();
    declared.push("AGENT_WEIGHTS_TOPIC".into());
    let stray: Vec<&String> = env.keys().filter(|k| k.ends_with("_TOPIC") && !declared.contains(k)).collect();
    assert!(stray.is_empty(), "deploy/topics.env has topics of no environment: {stray:?}");
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
        for (key, _) in env_topics() {
            let name = &env[&key];
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
