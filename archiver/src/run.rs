//! One archive run: plan the copy (committed offsets to the high watermarks at start), then for
//! each batch write its rows and only then commit its offsets; record the run in `archive_runs`.
//!
//! Invariant: an offset is committed only after every row of every message before it in its
//! partition is durable in Cassandra. A crash therefore loses nothing and at worst re-copies
//! the uncommitted batch, whose rows overwrite themselves (same primary keys, same values).

use std::{
    collections::{BTreeMap, VecDeque},
    io::IsTerminal,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{stream::FuturesUnordered, StreamExt};

use common::{kafka::now_ms, registry::Registry};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    config::RunArgs,
    metrics::{Outcome, Summary},
    rows::{Decoder, EpisodeTracker, Item, Role, Table},
    sink::{self, Retry, Sink, SinkError, TableCounts},
    source::{Batch, SchemaLookup, Source},
};

/// How long the reader may see no message while partitions are still short of their end.
const STALL_AFTER: Duration = Duration::from_secs(120);

/// The host name, for the audit row.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Runs one copy. Never panics on runtime input: failures end up in the summary
/// (`outcome = failed`, `error`), which is also written to `archive_runs` when Cassandra answers.
pub async fn run_once(args: &RunArgs, shutdown: &CancellationToken) -> Summary {
    let started = Instant::now();
    let topics = archived_topics(args);
    let names: Vec<&str> = topics.iter().map(|(_, t)| t.as_str()).collect();
    let mut summary = Summary::new(uuid::Uuid::new_v4(), &args.group_id, &args.cassandra.keyspace, &names, now_ms());
    let result = copy(args, &topics, &mut summary, shutdown).await;
    summary.set_duration(started.elapsed().as_secs_f64());
    match result {
        Ok((sink, outcome)) => {
            summary.outcome = outcome;
            record_end(&sink, &summary).await;
        }
        Err((sink, error)) => {
            summary.outcome = Outcome::Failed;
            summary.error = Some(error);
            if let Some(sink) = sink {
                record_end(&sink, &summary).await;
            }
        }
    }
    summary
}

/// The topics a run copies, with their roles (an empty name leaves one out).
pub fn archived_topics(args: &RunArgs) -> Vec<(Role, String)> {
    let named = args.topics();
    [
        (Role::State, &named.state_topic),
        (Role::Action, &named.action_topic),
        (Role::DeadLetter, &named.dead_letter_topic),
    ]
    .into_iter()
    .filter(|(_, t)| !t.is_empty())
    .map(|(r, t)| (r, t.clone()))
    .collect()
}

/// Messages each topic holds past the archiver group's committed offsets, as of now.
pub async fn messages_behind(args: &RunArgs) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let (kafka, group, topics) = (args.kafka.clone(), args.group_id.clone(), archived_topics(args));
    let source = tokio::task::spawn_blocking(move || Source::open(&kafka, &group, &topics)).await??;
    let mut behind = std::collections::BTreeMap::new();
    for plan in source.plans() {
        *behind.entry(plan.topic.to_string()).or_insert(0) += plan.pending();
    }
    Ok(behind)
}

type CopyResult = Result<(Sink, Outcome), (Option<Sink>, String)>;

async fn copy(
    args: &RunArgs,
    topics: &[(Role, String)],
    summary: &mut Summary,
    shutdown: &CancellationToken,
) -> CopyResult {
    let retry = Retry::new(args.retry_for.into());
    let fail = |e: &dyn std::fmt::Display| (None, e.to_string());
    let session = sink::connect(&args.cassandra, &retry).await.map_err(|e| fail(&e))?;
    let sink = Sink::prepare(session, &args.cassandra.keyspace, args.ttl_seconds(), args.concurrency.into(), retry)
        .await
        .map_err(|e| fail(&e))?;
    let (kafka, group, owned) = (args.kafka.clone(), args.group_id.clone(), topics.to_vec());
    let opened = tokio::task::spawn_blocking(move || Source::open(&kafka, &group, &owned)).await;
    let source = match opened {
        Ok(Ok(s)) => Arc::new(s),
        Ok(Err(e)) => return Err((Some(sink), e.to_string())),
        Err(e) => return Err((Some(sink), format!("kafka task failed: {e}"))),
    };
    let host = host_name();
    if let Err(e) = sink.record_run(&summary.run_row(&host)).await {
        return Err((Some(sink), e.to_string()));
    }
    let pending: u64 = source.plans().iter().map(|p| p.pending()).sum();
    for p in source.plans().iter().filter(|p| p.pending() > 0) {
        tracing::debug!(partition = %p.label(), from = p.start, to = p.end, committed = ?p.committed, "to copy");
    }
    tracing::info!(run_id = %summary.run_id, messages = pending, keyspace = %args.cassandra.keyspace,
        group = %args.group_id, "copying");
    match copy_batches(args, &sink, &source, pending, summary, shutdown).await {
        Ok(outcome) => Ok((sink, outcome)),
        Err(e) => Err((Some(sink), e)),
    }
}

