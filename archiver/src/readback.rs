//! Reading the archive back: the rows of one run (env id) of the `steps` table, as the messages
//! they were archived from, episode by episode in step order (the table's partitions and
//! clustering). [`for_each_state`] hands over the fashion states one by one, for a learner that
//! trains on everything ever logged (`agent-svc learn --from-archive`); [`for_each_episode`]
//! hands over whole episodes of either environment, each step's state with the action the env
//! applied, for off-policy evaluation.
//!
//! Invariant: a row becomes a message equal to the one it was written from, for every field the
//! archive keeps (all of them); a row that lacks a field its message cannot do without is an
//! error naming the row, never a default. A RecoGym state row is told from a fashion one by its
//! RecoGym columns (`user_time`, `organic`, `ps_asked`), which fashion rows leave unset.

use std::collections::{BTreeMap, HashSet};

use futures::TryStreamExt;
use protocol::{ActionMsg, OrganicView, ProductObs, RecoStateMsg, StateMsg};
use scylla::{client::session::Session, value::CqlTimestamp, DeserializeRow};

pub use crate::rows::ArchivedState;
use crate::{
    rows::{KIND_ACTION, KIND_STATE},
    schema::check_keyspace,
};

/// One step of an archived episode: the state the env published (its first copy: attempt 0, or
/// the lowest offset) and the action the env applied (the first action row of the step, lowest
/// Kafka offset; None when the step has none, e.g. a terminal state).
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedStep {
    /// The state of the step.
    pub state: ArchivedState,
    /// The action that answered it, if any was archived.
    pub action: Option<ActionMsg>,
}

/// An archived episode, its steps in step order (0, 1, ...; the last one is the terminal state
/// when the episode finished before it was archived).
#[derive(Debug, Clone, PartialEq)]
pub struct ArchivedEpisode {
    /// The episode.
    pub episode_id: String,
    /// Its steps, in step order.
    pub steps: Vec<ArchivedStep>,
}

impl ArchivedEpisode {
    /// The steps as `(state, action)` pairs of one environment's state type; an error that
    /// names the episode when it holds the other environment's states.
    pub fn into_steps<S: FromArchived>(self) -> anyhow::Result<Vec<(S, Option<ActionMsg>)>> {
        let id = self.episode_id;
        self.steps
            .into_iter()
            .map(|s| match S::from_archived(s.state) {
                Ok(m) => Ok((m, s.action)),
                Err(other) => Err(anyhow::anyhow!(
                    "episode {id} holds a {other} state; a {} state was expected (is --env right?)",
                    S::ENV
                )),
            })
            .collect()
    }
}

/// A state type of one environment, taken out of an [`ArchivedState`].
pub trait FromArchived: Sized {
    /// The environment's name.
    const ENV: &'static str;
    /// The message, or the name of the environment the state belongs to.
    fn from_archived(s: ArchivedState) -> Result<Self, &'static str>;
}

impl FromArchived for StateMsg {
    const ENV: &'static str = "fashion";
    fn from_archived(s: ArchivedState) -> Result<Self, &'static str> {
        match s {
            ArchivedState::Fashion(m) => Ok(m),
            ArchivedState::Recogym(_) => Err(RecoStateMsg::ENV),
        }
    }
}

impl FromArchived for RecoStateMsg {
    const ENV: &'static str = "recogym";
    fn from_archived(s: ArchivedState) -> Result<Self, &'static str> {
        match s {
            ArchivedState::Recogym(m) => Ok(m),
            ArchivedState::Fashion(_) => Err(StateMsg::ENV),
        }
    }
}

/// Which episodes [`for_each_episode`] hands over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpisodeFilter {
    /// The run (environment and run id), e.g. `reco-gym-v1/3f2a`.
    pub env_id: String,
    /// Only episodes whose step-0 state was produced at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Only episodes whose step-0 state was produced before this time (Unix ms).
    pub until_ms: Option<i64>,
}

