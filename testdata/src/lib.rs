//! `testdata`: a small server that hands itself over with mitosis, driven by
//! the integration tests in `tests/` over a line protocol.
//!
//! On a fresh start it listens on 127.0.0.1:0, prints
//! `listening port=<port> pid=<pid>` on stdout, and accepts one *peer*
//! connection: the control connection the tests talk to. Its state (the
//! listener, the peer, the `--log` file, a blob, the bytes read from the
//! peer that are not a whole line yet, and `--spare-fds` read-only handles
//! of /dev/null, there only to make the fd transfer bigger) is handed over
//! on `split`; a new generation writes
//! `ready pid=<pid> generation=<n> version=<v>` to the peer. Every
//! generation appends `generation <n> pid <pid> version <v>` to the log
//! file, and greets and closes every other connection to the listener with
//! `hello generation=<n> pid=<pid>`.
//!
//! Commands on the peer, one answer line each:
//!
//! - `ping <x>` → `pong <x>`
//! - `status` → `status pid=.. generation=.. version=.. label=.. blob=<len>:<fnv1a64> spare=<n>`,
//!   `<n>` being the number of spare fds in the state
//! - `fds` → `fds <fd>:<target> ...` from /proc/self/fd
//! - `memory` → `memory hwm=<kB> rss=<kB> huge=<kB>`: this process's peak
//!   and current resident memory (`VmHWM`, `VmRSS`) and how much of it is
//!   in transparent huge pages (`AnonHugePages`)
//! - `env` → `env <names of the MITOSIS_* variables>`
//! - `child-env` → `child-env <names of the MITOSIS_* variables>` that a
//!   subprocess (`env`) started now sees
//! - `split [twice] [binary=<path>] [<fault>]` → on success no answer from
//!   this process (the new one says `ready`); stdout gets
//!   `splitting child=<pid>`, then `done pid=<pid> fds=<fd list>` and this
//!   process exits. A refused split answers `split refused: <error>`, a
//!   failed one `split failed: <error> | step=<step> | children=<pids|none>`.
//!   `<fault>` goes to the new process as `TESTDATA_FAULT`: `exit`, `panic`,
//!   `abort`, `hang`, `sleep=<ms>`, or `fifo=<path>` (block opening the fifo
//!   until a writer opens it), all before `init`; or, after `arrive`,
//!   `setup-sleep=<ms>` (then commit), `no-commit-exit`, `no-commit-hang`
//!   or `refuse` (after receiving the state, which it reports on stdout as
//!   `received pid=<pid> generation=<n>`). `twice` tries a second split while the
//!   first is in flight and reports `second split refused: <error>
//!   state=<returned state>` on stdout.
//! - `prepare [hold] [binary=<path>] [<fault>]` → `preparing child=<pid|none>`
//!   at once, and this process serves on while the new one starts; once it
//!   is ready, the state is handed over as with `split` (or, with `hold`,
//!   `held ready` goes to stdout and nothing is handed over). A failure
//!   before it is ready answers `prepare failed: <error> | step=<step> |
//!   children=<pids|none>`.
//! - `cancel` → `cancelled`: drops a prepared upgrade.
//! - `exit` → exits.
//!
//! Every binary of the package runs [`run`]; they differ only in the version
//! string they report and in their state type, all `#[derive(Handover)]`:
//!
//! | binary | state | reports |
//! | --- | --- | --- |
//! | `testdata`, `testdata-v2` | [`State`], `testdata::State` v1 | `v1`, `v2` |
//! | `testdata-schema2` | [`schema2::State`]: v1's fields, but v2 | `schema2` |
//! | `testdata-migrate-v2` | [`v2::State`], v2, migrates from v1 | `m2` |
//! | `testdata-migrate-v3` | [`v3::State`], v3, migrates from v2 (and so v1) | `m3` |
//! | `testdata-nomigrate` | [`nomigrate::State`]: v2's fields, no migration | `n2` |
//! | `testdata-shape-<x>` | [`shape`]`::<x>::State`, `testdata::Shape` v1 with nested serde types | `<x>` |
//! | `testdata-evolve-v1`, `-v2`, `-v3` | [`evolve`]`::v<N>::State`, `testdata::Evolving` v1..v3, evolved in place | `evolve-v<N>` |
//! | `testdata-shape-deep-a`, `-deep-b` | their own, `testdata::Deep` v1, around [`shape::deep_a`], [`shape::deep_b`] | `deep-a`, `deep-b` |
//!
//! The v2 and v3 states add a `note` that `status` reports as `note=<trail>`:
//! the versions the state went through (`v1>v2>v3` after two migrations).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mitosis::{Handover, Outcome, SplitOptions};
use rustix::event::{PollFd, PollFlags, poll};

