//! The mitosis benchmark harness.
//!
//! `cargo run --release -p mitosis-bench --bin bench -- [--rounds N] [--quick] [--out docs/]`
//!
//! In one run, with the cases' rounds interleaved so that machine noise
//! spreads evenly over them, it measures:
//!
//! - the **exec floor**: spawning this binary until it connects back over
//!   loopback TCP, with no handover (and the same for `shellflip-bench`);
//! - **mitosis handovers** of a small state (1 KiB + 3 fds), of `Vec<u8>`
//!   states from 0 B to 256 MiB, of a 1,000,000-entry
//!   `HashMap<String, Vec<String>>` (with postcard encode+decode of the same
//!   value in memory, in the same round), and of 0 to 10,000 fds. Each is
//!   timed from `split()` to `Outcome::Done` in this process, and from
//!   `split()` to `init()` returning in the new process, which reports its
//!   `CLOCK_MONOTONIC` reading over a Unix stream socket;
//! - **shellflip 2.1.3** restarting `shellflip-bench` with the small state,
//!   from asking for the restart to the new process being ready, as the old
//!   process sees it.
//!
//! It prints a table and the targets' verdicts, and writes `bench.md`,
//! `bench-state.svg` and `bench-fds.svg` into the output directory.
//!
//! The new process of every mitosis handover is this same binary: `main`
//! calls `mitosis::init` first.

mod plot;
mod report;

use std::collections::HashMap;
use std::error::Error;
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::Duration;

use clap::{Parser, Subcommand};
use mitosis::{Handover, Outcome, SplitOptions};
use mitosis_bench::{SMALL_BLOB_BYTES, checksum, monotonic_ns, pattern};
use rustix::net::sockopt;
use rustix::process::{Pid, Resource, Rlimit, WaitOptions, getrlimit, setrlimit, waitpid};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// `Vec<u8>` state sizes, smallest first.
const BLOB_SIZES: [usize; 6] = [0, 1 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20];
/// Sizes from this one up run the large cases' number of rounds.
const LARGE_BLOB: usize = 256 << 20;
/// fd counts, smallest first.
const FD_COUNTS: [usize; 6] = [0, 1, 16, 256, 1024, 10_000];
/// Entries in the map case.
const MAP_ENTRIES: usize = 1_000_000;
/// fds this process and its new processes need besides the state's.
const FD_MARGIN: u64 = 256;
/// Generous: a 256 MiB or 1M-entry handover on a busy machine.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// The mitosis benchmark harness: the exec floor, handover latency against
/// state size and fd count, and shellflip, in one run.
#[derive(Parser, Debug)]
#[command(name = "bench", version, about)]
struct Cli {
    /// Rounds of each small case (up to 16 MiB, up to 10,000 fds, the
    /// floors and shellflip) [default: 200, or 15 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Rounds of the 256 MiB and the 1M-entry map cases [default:
    /// max(10, rounds / 20), or 3 with --quick].
    #[arg(long)]
    large_rounds: Option<usize>,
    /// A quick look while developing: fewer rounds, too few for stable
    /// figures.
    #[arg(long)]
    quick: bool,
    /// Run only these cases (for profiling): floor, shellflip-floor,
    /// shellflip, small, blob-BYTES, map, fds-N. Repeatable.
    #[arg(long, value_name = "CASE")]
    only: Vec<String>,
    /// Where bench.md, bench-state.svg and bench-fds.svg go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    #[command(subcommand)]
    internal: Option<Internal>,
}

/// The harness's own processes.
#[derive(Subcommand, Debug)]
enum Internal {
    /// Connect to 127.0.0.1:PORT and exit: the exec floor.
    #[command(hide = true)]
    Floor { port: u16 },
    /// The new process of a handover: report to this abstract socket.
    #[command(hide = true)]
    Child { report: String, seq: u64 },
}

