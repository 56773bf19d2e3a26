//! `deploy/local/stack.sh` as a user meets it: `status` describes the running stack, and `up`
//! refuses, with a message naming the port, to start over a port someone else holds.

use std::{net::TcpListener, process::Command};

use streamrec_tests::{repo_root, stack_cache};

fn stack() -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("deploy/local/stack.sh"));
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn up_fails_clearly_when_a_port_is_taken_and_starts_nothing() {
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let taken = squatter.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
    let run = std::env::temp_dir().join(streamrec_tests::unique("stack_run"));
    let kafka_ports = format!("{} {} {}", free_port(), free_port(), free_port());
    let out = stack()
        .arg("up")
        .env("STREAMREC_CACHE", stack_cache())
        .env("STREAMREC_RUN", &run)
        .env("STACK_ZK_PORT", taken.to_string())
        .env("STACK_KAFKA_PORTS", kafka_ports)
        .env("STACK_REGISTRY_PORT", free_port().to_string())
        .env("STACK_REGISTRY_MGMT_PORT", free_port().to_string())
        .env("STACK_CASSANDRA_PORT", free_port().to_string())
        .env("STACK_CASSANDRA_STORAGE_PORT", free_port().to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run stack.sh: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up must fail while port {taken} is held");
    let expected = format!("port {taken} (zookeeper) is already in use");
    assert!(stderr.contains(&expected), "stderr should say '{expected}', got:\n{stderr}");
    let pids: Vec<_> = std::fs::read_dir(&run)
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "pid")).collect())
        .unwrap_or_default();
    assert!(pids.is_empty(), "up started something despite the taken port: {pids:?}");
    drop(squatter);
    let _ = std::fs::remove_dir_all(&run);
}

#[test]
fn status_reports_brokers_topics_subjects_keyspace_and_processes() {
    let out = stack().arg("status").output().unwrap_or_else(|e| panic!("cannot run stack.sh: {e}"));
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status is not one JSON object: {e}"));
    assert_eq!(report["brokers"], serde_json::json!([0, 1, 2]), "{report}");
    // As many partitions as the stack was told to create: deploy/topics.env, or the
    // TOPIC_PARTITIONS override it was started with (`TOPIC_PARTITIONS=12 make stack-up`).
    let partitions = streamrec_tests::topic_partitions();
    for topic in [protocol::topics::STATE_TOPIC, protocol::topics::ACTION_TOPIC, protocol::topics::DEAD_LETTER_TOPIC] {
        let t = &report["topics"][topic];
        assert_eq!(t["partitions"], partitions, "{topic}: {t} (TOPIC_PARTITIONS of this test: {partitions})");
        assert_eq!(t["replication_factor"], 3, "{topic}: {t}");
        assert_eq!(t["min_isr"], 2, "{topic}: {t}");
        assert_eq!(t["under_replicated_partitions"], 0, "{topic}: {t}");
        assert_eq!(t["min_in_sync_replicas_seen"], 3, "{topic}: {t}");
        assert_eq!(t["cleanup_policy"], "delete", "{topic}: {t}");
    }
    // The weights topic: compacted, one partition, as durable as the others.
    let w = &report["topics"][protocol::topics::WEIGHTS_TOPIC];
    assert_eq!((&w["partitions"], &w["cleanup_policy"]), (&serde_json::json!(1), &serde_json::json!("compact")), "{w}");
    assert_eq!((&w["replication_factor"], &w["min_isr"]), (&serde_json::json!(3), &serde_json::json!(2)), "{w}");
    let subjects: Vec<&str> = report["subjects"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
    assert!(subjects.contains(&"fashion_state-value") && subjects.contains(&"fashion_action-value"), "{subjects:?}");
    assert!(report["keyspaces"].as_array().into_iter().flatten().any(|k| k == "streamrec"), "{report}");
    for svc in ["zookeeper", "kafka-0", "kafka-1", "kafka-2", "registry", "cassandra"] {
        assert_eq!(report["services"][svc]["running"], true, "{svc}: {report}");
        assert!(report["services"][svc]["rss_mib"].as_f64().unwrap_or(0.0) > 0.0, "{svc}");
    }
}
