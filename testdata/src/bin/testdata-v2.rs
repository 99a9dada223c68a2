//! The same program after a "rebuild": version "v2", and the same state
//! (`testdata::State` v1), so a v1 process hands over to it. The tests
//! rename it over a running v1 binary.

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::State>("v2")
}
