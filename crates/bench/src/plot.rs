//! Comparison plots, each written as PNG and SVG: throughput versus latency curves, TTFT
//! and TPOT distributions (empirical CDFs), and the load each server sustains within an SLO.
//!
//! Text is drawn with a font compiled into the binary (Hack, from `epaint_default_fonts`),
//! so plotting needs no system fonts or fontconfig.

use crate::error::{BenchError, Result};
use crate::stats::ecdf;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};
use std::sync::Once;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped by the crate; if registration were to
        // fail, text drawing reports an error that we surface as a plot error.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        );
    });
}

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// Index into the colour cycle (the same server keeps its colour across plots).
    pub color: usize,
    pub points: Vec<(f64, f64)>,
}

/// A line chart description.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// A horizontal reference line (an SLO bound) and its caption.
    pub h_line: Option<(f64, String)>,
    /// Draw point markers as well as lines.
    pub markers: bool,
    /// Put the legend bottom-right (CDFs leave that corner empty) instead of top-left.
    pub legend_lower_right: bool,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(e.to_string())
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let lo = lo.min(0.0);
    if hi <= lo {
        return (lo, lo + 1.0);
    }
    (lo, hi + (hi - lo) * 0.05)
}

fn draw_line_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &LineChart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (x0, x1) = range(c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let (y0, y1) = range(
        c.series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(c.h_line.as_ref().map(|h| h.0)),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    for s in &c.series {
        let col = color(s.color);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                col.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
        if c.markers {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, col.filled())))
                .map_err(err)?;
        }
    }
    if let Some((y, caption)) = &c.h_line {
        let black = BLACK.mix(0.6);
        chart
            .draw_series(LineSeries::new([(x0, *y), (x1, *y)], black.stroke_width(1)))
            .map_err(err)?
            .label(caption.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], black));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 12))
        .position(if c.legend_lower_right {
            SeriesLabelPosition::LowerRight
        } else {
            SeriesLabelPosition::UpperLeft
        })
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Writes a set of charts laid out side by side, as PNG and SVG.
pub fn save_charts(dir: &Path, stem: &str, charts: &[LineChart]) -> Result<Vec<PathBuf>> {
    register_font();
    let n = charts.len().max(1) as u32;
    let size = (640 * n, 480);
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        for (area, c) in root.split_evenly((1, n as usize)).iter().zip(charts) {
            draw_line_chart(area, c)?;
        }
        root.present().map_err(err)?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        for (area, c) in root.split_evenly((1, n as usize)).iter().zip(charts) {
            draw_line_chart(area, c)?;
        }
        root.present().map_err(err)?;
    }
    Ok(vec![png, svg])
}

/// A CDF chart of per-request values (milliseconds) for each series.
pub fn cdf_chart(title: &str, x_label: &str, samples: &[(String, usize, Vec<f64>)]) -> LineChart {
    LineChart {
        title: title.to_string(),
        x_label: x_label.to_string(),
        y_label: "fraction of requests".to_string(),
        series: samples
            .iter()
            .filter(|(_, _, v)| !v.is_empty())
            .map(|(name, color, v)| Series {
                name: name.clone(),
                color: *color,
                points: ecdf(v),
            })
            .collect(),
        h_line: None,
        markers: false,
        legend_lower_right: true,
    }
}

fn draw_bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    bars: &[(String, usize, f64)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let (_, y1) = range(bars.iter().map(|b| b.2));
    let y1 = y1 * 1.08; // room for the value captions
                        // A segmented axis over 0..n-1 has n segments, one per bar.
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..n - 1).into_segmented(), 0.0..y1)
        .map_err(err)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(y_label)
        .label_style((FONT, 12))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, c, v))| {
            let mut r = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color(*c).filled(),
            );
            r.set_margin(0, 0, 12, 12);
            r
        }))
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, _, v))| {
            let caption = if *v > 0.0 {
                format!("{v:.2}")
            } else {
                "never".to_string()
            };
            Text::new(
                caption,
                (SegmentValue::CenterOf(i), v + y1 * 0.05),
                TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
            )
        }))
        .map_err(err)?;
    Ok(())
}

/// A bar chart (one bar per server), as PNG and SVG.
pub fn save_bars(
    dir: &Path,
    stem: &str,
    title: &str,
    y_label: &str,
    bars: &[(String, usize, f64)],
) -> Result<Vec<PathBuf>> {
    register_font();
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = BitMapBackend::new(&png, (640, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw_bars(&root, title, y_label, bars)?;
        root.present().map_err(err)?;
    }
    {
        let root = SVGBackend::new(&svg, (640, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw_bars(&root, title, y_label, bars)?;
        root.present().map_err(err)?;
    }
    Ok(vec![png, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_ok(p: &Path) {
        let b = std::fs::read(p).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n");
    }

    #[test]
    fn degenerate_inputs_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        // One bar, zero height.
        let f = save_bars(dir.path(), "one", "t", "y", &[("a".into(), 0, 0.0)]).unwrap();
        png_ok(&f[0]);
        // No bars at all.
        let f = save_bars(dir.path(), "none", "t", "y", &[]).unwrap();
        png_ok(&f[0]);
        // A single point, an empty series, a constant CDF, no series.
        let chart = LineChart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![
                Series {
                    name: "p".into(),
                    color: 0,
                    points: vec![(3.0, 3.0)],
                },
                Series {
                    name: "e".into(),
                    color: 1,
                    points: vec![],
                },
            ],
            h_line: Some((5.0, "slo".into())),
            markers: true,
            legend_lower_right: false,
        };
        let cdf = cdf_chart("c", "ms", &[("k".into(), 2, vec![4.0, 4.0, 4.0])]);
        let empty = cdf_chart("c", "ms", &[]);
        let f = save_charts(dir.path(), "lines", &[chart, cdf, empty]).unwrap();
        png_ok(&f[0]);
        let svg = std::fs::read_to_string(&f[1]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("slo"));
    }

    #[test]
    fn unwritable_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir");
        let e = save_bars(&missing, "x", "t", "y", &[("a".into(), 0, 1.0)]).unwrap_err();
        assert!(e.to_string().starts_with("plot: "), "{e}");
    }
}
