//! Deliveries that fail for a while: two of the three brokers are paused (SIGSTOP) while the
//! agent holds states to answer, so `min.insync.replicas=2` cannot be met and every action it
//! produces fails after its short `message.timeout.ms`. When the brokers come back, the agent's
//! re-produces go through: the committed offsets of its group reach the end of every partition
//! of the state topic (no state left unresolved), nothing was given up, and the run completes
//! and passes the env checker. Runs alone in its test binary.
//!
//! Mid-run by construction, not by timing: the agent is paused first, so states pile up
//! unanswered; the brokers are paused only once a partition whose leader stays up holds such a
//! backlog; the agent resumes only then, and the brokers only once the agent's log shows that a
//! delivery failed and was produced again.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use env_svc::checker::check_run;
use rdkafka::consumer::{BaseConsumer, Consumer};
use streamrec_tests::{
    agent_bin, bootstrap, clean_command, committed_offsets, freeze, kafka_config, registry_url, repo_root, send_signal,
    stack_cache, unique, wait_for, workspace_bin, TestTopics,
};

fn run_dir() -> PathBuf {
    std::env::var("STREAMREC_RUN").map(Into::into).unwrap_or_else(|_| stack_cache().join("run"))
}

/// `program run` with a cleared environment ([`clean_command`]), pointed at the stack.
fn service_run(program: &Path) -> Command {
    let mut cmd = clean_command(program);
    cmd.args(["run", "--bootstrap-servers", &bootstrap(), "--schema-registry-url", &registry_url()]);
    cmd
}

fn signal(pid: u32, sig: &str) {
    send_signal(pid, sig).unwrap_or_else(|e| panic!("{e}"));
}

fn broker_pid(id: i32) -> u32 {
    let pid = std::fs::read_to_string(run_dir().join(format!("kafka-{id}.pid")))
        .unwrap_or_else(|e| panic!("kafka-{id} pid: {e}"));
    pid.trim().parse().unwrap_or_else(|e| panic!("kafka-{id} pid {pid:?}: {e}"))
}

/// Paused brokers are resumed even when the test fails; children are killed.
struct Guard {
    paused: Vec<u32>,
    children: Vec<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for pid in &self.paused {
            let _ = send_signal(*pid, "CONT");
        }
        for c in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = send_signal(c.id(), "CONT");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Leader broker and high watermark of every partition of `topic`.
fn partitions(topic: &str) -> Vec<(i32, i32, i64)> {
    let consumer: BaseConsumer = kafka_config().create().unwrap_or_else(|e| panic!("{e}"));
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let parts: Vec<(i32, i32)> =
        md.topics().first().map(|t| t.partitions().iter().map(|p| (p.id(), p.leader())).collect()).unwrap_or_default();
    parts
        .into_iter()
        .map(|(p, leader)| {
            let (_, high) =
                consumer.fetch_watermarks(topic, p, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
            (p, leader, high)
        })
        .collect()
}

#[test]
fn failed_deliveries_are_produced_again_and_every_offset_is_resolved() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let topics = rt.block_on(TestTopics::create("delivery")).unwrap_or_else(|e| panic!("{e}"));
    let (env_bin, agent_bin) = (workspace_bin("env-svc", "env-svc"), agent_bin());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (agent_log, agent_json, env_json) =
        (dir.path().join("agent.log"), dir.path().join("agent.json"), dir.path().join("env.json"));
    let group = unique("agents");
    let log_file = |p: &Path| Stdio::from(std::fs::File::create(p).unwrap_or_else(|e| panic!("{e}")));
    let timeout = ["--message-timeout-ms", "3000"];

    let mut agent = service_run(&agent_bin);
    agent.args(["--policy", "popularity", "--group-id", &group, "--offset-reset", "earliest"]);
    agent.args(["--delivery-attempts", "50", "--summary-json"]).arg(&agent_json).args(timeout).args(topics.flags());
    agent.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log_file(&agent_log));
    let agent = agent.spawn().unwrap_or_else(|e| panic!("agent-svc: {e}"));
    let agent_pid = agent.id();
    let sample = repo_root().join("data/sample");
    let mut env = service_run(&env_bin);
    env.args(["--quiet", "--episodes", "400", "--concurrency", "64", "--action-timeout", "1s"]);
    env.args(["--max-resends", "200", "--summary-json"]).arg(&env_json).arg("--dataset").arg(&sample);
    env.args(timeout).args(topics.flags()).stdout(Stdio::null()).stderr(log_file(&dir.path().join("env.log")));
    let env = env.spawn().unwrap_or_else(|e| panic!("env-svc: {e}"));
    let mut guard = Guard { paused: Vec::new(), children: vec![agent, env] };

