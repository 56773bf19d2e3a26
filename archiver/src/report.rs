//! `archiver report`: reads the archived episodes back from Cassandra and draws a PNG with the
//! return per episode and the reward rate per day.
//!
//! Invariant: the reward rate per day is computed by the same CQL as the documented cqlsh query
//! (`queries.cql`, `reward_rate`), so the chart and cqlsh never disagree. The text is drawn with
//! the font compiled into the binary, so no system font or library is needed.

use std::path::Path;

use futures::TryStreamExt;
use plotters::prelude::*;
use scylla::{
    client::session::Session,
    value::{CqlDate, CqlTimestamp},
};
use serde::Serialize;

use crate::dates::{days_of, format_day};

/// DejaVu Sans (license in `assets/DejaVuSans.LICENSE`).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Moving-average window of the return chart.
const WINDOW: usize = 20;

/// Report failures.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Cassandra did not answer a query.
    #[error("cannot read {what} from cassandra: {message}")]
    Read {
        /// What was read.
        what: String,
        /// The error.
        message: String,
    },
    /// Nothing to plot.
    #[error("no finished episodes in {0}.episodes_by_user; archive a run first (`archiver run-once`)")]
    Empty(String),
    /// Drawing or writing the PNG failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// Output file.
        path: String,
        /// The error.
        message: String,
    },
}

/// One finished episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpisodePoint {
    /// Episode id.
    pub episode_id: String,
    /// Start, Unix milliseconds.
    pub started_at_ms: i64,
    /// Actions answered.
    pub steps: i32,
    /// Sum of rewards.
    pub episode_return: f64,
}

/// The reward rate of one day.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayPoint {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Rewards per answered step.
    pub reward_rate: f64,
    /// Answered steps.
    pub steps: i64,
}

/// What the report plots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportData {
    /// Finished episodes, by start time.
    pub episodes: Vec<EpisodePoint>,
    /// Days, in order.
    pub days: Vec<DayPoint>,
}

fn read_err(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ReportError + '_ {
    move |e| ReportError::Read { what: what.to_string(), message: e.to_string() }
}

/// Reads the finished episodes and the reward rate of every archived day.
pub async fn read(session: &Session, keyspace: &str) -> Result<ReportData, ReportError> {
    type EpisodeRow = (String, Option<CqlTimestamp>, Option<i32>, Option<f64>);
    let e = read_err("episodes_by_user");
    let cql = format!("SELECT episode_id, started_at, steps, episode_return FROM {keyspace}.episodes_by_user");
    let mut episodes: Vec<EpisodePoint> = session
        .query_iter(cql, &[])
        .await
        .map_err(|x| e(&x))?
        .rows_stream::<EpisodeRow>()
        .map_err(|x| e(&x))?
        .try_filter_map(|(episode_id, started, steps, ret)| async move {
            Ok(match (started, steps, ret) {
                (Some(s), Some(steps), Some(r)) => {
                    Some(EpisodePoint { episode_id, started_at_ms: s.0, steps, episode_return: r })
                }
                _ => None,
            })
        })
        .try_collect()
        .await
        .map_err(|x| e(&x))?;
    if episodes.is_empty() {
        return Err(ReportError::Empty(keyspace.to_string()));
    }
    episodes.sort_by(|a, b| (a.started_at_ms, &a.episode_id).cmp(&(b.started_at_ms, &b.episode_id)));

    let d = read_err("states_by_day");
    let mut day_numbers: Vec<i64> = session
        .query_iter(format!("SELECT DISTINCT day FROM {keyspace}.states_by_day"), &[])
        .await
        .map_err(|x| d(&x))?
        .rows_stream::<(CqlDate,)>()
        .map_err(|x| d(&x))?
        .map_ok(|(day,)| days_of(day))
        .try_collect()
        .await
        .map_err(|x| d(&x))?;
    day_numbers.sort_unstable();
    // The `reward_rate` query of queries.cql, one day at a time.
    let per_day = session
        .prepare(format!(
            "SELECT avg(reward), count(*) FROM {keyspace}.states_by_day WHERE day = ? AND step > 0 AND attempt = 0 ALLOW FILTERING"
        ))
        .await
        .map_err(|x| d(&x))?;
    let mut days = Vec::new();
    for n in day_numbers {
        let date = CqlDate(u32::try_from(n + (1_i64 << 31)).unwrap_or(0));
        let rows = session.execute_unpaged(&per_day, (date,)).await.map_err(|x| d(&x))?;
        let rows = rows.into_rows_result().map_err(|x| d(&x))?;
        let (rate, steps) = rows.first_row::<(Option<f64>, i64)>().map_err(|x| d(&x))?;
        if steps > 0 {
            days.push(DayPoint { day: format_day(n), reward_rate: rate.unwrap_or(0.0), steps });
        }
    }
    Ok(ReportData { episodes, days })
}

