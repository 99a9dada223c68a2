//! Code shared by the example programs. The IRC bot lives here so that two
//! binaries can build it: `ircbot`, and `ircbot-next`, the same bot
//! reporting another version, which the tests rename over `ircbot` to stand
//! for a rebuild.

use std::io::Write;

pub mod ircbot;

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
