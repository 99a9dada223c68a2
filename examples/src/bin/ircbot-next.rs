//! The IRC bot as its next release: the same code, reporting another
//! version. The tests rename it over a running `ircbot` binary to check that
//! an upgrade runs whatever is on disk now.

fn main() -> std::process::ExitCode {
    mitosis_examples::ircbot::run(concat!(env!("CARGO_PKG_VERSION"), "-next"))
}
