//! The echo server as its next release: the same code, reporting another
//! version. The tests rename it over a running `echo-server` binary to check
//! that an upgrade runs whatever is on disk now, and that going back to the
//! previous build runs the old one.

fn main() -> std::process::ExitCode {
    mitosis_examples::echo_server::run(concat!(env!("CARGO_PKG_VERSION"), "-next"))
}
