//! The chart of an evaluation: each estimator's value with its interval as a point with
//! whiskers, beside the logging policy's observed value, and the truth as a dashed line when
//! it is known.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::{Evaluation, Interval};

/// The font of the chart's text: the DejaVu Sans the archiver's report also embeds (its licence
/// is beside it), so no system font is needed.
const FONT: &[u8] = include_bytes!("../../archiver/assets/DejaVuSans.ttf");

/// Registers the embedded font as `sans-serif` (once); an error if it cannot be parsed.
pub fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    anyhow::ensure!(ok, "the embedded font could not be loaded");
    Ok(())
}

/// Writes `path`: one column per estimator (and `logged` first), `title` above, `truth` as a
/// dashed line.
pub fn estimates_png(path: &Path, title: &str, ev: &Evaluation, truth: Option<f64>) -> anyhow::Result<()> {
    register_font()?;
    let mut cols: Vec<(String, Interval)> = vec![("logged".into(), ev.logged)];
    cols.extend(ev.estimates.iter().map(|e| (e.estimator.name().to_uppercase(), e.interval)));
    let finite = |x: f64| x.is_finite().then_some(x);
    let values: Vec<f64> =
        cols.iter().flat_map(|(_, i)| [i.lo, i.hi, i.value]).chain(truth).filter_map(finite).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.15).max(1e-4);
    let (y0, y1) = if lo.is_finite() { ((lo - pad).max(0.0), hi + pad) } else { (0.0, 1.0) };
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = cols.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .caption(title, ("sans-serif", 20))
        .build_cartesian_2d(-0.5..n - 0.5, y0..y1)
        .map_err(err)?;
    let x_label = index_labels(cols.iter().map(|c| c.0.clone()).collect());
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(cols.len() * 2 + 1)
        .x_desc("estimator (95% bootstrap interval over episodes)")
        .y_desc("value per decision")
        .label_style(("sans-serif", 15))
        .x_label_formatter(&x_label)
        .y_label_formatter(&|y: &f64| format!("{y:.4}"))
        .draw()
        .map_err(err)?;
    if let Some(t) = truth {
        let dashes = (0..40).map(|i| {
            let x = -0.5 + n * f64::from(i) / 40.0;
            PathElement::new(vec![(x, t), (x + n / 80.0, t)], RED.stroke_width(2))
        });
        chart
            .draw_series(dashes)
            .map_err(err)?
            .label(format!("truth {t:.4}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    }
    for (i, (_, iv)) in cols.iter().enumerate() {
        let x = i as f64;
        let color = if i == 0 { BLACK.to_rgba() } else { Palette99::pick(i).to_rgba() };
        if iv.lo.is_finite() && iv.hi.is_finite() {
            let whisker = [
                vec![(x, iv.lo), (x, iv.hi)],
                vec![(x - 0.1, iv.lo), (x + 0.1, iv.lo)],
                vec![(x - 0.1, iv.hi), (x + 0.1, iv.hi)],
            ];
            chart.draw_series(whisker.into_iter().map(|p| PathElement::new(p, color.stroke_width(2)))).map_err(err)?;
        }
        if iv.value.is_finite() {
            chart.draw_series(std::iter::once(Circle::new((x, iv.value), 6, color.filled()))).map_err(err)?;
            let label = Text::new(format!("{:.4}", iv.value), (x + 0.12, iv.value), ("sans-serif", 15));
            chart.draw_series(std::iter::once(label)).map_err(err)?;
        }
    }
    if truth.is_some() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(err)?;
    }
    root.present().with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

/// An x-axis label formatter for columns at 0, 1, 2, ...: `names[i]` at `i`, nothing between.
pub fn index_labels(names: Vec<String>) -> impl Fn(&f64) -> String {
    move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{evaluate, Config, Dist, Row};

    #[test]
    fn the_chart_is_a_png() {
        let rows: Vec<Row> = (0..40)
            .map(|i| Row {
                episode: i / 4,
                action: (i % 2) as u32,
                pscore: 0.5,
                reward: f64::from(i % 3 == 0),
                target: Dist::point(2, 0),
                q_logged: 0.3,
                q_target: 0.3,
            })
            .collect();
        let ev = evaluate(&rows, &Config { bootstrap: 20, ..Config::default() }).unwrap_or_else(|e| panic!("{e:#}"));
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("ope.png");
        estimates_png(&path, "test", &ev, Some(0.3)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(&std::fs::read(&path).unwrap_or_default()[..4], b"\x89PNG");
    }
}
