//! The archiver: copies `fashion_state`, `fashion_action` and `fashion_dead_letter` into
//! Cassandra tables people query in cqlsh, once (`run-once`) or every day (`daily`), and draws a
//! report of the archived episodes (`report`).
//!
//! Invariant: offsets are committed only after the rows of their messages are written, and every
//! row's primary key holds its message's Kafka identity, so a run killed at any point followed
//! by another run leaves exactly one row per message and table.

pub mod config;
pub mod daily;
pub mod dates;
pub mod metrics;
pub mod report;
pub mod rows;
pub mod run;
pub mod schema;
pub mod sink;
pub mod source;

use std::path::Path;

use anyhow::Context;
pub use config::{CassandraArgs, DailyArgs, InitArgs, ReportArgs, RunArgs};
pub use metrics::{Outcome, Summary};
pub use run::run_once;
use scylla::client::session::Session;

/// Opens a session to the cluster (one attempt; `run-once` retries through [`sink::connect`]).
pub async fn connect(args: &CassandraArgs) -> anyhow::Result<Session> {
    sink::connect(args, &sink::Retry::new(std::time::Duration::ZERO))
        .await
        .with_context(|| format!("failed to connect to cassandra at {}", args.cassandra_nodes.join(",")))
}

/// Names of all keyspaces, sorted.
pub async fn keyspaces(session: &Session) -> anyhow::Result<Vec<String>> {
    let rows = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", &[])
        .await
        .context("failed to list keyspaces")?
        .into_rows_result()?;
    let mut names = rows.rows::<(String,)>()?.map(|r| r.map(|(n,)| n)).collect::<Result<Vec<_>, _>>()?;
    names.sort();
    Ok(names)
}

/// Names of the tables of `keyspace`, sorted.
pub async fn tables(session: &Session, keyspace: &str) -> anyhow::Result<Vec<String>> {
    let rows = session
        .query_unpaged("SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?", (keyspace,))
        .await
        .context("failed to list tables")?
        .into_rows_result()?;
    let mut names = rows.rows::<(String,)>()?.map(|r| r.map(|(n,)| n)).collect::<Result<Vec<_>, _>>()?;
    names.sort();
    Ok(names)
}

/// Writes `summary` as pretty JSON to `path`, creating its folder.
pub fn write_summary_json(summary: &Summary, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(summary).context("failed to serialise the summary")?;
    std::fs::write(path, json + "\n").with_context(|| format!("failed to write {}", path.display()))
}
