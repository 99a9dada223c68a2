//! Benchmark: a whole handover against the exec floor, in one run.
//!
//! `cargo run --release -p mitosis-examples --bin handover-bench [-- ROUNDS]`
//!
//! - **floor**: spawn this same binary until it connects back over loopback,
//!   with no handover: the least any re-exec upgrade can cost.
//! - **handover**: `mitosis::split` of 1 KiB of state plus 3 fds (a
//!   listener, a connected stream, a file) until `Outcome::Done`.
//!
//! The two alternate round by round, so both see the same machine noise.
//! Each spawned process exits as soon as it has connected or taken over.

use std::error::Error;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use mitosis::{Decoder, Encoder, Handover, Outcome, Schema, SplitOptions};

struct State {
    blob: Vec<u8>,
    listener: TcpListener,
    stream: TcpStream,
    file: File,
}

impl Handover for State {
    const SCHEMA: Schema = Schema::new("bench::State", 1);

    fn encode<'a>(&'a self, out: &mut Encoder<'a>) -> Result<(), mitosis::Error> {
        out.bytes(&self.blob)?;
        self.listener.encode(out)?;
        self.stream.encode(out)?;
        self.file.encode(out)
    }

    fn decode(input: &mut Decoder<'_>) -> Result<Self, mitosis::Error> {
        Ok(State {
            blob: input.bytes()?,
            listener: TcpListener::decode(input)?,
            stream: TcpStream::decode(input)?,
            file: File::decode(input)?,
        })
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    if let Some(state) = mitosis::init::<State>()? {
        // A taken-over child: the handover is what was measured.
        assert_eq!(state.blob.len(), 1024);
        return Ok(());
    }
    let args: Vec<String> = mitosis::args()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if let [mode, port] = args.as_slice()
        && mode == "floor"
    {
        TcpStream::connect(("127.0.0.1", port.parse::<u16>()?))?;
        return Ok(());
    }
    let rounds: usize = args.first().map(|n| n.parse()).transpose()?.unwrap_or(300);
    let exe = std::env::current_exe()?;

    let mut floor = Vec::with_capacity(rounds);
    let mut handover = Vec::with_capacity(rounds);
    let peer = TcpListener::bind("127.0.0.1:0")?;
    for _ in 0..rounds {
        floor.push(spawn_until_connected(&exe)?);
        handover.push(split_until_done(&peer)?);
    }

    let floor = Summary::of(&mut floor);
    let handover = Summary::of(&mut handover);
    println!("{rounds} rounds, same binary, same run");
    println!("{:<28} {:>9} {:>9} {:>9}", "", "p50", "p99", "mean");
    println!("{:<28} {floor}", "exec floor (spawn→connect)");
    println!("{:<28} {handover}", "split→Done, 1 KiB + 3 fds");
    println!(
        "ratio p50: {:.2}× the floor (target ≤ 2×)",
        handover.p50.as_secs_f64() / floor.p50.as_secs_f64()
    );
    Ok(())
}

/// Spawns this binary in floor mode and times it until it connects back.
fn spawn_until_connected(exe: &std::path::Path) -> Result<Duration, Box<dyn Error>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port().to_string();
    let start = Instant::now();
    let mut child = Command::new(exe).args(["floor", &port]).spawn()?;
    let _conn = listener.accept()?;
    let took = start.elapsed();
    child.wait()?;
    Ok(took)
}

/// Hands a fresh 1 KiB + 3 fd state to a new copy of this binary and times
/// it until `Done`.
fn split_until_done(peer: &TcpListener) -> Result<Duration, Box<dyn Error>> {
    let state = State {
        blob: vec![7; 1024],
        listener: TcpListener::bind("127.0.0.1:0")?,
        stream: TcpStream::connect(peer.local_addr()?)?,
        file: File::open("/proc/self/exe")?,
    };
    let (_accepted, _) = peer.accept()?;
    let start = Instant::now();
    let handle = SplitOptions::new().split(state).map_err(|e| e.error)?;
    let pid = handle.pid();
    let outcome = handle.wait();
    let took = start.elapsed();
    if let Outcome::Failed { error, .. } = outcome {
        return Err(error.into());
    }
    // The new process is our child; reap it so no zombie piles up.
    let pid = rustix::process::Pid::from_raw(pid as i32).ok_or("bad pid")?;
    rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty())?;
    Ok(took)
}

struct Summary {
    p50: Duration,
    p99: Duration,
    mean: Duration,
}

impl Summary {
    fn of(samples: &mut [Duration]) -> Summary {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Summary {
            p50: at(0.50),
            p99: at(0.99),
            mean: samples.iter().sum::<Duration>() / samples.len() as u32,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
        write!(
            f,
            "{:>9} {:>9} {:>9}",
            ms(self.p50),
            ms(self.p99),
            ms(self.mean)
        )
    }
}
