//! Benchmark: handing over large `#[derive(Handover)]` states, against
//! postcard in memory, in one run.
//!
//! `cargo run --release -p mitosis-examples --bin state-bench [-- ROUNDS]`
//!
//! Two states, each with a Unix socket (`report`, below) besides its data:
//!
//! - **blob**: a 256 MiB `Vec<u8>`;
//! - **map**: a `HashMap<String, Vec<String>>` of 1,000,000 entries
//!   (`"key{i}"` → three short strings).
//!
//! Every round, for each state, the driver (this process, without
//! arguments):
//!
//! 1. times postcard in memory: `to_stdvec` then `from_bytes` of the same
//!    value (through `serde_bytes` for the blob);
//! 2. starts a fresh *old* process (`state-bench old <kind>`), which builds
//!    the state, resets its peak RSS (`5` into `/proc/self/clear_refs`),
//!    reads the clock, and splits into a copy of this binary. The *new*
//!    process reads the clock as soon as `init` returns, reads its own peak
//!    RSS, checks the data, writes all that into `report` (a handed-over
//!    socket whose other end the old process kept), and exits. The old
//!    process reads the clock at `Outcome::Done`, then its peak RSS, then the
//!    report; it reaps the new process, prints one `result` line, and exits.
//!    The driver reads that line and reaps the old process.
//!
//! The clock is `CLOCK_MONOTONIC`, which is system-wide on Linux, so the two
//! processes' readings compare. Each figure is the median over the rounds.

use std::collections::HashMap;
use std::error::Error;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mitosis::{Handover, Outcome, SplitOptions};
use rustix::process::{Pid, WaitOptions, waitpid};
use rustix::time::{ClockId, clock_gettime};

const BLOB_BYTES: usize = 256 << 20;
const MAP_ENTRIES: usize = 1_000_000;
const DEFAULT_ROUNDS: usize = 5;
const MIB: f64 = (1 << 20) as f64;
const GIB: f64 = (1 << 30) as f64;

/// A state the benchmark hands over.
trait BenchState: Handover + Send + 'static {
    const KIND: &'static str;
    /// The value, built the same way in every process.
    fn build(report: UnixStream) -> Self;
    /// Where the new process writes its report.
    fn report(&self) -> &UnixStream;
    /// The heap and inline bytes the data takes, without allocator overhead.
    fn heap_bytes(&self) -> u64;
    /// A checksum of the data, to check the new process got all of it.
    fn check(&self) -> u64;
    /// The bytes of state that cross: the data's postcard encoding (which
    /// the derived encoding matches, byte for byte, for these fields), plus
    /// one byte for the report socket's fd index.
    fn encoded_bytes(&self) -> u64;
}

#[derive(Handover)]
#[handover(name = "state_bench::Blob", version = 1)]
struct Blob {
    blob: Vec<u8>,
    report: UnixStream,
}

#[derive(Handover)]
#[handover(name = "state_bench::Map", version = 1)]
struct Map {
    map: HashMap<String, Vec<String>>,
    report: UnixStream,
}

fn blob_data() -> Vec<u8> {
    // Not zeros: every page is touched and really crosses.
    (0..BLOB_BYTES).map(|i| (i * 7 + 3) as u8).collect()
}

fn map_data() -> HashMap<String, Vec<String>> {
    let mut map = HashMap::with_capacity(MAP_ENTRIES);
    for i in 0..MAP_ENTRIES {
        let values = vec![format!("a{i}"), format!("bb{i}"), format!("ccc{i}")];
        map.insert(format!("key{i}"), values);
    }
    map
}

fn blob_check(blob: &[u8]) -> u64 {
    blob.chunks(8).fold(blob.len() as u64, |sum, chunk| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        sum.rotate_left(5) ^ u64::from_le_bytes(word)
    })
}