/// What [`for_each_episode`] read. `states`, `actions`, `resent_states` and
/// `duplicate_actions` count the episodes handed over only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadbackCounts {
    /// Episodes handed over.
    pub episodes: u64,
    /// Their steps' states (first copies), one per step.
    pub states: u64,
    /// Their steps' actions (first action rows), at most one per step.
    pub actions: u64,
    /// Further copies of a step's state (re-sent after an action timeout), not handed over.
    pub resent_states: u64,
    /// Further action rows of a step (an agent answered twice), not handed over.
    pub duplicate_actions: u64,
    /// Episodes left out by the filter's time window.
    pub skipped_by_time: u64,
}

/// The columns read, by the names of [`StepRow`].
const COLUMNS: &str = "episode_id, step, kind, kafka_topic, kafka_partition, kafka_offset, env_id, schema_version, \
     ts, user_id, attempt, n_actions, product_asin, product_index, product_text, sizes, colors, keywords, reward, \
     next_item_hit, terminated, truncated, catalog, last_action, accept_prob, user_time, organic, ps_asked, action, \
     ps, policy, replica_id, model_version, ps_all";

/// A row of `steps`, state or action.
#[derive(Debug, Clone, PartialEq, DeserializeRow)]
struct StepRow {
    episode_id: String,
    step: i32,
    kind: String,
    kafka_topic: String,
    kafka_partition: i32,
    kafka_offset: i64,
    env_id: Option<String>,
    schema_version: Option<i32>,
    ts: Option<CqlTimestamp>,
    user_id: Option<String>,
    attempt: Option<i32>,
    n_actions: Option<i32>,
    product_asin: Option<String>,
    product_index: Option<i32>,
    product_text: Option<String>,
    sizes: Option<Vec<String>>,
    colors: Option<Vec<String>>,
    keywords: Option<Vec<String>>,
    reward: Option<f64>,
    next_item_hit: Option<bool>,
    terminated: Option<bool>,
    truncated: Option<bool>,
    catalog: Option<String>,
    last_action: Option<i32>,
    accept_prob: Option<f64>,
    user_time: Option<i64>,
    organic: Option<Vec<(i64, i32)>>,
    ps_asked: Option<bool>,
    action: Option<i32>,
    ps: Option<f64>,
    policy: Option<String>,
    replica_id: Option<String>,
    model_version: Option<i64>,
    ps_all: Option<Vec<f64>>,
}

/// Where a message was in Kafka: (topic, partition, offset), ordered as `steps` clusters them.
type KafkaPos = (String, i32, i64);

impl StepRow {
    /// Names the row in errors: episode, step, kind and Kafka identity.
    fn name(&self) -> String {
        format!(
            "archived {} of episode {} step {} ({}/{}@{})",
            self.kind, self.episode_id, self.step, self.kafka_topic, self.kafka_partition, self.kafka_offset
        )
    }

    fn pos(&self) -> KafkaPos {
        (self.kafka_topic.clone(), self.kafka_partition, self.kafka_offset)
    }

    /// Whether this state row is a RecoGym state (fashion rows leave these columns unset).
    fn is_recogym(&self) -> bool {
        self.user_time.is_some() || self.organic.is_some() || self.ps_asked.is_some()
    }

