//! PNG charts: return per episode during training (moving average), one line per policy, in the
//! manner of the reference paper's Fig 5; and click-through rate per agent, bars with 95%
//! interval whiskers, in the manner of its Fig 4.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

/// Registers the embedded font (`ope::plot`'s: the DejaVu Sans the archiver's report also
/// embeds); false if it could not be parsed (the chart is drawn without text).
fn register_font() -> bool {
    ope::plot::register_font().is_ok()
}

/// Trailing moving average over `window` values.
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
    let window = window.max(1);
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= window {
            sum -= values[i - window];
        }
        out.push(sum / (i + 1).min(window) as f64);
    }
    out
}

/// Draws one moving-average line per `(name, returns)` series into `path` (PNG).
pub fn training_returns(path: &Path, series: &[(String, Vec<f64>)], window: usize) -> anyhow::Result<()> {
    let has_text = register_font();
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let smoothed: Vec<(String, Vec<f64>)> =
        series.iter().map(|(n, r)| (n.clone(), moving_average(r, window))).collect();
    let x_max = smoothed.iter().map(|(_, v)| v.len()).max().unwrap_or(1).max(1);
    let y_max = smoothed.iter().flat_map(|(_, v)| v.iter().copied()).fold(0.0_f64, f64::max).max(1e-3) * 1.1;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).x_label_area_size(45).y_label_area_size(60);
    if has_text {
        builder
            .caption(format!("Return per episode during training (moving average over {window})"), ("sans-serif", 22));
    }
    let mut chart = builder.build_cartesian_2d(0..x_max, 0.0..y_max).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut mesh = chart.configure_mesh();
    if has_text {
        mesh.x_desc("training episode").y_desc("return (rewards per episode)").label_style(("sans-serif", 15));
    } else {
        mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, (name, values)) in smoothed.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line = chart
            .draw_series(LineSeries::new(values.iter().enumerate().map(|(x, y)| (x, *y)), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if has_text {
            line.label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
    }
    if has_text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 16))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

/// Draws one bar per `(name, value, lo, hi)` with a whisker from `lo` to `hi` into `path`
/// (PNG), the value printed above each bar.
pub fn ctr_bars(path: &Path, title: &str, bars: &[(String, f64, f64, f64)]) -> anyhow::Result<()> {
    let has_text = register_font();
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let n = bars.len().max(1) as f64;
    let y_max = bars.iter().map(|b| b.3.max(b.1)).fold(0.0_f64, f64::max).max(1e-3) * 1.15;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).x_label_area_size(45).y_label_area_size(70);
    if has_text {
        builder.caption(title, ("sans-serif", 20));
    }
    let mut chart = builder.build_cartesian_2d(-0.5..n - 0.5, 0.0..y_max).map_err(|e| anyhow::anyhow!("{e}"))?;
    let x_label = ope::plot::index_labels(bars.iter().map(|b| b.0.clone()).collect());
    let y_label = |y: &f64| format!("{y:.3}");
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh().x_labels(bars.len().max(1) * 2 + 1);
    if has_text {
        mesh.x_desc("agent")
            .y_desc("click-through rate")
            .label_style(("sans-serif", 15))
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    for (i, (_, value, lo, hi)) in bars.iter().enumerate() {
        let x = i as f64;
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.35, 0.0), (x + 0.35, *value)],
                color.mix(0.8).filled(),
            )))
            .map_err(err)?;
        let whisker =
            [vec![(x, *lo), (x, *hi)], vec![(x - 0.08, *lo), (x + 0.08, *lo)], vec![(x - 0.08, *hi), (x + 0.08, *hi)]];
        chart.draw_series(whisker.into_iter().map(|p| PathElement::new(p, BLACK.stroke_width(2)))).map_err(err)?;
        if has_text {
            let label = Text::new(format!("{value:.4}"), (x + 0.1, *hi + y_max * 0.03), ("sans-serif", 15));
            chart.draw_series(std::iter::once(label)).map_err(err)?;
        }
    }
    root.present().with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_warms_up_then_slides() {
        assert_eq!(moving_average(&[2.0, 4.0, 6.0, 8.0], 2), vec![2.0, 3.0, 5.0, 7.0]);
    }

    #[test]
    fn ctr_chart_is_a_png() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("ctr.png");
        let bars =
            vec![("random".to_string(), 0.0127, 0.0123, 0.0130), ("organic-count".to_string(), 0.02, 0.019, 0.021)];
        ctr_bars(&path, "CTR", &bars).unwrap_or_else(|e| panic!("{e:#}"));
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert_eq!(&bytes[..4], b"\x89PNG");
    }
}

/// One chart of [`panels`]: a title, the unit of its y axis, and labelled (x, y) lines.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the chart.
    pub title: String,
    /// What the y axis counts.
    pub unit: String,
    /// (legend, points) per line.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Draws `panels` in a grid of two columns into `path` (PNG); a panel without data says so.
pub fn panels(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let has_text = register_font();
    let rows = panels.len().div_ceil(2).max(1);
    let root = BitMapBackend::new(path, (1400, 420 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let root =
        if has_text { root.titled(title, ("sans-serif", 24)).map_err(|e| anyhow::anyhow!("{e}"))? } else { root };
    // One time axis for every panel.
    let x_max =
        panels.iter().flat_map(|p| p.series.iter().flat_map(|(_, s)| s.iter())).fold(1.0_f64, |x, p| x.max(p.0));
    for (area, panel) in root.split_evenly((rows, 2)).iter().zip(panels) {
        let y_max = panel.series.iter().flat_map(|(_, p)| p.iter()).fold(0.0_f64, |y, p| y.max(p.1));
        let mut builder = ChartBuilder::on(area);
        builder.margin(15).x_label_area_size(35).y_label_area_size(70);
        if has_text {
            let caption =
                if panel.series.is_empty() { format!("{} (no data)", panel.title) } else { panel.title.clone() };
            builder.caption(caption, ("sans-serif", 18));
        }
        let mut chart =
            builder.build_cartesian_2d(0.0..x_max, 0.0..(y_max * 1.1).max(1e-3)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut mesh = chart.configure_mesh();
        if has_text {
            mesh.x_desc("seconds").y_desc(panel.unit.as_str()).label_style(("sans-serif", 13));
        } else {
            mesh.disable_x_mesh().disable_y_mesh().x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, (name, values)) in panel.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let line = chart
                .draw_series(LineSeries::new(values.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if has_text {
                line.label(name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
            }
        }
        if has_text && !panel.series.is_empty() {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    root.present().with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
