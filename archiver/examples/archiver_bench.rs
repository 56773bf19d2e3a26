//! The archiver benchmark's two helpers (`scripts/bench_archiver.sh` runs them):
//!
//! - `produce`: writes N realistic messages (half states, half actions, sizes as env-svc and
//!   agent-svc make them, re-sent states and duplicate actions included) to two topics, fast.
//! - `baseline`: regenerates the same messages in memory (same seed), builds the same rows the
//!   archiver writes and times a plain loop of prepared inserts at the same concurrency against
//!   the same node: the ceiling the archiver is compared with.
//!
//! Both print one JSON object on stdout.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use archiver::{
    rows::{summarize_episode, ArchivedState, Item, Position, StepReadBack, KIND_STATE},
    sink::{self, Retry, Sink},
    CassandraArgs,
};
use clap::{Parser, Subcommand};
use common::{
    kafka::KafkaArgs,
    registry::{Registry, RegistryArgs},
};
use futures::StreamExt;
use protocol::{wire, ActionMsg, Envelope, ProductObs, StateMsg, StepState, SCHEMA_VERSION};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{BaseProducer, BaseRecord, Producer},
};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Produce N synthetic messages to the two topics (created when absent).
    Produce {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        gen: GenArgs,
        /// State topic.
        #[arg(long)]
        state_topic: String,
        /// Action topic.
        #[arg(long)]
        action_topic: String,
        /// Partitions of created topics.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Where the two topics' schemas are registered (the archiver decodes each record
        /// against the schema its id names, registered under its topic's subject).
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Time a plain loop of prepared inserts of the same rows into a fresh keyspace.
    Baseline {
        #[command(flatten)]
        cassandra: CassandraArgs,
        #[command(flatten)]
        gen: GenArgs,
        /// Inserts in flight at once (use the archiver's --concurrency).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct GenArgs {
    /// Messages to generate, half states and half actions.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Seed: the same seed gives the same messages.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const WORDS: &[&str] = &[
    "cotton", "dress", "shirt", "denim", "jacket", "summer", "casual", "slim", "fit", "sleeve", "hoodie", "pajamas",
    "leather", "wool", "sneakers", "sandals", "classic", "vintage", "stretch", "pocket", "buttons", "zipper",
];
const SIZES: &[&str] = &["X-Small", "Small", "Medium", "Large", "X-Large", "XX-Large", "Small (4-6)", "Medium (8-10)"];
const COLORS: &[&str] = &["Black", "Navy", "White", "Red", "Heather Grey", "Multicolor", "Olive", "Blush"];
const N_ACTIONS: u32 = 1289;

/// One generated message, in order of production.
enum Msg {
    State(Box<StateMsg>),
    Action(ActionMsg),
}

fn pick(rng: &mut StdRng, from: &[&str], n: usize) -> Vec<String> {
    (0..n).map(|_| from[rng.random_range(0..from.len())].to_string()).collect()
}

fn product(rng: &mut StdRng) -> ProductObs {
    let index = rng.random_range(0..N_ACTIONS);
    let (n_sizes, n_colors) = (rng.random_range(1..6), rng.random_range(1..4));
    let sizes = pick(rng, SIZES, n_sizes);
    let colors = pick(rng, COLORS, n_colors);
    let keywords = pick(rng, WORDS, 8);
    let title = pick(rng, WORDS, 6).join(" ");
    let text = format!(
        "Brand{} {title} | sizes: {} | colors: {} | keywords: {}",
        index % 97,
        sizes.join(", "),
        colors.join(", "),
        keywords.join(", ")
    );
    ProductObs { asin: format!("B0{index:08}"), index, text, sizes, colors, keywords }
}

/// Messages of whole episodes until `n` (half states, half actions): every step a state then
/// its action; now and then a re-sent state (and a second answer to it), a duplicate action.
fn generate(seed: u64, n: u64, mut emit: impl FnMut(Msg)) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut produced, mut episode) = (0_u64, 0_u64);
    let mut ts = 1_767_225_600_000_i64; // 2026-01-01, one message per millisecond after
    while produced < n {
        let steps = rng.random_range(5..=50_u32);
        let id = format!("fashion-v1/bench{seed}#{episode:06}");
        let user = format!("A{:013X}", rng.random::<u64>() >> 12);
        for step in 0..=steps {
            let last = step == steps;
            let resends = u32::from(!last && rng.random_bool(0.03));
            for attempt in 0..=resends {
                ts += 1;
                let state = StateMsg {
                    schema_version: SCHEMA_VERSION,
                    env_id: format!("fashion-v1/bench{seed}"),
                    episode_id: id.clone(),
                    step,
                    user_id: user.clone(),
                    n_actions: N_ACTIONS,
                    catalog: None,
                    accept_prob: None,
                    observation: product(&mut rng),
                    last_action: None,
                    reward: if step > 0 && rng.random_bool(0.16) { 1.0 } else { 0.0 },
                    next_item_hit: false,
                    terminated: last && steps < 50,
                    truncated: last && steps == 50,
                    attempt,
                    ts_ms: ts,
                };
                emit(Msg::State(Box::new(state)));
                produced += 1;
            }
            if last {
                // Balance states and actions: the terminal state has no answer, so the agent
                // answers step 0 twice (a re-delivered state), as happens after a rebalance.
                ts += 1;
                emit(Msg::Action(action(&id, 0, ts, &mut rng, "agent-1")));
                produced += 1;
                break;
            }
            for replica in 0..=resends {
                ts += 1;
                emit(Msg::Action(action(&id, step, ts, &mut rng, if replica == 0 { "agent-0" } else { "agent-1" })));
                produced += 1;
            }
            if produced >= n {
                break;
            }
        }
        episode += 1;
    }
}