fn map_check(map: &HashMap<String, Vec<String>>) -> u64 {
    // Order-independent: a sum over the entries.
    map.iter().fold(map.len() as u64, |sum, (key, values)| {
        let lens = values.iter().map(|v| v.len() as u64 * 31).sum::<u64>();
        sum.wrapping_add(fnv(key.as_bytes()) ^ lens)
    })
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn map_heap_bytes(map: &HashMap<String, Vec<String>>) -> u64 {
    use std::mem::size_of;
    // The table: one (String, Vec<String>) and one control byte per bucket;
    // hashbrown keeps at most 7/8 of its buckets full.
    let buckets = (map.capacity() * 8 / 7).next_power_of_two();
    let table = buckets * (size_of::<(String, Vec<String>)>() + 1);
    let entries: usize = map
        .iter()
        .map(|(key, values)| {
            key.capacity()
                + values.capacity() * size_of::<String>()
                + values.iter().map(String::capacity).sum::<usize>()
        })
        .sum();
    (table + entries) as u64
}

impl BenchState for Blob {
    const KIND: &'static str = "blob";
    fn build(report: UnixStream) -> Self {
        Blob {
            blob: blob_data(),
            report,
        }
    }
    fn report(&self) -> &UnixStream {
        &self.report
    }
    fn heap_bytes(&self) -> u64 {
        self.blob.capacity() as u64
    }
    fn check(&self) -> u64 {
        blob_check(&self.blob)
    }
    fn encoded_bytes(&self) -> u64 {
        postcard_len(&serde_bytes::Bytes::new(&self.blob)) + 1
    }
}

impl BenchState for Map {
    const KIND: &'static str = "map";
    fn build(report: UnixStream) -> Self {
        Map {
            map: map_data(),
            report,
        }
    }
    fn report(&self) -> &UnixStream {
        &self.report
    }
    fn heap_bytes(&self) -> u64 {
        map_heap_bytes(&self.map)
    }
    fn check(&self) -> u64 {
        map_check(&self.map)
    }
    fn encoded_bytes(&self) -> u64 {
        postcard_len(&self.map) + 1
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    // Which process this is comes from the arguments (without the
    // `--mitosis` flag), because `init` needs the state type.
    let args: Vec<String> = mitosis::args()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["old", "blob"] => generation::<Blob>(),
        ["old", "map"] => generation::<Map>(),
        [] => driver(DEFAULT_ROUNDS),
        [rounds] => driver(rounds.parse()?),
        _ => Err("usage: state-bench [ROUNDS]".into()),
    }
}

/// One generation: the new process if `init` hands it a state, the old one
/// otherwise.
fn generation<S: BenchState>() -> Result<(), Box<dyn Error>> {
    match mitosis::init::<S>()? {
        Some(state) => new_process(state),
        None => old_process::<S>(),
    }
}

/// The new process: the clock first, then the peak memory, then the check.
fn new_process<S: BenchState>(state: S) -> Result<(), Box<dyn Error>> {
    let init_ns = monotonic_ns();
    let hwm = proc_status_bytes("VmHWM")?;
    let check = state.check();
    let mut report = state.report();
    writeln!(report, "init_ns={init_ns} hwm={hwm} check={check}")?;
    // Exit without dropping the state: its teardown is not measured.
    std::process::exit(0);
}

/// What an old process prints for the driver, one `key=value` per field.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    /// `split()` to `Outcome::Done`, in the old process.
    done_ns: u64,
    /// `split()` to `init` returning, in the new process.
    init_ns: u64,
    /// Bytes of state that crossed (postcard plus fd indices).
    encoded: u64,
    /// The data's heap bytes.
    heap: u64,
    /// How much the old process's RSS grew while building the state.
    rss_growth: u64,
    /// The old process's peak RSS during the handover, minus its RSS
    /// before.
    old_extra: u64,
    /// The new process's peak RSS at the end of `init`.
    new_hwm: u64,
}

fn old_process<S: BenchState>() -> Result<(), Box<dyn Error>> {
    let rss_start = proc_status_bytes("VmRSS")?;
    let (mut report, report_end) = UnixStream::pair()?;
    let state = S::build(report_end);
    let heap = state.heap_bytes();
    let check = state.check();
    let encoded = state.encoded_bytes();

    let rss_before = proc_status_bytes("VmRSS")?;
    // Resets VmHWM to the current RSS: the peak read after Done is the
    // handover's.
    std::fs::write("/proc/self/clear_refs", "5")?;
    let mut options = SplitOptions::new();
    options.commit_timeout(Duration::from_secs(120));
    let start_ns = monotonic_ns();
    let split = options.split(state).map_err(|refused| refused.error)?;
    let child = split.pid();
    let outcome = split.wait();
    let done_ns = monotonic_ns();
    let hwm = proc_status_bytes("VmHWM")?;
    if let Outcome::Failed { error, .. } = outcome {
        return Err(format!("the {} handover failed: {error}", S::KIND).into());
    }

    // The new process writes its report and exits; both ends of `report`
    // are closed then (ours went with the state at Done).
    let mut text = String::new();
    report.read_to_string(&mut text)?;
    let field = |key: &str| -> Result<u64, Box<dyn Error>> {
        let value = text
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| format!("no {key}= in the new process's report {text:?}"))?;
        Ok(value.parse()?)
    };
    if field("check")? != check {
        return Err(format!("the new process's {} differs from the old one's", S::KIND).into());
    }
    let init_ns = field("init_ns")?;
    let new_hwm = field("hwm")?;
    reap(child)?;

    let sample = Sample {
        done_ns: done_ns - start_ns,
        init_ns: init_ns - start_ns,
        encoded,
        heap,
        rss_growth: rss_before.saturating_sub(rss_start),
        old_extra: hwm.saturating_sub(rss_before),
        new_hwm,
    };
    println!(
        "result done_ns={} init_ns={} encoded={} heap={} rss_growth={} old_extra={} new_hwm={}",
        sample.done_ns,
        sample.init_ns,
        sample.encoded,
        sample.heap,
        sample.rss_growth,
        sample.old_extra,
        sample.new_hwm
    );
    Ok(())
}

