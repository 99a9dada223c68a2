//! The mitosis benchmark harness.
//!
//! `cargo run --release -p mitosis-bench --bin bench -- [--rounds N] [--quick] [--out docs/] [--thp never]`
//!
//! `-- --only tcp --only tls` runs the two connection cases alone, and
//! `-- --only small --only tokio` the small state against its tokio twin.
//!
//! In one run, with the cases' rounds interleaved so that machine noise
//! spreads evenly over them, it measures:
//!
//! - the **pause**, the headline figure: how long a program that prepared
//!   its upgrade stops serving. The old side calls `mitosis::prepare`, waits
//!   with `Upgrade::wait_ready` until the new process is ready (it serves
//!   meanwhile in a real program), then reads `CLOCK_MONOTONIC` and calls
//!   `Upgrade::hand_over`; the new process reads the clock as soon as
//!   `mitosis::init` returns and reports its reading over a Unix stream
//!   socket. The pause is the difference. `hand_over` → `Done` (the old
//!   side's own view) and `prepare` → ready are kept too;
//! - the **exec floor**: spawning this binary until it connects back over
//!   loopback TCP, with no handover (and the same for `shellflip-bench`);
//! - **mitosis handovers** of a small state (1 KiB + 3 fds), of `Vec<u8>`
//!   states from 0 B to 256 MiB, of a 1,000,000-entry
//!   `HashMap<String, Vec<String>>` (with postcard encode+decode of the same
//!   value in memory, in the same round), and of 0 to 10,000 fds. Every
//!   round of each runs two handovers, in an order that alternates from
//!   round to round: one prepared (the pause), and one with `split`, timed
//!   from `split()` to `Outcome::Done` here and to `init()` returning in the
//!   new process;
//! - **a tokio state**: the small state's shape (1 KiB, a listener, a
//!   connected stream and a file) with tokio's `TcpListener` and
//!   `TcpStream`, handed over from inside a multi-thread tokio runtime
//!   (`upgrade.ready().await`, `upgrade.hand_over(state).await`) and
//!   decoded by a new process inside one (`mitosis::init` in a runtime built
//!   as `#[tokio::main]` builds it), side by side with the small case in the
//!   same rounds, and the ratio of their pauses. The new process accepts a
//!   connection on the listener it took and makes a one-byte round trip on
//!   the stream (after its clock reading) before it reports;
//! - **one connection**: handovers of a state that is one connected
//!   `TcpStream`, and of one that is one `TlsStream<TcpStream>` (TLS 1.3,
//!   to a peer in this process), side by side in the same rounds, and the
//!   ratio of their pauses. The peer stays connected, and each new process
//!   makes a one-byte round trip over the connection it took (after its
//!   clock reading) before it reports, so every figure is of a connection
//!   that still works;
//! - the **memory floor**: in this process, a fresh 256 MiB `Vec<u8>` and
//!   a copy of the same bytes into it, which is what any receiver of
//!   256 MiB pays at least (the page faults and the copy);
//! - the **peak memory** of the 256 MiB handover: `VmHWM` from
//!   `/proc/<pid>/status`, which the new process reads for itself after
//!   `init`. The old side of that case runs in a process of its own (this
//!   binary's hidden `old` command), which builds the state, hands it over
//!   and reads its own `VmHWM`, so that nothing else the harness holds (the
//!   map, the memory floor's buffers) counts;
//! - **shellflip 2.1.3** restarting `shellflip-bench` with the small state,
//!   from asking for the restart to the new process being ready, as the old
//!   process sees it.
//!
//! The transparent huge page settings
//! (`/sys/kernel/mm/transparent_hugepage/enabled` and `defrag`) change the
//! cost of faulting 256 MiB in, so bench.md records them. For the THP-off
//! variant, either switch THP off by hand as root
//! (`echo never > /sys/kernel/mm/transparent_hugepage/enabled`, and put the
//! previous word back afterwards), or pass `--thp never` to a run as root:
//! the harness switches it, and puts the previous setting back when the run
//! ends, fails or panics (not when it is killed by a signal; it prints the
//! command that restores it).
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
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use mitosis::tls::{TlsStream, rustls};
use mitosis::{Handover, Outcome, SplitOptions};
use mitosis_bench::{SMALL_BLOB_BYTES, checksum, monotonic_ns, own_vm_hwm, pattern, thp_mode};
use rustix::net::sockopt;
use rustix::process::{Pid, Resource, Rlimit, WaitOptions, getrlimit, setrlimit, waitpid};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// `Vec<u8>` state sizes the harness hands over itself, smallest first.
/// The large one ([`Job::Large`]) is apart: its old side runs in a process
/// of its own.
const BLOB_SIZES: [usize; 5] = [0, 1 << 10, 64 << 10, 1 << 20, 16 << 20];
/// The large `Vec<u8>` and the memory floor, unless `--large-bytes` says
/// otherwise.
const LARGE_BYTES: usize = 256 << 20;
/// fd counts, smallest first.
const FD_COUNTS: [usize; 6] = [0, 1, 16, 256, 1024, 10_000];
/// Entries in the map case.
const MAP_ENTRIES: usize = 1_000_000;
/// fds this process and its new processes need besides the state's.
const FD_MARGIN: u64 = 256;
/// Generous, for both the start and the transfer: a 256 MiB or 1M-entry
/// handover on a busy machine must not fail the run.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Where the kernel keeps the transparent huge page settings.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
const THP_DEFRAG: &str = "/sys/kernel/mm/transparent_hugepage/defrag";

/// The mitosis benchmark harness: the pause, the exec floor, handover
/// latency against state size and fd count, the memory floor, peak memory,
/// and shellflip, in one run.
#[derive(Parser, Debug)]
#[command(name = "bench", version, about)]
struct Cli {
    /// Rounds of each small case (up to 16 MiB, up to 10,000 fds, the
    /// floors and shellflip) [default: 200, or 15 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Rounds of the 256 MiB, memory floor and 1M-entry map cases [default:
    /// max(10, rounds / 20), or 3 with --quick].
    #[arg(long)]
    large_rounds: Option<usize>,
    /// A quick look while developing: fewer rounds, too few for stable
    /// figures.
    #[arg(long)]
    quick: bool,
    /// Run only these cases (for profiling and smoke tests): floor,
    /// floor-fds-10000, shellflip-floor, shellflip, small, tokio, tcp, tls,
    /// blob-BYTES, large, memory-floor, map, fds-N. Repeatable: `--only tcp
    /// --only tls` is the TLS comparison alone, `--only small --only tokio`
    /// the tokio one.
    #[arg(long, value_name = "CASE")]
    only: Vec<String>,
    /// The size of the large `Vec<u8>` case and of the memory floor. The
    /// targets are about the default; smaller sizes are for smoke tests.
    #[arg(long, value_name = "BYTES", default_value_t = LARGE_BYTES)]
    large_bytes: usize,
    /// Switch transparent huge pages (the kernel's `enabled` setting) to
    /// this for the run, and back afterwards; needs root. Without it, the
    /// run keeps the system's setting. Either way bench.md records it.
    #[arg(long, value_name = "MODE")]
    thp: Option<ThpMode>,
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
    /// The new process of the tokio case's handover, which decodes its
    /// state inside a multi-thread tokio runtime: report to this abstract
    /// socket.
    #[command(hide = true)]
    TokioChild { report: String, seq: u64 },
    /// The old side of one large handover, in a process of its own so that
    /// its peak memory is its own: build a `Vec<u8>` of BYTES, hand it over
    /// to a `child <report> <seq>`, and print the clock readings, the
    /// state's check and this process's VmHWM on stdout.
    #[command(hide = true)]
    Old {
        bytes: usize,
        via: Via,
        report: String,
        seq: u64,
    },
}