fn action(id: &str, step: u32, ts_ms: i64, rng: &mut StdRng, replica: &str) -> ActionMsg {
    let greedy = rng.random_bool(0.9);
    ActionMsg {
        schema_version: SCHEMA_VERSION,
        env_id: id.split('#').next().unwrap_or(id).to_string(),
        episode_id: id.to_string(),
        step,
        action: rng.random_range(0..N_ACTIONS),
        ps: if greedy { 0.9 + 0.1 / f64::from(N_ACTIONS) } else { 0.1 / f64::from(N_ACTIONS) },
        policy: "popularity".into(),
        replica_id: replica.into(),
        model_version: None,
        ps_all: None,
        ts_ms,
    }
}

async fn create_topics(kafka: &KafkaArgs, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka.client_config().create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(3)).set("min.insync.replicas", "2"))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for r in admin.create_topics(&new, &opts).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("cannot create {t}: {e}"),
        }
    }
    Ok(())
}

/// Writes the generated messages, framed with `ids` (state, action) as the registry gave them.
fn produce(
    kafka: &KafkaArgs,
    gen: &GenArgs,
    (state_topic, action_topic): (&str, &str),
    (state_id, action_id): (u32, u32),
) -> anyhow::Result<serde_json::Value> {
    let producer: BaseProducer = kafka
        .client_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .context("failed to create a producer")?;
    let start = Instant::now();
    let (mut states, mut actions, mut bytes) = (0_u64, 0_u64, 0_u64);
    let mut failed: Option<KafkaError> = None;
    generate(gen.seed, gen.messages, |msg| {
        if failed.is_some() {
            return;
        }
        let (topic, id, key, payload) = match &msg {
            Msg::State(s) => (state_topic, state_id, s.episode_id.clone(), serde_json::to_vec(s)),
            Msg::Action(a) => (action_topic, action_id, a.episode_id.clone(), serde_json::to_vec(a)),
        };
        let Ok(payload) = payload.map(|p| wire::frame(id, &p)) else { return };
        bytes += payload.len() as u64;
        if matches!(msg, Msg::State(_)) {
            states += 1;
        } else {
            actions += 1;
        }
        let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        producer.poll(Duration::ZERO);
    });
    if let Some(e) = failed {
        anyhow::bail!("produce failed: {e}");
    }
    producer.flush(Duration::from_secs(300)).context("failed to flush the producer")?;
    let secs = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({"states": states, "actions": actions, "messages": states + actions,
        "bytes": bytes, "seconds": secs, "messages_per_second": (states + actions) as f64 / secs}))
}

/// The items the archiver would decode from the produced topics, with positions that mimic
/// Kafka's (one partition per episode, offsets counted per partition).
fn items(gen: &GenArgs) -> Vec<Item> {
    let (st, at): (Arc<str>, Arc<str>) = (Arc::from("bench_state"), Arc::from("bench_action"));
    let mut offsets: BTreeMap<(bool, i32), i64> = BTreeMap::new();
    let mut out = Vec::with_capacity(usize::try_from(gen.messages).unwrap_or(0));
    let mut pos = |is_state: bool, episode_id: &str| {
        let partition = i32::try_from(episode_id.bytes().map(u32::from).sum::<u32>() % 6).unwrap_or(0);
        let o = offsets.entry((is_state, partition)).or_default();
        *o += 1;
        Position { topic: if is_state { st.clone() } else { at.clone() }, partition, offset: *o - 1 }
    };
    generate(gen.seed, gen.messages, |msg| match msg {
        Msg::State(s) => {
            let pos = pos(true, &s.episode_id);
            out.push(Item::State { pos, schema_id: 1, msg: Box::new(ArchivedState::Fashion(*s)) });
        }
        Msg::Action(a) => out.push(Item::Action { pos: pos(false, &a.episode_id), schema_id: 1, msg: a }),
    });
    out
}

