//! The two plots, as SVG: latency against state size, and against fd count,
//! both on log-log axes, with the exec floor as a horizontal line. Each
//! shows three series: the pause (prepared: `hand_over` → `init` returns),
//! `split` → `Done` and `split` → `init` returns.

use std::error::Error;
use std::path::Path;

use mitosis_bench::{Stats, bytes, ms};
use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::prelude::*;

use crate::{BLOB_SIZES, FD_COUNTS, Job, Run};

/// The large state sits on the same `Vec<u8>` curve as the others; its old
/// side ran in a process of its own, which changes nothing in its timing.
fn blob_jobs(run: &Run) -> impl Iterator<Item = (f64, Job)> {
    BLOB_SIZES
        .iter()
        .filter(|&&size| size > 0)
        .map(|&size| (size as f64, Job::Blob(size)))
        .chain([(run.large_bytes as f64, Job::Large)])
}

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Both axes are logarithmic, with ticks where this module puts them.
type Coord = Cartesian2d<WithKeyPoints<LogCoord<f64>>, WithKeyPoints<LogCoord<f64>>>;

const SIZE: (u32, u32) = (960, 720);
/// The height of the plotting area: `SIZE` less the caption, the margins
/// and the x labels, roughly.
const PLOT_HEIGHT: f64 = 600.0;
/// The height of one legend entry, and the legend box's padding, in pixels.
const LEGEND_ENTRY: f64 = 17.0;
const LEGEND_PADDING: f64 = 20.0;
const DONE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const INIT: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const FLOOR: RGBColor = RGBColor(0x44, 0x44, 0x44);
const PAUSE: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const OTHER: RGBColor = RGBColor(0x8c, 0x56, 0x4b);
const SHELLFLIP: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const ZERO: RGBColor = RGBColor(0x94, 0x67, 0xbd);

/// Ticks for a latency axis: 1, 2 and 5 times powers of ten, within range.
fn ms_ticks((lo, hi): (f64, f64)) -> Vec<f64> {
    (-2..5)
        .flat_map(|exp| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(exp)))
        .filter(|&tick| tick >= lo && tick <= hi)
        .collect()
}

/// A millisecond tick's label: `0.05`, `0.5`, `2`, `1000`.
fn ms_label(y: &f64) -> String {
    if *y < 1.0 {
        // The ticks are 1, 2 and 5 times powers of ten, computed in
        // floating point: round, then drop the zeros a wider format adds.
        let text = format!("{y:.3}");
        text.trim_end_matches('0').to_string()
    } else {
        format!("{y:.0}")
    }
}

fn ms_of(stats: Stats, p99: bool) -> f64 {
    let d = if p99 { stats.p99 } else { stats.p50 };
    d.as_secs_f64() * 1e3
}

/// The y range (ms) that holds every value, with room to spare; above the
/// values, enough room for a legend of `entries` lines in the upper left,
/// so that it hides no point.
fn y_range(values: impl IntoIterator<Item = f64>, entries: usize) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.1, 10.0);
    }
    let (lo, hi) = (lo / 1.6, hi * 1.6);
    // On a log axis the legend's share of the height is a share of the
    // decades: the values get the rest.
    let legend = ((entries as f64 * LEGEND_ENTRY + LEGEND_PADDING) / PLOT_HEIGHT).min(0.6);
    let decades = (hi / lo).log10();
    (lo, hi * 10f64.powf(decades * legend / (1.0 - legend)))
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

/// One plot: its axes, its three series (the pause, split → Done and split
/// → init returns, against x), and the lines and points drawn over them.
/// The y range follows from what is drawn.
struct Plot {
    caption: &'static str,
    x_desc: &'static str,
    x_range: (f64, f64),
    x_ticks: Vec<f64>,
    x_label: fn(&f64) -> String,
    /// Prefixed to the series' legend entries.
    series_label: &'static str,
    pause: Vec<(f64, Stats)>,
    done: Vec<(f64, Stats)>,
    init: Vec<(f64, Stats)>,
    /// Dashed horizontal lines: y in ms, colour, legend entry.
    lines: Vec<(f64, RGBColor, String)>,
    /// Marked points: (x, y in ms), colour, legend entry.
    points: Vec<((f64, f64), RGBColor, String)>,
}

impl Plot {
    /// The three series for these jobs, at these x values: the pause,
    /// split → Done, split → init.
    fn series(run: &Run, jobs: impl Iterator<Item = (f64, Job)>) -> [Vec<(f64, Stats)>; 3] {
        let mut series = [Vec::new(), Vec::new(), Vec::new()];
        for (x, job) in jobs {
            for (points, stats) in
                series
                    .iter_mut()
                    .zip([run.pause(job), run.done(job), run.init(job)])
            {
                points.extend(stats.map(|s| (x, s)));
            }
        }
        series
    }

    /// The exec floor's line, and the pause of the case with nothing in it
    /// (a log axis has no 0) as another.
    fn floor_and_zero(run: &Run, zero: Job, zero_label: &str) -> Vec<(f64, RGBColor, String)> {
        let floor = run.done(Job::Floor).map(|floor| {
            let label = format!("exec floor, p50 ({})", ms(floor.p50));
            (ms_of(floor, false), FLOOR, label)
        });
        let zero = run.pause(zero).map(|zero| {
            let label = format!("{zero_label}, pause p50 ({})", ms(zero.p50));
            (ms_of(zero, false), ZERO, label)
        });
        floor.into_iter().chain(zero).collect()
    }