    // 1. The step loop runs: the agent's group has committed something.
    wait_for("the agent's first commit", Duration::from_secs(120), || {
        committed_offsets(&group, &topics.state).is_ok_and(|c| !c.is_empty()).then_some(())
    });
    // 2. Pause the agent; the env keeps publishing (re-sends), so states pile up unanswered.
    freeze(agent_pid).unwrap_or_else(|e| panic!("{e}"));
    let before: i64 = partitions(&topics.state).iter().map(|(_, _, h)| h).sum();
    // 3. Pause the two brokers that do not lead partition 0, once partition 0 holds a backlog
    //    the agent has not answered: the agent can still read it from its live leader.
    let (_, leader, _) = partitions(&topics.state)[0];
    wait_for("a backlog on partition 0", Duration::from_secs(60), || {
        let high = partitions(&topics.state)[0].2;
        let done = committed_offsets(&group, &topics.state).ok().and_then(|c| c.get(&0).copied()).unwrap_or(0);
        (high - done >= 20 && partitions(&topics.state).iter().map(|(_, _, h)| h).sum::<i64>() > before).then_some(())
    });
    for id in (0..3).filter(|id| *id != leader) {
        let pid = broker_pid(id);
        signal(pid, "STOP");
        guard.paused.push(pid);
    }
    // 4. Resume the agent: it answers the backlog, and every action fails (no ISR of 2).
    signal(agent_pid, "CONT");
    wait_for("a failed delivery produced again", Duration::from_secs(120), || {
        std::fs::read_to_string(&agent_log).is_ok_and(|l| l.contains("delivery failed; producing again")).then_some(())
    });
    // 5. Bring the brokers back: the re-produces go through, the run completes.
    for pid in guard.paused.drain(..) {
        signal(pid, "CONT");
    }
    let env_status = {
        let env = &mut guard.children[1];
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = env.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                break status;
            }
            assert!(Instant::now() < deadline, "the run did not finish within 300 s of the brokers' return");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(
        env_status.success(),
        "env-svc failed: {}",
        std::fs::read_to_string(dir.path().join("env.log")).unwrap_or_default()
    );
    signal(agent_pid, "TERM");
    let agent_status = guard.children[0].wait().unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    assert!(agent_status.success(), "agent-svc failed:\n{log}");

    // Nothing was given up, and every failure was produced again.
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&agent_json).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(stats["delivery_retries"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert_eq!(stats["undeliverable"].as_u64(), Some(0), "{stats}");
    // Every state resolved: the group's committed offsets are at the end of every partition.
    let ends: Vec<(i32, i64)> = partitions(&topics.state).into_iter().map(|(p, _, h)| (p, h)).collect();
    let committed = committed_offsets(&group, &topics.state).unwrap_or_else(|e| panic!("{e}"));
    for (p, high) in &ends {
        assert_eq!(
            committed.get(p).copied().unwrap_or(0),
            *high,
            "partition {p}: committed {committed:?}, ends {ends:?}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&env_json).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((summary["episodes"].as_u64(), summary["failed_episodes"].as_u64()), (Some(400), Some(0)), "{summary}");
    let dataset = streamrec_tests::sample_dataset();
    let (states, actions) = streamrec_tests::read_run(&topics).unwrap_or_else(|e| panic!("{e}"));
    let parsed: env_svc::metrics::Summary = serde_json::from_value(summary).unwrap_or_else(|e| panic!("{e}"));
    let violations = check_run(&dataset, 50, &states, &actions, &parsed);
    assert!(violations.is_empty(), "{:?}", &violations[..violations.len().min(5)]);
    drop(guard);
    rt.block_on(topics.delete());
}
