//! The pause with many fds in the state:
//!
//! ```text
//! cargo run --release -p mitosis-handover --example fd_pause -- [rounds] [fd counts...]
//! ```
//!
//! Each round prepares an upgrade to a fresh copy of this binary, waits
//! until it is ready, and then times the pause: from `Upgrade::hand_over`
//! to the new process's `Arrival::commit` returning with the state (read
//! with `CLOCK_MONOTONIC`, which compares across processes), and to the old
//! process's `Outcome::Done`. Half of each state's fds are files and half
//! Unix stream sockets, as in the benchmark. The fd counts (default 0 and
//! 10,000) take turns round by round, so that the machine's drift hits them
//! alike; it prints p50 and p90 of each, and each count's extra over the
//! first.

use std::fs::File;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

type State = (Vec<File>, Vec<UnixStream>);

const REPORT_VAR: &str = "FD_PAUSE_REPORT";

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which outlives
    // the call; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// `n` fds: half files, half Unix stream sockets (both ends of pairs).
fn state(n: usize) -> State {
    let pairs = n / 4;
    let mut sockets = Vec::with_capacity(pairs * 2);
    for _ in 0..pairs {
        let (a, b) = UnixStream::pair().expect("socketpair");
        sockets.extend([a, b]);
    }
    let files = (0..n - sockets.len())
        .map(|_| File::open("/proc/self/exe").expect("open"))
        .collect();
    (files, sockets)
}

fn main() {
    if let Some(arrival) = mitosis::arrive::<State>().expect("arrive") {
        let state = arrival.commit().expect("commit");
        let now = monotonic_ns();
        let report = std::env::var_os(REPORT_VAR).expect("the report socket");
        UnixDatagram::unbound()
            .and_then(|socket| socket.send_to(&now.to_le_bytes(), report))
            .expect("report");
        // Keep the state a while, as a real new process would, so that
        // closing it is no part of the next round.
        std::thread::sleep(Duration::from_millis(100));
        drop(state);
        return;
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|arg| arg.parse().expect("a number"))
        .collect();
    let rounds = args.first().copied().unwrap_or(20);
    let counts = match args.get(1..) {
        Some(counts) if !counts.is_empty() => counts.to_vec(),
        _ => vec![0, 10_000],
    };
    let report = std::env::temp_dir().join(format!("fd-pause-{}", std::process::id()));
    let _ = std::fs::remove_file(&report);
    let readings = UnixDatagram::bind(&report).expect("bind the report socket");
    let _remove = Remove(report.clone());
    let mut init: Vec<Vec<u64>> = vec![Vec::new(); counts.len()];
    let mut done: Vec<Vec<u64>> = vec![Vec::new(); counts.len()];
    for _ in 0..rounds {
        for (i, &n) in counts.iter().enumerate() {
            let state = state(n);
            let mut options = mitosis::SplitOptions::new();
            options.env(REPORT_VAR, &report);
            let mut upgrade = options.prepare(&state).expect("prepare");
            assert!(upgrade.wait_ready(Duration::from_secs(30)).expect("ready"));
            std::thread::sleep(Duration::from_millis(20));
            let start = monotonic_ns();
            let outcome = upgrade.hand_over(state).wait();
            let finished = monotonic_ns();
            if let mitosis::Outcome::Failed { error, .. } = outcome {
                panic!("the handover failed: {error}");
            }
            let mut reading = [0u8; 8];
            readings.recv(&mut reading).expect("a reading");
            init[i].push(u64::from_le_bytes(reading) - start);
            done[i].push(finished - start);
            // The old copy is freed, and the new process exits, before the
            // next round.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let percentile = |samples: &[u64], p: usize| {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        ms(sorted[(sorted.len() * p / 100).min(sorted.len() - 1)])
    };
    println!("    fds | commit p50      p90    extra |  Done p50      p90    extra");
    for (i, n) in counts.iter().enumerate() {
        let (init50, done50) = (percentile(&init[i], 50), percentile(&done[i], 50));
        println!(
            "{n:7} | {init50:10.3} {:8.3} {:+8.3} | {done50:9.3} {:8.3} {:+8.3}",
            percentile(&init[i], 90),
            init50 - percentile(&init[0], 50),
            percentile(&done[i], 90),
            done50 - percentile(&done[0], 50),
        );
    }
}

/// Removes the report socket's path on the way out.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
