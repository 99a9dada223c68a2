//! The program with state `testdata::Evolving` v2 (`testdata::evolve::v2`):
//! v1 plus `count` (`since = 2, default`). Reports version "evolve-v2".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::evolve::v2::State>("evolve-v2")
}
