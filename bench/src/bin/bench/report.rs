//! The report: bench.md's text (also printed), and the targets' verdicts.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mitosis_bench::{Stats, bytes, ms};

use crate::{BLOB_SIZES, FD_COUNTS, Job, LARGE_BLOB, Run, Samples};

const GIB: f64 = (1u64 << 30) as f64;

impl Run {
    pub(crate) fn get(&self, job: Job) -> Option<&Samples> {
        self.samples
            .get(&job)
            .filter(|samples| !samples.done.is_empty())
    }

    pub(crate) fn done(&self, job: Job) -> Option<Stats> {
        self.get(job).and_then(|samples| Stats::of(&samples.done))
    }

    pub(crate) fn init(&self, job: Job) -> Option<Stats> {
        self.get(job).and_then(|samples| Stats::of(&samples.init))
    }

    fn end_to_end(&self, job: Job) -> Option<Stats> {
        self.get(job)
            .and_then(|samples| Stats::of(&samples.end_to_end))
    }

    pub(crate) fn postcard(&self) -> Option<Stats> {
        self.get(Job::Map)
            .and_then(|samples| Stats::of(&samples.postcard))
    }
}

/// One target: what it asks, what was measured, and whether that meets it.
struct Target {
    name: &'static str,
    goal: &'static str,
    figure: String,
    /// `None`: not measured in this run.
    met: Option<bool>,
}

