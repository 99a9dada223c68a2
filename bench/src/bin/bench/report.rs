//! The report: bench.md's text (also printed), and the targets' verdicts.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mitosis_bench::{Stats, bytes, ms};

use crate::{BLOB_SIZES, FD_COUNTS, Job, Run, Samples};

const GIB: f64 = (1u64 << 30) as f64;

/// The pause's share of the exec floor it must stay within.
const PAUSE_OF_FLOOR: f64 = 0.25;
/// How many times shorter than shellflip's restart the pause must be.
const SHELLFLIP_FACTOR: f64 = 5.0;
/// What 10,000 fds may add to the pause.
const FDS_EXTRA: Duration = Duration::from_millis(5);
/// The memory floor over the large state's pause, at least.
const MEMORY_FLOOR_RATIO: f64 = 0.8;
/// Peak resident memory of either process, over the state's size.
const PEAK_OVER_STATE: f64 = 1.1;
/// The map's pause over postcard in memory, at most.
const MAP_OVER_POSTCARD: f64 = 1.1;

impl Run {
    /// A job's samples, if it ran.
    pub(crate) fn get(&self, job: Job) -> Option<&Samples> {
        self.samples
            .get(&job)
            .filter(|samples| !samples.done.is_empty() || !samples.pause.is_empty())
    }

    fn stats(&self, job: Job, which: fn(&Samples) -> &Vec<u64>) -> Option<Stats> {
        self.get(job).and_then(|samples| Stats::of(which(samples)))
    }

    /// `split()` → `Done`; for the floors and shellflip, their one figure.
    pub(crate) fn done(&self, job: Job) -> Option<Stats> {
        self.stats(job, |s| &s.done)
    }

    /// `split()` → `init()` returns.
    pub(crate) fn init(&self, job: Job) -> Option<Stats> {
        self.stats(job, |s| &s.init)
    }

    /// The pause: `hand_over()` → `init()` returns.
    pub(crate) fn pause(&self, job: Job) -> Option<Stats> {
        self.stats(job, |s| &s.pause)
    }

    /// `hand_over()` → `Done`.
    fn pause_done(&self, job: Job) -> Option<Stats> {
        self.stats(job, |s| &s.pause_done)
    }

    /// `prepare()` → ready.
    fn ready(&self, job: Job) -> Option<Stats> {
        self.stats(job, |s| &s.ready)
    }

    pub(crate) fn postcard(&self) -> Option<Stats> {
        self.stats(Job::Map, |s| &s.postcard)
    }
}

/// Peak memory over a set of handovers, in bytes.
#[derive(Debug, Clone, Copy)]
struct Peak {
    n: usize,
    median: u64,
    max: u64,
}

impl Peak {
    fn of(samples: &[u64]) -> Option<Peak> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Peak {
            n: sorted.len(),
            median: *sorted.get((sorted.len().max(1) - 1) / 2)?,
            max: *sorted.last()?,
        })
    }
}

/// One target: what it asks, what was measured, and whether that meets it.
struct Target {
    name: String,
    goal: String,
    figure: String,
    /// `None`: not measured in this run.
    met: Option<bool>,
}

impl Target {
    fn new(name: impl Into<String>, goal: impl Into<String>) -> Target {
        Target {
            name: name.into(),
            goal: goal.into(),
            figure: "—".into(),
            met: None,
        }
    }

    fn measured(self, figure: String, met: bool) -> Target {
        Target {
            figure,
            met: Some(met),
            ..self
        }
    }

    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "not met",
            None => "not measured",
        }
    }
}

fn secs(stats: Stats) -> f64 {
    stats.p50.as_secs_f64()
}

/// `+1.234 ms` or `-0.100 ms`: one p50 less another.
fn delta(a: Stats, b: Stats) -> String {
    let ms = (a.p50.as_secs_f64() - b.p50.as_secs_f64()) * 1e3;
    // Below the last digit shown: `+0.000`, not `-0.000`.
    let ms = if ms.abs() < 0.0005 { 0.0 } else { ms };
    format!("{ms:+.3} ms")
}