/// How the old side hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    /// `split()`: start the new process and hand over as soon as it is
    /// ready, in one call.
    Split,
    /// `prepare()`, `wait_ready()`, then `hand_over()`: the pause alone.
    Prepared,
}

impl Via {
    /// Both, in an order that alternates from round to round, so that
    /// neither always runs in the other's wake (its freed memory, its
    /// reaped process).
    fn both(round: usize) -> [Via; 2] {
        if round % 2 == 0 {
            [Via::Split, Via::Prepared]
        } else {
            [Via::Prepared, Via::Split]
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Split => "split",
            Via::Prepared => "prepared",
        })
    }
}

/// The values of THP's `enabled` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ThpMode {
    Always,
    Madvise,
    Never,
}

impl fmt::Display for ThpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThpMode::Always => "always",
            ThpMode::Madvise => "madvise",
            ThpMode::Never => "never",
        })
    }
}

/// Everything a handover can carry: one variant per kind of case.
// The TLS stream inline, as a program's own state would hold it: a box
// would add an allocation and a pointer to that case alone.
#[expect(clippy::large_enum_variant)]
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
    /// One connected TCP stream, whose peer is the harness.
    Tcp { stream: TcpStream },
    /// One TLS 1.3 client connection, whose server is the harness.
    Tls { stream: TlsStream<TcpStream> },
}

impl Case {
    /// What the new process must find, computed the same way on both sides.
    fn check(&self) -> u64 {
        match self {
            Case::Small { blob, .. } => checksum(blob),
            Case::Blob { data } => checksum(data),
            Case::Map { map } => map_check(map),
            Case::Fds { files, sockets } => ((files.len() as u64) << 32) | sockets.len() as u64,
            // A connection is checked by using it: see `take_over`.
            Case::Tcp { .. } | Case::Tls { .. } => u64::from(PONG),
        }
    }

    /// The new process's check: a connection's one-byte round trip with
    /// its peer (which proves that the connection, and for TLS the
    /// session, crossed whole), or [`check`](Self::check) for the rest.
    fn take_over(&mut self) -> std::io::Result<u64> {
        match self {
            Case::Tcp { stream } => ping(stream).map(u64::from),
            Case::Tls { stream } => ping(stream).map(u64::from),
            other => Ok(other.check()),
        }
    }
}

/// The small state's shape with tokio's types: 1 KiB, a listener, a stream
/// connected to the harness, and the same file. The fds are of the same
/// kinds as [`Case::Small`]'s, so that the two differ only in the types
/// around them. The file stays a `std::fs::File`: tokio's `fs::File` does
/// not cross (mitosis's `tokio` feature covers its sockets and buffered
/// streams), and a tokio program holds a file as std's.
///
/// A type of its own rather than a variant of [`Case`], so that the new
/// process knows before `init` that it decodes inside a runtime, and so
/// that `Case`'s schema figures stay those of the state type they were.
#[derive(Handover)]
#[handover(name = "mitosis_bench::TokioSmall", version = 1)]
struct TokioSmall {
    blob: Vec<u8>,
    listener: tokio::net::TcpListener,
    stream: tokio::net::TcpStream,
    file: File,
}

/// [`TokioSmall`]'s parts before they are tokio's: made with std outside
/// the runtime, turned into tokio's inside it.
struct SmallParts {
    blob: Vec<u8>,
    listener: TcpListener,
    stream: TcpStream,
    file: File,
}

impl SmallParts {
    /// Registers the sockets with the current runtime's reactor, as a
    /// tokio program's own sockets are.
    fn into_tokio(self) -> std::io::Result<TokioSmall> {
        self.listener.set_nonblocking(true)?;
        self.stream.set_nonblocking(true)?;
        Ok(TokioSmall {
            blob: self.blob,
            listener: tokio::net::TcpListener::from_std(self.listener)?,
            stream: tokio::net::TcpStream::from_std(self.stream)?,
            file: self.file,
        })
    }
}

impl TokioSmall {
    /// The new process's check, in its runtime: a connection accepted on
    /// the listener (the harness connects once the handover is done), a
    /// one-byte round trip on the stream, the file still open, and the
    /// blob's checksum.
    async fn take_over(&mut self) -> std::io::Result<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (_accepted, _) = self.listener.accept().await?;
        self.stream.write_all(&[PING]).await?;
        let mut answer = [0];
        self.stream.read_exact(&mut answer).await?;
        if answer[0] != PONG {
            return Err(std::io::Error::other(format!(
                "the peer answered {:?}",
                answer[0]
            )));
        }
        self.file.metadata()?;
        Ok(checksum(&self.blob))
    }
}

/// What a connection's owner sends its peer, and what the peer answers.
const PING: u8 = b'?';
const PONG: u8 = b'!';

/// One round trip from a connection's owner: sends [`PING`], returns what
/// came back.
fn ping(stream: &mut (impl Read + Write)) -> std::io::Result<u8> {
    stream.write_all(&[PING])?;
    stream.flush()?;
    let mut answer = [0];
    stream.read_exact(&mut answer)?;
    Ok(answer[0])
}

/// [`ping`] and [`pong`] with both ends in this thread: a connection
/// mid-conversation before it crosses, as a served one is.
fn converse(stream: &mut (impl Read + Write), peer: &mut dyn Peer) -> Result<()> {
    stream.write_all(&[PING])?;
    stream.flush()?;
    pong(peer)?;
    let mut answer = [0];
    stream.read_exact(&mut answer)?;
    if answer[0] != PONG {
        return Err(format!("the peer answered {:?} before the handover", answer[0]).into());
    }
    Ok(())
}

/// The peer's side of [`ping`].
fn pong(peer: &mut dyn Peer) -> Result<()> {
    let mut asked = [0];
    peer.read_exact(&mut asked)?;
    if asked[0] != PING {
        return Err(format!("the peer read {:?}, not a ping", asked[0]).into());
    }
    peer.write_all(&[PONG])?;
    peer.flush()?;
    Ok(())
}

/// The harness's end of a handed-over connection.
trait Peer: Read + Write {}

impl<T: Read + Write> Peer for T {}

