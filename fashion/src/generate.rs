//! Synthetic Amazon Fashion data in the exact 2018 format, with learnable sequential structure.
//!
//! # Generative model
//!
//! - **Catalogue.** `P` products fall into `C = max(1, P / 48)` *clusters*, each a brand ×
//!   category pair (e.g. "Levi's jeans", "Nike running shoes") with its own product line name
//!   (an invented word such as "Vantoro"), department and palette. Brands are 70 real fashion
//!   brands, then invented names; each brand covers up to 5 categories out of 28. The first `C`
//!   products seed one cluster each; the others join a cluster drawn in proportion to
//!   `1 / (c + 5)^0.6` (cluster sizes are uneven). A product gets a popularity weight
//!   `w = 1 / (r + 1)^0.95` for a random global rank `r` (Zipf-like long tail), a contiguous
//!   run of its category's sizes, 1–6 colours of its palette, a quality and a title built
//!   from its brand, department, line, a descriptor, a material and the category.
//! - **Within-cluster order.** The products of a cluster form a fixed random cycle (the
//!   successor order).
//! - **Users.** Users are drawn until `R` reviews are written. Activity is heavy-tailed: 93 %
//!   of users write `1 + Geometric(0.62)` reviews (capped at 9: mean ≈ 1.6), 7 % write
//!   `11 + 6 · (U^(-1/2) − 1)` (a Pareto tail capped at 300: mean ≈ 17), so a few percent
//!   pass a "≥ 10 reviews" filter. A user has 1 preferred cluster (2 with probability 0.4), drawn by
//!   total popularity, and a size quantile (they buy consistent sizes).
//! - **Sequences.** The first product is drawn by popularity within the first preferred
//!   cluster. After product `p`, the next is, with probability 0.75, one of the next 3
//!   products after `p` in its cluster's cycle (weights 0.6 / 0.25 / 0.15 × √popularity:
//!   the learnable within-cluster transition); with 0.15, a product of a preferred cluster
//!   (the other one when `p` is already in a preferred cluster; by popularity); otherwise
//!   (0.10) a product drawn from the global popularity distribution. A product is never
//!   followed by itself.
//! - **Reviews.** Days increase strictly along a user's sequence (start uniform in
//!   2010-01-01 .. 2018-06-01, gaps `1 + Exp(mean 20)` days; times are midnight UTC as in the
//!   real file). 90 % are verified. Ratings are J-shaped: 1 or 2 stars with probability
//!   5–20 % (more for low-quality products), else the product's quality plus noise (mostly
//!   4–5). Texts come from rating-dependent templates that mention the product noun,
//!   parts, material, brand, line, colour, size and fit; summaries are often "Five Stars"
//!   etc. Style (`{"Size:": " Large", "Color:": " Black"}`) follows the product's sizes
//!   (at the user's size quantile 80 % of the time) and colours (first colour favoured).
//! - **Format quirks (2018).** One JSON object per line in Python `json.dumps` layout (`", "`
//!   and `": "`, non-ASCII as `\uXXXX`), reviews sorted by asin; `vote` a string, sometimes
//!   with a thousands separator (`"1,234"`); style keys end with a colon and values start with
//!   a space; `reviewTime` is `"MM D, YYYY"` (month zero-padded, day not, as in the real
//!   file); optional `reviewText`, `summary`, `style`, `vote`, `image`, `reviewerName`;
//!   asins like `B00XXXXXXX` (a few ISBN-like), reviewer ids like `A2XXXXXXXXXXXX`. Metadata:
//!   0.5 % of products appear twice (the same line again, later), 1 % have none, HTML in
//!   `description` and `main_cat`, entities (`&amp;`, `&#39;`) in titles and brands, sparse
//!   and full key layouts.
//!
//! Invariant: the same `(reviews, products, seed)` always gives byte-identical files: all
//! randomness comes from one `ChaCha8Rng` consumed in a fixed order, and no hash-map iteration
//! order is ever used.

use std::{
    collections::HashSet,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use flate2::{write::GzEncoder, Compression};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{amazon::days_from_civil, progress::Progress, DataError};

/// Reviews in the real 2018 Amazon Fashion file.
pub const REAL_REVIEWS: u64 = 883_636;
/// Products in the real 2018 Amazon Fashion metadata.
pub const REAL_PRODUCTS: u64 = 186_637;

/// Size of the synthetic dataset.
#[derive(Debug, Clone, Copy)]
pub struct GenerateConfig {
    /// Reviews to write.
    pub reviews: u64,
    /// Distinct products.
    pub products: u64,
    /// Seed of the one random generator.
    pub seed: u64,
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateStats {
    /// The reviews file.
    pub reviews_file: PathBuf,
    /// The metadata file.
    pub meta_file: PathBuf,
    /// Reviews written.
    pub reviews: u64,
    /// Distinct products.
    pub products: u64,
    /// Clusters (brand × category).
    pub clusters: u64,
    /// Users (reviewers).
    pub users: u64,
    /// Users with at least 10 reviews.
    pub users_10plus: u64,
    /// Verified reviews.
    pub verified: u64,
    /// Metadata lines written (duplicates included).
    pub meta_lines: u64,
    /// Metadata lines that repeat an earlier product.
    pub duplicate_meta: u64,
    /// Bytes of the reviews file.
    pub reviews_bytes: u64,
    /// Bytes of the metadata file.
    pub meta_bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

#[rustfmt::skip]
const LETTER: &[&str] = &[
    "X-Small", "Small", "Medium", "Large", "X-Large", "XX-Large", "3X-Large",
];
#[rustfmt::skip]
const WAIST: &[&str] = &[
    "28W x 30L", "29W x 30L", "30W x 30L", "30W x 32L", "31W x 32L", "32W x 30L", "32W x 32L", "33W x 32L",
    "34W x 30L", "34W x 32L", "34W x 34L", "36W x 30L", "36W x 32L", "38W x 30L", "38W x 32L", "40W x 32L",
];
const WOMEN_NUMERIC: &[&str] = &["0", "2", "4", "6", "8", "10", "12", "14", "16", "18"];
#[rustfmt::skip]
const SHOE_WOMEN: &[&str] = &[
    "5 B(M) US", "5.5 B(M) US", "6 B(M) US", "6.5 B(M) US", "7 B(M) US", "7.5 B(M) US", "8 B(M) US",
    "8.5 B(M) US", "9 B(M) US", "9.5 B(M) US", "10 B(M) US", "11 B(M) US",
];
#[rustfmt::skip]
const SHOE_MEN: &[&str] = &[
    "7 D(M) US", "7.5 D(M) US", "8 D(M) US", "8.5 D(M) US", "9 D(M) US", "9.5 D(M) US", "10 D(M) US",
    "10.5 D(M) US", "11 D(M) US", "11.5 D(M) US", "12 D(M) US", "13 D(M) US",
];
#[rustfmt::skip]
const RING: &[&str] = &[
    "5", "5.5", "6", "6.5", "7", "7.5", "8", "8.5", "9", "10", "11", "12",
];
#[rustfmt::skip]
const BRA: &[&str] = &[
    "32B", "32C", "34B", "34C", "34D", "36B", "36C", "36D", "38C", "38D", "40D", "40DD",
];
#[rustfmt::skip]
const CHAIN: &[&str] = &[
    "16 Inches", "18 Inches", "20 Inches", "22 Inches", "24 Inches",
];
#[rustfmt::skip]
const KIDS: &[&str] = &[
    "Toddler (2T-4T)", "Small (4-6)", "Medium (8-10)", "Large (12-14)", "X-Large (16-18)",
];
const BELT: &[&str] = &["30", "32", "34", "36", "38", "40", "42", "44"];
#[rustfmt::skip]
const SOCK: &[&str] = &[
    "Shoe Size: 6-9", "Shoe Size: 9-12", "Shoe Size: 10-13", "Shoe Size: 12-16",
];
const ONE_SIZE: &[&str] = &[];

#[rustfmt::skip]
const APPAREL: &[&str] = &[
    "Black", "White", "Navy", "Heather Grey", "Charcoal", "Red", "Royal Blue", "Light Blue", "Khaki", "Olive",
    "Burgundy", "Pink", "Purple", "Teal", "Green", "Yellow", "Orange", "Multicolor", "Black/White",
    "Grey/Black",
];
#[rustfmt::skip]
const DENIM: &[&str] = &[
    "Dark Wash", "Medium Wash", "Light Wash", "Rinse", "Stonewash", "Black", "Dark Stonewash", "Indigo",
    "Grey",
];
#[rustfmt::skip]
const FOOTWEAR: &[&str] = &[
    "Black", "Brown", "Tan", "White", "Grey", "Navy", "Black/White", "Cognac", "Blue/Orange", "Taupe",
    "Olive",
];
#[rustfmt::skip]
const METAL: &[&str] = &[
    "Silver", "Gold", "Rose Gold", "White Gold", "Yellow Gold", "Black", "Two-Tone",
];
#[rustfmt::skip]
const WATCH: &[&str] = &[
    "Black/Silver", "Silver/Blue", "Gold/White", "Brown/Gold", "Black", "Rose Gold", "Green",
];

/// A product type, its words and its size and colour vocabularies.
struct Category {
    title: &'static str,
    group: &'static str,
    nouns: &'static [&'static str],
    parts: &'static [&'static str],
    materials: &'static [&'static str],
    sizes: &'static [&'static str],
    palette: &'static [&'static str],
}