pub mod evolve;
pub mod nomigrate;
pub mod schema2;
pub mod shape;
pub mod tokio_state;
pub mod v2;
pub mod v3;

/// The name of the state's schema, in every version. The derive takes it as
/// a literal, so each state type spells it out; a unit test checks they
/// agree.
pub const STATE_NAME: &str = "testdata::State";

/// The environment variable that makes a new process fail before `init`.
pub const FAULT_VAR: &str = "TESTDATA_FAULT";

/// Exit code after `init` failed.
pub const EXIT_INIT_ERROR: u8 = 2;

/// Exit code for `TESTDATA_FAULT=exit`.
pub const EXIT_FAULT: u8 = 3;

/// The command line. `mitosis::Flag` is flattened in, so the same parser
/// takes `std::env::args()` whether or not the process was started by a
/// split.
#[derive(Parser, Debug, Clone, PartialEq, Eq)]
#[command(name = "testdata", about = "A test program for mitosis")]
pub struct Cli {
    #[command(flatten)]
    pub mitosis: mitosis::Flag,

    /// Size of the blob in the state, in bytes.
    #[arg(long, default_value_t = 1024)]
    pub blob_size: usize,

    /// A file opened for append that is part of the state; one line per
    /// generation is written to it.
    #[arg(long)]
    pub log: Option<PathBuf>,

    /// Start and transfer timeout for the splits this process performs.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,

    /// Start timeout, instead of `--timeout-ms`.
    #[arg(long)]
    pub start_timeout_ms: Option<u64>,

    /// Transfer timeout, instead of `--timeout-ms`.
    #[arg(long)]
    pub transfer_timeout_ms: Option<u64>,

    /// Hello timeout for the splits this process performs (library default
    /// when absent).
    #[arg(long)]
    pub hello_timeout_ms: Option<u64>,

    /// The state byte limit for the splits this process performs (library
    /// default when absent).
    #[arg(long)]
    pub max_state_bytes: Option<u64>,

    /// The fd limit for the splits this process performs (library default
    /// when absent).
    #[arg(long)]
    pub max_fds: Option<u64>,

    /// An arbitrary value that must survive every generation.
    #[arg(long, default_value = "none")]
    pub label: String,

    /// How many read-only handles of /dev/null a fresh state holds, so that
    /// a handover has that many more fds to send (in batches of at most
    /// 253).
    #[arg(long, default_value_t = 0)]
    pub spare_fds: usize,

    /// Makes a fresh state's listener inheritable (no close-on-exec), as a
    /// socket that systemd passes with `LISTEN_FDS` is.
    #[arg(long)]
    pub inheritable_listener: bool,

    /// Ignores SIGCHLD (`SIG_IGN`), so that the kernel reaps children at
    /// once and their exit status is lost, as some hosts do.
    #[arg(long)]
    pub ignore_sigchld: bool,

    /// Starts a thread before `init`, as `#[tokio::main]` does.
    #[arg(long)]
    pub thread_before_init: bool,
    /// Puts SIGPIPE back to its default action (terminate) at start, as a C
    /// host or `-Zon-broken-pipe=kill` leaves it; std ignores it otherwise.
    #[arg(long)]
    pub sigpipe_default: bool,

    /// Writes mitosis's log records, debug level and up, to stderr as
    /// `mitosis-log pid=<pid> <level> <message>`, from before `init`.
    #[arg(long)]
    pub mitosis_log: bool,

    /// Turns transparent huge pages off for this process and the processes
    /// it starts (`PR_SET_THP_DISABLE`, which a new process inherits across
    /// `execve`), from before `init`: a kernel without them, as far as
    /// mitosis can tell.
    #[arg(long)]
    pub no_thp: bool,

    /// Lowers this process's open-file limit (the soft RLIMIT_NOFILE) to
    /// this at start, before `init`; with `--spare-fds`, it can be nearly
    /// used up.
    #[arg(long)]
    pub nofile_limit: Option<u64>,

    /// Start and transfer timeouts of `Duration::MAX` (no limit), instead
    /// of `--timeout-ms`.
    #[arg(long)]
    pub timeouts_max: bool,

    /// A hello timeout of `Duration::MAX` (no limit), instead of
    /// `--hello-timeout-ms`.
    #[arg(long)]
    pub hello_timeout_max: bool,
}

/// The state handed from generation to generation: `testdata::State` v1.
///
/// `testdata-migrate-v2` and `testdata-migrate-v3` carry a verbatim copy of
/// this definition (as `StateV1`) to migrate from it: change a field here
/// and those copies must change too, or the migration tests fail with a
/// schema mismatch.
#[derive(Debug, Handover)]
#[handover(version = 1, name = "testdata::State")]
pub struct State {
    pub generation: u32,
    pub listener: TcpListener,
    pub peer: TcpStream,
    pub log: File,
    pub blob: Vec<u8>,
    /// Bytes read from the peer that do not yet form a whole line.
    pub peer_buffer: Vec<u8>,
    /// Handles of /dev/null (`--spare-fds`), only there to be handed over.
    pub spare: Vec<File>,
}

