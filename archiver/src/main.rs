//! `archiver` binary: parses config, starts logging and runs a subcommand.

use archiver::CassandraArgs;
use clap::{Parser, Subcommand};
use common::telemetry::LogFormat;

/// Copies the step topics into Cassandra tables that people query in cqlsh.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    cassandra: CassandraArgs,
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the keyspaces Cassandra holds as JSON; exit non-zero when the archive keyspace is
    /// missing or Cassandra cannot be reached.
    Check,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::telemetry::init(cli.log_format);
    match cli.command {
        Command::Check => {
            let session = archiver::connect(&cli.cassandra).await?;
            let keyspaces = archiver::keyspaces(&session).await?;
            let present = keyspaces.contains(&cli.cassandra.keyspace);
            println!(
                "{}",
                serde_json::json!({"keyspaces": keyspaces, "archive_keyspace": cli.cassandra.keyspace, "present": present})
            );
            anyhow::ensure!(present, "keyspace {} does not exist; run `make stack-up`", cli.cassandra.keyspace);
        }
    }
    Ok(())
}
