//! The echo server: `cargo run --release --bin echo-server -- --help`.
//!
//! It reports the version in `ECHO_SERVER_VERSION` at build time, else the
//! package's, so that builds can be told apart:
//! `ECHO_SERVER_VERSION=2 cargo build --release --bin echo-server`.

const VERSION: &str = match option_env!("ECHO_SERVER_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

fn main() -> std::process::ExitCode {
    mitosis_examples::echo_server::run(VERSION)
}