/// What every version of the state holds, for a fresh start.
#[derive(Debug)]
pub struct Core {
    pub generation: u32,
    pub listener: TcpListener,
    pub peer: TcpStream,
    pub log: File,
    pub blob: Vec<u8>,
    pub peer_buffer: Vec<u8>,
    pub spare: Vec<File>,
}

/// What [`run`] needs from a state type, so that one program serves with
/// any of the package's state versions, whatever they call their fields.
pub trait AppState: Handover + Send + 'static {
    /// A fresh state (no handover) from the parts every version has.
    fn fresh(core: Core) -> Self;
    fn generation(&self) -> u32;
    fn set_generation(&mut self, generation: u32);
    fn listener(&self) -> &TcpListener;
    fn peer(&self) -> &TcpStream;
    fn log(&self) -> &File;
    fn blob(&self) -> &[u8];
    fn peer_buffer(&mut self) -> &mut Vec<u8>;
    /// The spare fds (`--spare-fds`).
    fn spare(&self) -> &[File];
    /// Extra ` key=value` words for the `status` line.
    fn status_extra(&self) -> String {
        String::new()
    }
}

/// Implements [`AppState`] for a state type whose common fields have the
/// usual names, except the generation counter (`$generation`); `fresh`
/// gives the fields a fresh state adds, and `status` the status words.
///
/// Exported, so that a binary can define its state in its own crate around
/// types of this one (`testdata-shape-deep-a` and `-deep-b`).
#[macro_export]
macro_rules! app_state {
    (
        $ty:ty,
        generation: $generation:ident,
        fresh: { $($field:ident: $value:expr),* $(,)? },
        status: |$state:ident| $status:expr $(,)?
    ) => {
        impl $crate::AppState for $ty {
            fn fresh(core: $crate::Core) -> Self {
                Self {
                    $generation: core.generation,
                    listener: core.listener,
                    peer: core.peer,
                    log: core.log,
                    blob: core.blob,
                    peer_buffer: core.peer_buffer,
                    spare: core.spare,
                    $($field: $value,)*
                }
            }
            fn generation(&self) -> u32 {
                self.$generation
            }
            fn set_generation(&mut self, generation: u32) {
                self.$generation = generation;
            }
            fn listener(&self) -> &::std::net::TcpListener {
                &self.listener
            }
            fn peer(&self) -> &::std::net::TcpStream {
                &self.peer
            }
            fn log(&self) -> &::std::fs::File {
                &self.log
            }
            fn blob(&self) -> &[u8] {
                &self.blob
            }
            fn peer_buffer(&mut self) -> &mut Vec<u8> {
                &mut self.peer_buffer
            }
            fn spare(&self) -> &[::std::fs::File] {
                &self.spare
            }
            fn status_extra(&self) -> String {
                let $state = self;
                $status
            }
        }
    };
}
app_state!(State, generation: generation, fresh: {}, status: |_state| String::new());

/// The blob's deterministic content: a 251-byte pattern, repeated.
pub fn blob(size: usize) -> Vec<u8> {
    let mut blob: Vec<u8> = (0..251u32).map(|i| (i * 7 + 3) as u8).take(size).collect();
    blob.reserve_exact(size - blob.len());
    while blob.len() < size {
        // Copies of a period of 251 stay periodic, so doubling is enough.
        let n = blob.len().min(size - blob.len());
        blob.extend_from_within(..n);
    }
    blob
}

/// 64-bit FNV-1a, for the blob's checksum in `status`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// How `status` reports a blob: `<len>:<fnv1a64 hex>`.
pub fn blob_summary(blob: &[u8]) -> String {
    format!("{}:{:016x}", blob.len(), fnv1a64(blob))
}

/// This process's open fds as `fd:target`, from `/proc/self/fd`, sorted by
/// fd, without the fd used to read the directory.
pub fn fd_list() -> String {
    // Collect the numbers first and drop the directory, so that its own fd
    // is closed (and its readlink fails) before the targets are read.
    let numbers: Vec<u32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(e) => return format!("error:{e}"),
    };
    let mut numbers = numbers;
    numbers.sort_unstable();
    let mut listed = Vec::new();
    for fd in numbers {
        if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            listed.push(format!("{fd}:{}", target.display()));
        }
    }
    listed.join(" ")
}

/// `memory hwm=<kB> rss=<kB> huge=<kB>`, from `/proc/self/status` and
/// `/proc/self/smaps_rollup`; a figure that cannot be read is `?`.
pub fn memory() -> String {
    let kib = |file: &str, key: &str| -> String {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
            })
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "memory hwm={} rss={} huge={}",
        kib("/proc/self/status", "VmHWM:"),
        kib("/proc/self/status", "VmRSS:"),
        kib("/proc/self/smaps_rollup", "AnonHugePages:")
    )
}

