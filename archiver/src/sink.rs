//! Cassandra: the session, the prepared statements, writes with bounded concurrency and retries,
//! the episode summaries and the audit rows.
//!
//! Invariant: `write_batch` returns `Ok` only when every row of the batch was acknowledged by
//! Cassandra at the session's consistency (LOCAL_QUORUM), so the caller may then commit the
//! batch's offsets; any failure that outlives the retry budget is returned, never swallowed.

use std::{
    collections::BTreeMap,
    future::Future,
    time::{Duration, Instant},
};

use futures::{stream, StreamExt, TryStreamExt};
use protocol::Envelope;
use scylla::{
    client::{execution_profile::ExecutionProfile, session::Session, session_builder::SessionBuilder},
    errors::{DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError},
    response::query_result::QueryResult,
    serialize::row::SerializeRow,
    statement::{prepared::PreparedStatement, Consistency},
    value::CqlTimestamp,
    SerializeRow,
};

use crate::{
    config::CassandraArgs,
    rows::{self, ArchivedState, EpisodeRow, Item, Row, StepReadBack, Table},
    schema::RUNS_TABLE,
};

/// How failing Cassandra requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// First pause.
    pub initial: Duration,
    /// Longest pause; pauses double up to it.
    pub max_delay: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub give_up_after: Duration,
}

impl Retry {
    /// Backoff from 100 ms doubling to 5 s, for at most `give_up_after`.
    pub fn new(give_up_after: Duration) -> Self {
        Self { initial: Duration::from_millis(100), max_delay: Duration::from_secs(5), give_up_after }
    }
}

/// Cassandra failures, after retries.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// No node answered within the retry budget.
    #[error("cassandra at {nodes} unreachable for {elapsed:.1?} ({attempts} attempts): {source}")]
    Unreachable {
        /// The contact points tried.
        nodes: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        source: Box<NewSessionError>,
    },
    /// A request kept failing for the whole retry budget (Cassandra down, overloaded, timing out).
    #[error("cassandra {what} failed for {elapsed:.1?} ({attempts} attempts), giving up: {source}")]
    GaveUp {
        /// What was being done.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        source: Box<ExecutionError>,
    },
    /// Cassandra refused a request for a reason a retry cannot fix (a bad statement, a type).
    #[error("cassandra refused {what}: {source}")]
    Refused {
        /// What was being done.
        what: String,
        /// The error.
        source: Box<ExecutionError>,
    },
    /// A statement could not be prepared (usually: the keyspace or a table does not exist).
    #[error("cannot prepare {statement}: {source}; create the tables with `archiver init --keyspace {keyspace}`")]
    Prepare {
        /// The statement, up to its table.
        statement: String,
        /// The keyspace used.
        keyspace: String,
        /// The error.
        source: Box<PrepareError>,
    },
    /// Rows read back did not have the expected shape.
    #[error("cannot read {what}: {message}")]
    Read {
        /// What was read.
        what: String,
        /// The problem.
        message: String,
    },
}

/// Whether a retry can fix `e`: timeouts, unavailable replicas, overload and broken or missing
/// connections can; a statement or a value Cassandra refuses cannot.
pub fn is_retryable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::BadQuery(_) | ExecutionError::UseKeyspaceError(_) => false,
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::SerializationError(_) | RequestAttemptError::CqlRequestSerialization(_) => false,
            RequestAttemptError::DbError(db, _) => !matches!(
                db,
                DbError::SyntaxError
                    | DbError::Invalid
                    | DbError::AlreadyExists { .. }
                    | DbError::FunctionFailure { .. }
                    | DbError::AuthenticationError
                    | DbError::Unauthorized
                    | DbError::ConfigError
            ),
            _ => true,
        },
        _ => true,
    }
}

