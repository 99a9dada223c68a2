//! The program with `testdata::shape::swapped`'s state: `base`'s, with
//! `Config`'s fields in the other order (`beta`, then `alpha`). Reports
//! version "swapped".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::swapped::State>("swapped")
}
