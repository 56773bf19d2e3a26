//! The `generate` and `inspect` subcommands of `env-svc`: write a synthetic dataset, and load
//! and preprocess one while measuring time and peak memory.
//!
//! Invariant: both are thin wrappers over the library ([`super::generate::generate`],
//! [`super::DatasetArgs::load`]); they only print and write reports.

use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use serde::Serialize;

use super::{
    generate::{generate, GenerateConfig, REAL_PRODUCTS, REAL_REVIEWS},
    Dataset, DatasetArgs, LoadStats, Split,
};

/// `env-svc generate`: write a synthetic dataset in the exact 2018 Amazon Fashion format.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Folder to write `AMAZON_FASHION.json.gz` and `meta_AMAZON_FASHION.json.gz` into
    /// (created if missing; existing files are replaced).
    #[arg(long, env = "GENERATE_OUT")]
    pub out: PathBuf,
    /// Reviews to write (the real 2018 file has 883,636).
    #[arg(long, env = "GENERATE_REVIEWS", default_value_t = REAL_REVIEWS)]
    pub reviews: u64,
    /// Distinct products (the real 2018 metadata has 186,637).
    #[arg(long, env = "GENERATE_PRODUCTS", default_value_t = REAL_PRODUCTS)]
    pub products: u64,
    /// Seed: the same seed and sizes give byte-identical files.
    #[arg(long, env = "GENERATE_SEED", default_value_t = 42)]
    pub seed: u64,
}

/// Writes the dataset and prints what was written as JSON.
pub fn run_generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let cfg = GenerateConfig { reviews: args.reviews, products: args.products, seed: args.seed };
    let stats = generate(&args.out, &cfg, false)
        .with_context(|| format!("failed to generate a dataset in {}", args.out.display()))?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), reviews = stats.reviews, "dataset generated");
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

/// `env-svc inspect`: load and preprocess a dataset, print its statistics.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// Also write the statistics, the time and the peak memory as JSON to this file.
    #[arg(long, env = "INSPECT_JSON")]
    pub json: Option<PathBuf>,
}

/// What `inspect` reports.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    /// The loader's statistics.
    pub stats: LoadStats,
    /// Peak resident memory of the process (`VmHWM`), in MiB; `None` off Linux.
    pub peak_rss_mib: Option<f64>,
    /// Wall-clock seconds of the load and preprocessing.
    pub seconds: f64,
    /// Lengths of the user sequences.
    pub sequence_length: Lengths,
    /// Text of the first product, as a state carries it.
    pub example_text: String,
}

/// Summary of sequence lengths.
#[derive(Debug, Default, Serialize)]
pub struct Lengths {
    /// Shortest.
    pub min: usize,
    /// Median.
    pub median: usize,
    /// Mean.
    pub mean: f64,
    /// Longest.
    pub max: usize,
}

/// Loads and preprocesses, prints a summary and writes the JSON report if asked.
pub fn run_inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dataset = args.dataset.load(false).context("failed to load the dataset")?;
    let seconds = started.elapsed().as_secs_f64();
    let report = InspectReport {
        peak_rss_mib: peak_rss_mib(),
        seconds,
        sequence_length: lengths(&dataset),
        example_text: dataset.products.first().map(|p| p.text()).unwrap_or_default(),
        stats: dataset.stats.clone(),
    };
    print_summary(&dataset, &report);
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(())
}

fn lengths(ds: &Dataset) -> Lengths {
    let mut lens: Vec<usize> = ds.users.iter().map(|u| u.items.len()).collect();
    if lens.is_empty() {
        return Lengths::default();
    }
    lens.sort_unstable();
    Lengths {
        min: lens[0],
        median: lens[lens.len() / 2],
        mean: lens.iter().sum::<usize>() as f64 / lens.len() as f64,
        max: lens[lens.len() - 1],
    }
}