/// Runs `op` until it succeeds, fails for good, or the retry budget is spent.
pub async fn with_retry<T, F, Fut>(policy: &Retry, what: &str, mut op: F) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ExecutionError>>,
{
    let start = Instant::now();
    let mut delay = policy.initial;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(source) if !is_retryable(&source) => {
                return Err(SinkError::Refused { what: what.into(), source: Box::new(source) })
            }
            Err(source) => {
                let elapsed = start.elapsed();
                let Some(left) = policy.give_up_after.checked_sub(elapsed).filter(|l| !l.is_zero()) else {
                    return Err(SinkError::GaveUp { what: what.into(), attempts, elapsed, source: Box::new(source) });
                };
                if attempts == 1 || attempts % 5 == 0 {
                    tracing::warn!(what, attempts, error = %source, retry_in = ?delay, "cassandra request failed, retrying");
                }
                tokio::time::sleep(delay.min(left)).await;
                delay = (delay * 2).min(policy.max_delay);
            }
        }
    }
}

/// Opens a session (LOCAL_QUORUM, the configured request timeout), retrying while no node answers.
pub async fn connect(args: &CassandraArgs, retry: &Retry) -> Result<Session, SinkError> {
    let profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .request_timeout(Some(args.request_timeout.into()))
        .build();
    let start = Instant::now();
    let mut delay = retry.initial;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let built = SessionBuilder::new()
            .known_nodes(&args.cassandra_nodes)
            .connection_timeout(Duration::from_secs(5))
            .default_execution_profile_handle(profile.clone().into_handle())
            .build()
            .await;
        match built {
            Ok(session) => return Ok(session),
            Err(source) => {
                let elapsed = start.elapsed();
                let Some(left) = retry.give_up_after.checked_sub(elapsed).filter(|l| !l.is_zero()) else {
                    let nodes = args.cassandra_nodes.join(",");
                    return Err(SinkError::Unreachable { nodes, attempts, elapsed, source: Box::new(source) });
                };
                tracing::warn!(attempts, error = %source, retry_in = ?delay, "cannot connect to cassandra, retrying");
                tokio::time::sleep(delay.min(left)).await;
                delay = (delay * 2).min(retry.max_delay);
            }
        }
    }
}

/// Rows written per table.
pub type TableCounts = BTreeMap<Table, u64>;

const STATE_COLS: &[&str] = &[
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "day",
    "ts",
    "episode_id",
    "step",
    "env_id",
    "schema_id",
    "schema_version",
    "user_id",
    "attempt",
    "n_actions",
    "product_asin",
    "product_index",
    "product_text",
    "sizes",
    "colors",
    "keywords",
    "reward",
    "next_item_hit",
    "terminated",
    "truncated",
    "catalog",
    "last_action",
    "accept_prob",
    "user_time",
    "organic",
    "ps_asked",
];
const ACTION_COLS: &[&str] = &[
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "day",
    "ts",
    "episode_id",
    "step",
    "env_id",
    "schema_id",
    "schema_version",
    "action",
    "ps",
    "policy",
    "replica_id",
    "model_version",
    "ps_all",
];
const REJECTED_COLS: &[&str] =
    &["kafka_topic", "kafka_partition", "kafka_offset", "reason", "kafka_key", "payload", "kafka_ts", "run_id"];
const DEAD_LETTER_COLS: &[&str] = &[
    "day",
    "ts",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "reason",
    "source_topic",
    "source_partition",
    "source_offset",
    "kafka_key",
    "payload",
];
const EPISODE_COLS: &[&str] = &[
    "user_id",
    "episode_id",
    "env_id",
    "start_day",
    "started_at",
    "ended_at",
    "steps",
    "episode_return",
    "terminated",
    "truncated",
];
const RUN_COLS: &[&str] = &[
    "group_id",
    "started_at",
    "run_id",
    "ended_at",
    "outcome",
    "error",
    "host",
    "messages",
    "rows",
    "rejected",
    "offsets",
    "duration_ms",
    "rows_per_second",
];