fn targets(run: &Run) -> Vec<Target> {
    let small = run.pause(Job::Small);
    let large = bytes(run.large_bytes as u64);
    let mut targets = Vec::new();

    let target = Target::new(
        "pause, 1 KiB + 3 fds (prepared: `hand_over` → `init` returns)",
        format!("p50 ≤ {PAUSE_OF_FLOOR}× the exec floor measured in the same run"),
    );
    targets.push(match (run.done(Job::Floor), small) {
        (Some(floor), Some(small)) => {
            let ratio = secs(small) / secs(floor);
            target.measured(
                format!(
                    "{ratio:.2}× ({} against the floor's {}; pause p99 {})",
                    ms(small.p50),
                    ms(floor.p50),
                    ms(small.p99)
                ),
                ratio <= PAUSE_OF_FLOOR,
            )
        }
        _ => target,
    });

    let target = Target::new(
        "the pause against shellflip 2.1.3's restart → ready, same job",
        format!("≥ {SHELLFLIP_FACTOR}× shorter at p50"),
    );
    targets.push(match (run.done(Job::Shellflip), small) {
        (Some(shellflip), Some(small)) => {
            let ratio = secs(shellflip) / secs(small);
            let split = run.done(Job::Small).map_or(String::new(), |split| {
                format!("; mitosis `split` → `Done`: {}", ms(split.p50))
            });
            target.measured(
                format!(
                    "{ratio:.1}× shorter ({} against shellflip's {}{split})",
                    ms(small.p50),
                    ms(shellflip.p50)
                ),
                ratio >= SHELLFLIP_FACTOR,
            )
        }
        _ => target,
    });

    let most = FD_COUNTS[FD_COUNTS.len() - 1];
    let target = Target::new(
        "10,000 fds: the pause",
        format!("< {} ms more than with 0 fds (p50)", FDS_EXTRA.as_millis()),
    );
    targets.push(match (run.pause(Job::Fds(most)), run.pause(Job::Fds(0))) {
        (Some(many), Some(none)) => {
            let extra = many.p50.saturating_sub(none.p50);
            let mut also = String::new();
            for (what, many, none) in [
                (
                    "split → Done",
                    run.done(Job::Fds(most)),
                    run.done(Job::Fds(0)),
                ),
                (
                    "split → init",
                    run.init(Job::Fds(most)),
                    run.init(Job::Fds(0)),
                ),
            ] {
                if let (Some(many), Some(none)) = (many, none) {
                    let _ = write!(also, "; {what}: {}", delta(many, none));
                }
            }
            target.measured(
                format!(
                    "{} more ({} against {}{also})",
                    ms(extra),
                    ms(many.p50),
                    ms(none.p50)
                ),
                extra < FDS_EXTRA,
            )
        }
        _ => target,
    });

    let target = Target::new(
        format!("{large} `Vec<u8>`: the pause against the memory floor"),
        format!(
            "memory floor p50 / pause p50 ≥ {MEMORY_FLOOR_RATIO} (the floor: a fresh {large} \
             `Vec<u8>` and a copy into it, in one process)"
        ),
    );
    targets.push(match (run.pause(Job::Large), run.done(Job::MemoryFloor)) {
        (Some(pause), Some(floor)) => {
            let ratio = secs(floor) / secs(pause);
            let split = run.init(Job::Large).map_or(String::new(), |init| {
                format!("; `split` → `init`: {}", ms(init.p50))
            });
            target.measured(
                format!(
                    "{ratio:.2} (floor {} / pause {}{split}; THP {})",
                    ms(floor.p50),
                    ms(pause.p50),
                    run.thp_before
                ),
                ratio >= MEMORY_FLOOR_RATIO,
            )
        }
        _ => target,
    });

    let limit = (run.large_bytes as f64 * PEAK_OVER_STATE) as u64;
    for (side, samples) in [
        ("old", run.get(Job::Large).map(|s| &s.hwm_old)),
        ("new", run.get(Job::Large).map(|s| &s.hwm_new)),
    ] {
        let target = Target::new(
            format!("peak resident memory of the {side} process, {large} handover"),
            format!(
                "≤ state + {:.0} % ({})",
                (PEAK_OVER_STATE - 1.0) * 100.0,
                bytes(limit)
            ),
        );
        targets.push(match samples.and_then(|samples| Peak::of(samples)) {
            Some(peak) => target.measured(
                format!(
                    "{} at most ({:.3}× the state; VmHWM over {} handovers, median {})",
                    bytes(peak.max),
                    peak.max as f64 / run.large_bytes as f64,
                    peak.n,
                    bytes(peak.median)
                ),
                peak.max <= limit,
            ),
            None => target,
        });
    }

    let target = Target::new(
        "1M-entry map: the pause against postcard",
        format!(
            "≤ {MAP_OVER_POSTCARD}× in-memory postcard `to_stdvec` + `from_bytes` of the \
             same value (p50)"
        ),
    );
    targets.push(match (run.pause(Job::Map), run.postcard()) {
        (Some(map), Some(postcard)) => {
            let ratio = secs(map) / secs(postcard);
            let done = run.done(Job::Map).map_or(String::new(), |done| {
                format!("; `split` → `Done`: {:.2}×", secs(done) / secs(postcard))
            });
            target.measured(
                format!(
                    "{ratio:.2}× (pause {} against {}{done})",
                    ms(map.p50),
                    ms(postcard.p50)
                ),
                ratio <= MAP_OVER_POSTCARD,
            )
        }
        _ => target,
    });
    targets
}

