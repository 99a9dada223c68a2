//! The test program, version "v1", state schema version 1.

fn main() -> std::process::ExitCode {
    testdata::run::<1>("v1")
}
