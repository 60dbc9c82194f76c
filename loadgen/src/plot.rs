//! Latency-by-percentile plot, as HdrHistogram's plotter draws it: x is 1/(1-p) on a log
//! scale (ticks at 0%, 90%, 99%, 99.9%, ...), y is latency in microseconds; and beside it
//! latency over time (p50, p99 and max per second of the run).
//!
//! `.svg` carries text labels; `.png` is drawn without a font engine (no labels), to keep the
//! dependency tree small, so prefer `.svg`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Points (log10(1/(1-p)), latency us) from the percentile iteration, p < 1.
pub fn points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut pts: Vec<(f64, f64)> = h
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            let q = v.quantile_iterated_to();
            (
                (1.0 / (1.0 - q)).log10(),
                h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
            )
        })
        .collect();
    // The maximum, placed one decade past the last percentile (as the Java plotter does).
    let last_x = pts.last().map_or(0.0, |p| p.0);
    pts.push((last_x.ceil().max(1.0), h.max() as f64 / 1000.0));
    pts
}

fn pct_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let digits = if x <= 2.0 {
        0
    } else {
        (x - 2.0).ceil() as usize
    };
    format!("{p:.digits$}%")
}

pub fn write(h: &Histogram<u64>, title: &str, path: &Path) -> Result<()> {
    let size = (1000, 600);
    match ext(path).as_str() {
        "svg" => draw(SVGBackend::new(path, size).into_drawing_area(), h, title),
        "png" => draw(BitMapBackend::new(path, size).into_drawing_area(), h, title),
        _ => bail!("--plot: unknown file type {:?}, use .svg or .png", path),
    }
    .with_context(|| format!("writing plot {}", path.display()))
}

/// Whether `path` names a file type the plots can be written as, known before the run (it
/// was found out at its end, with the results lost).
pub fn check_type(path: &Path) -> Result<()> {
    match ext(path).as_str() {
        "svg" | "png" => Ok(()),
        _ => bail!("--plot: unknown file type {:?}, use .svg or .png", path),
    }
}

fn ext(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Where the latency-over-time plot goes beside `path`: `out.svg` → `out-time.svg`.
pub fn timeline_path(path: &Path) -> std::path::PathBuf {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plot");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("svg");
    path.with_file_name(format!("{stem}-time.{ext}"))
}

/// Latency over time: `line` holds (second, p50, p99, max) in microseconds.
pub fn write_timeline(line: &crate::hlog::Timeline, title: &str, path: &Path) -> Result<()> {
    let size = (1000, 600);
    match ext(path).as_str() {
        "svg" => draw_timeline(SVGBackend::new(path, size).into_drawing_area(), line, title),
        "png" => draw_timeline(
            BitMapBackend::new(path, size).into_drawing_area(),
            line,
            title,
        ),
        _ => bail!("--plot: unknown file type {:?}, use .svg or .png", path),
    }
    .with_context(|| format!("writing plot {}", path.display()))
}

fn draw_timeline<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    line: &crate::hlog::Timeline,
    title: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e}");
    let x_max = line.iter().map(|p| p.0 + 1.0).fold(1.0f64, f64::max);
    let y_max = line.iter().map(|p| p.3).fold(1.0f64, f64::max) * 1.1;
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{title}: latency over time"), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency (us)")
        .draw()
        .map_err(err)?;
    for (column, color, label) in [(1, BLUE, "p50"), (2, RED, "p99"), (3, BLACK, "max")] {
        let pick = |p: &(f64, f64, f64, f64)| [p.0, p.1, p.2, p.3][column];
        chart
            .draw_series(LineSeries::new(
                line.iter().map(|p| (p.0, pick(p))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    h: &Histogram<u64>,
    title: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let pts = points(h);
    let x_max = pts.iter().map(|p| p.0).fold(1.0f64, f64::max).ceil();
    let y_max = pts.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| pct_label(*x))
        .x_desc("percentile")
        .y_desc("latency (us)")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(pct_label(0.0), "0%");
        assert_eq!(pct_label(1.0), "90%");
        assert_eq!(pct_label(2.0), "99%");
        assert_eq!(pct_label(3.0), "99.9%");
        assert_eq!(pct_label(5.0), "99.999%");
    }

    #[test]
    fn points_are_monotonic() {
        let mut h = crate::stats::new_hist();
        for i in 1..=1000u64 {
            h.record(i * 1000).unwrap();
        }
        let pts = points(&h);
        assert!(pts.len() > 10);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!((pts.last().unwrap().1 - 1000.0).abs() < 1.0);
    }
}