fn print_summary(ds: &Dataset, r: &InspectReport) {
    let s = &ds.stats;
    println!("reviews   {} ({})", s.reviews_file, s.format);
    println!("meta      {}", s.meta_file.as_deref().unwrap_or("(none)"));
    println!(
        "read      {} lines, {} reviews, {} unverified dropped, {} bad lines; meta {} lines, {} products, {} duplicates",
        s.lines, s.reviews_read, s.reviews_unverified, s.bad_lines + s.meta_bad_lines, s.meta_lines, s.meta_products, s.duplicate_meta
    );
    for example in &s.bad_line_examples {
        println!("          skipped {example}");
    }
    println!(
        "users     {} of {} kept (>= {} {}reviews); train {}, test {} (test fraction {}, seed {})",
        s.users_kept,
        s.users_total,
        s.min_reviews,
        if s.verified_only { "verified " } else { "" },
        ds.users_in(Split::Train).len(),
        ds.users_in(Split::Test).len(),
        s.test_fraction,
        s.split_seed
    );
    println!(
        "sequences {} items, length min {} / median {} / mean {:.1} / max {}; {} consecutive duplicates collapsed",
        s.sequence_items,
        r.sequence_length.min,
        r.sequence_length.median,
        r.sequence_length.mean,
        r.sequence_length.max,
        s.duplicates_collapsed
    );
    println!("products  {} (the action space), {} with metadata", s.products_kept, s.products_with_meta);
    println!("example   {}", r.example_text);
    let rss = r.peak_rss_mib.map_or("unknown".to_string(), |m| format!("{m:.0} MiB"));
    println!(
        "time      {:.2} s (read {:.2} s, preprocess {:.2} s), peak RSS {rss}",
        r.seconds, s.read_seconds, s.prep_seconds
    );
}

/// Peak resident set size of this process (`VmHWM` of `/proc/self/status`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sample_loads_end_to_end() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("ds");
        run_generate(&GenerateArgs { out: out.clone(), reviews: 6_000, products: 500, seed: 1 })
            .unwrap_or_else(|e| panic!("{e:#}"));
        let args = DatasetArgs { dataset: out, min_reviews: 5, ..DatasetArgs::default() };
        let ds = args.load(true).unwrap_or_else(|e| panic!("{e}"));
        assert!(ds.users.len() > 20 && !ds.products.is_empty());
        assert!(ds.users.windows(2).all(|w| w[0].user_id < w[1].user_id));
        assert!(ds.products.windows(2).all(|w| w[0].id < w[1].id));
        assert!(ds.users.iter().all(|u| u.items.len() >= 2 && u.items.iter().all(|&i| i < ds.n_actions())));
        assert!(ds.users.iter().all(|u| u.items.windows(2).all(|w| w[0] != w[1])));
        assert_eq!(ds.stats.reviews_read, 6_000);
        assert!(ds.stats.duplicate_meta > 0 || ds.stats.meta_lines == ds.stats.meta_products);
        assert!(ds.products.iter().filter(|p| !p.keywords.is_empty()).count() * 10 > ds.products.len() * 9);
        assert!(ds.products.iter().filter(|p| !p.title.is_empty()).count() * 10 > ds.products.len() * 9);

        let json = dir.path().join("report/inspect.json");
        run_inspect(&InspectArgs { dataset: args, json: Some(json.clone()) }).unwrap_or_else(|e| panic!("{e:#}"));
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(report["peak_rss_mib"].as_f64().is_some_and(|m| m > 0.0));
        assert_eq!(report["stats"]["users_kept"].as_u64(), Some(ds.users.len() as u64));
    }

    fn committed_sample() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sample")
    }

    #[test]
    fn committed_sample_has_enough_users() {
        let args = DatasetArgs { dataset: committed_sample(), ..DatasetArgs::default() };
        let ds = args.load(true).unwrap_or_else(|e| panic!("{e}"));
        assert!(ds.users.len() >= 300, "{} users", ds.users.len());
        assert!(ds.users_in(Split::Train).len() >= 200);
        assert!(!ds.users_in(Split::Test).is_empty());
        assert!((300..=2_000).contains(&ds.products.len()), "{} products", ds.products.len());
        let bytes: u64 = ["AMAZON_FASHION.json.gz", "meta_AMAZON_FASHION.json.gz"]
            .iter()
            .map(|f| std::fs::metadata(committed_sample().join(f)).map_or(0, |m| m.len()))
            .sum();
        assert!(bytes <= 1_000_000, "{bytes} bytes");
    }

    #[test]
    fn committed_sample_is_reproducible() {
        // Fails when the generator changes: regenerate the sample with the command of its README.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let args = GenerateArgs { out: dir.path().to_path_buf(), reviews: 16_000, products: 1_500, seed: 42 };
        run_generate(&args).unwrap_or_else(|e| panic!("{e:#}"));
        for f in ["AMAZON_FASHION.json.gz", "meta_AMAZON_FASHION.json.gz"] {
            let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(read(dir.path().join(f)) == read(committed_sample().join(f)), "{f} differs from a regeneration");
        }
    }

    #[test]
    fn missing_dataset_names_the_folder() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let args = DatasetArgs { dataset: dir.path().to_path_buf(), ..DatasetArgs::default() };
        let e = args.load(true).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with(&format!("no reviews file in {}", dir.path().display())), "{e}");
    }
}
