//! One learner for three replicas, as separate processes against the real stack: `agent-svc
//! learn` trains from the state and action topics and publishes versioned weights on a
//! compacted topic; three `agent-svc run --learning shared` replicas only act, each on the
//! newest version that reached it whole and verified.
//!
//! In one run, mid-run by construction (a [`GroupGate`] in the replicas' group holds a share
//! of the state partitions until the scenario is over, so the run cannot end before):
//! - every replica serves learned versions; how long after its publication each version (or a
//!   newer one) is first served by each replica is measured and bounded, and the versions in
//!   each replica's actions never go back;
//! - a corrupted and a truncated version published on the topic are refused and counted by
//!   every replica, which goes on serving the learner's versions;
//! - the learner is killed (SIGKILL) after a checkpoint: the replicas go on serving the last
//!   version; a restarted learner resumes from its checkpoint and committed offsets and
//!   publishes versions above every earlier one;
//! - a replica is killed (SIGKILL): the others take over and every episode completes.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use env_svc::checker::check_run;
use protocol::{
    weights::{split, DEFAULT_CHUNK_BYTES},
    ActionMsg, Codec,
};
use rdkafka::producer::FutureProducer;
use streamrec_tests::{
    agent_bin, bootstrap, clean_command, create_weights_topic, kafka_config, registry_url, repo_root, unique, wait_for,
    wait_for_stable_group, GroupGate, TestTopics, TopicTail,
};
use tokio_util::sync::CancellationToken;

/// The network every process of the test runs: small (a version of about 0.3 MB, one chunk),
/// so that a learner, three replicas and the env share two cores and the weights topic stays
/// small; the chunking of large versions is `weights_topic.rs`'s.
const NET: [&str; 8] =
    ["--dqn-net", "mlp", "--dqn-hidden", "64", "--dqn-vocab-size", "4000", "--dqn-embedding-dim", "16"];

/// Kills the processes still running when the test ends, pass or fail.
struct Procs(HashMap<String, Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for child in self.0.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Procs {
    fn take(&mut self, name: &str) -> Child {
        self.0.remove(name).unwrap_or_else(|| panic!("no process {name}"))
    }
}

struct Setup {
    topics: TestTopics,
    weights: String,
    learner_group: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn common(&self, cmd: &mut std::process::Command) {
        cmd.args(["--bootstrap-servers", &bootstrap(), "--schema-registry-url", &registry_url()])
            .args(self.topics.flags())
            .args(["--weights-topic", &self.weights])
            .args(NET)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null());
    }

    fn log(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn learner(&self, name: &str) -> Child {
        let mut cmd = clean_command(agent_bin());
        cmd.args(["learn", "--dqn-learning-starts", "200", "--publish-every", "1s"])
            .args(["--learner-checkpoint-every", "2s", "--learner-offset-reset", "earliest"])
            .args(["--learner-group-id", &self.learner_group])
            .arg("--checkpoint-dir")
            .arg(self.dir.path().join("learner"))
            .arg("--summary-json")
            .arg(self.dir.path().join(format!("{name}.json")));
        self.common(&mut cmd);
        cmd.stderr(log_file(&self.log(name))).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
    }

    fn replica(&self, id: &str, group: &str) -> Child {
        let mut cmd = clean_command(agent_bin());
        cmd.args(["run", "--policy", "dqn", "--learning", "shared", "--replica-id", id])
            .args(["--group-id", group, "--offset-reset", "earliest"])
            .arg("--summary-json")
            .arg(self.dir.path().join(format!("{id}.json")));
        self.common(&mut cmd);
        cmd.stderr(log_file(&self.log(id))).spawn().unwrap_or_else(|e| panic!("cannot start replica {id}: {e}"))
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|l| l.contains(needle))
}

/// A version as the weights topic shows it: its number and when its last chunk was written.
#[derive(Debug, Clone, Copy)]
struct Published {
    version: u64,
    at_ms: i64,
}

/// Follows the run: the actions, and the versions published on the weights topic.
struct Watch {
    actions: TopicTail,
    weights: TopicTail,
    codec: Codec<ActionMsg>,
    /// Per replica: (ts_ms, version) of each action, in reading order.
    served: BTreeMap<String, Vec<(i64, u64)>>,
    published: Vec<Published>,
}

impl Watch {
    fn new(setup: &Setup) -> Self {
        Self {
            actions: TopicTail::new(&setup.topics.action).unwrap_or_else(|e| panic!("{e}")),
            weights: TopicTail::new(&setup.weights).unwrap_or_else(|e| panic!("{e}")),
            codec: Codec::new(0).unwrap_or_else(|e| panic!("{e}")),
            served: BTreeMap::new(),
            published: Vec::new(),
        }
    }

    fn pump(&mut self, wait: Duration) {
        for r in self.actions.drain(wait) {
            let Ok(a) = self.codec.decode(r.value()).map(|d| d.msg) else { continue };
            self.served.entry(a.replica_id).or_default().push((a.ts_ms, a.model_version.unwrap_or(0)));
        }
        for r in self.weights.drain(Duration::ZERO) {
            let header = |name: &str| {
                r.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.parse::<u64>().ok()).unwrap_or(0)
            };
            let (version, index, chunks) =
                (header("weights.version"), header("weights.index"), header("weights.chunks"));
            // The test's own bad versions are far above the learner's.
            if index + 1 == chunks && version < BAD_VERSION {
                self.published.push(Published { version, at_ms: r.timestamp_ms.unwrap_or(0) });
            }
        }
    }

    fn newest_published(&self) -> u64 {
        self.published.iter().map(|p| p.version).max().unwrap_or(0)
    }

    fn newest_served_by(&self, replica: &str) -> u64 {
        self.served.get(replica).and_then(|s| s.iter().map(|&(_, v)| v).max()).unwrap_or(0)
    }

    fn actions(&self) -> usize {
        self.served.values().map(Vec::len).sum()
    }
}

