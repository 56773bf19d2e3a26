//! Keyword extraction: the reference paper kept spaCy's nouns and proper nouns of a product's
//! reviews; this is an offline approximation without a tagger.
//!
//! Method, per product (its reviews' text and summary, plus its metadata title and brand):
//! 1. Tokenise: lowercase; a token is a run of letters and digits, with inner apostrophes kept
//!    (`levi's`, `don't`); a possessive `'s` is removed and other contractions are dropped.
//! 2. Drop tokens with a digit, tokens shorter than 3 or longer than 30 characters, English stop
//!    words and review boilerplate ([`STOP_WORDS`]), and common adjectives, adverbs and verbs
//!    ([`NON_NOUNS`]).
//! 3. Drop words that look like adverbs, adjectives or verb forms by suffix (`-ly`, `-ing`,
//!    `-ed`, `-ful`, `-ous`, `-able`, `-ible`, `-ive`, `-est`, `-less`, `-ish`) unless they are
//!    known nouns ([`NOUN_EXCEPTIONS`]: `clothing`, `lining`, `running`, `olive`, `vest`, ...).
//! 4. Rank the remaining terms of each product by TF-IDF over the catalogue:
//!    `(1 + ln tf) * (ln((1 + N) / (1 + df)) + 1)`, where `tf` counts the term in the product's
//!    texts, `N` is the number of products and `df` the number of products using the term;
//!    ties are broken alphabetically. The best `k` are the product's keywords.
//!
//! Invariant: the result depends only on the texts, never on their order or thread timing.

use std::sync::LazyLock;

use rayon::prelude::*;

use super::{FastMap, FastSet};

/// English stop words (NLTK's list and frequent function words) and review boilerplate.
#[rustfmt::skip]
pub const STOP_WORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "against", "all", "also", "although", "always", "am", "among",
    "an", "and", "another", "any", "anyone", "anything", "anyway", "are", "around", "as", "at", "away",
    "back", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can",
    "cannot", "could", "did", "do", "does", "doing", "done", "down", "during", "each", "either", "else",
    "enough", "etc", "even", "ever", "every", "everyone", "everything", "few", "for", "from", "further",
    "had", "has", "have", "having", "he", "her", "here", "hers", "herself", "him", "himself", "his", "how",
    "however", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "let", "lot", "lots", "may",
    "maybe", "me", "might", "mine", "more", "most", "much", "must", "my", "myself", "neither", "never", "no",
    "nor", "not", "nothing", "now", "of", "off", "often", "on", "once", "one", "ones", "only", "onto", "or",
    "other", "others", "otherwise", "our", "ours", "ourselves", "out", "over", "own", "per", "perhaps",
    "please", "quite", "rather", "same", "she", "should", "since", "so", "some", "someone", "something",
    "sometimes", "somewhat", "soon", "still", "such", "than", "that", "the", "their", "theirs", "them",
    "themselves", "then", "there", "these", "they", "this", "those", "though", "through", "thru", "thus",
    "till", "to", "together", "too", "toward", "towards", "under", "until", "unless", "up", "upon", "us",
    "very", "via", "was", "we", "were", "what", "whatever", "when", "whenever", "where", "whether", "which",
    "while", "who", "whoever", "whole", "whom", "whose", "why", "will", "with", "within", "without", "would",
    "yes", "yet", "you", "your", "yours", "yourself", "yourselves", "cant", "didnt", "doesnt", "dont", "isnt",
    "wasnt", "wont", "wouldnt", "couldnt", "shouldnt", "arent", "ive", "im", "youre", "thats", "theyre",
    "lol", "okay", "wow", "ugh", "thanks", "thank", "zero", "two", "three", "four", "five", "six", "seven",
    "eight", "nine", "ten", "dozen",
    // Review boilerplate: says nothing about the product.
    "amazon", "product", "products", "item", "items", "star", "stars", "review", "reviews", "reviewer",
    "thing", "things", "stuff", "bit", "way", "ways", "time", "times", "day", "days", "week", "weeks",
    "month", "months", "year", "years", "today", "people", "person", "everybody", "anybody", "somebody",
    "husband", "wife", "son", "daughter", "mom", "dad", "mother", "father", "friend", "friends", "girlfriend",
    "boyfriend", "kids", "kid", "seller", "sellers", "company", "description", "picture", "pictures", "photo",
    "photos", "reason", "problem", "problems", "issue", "issues", "deal", "money", "price", "purchase",
    "purchases", "order", "orders", "package", "shipping", "delivery", "box", "gift", "gifts", "pair",
    "pairs", "set", "sets", "piece", "pieces", "kind", "sort", "type", "part", "parts", "side", "sides",
    "end", "lot", "amp", "quot", "nbsp", "http", "https", "www", "com", "html", "br",
];

