//! `agent-svc learn --from-archive`: a run played through Kafka, archived into Cassandra by the
//! archiver, then learned back by a learner whose live topics are empty: it rebuilds exactly one
//! transition per step of the run from the archived states, trains, and publishes a version;
//! a run the archive does not hold stops it with the reason. Needs the stack (`make stack-up`).

use std::{process::Output, time::Duration};

use scylla::client::session_builder::SessionBuilder;
use streamrec_tests::{
    agent_bin, archiver_bin, bootstrap, cassandra_node, clean_command, create_weights_topic, output_within, read_topic,
    registry_url, simulate_over_kafka, unique, TestTopics,
};

/// Each child gets two minutes: the whole test takes about 15 s.
fn run(cmd: std::process::Command) -> Output {
    output_within(cmd, Duration::from_secs(120))
}

fn archiver(args: &[&str]) -> Output {
    let mut cmd = clean_command(archiver_bin());
    cmd.args(args).args(["--cassandra-nodes", &cassandra_node()]);
    run(cmd)
}

/// `agent-svc learn --until-caught-up` on `topics` with the archive in `keyspace`.
fn learner(topics: &TestTopics, weights: &str, keyspace: &str, env_id: &str, dir: &std::path::Path) -> Output {
    let mut cmd = clean_command(agent_bin());
    cmd.args(["learn", "--from-archive", env_id, "--until-caught-up", "--keyspace", keyspace])
        .args(["--cassandra-nodes", &cassandra_node(), "--weights-topic", weights])
        .args(["--bootstrap-servers", &bootstrap(), "--schema-registry-url", &registry_url()])
        .args(["--learner-group-id", &unique("learner"), "--dqn-net", "mlp", "--dqn-hidden", "64"])
        .args(["--dqn-learning-starts", "50", "--dqn-backpressure"])
        .arg("--checkpoint-dir")
        .arg(dir.join("ckpt"))
        .arg("--summary-json")
        .arg(dir.join("learner.json"))
        .args(topics.flags());
    run(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_learns_one_transition_per_archived_step_before_the_stream() {
    let logged = TestTopics::create("archived").await.unwrap_or_else(|e| panic!("{e}"));
    let keyspace = unique("learnarch");
    let init = tokio::task::block_in_place(|| archiver(&["init", "--keyspace", &keyspace]));
    assert!(init.status.success(), "archiver init: {}", String::from_utf8_lossy(&init.stderr));

    let summary = simulate_over_kafka(&logged, 40, "random", &[]).await;
    let mut args = vec!["run-once", "--keyspace", &keyspace, "--no-progress"];
    let group = unique("archiver");
    args.extend(["--group-id", &group]);
    let flags = logged.flags();
    args.extend(flags.iter().map(String::as_str));
    let archived = tokio::task::block_in_place(|| archiver(&args));
    assert!(archived.status.success(), "archiver run-once: {}", String::from_utf8_lossy(&archived.stderr));
    let states_logged =
        tokio::task::block_in_place(|| read_topic(&logged.state)).unwrap_or_else(|e| panic!("{e}")).len();

    // The learner's live topics are empty: everything it learns comes from the archive.
    let live = TestTopics::create("live").await.unwrap_or_else(|e| panic!("{e}"));
    let weights = create_weights_topic().await.unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = tokio::task::block_in_place(|| learner(&live, &weights, &keyspace, &summary.head.env_id, dir.path()));
    assert!(out.status.success(), "learner: {}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("learner.json")).unwrap_or_default())
            .unwrap_or_else(|e| panic!("learner summary: {e}"));
    assert_eq!(stats["archive_states"], states_logged as u64, "every archived state read back: {stats}");
    assert_eq!(stats["archive_transitions"], summary.steps, "one transition per step of the run: {stats}");
    assert_eq!(stats["transitions"], summary.steps, "nothing else learned: {stats}");
    assert_eq!(stats["no_action"], 0, "every archived state after the first names its applied action: {stats}");
    assert!(stats["updates"].as_u64().is_some_and(|u| u > 0), "{stats}");
    assert!(stats["versions"].as_u64().is_some_and(|v| v >= 1), "a version published: {stats}");

    // A run the archive does not hold: a clear error, not a learner trained on nothing.
    let missing =
        tokio::task::block_in_place(|| learner(&live, &weights, &keyspace, "fashion-v1/not-archived", dir.path()));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success(), "a learner of an unknown run went on");
    assert!(stderr.contains("holds no state of run fashion-v1/not-archived"), "{stderr}");

    if let Ok(session) = SessionBuilder::new().known_node(cassandra_node()).build().await {
        let _ = session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[]).await;
    }
    logged.delete().await;
    live.delete().await;
}