impl Target {
    fn new(name: &'static str, goal: &'static str) -> Target {
        Target {
            name,
            goal,
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

fn targets(run: &Run) -> Vec<Target> {
    let small = run.done(Job::Small);
    let mut targets = Vec::new();

    let target = Target::new(
        "p50 split → Done for 1 KiB + 3 fds",
        "at most 1.5× the exec floor measured in the same run",
    );
    targets.push(match (run.done(Job::Floor), small) {
        (Some(floor), Some(small)) => {
            let ratio = secs(small) / secs(floor);
            target.measured(
                format!(
                    "{ratio:.2}× ({} against the floor's {})",
                    ms(small.p50),
                    ms(floor.p50)
                ),
                ratio <= 1.5,
            )
        }
        _ => target,
    });

    let target = Target::new(
        "compared with shellflip in the same run",
        "at least 2× faster at p50",
    );
    targets.push(match (run.done(Job::Shellflip), small) {
        (Some(shellflip), Some(small)) => {
            let ratio = secs(shellflip) / secs(small);
            // Both stand on an exec floor of their own binary; what each
            // adds to it is the part a library can change.
            let above = match (run.done(Job::Floor), run.done(Job::ShellflipFloor)) {
                (Some(floor), Some(theirs)) => format!(
                    "; above each binary's own exec floor: mitosis {}, shellflip {}",
                    ms(small.p50.saturating_sub(floor.p50)),
                    ms(shellflip.p50.saturating_sub(theirs.p50))
                ),
                _ => String::new(),
            };
            target.measured(
                format!(
                    "{ratio:.2}× faster ({} against shellflip's {}{above})",
                    ms(small.p50),
                    ms(shellflip.p50)
                ),
                ratio >= 2.0,
            )
        }
        _ => target,
    });

    let most = FD_COUNTS[FD_COUNTS.len() - 1];
    let target = Target::new("10,000 fds", "under 5 ms more than the 0-fd case");
    targets.push(match (run.done(Job::Fds(most)), run.done(Job::Fds(0))) {
        (Some(many), Some(none)) => {
            let extra = many.p50.saturating_sub(none.p50);
            let init = match (run.init(Job::Fds(most)), run.init(Job::Fds(0))) {
                (Some(many), Some(none)) => {
                    format!(
                        "; split → init: {} more",
                        ms(many.p50.saturating_sub(none.p50))
                    )
                }
                _ => String::new(),
            };
            let exec = match (run.done(Job::FloorFds(most)), run.done(Job::Floor)) {
                (Some(held), Some(floor)) => format!(
                    "; the exec floor alone grows by {} with them open",
                    ms(held.p50.saturating_sub(floor.p50))
                ),
                _ => String::new(),
            };
            target.measured(
                format!(
                    "{} more ({} against {}, p50 split → Done{init}{exec})",
                    ms(extra),
                    ms(many.p50),
                    ms(none.p50)
                ),
                extra < Duration::from_millis(5),
            )
        }
        _ => target,
    });

    let target = Target::new("256 MiB Vec<u8>", "at least 1 GiB/s end to end");
    targets.push(match run.end_to_end(Job::Blob(LARGE_BLOB)) {
        Some(e2e) => {
            let rate = LARGE_BLOB as f64 / GIB / secs(e2e);
            target.measured(
                format!("{rate:.2} GiB/s ({} end to end, p50)", ms(e2e.p50)),
                rate >= 1.0,
            )
        }
        None => target,
    });

    let target = Target::new(
        "1M-entry map",
        "within 1.25× of in-memory postcard encode+decode of the same value",
    );
    targets.push(match (run.done(Job::Map), run.postcard()) {
        (Some(map), Some(postcard)) => {
            let ratio = secs(map) / secs(postcard);
            let init = run
                .init(Job::Map)
                .map_or(f64::NAN, |init| secs(init) / secs(postcard));
            target.measured(
                format!(
                    "{ratio:.2}× ({} split → Done against {}; split → init returns: {init:.2}×)",
                    ms(map.p50),
                    ms(postcard.p50)
                ),
                ratio <= 1.25,
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

/// bench.md: the run's circumstances, the targets, the three tables, and
/// how each figure is measured.
pub(crate) fn markdown(run: &Run, command: &str) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# mitosis benchmark\n");
    let _ = writeln!(w, "- Date: {} (UTC)", today());
    let _ = writeln!(w, "- Machine: {}", machine());
    let _ = writeln!(w, "- Command: `{command}`");
    let _ = writeln!(
        w,
        "- Rounds: {} of each small case, {} of the 256 MiB and the map cases, interleaved \
         in one run. p50 and p99 are nearest-rank: p99 is the slowest sample when there are \
         fewer than 100.",
        run.rounds, run.large_rounds
    );
    let _ = writeln!(
        w,
        "- Load average (1, 5, 15 min): {} before, {} after",
        run.load_before, run.load_after
    );
    let _ = writeln!(w, "- File descriptors: {}", run.fd_limit.1);
    for (job, why) in &run.skipped {
        let _ = writeln!(w, "- **Skipped** `{}`: {why}", job.name());
    }

    let _ = writeln!(w, "\n## Targets\n");
    let mut table = Table::new(&["target", "goal", "figure", "verdict"]);
    for target in targets(run) {
        table.row([
            target.name.to_string(),
            target.goal.to_string(),
            target.figure.clone(),
            format!("**{}**", target.verdict()),
        ]);
    }
    out.push_str(&table.text);

    let _ = writeln!(out, "\n## The exec floor, mitosis and shellflip\n");
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

    let _ = writeln!(out, "\n## Latency against state size\n");
    let mut table = Table::new(&[
        "state",
        "data",
        "rounds",
        "split → Done p50",
        "p99",
        "split → init p50",
        "p99",
        "end to end p50",
        "throughput",
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
    jobs.push((
        "1,000,000-entry `HashMap<String, Vec<String>>`".to_string(),
        Job::Map,
    ));
    for (label, job) in jobs {
        let Some(samples) = run.get(job) else {
            continue;
        };
        let (done, init, e2e) = (run.done(job), run.init(job), run.end_to_end(job));
        let throughput = match (job, e2e) {
            (Job::Blob(size), Some(e2e)) if size >= 1 << 20 => {
                format!("{:.2} GiB/s", size as f64 / GIB / secs(e2e))
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
            n(done),
            p50(done),
            p99(done),
            p50(init),
            p99(init),
            p50(e2e),
            throughput,
        ]);
    }
    let postcard = run.postcard();
    if postcard.is_some() {
        table.row([
            "the same map: postcard `to_stdvec` + `from_bytes`, in memory".into(),
            "—".into(),
            n(postcard),
            p50(postcard),
            p99(postcard),
            "—".into(),
            "—".into(),
            "—".into(),
            "—".into(),
        ]);
    }
    out.push_str(&table.text);

    let _ = writeln!(out, "\n## Latency against fd count\n");
    let mut table = Table::new(&[
        "fds",
        "rounds",
        "split → Done p50",
        "p99",
        "split → init p50",
        "p99",
        "Done p50 − 0-fd Done p50",
    ]);
    let none = run.done(Job::Fds(0));
    for count in FD_COUNTS {
        let job = Job::Fds(count);
        if run.skipped.iter().any(|(skipped, _)| *skipped == job) {
            let mut row = vec![count.to_string(), "skipped: RLIMIT_NOFILE".into()];
            row.extend(std::iter::repeat_n("—".to_string(), 5));
            table.row(row);
            continue;
        }
        let (done, init) = (run.done(job), run.init(job));
        if done.is_none() {
            continue;
        }
        let extra = match (done, none) {
            (Some(done), Some(none)) => {
                let delta = done.p50.as_secs_f64() - none.p50.as_secs_f64();
                format!("{:+.3} ms", delta * 1e3)
            }
            _ => "—".into(),
        };
        table.row([
            count.to_string(),
            n(done),
            p50(done),
            p99(done),
            p50(init),
            p99(init),
            extra,
        ]);
    }
    out.push_str(&table.text);

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

const METHOD: &str = "
![latency against state size](bench-state.svg)

![latency against fd count](bench-fds.svg)

## How each figure is measured

All times are `CLOCK_MONOTONIC` readings, which compare across processes.

- **Exec floor**: the harness binds a loopback TCP listener, reads the clock,
  spawns the binary (`bench floor <port>`, or `shellflip-bench floor <port>`)
  and stops the clock when `accept` returns. No handover: the least any
  re-exec upgrade can cost. The child connects before parsing its command
  line, as a handover's new process does, and exits at once. The floor
  *holding 10,000 fds* is the same while the harness holds the 10,000-fd
  case's files and sockets (close-on-exec): exec then copies and closes them
  all, which no re-exec upgrade can avoid.
- **mitosis `split` → `Done`**: the harness builds the state (not timed),
  reads the clock, calls `SplitOptions::split` and stops the clock when
  `Split::wait` returns `Outcome::Done`. That includes pointing the old
  process's copies of the fds at `/dev/null`; mitosis frees the old copy of
  the state after `Done`, on its handover thread. The new process is a copy
  of `bench`, whose `main` calls `mitosis::init` first.
- **mitosis `split` → `init` returns**: the new process reads the clock as
  soon as `init` returns, then checks the state and sends its reading to the
  harness over a Unix stream socket; the harness subtracts its own start
  reading. The new process then keeps its state, as a real one would, until
  the harness has timed `Done` and hangs up.
- **End to end**: per round, from `split` to the later of the two.
  Throughput is the `Vec<u8>`'s size over its end-to-end p50.
- **postcard encode+decode**: `postcard::to_stdvec` then `postcard::from_bytes`
  of the very map value that is then handed over, in the same round. The map
  is built once and cloned for each round before the clock starts.
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
  (its fastest path).
- Every round starts after the previous round's new process has been
  reaped and mitosis's handover thread has finished, and after glibc has
  consolidated the chunks freed so far (a 64 KiB allocation): otherwise
  freeing a million-entry map charged ~600 ms of `malloc_consolidate` to
  the next round's spawn.
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
