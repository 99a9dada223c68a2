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
//! - `bad-path`: the connection, a label, and a path that is not UTF-8,
//!   which serde refuses to serialize: the old process cannot encode the
//!   state. After the rollback it prints `kept <description>` and writes
//!   `kept\n` to the connection.
//! - `overfull-reader`: a `BufReader<TcpStream>` of capacity 128 KiB. The
//!   test sends `first\n`, then a payload, then shuts its side down; the
//!   process waits for that shutdown (so that one read takes it all), reads
//!   the first line, and keeps the payload buffered, unread (described as
//!   `unread=<len>:<fnv1a64>`). After the rollback it reads the rest
//!   through the same `BufReader`, prints `kept unread=<len>:<fnv1a64>` and
//!   echoes it back.

use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use mitosis::{Handover, Outcome};
use testdata::say;

/// One state type: how to build it, show it, and use it afterwards.
trait Case: Handover + Send + 'static {
    /// Builds the state in the first process, connected to the test on
    /// `port`.
    fn build(port: u16) -> io::Result<Self>;

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
        "bad-path" => run::<BadPath>(port),
        "overfull-reader" => run::<OverfullReader>(port),
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
            let state = match S::build(port) {
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
    fn build(port: u16) -> io::Result<Self> {
        let conn = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
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

/// A state the old process cannot encode.
#[derive(Handover)]
struct BadPath {
    conn: TcpStream,
    label: String,
    /// Not UTF-8: serde's `Serialize` for paths returns an error.
    path: PathBuf,
}

impl Case for BadPath {
    fn build(port: u16) -> io::Result<Self> {
        Ok(BadPath {
            conn: TcpStream::connect((Ipv4Addr::LOCALHOST, port))?,
            label: "kept".into(),
            path: PathBuf::from(OsStr::from_bytes(b"log-\xff.txt")),
        })
    }

    fn describe(&self) -> String {
        format!(
            "conn={} label={:?} path={:?}",
            tcp(&self.conn),
            self.label,
            self.path
        )
    }

    fn taken_over(self) -> io::Result<()> {
        Ok(())
    }

    fn rolled_back(self) -> io::Result<()> {
        say(format!("kept {}", self.describe()));
        (&self.conn).write_all(b"kept\n")
    }
}

/// A `BufReader` holding more unread bytes than a handover can put back.
#[derive(Handover)]
struct OverfullReader {
    reader: BufReader<TcpStream>,
}

/// The reader's capacity, and the connection's receive buffer: room for
/// the whole payload, so that the test's writes never wait for this
/// process to read.
const ROOM: usize = 128 * 1024;

impl Case for OverfullReader {
    fn build(port: u16) -> io::Result<Self> {
        use rustix::event::{PollFd, PollFlags, poll};
        use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
        // The receive buffer is set before connecting, so that the window
        // the connection starts with already has room for it all.
        let socket = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        sockopt::set_socket_recv_buffer_size(&socket, ROOM)?;
        rustix::net::connect(&socket, &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))?;
        let conn = TcpStream::from(socket);
        // Everything has arrived once the test has shut its side down: the
        // FIN comes after the last byte.
        loop {
            let mut fds = [PollFd::new(&conn, PollFlags::RDHUP)];
            match poll(&mut fds, None) {
                Ok(_) if !fds[0].revents().is_empty() => break,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut reader = BufReader::with_capacity(ROOM, conn);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line != "first\n" {
            return Err(io::Error::other(format!(
                "expected \"first\\n\", read {line:?}"
            )));
        }
        Ok(OverfullReader { reader })
    }

    fn describe(&self) -> String {
        format!(
            "reader={} unread={}",
            tcp(self.reader.get_ref()),
            testdata::blob_summary(self.reader.buffer())
        )
    }

    fn taken_over(self) -> io::Result<()> {
        Ok(())
    }

    fn rolled_back(mut self) -> io::Result<()> {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest)?;
        say(format!("kept unread={}", testdata::blob_summary(&rest)));
        self.reader.get_ref().write_all(&rest)
    }
}