/// Everything a handover can carry: one variant per kind of case.
#[derive(Handover)]
#[handover(name = "mitosis_bench::Case", version = 1)]
enum Case {
    /// 1 KiB and 3 fds, like `shellflip-bench`.
    Small {
        blob: Vec<u8>,
        listener: TcpListener,
        stream: TcpStream,
        file: File,
    },
    /// A byte buffer of some size, and no fd.
    Blob { data: Vec<u8> },
    /// 1,000,000 entries: `"key{i}"` → three short strings.
    Map { map: HashMap<String, Vec<String>> },
    /// Only fds: regular files and Unix stream sockets.
    Fds {
        files: Vec<File>,
        sockets: Vec<UnixStream>,
    },
}

impl Case {
    /// What the new process must find, computed the same way on both sides.
    fn check(&self) -> u64 {
        match self {
            Case::Small { blob, .. } => checksum(blob),
            Case::Blob { data } => checksum(data),
            Case::Map { map } => map_check(map),
            Case::Fds { files, sockets } => ((files.len() as u64) << 32) | sockets.len() as u64,
        }
    }
}

fn main() -> ExitCode {
    // First: if an older copy of this binary started us, take over.
    match mitosis::init::<Case>() {
        Ok(Some(state)) => return new_process(state),
        Ok(None) => {}
        Err(error) => {
            eprintln!("bench (new process): the handover failed: {error}");
            return ExitCode::FAILURE;
        }
    }
    // The exec floor's child connects back as early as a handover's new
    // process does: before the command line is parsed (clap alone costs a
    // few hundred microseconds here).
    let args: Vec<OsString> = mitosis::args().collect();
    if let [_, mode, port] = &args[..]
        && mode == "floor"
    {
        let connected = port
            .to_str()
            .and_then(|port| port.parse::<u16>().ok())
            .map(|port| TcpStream::connect(("127.0.0.1", port)));
        return match connected {
            Some(Ok(_)) => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
    }
    let cli = Cli::parse_from(args);
    let result = match cli.internal {
        Some(Internal::Floor { .. }) => Err("`floor` takes a port".into()),
        Some(Internal::Child { .. }) => {
            Err("`child` is for handed-over processes, which mitosis starts".into())
        }
        None => harness(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// A handover's new process: the clock first, then the check, then the
/// report. Then it keeps the state, as a real new process would, until the
/// harness has timed the old process's `Done` and hangs up; so the old
/// process never closes the last copy of a handed-over fd within the clock.
fn new_process(state: Case) -> ExitCode {
    let init_ns = monotonic_ns();
    let check = state.check();
    let Ok(Cli {
        internal: Some(Internal::Child { report, seq }),
        ..
    }) = Cli::try_parse_from(mitosis::args())
    else {
        eprintln!("bench (new process): started without `child <report> <seq>`");
        return ExitCode::FAILURE;
    };
    let reported = UnixAddr::from_abstract_name(report.as_bytes()).and_then(|addr| {
        let mut harness = UnixStream::connect_addr(&addr)?;
        harness.write_all(format!("{seq} {init_ns} {check}\n").as_bytes())?;
        // Until the harness hangs up (or dies).
        std::io::copy(&mut harness, &mut std::io::sink())
    });
    if let Err(error) = reported {
        eprintln!("bench (new process): could not report: {error}");
        return ExitCode::FAILURE;
    }
    drop(state);
    std::process::exit(0);
}

// ---------------------------------------------------------------------------
// The cases

/// One thing the harness times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Job {
    /// Spawn `bench` until it connects back.
    Floor,
    /// Spawn `shellflip-bench` until it connects back.
    ShellflipFloor,
    /// Spawn `bench` until it connects back, while holding this many fds
    /// (close-on-exec, as a handover's are): what exec alone pays for them.
    FloorFds(usize),
    /// shellflip: restart → ready, 1 KiB + 3 fds.
    Shellflip,
    /// mitosis: 1 KiB + 3 fds.
    Small,
    /// mitosis: a `Vec<u8>` of this many bytes.
    Blob(usize),
    /// mitosis: the 1M-entry map, and postcard on the same value.
    Map,
    /// mitosis: this many fds.
    Fds(usize),
}

impl Job {
    /// The name `--only` takes.
    fn name(self) -> String {
        match self {
            Job::Floor => "floor".into(),
            Job::ShellflipFloor => "shellflip-floor".into(),
            Job::FloorFds(n) => format!("floor-fds-{n}"),
            Job::Shellflip => "shellflip".into(),
            Job::Small => "small".into(),
            Job::Blob(size) => format!("blob-{size}"),
            Job::Map => "map".into(),
            Job::Fds(n) => format!("fds-{n}"),
        }
    }

    fn is_large(self) -> bool {
        matches!(self, Job::Map) || matches!(self, Job::Blob(size) if size >= LARGE_BLOB)
    }
}

/// A job's samples, in nanoseconds.
#[derive(Debug, Default, Clone)]
struct Samples {
    /// `split()` → `Done`; for the floors and shellflip, their one figure.
    done: Vec<u64>,
    /// `split()` → `init()` returns.
    init: Vec<u64>,
    /// `split()` → the later of the two.
    end_to_end: Vec<u64>,
    /// postcard `to_stdvec` + `from_bytes` of the same value (map only).
    postcard: Vec<u64>,
    /// The state's data bytes: the `Vec<u8>`'s length, or the map's
    /// postcard encoding, for the table and the plot.
    encoded_bytes: u64,
}

impl Samples {
    fn push(&mut self, handed: Handed) {
        self.done.push(handed.done);
        self.init.push(handed.init);
        self.end_to_end.push(handed.done.max(handed.init));
    }
}

/// Everything one run measured, and what it ran on.
struct Run {
    samples: HashMap<Job, Samples>,
    /// Jobs not run for lack of fds, and why.
    skipped: Vec<(Job, String)>,
    rounds: usize,
    large_rounds: usize,
    /// RLIMIT_NOFILE's soft limit during the run, and a sentence about it.
    fd_limit: (u64, String),
    load_before: String,
    load_after: String,
    /// What working out the state type's schema costs (once per handover,
    /// in each process).
    schema: SchemaCost,
}

/// The cost of `Schema::of` for the bench's state type, traced afresh each
/// round as a handover does, and the size of its description.
struct SchemaCost {
    /// `Schema::of::<Case>()`: every variant, the map's types included.
    case: Samples,
    /// `Schema::of::<HashMap<String, Vec<String>>>()`: the map alone.
    map: Samples,
    description_bytes: Option<usize>,
}

/// Rounds of the schema measurement.
const SCHEMA_ROUNDS: usize = 1000;

fn schema_cost() -> Result<SchemaCost> {
    let mut case = Samples::default();
    let mut map = Samples::default();
    for _ in 0..SCHEMA_ROUNDS {
        let start = monotonic_ns();
        mitosis::Schema::of::<Case>()?;
        let between = monotonic_ns();
        mitosis::Schema::of::<HashMap<String, Vec<String>>>()?;
        let end = monotonic_ns();
        case.done.push(between - start);
        map.done.push(end - between);
    }
    let shape = Case::shape(&mut mitosis::Shapes::new())?;
    Ok(SchemaCost {
        case,
        map,
        description_bytes: shape.description_len(),
    })
}

/// What a mitosis round measured.
struct Handed {
    done: u64,
    init: u64,
}

struct Harness {
    /// Where new processes report when `init` returned.
    report: UnixListener,
    report_name: String,
    seq: u64,
    /// The other end of the small state's TCP stream.
    peer: TcpListener,
    exe: PathBuf,
    /// `shellflip-bench`'s path, and its `serve` process once started.
    shellflip_exe: PathBuf,
    shellflip: Option<Shellflip>,
}

fn harness(cli: &Cli) -> Result<()> {
    let rounds = cli.rounds.unwrap_or(if cli.quick { 15 } else { 200 });
    let large_rounds =
        cli.large_rounds
            .unwrap_or(if cli.quick { 3 } else { (rounds / 20).max(10) });
    if rounds == 0 || large_rounds == 0 {
        return Err("at least one round of each".into());
    }
    if cfg!(debug_assertions) {
        eprintln!("bench: this is a debug build; its figures mean little (use --release)");
    }
    let load_before = load_average();
    let exe = std::env::current_exe()?;
    let fd_limit = raise_fd_limit(FD_COUNTS[FD_COUNTS.len() - 1] as u64 + FD_MARGIN);
    eprintln!("bench: {}", fd_limit.1);

    let mut jobs = vec![
        Job::Floor,
        Job::FloorFds(FD_COUNTS[FD_COUNTS.len() - 1]),
        Job::ShellflipFloor,
        Job::Shellflip,
        Job::Small,
    ];
    jobs.extend(BLOB_SIZES.map(Job::Blob));
    jobs.extend(FD_COUNTS.map(Job::Fds));
    jobs.push(Job::Map);
    for name in &cli.only {
        if !jobs.iter().any(|job| job.name() == *name) {
            let names: Vec<String> = jobs.iter().map(|job| job.name()).collect();
            return Err(format!("no case {name:?}; the cases are {}", names.join(", ")).into());
        }
    }
    if !cli.only.is_empty() {
        jobs.retain(|job| cli.only.contains(&job.name()));
    }
    let mut skipped = Vec::new();
    jobs.retain(|&job| match job {
        Job::Fds(n) | Job::FloorFds(n) if n as u64 + FD_MARGIN > fd_limit.0 => {
            let why = format!(
                "RLIMIT_NOFILE is {} here, and {n} fds need {}",
                fd_limit.0,
                n as u64 + FD_MARGIN
            );
            eprintln!("bench: skipping {n} fds: {why}");
            skipped.push((job, why));
            false
        }
        _ => true,
    });
    let (large_jobs, small_jobs): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|job| job.is_large());

    let shellflip_exe = if small_jobs
        .iter()
        .any(|job| matches!(job, Job::Shellflip | Job::ShellflipFloor))
    {
        shellflip_binary(&exe)?
    } else {
        PathBuf::new()
    };
    let report_name = format!("mitosis-bench-{}", std::process::id());
    let report = UnixListener::bind_addr(&UnixAddr::from_abstract_name(report_name.as_bytes())?)?;
    // `accept` obeys the receive timeout: a new process that dies before
    // reporting fails the run instead of hanging it.
    sockopt::set_socket_timeout(&report, sockopt::Timeout::Recv, Some(COMMIT_TIMEOUT))?;
    let mut harness = Harness {
        report,
        report_name,
        seq: 0,
        peer: TcpListener::bind("127.0.0.1:0")?,
        exe,
        shellflip_exe,
        shellflip: None,
    };

    // Both kinds are spread evenly over the same iterations; within one,
    // the order rotates so that no case always follows the same one.
    let iterations = rounds.max(large_rounds);
    let runs_in = |i: usize, n: usize| (i + 1) * n / iterations > i * n / iterations;
    let mut samples: HashMap<Job, Samples> = HashMap::new();
    let mut map_master = None;
    let started = monotonic_ns();
    for i in 0..iterations {
        let mut jobs = Vec::new();
        if runs_in(i, rounds) {
            jobs.extend(&small_jobs);
        }
        if runs_in(i, large_rounds) {
            let at = jobs.len() / 2;
            jobs.splice(at..at, large_jobs.iter().copied());
        }
        let len = jobs.len().max(1);
        jobs.rotate_left(i % len);
        for job in jobs {
            let entry = samples.entry(job).or_default();
            harness
                .run(job, entry, &mut map_master)
                .map_err(|error| format!("{}: {error}", job.name()))?;
        }
        if (i + 1) % 10 == 0 || i + 1 == iterations {
            eprintln!(
                "bench: {}/{iterations} rounds, {:.0} s",
                i + 1,
                (monotonic_ns() - started) as f64 / 1e9
            );
        }
    }
    drop(map_master);
    if let Some(shellflip) = harness.shellflip.take() {
        shellflip.finish()?;
    }

    let run = Run {
        samples,
        skipped,
        rounds,
        large_rounds,
        fd_limit,
        load_before,
        load_after: load_average(),
        schema: schema_cost()?,
    };
    let text = report::markdown(&run, &command_line());
    println!("{text}");
    println!("{}", report::verdicts(&run));
    std::fs::create_dir_all(&cli.out)?;
    std::fs::write(cli.out.join("bench.md"), &text)?;
    plot::state(&run, &cli.out.join("bench-state.svg"))?;
    plot::fds(&run, &cli.out.join("bench-fds.svg"))?;
    eprintln!(
        "bench: wrote {}, bench-state.svg and bench-fds.svg",
        cli.out.join("bench.md").display()
    );
    Ok(())
}

impl Harness {
    fn run(&mut self, job: Job, samples: &mut Samples, map: &mut Option<MapMaster>) -> Result<()> {
        match job {
            Job::Floor => samples.done.push(spawn_until_connected(&self.exe)?),
            Job::FloorFds(n) => {
                let held = fds_state(n, &self.exe)?;
                samples.done.push(spawn_until_connected(&self.exe)?);
                drop(held);
            }
            Job::ShellflipFloor => {
                samples
                    .done
                    .push(spawn_until_connected(&self.shellflip_exe)?);
            }
            Job::Shellflip => {
                let shellflip = match &mut self.shellflip {
                    Some(shellflip) => shellflip,
                    none => none.insert(Shellflip::start(&self.shellflip_exe)?),
                };
                samples.done.push(shellflip.restart()?);
            }
            Job::Small => {
                let state = Case::Small {
                    blob: pattern(SMALL_BLOB_BYTES),
                    listener: TcpListener::bind("127.0.0.1:0")?,
                    stream: TcpStream::connect(self.peer.local_addr()?)?,
                    file: File::open(&self.exe)?,
                };
                // Keep the other end open until the handover is over.
                let (_accepted, _) = self.peer.accept()?;
                samples.encoded_bytes = SMALL_BLOB_BYTES as u64;
                let handed = self.hand_over(state)?;
                samples.push(handed);
            }
            Job::Blob(size) => {
                samples.encoded_bytes = size as u64;
                let handed = self.hand_over(Case::Blob {
                    data: pattern(size),
                })?;
                samples.push(handed);
            }
            Job::Map => {
                let master = map.get_or_insert_with(MapMaster::build);
                samples.encoded_bytes = master.encoded_bytes;
                let value = master.map.clone();
                samples.postcard.push(postcard_round_trip(&value)?);
                let handed = self.hand_over(Case::Map { map: value })?;
                samples.push(handed);
            }
            Job::Fds(n) => {
                let handed = self.hand_over(fds_state(n, &self.exe)?)?;
                samples.push(handed);
            }
        }
        Ok(())
    }

    /// One mitosis handover to a new copy of this binary: `split()` →
    /// `Done` here, and `split()` → `init()` returning there.
    fn hand_over(&mut self, state: Case) -> Result<Handed> {
        self.seq += 1;
        let seq = self.seq;
        let expected = state.check();
        let mut options = SplitOptions::new();
        options
            .start_timeout(COMMIT_TIMEOUT)
            .transfer_timeout(COMMIT_TIMEOUT)
            .args([
                OsString::from("child"),
                OsString::from(&self.report_name),
                OsString::from(seq.to_string()),
            ]);

        settle()?;
        let start = monotonic_ns();
        let split = options.split(state);
        let pid = split.pid().unwrap_or(0);
        let outcome = split.wait();
        let done = monotonic_ns();

        if let Outcome::Failed { error, .. } = outcome {
            return Err(format!("the handover failed: {error}").into());
        }
        // The new process reports once init has returned, and exits when
        // this end hangs up.
        let no_report = |error| format!("no report from the new process (pid {pid}): {error}");
        let (conn, _) = self.report.accept().map_err(no_report)?;
        conn.set_read_timeout(Some(COMMIT_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(&conn)
            .read_line(&mut line)
            .map_err(no_report)?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [got_seq, init, check] = fields[..] else {
            return Err(format!("the new process reported {line:?}").into());
        };
        drop(conn);
        // The new process is our child: reap it.
        waitpid(
            Some(Pid::from_raw(pid as i32).ok_or("bad pid")?),
            WaitOptions::empty(),
        )?;
        // This process's copy of the state is freed on mitosis's handover
        // thread after Done; let it finish before the next round starts.
        settle()?;
        if got_seq != seq {
            return Err(format!("report {got_seq} came for handover {seq}").into());
        }
        if check != expected {
            return Err("the new process's state differs from the old one's".into());
        }
        Ok(Handed {
            done: done - start,
            init: init.saturating_sub(start),
        })
    }
}

/// Waits until this process is down to its main thread (mitosis's handover
/// thread frees the old copy of the state after `Done`), then makes glibc
/// consolidate its freed small chunks now: otherwise the first large
/// allocation after freeing millions of them (the map) pays for that, inside
/// the next round's clock. Outside every clock.
fn settle() -> Result<()> {
    let started = monotonic_ns();
    while std::fs::read_dir("/proc/self/task")?.count() > 1 {
        if monotonic_ns() - started > COMMIT_TIMEOUT.as_nanos() as u64 {
            return Err("mitosis's handover thread did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // A request above tcache's and the fastbins' sizes and below the mmap
    // threshold: glibc consolidates the fastbins before serving it.
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64 << 10)));
    Ok(())
}

/// Spawns `exe floor <port>` and times it until it connects back.
fn spawn_until_connected(exe: &Path) -> Result<u64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port().to_string();
    let mut command = Command::new(exe);
    command.args(["floor", &port]);
    let start = monotonic_ns();
    let mut child = command.spawn()?;
    let _conn = listener.accept()?;
    let took = monotonic_ns() - start;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("{} floor exited with {status}", exe.display()).into());
    }
    Ok(took)
}

/// `n` fds: half regular files, half Unix stream sockets (both ends of
/// socket pairs), files taking any odd one.
fn fds_state(n: usize, file: &Path) -> Result<Case> {
    let pairs = n / 4;
    let mut sockets = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let (a, b) = UnixStream::pair()?;
        sockets.extend([a, b]);
    }
    let files = (0..n - sockets.len())
        .map(|_| File::open(file))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Case::Fds { files, sockets })
}