/// Trailing moving average over `window` points.
pub fn moving_average(values: &[f64], window: usize) -> Vec<f64> {
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

fn register_font() {
    // Registering twice is harmless (the second replaces the first).
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
}

/// Draws `data` into a PNG of `width` x `height` pixels at `path`.
pub fn draw(data: &ReportData, path: &Path, width: u32, height: u32) -> Result<(), ReportError> {
    register_font();
    let err =
        |e: &dyn std::fmt::Display| ReportError::Draw { path: path.display().to_string(), message: e.to_string() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    }
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(height / 2);
    draw_returns(&top, &data.episodes).map_err(|e| err(&e))?;
    draw_days(&bottom, &data.days).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_returns(area: &Area<'_>, episodes: &[EpisodePoint]) -> DrawResult {
    let returns: Vec<f64> = episodes.iter().map(|e| e.episode_return).collect();
    let y_max = returns.iter().copied().fold(1.0_f64, f64::max) * 1.1;
    let n = episodes.len() as f64;
    let mean = returns.iter().sum::<f64>() / n.max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(format!("Return per episode ({} episodes, mean {mean:.2})", episodes.len()), ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..n.max(1.0), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("episode, in order of start")
        .y_desc("return (sum of rewards)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| if y_max > 5.0 { format!("{y:.0}") } else { format!("{y:.1}") })
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    chart
        .draw_series(
            returns.iter().enumerate().map(|(i, r)| Circle::new((i as f64 + 0.5, *r), 3, BLUE.mix(0.45).filled())),
        )?
        .label("episode return")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, BLUE.mix(0.45).filled()));
    let avg = moving_average(&returns, WINDOW);
    chart
        .draw_series(LineSeries::new(avg.iter().enumerate().map(|(i, v)| (i as f64 + 0.5, *v)), RED.stroke_width(3)))?
        .label(format!("moving average over {WINDOW} episodes"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw_days(area: &Area<'_>, days: &[DayPoint]) -> DrawResult {
    let n = days.len();
    let y_max = days.iter().map(|d| d.reward_rate).fold(0.05_f64, f64::max) * 1.25;
    let labels: Vec<String> = days.iter().map(|d| d.day.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption("Reward rate per day (rewards per answered step)", ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(-0.5..(n.max(1) as f64 - 0.5), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_labels(n.clamp(1, 12))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("day (UTC)")
        .y_desc("reward rate")
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 14))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let points: Vec<(f64, f64)> = days.iter().enumerate().map(|(i, d)| (i as f64, d.reward_rate)).collect();
    chart.draw_series(LineSeries::new(points.clone(), GREEN.stroke_width(3)))?;
    chart.draw_series(points.iter().map(|p| Circle::new(*p, 5, GREEN.filled())))?;
    chart.draw_series(days.iter().enumerate().map(|(i, d)| {
        Text::new(
            format!("{:.3} ({} steps)", d.reward_rate, d.steps),
            (i as f64, d.reward_rate + y_max * 0.04),
            ("sans-serif", 14).into_font().color(&BLACK).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Bottom,
            )),
        )
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_average_warms_up_then_slides() {
        assert_eq!(moving_average(&[1.0, 3.0, 5.0, 7.0], 2), vec![1.0, 2.0, 4.0, 6.0]);
        assert!(moving_average(&[], 3).is_empty());
    }

    #[test]
    fn draws_a_png() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("sub/report.png");
        let episodes = (0..60)
            .map(|i| EpisodePoint {
                episode_id: format!("ep-{i}"),
                started_at_ms: i,
                steps: 20,
                episode_return: f64::from(i32::try_from(i % 7).unwrap_or(0)),
            })
            .collect();
        let days = vec![
            DayPoint { day: "2025-06-01".into(), reward_rate: 0.16, steps: 2601 },
            DayPoint { day: "2025-06-02".into(), reward_rate: 0.2, steps: 1000 },
        ];
        draw(&ReportData { episodes, days }, &path, 800, 600).unwrap_or_else(|e| panic!("{e}"));
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        assert_eq!(&bytes[16..24], &[0, 0, 3, 32, 0, 0, 2, 88], "800 x 600 in the IHDR chunk");
    }
}
