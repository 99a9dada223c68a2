//! The program with state `testdata::State` v3, which migrates from v2, and
//! through v2's own migration from v1. Reports version "m3".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::v3::State>("m3")
}
