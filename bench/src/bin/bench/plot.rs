//! The two plots, as SVG: latency against state size, and against fd count,
//! both on log-log axes, with the exec floor as a horizontal line.

use std::error::Error;
use std::path::Path;

use mitosis_bench::{Stats, bytes, ms};
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::prelude::*;

use crate::{BLOB_SIZES, FD_COUNTS, Job, Run};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Both axes are logarithmic, with ticks where this module puts them.
type Coord = Cartesian2d<WithKeyPoints<LogCoord<f64>>, WithKeyPoints<LogCoord<f64>>>;

const SIZE: (u32, u32) = (960, 600);
const DONE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const INIT: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const FLOOR: RGBColor = RGBColor(0x44, 0x44, 0x44);
const OTHER: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const SHELLFLIP: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const ZERO: RGBColor = RGBColor(0x94, 0x67, 0xbd);

/// Ticks for a latency axis: 1, 2 and 5 times powers of ten, within range.
fn ms_ticks((lo, hi): (f64, f64)) -> Vec<f64> {
    (-2..5)
        .flat_map(|exp| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(exp)))
        .filter(|&tick| tick >= lo && tick <= hi)
        .collect()
}

/// A millisecond tick's label: `0.5`, `2`, `1000`.
fn ms_label(y: &f64) -> String {
    if *y < 1.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.0}")
    }
}

fn ms_of(stats: Stats, p99: bool) -> f64 {
    let d = if p99 { stats.p99 } else { stats.p50 };
    d.as_secs_f64() * 1e3
}

/// The y range (ms) that holds every value, with room to spare (above, for
/// the legend).
fn y_range(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.1, 10.0);
    }
    (lo / 1.6, hi * 2.5)
}

/// A dashed horizontal line across the whole x range, with a legend entry.
fn hline<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Coord>,
    (x0, x1): (f64, f64),
    y: f64,
    color: RGBColor,
    label: String,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .draw_series(DashedLineSeries::new(
            [(x0, y), (x1, y)],
            8,
            5,
            color.stroke_width(2),
        ))?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

/// A p50 line with round markers, and the p99s as crosses.
fn series<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Coord>,
    points: &[(f64, Stats)],
    color: RGBColor,
    label: &str,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    if points.is_empty() {
        return Ok(());
    }
    let p50: Vec<(f64, f64)> = points.iter().map(|&(x, s)| (x, ms_of(s, false))).collect();
    chart
        .draw_series(LineSeries::new(p50.clone(), color.stroke_width(2)))?
        .label(format!("{label}, p50"))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(p50.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    chart
        .draw_series(
            points
                .iter()
                .map(|&(x, s)| Cross::new((x, ms_of(s, true)), 4, color.stroke_width(1))),
        )?
        .label(format!("{label}, p99"))
        .legend(move |(x, y)| Cross::new((x + 10, y), 4, color.stroke_width(1)));
    Ok(())
}

/// One marked point with a legend entry.
fn point<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Coord>,
    at: (f64, f64),
    color: RGBColor,
    label: String,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .draw_series([TriangleMarker::new(at, 7, color.filled())])?
        .label(label)
        .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, color.filled()));
    Ok(())
}

