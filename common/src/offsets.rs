//! Which offset may be committed: the consumer stores an offset only when every record before it
//! in its partition has had its effect made durable (an action acknowledged, a row written).
//!
//! Invariant: the offset returned for a partition never passes a record still in flight, and
//! never goes backwards while the partition is owned. A partition that is revoked is forgotten
//! with everything in flight in it; a [`Ticket`] taken before the revocation no longer counts
//! (its generation is gone), so a late acknowledgement can never move the offsets of the same
//! partition owned again later.

use std::collections::{BTreeSet, HashMap};

/// A record begun: where it is and which ownership of its partition it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// Topic of the record.
    pub topic: String,
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// Ownership of the partition the record was read under.
    generation: u64,
}

/// In-flight offsets per (topic, partition) and the highest offset safe to commit.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
    /// Generations handed out so far (each new ownership of a partition takes the next).
    generations: u64,
}

#[derive(Debug)]
struct Partition {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// Highest offset seen completed (its effect durable).
    max_done: Option<i64>,
    /// Last value returned as committable (next offset to read).
    committed: Option<i64>,
}

impl OffsetTracker {
    /// Records that `offset` was read and its effect is not yet durable.
    pub fn begin(&mut self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let next_generation = self.generations + 1;
        let p = self.partitions.entry((topic.to_string(), partition)).or_insert_with(|| Partition {
            generation: next_generation,
            in_flight: BTreeSet::new(),
            max_done: None,
            committed: None,
        });
        if p.generation == next_generation {
            self.generations = next_generation;
        }
        p.in_flight.insert(offset);
        Ticket { topic: topic.to_string(), partition, offset, generation: p.generation }
    }

    /// Records that the ticket's record has its effect durable. Returns the new offset to
    /// commit (the next offset to read, i.e. last safe + 1) when it moved forward; `None` too
    /// for a ticket of a partition revoked since.
    pub fn complete(&mut self, ticket: &Ticket) -> Option<i64> {
        let p = self.partitions.get_mut(&(ticket.topic.clone(), ticket.partition))?;
        if p.generation != ticket.generation {
            return None;
        }
        p.in_flight.remove(&ticket.offset);
        p.max_done = Some(p.max_done.map_or(ticket.offset, |m| m.max(ticket.offset)));
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

    /// Forgets a partition (it was revoked) with the records in flight in it; returns how many
    /// were in flight. Tickets taken before stay unresolvable.
    pub fn revoke(&mut self, topic: &str, partition: i32) -> usize {
        self.partitions.remove(&(topic.to_string(), partition)).map_or(0, |p| p.in_flight.len())
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
        let tickets: Vec<Ticket> = (10..13).map(|o| t.begin("s", 0, o)).collect();
        assert_eq!(t.complete(&tickets[2]), Some(10), "10 and 11 are still in flight: commit nothing past 10");
        assert_eq!(t.complete(&tickets[1]), None);
        assert_eq!(t.complete(&tickets[0]), Some(13));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent_and_never_go_back() {
        let mut t = OffsetTracker::default();
        let a = t.begin("s", 0, 5);
        let b = t.begin("s", 1, 7);
        assert_eq!(t.complete(&b), Some(8));
        assert_eq!(t.complete(&a), Some(6));
        let c = t.begin("s", 0, 6);
        assert_eq!(t.complete(&c), Some(7));
        let unknown = Ticket { topic: "s".into(), partition: 2, offset: 1, generation: 1 };
        assert_eq!(t.complete(&unknown), None, "unknown partition");
    }

    #[test]
    fn a_revoked_partition_forgets_its_records_and_late_tickets_do_not_count() {
        let mut t = OffsetTracker::default();
        let old: Vec<Ticket> = (10..13).map(|o| t.begin("s", 0, o)).collect();
        let other = t.begin("s", 1, 3);
        assert_eq!(t.revoke("s", 0), 3);
        assert_eq!(t.in_flight(), 1, "only partition 1's record is left");
        // Owned again later and re-read from the committed offset 10.
        let again: Vec<Ticket> = (10..13).map(|o| t.begin("s", 0, o)).collect();
        // The old delivery of 12 completes late: it must not resolve the re-read 12.
        assert_eq!(t.complete(&old[2]), None);
        assert_eq!(t.in_flight(), 4);
        assert_eq!(t.complete(&again[0]), Some(11));
        assert_eq!(t.complete(&again[2]), None, "11 still in flight");
        assert_eq!(t.complete(&again[1]), Some(13));
        assert_eq!(t.complete(&other), Some(4));
        assert_eq!(t.in_flight(), 0);
    }
}