async fn copy_batches(
    args: &RunArgs,
    sink: &Sink,
    source: &Arc<Source>,
    pending: u64,
    summary: &mut Summary,
    shutdown: &CancellationToken,
) -> Result<Outcome, String> {
    let bar = progress_bar(pending, args.no_progress);
    let mut decoder = Decoder::new(args.env).map_err(|e| e.to_string())?;
    let schemas =
        SchemaLookup::new(Registry::new(&args.registry), tokio::runtime::Handle::current(), args.retry_for.into());
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(2);
    let stop_reader = shutdown.child_token();
    let reader = {
        let (source, stop, batch_size) = (source.clone(), stop_reader.clone(), args.batch_size as usize);
        tokio::task::spawn_blocking(move || {
            source.read(&mut decoder, &schemas, batch_size, &batch_tx, &stop, STALL_AFTER)
        })
    };
    let (written_tx, written_rx) = mpsc::channel::<Written>(8);
    let run_id = summary.run_id;
    let writer = write_rows(sink, batch_rx, written_tx, usize::from(args.concurrency), run_id, shutdown);
    let finisher = finish_batches(args, sink, source, written_rx, summary, &bar);
    let (written, finished) = tokio::join!(writer, finisher);
    stop_reader.cancel();
    let read = reader.await.map_err(|e| format!("kafka reader failed: {e}"))?;
    bar.finish_and_clear();
    // The finisher's error is the root cause when both failed (the writer then only saw it stop).
    finished?;
    written?;
    match read {
        Err(e) => Err(e.to_string()),
        Ok(_) if shutdown.is_cancelled() => Ok(Outcome::Interrupted),
        Ok(true) => Ok(Outcome::Ok),
        Ok(false) => Err("the kafka reader stopped before the end offsets".into()),
    }
}

/// A batch whose rows are all written, on its way to be finished and committed.
#[derive(Debug)]
struct Written {
    number: u64,
    batch: Arc<Batch>,
    rows: TableCounts,
    remaining: usize,
}

