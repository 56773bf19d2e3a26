//! `streamrec-sim prom-report`: a PNG of a run's key curves drawn from Prometheus range queries
//! (steps per second, step round trip, reward rate, model version per replica), for people
//! without Grafana. `make sim` draws it after a run through the stack.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use serde_json::Value;

use crate::plot::{self, Panel};

/// Where the curves come from and where the picture goes.
#[derive(Debug, Clone, clap::Args)]
pub struct PromReportArgs {
    /// Prometheus base URL.
    #[arg(long, env = "PROMETHEUS_URL", default_value = "http://127.0.0.1:9090")]
    pub prometheus_url: String,
    /// Start of the window, Unix seconds (default: `--last` before now).
    #[arg(long)]
    pub start: Option<f64>,
    /// Length of the window ending now, when `--start` is not given (e.g. 10m).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub last: Duration,
    /// PNG to write.
    #[arg(long, default_value = "target/sim/prometheus.png")]
    pub out: PathBuf,
}

/// One panel: title, unit shown on the axis, and (query, label naming each line) pairs.
type PanelSpec = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

/// The panels of the picture.
const PANELS: [PanelSpec; 4] = [
    ("Steps per second", "steps/s", &[("sum by (policy) (rate(streamrec_env_steps_total[{w}]))", "policy")]),
    (
        "Step round trip (state published to action accepted)",
        "ms",
        &[
            ("1000 * histogram_quantile(0.5, sum by (le) (rate(streamrec_env_step_round_trip_seconds_bucket[{w}])))", "p50"),
            ("1000 * histogram_quantile(0.99, sum by (le) (rate(streamrec_env_step_round_trip_seconds_bucket[{w}])))", "p99"),
        ],
    ),
    ("Reward rate over the last 2,000 steps", "reward/step", &[("max by (policy) (streamrec_env_reward_rate_recent)", "policy")]),
    (
        "Model version served per replica",
        "version",
        &[("max by (replica) (streamrec_agent_model_version)", "replica")],
    ),
];

/// Queries every panel over the window and draws them; fails when Prometheus cannot be reached
/// or holds no data of a run in that window.
pub async fn run(args: &PromReportArgs) -> anyhow::Result<()> {
    let end = common::metrics::unix_seconds();
    let start = args.start.unwrap_or(end - args.last.as_secs_f64());
    let step = ((end - start) / 300.0).max(1.0);
    // Rates over a few scrapes (2 s apart) or steps, whichever is longer: a short run still
    // shows its shape, a long one is smoothed.
    let window = format!("{}s", (4.0 * step).max(8.0).round());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut panels = Vec::new();
    for (title, unit, queries) in PANELS {
        let mut series = Vec::new();
        for (query, label) in queries {
            let query = query.replace("{w}", &window);
            for (name, points) in range(&client, &args.prometheus_url, &query, start, end, step).await? {
                let legend = name.get(*label).cloned().unwrap_or_else(|| (*label).to_string());
                series.push((legend, points.into_iter().map(|(t, v)| (t - start, v)).collect()));
            }
        }
        panels.push(Panel { title: title.to_string(), unit: unit.to_string(), series });
    }
    anyhow::ensure!(
        panels.iter().any(|p| !p.series.is_empty()),
        "Prometheus at {} holds no streamrec series between {start:.0} and {end:.0}: were the services scraped \
         (make stack-up starts Prometheus; make sim lists its processes as targets)?",
        args.prometheus_url
    );
    plot::panels(&args.out, "The run as Prometheus saw it (seconds since the window's start)", &panels)?;
    println!("Prometheus curves written to {}", args.out.display());
    Ok(())
}

/// A labelled series: its labels and its (Unix seconds, value) points, NaN left out.
type Series = (std::collections::BTreeMap<String, String>, Vec<(f64, f64)>);

async fn range(
    client: &reqwest::Client,
    base: &str,
    query: &str,
    start: f64,
    end: f64,
    step: f64,
) -> anyhow::Result<Vec<Series>> {
    let url = format!("{base}/api/v1/query_range");
    let params = [
        ("query", query.to_string()),
        ("start", format!("{start:.3}")),
        ("end", format!("{end:.3}")),
        ("step", format!("{step:.3}")),
    ];
    let body: Value = client
        .get(&url)
        .query(&params)
        .send()
        .await
        .with_context(|| format!("Prometheus at {base} cannot be reached"))?
        .json()
        .await
        .with_context(|| format!("{url}: not a Prometheus answer"))?;
    anyhow::ensure!(body["status"] == "success", "{url} refused {query}: {}", body["error"]);
    let mut out = Vec::new();
    for s in body["data"]["result"].as_array().into_iter().flatten() {
        let labels = s["metric"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let points: Vec<(f64, f64)> = s["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p[0].as_f64()?, p[1].as_str()?.parse::<f64>().ok()?)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        if !points.is_empty() {
            out.push((labels, points));
        }
    }
    Ok(out)
}