macro_rules! cat {
    ($title:expr, $group:expr, $nouns:expr, $parts:expr, $materials:expr, $sizes:expr, $palette:expr) => {
        Category {
            title: $title,
            group: $group,
            nouns: $nouns,
            parts: $parts,
            materials: $materials,
            sizes: $sizes,
            palette: $palette,
        }
    };
}

#[rustfmt::skip]
const CATEGORIES: &[Category] = &[
    cat!("Jeans", "Clothing", &["jeans"], &["waist", "pockets", "inseam", "zipper", "belt loops"], &["denim", "stretch denim", "cotton"], WAIST, DENIM),
    cat!("T-Shirt", "Clothing", &["shirt", "tee", "t-shirt"], &["sleeves", "collar", "neckline", "seams"], &["cotton", "jersey", "polyester"], LETTER, APPAREL),
    cat!("Dress", "Clothing", &["dress"], &["hem", "waistline", "zipper", "straps", "lining"], &["chiffon", "rayon", "lace", "polyester"], WOMEN_NUMERIC, APPAREL),
    cat!("Running Shoes", "Shoes", &["shoes", "sneakers", "running shoes"], &["sole", "laces", "insole", "heel", "toe box"], &["mesh", "foam", "rubber"], SHOE_MEN, FOOTWEAR),
    cat!("Boots", "Shoes", &["boots"], &["heel", "shaft", "toe", "sole", "zipper"], &["leather", "suede", "rubber"], SHOE_WOMEN, FOOTWEAR),
    cat!("Sandals", "Shoes", &["sandals"], &["straps", "footbed", "sole", "buckle"], &["leather", "cork", "rubber"], SHOE_WOMEN, FOOTWEAR),
    cat!("Watch", "Jewelry", &["watch"], &["band", "dial", "clasp", "crystal", "battery"], &["stainless steel", "leather", "silicone"], ONE_SIZE, WATCH),
    cat!("Necklace", "Jewelry", &["necklace", "pendant"], &["chain", "clasp", "pendant"], &["sterling silver", "gold plated", "crystal"], CHAIN, METAL),
    cat!("Earrings", "Jewelry", &["earrings", "studs", "hoops"], &["posts", "backs", "stones"], &["sterling silver", "gold", "pearl"], ONE_SIZE, METAL),
    cat!("Ring", "Jewelry", &["ring", "band"], &["band", "stone", "setting"], &["sterling silver", "titanium", "tungsten"], RING, METAL),
    cat!("Socks", "Clothing", &["socks"], &["heel", "toe", "cuff", "cushion"], &["cotton", "wool", "merino wool"], SOCK, APPAREL),
    cat!("Boxer Briefs", "Clothing", &["briefs", "boxers", "underwear"], &["waistband", "pouch", "legs"], &["cotton", "modal", "microfiber"], LETTER, APPAREL),
    cat!("Hoodie", "Clothing", &["hoodie", "sweatshirt"], &["hood", "pocket", "drawstring", "cuffs"], &["fleece", "cotton", "polyester"], LETTER, APPAREL),
    cat!("Jacket", "Clothing", &["jacket", "coat"], &["zipper", "pockets", "hood", "lining", "collar"], &["nylon", "down", "fleece", "leather"], LETTER, APPAREL),
    cat!("Sunglasses", "Accessories", &["sunglasses", "shades", "glasses"], &["lenses", "frame", "hinges", "case"], &["polycarbonate", "metal", "acetate"], ONE_SIZE, FOOTWEAR),
    cat!("Backpack", "Accessories", &["backpack", "bag"], &["straps", "zipper", "pockets", "compartment"], &["canvas", "nylon", "polyester"], ONE_SIZE, APPAREL),
    cat!("Handbag", "Accessories", &["handbag", "purse", "bag"], &["strap", "zipper", "lining", "pockets"], &["leather", "faux leather", "canvas"], ONE_SIZE, FOOTWEAR),
    cat!("Wallet", "Accessories", &["wallet"], &["card slots", "coin pocket", "stitching"], &["leather", "canvas"], ONE_SIZE, FOOTWEAR),
    cat!("Baseball Cap", "Accessories", &["cap", "hat"], &["brim", "strap", "visor", "crown"], &["cotton twill", "mesh", "wool"], ONE_SIZE, APPAREL),
    cat!("Leggings", "Clothing", &["leggings", "tights"], &["waistband", "seams", "pocket"], &["spandex", "nylon", "cotton"], LETTER, APPAREL),
    cat!("Swimsuit", "Clothing", &["swimsuit", "bikini"], &["straps", "top", "bottoms", "padding"], &["nylon", "spandex", "lycra"], LETTER, APPAREL),
    cat!("Bra", "Clothing", &["bra"], &["straps", "cups", "band", "underwire", "hooks"], &["lace", "microfiber", "cotton"], BRA, APPAREL),
    cat!("Slippers", "Shoes", &["slippers"], &["sole", "lining", "footbed"], &["fleece", "memory foam", "sheepskin"], SHOE_WOMEN, FOOTWEAR),
    cat!("Belt", "Accessories", &["belt"], &["buckle", "holes", "strap"], &["leather", "canvas", "nylon"], BELT, FOOTWEAR),
    cat!("Scarf", "Accessories", &["scarf", "wrap"], &["fringe", "edges"], &["cashmere", "wool", "silk"], ONE_SIZE, APPAREL),
    cat!("Costume", "Clothing", &["costume"], &["mask", "headpiece", "cape"], &["polyester", "felt"], KIDS, APPAREL),
    cat!("Pajamas", "Clothing", &["pajamas", "pajama set"], &["waistband", "buttons", "pants", "top"], &["flannel", "cotton", "satin"], LETTER, APPAREL),
    cat!("Polo Shirt", "Clothing", &["polo", "shirt"], &["collar", "buttons", "sleeves"], &["pique cotton", "polyester"], LETTER, APPAREL),
];

