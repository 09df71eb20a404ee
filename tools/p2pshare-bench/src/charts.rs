//! The charts, drawn with plotters as SVG and PNG.
//!
//! Text in the PNGs is rasterised from DejaVu Sans compiled into the binary (the `dejavu`
//! crate, through plotters' `ab_glyph` renderer), so they render the same on a machine with
//! no fonts installed; no fontconfig or freetype is involved.

use super::stats::OpSummary;
use super::workload::OpKind;
use plotters::coord::combinators::BindKeyPoints;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::io;
use std::path::Path;
use std::sync::Once;

/// What one closed-loop run contributes to the charts.
pub struct ChartRun {
    /// Simulated peers.
    pub peers: usize,
    /// Figures per op kind, in [`OpKind::ALL`] order.
    pub ops: [OpSummary; 3],
    /// Percentile curves (quantile, µs) per op kind.
    pub curves: [Vec<(f64, f64)>; 3],
    /// The run's floor p50 (the pings interleaved with its ops), µs.
    pub floor_p50_us: f64,
    /// The run's indexd `Ping` p50 (timed beside the floor), µs; 0 when not timed.
    pub ping_p50_us: f64,
}

/// Size of the means chart, pixels.
const MEANS_SIZE: (u32, u32) = (960, 640);
/// Size of the percentile chart (three panels side by side), pixels.
const PERCENTILES_SIZE: (u32, u32) = (1800, 620);

/// One colour per op kind, in [`OpKind::ALL`] order.
const OP_COLORS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];
/// One colour per run (peer count), cycling.
const RUN_COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn register_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // The font bytes are valid TrueType compiled in from the crate: this cannot fail
        // unless the crate is broken, and then text would be missing, not wrong.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

fn err<E: std::fmt::Debug>(e: E) -> io::Error {
    io::Error::other(format!("drawing a chart: {e:?}"))
}

/// Values for the ticks of a log axis from `lo` to `hi`: 1-2-5 steps when they give at
/// least four ticks, finer steps on a narrow range, powers of ten on a very wide one.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    const STEPS: [&[f64]; 3] = [
        &[1.0, 2.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        &[
            1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0,
        ],
    ];
    if !(lo > 0.0 && hi > lo) {
        return Vec::new();
    }
    let ticks = |mantissas: &[f64]| -> Vec<f64> {
        let mut out = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi {
            for m in mantissas {
                // Rounded to 6 significant digits, so labels show 0.2, not 0.20000000000000004.
                let v = format!("{:.6e}", m * decade)
                    .parse::<f64>()
                    .unwrap_or(m * decade);
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    };
    let coarse = ticks(STEPS[0]);
    if coarse.len() > 12 {
        return ticks(&[1.0]);
    }
    STEPS
        .iter()
        .map(|m| ticks(m))
        .find(|t| t.len() >= 4)
        .unwrap_or_else(|| ticks(STEPS[2]))
}

/// The largest 1-2-5 value (…, 20, 50, 100, …) at or below `v > 0`, so an axis can start
/// on a labelled tick.
pub fn tick_at_or_below(v: f64) -> f64 {
    let decade = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|t| *t <= v)
        .unwrap_or(decade)
}

