//! Preprocessing, as in the reference paper: reviews become user sequences over a catalogue.
//!
//! 1. Reviews are verified purchases only (unless `--all-reviews`; applied while reading).
//! 2. Users with at least `min_reviews` of those reviews are kept.
//! 3. A user's reviews are ordered by time, ties broken by product id (a stable order: 2018
//!    times are whole days), and consecutive reviews of the same product collapse into one;
//!    a user left with fewer than 2 products is dropped.
//! 4. The catalogue is the set of products in kept sequences (with `all_products`, every
//!    product of the reviews and of the metadata too), sorted by product id; a product's index
//!    (its action) is its position in that order.
//! 5. A product carries the sizes and colours of its reviews' `style` (most frequent first,
//!    ties alphabetical, at most [`MAX_ATTRS`]; 2023 metadata `details` fill in after them),
//!    and `k` keywords of its (verified-filtered) reviews plus its title and brand (see
//!    [`super::keywords`]). Only reviews of users outside the test split count: no word a
//!    test user wrote reaches the agent through a product's text.
//! 6. Users are sorted by id and split by [`super::split_of`].
//!
//! Invariant: the output depends only on the set of reviews and metadata, not on their order in
//! the files nor on thread timing.

use rayon::prelude::*;

use super::{
    amazon::{Meta, MetaTable, ReviewBatch},
    keywords::{self, Vocabulary},
    progress::Progress,
    split_of, DataError, FastMap, LoadStats, Product, Split, UserSeq,
};

/// Most sizes (and most colours) a product carries.
pub const MAX_ATTRS: usize = 8;
/// Products handled per parallel task in the keyword step.
const PRODUCTS_PER_TASK: usize = 256;

/// Settings of the preprocessing (the verified filter is applied while reading).
#[derive(Debug, Clone)]
pub struct PrepConfig {
    /// Keep users with at least this many reviews.
    pub min_reviews: u32,
    /// Keywords per product.
    pub keywords: usize,
    /// Share of users in the test split.
    pub test_fraction: f64,
    /// Seed of the split hash.
    pub split_seed: u64,
    /// The catalogue holds every product of the reviews and the metadata, not only those of
    /// kept sequences.
    pub all_products: bool,
}

/// A review's place: batch index and position in the batch.
#[derive(Debug, Clone, Copy)]
struct At {
    batch: u32,
    i: u32,
}

