//! From Kafka records to archive rows: decoding (validated against each record's writer schema,
//! which the reader fetches from the registry beforehand: [`Decoder::missing_schema`]), the rows
//! each message becomes and the summary of a finished episode. Pure: no I/O, so all of it is
//! unit-tested here.
//!
//! Invariant: every row of a message carries the message's Kafka identity (topic, partition,
//! offset) in its primary key and is a function of the message alone, so copying a message twice
//! writes the same rows with the same values.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
};

use protocol::{
    topics::{dead_letter as dlq, value_subject},
    wire, ActionMsg, Codec, Envelope, ProtocolError, RecoStateMsg, StateMsg, StepState, WriterSchema, WriterSchemas,
};
use scylla::{
    value::{CqlDate, CqlTimestamp, MaybeUnset},
    SerializeRow,
};

use common::{kafka::EnvKind, link::Raw};

use crate::dates::{cql_date, cql_ts};

/// An archived state of either environment: what the state topic of the run's `--env`
/// carries, and what [`crate::readback`] reads back.
#[derive(Debug, Clone, PartialEq)]
pub enum ArchivedState {
    /// An Amazon Fashion state (`fashion_state`).
    Fashion(StateMsg),
    /// A RecoGym state (`recogym_state`).
    Recogym(RecoStateMsg),
}

/// `$e` with `$m` bound to the message, whichever the environment.
macro_rules! either {
    ($s:expr, $m:ident => $e:expr) => {
        match $s {
            ArchivedState::Fashion($m) => $e,
            ArchivedState::Recogym($m) => $e,
        }
    };
}

impl ArchivedState {
    /// How many times the step was re-published after an action timeout (0 on first send).
    pub fn attempt(&self) -> u32 {
        either!(self, m => m.attempt)
    }

    /// The user, as the archive's `user_id` column holds it (RecoGym's number in decimal).
    pub fn user_id(&self) -> Cow<'_, str> {
        match self {
            ArchivedState::Fashion(m) => Cow::Borrowed(&m.user_id),
            ArchivedState::Recogym(m) => Cow::Owned(m.user_id.to_string()),
        }
    }

    /// Whether the episode ended with this state.
    pub fn is_terminal(&self) -> bool {
        self.terminated() || self.truncated()
    }
}

impl Envelope for ArchivedState {
    fn env_id(&self) -> &str {
        either!(self, m => &m.env_id)
    }
    fn episode_id(&self) -> &str {
        either!(self, m => &m.episode_id)
    }
    fn step(&self) -> u32 {
        either!(self, m => m.step)
    }
}

impl StepState for ArchivedState {
    fn n_actions(&self) -> u32 {
        either!(self, m => m.n_actions)
    }
    fn reward(&self) -> f64 {
        either!(self, m => m.reward)
    }
    fn terminated(&self) -> bool {
        either!(self, m => m.terminated)
    }
    fn truncated(&self) -> bool {
        either!(self, m => m.truncated)
    }
    fn ts_ms(&self) -> i64 {
        either!(self, m => m.ts_ms)
    }
    fn mark_resent(&mut self, ts_ms: i64) {
        either!(self, m => m.mark_resent(ts_ms))
    }
    fn product_index(&self) -> u32 {
        either!(self, m => m.product_index())
    }
    fn last_action(&self) -> Option<u32> {
        either!(self, m => m.last_action)
    }
}

/// What a topic carries, which decides how its records are decoded and where they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// State values: `StateMsg` (fashion) or `RecoStateMsg` (recogym), by the run's `--env`.
    State,
    /// `ActionMsg` values.
    Action,
    /// Records the services refused, with `dlq.*` headers.
    DeadLetter,
}

/// Where a message lives in Kafka: its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A record turned into what the archive stores.
#[derive(Debug, Clone)]
pub enum Item {
    /// A decoded state.
    State {
        /// Kafka identity.
        pos: Position,
        /// Registry id of the writer's schema.
        schema_id: u32,
        /// The message.
        msg: Box<ArchivedState>,
    },
    /// A decoded action.
    Action {
        /// Kafka identity.
        pos: Position,
        /// Registry id of the writer's schema.
        schema_id: u32,
        /// The message.
        msg: ActionMsg,
    },
    /// A record of the state or action topic that could not be decoded.
    Rejected {
        /// Kafka identity.
        pos: Position,
        /// Why, in words.
        reason: String,
        /// Original key.
        key: Option<Vec<u8>>,
        /// Original value bytes.
        payload: Vec<u8>,
        /// Kafka timestamp.
        kafka_ts: Option<i64>,
    },
    /// A record of the dead-letter topic.
    DeadLetter {
        /// Kafka identity (in the dead-letter topic).
        pos: Position,
        /// Kafka timestamp (or 0 when the broker gave none).
        ts: i64,
        /// Original key.
        key: Option<Vec<u8>>,
        /// Original value bytes.
        payload: Vec<u8>,
        /// `dlq.reason`.
        reason: Option<String>,
        /// `dlq.source.topic`.
        source_topic: Option<String>,
        /// `dlq.source.partition`.
        source_partition: Option<i32>,
        /// `dlq.source.offset`.
        source_offset: Option<i64>,
    },
}