#[rustfmt::skip]
const BRANDS: &[&str] = &[
    "Levi's", "Nike", "adidas", "Carhartt", "Hanes", "Columbia", "Calvin Klein", "Tommy Hilfiger", "Ray-Ban",
    "Fossil", "Skechers", "Crocs", "Champion", "Under Armour", "Wrangler", "Dickies", "Vans", "Converse",
    "Timberland", "Clarks", "PUMA", "New Balance", "Reebok", "Fruit of the Loom", "Gildan", "Jockey", "Casio",
    "Timex", "Michael Kors", "Coach", "Kate Spade", "Ralph Lauren", "Lee", "Speedo", "Patagonia",
    "The North Face", "Dr. Martens", "Birkenstock", "Steve Madden", "Anne Klein", "Nine West", "Sperry",
    "UGG", "Merrell", "ASICS", "Saucony", "Oakley", "Fjallraven", "Herschel", "JanSport", "Alex and Ani",
    "Pandora", "Swarovski", "Invicta", "Seiko", "Citizen", "Bulova", "Lacoste", "Dolce & Gabbana", "Guess",
    "Nautica", "Haggar", "Dockers", "Maidenform", "Bali", "Wacoal", "Minnetonka", "Sorel", "Rockport",
    "Cole Haan",
];

#[rustfmt::skip]
const SYLLABLES: &[&str] = &[
    "ka", "lo", "ven", "ri", "ta", "mo", "zen", "dra", "vi", "sol", "mar", "tex", "qua", "ber", "lin", "dor",
    "fa", "nu", "pex", "tor", "sa", "bel", "cor", "ela", "gri", "hal", "ix", "jun", "kel", "lum", "nor",
    "ori",
];
const DEPTS: &[(&str, &str)] =
    &[("Men", "Men's"), ("Women", "Women's"), ("Girls", "Girls'"), ("Boys", "Boys'"), ("Unisex", "Unisex")];
#[rustfmt::skip]
const DESCRIPTORS: &[&str] = &[
    "Classic", "Slim Fit", "Relaxed Fit", "Lightweight", "Essential", "Vintage", "Performance", "Everyday",
    "Premium", "Athletic", "Casual", "Signature", "Heritage", "Active", "Original", "Comfort",
];
#[rustfmt::skip]
const FIRST_NAMES: &[&str] = &[
    "Tracy", "Abbey", "Jennifer", "Michael", "Sarah", "David", "Linda", "James", "Maria", "Robert", "Karen",
    "John", "Lisa", "Chris", "Amy", "Brian", "Jessica", "Kevin", "Angela", "Mark", "Nancy", "Steve", "Laura",
    "Paul", "Donna", "Jason", "Michelle", "Eric", "Kim", "Tom", "Rebecca", "Daniel", "Emily", "Joe",
    "Heather", "Ryan", "Stephanie", "Gary", "Melissa", "Tony", "Carol", "Matt", "Sandra", "Rachel", "Denise",
    "Carlos", "Ana", "Wei", "Priya", "Olga",
];
#[rustfmt::skip]
const LAST_NAMES: &[&str] = &[
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White",
];
#[rustfmt::skip]
const OCCASIONS: &[&str] = &[
    "work", "the gym", "running", "weddings", "everyday wear", "hiking", "the beach", "travel", "school",
    "date night", "church", "the office", "winter", "summer", "vacation",
];
#[rustfmt::skip]
const FEEL_GOOD: &[&str] = &[
    "soft", "sturdy", "comfortable", "smooth", "durable", "lightweight", "thick", "breathable",
];
const FEEL_BAD: &[&str] = &["thin", "scratchy", "stiff", "flimsy", "cheap", "itchy"];
#[rustfmt::skip]
const PRAISE: &[&str] = &[
    "perfect", "great", "awesome", "beautiful", "exactly what I wanted", "so comfortable", "very well made",
    "cute",
];
#[rustfmt::skip]
const FIT_GOOD: &[&str] = &[
    "perfectly", "true to size", "great", "just right", "like a glove",
];
const FIT_BAD: &[&str] = &["small", "large", "a size small", "big", "narrow", "short"];
#[rustfmt::skip]
const BREAKS: &[&str] = &[
    "broke", "fell apart", "ripped", "came loose", "started peeling", "tore",
];
#[rustfmt::skip]
const SHORT_GOOD: &[&str] = &[
    "Love it!", "Great fit.", "As described.", "Perfect!", "Very comfortable.", "Nice", "Good quality.",
    "Fits well",
];
#[rustfmt::skip]
const SHORT_BAD: &[&str] = &[
    "Too small.", "Returned.", "Cheap.", "Did not fit.", "Poor quality",
];

// ---------------------------------------------------------------------------------------------
// The world: clusters and products

struct Cluster {
    brand: String,
    category: usize,
    line: String,
    dept: usize,
    /// Products in successor (cycle) order.
    members: Vec<u32>,
    /// Cumulative popularity over `members`.
    cum: Vec<f64>,
}

struct GenProduct {
    asin: String,
    cluster: u32,
    /// Position in its cluster's cycle.
    pos: u32,
    weight: f64,
    sizes: Vec<&'static str>,
    colors: Vec<&'static str>,
    quality: f64,
    descriptor: &'static str,
    material: &'static str,
    has_meta: bool,
    duplicate_meta: bool,
}

struct World {
    clusters: Vec<Cluster>,
    products: Vec<GenProduct>,
    /// Cumulative popularity over all products.
    global_cum: Vec<f64>,
    /// Cumulative total popularity over clusters.
    cluster_cum: Vec<f64>,
}

/// Probability that the next product is a successor of the previous one in its cluster.
const P_SUCCESSOR: f64 = 0.75;
/// Probability that the next product is the entry of a preferred cluster.
const P_PREFERRED: f64 = 0.15;