/// The label of a latency tick: whole µs from 10 up, one decimal below.
pub fn latency_label(v: f64) -> String {
    if v >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Chart (1), the original report's figure: mean time per operation against concurrent
/// peers, p99 dashed, each run's floor (p50) as a grey line and its indexd `Ping` (p50) as a
/// black dotted one. Writes `means.svg` and
/// `means.png`.
pub fn means_chart(dir: &Path, runs: &[ChartRun]) -> io::Result<()> {
    register_fonts();
    let svg = dir.join("means.svg");
    {
        let root = SVGBackend::new(&svg, MEANS_SIZE).into_drawing_area();
        draw_means(&root, runs)?;
        root.present().map_err(err)?;
    }
    let png = dir.join("means.png");
    let root = BitMapBackend::new(&png, MEANS_SIZE).into_drawing_area();
    draw_means(&root, runs)?;
    root.present().map_err(err)
}

fn draw_means<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[ChartRun],
) -> io::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let min_p = runs.iter().map(|r| r.peers).min().unwrap_or(1) as f64;
    let max_p = runs.iter().map(|r| r.peers).max().unwrap_or(1) as f64;
    // Log scale: p99 under load can be 100× the mean, and the floor should stay visible.
    let values = || {
        runs.iter()
            .flat_map(|r| {
                r.ops
                    .iter()
                    .flat_map(|o| [o.mean_us, o.p99_us])
                    .chain([r.floor_p50_us, r.ping_p50_us])
            })
            .filter(|v| *v > 0.0)
    };
    let y_min = tick_at_or_below(values().fold(f64::MAX, f64::min).min(1e9) * 0.8);
    let data_max = values().fold(1.0, f64::max) * 1.2;
    // Headroom above the data (a third of the log range) for the legend.
    let y_max = (y_min.ln() + (data_max.ln() - y_min.ln()) / 0.66).exp();
    let (y_lo, y_hi) = (y_min.max(0.1), y_max.max(1.0));
    let mut chart = ChartBuilder::on(root)
        .caption(
            "Mean time per operation vs concurrent peers (dashed: p99)",
            ("sans-serif", 26).into_font(),
        )
        .margin(20)
        .x_label_area_size(60)
        .y_label_area_size(90)
        .build_cartesian_2d(
            (min_p - 0.5)..(max_p + 0.5),
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(log_ticks(y_lo, y_hi)),
        )
        .map_err(err)?;
    let int_label = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 && *x >= 1.0 {
            format!("{}", x.round() as i64)
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc("concurrent peers")
        .y_desc("time per operation (µs, log scale)")
        .x_labels(((max_p - min_p) as usize + 2) * 2)
        .x_label_formatter(&int_label)
        .y_label_formatter(&|y| latency_label(*y))
        .axis_desc_style(("sans-serif", 20))
        .label_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(err)?;
    for kind in OpKind::ALL {
        let color = OP_COLORS[kind.index()];
        let means: Vec<(f64, f64)> = runs
            .iter()
            .map(|r| (r.peers as f64, r.ops[kind.index()].mean_us))
            .collect();
        let p99s: Vec<(f64, f64)> = runs
            .iter()
            .map(|r| (r.peers as f64, r.ops[kind.index()].p99_us))
            .collect();
        chart
            .draw_series(LineSeries::new(means.clone(), color.stroke_width(3)))
            .map_err(err)?
            .label(format!("{} mean", kind.name()))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(means.iter().map(|&p| Circle::new(p, 5, color.filled())))
            .map_err(err)?;
        chart
            .draw_series(DashedLineSeries::new(
                p99s.clone(),
                8,
                6,
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{} p99", kind.name()))
            .legend(move |(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 24, y)], 6, 4, color.stroke_width(2))
            });
        chart
            .draw_series(
                p99s.iter()
                    .map(|&p| TriangleMarker::new(p, 6, color.filled())),
            )
            .map_err(err)?;
    }
    let grey = RGBColor(120, 120, 120);
    let floors: Vec<(f64, f64)> = runs
        .iter()
        .map(|r| (r.peers as f64, r.floor_p50_us))
        .collect();
    chart
        .draw_series(DashedLineSeries::new(
            floors.clone(),
            4,
            4,
            grey.stroke_width(2),
        ))
        .map_err(err)?
        .label("floor p50 (loopback round trip after each op)")
        .legend(move |(x, y)| {
            DashedPathElement::new(vec![(x, y), (x + 24, y)], 4, 4, grey.stroke_width(2))
        });
    chart
        .draw_series(floors.iter().map(|&p| Circle::new(p, 4, grey.filled())))
        .map_err(err)?;
    let pings: Vec<(f64, f64)> = runs
        .iter()
        .filter(|r| r.ping_p50_us > 0.0)
        .map(|r| (r.peers as f64, r.ping_p50_us))
        .collect();
    if !pings.is_empty() {
        chart
            .draw_series(DashedLineSeries::new(
                pings.clone(),
                2,
                4,
                BLACK.stroke_width(2),
            ))
            .map_err(err)?
            .label("indexd Ping p50 (after each op's floor ping)")
            .legend(move |(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 24, y)], 2, 4, BLACK.stroke_width(2))
            });
        chart
            .draw_series(
                pings
                    .iter()
                    .map(|&p| Cross::new(p, 4, BLACK.stroke_width(2))),
            )
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.5))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The label of a log-percentile position: 0 → "0%", 1 → "90%", 2 → "99%", 3 → "99.9%".
pub fn percentile_label(x: f64) -> String {
    if (x - x.round()).abs() > 1e-9 || x < 0.0 {
        return String::new();
    }
    let k = x.round() as i32;
    match k {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        _ => format!("99.{}%", "9".repeat(k as usize - 2)),
    }
}