/// Builds the catalogue and the user sequences from the reviews (and metadata); fills the
/// counting fields of `stats`.
pub(crate) fn preprocess(
    batches: &[ReviewBatch],
    meta: Option<&MetaTable>,
    cfg: &PrepConfig,
    stats: &mut LoadStats,
    progress: &Progress,
) -> Result<(Vec<Product>, Vec<UserSeq>), DataError> {
    let total: usize = batches.iter().map(ReviewBatch::len).sum();
    let all = || {
        batches
            .iter()
            .enumerate()
            .flat_map(|(b, batch)| (0..batch.len()).map(move |i| At { batch: b as u32, i: i as u32 }))
    };

    // Users and their review counts.
    let mut user_ids: FastMap<&str, u32> = FastMap::default();
    user_ids.reserve(total / 2);
    let mut counts: Vec<u32> = Vec::new();
    let mut review_user: Vec<u32> = Vec::with_capacity(total);
    for at in all() {
        let name = batches[at.batch as usize].user_id(at.i as usize);
        let next = counts.len() as u32;
        let id = *user_ids.entry(name).or_insert(next);
        if id == next {
            counts.push(0);
        }
        counts[id as usize] += 1;
        review_user.push(id);
    }
    stats.users_total = counts.len() as u64;

    // Reviews of users with enough of them, grouped by user (counting sort).
    let mut slot: Vec<u32> = vec![u32::MAX; counts.len()];
    let mut starts: Vec<usize> = vec![0];
    for (u, &n) in counts.iter().enumerate() {
        if n >= cfg.min_reviews {
            slot[u] = (starts.len() - 1) as u32;
            starts.push(starts[starts.len() - 1] + n as usize);
        }
    }
    let mut fill = starts.clone();
    let mut grouped: Vec<At> = vec![At { batch: 0, i: 0 }; starts[starts.len() - 1]];
    for (at, &u) in all().zip(&review_user) {
        let s = slot[u as usize];
        if s != u32::MAX {
            grouped[fill[s as usize]] = at;
            fill[s as usize] += 1;
        }
    }
    stats.reviews_kept = grouped.len() as u64;

    // Each user's products in time order, consecutive duplicates collapsed.
    let sequences: Vec<(&str, Vec<&str>, u64)> = starts
        .par_windows(2)
        .map(|w| {
            let reviews = &grouped[w[0]..w[1]];
            let mut events: Vec<(i64, &str)> = reviews
                .iter()
                .map(|at| {
                    let b = &batches[at.batch as usize];
                    (b.time(at.i as usize), b.product_id(at.i as usize))
                })
                .collect();
            events.sort_unstable();
            let mut items: Vec<&str> = events.iter().map(|e| e.1).collect();
            items.dedup();
            let collapsed = (events.len() - items.len()) as u64;
            let first = reviews[0];
            (batches[first.batch as usize].user_id(first.i as usize), items, collapsed)
        })
        .filter(|(_, items, _)| items.len() >= 2)
        .collect();
    drop(grouped);
    stats.duplicates_collapsed = sequences.iter().map(|s| s.2).sum();
    if sequences.is_empty() {
        let verified = if stats.verified_only { " verified" } else { "" };
        return Err(DataError::Empty {
            reason: format!(
                "{} users, none with at least {} reviews{verified} over 2 or more products",
                stats.users_total, cfg.min_reviews
            ),
        });
    }

    // The catalogue: products of kept sequences (with `all_products`, of every review and every
    // metadata line too), sorted by id.
    let mut ids: Vec<&str> = sequences.iter().flat_map(|s| s.1.iter().copied()).collect();
    if cfg.all_products {
        ids.extend(all().map(|at| batches[at.batch as usize].product_id(at.i as usize)));
        if let Some(m) = meta {
            ids.extend(m.by_id.keys().map(String::as_str));
        }
    }
    ids.par_sort_unstable();
    ids.dedup();
    let index: FastMap<&str, u32> = ids.iter().enumerate().map(|(i, id)| (*id, i as u32)).collect();

    let mut users: Vec<UserSeq> = sequences
        .iter()
        .map(|(user, items, _)| UserSeq {
            user_id: (*user).to_string(),
            items: items.iter().map(|p| index.get(p).copied().unwrap_or(0)).collect(),
        })
        .collect();
    drop(sequences);
    users.par_sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));

    // Every (filtered) review of a catalogue product by a user outside the test split, grouped
    // by product: the text a product's features come from.
    let mut test_user: Vec<bool> = vec![false; counts.len()];
    for (name, &u) in &user_ids {
        test_user[u as usize] = split_of(name, cfg.test_fraction, cfg.split_seed) == Split::Test;
    }
    let mut per_product: Vec<u32> = vec![0; ids.len() + 1];
    let mut product_of: Vec<u32> = Vec::with_capacity(total);
    for (at, &u) in all().zip(&review_user) {
        let p = if test_user[u as usize] {
            u32::MAX
        } else {
            index.get(batches[at.batch as usize].product_id(at.i as usize)).copied().unwrap_or(u32::MAX)
        };
        if p != u32::MAX {
            per_product[p as usize + 1] += 1;
        }
        product_of.push(p);
    }
    for i in 1..per_product.len() {
        per_product[i] += per_product[i - 1];
    }
    let mut fill: Vec<u32> = per_product.clone();
    let mut by_product: Vec<At> = vec![At { batch: 0, i: 0 }; per_product[ids.len()] as usize];
    for (at, &p) in all().zip(&product_of) {
        if p != u32::MAX {
            by_product[fill[p as usize] as usize] = at;
            fill[p as usize] += 1;
        }
    }
    drop(product_of);
    drop(review_user);

    // Sizes, colours and term counts per product, in parallel batches with their own vocabulary.
    let bar = progress.items(ids.len() as u64, "preprocessing".into());
    let no_meta = FastMap::default();
    let metas = meta.map_or(&no_meta, |m| &m.by_id);
    let parts: Vec<(Vec<Features>, Vocabulary)> = (0..ids.len())
        .collect::<Vec<usize>>()
        .par_chunks(PRODUCTS_PER_TASK)
        .map(|chunk| {
            let mut vocab = Vocabulary::default();
            let features = chunk
                .iter()
                .map(|&p| {
                    let reviews = &by_product[per_product[p] as usize..per_product[p + 1] as usize];
                    features(batches, reviews, metas.get(ids[p]), &mut vocab)
                })
                .collect();
            bar.inc(chunk.len() as u64);
            (features, vocab)
        })
        .collect();
    bar.finish();
    let mut vocab = Vocabulary::default();
    let mut features: Vec<Features> = Vec::with_capacity(ids.len());
    for (f, v) in parts {
        features.extend(f);
        vocab.merge(v);
    }
    let terms: Vec<Vec<(u64, u32)>> = features.iter_mut().map(|f| std::mem::take(&mut f.terms)).collect();
    let keywords = keywords::top_keywords(&terms, &vocab, cfg.keywords);
    drop(terms);

    let products: Vec<Product> = ids
        .iter()
        .zip(features)
        .zip(keywords)
        .enumerate()
        .map(|(i, ((id, f), keywords))| Product {
            id: (*id).to_string(),
            index: i as u32,
            title: f.title,
            sizes: f.sizes,
            colors: f.colors,
            keywords,
        })
        .collect();

    stats.users_kept = users.len() as u64;
    stats.products_kept = products.len() as u64;
    stats.products_with_meta = ids.iter().filter(|id| metas.contains_key(**id)).count() as u64;
    stats.sequence_items = users.iter().map(|u| u.items.len() as u64).sum();
    stats.test_users =
        users.iter().filter(|u| split_of(&u.user_id, cfg.test_fraction, cfg.split_seed) == Split::Test).count() as u64;
    stats.train_users = stats.users_kept - stats.test_users;
    Ok((products, users))
}

