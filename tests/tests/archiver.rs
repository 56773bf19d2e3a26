//! The archiver against the real stack (`make stack-up`): a simulation archived with row counts
//! equal to message counts, a second run that changes nothing, the README's cqlsh queries and
//! the PNG report on that archive; a crash between write and commit and a SIGKILL mid-run
//! followed by a re-run; undecodable messages in `rejected`; the daily schedule and SIGTERM.
//! Each test has its own topics, consumer group and keyspace, and drives the `archiver` binary.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::process::ExitStatusExt,
    path::Path,
    process::{Output, Stdio},
    time::Duration,
};

use protocol::{messages::examples, topics::dead_letter as dlq, wire, ActionMsg, StateMsg};
use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use scylla::client::{session::Session, session_builder::SessionBuilder};
use serde_json::Value;
use streamrec_tests::{
    archiver_bin, cassandra_node, clean_command, committed_offsets, cqlsh, decode_values, freeze, kafka_config,
    read_topic, repo_root, unique, wait_for_async, TestTopics,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

/// `archiver` with a cleared environment ([`clean_command`]): its flags say everything.
fn archiver_command() -> Command {
    Command::from(clean_command(archiver_bin()))
}

/// Topics, keyspace (created by `archiver init`) and consumer group of one test.
struct Archive {
    topics: TestTopics,
    keyspace: String,
    group: String,
    session: Session,
    dir: tempfile::TempDir,
}

impl Archive {
    async fn new(prefix: &str) -> Self {
        let topics = TestTopics::create(prefix).await.unwrap_or_else(|e| panic!("topics: {e}"));
        let keyspace = unique(prefix);
        let group = unique(&format!("{prefix}_group"));
        let init = archiver(&["init", "--keyspace", &keyspace, "--cassandra-nodes", &cassandra_node()]).await;
        assert!(init.status.success(), "archiver init: {}", String::from_utf8_lossy(&init.stderr));
        let session =
            SessionBuilder::new().known_node(cassandra_node()).build().await.unwrap_or_else(|e| panic!("connect: {e}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        Self { topics, keyspace, group, session, dir }
    }

    fn flags(&self) -> Vec<String> {
        let mut f = self.topics.flags();
        f.extend(["--keyspace", &self.keyspace, "--group-id", &self.group, "--no-progress"].map(String::from));
        f.extend([
            "--cassandra-nodes".into(),
            cassandra_node(),
            "--bootstrap-servers".into(),
            streamrec_tests::bootstrap(),
            "--schema-registry-url".into(),
            streamrec_tests::registry_url(),
        ]);
        f
    }

    /// `archiver run-once` with this archive's flags; returns its output and summary JSON.
    async fn run_once(&self, extra: &[&str]) -> (Output, Value) {
        let json = self.dir.path().join(format!("{}.json", unique("summary")));
        let mut args = vec!["run-once".to_string()];
        args.extend(self.flags());
        args.extend(["--summary-json".into(), json.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = archiver(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
        let summary =
            std::fs::read_to_string(&json).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        (out, summary)
    }

    async fn count(&self, table: &str) -> i64 {
        let rows = self
            .session
            .query_unpaged(format!("SELECT count(*) FROM {}.{table}", self.keyspace), &[])
            .await
            .unwrap_or_else(|e| panic!("count {table}: {e}"))
            .into_rows_result()
            .unwrap_or_else(|e| panic!("{e}"));
        rows.first_row::<(i64,)>().map(|(n,)| n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Row counts of the message tables and episodes.
    async fn counts(&self) -> [i64; 4] {
        [
            self.count("steps").await,
            self.count("states_by_day").await,
            self.count("actions_by_day").await,
            self.count("episodes_by_user").await,
        ]
    }

    fn committed(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        [&self.topics.state, &self.topics.action]
            .into_iter()
            .map(|t| (t.clone(), committed_offsets(&self.group, t).unwrap_or_else(|e| panic!("committed: {e}"))))
            .collect()
    }

    fn committed_total(&self) -> i64 {
        self.committed().values().flat_map(|m| m.values()).sum()
    }

    async fn drop_all(self) {
        let _ = self.session.query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace), &[]).await;
        self.topics.delete().await;
    }
}

async fn archiver(args: &[&str]) -> Output {
    archiver_command()
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run archiver: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// What `produce_episodes` wrote.
#[derive(Debug, Default)]
struct Produced {
    states: i64,
    actions: i64,
    episodes: i64,
}

impl Produced {
    fn messages(&self) -> i64 {
        self.states + self.actions
    }
}

fn producer() -> FutureProducer {
    kafka_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap_or_else(|e| panic!("producer: {e}"))
}

/// Episodes of `steps` steps as env-svc and agent-svc write them: a state per step (the last
/// one terminal), an action per non-terminal step, plus a re-sent state and a duplicate action
/// at step 1 of every episode. Returns the counts.
async fn produce_episodes(topics: &TestTopics, tag: &str, episodes: u32, steps: u32) -> Produced {
    let (sc, ac) = topics.codecs::<StateMsg>().await.unwrap_or_else(|e| panic!("{e:#}"));
    let producer = producer();
    let mut pending = Vec::new();
    let mut p = Produced { episodes: i64::from(episodes), ..Default::default() };
    let now = common::kafka::now_ms();
    for e in 0..episodes {
        let id = format!("fashion-v1/{tag}#{e:04}");
        for step in 0..=steps {
            let copies = if step == 1 { 2 } else { 1 };
            for attempt in 0..copies {
                let mut s = examples::state();
                (s.env_id, s.episode_id, s.step, s.attempt) = (format!("fashion-v1/{tag}"), id.clone(), step, attempt);
                s.user_id = format!("U{}", e % 3);
                s.reward = if step > 0 && step % 3 == 0 { 1.0 } else { 0.0 };
                s.terminated = step == steps;
                s.ts_ms = now + i64::from(step) * 10 + i64::from(attempt);
                let bytes = sc.encode(&s).unwrap_or_else(|e| panic!("{e}"));
                pending.push(send(&producer, &topics.state, Some(&id), Some(bytes), None));
                p.states += 1;
            }
            if step == steps {
                break;
            }
            for _ in 0..copies {
                let mut a = examples::action();
                (a.env_id, a.episode_id, a.step, a.ts_ms) = (format!("fashion-v1/{tag}"), id.clone(), step, now);
                let bytes = ac.encode(&a).unwrap_or_else(|e| panic!("{e}"));
                pending.push(send(&producer, &topics.action, Some(&id), Some(bytes), None));
                p.actions += 1;
            }
        }
    }
    for d in pending {
        d.await;
    }
    p
}

/// Enqueues a record (without waiting) and returns a future of its (partition, offset).
fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
) -> impl std::future::Future<Output = (i32, i64)> {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(p) = payload.as_deref() {
        record = record.payload(p);
    }
    if let Some(h) = headers {
        record = record.headers(h);
    }
    let delivery = producer.send_result(record).unwrap_or_else(|(e, _)| panic!("enqueue: {e}"));
    async move {
        let d = match delivery.await {
            Ok(Ok(d)) => d,
            Ok(Err((e, _))) => panic!("delivery failed: {e}"),
            Err(_) => panic!("delivery cancelled"),
        };
        (d.partition, d.offset)
    }
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(-1)
}

// ---------------------------------------------------------------------------- simulation + cqlsh

async fn simulate(topics: &TestTopics, episodes: usize) -> env_svc::metrics::Summary {
    streamrec_tests::simulate_over_kafka(topics, episodes, "popularity", &["--concurrency", "8"]).await
}

/// The named queries of `archiver/queries.cql` (a `-- name: ...` line, then the query line).
fn documented_queries() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join("archiver/queries.cql")).unwrap_or_else(|e| panic!("{e}"));
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .filter(|w| w[1].starts_with("SELECT "))
        .filter_map(|w| {
            w[0].strip_prefix("-- ")
                .and_then(|c| c.split_once(':'))
                .map(|(name, _)| (name.to_string(), w[1].to_string()))
        })
        .collect()
}

/// Runs one statement with the PyPI cqlsh; returns the data rows (cells trimmed).
fn cqlsh_rows(query: &str) -> Vec<Vec<String>> {
    let node = cassandra_node();
    let (host, port) = node.rsplit_once(':').unwrap_or((node.as_str(), "9042"));
    let out = std::process::Command::new(cqlsh())
        .args([host, port, "--request-timeout=60", "-e", query])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cqlsh().display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "cqlsh failed on {query}: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let Some(sep) = lines.iter().position(|l| l.starts_with("---")) else { return Vec::new() };
    let rows: Vec<Vec<String>> = lines[sep + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    let count = lines.iter().find_map(|l| l.trim().strip_prefix('(').and_then(|r| r.strip_suffix(" rows)")));
    assert_eq!(count.and_then(|c| c.parse::<usize>().ok()), Some(rows.len()), "cqlsh printed:\n{stdout}");
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulation_archived_once_second_run_changes_nothing_and_the_documented_queries_answer() {
    let a = Archive::new("archsim").await;
    let episodes = 30;
    let sim = simulate(&a.topics, episodes).await;
    assert_eq!(sim.episodes, episodes as u64, "{sim}");

    // What is on the topics, decoded.
    fn decoded<T: protocol::Message + Send>(topic: &str) -> Vec<T> {
        let payloads: Vec<Vec<u8>> = read_topic(topic)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|r| r.payload.unwrap_or_default())
            .collect();
        decode_values::<T>(topic, &payloads)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .map(|d| d.unwrap_or_else(|e| panic!("{e}")).msg)
            .collect()
    }
    let states: Vec<StateMsg> = decoded(&a.topics.state);
    let actions: Vec<ActionMsg> = decoded(&a.topics.action);
    let (s, ac_n) = (states.len() as i64, actions.len() as i64);

    let (out, summary) = a.run_once(&[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(n(&summary["messages"][&a.topics.state]), s, "{summary}");
    assert_eq!(n(&summary["messages"][&a.topics.action]), ac_n, "{summary}");
    assert_eq!(n(&summary["messages"][&a.topics.dead_letter]), 0, "{summary}");
    let rows = &summary["rows"];
    assert_eq!(
        [n(&rows["steps"]), n(&rows["states_by_day"]), n(&rows["actions_by_day"]), n(&rows["episodes_by_user"])],
        [s + ac_n, s, ac_n, episodes as i64],
        "{summary}"
    );
    assert_eq!((n(&rows["rejected"]), n(&summary["rejected"])), (0, 0));
    let counts = a.counts().await;
    assert_eq!(counts, [s + ac_n, s, ac_n, episodes as i64], "rows in cassandra: one per message and table");
    let committed = a.committed();
    assert_eq!(committed.values().flat_map(|m| m.values()).sum::<i64>(), s + ac_n, "offsets committed to the end");

    // A second run finds nothing new: no rows, no new offsets.
    let (out, again) = a.run_once(&[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(again["messages"].as_object().is_some_and(|m| m.values().all(|v| n(v) == 0)), "{again}");
    assert!(again["rows"].as_object().is_some_and(|m| m.values().all(|v| n(v) == 0)), "{again}");
    assert_eq!(a.counts().await, counts);
    assert_eq!(a.committed(), committed);

    // The documented queries, exactly as written in queries.cql and docs/ARCHIVER.md.
    let queries = documented_queries();
    let doc = std::fs::read_to_string(repo_root().join("docs/ARCHIVER.md")).unwrap_or_default();
    for (name, q) in &queries {
        assert!(doc.contains(q.as_str()), "docs/ARCHIVER.md does not show the {name} query: {q}");
    }
    let episode = &states[0].episode_id;
    let user = &states[0].user_id;
    let day_of = archiver_day;
    let action_day = day_of(actions[0].ts_ms);
    let state_days: BTreeSet<String> = states.iter().map(|s| day_of(s.ts_ms)).collect();
    let days = format!("({})", state_days.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", "));
    // From the second answered step on (by time): reward_rate_since must leave out the first.
    let mut answered: Vec<&_> = states.iter().filter(|m| m.step > 0 && m.attempt == 0).collect();
    answered.sort_by_key(|m| m.ts_ms);
    let since_ms = answered[1].ts_ms;
    let since = archiver::dates::format_ts(since_ms);
    let fill = |q: &str| {
        q.replace("streamrec.", &format!("{}.", a.keyspace))
            .replace("'fashion-v1/3f2a9c#17'", &format!("'{episode}'"))
            .replace("('2025-06-01', '2025-06-02')", &days)
            .replace("'2025-06-01'", &format!("'{action_day}'"))
            .replace("'A1B2C3'", &format!("'{user}'"))
            .replace("'archiver'", &format!("'{}'", a.group))
            .replace("'fashion_action'", &format!("'{}'", a.topics.action))
            .replace("'fashion_state'", &format!("'{}'", a.topics.state))
            .replace("'2025-06-01T12:00:00.000Z'", &format!("'{since}'"))
    };
    let q = |name: &str| fill(queries.get(name).unwrap_or_else(|| panic!("queries.cql has no {name} query")));

    let steps = cqlsh_rows(&q("steps"));
    let expected = states.iter().filter(|m| &m.episode_id == episode).count()
        + actions.iter().filter(|m| &m.episode_id == episode).count();
    assert_eq!(steps.len(), expected, "one row per message of the episode: {steps:?}");
    assert_eq!((steps[0][0].as_str(), steps[0][1].as_str()), ("0", "state"), "{steps:?}");
    assert_eq!((steps[1][0].as_str(), steps[1][1].as_str()), ("0", "action"), "a step's state, then its action");
    assert_eq!(steps[1][7], "popularity", "the policy is shown");
    let step_numbers: Vec<i64> = steps.iter().map(|r| r[0].parse().unwrap_or(-1)).collect();
    assert!(step_numbers.windows(2).all(|w| w[0] <= w[1]), "in step order: {step_numbers:?}");

    let day_actions = cqlsh_rows(&q("day_actions"));
    let that_day = actions.iter().filter(|m| day_of(m.ts_ms) == action_day).count();
    assert_eq!(day_actions.len(), that_day.min(20));

    let rates = cqlsh_rows(&q("reward_rate"));
    let per_day: Vec<(f64, f64)> =
        rates.iter().map(|r| (r[1].parse().unwrap_or(f64::NAN), r[2].parse().unwrap_or(f64::NAN))).collect();
    let steps_total: f64 = per_day.iter().map(|(_, n)| n).sum();
    let rewards: f64 = per_day.iter().map(|(r, n)| r * n).sum();
    assert_eq!(steps_total as u64, sim.steps, "one reward per answered step: {rates:?}");
    assert!((rewards / steps_total - sim.reward_rate).abs() < 1e-3, "{rates:?} vs the env's {}", sim.reward_rate);

    let since_rates = cqlsh_rows(&q("reward_rate_since"));
    let later: Vec<&&_> = answered.iter().filter(|m| m.ts_ms >= since_ms).collect();
    let since_steps: f64 = since_rates.iter().map(|r| r[2].parse::<f64>().unwrap_or(f64::NAN)).sum();
    let since_rewards: f64 = since_rates
        .iter()
        .map(|r| r[1].parse::<f64>().unwrap_or(f64::NAN) * r[2].parse::<f64>().unwrap_or(f64::NAN))
        .sum();
    assert_eq!(since_steps as usize, later.len(), "the answered steps from {since} on: {since_rates:?}");
    assert!(later.len() < answered.len(), "the first answered step is before {since}");
    let expected: f64 = later.iter().map(|m| m.reward).sum();
    assert!((since_rewards - expected).abs() < 1e-3 * later.len() as f64, "{since_rates:?} vs {expected}");

    let user_episodes = cqlsh_rows(&q("user_episodes"));
    let of_user: BTreeSet<&str> = states.iter().filter(|m| &m.user_id == user).map(|m| m.episode_id.as_str()).collect();
    assert_eq!(user_episodes.len(), of_user.len(), "{user_episodes:?}");
    let returns: f64 = user_episodes.iter().map(|r| r[3].parse::<f64>().unwrap_or(f64::NAN)).sum();
    let expected_return: f64 =
        states.iter().filter(|m| &m.user_id == user && m.step > 0 && m.attempt == 0).map(|m| m.reward).sum();
    assert!((returns - expected_return).abs() < 1e-9, "episode returns {returns} vs {expected_return}");

    let runs = cqlsh_rows(&q("last_runs"));
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert!(runs.iter().all(|r| r[1] == "ok"), "{runs:?}");
    assert!(cqlsh_rows(&q("rejected")).is_empty());

    // The report: a PNG of the size asked for, and the numbers it plotted.
    let png = a.dir.path().join("report.png");
    let json = a.dir.path().join("report.json");
    let (png_s, json_s) = (png.display().to_string(), json.display().to_string());
    let out = archiver(&[
        "report",
        "--keyspace",
        &a.keyspace,
        "--cassandra-nodes",
        &cassandra_node(),
        "--out",
        &png_s,
        "--json",
        &json_s,
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    check_png(&png, 1200, 900);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default()).unwrap_or_default();
    assert_eq!(report["episodes"].as_array().map(Vec::len), Some(episodes));
    a.drop_all().await;
}

/// `YYYY-MM-DD` (UTC) of a Unix timestamp in milliseconds, as the archive's `day` columns.
fn archiver_day(ts_ms: i64) -> String {
    let days = ts_ms.div_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{m:02}-{d:02}", yoe + era * 400 + i64::from(m <= 2))
}

fn check_png(path: &Path, width: u32, height: u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() > 10_000, "a {} byte PNG is too small to hold two charts", bytes.len());
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let dim = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    assert_eq!((dim(16), dim(20)), (width, height));
}

// ---------------------------------------------------------------------------- crashes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_write_and_commit_and_sigkill_mid_run_then_rerun_keep_one_row_per_message() {
    let a = Archive::new("archcrash").await;
    let first = produce_episodes(&a.topics, "crash1", 60, 20).await;

    // Abort after the rows of batch 3 are written, before its offsets are committed.
    let (out, _) = a.run_once(&["--batch-size", "300", "--abort-before-commit", "3"]).await;
    assert_eq!(out.status.signal(), Some(6), "the hook aborts the process: {}", text(&out));
    let committed = a.committed_total();
    assert_eq!(committed, 600, "two batches of 300 were committed");
    let rows = a.count("steps").await;
    assert!(rows > committed, "batch 3's rows ({rows} rows) were written but not committed ({committed})");

    let (out, summary) = a.run_once(&[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        summary["messages"].as_object().map(|m| m.values().map(n).sum::<i64>()),
        Some(first.messages() - 600),
        "the re-run copies from the committed offsets: {summary}"
    );
    assert_eq!(a.counts().await, [first.messages(), first.states, first.actions, first.episodes]);

    // SIGKILL mid-run: about 86 batches of 100, frozen (SIGSTOP) once five of them are
    // committed, killed while frozen. Frozen, it commits at most the one commit it may have in
    // flight, so with more than a batch left it is mid-run by construction, at any machine speed.
    let second = produce_episodes(&a.topics, "crash2", 200, 20).await;
    let total = first.messages() + second.messages();
    let before = a.committed_total();
    let batch: i64 = 100;
    let mut args = vec!["run-once".to_string()];
    args.extend(a.flags());
    args.extend(["--batch-size".into(), batch.to_string()]);
    let mut child = archiver_command()
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    wait_for_async("five batches committed", Duration::from_secs(120), || {
        let exited = child.try_wait().ok().flatten();
        assert!(exited.is_none(), "the run ended before five batches were seen committed: {exited:?}");
        let committed = a.committed_total() >= before + 5 * batch;
        async move { committed.then_some(()) }
    })
    .await;
    let pid = child.id().unwrap_or_else(|| panic!("the archiver has exited"));
    tokio::task::block_in_place(|| freeze(pid)).unwrap_or_else(|e| panic!("freeze the archiver: {e}"));
    let frozen_at = a.committed_total();
    assert!(frozen_at + batch < total, "{frozen_at} of {total} committed when frozen: not mid-run");
    child.start_kill().unwrap_or_else(|e| panic!("kill: {e}"));
    let status = child.wait().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.signal(), Some(9), "the frozen run was killed: {status:?}");
    assert!(a.committed_total() < total, "killed mid-run");

    let (out, _) = a.run_once(&[]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        a.counts().await,
        [total, first.states + second.states, first.actions + second.actions, first.episodes + second.episodes],
        "exactly one row per message after the re-runs"
    );
    assert_eq!(a.committed_total(), total);
    // Episodes that straddled a crash were summarised from their rows read back from `steps`:
    // 20 steps, a reward every third step (6), the re-sent state at step 1 counted once.
    let episodes = a
        .session
        .query_unpaged(format!("SELECT steps, episode_return FROM {}.episodes_by_user", a.keyspace), &[])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("{e}"));
    for row in episodes.rows::<(i32, f64)>().unwrap_or_else(|e| panic!("{e}")) {
        assert_eq!(row.unwrap_or_else(|e| panic!("{e}")), (20, 6.0));
    }
    a.drop_all().await;
}

// ---------------------------------------------------------------------------- rejected messages

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_land_in_rejected_with_reason_and_position_and_the_run_goes_on() {
    let a = Archive::new("archrej").await;
    let good = produce_episodes(&a.topics, "rej", 3, 4).await;
    let p = producer();
    let mut bad_action = examples::action();
    bad_action.ps = 2.0;
    // The ids the registry gave the two subjects (registered by `produce_episodes`).
    let (sc, ac) = a.topics.codecs::<StateMsg>().await.unwrap_or_else(|e| panic!("{e:#}"));
    let (state_id, action_id) = (sc.schema_id(), ac.schema_id());
    let action = serde_json::to_vec(&examples::action()).unwrap_or_default();
    let unknown_id = 2_000_000_000;
    let bad = [
        (a.topics.state.clone(), Some(b"this is not json".to_vec()), "wire format".to_string()),
        (a.topics.state.clone(), Some(wire::frame(state_id, b"{oops")), "invalid json".into()),
        (
            a.topics.action.clone(),
            Some(wire::frame(action_id, &serde_json::to_vec(&bad_action).unwrap_or_default())),
            "/ps".into(),
        ),
        (a.topics.action.clone(), None, "null value".into()),
        (a.topics.state.clone(), Some(wire::frame(unknown_id, &action)), format!("unknown schema id {unknown_id}")),
        // A valid action on the state topic, framed with the action subject's id.
        (
            a.topics.state.clone(),
            Some(wire::frame(action_id, &action)),
            format!("schema id {action_id} belongs to subject"),
        ),
    ];
    let mut expected = Vec::new();
    for (topic, payload, why) in &bad {
        let (partition, offset) = send(&p, topic, Some("ep-bad"), payload.clone(), None).await;
        expected.push((topic.clone(), partition, offset, why.clone()));
    }
    let headers = OwnedHeaders::new()
        .insert(Header { key: dlq::REASON, value: Some("bad wire format: unknown magic byte") })
        .insert(Header { key: dlq::SOURCE_TOPIC, value: Some(a.topics.action.as_str()) })
        .insert(Header { key: dlq::SOURCE_PARTITION, value: Some("4") })
        .insert(Header { key: dlq::SOURCE_OFFSET, value: Some("17") });
    send(&p, &a.topics.dead_letter, Some("ep-junk"), Some(b"junk".to_vec()), Some(headers)).await;

    let (out, summary) = a.run_once(&["--ttl", "30days"]).await;
    assert!(out.status.success(), "rejections do not fail the run: {}", text(&out));
    assert_eq!(n(&summary["rejected"]), 6, "{summary}");
    assert_eq!(n(&summary["rows"]["rejected"]), 6, "{summary}");
    assert_eq!(n(&summary["rows"]["dead_letters"]), 1, "{summary}");
    assert_eq!(n(&summary["messages"][&a.topics.state]), good.states + 4, "{summary}");
    assert_eq!(a.counts().await, [good.messages(), good.states, good.actions, good.episodes]);

    let rows = a
        .session
        .query_unpaged(
            format!("SELECT kafka_topic, kafka_partition, kafka_offset, reason FROM {}.rejected", a.keyspace),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut got: Vec<(String, i32, i64, String)> =
        rows.rows().unwrap_or_else(|e| panic!("{e}")).map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect();
    got.sort();
    expected.sort();
    assert_eq!(got.len(), 6, "{got:?}");
    for ((t, p, o, reason), (et, ep, eo, why)) in got.iter().zip(&expected) {
        assert_eq!((t, p, o), (et, ep, eo), "topic, partition and offset of the message");
        assert!(reason.contains(why.as_str()), "reason '{reason}' should mention '{why}'");
    }

    let dead = a
        .session
        .query_unpaged(
            format!("SELECT reason, source_topic, source_partition, source_offset FROM {}.dead_letters", a.keyspace),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_rows_result()
        .unwrap_or_else(|e| panic!("{e}"));
    let dead: Vec<(String, String, i32, i64)> =
        dead.rows().unwrap_or_else(|e| panic!("{e}")).map(|r| r.unwrap_or_else(|e| panic!("{e}"))).collect();
    assert_eq!(dead, vec![("bad wire format: unknown magic byte".into(), a.topics.action.clone(), 4, 17)]);

    // --ttl: every archived row expires, none sooner than asked.
    for (table, column) in [("steps", "env_id"), ("rejected", "reason"), ("episodes_by_user", "env_id")] {
        let ttl = a
            .session
            .query_unpaged(format!("SELECT TTL({column}) FROM {}.{table} LIMIT 1", a.keyspace), &[])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .into_rows_result()
            .unwrap_or_else(|e| panic!("{e}"))
            .first_row::<(Option<i32>,)>()
            .unwrap_or_else(|e| panic!("{table}: {e}"))
            .0;
        assert!(ttl.is_some_and(|t| t > 30 * 86_400 - 600 && t <= 30 * 86_400), "{table}: TTL {ttl:?}");
    }
    a.drop_all().await;
}

// ---------------------------------------------------------------------------- daily

/// Starts `archiver daily` at a time 15 s away, writing its summary to `json`; returns it with
/// that time (`HH:MM:SS`, and in seconds since the epoch). A daily that starts too late for that
/// time says in its log that it waits for tomorrow: it is stopped and started again with a later
/// time, so the test never depends on how fast a process starts.
async fn start_daily(a: &Archive, json: &Path) -> (tokio::process::Child, String, i64) {
    for _ in 0..5 {
        let now_s = common::kafka::now_ms() / 1000;
        // Never second 0: HH:MM:00 would print as HH:MM.
        let at_s = if (now_s + 15) % 60 == 0 { now_s + 16 } else { now_s + 15 };
        let at = format!("{:02}:{:02}:{:02}", at_s / 3600 % 24, at_s / 60 % 60, at_s % 60);
        let mut args = vec!["daily".to_string(), "--log-format".into(), "json".into(), "--at".into(), at.clone()];
        args.extend(a.flags());
        args.extend(["--summary-json".into(), json.display().to_string()]);
        let mut child = archiver_command()
            .args(&args)
            .env("RUST_LOG", "info,scylla=off")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        let mut lines = BufReader::new(child.stderr.take().unwrap_or_else(|| panic!("no stderr"))).lines();
        let mut log = Vec::new();
        let wait_s = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("daily logged no wait within 60 s: {log:?}"))
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("daily exited before waiting for its run: {log:?}"));
            let event: Value = serde_json::from_str(&line).unwrap_or_default();
            log.push(line);
            if event["message"] == "waiting for the daily run" {
                break event["in_s"].as_i64().unwrap_or_else(|| panic!("no in_s in {event}"));
            }
        };
        // Drain the rest of the log, so that daily never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        if wait_s <= 120 {
            return (child, at, at_s);
        }
        child.kill().await.unwrap_or_else(|e| panic!("{e}"));
    }
    panic!("daily never started in time for a run within the next two minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_runs_at_its_time_and_stops_on_sigterm() {
    let a = Archive::new("archdaily").await;
    let p = produce_episodes(&a.topics, "daily", 10, 5).await;
    let json = a.dir.path().join("daily.json");
    let (mut child, at, at_s) = start_daily(&a, &json).await;
    // The summary is written atomically (a temporary file renamed into place): once it exists,
    // it is whole.
    wait_for_async(&format!("the daily run at {at} UTC"), Duration::from_secs(150), || {
        assert!(child.try_wait().ok().flatten().is_none(), "daily exited before its run");
        let exists = json.exists();
        async move { exists.then_some(()) }
    })
    .await;
    assert!(common::kafka::now_ms() / 1000 >= at_s, "the run started at {at}, not before");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default()).unwrap_or_default();
    assert_eq!(summary["outcome"], "ok", "{summary}");
    assert_eq!(a.counts().await, [p.messages(), p.states, p.actions, p.episodes]);
    assert!(child.try_wait().ok().flatten().is_none(), "daily keeps running after its run");

    let pid = child.id().unwrap_or_else(|| panic!("no pid"));
    let term = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    assert!(term.is_ok_and(|s| s.success()));
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("daily did not stop within 20 s of SIGTERM"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
    a.drop_all().await;
}