fn main() -> ExitCode {
    // The tokio case's new process decodes inside its runtime, which it
    // builds before `init`, as `#[tokio::main]` does.
    if mitosis::args()
        .nth(1)
        .is_some_and(|command| command == "tokio-child")
    {
        return tokio_new_process();
    }
    // Before `init`: the TLS case's new process rebuilds the session's
    // cipher with the process-default provider. A handful of allocations,
    // and the new process is started and waiting before any pause begins.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let result = match &cli.internal {
        Some(Internal::Floor { .. }) => Err("`floor` takes a port".into()),
        Some(Internal::Child { .. } | Internal::TokioChild { .. }) => {
            Err("`child` is for handed-over processes, which mitosis starts".into())
        }
        Some(Internal::Old {
            bytes,
            via,
            report,
            seq,
        }) => old_process(*bytes, *via, report, *seq),
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

/// A handover's new process: the clock first, then the check (for a
/// connection, a round trip with its peer) and its own peak memory, then
/// the report. Then it keeps the state, as a real new process would, until
/// the harness has timed the old side's `Done` and hangs up; so the old
/// side never closes the last copy of a handed-over fd within the clock.
fn new_process(mut state: Case) -> ExitCode {
    let init_ns = monotonic_ns();
    let check = match state.take_over() {
        Ok(check) => check,
        Err(error) => {
            eprintln!("bench (new process): the handed-over connection failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = report_to_harness(init_ns, check);
    drop(state);
    code
}

/// The tokio case's new process: a multi-thread runtime built as
/// `#[tokio::main]` builds it, `mitosis::init` inside it, then the clock,
/// then the check (in the runtime) and the report, like [`new_process`].
/// The runtime lives until the process exits.
fn tokio_new_process() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench (new process): no tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let taken = runtime.block_on(async {
        let mut state = match mitosis::init::<TokioSmall>() {
            Ok(Some(state)) => state,
            Ok(None) => return Err("`tokio-child` started without a handover".to_string()),
            Err(error) => return Err(format!("the handover failed: {error}")),
        };
        let init_ns = monotonic_ns();
        match state.take_over().await {
            Ok(check) => Ok((state, init_ns, check)),
            Err(error) => Err(format!("the handed-over sockets failed: {error}")),
        }
    });
    let (state, init_ns, check) = match taken {
        Ok(taken) => taken,
        Err(error) => {
            eprintln!("bench (new process): {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = report_to_harness(init_ns, check);
    drop(state);
    code
}

/// A new process's report: its clock reading as `init` returned, its
/// check and its VmHWM, to the socket its command line names; then it
/// waits until the harness hangs up, and exits (`std::process::exit`, so
/// that a runtime's threads are not waited for).
fn report_to_harness(init_ns: u64, check: u64) -> ExitCode {
    let (report, seq) = match Cli::try_parse_from(mitosis::args()) {
        Ok(Cli {
            internal: Some(Internal::Child { report, seq } | Internal::TokioChild { report, seq }),
            ..
        }) => (report, seq),
        _ => {
            eprintln!("bench (new process): started without `child <report> <seq>`");
            return ExitCode::FAILURE;
        }
    };
    let reported = own_vm_hwm().and_then(|hwm| {
        let addr = UnixAddr::from_abstract_name(report.as_bytes())?;
        let mut harness = UnixStream::connect_addr(&addr)?;
        harness.write_all(format!("{seq} {init_ns} {check} {hwm}\n").as_bytes())?;
        // Until the harness hangs up (or dies).
        std::io::copy(&mut harness, &mut std::io::sink())
    });
    if let Err(error) = reported {
        eprintln!("bench (new process): could not report: {error}");
        return ExitCode::FAILURE;
    }
    std::process::exit(0);
}

/// `bench old`: the old side of one large handover, in a process that
/// holds nothing else, so that its VmHWM is the state's and the
/// handover's. It prints `pid start handing done check vmhwm` once the
/// new process has taken over, and exits once it has reaped it (which
/// happens when the harness has read the new process's report and hung
/// up).
fn old_process(bytes: usize, via: Via, report: &str, seq: u64) -> Result<()> {
    let state = Case::Blob {
        data: pattern(bytes),
    };
    let check = state.check();
    let old = old_side(state, &child_options(report, seq), via)?;
    // The handover thread frees the old copy of the state after Done: the
    // peak is read once it has finished, so that it covers all of the
    // handover's work in this process.
    settle()?;
    let hwm = own_vm_hwm()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} {} {} {} {check} {hwm}",
        old.pid, old.start, old.handing, old.done
    )?;
    out.flush()?;
    drop(out);
    waitpid(
        Some(Pid::from_raw(old.pid as i32).ok_or("bad pid")?),
        WaitOptions::empty(),
    )?;
    Ok(())
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
    /// mitosis: 1 KiB + 3 fds with tokio's sockets, from a runtime to a
    /// runtime.
    Tokio,
    /// mitosis: one connected `TcpStream`.
    Tcp,
    /// mitosis: one `TlsStream<TcpStream>`, TLS 1.3.
    Tls,
    /// mitosis: a `Vec<u8>` of this many bytes, handed over by the harness.
    Blob(usize),
    /// mitosis: the large `Vec<u8>` (256 MiB), handed over by a process of
    /// its own (`bench old`), whose peak memory is measured too.
    Large,
    /// A fresh `Vec<u8>` of the large size, and a copy into it, in this
    /// process: the least any receiver of that state pays.
    MemoryFloor,
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
            Job::Tokio => "tokio".into(),
            Job::Tcp => "tcp".into(),
            Job::Tls => "tls".into(),
            Job::Blob(size) => format!("blob-{size}"),
            Job::Large => "large".into(),
            Job::MemoryFloor => "memory-floor".into(),
            Job::Map => "map".into(),
            Job::Fds(n) => format!("fds-{n}"),
        }
    }

    fn is_large(self) -> bool {
        matches!(self, Job::Large | Job::MemoryFloor | Job::Map)
    }

    /// Every case, in the order the report lists them.
    fn all() -> Vec<Job> {
        let mut jobs = vec![
            Job::Floor,
            Job::FloorFds(FD_COUNTS[FD_COUNTS.len() - 1]),
            Job::ShellflipFloor,
            Job::Shellflip,
            Job::Small,
            Job::Tokio,
            Job::Tcp,
            Job::Tls,
        ];
        jobs.extend(BLOB_SIZES.map(Job::Blob));
        jobs.extend(FD_COUNTS.map(Job::Fds));
        jobs.extend([Job::Large, Job::MemoryFloor, Job::Map]);
        jobs
    }
}

/// A job's samples: durations in nanoseconds, memory in bytes.
#[derive(Debug, Default, Clone)]
struct Samples {
    /// `split()` → `Done`; for the floors and shellflip, their one figure.
    done: Vec<u64>,
    /// `split()` → `init()` returns.
    init: Vec<u64>,
    /// Prepared: `hand_over()` → `init()` returns. The pause.
    pause: Vec<u64>,
    /// Prepared: `hand_over()` → `Done`.
    pause_done: Vec<u64>,
    /// Prepared: `prepare()` → `wait_ready()` returns, while a real
    /// program would serve.
    ready: Vec<u64>,
    /// postcard `to_stdvec` + `from_bytes` of the same value (map only).
    postcard: Vec<u64>,
    /// VmHWM of the old side after each handover, when it ran in a process
    /// of its own ([`Job::Large`]).
    hwm_old: Vec<u64>,
    /// VmHWM of each new process once `init` has returned.
    hwm_new: Vec<u64>,
    /// The state's data bytes: the `Vec<u8>`'s length, or the map's
    /// postcard encoding, for the table and the plot.
    encoded_bytes: u64,
}

impl Samples {
    fn push(&mut self, handed: Handed) {
        let Handed {
            via,
            old,
            init,
            hwm_new,
            hwm_old,
        } = handed;
        match via {
            Via::Split => {
                self.done.push(old.done - old.start);
                self.init.push(init.saturating_sub(old.start));
            }
            Via::Prepared => {
                self.ready.push(old.handing - old.start);
                self.pause.push(init.saturating_sub(old.handing));
                self.pause_done.push(old.done - old.handing);
            }
        }
        self.hwm_new.push(hwm_new);
        self.hwm_old.extend(hwm_old);
    }
}

/// The transparent huge page settings in force: the bracketed words of
/// `enabled` and `defrag`, or why they could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Thp {
    enabled: String,
    defrag: String,
}

impl Thp {
    fn read() -> Thp {
        let read = |path: &str| match std::fs::read_to_string(path) {
            Ok(text) => thp_mode(&text).unwrap_or("unparsed").to_string(),
            Err(_) => "unavailable".to_string(),
        };
        Thp {
            enabled: read(THP_ENABLED),
            defrag: read(THP_DEFRAG),
        }
    }
}

impl fmt::Display for Thp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "enabled `{}`, defrag `{}`", self.enabled, self.defrag)
    }
}