/// A writer that only counts.
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `value`'s postcard encoding, without keeping it.
fn postcard_len(value: &impl serde::Serialize) -> u64 {
    postcard::to_io(value, Count(0)).map_or(0, |count| count.0)
}

fn reap(pid: u32) -> Result<(), Box<dyn Error>> {
    let pid = Pid::from_raw(pid as i32).ok_or("bad pid")?;
    waitpid(Some(pid), WaitOptions::empty())?;
    Ok(())
}

fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn proc_status_bytes(key: &str) -> Result<u64, Box<dyn Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no {key} in /proc/self/status"))?;
    Ok(kib * 1024)
}

// ---------------------------------------------------------------------------
// The driver

/// postcard in memory: encode and decode times.
#[derive(Debug, Clone, Copy)]
struct Codec {
    encode: Duration,
    decode: Duration,
}

fn codec_blob(blob: &[u8]) -> Result<Codec, Box<dyn Error>> {
    let start = Instant::now();
    let bytes = postcard::to_stdvec(&serde_bytes::Bytes::new(blob))?;
    let encode = start.elapsed();
    let start = Instant::now();
    let back: serde_bytes::ByteBuf = postcard::from_bytes(&bytes)?;
    let decode = start.elapsed();
    if back.len() != blob.len() {
        return Err("postcard lost bytes".into());
    }
    Ok(Codec { encode, decode })
}

fn codec_map(map: &HashMap<String, Vec<String>>) -> Result<Codec, Box<dyn Error>> {
    let start = Instant::now();
    let bytes = postcard::to_stdvec(map)?;
    let encode = start.elapsed();
    let start = Instant::now();
    let back: HashMap<String, Vec<String>> = postcard::from_bytes(&bytes)?;
    let decode = start.elapsed();
    if back.len() != map.len() {
        return Err("postcard lost entries".into());
    }
    Ok(Codec { encode, decode })
}

/// Runs one old process for `kind` and returns its sample, after reaping it.
fn handover(kind: &str) -> Result<Sample, Box<dyn Error>> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["old", kind])
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut stdout = String::new();
    // EOF once the old process and its successor have both exited.
    child
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut stdout)?;
    let status = waitpid(
        Some(Pid::from_raw(pid as i32).ok_or("bad pid")?),
        WaitOptions::empty(),
    )?;
    let exited_ok = status.is_some_and(|(_, status)| status.exit_status() == Some(0));
    let line = stdout
        .lines()
        .find(|line| line.starts_with("result "))
        .filter(|_| exited_ok)
        .ok_or_else(|| format!("the {kind} old process failed: {stdout:?}"))?;
    let field = |key: &str| -> Result<u64, Box<dyn Error>> {
        let value = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| format!("no {key}= in {line:?}"))?;
        Ok(value.parse()?)
    };
    Ok(Sample {
        done_ns: field("done_ns")?,
        init_ns: field("init_ns")?,
        encoded: field("encoded")?,
        heap: field("heap")?,
        rss_growth: field("rss_growth")?,
        old_extra: field("old_extra")?,
        new_hwm: field("new_hwm")?,
    })
}

fn driver(rounds: usize) -> Result<(), Box<dyn Error>> {
    if rounds == 0 {
        return Err("at least one round".into());
    }
    eprintln!("building the values…");
    let blob = blob_data();
    let map = map_data();
    let mut blob_codec = Vec::new();
    let mut map_codec = Vec::new();
    let mut blob_samples = Vec::new();
    let mut map_samples = Vec::new();
    // Interleaved, so that every measurement sees the same machine noise.
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}");
        blob_codec.push(codec_blob(&blob)?);
        blob_samples.push(handover("blob")?);
        map_codec.push(codec_map(&map)?);
        map_samples.push(handover("map")?);
    }
    drop((blob, map));

    let blob = Summary::of(&blob_samples, &blob_codec);
    let map = Summary::of(&map_samples, &map_codec);
    print_table(rounds, &blob, &map);
    Ok(())
}