impl Item {
    /// The Kafka identity of the record.
    pub fn pos(&self) -> &Position {
        match self {
            Item::State { pos, .. }
            | Item::Action { pos, .. }
            | Item::Rejected { pos, .. }
            | Item::DeadLetter { pos, .. } => pos,
        }
    }

    /// The tables this record is written to, one row each.
    pub fn tables(&self) -> &'static [Table] {
        match self {
            Item::State { .. } => &[Table::Steps, Table::StatesByDay],
            Item::Action { .. } => &[Table::Steps, Table::ActionsByDay],
            Item::Rejected { .. } => &[Table::Rejected],
            Item::DeadLetter { .. } => &[Table::DeadLetters],
        }
    }

    /// The state, when this is a terminal state (its episode is finished).
    pub fn terminal_state(&self) -> Option<&ArchivedState> {
        match self {
            Item::State { msg, .. } if msg.is_terminal() => Some(msg),
            _ => None,
        }
    }
}

/// The archive tables the copy writes (the audit table `archive_runs` aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Every message of an episode, in step order.
    Steps,
    /// States by UTC day.
    StatesByDay,
    /// Actions by UTC day.
    ActionsByDay,
    /// One row per finished episode, by user.
    EpisodesByUser,
    /// Undecodable messages.
    Rejected,
    /// The dead-letter topic.
    DeadLetters,
}

impl Table {
    /// Every table, in summary order.
    pub const ALL: [Table; 6] = [
        Table::Steps,
        Table::StatesByDay,
        Table::ActionsByDay,
        Table::EpisodesByUser,
        Table::Rejected,
        Table::DeadLetters,
    ];

    /// The CQL table name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Steps => "steps",
            Table::StatesByDay => "states_by_day",
            Table::ActionsByDay => "actions_by_day",
            Table::EpisodesByUser => "episodes_by_user",
            Table::Rejected => "rejected",
            Table::DeadLetters => "dead_letters",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The codec of the state topic of one environment.
#[derive(Debug)]
enum StateCodec {
    Fashion(Codec<StateMsg>),
    Recogym(Codec<RecoStateMsg>),
}

/// Decodes records of the state and action topics with the protocol's codecs, each against the
/// schema it was written with, which must be registered under its topic's subject
/// (`<topic>-value`). Holds every writer schema learned so far, and the ids found unusable.
#[derive(Debug)]
pub struct Decoder {
    states: StateCodec,
    actions: Codec<ActionMsg>,
    writers: WriterSchemas,
    /// Ids the registry does not know, or whose schema is unusable, with the reason.
    refused: HashMap<u32, String>,
}

impl Decoder {
    /// Compiles the schemas of `env`'s states and of actions; knows no writer schema yet.
    pub fn new(env: EnvKind) -> Result<Self, ProtocolError> {
        // The id only matters for encoding; decoding reads the writer's id from each frame.
        let states = match env {
            EnvKind::Fashion => StateCodec::Fashion(Codec::new(0)?),
            EnvKind::Recogym => StateCodec::Recogym(Codec::new(0)?),
        };
        Ok(Self { states, actions: Codec::new(0)?, writers: WriterSchemas::new(), refused: HashMap::new() })
    }

    /// The schema id of `payload`, a record of a topic of `role`, when its writer schema must be
    /// looked up before [`Self::decode`] (framed, and the id neither learned nor refused yet).
    pub fn missing_schema(&self, role: Role, payload: Option<&[u8]>) -> Option<u32> {
        if role == Role::DeadLetter {
            return None;
        }
        let (id, _) = wire::unframe(payload?).ok()?;
        (self.writers.get(id).is_none() && !self.refused.contains_key(&id)).then_some(id)
    }

    /// Records what the registry said about `id`: its schema, or why records framed with it
    /// can never be decoded (unknown id, unusable schema).
    pub fn learn(&mut self, id: u32, found: Result<WriterSchema, ProtocolError>) {
        match found {
            Ok(schema) => {
                self.writers.insert(schema);
            }
            Err(reason) => {
                self.refused.insert(id, reason.to_string());
            }
        }
    }

