//! The IRC bot: `cargo run --release --bin ircbot -- --help`.
//!
//! It reports the version in `IRCBOT_VERSION` at build time, else the
//! package's, so that builds can be told apart:
//! `IRCBOT_VERSION=2 cargo build --release --bin ircbot`.

const VERSION: &str = match option_env!("IRCBOT_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

fn main() -> std::process::ExitCode {
    mitosis_examples::ircbot::run(VERSION)
}
