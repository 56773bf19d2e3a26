//! The dashboards proven against real data: a short run through the stack (env-svc, a learner,
//! two DQN replicas, the daily archiver), every process serving `--metrics-addr` and listed in
//! the stack Prometheus's file-discovered targets; then every PromQL expression of every panel
//! of `deploy/grafana/dashboards/*.json` is evaluated through Prometheus's HTTP API, and the
//! test fails on one that is invalid or returns no series. Also: `/healthz` answers at once,
//! `/readyz` only once a process has what it needs. Needs the stack (`make stack-up`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use serde_json::Value;
use streamrec_tests::{
    agent_bin, archiver_bin, bootstrap, cassandra_node, clean_command, create_weights_topic, free_port,
    prometheus_targets_dir, prometheus_url, registry_url, repo_root, unique, wait_for, workspace_bin, TestTopics,
};

/// Every panel's queries: (dashboard file, panel title, expression).
fn dashboard_queries() -> Vec<(String, String, String)> {
    let dir = repo_root().join("deploy/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "the step loop, learning and archive dashboards: {files:?}");
    let mut out = Vec::new();
    for file in files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let d: Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap_or_default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(d["panels"][0]["datasource"]["uid"], "prometheus", "{name}: panels use the provisioned source");
        for panel in d["panels"].as_array().unwrap_or_else(|| panic!("{name}: no panels")) {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{name}/{title}: no targets"));
            assert!(!targets.is_empty(), "{name}/{title}: no query");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{name}/{title}: a target without expr"));
                out.push((name.clone(), title.clone(), expr.to_string()));
            }
        }
    }
    out
}

/// An instant query: `Ok(series)` or the API's error (an invalid expression).
async fn query(client: &reqwest::Client, expr: &str) -> Result<usize, String> {
    let url = format!("{}/api/v1/query", prometheus_url());
    let answer = client.get(&url).query(&[("query", expr)]).send().await.map_err(|e| format!("{url}: {e}"))?;
    let body: Value = answer.json().await.map_err(|e| format!("{url}: {e}"))?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"].as_array().map_or(0, Vec::len))
}

/// The children of the run, SIGTERMed (then killed) when dropped; their targets file removed.
struct Run {
    children: Vec<(String, Child)>,
    targets_file: PathBuf,
    logs: PathBuf,
    addrs: BTreeMap<String, String>,
}

impl Run {
    /// What each process is doing (running, or its exit status) and the end of its log: the
    /// failure message of a check, so that a failure in CI names its cause.
    fn report(&mut self) -> String {
        let mut out = String::new();
        for (name, child) in &mut self.children {
            let state = match child.try_wait() {
                Ok(Some(status)) => format!("exited: {status}"),
                Ok(None) => "running".to_string(),
                Err(e) => format!("unknown: {e}"),
            };
            let log = std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
            // The project's metric names its endpoint serves now.
            let page = self.addrs.get(name.as_str()).and_then(|a| http_get(a, "/metrics")).map(|(_, body)| body);
            let mut names: Vec<&str> = page
                .as_deref()
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("streamrec_"))
                .filter_map(|l| l.split(['{', ' ']).next())
                .collect();
            names.dedup();
            out.push_str(&format!(
                "\n--- {name} ({state}); serves {} metric names: {}\n    last lines of its log:\n    {tail}",
                names.len(),
                names.join(" ")
            ));
        }
        out
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = streamrec_tests::send_signal(child.id(), "TERM");
        }
        for (_, child) in &mut self.children {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.targets_file);
    }
}

