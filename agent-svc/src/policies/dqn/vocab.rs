//! The vocabulary: token ids for the words of the state texts the agent has observed (never the
//! dataset's), assigned on first sight.
//!
//! Invariant: ids never change once given, so token ids already stored in the replay buffer stay
//! valid, and any later copy of the vocabulary (a checkpoint) is a superset of every earlier one.
//! Id 0 is padding, id 1 stands for every word beyond the capacity (out of vocabulary).

use std::collections::HashMap;

/// Id of the padding token.
pub const PAD: i64 = 0;
/// Id of every word that found the vocabulary full.
pub const OOV: i64 = 1;
/// Ids below this are reserved (padding, out of vocabulary).
pub const RESERVED: usize = 2;

/// Word to id, growing up to a capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    capacity: usize,
    ids: HashMap<String, i64>,
    words: Vec<String>,
}

/// The words of `text`: lowercase, split on every character that is not alphanumeric.
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

impl Vocab {
    /// An empty vocabulary that holds at most `capacity` words.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, ids: HashMap::new(), words: Vec::new() }
    }

    /// A vocabulary holding `words` with ids in their order (as saved by [`Vocab::words`]).
    pub fn from_words(capacity: usize, words: Vec<String>) -> Self {
        let mut vocab = Self::new(capacity);
        for w in words.into_iter().take(capacity) {
            let id = (vocab.words.len() + RESERVED) as i64;
            vocab.ids.entry(w.clone()).or_insert(id);
            vocab.words.push(w);
        }
        vocab
    }

    /// Rows an embedding needs for every id this vocabulary can give.
    pub fn embedding_rows(capacity: usize) -> i64 {
        (capacity + RESERVED) as i64
    }

    /// Words known, in id order (id = position + [`RESERVED`]).
    pub fn words(&self) -> &[String] {
        &self.words
    }

    /// Number of words known.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether no word is known yet.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Id of `word`, giving it the next id when it is new and `grow` is set and there is room.
    pub fn id(&mut self, word: String, grow: bool) -> i64 {
        if let Some(&id) = self.ids.get(&word) {
            return id;
        }
        if !grow || self.words.len() >= self.capacity {
            return OOV;
        }
        let id = (self.words.len() + RESERVED) as i64;
        self.words.push(word.clone());
        self.ids.insert(word, id);
        id
    }

    /// Token ids of the first `max_tokens` words of `text` (unpadded; may be empty).
    pub fn encode(&mut self, text: &str, max_tokens: usize, grow: bool) -> Vec<i64> {
        tokenize(text).take(max_tokens).map(|w| self.id(w, grow)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_lowercase_on_non_alphanumerics() {
        let words: Vec<String> = tokenize("Levi's T-Shirt | sizes: XL, 2XL | colors: Black").collect();
        assert_eq!(words, ["levi", "s", "t", "shirt", "sizes", "xl", "2xl", "colors", "black"]);
    }

    #[test]
    fn grows_on_first_sight_then_maps_to_oov() {
        let mut v = Vocab::new(3);
        assert_eq!(v.encode("red dress red", 10, true), vec![2, 3, 2]);
        assert_eq!(v.encode("Blue RED green", 10, true), vec![4, 2, OOV], "full after three words");
        assert_eq!(v.encode("yellow dress", 10, false), vec![OOV, 3]);
        assert_eq!(v.len(), 3);
        assert_eq!(v.encode("a b c d e", 2, true), vec![OOV, OOV], "truncated to max_tokens");
        let mut frozen = Vocab::new(10);
        assert_eq!(frozen.encode("new words", 10, false), vec![OOV, OOV], "no growth when not asked");
        assert!(frozen.is_empty());
    }

    #[test]
    fn round_trips_through_its_word_list() {
        let mut v = Vocab::new(100);
        let ids = v.encode("size small medium color black dress", 32, true);
        let mut back = Vocab::from_words(100, v.words().to_vec());
        assert_eq!(back, v);
        assert_eq!(back.encode("size small medium color black dress", 32, false), ids);
    }
}
