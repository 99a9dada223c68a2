//! `testdata-buffered`: hands a state holding a `BufWriter` or a
//! `BufReader` over to a fresh copy of itself, for `tests/buffers.rs`.
//!
//! `testdata-buffered <case> --connect <port>`
//!
//! The first process connects to the test on `127.0.0.1:<port>`, builds the
//! case's state around that connection, prints
//! `before pid=<pid> <description>` on stdout and splits into its own
//! binary (`MITOSIS_FAULT`, which the new process inherits, can make it die
//! on the way). Then:
//!
//! - on `Done`, it prints `done pid=<new pid>` and exits 0;
//! - on `Failed`, it prints `failed: <error> | step=<step>`, does the case's
//!   work on the state it got back, prints `rolled back`, and exits 0.
//!
//! The new process prints `after pid=<pid> <description>`, does the case's
//! work on the state it took over, and exits 0; if `init` fails, it prints
//! `init failed: <error> | step=<step>` and exits 2.
//!
//! A description shows the connection by its inode (`tcp#<st_ino>`) and the
//! buffered bytes, so equal descriptions mean the same socket and the same
//! bytes.
//!
//! Cases:
//!
//! - `full-writer`: a `BufWriter<TcpStream>` of capacity 16 holding exactly
//!   16 unwritten bytes, `0123456789abcdef`. Whoever holds the state in the
//!   end flushes it; the new process then writes `after\n` and flushes
//!   again.

use std::io::{self, BufWriter, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::ExitCode;

use mitosis::{Handover, Outcome};
use testdata::say;

/// One state type: how to build it, show it, and use it afterwards.
trait Case: Handover + Send + 'static {
    /// Builds the state in the first process around `conn`.
    fn build(conn: TcpStream) -> io::Result<Self>;

    fn describe(&self) -> String;

    /// Runs in the new process after it printed its description.
    fn taken_over(self) -> io::Result<()>;

    /// Runs in the old process after a failed split gave the state back.
    fn rolled_back(self) -> io::Result<()>;
}

fn main() -> ExitCode {
    // The arguments without `--mitosis=<port>`: the new process gets the
    // same ones and must pick the same case before it calls `init`.
    let args: Vec<String> = mitosis::args()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let (case, port) = match &args[..] {
        [case, flag, port] if flag == "--connect" => match port.parse::<u16>() {
            Ok(port) => (case.as_str(), port),
            Err(e) => {
                eprintln!("testdata-buffered: --connect {port}: {e}");
                return ExitCode::from(4);
            }
        },
        _ => {
            eprintln!("usage: testdata-buffered <case> --connect <port>");
            return ExitCode::from(4);
        }
    };
    match case {
        "full-writer" => run::<FullWriter>(port),
        other => {
            eprintln!("testdata-buffered: unknown case {other:?}");
            ExitCode::from(4)
        }
    }
}

fn run<S: Case>(port: u16) -> ExitCode {
    let pid = std::process::id();
    match mitosis::init::<S>() {
        Err(error) => {
            say(format!("init failed: {error} | step={}", step(&error)));
            ExitCode::from(2)
        }
        Ok(Some(state)) => {
            say(format!("after pid={pid} {}", state.describe()));
            finish(state.taken_over(), "after the handover")
        }
        Ok(None) => {
            let state = match TcpStream::connect(("127.0.0.1", port)).and_then(S::build) {
                Ok(state) => state,
                Err(e) => {
                    eprintln!("testdata-buffered: building the state: {e}");
                    return ExitCode::FAILURE;
                }
            };
            say(format!("before pid={pid} {}", state.describe()));
            match mitosis::split(state).wait() {
                Outcome::Done { pid } => {
                    say(format!("done pid={pid}"));
                    ExitCode::SUCCESS
                }
                Outcome::Failed { state, error } => {
                    say(format!("failed: {error} | step={}", step(&error)));
                    let result = state.rolled_back();
                    if result.is_ok() {
                        say("rolled back");
                    }
                    finish(result, "after the rollback")
                }
            }
        }
    }
}

fn step(error: &mitosis::Error) -> String {
    error
        .step()
        .map_or_else(|| "none".into(), |step| step.to_string())
}

fn finish(result: io::Result<()>, when: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testdata-buffered: {when}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tcp(conn: &TcpStream) -> String {
    let inode = rustix::fs::fstat(conn.as_fd()).map_or(0, |stat| stat.st_ino);
    format!("tcp#{inode}")
}

/// A `BufWriter` whose buffer is exactly full.
#[derive(Handover)]
struct FullWriter {
    writer: BufWriter<TcpStream>,
}

/// What [`FullWriter`] holds unwritten.
const UNWRITTEN: &[u8; 16] = b"0123456789abcdef";

impl Case for FullWriter {
    fn build(conn: TcpStream) -> io::Result<Self> {
        let mut writer = BufWriter::with_capacity(UNWRITTEN.len(), conn);
        // All bytes at once would go straight to the socket (a write as
        // large as the buffer is not buffered); one less, then the last,
        // fills the buffer without writing anything.
        let (head, last) = UNWRITTEN.split_at(UNWRITTEN.len() - 1);
        writer.write_all(head)?;
        writer.write_all(last)?;
        if writer.buffer() != UNWRITTEN || writer.capacity() != UNWRITTEN.len() {
            return Err(io::Error::other(format!(
                "the buffer holds {:?} of capacity {}, not exactly {UNWRITTEN:?}",
                String::from_utf8_lossy(writer.buffer()),
                writer.capacity()
            )));
        }
        Ok(FullWriter { writer })
    }

    fn describe(&self) -> String {
        format!(
            "writer={} unwritten={:?}",
            tcp(self.writer.get_ref()),
            String::from_utf8_lossy(self.writer.buffer())
        )
    }

    fn taken_over(mut self) -> io::Result<()> {
        self.writer.flush()?;
        self.writer.write_all(b"after\n")?;
        self.writer.flush()
    }

    fn rolled_back(mut self) -> io::Result<()> {
        self.writer.flush()
    }
}
