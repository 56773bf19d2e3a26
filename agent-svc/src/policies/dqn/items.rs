//! What the agent knows of each item for the item tower (`--dqn-head tower`): the token ids of
//! its own text, as the stream showed it. The agent never reads the dataset: an item's tokens
//! are recorded the first time a state describes it (a fashion state describes its current
//! product; a RecoGym state describes no item, so its items are known by their id alone), and
//! an item the stream never described has none (its text part is zero; its id embedding and
//! bias still learn).
//!
//! Invariant: tokens are ids of the shared vocabulary, already handed out when recorded, so
//! they index embedding rows the learner's Adam treats as active.

use tch::{Device, Kind, Tensor};

/// Item index to the token ids of its text; shared by the policy side (which records) and the
/// learner (which reads).
#[derive(Debug, Default, Clone)]
pub struct ItemTokens {
    tokens: Vec<Vec<i64>>,
    known: usize,
}

impl ItemTokens {
    /// Records `tokens` as item `item`'s text; returns whether it changed.
    pub fn set(&mut self, item: i64, tokens: &[i64]) -> bool {
        let Ok(i) = usize::try_from(item) else { return false };
        if i >= self.tokens.len() {
            self.tokens.resize(i + 1, Vec::new());
        }
        if self.tokens[i] == tokens {
            return false;
        }
        self.known += usize::from(self.tokens[i].is_empty() && !tokens.is_empty());
        self.tokens[i] = tokens.to_vec();
        true
    }

    /// The tokens of `item` (empty when unknown).
    pub fn get(&self, item: i64) -> &[i64] {
        usize::try_from(item).ok().and_then(|i| self.tokens.get(i)).map_or(&[], Vec::as_slice)
    }

    /// Every item's tokens by index (empty: unknown), as checkpoints store them.
    pub fn to_vecs(&self) -> Vec<Vec<i64>> {
        self.tokens.clone()
    }

    /// The table that [`ItemTokens::to_vecs`] wrote.
    pub fn from_vecs(tokens: Vec<Vec<i64>>) -> Self {
        let known = tokens.iter().filter(|t| !t.is_empty()).count();
        Self { tokens, known }
    }

    /// Items with known tokens.
    pub fn known(&self) -> usize {
        self.known
    }

    /// The bags of `items` for `embedding_bag`: the concatenated token ids `[total]` and each
    /// bag's start `[items]` (int64, on `device`). An unknown item is an empty bag.
    pub fn bags(&self, items: &[i64], device: Device) -> (Tensor, Tensor) {
        let mut flat = Vec::new();
        let mut offsets = Vec::with_capacity(items.len());
        for &item in items {
            offsets.push(flat.len() as i64);
            flat.extend_from_slice(self.get(item));
        }
        let flat = Tensor::from_slice(&flat).to_kind(Kind::Int64).to_device(device);
        (flat, Tensor::from_slice(&offsets).to_device(device))
    }
}

/// The sparse wide table's index (`--dqn-head tower --dqn-wide true`): which slot of the
/// table holds the offset of each (state's item, action) pair. A pair gets a slot the first time
/// the learner trains a positive target for it, in order, until `capacity` slots are taken;
/// later pairs get none (their offset is 0). Memory grows with the pairs seen, never with
/// items × actions. Slots are never reused, so a slot's weight in any snapshot belongs to its
/// pair (a slot assigned after a snapshot reads its initial 0 there).
#[derive(Debug, Default, Clone)]
pub struct PairIndex {
    capacity: usize,
    slot_of: std::collections::HashMap<(i64, i64), i64>,
    by_item: std::collections::HashMap<i64, Vec<(i64, i64)>>,
}

impl PairIndex {
    /// An empty index of `capacity` slots.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, ..Self::default() }
    }

    /// Slots taken.
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// Whether no slot is taken.
    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Most slots.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The slot of `(item, action)`, if it has one.
    pub fn slot(&self, item: i64, action: i64) -> Option<i64> {
        self.slot_of.get(&(item, action)).copied()
    }

    /// The slot of `(item, action)`, taking the next free one if it has none; `None` when the
    /// table is full.
    pub fn slot_or_take(&mut self, item: i64, action: i64) -> Option<i64> {
        if let Some(s) = self.slot(item, action) {
            return Some(s);
        }
        if self.slot_of.len() >= self.capacity {
            return None;
        }
        let s = self.slot_of.len() as i64;
        self.slot_of.insert((item, action), s);
        self.by_item.entry(item).or_default().push((action, s));
        Some(s)
    }

    /// `(action, slot)` of every pair of `item`.
    pub fn of_item(&self, item: i64) -> &[(i64, i64)] {
        self.by_item.get(&item).map_or(&[], Vec::as_slice)
    }

    /// The pairs in slot order, `(item, action)` (what a checkpoint keeps).
    pub fn pairs(&self) -> Vec<(i64, i64)> {
        let mut v: Vec<((i64, i64), i64)> = self.slot_of.iter().map(|(&k, &s)| (k, s)).collect();
        v.sort_by_key(|&(_, s)| s);
        v.into_iter().map(|(k, _)| k).collect()
    }

    /// The index whose slots `0..` hold `pairs`, in order.
    pub fn from_pairs(capacity: usize, pairs: &[(i64, i64)]) -> Self {
        let mut index = Self::new(capacity.max(pairs.len()));
        for &(item, action) in pairs {
            index.slot_or_take(item, action);
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_tokens_once_and_bags_unknown_items_empty() {
        let mut t = ItemTokens::default();
        assert!(t.set(3, &[5, 6]));
        assert!(!t.set(3, &[5, 6]), "the same text again is no change");
        assert!(t.set(1, &[7]));
        assert_eq!((t.get(3), t.get(0), t.get(99), t.known()), (&[5i64, 6][..], &[][..], &[][..], 2));
        let (flat, offsets) = t.bags(&[3, 0, 1], Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(flat).unwrap_or_default(), [5, 6, 7]);
        assert_eq!(Vec::<i64>::try_from(offsets).unwrap_or_default(), [0, 2, 2]);
    }

    #[test]
    fn pairs_take_slots_in_order_until_the_table_is_full() {
        let mut p = PairIndex::new(2);
        assert_eq!(p.slot_or_take(4, 9), Some(0));
        assert_eq!(p.slot_or_take(4, 9), Some(0), "a pair keeps its slot");
        assert_eq!(p.slot_or_take(5, 1), Some(1));
        assert_eq!(p.slot_or_take(6, 1), None, "full: no slot, no eviction");
        assert_eq!((p.slot(6, 1), p.of_item(4), p.len()), (None, &[(9, 0)][..], 2));
        let back = PairIndex::from_pairs(2, &p.pairs());
        assert_eq!((back.slot(4, 9), back.slot(5, 1)), (Some(0), Some(1)));
    }
}
