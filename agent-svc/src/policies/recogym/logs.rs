//! RecoGym logs from the pipeline and training rows from logs.
//!
//! [`log_from_messages`] rebuilds RecoGym's log (`recogym::Log`: organic rows and bandit rows in
//! each user's time order) from what a logging run left on the RecoGym topics, so that a policy
//! trains on pipeline data exactly as it would on `recogym::generate_logs`' output.
//! [`train_rows`] turns a log into the rows RecoGym's likelihood agent fits on (the notebook's
//! `build_train_data`): at every recommendation, the user's organic view counts so far, the
//! action, the click and the logging propensity.

use std::collections::{BTreeMap, HashMap};

use protocol::{ActionMsg, RecoStateMsg};
use recogym::{Event, Log, LogRow};

/// Rebuilds the log of one run from its states and actions (any order, copies and re-answers
/// included). Per user: the organic views of state `t`, then, when state `t + 1` exists, the
/// recommendation answered at `t` (`last_action` of state `t + 1`) with its click (the reward of
/// `t + 1`) and its propensity (from the first action message that carried that action). Users
/// come in id order. An episode is kept up to its first missing step.
///
/// Unlike `recogym::generate_logs`, no recommendation is logged after a user left: the pipeline
/// never asks for one (see [`strip_after_leaving`] for the other side).
pub fn log_from_messages<'a>(
    states: impl IntoIterator<Item = &'a RecoStateMsg>,
    actions: impl IntoIterator<Item = &'a ActionMsg>,
) -> Log {
    let mut episodes: BTreeMap<(u64, &str), BTreeMap<u32, &RecoStateMsg>> = BTreeMap::new();
    for s in states {
        episodes.entry((s.user_id, s.episode_id.as_str())).or_default().entry(s.step).or_insert(s);
    }
    let mut ps: HashMap<(&str, u32, u32), f64> = HashMap::new();
    for a in actions {
        ps.entry((a.episode_id.as_str(), a.step, a.action)).or_insert(a.ps);
    }
    let mut rows = Vec::new();
    for ((user, episode), steps) in &episodes {
        for (expect, (&t, s)) in steps.iter().enumerate() {
            if t as usize != expect {
                break;
            }
            rows.extend(s.organic.iter().map(|v| LogRow {
                t: v.t,
                u: *user,
                z: Event::Organic,
                v: Some(v.product),
                a: None,
                c: None,
                ps: None,
                ps_all: None,
            }));
            let Some(next) = steps.get(&(t + 1)) else { break };
            let Some(action) = next.last_action else { break };
            rows.push(LogRow {
                t: s.time,
                u: *user,
                z: Event::Bandit,
                v: None,
                a: Some(action),
                c: Some(next.reward > 0.5),
                ps: ps.get(&(*episode, t, action)).copied(),
                ps_all: None,
            });
        }
    }
    Log { rows }
}

/// Drops the recommendation `recogym::generate_logs` logs after each user left (the last row of
/// each user when it is a bandit row: never shown, never clicked), so that an in-process log
/// holds exactly what a pipeline log holds.
pub fn strip_after_leaving(log: &mut Log) {
    let rows = std::mem::take(&mut log.rows);
    let last_of_user = |i: usize| rows.get(i + 1).is_none_or(|next| next.u != rows[i].u);
    let keep: Vec<bool> = (0..rows.len()).map(|i| !(last_of_user(i) && rows[i].z == Event::Bandit)).collect();
    log.rows = rows.into_iter().zip(keep).filter_map(|(row, keep)| keep.then_some(row)).collect();
}

/// Rows to fit a click model on: one per recommendation of the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainRows {
    /// Number of products P.
    pub products: usize,
    /// The user's organic view counts before the recommendation, P values per row, row-major.
    pub counts: Vec<f64>,
    /// The action.
    pub actions: Vec<u32>,
    /// Whether it was clicked.
    pub clicks: Vec<bool>,
}

impl TrainRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// True when there is no row.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The counts of row `i`.
    pub fn x(&self, i: usize) -> &[f64] {
        &self.counts[i * self.products..(i + 1) * self.products]
    }
}