/// `INSERT INTO ks.table (cols) VALUES (?, ...)`, with `USING TTL` when given.
pub fn insert_cql(keyspace: &str, table: &str, cols: &[&str], ttl_s: Option<u64>) -> String {
    let marks = vec!["?"; cols.len()].join(", ");
    let ttl = ttl_s.map(|t| format!(" USING TTL {t}")).unwrap_or_default();
    format!("INSERT INTO {keyspace}.{table} ({}) VALUES ({marks}){ttl}", cols.join(", "))
}

/// The statements of one keyspace, prepared once per run.
#[derive(Debug, Clone)]
pub struct Statements {
    step_state: PreparedStatement,
    step_action: PreparedStatement,
    state_day: PreparedStatement,
    action_day: PreparedStatement,
    rejected: PreparedStatement,
    dead_letter: PreparedStatement,
    episode: PreparedStatement,
    episode_rows: PreparedStatement,
    run: PreparedStatement,
}

/// One audit row of `archive_runs`.
#[derive(Debug, Clone, SerializeRow)]
pub struct RunRow {
    /// Consumer group.
    pub group_id: String,
    /// Start of the run.
    pub started_at: CqlTimestamp,
    /// Run id.
    pub run_id: uuid::Uuid,
    /// End of the run (unset while running).
    pub ended_at: Option<CqlTimestamp>,
    /// running | ok | failed | interrupted.
    pub outcome: String,
    /// The error of a failed run.
    pub error: Option<String>,
    /// Host name of the archiver.
    pub host: String,
    /// Messages read per topic.
    pub messages: BTreeMap<String, i64>,
    /// Rows written per table.
    pub rows: BTreeMap<String, i64>,
    /// Messages rejected.
    pub rejected: i64,
    /// Offsets copied per partition, `[first, next)`.
    pub offsets: BTreeMap<String, (i64, i64)>,
    /// Duration so far.
    pub duration_ms: i64,
    /// Rows written per second.
    pub rows_per_second: f64,
}

/// A session with the archive's prepared statements.
#[derive(Debug)]
pub struct Sink {
    session: Session,
    keyspace: String,
    stmts: Statements,
    concurrency: usize,
    retry: Retry,
}

impl Sink {
    /// Prepares every statement on `keyspace`; fails clearly when the tables do not exist.
    pub async fn prepare(
        session: Session,
        keyspace: &str,
        ttl_s: Option<u64>,
        concurrency: usize,
        retry: Retry,
    ) -> Result<Self, SinkError> {
        let ks = keyspace;
        let texts = [
            insert_cql(ks, "steps", &[&["kind"], STATE_COLS].concat(), ttl_s),
            insert_cql(ks, "steps", &[&["kind"], ACTION_COLS].concat(), ttl_s),
            insert_cql(ks, "states_by_day", STATE_COLS, ttl_s),
            insert_cql(ks, "actions_by_day", ACTION_COLS, ttl_s),
            insert_cql(ks, "rejected", REJECTED_COLS, ttl_s),
            insert_cql(ks, "dead_letters", DEAD_LETTER_COLS, ttl_s),
            insert_cql(ks, "episodes_by_user", EPISODE_COLS, ttl_s),
            format!("SELECT step, kind, attempt, reward, ts FROM {ks}.steps WHERE episode_id = ?"),
            insert_cql(ks, RUNS_TABLE, RUN_COLS, None),
        ];
        let mut prepared = Vec::with_capacity(texts.len());
        for text in texts {
            let p = with_prepare_retry(&session, &text, ks, &retry).await?;
            prepared.push(p);
        }
        let mut it = prepared.into_iter();
        let mut next =
            || it.next().ok_or_else(|| SinkError::Read { what: "statements".into(), message: "missing".into() });
        let stmts = Statements {
            step_state: next()?,
            step_action: next()?,
            state_day: next()?,
            action_day: next()?,
            rejected: next()?,
            dead_letter: next()?,
            episode: next()?,
            episode_rows: next()?,
            run: next()?,
        };
        Ok(Self { session, keyspace: keyspace.to_string(), stmts, concurrency: concurrency.max(1), retry })
    }

