//! The program with `testdata::shape::added`'s state: `base`'s, with a third
//! field in `Config`, `gamma: u32`. Reports version "added".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::added::State>("added")
}