/// Medians of one state's measurements.
struct Summary {
    done: f64,
    init: f64,
    encode: f64,
    decode: f64,
    codec: f64,
    encoded: u64,
    heap: u64,
    rss_growth: f64,
    old_extra: f64,
    new_hwm: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

impl Summary {
    fn of(samples: &[Sample], codec: &[Codec]) -> Summary {
        let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let c = |f: &dyn Fn(&Codec) -> f64| median(codec.iter().map(f).collect());
        Summary {
            done: m(&|s| s.done_ns as f64 / 1e9),
            init: m(&|s| s.init_ns as f64 / 1e9),
            encode: c(&|c| c.encode.as_secs_f64()),
            decode: c(&|c| c.decode.as_secs_f64()),
            codec: c(&|c| (c.encode + c.decode).as_secs_f64()),
            encoded: samples[0].encoded,
            heap: samples[0].heap,
            rss_growth: m(&|s| s.rss_growth as f64),
            old_extra: m(&|s| s.old_extra as f64),
            new_hwm: m(&|s| s.new_hwm as f64),
        }
    }
}

fn print_table(rounds: usize, blob: &Summary, map: &Summary) {
    let ms = |s: f64| format!("{:.1} ms", s * 1e3);
    let mib = |b: f64| format!("{:.1} MiB", b / MIB);
    let gibs = |bytes: f64, s: f64| format!("{:.2} GiB/s", bytes / GIB / s);
    let times = |x: f64| format!("{x:.2}×");
    let row = |label: &str, b: String, m: String| println!("{label:<36} {b:>22} {m:>22}");

    println!(
        "state-bench: {rounds} rounds, each a fresh old process; every row is the median of its \
         own {rounds} values"
    );
    println!();
    row("", "blob 256 MiB".into(), "map 1M entries".into());
    row(
        "state in memory (heap bytes)",
        mib(blob.heap as f64),
        mib(map.heap as f64),
    );
    row(
        "  (old RSS growth while building)",
        mib(blob.rss_growth),
        mib(map.rss_growth),
    );
    row(
        "encoded state (what crosses)",
        mib(blob.encoded as f64),
        mib(map.encoded as f64),
    );
    row("split → Done (old process)", ms(blob.done), ms(map.done));
    row(
        "split → init returns (new process)",
        ms(blob.init),
        ms(map.init),
    );
    row(
        "throughput, encoded / split→Done",
        gibs(blob.encoded as f64, blob.done),
        gibs(map.encoded as f64, map.done),
    );
    row(
        "throughput, in memory / split→Done",
        gibs(blob.heap as f64, blob.done),
        gibs(map.heap as f64, map.done),
    );
    row(
        "postcard in memory: encode",
        ms(blob.encode),
        ms(map.encode),
    );
    row(
        "postcard in memory: decode",
        ms(blob.decode),
        ms(map.decode),
    );
    row(
        "postcard in memory: encode+decode",
        ms(blob.codec),
        ms(map.codec),
    );
    row(
        "split→Done / (encode+decode)",
        times(blob.done / blob.codec),
        times(map.done / map.codec),
    );
    row(
        "split→init / (encode+decode)",
        times(blob.init / blob.codec),
        times(map.init / map.codec),
    );
    row(
        "old process: peak extra RSS",
        mib(blob.old_extra),
        mib(map.old_extra),
    );
    row(
        "  × state in memory",
        times(blob.old_extra / blob.heap as f64),
        times(map.old_extra / map.heap as f64),
    );
    row(
        "new process: peak RSS (VmHWM at init)",
        mib(blob.new_hwm),
        mib(map.new_hwm),
    );
    row(
        "  × state in memory",
        times(blob.new_hwm / blob.heap as f64),
        times(map.new_hwm / map.heap as f64),
    );

    println!();
    println!("targets:");
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let blob_rate = BLOB_BYTES as f64 / GIB / blob.done;
    println!(
        "  blob handover ≥ 1 GiB/s:                      {} ({blob_rate:.2} GiB/s)",
        verdict(blob_rate >= 1.0)
    );
    let map_ratio = map.done / map.codec;
    println!(
        "  map handover ≤ 1.25× postcard encode+decode:  {} ({map_ratio:.2}×, split→Done)",
        verdict(map_ratio <= 1.25)
    );
    for (name, summary) in [("blob", blob), ("map", map)] {
        let ratio = summary.old_extra / summary.heap as f64;
        println!(
            "  old process peak extra ≤ 1.1× state ({name}):{}{} ({ratio:.3}×)",
            " ".repeat(5 - name.len()),
            verdict(ratio <= 1.1)
        );
    }
}
