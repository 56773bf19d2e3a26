//! The archiver's configuration: one clap struct per subcommand, every flag with an environment
//! variable (shown by `--help`), durations in human form (`60s`, `400days`).

use std::{path::PathBuf, time::Duration};

use common::{
    kafka::{EnvKind, KafkaArgs, TopicArgs, Topics},
    registry::RegistryArgs,
};

use crate::dates::TimeOfDay;

/// Where Cassandra is and which keyspace holds the archive.
#[derive(Debug, Clone, clap::Args)]
pub struct CassandraArgs {
    /// Comma-separated contact points, host:port.
    #[arg(long, env = "CASSANDRA_NODES", default_value = "127.0.0.1:9042", value_delimiter = ',')]
    pub cassandra_nodes: Vec<String>,
    /// Keyspace holding the archive tables.
    #[arg(long, env = "CASSANDRA_KEYSPACE", default_value = "streamrec")]
    pub keyspace: String,
    /// Client-side timeout of one Cassandra request; a request that times out is retried.
    #[arg(long, env = "CASSANDRA_REQUEST_TIMEOUT", default_value = "10s")]
    pub request_timeout: humantime::Duration,
}

/// `archiver init`: the keyspace (with its replication) and the tables of `schema.cql`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub cassandra: CassandraArgs,
    /// Replication of the keyspace when it does not exist yet, as a CQL map. Production:
    /// "{'class': 'NetworkTopologyStrategy', 'dc1': 3}". An existing keyspace is left as it is.
    #[arg(long, env = "ARCHIVER_REPLICATION", default_value = crate::schema::LOCAL_REPLICATION)]
    pub replication: String,
}

/// One copy of both topics up to their ends at start: `archiver run-once`, and each day's run
/// of `archiver daily`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Environment whose topics are copied: `fashion` (`StateMsg` states) or `recogym`
    /// (`RecoStateMsg` states); picks the default topics and how states are decoded. Both go
    /// to the same tables, and may share a consumer group (offsets are per topic).
    #[arg(long = "env", env = "ARCHIVER_ENV", value_enum, default_value_t = EnvKind::Fashion)]
    pub env: EnvKind,
    /// The environment's topics, unless named otherwise.
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Where the writer schemas of the records are looked up (a lookup that fails is retried
    /// for `--retry-for`, then the run fails without committing).
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub cassandra: CassandraArgs,
    /// Consumer group whose committed offsets say where the archive stands.
    #[arg(long, env = "ARCHIVER_GROUP_ID", default_value = "archiver")]
    pub group_id: String,
    /// Cassandra writes in flight at once.
    #[arg(long, env = "ARCHIVER_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Messages per batch: a batch's rows are written, then its offsets committed.
    #[arg(long, env = "ARCHIVER_BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Expire archived rows after this long (CQL `USING TTL`); default: keep them for good.
    #[arg(long, env = "ARCHIVER_TTL")]
    pub ttl: Option<humantime::Duration>,
    /// How long to keep retrying a failing Cassandra request (backoff 100 ms doubling to 5 s)
    /// before the run fails without committing the batch.
    #[arg(long, env = "ARCHIVER_RETRY_FOR", default_value = "60s")]
    pub retry_for: humantime::Duration,
    /// Also write the summary as JSON to this file.
    #[arg(long, env = "ARCHIVER_SUMMARY_JSON")]
    pub summary_json: Option<PathBuf>,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long, env = "ARCHIVER_NO_PROGRESS")]
    pub no_progress: bool,
    /// Test hook: abort the process after writing the rows of batch N (from 1), before its
    /// offsets are committed, as a crash at the worst moment would.
    #[arg(long, env = "ARCHIVER_ABORT_BEFORE_COMMIT", hide = true)]
    pub abort_before_commit: Option<u64>,
}

impl RunArgs {
    /// The topics it copies: those of `--env`, unless named otherwise.
    pub fn topics(&self) -> Topics {
        self.topics.resolve(self.env)
    }

    /// The TTL in seconds for `USING TTL`, if any.
    pub fn ttl_seconds(&self) -> Option<u64> {
        self.ttl.map(|d| Duration::from(d).as_secs().max(1))
    }
}

/// `archiver daily`: run-once every day at a fixed UTC time, until SIGTERM.
#[derive(Debug, Clone, clap::Args)]
pub struct DailyArgs {
    /// UTC time of day of the daily run, HH:MM (or HH:MM:SS).
    #[arg(long, env = "ARCHIVE_AT", default_value = "02:00")]
    pub at: TimeOfDay,
    /// Also run once right away, then keep the daily schedule.
    #[arg(long, env = "ARCHIVER_RUN_AT_START")]
    pub run_at_start: bool,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub metrics: common::metrics::MetricsArgs,
}

/// `archiver report`: a PNG of the archived episodes.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub cassandra: CassandraArgs,
    /// Where to write the PNG.
    #[arg(long, env = "ARCHIVER_REPORT_OUT", default_value = "target/archive/report.png")]
    pub out: PathBuf,
    /// Width of the image in pixels.
    #[arg(long, env = "ARCHIVER_REPORT_WIDTH", default_value_t = 1200)]
    pub width: u32,
    /// Height of the image in pixels.
    #[arg(long, env = "ARCHIVER_REPORT_HEIGHT", default_value_t = 900)]
    pub height: u32,
    /// Also write what was plotted as JSON to this file.
    #[arg(long, env = "ARCHIVER_REPORT_JSON")]
    pub json: Option<PathBuf>,
}