/// Common adjectives, adverbs and verbs of reviews that no suffix rule catches.
#[rustfmt::skip]
pub const NON_NOUNS: &[&str] = &[
    // adjectives
    "good", "great", "nice", "perfect", "excellent", "awesome", "pretty", "cute", "lovely", "gorgeous",
    "wonderful", "fantastic", "fabulous", "super", "happy", "glad", "pleased", "sad", "bad", "poor",
    "terrible", "horrible", "awful", "cheap", "pricey", "small", "smaller", "smallest", "large", "larger",
    "big", "bigger", "little", "tiny", "huge", "long", "longer", "short", "shorter", "tight", "tighter",
    "loose", "looser", "wide", "wider", "narrow", "high", "higher", "low", "lower", "light", "lighter",
    "heavy", "heavier", "thin", "thinner", "thick", "thicker", "soft", "softer", "hard", "harder", "easy",
    "easier", "difficult", "comfy", "true", "real", "actual", "fine", "new", "old", "right", "wrong", "sure",
    "able", "exact", "better", "best", "worse", "worst", "less", "least", "many", "several", "first",
    "second", "third", "last", "next", "same", "different", "entire", "full", "half", "usual", "normal",
    "regular", "typical", "special", "warm", "cool", "cold", "hot", "dry", "wet", "clean", "dark", "bright",
    "deep", "flat", "fast", "slow", "quick", "free", "ok", "fun", "sturdy", "flimsy", "snug", "roomy",
    "worth", "fit", "fits", "fitted", "decent", "nicer", "sharp", "classy", "solid", "stiff", "itchy",
    "scratchy", "cheaper", "pleasant", "sweet", "fancy", "plain", "simple", "tall", "weird", "strange", "odd",
    "extra", "main", "various", "overall", "apart",
    // adverbs
    "well", "too", "again", "almost", "already", "anyhow", "else", "instead", "later", "maybe", "never",
    "once", "rather", "really", "soon", "twice", "very", "though", "however", "definitely", "probably",
    "absolutely", "overall", "plus", "anymore", "ago",
    // verbs
    "love", "loves", "loved", "like", "likes", "liked", "buy", "buys", "bought", "get", "gets", "got",
    "gotten", "give", "gives", "gave", "given", "make", "makes", "made", "take", "takes", "took", "taken",
    "come", "comes", "came", "go", "goes", "went", "gone", "look", "looks", "see", "sees", "saw", "seen",
    "feel", "feels", "felt", "seem", "seems", "think", "thought", "know", "knew", "known", "want", "wants",
    "need", "needs", "recommend", "recommends", "use", "uses", "wear", "wears", "wore", "worn", "run", "runs",
    "ran", "keep", "keeps", "kept", "put", "puts", "try", "tries", "say", "says", "said", "tell", "told",
    "find", "finds", "found", "hold", "holds", "held", "stay", "stays", "work", "works", "wash", "washes",
    "return", "returns", "arrive", "arrives", "receive", "receives", "expect", "expects", "hope", "wish",
    "wanted", "order", "ordered",
    // irregular past forms no suffix rule catches
    "broke", "broken", "tore", "torn", "fell", "fallen", "sent", "paid", "spent", "lost", "left", "began",
    "fourth", "fifth", "sixth", "begun", "chose", "chosen", "wrote", "written", "became", "become", "stood", "sat", "hung", "shrank",
    "shrunk", "bent", "sold", "meant", "brought", "caught", "taught", "ate", "drew", "grew", "threw",
    "thrown",
];

