//! The same program after a "rebuild": version "v2", and the same state
//! schema (version 1), so a v1 process hands over to it. The tests rename it
//! over a running v1 binary.

fn main() -> std::process::ExitCode {
    testdata::run::<1>("v2")
}
