//! `archiver` binary: parses config, starts logging and runs a subcommand.

use anyhow::Context;
use archiver::{CassandraArgs, DailyArgs, InitArgs, Outcome, ReportArgs, RunArgs};
use clap::{Parser, Subcommand};
use common::telemetry::LogFormat;

/// Copies the state, action and dead-letter topics into Cassandra tables that people query in
/// cqlsh: once (`run-once`, for cron or a Kubernetes CronJob) or every day (`daily`).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the keyspaces Cassandra holds and the archive's tables as JSON; exit non-zero when
    /// the archive keyspace is missing or Cassandra cannot be reached.
    Check(CassandraArgs),
    /// Create the archive keyspace (with the given replication, when absent) and its tables
    /// (when absent), from the statements of archiver/schema.cql.
    Init(InitArgs),
    /// Copy both topics from the group's committed offsets up to their ends at start, commit,
    /// print a summary; exit non-zero when the run failed or was interrupted.
    RunOnce(RunArgs),
    /// Run `run-once` every day at --at (UTC) and keep running; a failed run is logged and the
    /// next day's run retries. Stops on SIGTERM or SIGINT.
    Daily(DailyArgs),
    /// Draw a PNG of the archive: return per episode and reward rate per day.
    Report(ReportArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The Cassandra driver logs every connection (and every failed one) itself; by default the
    // archiver's own messages say what matters. RUST_LOG=scylla=info shows the driver's.
    // Set before the runtime starts any thread.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "info,scylla=off");
    }
    common::telemetry::init(cli.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check(cassandra) => check(&cassandra).await,
        Command::Init(args) => init(&args).await,
        Command::RunOnce(args) => run_once(&args).await,
        Command::Daily(args) => {
            tracing::info!(at = %args.at, group = %args.run.group_id, keyspace = %args.run.cassandra.keyspace, "archiver daily");
            let shutdown = common::shutdown::on_signals();
            common::metrics::serve(&args.metrics, "archiver", false).await?;
            // The daily job reaches Kafka and the registry at its runs: ready when it is up.
            common::metrics::ready(common::metrics::Dependency::Kafka);
            common::metrics::ready(common::metrics::Dependency::Registry);
            archiver::daily::run_daily(&args, &shutdown).await;
            Ok(())
        }
        Command::Report(args) => report(&args).await,
    }
}

async fn check(cassandra: &CassandraArgs) -> anyhow::Result<()> {
    let session = archiver::connect(cassandra).await?;
    let keyspaces = archiver::keyspaces(&session).await?;
    let present = keyspaces.contains(&cassandra.keyspace);
    let tables = if present { archiver::tables(&session, &cassandra.keyspace).await? } else { Vec::new() };
    let missing: Vec<&str> =
        archiver::schema::table_names().into_iter().filter(|t| !tables.iter().any(|x| x == t)).collect();
    println!(
        "{}",
        serde_json::json!({"keyspaces": keyspaces, "archive_keyspace": cassandra.keyspace, "present": present,
            "tables": tables, "missing_tables": missing})
    );
    anyhow::ensure!(present, "keyspace {} does not exist; run `make stack-up` or `archiver init`", cassandra.keyspace);
    Ok(())
}

async fn init(args: &InitArgs) -> anyhow::Result<()> {
    let session = archiver::connect(&args.cassandra).await?;
    let existed = archiver::keyspaces(&session).await?.contains(&args.cassandra.keyspace);
    let stmts = archiver::schema::apply(&session, &args.cassandra.keyspace, Some(&args.replication)).await?;
    let tables = archiver::tables(&session, &args.cassandra.keyspace).await?;
    if existed {
        tracing::info!(keyspace = %args.cassandra.keyspace, "keyspace existed: its replication is left as it is");
    }
    println!(
        "{}",
        serde_json::json!({"keyspace": args.cassandra.keyspace, "keyspace_existed": existed,
            "replication": if existed { None } else { Some(&args.replication) },
            "statements": stmts.len(), "tables": tables})
    );
    Ok(())
}

async fn run_once(args: &RunArgs) -> anyhow::Result<()> {
    let summary = archiver::run_once(args, &common::shutdown::on_signals()).await;
    println!("{summary}");
    if let Some(path) = &args.summary_json {
        archiver::write_summary_json(&summary, path)?;
    }
    match summary.outcome {
        Outcome::Ok => Ok(()),
        Outcome::Interrupted => {
            anyhow::bail!("interrupted by a signal; what was copied is committed, the next run goes on from there")
        }
        Outcome::Failed | Outcome::Running => {
            anyhow::bail!("archive run failed: {}", summary.error.as_deref().unwrap_or("unknown error"))
        }
    }
}

async fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let session = archiver::connect(&args.cassandra).await?;
    let data = archiver::report::read(&session, &args.cassandra.keyspace).await?;
    archiver::report::draw(&data, &args.out, args.width, args.height)?;
    if let Some(path) = &args.json {
        archiver::write_json_atomically(path, &data)?;
    }
    println!(
        "{}",
        serde_json::json!({"png": args.out, "episodes": data.episodes.len(), "days": data.days,
            "mean_return": data.episodes.iter().map(|e| e.episode_return).sum::<f64>() / data.episodes.len() as f64})
    );
    Ok(())
}