/// THP's `enabled` switched for this run by `--thp`; dropping it puts the
/// previous word back, so the machine is left as it was whether the run
/// ends, fails with an error or panics.
struct ThpSwitch {
    /// The `enabled` file: [`THP_ENABLED`], but for the tests.
    path: PathBuf,
    previous: String,
}

impl ThpSwitch {
    /// Switches the system to `mode`; `None` when it is in force already.
    fn to(mode: ThpMode) -> Result<Option<ThpSwitch>> {
        ThpSwitch::at(Path::new(THP_ENABLED), mode)
    }

    /// Switches the `enabled` file at `path` to `mode`.
    fn at(path: &Path, mode: ThpMode) -> Result<Option<ThpSwitch>> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        // Without a word to write back, the machine could not be restored:
        // leave it alone.
        let previous = thp_mode(&text)
            .ok_or_else(|| format!("no setting in brackets in {}: {text:?}", path.display()))?
            .to_string();
        if previous == mode.to_string() {
            return Ok(None);
        }
        std::fs::write(path, mode.to_string()).map_err(|error| {
            format!(
                "cannot set {} to {mode} ({error}); --thp needs root",
                path.display()
            )
        })?;
        eprintln!(
            "bench: transparent huge pages: {previous} → {mode} for this run; if the run is \
             killed, restore it with `echo {previous} > {}`",
            path.display()
        );
        Ok(Some(ThpSwitch {
            path: path.to_path_buf(),
            previous,
        }))
    }
}

impl Drop for ThpSwitch {
    fn drop(&mut self) {
        match std::fs::write(&self.path, &self.previous) {
            Ok(()) => eprintln!("bench: transparent huge pages: {} again", self.previous),
            Err(error) => eprintln!(
                "bench: COULD NOT restore transparent huge pages ({error}): run \
                 `echo {} > {}` as root",
                self.previous,
                self.path.display()
            ),
        }
    }
}

/// Everything one run measured, and what it ran on.
struct Run {
    samples: HashMap<Job, Samples>,
    /// Jobs not run for lack of fds, and why.
    skipped: Vec<(Job, String)>,
    rounds: usize,
    large_rounds: usize,
    /// The size of the large `Vec<u8>` and of the memory floor.
    large_bytes: usize,
    /// RLIMIT_NOFILE's soft limit during the run, and a sentence about it.
    fd_limit: (u64, String),
    load_before: String,
    load_after: String,
    /// The THP settings at the start of the rounds and at their end (they
    /// are system-wide: anyone may change them meanwhile).
    thp_before: Thp,
    thp_after: Thp,
    /// `--thp`, if given, and the `enabled` word the run switched from, if
    /// it did.
    thp_asked: Option<ThpMode>,
    thp_switched_from: Option<String>,
    /// What working out the state type's schema costs (once per handover,
    /// in each process).
    schema: SchemaCost,
    /// The TLS case's cipher suite, if it ran.
    tls_suite: Option<String>,
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

/// The old side's `CLOCK_MONOTONIC` readings for one handover, in
/// nanoseconds.
#[derive(Debug, Clone, Copy)]
struct OldSide {
    /// The new process.
    pid: u32,
    /// Before `split()`, or before `prepare()`.
    start: u64,
    /// Before `hand_over()`, once `wait_ready()` said ready; for a split,
    /// the same as `start`.
    handing: u64,
    /// When `wait()` returned `Done`.
    done: u64,
}

/// What the new process reported: its clock reading as `init` returned,
/// the check of its state, and its VmHWM.
struct Report {
    init: u64,
    check: u64,
    hwm: u64,
}

/// What a mitosis handover measured.
struct Handed {
    via: Via,
    old: OldSide,
    /// The new process's clock reading as `init` returned.
    init: u64,
    /// The new process's VmHWM, and the old side's when it ran in a
    /// process of its own.
    hwm_new: u64,
    hwm_old: Option<u64>,
}

struct Harness {
    /// Where new processes report when `init` returned.
    report: UnixListener,
    report_name: String,
    seq: u64,
    /// The other end of the small state's TCP stream, and of the
    /// connection cases'.
    peer: TcpListener,
    /// The TLS case's configurations, made when it first runs.
    tls: Option<TlsConfigs>,
    /// The TLS case's negotiated cipher suite, for the report.
    tls_suite: Option<String>,
    exe: PathBuf,
    large_bytes: usize,
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
    if cli.large_bytes == 0 {
        return Err("--large-bytes must be above 0: the memory floor divides by it".into());
    }
    if cfg!(debug_assertions) {
        eprintln!("bench: this is a debug build; its figures mean little (use --release)");
    }
    // Switched first and restored last (when this guard drops, on every
    // way out of this function), so that every round runs under it.
    let thp_switch = match cli.thp {
        Some(mode) => ThpSwitch::to(mode)?,
        None => None,
    };
    let thp_switched_from = thp_switch.as_ref().map(|switch| switch.previous.clone());
    let thp_before = Thp::read();
    eprintln!("bench: transparent huge pages: {thp_before}");
    let load_before = load_average();
    let exe = std::env::current_exe()?;
    let fd_limit = raise_fd_limit(FD_COUNTS[FD_COUNTS.len() - 1] as u64 + FD_MARGIN);
    eprintln!("bench: {}", fd_limit.1);

