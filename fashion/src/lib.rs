//! Amazon Fashion data: reading the McAuley-lab review dumps (2018 "Amazon Review Data" and 2023
//! "Amazon Reviews'23"), a synthetic generator of the 2018 files, and the preprocessing that
//! turns reviews into the environment's action space (products) and episodes (user sequences).
//!
//! Invariant: `products` are sorted by product id and `products[i].index == i` (the action
//! space); every `UserSeq::items` entry is `< n_actions()`; the same files and flags always give
//! the same [`Dataset`], whatever the order of the lines in the files.

pub mod amazon;
pub mod cli;
pub mod generate;
pub mod keywords;
pub mod prep;
mod progress;
mod read;

use std::{
    hash::{BuildHasherDefault, Hasher},
    path::{Path, PathBuf},
    time::Instant,
};

use serde::Serialize;

pub use amazon::{Format, Meta, Review};

/// Longest text of a product in a state, in bytes (the schema's bound on `ProductObs::text`).
pub const MAX_TEXT_BYTES: usize = 8192;

/// File names of the reviews, in the order they are looked for in a `--dataset` folder.
pub const REVIEW_FILE_NAMES: [&str; 4] =
    ["AMAZON_FASHION.json.gz", "AMAZON_FASHION.json", "Amazon_Fashion.jsonl.gz", "Amazon_Fashion.jsonl"];
/// File names of the product metadata, in the order they are looked for.
pub const META_FILE_NAMES: [&str; 4] = [
    "meta_AMAZON_FASHION.json.gz",
    "meta_AMAZON_FASHION.json",
    "meta_Amazon_Fashion.jsonl.gz",
    "meta_Amazon_Fashion.jsonl",
];

/// A product of the catalogue: one action of the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Amazon product id: `asin` in the 2018 release, `parent_asin` in 2023.
    pub id: String,
    /// Position in the catalogue sorted by `id`; the action that recommends this product.
    pub index: u32,
    /// Title from the metadata (HTML stripped), empty when the product has none.
    pub title: String,
    /// Sizes seen in its reviews' `style` (or its 2023 metadata), most frequent first.
    pub sizes: Vec<String>,
    /// Colours seen in its reviews' `style` (or its 2023 metadata), most frequent first.
    pub colors: Vec<String>,
    /// Keywords of its reviews and title, best TF-IDF first (see [`keywords`]).
    pub keywords: Vec<String>,
}

impl Product {
    /// One line of metadata text for a state: title, sizes, colours and keywords, e.g.
    /// `Levi's Men's 505 Jeans | sizes: 32W x 32L, 34W x 32L | colors: Dark Wash | keywords: jeans,
    /// denim`; at most [`MAX_TEXT_BYTES`] bytes, cut at a character boundary.
    pub fn text(&self) -> String {
        let mut parts: Vec<String> = Vec::with_capacity(4);
        if !self.title.is_empty() {
            parts.push(self.title.clone());
        }
        for (label, values) in [("sizes", &self.sizes), ("colors", &self.colors), ("keywords", &self.keywords)] {
            if !values.is_empty() {
                parts.push(format!("{label}: {}", values.join(", ")));
            }
        }
        let mut text = parts.join(" | ").replace(['\n', '\r'], " ");
        truncate_at_char(&mut text, MAX_TEXT_BYTES);
        text
    }
}

/// One user's products in the order they reviewed them: the episode replays this sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSeq {
    /// `reviewerID` (2018) or `user_id` (2023).
    pub user_id: String,
    /// Product indices in time order, no two consecutive equal; at least 2 long.
    pub items: Vec<u32>,
}

/// Which users an episode may replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Users whose seeded hash falls at or above the test fraction.
    Train,
    /// Users whose seeded hash falls below the test fraction.
    Test,
    /// Every user.
    All,
}

/// The split of a user: test when `xxh3_64_with_seed(user_id, seed) / 2^64 < test_fraction`.
/// Depends only on the id, so it is stable whatever the order of the files.
pub fn split_of(user_id: &str, test_fraction: f64, seed: u64) -> Split {
    let h = xxhash_rust::xxh3::xxh3_64_with_seed(user_id.as_bytes(), seed);
    // 2^-64: maps the hash onto [0, 1).
    if (h as f64) * 5.421_010_862_427_522e-20 < test_fraction {
        Split::Test
    } else {
        Split::Train
    }
}

/// The preprocessed data: catalogue, user sequences and how they were obtained.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The action space: `products[i].index == i`, sorted by `id`.
    pub products: Vec<Product>,
    /// Sequences of the kept users, sorted by `user_id`.
    pub users: Vec<UserSeq>,
    /// What was read and kept; also holds the split settings used by [`Dataset::users_in`].
    pub stats: LoadStats,
}

