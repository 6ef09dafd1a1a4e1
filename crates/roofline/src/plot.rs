//! The roofline plot: achieved FLOP/s against arithmetic intensity (FLOPs per byte
//! moved), log-log, with the bandwidth roof (slope = bandwidth) and one compute roof per
//! compute class, and one marker per op or step. Predicted points sit on the roof by
//! construction (they run at the floor); measured points sit below it by the fraction of
//! the floor reached.
//!
//! Written as PNG and SVG. Text uses a font compiled into the binary (Hack, from
//! `epaint_default_fonts`), so plotting needs no system fonts or fontconfig.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::analytic::ComputeClass;
use crate::error::{Result, RooflineError};
use crate::hardware::HardwareProfile;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Valid TrueType bytes shipped by the crate; a failure would surface as a text
        // drawing error, reported as a plot error.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        );
    });
}

fn err(e: impl std::fmt::Display) -> RooflineError {
    RooflineError::Plot(e.to_string())
}

/// One labelled marker.
#[derive(Clone, Debug)]
pub struct PlotPoint {
    pub label: String,
    /// FLOPs per byte.
    pub intensity: f64,
    /// FLOP/s.
    pub flops_per_s: f64,
}

/// A set of markers drawn alike.
#[derive(Clone, Debug)]
pub struct PointSeries {
    pub name: String,
    pub color: usize,
    /// Filled (measured) or hollow (predicted).
    pub filled: bool,
    /// Draw each point's label next to it.
    pub labels: bool,
    pub points: Vec<PlotPoint>,
}

#[derive(Clone, Debug)]
pub struct RooflinePlot {
    pub title: String,
    pub series: Vec<PointSeries>,
}

/// Compute roofs worth drawing: each class once, distinct peaks only.
fn roofs(hw: &HardwareProfile) -> Vec<(ComputeClass, f64)> {
    let mut out: Vec<(ComputeClass, f64)> = Vec::new();
    for c in [ComputeClass::F32, ComputeClass::Half, ComputeClass::Int8] {
        let p = hw.peak(c);
        if !out.iter().any(|(_, q)| (q / p - 1.0).abs() < 1e-6) {
            out.push((c, p));
        }
    }
    out
}

/// "989.4 TFLOP/s", "66.9 GFLOP/s".
fn fmt_rate(x: f64) -> String {
    crate::report::si(x, "FLOP/s")
}

fn draw<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    plot: &RooflinePlot,
    hw: &HardwareProfile,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let pts = || {
        plot.series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| {
                p.intensity > 0.0
                    && p.flops_per_s > 0.0
                    && p.intensity.is_finite()
                    && p.flops_per_s.is_finite()
            })
    };
    let roofs = roofs(hw);
    let bw = hw.bandwidth();
    let max_peak = roofs.iter().map(|r| r.1).fold(0.0, f64::max);
    let max_ridge = max_peak / bw;
    let x_lo = pts().map(|p| p.intensity).fold(max_ridge / 100.0, f64::min) / 3.0;
    let x_hi = pts().map(|p| p.intensity).fold(max_ridge * 10.0, f64::max) * 3.0;
    let y_hi = max_peak * 3.0;
    let y_lo = pts().map(|p| p.flops_per_s).fold(bw * x_lo, f64::min) / 3.0;
    let mut chart = ChartBuilder::on(area)
        .caption(&plot.title, (FONT, 18))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(96)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (y_lo..y_hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (FLOP / byte)")
        .y_desc("achieved FLOP/s")
        .y_label_formatter(&|v| fmt_rate(*v))
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .label_style((FONT, 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;

    // Bandwidth roof up to the highest peak, then one flat roof per class.
    let grey = RGBColor(60, 60, 60);
    chart
        .draw_series(LineSeries::new(
            [(x_lo, bw * x_lo), (max_ridge, max_peak)],
            grey.stroke_width(2),
        ))
        .map_err(err)?
        .label(format!("memory {:.1} GB/s", hw.memory_bandwidth_gbs))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], grey.stroke_width(2)));
    for (c, p) in &roofs {
        let ridge = p / bw;
        let style = grey.mix(0.8).stroke_width(1);
        chart
            .draw_series(LineSeries::new([(ridge, *p), (x_hi, *p)], style))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                format!(
                    "{} peak {} (ridge {:.1} FLOP/B)",
                    c.name(),
                    fmt_rate(*p),
                    ridge
                ),
                (x_hi / 1.15, *p * 1.12),
                TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Right, VPos::Bottom)),
            )))
            .map_err(err)?;
    }

    for s in &plot.series {
        let col = COLORS[s.color % COLORS.len()];
        let style = if s.filled {
            col.filled()
        } else {
            col.stroke_width(2)
        };
        let points: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.intensity > 0.0 && p.flops_per_s > 0.0)
            .map(|p| (p.intensity, p.flops_per_s))
            .collect();
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 5, style)))
            .map_err(err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| Circle::new((x + 9, y), 5, style));
        if s.labels {
            chart
                .draw_series(
                    s.points
                        .iter()
                        .filter(|p| p.intensity > 0.0 && p.flops_per_s > 0.0)
                        .map(|p| {
                            Text::new(
                                p.label.clone(),
                                (p.intensity * 1.12, p.flops_per_s),
                                (FONT, 10)
                                    .into_font()
                                    .color(&col)
                                    .pos(Pos::new(HPos::Left, VPos::Center)),
                            )
                        }),
                )
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 12))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Writes `<stem>.png` and `<stem>.svg`; returns their paths.
pub fn save(stem: &Path, plot: &RooflinePlot, hw: &HardwareProfile) -> Result<Vec<PathBuf>> {
    register_font();
    let size = (1000, 700);
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    {
        let root = BitMapBackend::new(&png, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root, plot, hw)?;
        root.present().map_err(err)?;
    }
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root, plot, hw)?;
        root.present().map_err(err)?;
    }
    Ok(vec![png, svg])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_render_with_and_without_points() {
        let dir = tempfile::tempdir().unwrap();
        let hw = crate::hardware::resolve("h100-sxm", None, || (1.0, String::new())).unwrap();
        let plot = RooflinePlot {
            title: "test".into(),
            series: vec![
                PointSeries {
                    name: "predicted".into(),
                    color: 0,
                    filled: false,
                    labels: true,
                    points: vec![
                        PlotPoint {
                            label: "gate_up".into(),
                            intensity: 1.0,
                            flops_per_s: 3.35e12,
                        },
                        // Zero-FLOP ops (a KV write) cannot sit on log axes: skipped.
                        PlotPoint {
                            label: "kv_write".into(),
                            intensity: 0.0,
                            flops_per_s: 0.0,
                        },
                    ],
                },
                PointSeries {
                    name: "empty".into(),
                    color: 1,
                    filled: true,
                    labels: false,
                    points: vec![],
                },
            ],
        };
        let files = save(&dir.path().join("roof"), &plot, &hw).unwrap();
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        assert!(svg.contains("gate_up") && svg.contains("arithmetic intensity"));
        assert!(!svg.contains("kv_write"));
    }
}
