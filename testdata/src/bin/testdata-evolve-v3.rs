//! The program with state `testdata::Evolving` v3 (`testdata::evolve::v3`):
//! v2 without `legacy` (`removed(...)` on the container). Reports version "evolve-v3".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::evolve::v3::State>("evolve-v3")
}
