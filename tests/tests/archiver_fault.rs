//! Cassandra stopped in the middle of an archive run: the run retries, then exits non-zero with a
//! clear message and commits no offset; after Cassandra is back, a re-run archives every message
//! exactly once. Runs alone in its test binary because it stops the stack's Cassandra (and always
//! restarts it, even when the test fails).
//!
//! Mid-run by construction: the archiver is frozen (SIGSTOP) once its first rows are in
//! Cassandra, checked to have rows left to send, Cassandra is killed while it is frozen, and only
//! then does the archiver go on; its remaining writes can only fail.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use protocol::{messages::examples, StateMsg};
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::client::session_builder::SessionBuilder;
use streamrec_tests::{
    archiver_bin, bootstrap, cassandra_node, clean_command, committed_offsets, freeze, kafka_config, repo_root,
    stack_cache, thaw, unique, wait_for, wait_for_async, TestTopics,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Brings Cassandra back (`stack.sh up`, idempotent) and waits until CQL answers, even when the
/// test fails.
struct RestartCassandraOnDrop;

impl Drop for RestartCassandraOnDrop {
    fn drop(&mut self) {
        let up = Command::new("bash").arg(repo_root().join("deploy/local/stack.sh")).arg("up").status();
        let up_ok = up.is_ok_and(|s| s.success());
        let cqlsh = streamrec_tests::cqlsh();
        let node = cassandra_node();
        let (host, port) = node.rsplit_once(':').unwrap_or((node.as_str(), "9042"));
        wait_for("cassandra to answer again after the test stopped it", Duration::from_secs(240), || {
            Command::new(&cqlsh)
                .args([host, port, "-e", "SELECT release_version FROM system.local"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                .then_some(())
        });
        assert!(up_ok, "stack.sh up failed, although cassandra answers again");
    }
}

fn run_dir() -> std::path::PathBuf {
    std::env::var("STREAMREC_RUN").map(Into::into).unwrap_or_else(|_| stack_cache().join("run"))
}

/// Produces `episodes` episodes of `steps` steps (one state per step, one action per answered
/// step) and returns the number of messages.
async fn produce(topics: &TestTopics, episodes: u32, steps: u32) -> i64 {
    let (sc, ac) = topics.codecs::<StateMsg>().await.unwrap_or_else(|e| panic!("{e:#}"));
    let producer: FutureProducer = kafka_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "10")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut pending = Vec::new();
    for e in 0..episodes {
        let id = format!("fashion-v1/fault#{e:05}");
        for step in 0..=steps {
            let mut s = examples::state();
            (s.episode_id, s.step, s.terminated) = (id.clone(), step, step == steps);
            let bytes = sc.encode(&s).unwrap_or_else(|e| panic!("{e}"));
            let record: FutureRecord<'_, str, [u8]> =
                FutureRecord::to(&topics.state).key(id.as_str()).payload(bytes.as_slice());
            pending.push(producer.send_result(record).unwrap_or_else(|(e, _)| panic!("{e}")));
            if step < steps {
                let mut a = examples::action();
                (a.episode_id, a.step) = (id.clone(), step);
                let bytes = ac.encode(&a).unwrap_or_else(|e| panic!("{e}"));
                let record: FutureRecord<'_, str, [u8]> =
                    FutureRecord::to(&topics.action).key(id.as_str()).payload(bytes.as_slice());
                pending.push(producer.send_result(record).unwrap_or_else(|(e, _)| panic!("{e}")));
            }
        }
    }
    let n = pending.len() as i64;
    for d in pending {
        match d.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => panic!("delivery failed: {e}"),
            Err(_) => panic!("delivery cancelled"),
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cassandra_stopped_during_a_run_gives_a_non_zero_exit_and_no_committed_offset() {
    let topics = TestTopics::create("archfault").await.unwrap_or_else(|e| panic!("{e}"));
    let keyspace = unique("archfault");
    let group = unique("archfault_group");
    let messages = produce(&topics, 800, 20).await; // 16,800 + 16,000 messages
    let init = clean_command(archiver_bin())
        .args(["init", "--keyspace", &keyspace, "--cassandra-nodes", &cassandra_node()])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    let mut args: Vec<String> = vec!["run-once".into()];
    args.extend(topics.flags());
    args.extend(
        ["--keyspace", &keyspace, "--group-id", &group, "--no-progress", "--retry-for", "10s"].map(String::from),
    );
    args.extend(["--cassandra-nodes".into(), cassandra_node(), "--bootstrap-servers".into(), bootstrap()]);
    args.extend(["--schema-registry-url".into(), streamrec_tests::registry_url()]);
    // One batch holds every message: a commit can only happen after all of it is written.
    args.extend(["--batch-size".into(), "100000".into()]);
    // At most this many rows are on their way to Cassandra at any time.
    let concurrency: i64 = 64;
    args.extend(["--concurrency".into(), concurrency.to_string()]);
    let mut child = tokio::process::Command::from(clean_command(archiver_bin()))
        .args(&args)
        .env("RUST_LOG", "info,scylla=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    let mut lines = BufReader::new(stderr).lines();
    let mut log = Vec::new();
    // Wait until the run is copying (connected, statements prepared, offsets planned).
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the run did not start copying within 60 s: {log:?}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("archiver exited before copying: {log:?}"));
        let copying = line.contains("copying");
        log.push(line);
        if copying {
            break;
        }
    }
    // ... and until its first rows are in Cassandra: stop it in the middle of the writes.
    let session =
        SessionBuilder::new().known_node(cassandra_node()).build().await.unwrap_or_else(|e| panic!("connect: {e}"));
    let count_steps = format!("SELECT count(*) FROM {keyspace}.steps");
    let count = || async {
        let rows = session.query_unpaged(count_steps.as_str(), &[]).await.ok().and_then(|r| r.into_rows_result().ok());
        rows.and_then(|r| r.first_row::<(i64,)>().ok()).map(|(n,)| n)
    };
    wait_for_async("the first rows in cassandra", Duration::from_secs(60), || async {
        count().await.filter(|&n| n > 0)
    })
    .await;
    // Frozen, the archiver sends nothing more: at most `concurrency` rows were on their way, so
    // with fewer than that short of the total written, some rows are still to be sent, and can
    // only fail once Cassandra is gone. The run is mid-way, whatever the machine's speed.
    let pid = child.id().unwrap_or_else(|| panic!("the archiver exited before its rows were counted: {log:?}"));
    tokio::task::block_in_place(|| freeze(pid)).unwrap_or_else(|e| panic!("freeze the archiver: {e}: {log:?}"));
    let written = count().await.unwrap_or_else(|| panic!("cannot count the rows written"));
    assert!(
        written + concurrency < messages,
        "{written} of {messages} rows were written before the archiver was frozen: it was not mid-run"
    );

    let guard = RestartCassandraOnDrop;
    let cassandra =
        std::fs::read_to_string(run_dir().join("cassandra.pid")).unwrap_or_else(|e| panic!("cassandra pid: {e}"));
    let killed = Command::new("kill").args(["-KILL", cassandra.trim()]).status();
    assert!(killed.is_ok_and(|s| s.success()), "could not stop cassandra (pid {cassandra})");
    let cassandra: u32 = cassandra.trim().parse().unwrap_or_else(|e| panic!("cassandra pid {cassandra}: {e}"));
    tokio::task::block_in_place(|| {
        wait_for("cassandra to be gone", Duration::from_secs(30), || {
            streamrec_tests::has_exited(cassandra).then_some(())
        })
    });
    thaw(pid).unwrap_or_else(|e| panic!("thaw the archiver: {e}"));

    let output = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push(line);
        }
        child.wait_with_output().await
    })
    .await
    .unwrap_or_else(|_| panic!("the run did not give up within 120 s of cassandra stopping"))
    .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let all = format!("{stdout}\n{}", log.join("\n"));
    assert!(!output.status.success(), "the run must fail: {all}");
    assert_eq!(output.status.code(), Some(1), "an error exit, not a crash: {all}");
    assert!(all.contains("archive run failed") && all.contains("cassandra"), "a clear message: {all}");
    assert!(all.contains("not committed"), "says nothing was committed: {all}");
    for topic in [&topics.state, &topics.action] {
        let committed = committed_offsets(&group, topic).unwrap_or_else(|e| panic!("{e}"));
        assert!(committed.is_empty(), "no offset committed on {topic}: {committed:?}");
    }

    // Cassandra back: a re-run archives everything, once.
    drop(guard);
    let mut rerun_args = args.clone();
    rerun_args.retain(|a| a != "100000");
    let pos = rerun_args.iter().position(|a| a == "--batch-size").unwrap_or(0);
    rerun_args.remove(pos);
    let rerun = clean_command(archiver_bin())
        .args(&rerun_args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    let session =
        SessionBuilder::new().known_node(cassandra_node()).build().await.unwrap_or_else(|e| panic!("reconnect: {e}"));
    let count = session
        .query_unpaged(format!("SELECT count(*) FROM {keyspace}.steps"), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("{e}"))
        .first_row::<(i64,)>()
        .unwrap_or_else(|e| panic!("{e}"))
        .0;
    assert_eq!(count, messages, "one row per message after the re-run");
    let committed: i64 = [&topics.state, &topics.action]
        .into_iter()
        .flat_map(|t| committed_offsets(&group, t).unwrap_or_else(|e| panic!("{e}")).into_values())
        .sum();
    assert_eq!(committed, messages);
    let _ = session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[]).await;
    topics.delete().await;
}
