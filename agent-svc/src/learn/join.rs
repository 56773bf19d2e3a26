//! Rebuilds transitions from the state topic, for the learner: an episode's states share a
//! key, hence a partition, so they arrive in step order; each state after the first closes the
//! transition from the one before it, with the action the env applied (`last_action`, stamped
//! by the env on the state it led to) and the reward it paid. Pure logic, no I/O.
//!
//! Invariant: a state read but still needed (the open end of its episode) pins its partition's
//! offset: [`Joiner::safe_offsets`] never lets a commit pass it, so a learner that restarts from
//! its committed offsets rebuilds every transition it had not learned (some twice, none lost).

use std::collections::{BTreeMap, HashMap};

use protocol::StateMsg;

/// What a state did to the join.
#[derive(Debug, Clone, PartialEq)]
pub enum Joined {
    /// It closes the transition from `prev` (the action is `next.last_action`).
    Transition {
        /// The state the action answered.
        prev: Box<StateMsg>,
    },
    /// The first state seen of its episode (or the first after a gap): nothing to learn yet.
    Opened,
    /// A step at or before the one held (a re-send, or a re-read after a restart): ignored.
    Duplicate,
    /// A step after a missing one (its predecessor was never read): held, nothing learned.
    Gap,
}

#[derive(Debug, Clone)]
struct Held {
    state: StateMsg,
    partition: i32,
    offset: i64,
}

/// The open end of every episode in flight.
#[derive(Debug, Default)]
pub struct Joiner {
    open: HashMap<String, Held>,
    /// Episodes dropped by [`Joiner::evict_older_than`].
    pub evicted: u64,
}

impl Joiner {
    /// Offers the state read at `partition`/`offset` of the state topic.
    pub fn push(&mut self, state: StateMsg, partition: i32, offset: i64) -> Joined {
        let end = state.terminated || state.truncated;
        let held = self.open.get(&state.episode_id);
        let joined = match held {
            Some(h) if state.step <= h.state.step => return Joined::Duplicate,
            Some(h) if state.step == h.state.step + 1 => None,
            Some(_) => Some(Joined::Gap),
            None => Some(Joined::Opened),
        };
        let prev = if end {
            self.open.remove(&state.episode_id)
        } else {
            self.open.insert(state.episode_id.clone(), Held { state, partition, offset })
        };
        match (joined, prev) {
            (Some(j), _) => j,
            (None, Some(prev)) => Joined::Transition { prev: Box::new(prev.state) },
            (None, None) => Joined::Opened,
        }
    }

    /// Episodes in flight.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// The lowest offset each partition may be committed at: that of its oldest state still
    /// held, for the partitions holding one (the others may be committed at their position).
    pub fn safe_offsets(&self) -> BTreeMap<i32, i64> {
        let mut out: BTreeMap<i32, i64> = BTreeMap::new();
        for h in self.open.values() {
            out.entry(h.partition).and_modify(|o| *o = (*o).min(h.offset)).or_insert(h.offset);
        }
        out
    }

    /// Forgets the episodes whose open state was published before `ts_ms` (an env that died
    /// mid-episode would pin their offsets forever); returns how many.
    pub fn evict_older_than(&mut self, ts_ms: i64) -> usize {
        let before = self.open.len();
        self.open.retain(|_, h| h.state.ts_ms >= ts_ms);
        let evicted = before - self.open.len();
        self.evicted += evicted as u64;
        evicted
    }
}

#[cfg(test)]
mod tests {
    use protocol::messages::examples;

    use super::*;

    fn state(episode: &str, step: u32, end: bool) -> StateMsg {
        let mut s = examples::state();
        (s.episode_id, s.step, s.terminated, s.ts_ms) = (episode.into(), step, end, i64::from(step) * 10);
        s.last_action = (step > 0).then_some(step + 100);
        s
    }

    #[test]
    fn each_state_after_the_first_closes_one_transition_and_the_end_releases_the_episode() {
        let mut j = Joiner::default();
        assert_eq!(j.push(state("a", 0, false), 0, 10), Joined::Opened);
        assert_eq!(j.push(state("b", 0, false), 0, 11), Joined::Opened);
        let Joined::Transition { prev } = j.push(state("a", 1, false), 0, 12) else { panic!("no transition") };
        assert_eq!(prev.step, 0);
        assert_eq!(j.safe_offsets(), BTreeMap::from([(0, 11)]), "b's open state pins the partition");
        assert!(matches!(j.push(state("a", 2, true), 0, 13), Joined::Transition { .. }));
        assert!(matches!(j.push(state("b", 1, true), 0, 14), Joined::Transition { .. }));
        assert_eq!(j.open(), 0);
        assert!(j.safe_offsets().is_empty(), "nothing held: commit at the position");
    }

    #[test]
    fn re_reads_are_ignored_and_gaps_learn_nothing() {
        let mut j = Joiner::default();
        j.push(state("a", 0, false), 1, 0);
        assert!(matches!(j.push(state("a", 1, false), 1, 1), Joined::Transition { .. }));
        assert_eq!(j.push(state("a", 1, false), 1, 2), Joined::Duplicate, "a re-sent step");
        assert_eq!(j.push(state("a", 0, false), 1, 0), Joined::Duplicate, "a re-read older step");
        assert_eq!(j.push(state("a", 3, false), 1, 3), Joined::Gap);
        assert!(matches!(j.push(state("a", 4, false), 1, 4), Joined::Transition { .. }), "joins again after the gap");
        assert_eq!(j.safe_offsets(), BTreeMap::from([(1, 4)]));
    }

    #[test]
    fn stale_episodes_are_evicted_and_stop_pinning_their_offsets() {
        let mut j = Joiner::default();
        j.push(state("old", 0, false), 0, 5);
        j.push(state("new", 3, false), 0, 9);
        assert_eq!(j.evict_older_than(10), 1);
        assert_eq!((j.open(), j.evicted), (1, 1));
        assert_eq!(j.safe_offsets(), BTreeMap::from([(0, 9)]));
    }
}