/// A markdown table.
struct Table {
    text: String,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        let mut table = Table {
            text: String::new(),
        };
        table.row(header.iter().map(|cell| cell.to_string()));
        table.row(header.iter().map(|_| "---".to_string()));
        table
    }

    fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        let cells: Vec<String> = cells.into_iter().collect();
        let _ = writeln!(self.text, "| {} |", cells.join(" | "));
    }
}

fn p50(stats: Option<Stats>) -> String {
    stats.map_or("—".into(), |s| ms(s.p50))
}

fn p99(stats: Option<Stats>) -> String {
    stats.map_or("—".into(), |s| ms(s.p99))
}

fn n(stats: Option<Stats>) -> String {
    stats.map_or("—".into(), |s| s.n.to_string())
}

/// The header bullet about transparent huge pages: the settings, whether
/// `--thp` switched them, and whether they changed during the run.
fn thp_line(run: &Run) -> String {
    let mut line = format!("- Transparent huge pages: {}", run.thp_before);
    match (&run.thp_switched_from, run.thp_asked) {
        (Some(previous), Some(asked)) => {
            let _ = write!(
                line,
                " (switched from `{previous}` by `--thp {asked}` for this run, and back after it)"
            );
        }
        (None, Some(asked)) => {
            let _ = write!(
                line,
                " (the system's setting; `--thp {asked}` found it in force)"
            );
        }
        _ => line.push_str(" (the system's setting; no `--thp`)"),
    }
    if run.thp_after != run.thp_before {
        let _ = write!(
            line,
            "; **changed during the run**, to {} at its end",
            run.thp_after
        );
    }
    line
}