    let mut jobs = Job::all();
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
    sockopt::set_socket_timeout(&report, sockopt::Timeout::Recv, Some(TIMEOUT))?;
    let mut harness = Harness {
        report,
        report_name,
        seq: 0,
        peer: TcpListener::bind("127.0.0.1:0")?,
        tls: None,
        tls_suite: None,
        exe,
        large_bytes: cli.large_bytes,
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
        large_bytes: cli.large_bytes,
        fd_limit,
        load_before,
        load_after: load_average(),
        thp_before,
        thp_after: Thp::read(),
        thp_asked: cli.thp,
        thp_switched_from,
        schema: schema_cost()?,
        tls_suite: harness.tls_suite.take(),
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
    drop(thp_switch);
    Ok(())
}

impl Harness {
    /// One round of `job`. A handover case runs twice, prepared and with
    /// `split`, in the order [`Via::both`] gives for the case's own round
    /// number: the large cases run only in some of the iterations (every
    /// twentieth, all odd, by default), so the iteration's number would
    /// put them in the same order every time.
    fn run(&mut self, job: Job, samples: &mut Samples, map: &mut Option<MapMaster>) -> Result<()> {
        // One pause per round of a handover case.
        let round = samples.pause.len();
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
            Job::MemoryFloor => {
                samples.encoded_bytes = self.large_bytes as u64;
                samples.done.push(memory_floor(self.large_bytes)?);
            }
            Job::Small => {
                samples.encoded_bytes = SMALL_BLOB_BYTES as u64;
                for via in Via::both(round) {
                    let state = Case::Small {
                        blob: pattern(SMALL_BLOB_BYTES),
                        listener: TcpListener::bind("127.0.0.1:0")?,
                        stream: TcpStream::connect(self.peer.local_addr()?)?,
                        file: File::open(&self.exe)?,
                    };
                    // Keep the other end open until the handover is over.
                    let (_accepted, _) = self.peer.accept()?;
                    samples.push(self.hand_over(state, via, None)?);
                }
            }
            Job::Tokio => {
                samples.encoded_bytes = SMALL_BLOB_BYTES as u64;
                for via in Via::both(round) {
                    let parts = SmallParts {
                        blob: pattern(SMALL_BLOB_BYTES),
                        listener: TcpListener::bind("127.0.0.1:0")?,
                        stream: TcpStream::connect(self.peer.local_addr()?)?,
                        file: File::open(&self.exe)?,
                    };
                    let (mut peer, _) = self.peer.accept()?;
                    peer.set_read_timeout(Some(TIMEOUT))?;
                    samples.push(self.hand_over_tokio(parts, via, &mut peer)?);
                }
            }
            Job::Tcp => {
                for via in Via::both(round) {
                    // The TLS case's setup work too, on a connection of its
                    // own: a handshake just before slows the next spawn by
                    // ~0.7 ms and the pause measurably (on a 2-core Xeon
                    // VM), so without it the ratio would be partly the
                    // harness's handshake rather than what crosses.
                    let (mut tls, mut tls_peer) = self.tls_connection()?;
                    converse(&mut tls, &mut tls_peer)?;
                    drop((tls, tls_peer));
                    let (mut stream, mut peer) = self.connection()?;
                    converse(&mut stream, &mut peer)?;
                    let state = Case::Tcp { stream };
                    samples.push(self.hand_over(state, via, Some(&mut peer))?);
                }
            }
            Job::Tls => {
                for via in Via::both(round) {
                    let (mut stream, mut peer) = self.tls_connection()?;
                    // Also reads the server's session tickets, which follow
                    // the handshake: the session is settled when it crosses.
                    converse(&mut stream, &mut peer)?;
                    let state = Case::Tls { stream };
                    samples.push(self.hand_over(state, via, Some(&mut peer))?);
                }
            }
            Job::Blob(size) => {
                samples.encoded_bytes = size as u64;
                for via in Via::both(round) {
                    let data = pattern(size);
                    samples.push(self.hand_over(Case::Blob { data }, via, None)?);
                }
            }
            Job::Large => {
                samples.encoded_bytes = self.large_bytes as u64;
                for via in Via::both(round) {
                    samples.push(self.hand_over_apart(self.large_bytes, via)?);
                }
            }
            Job::Map => {
                let master = map.get_or_insert_with(MapMaster::build);
                samples.encoded_bytes = master.encoded_bytes;
                for (i, via) in Via::both(round).into_iter().enumerate() {
                    // Cloned before the clock starts; the handover takes
                    // (and in the end frees) the clone. postcard runs on
                    // the very value the first handover then takes, a
                    // fresh clone laid out in memory as the handed-over
                    // values are, rather than on the long-lived master.
                    let map = master.map.clone();
                    if i == 0 {
                        samples.postcard.push(postcard_round_trip(&map)?);
                    }
                    samples.push(self.hand_over(Case::Map { map }, via, None)?);
                }
            }
            Job::Fds(n) => {
                for via in Via::both(round) {
                    let state = fds_state(n, &self.exe)?;
                    samples.push(self.hand_over(state, via, None)?);
                }
            }
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// One mitosis handover from this process to a new copy of this
    /// binary. `peer` is the harness's end of a handed-over connection: it
    /// answers the new process's ping once the clocks have stopped, and
    /// stays open until the new process has been reaped.
    fn hand_over(&mut self, state: Case, via: Via, peer: Option<&mut dyn Peer>) -> Result<Handed> {
        let seq = self.next_seq();
        let expected = state.check();
        let old = old_side(state, &child_options(&self.report_name, seq), via)?;
        // The new process pings before it reports, so answer first.
        if let Some(peer) = peer {
            pong(peer).map_err(|error| format!("the new process's round trip: {error}"))?;
        }
        let report = self.report_of(seq, old.pid)?;
        // The new process is our child: reap it.
        waitpid(
            Some(Pid::from_raw(old.pid as i32).ok_or("bad pid")?),
            WaitOptions::empty(),
        )?;
        // This process's copy of the state is freed on mitosis's handover
        // thread after Done; let it finish before the next round starts.
        settle()?;
        if report.check != expected {
            return Err("the new process's state differs from the old one's".into());
        }
        Ok(Handed {
            via,
            old,
            init: report.init,
            hwm_new: report.hwm,
            hwm_old: None,
        })
    }

    /// The tokio case's handover: the old side in a tokio runtime of its
    /// own ([`tokio_old_side`]), the new process in one too. Once the old
    /// side is done, the harness connects to the handed-over listener and
    /// answers the new process's ping on `peer`; it keeps both open until
    /// the new process has been reaped.
    fn hand_over_tokio(
        &mut self,
        parts: SmallParts,
        via: Via,
        peer: &mut TcpStream,
    ) -> Result<Handed> {
        let seq = self.next_seq();
        let expected = checksum(&parts.blob);
        let listening = parts.listener.local_addr()?;
        let options = new_process_options("tokio-child", &self.report_name, seq);
        let old = tokio_old_side(parts, &options, via)?;
        let _client = TcpStream::connect(listening)
            .map_err(|error| format!("the handed-over listener: {error}"))?;
        pong(peer).map_err(|error| format!("the new process's round trip: {error}"))?;
        let report = self.report_of(seq, old.pid)?;
        waitpid(
            Some(Pid::from_raw(old.pid as i32).ok_or("bad pid")?),
            WaitOptions::empty(),
        )?;
        settle()?;
        if report.check != expected {
            return Err("the new process's state differs from the old one's".into());
        }
        Ok(Handed {
            via,
            old,
            init: report.init,
            hwm_new: report.hwm,
            hwm_old: None,
        })
    }

    /// A connected TCP stream, and the harness's end of it (which fails a
    /// read that waits longer than [`TIMEOUT`] rather than hang the run).
    fn connection(&mut self) -> Result<(TcpStream, TcpStream)> {
        let stream = TcpStream::connect(self.peer.local_addr()?)?;
        let (peer, _) = self.peer.accept()?;
        peer.set_read_timeout(Some(TIMEOUT))?;
        Ok((stream, peer))
    }

    /// A TLS 1.3 connection over [`connection`](Self::connection): the
    /// client, and the harness's server end. The handshake runs on a
    /// thread that has ended when this returns, as the old side's `settle`
    /// wants.
    fn tls_connection(&mut self) -> Result<(TlsStream<TcpStream>, TlsStream<TcpStream>)> {
        let configs = match &self.tls {
            Some(configs) => configs.clone(),
            None => self.tls.insert(TlsConfigs::new()?).clone(),
        };
        let (socket, peer_socket) = self.connection()?;
        let server = configs.server;
        let accepting = std::thread::spawn(move || TlsStream::accept(server, peer_socket));
        let name = rustls::pki_types::ServerName::try_from("localhost")?;
        let client = TlsStream::connect(configs.client, name, socket);
        let server = accepting
            .join()
            .map_err(|_| "the TLS server's thread panicked")?;
        let (client, server) = (client?, server?);
        if client.protocol_version() != rustls::ProtocolVersion::TLSv1_3 {
            return Err(format!("negotiated {:?}, not TLS 1.3", client.protocol_version()).into());
        }
        self.tls_suite = Some(format!("{:?}", client.cipher_suite()));
        Ok((client, server))
    }

    /// One handover of a `Vec<u8>` of `bytes` whose old side is `bench
    /// old`, a process of its own, so that its peak memory is the
    /// handover's alone. The new process is that process's child, and
    /// reports here as any other.
    fn hand_over_apart(&mut self, bytes: usize, via: Via) -> Result<Handed> {
        let seq = self.next_seq();
        let mut old_process = Command::new(&self.exe)
            .args(["old", &bytes.to_string(), &via.to_string()])
            .arg(&self.report_name)
            .arg(seq.to_string())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = old_process.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [pid, start, handing, done, expected, hwm_old] = fields[..] else {
            let status = old_process.wait()?;
            return Err(format!(
                "`bench old` printed {line:?} and exited with {status} (see its stderr)"
            )
            .into());
        };
        let old = OldSide {
            pid: u32::try_from(pid)?,
            start,
            handing,
            done,
        };
        let report = self.report_of(seq, old.pid)?;
        // `bench old` reaps the new process, which exits now that the
        // report's connection is closed, and then exits itself.
        let status = old_process.wait()?;
        if !status.success() {
            return Err(format!("`bench old` exited with {status}").into());
        }
        if report.check != expected {
            return Err("the new process's state differs from the old one's".into());
        }
        Ok(Handed {
            via,
            old,
            init: report.init,
            hwm_new: report.hwm,
            hwm_old: Some(hwm_old),
        })
    }

    /// The report of handover `seq`'s new process (`pid`), which it sends
    /// once `init` has returned. Closing the connection lets it exit.
    fn report_of(&mut self, seq: u64, pid: u32) -> Result<Report> {
        let no_report = |error| format!("no report from the new process (pid {pid}): {error}");
        let (conn, _) = self.report.accept().map_err(no_report)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(&conn)
            .read_line(&mut line)
            .map_err(no_report)?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let [got_seq, init, check, hwm] = fields[..] else {
            return Err(format!("the new process reported {line:?}").into());
        };
        if got_seq != seq {
            return Err(format!("report {got_seq} came for handover {seq}").into());
        }
        Ok(Report { init, check, hwm })
    }
}

/// The TLS case's client and server configurations: a self-signed
/// certificate for `localhost` that the client trusts, TLS 1.3 only, and
/// the process-default provider (ring), whose default suite order puts
/// AES-256-GCM first.
#[derive(Clone)]
struct TlsConfigs {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl TlsConfigs {
    fn new() -> Result<TlsConfigs> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
        let tls13 = &[&rustls::version::TLS13];
        let server = rustls::ServerConfig::builder_with_protocol_versions(tls13)
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert)?;
        let client = rustls::ClientConfig::builder_with_protocol_versions(tls13)
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsConfigs {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// The options of every handover but the tokio case's: the new process is
/// `bench child`, and the timeouts are generous.
fn child_options(report_name: &str, seq: u64) -> SplitOptions {
    new_process_options("child", report_name, seq)
}

/// The options of a handover whose new process is `bench <command>`
/// (`child`, or `tokio-child`).
fn new_process_options(command: &str, report_name: &str, seq: u64) -> SplitOptions {
    let mut options = SplitOptions::new();
    options
        .start_timeout(TIMEOUT)
        .transfer_timeout(TIMEOUT)
        .args([
            OsString::from(command),
            OsString::from(report_name),
            OsString::from(seq.to_string()),
        ]);
    options
}

/// The old side of one handover, timed: `split()` → `Done`, or
/// `prepare()` → ready, then `hand_over()` → `Done`.
fn old_side(state: Case, options: &SplitOptions, via: Via) -> Result<OldSide> {
    settle()?;
    let start = monotonic_ns();
    let (split, handing) = match via {
        Via::Split => (options.split(state), start),
        Via::Prepared => {
            let mut upgrade = options.prepare(&state)?;
            if !upgrade.wait_ready(TIMEOUT)? {
                return Err(format!("the new process was not ready within {TIMEOUT:?}").into());
            }
            let handing = monotonic_ns();
            (upgrade.hand_over(state), handing)
        }
    };
    let pid = split.pid();
    let outcome = split.wait();
    let done = monotonic_ns();
    old_side_of(outcome, pid, start, handing, done, via)
}

/// The tokio case's old side, timed as [`old_side`] times it, but from
/// inside a multi-thread tokio runtime (built as `#[tokio::main]` builds
/// it, outside the clocks): the sockets are registered with its reactor,
/// then `prepare()`, `ready().await`, `hand_over(state).await`, or
/// `split(state).await`. The runtime is shut down before this returns, so
/// that the next round starts, as every round does, with this process down
/// to its main thread.
fn tokio_old_side(parts: SmallParts, options: &SplitOptions, via: Via) -> Result<OldSide> {
    settle()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let old = runtime.block_on(async {
        let state = parts.into_tokio()?;
        let start = monotonic_ns();
        let (split, handing) = match via {
            Via::Split => (options.split(state), start),
            Via::Prepared => {
                let mut upgrade = options.prepare(&state)?;
                // Bounded by the start timeout, as `wait_ready` is.
                upgrade.ready().await?;
                let handing = monotonic_ns();
                (upgrade.hand_over(state), handing)
            }
        };
        let pid = split.pid();
        let outcome = split.await;
        let done = monotonic_ns();
        old_side_of(outcome, pid, start, handing, done, via)
    });
    drop(runtime);
    old
}

/// The old side's readings, once the outcome is known.
fn old_side_of<S>(
    outcome: Outcome<S>,
    pid: Option<u32>,
    start: u64,
    handing: u64,
    done: u64,
    via: Via,
) -> Result<OldSide> {
    match (outcome, pid) {
        (Outcome::Done { .. }, Some(pid)) => Ok(OldSide {
            pid,
            start,
            handing,
            done,
        }),
        (Outcome::Done { pid }, None) => {
            Err(format!("Done from pid {pid}, which the handle did not know").into())
        }
        (Outcome::Failed { error, .. }, _) => {
            Err(format!("the handover ({via}) failed: {error}").into())
        }
    }
}

/// The memory floor: a fresh `Vec<u8>` of `bytes` and a copy of the same
/// bytes into it, timed together. Fresh: glibc serves an allocation this
/// large with its own `mmap`, so every page faults in inside the clock, as
/// a receiver's buffer does.
fn memory_floor(bytes: usize) -> Result<u64> {
    let source = pattern(bytes);
    settle()?;
    let start = monotonic_ns();
    let copy = std::hint::black_box(source.as_slice()).to_vec();
    let took = monotonic_ns() - start;
    if std::hint::black_box(&copy) != &source {
        return Err("the copy differs".into());
    }
    Ok(took)
}

/// Waits until this process is down to its main thread (mitosis's handover
/// thread frees the old copy of the state after `Done`), then makes glibc
/// consolidate its freed small chunks now: otherwise the first large
/// allocation after freeing millions of them (the map) pays for that, inside
/// the next round's clock. Outside every clock.
fn settle() -> Result<()> {
    let started = monotonic_ns();
    while std::fs::read_dir("/proc/self/task")?.count() > 1 {
        if monotonic_ns() - started > TIMEOUT.as_nanos() as u64 {
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

#[cfg(test)]
mod tests {
    //! The harness's logic without its processes: the order of the
    //! handovers, the case names, and the report and plots of a made-up
    //! run. No assertion here depends on how fast anything ran.

    use super::*;

    #[test]
    fn rounds_alternate_the_two_handovers() {
        assert_eq!(Via::both(0), [Via::Split, Via::Prepared]);
        assert_eq!(Via::both(1), [Via::Prepared, Via::Split]);
        assert_eq!(Via::both(2), Via::both(0));
    }

    /// On a stand-in for the kernel's file: switching the real one would
    /// change every process on the machine.
    #[test]
    fn thp_switches_and_switches_back() {
        let path = std::env::temp_dir().join(format!("mitosis-bench-thp-{}", std::process::id()));
        std::fs::write(&path, "always [madvise] never\n").unwrap();
        assert!(
            ThpSwitch::at(&path, ThpMode::Madvise).unwrap().is_none(),
            "in force already: nothing to switch"
        );
        let switch = ThpSwitch::at(&path, ThpMode::Never)
            .unwrap()
            .expect("switched");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "never");
        drop(switch);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "madvise");
        // No word in brackets: nothing to restore later, so no switch.
        std::fs::write(&path, "always madvise never\n").unwrap();
        assert!(ThpSwitch::at(&path, ThpMode::Never).is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "always madvise never\n"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn every_case_has_its_own_name() {
        let names: Vec<String> = Job::all().into_iter().map(Job::name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for name in [
            "large",
            "memory-floor",
            "map",
            "small",
            "tokio",
            "tcp",
            "tls",
            "fds-10000",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} missing");
        }
        let large: Vec<Job> = Job::all().into_iter().filter(|j| j.is_large()).collect();
        assert_eq!(large, [Job::Large, Job::MemoryFloor, Job::Map]);
    }

    const MS: u64 = 1_000_000;
    const MIB: u64 = 1 << 20;

    /// A run with one figure per case, chosen so that some targets are met
    /// and some are not.
    fn made_up_run() -> Run {
        let mut samples = HashMap::new();
        let mut put = |job: Job, fill: &dyn Fn(&mut Samples)| {
            let mut s = Samples::default();
            fill(&mut s);
            samples.insert(job, s);
        };
        put(Job::Floor, &|s| s.done = vec![2 * MS; 3]);
        put(Job::ShellflipFloor, &|s| s.done = vec![2 * MS; 3]);
        put(Job::FloorFds(10_000), &|s| s.done = vec![4 * MS; 3]);
        // shellflip 2.6 ms against a 0.4 ms pause: 6.5×, met.
        put(Job::Shellflip, &|s| s.done = vec![26 * MS / 10; 3]);
        let handovers = |pause: u64| {
            move |s: &mut Samples| {
                s.pause = vec![pause; 3];
                s.pause_done = vec![pause + MS / 10; 3];
                s.ready = vec![2 * MS; 3];
                s.done = vec![pause + 2 * MS; 3];
                s.init = vec![pause + 2 * MS - MS / 10; 3];
                s.hwm_new = vec![3 * MIB; 3];
            }
        };
        // 0.4 ms against a 2 ms floor: 0.2×, met.
        put(Job::Small, &handovers(4 * MS / 10));
        // tokio 0.5 ms against sync 0.4 ms: 1.25×.
        put(Job::Tokio, &handovers(5 * MS / 10));
        // TLS 0.5 ms against TCP 0.2 ms: 2.50×.
        put(Job::Tcp, &handovers(2 * MS / 10));
        put(Job::Tls, &handovers(5 * MS / 10));
        for size in BLOB_SIZES {
            put(Job::Blob(size), &|s| {
                handovers(MS + size as u64 / MIB)(s);
                s.encoded_bytes = size as u64;
            });
        }
        for n in FD_COUNTS {
            // 10,000 fds: 6 ms more than 0 fds, not met.
            put(Job::Fds(n), &handovers(MS / 10 + n as u64 * 600));
        }
        // Floor 90 ms / pause 100 ms = 0.9, met.
        put(Job::MemoryFloor, &|s| s.done = vec![90 * MS; 3]);
        put(Job::Large, &|s| {
            handovers(100 * MS)(s);
            s.encoded_bytes = 256 * MIB;
            // Old: 270 MiB (met); new: 300 MiB (not met).
            s.hwm_old = vec![260 * MIB, 270 * MIB];
            s.hwm_new = vec![300 * MIB, 290 * MIB];
        });
        // 1,200 ms against 1,000 ms: 1.2×, not met.
        put(Job::Map, &|s| {
            handovers(1_200 * MS)(s);
            s.postcard = vec![1_000 * MS; 3];
            s.encoded_bytes = 36 * MIB;
        });
        let thp = Thp {
            enabled: "madvise".into(),
            defrag: "madvise".into(),
        };
        Run {
            samples,
            skipped: Vec::new(),
            rounds: 3,
            large_rounds: 3,
            large_bytes: LARGE_BYTES,
            fd_limit: (20_000, "RLIMIT_NOFILE is 20000 already".into()),
            load_before: "0.1 0.1 0.1".into(),
            load_after: "0.1 0.1 0.1".into(),
            thp_before: thp.clone(),
            thp_after: Thp {
                enabled: "never".into(),
                ..thp
            },
            thp_asked: Some(ThpMode::Madvise),
            thp_switched_from: Some("always".into()),
            schema: SchemaCost {
                case: Samples {
                    done: vec![1_000; 3],
                    ..Samples::default()
                },
                map: Samples::default(),
                description_bytes: Some(186),
            },
            tls_suite: Some("TLS13_AES_256_GCM_SHA384".into()),
        }
    }

    #[test]
    fn the_report_judges_each_target() {
        let run = made_up_run();
        let verdicts = report::verdicts(&run);
        let verdict = |name: &str| {
            let line = verdicts
                .lines()
                .find(|line| line.contains(name))
                .unwrap_or_else(|| panic!("no target {name:?} in\n{verdicts}"));
            // `  name: verdict (figure; goal: ...)`, and names may hold
            // colons and brackets of their own.
            ["not measured", "not met", "met"]
                .into_iter()
                .find(|verdict| line.contains(&format!(": {verdict} (")))
                .unwrap_or_else(|| panic!("no verdict in {line:?}"))
        };
        assert_eq!(verdict("pause, 1 KiB + 3 fds"), "met");
        assert_eq!(verdict("shellflip"), "met");
        assert_eq!(verdict("10,000 fds"), "not met");
        assert_eq!(verdict("against the memory floor"), "met");
        assert_eq!(verdict("of the old process"), "met");
        assert_eq!(verdict("of the new process"), "not met");
        assert_eq!(verdict("1M-entry map"), "not met");
        assert_eq!(verdicts.lines().count(), 8, "{verdicts}");
    }

    #[test]
    fn the_report_has_every_section_and_the_thp_setting() {
        let text = report::markdown(&made_up_run(), "bench --test");
        for heading in [
            "## Targets",
            "## The pause, the exec floor and shellflip",
            "## 256 MiB: the memory floor and peak memory",
            "## Latency against state size",
            "## Latency against fd count",
            "## How each figure is measured",
            "## The THP-off variant",
            "## Schema fingerprint",
            "## One connection: TLS against plain TCP",
            "## A tokio state: 1 KiB + 3 fds, tokio against sync",
        ] {
            assert!(text.contains(heading), "{heading} missing");
        }
        assert!(text.contains("enabled `madvise`, defrag `madvise`"));
        assert!(text.contains("switched from `always` by `--thp madvise`"));
        assert!(text.contains("**changed during the run**"));
        // The 10,000-fd row: the pause 6 ms above the 0-fd one.
        assert!(text.contains("| 10000 | 3 | 6.100 ms |"), "{text}");
        assert!(text.contains("+6.000 ms"));
        // The connections: both rows, and the ratio of their p50s.
        assert!(
            text.contains("| one `TcpStream` | 3 | 0.200 ms |"),
            "{text}"
        );
        assert!(text.contains("| one `TlsStream<TcpStream>`, TLS 1.3 | 3 | 0.500 ms |"));
        assert!(text.contains("| TLS / TCP, p50 | — | 2.50× |"), "{text}");
        assert!(text.contains("is 2.50× a plain TCP connection's at p50** (0.500 ms against"));
        assert!(text.contains("TLS13_AES_256_GCM_SHA384"));
        // The tokio state: its row, the sync one's, and the ratios.
        assert!(
            text.contains("| 1 KiB + 3 fds, tokio types (multi-thread runtime) | 3 | 0.500 ms |"),
            "{text}"
        );
        assert!(text.contains("| 1 KiB + 3 fds, std types (sync) | 3 | 0.400 ms |"));
        assert!(
            text.contains("| tokio / sync | — | 1.25× | 1.25× |"),
            "{text}"
        );
        assert!(text.contains("is 1.25× the sync one's at p50** (0.500 ms against 0.400 ms"));
    }

    /// A run without the tokio case says nothing of it; without the sync
    /// small case, it has the tokio row and no ratio.
    #[test]
    fn the_tokio_section_shows_what_ran() {
        let mut run = made_up_run();
        run.samples.remove(&Job::Small);
        let text = report::markdown(&run, "bench --test");
        assert!(text.contains("| 1 KiB + 3 fds, tokio types (multi-thread runtime) | 3 |"));
        assert!(!text.contains("tokio / sync") && !text.contains("the sync one's"));
        run.samples.remove(&Job::Tokio);
        let text = report::markdown(&run, "bench --test");
        assert!(!text.contains("A tokio state"), "{text}");
    }

    /// A run without the connection cases says nothing of them; with one
    /// of the two, it has its row and no ratio.
    #[test]
    fn the_connections_section_shows_what_ran() {
        let mut run = made_up_run();
        run.samples.remove(&Job::Tcp);
        let text = report::markdown(&run, "bench --test");
        assert!(text.contains("## One connection"));
        assert!(text.contains("| one `TlsStream<TcpStream>`, TLS 1.3 | 3 |"));
        assert!(!text.contains("TLS / TCP") && !text.contains("× a plain TCP"));
        run.samples.remove(&Job::Tls);
        let text = report::markdown(&run, "bench --test");
        assert!(!text.contains("One connection"), "{text}");
    }

    #[test]
    fn the_plots_draw_from_a_run() {
        let dir = std::env::temp_dir().join(format!("mitosis-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = made_up_run();
        plot::state(&run, &dir.join("state.svg")).unwrap();
        plot::fds(&run, &dir.join("fds.svg")).unwrap();
        for file in ["state.svg", "fds.svg"] {
            let svg = std::fs::read_to_string(dir.join(file)).unwrap();
            assert!(svg.contains("pause, p50"), "{file} has no pause series");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
