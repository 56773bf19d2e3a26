//! A broker killed with SIGKILL in the middle of a run: the run completes, no step is lost or
//! applied twice, and the broker rejoins afterwards. Runs alone in its test binary.
//!
//! Mid-run by construction: a [`GroupGate`] in the agent's group holds a share of the state
//! partitions, so the episodes keyed there stay unanswered and the run cannot end before the
//! gate is released, which happens only after the kill. The kill waits for observed events
//! (a state on the gate's partitions, 500 actions answered), never for time to pass.

use std::{process::Command, time::Duration};

use env_svc::checker::check_run;
use streamrec_tests::{repo_root, stack_cache, wait_for, wait_for_stable_group, GroupGate, TestTopics};
use tokio_util::sync::CancellationToken;

/// Brings every broker back (and waits for full ISR) even when the test fails.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let up = Command::new("bash").arg(repo_root().join("deploy/local/stack.sh")).arg("up").status();
        assert!(up.is_ok_and(|s| s.success()), "could not restart the killed broker");
        let kafka = common::kafka::KafkaArgs { bootstrap_servers: streamrec_tests::bootstrap() };
        let topics =
            [protocol::topics::STATE_TOPIC, protocol::topics::ACTION_TOPIC, protocol::topics::DEAD_LETTER_TOPIC];
        wait_for("full ISR after the broker restart", Duration::from_secs(60), || {
            common::kafka::describe_topics(&kafka, &topics)
                .is_ok_and(|(b, v)| b.len() == 3 && v.iter().all(|t| t.under_replicated == 0))
                .then_some(())
        });
    }
}

fn run_dir() -> std::path::PathBuf {
    std::env::var("STREAMREC_RUN").map(Into::into).unwrap_or_else(|_| stack_cache().join("run"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_mid_run_loses_no_step() {
    let sample = repo_root().join("data/sample").display().to_string();
    let dataset = streamrec_tests::sample_dataset();
    let topics = TestTopics::create("fault").await.unwrap_or_else(|e| panic!("{e}"));
    let group = streamrec_tests::unique("agents");
    let episodes = 300;
    let mut agent_args = vec!["--group-id".to_string(), group.clone(), "--offset-reset".into(), "earliest".into()];
    agent_args.extend(topics.flags());
    let agent = streamrec_tests::agent_run_args(&agent_args);
    let stop_agent = CancellationToken::new();
    let agent_task = tokio::spawn(agent_svc::run(agent, stop_agent.clone()));

    // The agent, then the gate, in one group; the gate's share is settled before any state is
    // published, so no state on its partitions is ever answered while it holds them.
    let gate = tokio::task::block_in_place(|| {
        wait_for_stable_group(&group, 1, Duration::from_secs(60));
        let gate = GroupGate::join(&group, &topics.state).unwrap_or_else(|e| panic!("gate: {e}"));
        gate.wait_for_share(2, Duration::from_secs(60));
        gate
    });

    // Every episode in flight from the start (concurrency = episodes): the stalled ones on the
    // gate's partitions never take a slot from the ones the agent answers.
    let mut env_args = vec!["--dataset".to_string(), sample, "--episodes".into(), episodes.to_string()];
    env_args.extend(["--concurrency".into(), episodes.to_string(), "--quiet".into()]);
    // The episodes on the gate's partitions wait for as long as the gate holds them, by design:
    // they must not fail for want of an answer meanwhile (the default gives up after a minute).
    env_args.extend(["--max-resends".into(), "1000000".into()]);
    env_args.extend(topics.flags());
    let env = streamrec_tests::env_run_args(&env_args);
    let env_task = tokio::spawn(env_svc::run(env, CancellationToken::new()));

    // Kill a broker once the agent is busy (500 actions) and a state waits on the gate's
    // partitions: from then on the run cannot end until the gate is released.
    let action_topic = topics.action.clone();
    tokio::task::block_in_place(|| {
        wait_for("500 actions and a state held by the gate", Duration::from_secs(180), || {
            assert!(!env_task.is_finished(), "the run ended without a single state on the gate's partitions");
            let busy = streamrec_tests::topic_size(&action_topic).unwrap_or(0) >= 500;
            busy.then(|| gate.holding_a_record()).flatten()
        });
    });
    let guard = RestartOnDrop;
    let pid = std::fs::read_to_string(run_dir().join("kafka-1.pid")).unwrap_or_else(|e| panic!("kafka-1 pid: {e}"));
    let killed = Command::new("kill").args(["-KILL", pid.trim()]).status();
    assert!(killed.is_ok_and(|s| s.success()), "could not kill broker 1 (pid {pid})");
    // Release the held episodes: the agent takes the gate's partitions over, on a cluster with a
    // broker down.
    tokio::task::spawn_blocking(move || gate.release()).await.unwrap_or_else(|e| panic!("{e}"));

    let summary = tokio::time::timeout(Duration::from_secs(300), env_task)
        .await
        .unwrap_or_else(|_| panic!("the run did not finish within 300 s of the broker kill"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("env run failed: {e:#}"));
    stop_agent.cancel();
    agent_task.await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|e| panic!("agent failed: {e:#}"));
    assert_eq!(summary.episodes, episodes as u64, "{summary}");

    let (states, actions) = streamrec_tests::read_run(&topics).unwrap_or_else(|e| panic!("{e}"));
    let violations = check_run(&dataset, 50, &states, &actions, &summary);
    assert!(violations.is_empty(), "{:?}", &violations[..violations.len().min(5)]);
    drop(guard);
    topics.delete().await;
}