    /// The message of a state row.
    fn into_state(self) -> anyhow::Result<ArchivedState> {
        let at = self.name();
        let need = |what: &str| anyhow::anyhow!("{at} has no {what}");
        let uint = |v: Option<i32>, what: &str| -> anyhow::Result<u32> {
            u32::try_from(v.ok_or_else(|| need(what))?).map_err(|_| anyhow::anyhow!("{at}: negative {what}"))
        };
        let ulong = |v: Option<i64>, what: &str| -> anyhow::Result<u64> {
            u64::try_from(v.ok_or_else(|| need(what))?).map_err(|_| anyhow::anyhow!("{at}: negative {what}"))
        };
        let recogym = self.is_recogym();
        let step = uint(Some(self.step), "step")?;
        let schema_version = uint(self.schema_version, "schema_version")?;
        let env_id = self.env_id.ok_or_else(|| need("env_id"))?;
        let user_id = self.user_id.ok_or_else(|| need("user_id"))?;
        let n_actions = uint(self.n_actions, "n_actions")?;
        let last_action = self.last_action.map(|a| uint(Some(a), "last_action")).transpose()?;
        let reward = self.reward.ok_or_else(|| need("reward"))?;
        let terminated = self.terminated.ok_or_else(|| need("terminated"))?;
        let truncated = self.truncated.ok_or_else(|| need("truncated"))?;
        let attempt = uint(self.attempt, "attempt")?;
        let ts_ms = self.ts.ok_or_else(|| need("ts"))?.0;
        if recogym {
            let organic = self.organic.ok_or_else(|| need("organic"))?;
            return Ok(ArchivedState::Recogym(RecoStateMsg {
                schema_version,
                env_id,
                episode_id: self.episode_id,
                step,
                user_id: user_id.parse().map_err(|_| anyhow::anyhow!("{at}: user_id {user_id} is not a number"))?,
                n_actions,
                time: ulong(self.user_time, "user_time")?,
                organic: organic
                    .into_iter()
                    .map(|(t, product)| {
                        Ok(OrganicView { t: ulong(Some(t), "organic time")?, product: uint(Some(product), "product")? })
                    })
                    .collect::<anyhow::Result<_>>()?,
                last_action,
                reward,
                terminated,
                truncated,
                ps_all: self.ps_asked.ok_or_else(|| need("ps_asked"))?,
                attempt,
                ts_ms,
            }));
        }
        Ok(ArchivedState::Fashion(StateMsg {
            schema_version,
            env_id,
            step,
            user_id,
            n_actions,
            catalog: self.catalog,
            accept_prob: self.accept_prob,
            observation: ProductObs {
                asin: self.product_asin.ok_or_else(|| need("product_asin"))?,
                index: uint(self.product_index, "product_index")?,
                text: self.product_text.ok_or_else(|| need("product_text"))?,
                // An empty list may read back as null.
                sizes: self.sizes.unwrap_or_default(),
                colors: self.colors.unwrap_or_default(),
                keywords: self.keywords.unwrap_or_default(),
            },
            last_action,
            reward,
            next_item_hit: self.next_item_hit.ok_or_else(|| need("next_item_hit"))?,
            terminated,
            truncated,
            attempt,
            ts_ms,
            episode_id: self.episode_id,
        }))
    }

    /// The message of an action row.
    fn into_action(self) -> anyhow::Result<ActionMsg> {
        let at = self.name();
        let need = |what: &str| anyhow::anyhow!("{at} has no {what}");
        let uint = |v: Option<i32>, what: &str| -> anyhow::Result<u32> {
            u32::try_from(v.ok_or_else(|| need(what))?).map_err(|_| anyhow::anyhow!("{at}: negative {what}"))
        };
        Ok(ActionMsg {
            schema_version: uint(self.schema_version, "schema_version")?,
            env_id: self.env_id.ok_or_else(|| need("env_id"))?,
            step: uint(Some(self.step), "step")?,
            action: uint(self.action, "action")?,
            ps: self.ps.ok_or_else(|| need("ps"))?,
            policy: self.policy.ok_or_else(|| need("policy"))?,
            replica_id: self.replica_id.ok_or_else(|| need("replica_id"))?,
            model_version: self
                .model_version
                .map(|v| u64::try_from(v).map_err(|_| anyhow::anyhow!("{at}: negative model_version")))
                .transpose()?,
            ps_all: self.ps_all,
            ts_ms: self.ts.ok_or_else(|| need("ts"))?.0,
            episode_id: self.episode_id,
        })
    }

    /// The row as a message with its place in the episode.
    fn into_record(self) -> anyhow::Result<Record> {
        let pos = self.pos();
        match self.kind.as_str() {
            KIND_STATE => {
                let msg = self.into_state()?;
                Ok(Record::State { pos, msg })
            }
            KIND_ACTION => Ok(Record::Action { pos, msg: self.into_action()? }),
            _ => anyhow::bail!("{}: unknown kind (neither {KIND_STATE} nor {KIND_ACTION})", self.name()),
        }
    }
}

/// A row of `steps` turned into its message.
#[derive(Debug, Clone, PartialEq)]
enum Record {
    State { pos: KafkaPos, msg: ArchivedState },
    Action { pos: KafkaPos, msg: ActionMsg },
}

