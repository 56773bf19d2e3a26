//! RecoGym end to end through Kafka, with the services' own `run` functions: a logging run
//! (uniform random, seeded as RecoGym's logging agent), then an A/B test of `organic-count`
//! (trained on that run, read back from the topics) against `random` on the same users.
//!
//! Checked: every user finishes; the env's impressions are exactly the answered steps on the
//! action topic; every record is framed with the id the registry gave its subject and validates
//! against the schema registered there; every run replays exactly through the simulator (the
//! RecoGym checker); the log read back from the topics is RecoGym's own `generate_logs` for
//! those users; the in-process transport gives the same counts; and the trained organic-count
//! agent beats random with non-overlapping 95% intervals. Everything is seeded and per user, so
//! the counts are the same on every run (about 7,000 impressions per A/B run).

use std::collections::{HashMap, HashSet};

use agent_svc::policies::recogym::logs::{log_from_messages, strip_after_leaving};
use common::registry::{Registry, RegistryArgs};
use env_svc::{checker::check_recogym_run, metrics::Summary};
use protocol::{topics::value_subject, ActionMsg, Envelope, RecoStateMsg};
use streamrec_tests::{decode_values, read_topic, registry_url, simulate_recogym_over_kafka, unique, TestTopics};

const TRAIN_USERS: u64 = 100;
const AB_USERS: u64 = 100;

/// Every record of `topic`, decoded as the services decode it (against its writer's schema,
/// which must be registered under the topic's subject), and framed with the id of the subject's
/// latest version.
async fn read_validated<T: protocol::Message + Send + 'static>(topic: &str) -> Vec<(Option<Vec<u8>>, T)> {
    let registry = Registry::new(&RegistryArgs { schema_registry_url: registry_url() });
    let registered = registry.latest(&value_subject(topic)).await.unwrap_or_else(|e| panic!("{topic}: {e}"));
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let records = read_topic(&topic).unwrap_or_else(|e| panic!("{e}"));
        let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.value().to_vec()).collect();
        let decoded = decode_values::<T>(&topic, &payloads).unwrap_or_else(|e| panic!("{e:#}"));
        records
            .into_iter()
            .zip(decoded)
            .map(|(r, d)| {
                let d = d.unwrap_or_else(|e| panic!("a record of {topic} is refused: {e}"));
                assert_eq!(d.schema_id, registered.id, "framed with another schema id than the registered one");
                (r.key, d.msg)
            })
            .collect()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

fn world() -> recogym::World {
    recogym::World::new(&recogym::Config { num_products: 10, random_seed: 42, ..recogym::Config::default() })
}

