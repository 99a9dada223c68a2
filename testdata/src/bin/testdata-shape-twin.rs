//! The program with `testdata::shape::twin`'s state: `base`'s definition,
//! copied into another module (the same shape under other Rust paths).
//! Reports version "twin".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::twin::State>("twin")
}
