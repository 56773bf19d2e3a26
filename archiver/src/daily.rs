//! `archiver daily`: sleep until the next `HH:MM` UTC, run once, repeat, until SIGTERM.
//!
//! Invariant: a failed run is logged and the schedule goes on (the next day's run copies what
//! this one could not); only a signal ends the loop, and a run in progress is allowed to finish
//! its current batch first.

use std::time::Duration;

use common::kafka::now_ms;
use tokio_util::sync::CancellationToken;

use crate::{config::DailyArgs, dates::format_ts, metrics::Outcome, run::run_once};

/// Runs the schedule until `shutdown` is cancelled.
pub async fn run_daily(args: &DailyArgs, shutdown: &CancellationToken) {
    let mut run_now = args.run_at_start;
    loop {
        if !run_now {
            let next = args.at.next_after(now_ms());
            let wait = Duration::from_millis(u64::try_from(next - now_ms()).unwrap_or(0));
            tracing::info!(next_run = %format_ts(next), in_s = wait.as_secs(), at = %args.at, "waiting for the daily run");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
        run_now = false;
        let summary = run_once(&args.run, shutdown).await;
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
