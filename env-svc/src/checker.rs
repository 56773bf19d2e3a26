//! An environment checker in the spirit of Gymnasium's `env_checker`: given what crossed the
//! agent's link during a run (states in, actions out) and the env's summary, it verifies the
//! episode contract. Both transports must pass it unchanged.
//!
//! Checked: keys are episode ids; steps of an episode run 0..=T without gaps and end in exactly
//! one terminal state (terminated xor truncated, T <= max_steps); re-sent copies of a step carry
//! the same observation; observations are the user's products in order and within the action
//! space; rewards and next-item hits follow from the actions and the user's later products; the
//! summary counts exactly the steps and episodes seen. Under the interactive user model (env id
//! `fashion-interactive-v1`) the user's path depends on the actions: each step moves to the next
//! product, or (reward 1) to the recommended one where the user reviews it later; an early end
//! only follows a recommendation of no later product (the user left); every state carries the
//! model's acceptance probability (replay states none). [`check_recogym_run`] does the same for
//! RecoGym runs by replaying every user through the simulator.

use std::collections::{BTreeMap, HashMap};

use protocol::{ActionMsg, StateMsg};

use fashion::Dataset;

use crate::metrics::Summary;

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
        if s.steered() != s.accept_prob.is_some_and(|p| (0.0..=1.0).contains(&p)) {
            v.push(format!(
                "{}/{}: acceptance probability {:?} under env {} (interactive states carry one in [0, 1], replay states none)",
                s.episode_id,
                s.step,
                s.accept_prob,
                s.env_name()
            ));
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
        let steered = steps.get(&0).is_some_and(|s| s.steered());
        // The user's position in their sequence before each step.
        let mut pos = 0usize;
        let mut ended_early = false;
        for (&t, s) in steps {
            let terminal = s.terminated || s.truncated;
            if terminal != (t == last) || (terminal && t == 0) {
                v.push(format!("{id}/{t}: terminal flag out of place"));
            }
            if t == 0 {
                if items.first() != Some(&s.observation.index) {
                    v.push(format!("{id}/0: observation is not the user's first product"));
                }
                if s.reward != 0.0 {
                    v.push(format!("{id}/0: reward before any action"));
                }
                continue;
            }
            let Some(&a) = answer.get(&(*id, t - 1)) else {
                v.push(format!("{id}/{t}: no action seen for step {}", t - 1));
                break;
            };
            let later = &items[(pos + 1).min(items.len())..];
            let ahead = later.iter().position(|&p| p == a);
            if s.next_item_hit != (ahead == Some(0)) {
                v.push(format!("{id}/{t}: hit {} inconsistent with action {a}", s.next_item_hit));
            }
            if !steered {
                pos += 1;
                if s.reward != if ahead.is_some() { 1.0 } else { 0.0 } {
                    v.push(format!("{id}/{t}: reward {} inconsistent with action {a}", s.reward));
                }
            } else {
                match (s.reward == 1.0, ahead) {
                    (true, Some(j)) => pos += 1 + j,
                    (true, None) => v.push(format!("{id}/{t}: reward 1 for {a}, which the user does not review later")),
                    (false, _) => pos += 1,
                }
                // Leaving early is the one end before the sequence's last product.
                ended_early = s.terminated && pos + 1 < items.len();
                if ended_early && ahead.is_some() {
                    v.push(format!("{id}/{t}: the user left after a recommendation of a product they review later"));
                }
            }
            if items.get(pos) != Some(&s.observation.index) {
                v.push(format!("{id}/{t}: observation is not the user's product at position {pos}"));
            }
        }
        let end = steps[&last];
        if end.terminated || end.truncated {
            finished += 1;
            total_steps += u64::from(last);
            if last > max_steps || (end.truncated && last != max_steps) {
                v.push(format!("{id}: {last} steps against a limit of {max_steps}"));
            }
            if end.terminated && !ended_early && pos + 1 != items.len() {
                v.push(format!("{id}: terminated at position {pos} of a sequence of {}", items.len()));
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

/// Checks a RecoGym run against the simulator itself: every episode is replayed with the
/// actions the agent sent (the first one per step; re-answers must repeat it) and must show
/// exactly the organic views, clicks and departure the states carried. Also checked: keys,
/// contiguous steps ending in one terminal state, identical re-sent copies, `last_action`, the
/// step limit, and the summary's steps, episodes and clicks.
pub fn check_recogym_run(
    world: &recogym::World,
    max_steps: Option<u32>,
    states: &[(Option<Vec<u8>>, protocol::RecoStateMsg)],
    actions: &[ActionMsg],
    summary: &Summary,
) -> Vec<Violation> {
    use protocol::RecoStateMsg;
    let mut v = Vec::new();
    let mut episodes: BTreeMap<&str, BTreeMap<u32, &RecoStateMsg>> = BTreeMap::new();
    for (key, s) in states {
        if key.as_deref() != Some(s.episode_id.as_bytes()) {
            v.push(format!("{}/{}: key is not the episode id", s.episode_id, s.step));
        }
        if s.terminated && s.truncated {
            v.push(format!("{}/{}: both terminated and truncated", s.episode_id, s.step));
        }
        let steps = episodes.entry(s.episode_id.as_str()).or_default();
        match steps.get(&s.step) {
            Some(prev) => {
                let same = |a: &RecoStateMsg, b: &RecoStateMsg| {
                    (a.user_id, &a.organic, a.reward, a.last_action, a.terminated, a.truncated, a.time)
                        == (b.user_id, &b.organic, b.reward, b.last_action, b.terminated, b.truncated, b.time)
                };
                if !same(prev, s) {
                    v.push(format!("{}/{}: a re-sent copy differs from the first", s.episode_id, s.step));
                }
            }
            None => {
                steps.insert(s.step, s);
            }
        }
    }
    let mut answer: HashMap<(&str, u32), u32> = HashMap::new();
    for a in actions {
        let prev = *answer.entry((a.episode_id.as_str(), a.step)).or_insert(a.action);
        if prev != a.action {
            v.push(format!("{}/{}: answered with {} and later {}", a.episode_id, a.step, prev, a.action));
        }
    }
    let (mut total_steps, mut finished, mut clicks) = (0u64, 0u64, 0.0f64);
    for (id, steps) in &episodes {
        let last = steps.keys().next_back().copied().unwrap_or(0);
        if steps.len() as u32 != last + 1 {
            v.push(format!("{id}: steps are not contiguous from 0 (saw {} of 0..={last})", steps.len()));
            continue;
        }
        let user_id = steps[&0].user_id;
        let mut sim = world.user(user_id);
        let mut expect = sim.reset(world);
        for (&t, s) in steps {
            let seen: Vec<(u64, u32)> = s.organic.iter().map(|o| (o.t, o.product)).collect();
            let want: Vec<(u64, u32)> = expect.organic.iter().map(|o| (o.time, o.product)).collect();
            if s.user_id != user_id || s.n_actions != world.num_products() || s.time != expect.time || seen != want {
                v.push(format!("{id}/{t}: state differs from the simulator's replay"));
                break;
            }
            if s.reward != f64::from(u8::from(expect.click)) || s.terminated != expect.done {
                v.push(format!("{id}/{t}: reward {} or terminated {} differs from the replay", s.reward, s.terminated));
                break;
            }
            let terminal = s.terminated || s.truncated;
            if terminal != (t == last) {
                v.push(format!("{id}/{t}: terminal flag out of place"));
            }
            if s.truncated && max_steps != Some(t) {
                v.push(format!("{id}/{t}: truncated without reaching the step limit {max_steps:?}"));
            }
            if t > 0 {
                clicks += s.reward;
            }
            if terminal {
                break;
            }
            let Some(&a) = answer.get(&(*id, t)) else {
                v.push(format!("{id}/{t}: no action seen for a live step"));
                break;
            };
            if a >= world.num_products() {
                v.push(format!("{id}/{t}: action {a} out of range"));
                break;
            }
            if let Some(next) = steps.get(&(t + 1)) {
                if next.last_action != Some(a) {
                    v.push(format!("{id}/{}: last_action {:?} but step {t} was answered {a}", t + 1, next.last_action));
                }
            }
            expect = sim.step(world, a);
        }
        let end = steps[&last];
        if end.terminated || end.truncated {
            finished += 1;
            total_steps += u64::from(last);
        }
    }
    if !summary.head.interrupted
        && (summary.steps != total_steps || summary.episodes != finished || summary.reward_sum != clicks)
    {
        v.push(format!(
            "summary counts {} steps / {} episodes / {} clicks, the link carried {total_steps} / {finished} / {clicks}",
            summary.steps, summary.episodes, summary.reward_sum
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Instant};

    use super::*;
    use crate::{
        engine::{Engine, EngineConfig},
        envs::recogym::RecoGymEnv,
        metrics::SummaryHead,
    };

    /// States with their keys, as read from a topic.
    type Keyed = Vec<(Option<Vec<u8>>, protocol::RecoStateMsg)>;

    /// Plays 30 users answering `step % 3`; returns what crossed the link and the summary.
    fn recogym_run(world: Arc<recogym::World>) -> (Keyed, Vec<ActionMsg>, Summary) {
        let cfg = EngineConfig {
            env_id: "reco-gym-v1/c".into(),
            concurrency: 7,
            action_timeout: std::time::Duration::from_secs(1),
            max_resends: 3,
        };
        let mut engine = Engine::new(cfg, RecoGymEnv::new(world, 10, 30, None));
        let now = Instant::now();
        let (mut states, mut actions) = (Vec::new(), Vec::new());
        let mut queue = engine.fill(now);
        while let Some(s) = queue.pop() {
            states.push((Some(s.episode_id.clone().into_bytes()), s.clone()));
            queue.extend(engine.on_published(&s.episode_id, s.step, Ok(()), now));
            if s.terminated || s.truncated {
                continue;
            }
            let mut a = protocol::messages::examples::action();
            (a.env_id, a.episode_id, a.step, a.action) = (s.env_id.clone(), s.episode_id.clone(), s.step, s.step % 3);
            queue.extend(engine.on_action(&a, now).1);
            actions.push(a);
        }
        let head = SummaryHead {
            env_id: "reco-gym-v1/c".into(),
            transport: "t".into(),
            split: "u".into(),
            interrupted: false,
        };
        let summary = engine.metrics.summary(head, std::time::Duration::from_secs(1));
        (states, actions, summary)
    }

    #[test]
    fn recogym_checker_passes_a_conformant_run_and_catches_a_wrong_click() {
        let world = Arc::new(recogym::World::new(&recogym::Config { num_products: 3, ..recogym::Config::default() }));
        let (mut states, actions, summary) = recogym_run(world.clone());
        assert_eq!(summary.episodes, 30);
        assert_eq!(check_recogym_run(&world, None, &states, &actions, &summary), Vec::<Violation>::new());
        // The checker must fail on a broken run, or its silence proves nothing.
        let i = states.iter().position(|(_, s)| s.step > 0).unwrap_or_else(|| panic!("no step"));
        states[i].1.reward = 1.0 - states[i].1.reward;
        let violations = check_recogym_run(&world, None, &states, &actions, &summary);
        assert!(violations.iter().any(|v| v.contains("differs from the replay")), "{violations:?}");
    }
}
