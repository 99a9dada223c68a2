//! The program with state `testdata::Shape` v1 as `testdata::shape::base`
//! defines it: `config: Config { alpha: u32, beta: u32 }`, `mode: Mode {
//! Red, Blue }`. Reports version "base".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::base::State>("base")
}
