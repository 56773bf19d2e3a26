//! `archiver daily`: sleep until the next `HH:MM` UTC, run once, repeat, until SIGTERM. With
//! `--metrics-addr` it serves its figures: rows written per table, runs per outcome, the last
//! success and the last run's duration, and (probed every [`BEHIND_EVERY`] while it waits) the
//! messages each topic holds past its committed offsets.
//!
//! Invariant: a failed run is logged and the schedule goes on (the next day's run copies what
//! this one could not); only a signal ends the loop, and a run in progress is allowed to finish
//! its current batch first.

use std::time::Duration;

use common::kafka::now_ms;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{DailyArgs, RunArgs},
    dates::format_ts,
    metrics::{Outcome, Summary},
    run::{messages_behind, run_once},
};

/// How often the messages behind are probed between runs.
pub const BEHIND_EVERY: Duration = Duration::from_secs(30);

/// Runs the schedule until `shutdown` is cancelled.
pub async fn run_daily(args: &DailyArgs, shutdown: &CancellationToken) {
    restore_last_success(&args.run).await;
    let mut run_now = args.run_at_start;
    loop {
        if !run_now {
            let next = args.at.next_after(now_ms());
            let wait = Duration::from_millis(u64::try_from(next - now_ms()).unwrap_or(0));
            tracing::info!(next_run = %format_ts(next), in_s = wait.as_secs(), at = %args.at, "waiting for the daily run");
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            let mut probe = tokio::time::interval(BEHIND_EVERY);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    () = shutdown.cancelled() => return,
                    _ = probe.tick(), if common::metrics::enabled() => export_behind(&args.run).await,
                }
            }
        }
        run_now = false;
        export_behind(&args.run).await;
        let summary = run_once(&args.run, shutdown).await;
        export_run(&summary);
        export_behind(&args.run).await;
        match summary.outcome {
            Outcome::Ok => tracing::info!(run_id = %summary.run_id, messages = summary.total_messages(),
                rows = summary.total_rows(), seconds = summary.duration_s, "daily run done"),
            Outcome::Interrupted => {
                tracing::info!(run_id = %summary.run_id, "daily run interrupted by a signal");
                return;
            }
            Outcome::Failed | Outcome::Running => tracing::error!(run_id = %summary.run_id,
                error = summary.error.as_deref().unwrap_or("unknown"), "daily run failed; the next one retries"),
        }
        println!("{summary}");
        if let Some(path) = &args.run.summary_json {
            if let Err(e) = crate::write_summary_json(&summary, path) {
                tracing::warn!(error = %e, "cannot write the summary");
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

/// Sets `streamrec_archiver_messages_behind{topic}`; a probe that fails is logged and the
/// gauge keeps its last value (the next run reports the failure itself).
async fn export_behind(args: &RunArgs) {
    if !common::metrics::enabled() {
        return;
    }
    match messages_behind(args).await {
        Ok(behind) => {
            for (topic, n) in behind {
                metrics::gauge!("streamrec_archiver_messages_behind", "topic" => topic).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot probe the messages behind the archive"),
    }
}

/// Adds a finished run to the Prometheus figures.
fn export_run(summary: &Summary) {
    if !common::metrics::enabled() {
        return;
    }
    for (table, &rows) in &summary.rows {
        metrics::counter!("streamrec_archiver_rows_written_total", "table" => table.clone()).increment(rows);
    }
    for (topic, &n) in &summary.messages {
        metrics::counter!("streamrec_archiver_messages_copied_total", "topic" => topic.clone()).increment(n);
    }
    metrics::counter!("streamrec_archiver_runs_total", "outcome" => summary.outcome.as_str()).increment(1);
    metrics::gauge!("streamrec_archiver_last_run_duration_seconds").set(summary.duration_s);
    if summary.outcome == Outcome::Ok {
        metrics::gauge!("streamrec_archiver_last_success_timestamp_seconds").set(common::metrics::unix_seconds());
    }
}

/// Sets `streamrec_archiver_last_success_timestamp_seconds` from the audit table at start, so
/// that a restarted daily job does not look as if it never succeeded; a failure to read it is
/// logged (the first run reports Cassandra's state itself).
async fn restore_last_success(args: &RunArgs) {
    if !common::metrics::enabled() {
        return;
    }
    match last_success(args).await {
        Ok(Some(ended_ms)) => {
            metrics::gauge!("streamrec_archiver_last_success_timestamp_seconds").set(ended_ms as f64 / 1000.0);
            tracing::info!(last_success = %format_ts(ended_ms), "last successful archive run, from archive_runs");
        }
        Ok(None) => tracing::info!(group = %args.group_id, "no successful archive run of this group yet"),
        Err(e) => tracing::warn!(error = format!("{e:#}"), "cannot read the last successful run from archive_runs"),
    }
}

/// The end (Unix ms) of the newest successful run of the group among its last 100, from
/// `archive_runs` (newest first by its clustering order).
async fn last_success(args: &RunArgs) -> anyhow::Result<Option<i64>> {
    use anyhow::Context;
    let session = crate::connect(&args.cassandra).await?;
    let cql =
        format!("SELECT outcome, ended_at FROM {}.archive_runs WHERE group_id = ? LIMIT 100", args.cassandra.keyspace);
    let rows =
        session.query_unpaged(cql, (args.group_id.as_str(),)).await.context("archive_runs")?.into_rows_result()?;
    type Row = (Option<String>, Option<scylla::value::CqlTimestamp>);
    for row in rows.rows::<Row>()? {
        if let (Some(outcome), Some(ended)) = row? {
            if outcome == Outcome::Ok.as_str() {
                return Ok(Some(ended.0));
            }
        }
    }
    Ok(None)
}