/// Latency against the size of a `Vec<u8>` state, with the map at the size
/// of its postcard encoding, and the 0 B case as a horizontal line (a log
/// axis has no 0).
pub(crate) fn state(run: &Run, path: &Path) -> Result<()> {
    let sizes = BLOB_SIZES.iter().filter(|&&size| size > 0);
    let done: Vec<(f64, Stats)> = sizes
        .clone()
        .filter_map(|&size| Some((size as f64, run.done(Job::Blob(size))?)))
        .collect();
    let init: Vec<(f64, Stats)> = sizes
        .filter_map(|&size| Some((size as f64, run.init(Job::Blob(size))?)))
        .collect();
    let floor = run.done(Job::Floor);
    let zero = run.done(Job::Blob(0));
    let map = run
        .get(Job::Map)
        .map(|samples| samples.encoded_bytes as f64);
    let (map_done, map_init, postcard) = (run.done(Job::Map), run.init(Job::Map), run.postcard());

    let mut values: Vec<f64> = Vec::new();
    for &(_, s) in done.iter().chain(&init) {
        values.extend([ms_of(s, false), ms_of(s, true)]);
    }
    for s in [floor, zero, map_done, map_init, postcard]
        .into_iter()
        .flatten()
    {
        values.push(ms_of(s, false));
    }
    let (y0, y1) = y_range(values);
    let (x0, x1) = (512.0, 2048.0 * 1024.0 * 1024.0);

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "mitosis: handover latency against state size",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0..x1)
                .log_scale()
                .with_key_points((5..=15).map(|k| 4f64.powi(k)).collect()),
            (y0..y1).log_scale().with_key_points(ms_ticks((y0, y1))),
        )?;
    chart
        .configure_mesh()
        .x_desc("state size (Vec<u8> bytes; the map at its postcard size)")
        .y_desc("latency, ms")
        .x_label_formatter(&|x: &f64| bytes(*x as u64))
        .y_label_formatter(&ms_label)
        .draw()?;

    if let Some(floor) = floor {
        hline(
            &mut chart,
            (x0, x1),
            ms_of(floor, false),
            FLOOR,
            format!("exec floor, p50 ({})", ms(floor.p50)),
        )?;
    }
    if let Some(zero) = zero {
        hline(
            &mut chart,
            (x0, x1),
            ms_of(zero, false),
            ZERO,
            format!("0 B state, split → Done p50 ({})", ms(zero.p50)),
        )?;
    }
    series(&mut chart, &done, DONE, "Vec<u8>: split → Done")?;
    series(&mut chart, &init, INIT, "Vec<u8>: split → init returns")?;
    if let (Some(x), Some(s)) = (map, map_done) {
        let label = format!("1M-entry map: split → Done p50 ({})", ms(s.p50));
        point(&mut chart, (x, ms_of(s, false)), DONE, label)?;
    }
    if let (Some(x), Some(s)) = (map, map_init) {
        let label = format!("1M-entry map: split → init p50 ({})", ms(s.p50));
        point(&mut chart, (x, ms_of(s, false)), INIT, label)?;
    }
    if let (Some(x), Some(s)) = (map, postcard) {
        let label = format!("1M-entry map: postcard encode+decode p50 ({})", ms(s.p50));
        point(&mut chart, (x, ms_of(s, false)), OTHER, label)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Latency against the number of fds in the state, with the 0-fd case as a
/// horizontal line, and the small state and shellflip at 3 fds.
pub(crate) fn fds(run: &Run, path: &Path) -> Result<()> {
    let counts = FD_COUNTS.iter().filter(|&&n| n > 0);
    let done: Vec<(f64, Stats)> = counts
        .clone()
        .filter_map(|&n| Some((n as f64, run.done(Job::Fds(n))?)))
        .collect();
    let init: Vec<(f64, Stats)> = counts
        .filter_map(|&n| Some((n as f64, run.init(Job::Fds(n))?)))
        .collect();
    let floor = run.done(Job::Floor);
    let zero = run.done(Job::Fds(0));
    let (small, shellflip) = (run.done(Job::Small), run.done(Job::Shellflip));

    let mut values: Vec<f64> = Vec::new();
    for &(_, s) in done.iter().chain(&init) {
        values.extend([ms_of(s, false), ms_of(s, true)]);
    }
    for s in [floor, zero, small, shellflip].into_iter().flatten() {
        values.push(ms_of(s, false));
    }
    if let Some(zero) = zero {
        values.push(ms_of(zero, false) + 5.0);
    }
    let (y0, y1) = y_range(values);
    let (x0, x1) = (0.7, 20_000.0);

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "mitosis: handover latency against fd count",
            ("sans-serif", 24),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0..x1)
                .log_scale()
                .with_key_points(vec![1.0, 3.0, 16.0, 256.0, 1024.0, 10_000.0]),
            (y0..y1).log_scale().with_key_points(ms_ticks((y0, y1))),
        )?;
    chart
        .configure_mesh()
        .x_desc("fds in the state (half files, half Unix sockets)")
        .y_desc("latency, ms")
        .x_label_formatter(&|x: &f64| format!("{}", x.round()))
        .y_label_formatter(&ms_label)
        .draw()?;

    if let Some(floor) = floor {
        hline(
            &mut chart,
            (x0, x1),
            ms_of(floor, false),
            FLOOR,
            format!("exec floor, p50 ({})", ms(floor.p50)),
        )?;
    }
    if let Some(zero) = zero {
        hline(
            &mut chart,
            (x0, x1),
            ms_of(zero, false),
            ZERO,
            format!("0 fds, split → Done p50 ({})", ms(zero.p50)),
        )?;
        hline(
            &mut chart,
            (x0, x1),
            ms_of(zero, false) + 5.0,
            OTHER,
            "target for 10,000 fds: the 0-fd p50 + 5 ms".into(),
        )?;
    }
    series(&mut chart, &done, DONE, "split → Done")?;
    series(&mut chart, &init, INIT, "split → init returns")?;
    if let Some(s) = small {
        let label = format!("1 KiB + 3 fds: mitosis split → Done p50 ({})", ms(s.p50));
        point(&mut chart, (3.0, ms_of(s, false)), DONE, label)?;
    }
    if let Some(s) = shellflip {
        let label = format!(
            "1 KiB + 3 fds: shellflip restart → ready p50 ({})",
            ms(s.p50)
        );
        point(&mut chart, (3.0, ms_of(s, false)), SHELLFLIP, label)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