/// Index drawn in proportion to the increments of a cumulative weight vector.
fn draw(rng: &mut ChaCha8Rng, cum: &[f64]) -> usize {
    let total = cum.last().copied().unwrap_or(0.0);
    let x = rng.random::<f64>() * total;
    cum.partition_point(|&c| c <= x).min(cum.len().saturating_sub(1))
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn pick_str(rng: &mut ChaCha8Rng, items: &[&'static str]) -> &'static str {
    items[rng.random_range(0..items.len())]
}

fn invented_word(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(2..=3);
    let mut w: String = (0..n).map(|_| *pick(rng, SYLLABLES)).collect();
    if let Some(first) = w.get(..1).map(str::to_ascii_uppercase) {
        w.replace_range(..1, &first);
    }
    w
}

fn unique_id(rng: &mut ChaCha8Rng, seen: &mut HashSet<String>, make: impl Fn(&mut ChaCha8Rng) -> String) -> String {
    loop {
        let id = make(rng);
        if seen.insert(id.clone()) {
            return id;
        }
    }
}

const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn alnum(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n).map(|_| char::from(ALNUM[rng.random_range(0..ALNUM.len())])).collect()
}

fn make_asin(rng: &mut ChaCha8Rng) -> String {
    if rng.random_bool(0.01) {
        // ISBN-like asins of old catalogue entries, e.g. "7106116521".
        return (0..10).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect();
    }
    let third = match rng.random_range(0..10) {
        0..=4 => '0',
        5..=7 => '1',
        _ => '7',
    };
    format!("B0{third}{}", alnum(rng, 7))
}

fn make_reviewer_id(rng: &mut ChaCha8Rng) -> String {
    let len = if rng.random_bool(0.1) { 12 } else { 13 };
    format!("A{}{}", rng.random_range(1..=3), alnum(rng, len - 1))
}

fn build_world(rng: &mut ChaCha8Rng, n_products: usize) -> World {
    let n_clusters = (n_products / 48).max(1).min(n_products.max(1));
    let n_cat = CATEGORIES.len();
    // Brands, each with up to 5 distinct categories.
    let mut brand_names: Vec<String> = BRANDS.iter().map(|b| b.to_string()).collect();
    let mut seen: HashSet<String> = brand_names.iter().cloned().collect();
    let n_brands = n_clusters.div_ceil(5);
    while brand_names.len() < n_brands {
        let name = unique_id(rng, &mut seen, invented_word);
        brand_names.push(name);
    }
    let mut clusters = Vec::with_capacity(n_clusters);
    let mut lines_seen = HashSet::new();
    'brands: for brand in &brand_names {
        let mut cats: Vec<usize> = (0..n_cat).collect();
        for k in 0..5 {
            if clusters.len() == n_clusters {
                break 'brands;
            }
            let j = rng.random_range(k..n_cat);
            cats.swap(k, j);
            let line = unique_id(rng, &mut lines_seen, invented_word);
            let dept = match CATEGORIES[cats[k]].group {
                "Jewelry" => [1, 1, 1, 0, 4][rng.random_range(0..5)],
                _ => [0, 0, 1, 1, 1, 2, 3, 4][rng.random_range(0..8)],
            };
            clusters.push(Cluster {
                brand: brand.clone(),
                category: cats[k],
                line,
                dept,
                members: Vec::new(),
                cum: Vec::new(),
            });
        }
    }
    let cluster_size_cum = cumulative((0..clusters.len()).map(|c| 1.0 / ((c + 5) as f64).powf(0.6)));

    // Products: a global popularity rank is a random permutation.
    let mut ranks: Vec<usize> = (0..n_products).collect();
    for i in (1..ranks.len()).rev() {
        let j = rng.random_range(0..=i);
        ranks.swap(i, j);
    }
    let mut asins = HashSet::with_capacity(n_products);
    let mut products = Vec::with_capacity(n_products);
    for (p, &rank) in ranks.iter().enumerate() {
        let cluster = if p < clusters.len() { p } else { draw(rng, &cluster_size_cum) };
        let c = &clusters[cluster];
        let cat = &CATEGORIES[c.category];
        let size_list: &'static [&'static str] = match (cat.sizes, c.dept) {
            (s, 0 | 3) if std::ptr::eq(s, SHOE_WOMEN) => SHOE_MEN,
            (s, 1 | 2) if std::ptr::eq(s, SHOE_MEN) => SHOE_WOMEN,
            (s, 2 | 3) if std::ptr::eq(s, LETTER) => KIDS,
            (s, _) => s,
        };
        let sizes = if size_list.is_empty() {
            Vec::new()
        } else {
            let len = rng.random_range(size_list.len().min(3)..=size_list.len());
            let start = rng.random_range(0..=size_list.len() - len);
            size_list[start..start + len].to_vec()
        };
        let n_colors = rng.random_range(1..=6.min(cat.palette.len()));
        let mut colors: Vec<&'static str> = Vec::with_capacity(n_colors);
        while colors.len() < n_colors {
            let col = *pick(rng, cat.palette);
            if !colors.contains(&col) {
                colors.push(col);
            }
        }
        products.push(GenProduct {
            asin: unique_id(rng, &mut asins, make_asin),
            cluster: cluster as u32,
            pos: 0,
            weight: 1.0 / ((rank + 1) as f64).powf(0.95),
            sizes,
            colors,
            quality: rng.random_range(3.8..5.6),
            descriptor: pick_str(rng, DESCRIPTORS),
            material: pick_str(rng, cat.materials),
            has_meta: !rng.random_bool(0.01),
            duplicate_meta: rng.random_bool(0.005),
        });
        clusters[cluster].members.push(p as u32);
    }
    for (ci, c) in clusters.iter_mut().enumerate() {
        for i in (1..c.members.len()).rev() {
            let j = rng.random_range(0..=i);
            c.members.swap(i, j);
        }
        for (pos, &m) in c.members.iter().enumerate() {
            products[m as usize].pos = pos as u32;
            debug_assert_eq!(products[m as usize].cluster as usize, ci);
        }
        c.cum = cumulative(c.members.iter().map(|&m| products[m as usize].weight));
    }
    let global_cum = cumulative(products.iter().map(|p| p.weight));
    let cluster_cum = cumulative(clusters.iter().map(|c| c.cum.last().copied().unwrap_or(0.0)));
    World { clusters, products, global_cum, cluster_cum }
}

impl World {
    /// A product of cluster `c`, by popularity.
    fn entry(&self, rng: &mut ChaCha8Rng, c: usize) -> u32 {
        let cl = &self.clusters[c];
        cl.members[draw(rng, &cl.cum)]
    }

    /// The next product after `prev` for a user preferring `prefs` (see the module docs).
    fn next(&self, rng: &mut ChaCha8Rng, prev: u32, prefs: &[usize]) -> u32 {
        let p = &self.products[prev as usize];
        let cl = &self.clusters[p.cluster as usize];
        let n = cl.members.len();
        let r = rng.random::<f64>();
        let next = if r < P_SUCCESSOR && n > 1 {
            let k = (n - 1).min(3);
            let cands: Vec<u32> = (1..=k).map(|d| cl.members[(p.pos as usize + d) % n]).collect();
            let cum = cumulative(
                cands.iter().enumerate().map(|(d, &m)| [0.6, 0.25, 0.15][d] * self.products[m as usize].weight.sqrt()),
            );
            cands[draw(rng, &cum)]
        } else if r < P_SUCCESSOR + P_PREFERRED {
            // Back to a preferred cluster: the other one when already in one.
            let others: Vec<usize> = prefs.iter().copied().filter(|&c| c != p.cluster as usize).collect();
            let c = if others.is_empty() { prefs[0] } else { *pick(rng, &others) };
            self.entry(rng, c)
        } else {
            draw(rng, &self.global_cum) as u32
        };
        if next == prev {
            // Never the same product twice in a row: take its successor in the cycle.
            if cl.members.len() > 1 {
                return cl.members[(p.pos as usize + 1) % cl.members.len()];
            }
            return draw(rng, &self.global_cum) as u32;
        }
        next
    }
}

// ---------------------------------------------------------------------------------------------
// Users and reviews

struct GenUser {
    id: String,
    name: Option<String>,
}

struct GenReview {
    user: u32,
    product: u32,
    day: i64,
    verified: bool,
    rating: u8,
    size: Option<u8>,
    color: Option<u8>,
}

/// First day of the review period (2010-01-01) and last start day (2018-06-01), in days since
/// the epoch.
fn period() -> (i64, i64) {
    (days_from_civil(2010, 1, 1), days_from_civil(2018, 6, 1))
}

