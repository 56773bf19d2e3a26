//! What a run reports: the summary printed at the end, written as JSON with `--summary-json`
//! and, as an audit row, into `archive_runs`.
//!
//! Invariant: `messages` names every topic of the run and `rows` every archive table, zeros
//! included, so consumers of the JSON see stable keys.

use std::{collections::BTreeMap, fmt};

use serde::Serialize;

use crate::{
    dates::{cql_ts, format_ts},
    rows::Table,
    sink::RunRow,
};

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Still copying (the audit row of a run that was killed stays so).
    Running,
    /// Everything up to the end offsets taken at start is archived and committed.
    Ok,
    /// A failure stopped the run; what was committed is archived, the rest is copied next time.
    Failed,
    /// A signal stopped the run after its current batch was written and committed.
    Interrupted,
}

impl Outcome {
    /// Lowercase name, as in the audit table.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// Offsets copied from one partition: `[first, next)`.
pub type OffsetRange = [i64; 2];

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Run id, also in `archive_runs`.
    pub run_id: uuid::Uuid,
    /// Consumer group whose offsets the run moved.
    pub group_id: String,
    /// Keyspace written.
    pub keyspace: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The error of a failed run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Start, Unix milliseconds.
    pub started_at_ms: i64,
    /// Wall-clock seconds.
    pub duration_s: f64,
    /// Messages read (and committed) per topic.
    pub messages: BTreeMap<String, u64>,
    /// Rows written per table.
    pub rows: BTreeMap<String, u64>,
    /// Messages that could not be decoded (also counted in `messages`, written to `rejected`).
    pub rejected: u64,
    /// Offsets copied and committed per `topic/partition`, `[first, next)`.
    pub offsets: BTreeMap<String, OffsetRange>,
    /// Rows written per second of the run.
    pub rows_per_second: f64,
}

impl Summary {
    /// An empty summary of a run starting now.
    pub fn new(run_id: uuid::Uuid, group_id: &str, keyspace: &str, topics: &[&str], started_at_ms: i64) -> Self {
        Self {
            run_id,
            group_id: group_id.into(),
            keyspace: keyspace.into(),
            outcome: Outcome::Running,
            error: None,
            started_at_ms,
            duration_s: 0.0,
            messages: topics.iter().map(|t| (t.to_string(), 0)).collect(),
            rows: Table::ALL.iter().map(|t| (t.name().to_string(), 0)).collect(),
            rejected: 0,
            offsets: BTreeMap::new(),
            rows_per_second: 0.0,
        }
    }

    /// Total rows written.
    pub fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }

    /// Total messages read.
    pub fn total_messages(&self) -> u64 {
        self.messages.values().sum()
    }

    /// Sets the duration and the rate.
    pub fn set_duration(&mut self, seconds: f64) {
        self.duration_s = seconds;
        self.rows_per_second = if seconds > 0.0 { self.total_rows() as f64 / seconds } else { 0.0 };
    }

    /// The audit row of this run.
    pub fn run_row(&self, host: &str) -> RunRow {
        let to_i64 = |m: &BTreeMap<String, u64>| {
            m.iter().map(|(k, v)| (k.clone(), i64::try_from(*v).unwrap_or(i64::MAX))).collect()
        };
        let ended = self.started_at_ms + (self.duration_s * 1000.0) as i64;
        RunRow {
            group_id: self.group_id.clone(),
            started_at: cql_ts(self.started_at_ms),
            run_id: self.run_id,
            ended_at: (self.outcome != Outcome::Running).then(|| cql_ts(ended)),
            outcome: self.outcome.as_str().into(),
            error: self.error.clone(),
            host: host.into(),
            messages: to_i64(&self.messages),
            rows: to_i64(&self.rows),
            rejected: i64::try_from(self.rejected).unwrap_or(i64::MAX),
            offsets: self.offsets.iter().map(|(k, [a, b])| (k.clone(), (*a, *b))).collect(),
            duration_ms: (self.duration_s * 1000.0) as i64,
            rows_per_second: self.rows_per_second,
        }
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "archive run {} {} in {:.1} s (group {}, keyspace {}, started {})",
            self.run_id,
            self.outcome.as_str(),
            self.duration_s,
            self.group_id,
            self.keyspace,
            format_ts(self.started_at_ms)
        )?;
        let line = |m: &BTreeMap<String, u64>| {
            m.iter().map(|(k, v)| format!("{k} {}", thousands(*v))).collect::<Vec<_>>().join(", ")
        };
        writeln!(f, "  messages read   {}", line(&self.messages))?;
        writeln!(f, "  rows written    {}", line(&self.rows))?;
        writeln!(f, "  rejected        {}", thousands(self.rejected))?;
        if self.offsets.is_empty() && self.outcome == Outcome::Ok {
            writeln!(f, "  offsets copied  none (already up to date)")?;
        } else if self.offsets.is_empty() {
            writeln!(f, "  offsets copied  none")?;
        } else {
            let ranges: Vec<String> = self.offsets.iter().map(|(k, [a, b])| format!("{k} {a}..{b}")).collect();
            writeln!(f, "  offsets copied  {}", ranges.join(", "))?;
        }
        write!(f, "  rate            {} rows/s", thousands(self.rows_per_second.round() as u64))?;
        if let Some(e) = &self.error {
            write!(f, "\n  error           {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_has_stable_keys_and_reads_well() {
        let mut s = Summary::new(uuid::Uuid::nil(), "archiver", "streamrec", &["st", "ac"], 0);
        s.messages.insert("st".into(), 1234);
        s.rows.insert("steps".into(), 1234);
        s.offsets.insert("st/0".into(), [0, 1234]);
        s.outcome = Outcome::Ok;
        s.set_duration(2.0);
        assert_eq!(s.rows.len(), Table::ALL.len());
        assert_eq!(s.rows_per_second, 617.0);
        let json = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(json["messages"]["st"], 1234);
        assert_eq!(json["rows"]["states_by_day"], 0);
        assert_eq!(json["outcome"], "ok");
        let text = s.to_string();
        assert!(text.contains("st 1,234") && text.contains("st/0 0..1234") && text.contains("617 rows/s"), "{text}");
        assert_eq!(thousands(1_000_000), "1,000,000");
        let row = s.run_row("h");
        assert_eq!((row.outcome.as_str(), row.offsets["st/0"]), ("ok", (0, 1234)));
    }
}