// ---------------------------------------------------------------------------
// The map

/// The map, built once; every round hands over a clone of it (cloned before
/// the clock starts).
struct MapMaster {
    map: HashMap<String, Vec<String>>,
    encoded_bytes: u64,
}

impl MapMaster {
    fn build() -> MapMaster {
        eprintln!("bench: building the {MAP_ENTRIES}-entry map");
        let mut map = HashMap::with_capacity(MAP_ENTRIES);
        for i in 0..MAP_ENTRIES {
            let values = vec![format!("a{i}"), format!("bb{i}"), format!("ccc{i}")];
            map.insert(format!("key{i}"), values);
        }
        let encoded_bytes = postcard::to_stdvec(&map).map_or(0, |b| b.len() as u64);
        MapMaster { map, encoded_bytes }
    }
}

/// Order-independent, so that the new process's map (another hasher seed)
/// checks the same.
fn map_check(map: &HashMap<String, Vec<String>>) -> u64 {
    map.iter().fold(map.len() as u64, |sum, (key, values)| {
        let values = values
            .iter()
            .fold(0u64, |h, v| h.rotate_left(7) ^ checksum(v.as_bytes()));
        sum.wrapping_add(checksum(key.as_bytes()).wrapping_mul(31) ^ values)
    })
}

/// postcard in memory: `to_stdvec` then `from_bytes` of the same value,
/// timed together; the buffers are freed after the clock stops.
fn postcard_round_trip(map: &HashMap<String, Vec<String>>) -> Result<u64> {
    let start = monotonic_ns();
    let bytes = postcard::to_stdvec(map)?;
    let back: HashMap<String, Vec<String>> = postcard::from_bytes(&bytes)?;
    let took = monotonic_ns() - start;
    if back.len() != map.len() {
        return Err("postcard lost entries".into());
    }
    drop((bytes, back));
    Ok(took)
}