/// What a product's reviews and metadata say about it.
struct Features {
    title: String,
    sizes: Vec<String>,
    colors: Vec<String>,
    terms: Vec<(u64, u32)>,
}

fn features(batches: &[ReviewBatch], reviews: &[At], meta: Option<&Meta>, vocab: &mut Vocabulary) -> Features {
    let mut sizes: Vec<(&str, u32)> = Vec::new();
    let mut colors: Vec<(&str, u32)> = Vec::new();
    let mut texts: Vec<&str> = Vec::with_capacity(2 * reviews.len() + 2);
    for at in reviews {
        let (batch, i) = (&batches[at.batch as usize], at.i as usize);
        let (size, color) = batch.style(i);
        if let Some(size) = size {
            bump(&mut sizes, size);
        }
        if let Some(color) = color {
            bump(&mut colors, color);
        }
        texts.extend(batch.texts(i));
    }
    let (title, brand, meta_sizes, meta_colors) = match meta {
        Some(m) => (m.title.as_str(), m.brand.as_str(), m.sizes.as_slice(), m.colors.as_slice()),
        None => ("", "", &[][..], &[][..]),
    };
    texts.push(title);
    texts.push(brand);
    Features {
        title: title.to_string(),
        sizes: ranked(sizes, meta_sizes),
        colors: ranked(colors, meta_colors),
        terms: keywords::count_terms(texts, vocab),
    }
}

fn bump<'a>(counts: &mut Vec<(&'a str, u32)>, value: &'a str) {
    match counts.iter_mut().find(|(v, _)| *v == value) {
        Some((_, n)) => *n += 1,
        None => counts.push((value, 1)),
    }
}

