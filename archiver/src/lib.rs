//! The archiver: copies `fashion_state` and `fashion_action` into Cassandra for good. This build
//! carries the Cassandra connection and the `check` subcommand; the daily copy arrives with the
//! archiver issue.

use anyhow::Context;
use scylla::client::{session::Session, session_builder::SessionBuilder};

/// Where Cassandra is; flattened into the archiver's config.
#[derive(Debug, Clone, clap::Args)]
pub struct CassandraArgs {
    /// Comma-separated contact points, host:port.
    #[arg(long, env = "CASSANDRA_NODES", default_value = "127.0.0.1:9042", value_delimiter = ',')]
    pub cassandra_nodes: Vec<String>,
    /// Keyspace holding the archive tables.
    #[arg(long, env = "CASSANDRA_KEYSPACE", default_value = "streamrec")]
    pub keyspace: String,
}

/// Opens a session to the cluster.
pub async fn connect(args: &CassandraArgs) -> anyhow::Result<Session> {
    SessionBuilder::new()
        .known_nodes(&args.cassandra_nodes)
        .build()
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
