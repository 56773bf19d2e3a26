//! Prometheus metrics and health endpoints of a long-running service: `--metrics-addr`
//! (`METRICS_ADDR`) serves `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (connected to what the service needs: Kafka, the registry, and for
//! an agent a model to serve).
//!
//! The recording goes through the `metrics` facade and `metrics-exporter-prometheus` renders it
//! (well kept, no global state of ours to get wrong); `axum` serves the three paths. Without
//! `--metrics-addr` no recorder is installed: every `metrics::counter!` is a no-op and the
//! services skip the work of building labels ([`enabled`]).
//!
//! Naming: `streamrec_<service>_<what>_<unit>`, counters end in `_total`, base units (seconds,
//! bytes); labels have bounded values (env id and policy of a run, replica, topic, partition,
//! table, reason), never an episode or user id. Every series carries `service`.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
};

use anyhow::Context;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Where a service serves its metrics; flattened into each long-running command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics, with /healthz and /readyz (for example
    /// 127.0.0.1:9401; port 0 picks a free one, logged). Off when not given.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Histogram buckets, by metric-name suffix.
const SECONDS_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
const RETURN_BUCKETS: [f64; 10] = [0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0];
const SIZE_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// How often the recorder's histogram samples are drained into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Whether the upkeep task runs.
static UPKEEP: AtomicBool = AtomicBool::new(false);

/// The process's recorder, installed once (tests run several services in one process).
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether a recorder is installed: callers skip building labels and values when not.
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// What `/readyz` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// Connected to the brokers (partitions assigned or positioned).
    Kafka,
    /// The schemas fetched or registered.
    Registry,
    /// A model to answer with (agents only).
    Model,
}

/// The dependencies a process has, marked as it gets them; one per process, like the recorder.
#[derive(Debug)]
pub struct Readiness {
    kafka: AtomicBool,
    registry: AtomicBool,
    model: AtomicBool,
}

impl Readiness {
    /// Nothing ready yet; `needs_model`: an agent, ready only once it can answer.
    pub fn new(needs_model: bool) -> Self {
        Self { kafka: AtomicBool::new(false), registry: AtomicBool::new(false), model: AtomicBool::new(!needs_model) }
    }

    /// Marks `dep` as had.
    pub fn mark(&self, dep: Dependency) {
        let flag = match dep {
            Dependency::Kafka => &self.kafka,
            Dependency::Registry => &self.registry,
            Dependency::Model => &self.model,
        };
        flag.store(true, Ordering::Relaxed);
    }

    /// What is still missing, empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        [("kafka", &self.kafka), ("registry", &self.registry), ("model", &self.model)]
            .into_iter()
            .filter(|(_, flag)| !flag.load(Ordering::Relaxed))
            .map(|(name, _)| name)
            .collect()
    }
}

static READINESS: OnceLock<Readiness> = OnceLock::new();

/// Marks `dep` as had for `/readyz` (nothing when metrics are off).
pub fn ready(dep: Dependency) {
    if let Some(r) = READINESS.get() {
        r.mark(dep);
    }
}

/// Installs the recorder (once per process, `service` as a label on every series) and serves
/// the endpoints on `args.metrics_addr` while the process runs; `None` when metrics are off. Fails
/// when the address cannot be bound (a port in use is named, never ignored). `needs_model`:
/// `/readyz` also waits for [`Dependency::Model`].
pub async fn serve(args: &MetricsArgs, service: &'static str, needs_model: bool) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = args.metrics_addr else { return Ok(None) };
    let handle = install(service)?;
    let _ = READINESS.set(Readiness::new(needs_model));
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot serve metrics on --metrics-addr {addr}"))?;
    listener.set_nonblocking(true).context("metrics listener")?;
    let bound = listener.local_addr().context("metrics listener address")?;
    let upkeep = !UPKEEP.swap(true, Ordering::Relaxed);
    // On a thread of its own with its own runtime: a service whose runtime is busy (a learner
    // training, blocking calls under load) still answers a scrape within Prometheus's timeout.
    // Up as long as the process: a stopping service is scraped once more (see `await_next_scrape`).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("metrics runtime")?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                if upkeep {
                    // The recorder keeps histogram samples until they are drained: every 5 s,
                    // so that a process nobody scrapes does not grow.
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let mut every = tokio::time::interval(UPKEEP_EVERY);
                        loop {
                            every.tick().await;
                            handle.run_upkeep();
                        }
                    });
                }
                let app = Router::new()
                    .route("/metrics", get(render))
                    .route("/healthz", get(|| async { "ok\n" }))
                    .route("/readyz", get(readyz))
                    .with_state(handle);
                let served = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => axum::serve(listener, app).await,
                    Err(e) => Err(e),
                };
                // Asked for and gone: the process stops rather than run on unobserved.
                let why = served.err().map_or_else(|| "it returned".to_string(), |e| e.to_string());
                tracing::error!(error = %why, "the metrics endpoint stopped; exiting");
                std::process::exit(2);
            });
        })
        .context("cannot start the metrics thread")?;
    tracing::info!(service, url = %format!("http://{bound}/metrics"), "metrics served");
    Ok(Some(bound))
}

