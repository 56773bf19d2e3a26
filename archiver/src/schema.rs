//! The archive's schema as `schema.cql` writes it, reused for other keyspaces and replications:
//! `archiver init` and the tests create their keyspaces from the same file the stack applies.
//!
//! Invariant: `statements` returns the file's statements in order, with the keyspace name and
//! (for the keyspace statement) the replication replaced, and nothing else changed.

use scylla::client::session::Session;

use crate::rows::Table;

/// The schema file, compiled in.
pub const SCHEMA_CQL: &str = include_str!("../schema.cql");
/// The keyspace `schema.cql` names.
pub const DEFAULT_KEYSPACE: &str = "streamrec";
/// Replication of the local single-node stack.
pub const LOCAL_REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";
/// The audit table.
pub const RUNS_TABLE: &str = "archive_runs";

/// Why a schema could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The keyspace name is not a plain CQL identifier.
    #[error("keyspace name '{0}' must be 1 to 48 letters, digits or underscores, starting with a letter")]
    BadKeyspace(String),
    /// The replication is not a CQL map literal.
    #[error("replication '{0}' is not a CQL map such as {{'class': 'NetworkTopologyStrategy', 'dc1': 3}}")]
    BadReplication(String),
    /// Cassandra refused a statement.
    #[error("cassandra refused `{statement}`: {source}")]
    Refused {
        /// The statement (first line).
        statement: String,
        /// What the driver said.
        source: Box<scylla::errors::ExecutionError>,
    },
}

/// Checks that `name` can be used unquoted as a keyspace.
pub fn check_keyspace(name: &str) -> Result<(), SchemaError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SchemaError::BadKeyspace(name.to_string()))
    }
}

/// The statements of `schema.cql` for `keyspace`; with `replication`, the keyspace is created
/// with it (when absent) instead of the file's.
pub fn statements(keyspace: &str, replication: Option<&str>) -> Result<Vec<String>, SchemaError> {
    check_keyspace(keyspace)?;
    if let Some(r) = replication {
        let r = r.trim();
        if !(r.starts_with('{') && r.ends_with('}') && r.contains("'class'")) {
            return Err(SchemaError::BadReplication(r.to_string()));
        }
    }
    let without_comments: String =
        SCHEMA_CQL.lines().map(|l| l.split_once("--").map_or(l, |(code, _)| code)).collect::<Vec<_>>().join("\n");
    let from = format!("{DEFAULT_KEYSPACE}.");
    let to = format!("{keyspace}.");
    Ok(without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("CREATE KEYSPACE") {
                let replication = replication.map(str::trim).map(str::to_string).unwrap_or_else(|| {
                    s.split_once("replication =").map(|(_, r)| r.trim().to_string()).unwrap_or_default()
                });
                format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}")
            } else {
                s.replace(&from, &to)
            }
        })
        .collect())
}

/// Creates the keyspace (when absent) and every table (when absent). Returns the statements run.
pub async fn apply(session: &Session, keyspace: &str, replication: Option<&str>) -> Result<Vec<String>, SchemaError> {
    let stmts = statements(keyspace, replication)?;
    for s in &stmts {
        session.query_unpaged(s.as_str(), &[]).await.map_err(|source| SchemaError::Refused {
            statement: s.lines().next().unwrap_or_default().to_string(),
            source: Box::new(source),
        })?;
    }
    Ok(stmts)
}

/// The names of every table the schema creates.
pub fn table_names() -> Vec<&'static str> {
    Table::ALL.iter().map(|t| t.name()).chain([RUNS_TABLE]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_statements_create_keyspace_then_every_table() {
        let stmts = statements(DEFAULT_KEYSPACE, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(stmts[0]
            .starts_with("CREATE KEYSPACE IF NOT EXISTS streamrec WITH replication = {'class': 'SimpleStrategy'"));
        let tables: Vec<&str> = stmts[1..]
            .iter()
            .filter_map(|s| s.strip_prefix("CREATE TABLE IF NOT EXISTS streamrec."))
            .filter_map(|s| s.split_whitespace().next())
            .collect();
        let mut expected = table_names();
        expected.sort_unstable();
        let mut got = tables.clone();
        got.sort_unstable();
        assert_eq!(got, expected, "every table of schema.cql is known to the code and back");
        // Besides the CREATEs, only columns added later, idempotently, to tables created above.
        let alters: Vec<&String> = stmts[1 + tables.len()..].iter().collect();
        assert!(
            alters.iter().all(|s| s.starts_with("ALTER TABLE streamrec.")
                && s.contains(" ADD IF NOT EXISTS ")
                && tables.iter().any(|t| s.starts_with(&format!("ALTER TABLE streamrec.{t} ")))),
            "{alters:?}"
        );
        // catalog, last_action, accept_prob, user_time, organic, ps_asked of steps and states_by_day;
        // ps_all of steps and actions_by_day.
        assert_eq!(alters.len(), 14, "{alters:?}");
        assert!(stmts.iter().all(|s| !s.contains("--")), "comments are stripped");
    }

    #[test]
    fn other_keyspace_and_replication() {
        let nts = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}";
        let stmts = statements("test_ks_1", Some(nts)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stmts[0], format!("CREATE KEYSPACE IF NOT EXISTS test_ks_1 WITH replication = {nts}"));
        assert!(stmts[1..].iter().all(|s| s.contains(" test_ks_1.") && !s.contains("streamrec.")));
        assert!(matches!(statements("bad-name", None), Err(SchemaError::BadKeyspace(_))));
        assert!(matches!(statements("ok", Some("3")), Err(SchemaError::BadReplication(_))));
    }
}
