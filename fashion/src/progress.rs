//! Progress bars of the loader, drawn to stderr.
//!
//! Invariant: nothing is drawn when `quiet` is set or stderr is not a terminal (logs in
//! containers stay clean); bars are then hidden and cost only an atomic add.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Hands out bars that share one stderr area (the two files are read at the same time).
#[derive(Debug, Clone)]
pub(crate) struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars on stderr, or hidden ones when `quiet` or stderr is not a terminal.
    pub(crate) fn new(quiet: bool) -> Self {
        let draw = !quiet && std::io::stderr().is_terminal();
        Self { multi: draw.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())) }
    }

    /// Hidden bars only.
    #[cfg(test)]
    pub(crate) fn hidden() -> Self {
        Self { multi: None }
    }

    /// A bar over `len` bytes of input.
    pub(crate) fn bytes(&self, len: u64, message: String) -> ProgressBar {
        self.add(len, message, "{msg:>24} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({eta})")
    }

    /// A bar over `len` items.
    pub(crate) fn items(&self, len: u64, message: String) -> ProgressBar {
        self.add(len, message, "{msg:>24} [{bar:30}] {human_pos}/{human_len} ({eta})")
    }

    fn add(&self, len: u64, message: String, template: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
        multi.add(ProgressBar::new(len).with_style(style.progress_chars("=> ")).with_message(message))
    }
}