/// The log-percentile position of quantile `q`: `log10(1 / (1 - q))`, with q = 1 put at
/// `end` (it has no finite position).
pub fn percentile_position(q: f64, end: f64) -> f64 {
    if q >= 1.0 {
        end
    } else {
        (1.0 / (1.0 - q)).log10().min(end)
    }
}

/// Chart (2): the latency percentile distribution of each op, one panel per op, one line per
/// peer count, percentile axis logarithmic as in HdrHistogram plots. Writes
/// `percentiles.svg` and `percentiles.png`.
pub fn percentiles_chart(dir: &Path, runs: &[ChartRun]) -> io::Result<()> {
    register_fonts();
    let svg = dir.join("percentiles.svg");
    {
        let root = SVGBackend::new(&svg, PERCENTILES_SIZE).into_drawing_area();
        draw_percentiles(&root, runs)?;
        root.present().map_err(err)?;
    }
    let png = dir.join("percentiles.png");
    let root = BitMapBackend::new(&png, PERCENTILES_SIZE).into_drawing_area();
    draw_percentiles(&root, runs)?;
    root.present().map_err(err)
}

fn draw_percentiles<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    runs: &[ChartRun],
) -> io::Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let root = root
        .margin(12, 0, 0, 0)
        .titled(
            "Latency by percentile (closed loop, one line per number of concurrent peers)",
            ("sans-serif", 26).into_font(),
        )
        .map_err(err)?;
    let panels = root.split_evenly((1, 3));
    // One percentile axis for all panels, long enough for the op with the most samples.
    let max_count = runs
        .iter()
        .flat_map(|r| r.ops.iter().map(|o| o.count))
        .max()
        .unwrap_or(1)
        .max(1);
    let end = (max_count as f64).log10().ceil().clamp(3.0, 6.0);
    for (kind, panel) in OpKind::ALL.into_iter().zip(panels.iter()) {
        let k = kind.index();
        let (mut lo, mut hi) = (f64::MAX, 0.0f64);
        for r in runs {
            for &(_, v) in &r.curves[k] {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        if hi <= 0.0 {
            lo = 1.0;
            hi = 10.0;
        }
        let lo = (lo * 0.8).max(0.1);
        let hi = hi * 1.5;
        let mut chart = ChartBuilder::on(panel)
            .caption(kind.name(), ("sans-serif", 22).into_font())
            .margin(15)
            .margin_right(35)
            .x_label_area_size(55)
            .y_label_area_size(80)
            .build_cartesian_2d(
                0.0..end,
                (lo..hi).log_scale().with_key_points(log_ticks(lo, hi)),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("percentile (log scale)")
            .y_desc("latency (µs, log scale)")
            .x_labels(end as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| latency_label(*y))
            .axis_desc_style(("sans-serif", 18))
            .label_style(("sans-serif", 15))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(err)?;
        for (i, r) in runs.iter().enumerate() {
            let color = RUN_COLORS[i % RUN_COLORS.len()];
            let pts: Vec<(f64, f64)> = r.curves[k]
                .iter()
                .map(|&(q, v)| (percentile_position(q, end), v))
                .collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(err)?
                .label(if r.peers == 1 {
                    "1 peer".to_string()
                } else {
                    format!("{} peers", r.peers)
                })
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.5))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
        assert_eq!(percentile_label(1.5), "");
        assert!((percentile_position(0.99, 4.0) - 2.0).abs() < 1e-9);
        assert_eq!(percentile_position(0.0, 4.0), 0.0);
        assert_eq!(percentile_position(1.0, 4.0), 4.0);
    }

    #[test]
    fn log_axis_ticks_can_be_read() {
        // Two decades: 1-2-5.
        assert_eq!(
            log_ticks(30.0, 3000.0),
            [50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]
        );
        // A narrow range still gets four or more ticks.
        let t = log_ticks(40.0, 120.0);
        assert!(t.len() >= 4, "{t:?}");
        assert!(t.iter().all(|v| (40.0..=120.0).contains(v)));
        // A very wide range: powers of ten only.
        assert_eq!(log_ticks(1.0, 1e6).len(), 7);
        assert_eq!(log_ticks(0.1, 0.6)[..3], [0.1, 0.15, 0.2]);
        assert!(log_ticks(5.0, 5.0).is_empty());
        assert_eq!(tick_at_or_below(37.0), 20.0);
        assert_eq!(tick_at_or_below(50.0), 50.0);
        assert_eq!(tick_at_or_below(0.3), 0.2);
        assert_eq!(latency_label(200.0), "200");
        assert_eq!(latency_label(2.5), "2.5");
        assert_eq!(latency_label(0.2), "0.2");
    }
}