    /// The keyspace written to.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    async fn exec<R: SerializeRow>(&self, what: &str, stmt: &PreparedStatement, row: &R) -> Result<(), SinkError> {
        with_retry(&self.retry, what, || self.session.execute_unpaged(stmt, row)).await.map(|_: QueryResult| ())
    }

    /// Writes the row of `item` in `table`.
    pub async fn write_row(&self, item: &Item, table: Table, run_id: uuid::Uuid) -> Result<(), SinkError> {
        let Some(row) = rows::row(item, table, run_id) else { return Ok(()) };
        let s = &self.stmts;
        match &row {
            Row::StepState(r) => self.exec("insert into steps", &s.step_state, r).await,
            Row::StepAction(r) => self.exec("insert into steps", &s.step_action, r).await,
            Row::StateByDay(r) => self.exec("insert into states_by_day", &s.state_day, r).await,
            Row::ActionByDay(r) => self.exec("insert into actions_by_day", &s.action_day, r).await,
            Row::Rejected(r) => self.exec("insert into rejected", &s.rejected, r).await,
            Row::DeadLetter(r) => self.exec("insert into dead_letters", &s.dead_letter, r).await,
        }
    }

    /// Writes the row of `item` in `table` once, without retries: the plain loop the benchmark
    /// compares the archiver with.
    pub async fn execute_plain(&self, item: &Item, table: Table, run_id: uuid::Uuid) -> Result<(), ExecutionError> {
        let Some(row) = rows::row(item, table, run_id) else { return Ok(()) };
        let (s, db) = (&self.stmts, &self.session);
        let result = match &row {
            Row::StepState(r) => db.execute_unpaged(&s.step_state, r).await,
            Row::StepAction(r) => db.execute_unpaged(&s.step_action, r).await,
            Row::StateByDay(r) => db.execute_unpaged(&s.state_day, r).await,
            Row::ActionByDay(r) => db.execute_unpaged(&s.action_day, r).await,
            Row::Rejected(r) => db.execute_unpaged(&s.rejected, r).await,
            Row::DeadLetter(r) => db.execute_unpaged(&s.dead_letter, r).await,
        };
        result.map(|_| ())
    }

    /// Writes an episode row once, without retries (benchmark baseline).
    pub async fn execute_plain_episode(&self, episode: &rows::EpisodeRow) -> Result<(), ExecutionError> {
        self.session.execute_unpaged(&self.stmts.episode, episode).await.map(|_| ())
    }

    /// Writes the summaries of episodes that ended, at most `concurrency` at once; one without
    /// a summary (it started before this run) is summarised from its rows read back from
    /// `steps`. Call it only once every row of the batch and of every earlier batch is written:
    /// an episode's earlier states are then all in `steps` (one partition, read in order).
    /// Returns the rows written.
    pub async fn write_episodes(&self, ended: Vec<(&ArchivedState, Option<EpisodeRow>)>) -> Result<u64, SinkError> {
        stream::iter(ended)
            .map(|(terminal, summary)| self.write_episode(terminal, summary))
            .buffer_unordered(self.concurrency)
            .try_fold(0_u64, |n, ()| async move { Ok(n + 1) })
            .await
    }

    /// Reads an episode's rows back from `steps`.
    pub async fn read_episode(&self, episode_id: &str) -> Result<Vec<StepReadBack>, SinkError> {
        type R = (i32, String, Option<i32>, Option<f64>, Option<CqlTimestamp>);
        let result = with_retry(&self.retry, "read steps", || {
            self.session.execute_unpaged(&self.stmts.episode_rows, (episode_id,))
        })
        .await?;
        let read_err = |e: &dyn std::fmt::Display| SinkError::Read { what: "steps".into(), message: e.to_string() };
        let rows = result.into_rows_result().map_err(|e| read_err(&e))?;
        let mut out = Vec::new();
        for r in rows.rows::<R>().map_err(|e| read_err(&e))? {
            let (step, kind, attempt, reward, ts) = r.map_err(|e| read_err(&e))?;
            out.push(StepReadBack { step, kind, attempt, reward, ts_ms: ts.map_or(0, |t| t.0) });
        }
        Ok(out)
    }

    async fn write_episode(&self, terminal: &ArchivedState, summary: Option<EpisodeRow>) -> Result<(), SinkError> {
        let episode = match summary {
            Some(e) => e,
            None => rows::summarize_episode(terminal, &self.read_episode(terminal.episode_id()).await?),
        };
        self.exec("insert into episodes_by_user", &self.stmts.episode, &episode).await
    }

    /// Writes (or overwrites) the audit row of a run.
    pub async fn record_run(&self, run: &RunRow) -> Result<(), SinkError> {
        self.exec("insert into archive_runs", &self.stmts.run, run).await
    }
}