/// This process's child pids, from `/proc/self/task/*/children`, or `none`.
pub fn children() -> String {
    let mut pids = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                pids.extend(text.split_whitespace().map(str::to_owned));
            }
        }
    }
    if pids.is_empty() {
        "none".into()
    } else {
        pids.join(",")
    }
}

/// The names of the environment variables that start with `MITOSIS_`.
pub fn mitosis_env() -> Vec<String> {
    let mut names: Vec<String> = std::env::vars_os()
        .filter_map(|(key, _)| key.into_string().ok())
        .filter(|key| key.starts_with("MITOSIS_"))
        .collect();
    names.sort();
    names
}

/// Prints a line on stdout in a single write. Every generation shares the
/// pipe, and `writeln!` writes the text and the newline separately, so
/// another process's line could land between them; a single write of a few
/// KiB into the pipe is not interleaved.
pub fn say(line: impl AsRef<str>) {
    let mut buffer = String::with_capacity(line.as_ref().len() + 1);
    buffer.push_str(line.as_ref());
    buffer.push('\n');
    let mut out = io::stdout().lock();
    let _ = out.write_all(buffer.as_bytes());
    let _ = out.flush();
}

/// `--mitosis-log`: mitosis's records on stderr, each line in one write so
/// that the generations' lines, which share the pipe, do not interleave.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("mitosis")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = format!(
                "mitosis-log pid={} {} {}\n",
                std::process::id(),
                record.level(),
                record.args()
            );
            let _ = io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Sends mitosis's log records, from debug up, to stderr as `--mitosis-log`
/// does, for the other test programs.
pub fn mitosis_log_to_stderr() {
    if log::set_logger(&StderrLog).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
}

/// What the host does before `init`, as `--ignore-sigchld`,
/// `--thread-before-init`, `--mitosis-log` and `--no-thp` ask (read from the
/// raw arguments: the parser runs after `init`).
fn host_before_init() {
    let args: Vec<_> = std::env::args_os().collect();
    if args.iter().any(|arg| arg == "--mitosis-log") {
        mitosis_log_to_stderr();
    }
    if args.iter().any(|arg| arg == "--no-thp") {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and only changes
        // how the kernel backs this process's memory.
        if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
            eprintln!(
                "testdata: PR_SET_THP_DISABLE: {}",
                io::Error::last_os_error()
            );
            std::process::exit(4);
        }
    }
    if args.iter().any(|arg| arg == "--ignore-sigchld") {
        // SAFETY: setting a signal's disposition to SIG_IGN installs no
        // handler; it is done before any other thread exists.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    }
    // Before init, so that a new process receives the state's fds under
    // it.
    let limit = args.iter().enumerate().find_map(|(i, arg)| {
        let arg = arg.to_str()?;
        match arg.strip_prefix("--nofile-limit") {
            Some("") => args.get(i + 1)?.to_str(),
            Some(value) => value.strip_prefix('='),
            None => None,
        }
    });
    if let Some(limit) = limit {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let Ok(limit) = limit.parse::<u64>() else {
            eprintln!("testdata: --nofile-limit takes a number, not {limit:?}");
            std::process::exit(4);
        };
        let hard = getrlimit(Resource::Nofile).maximum;
        let limit = Rlimit {
            current: Some(limit),
            maximum: hard,
        };
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("testdata: could not lower RLIMIT_NOFILE: {e}");
            std::process::exit(4);
        }
    }
    if args.iter().any(|arg| arg == "--thread-before-init") {
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
}

/// The names of the `MITOSIS_*` variables a subprocess started now sees.
fn child_env() -> io::Result<String> {
    let output = std::process::Command::new("env")
        .stdin(std::process::Stdio::null())
        .output()?;
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('=').map(|(key, _)| key.to_owned()))
        .filter(|key| key.starts_with("MITOSIS_"))
        .collect();
    names.sort();
    Ok(["child-env".to_owned()]
        .into_iter()
        .chain(names)
        .collect::<Vec<_>>()
        .join(" "))
}