// ---------------------------------------------------------------------------
// shellflip

/// The `shellflip-bench serve` process, one restart per request.
struct Shellflip {
    child: Child,
    requests: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Shellflip {
    fn start(exe: &Path) -> Result<Shellflip> {
        let mut child = Command::new(exe)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", exe.display()))?;
        Ok(Shellflip {
            requests: child.stdin.take().ok_or("no stdin")?,
            answers: BufReader::new(child.stdout.take().ok_or("no stdout")?),
            child,
        })
    }

    /// One restart; shellflip-bench times it.
    fn restart(&mut self) -> Result<u64> {
        writeln!(self.requests, "restart")?;
        self.requests.flush()?;
        let mut line = String::new();
        self.answers.read_line(&mut line)?;
        match line.trim().strip_prefix("ok ") {
            Some(ns) => Ok(ns.parse()?),
            None => Err(format!("shellflip-bench answered {line:?} (see its stderr)").into()),
        }
    }

    fn finish(mut self) -> Result<()> {
        drop(self.requests);
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("shellflip-bench exited with {status}").into());
        }
        Ok(())
    }
}

/// `shellflip-bench`, next to this binary. `cargo run --bin bench` builds
/// only `bench`, so when cargo started us, build it the same way first.
fn shellflip_binary(exe: &Path) -> Result<PathBuf> {
    let dir = exe.parent().ok_or("this binary has no directory")?;
    let path = dir.join("shellflip-bench");
    if let (Some(cargo), Some(manifest)) = (
        std::env::var_os("CARGO"),
        std::env::var_os("CARGO_MANIFEST_DIR"),
    ) {
        let profile = match dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") => "dev",
            Some(profile) => profile,
            None => "release",
        };
        eprintln!("bench: building shellflip-bench ({profile} profile)");
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--profile", profile])
            .args(["--bin", "shellflip-bench", "--manifest-path"])
            .arg(Path::new(&manifest).join("Cargo.toml"))
            .status()?;
        if !status.success() {
            return Err("could not build shellflip-bench".into());
        }
    }
    if !path.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p mitosis-bench`",
            path.display()
        )
        .into());
    }
    Ok(path)
}

// ---------------------------------------------------------------------------
// The machine

/// Raises RLIMIT_NOFILE's soft limit to `want` if it is lower, and the hard
/// limit too if that is lower and this process may. Returns the soft limit
/// in force and a sentence about it.
fn raise_fd_limit(want: u64) -> (u64, String) {
    let old = getrlimit(Resource::Nofile);
    let soft = old.current.unwrap_or(u64::MAX);
    let hard = old.maximum.unwrap_or(u64::MAX);
    let show = |n: u64| {
        if n == u64::MAX {
            "unlimited".to_string()
        } else {
            n.to_string()
        }
    };
    if soft >= want {
        return (
            soft,
            format!("RLIMIT_NOFILE is {} already (need {want})", show(soft)),
        );
    }
    let new = Rlimit {
        current: Some(want),
        maximum: Some(hard.max(want)),
    };
    match setrlimit(Resource::Nofile, new) {
        Ok(()) => (
            want,
            format!(
                "raised RLIMIT_NOFILE from {} to {want} (hard limit {})",
                show(soft),
                show(hard.max(want))
            ),
        ),
        Err(error) => {
            // Not allowed above the hard limit: take what there is.
            let capped = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            let now = if hard > soft && setrlimit(Resource::Nofile, capped).is_ok() {
                hard
            } else {
                soft
            };
            (
                now,
                format!(
                    "could NOT raise RLIMIT_NOFILE to {want} ({error}): soft limit {}, hard {}; \
                     fd cases that need more are skipped",
                    show(now),
                    show(hard)
                ),
            )
        }
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

/// The command as the user would type it again.
fn command_line() -> String {
    let args: Vec<String> = mitosis::args()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let exe = std::env::current_exe().unwrap_or_default();
    let profile = exe
        .parent()
        .and_then(|dir| dir.file_name())
        .and_then(|name| name.to_str())
        .unwrap_or("release")
        .to_string();
    let rest = if args.is_empty() {
        String::new()
    } else {
        format!(" -- {}", args.join(" "))
    };
    if std::env::var_os("CARGO").is_some() {
        let profile = match profile.as_str() {
            "release" => " --release".to_string(),
            "debug" => String::new(),
            other => format!(" --profile {other}"),
        };
        format!("cargo run{profile} -p mitosis-bench --bin bench{rest}")
    } else {
        format!("{}{}", exe.display(), rest.replacen(" --", "", 1))
    }
}
