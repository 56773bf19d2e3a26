//! Reading the archive back: the states of one run (env id), as the messages they were archived
//! from, episode by episode in step order (the `steps` table's partitions and clustering), for
//! a learner that trains on everything ever logged (`agent-svc learn --from-archive`).
//!
//! Invariant: a row becomes a `StateMsg` equal to the message it was written from, for every
//! field the archive keeps (all of them since `catalog`, `last_action` and `accept_prob` were
//! added); a row that lacks a field a state cannot do without is an error naming the row, never
//! a default.

use futures::TryStreamExt;
use protocol::{ProductObs, StateMsg};
use scylla::{client::session::Session, value::CqlTimestamp, DeserializeRow};

use crate::{rows::KIND_STATE, schema::check_keyspace};

/// The columns read, in the order of [`StateRow`].
const COLUMNS: &str = "episode_id, step, kind, env_id, schema_version, user_id, attempt, n_actions, product_asin, \
     product_index, product_text, sizes, colors, keywords, reward, next_item_hit, terminated, truncated, ts, catalog, \
     last_action, accept_prob";

#[derive(Debug, DeserializeRow)]
struct StateRow {
    episode_id: String,
    step: i32,
    kind: String,
    env_id: Option<String>,
    schema_version: Option<i32>,
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
    ts: Option<CqlTimestamp>,
    catalog: Option<String>,
    last_action: Option<i32>,
    accept_prob: Option<f64>,
}

impl StateRow {
    fn into_state(self) -> anyhow::Result<StateMsg> {
        let at = format!("{}#{}", self.episode_id, self.step);
        let need = |what: &str| anyhow::anyhow!("archived state {at} has no {what}");
        let uint = |v: Option<i32>, what: &str| -> anyhow::Result<u32> {
            u32::try_from(v.ok_or_else(|| need(what))?)
                .map_err(|_| anyhow::anyhow!("archived state {at}: negative {what}"))
        };
        Ok(StateMsg {
            schema_version: uint(self.schema_version, "schema_version")?,
            env_id: self.env_id.ok_or_else(|| need("env_id"))?,
            step: u32::try_from(self.step).map_err(|_| anyhow::anyhow!("archived state {at}: negative step"))?,
            user_id: self.user_id.ok_or_else(|| need("user_id"))?,
            n_actions: uint(self.n_actions, "n_actions")?,
            catalog: self.catalog,
            accept_prob: self.accept_prob,
            observation: ProductObs {
                asin: self.product_asin.ok_or_else(|| need("product_asin"))?,
                index: uint(self.product_index, "product_index")?,
                text: self.product_text.ok_or_else(|| need("product_text"))?,
                // Cassandra stores an empty list as null.
                sizes: self.sizes.unwrap_or_default(),
                colors: self.colors.unwrap_or_default(),
                keywords: self.keywords.unwrap_or_default(),
            },
            last_action: self.last_action.map(|a| uint(Some(a), "last_action")).transpose()?,
            reward: self.reward.ok_or_else(|| need("reward"))?,
            next_item_hit: self.next_item_hit.ok_or_else(|| need("next_item_hit"))?,
            terminated: self.terminated.ok_or_else(|| need("terminated"))?,
            truncated: self.truncated.ok_or_else(|| need("truncated"))?,
            attempt: uint(self.attempt, "attempt")?,
            ts_ms: self.ts.ok_or_else(|| need("ts"))?.0,
            episode_id: self.episode_id,
        })
    }
}

/// Hands every archived state of run `env_id` in `keyspace` to `f`, each episode's states in
/// step order (re-sent copies of a step after the first); returns how many. Reads the whole
/// `steps` table, paged (the table is partitioned by episode, not by run).
pub async fn for_each_state(
    session: &Session,
    keyspace: &str,
    env_id: &str,
    mut f: impl FnMut(StateMsg) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    check_keyspace(keyspace)?;
    let cql = format!("SELECT {COLUMNS} FROM {keyspace}.steps WHERE env_id = ? ALLOW FILTERING");
    let mut rows = session
        .query_iter(cql, (env_id,))
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {keyspace}.steps: {e}"))?
        .rows_stream::<StateRow>()
        .map_err(|e| anyhow::anyhow!("{keyspace}.steps has other columns than expected: {e}"))?;
    let mut n = 0;
    while let Some(row) = rows.try_next().await.map_err(|e| anyhow::anyhow!("reading {keyspace}.steps: {e}"))? {
        if row.kind == KIND_STATE {
            f(row.into_state()?)?;
            n += 1;
        }
    }
    Ok(n)
}
