//! The program with state `testdata::State` v2 (a field renamed, one
//! added), which migrates from v1. Reports version "m2".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::v2::State>("m2")
}