impl Dataset {
    /// The users of a split (by [`split_of`] with `stats.test_fraction` and `stats.split_seed`),
    /// in `user_id` order.
    pub fn users_in(&self, split: Split) -> Vec<&UserSeq> {
        let (fraction, seed) = (self.stats.test_fraction, self.stats.split_seed);
        self.users.iter().filter(|u| split == Split::All || split_of(&u.user_id, fraction, seed) == split).collect()
    }

    /// Number of actions: products in the catalogue.
    pub fn n_actions(&self) -> u32 {
        u32::try_from(self.products.len()).unwrap_or(u32::MAX)
    }

    /// Fingerprint of the action space, as states carry it (`catalog`): 16 hex digits of the
    /// xxh3-64 of the product ids joined by newlines in index order. Two datasets that map the
    /// same ids to the same indices share it; any other difference changes it.
    pub fn catalog_fingerprint(&self) -> String {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for p in &self.products {
            hasher.update(p.id.as_bytes());
            hasher.update(b"\n");
        }
        format!("{:016x}", hasher.digest())
    }
}

/// What a load read, dropped and kept, with the settings it used; written by `inspect`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadStats {
    /// Reviews file read.
    pub reviews_file: String,
    /// Metadata file read, if any.
    pub meta_file: Option<String>,
    /// Release of the reviews file.
    pub format: Format,
    /// Lines in the reviews file (blank ones included).
    pub lines: u64,
    /// Reviews parsed (before any filter).
    pub reviews_read: u64,
    /// Reviews dropped because they are not verified purchases (verified-only mode).
    pub reviews_unverified: u64,
    /// Malformed review lines skipped (`--skip-bad-lines`).
    pub bad_lines: u64,
    /// Malformed metadata lines skipped (`--skip-bad-lines`).
    pub meta_bad_lines: u64,
    /// The first few skipped lines of each file, as `file:line: reason`.
    pub bad_line_examples: Vec<String>,
    /// Lines in the metadata file.
    pub meta_lines: u64,
    /// Distinct products in the metadata.
    pub meta_products: u64,
    /// Metadata lines whose product id was already seen (the first one is kept).
    pub duplicate_meta: u64,
    /// Distinct users among the reviews that passed the verified filter.
    pub users_total: u64,
    /// Users with at least `min_reviews` reviews and a sequence of at least 2 products.
    pub users_kept: u64,
    /// Reviews of kept users, before collapsing consecutive duplicates.
    pub reviews_kept: u64,
    /// Consecutive reviews of the same product removed from kept users' sequences.
    pub duplicates_collapsed: u64,
    /// Products in the catalogue (the action space).
    pub products_kept: u64,
    /// Catalogue products that have metadata.
    pub products_with_meta: u64,
    /// Sum of the kept sequences' lengths.
    pub sequence_items: u64,
    /// Kept users in the train split.
    pub train_users: u64,
    /// Kept users in the test split.
    pub test_users: u64,
    /// Setting: only verified purchases count.
    pub verified_only: bool,
    /// Setting: minimum reviews of a kept user.
    pub min_reviews: u32,
    /// Setting: keywords per product.
    pub keywords: usize,
    /// Setting: share of users in the test split.
    pub test_fraction: f64,
    /// Setting: seed of the split hash.
    pub split_seed: u64,
    /// Seconds spent reading both files.
    pub read_seconds: f64,
    /// Seconds spent preprocessing.
    pub prep_seconds: f64,
    /// Seconds for the whole load.
    pub seconds: f64,
}

/// Where the data comes from and how it is preprocessed.
#[derive(Debug, Clone, clap::Args)]
pub struct DatasetArgs {
    /// Folder with the Amazon Fashion files, gzip or plain: 2018 `AMAZON_FASHION.json.gz` and
    /// `meta_AMAZON_FASHION.json.gz`, or 2023 `Amazon_Fashion.jsonl.gz` and
    /// `meta_Amazon_Fashion.jsonl.gz`. Reviews are required, metadata optional.
    #[arg(long, env = "DATASET", default_value = "data/sample")]
    pub dataset: PathBuf,
    /// Reviews file to read instead of the one found in `--dataset`.
    #[arg(long, env = "DATASET_REVIEWS")]
    pub reviews: Option<PathBuf>,
    /// Metadata file to read instead of the one found in `--dataset`.
    #[arg(long, env = "DATASET_META")]
    pub meta: Option<PathBuf>,
    /// Count malformed lines and go on (reporting the first few) instead of stopping at the first.
    #[arg(long, env = "SKIP_BAD_LINES")]
    pub skip_bad_lines: bool,
    /// Keep users with at least this many reviews (counted after the verified filter).
    #[arg(long, env = "MIN_REVIEWS", default_value_t = 10)]
    pub min_reviews: u32,
    /// Use every review, not only verified purchases.
    #[arg(long, env = "ALL_REVIEWS")]
    pub all_reviews: bool,
    /// Keywords extracted per product.
    #[arg(long, env = "KEYWORDS", default_value_t = 8)]
    pub keywords: usize,
    /// Share of users in the test split, in [0, 1].
    #[arg(long, env = "TEST_FRACTION", default_value_t = 0.2)]
    pub test_fraction: f64,
    /// Seed of the hash that splits users into train and test.
    #[arg(long, env = "SPLIT_SEED", default_value_t = 0)]
    pub split_seed: u64,
    /// The action space is every product of the reviews and the metadata (186,637 in the 2018
    /// metadata), not only the products of kept users' sequences (the paper's preprocessing).
    #[arg(long, env = "ALL_PRODUCTS")]
    pub all_products: bool,
}

