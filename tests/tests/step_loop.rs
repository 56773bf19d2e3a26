//! The step loop end to end: env-svc and agent-svc exchange states and actions only through a
//! transport. Over Kafka, the records are read back from the topics and put through the env
//! checker; in memory, the same checker runs on what crossed the channels.

use std::{sync::Arc, time::Duration};

use common::registry::TopicCodec;
use env_svc::checker::check_run;
use fashion::Dataset;
use protocol::{schema::schema_of, topics::value_subject, wire, ActionMsg, StateMsg};
use streamrec_tests::{parse_flags, read_run, read_topic, repo_root, wait_for_async, TestTopics};
use tokio_util::sync::CancellationToken;

#[derive(Debug, clap::Parser)]
struct SimCli {
    #[command(flatten)]
    dataset: fashion::DatasetArgs,
    #[command(flatten)]
    episodes: env_svc::config::EpisodeArgs,
    #[command(flatten)]
    agent: agent_svc::AgentArgs,
}

fn sample() -> String {
    repo_root().join("data/sample").display().to_string()
}

fn load_sample() -> Dataset {
    let cli: SimCli = parse_flags(["sim", "--dataset", &sample()]);
    cli.dataset.load(true).unwrap_or_else(|e| panic!("sample dataset: {e}"))
}

/// Decodes records as the services do, against their writer's schema (`codec`'s resolver).
async fn decode_all<T: protocol::Message>(
    codec: &TopicCodec<T>,
    records: impl IntoIterator<Item = (Option<Vec<u8>>, Vec<u8>)>,
) -> Vec<(Option<Vec<u8>>, T)> {
    let mut out = Vec::new();
    for (k, p) in records {
        let decoded = codec.decode_record(&p).await;
        out.push((k, decoded.unwrap_or_else(|e| panic!("a record on the topic is invalid: {e}")).msg));
    }
    out
}

async fn run_over_kafka(
    topics: &TestTopics,
    episodes: usize,
    policy: &str,
    extra: &[&str],
) -> env_svc::metrics::Summary {
    streamrec_tests::simulate_over_kafka(topics, episodes, policy, extra).await
}

fn check_topics(dataset: &Dataset, topics: &TestTopics, summary: &env_svc::metrics::Summary) -> (usize, usize) {
    let (states, actions) = read_run(topics).unwrap_or_else(|e| panic!("{e}"));
    let violations = check_run(dataset, 50, &states, &actions, summary);
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    (states.len(), actions.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_episodes_through_kafka_each_step_answered_once() {
    let dataset = load_sample();
    let topics = TestTopics::create("steploop").await.unwrap_or_else(|e| panic!("{e}"));
    let summary = run_over_kafka(&topics, 200, "random", &[]).await;
    assert_eq!(summary.episodes, 200, "{summary}");
    assert!(summary.steps > 200, "{summary}");
    assert_eq!((summary.invalid, summary.decode_errors, summary.publish_errors), (0, 0, 0), "{summary}");
    let (states, actions) = check_topics(&dataset, &topics, &summary);
    // One state per step plus the first of each episode; re-sends add copies, never steps.
    assert_eq!(states as u64, summary.steps + summary.episodes + summary.resends, "{summary}");
    assert!(actions as u64 >= summary.steps);
    topics.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_schema_violating_actions_are_dead_lettered_while_the_run_goes_on() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let dataset = load_sample();
    let topics = TestTopics::create("dlq").await.unwrap_or_else(|e| panic!("{e}"));
    let producer: FutureProducer = streamrec_tests::kafka_config().create().unwrap_or_else(|e| panic!("{e}"));
    let mut bad_schema = protocol::messages::examples::action();
    bad_schema.ps = 2.0;
    // Framed with the id the action subject has, as the env registers it: only the payload is bad.
    let action_id = streamrec_tests::registry()
        .register(&value_subject(&topics.action), &schema_of::<ActionMsg>())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bad_schema = wire::frame(action_id, &serde_json::to_vec(&bad_schema).unwrap_or_default());
    let poison: Vec<(&str, Vec<u8>)> = vec![("ep-junk", b"this is not json".to_vec()), ("ep-schema", bad_schema)];

    // Inject once the env has started publishing (its action consumer is positioned by then).
    let state_topic = topics.state.clone();
    let action_topic = topics.action.clone();
    let inject = tokio::spawn(async move {
        wait_for_async("the env's first state", Duration::from_secs(60), || {
            let published = streamrec_tests::topic_size(&state_topic).unwrap_or(0) > 0;
            async move { published.then_some(()) }
        })
        .await;
        for (key, payload) in &poison {
            producer
                .send(FutureRecord::to(&action_topic).key(*key).payload(payload), Duration::from_secs(30))
                .await
                .unwrap_or_else(|(e, _)| panic!("inject: {e}"));
        }
    });
    let summary = run_over_kafka(&topics, 60, "popularity", &["--concurrency", "4"]).await;
    inject.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.episodes, 60, "the run goes on: {summary}");
    assert_eq!((summary.decode_errors, summary.dead_letters), (2, 2), "{summary}");
    let dead = read_topic(&topics.dead_letter).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dead.len(), 2);
    let reasons: Vec<String> = dead
        .iter()
        .map(|r| r.headers.iter().find(|(k, _)| k == "dlq.reason").map(|(_, v)| v.clone()).unwrap_or_default())
        .collect();
    assert!(reasons.iter().any(|r| r.contains("wire format") || r.contains("magic")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("schema violation") && r.contains("/ps")), "{reasons:?}");
    assert!(dead.iter().any(|r| r.value() == b"this is not json"), "the original bytes are kept");
    check_topics(&dataset, &topics, &summary);
    topics.delete().await;
}

