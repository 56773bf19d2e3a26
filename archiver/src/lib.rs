//! The archiver: copies the step topics of one environment (`--env fashion`: `fashion_state`,
//! `fashion_action` and `fashion_dead_letter`; `--env recogym`: the `recogym_*` ones) into
//! Cassandra tables people query in cqlsh, once (`run-once`) or every day (`daily`), draws a
//! report of the archived episodes (`report`), and reads archived runs back ([`readback`]).
//!
//! Invariant: offsets are committed only after the rows of their messages are written, and every
//! row's primary key holds its message's Kafka identity, so a run killed at any point followed
//! by another run leaves exactly one row per message and table.

pub mod config;
pub mod daily;
pub mod dates;
pub mod metrics;
pub mod readback;
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
pub use readback::{for_each_episode, ArchivedEpisode, ArchivedState, ArchivedStep, EpisodeFilter, ReadbackCounts};
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

/// Writes `summary` as pretty JSON to `path`, atomically ([`write_json_atomically`]).
pub fn write_summary_json(summary: &Summary, path: &Path) -> anyhow::Result<()> {
    write_json_atomically(path, summary)
}

/// Writes `value` as pretty JSON to `path`, creating its folder, so that a reader sees either
/// the old file or the whole new one, never a half-written one (a test or a script may wait for
/// the file to appear): the JSON goes to a temporary file in the same folder, is synced to
/// disk, then renamed over `path`, and the folder is synced so that the rename survives a crash.
pub fn write_json_atomically<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let json = serde_json::to_string_pretty(value).context("failed to serialise json")? + "\n";
    // Hidden, and unique to this process, so that two writers never share a temporary file.
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(json.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("failed to write {}", path.display()));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("failed to sync {} after writing {}", dir.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_written_whole_and_replaced_without_leftovers() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("sub/summary.json");
        write_json_atomically(&path, &serde_json::json!({"n": 1})).unwrap_or_else(|e| panic!("{e:#}"));
        write_json_atomically(&path, &serde_json::json!({"n": 2})).unwrap_or_else(|e| panic!("{e:#}"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["n"], 2);
        assert!(text.ends_with('\n'));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("summary.json")], "no temporary file is left");
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // A folder where the file should go: the rename fails.
        let path = dir.path().join("taken");
        std::fs::create_dir_all(path.join("inside")).unwrap_or_else(|e| panic!("{e}"));
        assert!(write_json_atomically(&path, &serde_json::json!({})).is_err());
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap_or_else(|e| panic!("{e}")).filter_map(Result::ok).collect();
        assert_eq!(names.len(), 1, "only the folder is there: {names:?}");
    }
}