/// Words that a suffix rule would drop but are nouns of fashion reviews.
#[rustfmt::skip]
pub const NOUN_EXCEPTIONS: &[&str] = &[
    // -ing
    "clothing", "lining", "padding", "stitching", "ring", "string", "spring", "sling", "swing", "wing",
    "king", "bling", "earring", "legging", "stocking", "running", "walking", "hiking", "swimming", "training",
    "cycling", "riding", "hunting", "fishing", "skiing", "boxing", "bowling", "wedding", "evening", "morning",
    "packaging", "sizing", "setting", "ceiling", "building", "pudding", "bedding", "piping", "quilting",
    "beading", "underwiring", "coating", "netting", "webbing", "tubing", "binding", "ruching", "smocking",
    "facing", "housing", "sibling", "stuffing", "trimming", "shearling", "duckling", "gosling", "darling",
    "thing",
    // -ly
    "jelly", "belly", "family", "butterfly", "supply", "assembly", "lily", "rally", "italy", "july",
    "anomaly", "monopoly", "dolly", "holly", "polly", "bully", "gully", "tally",
    // -ed
    "tweed", "speed", "breed", "hundred", "sled", "steed", "bred", "creed", "reed", "weed", "embed",
    // -ful, -ous, -less
    "handful", "mouthful", "spoonful", "bless", "mistress", "stainless",
    // -able, -ible
    "table", "cable", "fable", "vegetable", "bible", "constable", "timetable", "turntable", "stable",
    "crucible", "wearable", "collectible", "convertible",
    // -ive
    "olive", "archive", "drive", "adhesive", "motive", "detective", "executive", "representative",
    "alternative", "perspective", "initiative", "incentive", "explosive", "hive", "knive", "relative",
    // -est
    "vest", "chest", "forest", "interest", "test", "quest", "crest", "harvest", "request", "contest",
    "protest", "west", "nest", "pest", "guest", "rest", "zest", "manifest", "digest", "priest",
    // -ish
    "polish", "finish", "relish", "radish", "varnish", "garnish", "english", "dish", "fish",
];

static STOP: LazyLock<FastSet<&'static str>> = LazyLock::new(|| STOP_WORDS.iter().chain(NON_NOUNS).copied().collect());
static NOUNS: LazyLock<FastSet<&'static str>> = LazyLock::new(|| NOUN_EXCEPTIONS.iter().copied().collect());

/// Suffixes of adverbs, adjectives and verb forms, each with the shortest word it applies to.
const SUFFIXES: &[(&str, usize)] = &[
    ("ly", 5),
    ("ing", 5),
    ("ed", 5),
    ("ful", 6),
    ("ous", 6),
    ("able", 6),
    ("ible", 6),
    ("ive", 6),
    ("est", 6),
    ("less", 6),
    ("ish", 6),
];

/// Whether a lowercase token (already split) may be a keyword: the filters of steps 2 and 3.
pub fn is_candidate(token: &str) -> bool {
    let chars = token.chars().count();
    if !(3..=30).contains(&chars) || token.bytes().any(|b| b.is_ascii_digit()) || STOP.contains(token) {
        return false;
    }
    if NOUNS.contains(token) {
        return true;
    }
    !SUFFIXES.iter().any(|(suffix, min)| chars >= *min && token.ends_with(suffix))
}

/// Calls `f` with every candidate token of `text` (step 1 and the filters), lowercase.
pub fn for_each_candidate(text: &str, mut f: impl FnMut(&str)) {
    let mut token = String::with_capacity(32);
    let mut flush = |token: &mut String| {
        if !token.is_empty() {
            let t = token.trim_end_matches('\'');
            let t = t.strip_suffix("'s").unwrap_or(t);
            if !t.contains('\'') && is_candidate(t) {
                f(t);
            }
            token.clear();
        }
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            token.push(c.to_ascii_lowercase());
        } else if (c == '\'' || c == '\u{2019}') && !token.is_empty() {
            token.push('\'');
        } else if c.is_alphanumeric() {
            token.extend(c.to_lowercase());
        } else {
            flush(&mut token);
        }
    }
    flush(&mut token);
}

/// The spelling of every term hash met; filled per batch of products and merged.
#[derive(Debug, Default)]
pub struct Vocabulary {
    terms: FastMap<u64, Box<str>>,
}

impl Vocabulary {
    /// The term of a hash (empty if unknown).
    pub fn term(&self, hash: u64) -> &str {
        self.terms.get(&hash).map_or("", |t| t)
    }

    /// Adds the terms of `other`.
    pub fn merge(&mut self, other: Vocabulary) {
        if self.terms.is_empty() {
            self.terms = other.terms;
        } else {
            self.terms.extend(other.terms);
        }
    }
}

/// The id of a term: its 64-bit xxh3 hash (a collision among a catalogue's ~10^6 terms has a
/// probability below 10^-7, and would only merge two terms' counts).
pub fn term_hash(term: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(term.as_bytes())
}

/// Term counts of one product's texts as `(term hash, count)`, sorted by hash; the terms'
/// spellings go into `vocab`.
pub fn count_terms<'a>(texts: impl IntoIterator<Item = &'a str>, vocab: &mut Vocabulary) -> Vec<(u64, u32)> {
    let mut counts: FastMap<u64, u32> = FastMap::default();
    for text in texts {
        for_each_candidate(text, |t| {
            let h = term_hash(t);
            let n = counts.entry(h).or_insert(0);
            if *n == 0 {
                vocab.terms.entry(h).or_insert_with(|| t.into());
            }
            *n += 1;
        });
    }
    let mut terms: Vec<(u64, u32)> = counts.into_iter().collect();
    terms.sort_unstable();
    terms
}