/// The process's recorder: installed on the first call, shared afterwards.
fn install(service: &'static str) -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .add_global_label("service", service)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_return".into()), &RETURN_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &SIZE_BUCKETS))
        .context("metrics buckets")?
        .build_recorder();
    let handle = recorder.handle();
    // Another recorder already installed (a test running a second service in this process):
    // that one keeps recording, and this process serves it.
    if metrics::set_global_recorder(recorder).is_ok() {
        let _ = HANDLE.set(handle);
    }
    HANDLE.get().cloned().context("a metrics recorder of another kind is installed in this process")
}

/// Scrapes answered so far (`/metrics` requests).
static SCRAPES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn render(State(handle): State<PrometheusHandle>) -> String {
    let text = handle.render();
    SCRAPES.fetch_add(1, Ordering::Relaxed);
    text
}

/// For a process about to exit (a run that ends): waits until `/metrics` is scraped once more,
/// so that its last figures reach Prometheus, at most `within` (nobody may be scraping).
/// Returns at once when metrics are off.
pub async fn await_next_scrape(within: std::time::Duration) {
    if !enabled() {
        return;
    }
    let before = SCRAPES.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + within;
    while SCRAPES.load(Ordering::Relaxed) == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if SCRAPES.load(Ordering::Relaxed) == before {
        tracing::info!(
            waited_s = within.as_secs_f64(),
            "no scrape of /metrics since the run ended; exiting without one"
        );
    }
}

async fn readyz() -> (StatusCode, String) {
    let missing = READINESS.get().map(Readiness::missing).unwrap_or_default();
    if missing.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for {}\n", missing.join(", ")))
    }
}

/// librdkafka's statistics every this often when metrics are on (for the consumer lag).
pub const KAFKA_STATISTICS_INTERVAL_MS: &str = "5000";

/// Asks a client config for librdkafka's statistics when metrics are on (they feed
/// [`record_consumer_lag`] through the client context's `stats`).
pub fn enable_kafka_statistics(cfg: &mut rdkafka::ClientConfig) {
    if enabled() {
        cfg.set("statistics.interval.ms", KAFKA_STATISTICS_INTERVAL_MS);
    }
}

/// Sets gauge `name{topic, partition}` to the consumer lag librdkafka reports for each
/// partition it fetches (the others report -1 and are left alone).
pub fn record_consumer_lag(statistics: &rdkafka::Statistics, name: &'static str) {
    for (topic, t) in &statistics.topics {
        for (partition, p) in &t.partitions {
            if *partition >= 0 && p.consumer_lag >= 0 {
                let labels = [("topic", topic.clone()), ("partition", partition.to_string())];
                metrics::gauge!(name, &labels).set(p.consumer_lag as f64);
            }
        }
    }
}

/// Zeroes gauge `name` for partitions this process no longer owns (revoked: their lag is
/// another member's now).
pub fn clear_consumer_lag(tpl: &rdkafka::TopicPartitionList, name: &'static str) {
    if !enabled() {
        return;
    }
    for e in tpl.elements() {
        let labels = [("topic", e.topic().to_string()), ("partition", e.partition().to_string())];
        metrics::gauge!(name, &labels).set(0.0);
    }
}

/// Seconds since the Unix epoch, for `_timestamp_seconds` gauges.
pub fn unix_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing_until_everything_is_there() {
        let agent = Readiness::new(true);
        assert_eq!(agent.missing(), ["kafka", "registry", "model"]);
        agent.mark(Dependency::Kafka);
        agent.mark(Dependency::Registry);
        assert_eq!(agent.missing(), ["model"]);
        agent.mark(Dependency::Model);
        assert!(agent.missing().is_empty());
        let env = Readiness::new(false);
        env.mark(Dependency::Kafka);
        assert_eq!(env.missing(), ["registry"]);
    }
}