    /// Turns a record of `topic` (the name shared by its records) into an item; a record that
    /// cannot be decoded becomes `Item::Rejected`. A framed record whose id was never
    /// [learned](Self::learn) is rejected as unknown.
    pub fn decode(&self, role: Role, topic: &Arc<str>, raw: Raw) -> Item {
        let pos = Position { topic: topic.clone(), partition: raw.partition, offset: raw.offset };
        if role == Role::DeadLetter {
            let header = |name: &str| raw.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
            return Item::DeadLetter {
                pos,
                ts: raw.timestamp_ms.unwrap_or(0),
                key: raw.key,
                payload: raw.payload.unwrap_or_default(),
                reason: header(dlq::REASON),
                source_topic: header(dlq::SOURCE_TOPIC),
                source_partition: header(dlq::SOURCE_PARTITION).and_then(|v| v.parse().ok()),
                source_offset: header(dlq::SOURCE_OFFSET).and_then(|v| v.parse().ok()),
            };
        }
        let Some(payload) = raw.payload else {
            let reason = "null value (a tombstone), not a message".to_string();
            return Item::Rejected { pos, reason, key: raw.key, payload: Vec::new(), kafka_ts: raw.timestamp_ms };
        };
        let subject = value_subject(&pos.topic);
        let refused = wire::unframe(&payload).ok().and_then(|(id, _)| self.refused.get(&id));
        let decoded: Result<Item, String> = match (refused, role) {
            (Some(reason), _) => Err(reason.clone()),
            (None, Role::State) => match &self.states {
                StateCodec::Fashion(c) => c
                    .decode_from(&payload, &self.writers, &subject)
                    .map(|d| (d.schema_id, ArchivedState::Fashion(d.msg))),
                StateCodec::Recogym(c) => c
                    .decode_from(&payload, &self.writers, &subject)
                    .map(|d| (d.schema_id, ArchivedState::Recogym(d.msg))),
            }
            .map(|(schema_id, msg)| Item::State { pos: pos.clone(), schema_id, msg: Box::new(msg) })
            .map_err(|e| e.to_string()),
            (None, _) => self
                .actions
                .decode_from(&payload, &self.writers, &subject)
                .map(|d| Item::Action { pos: pos.clone(), schema_id: d.schema_id, msg: d.msg })
                .map_err(|e| e.to_string()),
        };
        decoded.unwrap_or_else(|reason| Item::Rejected {
            pos,
            reason,
            key: raw.key,
            payload,
            kafka_ts: raw.timestamp_ms,
        })
    }
}

fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The state columns shared by `steps` and `states_by_day`, of either environment. The columns
/// of the other environment, and every absent optional value, are left unset: never null, which
/// would write a tombstone.
#[derive(Debug, SerializeRow)]
pub struct StateCols<'a> {
    kafka_topic: &'a str,
    kafka_partition: i32,
    kafka_offset: i64,
    day: CqlDate,
    ts: CqlTimestamp,
    episode_id: &'a str,
    step: i32,
    env_id: &'a str,
    schema_id: i64,
    schema_version: i32,
    user_id: Cow<'a, str>,
    attempt: i32,
    n_actions: i32,
    product_asin: MaybeUnset<&'a str>,
    product_index: MaybeUnset<i32>,
    product_text: MaybeUnset<&'a str>,
    sizes: MaybeUnset<&'a [String]>,
    colors: MaybeUnset<&'a [String]>,
    keywords: MaybeUnset<&'a [String]>,
    reward: f64,
    next_item_hit: MaybeUnset<bool>,
    terminated: bool,
    truncated: bool,
    catalog: MaybeUnset<&'a str>,
    last_action: MaybeUnset<i32>,
    accept_prob: MaybeUnset<f64>,
    user_time: MaybeUnset<i64>,
    organic: MaybeUnset<Vec<(i64, i32)>>,
    ps_asked: MaybeUnset<bool>,
}

impl<'a> StateCols<'a> {
    /// The columns of a state message.
    pub fn new(pos: &'a Position, schema_id: u32, state: &'a ArchivedState) -> Self {
        let mut cols = Self {
            kafka_topic: &pos.topic,
            kafka_partition: pos.partition,
            kafka_offset: pos.offset,
            day: cql_date(state.ts_ms()),
            ts: cql_ts(state.ts_ms()),
            episode_id: state.episode_id(),
            step: int(state.step()),
            env_id: state.env_id(),
            schema_id: i64::from(schema_id),
            schema_version: int(either!(state, m => m.schema_version)),
            user_id: state.user_id(),
            attempt: int(state.attempt()),
            n_actions: int(state.n_actions()),
            product_asin: MaybeUnset::Unset,
            product_index: MaybeUnset::Unset,
            product_text: MaybeUnset::Unset,
            sizes: MaybeUnset::Unset,
            colors: MaybeUnset::Unset,
            keywords: MaybeUnset::Unset,
            reward: state.reward(),
            next_item_hit: MaybeUnset::Unset,
            terminated: state.terminated(),
            truncated: state.truncated(),
            catalog: MaybeUnset::Unset,
            last_action: unset_if_none(state.last_action().map(int)),
            accept_prob: MaybeUnset::Unset,
            user_time: MaybeUnset::Unset,
            organic: MaybeUnset::Unset,
            ps_asked: MaybeUnset::Unset,
        };
        match state {
            ArchivedState::Fashion(m) => {
                let o = &m.observation;
                cols.product_asin = MaybeUnset::Set(&o.asin);
                cols.product_index = MaybeUnset::Set(int(o.index));
                cols.product_text = MaybeUnset::Set(&o.text);
                cols.sizes = MaybeUnset::Set(&o.sizes);
                cols.colors = MaybeUnset::Set(&o.colors);
                cols.keywords = MaybeUnset::Set(&o.keywords);
                cols.next_item_hit = MaybeUnset::Set(m.next_item_hit);
                cols.catalog = unset_if_none(m.catalog.as_deref());
                cols.accept_prob = unset_if_none(m.accept_prob);
            }
            ArchivedState::Recogym(m) => {
                cols.product_index = unset_if_none(m.organic.last().map(|v| int(v.product)));
                cols.user_time = MaybeUnset::Set(big(m.time));
                cols.organic = MaybeUnset::Set(m.organic.iter().map(|v| (big(v.t), int(v.product))).collect());
                cols.ps_asked = MaybeUnset::Set(m.ps_all);
            }
        }
        cols
    }
}