fn spawn(name: &str, mut cmd: std::process::Command, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap_or_else(|e| panic!("{e}"));
    cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
    cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// `GET path` on a plain HTTP/1.0 endpoint: (status, body), or none when nothing answers.
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_from_a_real_run() {
    let queries = dashboard_queries();
    let started = std::time::Instant::now();
    let phase = |what: &str| println!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_else(|e| panic!("{e}"));
    let up = query(&client, "up").await;
    assert!(up.is_ok(), "no Prometheus at {} (make stack-up starts it): {up:?}", prometheus_url());

    let topics = TestTopics::create("dash").await.unwrap_or_else(|e| panic!("{e}"));
    let weights = create_weights_topic().await.unwrap_or_else(|e| panic!("{e}"));
    let keyspace = unique("dash");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let init = clean_command(archiver_bin())
        .args(["init", "--keyspace", &keyspace, "--cassandra-nodes", &cassandra_node()])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(init.status.success(), "archiver init: {}", String::from_utf8_lossy(&init.stderr));

    let stack = |cmd: &mut std::process::Command| {
        cmd.args(["--bootstrap-servers", &bootstrap(), "--schema-registry-url", &registry_url()]).args(topics.flags());
    };
    let net = ["--dqn-net", "mlp", "--dqn-hidden", "64", "--dqn-learning-starts", "100"];
    let mut run = Run {
        children: Vec::new(),
        targets_file: prometheus_targets_dir().join(format!("{keyspace}.json")),
        logs: dir.path().to_path_buf(),
        addrs: BTreeMap::new(),
    };
    let mut start = |name: &str, mut cmd: std::process::Command| {
        // Distinct ports: two processes on one address would answer for each other.
        let mut addr = format!("127.0.0.1:{}", free_port());
        while run.addrs.values().any(|a| *a == addr) {
            addr = format!("127.0.0.1:{}", free_port());
        }
        cmd.args(["--metrics-addr", &addr]);
        run.children.push((name.to_string(), spawn(name, cmd, dir.path())));
        run.addrs.insert(name.to_string(), addr);
    };
    let mut learner = clean_command(agent_bin());
    learner.args(["learn", "--publish-every", "1s", "--learner-offset-reset", "earliest"]).args(net);
    // Its lag counts from its committed offsets: commit early.
    learner.args(["--learner-checkpoint-every", "5s"]);
    learner.args(["--learner-group-id", &unique("learner"), "--weights-topic", &weights]);
    learner.arg("--checkpoint-dir").arg(dir.path().join("learner"));
    stack(&mut learner);
    start("learner", learner);
    let group = unique("agents");
    for replica in ["r0", "r1"] {
        let mut cmd = clean_command(agent_bin());
        cmd.args(["run", "--policy", "dqn", "--learning", "shared", "--replica-id", replica]).args(net);
        cmd.args(["--group-id", &group, "--offset-reset", "earliest", "--weights-topic", &weights]);
        stack(&mut cmd);
        start(replica, cmd);
    }
    // More episodes than the check needs: the env keeps stepping until the test stops it.
    let mut env = clean_command(workspace_bin("env-svc", "env-svc"));
    env.args(["run", "--dataset"]).arg(repo_root().join("data/sample"));
    env.args(["--episodes", "1000000", "--concurrency", "64", "--quiet"]);
    stack(&mut env);
    start("env", env);
    let mut archiver = clean_command(archiver_bin());
    archiver.args(["daily", "--run-at-start", "--keyspace", &keyspace, "--group-id", &unique("archiver")]);
    archiver.args(["--no-progress", "--cassandra-nodes", &cassandra_node()]);
    stack(&mut archiver);
    start("archiver", archiver);

    let addrs = run.addrs.clone();
    phase("processes started");
    // Liveness at once; readiness only with Kafka, the registry and (replicas) a model.
    let env_addr = addrs["env"].clone();
    let health = tokio::task::block_in_place(|| {
        wait_for("env-svc to answer /healthz", Duration::from_secs(60), || http_get(&env_addr, "/healthz"))
    });
    assert_eq!(health.0, 200, "{health:?}");
    let ready_by = std::time::Instant::now() + Duration::from_secs(180);
    for (name, addr) in &addrs {
        while http_get(addr, "/readyz").is_none_or(|(code, _)| code != 200) {
            assert!(std::time::Instant::now() < ready_by, "{name} not ready within 180 s at {addr}{}", run.report());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let report = run.report();
    assert!(!report.contains("exited"), "a process of the run stopped:{report}");
    phase("every process ready");
    // Prometheus discovers the processes from the targets file.
    std::fs::create_dir_all(prometheus_targets_dir()).unwrap_or_else(|e| panic!("{e}"));
    let targets: Vec<Value> = addrs
        .iter()
        .map(|(name, addr)| serde_json::json!({"targets": [addr], "labels": {"process": name, "test": keyspace}}))
        .collect();
    std::fs::write(&run.targets_file, serde_json::to_vec(&targets).unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: {e}", run.targets_file.display()));
    let scraped = format!("up{{job=\"streamrec\", test=\"{keyspace}\"}} == 1");
    wait_for_async_query(&client, &scraped, |n| n == addrs.len(), Duration::from_secs(60)).await;

    phase("every process scraped");
    // Every panel's expression: valid, and with at least one series while the run goes on.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut missing: Vec<String>;
    loop {
        missing = Vec::new();
        for (file, title, expr) in &queries {
            match query(&client, expr).await {
                Ok(0) => missing.push(format!("{file} / {title}: no series for {expr}")),
                Ok(_) => {}
                Err(e) => panic!("{file} / {title}: invalid expression {expr}: {e}"),
            }
        }
        if missing.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        phase(&format!("{} expressions without series yet, e.g. {}", missing.len(), missing[0]));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert!(missing.is_empty(), "panels without data after 240 s of a run:\n{}{}", missing.join("\n"), run.report());
    println!("{} expressions of {} panels answered with series", queries.len(), {
        let mut panels: Vec<_> = queries.iter().map(|(f, t, _)| (f, t)).collect();
        panels.dedup();
        panels.len()
    });
    drop(run);
    topics.delete().await;
}

/// Polls instant query `expr` until its series count satisfies `ok`.
async fn wait_for_async_query(client: &reqwest::Client, expr: &str, ok: impl Fn(usize) -> bool, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let n = query(client, expr).await;
        if n.as_ref().is_ok_and(|&n| ok(n)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {expr}: {n:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