/// bench.md: the run's circumstances, the targets, the tables, and how
/// each figure is measured.
pub(crate) fn markdown(run: &Run, command: &str) -> String {
    let large = bytes(run.large_bytes as u64);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# mitosis benchmark\n");
    let _ = writeln!(w, "- Date: {} (UTC)", today());
    let _ = writeln!(w, "- Machine: {}", machine());
    let _ = writeln!(w, "- Command: `{command}`");
    let _ = writeln!(
        w,
        "- Rounds: {} of each small case, {} of the {large}, memory floor and map cases, \
         interleaved in one run. Each round of a mitosis case is two handovers, one prepared \
         and one with `split`, in alternating order. p50 and p99 are nearest-rank: p99 is the \
         slowest sample when there are fewer than 100.",
        run.rounds, run.large_rounds
    );
    let _ = writeln!(
        w,
        "- Load average (1, 5, 15 min): {} before, {} after",
        run.load_before, run.load_after
    );
    let _ = writeln!(w, "{}", thp_line(run));
    let _ = writeln!(w, "- File descriptors: {}", run.fd_limit.1);
    for (job, why) in &run.skipped {
        let _ = writeln!(w, "- **Skipped** `{}`: {why}", job.name());
    }

    let _ = writeln!(w, "\n## Targets\n");
    let mut table = Table::new(&["target", "goal", "figure", "verdict"]);
    for target in targets(run) {
        table.row([
            target.name.clone(),
            target.goal.clone(),
            target.figure.clone(),
            format!("**{}**", target.verdict()),
        ]);
    }
    out.push_str(&table.text);

    let _ = writeln!(out, "\n## The pause, the exec floor and shellflip\n");
    let mut table = Table::new(&["", "rounds", "p50", "p99"]);
    let rows = [
        (
            "exec floor: spawn `bench` until it connects back",
            run.done(Job::Floor),
        ),
        (
            "exec floor: spawn `bench` until it connects back, holding 10,000 fds",
            run.done(Job::FloorFds(FD_COUNTS[FD_COUNTS.len() - 1])),
        ),
        (
            "exec floor: spawn `shellflip-bench` until it connects back",
            run.done(Job::ShellflipFloor),
        ),
        (
            "**mitosis: the pause, `hand_over` → `init` returns, 1 KiB + 3 fds**",
            run.pause(Job::Small),
        ),
        (
            "mitosis: `hand_over` → `Done`, 1 KiB + 3 fds",
            run.pause_done(Job::Small),
        ),
        (
            "mitosis: `prepare` → ready (the program serves meanwhile), 1 KiB + 3 fds",
            run.ready(Job::Small),
        ),
        (
            "mitosis: `split` → `Done`, 1 KiB + 3 fds",
            run.done(Job::Small),
        ),
        (
            "mitosis: `split` → `init` returns, 1 KiB + 3 fds",
            run.init(Job::Small),
        ),
        (
            "shellflip 2.1.3: restart → ready, 1 KiB + 3 fds",
            run.done(Job::Shellflip),
        ),
    ];
    for (label, stats) in rows {
        table.row([label.to_string(), n(stats), p50(stats), p99(stats)]);
    }
    out.push_str(&table.text);

    if run.get(Job::Large).is_some() || run.get(Job::MemoryFloor).is_some() {
        let _ = writeln!(out, "\n## {large}: the memory floor and peak memory\n");
        let _ = writeln!(
            out,
            "Transparent huge pages: {}. The old side of these handovers is a process of its \
             own (`bench old`), holding nothing but the state.\n",
            run.thp_before
        );
        let mut table = Table::new(&["", "rounds", "p50", "p99"]);
        let floor_label = format!(
            "memory floor: a fresh {large} `Vec<u8>` and a copy of the same bytes into it, \
             in one process"
        );
        let rows = [
            (floor_label, run.done(Job::MemoryFloor)),
            (
                "**mitosis: the pause, `hand_over` → `init` returns**".to_string(),
                run.pause(Job::Large),
            ),
            (
                "mitosis: `hand_over` → `Done`".to_string(),
                run.pause_done(Job::Large),
            ),
            (
                "mitosis: `split` → `init` returns".to_string(),
                run.init(Job::Large),
            ),
            (
                "mitosis: `split` → `Done`".to_string(),
                run.done(Job::Large),
            ),
        ];
        for (label, stats) in rows {
            table.row([label, n(stats), p50(stats), p99(stats)]);
        }
        out.push_str(&table.text);
        out.push('\n');
        let mut table = Table::new(&[
            "peak resident memory (VmHWM)",
            "handovers",
            "median",
            "max",
            "max / state",
        ]);
        let sides = [
            (
                "old side: builds the state, hands it over, reads its VmHWM once the handover \
                 thread is done",
                run.get(Job::Large).map(|s| &s.hwm_old),
                true,
            ),
            (
                "new process: reads its VmHWM right after `init` returns",
                run.get(Job::Large).map(|s| &s.hwm_new),
                true,
            ),
            (
                "for scale: the new process of a 1 KiB + 3 fds handover (the binary and \
                 its libraries, nearly all)",
                run.get(Job::Small).map(|s| &s.hwm_new),
                false,
            ),
        ];
        for (label, samples, of_state) in sides {
            let Some(peak) = samples.and_then(|samples| Peak::of(samples)) else {
                continue;
            };
            let ratio = if of_state {
                format!("{:.3}×", peak.max as f64 / run.large_bytes as f64)
            } else {
                "—".into()
            };
            table.row([
                label.to_string(),
                peak.n.to_string(),
                bytes(peak.median),
                bytes(peak.max),
                ratio,
            ]);
        }
        out.push_str(&table.text);
    }

    let _ = writeln!(out, "\n## Latency against state size\n");
    let mut table = Table::new(&[
        "state",
        "data",
        "rounds",
        "pause p50",
        "p99",
        "`hand_over` → `Done` p50",
        "`split` → `Done` p50",
        "p99",
        "`split` → `init` p50",
        "p99",
        "data / pause p50",
    ]);
    let mut jobs: Vec<(String, Job)> = BLOB_SIZES
        .iter()
        .map(|&size| {
            (
                format!("`Vec<u8>`, {}", bytes(size as u64)),
                Job::Blob(size),
            )
        })
        .collect();
    jobs.push((format!("`Vec<u8>`, {large} (old side apart)"), Job::Large));
    jobs.push((
        "1,000,000-entry `HashMap<String, Vec<String>>`".to_string(),
        Job::Map,
    ));
    for (label, job) in jobs {
        let Some(samples) = run.get(job) else {
            continue;
        };
        let (pause, done, init) = (run.pause(job), run.done(job), run.init(job));
        let throughput = match (job, pause) {
            (Job::Blob(_) | Job::Large, Some(pause)) if samples.encoded_bytes >= 1 << 20 => {
                format!(
                    "{:.2} GiB/s",
                    samples.encoded_bytes as f64 / GIB / secs(pause)
                )
            }
            _ => "—".into(),
        };
        let data = match job {
            Job::Map => format!("{} as postcard", bytes(samples.encoded_bytes)),
            _ => bytes(samples.encoded_bytes),
        };
        table.row([
            label,
            data,
            n(pause),
            p50(pause),
            p99(pause),
            p50(run.pause_done(job)),
            p50(done),
            p99(done),
            p50(init),
            p99(init),
            throughput,
        ]);
    }
    let dashes = |n| std::iter::repeat_n("—".to_string(), n);
    for (label, stats) in [
        (
            "the same map: postcard `to_stdvec` + `from_bytes`, in memory".to_string(),
            run.postcard(),
        ),
        (
            format!("memory floor: a fresh {large} `Vec<u8>` and a copy into it"),
            run.done(Job::MemoryFloor),
        ),
    ] {
        if stats.is_some() {
            let mut row = vec![label, "—".into(), n(stats), p50(stats), p99(stats)];
            row.extend(dashes(6));
            table.row(row);
        }
    }
    out.push_str(&table.text);

    let _ = writeln!(out, "\n## Latency against fd count\n");
    let mut table = Table::new(&[
        "fds",
        "rounds",
        "pause p50",
        "p99",
        "pause p50 − 0-fd pause p50",
        "`split` → `Done` p50",
        "p99",
        "`split` → `init` p50",
        "p99",
        "`Done` p50 − 0-fd `Done` p50",
    ]);
    let (none_pause, none_done) = (run.pause(Job::Fds(0)), run.done(Job::Fds(0)));
    for count in FD_COUNTS {
        let job = Job::Fds(count);
        if run.skipped.iter().any(|(skipped, _)| *skipped == job) {
            let mut row = vec![count.to_string(), "skipped: RLIMIT_NOFILE".into()];
            row.extend(dashes(8));
            table.row(row);
            continue;
        }
        if run.get(job).is_none() {
            continue;
        }
        let (pause, done, init) = (run.pause(job), run.done(job), run.init(job));
        let extra = |a: Option<Stats>, b: Option<Stats>| match (a, b) {
            (Some(a), Some(b)) => delta(a, b),
            _ => "—".into(),
        };
        table.row([
            count.to_string(),
            n(pause),
            p50(pause),
            p99(pause),
            extra(pause, none_pause),
            p50(done),
            p99(done),
            p50(init),
            p99(init),
            extra(done, none_done),
        ]);
    }
    out.push_str(&table.text);

    out.push_str(&tokio_state(run));
    out.push_str(&connections(run));

    out.push_str(METHOD);

    let _ = writeln!(out, "\n## Schema fingerprint\n");
    let _ = writeln!(
        out,
        "`Schema::of`, traced afresh each time as each process does once per handover, \
         {} rounds; the state's values are never looked at, so this is the same for the \
         1 KiB case and the million-entry map. The state's description in OFFER and REJECT: \
         {}.\n",
        super::SCHEMA_ROUNDS,
        run.schema
            .description_bytes
            .map_or("left out (past its bounds)".into(), |len| format!(
                "{len} bytes"
            ))
    );
    let mut table = Table::new(&["type", "p50", "p99"]);
    for (name, samples) in [
        ("`Case` (every case's type, in one enum)", &run.schema.case),
        (
            "`HashMap<String, Vec<String>>` (the map's type alone)",
            &run.schema.map,
        ),
    ] {
        let stats = Stats::of(&samples.done);
        let us = |at: fn(Stats) -> std::time::Duration| {
            stats.map_or("—".into(), |s| {
                format!("{:.1} µs", at(s).as_nanos() as f64 / 1e3)
            })
        };
        table.row([name.to_string(), us(|s| s.p50), us(|s| s.p99)]);
    }
    out.push_str(&table.text);
    out
}