impl Default for DatasetArgs {
    /// The same values as the command-line defaults.
    fn default() -> Self {
        Self {
            dataset: PathBuf::from("data/sample"),
            reviews: None,
            meta: None,
            skip_bad_lines: false,
            min_reviews: 10,
            all_reviews: false,
            keywords: 8,
            test_fraction: 0.2,
            split_seed: 0,
            all_products: false,
        }
    }
}

impl DatasetArgs {
    /// Reads the reviews (and metadata, concurrently) and preprocesses them; progress bars on
    /// stderr unless `quiet` or stderr is not a terminal.
    pub fn load(&self, quiet: bool) -> Result<Dataset, DataError> {
        let started = Instant::now();
        if !(0.0..=1.0).contains(&self.test_fraction) {
            return Err(DataError::InvalidArg {
                flag: "--test-fraction",
                reason: format!("{} is not in [0, 1]", self.test_fraction),
            });
        }
        let (reviews_path, meta_path) = self.resolve_files()?;
        let progress = progress::Progress::new(quiet);
        let opts = amazon::ReadOptions { skip_bad_lines: self.skip_bad_lines, verified_only: !self.all_reviews };

        let (reviews, meta) = std::thread::scope(|s| {
            let meta_job = meta_path.as_deref().map(|p| s.spawn(|| amazon::read_meta(p, &opts, &progress)));
            let reviews = amazon::read_reviews(&reviews_path, &opts, &progress);
            let meta = match meta_job {
                None => Ok(None),
                Some(job) => match job.join() {
                    Ok(result) => result.map(Some),
                    Err(_) => Err(DataError::Panicked { what: "metadata reader" }),
                },
            };
            (reviews, meta)
        });
        let (reviews, meta) = (reviews?, meta?);
        let read_seconds = started.elapsed().as_secs_f64();

        let mut stats = LoadStats {
            reviews_file: reviews_path.display().to_string(),
            meta_file: meta_path.as_ref().map(|p| p.display().to_string()),
            format: reviews.format,
            lines: reviews.lines,
            reviews_read: reviews.reviews_read,
            reviews_unverified: reviews.unverified,
            bad_lines: reviews.bad_lines,
            bad_line_examples: reviews.examples.clone(),
            verified_only: opts.verified_only,
            min_reviews: self.min_reviews,
            keywords: self.keywords,
            test_fraction: self.test_fraction,
            split_seed: self.split_seed,
            read_seconds,
            ..LoadStats::default()
        };
        if let Some(m) = &meta {
            stats.meta_lines = m.lines;
            stats.meta_products = m.by_id.len() as u64;
            stats.duplicate_meta = m.duplicates;
            stats.meta_bad_lines = m.bad_lines;
            stats.bad_line_examples.extend(m.examples.iter().cloned());
        }
        let prep_started = Instant::now();
        let cfg = prep::PrepConfig {
            min_reviews: self.min_reviews,
            keywords: self.keywords,
            test_fraction: self.test_fraction,
            split_seed: self.split_seed,
            all_products: self.all_products,
        };
        let (products, users) = prep::preprocess(&reviews.batches, meta.as_ref(), &cfg, &mut stats, &progress)?;
        stats.prep_seconds = prep_started.elapsed().as_secs_f64();
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(Dataset { products, users, stats })
    }

    /// The reviews file and the optional metadata file: the overrides, else the first known
    /// name found in `--dataset`.
    pub fn resolve_files(&self) -> Result<(PathBuf, Option<PathBuf>), DataError> {
        let find = |names: &[&str]| names.iter().map(|n| self.dataset.join(n)).find(|p| p.is_file());
        let reviews = match &self.reviews {
            Some(p) => p.clone(),
            None => find(&REVIEW_FILE_NAMES).ok_or_else(|| DataError::NotFound {
                dir: self.dataset.display().to_string(),
                looked_for: REVIEW_FILE_NAMES.join(", "),
            })?,
        };
        let meta = self.meta.clone().or_else(|| find(&META_FILE_NAMES));
        Ok((reviews, meta))
    }
}