/// Most frequent first, ties alphabetical, then `extra` values not yet present; at most
/// [`MAX_ATTRS`].
fn ranked(mut counts: Vec<(&str, u32)>, extra: &[String]) -> Vec<String> {
    counts.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut out: Vec<String> = counts.into_iter().take(MAX_ATTRS).map(|(v, _)| v.to_string()).collect();
    for v in extra {
        if out.len() >= MAX_ATTRS {
            break;
        }
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::amazon::Review;

    fn review(user: &str, product: &str, time: i64, size: Option<&str>, text: &str) -> Review<'static> {
        Review {
            user_id: Cow::Owned(user.into()),
            product_id: Cow::Owned(product.into()),
            asin: Cow::Owned(product.into()),
            time,
            verified: true,
            rating: 5.0,
            text: Cow::Owned(text.into()),
            summary: Cow::Borrowed("Five Stars"),
            size: size.map(|s| Cow::Owned(s.into())),
            color: Some(Cow::Borrowed("Black")),
        }
    }

    fn cfg(min_reviews: u32) -> PrepConfig {
        // No test user: every review feeds the features (the test split's own test is below).
        PrepConfig { min_reviews, keywords: 3, test_fraction: 0.0, split_seed: 0, all_products: false }
    }

    fn run(
        reviews: &[Review],
        cfg: &PrepConfig,
        split_at: usize,
    ) -> Result<(Vec<Product>, Vec<UserSeq>, LoadStats), DataError> {
        // Two batches, to check that grouping spans them.
        let mut batches = vec![ReviewBatch::default(), ReviewBatch::default()];
        for (i, r) in reviews.iter().enumerate() {
            batches[usize::from(i >= split_at)].push(r);
        }
        let mut stats = LoadStats { verified_only: true, ..LoadStats::default() };
        let (p, u) = preprocess(&batches, None, cfg, &mut stats, &Progress::hidden())?;
        Ok((p, u, stats))
    }

    #[test]
    fn builds_sorted_catalogue_and_time_ordered_sequences() {
        let reviews = vec![
            review("U2", "P9", 300, Some("M"), "nice leather boots"),
            review("U1", "P5", 200, Some("L"), "soft cotton shirt"),
            review("U1", "P3", 100, Some("M"), "denim jeans"),
            // Same time as P5: tie broken by product id, P4 < P5.
            review("U1", "P4", 200, Some("M"), "wool socks"),
            review("U2", "P3", 100, Some("M"), "jeans jeans denim"),
            // Consecutive duplicate of P3 for U2 (after sorting): collapsed.
            review("U2", "P3", 150, Some("S"), "denim"),
            // Too few reviews.
            review("U3", "P7", 100, None, "hat"),
        ];
        let (products, users, stats) = run(&reviews, &cfg(3), 3).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["P3", "P4", "P5", "P9"]);
        assert!(products.iter().enumerate().all(|(i, p)| p.index as usize == i));
        assert_eq!(
            users,
            vec![
                UserSeq { user_id: "U1".into(), items: vec![0, 1, 2] },
                UserSeq { user_id: "U2".into(), items: vec![0, 3] },
            ]
        );
        assert_eq!((stats.users_total, stats.users_kept, stats.reviews_kept, stats.duplicates_collapsed), (3, 2, 6, 1));
        assert_eq!((stats.products_kept, stats.sequence_items), (4, 5));
        assert_eq!(stats.train_users + stats.test_users, 2);
        // P3: sizes M twice, S once; keywords from every review of it.
        assert_eq!(products[0].sizes, vec!["M", "S"]);
        assert_eq!(products[0].colors, vec!["Black"]);
        assert_eq!(products[0].keywords, vec!["denim", "jeans"]);
        assert_eq!(products[3].keywords, vec!["boots", "leather"]);
    }

    #[test]
    fn test_users_words_never_reach_a_product_and_all_products_widens_the_catalogue() {
        // Find one test user and one train user at test fraction 0.5.
        let names: Vec<String> = (0..40).map(|i| format!("U{i}")).collect();
        let of = |s| names.iter().find(|n| split_of(n, 0.5, 0) == s).cloned().unwrap_or_default();
        let (test, train) = (of(Split::Test), of(Split::Train));
        let reviews = vec![
            review(&train, "P1", 1, None, "denim"),
            review(&train, "P2", 2, None, "leather"),
            review(&test, "P1", 1, None, "secretword"),
            review(&test, "P3", 2, None, "secretword"),
            // A product only one user with too few reviews reviewed.
            review("lonely", "P8", 1, None, "wool"),
        ];
        let split = PrepConfig { test_fraction: 0.5, ..cfg(2) };
        let (products, users, stats) = run(&reviews, &split, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((users.len(), stats.test_users), (2, 1));
        let ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["P1", "P2", "P3"], "the paper's catalogue: products of kept sequences");
        assert!(products.iter().all(|p| !p.keywords.iter().any(|k| k == "secretword")), "{products:?}");
        assert_eq!(products[0].keywords, ["denim"]);
        assert!(products[2].keywords.is_empty(), "P3 was reviewed by the test user only");

        let all = PrepConfig { all_products: true, ..split };
        let (products, _, _) = run(&reviews, &all, 2).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["P1", "P2", "P3", "P8"], "every product reviewed joins the action space");
        assert_eq!(products[3].keywords, ["wool"]);
    }

    #[test]
    fn same_result_whatever_the_order_of_reviews() {
        let mut reviews: Vec<Review> = (0..60)
            .map(|i| {
                review(&format!("U{}", i % 5), &format!("P{}", (i * 7) % 13), i64::from(i % 4), Some("M"), "jeans")
            })
            .collect();
        let a = run(&reviews, &cfg(2), 20).unwrap_or_else(|e| panic!("{e}"));
        reviews.reverse();
        let b = run(&reviews, &cfg(2), 45).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.0, a.1), (b.0, b.1));
    }

    #[test]
    fn nothing_left_is_an_error() {
        let reviews = vec![review("U1", "P1", 1, None, "x"), review("U1", "P1", 2, None, "x")];
        match run(&reviews, &cfg(1), 1) {
            Err(DataError::Empty { reason }) => {
                assert_eq!(reason, "1 users, none with at least 1 reviews verified over 2 or more products")
            }
            other => panic!("expected an empty-dataset error, got {other:?}"),
        }
    }

    #[test]
    fn meta_attrs_follow_review_attrs() {
        let counts = vec![("M", 1), ("L", 3), ("S", 1)];
        let extra = vec!["L".to_string(), "XL".to_string()];
        assert_eq!(ranked(counts, &extra), vec!["L", "M", "S", "XL"]);
        let many: Vec<(&str, u32)> = ["a", "b", "c", "d", "e", "f", "g", "h", "i"].iter().map(|v| (*v, 1)).collect();
        assert_eq!(ranked(many, &extra).len(), MAX_ATTRS);
    }
}