/// The section on the small state with tokio's types against std's; empty
/// when the tokio case did not run. It says how it was measured itself, so
/// that it can stand on its own.
fn tokio_state(run: &Run) -> String {
    if run.get(Job::Tokio).is_none() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## A tokio state: 1 KiB + 3 fds, tokio against sync\n"
    );
    let _ = writeln!(
        out,
        "The tokio state has the small state's shape, 1 KiB of bytes, a listener, a stream \
         connected to the harness and a file (this binary), with `tokio::net::TcpListener` and \
         `tokio::net::TcpStream` where the small state has std's (the file stays a \
         `std::fs::File`: tokio's `fs::File` does not cross). The old side builds a \
         multi-thread tokio runtime (as `#[tokio::main]` does; outside the clocks), registers \
         the sockets with it, and inside it calls `prepare`, awaits `upgrade.ready()`, reads \
         the clock and awaits `upgrade.hand_over(state)`, or awaits `split(state)`. The new \
         process builds the same runtime before it calls `mitosis::init` inside it, so the \
         sockets are registered with that runtime's reactor as they are decoded, inside the \
         pause; it reads the clock as `init` returns, then (outside every clock) accepts a \
         connection that the harness makes to the listener it took and makes a one-byte round \
         trip on the stream before it reports. The sync row is the small case of the same \
         run, in the same rounds, in rotating order; each round of either is a prepared and a \
         `split` handover.\n"
    );
    let cases = [
        ("1 KiB + 3 fds, std types (sync)", Job::Small),
        (
            "1 KiB + 3 fds, tokio types (multi-thread runtime)",
            Job::Tokio,
        ),
    ];
    out.push_str(&side_by_side(run, "state", cases, "tokio / sync", true));
    if let (Some(tokio), Some(sync)) = (run.pause(Job::Tokio), run.pause(Job::Small)) {
        let _ = writeln!(
            out,
            "\n**The pause of the tokio state's handover is {:.2}× the sync one's at p50** \
             ({} against {}, {}; p99 {} against {}, {:.2}×).",
            secs(tokio) / secs(sync),
            ms(tokio.p50),
            ms(sync.p50),
            delta(tokio, sync),
            ms(tokio.p99),
            ms(sync.p99),
            tokio.p99.as_secs_f64() / sync.p99.as_secs_f64()
        );
    }
    out
}