/// A state's row in `steps`: its columns plus `kind = 'state'`.
#[derive(Debug, SerializeRow)]
pub struct StepStateRow<'a> {
    kind: &'static str,
    #[scylla(flatten)]
    cols: StateCols<'a>,
}

impl<'a> StepStateRow<'a> {
    /// Wraps a state's columns.
    pub fn new(cols: StateCols<'a>) -> Self {
        Self { kind: KIND_STATE, cols }
    }
}

/// `kind` of a state row in `steps`; sorts after `action`, hence `kind DESC` in the table.
pub const KIND_STATE: &str = "state";
/// `kind` of an action row in `steps`.
pub const KIND_ACTION: &str = "action";

/// The action columns shared by `steps` and `actions_by_day`.
#[derive(Debug, SerializeRow)]
pub struct ActionCols<'a> {
    kafka_topic: &'a str,
    kafka_partition: i32,
    kafka_offset: i64,
    day: CqlDate,
    ts: CqlTimestamp,
    episode_id: &'a str,
    step: i32,
    env_id: &'a str,
    schema_id: i64,
    schema_version: i32,
    action: i32,
    ps: f64,
    policy: &'a str,
    replica_id: &'a str,
    // Unset (not null) when absent: a null would write a tombstone.
    model_version: MaybeUnset<i64>,
    ps_all: MaybeUnset<&'a [f64]>,
}

impl<'a> ActionCols<'a> {
    /// The columns of an action message.
    pub fn new(pos: &'a Position, schema_id: u32, m: &'a ActionMsg) -> Self {
        Self {
            kafka_topic: &pos.topic,
            kafka_partition: pos.partition,
            kafka_offset: pos.offset,
            day: cql_date(m.ts_ms),
            ts: cql_ts(m.ts_ms),
            episode_id: &m.episode_id,
            step: int(m.step),
            env_id: &m.env_id,
            schema_id: i64::from(schema_id),
            schema_version: int(m.schema_version),
            action: int(m.action),
            ps: m.ps,
            policy: &m.policy,
            replica_id: &m.replica_id,
            model_version: unset_if_none(m.model_version.map(big)),
            ps_all: unset_if_none(m.ps_all.as_deref()),
        }
    }
}

/// An action's row in `steps`: its columns plus `kind = 'action'`.
#[derive(Debug, SerializeRow)]
pub struct StepActionRow<'a> {
    kind: &'static str,
    #[scylla(flatten)]
    cols: ActionCols<'a>,
}

impl<'a> StepActionRow<'a> {
    /// Wraps an action's columns.
    pub fn new(cols: ActionCols<'a>) -> Self {
        Self { kind: KIND_ACTION, cols }
    }
}

/// A row of `rejected`.
#[derive(Debug, SerializeRow)]
pub struct RejectedRow<'a> {
    kafka_topic: &'a str,
    kafka_partition: i32,
    kafka_offset: i64,
    reason: &'a str,
    kafka_key: MaybeUnset<&'a [u8]>,
    payload: &'a [u8],
    kafka_ts: MaybeUnset<CqlTimestamp>,
    run_id: uuid::Uuid,
}

/// A row of `dead_letters`.
#[derive(Debug, SerializeRow)]
pub struct DeadLetterRow<'a> {
    day: CqlDate,
    ts: CqlTimestamp,
    kafka_topic: &'a str,
    kafka_partition: i32,
    kafka_offset: i64,
    reason: MaybeUnset<&'a str>,
    source_topic: MaybeUnset<&'a str>,
    source_partition: MaybeUnset<i32>,
    source_offset: MaybeUnset<i64>,
    kafka_key: MaybeUnset<&'a [u8]>,
    payload: &'a [u8],
}

fn unset_if_none<T>(v: Option<T>) -> MaybeUnset<T> {
    v.map_or(MaybeUnset::Unset, MaybeUnset::Set)
}

