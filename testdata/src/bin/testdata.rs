//! The test program, version "v1", state `testdata::State` v1.

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::State>("v1")
}