fn activity(rng: &mut ChaCha8Rng) -> u64 {
    if rng.random_bool(0.07) {
        let u: f64 = rng.random_range(1e-9..1.0);
        (11.0 + 6.0 * (u.powf(-0.5) - 1.0)).min(300.0) as u64
    } else {
        let mut n = 1;
        while n < 9 && rng.random_bool(0.38) {
            n += 1;
        }
        n
    }
}

fn reviewer_name(rng: &mut ChaCha8Rng) -> Option<String> {
    let r = rng.random::<f64>();
    Some(if r < 0.02 {
        return None;
    } else if r < 0.14 {
        "Amazon Customer".to_string()
    } else if r < 0.52 {
        pick(rng, FIRST_NAMES).to_string()
    } else if r < 0.77 {
        format!("{} {}.", pick(rng, FIRST_NAMES), char::from(b'A' + rng.random_range(0..26u8)))
    } else if r < 0.87 {
        format!("{}{}", pick(rng, FIRST_NAMES).to_lowercase(), rng.random_range(1..9999))
    } else {
        format!("{} {}", pick(rng, FIRST_NAMES), pick(rng, LAST_NAMES))
    })
}

/// J-shaped like real Amazon ratings: some 1- and 2-star reviews (more for worse products),
/// otherwise the quality plus noise, mostly 4 and 5 stars.
fn rating(rng: &mut ChaCha8Rng, quality: f64) -> u8 {
    if rng.random_bool(0.05 + 0.15 * (5.6 - quality) / 1.8) {
        return if rng.random_bool(0.65) { 1 } else { 2 };
    }
    let noise: f64 = (0..3).map(|_| rng.random::<f64>()).sum::<f64>() - 1.5;
    (quality + 1.4 * noise).round().clamp(2.0, 5.0) as u8
}

fn simulate(rng: &mut ChaCha8Rng, world: &World, n_reviews: u64) -> (Vec<GenUser>, Vec<GenReview>) {
    let mut users = Vec::new();
    let mut reviews = Vec::with_capacity(n_reviews as usize);
    let mut ids = HashSet::new();
    let (first_day, last_start) = period();
    if world.products.is_empty() {
        return (users, reviews);
    }
    while (reviews.len() as u64) < n_reviews {
        let n = activity(rng).min(n_reviews - reviews.len() as u64);
        let user = users.len() as u32;
        users.push(GenUser { id: unique_id(rng, &mut ids, make_reviewer_id), name: reviewer_name(rng) });
        let mut prefs = vec![draw(rng, &world.cluster_cum)];
        if rng.random_bool(0.4) && world.clusters.len() > 1 {
            let second = draw(rng, &world.cluster_cum);
            if second != prefs[0] {
                prefs.push(second);
            }
        }
        let size_quantile: f64 = rng.random();
        let mut day = rng.random_range(first_day..=last_start);
        let mut prev: Option<u32> = None;
        for _ in 0..n {
            let product = match prev {
                None => world.entry(rng, prefs[0]),
                Some(p) => {
                    let gap: f64 = -20.0 * (1.0 - rng.random::<f64>()).ln();
                    day += 1 + gap as i64;
                    world.next(rng, p, &prefs)
                }
            };
            let p = &world.products[product as usize];
            let styled = rng.random_bool(0.88);
            let size = (styled && !p.sizes.is_empty() && rng.random_bool(0.95)).then(|| {
                let m = p.sizes.len();
                if rng.random_bool(0.8) {
                    (size_quantile * (m - 1) as f64).round() as u8
                } else {
                    rng.random_range(0..m) as u8
                }
            });
            let color = (styled && rng.random_bool(0.9)).then(|| {
                if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..p.colors.len()) as u8
                }
            });
            reviews.push(GenReview {
                user,
                product,
                day,
                verified: rng.random_bool(0.9),
                rating: rating(rng, p.quality),
                size,
                color,
            });
            prev = Some(product);
        }
    }
    (users, reviews)
}

// ---------------------------------------------------------------------------------------------
// Text

/// The words a review of one product may use.
struct Words<'a> {
    brand: &'a str,
    line: &'a str,
    noun: &'static str,
    plural: bool,
    part: &'static str,
    material: &'static str,
    color: Option<&'static str>,
    size: Option<&'static str>,
}

impl Words<'_> {
    fn this(&self) -> &'static str {
        if self.plural {
            "These"
        } else {
            "This"
        }
    }
    fn is(&self) -> &'static str {
        if self.plural {
            "are"
        } else {
            "is"
        }
    }
    fn it(&self) -> &'static str {
        if self.plural {
            "they"
        } else {
            "it"
        }
    }
    fn them(&self) -> &'static str {
        if self.plural {
            "them"
        } else {
            "it"
        }
    }
}

