//! Small in-memory datasets for tests of the environment logic (no files).

use fashion::{Dataset, LoadStats, Product, UserSeq};

/// A dataset of `n_products` products and one user per sequence (`user-0`, `user-1`, ...).
pub fn dataset_with_users(n_products: u32, sequences: &[&[u32]]) -> Dataset {
    let products = (0..n_products)
        .map(|i| Product {
            id: format!("B{i:09}"),
            index: i,
            title: format!("product {i}"),
            sizes: vec!["M".into()],
            colors: vec!["black".into()],
            keywords: vec![format!("kw{}", i % 3)],
        })
        .collect();
    let users = sequences
        .iter()
        .enumerate()
        .map(|(i, items)| UserSeq { user_id: format!("user-{i}"), items: items.to_vec() })
        .collect();
    Dataset { products, users, stats: LoadStats::default() }
}