/// An episode put together from its records.
#[derive(Debug, Clone, PartialEq)]
struct Assembled {
    episode: ArchivedEpisode,
    resent_states: u64,
    duplicate_actions: u64,
}

/// What becomes of an episode's records.
#[derive(Debug, Clone, PartialEq)]
enum Settled {
    /// Handed over.
    Deliver(Assembled),
    /// Outside the filter's time window.
    SkippedByTime,
}

/// Puts an episode together from its records (in any order) and applies the time window of
/// `filter` to its step-0 state. Each step takes its state's first copy (lowest attempt, then
/// lowest Kafka position) and its first action (lowest Kafka position). An episode whose steps
/// are not all there from 0 up to its last one (partly archived: retention or a TTL took its
/// first rows) is an error naming it, unless one of its states is older than `since_ms`: its
/// step-0 state, produced before, is then older too, and the episode is skipped by time.
fn settle(episode_id: &str, records: Vec<Record>, filter: &EpisodeFilter) -> anyhow::Result<Settled> {
    type First<T> = Option<(KafkaPos, T)>;
    #[derive(Default)]
    struct Step {
        state: First<ArchivedState>,
        states: u64,
        action: First<ActionMsg>,
        actions: u64,
    }
    let mut steps: BTreeMap<u32, Step> = BTreeMap::new();
    let mut earliest_ts = i64::MAX;
    for record in records {
        match record {
            Record::State { pos, msg } => {
                use protocol::{Envelope, StepState};
                anyhow::ensure!(
                    msg.episode_id() == episode_id,
                    "a state row of episode {} is grouped with episode {episode_id}",
                    msg.episode_id()
                );
                earliest_ts = earliest_ts.min(msg.ts_ms());
                let s = steps.entry(msg.step()).or_default();
                s.states += 1;
                let better = s.state.as_ref().is_none_or(|(p, m)| (msg.attempt(), &pos) < (m.attempt(), p));
                if better {
                    s.state = Some((pos, msg));
                }
            }
            Record::Action { pos, msg } => {
                anyhow::ensure!(
                    msg.episode_id == episode_id,
                    "an action row of episode {} is grouped with episode {episode_id}",
                    msg.episode_id
                );
                let s = steps.entry(msg.step).or_default();
                s.actions += 1;
                if s.action.as_ref().is_none_or(|(p, _)| &pos < p) {
                    s.action = Some((pos, msg));
                }
            }
        }
    }
    let mut episode = ArchivedEpisode { episode_id: episode_id.to_string(), steps: Vec::with_capacity(steps.len()) };
    let (mut resent_states, mut duplicate_actions) = (0, 0);
    for (expected, (number, step)) in (0_u32..).zip(steps) {
        let Some((_, state)) = step.state.filter(|_| number == expected) else {
            if filter.since_ms.is_some_and(|since| earliest_ts < since) {
                return Ok(Settled::SkippedByTime);
            }
            anyhow::bail!(
                "episode {episode_id} of {} is partly archived: it has no state at step {expected} (its rows \
                 expired, or were never copied); give a later since_ms to leave it out",
                filter.env_id
            );
        };
        resent_states += step.states - 1;
        duplicate_actions += step.actions.saturating_sub(1);
        episode.steps.push(ArchivedStep { state, action: step.action.map(|(_, a)| a) });
    }
    let Some(first) = episode.steps.first() else {
        anyhow::bail!("episode {episode_id} has no rows");
    };
    let ts = protocol::StepState::ts_ms(&first.state);
    if filter.since_ms.is_some_and(|since| ts < since) || filter.until_ms.is_some_and(|until| ts >= until) {
        return Ok(Settled::SkippedByTime);
    }
    Ok(Settled::Deliver(Assembled { episode, resent_states, duplicate_actions }))
}

/// Groups the rows of a scan by episode: the rows of one partition arrive together.
#[derive(Debug, Default)]
struct Grouper {
    current: Option<(String, Vec<Record>)>,
    done: HashSet<String>,
}