/// Writes the rows of batch after batch as one stream with at most `concurrency` writes in
/// flight (no pause between batches), and hands each batch on, in order, once all its rows and
/// all rows of earlier batches are written.
async fn write_rows(
    sink: &Sink,
    mut batch_rx: mpsc::Receiver<Batch>,
    written_tx: mpsc::Sender<Written>,
    concurrency: usize,
    run_id: uuid::Uuid,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let mut in_flight = FuturesUnordered::new();
    let mut queue: VecDeque<Written> = VecDeque::new();
    let mut current: Option<Submitting> = None;
    let (mut numbers, mut more) = (0_u64, true);
    loop {
        while in_flight.len() < concurrency {
            if let Some((number, batch, jobs, next)) = current.as_mut() {
                if let Some(&(i, table)) = jobs.get(*next) {
                    *next += 1;
                    in_flight.push(write_job(sink, batch.clone(), i, table, *number, run_id));
                    continue;
                }
                current = None;
            }
            if !more || shutdown.is_cancelled() {
                break;
            }
            let batch = if in_flight.is_empty() {
                tokio::select! {
                    b = batch_rx.recv() => b,
                    () = shutdown.cancelled() => None,
                }
            } else {
                match batch_rx.try_recv() {
                    Ok(b) => Some(b),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            let Some(batch) = batch else {
                more = false;
                break;
            };
            numbers += 1;
            let jobs: Vec<(usize, Table)> = batch
                .items
                .iter()
                .enumerate()
                .flat_map(|(i, item)| item.tables().iter().map(move |t| (i, *t)))
                .collect();
            let batch = Arc::new(batch);
            queue.push_back(Written {
                number: numbers,
                batch: batch.clone(),
                rows: TableCounts::new(),
                remaining: jobs.len(),
            });
            current = Some((numbers, batch, jobs, 0));
        }
        if in_flight.is_empty() && current.is_none() && queue.iter().all(|w| w.remaining == 0) {
            release(&mut queue, &written_tx).await?;
            if !more || shutdown.is_cancelled() {
                return Ok(());
            }
            continue;
        }
        if let Some(done) = in_flight.next().await {
            let (number, table) = done.map_err(|e| {
                format!("{e}; the offsets of the batches in flight were not committed, the next run copies them again")
            })?;
            if let Some(w) = queue.iter_mut().find(|w| w.number == number) {
                w.remaining -= 1;
                *w.rows.entry(table).or_default() += 1;
            }
        }
        release(&mut queue, &written_tx).await?;
    }
}

/// The batch being submitted: its number, its jobs (item index, table), how many are submitted.
type Submitting = (u64, Arc<Batch>, Vec<(usize, Table)>, usize);

async fn write_job(
    sink: &Sink,
    batch: Arc<Batch>,
    index: usize,
    table: Table,
    number: u64,
    run_id: uuid::Uuid,
) -> Result<(u64, Table), SinkError> {
    sink.write_row(&batch.items[index], table, run_id).await.map(|()| (number, table))
}

/// Hands on the leading batches whose rows are all written.
async fn release(queue: &mut VecDeque<Written>, written_tx: &mpsc::Sender<Written>) -> Result<(), String> {
    while queue.front().is_some_and(|w| w.remaining == 0) {
        if let Some(w) = queue.pop_front() {
            written_tx.send(w).await.map_err(|_| "the batch finisher stopped".to_string())?;
        }
    }
    Ok(())
}

/// For each written batch, in order: the episode summaries, then the offset commit, then the
/// accounting. Nothing of a batch is committed before all of it is durable.
async fn finish_batches(
    args: &RunArgs,
    sink: &Sink,
    source: &Arc<Source>,
    mut written_rx: mpsc::Receiver<Written>,
    summary: &mut Summary,
    bar: &ProgressBar,
) -> Result<(), String> {
    let mut tracker = EpisodeTracker::default();
    while let Some(w) = written_rx.recv().await {
        let Written { number, batch, mut rows, .. } = w;
        let episodes = sink
            .write_episodes(tracker.observe(&batch.items))
            .await
            .map_err(|e| format!("{e}; the offsets of this batch were not committed, the next run copies it again"))?;
        if episodes > 0 {
            rows.insert(Table::EpisodesByUser, episodes);
        }
        if args.abort_before_commit == Some(number) {
            eprintln!("archiver: aborting after writing batch {number}, before committing it (test hook)");
            std::process::abort();
        }
        let next = batch.last.iter().map(|(k, last)| (k.clone(), last + 1)).collect();
        let committer = source.clone();
        tokio::task::spawn_blocking(move || committer.commit(&next))
            .await
            .map_err(|e| format!("commit task failed: {e}"))?
            .map_err(|e| format!("{e}; the rows are written and the next run re-copies them idempotently"))?;
        account(summary, &batch, &rows);
        bar.set_position(summary.total_messages());
        tracing::debug!(batch = number, messages = batch.items.len(), "batch written and committed");
    }
    Ok(())
}

/// Adds a durable, committed batch to the summary.
fn account(summary: &mut Summary, batch: &Batch, rows: &TableCounts) {
    let mut first: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for item in &batch.items {
        let pos = item.pos();
        *summary.messages.entry(pos.topic.to_string()).or_default() += 1;
        first.entry((&pos.topic, pos.partition)).or_insert(pos.offset);
        if matches!(item, Item::Rejected { .. }) {
            summary.rejected += 1;
            tracing::warn!(topic = %pos.topic, partition = pos.partition, offset = pos.offset,
                "message rejected: not decodable, written to the rejected table");
        }
    }
    for (table, n) in rows {
        *summary.rows.entry(table.name().to_string()).or_default() += n;
    }
    for ((topic, partition), last) in &batch.last {
        let range = summary.offsets.entry(format!("{topic}/{partition}")).or_insert([i64::MAX, 0]);
        let start = first.get(&(&**topic, *partition)).copied().unwrap_or(*last);
        *range = [range[0].min(start), range[1].max(last + 1)];
    }
}

async fn record_end(sink: &Sink, summary: &Summary) {
    // Best effort: a run that failed because Cassandra is down cannot record that in Cassandra.
    let row = summary.run_row(&host_name());
    match tokio::time::timeout(Duration::from_secs(15), sink.record_run(&row)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot record the run in archive_runs"),
        Err(_) => tracing::warn!("cannot record the run in archive_runs: timed out"),
    }
}

fn progress_bar(total: u64, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} messages ({per_sec}, eta {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
