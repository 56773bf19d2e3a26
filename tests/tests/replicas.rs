//! DQN agent replicas as separate processes in one consumer group: the state topic's partitions
//! are shared among them; one replica killed with SIGKILL mid-run, the survivors take over its
//! partitions and every episode still completes, each step accepted once; each replica learns
//! from the episodes it serves (its model version moves).

use std::{
    collections::{HashMap, HashSet},
    process::{Child, Command, Stdio},
    time::Duration,
};

use clap::Parser;
use env_svc::checker::check_run;
use protocol::ActionMsg;
use streamrec_tests::{repo_root, topic_size, unique, TestTopics};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct EnvCli {
    #[command(flatten)]
    run: env_svc::config::RunArgs,
}

/// The agent-svc binary `make test` built beside this test.
fn agent_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let bin = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("agent-svc")).unwrap_or_default();
    assert!(bin.exists(), "{} is missing: run `cargo build -p agent-svc` first (make test does)", bin.display());
    bin
}

/// Kills the replicas still running when the test ends, pass or fail.
struct Replicas(Vec<(String, Child)>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_take_over_a_killed_replica_and_every_episode_completes() {
    let topics = TestTopics::create("replicas").await.unwrap_or_else(|e| panic!("{e}"));
    let group = unique("agents");
    let mut replicas = Replicas(Vec::new());
    for id in ["r0", "r1", "r2"] {
        let mut cmd = Command::new(agent_binary());
        // A small MLP DQN, so that three learners and the env share two cores comfortably.
        cmd.args([
            "run",
            "--policy",
            "dqn",
            "--dqn-net",
            "mlp",
            "--dqn-hidden",
            "64",
            "--dqn-learning-starts",
            "200",
            "--group-id",
            &group,
            "--offset-reset",
            "earliest",
            "--replica-id",
            id,
        ])
        .args(topics.flags())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        replicas.0.push((id.to_string(), cmd.spawn().unwrap_or_else(|e| panic!("cannot start a replica: {e}"))));
    }
    let sample = repo_root().join("data/sample").display().to_string();
    let episodes = 1500;
    let mut args =
        vec!["env-svc".to_string(), "--dataset".into(), sample.clone(), "--episodes".into(), episodes.to_string()];
    args.extend(["--concurrency".into(), "32".into(), "--quiet".into()]);
    args.extend(topics.flags());
    let env = EnvCli::parse_from(args).run;
    let env_task = tokio::spawn(env_svc::run(env, CancellationToken::new()));

    // Kill r1 once the group is busy (a few thousand actions answered).
    for _ in 0..600 {
        if topic_size(&topics.action).unwrap_or(0) >= 1500 || env_task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!env_task.is_finished(), "the run ended before a replica could be killed");
    let (_, victim) = &mut replicas.0[1];
    victim.kill().unwrap_or_else(|e| panic!("SIGKILL r1: {e}"));
    let _ = victim.wait();

    let summary = tokio::time::timeout(Duration::from_secs(300), env_task)
        .await
        .unwrap_or_else(|_| panic!("the run did not finish within 300 s of the kill"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("env run failed: {e:#}"));
    assert_eq!(summary.episodes, episodes as u64, "{summary}");

    let (states, actions) = streamrec_tests::read_run(&topics).unwrap_or_else(|e| panic!("{e}"));
    let dataset = streamrec_tests::sample_dataset();
    // Replicas answer with their own (independently learned) choices, so the checker runs on the
    // first answer per step: the one the env accepted, as the order within a partition is kept.
    let mut first: HashMap<(String, u32), ActionMsg> = HashMap::new();
    for a in &actions {
        first.entry((a.episode_id.clone(), a.step)).or_insert_with(|| a.clone());
    }
    let accepted: Vec<ActionMsg> = first.into_values().collect();
    let violations = check_run(&dataset, 50, &states, &accepted, &summary);
    assert!(violations.is_empty(), "{:?}", &violations[..violations.len().min(5)]);

    let answered_by: HashSet<&str> = actions.iter().map(|a| a.replica_id.as_str()).collect();
    assert_eq!(answered_by, HashSet::from(["r0", "r1", "r2"]), "all three replicas served before the kill");
    // Takeover: some episode served by r1 was finished by a survivor.
    let mut by_episode: HashMap<&str, Vec<(u32, &str)>> = HashMap::new();
    for a in &actions {
        by_episode.entry(a.episode_id.as_str()).or_default().push((a.step, a.replica_id.as_str()));
    }
    let taken_over = by_episode.values().any(|steps| {
        let last_r1 = steps.iter().filter(|(_, r)| *r == "r1").map(|(s, _)| *s).max();
        last_r1.is_some_and(|l| steps.iter().any(|(s, r)| *s > l && *r != "r1"))
    });
    assert!(taken_over, "no episode of r1 was continued by a survivor");
    // Each survivor learned from the episodes it served: its later actions come from weights
    // that went through updates (model version = learner updates behind the weights).
    for id in ["r0", "r2"] {
        let newest = actions.iter().filter(|a| a.replica_id == id).filter_map(|a| a.model_version).max();
        assert!(newest.is_some_and(|v| v > 0), "{id} never answered with learned weights: {newest:?}");
        assert!(actions.iter().filter(|a| a.replica_id == id).all(|a| a.policy == "dqn"));
    }
    drop(replicas);
    topics.delete().await;
}