impl Grouper {
    /// Takes the next row; returns the previous episode's records when this row starts another.
    fn push(&mut self, row: StepRow) -> anyhow::Result<Option<(String, Vec<Record>)>> {
        if let Some((id, records)) = self.current.as_mut().filter(|(id, _)| *id == row.episode_id) {
            debug_assert_eq!(id, &row.episode_id);
            records.push(row.into_record()?);
            return Ok(None);
        }
        anyhow::ensure!(
            !self.done.contains(&row.episode_id),
            "the rows of episode {} did not arrive together (one partition): {}",
            row.episode_id,
            row.name()
        );
        let id = row.episode_id.clone();
        let finished = self.current.replace((id, vec![row.into_record()?]));
        if let Some((id, _)) = &finished {
            self.done.insert(id.clone());
        }
        Ok(finished)
    }

    /// The last episode's records.
    fn finish(&mut self) -> Option<(String, Vec<Record>)> {
        self.current.take()
    }
}

/// Scans the rows of run `env_id` in `steps` (the whole table, paged: it is partitioned by
/// episode, not by run), partition by partition in clustering order.
async fn scan(
    session: &Session,
    keyspace: &str,
    env_id: &str,
    mut on_row: impl FnMut(StepRow) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    check_keyspace(keyspace)?;
    let cql = format!("SELECT {COLUMNS} FROM {keyspace}.steps WHERE env_id = ? ALLOW FILTERING");
    let mut rows = session
        .query_iter(cql, (env_id,))
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {keyspace}.steps: {e}"))?
        .rows_stream::<StepRow>()
        .map_err(|e| anyhow::anyhow!("{keyspace}.steps has other columns than expected: {e}"))?;
    while let Some(row) = rows.try_next().await.map_err(|e| anyhow::anyhow!("reading {keyspace}.steps: {e}"))? {
        on_row(row)?;
    }
    Ok(())
}

/// Hands every archived fashion state of run `env_id` in `keyspace` to `f`, each episode's
/// states in step order (re-sent copies of a step after the first); returns how many. Reads the
/// whole `steps` table, paged (the table is partitioned by episode, not by run). A RecoGym state
/// is an error: read those with [`for_each_episode`].
pub async fn for_each_state(
    session: &Session,
    keyspace: &str,
    env_id: &str,
    mut f: impl FnMut(StateMsg) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut n = 0;
    scan(session, keyspace, env_id, |row| {
        if row.kind != KIND_STATE {
            return Ok(());
        }
        let name = row.name();
        match row.into_state()? {
            ArchivedState::Fashion(state) => f(state)?,
            ArchivedState::Recogym(_) => {
                anyhow::bail!("{name} is a RecoGym state; read RecoGym runs with for_each_episode")
            }
        }
        n += 1;
        Ok(())
    })
    .await?;
    Ok(n)
}