/// Checks one run's records; returns (clicks, impressions).
fn check_run(
    name: &str,
    summary: &Summary,
    users: u64,
    states: &[(Option<Vec<u8>>, RecoStateMsg)],
    actions: &[ActionMsg],
) -> (u64, u64) {
    let env_id = &summary.head.env_id;
    let states: Vec<(Option<Vec<u8>>, RecoStateMsg)> =
        states.iter().filter(|(_, s)| &s.env_id == env_id).cloned().collect();
    let actions: Vec<ActionMsg> = actions.iter().filter(|a| &a.env_id == env_id).cloned().collect();
    assert_eq!(summary.episodes, users, "{name}: every user finishes: {summary}");
    assert_eq!((summary.invalid, summary.decode_errors, summary.dead_letters), (0, 0, 0), "{name}: {summary}");
    let answered: HashSet<(&str, u32)> = actions.iter().map(|a| (a.episode_id(), a.step)).collect();
    assert_eq!(answered.len() as u64, summary.steps, "{name}: impressions are the answered steps");
    assert!(actions.len() as u64 >= summary.steps);
    let violations = check_recogym_run(&world(), None, &states, &actions, summary);
    assert!(violations.is_empty(), "{name}: {:?}", &violations[..violations.len().min(5)]);
    (summary.reward_sum as u64, summary.steps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recogym_through_kafka_trained_organic_count_beats_random_on_the_same_users() {
    let started = std::time::Instant::now();
    let topics = TestTopics::create("recogym").await.unwrap_or_else(|e| panic!("{e}"));
    let (train, ab, first_ab) = (TRAIN_USERS.to_string(), AB_USERS.to_string(), TRAIN_USERS.to_string());

    // 1. The logging run: users 0..TRAIN, served uniformly at random with RecoGym's seed.
    let log_run = unique("log");
    let logging = simulate_recogym_over_kafka(
        &topics,
        &["--recogym-users", &train, "--run-id", &log_run, "--concurrency", "256"],
        &["--policy", "random", "--agent-seed", "42"],
    )
    .await;
    let log_env = format!("reco-gym-v1/{log_run}");
    assert_eq!(logging.head.env_id, log_env);

    // 2. The A/B runs on users TRAIN..TRAIN+AB, the trained agent reading the log back itself.
    let mut results = HashMap::new();
    for (policy, train_flags) in [("organic-count", vec!["--train-env-id", log_env.as_str()]), ("random", vec![])] {
        let run = unique(policy);
        let mut agent = vec!["--policy", policy];
        agent.extend(train_flags);
        let env = ["--recogym-users", &ab, "--recogym-first-user", &first_ab, "--run-id", &run, "--concurrency", "256"];
        let summary = simulate_recogym_over_kafka(&topics, &env, &agent).await;
        results.insert(policy, summary);
    }

    println!(
        "runs: logging {:.1} s, organic-count {:.1} s, random {:.1} s; {:.1} s so far",
        logging.elapsed_s,
        results["organic-count"].elapsed_s,
        results["random"].elapsed_s,
        started.elapsed().as_secs_f64()
    );

    // 3. What the topics hold, checked against the registry and the simulator.
    let states: Vec<(Option<Vec<u8>>, RecoStateMsg)> = read_validated(&topics.state).await;
    let actions: Vec<ActionMsg> =
        read_validated::<ActionMsg>(&topics.action).await.into_iter().map(|(_, a)| a).collect();
    check_run("logging", &logging, TRAIN_USERS, &states, &actions);
    let (oc_clicks, oc_imp) = check_run("organic-count", &results["organic-count"], AB_USERS, &states, &actions);
    let (rnd_clicks, rnd_imp) = check_run("random", &results["random"], AB_USERS, &states, &actions);

    println!("topics read back and checked: {:.1} s so far", started.elapsed().as_secs_f64());

    // The log read back from the pipeline is RecoGym's own log of those users.
    let run_states = states.iter().map(|(_, s)| s).filter(|s| s.env_id == log_env);
    let run_actions = actions.iter().filter(|a| a.env_id == log_env);
    let from_kafka = log_from_messages(run_states, run_actions);
    let mut generated = recogym::generate_logs(&world(), 0..TRAIN_USERS, &recogym::RandomAgent::new(10, 42, false));
    strip_after_leaving(&mut generated);
    assert_eq!(from_kafka, generated, "the pipeline logs what recogym::generate_logs logs");

    // The same test in process gives the same counts.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: sim::recogym::RecoArgs,
    }
    let cli: Cli = streamrec_tests::parse_flags([
        "sim",
        "--recogym-users",
        &ab,
        "--train-users",
        &train,
        "--policies",
        "organic-count,random",
        "--transports",
        "memory",
    ]);
    let memory = sim::recogym::run_transport(&cli.args, std::sync::Arc::new(world()), sim::recogym::Transport::Memory)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let counts: Vec<(u64, u64)> = memory.agents.iter().map(|(_, e, clicks)| (*clicks, e.impressions)).collect();
    assert_eq!(counts, vec![(oc_clicks, oc_imp), (rnd_clicks, rnd_imp)], "memory and Kafka agree");

    // The trained agent beats random, with non-overlapping 95% intervals.
    let (oc, rnd) = (recogym::ab::beta_interval(oc_clicks, oc_imp), recogym::ab::beta_interval(rnd_clicks, rnd_imp));
    println!(
        "organic-count {:.4} [{:.4}, {:.4}] ({oc_clicks}/{oc_imp}), random {:.4} [{:.4}, {:.4}] ({rnd_clicks}/{rnd_imp}), {:.1} s",
        oc.0,
        oc.1,
        oc.2,
        rnd.0,
        rnd.1,
        rnd.2,
        started.elapsed().as_secs_f64()
    );
    assert!(oc.1 > rnd.2, "organic-count {oc:?} does not beat random {rnd:?}");
    topics.delete().await;
}
