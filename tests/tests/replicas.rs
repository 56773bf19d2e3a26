//! DQN agent replicas as separate processes in one consumer group: the state topic's partitions
//! are shared among them; one replica killed with SIGKILL mid-run, the survivors take over its
//! partitions and every episode still completes, each step accepted once; each replica learns
//! from the episodes it serves (its model version moves).
//!
//! Mid-run and mid-episode by construction, whatever the machine's speed: a [`GroupGate`] in
//! the replicas' group holds a share of the state partitions, so the run cannot end before the
//! gate is released, after the kill. r1 is frozen (SIGSTOP) and killed only once the env has
//! published, after the freeze, the next step of an episode r1 was serving: r1 can never have
//! read that state, so a survivor must answer it.

use std::{
    collections::{HashMap, HashSet},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use env_svc::checker::check_run;
use protocol::{ActionMsg, Codec, StateMsg};
use streamrec_tests::{
    agent_bin, bootstrap, clean_command, freeze, high_watermarks, registry_url, repo_root, thaw, unique, wait_for,
    wait_for_stable_group, GroupGate, TestTopics, TopicTail,
};
use tokio_util::sync::CancellationToken;

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

/// Starts replica `id` of `group` on `topics`: a small MLP DQN, so that three learners and the
/// env share two cores comfortably.
fn start_replica(id: &str, group: &str, topics: &TestTopics) -> Child {
    clean_command(agent_bin())
        .args(["run", "--policy", "dqn", "--dqn-net", "mlp", "--dqn-hidden", "64", "--dqn-learning-starts", "200"])
        .args(["--group-id", group, "--offset-reset", "earliest", "--replica-id", id])
        .args(["--bootstrap-servers", &bootstrap(), "--schema-registry-url", &registry_url()])
        .args(topics.flags())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start replica {id}: {e}"))
}

/// Follows the run on its topics: who answered, and which steps r1 answered.
struct Watch {
    states: TopicTail,
    actions: TopicTail,
    state_codec: Codec<StateMsg>,
    action_codec: Codec<ActionMsg>,
    answered_by: HashSet<String>,
    r1_steps: HashSet<(String, u32)>,
}

/// A state as the watch read it, with its place in the topic.
struct SeenState {
    partition: i32,
    offset: i64,
    msg: StateMsg,
}

impl Watch {
    fn new(topics: &TestTopics) -> Self {
        Self {
            states: TopicTail::new(&topics.state).unwrap_or_else(|e| panic!("{e}")),
            actions: TopicTail::new(&topics.action).unwrap_or_else(|e| panic!("{e}")),
            state_codec: Codec::new(0).unwrap_or_else(|e| panic!("{e}")),
            action_codec: Codec::new(0).unwrap_or_else(|e| panic!("{e}")),
            answered_by: HashSet::new(),
            r1_steps: HashSet::new(),
        }
    }

    /// Reads what arrived (waiting up to `wait` for it); returns the new states.
    fn pump(&mut self, wait: Duration) -> Vec<SeenState> {
        for r in self.actions.drain(wait) {
            let Ok(a) = self.action_codec.decode(r.value()).map(|d| d.msg) else { continue };
            if a.replica_id == "r1" {
                self.r1_steps.insert((a.episode_id.clone(), a.step));
            }
            self.answered_by.insert(a.replica_id);
        }
        self.states
            .drain(Duration::ZERO)
            .into_iter()
            .filter_map(|r| {
                let msg = self.state_codec.decode(r.value()).ok()?.msg;
                Some(SeenState { partition: r.partition, offset: r.offset, msg })
            })
            .collect()
    }
}

/// Freezes r1 (`pid`) until the env publishes, after the freeze, a first attempt at a step that
/// needs an answer and follows a step r1 answered; kills r1 then and returns that
/// (episode, step). Such a state is at or past the high watermark measured once r1 was frozen,
/// so r1 never read it and never will: a survivor answers it, after r1's last step of that
/// episode. When none comes within 5 s (r1 had nothing on its way; well within its 10 s session
/// timeout, so the group keeps r1 meanwhile), r1 runs again until it answers once more, and is
/// frozen anew.
fn catch_r1_mid_episode(watch: &mut Watch, r1: &mut Child, state_topic: &str) -> (String, u32) {
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut attempt = 0;
    loop {
        attempt += 1;
        assert!(Instant::now() < deadline, "r1 was never caught between two steps of an episode");
        freeze(r1.id()).unwrap_or_else(|e| panic!("freeze r1: {e}"));
        let marks = high_watermarks(state_topic).unwrap_or_else(|e| panic!("{e}"));
        let mut unread: Vec<(String, u32)> = Vec::new();
        let window = Instant::now() + Duration::from_secs(5);
        while Instant::now() < window {
            for s in watch.pump(Duration::from_millis(100)) {
                let after_freeze = marks.get(&s.partition).is_some_and(|&high| s.offset >= high);
                let needs_answer = !s.msg.terminated && !s.msg.truncated;
                if after_freeze && needs_answer && s.msg.attempt == 0 && s.msg.step > 0 {
                    unread.push((s.msg.episode_id, s.msg.step));
                }
            }
            // r1's answer to the step before may be read after the state it led to.
            if let Some(found) = unread.iter().find(|(e, step)| watch.r1_steps.contains(&(e.clone(), step - 1))) {
                r1.kill().unwrap_or_else(|e| panic!("SIGKILL r1: {e}"));
                let _ = r1.wait();
                println!("r1 killed between steps {} and {} of {} (freeze {attempt})", found.1 - 1, found.1, found.0);
                return found.clone();
            }
        }
        thaw(r1.id()).unwrap_or_else(|e| panic!("thaw r1: {e}"));
        let answered = watch.r1_steps.len();
        wait_for("r1 to answer again", Duration::from_secs(60), || {
            watch.pump(Duration::from_millis(100));
            (watch.r1_steps.len() > answered).then_some(())
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_take_over_a_killed_replica_and_every_episode_completes() {
    let topics = TestTopics::create("replicas").await.unwrap_or_else(|e| panic!("{e}"));
    let group = unique("agents");
    let mut replicas = Replicas(Vec::new());
    for id in ["r0", "r1", "r2"] {
        replicas.0.push((id.to_string(), start_replica(id, &group, &topics)));
    }
    // The three replicas, then the gate, in one group; the gate's share is settled before any
    // state is published, so no state on its partitions is answered while it holds them.
    let gate = tokio::task::block_in_place(|| {
        wait_for_stable_group(&group, 3, Duration::from_secs(180));
        let gate = GroupGate::join(&group, &topics.state).unwrap_or_else(|e| panic!("gate: {e}"));
        gate.wait_for_share(4, Duration::from_secs(60));
        gate
    });

    let sample = repo_root().join("data/sample").display().to_string();
    let episodes = 1500;
    let mut args = vec!["--dataset".to_string(), sample, "--episodes".into(), episodes.to_string()];
    args.extend(["--concurrency".into(), "64".into(), "--quiet".into()]);
    // The episodes on the gate's partitions wait for as long as the gate holds them, by design:
    // they must not fail for want of an answer meanwhile (the default gives up after a minute).
    args.extend(["--max-resends".into(), "1000000".into()]);
    args.extend(topics.flags());
    let env = streamrec_tests::env_run_args(&args);
    let env_task = tokio::spawn(env_svc::run(env, CancellationToken::new()));

    let (episode, step) = tokio::task::block_in_place(|| {
        let mut watch = Watch::new(&topics);
        wait_for("an answer from every replica", Duration::from_secs(180), || {
            watch.pump(Duration::from_millis(100));
            (watch.answered_by.len() == 3).then_some(())
        });
        let (_, r1) = &mut replicas.0[1];
        catch_r1_mid_episode(&mut watch, r1, &topics.state)
    });
    // Guaranteed open: step `step` of `episode` waits for a survivor, and the gate holds more.
    assert!(!env_task.is_finished(), "the run cannot have ended with {episode}/{step} unanswered");
    tokio::task::spawn_blocking(move || gate.release()).await.unwrap_or_else(|e| panic!("{e}"));

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
    assert_eq!(answered_by, HashSet::from(["r0", "r1", "r2"]), "all three replicas served");
    // Takeover: the episode r1 was serving when it died was continued by a survivor.
    let answers: Vec<&str> =
        actions.iter().filter(|a| a.episode_id == episode && a.step == step).map(|a| a.replica_id.as_str()).collect();
    assert!(!answers.is_empty() && !answers.contains(&"r1"), "{episode}/{step} was answered by {answers:?}");
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
