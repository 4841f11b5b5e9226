//! `--plot FILE.png`: latency percentiles (p50, p90, p99) against throughput across a sweep, the
//! curve that shows where a server stops scaling.

use super::{BenchError, PointResult};
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Fonts tried for labels, in order, after `MODELPOD_PLOT_FONT`.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers a TrueType font for plot labels once per process.
fn ensure_font() -> Result<(), BenchError> {
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("MODELPOD_PLOT_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_CANDIDATES.iter().map(PathBuf::from))
            .collect();
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            "no TrueType font for plot labels: install fonts-dejavu-core or set MODELPOD_PLOT_FONT".to_string()
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process.
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(BenchError::Setup)
}

/// Reads one latency percentile (µs) of a point.
type Percentile = fn(&PointResult) -> u64;

pub fn latency_vs_throughput(
    path: &Path,
    title: &str,
    results: &[PointResult],
) -> Result<(), BenchError> {
    ensure_font()?;
    let fail =
        |e: &dyn std::fmt::Display| BenchError::Setup(format!("plot {}: {e}", path.display()));
    let mut points: Vec<&PointResult> = results.iter().filter(|r| r.succeeded > 0).collect();
    if points.is_empty() {
        return Err(BenchError::Setup(
            "nothing to plot: no point had a successful request".into(),
        ));
    }
    points.sort_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s));
    let max_x = points.iter().map(|r| r.requests_per_s).fold(0.0, f64::max) * 1.1;
    let max_y = points
        .iter()
        .map(|r| r.latency.p99_us as f64 / 1000.0)
        .fold(0.0, f64::max)
        * 1.1;
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..max_x.max(1.0), 0.0..max_y.max(0.001))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("throughput (requests/s)")
        .y_desc("latency (ms)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(&e))?;
    let series: [(&str, Percentile, RGBColor); 3] = [
        ("p50", |r| r.latency.p50_us, BLUE),
        ("p90", |r| r.latency.p90_us, GREEN),
        ("p99", |r| r.latency.p99_us, RED),
    ];
    for (name, value, color) in series {
        let data: Vec<(f64, f64)> = points
            .iter()
            .map(|r| (r.requests_per_s, value(r) as f64 / 1000.0))
            .collect();
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(data.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