/// RecoGym's `build_train_data` with its `CountFeatureProvider`: per user (counts reset at each
/// new user), organic rows add to the counts and each bandit row becomes a training row with the
/// counts so far. Rows with a product or action outside `0..products` are skipped.
pub fn train_rows(log: &Log, products: u32) -> TrainRows {
    let p = products as usize;
    let mut out = TrainRows { products: p, ..TrainRows::default() };
    let mut counts = vec![0.0; p];
    let mut user = None;
    for row in &log.rows {
        if user != Some(row.u) {
            user = Some(row.u);
            counts.iter_mut().for_each(|c| *c = 0.0);
        }
        match (row.z, row.v, row.a, row.c) {
            (Event::Organic, Some(v), _, _) if v < products => counts[v as usize] += 1.0,
            (Event::Bandit, _, Some(a), Some(c)) if a < products => {
                out.counts.extend_from_slice(&counts);
                out.actions.push(a);
                out.clicks.push(c);
            }
            _ => {}
        }
    }
    out
}

/// The number of products a log shows: one more than the highest product or action in it.
pub fn products_in(log: &Log) -> u32 {
    log.rows.iter().filter_map(|r| r.v.or(r.a)).max().map_or(0, |m| m + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{messages::examples, OrganicView};

    fn state(ep: &str, user: u64, step: u32, views: &[u32], last: Option<u32>, click: bool, end: bool) -> RecoStateMsg {
        let mut s = examples::reco_state();
        s.episode_id = ep.into();
        s.user_id = user;
        s.step = step;
        s.time = u64::from(step) * 10 + views.len() as u64;
        s.organic = views
            .iter()
            .enumerate()
            .map(|(i, &p)| OrganicView { t: u64::from(step) * 10 + i as u64, product: p })
            .collect();
        s.last_action = last;
        s.reward = if click { 1.0 } else { 0.0 };
        s.terminated = end;
        s
    }

    fn action(ep: &str, step: u32, a: u32, ps: f64) -> ActionMsg {
        let mut m = examples::action();
        (m.episode_id, m.step, m.action, m.ps) = (ep.into(), step, a, ps);
        m
    }

    #[test]
    fn a_run_becomes_recogyms_log_in_user_and_time_order() {
        // User 9 (episode b): views 1 1, shown 2 (clicked), views 3, shown 0, leaves.
        // User 4 (episode a): leaves before any recommendation. Copies and re-answers included.
        let states = vec![
            state("b", 9, 1, &[3], Some(2), true, false),
            state("b", 9, 0, &[1, 1], None, false, false),
            state("a", 4, 0, &[5], None, false, true),
            state("b", 9, 2, &[], Some(0), false, true),
            state("b", 9, 0, &[1, 1], None, false, false),
        ];
        let actions = vec![action("b", 0, 2, 0.1), action("b", 1, 0, 0.1), action("b", 1, 0, 0.1)];
        let log = log_from_messages(&states, &actions);
        type Row = (u64, Event, Option<u32>, Option<u32>, Option<bool>);
        let seen: Vec<Row> = log.rows.iter().map(|r| (r.u, r.z, r.v, r.a, r.c)).collect();
        use Event::{Bandit as B, Organic as O};
        assert_eq!(
            seen,
            vec![
                (4, O, Some(5), None, None),
                (9, O, Some(1), None, None),
                (9, O, Some(1), None, None),
                (9, B, None, Some(2), Some(true)),
                (9, O, Some(3), None, None),
                (9, B, None, Some(0), Some(false)),
            ]
        );
        assert_eq!(log.rows[3].ps, Some(0.1));
        assert_eq!(log.rows[3].t, 2, "the recommendation happens at the state's time");

        let rows = train_rows(&log, 6);
        assert_eq!(rows.actions, vec![2, 0]);
        assert_eq!(rows.clicks, vec![true, false]);
        assert_eq!(rows.x(0), &[0.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(rows.x(1), &[0.0, 2.0, 0.0, 1.0, 0.0, 0.0], "counts accumulate over the user's history");
        assert_eq!(products_in(&log), 6);
    }

    #[test]
    fn in_process_logs_lose_the_recommendation_after_leaving() {
        let world = recogym::World::new(&recogym::Config { num_products: 5, ..recogym::Config::default() });
        let mut log = recogym::generate_logs(&world, 0..20, &recogym::RandomAgent::new(5, 1, false));
        let before = log.rows.iter().filter(|r| r.z == Event::Bandit).count();
        strip_after_leaving(&mut log);
        let after = log.rows.iter().filter(|r| r.z == Event::Bandit).count();
        assert_eq!(before - after, 20, "one per user");
        for pair in log.rows.windows(2) {
            assert!(pair[0].u != pair[1].u || pair[0].t <= pair[1].t);
        }
    }
}
