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
}