/// One row to write, borrowing from its item.
#[derive(Debug)]
pub enum Row<'a> {
    /// `steps`, a state.
    StepState(StepStateRow<'a>),
    /// `steps`, an action.
    StepAction(StepActionRow<'a>),
    /// `states_by_day`.
    StateByDay(StateCols<'a>),
    /// `actions_by_day`.
    ActionByDay(ActionCols<'a>),
    /// `rejected`.
    Rejected(RejectedRow<'a>),
    /// `dead_letters`.
    DeadLetter(DeadLetterRow<'a>),
}

/// The row of `item` in `table` (one of `item.tables()`); `run_id` marks rejected rows.
pub fn row(item: &Item, table: Table, run_id: uuid::Uuid) -> Option<Row<'_>> {
    Some(match (item, table) {
        (Item::State { pos, schema_id, msg }, Table::Steps) => {
            Row::StepState(StepStateRow::new(StateCols::new(pos, *schema_id, msg)))
        }
        (Item::State { pos, schema_id, msg }, Table::StatesByDay) => {
            Row::StateByDay(StateCols::new(pos, *schema_id, msg))
        }
        (Item::Action { pos, schema_id, msg }, Table::Steps) => {
            Row::StepAction(StepActionRow::new(ActionCols::new(pos, *schema_id, msg)))
        }
        (Item::Action { pos, schema_id, msg }, Table::ActionsByDay) => {
            Row::ActionByDay(ActionCols::new(pos, *schema_id, msg))
        }
        (Item::Rejected { pos, reason, key, payload, kafka_ts }, Table::Rejected) => Row::Rejected(RejectedRow {
            kafka_topic: &pos.topic,
            kafka_partition: pos.partition,
            kafka_offset: pos.offset,
            reason,
            kafka_key: unset_if_none(key.as_deref()),
            payload,
            kafka_ts: unset_if_none(kafka_ts.map(cql_ts)),
            run_id,
        }),
        (
            Item::DeadLetter { pos, ts, key, payload, reason, source_topic, source_partition, source_offset },
            Table::DeadLetters,
        ) => Row::DeadLetter(DeadLetterRow {
            day: cql_date(*ts),
            ts: cql_ts(*ts),
            kafka_topic: &pos.topic,
            kafka_partition: pos.partition,
            kafka_offset: pos.offset,
            reason: unset_if_none(reason.as_deref()),
            source_topic: unset_if_none(source_topic.as_deref()),
            source_partition: unset_if_none(*source_partition),
            source_offset: unset_if_none(*source_offset),
            kafka_key: unset_if_none(key.as_deref()),
            payload,
        }),
        _ => return None,
    })
}

/// A row of `steps` as read back to summarise an episode.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReadBack {
    /// Step.
    pub step: i32,
    /// `state` or `action`.
    pub kind: String,
    /// Re-send count (states).
    pub attempt: Option<i32>,
    /// Reward of the previous step's action (states).
    pub reward: Option<f64>,
    /// Production time, Unix milliseconds.
    pub ts_ms: i64,
}

/// The row of `episodes_by_user` of a finished episode.
#[derive(Debug, Clone, PartialEq, SerializeRow)]
pub struct EpisodeRow {
    /// User.
    pub user_id: String,
    /// Episode.
    pub episode_id: String,
    /// Environment and run.
    pub env_id: String,
    /// UTC day of `started_at`.
    pub start_day: CqlDate,
    /// Production time of the first state.
    pub started_at: CqlTimestamp,
    /// Production time of the terminal state.
    pub ended_at: CqlTimestamp,
    /// Actions answered: the step number of the terminal state.
    pub steps: i32,
    /// Sum of the rewards, one per step.
    pub episode_return: f64,
    /// The episode reached its natural end.
    pub terminated: bool,
    /// The step limit cut the episode.
    pub truncated: bool,
}

/// Summarises a finished episode from its terminal state and its rows in `steps` (read back
/// after they were written). A step's reward is counted once however often the state was sent.
pub fn summarize_episode(terminal: &ArchivedState, rows: &[StepReadBack]) -> EpisodeRow {
    let mut reward_of_step: BTreeMap<i32, f64> = BTreeMap::new();
    let mut started_at: Option<(i32, i64)> = None; // (attempt, ts) of the earliest step-0 state
    for r in rows.iter().filter(|r| r.kind == KIND_STATE) {
        if r.step >= 1 {
            reward_of_step.entry(r.step).or_insert(r.reward.unwrap_or(0.0));
        }
        if r.step == 0 {
            let candidate = (r.attempt.unwrap_or(0), r.ts_ms);
            started_at = Some(started_at.map_or(candidate, |c| c.min(candidate)));
        }
    }
    // The terminal state's own reward counts even if the read-back missed it.
    reward_of_step.entry(int(terminal.step())).or_insert(terminal.reward());
    reward_of_step.remove(&0);
    let end = terminal.ts_ms();
    let started = started_at.map_or_else(|| rows.iter().map(|r| r.ts_ms).min().unwrap_or(end).min(end), |(_, ts)| ts);
    EpisodeRow {
        user_id: terminal.user_id().into_owned(),
        episode_id: terminal.episode_id().to_string(),
        env_id: terminal.env_id().to_string(),
        start_day: cql_date(started),
        started_at: cql_ts(started),
        ended_at: cql_ts(end),
        steps: int(terminal.step()),
        episode_return: reward_of_step.values().sum(),
        terminated: terminal.terminated(),
        truncated: terminal.truncated(),
    }
}

/// The states of the episodes a run saw start, so that their summaries need no read-back.
///
/// Invariant: an episode is tracked only from its first state (step 0, attempt 0). All its later
/// states are on the same partition at higher offsets, up to its terminal state, so a run that
/// read its first state and its terminal state read every state in between.
#[derive(Debug, Default)]
pub struct EpisodeTracker {
    open: HashMap<String, Vec<StepReadBack>>,
}

impl EpisodeTracker {
    /// Feeds the states of the next batch, in batch order. Returns each episode that ended in
    /// the batch with its summary when this run saw all of it, or `None` when it started before
    /// this run (read it back from `steps`).
    pub fn observe<'a>(&mut self, items: &'a [Item]) -> Vec<(&'a ArchivedState, Option<EpisodeRow>)> {
        let mut ended: BTreeMap<&str, (&ArchivedState, Option<EpisodeRow>)> = BTreeMap::new();
        for item in items {
            let Item::State { msg, .. } = item else { continue };
            let msg: &ArchivedState = msg;
            if msg.step() == 0 && msg.attempt() == 0 {
                self.open.insert(msg.episode_id().to_string(), Vec::new());
            }
            if let Some(states) = self.open.get_mut(msg.episode_id()) {
                states.push(StepReadBack {
                    step: int(msg.step()),
                    kind: KIND_STATE.into(),
                    attempt: Some(int(msg.attempt())),
                    reward: Some(msg.reward()),
                    ts_ms: msg.ts_ms(),
                });
            }
            if msg.is_terminal() {
                let seen = self.open.remove(msg.episode_id()).map(|states| summarize_episode(msg, &states));
                ended.insert(msg.episode_id(), (msg, seen));
            }
        }
        ended.into_values().collect()
    }

    /// Episodes started and not yet ended.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use protocol::{messages::examples, wire};

    use super::*;

    fn raw(topic: &str, offset: i64, payload: Option<Vec<u8>>) -> Raw {
        Raw {
            topic: topic.into(),
            partition: 2,
            offset,
            key: Some(b"ep-0001".to_vec()),
            payload,
            timestamp_ms: Some(1_700_000_000_000),
            headers: Vec::new(),
        }
    }

    /// A decoder that learned what a registry would say of ids 1 and 3 (actions of topic `a`),
    /// 9 (states of topic `s`) and 8 (unknown).
    fn decoder() -> Decoder {
        let mut d = Decoder::new(EnvKind::Fashion).unwrap_or_else(|e| panic!("{e}"));
        for id in [1, 3] {
            d.learn(id, WriterSchema::local::<ActionMsg>(id, "a-value"));
        }
        d.learn(9, WriterSchema::local::<StateMsg>(9, "s-value"));
        d.learn(8, Err(ProtocolError::UnknownSchemaId(8)));
        d
    }

    #[test]
    fn only_framed_records_of_ids_not_yet_looked_up_need_a_lookup() {
        let d = decoder();
        let framed = |id| Some(wire::frame(id, b"{}"));
        assert_eq!(d.missing_schema(Role::State, framed(4).as_deref()), Some(4));
        assert_eq!(d.missing_schema(Role::Action, framed(1).as_deref()), None, "learned");
        assert_eq!(d.missing_schema(Role::Action, framed(8).as_deref()), None, "refused");
        assert_eq!(d.missing_schema(Role::DeadLetter, framed(4).as_deref()), None);
        assert_eq!(d.missing_schema(Role::State, Some(b"junk".as_slice())), None);
        assert_eq!(d.missing_schema(Role::State, None), None);
    }

    #[test]
    fn states_and_actions_decode_and_go_to_their_tables() {
        let d = decoder();
        let codec: Codec<StateMsg> = Codec::new(9).unwrap_or_else(|e| panic!("{e}"));
        let bytes = codec.encode(&examples::state()).unwrap_or_else(|e| panic!("{e}"));
        let item = d.decode(Role::State, &"s".into(), raw("s", 7, Some(bytes)));
        assert!(
            matches!(&item, Item::State { schema_id: 9, msg, .. } if **msg == ArchivedState::Fashion(examples::state())),
            "{item:?}"
        );
        assert_eq!(item.tables(), &[Table::Steps, Table::StatesByDay]);
        assert_eq!(item.pos(), &Position { topic: "s".into(), partition: 2, offset: 7 });
        assert!(row(&item, Table::Steps, uuid::Uuid::nil()).is_some());
        assert!(row(&item, Table::ActionsByDay, uuid::Uuid::nil()).is_none());

        let action = wire::frame(3, &serde_json::to_vec(&examples::action()).unwrap_or_default());
        let item = d.decode(Role::Action, &"a".into(), raw("a", 8, Some(action)));
        assert!(matches!(&item, Item::Action { schema_id: 3, .. }), "{item:?}");
        assert_eq!(item.tables(), &[Table::Steps, Table::ActionsByDay]);
    }

    #[test]
    fn a_recogym_decoder_decodes_recogym_states_and_refuses_fashion_ones() {
        let mut d = Decoder::new(EnvKind::Recogym).unwrap_or_else(|e| panic!("{e}"));
        d.learn(5, WriterSchema::local::<RecoStateMsg>(5, "rs-value"));
        d.learn(9, WriterSchema::local::<StateMsg>(9, "rs-value"));
        let codec: Codec<RecoStateMsg> = Codec::new(5).unwrap_or_else(|e| panic!("{e}"));
        let bytes = codec.encode(&examples::reco_state()).unwrap_or_else(|e| panic!("{e}"));
        let item = d.decode(Role::State, &"rs".into(), raw("rs", 3, Some(bytes)));
        let expected = ArchivedState::Recogym(examples::reco_state());
        assert!(matches!(&item, Item::State { schema_id: 5, msg, .. } if **msg == expected), "{item:?}");
        assert_eq!(item.tables(), &[Table::Steps, Table::StatesByDay]);
        // A fashion state on a RecoGym topic, even with a registered schema, is not a RecoGym state.
        let fashion = wire::frame(9, &serde_json::to_vec(&examples::state()).unwrap_or_default());
        let item = d.decode(Role::State, &"rs".into(), raw("rs", 4, Some(fashion)));
        assert!(matches!(&item, Item::Rejected { .. }), "{item:?}");
    }

    #[test]
    fn each_environment_sets_its_own_columns_and_leaves_the_others_unset() {
        let pos = Position { topic: "s".into(), partition: 1, offset: 2 };
        fn unset<T>(v: &MaybeUnset<T>) -> bool {
            matches!(v, MaybeUnset::Unset)
        }
        let reco = ArchivedState::Recogym(examples::reco_state());
        let c = StateCols::new(&pos, 1, &reco);
        assert_eq!((c.user_id.as_ref(), c.step, c.attempt, c.n_actions), ("7", 1, 0, 10));
        assert!(matches!(c.user_time, MaybeUnset::Set(6)));
        assert!(matches!(&c.organic, MaybeUnset::Set(o) if o == &vec![(4, 3), (5, 3)]));
        assert!(matches!(c.ps_asked, MaybeUnset::Set(false)));
        assert!(matches!(c.product_index, MaybeUnset::Set(3)), "the last organic view");
        assert!(matches!(c.last_action, MaybeUnset::Set(2)));
        assert!(unset(&c.product_asin) && unset(&c.product_text) && unset(&c.sizes) && unset(&c.colors));
        assert!(unset(&c.keywords) && unset(&c.next_item_hit) && unset(&c.catalog) && unset(&c.accept_prob));
        let mut none = examples::reco_state();
        (none.organic, none.last_action) = (Vec::new(), None);
        let none = ArchivedState::Recogym(none);
        let c = StateCols::new(&pos, 1, &none);
        assert!(unset(&c.product_index) && unset(&c.last_action));
        assert!(matches!(&c.organic, MaybeUnset::Set(o) if o.is_empty()), "an empty list, not unset");

        let fashion = ArchivedState::Fashion(examples::state());
        let c = StateCols::new(&pos, 1, &fashion);
        assert_eq!(c.user_id.as_ref(), "A1B2C3");
        assert!(
            matches!(c.product_asin, MaybeUnset::Set("B00ABCDEF1")) && matches!(c.product_index, MaybeUnset::Set(17))
        );
        assert!(unset(&c.user_time) && unset(&c.organic) && unset(&c.ps_asked));
        assert!(unset(&c.catalog) && unset(&c.accept_prob) && unset(&c.last_action), "absent: unset, not null");

        let mut action = examples::action();
        assert!(unset(&ActionCols::new(&pos, 1, &action).ps_all));
        action.ps_all = Some(vec![0.25; 4]);
        assert!(matches!(ActionCols::new(&pos, 1, &action).ps_all, MaybeUnset::Set(p) if p == [0.25; 4]));
    }

    #[test]
    fn recogym_episodes_are_summarised_like_fashion_ones() {
        let mut t = examples::reco_state();
        (t.step, t.reward, t.terminated, t.ts_ms, t.user_id) = (2, 1.0, true, 3_000, 42);
        let terminal = ArchivedState::Recogym(t);
        let rows = vec![
            back(0, KIND_STATE, 0, 0.0, 1_000),
            back(1, KIND_STATE, 0, 1.0, 2_000),
            back(1, KIND_STATE, 1, 1.0, 2_500),
        ];
        let ep = summarize_episode(&terminal, &rows);
        assert_eq!((ep.user_id.as_str(), ep.steps, ep.episode_return), ("42", 2, 2.0));
        assert_eq!((ep.started_at, ep.ended_at, ep.terminated), (CqlTimestamp(1_000), CqlTimestamp(3_000), true));
    }

    #[test]
    fn undecodable_records_are_rejected_with_their_reason_and_bytes() {
        let d = decoder();
        let mut bad = examples::action();
        bad.ps = 3.0;
        let action = serde_json::to_vec(&examples::action()).unwrap_or_default();
        let cases: Vec<(Option<Vec<u8>>, &str)> = vec![
            (Some(b"not json at all".to_vec()), "wire format"),
            (Some(wire::frame(1, b"{oops")), "invalid json"),
            (Some(wire::frame(1, &serde_json::to_vec(&bad).unwrap_or_default())), "/ps"),
            (Some(wire::frame(1, &serde_json::to_vec(&examples::state()).unwrap_or_default())), "schema violation"),
            (Some(wire::frame(77, &action)), "unknown schema id 77"),
            (Some(wire::frame(8, &action)), "unknown schema id 8"),
            (Some(wire::frame(9, &action)), "schema id 9 belongs to subject s-value, not a-value"),
            (None, "null value"),
        ];
        for (payload, why) in cases {
            let item = d.decode(Role::Action, &"a".into(), raw("a", 1, payload.clone()));
            match &item {
                Item::Rejected { reason, payload: kept, .. } => {
                    assert!(reason.contains(why), "{reason} should say {why}");
                    assert_eq!(kept, &payload.unwrap_or_default());
                }
                other => panic!("expected a rejection, got {other:?}"),
            }
            assert_eq!(item.tables(), &[Table::Rejected]);
        }
    }

    #[test]
    fn dead_letters_keep_their_headers() {
        let d = decoder();
        let mut r = raw("dlq", 4, Some(b"junk".to_vec()));
        r.headers = vec![
            (dlq::REASON.into(), "bad wire format".into()),
            (dlq::SOURCE_TOPIC.into(), "fashion_action".into()),
            (dlq::SOURCE_PARTITION.into(), "3".into()),
            (dlq::SOURCE_OFFSET.into(), "99".into()),
        ];
        match d.decode(Role::DeadLetter, &Arc::from(r.topic.as_str()), r) {
            Item::DeadLetter { reason, source_topic, source_partition, source_offset, payload, .. } => {
                assert_eq!(reason.as_deref(), Some("bad wire format"));
                assert_eq!(source_topic.as_deref(), Some("fashion_action"));
                assert_eq!((source_partition, source_offset), (Some(3), Some(99)));
                assert_eq!(payload, b"junk");
            }
            other => panic!("{other:?}"),
        }
    }

    fn back(step: i32, kind: &str, attempt: i32, reward: f64, ts_ms: i64) -> StepReadBack {
        StepReadBack { step, kind: kind.into(), attempt: Some(attempt), reward: Some(reward), ts_ms }
    }

    #[test]
    fn episode_return_counts_each_step_once() {
        let mut t = examples::state();
        (t.step, t.reward, t.terminated, t.ts_ms) = (3, 1.0, true, 5_000);
        let terminal = ArchivedState::Fashion(t);
        let rows = vec![
            back(0, KIND_STATE, 0, 0.0, 1_000),
            back(0, KIND_ACTION, 0, 0.0, 1_100),
            back(1, KIND_STATE, 0, 1.0, 2_000),
            back(1, KIND_STATE, 1, 1.0, 4_000), // re-sent: same step, counted once
            back(2, KIND_STATE, 0, 0.0, 4_500),
            back(3, KIND_STATE, 0, 1.0, 5_000),
        ];
        let ep = summarize_episode(&terminal, &rows);
        assert_eq!((ep.steps, ep.episode_return, ep.terminated, ep.truncated), (3, 2.0, true, false));
        assert_eq!((ep.started_at, ep.ended_at), (CqlTimestamp(1_000), CqlTimestamp(5_000)));
        // Idempotent: the same rows give the same summary.
        assert_eq!(summarize_episode(&terminal, &rows), ep);
        // Without the read-back the terminal state still counts.
        assert_eq!(summarize_episode(&terminal, &[]).episode_return, 1.0);
    }

    fn state_item(episode: &str, step: u32, attempt: u32, reward: f64, terminal: bool, offset: i64) -> Item {
        let mut m = examples::state();
        (m.episode_id, m.step, m.attempt, m.reward, m.terminated, m.ts_ms) =
            (episode.into(), step, attempt, reward, terminal, 1_000 + offset);
        let msg = Box::new(ArchivedState::Fashion(m));
        Item::State { pos: Position { topic: "s".into(), partition: 0, offset }, schema_id: 1, msg }
    }

    #[test]
    fn tracker_summarises_episodes_seen_whole_and_defers_the_others() {
        let mut t = EpisodeTracker::default();
        let first = vec![
            state_item("old", 7, 0, 1.0, false, 0), // started before this run
            state_item("new", 0, 0, 0.0, false, 1),
            state_item("new", 1, 0, 1.0, false, 2),
            state_item("new", 1, 1, 1.0, false, 3), // re-sent
        ];
        assert!(t.observe(&first).is_empty());
        assert_eq!(t.open(), 1);
        let second = vec![state_item("old", 8, 0, 1.0, true, 4), state_item("new", 2, 0, 1.0, true, 5)];
        let ended = t.observe(&second);
        assert_eq!(ended.len(), 2);
        let new = ended.iter().find(|(m, _)| m.episode_id() == "new").and_then(|(_, s)| s.clone());
        let new = new.unwrap_or_else(|| panic!("the whole episode was seen"));
        assert_eq!((new.steps, new.episode_return, new.started_at), (2, 2.0, CqlTimestamp(1_001)));
        assert!(ended.iter().any(|(m, s)| m.episode_id() == "old" && s.is_none()), "read back");
        assert_eq!(t.open(), 0);
    }
}