/// Versions the test publishes itself, damaged: far above anything the learner reaches.
const BAD_VERSION: u64 = 1_000_000_000;

/// Publishes a version with one flipped byte and one cut short under the learner's model.
async fn publish_damaged(topic: &str) {
    let producer: FutureProducer =
        kafka_config().set("acks", "all").set("enable.idempotence", "true").create().unwrap_or_else(|e| panic!("{e}"));
    let blob: Vec<u8> = (0..1_500_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let mut flipped = split("dqn", BAD_VERSION, "x", &blob, DEFAULT_CHUNK_BYTES).unwrap_or_else(|e| panic!("{e}"));
    flipped[1].bytes[10] ^= 0x01;
    let mut cut = split("dqn", BAD_VERSION + 1, "x", &blob, DEFAULT_CHUNK_BYTES).unwrap_or_else(|e| panic!("{e}"));
    if let Some(last) = cut.last_mut() {
        last.bytes.truncate(7);
    }
    for c in [&flipped, &cut] {
        common::weights::publish(&producer, topic, c).await.unwrap_or_else(|e| panic!("{e:#}"));
    }
}

fn percentile(sorted: &[i64], q: f64) -> i64 {
    sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_one_learners_versions_through_damage_and_kills() {
    let setup = Setup {
        topics: TestTopics::create("shared").await.unwrap_or_else(|e| panic!("{e}")),
        weights: create_weights_topic().await.unwrap_or_else(|e| panic!("{e}")),
        learner_group: unique("learner"),
        dir: tempfile::tempdir().unwrap_or_else(|e| panic!("{e}")),
    };
    let group = unique("agents");
    let started = std::time::Instant::now();
    let phase = |what: &str| println!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
    let mut procs = Procs(HashMap::new());
    procs.0.insert("learner".into(), setup.learner("learner"));
    for id in ["r0", "r1", "r2"] {
        procs.0.insert(id.into(), setup.replica(id, &group));
    }
    let gate = tokio::task::block_in_place(|| {
        wait_for_stable_group(&group, 3, Duration::from_secs(180));
        let gate = GroupGate::join(&group, &setup.topics.state).unwrap_or_else(|e| panic!("gate: {e}"));
        gate.wait_for_share(4, Duration::from_secs(60));
        gate
    });

    // Episodes on the gate's partitions (at most 2 of 6) wait until it lets go, each holding one
    // of the env's slots: with more slots than a third of the episodes, the others always find
    // one, so steps go on flowing through the whole scenario.
    let (episodes, concurrency) = (1200, 512);
    let mut args = vec!["--dataset".to_string(), repo_root().join("data/sample").display().to_string()];
    args.extend(["--episodes".into(), episodes.to_string(), "--concurrency".into(), concurrency.to_string()]);
    args.push("--quiet".into());
    // Episodes on the gate's partitions wait while it holds them, by design.
    args.extend(["--max-resends".into(), "1000000".into()]);
    args.extend(setup.topics.flags());
    let env_task = tokio::spawn(env_svc::run(streamrec_tests::env_run_args(&args), CancellationToken::new()));
    phase("processes up, gate holding, env started");

    let mut watch = tokio::task::block_in_place(|| Watch::new(&setup));
    // 1. Every replica serves a learned version.
    tokio::task::block_in_place(|| {
        wait_for("every replica to serve a learned version", Duration::from_secs(240), || {
            watch.pump(Duration::from_millis(100));
            ["r0", "r1", "r2"].iter().all(|r| watch.newest_served_by(r) > 0).then_some(())
        })
    });

    phase("every replica serves a learned version");
    // 2. Damaged versions: refused (counted at the end), never served.
    publish_damaged(&setup.weights).await;

    // 3. SIGKILL the learner once a checkpoint is written and a version published after it.
    let learner_log = setup.log("learner");
    let before_kill = tokio::task::block_in_place(|| {
        wait_for("a learner checkpoint", Duration::from_secs(120), || {
            watch.pump(Duration::from_millis(100));
            log_has(&learner_log, "learner checkpoint written").then_some(())
        });
        let after_checkpoint = watch.newest_published();
        wait_for("a version after the checkpoint", Duration::from_secs(60), || {
            watch.pump(Duration::from_millis(100));
            (watch.newest_published() > after_checkpoint).then_some(())
        });
        let mut learner = procs.take("learner");
        learner.kill().unwrap_or_else(|e| panic!("SIGKILL learner: {e}"));
        let _ = learner.wait();
        watch.pump(Duration::from_millis(500));
        let newest = watch.newest_published();
        // Steps go on without a learner, on the last version.
        let answered = watch.actions();
        wait_for("50 answers while the learner is down", Duration::from_secs(120), || {
            watch.pump(Duration::from_millis(100));
            (watch.actions() >= answered + 50).then_some(())
        });
        assert_eq!(watch.newest_published(), newest, "nothing is published while the learner is down");
        newest
    });
    phase(&format!("learner killed after version {before_kill}, 50 answers without it"));

    // 4. A restarted learner resumes and publishes above every earlier version.
    procs.0.insert("learner".into(), setup.learner("learner2"));
    let resumed = tokio::task::block_in_place(|| {
        wait_for("a version from the restarted learner", Duration::from_secs(180), || {
            watch.pump(Duration::from_millis(100));
            (watch.newest_published() > before_kill).then_some(watch.newest_published())
        })
    });
    assert!(log_has(&setup.log("learner2"), "dqn resumes from its checkpoint"), "the restarted learner started afresh");
    phase(&format!("restarted learner published version {resumed}"));

    // 5. SIGKILL a replica; release the gate; every episode completes.
    let mut r1 = procs.take("r1");
    r1.kill().unwrap_or_else(|e| panic!("SIGKILL r1: {e}"));
    let _ = r1.wait();
    assert!(!env_task.is_finished(), "the gate keeps the run open until here");
    tokio::task::spawn_blocking(move || gate.release()).await.unwrap_or_else(|e| panic!("{e}"));
    let summary = tokio::time::timeout(Duration::from_secs(600), env_task)
        .await
        .unwrap_or_else(|_| panic!("the run did not finish within 600 s"))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("env run failed: {e:#}"));
    assert_eq!(summary.episodes, episodes as u64, "{summary}");
    phase("every episode completed");

    // Stop the survivors (SIGTERM: they write their summaries).
    for (name, log) in [("r0", "r0"), ("r2", "r2"), ("learner", "learner2")] {
        let child = procs.take(name);
        streamrec_tests::send_signal(child.id(), "TERM").unwrap_or_else(|e| panic!("{e}"));
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "{name} failed: {}", std::fs::read_to_string(setup.log(log)).unwrap_or_default());
    }
    tokio::task::block_in_place(|| watch.pump(Duration::from_secs(1)));

    // Every step answered as the checker wants, on the first answer per step (the accepted one).
    let (states, actions) = streamrec_tests::read_run(&setup.topics).unwrap_or_else(|e| panic!("{e}"));
    let mut first: HashMap<(String, u32), ActionMsg> = HashMap::new();
    for a in &actions {
        first.entry((a.episode_id.clone(), a.step)).or_insert_with(|| a.clone());
    }
    let accepted: Vec<ActionMsg> = first.into_values().collect();
    let violations = check_run(&streamrec_tests::sample_dataset(), 50, &states, &accepted, &summary);
    assert!(violations.is_empty(), "{violations:?}");
    assert!(actions.iter().all(|a| a.model_version.is_some_and(|v| v < BAD_VERSION)), "a damaged version served");

    // Published versions only increase, across the learner's restart.
    let versions: Vec<u64> = watch.published.iter().map(|p| p.version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    // Each replica's versions never go back (actions of one millisecond in either order).
    for (replica, served) in &watch.served {
        let mut by_ms: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        for &(ts, v) in served {
            let e = by_ms.entry(ts).or_insert((v, v));
            *e = (e.0.min(v), e.1.max(v));
        }
        let ranges: Vec<(u64, u64)> = by_ms.into_values().collect();
        let back = ranges.windows(2).find(|w| w[1].0 < w[0].1);
        assert!(back.is_none(), "replica {replica} went back from version {:?}", back.map(|w| (w[0], w[1])));
    }

    // Staleness: from a version's publication to each surviving replica's first action on it or
    // a newer one, for the versions published while that replica went on answering.
    let mut delays: Vec<i64> = Vec::new();
    for replica in ["r0", "r2"] {
        let served = &watch.served[replica];
        let last_ms = served.iter().map(|&(ts, _)| ts).max().unwrap_or(0);
        for p in watch.published.iter().filter(|p| p.at_ms + 5_000 < last_ms) {
            let first = served.iter().filter(|&&(ts, v)| v >= p.version && ts >= p.at_ms).map(|&(ts, _)| ts).min();
            let first =
                first.unwrap_or_else(|| panic!("replica {replica} never served version {} or newer", p.version));
            delays.push(first - p.at_ms);
        }
    }
    delays.sort_unstable();
    let (p50, p99, max) = (percentile(&delays, 0.5), percentile(&delays, 0.99), delays.last().copied().unwrap_or(0));
    println!(
        "staleness over {} (version, replica) pairs: p50 {p50} ms, p99 {p99} ms, max {max} ms; {} versions published",
        delays.len(),
        versions.len()
    );
    assert!(delays.len() >= 4, "too few versions to measure: {versions:?}");
    assert!(max <= 30_000, "a replica served a version {max} ms after its publication");

    // Counters: every surviving replica refused both damaged versions; the learner learned.
    for replica in ["r0", "r2"] {
        let path = setup.dir.path().join(format!("{replica}.json"));
        let stats: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{replica}: {e}"));
        assert_eq!(stats["weights_rejected"], 2, "{replica}: {stats}");
        assert!(stats["weights_received"].as_u64().is_some_and(|n| n >= 2), "{replica}: {stats}");
        assert_eq!(stats["learned"], 0, "a replica learns nothing itself: {stats}");
    }
    let learner: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.dir.path().join("learner2.json")).unwrap_or_default())
            .unwrap_or_else(|e| panic!("learner2: {e}"));
    assert!(learner["transitions"].as_u64().is_some_and(|n| n > 0), "{learner}");
    assert!(learner["version"].as_u64().is_some_and(|v| v >= resumed), "{learner}");
    setup.topics.delete().await;
}