/// Hands every archived episode of run `filter.env_id` in `keyspace` (either environment) to
/// `f`, whole: each step's state (first copy) with the action the env applied (first action
/// row), in step order, episodes in the order the scan meets them (token order, not time).
/// Episodes whose step-0 state lies outside the filter's time window are counted and skipped.
/// Episodes still running when they were archived come with the steps archived so far.
///
/// Errors: a row that lacks a field its message needs (naming the row), and an episode that is
/// partly archived, with a step other than its last missing its state (naming it; see
/// [`EpisodeFilter::since_ms`] to leave out episodes whose first rows expired). One paged scan
/// of the whole `steps` table, filtered on `env_id`; holds one episode in memory at a time.
pub async fn for_each_episode(
    session: &Session,
    keyspace: &str,
    filter: &EpisodeFilter,
    mut f: impl FnMut(ArchivedEpisode) -> anyhow::Result<()>,
) -> anyhow::Result<ReadbackCounts> {
    let mut counts = ReadbackCounts::default();
    let mut grouper = Grouper::default();
    let mut deliver = |(id, records): (String, Vec<Record>), counts: &mut ReadbackCounts| -> anyhow::Result<()> {
        match settle(&id, records, filter)? {
            Settled::SkippedByTime => counts.skipped_by_time += 1,
            Settled::Deliver(a) => {
                counts.episodes += 1;
                counts.states += a.episode.steps.len() as u64;
                counts.actions += a.episode.steps.iter().filter(|s| s.action.is_some()).count() as u64;
                counts.resent_states += a.resent_states;
                counts.duplicate_actions += a.duplicate_actions;
                f(a.episode)?;
            }
        }
        Ok(())
    };
    scan(session, keyspace, &filter.env_id, |row| {
        if let Some(done) = grouper.push(row)? {
            deliver(done, &mut counts)?;
        }
        Ok(())
    })
    .await?;
    if let Some(last) = grouper.finish() {
        deliver(last, &mut counts)?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use protocol::messages::examples;

    use super::*;
    use crate::rows::{Item, Position};

    /// The row of `steps` the archiver writes for a state, as Cassandra returns it: the columns
    /// of `StateCols` (rows.rs), the other environment's and the action columns null.
    fn state_row(state: &ArchivedState, offset: i64) -> StepRow {
        use protocol::{Envelope, StepState};
        let mut r = empty_row(state.episode_id(), state.step(), KIND_STATE, "s", offset);
        r.env_id = Some(state.env_id().into());
        r.ts = Some(CqlTimestamp(state.ts_ms()));
        r.user_id = Some(state.user_id().into_owned());
        r.attempt = Some(state.attempt() as i32);
        r.n_actions = Some(state.n_actions() as i32);
        r.reward = Some(state.reward());
        r.terminated = Some(state.terminated());
        r.truncated = Some(state.truncated());
        r.last_action = state.last_action().map(|a| a as i32);
        match state {
            ArchivedState::Fashion(m) => {
                r.schema_version = Some(m.schema_version as i32);
                r.product_asin = Some(m.observation.asin.clone());
                r.product_index = Some(m.observation.index as i32);
                r.product_text = Some(m.observation.text.clone());
                r.sizes = Some(m.observation.sizes.clone());
                r.colors = Some(m.observation.colors.clone());
                r.keywords = Some(m.observation.keywords.clone());
                r.next_item_hit = Some(m.next_item_hit);
                r.catalog = m.catalog.clone();
                r.accept_prob = m.accept_prob;
            }
            ArchivedState::Recogym(m) => {
                r.schema_version = Some(m.schema_version as i32);
                r.product_index = m.organic.last().map(|v| v.product as i32);
                r.user_time = Some(m.time as i64);
                r.organic = Some(m.organic.iter().map(|v| (v.t as i64, v.product as i32)).collect());
                r.ps_asked = Some(m.ps_all);
            }
        }
        r
    }

    fn action_row(a: &ActionMsg, offset: i64) -> StepRow {
        let mut r = empty_row(&a.episode_id, a.step, KIND_ACTION, "a", offset);
        r.env_id = Some(a.env_id.clone());
        r.schema_version = Some(a.schema_version as i32);
        r.ts = Some(CqlTimestamp(a.ts_ms));
        r.action = Some(a.action as i32);
        r.ps = Some(a.ps);
        r.policy = Some(a.policy.clone());
        r.replica_id = Some(a.replica_id.clone());
        r.model_version = a.model_version.map(|v| v as i64);
        r.ps_all = a.ps_all.clone();
        r
    }

    fn empty_row(episode: &str, step: u32, kind: &str, topic: &str, offset: i64) -> StepRow {
        StepRow {
            episode_id: episode.into(),
            step: step as i32,
            kind: kind.into(),
            kafka_topic: topic.into(),
            kafka_partition: 3,
            kafka_offset: offset,
            env_id: None,
            schema_version: None,
            ts: None,
            user_id: None,
            attempt: None,
            n_actions: None,
            product_asin: None,
            product_index: None,
            product_text: None,
            sizes: None,
            colors: None,
            keywords: None,
            reward: None,
            next_item_hit: None,
            terminated: None,
            truncated: None,
            catalog: None,
            last_action: None,
            accept_prob: None,
            user_time: None,
            organic: None,
            ps_asked: None,
            action: None,
            ps: None,
            policy: None,
            replica_id: None,
            model_version: None,
            ps_all: None,
        }
    }

    fn reco(step: u32, attempt: u32, ts_ms: i64, terminal: bool) -> ArchivedState {
        let mut m = examples::reco_state();
        (m.step, m.attempt, m.ts_ms, m.terminated) = (step, attempt, ts_ms, terminal);
        ArchivedState::Recogym(m)
    }

    fn reco_action(step: u32, action: u32) -> ActionMsg {
        let mut a = examples::action();
        (a.env_id, a.episode_id, a.step, a.action) =
            ("reco-gym-v1/example".into(), examples::reco_state().episode_id, step, action);
        a.ps_all = Some(vec![0.1; 10]);
        a
    }

    #[test]
    fn rows_become_the_messages_they_were_written_from_in_both_environments() {
        let mut fashion = examples::state();
        (fashion.catalog, fashion.accept_prob, fashion.last_action) =
            (Some("0123456789abcdef".into()), Some(0.5), Some(3));
        let fashion = ArchivedState::Fashion(fashion);
        assert_eq!(state_row(&fashion, 1).into_state().ok(), Some(fashion.clone()));
        let recogym = reco(1, 0, 5, false);
        assert_eq!(state_row(&recogym, 1).into_state().ok(), Some(recogym.clone()));
        let mut none = examples::reco_state();
        (none.organic, none.last_action, none.ps_all) = (Vec::new(), None, true);
        let none = ArchivedState::Recogym(none);
        assert_eq!(state_row(&none, 1).into_state().ok(), Some(none.clone()));
        for a in [examples::action(), reco_action(1, 4)] {
            assert_eq!(action_row(&a, 9).into_action().ok(), Some(a.clone()));
        }
        // What the archiver writes for a RecoGym state is what is read back here.
        let pos = Position { topic: "s".into(), partition: 3, offset: 1 };
        let item = Item::State { pos, schema_id: 1, msg: Box::new(recogym.clone()) };
        assert!(crate::rows::row(&item, crate::rows::Table::Steps, uuid::Uuid::nil()).is_some());
    }

    #[test]
    fn a_row_missing_a_field_is_an_error_naming_the_row() {
        let mut r = state_row(&reco(2, 0, 5, false), 17);
        r.organic = None;
        let e = r.into_state().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("has no organic") && e.contains("step 2") && e.contains("s/3@17"), "{e}");
        let mut r = state_row(&ArchivedState::Fashion(examples::state()), 4);
        r.product_asin = None;
        assert!(r.into_state().is_err_and(|e| e.to_string().contains("no product_asin")));
        let mut r = action_row(&examples::action(), 5);
        r.ps = None;
        assert!(r.into_action().is_err_and(|e| e.to_string().contains("no ps")));
        let mut r = state_row(&reco(0, 0, 5, false), 4);
        r.user_id = Some("A1B2".into());
        assert!(r.into_state().is_err_and(|e| e.to_string().contains("not a number")));
        let r = empty_row("e", 0, "other", "s", 1);
        assert!(r.into_record().is_err_and(|e| e.to_string().contains("unknown kind")));
    }

    fn records(rows: Vec<StepRow>) -> Vec<Record> {
        rows.into_iter().map(|r| r.into_record().unwrap_or_else(|e| panic!("{e:#}"))).collect()
    }

    fn filter() -> EpisodeFilter {
        EpisodeFilter { env_id: "reco-gym-v1/example".into(), ..EpisodeFilter::default() }
    }

    fn deliver(s: anyhow::Result<Settled>) -> Assembled {
        match s {
            Ok(Settled::Deliver(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn steps_take_the_first_copy_of_their_state_and_their_first_action() {
        let id = examples::reco_state().episode_id;
        // As the scan returns them: by step, states first, then by Kafka position; a re-sent
        // state at step 1 (attempt 1, later offset) and a duplicate action at step 1.
        let rows = vec![
            state_row(&reco(0, 0, 100, false), 10),
            action_row(&reco_action(0, 2), 20),
            state_row(&reco(1, 0, 200, false), 11),
            state_row(&reco(1, 1, 300, false), 12),
            action_row(&reco_action(1, 5), 21),
            action_row(&reco_action(1, 6), 22),
            state_row(&reco(2, 0, 400, true), 13),
        ];
        let a = deliver(settle(&id, records(rows.clone()), &filter()));
        assert_eq!((a.resent_states, a.duplicate_actions), (1, 1));
        let got: Vec<(ArchivedState, Option<u32>)> =
            a.episode.steps.iter().map(|s| (s.state.clone(), s.action.as_ref().map(|a| a.action))).collect();
        let expected =
            vec![(reco(0, 0, 100, false), Some(2)), (reco(1, 0, 200, false), Some(5)), (reco(2, 0, 400, true), None)];
        assert_eq!(got, expected);
        assert_eq!(a.episode.episode_id, id);

        // Order does not matter: the lowest attempt, then the lowest offset, wins.
        let mut shuffled = rows.clone();
        shuffled.reverse();
        assert_eq!(deliver(settle(&id, records(shuffled), &filter())), a);
        let mut later_first = rows;
        later_first[3] = state_row(&reco(1, 0, 300, false), 9); // a second attempt-0 copy, lower offset
        let b = deliver(settle(&id, records(later_first), &filter()));
        assert_eq!(b.episode.steps[1].state, reco(1, 0, 300, false));
    }

    #[test]
    fn partly_archived_episodes_are_errors_unless_older_than_the_window_and_the_window_is_on_step_0() {
        let id = examples::reco_state().episode_id;
        let tail = || records(vec![state_row(&reco(1, 0, 200, false), 11), state_row(&reco(2, 0, 400, true), 13)]);
        let e = settle(&id, tail(), &filter()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("partly archived") && e.contains("step 0") && e.contains(&id), "{e}");
        let gap = records(vec![state_row(&reco(0, 0, 100, false), 10), state_row(&reco(2, 0, 400, true), 13)]);
        assert!(settle(&id, gap, &filter()).is_err_and(|e| e.to_string().contains("no state at step 1")));
        let late = EpisodeFilter { since_ms: Some(300), ..filter() };
        assert_eq!(settle(&id, tail(), &late).ok(), Some(Settled::SkippedByTime), "step 0 was before 200");

        let whole = || records(vec![state_row(&reco(0, 0, 100, false), 10), state_row(&reco(1, 0, 200, true), 11)]);
        let window = |since, until| EpisodeFilter { since_ms: since, until_ms: until, ..filter() };
        assert!(matches!(settle(&id, whole(), &window(Some(100), Some(101))), Ok(Settled::Deliver(_))));
        assert_eq!(settle(&id, whole(), &window(Some(101), None)).ok(), Some(Settled::SkippedByTime));
        assert_eq!(settle(&id, whole(), &window(None, Some(100))).ok(), Some(Settled::SkippedByTime));
        // A running episode: its steps so far, the last one unanswered.
        let running = records(vec![state_row(&reco(0, 0, 100, false), 10)]);
        let a = deliver(settle(&id, running, &filter()));
        assert_eq!((a.episode.steps.len(), a.episode.steps[0].action.is_none()), (1, true));
    }

    #[test]
    fn rows_are_grouped_by_episode_and_an_episode_met_twice_is_an_error() {
        let row = |episode: &str, step: u32, offset: i64| {
            let mut m = examples::reco_state();
            (m.episode_id, m.step) = (episode.into(), step);
            state_row(&ArchivedState::Recogym(m), offset)
        };
        let mut g = Grouper::default();
        let mut done = Vec::new();
        for r in [row("a", 0, 1), row("a", 1, 2), row("b", 0, 3), row("c", 0, 4), row("c", 1, 5)] {
            done.extend(g.push(r).unwrap_or_else(|e| panic!("{e:#}")));
        }
        done.extend(g.finish());
        let sizes: Vec<(String, usize)> = done.iter().map(|(id, r)| (id.clone(), r.len())).collect();
        assert_eq!(sizes, vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 2)]);

        let mut g = Grouper::default();
        for r in [row("a", 0, 1), row("b", 0, 2)] {
            let _ = g.push(r).unwrap_or_else(|e| panic!("{e:#}"));
        }
        assert!(g.push(row("a", 1, 3)).is_err_and(|e| e.to_string().contains("did not arrive together")));
    }
}
