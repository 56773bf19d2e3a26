//! A broker killed with SIGKILL in the middle of a run: the run completes, no step is lost or
//! applied twice, and the broker rejoins afterwards. Runs alone in its test binary.

use std::{process::Command, time::Duration};

use clap::Parser;
use env_svc::checker::check_run;
use streamrec_tests::{repo_root, stack_cache, TestTopics};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
struct EnvCli {
    #[command(flatten)]
    run: env_svc::config::RunArgs,
}

#[derive(Debug, Parser)]
struct AgentCli {
    #[command(flatten)]
    run: agent_svc::RunArgs,
}

/// Brings every broker back (and waits for full ISR) even when the test fails.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        let up = Command::new("bash").arg(repo_root().join("deploy/local/stack.sh")).arg("up").status();
        assert!(up.is_ok_and(|s| s.success()), "could not restart the killed broker");
        let kafka = common::kafka::KafkaArgs { bootstrap_servers: streamrec_tests::bootstrap() };
        let topics =
            [protocol::topics::STATE_TOPIC, protocol::topics::ACTION_TOPIC, protocol::topics::DEAD_LETTER_TOPIC];
        for _ in 0..120 {
            if common::kafka::describe_topics(&kafka, &topics)
                .is_ok_and(|(b, v)| b.len() == 3 && v.iter().all(|t| t.under_replicated == 0))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("the cluster did not return to full ISR after the broker restart");
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
    let episodes = 300;
    let mut env_args =
        vec!["env-svc".to_string(), "--dataset".into(), sample, "--episodes".into(), episodes.to_string()];
    env_args.extend(["--concurrency".into(), "16".into(), "--quiet".into()]);
    env_args.extend(topics.flags());
    let env = EnvCli::parse_from(env_args).run;
    let mut agent_args = vec!["agent-svc".to_string(), "--group-id".into(), streamrec_tests::unique("agents")];
    agent_args.extend(["--offset-reset".into(), "earliest".into()]);
    agent_args.extend(topics.flags());
    let agent = AgentCli::parse_from(agent_args).run;

    let stop_agent = CancellationToken::new();
    let agent_task = tokio::spawn(agent_svc::run(agent, stop_agent.clone()));
    let env_task = tokio::spawn(env_svc::run(env, CancellationToken::new()));

    // Kill a broker once a good share of the run has gone through.
    let state_topic = topics.state.clone();
    let mut seen = 0;
    for _ in 0..600 {
        seen = streamrec_tests::topic_size(&state_topic).unwrap_or(0);
        if seen >= 1500 || env_task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!env_task.is_finished(), "the run ended before the broker could be killed ({seen} states)");
    let guard = RestartOnDrop;
    let pid = std::fs::read_to_string(run_dir().join("kafka-1.pid")).unwrap_or_else(|e| panic!("kafka-1 pid: {e}"));
    let killed = Command::new("kill").args(["-KILL", pid.trim()]).status();
    assert!(killed.is_ok_and(|s| s.success()), "could not kill broker 1 (pid {pid})");

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
