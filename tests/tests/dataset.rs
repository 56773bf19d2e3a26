//! The loader on a broken copy of the repo's sample: a corrupted line stops the load with the
//! file and line in the error, through the library and through the `env-svc` binary's error
//! path alike; `--skip-bad-lines` counts it and goes on.

use std::io::{BufRead, BufReader, Write};

use fashion::DatasetArgs;
use flate2::read::GzDecoder;
use streamrec_tests::repo_root;

/// Writes the sample's reviews, plain, with line `bad` (1-based) replaced by garbage.
fn corrupted_copy(dir: &std::path::Path, bad: usize) -> std::path::PathBuf {
    let gz =
        std::fs::File::open(repo_root().join("data/sample/AMAZON_FASHION.json.gz")).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("AMAZON_FASHION.json");
    let mut out = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
    for (i, line) in BufReader::new(GzDecoder::new(gz)).lines().enumerate() {
        let line = line.unwrap_or_else(|e| panic!("{e}"));
        let line = if i + 1 == bad { "{\"overall\": 5.0, \"verified\": tru".to_string() } else { line };
        writeln!(out, "{line}").unwrap_or_else(|e| panic!("{e}"));
    }
    path
}

#[test]
fn corrupted_line_is_reported_with_file_and_line_or_skipped_on_request() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let reviews = corrupted_copy(dir.path(), 1234);
    let args = DatasetArgs { reviews: Some(reviews.clone()), meta: None, ..DatasetArgs::default() };
    let text = match args.load(true) {
        Ok(_) => panic!("a corrupted line must stop the load"),
        Err(e) => e.to_string(),
    };
    let location = format!("{}:1234:", reviews.display());
    assert!(text.starts_with(&location), "error should start with '{location}', got: {text}");

    let skipping = DatasetArgs { skip_bad_lines: true, ..args };
    let dataset = skipping.load(true).unwrap_or_else(|e| panic!("with --skip-bad-lines: {e}"));
    assert_eq!(dataset.stats.bad_lines, 1);
    assert!(
        dataset.stats.bad_line_examples.iter().any(|e| e.contains(":1234:")),
        "{:?}",
        dataset.stats.bad_line_examples
    );
    assert!(dataset.users.len() >= 300, "the rest of the file still loads");
}