fn sentence(rng: &mut ChaCha8Rng, w: &Words, stars: u8) -> String {
    let (this, is, it, them) = (w.this(), w.is(), w.it(), w.them());
    let (noun, part, material, brand, line) = (w.noun, w.part, w.material, w.brand, w.line);
    match stars {
        4..=5 => match rng.random_range(0..12) {
            0 => format!("{this} {noun} {is} {}.", pick(rng, PRAISE)),
            1 => format!("I love {} {noun}!", this.to_lowercase()),
            2 => format!("The {material} feels {} and the {part} is well made.", pick(rng, FEEL_GOOD)),
            3 => match (w.color, w.size) {
                (Some(c), Some(s)) => format!("I ordered the {c} in {s} and {it} fit {}.", pick(rng, FIT_GOOD)),
                (Some(c), None) => format!("The {c} is even nicer in person."),
                (None, Some(s)) => format!("I got a {s} and {it} fit {}.", pick(rng, FIT_GOOD)),
                (None, None) => format!("{} fit {}.", capitalize(it), pick(rng, FIT_GOOD)),
            },
            4 => format!("{brand} always makes {} {noun}.", pick(rng, &["great", "quality", "nice", "reliable"])),
            5 => format!("This is my {} {brand} {line} {noun}.", pick(rng, &["second", "third", "fourth", "fifth"])),
            6 => format!("Perfect for {}.", pick(rng, OCCASIONS)),
            7 => format!("Great {material} {noun}, {} and {}.", pick(rng, FEEL_GOOD), pick(rng, FEEL_GOOD)),
            8 => {
                format!("The {part} is {}.", pick(rng, &["sturdy", "well stitched", "smooth", "comfortable", "solid"]))
            }
            9 => format!(
                "Fits {} and looks {}.",
                pick(rng, FIT_GOOD),
                pick(rng, &["great", "expensive", "sharp", "classy"])
            ),
            10 => format!("Would definitely buy another {brand} {noun}."),
            _ => format!("I get compliments every time I wear {them}."),
        },
        3 => match rng.random_range(0..5) {
            0 => format!("{this} {noun} {is} ok for the price."),
            1 => format!("The {material} is {} but the {part} feels {}.", pick(rng, FEEL_GOOD), pick(rng, FEEL_BAD)),
            2 => format!("Runs {}, order a size up.", pick(rng, FIT_BAD)),
            3 => format!("Decent {noun}, nothing special for {brand}."),
            _ => format!("The {part} could be better but {it} will do for {}.", pick(rng, OCCASIONS)),
        },
        _ => match rng.random_range(0..7) {
            0 => format!("The {part} {} after {} weeks.", pick(rng, BREAKS), rng.random_range(2..9)),
            1 => format!("The {material} feels cheap and {}.", pick(rng, FEEL_BAD)),
            2 => format!("I returned {them} because {it} ran {}.", pick(rng, FIT_BAD)),
            3 => format!("Not what I expected from {brand}."),
            4 => match w.color {
                Some(c) => format!("The {c} looks nothing like the picture."),
                None => "The color looks nothing like the picture.".to_string(),
            },
            5 => format!(
                "{this} {noun} {is} way too {} in {}.",
                pick(rng, &["small", "big", "tight", "long"]),
                w.size.unwrap_or("my size")
            ),
            _ => format!("Poor quality {material}, the {part} {} right away.", pick(rng, BREAKS)),
        },
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn review_text(rng: &mut ChaCha8Rng, w: &Words, stars: u8) -> String {
    if rng.random_bool(0.15) {
        return pick(rng, if stars >= 3 { SHORT_GOOD } else { SHORT_BAD }).to_string();
    }
    let n = match rng.random_range(0..20) {
        0..=5 => 1,
        6..=11 => 2,
        12..=16 => 3,
        _ => rng.random_range(4..=6),
    };
    let mut sentences: Vec<String> = Vec::with_capacity(n);
    for _ in 0..3 * n {
        if sentences.len() == n {
            break;
        }
        let s = sentence(rng, w, stars);
        if !sentences.contains(&s) {
            sentences.push(s);
        }
    }
    let mut text = String::new();
    for (i, s) in sentences.iter().enumerate() {
        if i > 0 {
            // Real reviews sometimes break lines between sentences.
            text.push_str(if rng.random_bool(0.03) { "\n" } else { " " });
        }
        text.push_str(s);
    }
    if rng.random_bool(0.03) {
        // Typographic apostrophes: written as \u2019 by the JSON writer.
        text = text.replace("I love", "It\u{2019}s true, I love");
    }
    if rng.random_bool(0.01) {
        text.push_str(" The \"size chart\" was spot on.");
    }
    text
}

fn summary(rng: &mut ChaCha8Rng, w: &Words, stars: u8) -> String {
    let stars_text =
        ["One Star", "Two Stars", "Three Stars", "Four Stars", "Five Stars"][usize::from(stars.clamp(1, 5) - 1)];
    if rng.random_bool(0.35) {
        return stars_text.to_string();
    }
    let noun = w.noun;
    match stars {
        5 => match rng.random_range(0..7) {
            0 => "Love it!".into(),
            1 => format!("Great {noun}"),
            2 => "Perfect fit".into(),
            3 => "Very comfortable".into(),
            4 => format!("{} quality", w.brand),
            5 => format!("Beautiful {noun}"),
            _ => "Exactly as described".into(),
        },
        4 => match rng.random_range(0..4) {
            0 => format!("Nice {noun}"),
            1 => "Good quality".into(),
            2 => "Runs a little small".into(),
            _ => "Pretty good".into(),
        },
        3 => (*pick(rng, &["OK", "Just ok", "Runs small", "Not bad", "Meh"])).into(),
        2 => match rng.random_range(0..3) {
            0 => "Disappointed".into(),
            1 => format!("Cheap {}", w.material),
            _ => "Runs small".into(),
        },
        _ => (*pick(rng, &["Returned", "Poor quality", "Terrible", "Fell apart", "Waste of money"])).into(),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON in Python's `json.dumps` layout

/// Appends `s` as a JSON string the way Python's `json.dumps` writes it (ASCII only).
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
                }
            }
            c => out.push(c as u8),
        }
    }
    out.push(b'"');
}

/// Writes one JSON object with `", "` and `": "` separators.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }
    fn key(&mut self, k: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.extend_from_slice(b", ");
        }
        self.first = false;
        push_json_str(self.out, k);
        self.out.extend_from_slice(b": ");
        self.out
    }
    fn str(&mut self, k: &str, v: &str) {
        let out = self.key(k);
        push_json_str(out, v);
    }
    fn raw(&mut self, k: &str, v: &str) {
        self.key(k).extend_from_slice(v.as_bytes());
    }
    fn list(&mut self, k: &str, items: &[String]) {
        let out = self.key(k);
        out.push(b'[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            push_json_str(out, item);
        }
        out.push(b']');
    }
    fn pairs(&mut self, k: &str, pairs: &[(String, String)]) {
        let out = self.key(k);
        out.push(b'{');
        for (i, (pk, pv)) in pairs.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            push_json_str(out, pk);
            out.extend_from_slice(b": ");
            push_json_str(out, pv);
        }
        out.push(b'}');
    }
    fn end(self) {
        self.out.extend_from_slice(b"}\n");
    }
}