async fn with_prepare_retry(
    session: &Session,
    text: &str,
    keyspace: &str,
    retry: &Retry,
) -> Result<PreparedStatement, SinkError> {
    let start = Instant::now();
    let mut delay = retry.initial;
    loop {
        match session.prepare(text).await {
            Ok(p) => return Ok(p),
            Err(source) => {
                let refused = matches!(&source, PrepareError::AllAttemptsFailed { first_attempt }
                    if matches!(first_attempt, RequestAttemptError::DbError(DbError::Invalid | DbError::SyntaxError, _)));
                let left = retry.give_up_after.checked_sub(start.elapsed()).filter(|l| !l.is_zero());
                let Some(left) = left.filter(|_| !refused) else {
                    let statement = text.split(" (").next().unwrap_or(text).to_string();
                    return Err(SinkError::Prepare { statement, keyspace: keyspace.into(), source: Box::new(source) });
                };
                tracing::warn!(error = %source, retry_in = ?delay, "cannot prepare a statement, retrying");
                tokio::time::sleep(delay.min(left)).await;
                delay = (delay * 2).min(retry.max_delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_statements_list_every_column_once() {
        let s = insert_cql("ks", "steps", &["a", "b"], None);
        assert_eq!(s, "INSERT INTO ks.steps (a, b) VALUES (?, ?)");
        assert!(insert_cql("ks", "t", &["a"], Some(86_400)).ends_with(" USING TTL 86400"));
    }

    #[tokio::test]
    async fn retry_gives_up_after_its_budget_and_stops_at_once_on_a_refusal() {
        let policy = Retry {
            initial: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            give_up_after: Duration::from_millis(30),
        };
        let mut calls = 0;
        let r: Result<(), SinkError> = with_retry(&policy, "test", || {
            calls += 1;
            async { Err(ExecutionError::EmptyPlan) }
        })
        .await;
        assert!(matches!(r, Err(SinkError::GaveUp { .. })), "{r:?}");
        assert!(calls > 2, "retried {calls} times");

        let mut calls = 0;
        let refused = RequestAttemptError::DbError(DbError::Invalid, "unconfigured table".into());
        let r: Result<(), SinkError> = with_retry(&policy, "test", || {
            calls += 1;
            let e = ExecutionError::LastAttemptError(refused.clone());
            async move { Err(e) }
        })
        .await;
        assert!(matches!(r, Err(SinkError::Refused { .. })), "{r:?}");
        assert_eq!(calls, 1);

        let mut calls = 0;
        let ok = with_retry(&policy, "test", || {
            calls += 1;
            let fail = calls < 3;
            async move {
                if fail {
                    Err(ExecutionError::EmptyPlan)
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(ok.ok(), Some(7));
    }
}
