//! The archiver on a RecoGym run (`archiver run-once --env recogym`) against the real stack
//! (`make stack-up`): a small simulation over Kafka (random policy, states asking for `ps_all`)
//! archived into a fresh keyspace, then checked: one row per message and table, one
//! `episodes_by_user` row per user with the episode's length and return, and
//! `archiver::readback::for_each_episode` giving back every episode whole, each step's state
//! equal to the first copy published and its action equal to the first one published (with its
//! `ps` and `ps_all`), and leaving out what its time window excludes.

use std::collections::{BTreeMap, BTreeSet};

use archiver::{for_each_episode, ArchivedEpisode, ArchivedState, EpisodeFilter, ReadbackCounts};
use protocol::{ActionMsg, RecoStateMsg};
use scylla::client::{session::Session, session_builder::SessionBuilder};
use serde_json::Value;
use streamrec_tests::{
    archiver_bin, bootstrap, cassandra_node, clean_command, decode_values, read_topic, registry_url,
    simulate_recogym_over_kafka, unique, TestTopics,
};

const USERS: u64 = 30;
/// Opportunities per user at most (`--recogym-max-steps`): longer users are truncated, which
/// keeps the run to a few seconds.
const MAX_STEPS: u32 = 25;

/// Kafka position of a record: (partition, offset).
type Pos = (i32, i64);

/// Every record of `topic` with its position, decoded against its writer's schema.
fn read_decoded<T: protocol::Message + Send>(topic: &str) -> Vec<(Pos, T)> {
    let records = read_topic(topic).unwrap_or_else(|e| panic!("{e}"));
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone().unwrap_or_default()).collect();
    let decoded = decode_values::<T>(topic, &payloads).unwrap_or_else(|e| panic!("{e:#}"));
    records
        .iter()
        .zip(decoded)
        .map(|(r, d)| {
            ((r.partition, r.offset), d.unwrap_or_else(|e| panic!("a record of {topic} is refused: {e}")).msg)
        })
        .collect()
}

async fn archiver(args: &[&str]) -> std::process::Output {
    tokio::process::Command::from(clean_command(archiver_bin()))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run archiver: {e}"))
}

