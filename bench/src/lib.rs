//! What the two benchmark binaries share: the clock, the small state's
//! shape, and how samples are summarised.
//!
//! - `bench` is the harness. It measures the exec floor and mitosis
//!   handovers itself (its own copies are the new processes), drives
//!   `shellflip-bench` for the shellflip comparison, and writes the report.
//! - `shellflip-bench` does the same small handover with shellflip 2.1.3, so
//!   that tokio and shellflip stay out of the `bench` binary (and out of
//!   everything that depends on mitosis).
//!
//! Both take their timestamps from [`monotonic_ns`], `CLOCK_MONOTONIC`, which
//! is system-wide on Linux: a reading in one process compares with a reading
//! in another.
//!
//! The two parsers, [`thp_mode`] and [`vm_hwm_bytes`], live here rather than
//! in `bench` so that their doctests run with `cargo test`.

use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};

/// The plain data in the small state: 1 KiB.
pub const SMALL_BLOB_BYTES: usize = 1024;

/// `CLOCK_MONOTONIC`, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let now = clock_gettime(ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// `len` bytes that are not all alike, so that every page is written and
/// really crosses.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(7) + 3) as u8).collect()
}

/// A cheap checksum of a byte buffer, to check that the new process got
/// exactly what the old one had.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    let mut sum = bytes.len() as u64;
    for word in &mut words {
        let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
        sum = sum.rotate_left(5) ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    for &byte in words.remainder() {
        sum = sum.rotate_left(5) ^ u64::from(byte);
    }
    sum
}

/// The median and the 99th percentile of a set of durations, by nearest
/// rank: each is one of the samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// How many samples.
    pub n: usize,
    /// The median (the lower middle sample when `n` is even).
    pub p50: Duration,
    /// The 99th percentile: the largest sample when `n` < 100.
    pub p99: Duration,
}

impl Stats {
    /// Summarises samples in nanoseconds; `None` when there are none.
    ///
    /// ```
    /// let stats = mitosis_bench::Stats::of(&[3, 1, 2]).unwrap();
    /// assert_eq!(stats.p50.as_nanos(), 2);
    /// assert_eq!(stats.p99.as_nanos(), 3);
    /// ```
    pub fn of(samples_ns: &[u64]) -> Option<Stats> {
        if samples_ns.is_empty() {
            return None;
        }
        let mut sorted = samples_ns.to_vec();
        sorted.sort_unstable();
        let rank = |q: f64| {
            let at = (q * sorted.len() as f64).ceil() as usize;
            Duration::from_nanos(sorted[at.clamp(1, sorted.len()) - 1])
        };
        Some(Stats {
            n: sorted.len(),
            p50: rank(0.50),
            p99: rank(0.99),
        })
    }
}

/// Formats a duration in milliseconds, with three significant decimals
/// below 10 ms.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(mitosis_bench::ms(Duration::from_micros(1_234)), "1.234 ms");
/// assert_eq!(mitosis_bench::ms(Duration::from_micros(123_456)), "123.5 ms");
/// ```
pub fn ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.3} ms")
    } else if ms < 100.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// Formats a byte count with a binary unit: `1 KiB`, `256 MiB`.
///
/// ```
/// assert_eq!(mitosis_bench::bytes(0), "0 B");
/// assert_eq!(mitosis_bench::bytes(64 << 10), "64 KiB");
/// assert_eq!(mitosis_bench::bytes(38_500_000), "36.7 MiB");
/// ```
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The setting in force in one of the kernel's transparent huge page files
/// (`/sys/kernel/mm/transparent_hugepage/enabled` or `defrag`): the word in
/// brackets.
///
/// ```
/// assert_eq!(mitosis_bench::thp_mode("always [madvise] never\n"), Some("madvise"));
/// assert_eq!(
///     mitosis_bench::thp_mode("always defer defer+madvise [madvise] never"),
///     Some("madvise")
/// );
/// assert_eq!(mitosis_bench::thp_mode("always madvise never"), None);
/// ```
pub fn thp_mode(text: &str) -> Option<&str> {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'))
}

/// A process's peak resident set size, `VmHWM`, from the text of its
/// `/proc/<pid>/status`, in bytes (the kernel counts in KiB).
///
/// ```
/// let status = "Name:\tbench\nVmPeak:\t  300000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
/// assert_eq!(mitosis_bench::vm_hwm_bytes(status), Some(2048 * 1024));
/// assert_eq!(mitosis_bench::vm_hwm_bytes("Name:\tbench\n"), None);
/// ```
pub fn vm_hwm_bytes(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib * 1024)
}

/// This process's peak resident set size so far, in bytes: [`vm_hwm_bytes`]
/// of `/proc/self/status`.
pub fn own_vm_hwm() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    vm_hwm_bytes(&status).ok_or_else(|| std::io::Error::other("no VmHWM in /proc/self/status"))
}