/// The `k` best terms of each product by TF-IDF over all `products` (each a [`count_terms`]
/// result), best first, ties alphabetical.
pub fn top_keywords(products: &[Vec<(u64, u32)>], vocab: &Vocabulary, k: usize) -> Vec<Vec<String>> {
    let mut df: FastMap<u64, u32> = FastMap::default();
    for terms in products {
        for (t, _) in terms {
            *df.entry(*t).or_insert(0) += 1;
        }
    }
    let n = products.len() as f64;
    products
        .par_iter()
        .map(|terms| {
            let mut scored: Vec<(f64, &str)> = terms
                .iter()
                .map(|(t, tf)| {
                    let d = f64::from(df.get(t).copied().unwrap_or(1));
                    let idf = ((1.0 + n) / (1.0 + d)).ln() + 1.0;
                    ((1.0 + f64::from(*tf).ln()) * idf, vocab.term(*t))
                })
                .collect();
            let k = k.min(scored.len());
            if k == 0 {
                return Vec::new();
            }
            let by_rank = |a: &(f64, &str), b: &(f64, &str)| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1));
            scored.select_nth_unstable_by(k - 1, by_rank);
            scored.truncate(k);
            scored.sort_unstable_by(by_rank);
            scored.into_iter().map(|(_, t)| t.to_string()).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_candidate(text, |t| out.push(t.to_string()));
        out
    }

    #[test]
    fn tokenises_and_filters() {
        assert_eq!(
            candidates("I REALLY love these Levi's 501 jeans; the denim isn't thin, it's sturdy & great!"),
            vec!["levi", "jeans", "denim"]
        );
        assert_eq!(candidates("Runs small. Ordered a 32x34 in Dark-Wash denim."), vec!["denim"]);
        assert_eq!(candidates("Beautiful, comfortable, stretchy leggings"), vec!["stretchy", "leggings"]);
        assert_eq!(candidates("Caf\u{e9} DÉCOR they\u{2019}re"), vec!["café", "décor"]);
    }

    #[test]
    fn suffix_rules_spare_known_nouns() {
        for noun in ["clothing", "lining", "running", "olive", "vest", "polish", "boots", "leather", "zipper"] {
            assert!(is_candidate(noun), "{noun}");
        }
        for word in ["quickly", "amazing", "returned", "beautiful", "gorgeous", "washable", "expensive", "cheapest"] {
            assert!(!is_candidate(word), "{word}");
        }
        assert!(!is_candidate("ab") && !is_candidate("abc1") && !is_candidate(&"x".repeat(31)));
    }

    #[test]
    fn leather_boots_outrank_filler_words() {
        let mut v = Vocabulary::default();
        let boots = count_terms(
            [
                "Really great leather boots. The leather is soft and the boots fit well.",
                "Great boots, really comfortable, the heel is sturdy leather",
                "Love these boots",
            ],
            &mut v,
        );
        let shirt = count_terms(["Great shirt, really soft cotton", "Nice cotton shirt, love it"], &mut v);
        let socks = count_terms(["Great socks. Really warm wool socks."], &mut v);
        let top = top_keywords(&[boots, shirt, socks], &v, 3);
        assert_eq!(top[0], vec!["boots", "leather", "heel"]);
        assert_eq!(top[1], vec!["cotton", "shirt"]);
        assert_eq!(top[2], vec!["socks", "wool"]);
    }

    #[test]
    fn rare_terms_beat_terms_every_product_uses() {
        // "shoes" is in every product, "suede" only in the first: with equal tf, suede wins.
        let mut v = Vocabulary::default();
        let a = count_terms(["shoes suede"], &mut v);
        let b = count_terms(["shoes canvas"], &mut v);
        let c = count_terms(["shoes mesh"], &mut v);
        let top = top_keywords(&[a, b, c], &v, 1);
        assert_eq!(top, vec![vec!["suede"], vec!["canvas"], vec!["mesh"]]);
        // Ties are alphabetical; k larger than the terms, or 0, is fine.
        let zb = count_terms(["zipper button"], &mut v);
        assert_eq!(top_keywords(std::slice::from_ref(&zb), &v, 5), vec![vec!["button", "zipper"]]);
        assert_eq!(top_keywords(&[zb], &v, 0), vec![Vec::<String>::new()]);
    }
}