/// Why data could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("failed to read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be created or written.
    #[error("failed to write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A gzip file ends before its compressed stream does.
    #[error("{path}: gzip stream is truncated")]
    Truncated {
        /// The file.
        path: String,
    },
    /// A gzip file holds data that does not decompress.
    #[error("{path}: corrupt gzip stream: {source}")]
    Corrupt {
        /// The file.
        path: String,
        /// What the decompressor said.
        #[source]
        source: std::io::Error,
    },
    /// A line is not a review (or product) of the file's release.
    #[error("{file}:{line}: {reason}")]
    Malformed {
        /// The file.
        file: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// No reviews file in the dataset folder.
    #[error("no reviews file in {dir} (looked for {looked_for})")]
    NotFound {
        /// The folder searched.
        dir: String,
        /// The names tried.
        looked_for: String,
    },
    /// The first line of a file matches neither the 2018 nor the 2023 release.
    #[error("{path}: cannot tell the release (2018 or 2023) from its first line")]
    UnknownFormat {
        /// The file.
        path: String,
    },
    /// A setting is out of its range.
    #[error("invalid {flag}: {reason}")]
    InvalidArg {
        /// The flag.
        flag: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// Preprocessing left no user to build episodes from.
    #[error("no user left after preprocessing: {reason}")]
    Empty {
        /// What the filters left.
        reason: String,
    },
    /// A worker thread panicked.
    #[error("{what} panicked")]
    Panicked {
        /// Which worker.
        what: &'static str,
    },
}

impl DataError {
    /// An [`DataError::Io`] for `path`.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), source }
    }

    /// A [`DataError::Write`] for `path`.
    pub(crate) fn write(path: &Path, source: std::io::Error) -> Self {
        Self::Write { path: path.display().to_string(), source }
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub(crate) fn truncate_at_char(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// FxHash (from rustc): a fast, non-cryptographic hash for the loader's many short-string keys.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// `HashMap` with [`FxHasher`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// `HashSet` with [`FxHasher`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Product {
        Product {
            id: "B00ABCDEF1".into(),
            index: 0,
            title: "Levi's Men's 505 Regular Fit Jeans".into(),
            sizes: vec!["32W x 32L".into(), "34W x 32L".into()],
            colors: vec!["Dark Stonewash".into()],
            keywords: vec!["jeans".into(), "denim".into()],
        }
    }

    #[test]
    fn product_text_is_one_bounded_line() {
        let p = product();
        assert_eq!(
            p.text(),
            "Levi's Men's 505 Regular Fit Jeans | sizes: 32W x 32L, 34W x 32L | colors: Dark Stonewash | keywords: jeans, denim"
        );
        let long = Product { title: "é\nx".repeat(5000), ..p };
        let text = long.text();
        assert!(text.len() <= MAX_TEXT_BYTES && !text.contains('\n'));
        let empty = Product { title: String::new(), sizes: vec![], colors: vec![], keywords: vec![], ..product() };
        assert_eq!(empty.text(), "");
    }

    #[test]
    fn split_is_stable_and_near_its_fraction() {
        let test = (0..10_000).filter(|i| split_of(&format!("A{i:013}"), 0.2, 0) == Split::Test).count();
        assert!((1_800..2_200).contains(&test), "{test} test users of 10000");
        assert_eq!(split_of("A1D4G1SNUZWQOT", 0.2, 7), split_of("A1D4G1SNUZWQOT", 0.2, 7));
        assert_eq!(split_of("A1D4G1SNUZWQOT", 0.0, 7), Split::Train);
        assert_eq!(split_of("A1D4G1SNUZWQOT", 1.0, 7), Split::Test);
    }

    #[test]
    fn users_in_partitions_the_users() {
        let users: Vec<UserSeq> =
            (0..100).map(|i| UserSeq { user_id: format!("U{i:03}"), items: vec![0, 1] }).collect();
        let stats = LoadStats { test_fraction: 0.3, split_seed: 1, ..LoadStats::default() };
        let ds = Dataset { products: vec![product()], users, stats };
        let (train, test) = (ds.users_in(Split::Train).len(), ds.users_in(Split::Test).len());
        assert_eq!(train + test, 100);
        assert!(test > 10 && train > 50);
        assert_eq!(ds.users_in(Split::All).len(), 100);
        assert_eq!(ds.n_actions(), 1);
    }
}
