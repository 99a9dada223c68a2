//! The program with `testdata::shape::widened`'s state: `base`'s, with
//! `Config::alpha` a u64. Reports version "widened".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::widened::State>("widened")
}