/// Runs `flags` (of `streamrec-sim memory`) in memory, a lost message failing the test after
/// 300 s; returns the states and actions decoded as the services decode them, and the outcome.
async fn run_in_memory(
    dataset: &Arc<Dataset>,
    flags: &[&str],
) -> (Vec<(Option<Vec<u8>>, StateMsg)>, Vec<ActionMsg>, sim::Outcome) {
    let cli: SimCli = parse_flags(flags.iter().copied());
    let run = sim::run_memory(dataset.clone(), &cli.episodes, &cli.agent, 256, CancellationToken::new());
    let outcome = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .unwrap_or_else(|_| panic!("{flags:?}: the in-memory run did not end within 300 s: a message was lost"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (state_codec, action_codec) = sim::memory_codecs::<StateMsg>().unwrap_or_else(|e| panic!("{e:#}"));
    let records = outcome.recording.states.iter().map(|r| (r.key.clone(), r.value().to_vec()));
    let states = decode_all(&state_codec, records).await;
    let records = outcome.recording.actions.iter().map(|(k, p)| (Some(k.clone().into_bytes()), p.clone()));
    let actions: Vec<ActionMsg> = decode_all(&action_codec, records).await.into_iter().map(|(_, a)| a).collect();
    (states, actions, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_transport_passes_the_same_checker() {
    let dataset = Arc::new(load_sample());
    for policy in ["random", "popularity"] {
        // A re-send must mean a lost message, never a slow machine: no action is ever overdue
        // (an hour), and a lost one shows as a run that does not end (the timeout below).
        let flags = ["sim", "--episodes", "200", "--concurrency", "64", "--policy", policy, "--action-timeout", "1h"];
        let (states, actions, outcome) = run_in_memory(&dataset, &flags).await;
        assert_eq!(outcome.summary.episodes, 200);
        let violations = check_run(&dataset, 50, &states, &actions, &outcome.summary);
        assert!(violations.is_empty(), "{policy}: {:?}", &violations[..violations.len().min(5)]);
        assert_eq!(outcome.summary.resends, 0, "nothing is lost in memory");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interactive_user_model_runs_through_the_same_pipeline_and_passes_the_checker() {
    let dataset = Arc::new(load_sample());
    let flags = [
        "sim",
        "--episodes",
        "300",
        "--concurrency",
        "64",
        "--policy",
        "cooccurrence",
        "--epsilon",
        "0.3",
        "--action-timeout",
        "1h",
        "--user-model",
        "interactive",
        "--accept-prob",
        "0.7",
        "--leave-prob",
        "0.3",
    ];
    let (states, actions, outcome) = run_in_memory(&dataset, &flags).await;
    assert_eq!(outcome.summary.episodes, 300);
    assert!(
        states.iter().all(|(_, s)| s.env_id.starts_with("fashion-interactive-v1/") && s.accept_prob == Some(0.7)),
        "the states say the model and its acceptance probability"
    );
    let violations = check_run(&dataset, 50, &states, &actions, &outcome.summary);
    assert!(violations.is_empty(), "{:?}", &violations[..violations.len().min(5)]);
    // Both effects of the actions happened: accepted products beyond the next one (skips), and
    // users who left before their sequence's end.
    let users: std::collections::HashMap<&str, &[u32]> =
        dataset.users.iter().map(|u| (u.user_id.as_str(), u.items.as_slice())).collect();
    let skips = states.iter().filter(|(_, s)| s.reward == 1.0 && !s.next_item_hit).count();
    let left = states
        .iter()
        .filter(|(_, s)| s.terminated && users[s.user_id.as_str()].last() != Some(&s.observation.index))
        .count();
    assert!(skips > 0 && left > 0, "skips {skips}, early departures {left}");

    // The checker knows the model: the same states read as replayed ones break its rules.
    let replayed: Vec<_> = states
        .iter()
        .cloned()
        .map(|(k, mut s)| {
            s.env_id = s.env_id.replace("fashion-interactive-v1/", "fashion-v1/");
            (k, s)
        })
        .collect();
    assert!(!check_run(&dataset, 50, &replayed, &actions, &outcome.summary).is_empty());
}

/// The summary of an interrupted run: the checker then leaves the step and episode counts out.
fn interrupted_summary() -> env_svc::metrics::Summary {
    let head = env_svc::metrics::SummaryHead {
        env_id: "e".into(),
        transport: "t".into(),
        split: "all".into(),
        interrupted: true,
    };
    env_svc::metrics::Metrics::default().summary(head, Duration::from_secs(1))
}

#[test]
fn checker_catches_a_user_who_left_after_a_product_they_review_later() {
    let dataset = env_svc::testing::dataset_with_users(10, &[&[1, 2, 3, 4]]);
    let mut s0 = protocol::messages::examples::state();
    (s0.env_id, s0.episode_id, s0.user_id, s0.n_actions, s0.observation.index) =
        ("fashion-interactive-v1/t".into(), "ep".into(), "user-0".into(), 10, 1);
    s0.accept_prob = Some(0.5);
    let mut s1 = s0.clone();
    (s1.step, s1.observation.index, s1.reward, s1.terminated) = (1, 2, 0.0, true);
    let mut a0 = protocol::messages::examples::action();
    (a0.episode_id, a0.step, a0.action) = ("ep".into(), 0, 4); // 4 is later: declining it is fine, leaving is not
    let key = Some(b"ep".to_vec());
    let summary = interrupted_summary();
    let violations =
        check_run(&dataset, 50, &[(key.clone(), s0.clone()), (key.clone(), s1.clone())], &[a0.clone()], &summary);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("left after a recommendation of a product they review later"), "{violations:?}");
    // An accepted product must be where the user goes.
    (s1.reward, s1.terminated, s1.observation.index) = (1.0, false, 3);
    let violations = check_run(&dataset, 50, &[(key.clone(), s0), (key, s1)], &[a0], &summary);
    assert!(violations.iter().any(|v| v.contains("not the user's product at position 3")), "{violations:?}");
}

#[test]
fn checker_catches_a_wrong_reward() {
    // The checker itself must fail on a broken run, or its silence proves nothing.
    let dataset = env_svc::testing::dataset_with_users(10, &[&[1, 2, 3]]);
    let mut s0 = protocol::messages::examples::state();
    (s0.env_id, s0.episode_id, s0.user_id, s0.n_actions, s0.observation.index) =
        ("e".into(), "ep".into(), "user-0".into(), 10, 1);
    let mut s1 = s0.clone();
    (s1.step, s1.observation.index, s1.reward) = (1, 2, 1.0);
    let mut s2 = s1.clone();
    (s2.step, s2.observation.index, s2.reward, s2.terminated) = (2, 3, 0.0, true);
    let mut a0 = protocol::messages::examples::action();
    (a0.episode_id, a0.step, a0.action) = ("ep".into(), 0, 9); // 9 is not a later product: reward must be 0
    let mut a1 = a0.clone();
    (a1.step, a1.action) = (1, 7);
    let key = Some(b"ep".to_vec());
    let states = vec![(key.clone(), s0), (key.clone(), s1), (key, s2)];
    let summary = interrupted_summary();
    let violations = check_run(&dataset, 50, &states, &[a0, a1], &summary);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("ep/1: reward 1"), "{violations:?}");
}