/// `1234567` as `"1,234,567"`.
pub(crate) fn with_commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `(year, month, day)` of a day since the epoch (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The 2018 `reviewTime` of a day: `"MM D, YYYY"`, e.g. `"01 1, 2018"`.
pub(crate) fn review_time(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{m:02} {d}, {y}")
}

fn image_id(rng: &mut ChaCha8Rng) -> String {
    const B62: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut s = String::from(*pick(rng, &["41", "51", "61", "71", "81", "91"]));
    s.extend((0..9).map(|_| char::from(B62[rng.random_range(0..B62.len())])));
    s
}

fn write_review(rng: &mut ChaCha8Rng, out: &mut Vec<u8>, world: &World, user: &GenUser, r: &GenReview) {
    let p = &world.products[r.product as usize];
    let cl = &world.clusters[p.cluster as usize];
    let cat = &CATEGORIES[cl.category];
    let noun = if rng.random_bool(0.6) { cat.nouns[0] } else { *pick(rng, cat.nouns) };
    let words = Words {
        brand: &cl.brand,
        line: &cl.line,
        noun,
        plural: noun.ends_with('s') && !noun.ends_with("ss"),
        part: pick_str(rng, cat.parts),
        material: p.material,
        color: r.color.map(|c| p.colors[usize::from(c)]),
        size: r.size.map(|s| p.sizes[usize::from(s)]),
    };
    let mut o = Obj::new(out);
    o.raw("overall", &format!("{}.0", r.rating));
    if rng.random_bool(0.12) {
        let u: f64 = rng.random_range(1e-9..1.0);
        let votes = (2.0 * u.powf(-1.0 / 1.1)).min(5000.0) as u64;
        o.str("vote", &with_commas(votes));
    }
    o.raw("verified", if r.verified { "true" } else { "false" });
    o.str("reviewTime", &review_time(r.day));
    o.str("reviewerID", &user.id);
    o.str("asin", &p.asin);
    if r.size.is_some() || r.color.is_some() {
        let named = rng.random_bool(0.03);
        let mut style = Vec::new();
        if let Some(s) = words.size {
            style.push((if named { "Size Name:" } else { "Size:" }.to_string(), format!(" {s}")));
        }
        if let Some(c) = words.color {
            style.push((if named { "Color Name:" } else { "Color:" }.to_string(), format!(" {c}")));
        }
        if rng.random_bool(0.02) {
            style.push(("Style:".to_string(), format!(" {}", p.descriptor)));
        }
        o.pairs("style", &style);
    }
    if let Some(name) = &user.name {
        o.str("reviewerName", name);
    }
    if !rng.random_bool(0.01) {
        o.str("reviewText", &review_text(rng, &words, r.rating));
    }
    if !rng.random_bool(0.005) {
        o.str("summary", &summary(rng, &words, r.rating));
    }
    o.raw("unixReviewTime", &(r.day * 86_400).to_string());
    if rng.random_bool(0.04) {
        o.list("image", &[format!("https://images-na.ssl-images-amazon.com/images/I/{}._SY88.jpg", image_id(rng))]);
    }
    o.end();
}

fn title_of(world: &World, p: &GenProduct, rng: &mut ChaCha8Rng) -> String {
    let cl = &world.clusters[p.cluster as usize];
    let cat = &CATEGORIES[cl.category];
    let dept = DEPTS[cl.dept].1;
    let mut title =
        format!("{} {dept} {} {} {} {}", cl.brand, cl.line, p.descriptor, capitalize(p.material), cat.title);
    if rng.random_bool(0.04) {
        title.push_str(" &amp; Gift Box");
    }
    if rng.random_bool(0.2) {
        title = title.replace('\'', "&#39;");
    }
    title
}

fn write_meta(rng: &mut ChaCha8Rng, out: &mut Vec<u8>, world: &World, p: &GenProduct) {
    let cl = &world.clusters[p.cluster as usize];
    let cat = &CATEGORIES[cl.category];
    let dept = DEPTS[cl.dept].0;
    let related = |rng: &mut ChaCha8Rng| -> Vec<String> {
        let n = rng.random_range(1..=6);
        (0..n)
            .map(|_| {
                let m = if rng.random_bool(0.7) {
                    world.entry(rng, p.cluster as usize)
                } else {
                    draw(rng, &world.global_cum) as u32
                };
                world.products[m as usize].asin.clone()
            })
            .collect()
    };
    let title = if rng.random_bool(0.02) { String::new() } else { title_of(world, p, rng) };
    let brand = if cl.brand.contains('&') { cl.brand.replace('&', "&amp;") } else { cl.brand.clone() };
    let image = image_id(rng);
    let features: Vec<String> = vec![
        format!("{}% {}", pick(rng, &[100, 95, 90, 80, 60]), capitalize(p.material)),
        (*pick(rng, &["Imported", "Made in USA", "Imported and domestic"])).to_string(),
        (*pick(rng, &["Machine Wash", "Hand Wash", "Wipe Clean", "Dry Clean Only"])).to_string(),
    ];
    let rank = format!("{}inClothing,Shoesamp;Jewelry(", with_commas(rng.random_range(1_000..14_000_000)));
    let mut o = Obj::new(out);
    if rng.random_bool(0.4) {
        // The full layout: every key, empty ones included.
        o.list("category", &["Clothing, Shoes & Jewelry".into(), dept.into(), cat.group.into(), cat.title.into()]);
        o.str("tech1", "");
        let desc = if rng.random_bool(0.7) {
            vec![format!(
                "<b>{}</b> {} {} by {}.<br>Machine wash cold &amp; tumble dry low.<br><ul><li>Imported</li></ul>",
                cl.line, p.material, cat.nouns[0], cl.brand
            )]
        } else {
            Vec::new()
        };
        o.list("description", &desc);
        o.str("fit", "");
        o.str("title", &title);
        o.list("also_buy", &related(rng));
        o.str("tech2", "");
        o.str("brand", &brand);
        o.list("feature", &features);
        o.str("rank", &rank);
        o.list("also_view", &related(rng));
        o.str(
            "main_cat",
            "<img src=\"https://images-na.ssl-images-amazon.com/images/G/01/nav2/images/gui/amazon-fashion-store-new._CB520838675_.png\" class=\"nav-categ-image\" alt=\"AMAZON FASHION\"/>",
        );
        o.str("similar_item", "");
        o.str("date", "");
        let price = rng.random_range(5..120);
        let price =
            if rng.random_bool(0.2) { format!("${price}.99 - ${}.99", price + 15) } else { format!("${price}.99") };
        o.str("price", &price);
        o.str("asin", &p.asin);
    } else {
        // The sparse layout of many fashion entries: empty keys left out.
        o.str("title", &title);
        if rng.random_bool(0.85) {
            o.str("brand", &brand);
        }
        o.list("feature", &features);
        o.str("rank", &rank);
        if rng.random_bool(0.2) {
            o.str("date", &format!("{}.{} inches", rng.random_range(1..12), rng.random_range(0..99)));
        }
        o.str("asin", &p.asin);
    }
    o.list("imageURL", &[format!("https://images-na.ssl-images-amazon.com/images/I/{image}._US40_.jpg")]);
    o.list("imageURLHighRes", &[format!("https://images-na.ssl-images-amazon.com/images/I/{image}.jpg")]);
    if rng.random_bool(0.2) {
        o.pairs(
            "details",
            &[
                (
                    "\n    Product Dimensions: \n    ".into(),
                    format!("{} x {} x 2 inches ; 8 ounces", rng.random_range(4..14), rng.random_range(3..10)),
                ),
                ("Shipping Weight:".into(), format!("{} ounces", rng.random_range(2..40))),
            ],
        );
    }
    o.end();
}

// ---------------------------------------------------------------------------------------------
// Entry point

/// Writes `AMAZON_FASHION.json.gz` and `meta_AMAZON_FASHION.json.gz` into `dir` (created if
/// missing) following the model of the module docs.
pub fn generate(dir: &Path, cfg: &GenerateConfig, quiet: bool) -> Result<GenerateStats, DataError> {
    if cfg.products == 0 && cfg.reviews > 0 {
        return Err(DataError::InvalidArg { flag: "--products", reason: "reviews need at least one product".into() });
    }
    let n_products = usize::try_from(cfg.products)
        .map_err(|_| DataError::InvalidArg { flag: "--products", reason: "too large".into() })?;
    std::fs::create_dir_all(dir).map_err(|e| DataError::write(dir, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let world = build_world(&mut rng, n_products);
    let (users, mut reviews) = simulate(&mut rng, &world, cfg.reviews);

    // The real file lists reviews by asin, newest first within a product.
    let mut asin_rank: Vec<u32> = vec![0; world.products.len()];
    let mut by_asin: Vec<u32> = (0..world.products.len() as u32).collect();
    by_asin.sort_unstable_by(|a, b| world.products[*a as usize].asin.cmp(&world.products[*b as usize].asin));
    for (rank, &p) in by_asin.iter().enumerate() {
        asin_rank[p as usize] = rank as u32;
    }
    reviews.sort_by(|a, b| {
        asin_rank[a.product as usize]
            .cmp(&asin_rank[b.product as usize])
            .then(b.day.cmp(&a.day))
            .then_with(|| users[a.user as usize].id.cmp(&users[b.user as usize].id))
    });

    let progress = Progress::new(quiet);
    let reviews_file = dir.join("AMAZON_FASHION.json.gz");
    let bar = progress.items(reviews.len() as u64, "writing reviews".into());
    let mut writer = GzWriter::create(&reviews_file)?;
    let mut line = Vec::with_capacity(4096);
    for (i, r) in reviews.iter().enumerate() {
        line.clear();
        write_review(&mut rng, &mut line, &world, &users[r.user as usize], r);
        writer.write(&line)?;
        if i % 4096 == 0 {
            bar.set_position(i as u64);
        }
    }
    let reviews_bytes = writer.finish()?;
    bar.finish_and_clear();

    // Metadata in asin order; a duplicated product's line appears again at a later position.
    let mut order: Vec<u32> = by_asin.iter().copied().filter(|&p| world.products[p as usize].has_meta).collect();
    let dups: Vec<u32> = order.iter().copied().filter(|&p| world.products[p as usize].duplicate_meta).collect();
    for p in &dups {
        let at = order.iter().position(|q| q == p).unwrap_or(0);
        let to = rng.random_range(at + 1..=order.len());
        order.insert(to, *p);
    }
    let meta_file = dir.join("meta_AMAZON_FASHION.json.gz");
    let mut writer = GzWriter::create(&meta_file)?;
    let mut written: std::collections::BTreeMap<u32, Vec<u8>> = std::collections::BTreeMap::new();
    for &p in &order {
        if let Some(again) = written.get(&p) {
            writer.write(again)?;
            continue;
        }
        line.clear();
        write_meta(&mut rng, &mut line, &world, &world.products[p as usize]);
        writer.write(&line)?;
        if world.products[p as usize].duplicate_meta {
            written.insert(p, line.clone());
        }
    }
    let meta_bytes = writer.finish()?;

    let mut per_user = vec![0u32; users.len()];
    for r in &reviews {
        per_user[r.user as usize] += 1;
    }
    Ok(GenerateStats {
        reviews_file,
        meta_file,
        reviews: reviews.len() as u64,
        products: world.products.len() as u64,
        clusters: world.clusters.len() as u64,
        users: users.len() as u64,
        users_10plus: per_user.iter().filter(|&&n| n >= 10).count() as u64,
        verified: reviews.iter().filter(|r| r.verified).count() as u64,
        meta_lines: order.len() as u64,
        duplicate_meta: dups.len() as u64,
        reviews_bytes,
        meta_bytes,
    })
}

/// A gzip file written through a large buffer.
struct GzWriter {
    path: PathBuf,
    inner: BufWriter<GzEncoder<File>>,
}

impl GzWriter {
    fn create(path: &Path) -> Result<Self, DataError> {
        let file = File::create(path).map_err(|e| DataError::write(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner: BufWriter::with_capacity(1 << 20, GzEncoder::new(file, Compression::new(6))),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DataError> {
        self.inner.write_all(bytes).map_err(|e| DataError::write(&self.path, e))
    }

    /// Finishes the stream; returns the file's size.
    fn finish(self) -> Result<u64, DataError> {
        let path = self.path;
        let encoder = self.inner.into_inner().map_err(|e| DataError::write(&path, e.into_error()))?;
        let file = encoder.finish().map_err(|e| DataError::write(&path, e))?;
        file.sync_all().map_err(|e| DataError::write(&path, e))?;
        file.metadata().map(|m| m.len()).map_err(|e| DataError::write(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amazon::{parse_meta_2018, parse_review_2018};

    #[test]
    fn json_strings_follow_python_json_dumps() {
        let mut out = Vec::new();
        push_json_str(&mut out, "They\u{2019}re \"cute\"\n\\ caf\u{e9} \u{1F600}");
        assert_eq!(String::from_utf8_lossy(&out), r#""They\u2019re \"cute\"\n\\ caf\u00e9 \ud83d\ude00""#);
    }

    #[test]
    fn formats_votes_and_review_times_like_the_real_file() {
        assert_eq!(with_commas(2), "2");
        assert_eq!(with_commas(1_234), "1,234");
        assert_eq!(with_commas(13_052_976), "13,052,976");
        assert_eq!(review_time(days_from_civil(2018, 1, 1)), "01 1, 2018");
        assert_eq!(review_time(days_from_civil(2017, 2, 21)), "02 21, 2017");
        for day in [0, 11_016, 17_532, 20_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    fn gunzip(path: &Path) -> String {
        let file = File::open(path).unwrap_or_else(|e| panic!("{e}"));
        let mut s = String::new();
        std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(file), &mut s)
            .unwrap_or_else(|e| panic!("{e}"));
        s
    }

    #[test]
    fn same_seed_same_bytes_and_lines_parse() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let cfg = GenerateConfig { reviews: 3_000, products: 400, seed: 7 };
        let a = generate(&dir.path().join("a"), &cfg, true).unwrap_or_else(|e| panic!("{e}"));
        let b = generate(&dir.path().join("b"), &cfg, true).unwrap_or_else(|e| panic!("{e}"));
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&a.reviews_file), read(&b.reviews_file));
        assert_eq!(read(&a.meta_file), read(&b.meta_file));
        let c =
            generate(&dir.path().join("c"), &GenerateConfig { seed: 8, ..cfg }, true).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(read(&a.reviews_file), read(&c.reviews_file));

        assert_eq!((a.reviews, a.products), (3_000, 400));
        let text = gunzip(&a.reviews_file);
        assert_eq!(text.lines().count(), 3_000);
        let mut verified = 0;
        for line in text.lines() {
            let r = parse_review_2018(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(r.product_id.len(), 10);
            assert!(r.user_id.starts_with('A') && (13..=14).contains(&r.user_id.len()));
            verified += u32::from(r.verified);
            assert!(line.starts_with("{\"overall\": ") && line.contains("\"reviewTime\": \""));
        }
        assert!((2_500..2_900).contains(&verified), "{verified} verified of 3000");
        assert!(text.contains("\"Size:\": \" ") && text.contains("\"Color:\": \" "));
        assert!(text.contains("\"vote\": \""));

        let meta = gunzip(&a.meta_file);
        let mut seen = HashSet::new();
        let mut dups = 0;
        for line in meta.lines() {
            let m = parse_meta_2018(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
            dups += u64::from(!seen.insert(m.product_id));
            assert!(!m.title.contains("&amp;") && !m.title.contains("&#39;"));
        }
        assert_eq!(dups, a.duplicate_meta);
        assert!(meta.contains("&amp;") && meta.contains("<br>"));
    }

    #[test]
    fn timestamps_increase_along_each_users_sequence() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let world = build_world(&mut rng, 500);
        let (users, reviews) = simulate(&mut rng, &world, 5_000);
        let mut last: Vec<Option<(i64, u32)>> = vec![None; users.len()];
        for r in &reviews {
            if let Some((day, product)) = last[r.user as usize] {
                assert!(r.day > day, "days must increase");
                assert_ne!(r.product, product, "no product twice in a row");
            }
            last[r.user as usize] = Some((r.day, r.product));
        }
        // Heavy-tailed activity: most users write 1-3 reviews, a few percent 10 or more.
        let mut per_user = vec![0u32; users.len()];
        for r in &reviews {
            per_user[r.user as usize] += 1;
        }
        let n = users.len() as f64;
        let light = per_user.iter().filter(|&&k| k <= 3).count() as f64 / n;
        let heavy = per_user.iter().filter(|&&k| k >= 10).count() as f64 / n;
        assert!(light > 0.8 && (0.02..0.1).contains(&heavy), "light {light}, heavy {heavy}");
    }

    #[test]
    fn sequences_mostly_stay_in_their_cluster() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let world = build_world(&mut rng, 2_000);
        let (_, reviews) = simulate(&mut rng, &world, 20_000);
        let (mut same, mut pairs) = (0, 0);
        for w in reviews.windows(2) {
            if w[0].user == w[1].user {
                pairs += 1;
                let c = |r: &GenReview| world.products[r.product as usize].cluster;
                same += u32::from(c(&w[0]) == c(&w[1]));
            }
        }
        let share = f64::from(same) / f64::from(pairs);
        assert!(share > 0.7, "{share} of transitions stay in the cluster");
    }
}