async fn baseline(cassandra: &CassandraArgs, gen: &GenArgs, concurrency: usize) -> anyhow::Result<serde_json::Value> {
    let items = items(gen);
    // Episode rows as the archiver computes them, but from memory: the loop only inserts.
    let mut by_episode: BTreeMap<&str, Vec<StepReadBack>> = BTreeMap::new();
    for item in &items {
        if let Item::State { msg, .. } = item {
            by_episode.entry(msg.episode_id()).or_default().push(StepReadBack {
                step: i32::try_from(msg.step()).unwrap_or(0),
                kind: KIND_STATE.into(),
                attempt: i32::try_from(msg.attempt()).ok(),
                reward: Some(msg.reward()),
                ts_ms: msg.ts_ms(),
            });
        }
    }
    let episodes: Vec<_> = items
        .iter()
        .filter_map(Item::terminal_state)
        .map(|t| summarize_episode(t, by_episode.get(t.episode_id()).map_or(&[][..], Vec::as_slice)))
        .collect();
    let retry = Retry::new(Duration::from_secs(60));
    let session = sink::connect(cassandra, &retry).await?;
    archiver::schema::apply(&session, &cassandra.keyspace, None).await?;
    let sink = Sink::prepare(session, &cassandra.keyspace, None, concurrency, retry).await?;
    let run_id = uuid::Uuid::new_v4();
    let jobs: Vec<_> = items.iter().flat_map(|i| i.tables().iter().map(move |t| (i, *t))).collect();
    let start = Instant::now();
    let mut rows = 0_u64;
    let mut writes = futures::stream::iter(&jobs)
        .map(|(item, table)| sink.execute_plain(item, *table, run_id))
        .buffer_unordered(concurrency);
    while let Some(r) = writes.next().await {
        r.context("insert failed")?;
        rows += 1;
    }
    drop(writes);
    let mut writes =
        futures::stream::iter(&episodes).map(|e| sink.execute_plain_episode(e)).buffer_unordered(concurrency);
    while let Some(r) = writes.next().await {
        r.context("insert failed")?;
        rows += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(serde_json::json!({"messages": items.len(), "rows": rows, "seconds": secs,
        "rows_per_second": rows as f64 / secs, "concurrency": concurrency}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let out = match cli.command {
        Command::Produce { kafka, gen, state_topic, action_topic, partitions, registry } => {
            use protocol::{schema::schema_of, topics::value_subject};
            create_topics(&kafka, &[&state_topic, &action_topic], partitions).await?;
            let registry = Registry::new(&registry);
            let state_id = registry.register(&value_subject(&state_topic), &schema_of::<StateMsg>()).await?;
            let action_id = registry.register(&value_subject(&action_topic), &schema_of::<ActionMsg>()).await?;
            let ids = (state_id, action_id);
            tokio::task::spawn_blocking(move || produce(&kafka, &gen, (&state_topic, &action_topic), ids)).await??
        }
        Command::Baseline { cassandra, gen, concurrency } => baseline(&cassandra, &gen, concurrency).await?,
    };
    println!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_messages_are_valid_half_states_and_reproducible() {
        let (mut states, mut actions) = (Vec::new(), Vec::new());
        generate(7, 2_000, |m| match m {
            Msg::State(s) => states.push(*s),
            Msg::Action(a) => actions.push(a),
        });
        let total = (states.len() + actions.len()) as i64;
        assert!((2_000..2_060).contains(&total), "{total}");
        assert!((states.len() as i64 - actions.len() as i64).abs() <= 60, "{} vs {}", states.len(), actions.len());
        let sc: protocol::Codec<StateMsg> = protocol::Codec::new(1).unwrap_or_else(|e| panic!("{e}"));
        let ac: protocol::Codec<ActionMsg> = protocol::Codec::new(1).unwrap_or_else(|e| panic!("{e}"));
        assert!(states.iter().all(|s| sc.encode(s).is_ok()) && actions.iter().all(|a| ac.encode(a).is_ok()));
        let mut again = 0;
        generate(7, 2_000, |_| again += 1);
        assert_eq!(again, total);
    }
}