/// What the fds of a subprocess started now point at, sorted: a shell
/// that lists its own (so it sees what crossed `exec`).
fn child_fds() -> io::Result<String> {
    let output = std::process::Command::new("sh")
        .args(["-c", r#"for fd in /proc/$$/fd/*; do readlink "$fd"; done"#])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()?;
    let mut targets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    targets.sort();
    Ok(["child-fds".to_owned()]
        .into_iter()
        .chain(targets)
        .collect::<Vec<_>>()
        .join(" "))
}

/// The faults that strike after `mitosis::arrive`, not before it.
const AFTER_ARRIVAL: [&str; 4] = ["setup-sleep=", "no-commit-exit", "no-commit-hang", "refuse"];

/// Takes over as `TESTDATA_FAULT` asks: with `mitosis::init`, or, for the
/// faults after arrival, with `arrive`, then a set-up that sleeps
/// (`setup-sleep=<ms>`), or a received state that is never committed
/// (`no-commit-exit`, `no-commit-hang`) or is refused (`refuse`).
fn take_over<S: AppState>() -> Result<Option<S>, mitosis::Error> {
    let fault = std::env::var(FAULT_VAR).unwrap_or_default();
    if !AFTER_ARRIVAL.iter().any(|f| fault.starts_with(f)) {
        return mitosis::init::<S>();
    }
    let Some(mut arrival) = mitosis::arrive::<S>()? else {
        return Ok(None);
    };
    if let Some(ms) = fault.strip_prefix("setup-sleep=") {
        say(format!("setting up pid={}", std::process::id()));
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        return arrival.commit().map(Some);
    }
    let state = arrival.receive()?;
    say(format!(
        "received pid={} generation={}",
        std::process::id(),
        state.generation()
    ));
    match fault.as_str() {
        "no-commit-exit" => std::process::exit(EXIT_FAULT.into()),
        "no-commit-hang" => loop {
            std::thread::park();
        },
        _ => {
            arrival.abort("testdata was told to refuse the state");
            std::process::exit(EXIT_FAULT.into());
        }
    }
}

/// Fails the way `TESTDATA_FAULT` asks, before `init`.
fn fault() {
    let Some(fault) = std::env::var_os(FAULT_VAR) else {
        return;
    };
    let fault = fault.to_string_lossy().into_owned();
    match fault.as_str() {
        "exit" => std::process::exit(EXIT_FAULT.into()),
        "panic" => panic!("testdata: {FAULT_VAR}=panic"),
        "abort" => std::process::abort(),
        "hang" => loop {
            std::thread::park();
        },
        other => {
            if let Some(ms) = other.strip_prefix("sleep=") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
                return;
            }
            if AFTER_ARRIVAL.iter().any(|fault| other.starts_with(fault)) {
                return;
            }
            if let Some(path) = other.strip_prefix("fifo=") {
                // Opening a fifo for reading blocks until a writer opens it:
                // the test releases this process by opening it for writing.
                if let Err(e) = File::open(path) {
                    eprintln!("testdata: could not open fifo {path}: {e}");
                    std::process::exit(4);
                }
            } else {
                eprintln!("testdata: unknown {FAULT_VAR}={other:?}");
                std::process::exit(4);
            }
        }
    }
}

/// The program, with state type `S`. `version` is what it reports as its
/// version.
pub fn run<S: AppState>(version: &str) -> ExitCode {
    // Test faults strike before init, as a broken new build would.
    fault();
    host_before_init();

    // First thing in main, as mitosis documents: take over, or start fresh.
    let taken = match take_over::<S>() {
        Ok(taken) => taken,
        Err(e) => {
            eprintln!("init error: {e}");
            return ExitCode::from(EXIT_INIT_ERROR);
        }
    };
    // The same parser, fed the raw arguments (which hold `--mitosis=<port>`
    // after a split) and the arguments without the flag, sees the same
    // program arguments.
    let cli = Cli::parse();
    let own = Cli::parse_from(mitosis::args());
    let expected = Cli {
        mitosis: mitosis::Flag::default(),
        ..cli.clone()
    };
    if own != expected {
        eprintln!("testdata: mitosis::args() disagrees with std::env::args(): {own:?} vs {cli:?}");
        return ExitCode::from(4);
    }

    if taken.is_some() != cli.mitosis.port.is_some() {
        eprintln!(
            "testdata: init returned {} but the flag says port {:?}",
            if taken.is_some() {
                "a state"
            } else {
                "no state"
            },
            cli.mitosis.port
        );
        return ExitCode::from(4);
    }

    if cli.sigpipe_default {
        // SAFETY: SIG_DFL is not a handler, so no code runs in signal
        // context; only SIGPIPE's disposition changes, before this program
        // starts any thread that writes to a socket.
        if unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) } == libc::SIG_ERR {
            eprintln!(
                "testdata: could not reset SIGPIPE: {}",
                io::Error::last_os_error()
            );
            return ExitCode::from(4);
        }
    }

    let app = App {
        cli,
        version: version.to_owned(),
        pid: std::process::id(),
    };
    match app.start(taken).and_then(|state| app.serve(state)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testdata: {e}");
            ExitCode::FAILURE
        }
    }
}

struct App {
    cli: Cli,
    version: String,
    pid: u32,
}

