//! An environment checker in the spirit of Gymnasium's `env_checker`: given what crossed the
//! agent's link during a run (states in, actions out) and the env's summary, it verifies the
//! episode contract. Both transports must pass it unchanged.
//!
//! Checked: keys are episode ids; steps of an episode run 0..=T without gaps and end in exactly
//! one terminal state (terminated xor truncated, T <= max_steps); re-sent copies of a step carry
//! the same observation; observations are the user's products in order and within the action
//! space; rewards and next-item hits follow from the actions and the user's later products; the
//! summary counts exactly the steps and episodes seen.

use std::collections::{BTreeMap, HashMap};

use protocol::{ActionMsg, StateMsg};

use crate::{data::Dataset, metrics::Summary};

/// One broken rule, in words.
pub type Violation = String;

/// Checks a run; returns every violation found (empty when the run is conformant).
pub fn check_run(
    dataset: &Dataset,
    max_steps: u32,
    states: &[(Option<Vec<u8>>, StateMsg)],
    actions: &[ActionMsg],
    summary: &Summary,
) -> Vec<Violation> {
    let mut v = Vec::new();
    let users: HashMap<&str, &[u32]> = dataset.users.iter().map(|u| (u.user_id.as_str(), u.items.as_slice())).collect();
    let mut episodes: BTreeMap<&str, BTreeMap<u32, &StateMsg>> = BTreeMap::new();
    for (key, s) in states {
        if key.as_deref() != Some(s.episode_id.as_bytes()) {
            v.push(format!("{}/{}: key is not the episode id", s.episode_id, s.step));
        }
        if s.n_actions != dataset.n_actions() || s.observation.index >= s.n_actions {
            v.push(format!("{}/{}: index {} outside 0..{}", s.episode_id, s.step, s.observation.index, s.n_actions));
        }
        if s.reward != 0.0 && s.reward != 1.0 {
            v.push(format!("{}/{}: reward {} is not 0 or 1", s.episode_id, s.step, s.reward));
        }
        if s.terminated && s.truncated {
            v.push(format!("{}/{}: both terminated and truncated", s.episode_id, s.step));
        }
        let steps = episodes.entry(s.episode_id.as_str()).or_default();
        if let Some(prev) = steps.get(&s.step) {
            if prev.observation != s.observation || prev.reward != s.reward || prev.terminated != s.terminated {
                v.push(format!("{}/{}: a re-sent copy differs from the first", s.episode_id, s.step));
            }
        } else {
            steps.insert(s.step, s);
        }
    }
    // The action the env accepted for a step is the first one the agent sent for it; re-answers
    // repeat it (checked here too).
    let mut answer: HashMap<(&str, u32), u32> = HashMap::new();
    for a in actions {
        let prev = *answer.entry((a.episode_id.as_str(), a.step)).or_insert(a.action);
        if prev != a.action {
            v.push(format!("{}/{}: answered with {} and later {}", a.episode_id, a.step, prev, a.action));
        }
    }
    let (mut total_steps, mut finished) = (0u64, 0u64);
    for (id, steps) in &episodes {
        let last = steps.keys().next_back().copied().unwrap_or(0);
        if steps.len() as u32 != last + 1 {
            v.push(format!("{id}: steps are not contiguous from 0 (saw {} of 0..={last})", steps.len()));
            continue;
        }
        let Some(items) = steps.get(&0).and_then(|s| users.get(s.user_id.as_str())) else {
            v.push(format!("{id}: unknown user"));
            continue;
        };
        for (&t, s) in steps {
            let terminal = s.terminated || s.truncated;
            if terminal != (t == last) || (terminal && t == 0) {
                v.push(format!("{id}/{t}: terminal flag out of place"));
            }
            if items.get(t as usize) != Some(&s.observation.index) {
                v.push(format!("{id}/{t}: observation is not the user's product at position {t}"));
            }
            if t == 0 {
                if s.reward != 0.0 {
                    v.push(format!("{id}/0: reward before any action"));
                }
                continue;
            }
            let Some(&a) = answer.get(&(*id, t - 1)) else {
                v.push(format!("{id}/{t}: no action seen for step {}", t - 1));
                continue;
            };
            let later = &items[t as usize..];
            let expect_reward = if later.contains(&a) { 1.0 } else { 0.0 };
            if s.reward != expect_reward || s.next_item_hit != (later.first() == Some(&a)) {
                v.push(format!(
                    "{id}/{t}: reward {} or hit {} inconsistent with action {a}",
                    s.reward, s.next_item_hit
                ));
            }
        }
        let end = steps[&last];
        if end.terminated || end.truncated {
            finished += 1;
            total_steps += u64::from(last);
            if last > max_steps || (end.truncated && last != max_steps) {
                v.push(format!("{id}: {last} steps against a limit of {max_steps}"));
            }
            if end.terminated && last as usize + 1 != items.len().min(max_steps as usize + 1) {
                v.push(format!("{id}: terminated after {last} steps on a sequence of {}", items.len()));
            }
        }
    }
    if !summary.head.interrupted && (summary.steps != total_steps || summary.episodes != finished) {
        v.push(format!(
            "summary counts {} steps / {} episodes, the link carried {total_steps} / {finished}",
            summary.steps, summary.episodes
        ));
    }
    v
}
