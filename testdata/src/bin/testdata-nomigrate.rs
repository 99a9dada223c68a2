//! The program with v2's state definition but no migration: it accepts a v2
//! state and refuses a v1 one. Reports version "n2".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::nomigrate::State>("n2")
}