/// The section on one connection, TLS against plain TCP; empty when
/// neither case ran. It says how it was measured itself, so that it can
/// stand on its own.
fn connections(run: &Run) -> String {
    if run.get(Job::Tcp).is_none() && run.get(Job::Tls).is_none() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(out, "\n## One connection: TLS against plain TCP\n");
    let suite = run.tls_suite.as_deref().unwrap_or("its suite");
    let _ = writeln!(
        out,
        "The whole state is one connection to a peer in the harness: a connected \
         `TcpStream`, or a client `TlsStream<TcpStream>` with an established TLS 1.3 session \
         ({suite}, rustls's ring provider). The TLS stream crosses as its socket, its session \
         (the version and suite, the sequence numbers, and any bytes it buffers: here none), and its traffic \
         secrets, which take a pipe of their own on the fd channel: two fds where the TCP \
         stream is one. Each connection makes a one-byte round trip before the handover, \
         which also consumes the session tickets that follow the TLS handshake; the new \
         process reads the clock as `init` returns, then makes another round trip over the \
         connection it took (outside every clock) before it reports, so each handover here \
         is of a connection that still works. The peer stays connected throughout. The \
         two cases run in the same rounds, in rotating order, each round a prepared and a \
         `split` handover like every mitosis case; neither making the connection nor the \
         TLS handshake is timed. The TCP case makes a TLS connection too, and closes it \
         before its own: a handshake just before a handover slows it (the spawn, and with \
         it `prepare` → ready, by most), so both cases do the same work and differ only in \
         what crosses.\n"
    );
    let cases = [
        ("one `TcpStream`", Job::Tcp),
        ("one `TlsStream<TcpStream>`, TLS 1.3", Job::Tls),
    ];
    out.push_str(&side_by_side(
        run,
        "connection",
        cases,
        "TLS / TCP, p50",
        false,
    ));
    if let (Some(tls), Some(tcp)) = (run.pause(Job::Tls), run.pause(Job::Tcp)) {
        let _ = writeln!(
            out,
            "\n**The pause of a TLS connection's handover is {:.2}× a plain TCP \
             connection's at p50** ({} against {}, {}; p99 {} against {}).",
            secs(tls) / secs(tcp),
            ms(tls.p50),
            ms(tcp.p50),
            delta(tls, tcp),
            ms(tls.p99),
            ms(tcp.p99)
        );
    }
    out
}