impl App {
    fn start<S: AppState>(&self, taken: Option<S>) -> io::Result<S> {
        let state = match taken {
            None => S::fresh(self.fresh()?),
            Some(mut state) => {
                state.set_generation(state.generation() + 1);
                state
            }
        };
        let generation = state.generation();
        writeln!(
            state.log(),
            "generation {generation} pid {} version {}",
            self.pid,
            self.version
        )?;
        if generation > 1 {
            let ready = format!(
                "ready pid={} generation={generation} version={}",
                self.pid, self.version
            );
            reply(state.peer(), &ready)?;
        }
        Ok(state)
    }

    fn fresh(&self) -> io::Result<Core> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        if self.cli.inheritable_listener {
            rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty())?;
        }
        let port = listener.local_addr()?.port();
        say(format!("listening port={port} pid={}", self.pid));
        let (peer, _) = listener.accept()?;
        let log = match &self.cli.log {
            Some(path) => OpenOptions::new().create(true).append(true).open(path)?,
            None => OpenOptions::new().append(true).open("/dev/null")?,
        };
        let spare = (0..self.cli.spare_fds)
            .map(|_| File::open("/dev/null"))
            .collect::<io::Result<Vec<File>>>()?;
        Ok(Core {
            generation: 1,
            listener,
            peer,
            log,
            blob: blob(self.cli.blob_size),
            peer_buffer: Vec::new(),
            spare,
        })
    }

    fn serve<S: AppState>(&self, mut state: S) -> io::Result<()> {
        let mut chunk = vec![0u8; 64 * 1024];
        // An upgrade being prepared (`prepare`), while this process serves.
        let mut upgrade: Option<Prepared<S>> = None;
        loop {
            // Whole lines first: some may have arrived with the state.
            while let Some(line) = take_line(state.peer_buffer()) {
                state = self.command(state, &line, &mut upgrade)?;
            }
            let (listener_ready, peer_ready, upgrade_ready) = {
                let mut fds = vec![
                    PollFd::new(state.listener(), PollFlags::IN),
                    PollFd::new(state.peer(), PollFlags::IN),
                ];
                if let Some(Prepared {
                    upgrade,
                    held: false,
                    ..
                }) = &upgrade
                {
                    fds.push(PollFd::new(upgrade, PollFlags::IN));
                }
                match poll(&mut fds, None) {
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                (
                    !fds[0].revents().is_empty(),
                    !fds[1].revents().is_empty(),
                    fds.get(2).is_some_and(|fd| !fd.revents().is_empty()),
                )
            };
            if upgrade_ready && let Some(mut pending) = upgrade.take() {
                state = match pending.upgrade.is_ready() {
                    // `hold`: ready, but the program does not hand over.
                    Ok(true) if pending.hold => {
                        say("held ready");
                        pending.held = true;
                        upgrade = Some(pending);
                        state
                    }
                    Ok(true) => self.finish(pending.upgrade.hand_over(state))?,
                    Ok(false) => {
                        upgrade = Some(pending);
                        state
                    }
                    Err(error) => {
                        let line = format!(
                            "prepare failed: {error} | step={} | children={}",
                            step_of(&error),
                            children()
                        );
                        reply(state.peer(), &line)?;
                        state
                    }
                };
                continue;
            }
            if listener_ready {
                let (mut conn, _) = state.listener().accept()?;
                let hello = format!("hello generation={} pid={}\n", state.generation(), self.pid);
                // A visitor that hangs up early is its own business.
                let _ = conn.write_all(hello.as_bytes());
            }
            if peer_ready {
                let n = match state.peer().read(&mut chunk) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    eprintln!("testdata: peer closed the connection, exiting");
                    return Ok(());
                }
                state.peer_buffer().extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn command<S: AppState>(
        &self,
        state: S,
        line: &str,
        upgrade: &mut Option<Prepared<S>>,
    ) -> io::Result<S> {
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or("");
        let args: Vec<&str> = words.collect();
        let answer = match command {
            "ping" => format!("pong {}", line.strip_prefix("ping").unwrap_or("").trim()),
            "status" => format!(
                "status pid={} generation={} version={} label={} blob={} spare={}{}",
                self.pid,
                state.generation(),
                self.version,
                self.cli.label,
                blob_summary(state.blob()),
                state.spare().len(),
                state.status_extra()
            ),
            "fds" => format!("fds {}", fd_list()),
            "memory" => memory(),
            "env" => ["env".to_owned()]
                .into_iter()
                .chain(mitosis_env())
                .collect::<Vec<_>>()
                .join(" "),
            "child-env" => child_env()?,
            "child-fds" => child_fds()?,
            "split" => return self.split(state, &args),
            "prepare" => match self.options(&args).prepare(&state) {
                Ok(pending) => {
                    let answer = format!("preparing child={}", pid_text(pending.pid()));
                    *upgrade = Some(Prepared {
                        upgrade: pending,
                        hold: args.contains(&"hold"),
                        held: false,
                    });
                    answer
                }
                Err(error) => format!("prepare refused: {error}"),
            },
            "cancel" => {
                *upgrade = None;
                "cancelled".to_owned()
            }
            "exit" => std::process::exit(0),
            _ => format!("error: unknown command {line:?}"),
        };
        reply(state.peer(), &answer)?;
        Ok(state)
    }

    /// The options of `split` and `prepare`: `[binary=<path>] [nofile=<limit>]
    /// [<fault>]`.
    fn options(&self, args: &[&str]) -> SplitOptions {
        let mut options = SplitOptions::new();
        let cli = &self.cli;
        options
            .start_timeout(Duration::from_millis(
                cli.start_timeout_ms.unwrap_or(cli.timeout_ms),
            ))
            .transfer_timeout(Duration::from_millis(
                cli.transfer_timeout_ms.unwrap_or(cli.timeout_ms),
            ));
        if let Some(ms) = cli.hello_timeout_ms {
            options.hello_timeout(Duration::from_millis(ms));
        }
        if let Some(bytes) = cli.max_state_bytes {
            options.max_state_bytes(bytes);
        }
        if let Some(fds) = cli.max_fds {
            options.max_fds(fds);
        }
        if cli.timeouts_max {
            options
                .start_timeout(Duration::MAX)
                .transfer_timeout(Duration::MAX);
        }
        if cli.hello_timeout_max {
            options.hello_timeout(Duration::MAX);
        }
        let mut fault = None;
        for &arg in args {
            if let Some(binary) = arg.strip_prefix("binary=") {
                options.binary(binary);
            } else if let Some(limit) = arg.strip_prefix("nofile=") {
                // The new process's open-file limit, not this one's.
                options.arg("--nofile-limit").arg(limit);
            } else if arg != "twice" && arg != "hold" {
                fault = Some(arg);
            }
        }
        // The fault is for the next generation only: never let it be
        // inherited further.
        match fault {
            Some(fault) => options.env(FAULT_VAR, fault),
            None => options.env_remove(FAULT_VAR),
        };
        options
    }

    /// `split [twice] [binary=<path>] [nofile=<limit>] [<fault>]`
    fn split<S: AppState>(&self, state: S, args: &[&str]) -> io::Result<S> {
        let split = self.options(args).split(state);
        let Some(child) = split.pid() else {
            // Refused before a new process ran: the outcome is already here.
            let Outcome::Failed { state, error } = split.wait() else {
                unreachable!("a split without a new process cannot be done");
            };
            reply(state.peer(), &format!("split refused: {error}"))?;
            return Ok(state);
        };
        say(format!("splitting child={child}"));

        if args.contains(&"twice") {
            // The state is on its way; try to split something else.
            let second = mitosis::split(7u32);
            match (second.pid(), second.wait()) {
                (None, Outcome::Failed { state, error }) => {
                    say(format!("second split refused: {error} state={state}"))
                }
                (Some(pid), _) => say(format!("second split NOT refused: child={pid}")),
                (None, Outcome::Done { pid }) => say(format!("second split done: pid={pid}")),
            }
        }
        self.finish(split)
    }

    /// Waits for a handover's outcome: exits after `Done`, and reports a
    /// failure to the peer and carries on.
    fn finish<S: AppState>(&self, split: mitosis::Split<S>) -> io::Result<S> {
        match split.wait() {
            Outcome::Done { pid } => {
                say(format!("done pid={pid} fds={}", fd_list()));
                std::process::exit(0);
            }
            Outcome::Failed { state, error } => {
                let line = format!(
                    "split failed: {error} | step={} | children={}",
                    step_of(&error),
                    children()
                );
                reply(state.peer(), &line)?;
                Ok(state)
            }
        }
    }
}

/// An upgrade being prepared while the program serves.
struct Prepared<S> {
    upgrade: mitosis::Upgrade<S>,
    /// Once ready, keep it without handing over (`prepare hold`).
    hold: bool,
    held: bool,
}

fn step_of(error: &mitosis::Error) -> String {
    error
        .step()
        .map_or_else(|| "none".to_owned(), |step| step.to_string())
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map_or_else(|| "none".to_owned(), |pid| pid.to_string())
}

/// Removes and returns the first whole line from `buffer`, without its
/// line ending.
fn take_line(buffer: &mut Vec<u8>) -> Option<String> {
    let end = buffer.iter().position(|&b| b == b'\n')?;
    let line: Vec<u8> = buffer.drain(..=end).collect();
    let line = String::from_utf8_lossy(&line[..end]);
    Some(line.trim_end_matches('\r').to_owned())
}

/// Writes `line` and a newline to the peer, in one write.
fn reply(mut peer: &TcpStream, line: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    peer.write_all(&bytes)
}

/// The handshake's wire format, for the fake peers (`fake-child` and the
/// tests' fake old process). All integers are little-endian.
pub mod wire {
    pub const MAGIC: [u8; 8] = *b"mitosis\0";
    pub const HELLO_LEN: usize = 8 + 2 + 2 + 32;
    pub const WELCOME_LEN: usize = 8 + 2 + 2 + 2 + 32;
    pub const SECRET_LEN: usize = 64;
    pub const HEADER_LEN: usize = 5;

    /// Frame kinds of protocol version 1.
    pub const OFFER: u8 = 1;
    pub const STATE: u8 = 2;
    pub const DATA: u8 = 3;
    pub const END: u8 = 4;

    /// HELLO: magic, min, max, the secret's first 32 bytes.
    pub fn hello(min: u16, max: u16, secret: &[u8; SECRET_LEN]) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&min.to_le_bytes());
        out[10..12].copy_from_slice(&max.to_le_bytes());
        out[12..].copy_from_slice(&secret[..32]);
        out
    }

    /// WELCOME: magic, chosen, min, max, the secret's last 32 bytes.
    pub fn welcome(
        chosen: u16,
        min: u16,
        max: u16,
        secret: &[u8; SECRET_LEN],
    ) -> [u8; WELCOME_LEN] {
        let mut out = [0u8; WELCOME_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&chosen.to_le_bytes());
        out[10..12].copy_from_slice(&min.to_le_bytes());
        out[12..14].copy_from_slice(&max.to_le_bytes());
        out[14..].copy_from_slice(&secret[32..]);
        out
    }

    pub fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([bytes[at], bytes[at + 1]])
    }

    /// A frame header: kind, then the payload length.
    pub fn header(kind: u8, len: u32) -> [u8; HEADER_LEN] {
        let len = len.to_le_bytes();
        [kind, len[0], len[1], len[2], len[3]]
    }

    /// KEY, the fd channel's first message: magic, the secret, the
    /// transfer timeout in milliseconds, the state byte limit, the fd limit.
    pub fn key(
        secret: &[u8; SECRET_LEN],
        timeout_ms: u64,
        max_bytes: u64,
        max_fds: u64,
    ) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(secret);
        out.extend_from_slice(&timeout_ms.to_le_bytes());
        out.extend_from_slice(&max_bytes.to_le_bytes());
        out.extend_from_slice(&max_fds.to_le_bytes());
        out
    }

    /// Connects to the fd channel at `path` and reads KEY: the channel and
    /// the secret.
    pub fn connect_and_read_key(
        path: &std::path::Path,
    ) -> Result<(std::os::fd::OwnedFd, [u8; SECRET_LEN]), String> {
        use rustix::net::{
            AddressFamily, RecvFlags, SocketAddrUnix, SocketFlags, SocketType, connect, recv,
            socket_with,
        };
        let channel = socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        let address = SocketAddrUnix::new(path).map_err(|e| format!("address: {e}"))?;
        connect(&channel, &address).map_err(|e| format!("connect the fd channel: {e}"))?;
        let mut key = [0u8; 8 + SECRET_LEN + 24 + 1];
        let (_, len) =
            recv(&channel, &mut key, RecvFlags::empty()).map_err(|e| format!("recv KEY: {e}"))?;
        if len != key.len() - 1 || key[..8] != MAGIC {
            return Err(format!("not a KEY: {len} bytes"));
        }
        Ok((channel, key[8..8 + SECRET_LEN].try_into().unwrap()))
    }

    /// What a fake new binary started by a real `split` does first: reads
    /// the port from its `--mitosis` flag and KEY from the fd channel, and
    /// connects back (without ARRIVAL, as an earlier build would). Returns
    /// the TCP connection, with a 20 s read timeout, the fd channel, and the
    /// secret.
    pub fn connect_back_as_fake_child()
    -> Result<(std::net::TcpStream, std::os::fd::OwnedFd, [u8; SECRET_LEN]), String> {
        use clap::Parser;
        // The old process passes its own arguments along, so its parser
        // reads them, with the flag.
        let cli = crate::Cli::parse();
        let port = cli.mitosis.port.ok_or("no --mitosis flag")?;
        // The fd channel's path ends the flag: --mitosis=PORT:SIGNALS:PATH.
        let fd_socket = std::env::args_os()
            .find_map(|arg| {
                let value = arg.as_encoded_bytes().strip_prefix(b"--mitosis=")?.to_vec();
                let path = value.splitn(3, |&b| b == b':').nth(2)?.to_vec();
                Some(std::path::PathBuf::from(String::from_utf8(path).ok()?))
            })
            .ok_or("no fd channel's path in the --mitosis flag")?;
        let (channel, secret) = connect_and_read_key(&fd_socket)?;
        let conn = std::net::TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("connect: {e}"))?;
        conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        Ok((conn, channel, secret))
    }
}