async fn count(session: &Session, keyspace: &str, table: &str) -> i64 {
    session
        .query_unpaged(format!("SELECT count(*) FROM {keyspace}.{table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("{e}"))
        .first_row::<(i64,)>()
        .map(|(n,)| n)
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn episodes(session: &Session, keyspace: &str, filter: &EpisodeFilter) -> (Vec<ArchivedEpisode>, ReadbackCounts) {
    let mut out = Vec::new();
    let counts = for_each_episode(session, keyspace, filter, |e| {
        out.push(e);
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("for_each_episode: {e:#}"));
    (out, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recogym_run_is_archived_row_for_message_and_read_back_as_whole_episodes() {
    let started = std::time::Instant::now();
    let topics = TestTopics::create("archgym").await.unwrap_or_else(|e| panic!("topics: {e}"));
    let keyspace = unique("archgym");
    let node = cassandra_node();
    let init = archiver(&["init", "--keyspace", &keyspace, "--cassandra-nodes", &node]).await;
    assert!(init.status.success(), "archiver init: {}", String::from_utf8_lossy(&init.stderr));

    // 1. A RecoGym run over Kafka, its states asking for the probability of every action, users
    // cut after MAX_STEPS opportunities (the run lasts as long as its longest user).
    let sim_started = std::time::Instant::now();
    let run = unique("gymarch");
    let (users, max_steps) = (USERS.to_string(), MAX_STEPS.to_string());
    let env_flags =
        ["--recogym-users", &users, "--run-id", &run, "--concurrency", "64", "--recogym-with-ps-all", "true"];
    let env_flags = [&env_flags[..], &["--recogym-max-steps", &max_steps]].concat();
    let sim = simulate_recogym_over_kafka(&topics, &env_flags, &["--policy", "random", "--agent-seed", "7"]).await;
    let env_id = format!("reco-gym-v1/{run}");
    assert_eq!((sim.head.env_id.as_str(), sim.episodes), (env_id.as_str(), USERS), "{sim}");
    let simulated = sim_started.elapsed().as_secs_f64();
    let archive_started = std::time::Instant::now();

    // 2. What the topics hold.
    let (st, at) = (topics.state.clone(), topics.action.clone());
    let (states, actions) =
        tokio::task::spawn_blocking(move || (read_decoded::<RecoStateMsg>(&st), read_decoded::<ActionMsg>(&at)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let (s, a) = (states.len() as i64, actions.len() as i64);
    assert!(states.iter().all(|(_, m)| m.env_id == env_id) && actions.iter().all(|(_, m)| m.env_id == env_id));
    // Per episode and step, the first copy of the state (attempt, then position) and the first
    // action (position): what the env published and applied.
    let mut first_state: BTreeMap<(String, u32), ((u32, Pos), RecoStateMsg)> = BTreeMap::new();
    for (pos, m) in &states {
        let key = (m.attempt, *pos);
        let e = first_state.entry((m.episode_id.clone(), m.step)).or_insert_with(|| (key, m.clone()));
        if key < e.0 {
            *e = (key, m.clone());
        }
    }
    let mut first_action: BTreeMap<(String, u32), (Pos, ActionMsg)> = BTreeMap::new();
    for (pos, m) in &actions {
        let e = first_action.entry((m.episode_id.clone(), m.step)).or_insert_with(|| (*pos, m.clone()));
        if *pos < e.0 {
            *e = (*pos, m.clone());
        }
    }
    assert!(actions.iter().all(|(_, m)| m.ps_all.as_ref().is_some_and(|p| p.len() == 10)), "ps_all was asked for");

    // 3. Archive it: the RecoGym topics, by --env recogym.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let json = dir.path().join("summary.json");
    let group = unique("archgym_group");
    let mut args = vec!["run-once", "--env", "recogym", "--keyspace", &keyspace, "--group-id", &group];
    let flags = topics.flags();
    args.extend(flags.iter().map(String::as_str));
    let (kafka, registry, summary_path) = (bootstrap(), registry_url(), json.display().to_string());
    args.extend(["--no-progress", "--cassandra-nodes", &node, "--bootstrap-servers", &kafka]);
    args.extend(["--schema-registry-url", &registry, "--summary-json", &summary_path]);
    let out = archiver(&args).await;
    let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "archiver run-once --env recogym: {log}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default()).unwrap_or_default();
    let n = |v: &Value| v.as_i64().unwrap_or(-1);
    assert_eq!((n(&summary["messages"][&topics.state]), n(&summary["messages"][&topics.action])), (s, a), "{summary}");
    assert_eq!(n(&summary["rejected"]), 0, "{summary}");

    // Row counts equal message counts; one episode row per user.
    let session = SessionBuilder::new().known_node(&node).build().await.unwrap_or_else(|e| panic!("connect: {e}"));
    let mut counts = Vec::new();
    for table in ["steps", "states_by_day", "actions_by_day", "episodes_by_user", "rejected"] {
        counts.push(count(&session, &keyspace, table).await);
    }
    assert_eq!(counts, vec![s + a, s, a, USERS as i64, 0], "steps, states_by_day, actions_by_day, episodes, rejected");

    // RecoGym rows leave the fashion columns unset.
    let fashion_cols = session
        .query_unpaged(
            format!("SELECT product_asin, product_text, next_item_hit, catalog, accept_prob FROM {keyspace}.steps"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("{e}"));
    type FashionCols = (Option<String>, Option<String>, Option<bool>, Option<String>, Option<f64>);
    for row in fashion_cols.rows::<FashionCols>().unwrap_or_else(|e| panic!("{e}")) {
        assert_eq!(row.unwrap_or_else(|e| panic!("{e}")), (None, None, None, None, None));
    }

    // episodes_by_user: one row per user, with the episode's length and return.
    let rows = session
        .query_unpaged(
            format!("SELECT user_id, episode_id, steps, episode_return FROM {keyspace}.episodes_by_user"),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("{e}"));
    let by_user: Vec<(String, String, i32, f64)> =
        rows.rows().unwrap_or_else(|e| panic!("{e}")).map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect();
    let users_published: BTreeSet<String> = states.iter().map(|(_, m)| m.user_id.to_string()).collect();
    let users_archived: BTreeSet<String> = by_user.iter().map(|r| r.0.clone()).collect();
    assert_eq!(users_published.len() as u64, USERS, "one episode per user");
    assert_eq!((by_user.len(), &users_archived), (USERS as usize, &users_published));
    for (user, episode, steps, ret) in &by_user {
        let of_episode = || first_state.iter().filter(|((e, _), _)| e == episode);
        let last = of_episode().map(|((_, step), _)| *step).max().unwrap_or_default();
        let expected: f64 = of_episode().map(|(_, (_, m))| m.reward).sum();
        assert_eq!((*steps as u32, *ret), (last, expected), "episode {episode} of user {user}");
    }

    // 4. Read back: every episode whole, as published.
    let filter = EpisodeFilter { env_id: env_id.clone(), since_ms: None, until_ms: None };
    let (read, counts) = episodes(&session, &keyspace, &filter).await;
    let answered = first_action.len() as u64;
    let expected_counts = ReadbackCounts {
        episodes: USERS,
        states: first_state.len() as u64,
        actions: answered,
        resent_states: s as u64 - first_state.len() as u64,
        duplicate_actions: a as u64 - answered,
        skipped_by_time: 0,
    };
    assert_eq!(counts, expected_counts);
    let ids: BTreeSet<&str> = read.iter().map(|e| e.episode_id.as_str()).collect();
    let published: BTreeSet<&str> = first_state.keys().map(|(e, _)| e.as_str()).collect();
    assert_eq!(ids, published, "every episode, once");
    let mut step0_ts = Vec::new();
    for episode in &read {
        let expected: Vec<_> = first_state.iter().filter(|((e, _), _)| *e == episode.episode_id).collect();
        assert_eq!(episode.steps.len(), expected.len(), "every step of {}", episode.episode_id);
        for (i, (step, ((id, number), (_, state)))) in episode.steps.iter().zip(expected).enumerate() {
            assert_eq!(*number as usize, i, "in step order");
            assert_eq!(step.state, ArchivedState::Recogym(state.clone()), "{id} step {number}");
            let action = first_action.get(&(id.clone(), *number)).map(|(_, m)| m.clone());
            assert_eq!(step.action, action, "{id} step {number}: the action the env applied");
            if !(state.terminated || state.truncated) {
                let ps = step.action.as_ref().map(|m| m.ps);
                assert_eq!(ps, action.as_ref().map(|m| m.ps), "{id} step {number}");
                assert!(ps.is_some(), "{id} step {number} is answered");
            }
        }
        let last = episode.steps.last().map(|s| &s.state);
        let ended = |s: &ArchivedState| matches!(s, ArchivedState::Recogym(m) if m.terminated || m.truncated);
        assert!(last.is_some_and(ended), "{} ends with its terminal state", episode.episode_id);
        step0_ts.push(protocol::StepState::ts_ms(&episode.steps[0].state));
    }

    // The time window is on the step-0 state: past the last episode's start, nothing is left.
    let (last_start, first_start) = (step0_ts.iter().max().copied(), step0_ts.iter().min().copied());
    let late = EpisodeFilter { since_ms: last_start.map(|t| t + 1), ..filter.clone() };
    let (none, counts) = episodes(&session, &keyspace, &late).await;
    assert_eq!((none.len(), counts.episodes, counts.skipped_by_time), (0, 0, USERS));
    let window = EpisodeFilter { since_ms: first_start, until_ms: last_start, ..filter };
    let (some, counts) = episodes(&session, &keyspace, &window).await;
    let inside = step0_ts.iter().filter(|t| Some(**t) < last_start).count();
    assert_eq!((some.len(), counts.episodes + counts.skipped_by_time), (inside, USERS));

    println!(
        "{USERS} users, {s} states, {a} actions: simulated in {simulated:.1} s, archived and read back in {:.1} s, \
         {:.1} s in all",
        archive_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let _ = session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[]).await;
    topics.delete().await;
}