/// The table of two cases measured in the same rounds: a row each (of
/// those that ran), then, when both did, `ratio`: the second case's figures
/// over the first's at p50, and at p99 too when `p99_ratio`.
fn side_by_side(
    run: &Run,
    column: &str,
    cases: [(&str, Job); 2],
    ratio: &str,
    p99_ratio: bool,
) -> String {
    let mut table = Table::new(&[
        column,
        "rounds",
        "pause p50",
        "p99",
        "`hand_over` → `Done` p50",
        "p99",
        "`split` → `Done` p50",
        "p99",
        "`split` → `init` p50",
        "p99",
        "`prepare` → ready p50",
        "p99",
    ]);
    let figures = |job| {
        [
            run.pause(job),
            run.pause_done(job),
            run.done(job),
            run.init(job),
            run.ready(job),
        ]
    };
    for (label, job) in cases {
        if run.get(job).is_none() {
            continue;
        }
        let mut row = vec![label.to_string(), n(run.pause(job))];
        for stats in figures(job) {
            row.extend([p50(stats), p99(stats)]);
        }
        table.row(row);
    }
    let [(_, base), (_, measured)] = cases;
    if run.get(base).is_some() && run.get(measured).is_some() {
        let mut row = vec![ratio.to_string(), "—".into()];
        for (measured, base) in figures(measured).into_iter().zip(figures(base)) {
            match (measured, base) {
                (Some(measured), Some(base)) => row.extend([
                    format!("{:.2}×", secs(measured) / secs(base)),
                    if p99_ratio {
                        format!(
                            "{:.2}×",
                            measured.p99.as_secs_f64() / base.p99.as_secs_f64()
                        )
                    } else {
                        "—".into()
                    },
                ]),
                _ => row.extend(["—".into(), "—".into()]),
            }
        }
        table.row(row);
    }
    table.text
}

const METHOD: &str = "
![latency against state size](bench-state.svg)

![latency against fd count](bench-fds.svg)

## How each figure is measured

All times are `CLOCK_MONOTONIC` readings, which compare across processes.

- **The pause** (the headline): what a program that prepares its upgrade
  stops serving for. The old side reads the clock, calls
  `SplitOptions::prepare` and blocks in `Upgrade::wait_ready` until the new
  process is ready (in a real program it would serve meanwhile; that time
  is *`prepare` → ready*). Then it reads the clock again and calls
  `Upgrade::hand_over`. The new process is a copy of `bench`, whose `main`
  calls `mitosis::init` first (`arrive`, then `commit`); it reads the clock
  as soon as `init` returns and sends the reading to the harness over a
  Unix stream socket. The pause is that reading less the one before
  `hand_over`. *`hand_over` → `Done`* is the same start to
  `Split::wait` returning `Outcome::Done` in the old side.
- **Exec floor**: the harness binds a loopback TCP listener, reads the clock,
  spawns the binary (`bench floor <port>`, or `shellflip-bench floor <port>`)
  and stops the clock when `accept` returns. No handover: the least any
  re-exec upgrade can cost. The child connects before parsing its command
  line, as a handover's new process does, and exits at once. The floor
  *holding 10,000 fds* is the same while the harness holds the 10,000-fd
  case's files and sockets (close-on-exec): exec then copies and closes them
  all, which no re-exec upgrade can avoid. The pause excludes exec: the new
  process has started before it.
- **mitosis `split` → `Done`**: the harness builds the state (not timed),
  reads the clock, calls `SplitOptions::split` and stops the clock when
  `Split::wait` returns `Outcome::Done`. That includes spawning the new
  process, and pointing the old process's copies of the fds at `/dev/null`;
  mitosis frees the old copy of the state after `Done`, on its handover
  thread.
- **mitosis `split` → `init` returns**: the same start, to the new process's
  reading as `init` returns. The new process then keeps its state, as a real
  one would, until the harness has timed `Done` and hangs up.
- Each round of a mitosis case runs both handovers, the prepared one and the
  `split` one, each with a fresh state, in an order that alternates from
  round to round.
- **Memory floor**: in the harness, a `Vec<u8>` of the large size is filled
  (not timed); then the clock runs while `to_vec` allocates a fresh one and
  copies the same bytes into it. glibc serves an allocation that large with
  a fresh `mmap`, so every page is faulted in inside the clock: the page
  faults and the copy that any receiver of that state pays. Its target
  compares it with the large state's **pause**, as *floor p50 / pause p50*.
  How fast fresh pages fault in depends on transparent huge pages. When
  this harness was written, mitosis asked for them (`MADV_HUGEPAGE`) on the
  new process's large receive buffers, and the floor's plain `Vec` does
  not, so under `madvise` the two may fault in differently, and under
  `never` (or `always`) alike. So bench.md
  records `/sys/kernel/mm/transparent_hugepage/enabled` and
  `defrag` (the words in brackets) at the start of the rounds and at their
  end.
