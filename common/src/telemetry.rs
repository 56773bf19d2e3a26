//! Structured logs through `tracing`: filter from `RUST_LOG` (default `info`), human-readable
//! text on a terminal, one JSON object per line when asked (containers, log shippers).
//!
//! Invariant: colour codes are written only to a terminal, never to a file or a pipe, and never
//! when `NO_COLOR` is set (<https://no-color.org>).

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// Shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether log lines to stderr may carry ANSI colour codes: only on a terminal, and not when
/// `NO_COLOR` is set to anything non-empty.
pub fn use_colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Installs the global subscriber; logs go to stderr so stdout stays free for results.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(use_colour());
    // A second init (tests calling `run` twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
