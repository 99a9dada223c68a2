//! The program with state `testdata::Evolving` v1 (`testdata::evolve::v1`):
//! `generation`, `nick`, `legacy`. Reports version "evolve-v1".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::evolve::v1::State>("evolve-v1")
}