- **Peak memory**: `VmHWM` from `/proc/<pid>/status`, the most resident
  memory a process has had. The large case's old side runs in a process of
  its own, `bench old <bytes> <split|prepared> ...`, started by the harness
  for each handover: it builds the state, hands it over (the same code as the
  harness's other handovers), waits until mitosis's handover thread has
  finished (it frees the old copy after `Done`), and reads its own `VmHWM`;
  so nothing the harness holds (the map, the memory floor's buffers) counts.
  The new process reads its `VmHWM` right after `init` returns and its clock
  reading. Both include the process's own code and libraries: the table's
  last row, the new process of the 1 KiB handover, shows how much. The
  target compares the largest over all of the case's handovers, prepared
  and `split`, with the state's size.
- **End to end**, for the large state's target, is **the pause**: that is
  what a prepared program's users wait through. `split` → `init` is shown
  next to it.
- **postcard encode+decode**: `postcard::to_stdvec` then `postcard::from_bytes`
  of the very map value that the round's first handover then takes. The
  map is built once and cloned for each handover before the clock starts.
  Its target compares it with the map's pause.
- **fd cases**: half regular files, half Unix stream sockets (both ends of
  socket pairs), and no other data. RLIMIT_NOFILE is raised as needed.
- **shellflip 2.1.3**: `shellflip-bench serve`, driven by the harness, builds
  the same 1 KiB + 3 fds state and makes a restart task whose
  `LifecycleHandler` lets the three fds be inherited (clearing `FD_CLOEXEC`
  in `pre_new_process`) and writes the data and the fd numbers into
  shellflip's handover pipe. It reads the clock, sends itself SIGUSR1
  (shellflip's restart trigger), and stops the clock when the restart task
  resolves, which it does once the new process, having read the state and
  rebuilt its fds, calls `shellflip::startup_complete`. The restart
  coordination socket is off, so shellflip spawns without a `pre_exec` hook
  (its fastest path). shellflip has no prepared mode: its restart → ready
  includes the spawn, and is what its users wait through; the pause target
  compares that with mitosis's pause.
- Every round starts after the previous round's new process has been
  reaped and mitosis's handover thread has finished, and after glibc has
  consolidated the chunks freed so far (a 64 KiB allocation): otherwise
  freeing a million-entry map charged ~600 ms of `malloc_consolidate` to
  the next round's spawn.

## The THP-off variant

Transparent huge pages change what faulting in the large state costs, in
the memory floor and in the new process alike. To run the bench with them
off, as root, either switch them by hand and put the previous word (in
brackets in the file) back afterwards:

```sh
cat /sys/kernel/mm/transparent_hugepage/enabled   # e.g. always [madvise] never
echo never > /sys/kernel/mm/transparent_hugepage/enabled
cargo run --release -p mitosis-bench --bin bench -- --out /tmp/bench-thp-never
echo madvise > /sys/kernel/mm/transparent_hugepage/enabled
```

or let the harness do it: `-- --thp never` switches `enabled` before the
rounds and puts the previous setting back when the run ends, fails or
panics (not if it is killed; it prints the command that restores it). The
bench.md of each run says which setting it had, and whether `--thp`
switched it.
";

/// Today's date in UTC, as YYYY-MM-DD.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The CPU model, core count and kernel release (`uname -r`).
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |line: &str| {
        line.split_once(':')
            .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
    };
    let model = cpuinfo
        .lines()
        .filter_map(field)
        .find(|(key, _)| key == "model name")
        .map_or_else(|| "unknown CPU".into(), |(_, value)| value);
    let cores = cpuinfo
        .lines()
        .filter_map(field)
        .filter(|(key, _)| key == "processor")
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|release| release.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{model}, {cores} cores, Linux {kernel}")
}

/// The targets as plain lines, for the terminal.
pub(crate) fn verdicts(run: &Run) -> String {
    let mut out = String::from("targets:\n");
    for target in targets(run) {
        let _ = writeln!(
            out,
            "  {}: {} ({}; goal: {})",
            target.name,
            target.verdict(),
            target.figure,
            target.goal
        );
    }
    out
}
