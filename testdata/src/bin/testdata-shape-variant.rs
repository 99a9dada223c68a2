//! The program with `testdata::shape::variant`'s state: `base`'s, with
//! `Mode::Green` inserted between `Red` and `Blue`. Reports version
//! "variant".

fn main() -> std::process::ExitCode {
    testdata::run::<testdata::shape::variant::State>("variant")
}
