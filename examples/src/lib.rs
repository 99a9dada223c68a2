//! Code shared by the example programs. The IRC bot and the echo server
//! live here so that two binaries can build each: `ircbot` and
//! `echo-server`, and `ircbot-next` and `echo-server-next`, the same
//! programs reporting another version, which the tests rename over the first
//! ones to stand for a rebuild.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;

/// The line echo server that upgrades itself under load (`echo-server`).
pub mod echo_server;
pub mod ircbot;
pub mod tls;

/// Sends log lines, mitosis's included, to stderr as
/// `<program>[<pid>] <level>: <message>`, up to `level`. Each line goes out
/// in one write, so that the lines of two generations sharing a terminal
/// never interleave.
///
/// ```
/// mitosis_examples::log_to_stderr("demo", log::LevelFilter::Info);
/// log::info!("started");
/// ```
pub fn log_to_stderr(program: &'static str, level: log::LevelFilter) {
    if log::set_logger(Box::leak(Box::new(StderrLog { program }))).is_ok() {
        log::set_max_level(level);
    }
}

struct StderrLog {
    program: &'static str,
}

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!(
            "{}[{}] {}: {}\n",
            self.program,
            std::process::id(),
            record.level(),
            record.args()
        );
        std::io::stderr().write_all(line.as_bytes()).ok();
    }

    fn flush(&self) {}
}

/// SIGTERM (`systemctl stop`, `docker stop`) and SIGINT (Ctrl-C), as an
/// event in a program's loop: readable once either arrives, so that the
/// program stops between two passes, with status 0.
///
/// ```no_run
/// let stop = mitosis_examples::Stop::on_sigterm_and_sigint()?;
/// if stop.fired() {
///     return Ok(());
/// }
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Stop {
    events: UnixStream,
}

impl Stop {
    /// Catches both signals from now on.
    pub fn on_sigterm_and_sigint() -> std::io::Result<Stop> {
        let (events, wake) = UnixStream::pair()?;
        events.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(libc::SIGTERM, wake.try_clone()?)?;
        signal_hook::low_level::pipe::register(libc::SIGINT, wake)?;
        Ok(Stop { events })
    }

    /// Whether either signal has arrived; it does not block.
    pub fn fired(&self) -> bool {
        let mut bytes = [0u8; 16];
        matches!((&self.events).read(&mut bytes), Ok(n) if n > 0)
    }
}

impl AsFd for Stop {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

/// Takes a handed-over state: commits, or, as the echo servers' broken
/// build of the tests and benchmarks (`--hang-after-receive`), receives
/// the state and hangs instead of committing, which the old process
/// survives.
///
/// ```no_run
/// # #[derive(mitosis::Handover)] struct State { generation: u64 }
/// # fn f() -> Result<(), mitosis::Error> {
/// if let Some(arrival) = mitosis::arrive::<State>()? {
///     let state = mitosis_examples::commit_or_hang(arrival, false)?;
/// }
/// # Ok(()) }
/// ```
pub fn commit_or_hang<S: mitosis::Handover>(
    mut arrival: mitosis::Arrival<S>,
    hang: bool,
) -> Result<S, mitosis::Error> {
    if hang {
        arrival.receive()?;
        loop {
            std::thread::park();
        }
    }
    arrival.commit()
}