    /// Two per series drawn (p50 and p99), one per line and point.
    fn legend_entries(&self) -> usize {
        let series = [&self.pause, &self.done, &self.init]
            .iter()
            .filter(|points| !points.is_empty())
            .count();
        2 * series + self.lines.len() + self.points.len()
    }

    fn draw(&self, path: &Path) -> Result<()> {
        let values = self
            .pause
            .iter()
            .chain(&self.done)
            .chain(&self.init)
            .flat_map(|&(_, s)| [ms_of(s, false), ms_of(s, true)]);
        let (y0, y1) = y_range(
            values
                .chain(self.lines.iter().map(|&(y, _, _)| y))
                .chain(self.points.iter().map(|&((_, y), _, _)| y)),
            self.legend_entries(),
        );
        let (x0, x1) = self.x_range;

        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.caption, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (x0..x1).log_scale().with_key_points(self.x_ticks.clone()),
                (y0..y1).log_scale().with_key_points(ms_ticks((y0, y1))),
            )?;
        chart
            .configure_mesh()
            .x_desc(self.x_desc)
            .y_desc("latency, ms")
            .x_label_formatter(&self.x_label)
            .y_label_formatter(&ms_label)
            .draw()?;
        for (y, color, label) in &self.lines {
            hline(&mut chart, (x0, x1), *y, *color, label.clone())?;
        }
        let label = |what: &str| format!("{}{what}", self.series_label);
        series(&mut chart, &self.pause, PAUSE, &label("pause"))?;
        series(&mut chart, &self.done, DONE, &label("split → Done"))?;
        series(&mut chart, &self.init, INIT, &label("split → init returns"))?;
        for (at, color, label) in &self.points {
            point(&mut chart, *at, *color, label.clone())?;
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
}

/// Latency against the size of a `Vec<u8>` state, with the map at the size
/// of its postcard encoding, the memory floor at the large size, and the
/// 0 B case as a horizontal line.
pub(crate) fn state(run: &Run, path: &Path) -> Result<()> {
    let [pause, done, init] = Plot::series(run, blob_jobs(run));
    let mut points = Vec::new();
    if let Some(floor) = run.done(Job::MemoryFloor) {
        let label = format!(
            "memory floor, {}: p50 ({})",
            bytes(run.large_bytes as u64),
            ms(floor.p50)
        );
        points.push(((run.large_bytes as f64, ms_of(floor, false)), FLOOR, label));
    }
    if let Some(x) = run
        .get(Job::Map)
        .map(|samples| samples.encoded_bytes as f64)
    {
        let map = [
            (run.pause(Job::Map), PAUSE, "pause"),
            (run.done(Job::Map), DONE, "split → Done"),
            (run.init(Job::Map), INIT, "split → init"),
            (run.postcard(), OTHER, "postcard encode+decode"),
        ];
        for (stats, color, what) in map {
            if let Some(s) = stats {
                let label = format!("1M-entry map: {what} p50 ({})", ms(s.p50));
                points.push(((x, ms_of(s, false)), color, label));
            }
        }
    }
    Plot {
        caption: "mitosis: handover latency against state size",
        x_desc: "state size (Vec<u8> bytes; the map at its postcard size)",
        x_range: (512.0, 2048.0 * 1024.0 * 1024.0),
        x_ticks: (5..=15).map(|k| 4f64.powi(k)).collect(),
        x_label: |x| bytes(*x as u64),
        series_label: "Vec<u8>: ",
        pause,
        done,
        init,
        lines: Plot::floor_and_zero(run, Job::Blob(0), "0 B state"),
        points,
    }
    .draw(path)
}

/// Latency against the number of fds in the state, with the 0-fd pause and
/// the 10,000-fd target as horizontal lines, and the small state and
/// shellflip at 3 fds.
pub(crate) fn fds(run: &Run, path: &Path) -> Result<()> {
    let counts = FD_COUNTS.iter().filter(|&&n| n > 0);
    let [pause, done, init] = Plot::series(run, counts.map(|&n| (n as f64, Job::Fds(n))));
    let mut lines = Plot::floor_and_zero(run, Job::Fds(0), "0 fds");
    if let Some(zero) = run.pause(Job::Fds(0)) {
        let label = "target for 10,000 fds: the 0-fd pause p50 + 5 ms".to_string();
        lines.push((ms_of(zero, false) + 5.0, OTHER, label));
    }
    let small = [
        (run.pause(Job::Small), PAUSE, "mitosis pause"),
        (run.done(Job::Small), DONE, "mitosis split → Done"),
        (
            run.done(Job::Shellflip),
            SHELLFLIP,
            "shellflip restart → ready",
        ),
    ];
    let points = small
        .into_iter()
        .filter_map(|(stats, color, what)| {
            let s = stats?;
            let label = format!("1 KiB + 3 fds: {what} p50 ({})", ms(s.p50));
            Some(((3.0, ms_of(s, false)), color, label))
        })
        .collect();
    Plot {
        caption: "mitosis: handover latency against fd count",
        x_desc: "fds in the state (half files, half Unix sockets)",
        x_range: (0.7, 20_000.0),
        x_ticks: vec![1.0, 3.0, 16.0, 256.0, 1024.0, 10_000.0],
        x_label: |x| format!("{}", x.round()),
        series_label: "",
        pause,
        done,
        init,
        lines,
        points,
    }
    .draw(path)
}
