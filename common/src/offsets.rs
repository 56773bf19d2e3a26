//! Which offset may be committed: the consumer stores an offset only when every record before it
//! in its partition has had its effect made durable (an action acknowledged, a row written).
//!
//! Invariant: the offset returned for a partition never passes a record still in flight, and
//! never goes backwards.

use std::collections::{BTreeSet, HashMap};

/// In-flight offsets per (topic, partition) and the highest offset safe to commit.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    in_flight: BTreeSet<i64>,
    /// Highest offset seen completed (its effect durable).
    max_done: Option<i64>,
    /// Last value returned as committable (next offset to read).
    committed: Option<i64>,
}

impl OffsetTracker {
    /// Records that `offset` was read and its effect is not yet durable.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) {
        self.partitions.entry((topic.to_string(), partition)).or_default().in_flight.insert(offset);
    }

    /// Records that `offset`'s effect is durable. Returns the new offset to commit (the next
    /// offset to read, i.e. last safe + 1) when it moved forward.
    pub fn complete(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_string(), partition))?;
        p.in_flight.remove(&offset);
        p.max_done = Some(p.max_done.map_or(offset, |m| m.max(offset)));
        let safe_next = match p.in_flight.first() {
            Some(&lowest) => lowest,
            None => p.max_done? + 1,
        };
        if p.committed.is_none_or(|c| safe_next > c) {
            p.committed = Some(safe_next);
            Some(safe_next)
        } else {
            None
        }
    }

    /// Forgets a partition (after it was revoked).
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_string(), partition));
    }

    /// Records still in flight, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_up_to_the_lowest_record_in_flight() {
        let mut t = OffsetTracker::default();
        for o in 10..13 {
            t.begin("s", 0, o);
        }
        assert_eq!(t.complete("s", 0, 12), Some(10), "10 and 11 are still in flight: commit nothing past 10");
        assert_eq!(t.complete("s", 0, 11), None);
        assert_eq!(t.complete("s", 0, 10), Some(13));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_never_go_back() {
        let mut t = OffsetTracker::default();
        t.begin("s", 0, 5);
        t.begin("s", 1, 7);
        assert_eq!(t.complete("s", 1, 7), Some(8));
        assert_eq!(t.complete("s", 0, 5), Some(6));
        t.begin("s", 0, 6);
        assert_eq!(t.complete("s", 0, 6), Some(7));
        assert_eq!(t.complete("s", 2, 1), None, "unknown partition");
    }
}
