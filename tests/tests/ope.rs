//! Off-policy evaluation end to end on RecoGym, against ground truth: 100 users logged through
//! Kafka by the uniform random policy, archived in Cassandra (`archiver::run_once --env
//! recogym`, a fresh keyspace), the CTR of organic-count (trained on the archived log) estimated
//! from the archive (`agent-svc ope`), then organic-count A/B-tested on 100 fresh users through
//! Kafka (`streamrec-sim ope-recogym`, small).
//!
//! Checked: no logged decision is lost between the topics and the estimate (every impression
//! becomes a decision, none mismatched); the support figures are those of a greedy target under
//! uniform logging over 10 products (a tenth of the rows match, weight 10); no warning; SNIPS and
//! DR intervals cover the A/B CTR; DR's interval is narrower than twice the A/B CTR (an interval
//! that says nothing would pass coverage); the JSON, PNG and OBP export are written. At 100
//! users the A/B CTR is itself uncertain (about ±17%) and the estimators' intervals about ±50%,
//! so coverage, not a relative error, is what is sound at this size (`make ope` runs the full
//! size with the 10% DR goal).

use std::path::Path;

use streamrec_tests::{archiver_bin, cassandra_node, clean_command, parse_flags, unique, TestTopics};

#[derive(Debug, clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: sim::opecheck::OpeCheckArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ope_on_the_archive_covers_the_ab_ctr_of_organic_count() {
    let started = std::time::Instant::now();
    let topics = TestTopics::create("ope").await.unwrap_or_else(|e| panic!("{e}"));
    let keyspace = unique("ope");
    let mut init = clean_command(archiver_bin());
    init.args(["init", "--keyspace", &keyspace, "--cassandra-nodes", &cassandra_node()]);
    let out = init.output().unwrap_or_else(|e| panic!("archiver init: {e}"));
    assert!(out.status.success(), "archiver init: {}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let group = unique("ope_archiver");
    let mut flags: Vec<String> = [
        "sim",
        "--recogym-products",
        "10",
        "--recogym-seed",
        "42",
        "--train-users",
        "100",
        "--recogym-users",
        "100",
        "--loggings",
        "random",
        "--policies",
        "organic-count",
        "--bootstrap",
        "500",
        "--keyspace",
        &keyspace,
        "--cassandra-nodes",
        &cassandra_node(),
        "--archiver-group",
        &group,
    ]
    .map(String::from)
    .to_vec();
    flags.extend(topics.flags());
    flags.extend(["--ope-out".to_string(), dir.path().display().to_string()]);
    let cli: Cli = parse_flags(&flags);
    let out = sim::opecheck::run(cli.args).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(out.len(), 1);
    let c = &out[0];
    let r = &c.report;
    let t = &r.tuples;
    eprintln!("{}", serde_json::to_string_pretty(&c.estimators).unwrap_or_default());
    eprintln!("truth {} {:?}; support {:?}", c.truth, c.ab, r.evaluation.support);

    // Nothing lost: every impression of the logging run is a decision, all evaluated.
    assert_eq!(t.episodes, 100);
    assert_eq!((t.no_next_state, t.action_mismatch), (0, 0), "{t:?}");
    assert!(t.decisions > 5_000 && t.evaluated == t.decisions, "{t:?}");
    assert_eq!(r.logging.get("random").copied(), Some(t.decisions), "{:?}", r.logging);
    assert_eq!(r.evaluation.rows, t.decisions);

    // A greedy target under uniform logging over 10 products.
    let s = &r.evaluation.support;
    assert!((s.max_weight - 10.0).abs() < 1e-9, "{s:?}");
    assert!(s.ess_fraction > 0.07 && s.ess_fraction < 0.13, "{s:?}");
    assert!((s.mean_weight - 1.0).abs() < 0.15, "{s:?}");
    assert!(s.mass_never_logged == 0.0 && s.heavy_rows == 0, "{s:?}");
    assert!(r.evaluation.warnings.is_empty(), "{:?}", r.evaluation.warnings);

    // Against the truth.
    for name in ["snips", "dr"] {
        let e = &c.estimators[name];
        assert_eq!(e["covers"].as_bool(), Some(true), "{name} {e} misses the A/B CTR {}", c.truth);
    }
    let dr = &c.estimators["dr"];
    assert!(dr["width"].as_f64().unwrap_or(f64::INFINITY) < 2.0 * c.truth, "DR's interval says nothing: {dr}");
    assert!(c.truth > 0.01 && c.truth < 0.035, "A/B CTR {} is outside what reco-gym-v1 can give", c.truth);

    for file in ["ope-recogym.json", "random.organic-count.png", "random.organic-count.export.json"] {
        let path = dir.path().join(file);
        assert!(Path::new(&path).metadata().map(|m| m.len() > 100).unwrap_or(false), "{} not written", path.display());
    }
    topics.delete().await;
    eprintln!("ope test: {:.0} s", started.elapsed().as_secs_f64());
}
